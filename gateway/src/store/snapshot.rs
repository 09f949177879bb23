//! Whole copies of a set of trees: what a snapshot record of the domain stream carries in
//! cluster mode (one part's trees, `cluster::domain::stores`). [`dump`] reads the trees as they
//! are; [`restore`] makes a node's trees exactly the copy (cleared, then filled), so restoring
//! the same copy again changes nothing. Keys and values go as base64 strings in the record's
//! JSON.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::StoreError;

/// Bytes that travel as a base64 string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct B64(pub Vec<u8>);

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(B64)
            .map_err(serde::de::Error::custom)
    }
}

/// One tree's every entry, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeDump {
    pub name: String,
    pub entries: Vec<(B64, B64)>,
}

/// Every entry of the trees `names` of `db`.
pub fn dump(db: &sled::Db, names: &[&str]) -> Result<Vec<TreeDump>, StoreError> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let tree = db.open_tree(name)?;
        let mut entries = Vec::with_capacity(tree.len());
        for kv in tree.iter() {
            let (k, v) = kv?;
            entries.push((B64(k.to_vec()), B64(v.to_vec())));
        }
        out.push(TreeDump {
            name: (*name).to_string(),
            entries,
        });
    }
    Ok(out)
}

/// Makes the trees `names` of `db` exactly `dumps` (a tree the copy does not name is emptied),
/// and flushes. A copy naming a tree outside `names` is refused before anything changes.
pub fn restore(db: &sled::Db, names: &[&str], dumps: &[TreeDump]) -> Result<(), StoreError> {
    if let Some(d) = dumps.iter().find(|d| !names.contains(&d.name.as_str())) {
        return Err(StoreError::Corrupt {
            tree: "snapshot",
            detail: format!("the copy names the tree {:?}, not one of {names:?}", d.name),
        });
    }
    for name in names {
        let tree = db.open_tree(name)?;
        tree.clear()?;
        if let Some(d) = dumps.iter().find(|d| d.name == *name) {
            let mut batch = sled::Batch::default();
            for (k, v) in &d.entries {
                batch.insert(k.0.as_slice(), v.0.as_slice());
            }
            tree.apply_batch(batch)?;
        }
    }
    db.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_restored_elsewhere_is_the_same_trees_and_again_changes_nothing() {
        let (a, b) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let (da, db) = (
            sled::open(a.path()).expect("db"),
            sled::open(b.path()).expect("db"),
        );
        let names = ["one", "two"];
        da.open_tree("one")
            .expect("t")
            .insert(b"k\x00\xff", b"v1")
            .expect("put");
        da.open_tree("two")
            .expect("t")
            .insert(b"k2", b"")
            .expect("put");
        db.open_tree("one")
            .expect("t")
            .insert(b"stale", b"x")
            .expect("put");
        let copy = dump(&da, &names).expect("dump");
        let json = serde_json::to_vec(&copy).expect("json");
        let back: Vec<TreeDump> = serde_json::from_slice(&json).expect("read");
        assert_eq!(back, copy);
        for _ in 0..2 {
            restore(&db, &names, &back).expect("restore");
            assert_eq!(dump(&db, &names).expect("dump"), copy);
        }
        let stranger = vec![TreeDump {
            name: "three".into(),
            entries: vec![],
        }];
        assert!(restore(&db, &names, &stranger).is_err());
        assert_eq!(dump(&db, &names).expect("dump"), copy, "nothing changed");
    }
}
