//! The cabinet's durable state in ONE sled tree (tree name = cabinet id), as plain synchronous
//! functions run on the storage worker (see [`super::worker`]). One tree with key prefixes lets
//! an outcome and its Result event be written in one atomic batch.
//!
//! Key layout:
//! - `o` + seq (u64 big-endian) -> kind code (1 byte) + the uplink exactly as encoded once;
//! - `mboot` -> boot counter (u32 BE); `macked` -> last seq the gateway acknowledged (u64 BE);
//! - `c` + command id (16 bytes) -> `[0]` started, `[1, outcome] + detail (UTF-8)` finished
//!   (the detail is kept so a redelivered command is answered with the same Result);
//! - `mcfg` -> runtime configuration set by `set_config` (`key=value` lines, see
//!   [`config_overrides_write`]);
//! - `k` -> the cached credential set, encoded as a downlink;
//! - `a` + kind + compartment + board -> detail of an active alarm;
//! - `mlock` -> wall-clock end (ms, u64 BE) of the keypad lock after wrong codes, while locked.

use locker_schemas::{
    codec, up_kind_code, AlarmKind, CommandId, CompartmentId, Credentials, Downlink, DownlinkBody,
    Outcome, UpKind, Uplink,
};
use sled::{Batch, Tree};

use super::StorageError;

const OUTBOX: u8 = b'o';
const CMD: u8 = b'c';
const ALARM: u8 = b'a';
const CREDS: &[u8] = b"k";
const BOOT: &[u8] = b"mboot";
const ACKED: &[u8] = b"macked";
const CONFIG: &[u8] = b"mcfg";
const LOCK: &[u8] = b"mlock";

/// The outbox key of `seq`.
pub fn outbox_key(seq: u64) -> [u8; 9] {
    let mut k = [OUTBOX; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> Result<u64, StorageError> {
    key.get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StorageError::Corrupt(format!("bad outbox key {key:?}")))
}

/// The executed-commands key of `id`.
pub fn command_key(id: CommandId) -> [u8; 17] {
    let mut k = [CMD; 17];
    k[1..].copy_from_slice(&id.to_bytes());
    k
}

/// The key of an active alarm.
pub fn alarm_key(a: &AlarmKey) -> Vec<u8> {
    let c = a.compartment.map(|c| c.0).unwrap_or(0);
    let [c0, c1] = c.to_be_bytes();
    vec![
        ALARM,
        a.kind as u8,
        u8::from(a.compartment.is_some()),
        c0,
        c1,
        u8::from(a.board.is_some()),
        a.board.unwrap_or(0),
    ]
}

fn parse_alarm_key(k: &[u8]) -> Option<AlarmKey> {
    let &[_, kind, has_c, c0, c1, has_b, b] = k else {
        return None;
    };
    let kind = [
        AlarmKind::ForcedOpen,
        AlarmKind::DoorLeftOpen,
        AlarmKind::Tamper,
        AlarmKind::LockBoardOffline,
        AlarmKind::PowerFail,
        AlarmKind::OutboxNearlyFull,
        AlarmKind::KeypadLocked,
        AlarmKind::ChargerFault,
    ]
    .into_iter()
    .find(|x| *x as u8 == kind)?;
    Some(AlarmKey {
        kind,
        compartment: (has_c == 1).then_some(CompartmentId(u16::from_be_bytes([c0, c1]))),
        board: (has_b == 1).then_some(b),
    })
}

/// Identifies an alarm: it is raised once and cleared once per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AlarmKey {
    pub kind: AlarmKind,
    pub compartment: Option<CompartmentId>,
    pub board: Option<u8>,
}

/// One extra write applied atomically with an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
}

impl Write {
    /// Records a command's final outcome and its detail (answered again on redelivery).
    pub fn finish_command(id: CommandId, outcome: Outcome, detail: &str) -> Self {
        let mut v = Vec::with_capacity(2 + detail.len());
        v.extend_from_slice(&[1, outcome as u8]);
        v.extend_from_slice(detail.as_bytes());
        Write::Put(command_key(id).to_vec(), v)
    }
}

/// What the executed-commands memory knows of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandRecord {
    /// Never seen (and now recorded as started).
    New,
    /// Started and not finished (the agent is executing it, or was killed while it did).
    Started,
    /// Finished with this outcome.
    Finished(Outcome),
}

