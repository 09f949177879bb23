//! The feed: this node's durable consumer of the uplink stream (`node-{node_id}`), handing every
//! node's uplinks, in stream order, to this node's ingest. Ingest judges them exactly as in
//! single-node mode (deduplication by the cabinet's sequence, storage lives, quarantine), writes
//! them to this node's audit log and passes them to its fleet state, dispatcher and the other
//! actors.
//!
//! The stream is acknowledged (`AckPolicy::All`: one ack covers everything before it) only up
//! to what ingest reports durable (its `progress` watch, the highest stream sequence of a
//! committed batch), so a node killed at any moment takes up again where its audit log ends:
//! what it had received but not stored is delivered again, what it had stored and is delivered
//! again is a duplicate ingest drops.
//!
//! When the consumer's pull fails (NATS gone, a stream leader change) it is opened again with
//! backoff. Each opening starts right after the acknowledged floor: a consumer left with
//! uplinks delivered but not acknowledged (a node killed) is made again from there, since the
//! server would hand them again only after the ack wait, behind later uplinks ingest would drop
//! as gaps.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{Context, Message};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::journal::TOPIC_HEADER;
use super::ClusterMetrics;
use crate::broker::Inbound;

/// Messages pulled per request.
const PULL_BATCH: usize = 1_000;
/// How long the server waits for an ack before delivering again.
const ACK_WAIT: Duration = Duration::from_secs(60);
/// Unacknowledged messages the server lets this consumer have.
const MAX_ACK_PENDING: i64 = 100_000;

/// One node's consumer of the uplink stream.
pub struct Feed {
    js: Context,
    stream: String,
    durable: String,
    ingest: mpsc::Sender<Inbound>,
    progress: watch::Receiver<u64>,
    metrics: ClusterMetrics,
}

/// Why a consumer round ended.
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("{0}")]
    Nats(String),
    #[error("the consumer's message stream ended")]
    Ended,
}

fn nats(e: impl std::fmt::Display) -> FeedError {
    FeedError::Nats(e.to_string())
}

impl Feed {
    /// The feed of node `node`, reading `stream` into `ingest`; `progress` is ingest's durable
    /// stream sequence.
    pub fn new(
        js: Context,
        stream: String,
        node: &str,
        ingest: mpsc::Sender<Inbound>,
        progress: watch::Receiver<u64>,
        metrics: ClusterMetrics,
    ) -> Self {
        Self {
            js,
            stream,
            durable: format!("node-{node}"),
            ingest,
            progress,
            metrics,
        }
    }

    /// Runs until `stop` fires or ingest is gone.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut wait = Duration::from_millis(100);
        let mut failures = 0u64;
        loop {
            let fed = self.metrics.feed.get();
            match self.consume(&stop).await {
                Ok(()) => return,
                Err(e) => {
                    if self.metrics.feed.get() > fed {
                        // it worked for a while: this is a new interruption
                        wait = Duration::from_millis(100);
                        failures = 0;
                    }
                    failures += 1;
                    self.metrics.feed_restarts.inc();
                    if failures == 1 {
                        tracing::warn!(error = %e, "uplink stream consumer interrupted; opening it again (logged once until it works)");
                    } else {
                        tracing::debug!(error = %e, failures, "uplink stream consumer interrupted again");
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

    /// One life of the consumer. `Ok` when stopped; `Err` to open it again.
    async fn consume(&mut self, stop: &CancellationToken) -> Result<(), FeedError> {
        let stream = self.js.get_stream(&self.stream).await.map_err(nats)?;
        // A consumer that delivered more than was acknowledged (the node was killed, or the
        // last life ended with uplinks in flight) would go on after them and hand them again
        // only after `ACK_WAIT`: ingest would meanwhile drop the later uplinks as gaps, and the
        // next cumulative ack would cover the ones never stored. So each life starts again
        // right after the acknowledged floor.
        let mut deliver_policy = DeliverPolicy::All;
        // (only "no such consumer" means a first start; any other failure tries the life again,
        // never reuses a consumer whose floor is unknown)
        let info = match stream.consumer_info(&self.durable).await {
            Ok(info) => Some(info),
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => None,
            Err(e) => return Err(nats(e)),
        };
        if let Some(info) = info {
            let (floor, delivered) = (
                info.ack_floor.stream_sequence,
                info.delivered.stream_sequence,
            );
            if delivered > floor {
                tracing::info!(
                    consumer = %self.durable,
                    acknowledged = floor,
                    delivered,
                    "uplinks delivered but not acknowledged: reading again from the acknowledged floor"
                );
                stream.delete_consumer(&self.durable).await.map_err(nats)?;
            }
            if floor > 0 {
                deliver_policy = DeliverPolicy::ByStartSequence {
                    start_sequence: floor + 1,
                };
            }
        }
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &self.durable,
                pull::Config {
                    durable_name: Some(self.durable.clone()),
                    description: Some("a gateway node's ingest".into()),
                    ack_policy: AckPolicy::All,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: MAX_ACK_PENDING,
                    deliver_policy,
                    ..Default::default()
                },
            )
            .await
            .map_err(nats)?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .messages()
            .await
            .map_err(nats)?;
        tracing::info!(consumer = %self.durable, "reading the uplink stream");
        // delivered to ingest, not yet durable there
        let mut unacked: VecDeque<(u64, Message)> = VecDeque::new();
        loop {
            tokio::select! {
                m = messages.next() => match m {
                    Some(Ok(m)) => {
                        let seq = m.info().map_err(nats)?.stream_sequence;
                        let topic = m
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(TOPIC_HEADER))
                            .map(|v| Bytes::copy_from_slice(v.as_str().as_bytes()))
                            .unwrap_or_default();
                        let inbound = Inbound {
                            topic,
                            payload: m.payload.clone(),
                            journal: Some(seq),
                        };
                        if self.ingest.send(inbound).await.is_err() {
                            return Ok(()); // ingest has stopped
                        }
                        self.metrics.feed.inc();
                        unacked.push_back((seq, m));
                    }
                    Some(Err(e)) => return Err(nats(e)),
                    None => return Err(FeedError::Ended),
                },
                changed = self.progress.changed() => {
                    if changed.is_err() {
                        return Ok(()); // ingest has stopped
                    }
                    let durable = *self.progress.borrow_and_update();
                    ack_through(&mut unacked, durable).await;
                }
                _ = stop.cancelled() => {
                    let durable = *self.progress.borrow();
                    ack_through(&mut unacked, durable).await;
                    return Ok(());
                }
            }
        }
    }
}

/// Acknowledges (cumulatively) the newest delivered message at or below `durable`.
async fn ack_through(unacked: &mut VecDeque<(u64, Message)>, durable: u64) {
    let mut last = None;
    while unacked.front().is_some_and(|(s, _)| *s <= durable) {
        last = unacked.pop_front();
    }
    if let Some((seq, m)) = last {
        if let Err(e) = m.ack().await {
            // the next ack covers it; the server delivers it again meanwhile (a duplicate)
            tracing::debug!(error = %e, seq, "stream ack failed");
        }
    }
}
