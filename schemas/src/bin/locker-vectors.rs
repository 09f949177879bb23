//! `locker-vectors`: writes (or, with `--check`, verifies) the Locker Hub test vectors: for every
//! example message `NAME.cbor`, `NAME.diag` (CBOR diagnostic notation), `NAME.hex` (annotated
//! hex), and `index.json` with each vector's topic, size and CDDL rules.
//!
//! Run it from the workspace with `cargo run -p locker-schemas --features gen --bin
//! locker-vectors` after changing a message, and commit the result; CI runs it with `--check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Write or check the Locker Hub wire-format test vectors.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Folder to write the vectors to (default: this crate's `vectors/`, i.e. `schemas/vectors`
    /// of the checkout it was built from).
    #[arg(long, value_name = "DIR", default_value_os_t = default_out())]
    out: PathBuf,

    /// Write nothing; exit with status 1 if any file in DIR is missing, differs from what
    /// would be written, or is a stale vector no example produces any more.
    #[arg(long)]
    check: bool,
}

fn default_out() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn main() -> ExitCode {
    let args = Args::parse();
    match locker_schemas::vectors::write_all(&args.out, args.check) {
        Ok(report) => {
            let prefix = if args.check {
                "out of date, would be "
            } else {
                ""
            };
            for change in &report.changes {
                println!("{prefix}{change}");
            }
            if report.is_clean() {
                println!(
                    "{}: {} files up to date",
                    args.out.display(),
                    report.unchanged
                );
                ExitCode::SUCCESS
            } else if args.check {
                eprintln!(
                    "{}: {} files out of date; run `cargo run -p locker-schemas --features gen \
                     --bin locker-vectors` and commit the result",
                    args.out.display(),
                    report.changes.len()
                );
                ExitCode::FAILURE
            } else {
                println!(
                    "{}: {} files changed, {} unchanged",
                    args.out.display(),
                    report.changes.len(),
                    report.unchanged
                );
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("locker-vectors: {e}");
            ExitCode::from(2)
        }
    }
}