fn parse_record(v: &[u8]) -> CommandRecord {
    match v {
        [1, o, ..] => Outcome::ALL
            .iter()
            .copied()
            .find(|x| *x as u8 == *o)
            .map_or(CommandRecord::Started, CommandRecord::Finished),
        _ => CommandRecord::Started,
    }
}

/// One stored outbox event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub kind: UpKind,
    /// The uplink as encoded once, published byte-identically every time.
    pub payload: Vec<u8>,
}

/// The durable state found when an agent starts.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// This start's boot counter (already incremented and written).
    pub boot: u32,
    /// The last seq the gateway acknowledged.
    pub acked: u64,
    /// The last seq stored in the outbox, if any.
    pub last_seq: Option<u64>,
    /// The first seq stored in the outbox, if any.
    pub first_seq: Option<u64>,
    /// How many events the outbox holds.
    pub depth: u64,
    /// Commands recorded as started with no outcome.
    pub interrupted: Vec<CommandId>,
    /// How many command ids are remembered.
    pub remembered: u64,
    pub creds: Option<Credentials>,
    pub alarms: Vec<(AlarmKey, String)>,
    /// Runtime configuration set by `set_config` commands (key, value), applied over the file.
    pub config_overrides: Vec<(String, String)>,
    /// The end of the keypad lock (wall-clock ms), if one was in force.
    pub lock_until: Option<u64>,
}

fn be_u64(v: &[u8]) -> u64 {
    <[u8; 8]>::try_from(v).map(u64::from_be_bytes).unwrap_or(0)
}

/// Loads the state and increments the boot counter.
pub fn load(tree: &Tree) -> Result<Loaded, StorageError> {
    let boot = tree
        .get(BOOT)?
        .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
        .wrapping_add(1);
    tree.insert(BOOT, &boot.to_be_bytes())?;
    let acked = tree.get(ACKED)?.map(|v| be_u64(&v)).unwrap_or(0);
    let range = outbox_key(0)..=outbox_key(u64::MAX);
    let first_seq = match tree.range(range.clone()).next() {
        Some(r) => Some(seq_of(&r?.0)?),
        None => None,
    };
    let last_seq = match tree.range(range.clone()).next_back() {
        Some(r) => Some(seq_of(&r?.0)?),
        None => None,
    };
    let depth = tree.range(range).count() as u64;
    if let (Some(f), Some(l)) = (first_seq, last_seq) {
        if l - f + 1 != depth {
            tracing::error!(
                first = f,
                last = l,
                depth,
                "outbox has a gap; the gateway will not accept past it"
            );
        }
    }
    let mut interrupted = Vec::new();
    let mut remembered = 0;
    for r in tree.scan_prefix([CMD]) {
        let (k, v) = r?;
        remembered += 1;
        if parse_record(&v) == CommandRecord::Started {
            if let Ok(b) = <[u8; 16]>::try_from(&k[1..]) {
                interrupted.push(CommandId::from_bytes(b));
            }
        }
    }
    let creds = match tree.get(CREDS)? {
        Some(v) => match codec::decode_downlink(&v) {
            Ok(Downlink {
                body: DownlinkBody::Credentials(c),
            }) => Some(c),
            Ok(_) | Err(_) => {
                tracing::error!("cached credentials are unreadable; ignoring them");
                None
            }
        },
        None => None,
    };
    let mut alarms = Vec::new();
    for r in tree.scan_prefix([ALARM]) {
        let (k, v) = r?;
        if let Some(key) = parse_alarm_key(&k) {
            alarms.push((key, String::from_utf8_lossy(&v).into_owned()));
        }
    }
    let config_overrides = config_overrides(tree)?;
    let lock_until = tree.get(LOCK)?.map(|v| be_u64(&v));
    Ok(Loaded {
        lock_until,
        config_overrides,
        boot,
        acked,
        last_seq,
        first_seq,
        depth,
        interrupted,
        remembered,
        creds,
        alarms,
    })
}

/// Stores one encoded event under `seq` together with `extra` writes, atomically.
pub fn append(
    tree: &Tree,
    seq: u64,
    kind: UpKind,
    payload: &[u8],
    extra: &[Write],
) -> Result<(), StorageError> {
    let mut value = Vec::with_capacity(payload.len() + 1);
    value.push(up_kind_code(kind));
    value.extend_from_slice(payload);
    let mut b = Batch::default();
    b.insert(&outbox_key(seq), value);
    for w in extra {
        match w {
            Write::Put(k, v) => b.insert(k.as_slice(), v.as_slice()),
            Write::Del(k) => b.remove(k.as_slice()),
        }
    }
    tree.apply_batch(b)?;
    Ok(())
}

