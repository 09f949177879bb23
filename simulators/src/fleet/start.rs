//! Starting a fleet: the cabinets' ids and certificates (one PKI batch), the gateway (in this
//! process, a child process or external) with the carriers' tokens and the scaled rules
//! ([`gateway::SimRules`]) in its configuration, the
//! parcel world set up through the API, and the fleet built; and, on a reused state directory,
//! the orders left over from an earlier run taken over (see [`Fleet::adopt_leftovers`]).

use std::path::{Path, PathBuf};

use locker_broker_config::pki::{Pki, Role};
use locker_schemas::CabinetId;

use super::api::Api;
use super::gateway::{self, GatewayRunner};
use super::ledger::{SimOrder, Stage};
use super::nodes::{GatewaySpec, Gateways};
use super::world::World;
use super::{Fleet, FleetError, FleetOptions};

/// The cabinet ids of a fleet.
pub fn cabinet_ids(prefix: &str, n: usize) -> Result<Vec<CabinetId>, FleetError> {
    (1..=n)
        .map(|i| {
            CabinetId::new(format!("{prefix}{i:06}")).map_err(|e| FleetError::Pki(e.to_string()))
        })
        .collect()
}

/// A cabinet's certificate and PKCS#8 key, DER.
pub type CertKey = (Vec<u8>, Vec<u8>);

/// Opens the PKI in `dir` (or creates it for `localhost` and `127.0.0.1`), issues certificates
/// in one batch for the cabinets that have none, and returns each cabinet's (cert, key) DER.
pub fn prepare_pki(dir: &Path, ids: &[CabinetId]) -> Result<(Pki, Vec<CertKey>), FleetError> {
    let pe = |e: locker_broker_config::pki::PkiError| FleetError::Pki(e.to_string());
    let mut pki = if dir.join("ca.pem").exists() {
        Pki::open(dir).map_err(pe)?
    } else {
        Pki::init(dir, &["localhost".into(), "127.0.0.1".into()]).map_err(pe)?
    };
    pki.set_fsync(false);
    let missing: Vec<CabinetId> = ids
        .iter()
        .filter(|id| !pki.paths().client_cert(Role::Cabinet, id.as_str()).exists())
        .cloned()
        .collect();
    for chunk in missing.chunks(1_000) {
        pki.issue_cabinets(chunk).map_err(pe)?;
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let cert_path = pki.paths().client_cert(Role::Cabinet, id.as_str());
        let key_path = cert_path.with_extension("key");
        let cert = first_pem(&std::fs::read(&cert_path)?, false)
            .ok_or_else(|| FleetError::Pki(format!("{}: no certificate", cert_path.display())))?;
        let key = first_pem(&std::fs::read(&key_path)?, true)
            .ok_or_else(|| FleetError::Pki(format!("{}: no key", key_path.display())))?;
        out.push((cert, key));
    }
    Ok((pki, out))
}

fn first_pem(pem: &[u8], key: bool) -> Option<Vec<u8>> {
    if key {
        match rustls_pemfile::private_key(&mut &pem[..]).ok()?? {
            rustls_pki_types::PrivateKeyDer::Pkcs8(k) => Some(k.secret_pkcs8_der().to_vec()),
            _ => None,
        }
    } else {
        rustls_pemfile::certs(&mut &pem[..])
            .next()?
            .ok()
            .map(|c| c.to_vec())
    }
}

