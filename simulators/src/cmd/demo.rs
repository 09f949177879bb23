//! `locker-sim demo`: the whole system on one machine with nothing installed: a PKI in a state
//! directory (reused when present), the gateway in-process with its embedded broker, a few
//! hundred simulated cabinets running real agents in sites of 50, three carriers with their own
//! API tokens, and an accelerated day of real orders (created by the carriers, deposited by
//! couriers, picked up with the codes from the notification outbox, some offline during an
//! outage, some expired or recalled), a gateway restart and a low-battery night, shown live;
//! then the invariant report.
//!
//! Standard output carries only the summary (plain lines when it is not a terminal); the logs
//! of the gateway, the agents and the simulator go to `<state>/logs/demo.log`, named at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use locker_broker_config::pki::Role;
use locker_sim::fleet::GatewayMode;

use super::fleet::{session, Script};

/// The API token the demo gateway accepts.
pub const DEMO_TOKEN: &str = "change-me-demo-token-0001";
/// The integrator certificate the demo issues (read-only MQTT access to every stream).
pub const DEMO_INTEGRATOR: &str = "demo-integrator";

/// Real seconds of the default run: the whole day in three minutes.
const DEFAULT_DURATION_S: u64 = 180;
/// Simulated seconds in the day the demo plays.
const DAY_S: f64 = 86_400.0;

/// Options of `locker-sim demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of simulated cabinets.
    #[arg(long, default_value_t = 200)]
    cabinets: usize,
    /// Real seconds the demo plays, one simulated day spread over them (Ctrl-C stops earlier).
    #[arg(long, default_value_t = DEFAULT_DURATION_S)]
    duration: u64,
    /// Simulated seconds per real second (default: one day over --duration; 480 for 180 s).
    #[arg(long)]
    speed: Option<f64>,
    /// Deliveries or pickups per cabinet per real minute.
    #[arg(long, default_value_t = 2.0)]
    activity: f64,
    /// State directory (PKI, agents' and gateway's sled databases); reused if present.
    #[arg(long, default_value = "state/demo")]
    state: PathBuf,
    /// The gateway's mTLS MQTT listener.
    #[arg(long, default_value = "127.0.0.1:8883")]
    edge: SocketAddr,
    /// The gateway's HTTP API and /metrics listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: SocketAddr,
    /// Share of the cabinets that lose their network for a while (at 30% of the day).
    #[arg(long, default_value_t = 0.1)]
    outage_share: f64,
    /// Do not restart the gateway mid-run.
    #[arg(long)]
    no_restart: bool,
}

impl Args {
    /// Where the demo writes its logs.
    pub fn log_path(&self) -> PathBuf {
        self.state.join("logs").join("demo.log")
    }

    /// Real seconds of the run and the simulated clock's speed (one day over the run unless
    /// --speed says otherwise).
    fn timing(&self) -> (u64, f64) {
        let duration = self.duration.max(1);
        let speed = self.speed.unwrap_or(DAY_S / duration as f64).max(1.0);
        (duration, speed)
    }
}

