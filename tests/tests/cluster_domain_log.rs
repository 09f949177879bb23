//! The domain log's write rules against a real three-server JetStream cluster and real sled
//! stores: a second writer is fenced off, a lost ack is not a fork, and a record in chunks is
//! applied whole or not at all (a writer killed part way leaves nothing half applied).

use std::sync::Arc;

use locker_gateway::cluster::domain::stores::Record;
use locker_gateway::cluster::domain::{apply, chunks, Fencing, Part, Writer, DOMAIN_STREAM};
use locker_gateway::cluster::{Cluster, ClusterConfig};
use locker_gateway::store::outbound::OutBatch;
use locker_gateway::store::{outbound::OutboundStore, Store, StoreError};
use locker_tests::nats::NatsCluster;

/// A client of `nats` with the cluster's streams and buckets made.
async fn connect(nats: &NatsCluster, node: &str) -> Cluster {
    let cfg = ClusterConfig {
        enabled: true,
        node_id: node.into(),
        nats_urls: nats.urls_from(0),
        connect_timeout_ms: 60_000,
        ..Default::default()
    };
    let registry = prometheus::Registry::new();
    Cluster::connect(&cfg, &registry).await.expect("connect")
}

/// A writer of `part` as `who`, expecting the part's last record at `last`.
async fn writer(c: &Cluster, part: Part, who: &str, last: u64, fencing: Fencing) -> Writer {
    let stream = c.js.get_stream(DOMAIN_STREAM).await.expect("stream");
    Writer::new(
        c.js.clone(),
        stream,
        tokio::runtime::Handle::current(),
        part,
        last,
        who.to_string(),
        fencing,
        c.metrics.clone(),
    )
}

