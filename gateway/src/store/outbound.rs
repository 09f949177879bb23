//! The outbox's durable state, behind [`OutboundStore`] (sled here; JetStream in cluster mode
//! later): webhook subscriptions, how far each source log has been read, the deliveries
//! waiting per target and the dead letters.
//!
//! One tree, `outbound`, so one batch writes a source's new cursor together with the
//! deliveries it produced (a crash never loses nor doubles them). Keys:
//! `s/<subscription id>` -> [`Subscription`]; `c/<source>` -> cursor (u64 BE);
//! `q/<target>\0<seq BE>` -> waiting [`Entry`]; `d/<target>\0<seq BE>` -> [`DeadLetter`].
//!
//! Blocking; the outbound actor calls it through `spawn_blocking`.

use std::collections::HashMap;

use super::{decode, encode, StoreError};
use crate::outbound::model::{DeadLetter, Entry, Subscription, Target};

/// What the outbound actor starts from.
#[derive(Debug, Default)]
pub struct LoadedOutbound {
    pub subscriptions: Vec<Subscription>,
    pub cursors: HashMap<String, u64>,
    /// Every waiting delivery, in queue order per target (payloads dropped).
    pub pending: Vec<(Target, Entry)>,
    /// The highest seq ever used per target (waiting or dead).
    pub last_seq: HashMap<Target, u64>,
}

/// What one commit of the outbound actor writes.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct OutBatch {
    pub cursors: Vec<(String, u64)>,
    /// New or updated (attempts, last error) waiting deliveries.
    pub queued: Vec<(Target, Entry)>,
    /// Delivered: removed.
    pub done: Vec<(Target, u64)>,
    /// Moved to the dead letters.
    pub dead: Vec<(Target, DeadLetter)>,
    /// Dead letters taken out (replayed).
    pub undead: Vec<(Target, u64)>,
    pub subscriptions: Vec<Subscription>,
    /// Deleted subscriptions (their waiting deliveries and dead letters go too).
    pub removed: Vec<String>,
}

impl OutBatch {
    pub fn is_empty(&self) -> bool {
        self.cursors.is_empty()
            && self.queued.is_empty()
            && self.done.is_empty()
            && self.dead.is_empty()
            && self.undead.is_empty()
            && self.subscriptions.is_empty()
            && self.removed.is_empty()
    }

    /// Whether the batch must be durable before the actor goes on (anything but deliveries
    /// done: a done lost in a crash only sends that delivery again).
    pub fn needs_flush(&self) -> bool {
        !(self.cursors.is_empty()
            && self.queued.is_empty()
            && self.dead.is_empty()
            && self.undead.is_empty()
            && self.subscriptions.is_empty()
            && self.removed.is_empty())
    }
}

/// The outbox's storage.
pub trait OutboundStore: Send + Sync + 'static {
    fn load(&self) -> Result<LoadedOutbound, StoreError>;
    /// Writes a batch atomically; flushes it when `flush`.
    fn commit(&self, batch: &OutBatch, flush: bool) -> Result<(), StoreError>;
    /// A waiting delivery with its payload.
    fn entry(&self, target: &Target, seq: u64) -> Result<Option<Entry>, StoreError>;
    /// Dead letters of a target with `seq > after`, oldest first.
    fn dead(
        &self,
        target: &Target,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;
}

/// [`OutboundStore`] on the gateway's sled database.
#[derive(Clone)]
pub struct SledOutbound {
    db: sled::Db,
    tree: sled::Tree,
}

const TREE: &str = "outbound";

/// The outbox's trees (a snapshot of the domain's `outbound` part copies them).
pub const TREES: &[&str] = &[TREE];

fn key(prefix: u8, target: &Target, seq: u64) -> Vec<u8> {
    let mut k = prefix_of(prefix, target);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn prefix_of(prefix: u8, target: &Target) -> Vec<u8> {
    let label = target.label();
    let mut k = Vec::with_capacity(label.len() + 11);
    k.push(prefix);
    k.push(b'/');
    k.extend_from_slice(label.as_bytes());
    k.push(0);
    k
}

/// Splits `q/<target>\0<seq>` into the target and the seq.
fn split(k: &[u8]) -> Option<(Target, u64)> {
    let rest = k.get(2..)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let label = std::str::from_utf8(&rest[..nul]).ok()?;
    let seq: [u8; 8] = rest.get(nul + 1..)?.try_into().ok()?;
    Some((Target::parse(label)?, u64::from_be_bytes(seq)))
}

impl SledOutbound {
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            db: db.clone(),
            tree: db.open_tree(TREE)?,
        })
    }
}