/// One entry of [`append_many`]: an event `(seq, kind, payload)` (none if it was shed or
/// dropped) and the writes that go with it.
pub type Entry = (Option<(u64, UpKind, Vec<u8>)>, Vec<Write>);

/// Appends several events with their side writes in ONE atomic batch (so one flush makes
/// them all durable, and a crash keeps all or none of them).
pub fn append_many(tree: &Tree, entries: &[Entry]) -> Result<(), StorageError> {
    let mut b = Batch::default();
    for (event, extra) in entries {
        if let Some((seq, kind, payload)) = event {
            let mut value = Vec::with_capacity(payload.len() + 1);
            value.push(up_kind_code(*kind));
            value.extend_from_slice(payload);
            b.insert(&outbox_key(*seq), value);
        }
        for w in extra {
            match w {
                Write::Put(k, v) => b.insert(k.as_slice(), v.as_slice()),
                Write::Del(k) => b.remove(k.as_slice()),
            }
        }
    }
    tree.apply_batch(b)?;
    Ok(())
}

/// Applies writes atomically (no event).
pub fn write(tree: &Tree, writes: &[Write]) -> Result<(), StorageError> {
    let mut b = Batch::default();
    for w in writes {
        match w {
            Write::Put(k, v) => b.insert(k.as_slice(), v.as_slice()),
            Write::Del(k) => b.remove(k.as_slice()),
        }
    }
    tree.apply_batch(b)?;
    Ok(())
}

/// Deletes every event up to `upto` and records the ack; returns how many were deleted.
pub fn ack(tree: &Tree, upto: u64) -> Result<u64, StorageError> {
    let mut b = Batch::default();
    let mut n = 0;
    for r in tree.range(outbox_key(0)..=outbox_key(upto)) {
        let (k, _) = r?;
        b.remove(k);
        n += 1;
    }
    let acked = tree.get(ACKED)?.map(|v| be_u64(&v)).unwrap_or(0);
    if upto > acked {
        b.insert(ACKED, &upto.to_be_bytes());
    }
    tree.apply_batch(b)?;
    Ok(n)
}

fn kind_of(code: u8) -> Option<UpKind> {
    UpKind::ALL
        .iter()
        .copied()
        .find(|k| up_kind_code(*k) == code)
}

/// Reads up to `max` events from `from` on, in seq order.
pub fn read(tree: &Tree, from: u64, max: usize) -> Result<Vec<StoredEvent>, StorageError> {
    let mut out = Vec::new();
    for r in tree
        .range(outbox_key(from)..=outbox_key(u64::MAX))
        .take(max)
    {
        let (k, v) = r?;
        let seq = seq_of(&k)?;
        let (&code, payload) = v
            .split_first()
            .ok_or_else(|| StorageError::Corrupt(format!("empty outbox value at {seq}")))?;
        let kind = kind_of(code)
            .ok_or_else(|| StorageError::Corrupt(format!("kind {code} at seq {seq}")))?;
        out.push(StoredEvent {
            seq,
            kind,
            payload: payload.to_vec(),
        });
    }
    Ok(out)
}

/// Every event of the outbox, decoded (for dumps and tests).
pub fn read_all(tree: &Tree) -> Result<Vec<Uplink>, StorageError> {
    read(tree, 0, usize::MAX)?
        .into_iter()
        .map(|e| {
            codec::decode_uplink(&e.payload)
                .map_err(|err| StorageError::Corrupt(format!("seq {}: {err}", e.seq)))
        })
        .collect()
}

/// The last acknowledged seq recorded in a tree (for dumps and tests).
pub fn acked(tree: &Tree) -> Result<u64, StorageError> {
    Ok(tree.get(ACKED)?.map(|v| be_u64(&v)).unwrap_or(0))
}

/// Looks a command up and records it as started if it is new (atomic compare-and-swap).
pub fn claim_command(tree: &Tree, id: CommandId) -> Result<CommandRecord, StorageError> {
    match tree.compare_and_swap(command_key(id), None as Option<&[u8]>, Some(&[0u8][..]))? {
        Ok(()) => Ok(CommandRecord::New),
        Err(e) => Ok(e
            .current
            .map_or(CommandRecord::Started, |v| parse_record(&v))),
    }
}

