//! Serving the API: the accept loop, the connection cap, the header-read (and keep-alive
//! idle) timeout, optional TLS, and graceful shutdown. It owns the API's connections.
//!
//! `axum::serve` has neither a header-read timeout nor a connection cap, so a few thousand
//! slow clients could hold every file descriptor of the process, the MQTT edge's included.
//! Here each connection is served by hyper's HTTP/1 builder with a timer:
//! - at most `api.max_connections` are open; one more is accepted and closed at once (counted
//!   in `locker_api_connections_refused_total{reason="too_many_connections"}`), so it costs a
//!   descriptor only for an instant and the kernel backlog never fills with waiting clients;
//! - a client must send a whole request head within `api.header_read_timeout_ms` (hyper
//!   starts that clock when it waits for a head, so it also closes idle keep-alive
//!   connections), else the connection is closed (`reason="header_timeout"`);
//! - with `[api.tls]`, the TLS handshake runs in the connection's own task under the same
//!   deadline (`reason="tls_handshake"`), never in the accept loop;
//! - on shutdown the loop stops accepting, every connection finishes its in-flight request
//!   and closes; connection tasks live in a `JoinSet`, so they end with the serving task.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics::ApiMetrics;

/// TLS for the API (`[api.tls]`): PEM files of the server certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTlsConfig {
    /// The certificate chain the API presents (PEM), e.g. the edge's `server.pem`.
    pub cert: PathBuf,
    /// Its private key (PEM), e.g. the edge's `server.key`.
    pub key: PathBuf,
}

/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("API TLS files: {0}")]
    Files(#[from] crate::edge::TlsError),
    #[error("API TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("API TLS loading task failed: {0}")]
    Join(String),
}

/// How connections are served (from `[api]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Loads the API's TLS acceptor from PEM files (blocking reads: call at start).
pub fn load_tls(cfg: &ApiTlsConfig) -> Result<TlsAcceptor, ServeError> {
    let chain = crate::edge::read_certs(&cfg.cert)?;
    let key = crate::edge::read_key(&cfg.key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `cancel`, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    metrics: ApiMetrics,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    let mut refused_logged = false;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // out of descriptors or a transient error: back off a little
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(tcp);
            refuse(&metrics, "too_many_connections");
            if !refused_logged {
                refused_logged = true;
                tracing::warn!(%peer, max = limits.max_connections,
                    "API connection refused: api.max_connections reached (logged once; counted in locker_api_connections_refused_total)");
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls, metrics, cancel) =
            (app.clone(), tls.clone(), metrics.clone(), cancel.clone());
        metrics.connections_open.inc();
        conns.spawn(async move {
            match tls {
                None => serve_conn(tcp, app, limits, &metrics, cancel).await,
                Some(acceptor) => {
                    let hs = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp));
                    tokio::select! {
                        r = hs => match r {
                            Ok(Ok(stream)) => serve_conn(stream, app, limits, &metrics, cancel).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "API TLS handshake failed");
                                refuse(&metrics, "tls_handshake");
                            }
                            Err(_) => refuse(&metrics, "tls_handshake"),
                        },
                        _ = cancel.cancelled() => {}
                    }
                }
            }
            metrics.connections_open.dec();
            drop(permit);
        });
    }
    drop(listener);
    // in-flight requests finish; every connection has been told to close after them
    while conns.join_next().await.is_some() {}
}

fn refuse(metrics: &ApiMetrics, reason: &str) {
    metrics
        .connections_refused
        .with_label_values(&[reason])
        .inc();
}

async fn serve_conn<S>(
    io: S,
    app: Router,
    limits: Limits,
    metrics: &ApiMetrics,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            refuse(metrics, "header_timeout");
        } else {
            tracing::debug!(error = %e, "API connection ended with an error");
        }
    }
}
