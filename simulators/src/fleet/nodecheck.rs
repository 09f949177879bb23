//! The invariant report's cluster checks ([`Fleet::check_nodes`]): in cluster mode every node
//! ingests every cabinet's uplinks from the replicated stream, so every node's audit log of
//! every cabinet must be the same as the domain node's (which [`super::report::check_cabinet`]
//! checks against the agent: seqs `1..=last`, each once, the agent's own last seq); a node
//! read after the domain node may hold newer events (a battery report since), which must
//! continue the seqs one by one. A node is read again for a few seconds until it agrees (it
//! may still be catching up from the stream); one that does not agree then is a violation,
//! naming the first difference. The summary adds
//! what is cluster-specific: each node's events, the cabinets connected to it, its journal
//! (uplinks written to the stream: stored, duplicates JetStream dropped, failed writes) and the
//! commands it forwarded to other nodes or received from them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::api::{metric_sum, metric_with, Api, AuditEvent};
use super::report::Report;
use super::Fleet;

/// How long a node may take to agree with the domain node about one cabinet.
const AGREE_WITHIN: Duration = Duration::from_secs(15);

/// One node of a cluster, as the report saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeSummary {
    /// `gw1`, `gw2`, ... (`gw1` the domain node).
    pub name: String,
    /// Events in its audit logs of the fleet's cabinets (other nodes, read after the domain
    /// node, may hold a few newer ones).
    pub events: u64,
    /// Cabinets whose audit log on this node equals the domain node's.
    pub agreeing: u64,
    /// From its `/metrics` (None where it did not answer): cabinets connected to it now,
    /// uplinks it wrote to the stream (stored, dropped by JetStream as duplicates, failed
    /// writes), its consumer's restarts, commands forwarded to other nodes and received.
    pub cabinets_here: Option<f64>,
    pub journal_stored: Option<f64>,
    pub journal_duplicate: Option<f64>,
    pub journal_failed: Option<f64>,
    pub feed_restarts: Option<f64>,
    pub forwarded: Option<f64>,
    pub received: Option<f64>,
    pub gaps: Option<f64>,
    pub duplicates: Option<f64>,
}

/// The cluster part of the report (empty `nodes` with one gateway).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterSummary {
    pub nodes: Vec<NodeSummary>,
    /// Cabinets whose audit log was compared on every node.
    pub cabinets: u64,
    /// (Cabinet, node) pairs that did not agree.
    pub disagreements: u64,
}

/// None if `other` holds the same log as `reference` (seq, kind and data of every event),
/// possibly followed by events made after `reference` was read (their seqs continuing it one
/// by one); else where they first differ.
pub fn first_difference(reference: &[AuditEvent], other: &[AuditEvent]) -> Option<String> {
    let short = |e: Option<&AuditEvent>| {
        e.map_or("nothing".to_owned(), |e| {
            format!("seq {} {}", e.seq, e.kind)
        })
    };
    let at = reference
        .iter()
        .zip(other)
        .position(|(a, b)| a.seq != b.seq || a.kind != b.kind || a.data != b.data);
    if let Some(k) = at {
        return Some(format!(
            "at event {}: {} ({}) where the domain node has {} ({})",
            k + 1,
            short(other.get(k)),
            other.get(k).map(|e| e.data.to_string()).unwrap_or_default(),
            short(reference.get(k)),
            reference
                .get(k)
                .map(|e| e.data.to_string())
                .unwrap_or_default()
        ));
    }
    if other.len() < reference.len() {
        let k = other.len();
        return Some(format!(
            "{} events where the domain node has {}; at event {}: nothing where it has {}",
            other.len(),
            reference.len(),
            k + 1,
            short(reference.get(k))
        ));
    }
    // newer events than the domain node's when it was read: they must continue its seqs
    let first = reference.last().map_or(1, |e| e.seq + 1);
    let newer = other.iter().enumerate().skip(reference.len());
    for (expect, (k, e)) in (first..).zip(newer) {
        if e.seq != expect {
            return Some(format!(
                "at event {} (after the domain node's last): seq {} where {expect} was expected (gap or duplicate)",
                k + 1,
                e.seq
            ));
        }
    }
    None
}

