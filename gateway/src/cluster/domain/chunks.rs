//! Records larger than one NATS message: a commit whose JSON exceeds the writer's chunk size
//! (below the server's `max_payload`, 1 MB by default) goes to the stream as consecutive
//! messages of its part's subject, each with the header `Lk-Chunk: i/n`. This module owns that
//! framing: cutting a record ([`pieces`]) and putting it back together ([`Assembler`]).
//!
//! A commit is applied whole or not at all, everywhere, by one rule read off the stream alone:
//! **a group counts only when its `n` chunks follow each other in its part's subject.** A writer
//! that stopped part way (killed, or its write failed after retries) leaves an incomplete group;
//! the next record of the part abandons it, on every node alike. An incomplete group at the end
//! of the log is undecided: nobody applies it, and a node catching up counts it as reached (the
//! next leader's first write of the part abandons it; if the old writer's last chunk got in
//! first, that write is refused by the fence, and the completed group is applied everywhere).
//! Small records carry no header, so a log written before chunking reads the same.

use bytes::Bytes;

/// The header of a chunk: `i/n`, 1-based.
pub const CHUNK_HEADER: &str = "Lk-Chunk";

/// Room left in a message for the headers (writer, message id, fence, chunk).
pub const HEADER_ROOM: usize = 8 * 1024;

/// The smallest chunk a writer uses, whatever the server's limit says.
pub const MIN_CHUNK: usize = 4 * 1024;

/// The chunk size for a server whose `max_payload` is `max_payload`.
pub fn chunk_size(max_payload: usize) -> usize {
    max_payload.saturating_sub(HEADER_ROOM).max(MIN_CHUNK)
}

/// The messages `record` is written as: itself alone (no header) when it fits in `chunk`,
/// else its consecutive pieces of at most `chunk` bytes with their `i/n` header values.
pub fn pieces(record: &Bytes, chunk: usize) -> Vec<(Bytes, Option<String>)> {
    let chunk = chunk.max(1);
    if record.len() <= chunk {
        return vec![(record.clone(), None)];
    }
    let n = record.len().div_ceil(chunk);
    (0..n)
        .map(|i| {
            let end = ((i + 1) * chunk).min(record.len());
            (record.slice(i * chunk..end), Some(format!("{}/{n}", i + 1)))
        })
        .collect()
}

/// Reads an `i/n` header value (`1 <= i <= n`, `n >= 2`).
pub fn parse(value: &str) -> Option<(u32, u32)> {
    let (i, n) = value.split_once('/')?;
    let (i, n) = (i.trim().parse().ok()?, n.trim().parse().ok()?);
    (1 <= i && i <= n && n >= 2).then_some((i, n))
}

/// What one message of a part's subject made of the part's log.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// A whole record to apply (its last message's sequence is the part's new mark).
    pub record: Option<Bytes>,
    /// An incomplete group this message ended (its first sequence), never to be applied.
    pub abandoned: Option<u64>,
    /// A chunk that belongs to no group (its group's start was never seen), dropped.
    pub orphan: bool,
}

/// A group being read.
#[derive(Debug)]
struct Pending {
    n: u32,
    first: u64,
    last: u64,
    parts: Vec<Bytes>,
}

/// Puts one part's records back together, message by message, in the subject's order.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: Option<Pending>,
}