impl Fleet {
    /// A reused state directory: the gateway still has live orders at these cabinets from an
    /// earlier run, but the boards are new. The parcels those orders say are inside are put
    /// back on the boards (the physical world outlives a simulator run) and their carriers
    /// recall and collect them; reservations are cancelled.
    pub(super) async fn adopt_leftovers(&self) {
        let Ok(orders) = self.ctx.api.orders().await else {
            return;
        };
        let index: std::collections::HashMap<&str, usize> = self
            .cabinets
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str(), i))
            .collect();
        for o in &orders {
            let (Some(id), Some(state)) = (o["id"].as_str(), o["state"].as_str()) else {
                continue;
            };
            let Some(&i) = o["cabinet"].as_str().and_then(|c| index.get(c)) else {
                continue;
            };
            let compartment = o["compartment"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0);
            let stage = match state {
                "deposited" | "ready" | "expired" => Stage::Ready,
                "return_requested" => Stage::Recalled,
                "created" | "reserved" => {
                    let path = format!("/v1/orders/{id}/cancel");
                    if let Err(e) = self.ctx.api.post(&path, &serde_json::json!({}), None).await {
                        tracing::warn!(order = id, error = %e, "leftover order not cancelled");
                    }
                    continue;
                }
                _ => continue,
            };
            if compartment > 0 {
                let _ = self.cabinets[i]
                    .board
                    .put_parcel(usize::from(compartment - 1));
            }
            let carrier = self
                .ctx
                .world
                .carriers
                .iter()
                .position(|c| Some(c.id.as_str()) == o["carrier"].as_str())
                .unwrap_or(usize::MAX);
            self.ctx.ledger.add(SimOrder {
                id: id.to_owned(),
                carrier,
                tracking: o["tracking"].as_str().unwrap_or_default().to_owned(),
                cabinet: i,
                compartment,
                stage,
                pin: None,
                qr: None,
                no_show: true,
                ready_at: Some(std::time::Instant::now()),
                leftover: true,
                creds_ok: false,
                short_window: false,
                expired: false,
                late_pin_tried: true,
            });
        }
    }
}

/// Which gateway a fleet runs against.
#[derive(Debug, Clone)]
pub enum GatewayMode {
    /// Started in this process (the `locker_gateway` library) on free ports.
    InProcess,
    /// Started in this process on these edge and API addresses.
    InProcessAt {
        edge: std::net::SocketAddr,
        api: std::net::SocketAddr,
    },
    /// Started as a child process from this `locker-gateway` binary.
    Child { bin: PathBuf },
    /// `nodes` cluster nodes started as child processes from this `locker-gateway` binary on
    /// a three-server NATS JetStream cluster ([`super::nodes::Gateways::start`]), node 1 the
    /// domain node; the agents spread over their edges round robin. Starts fresh: the NATS
    /// stores, the nodes' data and the agents' database in the state directory are wiped.
    Cluster { bin: PathBuf, nodes: usize },
    /// Already running elsewhere.
    External {
        edge: std::net::SocketAddr,
        api: std::net::SocketAddr,
        token: String,
    },
}

/// Everything a run needs, started.
pub struct Launched {
    pub fleet: Fleet,
    /// The gateway, or the cluster's nodes (dereferences to the domain node).
    pub gateway: Gateways,
    pub pki: Pki,
    /// The process RSS (KiB) before the cabinets were built.
    pub rss_before_kib: Option<u64>,
}

/// The API the integrator calls: the carriers (with their tokens), the operator, and the
/// simulator's own reads of orders, commands, alerts, webhooks and notices. In a cluster, round
/// robin over every node but the last (the one the script kills: a real integrator's load
/// balancer takes a dead node out): the nodes that do not run the domain forward to the one
/// that does, so both paths carry the run.
pub fn integrator_api(nodes: &Gateways) -> Api {
    let all: Vec<std::net::SocketAddr> = nodes.nodes().map(|g| g.api).collect();
    let keep = match all.len() {
        0 | 1 => all.len(),
        n => n - 1,
    };
    Api::round_robin(&all[..keep], &nodes.domain().token)
}