/// Reads `cabinet`'s audit log on `api` until it equals `reference` (at most
/// [`AGREE_WITHIN`]); what it last read.
async fn read_until_same(api: &Api, cabinet: &str, reference: &[AuditEvent]) -> Vec<AuditEvent> {
    let deadline = tokio::time::Instant::now() + AGREE_WITHIN;
    loop {
        let got = api.events(cabinet).await.unwrap_or_default();
        if first_difference(reference, &got).is_none() || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Fleet {
    /// The cluster checks (nothing with one gateway): `logs[i]` is cabinet `i`'s audit log as
    /// the domain node holds it (None where it was not readable: already a violation).
    pub(super) async fn check_nodes(&self, r: &mut Report, logs: Vec<Option<Vec<AuditEvent>>>) {
        let Some((_, others)) = self.nodes.split_first() else {
            return;
        };
        let mut summary = ClusterSummary {
            nodes: self
                .nodes
                .iter()
                .map(|(name, _)| NodeSummary {
                    name: name.clone(),
                    ..NodeSummary::default()
                })
                .collect(),
            ..ClusterSummary::default()
        };
        let gate = Arc::new(Semaphore::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        for (cab, log) in self.cabinets.iter().zip(logs) {
            let Some(log) = log else { continue };
            let (id, gate) = (cab.id.to_string(), gate.clone());
            let apis: Vec<Api> = others.iter().map(|(_, a)| a.clone()).collect();
            tasks.spawn(async move {
                let _p = gate.acquire_owned().await;
                let mut got = Vec::with_capacity(apis.len());
                for api in &apis {
                    got.push(read_until_same(api, &id, &log).await);
                }
                (id, log, got)
            });
        }
        while let Some(t) = tasks.join_next().await {
            let Ok((id, log, got)) = t else {
                r.problem("a cluster check task failed".into());
                continue;
            };
            summary.cabinets += 1;
            if let Some(n) = summary.nodes.first_mut() {
                n.events += log.len() as u64;
                n.agreeing += 1;
            }
            for (k, events) in got.iter().enumerate() {
                let Some(node) = summary.nodes.get_mut(k + 1) else {
                    continue;
                };
                node.events += events.len() as u64;
                match first_difference(&log, events) {
                    None => node.agreeing += 1,
                    Some(d) => {
                        summary.disagreements += 1;
                        r.problem(format!(
                            "{id}: node {}'s audit log differs from the domain node's: {d}",
                            node.name
                        ));
                    }
                }
            }
        }
        for ((_, api), node) in self.nodes.iter().zip(&mut summary.nodes) {
            let Ok(m) = api.metrics().await else {
                r.problem(format!("node {}: /metrics not readable", node.name));
                continue;
            };
            let journal = |result: &str| {
                metric_with(
                    &m,
                    "locker_cluster_journal_total",
                    &format!("result=\"{result}\""),
                )
            };
            let downlinks = |result: &str| {
                metric_with(
                    &m,
                    "locker_cluster_downlinks_total",
                    &format!("result=\"{result}\""),
                )
            };
            node.cabinets_here = Some(metric_sum(&m, "locker_cluster_cabinets_here"));
            node.journal_stored = Some(journal("stored"));
            node.journal_duplicate = Some(journal("duplicate"));
            node.journal_failed = Some(journal("failed"));
            node.feed_restarts = Some(metric_sum(&m, "locker_cluster_feed_restarts_total"));
            node.forwarded = Some(downlinks("forwarded"));
            node.received = Some(downlinks("received"));
            node.gaps = Some(metric_sum(&m, "locker_ingest_gaps_total"));
            node.duplicates = Some(metric_sum(&m, "locker_ingest_duplicates_total"));
        }
        r.cluster = summary;
    }
}

impl fmt::Display for ClusterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes.is_empty() {
            return Ok(());
        }
        let n = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.0}"));
        writeln!(
            f,
            "  cluster: every node's audit log of every cabinet the same as the domain node's ({}): {} cabinets compared on {} nodes, {} disagreements",
            if self.disagreements == 0 { "all agree" } else { "NOT all agree" },
            self.cabinets,
            self.nodes.len(),
            self.disagreements
        )?;
        for s in &self.nodes {
            writeln!(
                f,
                "    {}: {} events, {}/{} cabinets agreeing; {} cabinets connected here; journal stored {}, duplicates {}, failed {}; feed restarts {}; ingest dropped {} gaps, {} duplicates; commands forwarded {}, received {}",
                s.name,
                s.events,
                s.agreeing,
                self.cabinets,
                n(s.cabinets_here),
                n(s.journal_stored),
                n(s.journal_duplicate),
                n(s.journal_failed),
                n(s.feed_restarts),
                n(s.gaps),
                n(s.duplicates),
                n(s.forwarded),
                n(s.received)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(seq: u64, kind: &str, data: serde_json::Value) -> AuditEvent {
        AuditEvent {
            seq,
            kind: kind.into(),
            data,
        }
    }

    #[test]
    fn the_first_difference_is_named() {
        let a = vec![
            ev(1, "door", json!({"open": true})),
            ev(2, "scan", json!({})),
        ];
        assert_eq!(first_difference(&a, &a.clone()), None);
        let short = first_difference(&a, &a[..1]).expect("a missing event");
        assert!(
            short.contains("1 events where the domain node has 2"),
            "{short}"
        );
        assert!(short.contains("nothing where it has seq 2 scan"), "{short}");
        let mut dup = a.clone();
        dup.insert(1, ev(1, "door", json!({"open": true})));
        let d = first_difference(&a, &dup).expect("a duplicate");
        assert!(d.contains("at event 2: seq 1 door"), "{d}");
        let mut other = a.clone();
        other[0].data = json!({"open": false});
        assert!(first_difference(&a, &other).is_some(), "data differs");
    }

    #[test]
    fn the_summary_prints_every_node() {
        let s = ClusterSummary {
            nodes: vec![
                NodeSummary {
                    name: "gw1".into(),
                    events: 10,
                    agreeing: 2,
                    cabinets_here: Some(1.0),
                    ..NodeSummary::default()
                },
                NodeSummary {
                    name: "gw2".into(),
                    events: 10,
                    agreeing: 2,
                    ..NodeSummary::default()
                },
            ],
            cabinets: 2,
            disagreements: 0,
        };
        let text = s.to_string();
        assert!(text.contains("all agree"), "{text}");
        assert!(
            text.contains("gw2: 10 events, 2/2 cabinets agreeing"),
            "{text}"
        );
        assert_eq!(ClusterSummary::default().to_string(), "");
    }
}
