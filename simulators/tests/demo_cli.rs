//! `locker-sim demo` as a newcomer runs it without a terminal (piped into a file or a CI log):
//! standard output is the summary alone, in plain text (no colour, no log lines, no `Debug`
//! dumps), and the logs are in the file under the state directory that the summary names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

#[test]
fn demo_without_a_terminal_prints_a_plain_summary_and_logs_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_locker-sim"))
        .args(["demo", "--cabinets", "3", "--duration", "6"])
        .args(["--edge", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .arg("--state")
        .arg(&state)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run locker-sim demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the demo ends clean:\n{stdout}\n{stderr}"
    );

    assert!(!stdout.contains('\u{1b}'), "no terminal escapes:\n{stdout}");
    for level in [" TRACE ", " DEBUG ", " INFO ", " WARN ", " ERROR "] {
        assert!(!stdout.contains(level), "no log lines ({level}):\n{stdout}");
    }
    assert!(stderr.trim().is_empty(), "nothing on stderr: {stderr}");

    let log_line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("logs:"))
        .expect("the summary says where the logs are");
    let log_path = std::path::PathBuf::from(
        log_line
            .split_whitespace()
            .next()
            .expect("a path on the logs line"),
    );
    let state = std::fs::canonicalize(&state).unwrap();
    assert!(
        log_path.starts_with(state.join("logs")),
        "{} is in the state directory",
        log_path.display()
    );
    let logs = std::fs::read_to_string(&log_path).expect("the log file");
    assert!(logs.contains(" INFO "), "the logs are in the file");
    assert!(!logs.contains('\u{1b}'), "the log file is plain text");

    let activity = stdout
        .lines()
        .find_map(|l| l.strip_prefix("activity: "))
        .expect("the activity line");
    assert!(
        activity.contains("deposits") && !activity.contains('{') && !activity.contains("Atomic"),
        "the activity line is plain text: {activity}"
    );
    assert!(
        stdout.contains("invariant"),
        "the report is printed:\n{stdout}"
    );
    let cpu = stdout
        .lines()
        .find_map(|l| l.strip_prefix("script phase with 3 agents: CPU: simulator process "))
        .expect("the simulator's CPU over the script is printed");
    assert!(
        cpu.contains(" core-s in ")
            && cpu.contains(" cores")
            && cpu.contains("per agent per second"),
        "core-seconds, cores and the cost per agent: {cpu}"
    );
}