/// Prepares the PKI in `pki_dir`, starts (or reaches) the gateway with its data in
/// `{state_dir}/gateway` (a cluster's in `{state_dir}/gateway-node{i}` and
/// `{state_dir}/gateway-nats`), and builds the fleet (agents not yet started).
pub async fn launch(
    opts: FleetOptions,
    pki_dir: &Path,
    mode: GatewayMode,
    token: &str,
) -> Result<Launched, FleetError> {
    // a child gateway reads its paths relative to its own configuration file: make them
    // absolute (a relative --state would otherwise point into the gateway's directory)
    let mut opts = opts;
    opts.state_dir = std::path::absolute(&opts.state_dir)?;
    let pki_dir = &std::path::absolute(pki_dir)?;
    let ids = cabinet_ids(&opts.prefix, opts.cabinets)?;
    let dir = pki_dir.to_path_buf();
    let ids2 = ids.clone();
    let (pki, certs) = tokio::task::spawn_blocking(move || prepare_pki(&dir, &ids2))
        .await
        .map_err(|e| FleetError::Pki(e.to_string()))??;
    let started_ms = super::alerts::now_ms();
    let gw_dir = opts.state_dir.join("gateway");
    let world = World::plan(opts.cabinets, opts.cabinets_per_site, token);
    let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    let rules = gateway::SimRules::for_fleet(&opts);
    // the recipients' SMS provider: the gateway delivers its notices there
    let sms = super::sms::SmsProvider::start().await?;
    let config = |edge, api| {
        let mut cfg = gateway::fleet_gateway_config(&gw_dir, pki.paths(), edge, api, token);
        if let Err(e) = sms.configure(&mut cfg) {
            tracing::warn!(error = %e, "notifications not configured");
        }
        world.add_tokens(&mut cfg);
        // the rules engine's times scaled to the run (see `SimRules`)
        rules.apply(&mut cfg);
        cfg
    };
    let ours = !matches!(mode, GatewayMode::External { .. });
    let (gateway, world) = match mode {
        GatewayMode::InProcess => (
            Gateways::single(GatewayRunner::in_process(config(any, any), token).await?),
            world,
        ),
        GatewayMode::InProcessAt { edge, api } => (
            Gateways::single(GatewayRunner::in_process(config(edge, api), token).await?),
            world,
        ),
        GatewayMode::Child { bin } => (
            Gateways::single(GatewayRunner::child(&bin, &config(any, any), &gw_dir, token).await?),
            world,
        ),
        GatewayMode::Cluster { bin, nodes } => {
            // a fresh cluster has no audit log: the agents start their seqs again too
            let _ = std::fs::remove_dir_all(opts.state_dir.join("agents.sled"));
            let spec = GatewaySpec {
                bin,
                state: opts.state_dir.clone(),
                name: "gateway".into(),
                pki: pki_dir.clone(),
                token: token.to_owned(),
            };
            let g = Gateways::start(&spec, nodes.max(1), |_, cfg| {
                if let Err(e) = sms.configure(cfg) {
                    tracing::warn!(error = %e, "notifications not configured");
                }
                world.add_tokens(cfg);
                rules.apply(cfg);
            })
            .await
            .map_err(|e| FleetError::Nodes(e.to_string()))?;
            opts.edges = g.edges();
            (g, world)
        }
        GatewayMode::External { edge, api, token } => (
            Gateways::single(GatewayRunner::external(edge, api, &token)),
            world.external(),
        ),
    };
    let api = integrator_api(&gateway);
    world.setup(&api, &ids).await?;
    // the integrator subscribes before the first order (an external gateway may refuse an
    // http:// receiver: then the report says the webhooks were not checked)
    let hooks = super::hooks::FleetHooks::subscribe(&api)
        .await
        .map_err(|e| e.to_string());
    if let Err(e) = &hooks {
        tracing::warn!(error = %e, "no webhook subscription: webhooks not checked");
    }
    // the run's notices are the ones after the newest one now
    let sms = if ours {
        super::sms::last_notice(&api)
            .await
            .map(|last| (sms, last))
            .map_err(|e| e.to_string())
    } else {
        Err("an external gateway delivers its notices where it is configured to".into())
    };
    let rss_before_kib = rss_kib(None);
    let ca = pki.ca_cert_der().to_vec();
    let mut fleet = Fleet::build(opts, certs, &ca, gateway.edge, api, ids, world).await?;
    if gateway.is_cluster() {
        // each node's own copy (its audit logs), not the domain node's through it
        fleet.nodes = gateway
            .apis()
            .into_iter()
            .map(|a| a.node_local())
            .enumerate()
            .map(|(i, a)| (Gateways::node_name(i), a))
            .collect();
    }
    fleet.hooks = hooks;
    fleet.sms = sms;
    let solar = fleet
        .cabinets
        .iter()
        .filter(|c| c.solar)
        .map(|c| c.id.to_string())
        .collect();
    fleet
        .timeline
        .begin(started_ms, ours.then_some(rules), solar);
    Ok(Launched {
        fleet,
        gateway,
        pki,
        rss_before_kib,
    })
}

/// Resident memory of a process in KiB (`/proc/PID/status` VmRSS); `None` off Linux.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
