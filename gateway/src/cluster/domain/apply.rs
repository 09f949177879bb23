//! Applying the domain stream to this node's own trees: continuously on a node that does not
//! run the domain ([`follow`]), and once, up to the stream's end, before a node starts running it
//! ([`catch_up`]). Each record is applied with the same sled code that wrote it on the domain
//! node ([`Record::apply`]) and then the part's mark moves, so a node applies every record once
//! in effect (a record applied again after a crash changes nothing).
//!
//! The reader is an ordered consumer (ephemeral, no acknowledgements, recreated by the client
//! on a gap) from the lowest mark on; records at or below their part's mark are skipped. A
//! record in chunks is put back together first ([`super::chunks`]); a part's mark only ever
//! moves to the last message of a whole record, so a reader opened again reads an unfinished
//! group from its start.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::Context;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::chunks::{self, Assembler, CHUNK_HEADER};
use super::stores::Record;
use super::{Part, DOMAIN_STREAM, DOMAIN_SUBJECTS};
use crate::cluster::{ClusterError, ClusterMetrics};
use crate::store::{self, Store, StoreError};

/// The stream sequence of every part's last record (0 for a part with none).
pub async fn heads(js: &Context) -> Result<HashMap<Part, u64>, ClusterError> {
    let stream = js
        .get_stream(DOMAIN_STREAM)
        .await
        .map_err(|e| ClusterError::js("domain stream", e))?;
    let mut out = HashMap::new();
    for part in Part::ALL {
        let seq = match stream
            .get_last_raw_message_by_subject(&part.subject())
            .await
        {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(ClusterError::js("domain stream's last records", e)),
        };
        out.insert(part, seq);
    }
    Ok(out)
}

/// This node's marks, by part.
async fn marks(store: &Store) -> Result<HashMap<Part, u64>, StoreError> {
    let st = store.clone();
    store::blocking(move || {
        let mut out = HashMap::new();
        for part in Part::ALL {
            out.insert(part, st.domain_marks().get(part.name())?);
        }
        Ok(out)
    })
    .await
}

