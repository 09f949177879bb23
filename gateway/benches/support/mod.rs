//! What the gateway's API benches share: a two-thread runtime like the target machine's, and a
//! gateway configuration on loopback over a data directory a bench seeded (a PKI made in
//! `dir`, one operator token).

use std::path::{Path, PathBuf};

use locker_gateway::config::GatewayConfig;

/// The runtime the benches' gateway runs on (two workers: the machine's two cores).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A gateway on 127.0.0.1:0 over `data`, with a PKI made in `dir` and `token` as an operator.
pub fn gateway_config(dir: &Path, data: PathBuf, token: &str) -> anyhow::Result<GatewayConfig> {
    let pki = locker_broker_config::pki::Pki::init(
        dir.join("pki"),
        &["localhost".into(), "127.0.0.1".into()],
    )?;
    let mut cfg = GatewayConfig {
        data_dir: data,
        ..Default::default()
    };
    cfg.edge.listen = ([127, 0, 0, 1], 0).into();
    cfg.edge.ca_cert = pki.paths().ca_cert();
    cfg.edge.server_cert = pki.paths().server_cert();
    cfg.edge.server_key = pki.paths().server_key();
    cfg.edge.crl = Some(pki.paths().crl());
    cfg.api.listen = ([127, 0, 0, 1], 0).into();
    cfg.api.tokens.insert(token.into(), "bench".into());
    Ok(cfg)
}
