//! The parcel-domain benchmarks run at tiny sizes and print their figures: `bench orders`
//! (light cabinets, carrier tokens, single and batch orders, then the full site) and
//! `bench code` (a real agent offline, in-memory and TCP Modbus). No wall-time assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

fn bench(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_locker-sim"))
        .arg("bench")
        .args(args)
        .arg("--state")
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run locker-sim bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {args:?}:\n{stdout}\n{stderr}");
    assert!(stdout.starts_with("machine: "), "{stdout}");
    stdout
}

/// The line of `stdout` starting with `prefix`.
fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{stdout}"))
}

#[test]
fn orders_bench_creates_orders_fills_the_site_and_measures_the_full_site() {
    let out = bench(&[
        "orders",
        "--in-process",
        "--cabinets",
        "5",
        "--compartments",
        "4",
        "--orders",
        "8",
        "--batch",
        "3",
        "--full-orders",
        "6",
        "--clients",
        "2",
    ]);
    assert!(
        line(&out, "site map: ").contains("20/20 compartments known"),
        "{out}"
    );
    let single = line(&out, "single: ");
    assert!(single.starts_with("single: 8 orders"), "{out}");
    assert!(
        single.contains("(0 failed)") && single.contains("orders/s"),
        "{out}"
    );
    // 20 compartments, 8 taken (at most) by the single orders: the batches take the rest,
    // until each carrier is refused one
    let batch = line(&out, "batch (filling the sites): ");
    assert!(batch.contains("(0 failed)"), "{out}");
    let full = line(&out, "full site: ");
    assert!(
        full.starts_with(
            "full site: 6 orders (0 with a compartment, 6 waiting with no_compartment)"
        ),
        "{out}"
    );
    assert!(out.contains("latency per call: n="), "{out}");
    assert!(out.contains("p99.9"), "{out}");
}

#[test]
fn code_bench_opens_doors_from_cached_codes_over_both_board_links() {
    let out = bench(&["code", "--scans", "10", "--locks", "16", "--badges", "20"]);
    for link in ["in-memory Modbus link", "Modbus TCP (loopback)"] {
        let l = line(&out, &format!("code to door ({link}), 10 scans"));
        assert!(l.contains("(10 opened, 0 refused)"), "{out}");
        // 16 compartments x (PIN + QR) + 20 badges
        assert!(l.contains("set of 52 credentials"), "{out}");
        assert!(l.contains("scan to door open n=10 p50"), "{out}");
    }
    assert!(out.contains("timing.fast_poll_ms = "), "{out}");
}
