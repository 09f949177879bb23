//! `locker-pki`: the command-line front of the Locker Hub fleet PKI (create the fleet CA, issue
//! and revoke cabinet and integrator certificates, list what was issued). All the work is in
//! [`locker_broker_config::pki`]; this file only parses flags and prints results.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use locker_broker_config::pki::{CertRecord, InitOptions, Pki};
use locker_schemas::CabinetId;
use time::{Duration, OffsetDateTime};

/// Locker Hub fleet PKI: create the fleet CA and the gateway's server certificate, issue and
/// revoke cabinet and integrator client certificates, and keep a signed CRL.
///
/// Files live in one directory (--dir or LOCKER_PKI_DIR): ca.pem, ca.key, server.pem,
/// server.key, crl.pem, index.json, cabinets/{id}.pem|.key, integrators/{name}.pem|.key.
/// Keys are written with mode 0600, certificates with 0644.
#[derive(Debug, Parser)]
#[command(name = "locker-pki", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The PKI directory, shared by every subcommand.
#[derive(Debug, Args)]
struct DirArg {
    /// PKI directory holding the CA, the CRL, the index and issued certificates.
    #[arg(long, env = "LOCKER_PKI_DIR", value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the fleet CA, the gateway server certificate, an empty CRL and an empty index.
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// DNS name or IP address the gateway is reached at (repeatable; IPs become IP SANs).
        /// Default: localhost and 127.0.0.1. The first one is also the server certificate's CN.
        #[arg(long = "server-name", value_name = "NAME")]
        server_names: Vec<String>,
        /// Replace an existing CA, discarding it and every certificate it issued.
        #[arg(long)]
        force: bool,
        /// Validity of the CA certificate, in days.
        #[arg(long, value_name = "DAYS", default_value_t = 3650)]
        ca_days: u32,
        /// Validity of the server certificate, in days.
        #[arg(long, value_name = "DAYS", default_value_t = 730)]
        server_days: u32,
    },
    /// Issue a client certificate for a cabinet (writes cabinets/ID.pem and cabinets/ID.key).
    IssueCabinet {
        #[command(flatten)]
        dir: DirArg,
        /// Cabinet id: 1 to 64 characters from A-Z a-z 0-9 . _ -
        #[arg(value_name = "ID")]
        id: String,
        /// Validity of the certificate, in days (never past the CA's own expiry).
        #[arg(long, value_name = "DAYS", default_value_t = 730)]
        days: u32,
    },
    /// Issue a client certificate for an integrator (writes integrators/NAME.pem and .key).
    IssueIntegrator {
        #[command(flatten)]
        dir: DirArg,
        /// Integrator name: 1 to 64 characters from A-Z a-z 0-9 . _ - (not a cabinet's id).
        #[arg(value_name = "NAME")]
        name: String,
        /// Validity of the certificate, in days (never past the CA's own expiry).
        #[arg(long, value_name = "DAYS", default_value_t = 730)]
        days: u32,
    },
    /// Revoke every certificate of a cabinet or integrator and re-sign crl.pem.
    Revoke {
        #[command(flatten)]
        dir: DirArg,
        /// Cabinet id or integrator name to revoke.
        #[arg(value_name = "ID")]
        identity: String,
    },
    /// Re-sign crl.pem (next CRL number, fresh nextUpdate) without changing what is revoked.
    RefreshCrl {
        #[command(flatten)]
        dir: DirArg,
    },
    /// List every issued client certificate: identity, role, serial, expiry, revocation.
    List {
        #[command(flatten)]
        dir: DirArg,
        /// Print the index records as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("locker-pki: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn days(n: u32) -> Duration {
    Duration::days(i64::from(n))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            dir,
            server_names,
            force,
            ca_days,
            server_days,
        } => {
            let opts = InitOptions {
                force,
                ca_validity: days(ca_days),
                leaf_validity: days(server_days),
                ..InitOptions::default()
            };
            let pki = Pki::init_with(&dir.dir, &server_names, &opts)?;
            let names = if server_names.is_empty() {
                Pki::DEFAULT_SERVER_NAMES.join(", ")
            } else {
                server_names.join(", ")
            };
            println!(
                "created fleet CA {} (expires {})",
                pki.paths().ca_cert().display(),
                fmt_time(pki.ca_not_after())
            );
            println!(
                "server certificate {} for {names}",
                pki.paths().server_cert().display()
            );
        }
        Command::IssueCabinet { dir, id, days: d } => {
            let id = CabinetId::new(id.as_str())
                .with_context(|| format!("invalid cabinet id {id:?}"))?;
            let mut pki = Pki::open(&dir.dir)?;
            pki.set_leaf_validity(days(d))?;
            let cert = pki.issue_cabinet(&id)?;
            print_issued(&cert.record, &cert.cert_path, &cert.key_path);
        }
        Command::IssueIntegrator { dir, name, days: d } => {
            let mut pki = Pki::open(&dir.dir)?;
            pki.set_leaf_validity(days(d))?;
            let cert = pki.issue_integrator(&name)?;
            print_issued(&cert.record, &cert.cert_path, &cert.key_path);
        }
        Command::Revoke { dir, identity } => {
            let mut pki = Pki::open(&dir.dir)?;
            let revoked = pki.revoke(&identity)?;
            if revoked.is_empty() {
                println!("every certificate of {identity} was already revoked; crl.pem unchanged");
            } else {
                for serial in &revoked {
                    println!("revoked {identity} serial {serial}");
                }
                println!("updated {}", pki.paths().crl().display());
            }
        }
        Command::RefreshCrl { dir } => {
            let mut pki = Pki::open(&dir.dir)?;
            let number = pki.refresh_crl()?;
            println!(
                "re-signed {} as CRL number {number}",
                pki.paths().crl().display()
            );
        }
        Command::List { dir, json } => {
            let pki = Pki::open(&dir.dir)?;
            let records = pki.list();
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print_table(&records);
            }
        }
    }
    Ok(())
}

fn print_issued(record: &CertRecord, cert: &std::path::Path, key: &std::path::Path) {
    println!(
        "issued {} certificate for {} serial {} (expires {})",
        record.role,
        record.identity,
        record.serial,
        fmt_time(record.not_after)
    );
    println!("certificate {}", cert.display());
    println!("key         {}", key.display());
}

fn print_table(records: &[CertRecord]) {
    let now = OffsetDateTime::now_utc();
    let width = records
        .iter()
        .map(|r| r.identity.len())
        .max()
        .unwrap_or(0)
        .max("IDENTITY".len());
    println!(
        "{:<width$}  {:<10}  {:<32}  {:<20}  REVOKED",
        "IDENTITY", "ROLE", "SERIAL", "EXPIRES"
    );
    for r in records {
        let revoked = match r.revoked_at {
            Some(at) => fmt_time(at),
            None if r.is_expired(now) => "no (expired)".to_owned(),
            None => "no".to_owned(),
        };
        println!(
            "{:<width$}  {:<10}  {:<32}  {:<20}  {revoked}",
            r.identity,
            r.role.as_str(),
            r.serial,
            fmt_time(r.not_after)
        );
    }
}

/// `YYYY-MM-DD HH:MM:SSZ`, always UTC.
fn fmt_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