impl Assembler {
    /// Takes the message at `seq` with its chunk header (`None`: a whole record).
    pub fn feed(&mut self, seq: u64, chunk: Option<(u32, u32)>, payload: Bytes) -> Fed {
        let mut out = Fed {
            record: None,
            abandoned: None,
            orphan: false,
        };
        let continues = matches!(
            (&self.pending, chunk),
            (Some(p), Some((i, n))) if n == p.n && i as usize == p.parts.len() + 1
        );
        if !continues {
            out.abandoned = self.pending.take().map(|p| p.first);
        }
        match chunk {
            None => out.record = Some(payload),
            Some((1, n)) => {
                self.pending = Some(Pending {
                    n,
                    first: seq,
                    last: seq,
                    parts: vec![payload],
                })
            }
            Some(_) if !continues => out.orphan = true,
            Some(_) => {
                if let Some(p) = self.pending.as_mut() {
                    p.parts.push(payload);
                    p.last = seq;
                    if p.parts.len() == p.n as usize {
                        let whole: Vec<u8> = p.parts.concat();
                        self.pending = None;
                        out.record = Some(Bytes::from(whole));
                    }
                }
            }
        }
        out
    }

    /// The last sequence of the group being read, if one is incomplete.
    pub fn pending_until(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed_all(a: &mut Assembler, msgs: &[(u64, Bytes, Option<String>)]) -> Vec<Fed> {
        msgs.iter()
            .map(|(seq, b, h)| a.feed(*seq, h.as_deref().and_then(parse), b.clone()))
            .collect()
    }

    fn numbered(
        pieces: Vec<(Bytes, Option<String>)>,
        from: u64,
    ) -> Vec<(u64, Bytes, Option<String>)> {
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, (b, h))| (from + i as u64, b, h))
            .collect()
    }

    #[test]
    fn a_small_record_is_one_message_without_a_header() {
        let r = Bytes::from_static(b"{\"x\":1}");
        assert_eq!(pieces(&r, 100), vec![(r.clone(), None)]);
        let mut a = Assembler::default();
        let fed = a.feed(7, None, r.clone());
        assert_eq!(fed.record, Some(r));
        assert_eq!(a.pending_until(), None);
    }

    #[test]
    fn headers_parse_and_nonsense_is_refused() {
        assert_eq!(parse("2/3"), Some((2, 3)));
        for bad in ["0/3", "4/3", "1/1", "x/2", "2", ""] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(chunk_size(1024 * 1024), 1024 * 1024 - HEADER_ROOM);
        assert_eq!(chunk_size(100), MIN_CHUNK);
    }

    #[test]
    fn an_incomplete_group_is_abandoned_by_the_next_record_and_never_applied() {
        let big = Bytes::from(vec![b'a'; 25]);
        let mut msgs = numbered(pieces(&big, 10), 1);
        msgs.truncate(2); // the writer died before its third chunk
        let mut a = Assembler::default();
        let fed = feed_all(&mut a, &msgs);
        assert!(fed.iter().all(|f| f.record.is_none()));
        assert_eq!(a.pending_until(), Some(2), "undecided at the log's end");
        let next = Bytes::from_static(b"next");
        let f = a.feed(3, None, next.clone());
        assert_eq!(f.record, Some(next));
        assert_eq!(f.abandoned, Some(1));
        // a late last chunk of the abandoned group belongs to nothing
        let f = a.feed(4, parse("3/3"), Bytes::from_static(b"zzzzz"));
        assert!(f.orphan && f.record.is_none());
    }

    proptest! {
        /// Whatever the sizes, a record cut into pieces comes back byte for byte, and only once
        /// its last piece is read.
        #[test]
        fn pieces_put_back_together_are_the_record(
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..8),
            chunk in 1usize..64,
        ) {
            let mut a = Assembler::default();
            let mut seq = 1;
            for r in records {
                let r = Bytes::from(r);
                let ps = pieces(&r, chunk);
                let n = ps.len();
                for (i, f) in feed_all(&mut a, &numbered(ps, seq)).into_iter().enumerate() {
                    prop_assert_eq!(f.abandoned, None);
                    prop_assert!(!f.orphan);
                    if i + 1 == n {
                        prop_assert_eq!(f.record.as_ref(), Some(&r));
                    } else {
                        prop_assert_eq!(f.record, None);
                    }
                }
                seq += n as u64;
            }
            prop_assert_eq!(a.pending_until(), None);
        }
    }
}
