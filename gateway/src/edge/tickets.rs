//! TLS 1.3 session-ticket keys that survive a restart.
//!
//! A reconnect storm comes after an outage, and the commonest outage is the gateway's own
//! restart. With ticket keys in memory only, every cabinet's ticket dies with the process and the
//! whole fleet pays full handshakes (ECDSA signatures on both sides) exactly when the edge is
//! busiest. So the keys are kept in a file (`edge.tls_ticket_key_file`, mode 0600, written
//! atomically): a cabinet that held a ticket before the restart resumes with an abbreviated
//! handshake. The file is as sensitive as the server's private key and lives next to the
//! gateway's data.
//!
//! Tickets are sealed with ChaCha20-Poly1305 (ring) under the current key: `key name (16) ||
//! nonce (12) || ciphertext+tag`. A ticket opens under the current or the previous key, so a key
//! encrypts for one rotation period and a ticket lives for at most two; older keys are erased
//! from memory and from the file. Rotation happens in [`TicketKeys::rotate_if_due`], called by
//! the edge's rotation task (the file write runs on the blocking pool, never in a handshake).

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// Why the ticket keys could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("no randomness for a ticket key")]
    Random,
    #[error("writing the ticket key file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const NAME_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// The file's first line.
const MAGIC: &str = "locker-edge-ticket-keys v1";

/// One key generation.
struct Key {
    name: [u8; NAME_LEN],
    raw: [u8; KEY_LEN],
    /// Seconds since the epoch when it started encrypting.
    created: u64,
    aead: LessSafeKey,
}

impl Key {
    fn new(name: [u8; NAME_LEN], raw: [u8; KEY_LEN], created: u64) -> Option<Self> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &raw).ok()?;
        Some(Self {
            name,
            raw,
            created,
            aead: LessSafeKey::new(unbound),
        })
    }

    fn fresh(rng: &SystemRandom, created: u64) -> Result<Self, TicketError> {
        let mut name = [0u8; NAME_LEN];
        let mut raw = [0u8; KEY_LEN];
        rng.fill(&mut name).map_err(|_| TicketError::Random)?;
        rng.fill(&mut raw).map_err(|_| TicketError::Random)?;
        Key::new(name, raw, created).ok_or(TicketError::Random)
    }

    fn line(&self) -> String {
        format!(
            "{} {} {}",
            self.created,
            hex::encode(self.name),
            hex::encode(self.raw)
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut parts = line.split_whitespace();
        let created = parts.next()?.parse().ok()?;
        let name: [u8; NAME_LEN] = hex::decode(parts.next()?).ok()?.try_into().ok()?;
        let raw: [u8; KEY_LEN] = hex::decode(parts.next()?).ok()?.try_into().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Key::new(name, raw, created)
    }
}

struct Generations {
    current: Key,
    previous: Option<Key>,
}

/// The edge's ticketer: stateless tickets under rotating keys, optionally kept in a file.
pub(crate) struct TicketKeys {
    keys: RwLock<Generations>,
    rotation_s: u32,
    path: Option<PathBuf>,
    rng: SystemRandom,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("rotation_s", &self.rotation_s)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What loading found, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loaded {
    /// No file configured: keys in memory only.
    InMemory,
    /// Keys read from the file (how many still usable).
    Restored(usize),
    /// No usable keys in the file (missing, unreadable, expired or damaged): new ones made.
    Fresh(String),
}

impl TicketKeys {
    /// Loads the keys from `path` (blocking: call from `spawn_blocking`), keeping those still
    /// within their life, rotating if the current one is due, and writes the file back. Without
    /// a path the keys live in memory only.
    pub fn load(rotation_s: u32, path: Option<&Path>) -> Result<(Self, Loaded), TicketError> {
        let rng = SystemRandom::new();
        let now = now_s();
        let rot = u64::from(rotation_s.max(1));
        let (mut keys, loaded) = match path {
            None => (Vec::new(), Loaded::InMemory),
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => {
                    let mut lines = text.lines();
                    if lines.next() != Some(MAGIC) {
                        (Vec::new(), Loaded::Fresh("not a ticket key file".into()))
                    } else {
                        let keys: Vec<Key> = lines
                            .filter_map(Key::parse)
                            // A key is usable while it may still open tickets (two periods),
                            // and never from the future (a clock set back: start over).
                            .filter(|k| k.created <= now && now - k.created < 2 * rot)
                            .take(2)
                            .collect();
                        let why = format!("{} usable keys", keys.len());
                        match keys.len() {
                            0 => (keys, Loaded::Fresh(why)),
                            n => (keys, Loaded::Restored(n)),
                        }
                    }
                }
                Err(e) => (Vec::new(), Loaded::Fresh(e.to_string())),
            },
        };
        let current = if keys.is_empty() {
            Key::fresh(&rng, now)?
        } else {
            keys.remove(0)
        };
        let previous = keys.into_iter().next();
        let t = Self {
            keys: RwLock::new(Generations { current, previous }),
            rotation_s: rotation_s.max(1),
            path: path.map(Path::to_path_buf),
            rng,
        };
        t.rotate_if_due_at(now)?;
        t.save()?;
        Ok((t, loaded))
    }

    /// How often [`TicketKeys::rotate_if_due`] should be called.
    pub fn check_every(&self) -> Duration {
        Duration::from_secs(u64::from(self.rotation_s).div_ceil(8).clamp(1, 60))
    }

