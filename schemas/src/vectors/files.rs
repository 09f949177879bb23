//! The test-vector files in `schemas/vectors/` (feature `gen`): renders every example as
//! `NAME.cbor` (the bytes), `NAME.diag` (CBOR diagnostic notation, RFC 8949 section 8, with
//! encoding indicators so it converts back to the exact bytes), `NAME.hex` (annotated hex) and
//! one `index.json` (each vector's topic, size and CDDL rules), and writes or checks them.
//!
//! The `locker-vectors` binary and the crate's tests both go through [`write_all`], so what the
//! tests check is exactly what the generator writes.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{examples, Example};

/// The extensions of the per-vector files this module owns in the vectors folder.
pub const MANAGED_EXTENSIONS: &[&str] = &["cbor", "diag", "hex"];

/// The catalogue file in the vectors folder.
pub const INDEX_FILE: &str = "index.json";

/// Why the vector files could not be rendered, read or written.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("example {name} is not well-formed CBOR: {msg}")]
    Cbor { name: String, msg: String },
    #[error("could not build {INDEX_FILE}: {0}")]
    Index(String),
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FilesError {
    let path = path.to_owned();
    move |source| FilesError::Io {
        action,
        path,
        source,
    }
}

/// One difference between the vectors folder and what [`render`] produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The file is missing.
    Added(PathBuf),
    /// The file exists with other contents.
    Updated(PathBuf),
    /// The file is a vector file (by extension) that no example produces any more.
    Removed(PathBuf),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added(p) => write!(f, "added   {}", p.display()),
            Change::Updated(p) => write!(f, "updated {}", p.display()),
            Change::Removed(p) => write!(f, "removed {}", p.display()),
        }
    }
}

/// What [`write_all`] did (or, in check mode, would have done).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every file added, updated or removed, in path order.
    pub changes: Vec<Change>,
    /// How many files already had the right contents.
    pub unchanged: usize,
}

impl Report {
    /// Whether the folder already matched exactly.
    pub fn is_clean(&self) -> bool {
        self.changes.is_empty()
    }
}

/// The CBOR diagnostic notation of one data item, on one line. Every integer or length whose
/// argument follows the initial byte carries its encoding indicator (`48_0`, `60000_1`,
/// `1790000000000_3`), so the text converts back to exactly the same bytes.
pub fn diagnostic(bytes: &[u8]) -> Result<String, String> {
    cbor_diag::parse_bytes(bytes)
        .map(|item| item.to_diag())
        .map_err(|e| e.to_string())
}

fn annotated_hex(bytes: &[u8]) -> Result<String, String> {
    cbor_diag::parse_bytes(bytes)
        .map(|item| item.to_hex())
        .map_err(|e| e.to_string())
}

/// One line of `index.json`.
#[derive(Serialize)]
struct IndexEntry<'a> {
    name: &'a str,
    topic: String,
    size: usize,
    family_rule: &'a str,
    message_rule: &'a str,
    body_rule: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    action_rule: Option<&'a str>,
}

fn with_newline(mut s: String) -> Vec<u8> {
    while s.ends_with('\n') {
        s.pop();
    }
    s.push('\n');
    s.into_bytes()
}

/// Every file of the vectors folder with its exact contents, by file name.
pub fn render() -> Result<BTreeMap<String, Vec<u8>>, FilesError> {
    let examples = examples();
    let mut files = BTreeMap::new();
    for Example { name, bytes, .. } in &examples {
        let bad = |msg| FilesError::Cbor {
            name: (*name).to_owned(),
            msg,
        };
        files.insert(
            format!("{name}.diag"),
            with_newline(diagnostic(bytes).map_err(bad)?),
        );
        files.insert(
            format!("{name}.hex"),
            with_newline(annotated_hex(bytes).map_err(bad)?),
        );
        files.insert(format!("{name}.cbor"), bytes.clone());
    }
    let index: Vec<IndexEntry<'_>> = examples
        .iter()
        .map(|e| IndexEntry {
            name: e.name,
            topic: e.topic.to_string(),
            size: e.bytes.len(),
            family_rule: e.family_rule,
            message_rule: e.message_rule,
            body_rule: e.body_rule,
            action_rule: e.action_rule,
        })
        .collect();
    let json =
        serde_json::to_string_pretty(&index).map_err(|e| FilesError::Index(e.to_string()))?;
    files.insert(INDEX_FILE.to_owned(), with_newline(json));
    Ok(files)
}

fn is_managed(file_name: &str) -> bool {
    file_name == INDEX_FILE
        || Path::new(file_name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| MANAGED_EXTENSIONS.contains(&e))
}

/// Brings `dir` in line with [`render`]: writes missing and differing files and removes vector
/// files no example produces. With `check`, changes nothing and only reports the differences
/// (the caller fails when the report is not clean). Files of other kinds in `dir` are left alone.
pub fn write_all(dir: &Path, check: bool) -> Result<Report, FilesError> {
    let expected = render()?;
    let mut report = Report::default();
    let mut on_disk = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(io_err("list", dir))?;
                if let Some(name) = entry.file_name().to_str() {
                    if is_managed(name) && entry.path().is_file() {
                        on_disk.push(name.to_owned());
                    }
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !check {
                std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
            }
        }
        Err(e) => return Err(io_err("list", dir)(e)),
    }
    on_disk.sort();
    for name in &on_disk {
        if !expected.contains_key(name) {
            let path = dir.join(name);
            if !check {
                std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
            report.changes.push(Change::Removed(path));
        }
    }
    for (name, contents) in &expected {
        let path = dir.join(name);
        let change = match std::fs::read(&path) {
            Ok(current) if &current == contents => {
                report.unchanged += 1;
                continue;
            }
            Ok(_) => Change::Updated(path.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Change::Added(path.clone()),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        if !check {
            std::fs::write(&path, contents).map_err(io_err("write", &path))?;
        }
        report.changes.push(change);
    }
    report
        .changes
        .sort_by(|a, b| change_path(a).cmp(change_path(b)));
    Ok(report)
}

fn change_path(c: &Change) -> &Path {
    match c {
        Change::Added(p) | Change::Updated(p) | Change::Removed(p) => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_mode_reports_missing_stale_and_edited_files_and_changes_nothing() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("vectors");
        let fresh = write_all(&dir, true).expect("check of a missing folder");
        assert!(!dir.exists(), "check mode creates nothing");
        assert_eq!(fresh.changes.len(), render().expect("renders").len());

        let written = write_all(&dir, false).expect("writes");
        assert_eq!(written.changes, fresh.changes);
        assert!(write_all(&dir, true).expect("checks").is_clean());

        std::fs::write(dir.join("up-door.diag"), "[]\n").expect("edit");
        std::fs::write(dir.join("up-gone.cbor"), [0x80]).expect("stale");
        std::fs::write(dir.join("notes.txt"), "kept").expect("other file");
        let report = write_all(&dir, true).expect("checks");
        assert_eq!(
            report.changes,
            vec![
                Change::Updated(dir.join("up-door.diag")),
                Change::Removed(dir.join("up-gone.cbor")),
            ]
        );
        write_all(&dir, false).expect("repairs");
        assert!(write_all(&dir, true).expect("checks").is_clean());
        assert!(
            dir.join("notes.txt").exists(),
            "foreign files are left alone"
        );
    }
}
