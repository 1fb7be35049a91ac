//! The admin HTTP listener: health checks and metrics.
//!
//! - `GET /livez`: `200 ok` while the process runs and this listener serves. It
//!   checks nothing else on purpose: a storage outage must not make a supervisor
//!   restart every healthy gateway.
//! - `GET /readyz`: `200 ready` when the gateway should receive new clients.
//!   Otherwise `503` with a one-line reason, from the first of these checks that
//!   fails, in this order:
//!   1. `draining`: a drain has begun ([`crate::Gateway::shutdown`], SIGTERM); it
//!      stays so until the process exits;
//!   2. `quic endpoint closed`: the QUIC endpoint accepts no more connections
//!      (the end of a drain, or the accept loop ended for any other reason);
//!   3. `storage: <error>` or `storage: probe timed out`: a probe transaction on
//!      the store as opened (begin, get of [`PROBE_KEY`], rollback) failed, or did
//!      not finish within the probe deadline (`probe_timeout_ms`).
//!
//!   Every request evaluates the checks afresh (nothing is cached), so readiness
//!   returns with the first probe that succeeds after storage recovers. Probes do
//!   not go through the instrumented store, so they are not counted as traffic.
//! - `GET /metrics`: Prometheus text format.
//! - `POST /backup`: a consistent snapshot of the embedded store in the backup
//!   format, only for `Authorization: Bearer <token>` with the token derived from
//!   the server secret ([`crate::backup`]).
//!
//! `HEAD` is answered like `GET`; other methods on these paths get `405`, other
//! paths `404`. The listener should not be exposed publicly (its default address
//! is loopback); it carries no secrets, but metrics reveal load. It serves at
//! most [`AdminLimits::max_connections`] connections at once (more are closed on
//! accept) and closes a connection that does not send a request's headers
//! within [`AdminLimits::header_timeout`], so slow or idle clients cannot pile
//! up. Operators'
//! documentation: `docs/operations/metrics.md`.

use crate::error::Error;
use crate::metrics::Metrics;
use crate::server::Lifecycle;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use rossby_storage::Kv;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

/// The key read by the readiness probe. Its `0x00` first byte lies outside every
/// table's prefix, so the probe never touches (or locks) real data.
pub const PROBE_KEY: &[u8] = b"\x00rossby/readyz-probe";

/// What the admin handlers look at.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub lifecycle: Arc<Lifecycle>,
    /// The store as opened (not instrumented: probes are not client traffic).
    pub kv: Kv,
    pub metrics: Arc<Metrics>,
    pub probe_timeout: Duration,
    /// `POST /backup`.
    pub backup: Arc<crate::backup::BackupService>,
}

/// The admin routes.
pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/backup", axum::routing::post(backup))
        .fallback(not_found)
        .with_state(state)
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    match readiness(&state).await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

/// Why the gateway is not ready, if it is not.
pub(crate) async fn readiness(state: &AdminState) -> Result<(), String> {
    if state.lifecycle.draining.load(Ordering::Acquire) {
        return Err("draining".into());
    }
    if !state.lifecycle.quic_open.load(Ordering::Acquire) {
        return Err("quic endpoint closed".into());
    }
    match tokio::time::timeout(state.probe_timeout, probe(&state.kv)).await {
        Ok(Ok(())) => Ok(()),
        // Storage errors describe the backend's state (for example "cluster
        // unreachable"); they never contain user data.
        Ok(Err(err)) => Err(format!("storage: {err}").replace('\n', " ")),
        Err(_) => Err("storage: probe timed out".into()),
    }
}

/// Begin, read the probe key, roll back.
async fn probe(kv: &Kv) -> rossby_storage::kv::Result<()> {
    let mut txn = kv.begin().await?;
    let read = txn.get(PROBE_KEY).await;
    txn.rollback().await?;
    read.map(|_| ())
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn backup(
    State(state): State<AdminState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    state
        .backup
        .clone()
        .respond(state.kv.clone(), state.lifecycle.clone(), &headers)
        .await
}

/// Bounds of the admin listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Time a connection has to send a request's headers.
    pub header_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
        }
    }
}

crate::config::options! {
    /// The admin listener: its address, its bounds and the readiness probe.
    #[derive(clap::Args, serde::Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "Admin endpoint")]
    pub struct AdminOptions {
        /// Admin HTTP listen address (/livez, /readyz, /metrics) [default: 127.0.0.1:7401].
        #[arg(long, env = "ROSSBY_ADMIN_LISTEN", value_name = "ADDR")]
        pub admin_listen: Option<SocketAddr>,
        /// Most connections the admin listener serves at once; more are closed on
        /// accept [default: 64].
        #[arg(long, env = "ROSSBY_ADMIN_MAX_CONNECTIONS", value_name = "N")]
        pub admin_max_connections: Option<usize>,
        /// How long an admin connection may take to send a request's headers, in
        /// milliseconds, before it is closed [default: 5000].
        #[arg(long, env = "ROSSBY_ADMIN_HEADER_TIMEOUT_MS", value_name = "MS")]
        pub admin_header_timeout_ms: Option<u64>,
        /// Deadline of the readiness storage probe in milliseconds [default: 1000].
        #[arg(long, env = "ROSSBY_PROBE_TIMEOUT_MS", value_name = "MS")]
        pub probe_timeout_ms: Option<u64>,
    }
}

/// The admin listener's settings, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Bounds of the listener.
    pub limits: AdminLimits,
    /// Deadline of the `/readyz` storage probe.
    pub probe_timeout: Duration,
}

impl AdminOptions {
    /// The settings, with the defaults for what is unset.
    pub fn into_settings(self) -> crate::error::Result<AdminSettings> {
        let probe_ms = self.probe_timeout_ms.unwrap_or(1000);
        if probe_ms == 0 || probe_ms > 60_000 {
            return Err(Error::Config(format!(
                "--probe-timeout-ms must be between 1 and 60000 (got {probe_ms})"
            )));
        }
        let max_connections = self.admin_max_connections.unwrap_or(64);
        if max_connections == 0 || max_connections > 10_000 {
            return Err(Error::Config(format!(
                "--admin-max-connections must be between 1 and 10000 (got {max_connections})"
            )));
        }
        let header_ms = self.admin_header_timeout_ms.unwrap_or(5000);
        if header_ms == 0 || header_ms > 600_000 {
            return Err(Error::Config(format!(
                "--admin-header-timeout-ms must be between 1 and 600000 (got {header_ms})"
            )));
        }
        Ok(AdminSettings {
            listen: self.admin_listen.unwrap_or(SocketAddr::from((
                [127, 0, 0, 1],
                rossby_protocol::DEFAULT_PORT + 1,
            ))),
            limits: AdminLimits {
                max_connections,
                header_timeout: Duration::from_millis(header_ms),
            },
            probe_timeout: Duration::from_millis(probe_ms),
        })
    }
}

/// How long in-flight admin requests may finish once the listener stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` within `limits` until `stop` fires (or its
/// sender is dropped), then lets in-flight requests finish for a bounded time.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: AdminLimits,
    mut stop: oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause instead of
                    // spinning.
                    tracing::warn!(error = %err, "admin listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin connection refused: too many open");
            continue;
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "admin connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}
