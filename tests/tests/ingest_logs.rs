//! Bad input is logged once, not per message: the first occurrence of a reason fleet-wide at
//! warn, the first per (cabinet, reason) at debug, then only counted. (A test binary of its
//! own: it installs a process-wide tracing subscriber that counts ingest's log events.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use locker_schemas::{Topic, UpKind};
use locker_tests::cabinet::RawCabinet;
use locker_tests::gateway::TestGateway;
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

#[derive(Clone, Default)]
struct Count {
    warn: Arc<AtomicUsize>,
    other: Arc<AtomicUsize>,
}

impl<S: tracing::Subscriber> Layer<S> for Count {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() == Level::WARN {
            self.warn.fetch_add(1, Ordering::SeqCst);
        } else {
            self.other.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_errors_are_logged_once_per_reason_and_counted_every_time() {
    let count = Count::default();
    let subscriber = tracing_subscriber::registry().with(
        count
            .clone()
            .with_filter(Targets::new().with_target("locker_gateway::ingest", Level::DEBUG)),
    );
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");

    let mut pki = TestPki::new();
    let (ca, cb) = (pki.cabinet("CAB-A"), pki.cabinet("CAB-B"));
    let gw = TestGateway::start(&pki).await;
    let a = RawCabinet::connect(&pki, &ca, "CAB-A", gw.edge_addr());
    let b = RawCabinet::connect(&pki, &cb, "CAB-B", gw.edge_addr());
    eventually("both connected", || a.connected() && b.connected()).await;
    for _ in 0..25 {
        for c in [&a, &b] {
            let topic = Topic::Up(c.id.clone(), UpKind::Door).to_string();
            c.send_raw(&topic, vec![0xff, 0x00, 0x13]).await;
        }
    }
    eventually_async("every one counted", || {
        let api = gw.api.clone();
        async move {
            let n = api
                .metric("locker_ingest_decode_errors_total{reason=\"malformed\"}")
                .await;
            (n >= 50.0).then_some(())
        }
    })
    .await;
    assert_eq!(
        count.warn.load(Ordering::SeqCst),
        1,
        "once fleet-wide at warn"
    );
    assert_eq!(
        count.other.load(Ordering::SeqCst),
        1,
        "once more, quietly, for the second cabinet"
    );
}