impl OutboundStore for SledOutbound {
    fn load(&self) -> Result<LoadedOutbound, StoreError> {
        let mut out = LoadedOutbound::default();
        for kv in self.tree.scan_prefix(b"s/") {
            let (_, v) = kv?;
            out.subscriptions.push(decode(TREE, &v)?);
        }
        for kv in self.tree.scan_prefix(b"c/") {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k[2..]).into_owned();
            let b: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                tree: TREE,
                detail: format!("cursor {name}"),
            })?;
            out.cursors.insert(name, u64::from_be_bytes(b));
        }
        for prefix in [b"q/", b"d/"] {
            for kv in self.tree.scan_prefix(prefix) {
                let (k, v) = kv?;
                let Some((target, seq)) = split(&k) else {
                    return Err(StoreError::Corrupt {
                        tree: TREE,
                        detail: format!("key {:?}", String::from_utf8_lossy(&k)),
                    });
                };
                let last = out.last_seq.entry(target.clone()).or_insert(0);
                *last = (*last).max(seq);
                if prefix == b"q/" {
                    let mut e: Entry = decode(TREE, &v)?;
                    e.payload = serde_json::Value::Null;
                    out.pending.push((target, e));
                }
            }
        }
        Ok(out)
    }

    fn commit(&self, b: &OutBatch, flush: bool) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (name, pos) in &b.cursors {
            batch.insert(format!("c/{name}").as_bytes(), &pos.to_be_bytes());
        }
        for s in &b.subscriptions {
            batch.insert(format!("s/{}", s.id).as_bytes(), encode(s)?);
        }
        for (t, e) in &b.queued {
            batch.insert(key(b'q', t, e.seq), encode(e)?);
        }
        for (t, seq) in &b.done {
            batch.remove(key(b'q', t, *seq));
        }
        for (t, d) in &b.dead {
            batch.remove(key(b'q', t, d.entry.seq));
            batch.insert(key(b'd', t, d.entry.seq), encode(d)?);
        }
        for (t, seq) in &b.undead {
            batch.remove(key(b'd', t, *seq));
        }
        for id in &b.removed {
            batch.remove(format!("s/{id}").as_bytes());
            let t = Target::Webhook(id.clone());
            for p in [b'q', b'd'] {
                for kv in self.tree.scan_prefix(prefix_of(p, &t)) {
                    let (k, _) = kv?;
                    batch.remove(k);
                }
            }
        }
        self.tree.apply_batch(batch)?;
        if flush {
            self.db.flush()?;
        }
        Ok(())
    }

    fn entry(&self, target: &Target, seq: u64) -> Result<Option<Entry>, StoreError> {
        self.tree
            .get(key(b'q', target, seq))?
            .map(|v| decode(TREE, &v))
            .transpose()
    }

    fn dead(
        &self,
        target: &Target,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let from = key(b'd', target, after.saturating_add(1));
        let prefix = prefix_of(b'd', target);
        let mut out = Vec::new();
        for kv in self.tree.range(from..) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(decode(TREE, &v)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::model::Owner;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            event_id: format!("evt_{seq}"),
            kind: "order.ready".into(),
            key: "CAB-1".into(),
            at: 1,
            queued_at: 2,
            attempts: 0,
            last_error: None,
            payload: serde_json::json!({"n": seq}),
        }
    }

    #[test]
    fn a_batch_survives_a_reopen_and_dead_letters_page() {
        let dir = tempfile::tempdir().expect("dir");
        let t = Target::Webhook("WH-1".into());
        let c = Target::Carrier("dhl".into());
        {
            let db = sled::open(dir.path()).expect("db");
            let s = SledOutbound::open(&db).expect("open");
            let sub = Subscription {
                id: "WH-1".into(),
                url: "https://x.example/h".into(),
                events: vec!["*".into()],
                sites: vec![],
                carriers: vec![],
                description: String::new(),
                owner: Owner::Operator {
                    client: "ops".into(),
                },
                secrets: vec![],
                enabled: true,
                created_at: 1,
                disabled_reason: None,
            };
            let mut b = OutBatch {
                cursors: vec![("parcel".into(), 42)],
                subscriptions: vec![sub],
                ..Default::default()
            };
            for seq in 1..=5 {
                b.queued.push((t.clone(), entry(seq)));
            }
            b.queued.push((c.clone(), entry(1)));
            s.commit(&b, true).expect("commit");
            let b = OutBatch {
                done: vec![(t.clone(), 1)],
                dead: vec![
                    (
                        t.clone(),
                        DeadLetter {
                            entry: entry(2),
                            dead_at: 9,
                            reason: "410".into(),
                        },
                    ),
                    (
                        t.clone(),
                        DeadLetter {
                            entry: entry(3),
                            dead_at: 9,
                            reason: "410".into(),
                        },
                    ),
                ],
                ..Default::default()
            };
            s.commit(&b, true).expect("commit");
        }
        // the first handle's flusher may still hold the lock for a moment
        let db = crate::store::open_db(dir.path()).expect("db");
        let s = SledOutbound::open(&db).expect("open");
        let l = s.load().expect("load");
        assert_eq!(l.cursors["parcel"], 42);
        assert_eq!(l.subscriptions.len(), 1);
        let seqs: Vec<u64> = l
            .pending
            .iter()
            .filter(|(x, _)| x == &t)
            .map(|(_, e)| e.seq)
            .collect();
        assert_eq!(seqs, vec![4, 5]);
        assert_eq!(l.last_seq[&t], 5);
        assert_eq!(l.last_seq[&c], 1);
        assert_eq!(s.entry(&t, 4).expect("get").expect("there").payload["n"], 4);
        let dead = s.dead(&t, 0, 10).expect("dead");
        assert_eq!(dead.len(), 2);
        assert_eq!(s.dead(&t, 2, 10).expect("dead").len(), 1);
        assert!(s.dead(&c, 0, 10).expect("dead").is_empty());
        s.commit(
            &OutBatch {
                removed: vec!["WH-1".into()],
                ..Default::default()
            },
            true,
        )
        .expect("remove");
        let l = s.load().expect("load");
        assert!(l.subscriptions.is_empty());
        assert!(l.pending.iter().all(|(x, _)| x == &c));
        assert!(s.dead(&t, 0, 10).expect("dead").is_empty());
    }
}
