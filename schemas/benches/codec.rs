//! `cargo bench -p locker-schemas`: encode and decode throughput of every message in the test
//! vectors (uplinks, downlinks, integrator streams), timed with `std::time::Instant` (no
//! benchmark framework). Prints ns per operation and bytes per message.

use std::hint::black_box;
use std::time::{Duration, Instant};

use locker_schemas::{codec, vectors};

/// Runs `f` repeatedly for about `budget` and returns ns per call.
fn time<F: FnMut()>(budget: Duration, mut f: F) -> f64 {
    for _ in 0..1_000 {
        f();
    }
    let mut n: u64 = 0;
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..1_000 {
            f();
        }
        n += 1_000;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    // `cargo bench -- --quick` (or any filter argument) shortens each measurement.
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 50 } else { 300 });
    println!(
        "{:<32} {:>6} {:>12} {:>12}",
        "message", "bytes", "encode ns", "decode ns"
    );
    let mut total_enc = 0.0;
    let mut total_dec = 0.0;
    let mut count = 0.0;
    for (name, up) in vectors::uplinks() {
        let bytes = codec::encode_uplink(&up).expect("vector encodes");
        let enc = time(budget, || {
            black_box(codec::encode_uplink(black_box(&up)).ok());
        });
        let dec = time(budget, || {
            black_box(codec::decode_uplink(black_box(&bytes)).ok());
        });
        println!("{name:<32} {:>6} {enc:>12.0} {dec:>12.0}", bytes.len());
        total_enc += enc;
        total_dec += dec;
        count += 1.0;
    }
    for (name, down) in vectors::downlinks() {
        let bytes = codec::encode_downlink(&down).expect("vector encodes");
        let enc = time(budget, || {
            black_box(codec::encode_downlink(black_box(&down)).ok());
        });
        let dec = time(budget, || {
            black_box(codec::decode_downlink(black_box(&bytes)).ok());
        });
        println!("{name:<32} {:>6} {enc:>12.0} {dec:>12.0}", bytes.len());
        total_enc += enc;
        total_dec += dec;
        count += 1.0;
    }
    for (name, m) in vectors::streams() {
        let bytes = codec::encode_stream(&m).expect("vector encodes");
        let enc = time(budget, || {
            black_box(codec::encode_stream(black_box(&m)).ok());
        });
        let dec = time(budget, || {
            black_box(codec::decode_stream(black_box(&bytes)).ok());
        });
        println!("{name:<32} {:>6} {enc:>12.0} {dec:>12.0}", bytes.len());
        total_enc += enc;
        total_dec += dec;
        count += 1.0;
    }
    if count > 0.0 {
        println!(
            "mean over {count} messages: encode {:.0} ns ({:.0}/s on one core), decode {:.0} ns ({:.0}/s on one core)",
            total_enc / count,
            1e9 / (total_enc / count),
            total_dec / count,
            1e9 / (total_dec / count)
        );
    }
}
