//! `cargo bench -p locker-gateway --bench fleet_overview [-- CABINETS]` (or `FLEET_CABINETS=N`,
//! default 10,000): what the console's fleet pages cost at fleet size. Seeds a sled store with
//! CABINETS cabinets in CABINETS/10 sites (24 compartments each: 8 S, 8 M, 6 L, 2 XL; about half
//! held by an order, reserved or ready, one order in 50 with an exception, a quarter of the
//! compartments in a carrier's partition, fleet snapshots with a battery reading, an active
//! alert on one cabinet in ten), starts a real gateway on it and times the real HTTP routes
//! (`GET /v1/fleet/summary`, `/v1/fleet/sites` pages of 50 and 500, a filtered page, one
//! site's page, a phone search), each a few times after one warm-up: mean and worst ms, and
//! the size of the answer.
//!
//! Without `--bench` on the command line (as `cargo test --all-targets` runs it) it does a
//! 200-cabinet smoke run.

mod support;

use std::time::Instant;

use locker_gateway::app::Gateway;
use locker_gateway::json::SizeName;
use locker_gateway::model::{CabinetSnapshot, CompartmentView, PowerView};
use locker_gateway::parcels::alloc::{CabinetSlots, Slot};
use locker_gateway::parcels::model::Exception;
use locker_gateway::parcels::{Carrier, Order, OrderKind, OrderState, Recipient, Site};
use locker_gateway::rules::{Alert, AlertKind, Severity};
use locker_gateway::store::alerts::AlertStore;
use locker_gateway::store::parcels::{Batch, ParcelStore};
use locker_gateway::store::Store;
use locker_schemas::{CabinetId, CarrierId, CompartmentId, OrderId, SiteId};

const TOKEN: &str = "bench-token-0123456789abcdef";
const PER_SITE: usize = 10;
const RUNS: usize = 10;

fn size_of(slot: u16) -> SizeName {
    match slot {
        1..=8 => SizeName::S,
        9..=16 => SizeName::M,
        17..=22 => SizeName::L,
        _ => SizeName::Xl,
    }
}

