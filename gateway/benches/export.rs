//! `cargo bench -p locker-gateway --bench export [-- RECORDS]` (or `EXPORT_RECORDS=N`): the
//! audit export's throughput and memory. Writes RECORDS records of mixed sources into a temp
//! sled store (in a child process, so the seeding's own memory is not counted): 80% cabinet
//! uplinks over 1,000 cabinets (door open/close, local access, scans, command results), 15%
//! parcel-trail records, 5% alert records (alerts raised, acknowledged and cleared), spread
//! over the last day; starts a real gateway on it and streams the whole period through the
//! real HTTP route (`GET /v1/audit/export`, NDJSON), reading the body as it comes. Prints the
//! records and bytes received, records/s, and the growth of this process's peak RSS (VmHWM,
//! reset through `/proc/self/clear_refs` before the export where the kernel allows) over its
//! RSS before the export.
//!
//! Without `--bench` on the command line (as `cargo test --all-targets` runs it) it does a
//! 2,000-record smoke run.

mod support;

use std::time::Instant;

use locker_gateway::app::Gateway;
use locker_gateway::rules::{Alert, AlertKind, Severity};
use locker_gateway::store::alerts::AlertStore;
use locker_gateway::store::parcels::{AuditRecord, Batch, ParcelStore};
use locker_gateway::store::{AuditEntry, NewEntry, QuarantineLimits, Store};
use locker_schemas::{
    AccessAction, CabinetId, CommandId, CommandResult, CompartmentId, Door, DoorCause, LocalAccess,
    OrderId, Outcome, Scan, ScanSource, Uplink, UplinkBody,
};

const CABINETS: u64 = 1_000;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;
const TOKEN: &str = "bench-token-0123456789abcdef";

fn status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn body(i: u64) -> UplinkBody {
    let c = CompartmentId((i % 24 + 1) as u16);
    match i % 8 {
        0 | 4 => UplinkBody::Door(Door {
            compartment: c,
            open: true,
            cause: DoorCause::LocalAccess,
            parcel: None,
        }),
        1 | 5 => UplinkBody::Door(Door {
            compartment: c,
            open: false,
            cause: DoorCause::LocalAccess,
            parcel: Some(i % 16 == 1),
        }),
        2 => UplinkBody::Scan(Scan {
            source: ScanSource::Keypad,
            value: "123456".into(),
        }),
        3 | 6 => UplinkBody::Access(LocalAccess {
            compartment: c,
            action: AccessAction::Pickup,
            reference: format!("ORD-{}", ulid::Ulid::from_parts(i, 7)),
            source: ScanSource::Keypad,
            actor: String::new(),
        }),
        _ => UplinkBody::Result(CommandResult {
            command: CommandId(ulid::Ulid::from_parts(i, 9)),
            outcome: Outcome::Opened,
            detail: String::new(),
        }),
    }
}

/// Writes `n` records spread over `[t0, t0 + DAY_MS)` into the store at `dir`.
fn seed(dir: &std::path::Path, n: u64, t0: u64) -> anyhow::Result<()> {
    let store = Store::open(dir)?;
    let step = (DAY_MS / n.max(1)).max(1);
    let limits = QuarantineLimits {
        max_per_cabinet: 10,
        max_total: 10,
    };
    let ids: Vec<CabinetId> = (0..CABINETS)
        .map(|k| CabinetId::new(format!("CAB-{k:05}")))
        .collect::<Result<_, _>>()?;
    let mut seqs = vec![0u64; CABINETS as usize];
    let (mut entries, mut audit, mut alerts) = (Vec::new(), Vec::new(), Vec::new());
    let mut pos = 0u64;
    let mut i = 0u64;
    while i < n {
        let at = t0 + i * step;
        match i % 100 {
            0..80 => {
                let k = (i % CABINETS) as usize;
                seqs[k] += 1;
                let u = Uplink {
                    cabinet: ids[k].clone(),
                    boot: 1,
                    seq: seqs[k],
                    ts: at,
                    body: body(i),
                };
                entries.push(NewEntry {
                    cabinet: ids[k].clone(),
                    position: seqs[k],
                    entry: AuditEntry::Event(locker_schemas::codec::encode_uplink(&u)?),
                });
                i += 1;
            }
            80..95 => {
                pos += 1;
                audit.push(AuditRecord {
                    pos,
                    at,
                    what: "order".into(),
                    order: Some(OrderId(ulid::Ulid::from_parts(i / 5, 3))),
                    carrier: Some("dhl".parse()?),
                    site: Some("bench-site".parse()?),
                    cabinet: Some(ids[(i % CABINETS) as usize].clone()),
                    compartment: Some(CompartmentId(3)),
                    from: Some("deposited".into()),
                    to: Some("ready".into()),
                    cause: "local_access".into(),
                    actor: "dhl-c1".into(),
                    exception: None,
                    detail: String::new(),
                    tracking: Some(format!("JJD{:010}", i / 5)),
                    reference: None,
                });
                i += 1;
            }
            _ => {
                // an alert: raised now, acknowledged and cleared a little later (3 records)
                alerts.push(Alert {
                    id: format!("ALR-{}", ulid::Ulid::from_parts(at, u128::from(i))),
                    cabinet: ids[(i % CABINETS) as usize].clone(),
                    site: None,
                    kind: AlertKind::DoorLeftOpen,
                    subject: "compartment 4".into(),
                    severity: Severity::Warning,
                    started: at,
                    raised_at: at,
                    cleared_at: Some(at + 40 * step),
                    clear_reason: Some("condition ended".into()),
                    detail: "open for 300 s".into(),
                    value: Some(300.0),
                    acked_by: Some("ops".into()),
                    acked_at: Some(at + 20 * step),
                    ack_note: Some("called the site".into()),
                    actions: Vec::new(),
                });
                i += 3;
            }
        }
        if entries.len() + audit.len() + alerts.len() >= 20_000 || i >= n {
            store.append_events(&entries, &[], limits, &[])?;
            store.parcels().commit(&Batch {
                audit: std::mem::take(&mut audit),
                ..Batch::default()
            })?;
            store.alerts().commit(&[], &alerts, &[])?;
            entries.clear();
            alerts.clear();
        }
    }
    store.flush()?;
    Ok(())
}