/// The stored outcome and detail of a finished command (`None` if unknown or not finished).
pub fn finished_result(
    tree: &Tree,
    id: CommandId,
) -> Result<Option<(Outcome, String)>, StorageError> {
    let Some(v) = tree.get(command_key(id))? else {
        return Ok(None);
    };
    Ok(match parse_record(&v) {
        CommandRecord::Finished(o) => Some((
            o,
            String::from_utf8_lossy(v.get(2..).unwrap_or_default()).into_owned(),
        )),
        _ => None,
    })
}

/// The runtime configuration set by `set_config` commands, in key order.
pub fn config_overrides(tree: &Tree) -> Result<Vec<(String, String)>, StorageError> {
    let Some(v) = tree.get(CONFIG)? else {
        return Ok(Vec::new());
    };
    Ok(String::from_utf8_lossy(&v)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// The write that replaces the stored runtime configuration.
pub fn config_overrides_write(kv: &[(String, String)]) -> Write {
    let text: String = kv.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    Write::Put(CONFIG.to_vec(), text.into_bytes())
}

/// What the memory knows of a command, without recording anything.
pub fn command_record(tree: &Tree, id: CommandId) -> Result<Option<CommandRecord>, StorageError> {
    Ok(tree.get(command_key(id))?.map(|v| parse_record(&v)))
}

/// Forgets up to `n` of the oldest finished commands; returns how many were forgotten.
pub fn forget_oldest_commands(tree: &Tree, n: u64) -> Result<u64, StorageError> {
    let mut b = Batch::default();
    let mut done = 0;
    for r in tree.scan_prefix([CMD]) {
        if done >= n {
            break;
        }
        let (k, v) = r?;
        if matches!(parse_record(&v), CommandRecord::Finished(_)) {
            b.remove(k);
            done += 1;
        }
    }
    tree.apply_batch(b)?;
    Ok(done)
}

/// The write that records the end of the keypad lock (`None`: no lock).
pub fn lock_write(until: Option<u64>) -> Write {
    match until {
        Some(t) => Write::Put(LOCK.to_vec(), t.to_be_bytes().to_vec()),
        None => Write::Del(LOCK.to_vec()),
    }
}

/// The write that replaces the cached credentials.
pub fn creds_write(c: &Credentials) -> Result<Write, StorageError> {
    let bytes = codec::encode_downlink(&Downlink {
        body: DownlinkBody::Credentials(c.clone()),
    })
    .map_err(|e| StorageError::Corrupt(e.to_string()))?;
    Ok(Write::Put(CREDS.to_vec(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_keys_round_trip() {
        for k in [
            AlarmKey {
                kind: AlarmKind::ForcedOpen,
                compartment: Some(CompartmentId(300)),
                board: None,
            },
            AlarmKey {
                kind: AlarmKind::LockBoardOffline,
                compartment: None,
                board: Some(7),
            },
            AlarmKey {
                kind: AlarmKind::OutboxNearlyFull,
                compartment: None,
                board: None,
            },
            AlarmKey {
                kind: AlarmKind::KeypadLocked,
                compartment: None,
                board: None,
            },
        ] {
            assert_eq!(parse_alarm_key(&alarm_key(&k)), Some(k));
        }
    }

    #[test]
    fn claims_are_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("db");
        let t = db.open_tree("c").expect("tree");
        let id = CommandId::generate();
        assert_eq!(claim_command(&t, id).expect("claim"), CommandRecord::New);
        assert_eq!(
            claim_command(&t, id).expect("claim"),
            CommandRecord::Started
        );
        write(&t, &[Write::finish_command(id, Outcome::Jammed, "door 3")]).expect("finish");
        assert_eq!(
            claim_command(&t, id).expect("claim"),
            CommandRecord::Finished(Outcome::Jammed)
        );
        assert_eq!(
            finished_result(&t, id).expect("read"),
            Some((Outcome::Jammed, "door 3".into()))
        );
        // records written before details were kept still read as finished
        let old = CommandId::generate();
        write(
            &t,
            &[Write::Put(
                command_key(old).to_vec(),
                vec![1, Outcome::Opened as u8],
            )],
        )
        .expect("old record");
        assert_eq!(
            finished_result(&t, old).expect("read"),
            Some((Outcome::Opened, String::new()))
        );
        write(&t, &[Write::Del(command_key(old).to_vec())]).expect("del");
        let l = load(&t).expect("load");
        assert!(l.interrupted.is_empty());
        assert_eq!(l.remembered, 1);
        assert_eq!(l.boot, 1);
        assert_eq!(load(&t).expect("load").boot, 2);
    }
}