async fn append(w: Arc<Writer>, bytes: Vec<u8>) -> Result<u64, StoreError> {
    tokio::task::spawn_blocking(move || w.append(bytes))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_writer_of_the_domain_is_fenced_off_and_a_lost_ack_is_not_a_fork() {
    let nats = NatsCluster::start(3);
    let c = connect(&nats, "fence").await;
    let (fa, fb) = (Fencing::default(), Fencing::default());
    let a = Arc::new(writer(&c, Part::Alerts, "a:1", 0, fa.clone()).await);
    let b = Arc::new(writer(&c, Part::Alerts, "b:1", 0, fb.clone()).await);
    let first = append(a.clone(), b"{\"alerts_prune\":{\"before\":1}}".to_vec())
        .await
        .expect("a writes");
    // b believes the log is empty: its write would fork the history; the stream refuses it
    let refused = append(b.clone(), b"{\"alerts_prune\":{\"before\":2}}".to_vec()).await;
    assert!(
        matches!(refused, Err(StoreError::NotLeader(_))),
        "{refused:?}"
    );
    assert!(fb.check().is_err(), "b stops writing for good");
    assert!(fa.check().is_ok());
    // a's own record whose ack was lost (a writer that still expects the sequence before it)
    // is recognised as a's, not taken for another writer's
    let again = Arc::new(writer(&c, Part::Alerts, "a:1", 0, fa.clone()).await);
    let same = append(again, b"{\"alerts_prune\":{\"before\":1}}".to_vec())
        .await
        .expect("a's resend");
    assert_eq!(same, first);
    let next = append(a, b"{\"alerts_prune\":{\"before\":3}}".to_vec())
        .await
        .expect("a goes on");
    assert!(next > first);
    drop(nats);
}

/// An outbound record moving `n` cursors to `value`: its JSON grows with `n`.
fn cursors(n: usize, value: u64) -> Vec<u8> {
    let batch = OutBatch {
        cursors: (0..n).map(|i| (format!("CAB-{i:05}"), value)).collect(),
        ..Default::default()
    };
    serde_json::to_vec(&Record::Outbound { batch, flush: true }).expect("json")
}

/// Every cursor of `store`'s outbound trees.
fn cursor_values(store: &Store) -> std::collections::BTreeSet<u64> {
    let loaded = OutboundStore::load(store.outbound()).expect("load");
    loaded.cursors.values().copied().collect()
}

async fn caught_up(c: &Cluster, store: &Store) -> std::collections::HashMap<Part, u64> {
    apply::catch_up(&c.js, store, &c.metrics, std::time::Duration::from_secs(60))
        .await
        .expect("caught up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_in_chunks_is_applied_whole_or_not_at_all() {
    let nats = NatsCluster::start(3);
    let c = connect(&nats, "chunks").await;
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("db")).expect("store");

    // a record far larger than one message goes as chunks and is applied once whole
    let chunk = 500;
    let big = cursors(400, 1);
    assert!(big.len() > 5 * chunk, "{} bytes", big.len());
    let w = writer(&c, Part::Outbound, "w:1", 0, Fencing::default()).await;
    let w = Arc::new(w.with_chunk_size(chunk));
    let whole = append(w.clone(), big).await.expect("written in chunks");
    let heads = caught_up(&c, &store).await;
    assert_eq!(heads[&Part::Outbound], whole);
    assert_eq!(cursor_values(&store), [1].into());
    assert_eq!(store.domain_marks().get("outbound").expect("mark"), whole);

    // a writer killed part way: the first two chunks of a record of three reach the stream
    let unfinished = bytes::Bytes::from(cursors(400, 2));
    let pieces = chunks::pieces(&unfinished, unfinished.len().div_ceil(3));
    assert_eq!(pieces.len(), 3);
    let mut last = whole;
    for (piece, header) in pieces.into_iter().take(2) {
        let mut h = async_nats::HeaderMap::new();
        h.insert(chunks::CHUNK_HEADER, header.expect("chunk header").as_str());
        h.insert(
            "Nats-Expected-Last-Subject-Sequence",
            last.to_string().as_str(),
        );
        last =
            c.js.publish_with_headers(Part::Outbound.subject(), h, piece)
                .await
                .expect("publish")
                .await
                .expect("stored")
                .sequence;
    }
    // catching up counts the unfinished tail as reached, and applies none of it
    let heads = caught_up(&c, &store).await;
    assert_eq!(heads[&Part::Outbound], last);
    assert_eq!(cursor_values(&store), [1].into());
    assert_eq!(store.domain_marks().get("outbound").expect("mark"), whole);

    // the next writer starts after it: its first record abandons it, on every node alike
    let next = Arc::new(writer(&c, Part::Outbound, "w:2", last, Fencing::default()).await);
    let small = append(next, cursors(3, 3)).await.expect("next record");
    caught_up(&c, &store).await;
    let fresh_dir = tempfile::tempdir().expect("dir");
    let fresh = Store::open(&fresh_dir.path().join("db")).expect("store");
    caught_up(&c, &fresh).await;
    for s in [&store, &fresh] {
        assert_eq!(
            cursor_values(s),
            [1, 3].into(),
            "the unfinished record never applied"
        );
        assert_eq!(s.domain_marks().get("outbound").expect("mark"), small);
    }
    let abandoned = c
        .metrics
        .domain_applied
        .with_label_values(&["outbound", "abandoned"])
        .get();
    assert!(abandoned >= 1, "abandoned records are counted");

    // a commit touching each of a national network's 100,000 cabinets is larger than the server's
    // max_payload (1 MB): with the writer's default chunk size it goes through all the same
    let national = cursors(100_000, 9);
    assert!(
        national.len() > c.js.client().max_payload(),
        "{} bytes",
        national.len()
    );
    let w = Arc::new(writer(&c, Part::Outbound, "w:3", small, Fencing::default()).await);
    let seq = append(w, national)
        .await
        .expect("a record over max_payload");
    caught_up(&c, &fresh).await;
    assert_eq!(cursor_values(&fresh), [9].into());
    assert_eq!(fresh.domain_marks().get("outbound").expect("mark"), seq);
    drop(nats);
}

/// Every entry of the outbox's trees.
fn outbox_trees(store: &Store) -> Vec<locker_gateway::store::snapshot::TreeDump> {
    locker_gateway::store::snapshot::dump(store.db(), locker_gateway::store::outbound::TREES)
        .expect("dump")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_trim_the_stream_and_a_node_behind_the_purge_starts_from_one() {
    let nats = NatsCluster::start(3);
    let c = connect(&nats, "snap").await;
    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("dir"));
    let open = |i: usize| Store::open(&dirs[i].path().join("db")).expect("store");
    let (leader, behind, fresh) = (open(0), open(1), open(2));
    let heads = caught_up(&c, &leader).await;
    let stream = c.js.get_stream(DOMAIN_STREAM).await.expect("stream");
    // snapshots every 2 KiB written, in chunks of 1 KB
    let writers = locker_gateway::cluster::domain::stores::writers(&leader, 2_048, |part| {
        Writer::new(
            c.js.clone(),
            stream.clone(),
            tokio::runtime::Handle::current(),
            part,
            heads[&part],
            "snap:1".into(),
            Fencing::default(),
            c.metrics.clone(),
        )
        .with_chunk_size(1_000)
    });
    let commit = |i: u64| {
        let w = writers.outbound.clone();
        async move {
            let batch = OutBatch {
                cursors: vec![(format!("CAB-{:03}", i % 50), i)],
                ..Default::default()
            };
            tokio::task::spawn_blocking(move || w.commit(&batch, false))
                .await
                .expect("join")
                .expect("commit")
        }
    };
    for i in 0..20 {
        commit(i).await;
    }
    // a node that read this far, then was away while snapshots purged what follows its mark
    caught_up(&c, &behind).await;
    let mark = behind.domain_marks().get("outbound").expect("mark");
    for i in 20..300 {
        commit(i).await;
    }
    let written = c
        .metrics
        .domain_snapshots
        .with_label_values(&["outbound", "written"])
        .get();
    assert!(written >= 2, "{written} snapshots");
    let purged = c
        .metrics
        .domain_purged
        .with_label_values(&["outbound"])
        .get();
    assert!(purged >= 100, "{purged} purged");
    let kept = stream
        .get_raw_message(mark + 1)
        .await
        .map(|m| m.subject.to_string());
    assert!(
        kept.is_err(),
        "the record after the away node's mark is purged: {kept:?}"
    );
    // the stream holds about twice the state, not 300 records
    let mut stream = stream;
    let messages = stream.info().await.expect("info").state.messages;
    assert!(messages < 100, "{messages} messages left");
    // the node behind the purge and a node with an empty disk both end with the leader's trees
    let want = outbox_trees(&leader);
    assert_eq!(cursor_values(&leader).len(), 50);
    for s in [&behind, &fresh] {
        caught_up(&c, s).await;
        assert_eq!(outbox_trees(s), want);
    }
    drop(nats);
}