/// Applies the stream to this node's trees until every part has reached its last record, and
/// returns those last records (where the node's writers start). Fails after `limit`.
pub async fn catch_up(
    js: &Context,
    store: &Store,
    metrics: &ClusterMetrics,
    limit: Duration,
) -> Result<HashMap<Part, u64>, ClusterError> {
    let target = heads(js).await?;
    let run = async {
        loop {
            match read(js, store, metrics, None, Some(&target)).await {
                Ok(()) => return Ok::<_, ClusterError>(()),
                Err(e) => {
                    tracing::warn!(error = %e, "catching up with the domain stream; trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| ClusterError::JetStream {
            what: "domain stream",
            detail: format!("not caught up within {} s", limit.as_secs()),
        })??;
    Ok(target)
}

/// Applies the stream to this node's trees as it grows, until `stop`.
pub async fn follow(js: Context, store: Store, metrics: ClusterMetrics, stop: CancellationToken) {
    let mut wait = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match read(&js, &store, &metrics, Some(&stop), None).await {
            Ok(()) => return,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "domain stream reader interrupted; opening it again (logged once until it works)");
                } else {
                    tracing::debug!(error = %e, failures, "domain stream reader interrupted again");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Whether every part has reached its target: its mark, or an incomplete group at the end of
/// its log (undecided, applied by nobody), is at or past it.
fn reached(
    marks: &HashMap<Part, u64>,
    pending: &HashMap<Part, Assembler>,
    target: &HashMap<Part, u64>,
) -> bool {
    target.iter().all(|(p, t)| {
        let mark = marks.get(p).copied().unwrap_or(0);
        let read = pending
            .get(p)
            .and_then(Assembler::pending_until)
            .unwrap_or(0);
        mark.max(read) >= *t
    })
}

/// One life of the reader: from the lowest mark on, until `stop` fires (`Ok`), `target` is
/// reached (`Ok`) or the consumer fails (`Err`).
async fn read(
    js: &Context,
    store: &Store,
    metrics: &ClusterMetrics,
    stop: Option<&CancellationToken>,
    target: Option<&HashMap<Part, u64>>,
) -> Result<(), ClusterError> {
    let mut marks = marks(store)
        .await
        .map_err(|e| ClusterError::js("domain marks", e))?;
    let mut assemblers: HashMap<Part, Assembler> = HashMap::new();
    if target.is_some_and(|t| reached(&marks, &assemblers, t)) {
        return Ok(());
    }
    let start = marks.values().copied().min().unwrap_or(0) + 1;
    let stream = js
        .get_stream(DOMAIN_STREAM)
        .await
        .map_err(|e| ClusterError::js("domain stream", e))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: DOMAIN_SUBJECTS.into(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::js("domain stream reader", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| ClusterError::js("domain stream reader", e))?;
    let never = CancellationToken::new();
    let stop = stop.unwrap_or(&never);
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = stop.cancelled() => return Ok(()),
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(ClusterError::js("domain stream reader", e)),
            None => {
                return Err(ClusterError::js(
                    "domain stream reader",
                    "the message stream ended",
                ))
            }
        };
        let seq = msg
            .info()
            .map_err(|e| ClusterError::js("domain record", e))?
            .stream_sequence;
        let Some(part) = Part::of_subject(msg.subject.as_str()) else {
            continue;
        };
        if seq > marks.get(&part).copied().unwrap_or(0) {
            let chunk = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(CHUNK_HEADER))
                .map(|v| chunks::parse(v.as_str()).ok_or_else(|| v.as_str().to_string()));
            let fed = match chunk {
                Some(Err(bad)) => {
                    // a header this version cannot read: as an undecodable record, skipped
                    tracing::error!(part = part.name(), seq, header = %bad, "domain record chunk header not understood; skipped");
                    count(metrics, part, "undecodable");
                    None
                }
                Some(Ok(c)) => Some(assemblers.entry(part).or_default().feed(
                    seq,
                    Some(c),
                    msg.payload.clone(),
                )),
                None => Some(assemblers.entry(part).or_default().feed(
                    seq,
                    None,
                    msg.payload.clone(),
                )),
            };
            if let Some(fed) = fed {
                if let Some(first) = fed.abandoned {
                    tracing::warn!(
                        part = part.name(),
                        first,
                        "an unfinished domain record (its writer stopped part way) was abandoned"
                    );
                    count(metrics, part, "abandoned");
                }
                if fed.orphan {
                    tracing::warn!(
                        part = part.name(),
                        seq,
                        "a chunk of an abandoned domain record skipped"
                    );
                    count(metrics, part, "abandoned");
                }
                if let Some(record) = fed.record {
                    apply_one(store, metrics, part, seq, record).await?;
                    marks.insert(part, seq);
                }
            }
        }
        if target.is_some_and(|t| reached(&marks, &assemblers, t)) {
            return Ok(());
        }
    }
}

fn count(metrics: &ClusterMetrics, part: Part, result: &str) {
    metrics
        .domain_applied
        .with_label_values(&[part.name(), result])
        .inc();
}

/// Applies one record and moves its part's mark.
async fn apply_one(
    store: &Store,
    metrics: &ClusterMetrics,
    part: Part,
    seq: u64,
    payload: bytes::Bytes,
) -> Result<(), ClusterError> {
    let record: Record = match serde_json::from_slice(&payload) {
        Ok(r) => r,
        Err(e) => {
            // a record this version cannot read: skipping it is the only way on; say so loudly
            metrics
                .domain_applied
                .with_label_values(&[part.name(), "undecodable"])
                .inc();
            tracing::error!(part = part.name(), seq, error = %e, "domain record not understood; skipped");
            let st = store.clone();
            return store::blocking(move || st.domain_marks().set(part.name(), seq))
                .await
                .map_err(|e| ClusterError::js("domain marks", e));
        }
    };
    let st = store.clone();
    store::blocking(move || {
        record.apply(&st)?;
        st.domain_marks().set(part.name(), seq)
    })
    .await
    .map_err(|e| ClusterError::js("applying a domain record", e))?;
    metrics
        .domain_applied
        .with_label_values(&[part.name(), "applied"])
        .inc();
    Ok(())
}
