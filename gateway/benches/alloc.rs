//! `cargo bench -p locker-gateway --bench alloc`: best-fit allocation
//! (`parcels::alloc::Table::allocate`) on a site of 1,000 cabinets x 24 compartments of mixed
//! sizes (40% S, 30% M, 20% L, 10% XL), and on one site of 100 of the same cabinets (a map of
//! ten such sites), timed with `std::time::Instant` (no benchmark framework). Since the free
//! index, best fit does not scan the site; the "full" case no longer scans either. Each allocation
//! is released again so the table stays as set up. Prints ns per allocation: on an empty site,
//! a 90% full one, a full one (the allocation fails after scanning every compartment), and
//! with the carrier's partition holding the only free compartments.

use std::hint::black_box;
use std::time::{Duration, Instant};

use locker_gateway::json::SizeName;
use locker_gateway::parcels::alloc::Table;
use locker_schemas::{CabinetId, CarrierId, CompartmentId, OrderId, SiteId};

const COMPARTMENTS: u16 = 24;

fn size_of(i: u16) -> SizeName {
    match u32::from(i) * 10 / u32::from(COMPARTMENTS) {
        0..=3 => SizeName::S,
        4..=6 => SizeName::M,
        7..=8 => SizeName::L,
        _ => SizeName::Xl,
    }
}

/// A site of `n` cabinets, the share `full` (0..=1) of its compartments held.
fn make_site(site: &SiteId, n: usize, full: f64) -> (Table, Vec<CabinetId>) {
    let mut t = Table::default();
    let ids: Vec<CabinetId> = (0..n)
        .map(|k| CabinetId::new(format!("CAB-{k:05}")).expect("cabinet id"))
        .collect();
    let comps: Vec<(CompartmentId, SizeName)> = (0..COMPARTMENTS)
        .map(|i| (CompartmentId(i + 1), size_of(i)))
        .collect();
    let held = (n as f64 * f64::from(COMPARTMENTS) * full) as usize;
    let mut k = 0;
    for id in &ids {
        t.layout(id, &comps);
        t.set_site(id, Some(site.clone()));
        for (c, _) in &comps {
            if k < held {
                t.hold(id, *c, OrderId::generate());
                k += 1;
            }
        }
    }
    (t, ids)
}

/// Runs `f` repeatedly for about `budget` and returns ns per call.
fn time<F: FnMut()>(budget: Duration, mut f: F) -> f64 {
    for _ in 0..100 {
        f();
    }
    let mut n: u64 = 0;
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn bench(name: &str, budget: Duration, t: &mut Table, ids: &[CabinetId], size: SizeName) {
    let site: SiteId = "bench".parse().expect("site id");
    let carrier: CarrierId = "dhl".parse().expect("carrier id");
    let order = OrderId::generate();
    let mut ok = 0u64;
    let mut failed = 0u64;
    let ns = time(budget, || {
        match t.allocate(&site, black_box(ids), None, &carrier, size, order) {
            Ok((cab, c)) => {
                ok += 1;
                t.release(&cab, c, order);
            }
            Err(_) => failed += 1,
        }
    });
    let outcome = if failed == 0 { "found" } else { "none free" };
    println!(
        "{name:<58} {:>6} {ns:>12.0} ns  ({outcome})",
        ids.len() * usize::from(COMPARTMENTS)
    );
}

fn main() {
    // `cargo bench -- --quick` shortens each measurement.
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 200 } else { 1_000 });
    let site: SiteId = "bench".parse().expect("site id");
    println!("{:<58} {:>6} {:>15}", "case", "slots", "per allocation");
    for n in [1_000, 100] {
        let (mut t, ids) = make_site(&site, n, 0.0);
        bench(
            &format!("{n} cabinets, empty, size S"),
            budget,
            &mut t,
            &ids,
            SizeName::S,
        );
        bench(
            &format!("{n} cabinets, empty, size XL"),
            budget,
            &mut t,
            &ids,
            SizeName::Xl,
        );
        let (mut t, ids) = make_site(&site, n, 0.9);
        bench(
            &format!("{n} cabinets, 90% full, size S"),
            budget,
            &mut t,
            &ids,
            SizeName::S,
        );
        let (mut t, ids) = make_site(&site, n, 1.0);
        bench(
            &format!("{n} cabinets, full (fails)"),
            budget,
            &mut t,
            &ids,
            SizeName::S,
        );
        // full, except the first compartment of every fifth cabinet, reserved for the carrier
        let carrier: CarrierId = "dhl".parse().expect("carrier id");
        for id in ids.iter().step_by(5) {
            if let Some(slot) = t
                .cabinets
                .get_mut(id)
                .and_then(|c| c.slots.get_mut(&CompartmentId(1)))
            {
                slot.holder = None;
                slot.partition = Some(carrier.clone());
            }
            // changed behind the table's back: re-index the cabinet
            t.touch_cabinet(id);
        }
        bench(
            &format!("{n} cabinets, full but the carrier's partitions, size S"),
            budget,
            &mut t,
            &ids,
            SizeName::S,
        );
    }
}