/// Writes the fleet into the store at `path`; returns the orders written.
fn seed(path: &std::path::Path, cabinets: usize, now: u64) -> anyhow::Result<usize> {
    let store = Store::open(path)?;
    let carriers: Vec<CarrierId> = ["dhl", "ups", "hermes"]
        .iter()
        .map(|c| c.parse())
        .collect::<Result<_, _>>()?;
    let mut batch = Batch {
        carriers: carriers
            .iter()
            .map(|c| Carrier {
                id: c.clone(),
                name: c.to_string(),
                sites: Vec::new(),
                pickup_window_h: None,
            })
            .collect(),
        initialized: true,
        ..Batch::default()
    };
    let (mut snaps, mut alerts) = (Vec::new(), Vec::new());
    let mut n_orders = 0usize;
    for s in 0..cabinets.div_ceil(PER_SITE) {
        let site: SiteId = format!("site-{s:04}").parse()?;
        let ids: Vec<CabinetId> = (s * PER_SITE..((s + 1) * PER_SITE).min(cabinets))
            .map(|k| CabinetId::new(format!("CAB-{k:05}")))
            .collect::<Result<_, _>>()?;
        for (i, id) in ids.iter().enumerate() {
            let k = s * PER_SITE + i;
            let mut slots = CabinetSlots {
                site: Some(site.clone()),
                ..CabinetSlots::default()
            };
            let mut snap = CabinetSnapshot::new(id.clone());
            snap.last_seen = now;
            snap.power = Some(PowerView {
                battery_mv: 12_800,
                soc_pct: (k % 100) as u8,
                pv_w: 0,
                load_w: 10,
                charging: locker_gateway::json::ChargingName::Float,
                temp_c: 20.0,
                at: now,
            });
            for c in 1..=24u16 {
                let size = size_of(c);
                snap.compartments.push(CompartmentView {
                    id: CompartmentId(c),
                    size,
                    open: Some(false),
                });
                let holder = (c % 2 == 0).then(|| {
                    n_orders += 1;
                    let state = if c % 4 == 0 {
                        OrderState::Ready
                    } else {
                        OrderState::Reserved
                    };
                    let o = Order {
                        id: OrderId(ulid::Ulid::from_parts(now, n_orders as u128)),
                        kind: OrderKind::Delivery,
                        carrier: carriers[n_orders % 3].clone(),
                        site: site.clone(),
                        cabinet: Some(id.clone()),
                        requested_cabinet: None,
                        compartment: Some(CompartmentId(c)),
                        size,
                        tracking: format!("JJD{n_orders:012}"),
                        reference: Some(format!("REF-{n_orders}")),
                        recipient: Recipient {
                            phone: Some(format!("+49170{n_orders:07}")),
                            ..Recipient::default()
                        },
                        state,
                        exception: n_orders.is_multiple_of(50).then_some(Exception::TooSmall),
                        created_at: now,
                        created_by: "bench".into(),
                        updated_at: now,
                        reserved_until: None,
                        pickup_deadline: None,
                        pickup_window_h: 72,
                        pickup_window_min: None,
                        reminded: false,
                        pin_hash: None,
                        qr_hash: None,
                        idempotency_key: None,
                        pending_unlock: None,
                        history: Vec::new(),
                    };
                    let id = o.id;
                    batch.orders.push(o);
                    id
                });
                slots.slots.insert(
                    CompartmentId(c),
                    Slot {
                        size,
                        holder,
                        partition: (c % 4 == 1).then(|| carriers[k % 3].clone()),
                        pending_partition: None,
                        out_of_service: None,
                        parcel: None,
                        last_holder: None,
                    },
                );
            }
            batch.cabinets.push((id.clone(), slots));
            snaps.push(snap);
            if k.is_multiple_of(10) {
                alerts.push(Alert {
                    id: format!("ALR-{}", ulid::Ulid::from_parts(now, k as u128)),
                    cabinet: id.clone(),
                    site: Some(site.clone()),
                    kind: AlertKind::DoorLeftOpen,
                    subject: "compartment 4".into(),
                    severity: Severity::Warning,
                    started: now,
                    raised_at: now,
                    cleared_at: None,
                    clear_reason: None,
                    detail: "open for 300 s".into(),
                    value: Some(300.0),
                    acked_by: None,
                    acked_at: None,
                    ack_note: None,
                    actions: Vec::new(),
                });
            }
        }
        batch.sites.push(Site {
            id: site.clone(),
            name: format!("Site {s}"),
            time_zone: "Europe/Berlin".into(),
            address: String::new(),
            cabinets: ids,
            pickup_window_h: None,
        });
    }
    store.parcels().commit(&batch)?;
    store.save_snapshots(&snaps)?;
    store.alerts().commit(&[], &alerts, &[])?;
    store.flush()?;
    Ok(n_orders)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let cabinets: usize = if benching {
        args.iter()
            .skip(1)
            .find_map(|a| a.parse().ok())
            .or_else(|| std::env::var("FLEET_CABINETS").ok()?.parse().ok())
            .unwrap_or(10_000)
    } else {
        200
    };
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let now = locker_schemas::now_millis();
    let t = Instant::now();
    let orders = seed(&data.join("gateway.sled"), cabinets, now)?;
    println!(
        "seeded {cabinets} cabinets in {} sites, {orders} orders, in {:.1} s",
        cabinets.div_ceil(PER_SITE),
        t.elapsed().as_secs_f64()
    );
    let rt = support::runtime()?;
    rt.block_on(async move {
        let cfg = support::gateway_config(tmp.path(), data.clone(), TOKEN)?;
        let t = Instant::now();
        let gw = Gateway::start(cfg).await?;
        println!("gateway started in {:.1} s", t.elapsed().as_secs_f64());
        let http = reqwest::Client::new();
        let base = format!("http://{}", gw.api_addr);
        let get = |path: String| {
            let (http, url) = (http.clone(), format!("{base}{path}"));
            async move {
                let r = http.get(&url).bearer_auth(TOKEN).send().await?;
                anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
                Ok::<_, anyhow::Error>(r.bytes().await?)
            }
        };
        let summary: serde_json::Value =
            serde_json::from_slice(&get("/v1/fleet/summary".into()).await?)?;
        anyhow::ensure!(
            summary["cabinets"] == cabinets
                && summary["compartments"]["M"]["total"] == cabinets * 8,
            "unexpected summary: {summary}"
        );
        println!("summary: {summary}");
        let mid = format!("site-{:04}", cabinets / PER_SITE / 2);
        let routes = [
            "/v1/fleet/summary".to_owned(),
            "/v1/fleet/sites?limit=50".to_owned(),
            "/v1/fleet/sites?limit=500".to_owned(),
            format!("/v1/fleet/sites?limit=50&after={mid}"),
            "/v1/fleet/sites?q=site-00&limit=50".to_owned(),
            format!("/v1/fleet/sites/{mid}"),
            "/v1/search?q=%2B49%20170%20000%204711".to_owned(),
        ];
        println!(
            "{:<44} {:>9} {:>9} {:>9}",
            "route", "mean ms", "max ms", "bytes"
        );
        for r in routes {
            let _ = get(r.clone()).await?;
            let (mut total, mut worst, mut bytes) = (0f64, 0f64, 0usize);
            for _ in 0..RUNS {
                let t = Instant::now();
                bytes = get(r.clone()).await?.len();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                total += ms;
                worst = worst.max(ms);
            }
            println!(
                "{r:<44} {:>9.2} {:>9.2} {bytes:>9}",
                total / RUNS as f64,
                worst
            );
        }
        gw.shutdown().await;
        Ok(())
    })
}