/// How many records `seed` writes for `n` (an alert's three records are written together).
fn lines_expected(n: u64) -> u64 {
    let mut i = 0;
    while i < n {
        i += if i % 100 >= 95 { 3 } else { 1 };
    }
    i
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Ok(dir) = std::env::var("EXPORT_BENCH_SEED_DIR") {
        let n: u64 = std::env::var("EXPORT_BENCH_SEED_N")?.parse()?;
        let t0: u64 = std::env::var("EXPORT_BENCH_SEED_T0")?.parse()?;
        return seed(std::path::Path::new(&dir), n, t0);
    }
    let benching = args.iter().any(|a| a == "--bench");
    let n: u64 = if benching {
        args.iter()
            .skip(1)
            .find_map(|a| a.parse().ok())
            .or_else(|| std::env::var("EXPORT_RECORDS").ok()?.parse().ok())
            .unwrap_or(100_000)
    } else {
        2_000
    };
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let t0 = locker_schemas::now_millis() - DAY_MS;
    let started = Instant::now();
    let st = std::process::Command::new(std::env::current_exe()?)
        .env("EXPORT_BENCH_SEED_DIR", data.join("gateway.sled"))
        .env("EXPORT_BENCH_SEED_N", n.to_string())
        .env("EXPORT_BENCH_SEED_T0", t0.to_string())
        .status()?;
    anyhow::ensure!(st.success(), "seeding failed: {st}");
    let seeded = started.elapsed();
    println!(
        "seeded {n} records in {:.1} s ({:.0} records/s)",
        seeded.as_secs_f64(),
        n as f64 / seeded.as_secs_f64()
    );
    let rt = support::runtime()?;
    rt.block_on(async move {
        let cfg = support::gateway_config(tmp.path(), data.clone(), TOKEN)?;
        let gw = Gateway::start(cfg).await?;
        let url = format!(
            "http://{}/v1/audit/export?from={t0}&to={}",
            gw.api_addr,
            t0 + 2 * DAY_MS
        );
        // peak RSS from here on (5 = reset the peak to the current RSS)
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let (rss0, hwm0) = (status("VmRSS:"), status("VmHWM:"));
        let t = Instant::now();
        let mut resp = reqwest::Client::new()
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "export: {}", resp.status());
        anyhow::ensure!(n == 0 || lines_expected(n) > 0, "nothing to export");
        let (mut lines, mut bytes) = (0u64, 0u64);
        while let Some(chunk) = resp.chunk().await? {
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            lines == lines_expected(n),
            "exported {lines} records, expected {}",
            lines_expected(n)
        );
        let hwm1 = status("VmHWM:");
        println!(
            "exported {lines} records, {:.1} MB in {secs:.1} s: {:.0} records/s, {:.1} MB/s",
            bytes as f64 / 1e6,
            lines as f64 / secs,
            bytes as f64 / 1e6 / secs
        );
        println!(
            "RSS before the export {:.1} MiB; peak during it {:.1} MiB (growth {:.1} MiB; peak \
             {} before the export: {:.1} MiB)",
            rss0 as f64 / 1024.0,
            hwm1 as f64 / 1024.0,
            hwm1.saturating_sub(rss0) as f64 / 1024.0,
            if reset { "reset" } else { "NOT reset" },
            hwm0 as f64 / 1024.0,
        );
        gw.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(())
}
