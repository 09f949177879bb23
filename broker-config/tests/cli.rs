//! The `locker-pki` binary: subcommands, `LOCKER_PKI_DIR`, output and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn pki(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_locker-pki"))
        .args(args)
        .env("LOCKER_PKI_DIR", dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("runs locker-pki")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn cli_init_issue_revoke_list() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");

    let out = pki(
        &dir,
        &[
            "init",
            "--server-name",
            "gw.local",
            "--server-name",
            "10.0.0.5",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.join("ca.pem").is_file());

    let out = pki(&dir, &["init"]);
    assert!(!out.status.success(), "re-init without --force must fail");
    assert!(text(&out).contains("--force"), "{}", text(&out));

    let out = pki(&dir, &["issue-cabinet", "CAB-0001"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.join("cabinets/CAB-0001.key").is_file());
    let out = pki(&dir, &["issue-integrator", "acme", "--days", "90"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = pki(&dir, &["issue-cabinet", "a/b"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("a/b"), "{}", text(&out));

    let out = pki(&dir, &["revoke", "CAB-0001"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = pki(&dir, &["revoke", "nobody"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("nobody"), "{}", text(&out));

    let out = pki(&dir, &["list"]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("IDENTITY"), "{table}");
    assert!(
        table.contains("CAB-0001") && table.contains("cabinet"),
        "{table}"
    );
    assert!(
        table.contains("acme") && table.contains("integrator"),
        "{table}"
    );

    let out = pki(&dir, &["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert!(!records[0]["revoked_at"].is_null());
    assert!(records[1]["revoked_at"].is_null());

    // --dir on the command line wins over nothing else being set.
    let out = Command::new(env!("CARGO_BIN_EXE_locker-pki"))
        .args(["list", "--dir"])
        .arg(&dir)
        .env_remove("LOCKER_PKI_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let out = pki(&tmp.path().join("missing"), &["list"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("ca.pem"), "{}", text(&out));
}

#[test]
fn every_flag_is_documented() {
    for sub in [
        "init",
        "issue-cabinet",
        "issue-integrator",
        "revoke",
        "list",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_locker-pki"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(
            help.contains("--dir <DIR>") && help.contains("LOCKER_PKI_DIR"),
            "{help}"
        );
    }
}