/// Runs the demo.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let (duration, speed) = args.timing();
    let log_path = args.log_path();
    let script = Script {
        cabinets: args.cabinets,
        duration,
        ramp: 5.0,
        speed,
        start_hour: 7.0,
        activity: args.activity,
        outage_share: args.outage_share,
        outage_secs: (duration / 6).clamp(3, 60),
        no_restart: args.no_restart,
        solar_share: 0.3,
        locks: 16,
        backoff_max_ms: 3_000,
        settle_secs: 120,
        no_verify: false,
        per_site: 50,
        recall_secs: (duration / 6).clamp(5, 60),
        expire_share: 0.1,
        expire_window_min: 1,
        recall_share: 0.05,
    };
    let pki_dir = args.state.join("pki");
    let mut opts = script.options(args.state.clone());
    opts.prefix = "CAB-".into();
    let mode = GatewayMode::InProcessAt {
        edge: args.edge,
        api: args.api,
    };
    let state = args.state.clone();
    session(&script, opts, &pki_dir, mode, DEMO_TOKEN, move |l| {
        let paths = l.pki.paths();
        let cert = paths.client_cert(Role::Integrator, DEMO_INTEGRATOR);
        let have = cert.exists();
        let issued = if have {
            Ok(())
        } else {
            // Issued once; the PKI is reused on the next run.
            locker_broker_config::pki::Pki::open(paths.dir())
                .and_then(|mut p| p.issue_integrator(DEMO_INTEGRATOR).map(|_| ()))
                .context("issuing the demo integrator certificate")
        };
        let abs = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
        let ca = abs(paths.ca_cert());
        let key = cert.with_extension("key");
        let api = l.gateway.api;
        let edge = l.gateway.edge;
        println!();
        println!("=== Locker Hub demo: {} cabinets, {:.1} simulated hours in {duration} s (speed x{speed:.0}) ===", args.cabinets, duration as f64 * speed / 3_600.0);
        println!("state directory: {}", abs(state.clone()).display());
        println!("logs:     {} (RUST_LOG sets the level)", abs(log_path.clone()).display());
        println!("metrics:  http://{api}/metrics");
        println!("API:      curl -s -H 'Authorization: Bearer {DEMO_TOKEN}' http://{api}/v1/cabinets/CAB-000001");
        println!("          curl -s -H 'Authorization: Bearer {DEMO_TOKEN}' 'http://{api}/v1/cabinets/CAB-000001/events?limit=20'");
        println!("          curl -s -H 'Authorization: Bearer {DEMO_TOKEN}' -H 'content-type: application/json' \\");
        println!("            -d '{{\"action\": {{\"type\": \"unlock\", \"compartment\": 1}}, \"wait_ms\": 5000}}' http://{api}/v1/cabinets/CAB-000001/commands");
        let world = &l.fleet.ctx.world;
        if let Some(t) = world.carriers.first().and_then(|c| c.token.clone()) {
            let names: Vec<String> = world
                .carriers
                .iter()
                .filter_map(|c| Some(format!("{} ({})", c.id, c.token.as_deref()?)))
                .collect();
            println!("parcels:  {} sites of up to 50 cabinets; carrier tokens: {}", world.sites.len(), names.join(", "));
            println!("          curl -s -H 'Authorization: Bearer {t}' 'http://{api}/v1/orders?limit=5'");
            println!("          curl -s -H 'Authorization: Bearer {DEMO_TOKEN}' 'http://{api}/v1/notifications?limit=5'");
            println!("          curl -s -H 'Authorization: Bearer {DEMO_TOKEN}' http://{api}/v1/cabinets/CAB-000001/compartments");
        }
        println!("console:  http://{api}/console/  (log in with a token; each sees its own scope)");
        println!("          operator:     {DEMO_TOKEN}");
        if let (Some(t), Some(site)) = (&world.manager_token, world.sites.first()) {
            println!("          site manager: {t}  ({}, {} cabinets)", site.id, site.cabinets.len());
        }
        if let Some(c) = world.carriers.first() {
            if let Some(t) = &c.token {
                println!("          carrier:      {t}  ({})", c.name);
            }
        }
        match issued {
            Ok(()) => {
                println!("MQTT:     mosquitto_sub -h {} -p {} --cafile {} \\", edge.ip(), edge.port(), ca.display());
                println!("            --cert {} --key {} \\", abs(cert.clone()).display(), abs(key).display());
                println!("            -t 'lk/v1/+/up/#' -t 'lk/v1/+/gw/#' -v -F '%t %x'");
                println!("          (topics lk/v1/{{cabinet}}/up/{{hello,door,scan,alarm,power,network,result,access}}, payloads CBOR: schemas/locker.cddl)");
            }
            Err(e) => println!("MQTT:     no integrator certificate: {e:#}"),
        }
        println!("Ctrl-C stops cleanly (agents disconnect, the gateway drains and flushes).");
        println!();
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn timing(argv: &[&str]) -> (u64, f64) {
        let cli = Cli::try_parse_from(std::iter::once("demo").chain(argv.iter().copied()))
            .expect("arguments parse");
        cli.args.timing()
    }

    #[test]
    fn the_default_run_plays_the_whole_day_in_about_three_minutes() {
        let (duration, speed) = timing(&[]);
        assert!(duration <= 200, "{duration} s");
        assert!(
            (duration as f64 * speed - DAY_S).abs() < 1.0,
            "the whole day"
        );
        // a longer run spreads the same day; an explicit speed is kept
        let (duration, speed) = timing(&["--duration", "600"]);
        assert_eq!((duration, speed), (600, 144.0));
        assert_eq!(timing(&["--duration", "10", "--speed", "60"]), (10, 60.0));
    }
}
