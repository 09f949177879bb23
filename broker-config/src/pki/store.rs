//! The PKI directory on disk: file paths, atomic writes with explicit modes, the advisory lock
//! that serialises writers, and `index.json`.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{CertRecord, PkiError, Role};

/// Mode of private key files: owner read/write only.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificates, the CRL and the index: world-readable.
pub const PUBLIC_MODE: u32 = 0o644;

/// Where each file of a PKI directory lives. See the [module docs](super) for the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    dir: PathBuf,
}

impl PkiPaths {
    /// The layout rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// The PKI directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `ca.pem`: the fleet CA certificate (the trust anchor for cabinets, integrators, gateway).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// `ca.key`: the fleet CA private key (PKCS#8 PEM, mode 0600).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// `server.pem`: the gateway's TLS server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    /// `server.key`: the gateway's TLS server key (PKCS#8 PEM, mode 0600).
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// `crl.pem`: the CA-signed X.509 CRL of every revoked client certificate.
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
    /// `index.json`: every issued client certificate and the last CRL number.
    pub fn index(&self) -> PathBuf {
        self.dir.join("index.json")
    }
    /// The folder holding the certificates of one role: `cabinets/` or `integrators/`.
    pub fn role_dir(&self, role: Role) -> PathBuf {
        self.dir.join(match role {
            Role::Cabinet => "cabinets",
            Role::Integrator => "integrators",
        })
    }
    /// `cabinets/{id}.pem` or `integrators/{name}.pem`: the newest certificate of an identity.
    pub fn client_cert(&self, role: Role, identity: &str) -> PathBuf {
        self.role_dir(role).join(format!("{identity}.pem"))
    }
    /// `cabinets/{id}.key` or `integrators/{name}.key` (PKCS#8 PEM, mode 0600).
    pub fn client_key(&self, role: Role, identity: &str) -> PathBuf {
        self.role_dir(role).join(format!("{identity}.key"))
    }
    /// `.lock`: the advisory lock file that serialises writers.
    pub(crate) fn lock(&self) -> PathBuf {
        self.dir.join(".lock")
    }
}

pub(crate) fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.to_path_buf();
    move |source| PkiError::Io { path, op, source }
}

/// Writes files atomically: temp file in the same folder, fsync, rename, fsync of the folder,
/// with exactly the given mode whatever the umask. A key never exists with a wider mode, even
/// briefly: the temp file is created with its mode already.
///
/// With `fsync` off the files are still replaced atomically (readers see the old or the new
/// content, never a mix) but a power loss may lose the newest writes: for throwaway PKIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Writer {
    pub fsync: bool,
}

impl Writer {
    /// Writes one file.
    pub(crate) fn write(self, path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
        self.write_all(&[(path, bytes, mode)])
    }

    /// Writes many files: every temp file is written first, then all are synced, renamed, and
    /// each folder synced once. Syncing after all the writes lets the file system flush them
    /// together instead of one journal commit per file. Each file is replaced atomically; the
    /// set as a whole is not.
    pub(crate) fn write_all(self, files: &[(&Path, &[u8], u32)]) -> Result<(), PkiError> {
        write_all_atomic(files, self.fsync)
    }
}

fn write_all_atomic(files: &[(&Path, &[u8], u32)], fsync: bool) -> Result<(), PkiError> {
    let mut staged: Vec<(PathBuf, &Path, File)> = Vec::with_capacity(files.len());
    let result = (|| {
        for (path, bytes, mode) in files {
            let tmp = temp_path(path);
            let file = create_temp(&tmp, bytes, *mode);
            // Record the temp file before checking, so a failure cleans it up too.
            match file {
                Ok(file) => staged.push((tmp, path, file)),
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        if fsync {
            for (tmp, _, file) in &staged {
                file.sync_all().map_err(io_err(tmp, "syncing"))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (tmp, _, _) in &staged {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    let mut dirs: Vec<&Path> = Vec::new();
    for (i, (tmp, path, _)) in staged.iter().enumerate() {
        if let Err(e) = fs::rename(tmp, path) {
            for (tmp, _, _) in &staged[i..] {
                let _ = fs::remove_file(tmp);
            }
            return Err(io_err(path, "renaming temp file onto")(e));
        }
        let dir = parent(path);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    if fsync {
        for dir in dirs {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `.{name}.tmp{pid}` next to `path`. Writers hold the directory lock, and the pid keeps
/// processes apart should one ever not.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent(path).join(format!(".{name}.tmp{}", std::process::id()))
}

/// Creates `tmp` with `mode` (replacing a stale one) and writes `bytes`, without syncing.
fn create_temp(tmp: &Path, bytes: &[u8], mode: u32) -> Result<File, PkiError> {
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(tmp, "removing stale temp file")(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(io_err(tmp, "creating"))?;
    // `mode` above is filtered by the umask; fchmod is not.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io_err(tmp, "setting permissions on"))?;
    file.write_all(bytes).map_err(io_err(tmp, "writing"))?;
    Ok(file)
}

/// Makes renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "syncing directory"))
}

/// Reads a whole text file, naming it in the error.
pub(crate) fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            PkiError::NotInitialized {
                path: path.to_path_buf(),
            }
        } else {
            PkiError::Io {
                path: path.to_path_buf(),
                op: "reading",
                source,
            }
        }
    })
}

/// Creates `dir` (and parents) if needed.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(io_err(dir, "creating directory"))
}

/// An exclusive advisory lock on the PKI directory, released on drop.
///
/// Every operation that writes takes it, then re-reads `index.json`, so two `locker-pki` runs
/// (or two [`Pki`](super::Pki) handles) never lose each other's updates.
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(paths: &PkiPaths) -> Result<Self, PkiError> {
        let path = paths.lock();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(KEY_MODE)
            .open(&path)
            .map_err(io_err(&path, "opening lock file"))?;
        fs2::FileExt::lock_exclusive(&file).map_err(io_err(&path, "locking"))?;
        Ok(Self { _file: file })
    }
}

/// The content of `index.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    /// Format version of this file.
    pub version: u32,
    /// The CRL number of the newest `crl.pem`.
    pub crl_number: u64,
    /// Every issued client certificate, oldest first.
    pub certs: Vec<CertRecord>,
}

impl Index {
    pub(crate) const VERSION: u32 = 1;

    pub(crate) fn new() -> Self {
        Self {
            version: Self::VERSION,
            crl_number: 0,
            certs: Vec::new(),
        }
    }

    pub(crate) fn load(paths: &PkiPaths) -> Result<Self, PkiError> {
        let path = paths.index();
        let text = read_text(&path)?;
        let index: Index = serde_json::from_str(&text).map_err(|e| PkiError::BadFile {
            path: path.clone(),
            what: format!("not a valid index: {e}"),
        })?;
        if index.version != Self::VERSION {
            return Err(PkiError::BadFile {
                path,
                what: format!(
                    "index format version {} is not the supported {}",
                    index.version,
                    Self::VERSION
                ),
            });
        }
        Ok(index)
    }

    pub(crate) fn save(&self, paths: &PkiPaths, writer: Writer) -> Result<(), PkiError> {
        let path = paths.index();
        let mut text = serde_json::to_string_pretty(self).map_err(|e| PkiError::BadFile {
            path: path.clone(),
            what: format!("cannot serialise the index: {e}"),
        })?;
        text.push('\n');
        writer.write(&path, text.as_bytes(), PUBLIC_MODE)
    }
}