    /// Starts a new key if the current one has encrypted for a full period; returns whether it
    /// did. The caller then [`saves`](TicketKeys::save) (blocking).
    pub fn rotate_if_due(&self) -> Result<bool, TicketError> {
        self.rotate_if_due_at(now_s())
    }

    fn rotate_if_due_at(&self, now: u64) -> Result<bool, TicketError> {
        let rot = u64::from(self.rotation_s);
        let due = {
            let g = self.keys.read().unwrap_or_else(|p| p.into_inner());
            now.saturating_sub(g.current.created) >= rot
        };
        if !due {
            return Ok(false);
        }
        let fresh = Key::fresh(&self.rng, now)?;
        let mut g = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut g.current, fresh);
        // The old key may open tickets for one more period, unless it is already past that.
        g.previous = (now.saturating_sub(old.created) < 2 * rot).then_some(old);
        Ok(true)
    }

    /// Writes the keys to the file, if there is one (blocking): a temporary file with mode
    /// 0600, synced, then renamed over the old one.
    pub fn save(&self) -> Result<(), TicketError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = {
            let g = self.keys.read().unwrap_or_else(|p| p.into_inner());
            let mut s = format!("{MAGIC}\n{}\n", g.current.line());
            if let Some(p) = &g.previous {
                s.push_str(&p.line());
                s.push('\n');
            }
            s
        };
        let err = |source| TicketError::Write {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok(())
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    /// The longest a ticket can still open: two rotation periods.
    fn lifetime(&self) -> u32 {
        self.rotation_s.saturating_mul(2)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let g = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = &g.current;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let g = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = std::iter::once(&g.current)
            .chain(g.previous.as_ref())
            .find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(&key.name), &mut body)
            .ok()?;
        let n = plain.len();
        body.truncate(n);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_open_after_a_restart_from_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys");
        let (a, loaded) = TicketKeys::load(3600, Some(&path)).expect("load");
        assert!(matches!(loaded, Loaded::Fresh(_)), "{loaded:?}");
        let ticket = a.encrypt(b"session state").expect("ticket");
        drop(a);
        let (b, loaded) = TicketKeys::load(3600, Some(&path)).expect("reload");
        assert_eq!(loaded, Loaded::Restored(1));
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the key file is private");
        }
        // In memory only: a new process cannot open it.
        let (c, loaded) = TicketKeys::load(3600, None).expect("memory");
        assert_eq!(loaded, Loaded::InMemory);
        assert_eq!(c.decrypt(&ticket), None);
    }

    #[test]
    fn tampered_or_foreign_tickets_do_not_open() {
        let (a, _) = TicketKeys::load(3600, None).expect("a");
        let (b, _) = TicketKeys::load(3600, None).expect("b");
        let mut t = a.encrypt(b"x").expect("ticket");
        assert_eq!(b.decrypt(&t), None, "another key");
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(a.decrypt(&t), None, "tampered");
        assert_eq!(a.decrypt(&t[..10]), None, "short");
    }

    #[test]
    fn a_key_encrypts_one_period_and_opens_for_two() {
        let (k, _) = TicketKeys::load(100, None).expect("keys");
        let created = k.keys.read().expect("lock").current.created;
        let t0 = k.encrypt(b"old").expect("ticket");
        assert!(!k.rotate_if_due_at(created + 99).expect("rotate"));
        assert!(k.rotate_if_due_at(created + 100).expect("rotate"));
        let t1 = k.encrypt(b"new").expect("ticket");
        assert_eq!(k.decrypt(&t0).as_deref(), Some(&b"old"[..]), "previous key");
        assert!(k.rotate_if_due_at(created + 200).expect("rotate"));
        assert_eq!(k.decrypt(&t0), None, "two periods on: erased");
        assert_eq!(k.decrypt(&t1).as_deref(), Some(&b"new"[..]));
        assert_eq!(k.lifetime(), 200);
    }

    #[test]
    fn expired_damaged_or_future_keys_in_the_file_are_replaced() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys");
        let now = now_s();
        let old = Key::fresh(&SystemRandom::new(), now - 500).expect("key");
        let future = Key::fresh(&SystemRandom::new(), now + 5000).expect("key");
        std::fs::write(
            &path,
            format!("{MAGIC}\n{}\n{}\nnot a key\n", old.line(), future.line()),
        )
        .expect("write");
        let (_, loaded) = TicketKeys::load(100, Some(&path)).expect("load");
        assert!(matches!(loaded, Loaded::Fresh(_)), "{loaded:?}");
        std::fs::write(&path, "garbage").expect("write");
        let (_, loaded) = TicketKeys::load(100, Some(&path)).expect("load");
        assert!(matches!(loaded, Loaded::Fresh(_)), "{loaded:?}");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with(MAGIC), "rewritten");
        // A key one period old is rotated at start (kept as the previous one).
        let due = Key::fresh(&SystemRandom::new(), now - 150).expect("key");
        std::fs::write(&path, format!("{MAGIC}\n{}\n", due.line())).expect("write");
        let (k, loaded) = TicketKeys::load(100, Some(&path)).expect("load");
        assert_eq!(loaded, Loaded::Restored(1));
        let g = k.keys.read().expect("lock");
        assert_eq!(g.previous.as_ref().map(|p| p.name), Some(due.name));
        assert_ne!(g.current.name, due.name);
    }
}
