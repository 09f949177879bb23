//! `cargo bench -p locker-gateway --bench rules`: the rules engine's own cost at fleet scale,
//! timed with `std::time::Instant` (no benchmark framework). 10,000 cabinets, each with its
//! state (presence, doors, power window, conditions); the engine evaluates:
//! - committed events in batches of 512 across the fleet (a cabinet's mix: door open and close,
//!   power telemetry, scans), in ns per event and events/s;
//! - a tick with every cabinet offline and its `offline` condition pending (the worst tick: each
//!   cabinet is looked at), in ms per tick;
//! - a tick of a quiet fleet (nothing time-based pending), in µs per tick.
//!
//! The pure engine only: storage and publishing are the actor's and are measured end to end by
//! `locker-sim bench uplink --rules both`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use locker_gateway::rules::config::RulesConfig;
use locker_gateway::rules::engine::Engine;
use locker_schemas::{
    CabinetId, ChargeState, CompartmentId, Door, DoorCause, Power, Scan, ScanSource, Uplink,
    UplinkBody,
};

const CABINETS: usize = 10_000;
const T0: u64 = 1_800_000_000_000;

fn body(seq: u64) -> UplinkBody {
    match seq % 4 {
        0 => UplinkBody::Scan(Scan {
            source: ScanSource::Barcode,
            value: format!("PKG{seq:010}"),
        }),
        1 | 2 => UplinkBody::Door(Door {
            compartment: CompartmentId(((seq / 4) % 16 + 1) as u16),
            open: seq % 4 == 1,
            cause: DoorCause::LocalAccess,
            parcel: (seq % 4 == 2).then_some(false),
        }),
        _ => UplinkBody::Power(Power {
            battery_mv: 12_800,
            soc_pct: (100 - (seq / 40) % 100) as u8,
            pv_w: (seq % 60) as u32,
            load_w: 12,
            charging: ChargeState::Float,
            temp_dc: 215,
        }),
    }
}

fn main() {
    let compiled = RulesConfig::default().compile().expect("default rules");
    let mut e = Engine::new(compiled, 64, HashMap::new(), Vec::new(), T0);
    let ids: Vec<CabinetId> = (0..CABINETS)
        .map(|k| CabinetId::new(format!("CAB-{k:05}")).expect("id"))
        .collect();
    for id in &ids {
        e.presence(id, true, T0, T0);
    }
    let _ = e.take_dirty();
    let _ = e.take_effects();

    // events: 40 per cabinet, in batches of 512 spread over the fleet
    let per_cabinet = 40u64;
    let mut batch = Vec::with_capacity(512);
    let mut now = T0 + 10_000;
    let mut n = 0u64;
    let start = Instant::now();
    for seq in 1..=per_cabinet {
        for id in &ids {
            batch.push(Uplink {
                cabinet: id.clone(),
                boot: 1,
                seq,
                ts: now,
                body: body(seq),
            });
            if batch.len() == 512 {
                e.uplinks(black_box(&batch), now);
                n += batch.len() as u64;
                batch.clear();
                black_box(e.take_dirty().len());
                black_box(e.take_effects().len());
            }
        }
        now += 60_000;
    }
    e.uplinks(&batch, now);
    n += batch.len() as u64;
    let dt = start.elapsed();
    println!(
        "events: {n} across {CABINETS} cabinets in batches of 512: {:.0} ns/event, {:.0} events/s ({} alerts active)",
        dt.as_nanos() as f64 / n as f64,
        n as f64 / dt.as_secs_f64(),
        e.active.len()
    );

    // a quiet fleet: nothing time-based pending
    let _ = e.take_dirty();
    let _ = e.take_effects();
    let rounds = 100;
    let start = Instant::now();
    for k in 0..rounds {
        e.tick(now + k * 1_000);
    }
    println!(
        "tick of a quiet fleet: {:.1} us/tick",
        start.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );

    // every cabinet offline, its offline condition pending: each tick looks at all of them
    for id in &ids {
        e.presence(id, false, now, now);
    }
    let _ = e.take_dirty();
    let _ = e.take_effects();
    let rounds = 20;
    let start = Instant::now();
    for k in 0..rounds {
        e.tick(now + 1_000 + k * 1_000);
        black_box(e.take_dirty().len());
    }
    println!(
        "tick with {CABINETS} cabinets offline (conditions pending): {:.2} ms/tick",
        start.elapsed().as_secs_f64() * 1e3 / rounds as f64
    );
    let start = Instant::now();
    e.tick(now + 400_000);
    let raised = e
        .take_effects()
        .iter()
        .filter(|x| matches!(x, locker_gateway::rules::engine::Effect::Raised(_)))
        .count();
    println!(
        "the tick that raises {raised} offline alerts at once: {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
}
