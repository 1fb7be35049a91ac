//! `rossby-admin prober`: a long-running cross-region prober.
//!
//! One prober runs in every region. Each owns two test accounts homed in its
//! region (registered once, kept in state files under `--state-dir`): a
//! sending one and a receiving one, so the same-region pair is an ordinary
//! send between two accounts (a device never receives its own sends). Every
//! interval it sends a small text message from its sending account to the
//! receiving account of every region, its own included, and it fetches the
//! probes every region's prober sends to its receiving account. Probes go through the client SDK
//! and the public QUIC endpoint of a gateway of the prober's region, so they
//! take the path users' messages take: send, forward to the recipient box's
//! owning gateway in its home region, enqueue, fetch.
//!
//! A probe's text ([`track::Payload`]) carries the sender's region, a random
//! run number, a sequence number per (run, from, to) and the send time, so the
//! receiving prober measures end-to-end delivery latency and notices probes
//! that never arrive. Metrics per (from, to) region pair, on `--metrics-listen`
//! at `/metrics` (see [`ProbeMetrics`]):
//!
//! | metric | type | labels | exported by |
//! | --- | --- | --- | --- |
//! | `rossby_probe_sent_total` | counter | `from`, `to` | sender |
//! | `rossby_probe_send_failures_total` | counter | `from`, `to`, `status` | sender |
//! | `rossby_probe_send_duration_seconds` | histogram | `from`, `to` | sender |
//! | `rossby_probe_delivered_total` | counter | `from`, `to` | receiver |
//! | `rossby_probe_delivery_duration_seconds` | histogram | `from`, `to` | receiver |
//! | `rossby_probe_missing_total` | counter | `from`, `to` | receiver |
//! | `rossby_probe_late_total` | counter | `from`, `to` | receiver |
//! | `rossby_probe_fetch_failures_total` | counter | `region`, `status` | receiver |
//! | `rossby_probe_last_delivery_timestamp_seconds` | gauge | `from`, `to` | receiver |
//!
//! Accounts: the identifiers of region R's prober accounts are the
//! `--account` template with `{region}` replaced by R's name and `{role}` by
//! `send` or `recv`. Registering one needs its verification code: the prober
//! reads `<identifier> <code>` lines from `--codes-file` (what the gateways'
//! `file:` verifier writes; with the webhook verifier, the operator appends the
//! line the webhook received). The operator provisions each region's accounts
//! once (`--provision-only`); later runs reuse the state files and need no
//! code.

pub mod track;

use crate::error::{Error, Result};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use rossby_client::{Body, Client, ClientConfig, RetryPolicy, StateKey};
use rossby_gateway::verifier::CodeBook;
use rossby_keyspace::RegionId;
use rossby_protocol::pb;
use rossby_replication::Topology;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;
use track::{Payload, Receipt, Tracker};

/// The default `--account` template.
pub const DEFAULT_ACCOUNT_TEMPLATE: &str = "rossby-prober-{region}-{role}@prober.rossby.invalid";

/// Which of a prober's two accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends the region's probes.
    Send,
    /// Receives every region's probes to this region.
    Recv,
}

impl Role {
    /// The `{role}` of the account template.
    pub fn name(self) -> &'static str {
        match self {
            Role::Send => "send",
            Role::Recv => "recv",
        }
    }
}

/// Buckets of probe latencies: a same-region delivery takes milliseconds, a
/// cross-region one a few WAN round trips, a struggling one up to the deadline.
const PROBE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How long a fetch waits for new probes before asking again, at most (and at
/// most one interval, so a missed wake-up costs no more than one interval of
/// latency).
const FETCH_WAIT: Duration = Duration::from_secs(5);

/// Pause after a failed fetch, so an unreachable gateway is not hammered.
const FETCH_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How often overdue probes are looked for.
const EXPIRE_EVERY: Duration = Duration::from_millis(500);

/// How often the codes file is read while waiting for a code.
const CODE_POLL: Duration = Duration::from_millis(50);

/// What a prober needs.
#[derive(Clone, Debug)]
pub struct ProberConfig {
    /// The deployment's regions.
    pub topology: Topology,
    /// This prober's region (name).
    pub region: String,
    /// The QUIC address of the gateway of this region the prober talks to.
    pub gateway: SocketAddr,
    /// The name the gateway's certificate is checked against.
    pub server_name: Option<String>,
    /// The pinned gateway certificate (DER); `None`: the web PKI roots.
    pub ca_cert_der: Option<Vec<u8>>,
    /// Where the account's state file lives.
    pub state_dir: PathBuf,
    /// The identifier of each region's prober accounts, `{region}` and
    /// `{role}` replaced.
    pub account_template: String,
    /// Where verification codes appear (`<identifier> <code>` lines), to
    /// register this region's account when its state file has none.
    pub codes_file: Option<PathBuf>,
    /// How long to wait for a code to appear in `codes_file`.
    pub code_wait: Duration,
    /// Time between probes to each region.
    pub interval: Duration,
    /// A probe not received this long after it was sent counts as missing.
    pub deadline: Duration,
    /// A send that has not answered within this long is a failure (`timeout`).
    pub timeout: Duration,
}

impl ProberConfig {
    /// The identifier of `region`'s prober account of `role`.
    pub fn account(&self, region: &str, role: Role) -> String {
        self.account_template
            .replace("{region}", region)
            .replace("{role}", role.name())
            .to_ascii_lowercase()
    }

    fn region_code(&self) -> Result<RegionId> {
        self.topology
            .region_named(&self.region)
            .map(|r| r.code)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "region {:?} is not in the topology (it names {})",
                    self.region,
                    self.topology
                        .regions()
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    fn check(&self) -> Result<()> {
        self.region_code()?;
        if !(self.account_template.contains("{region}") && self.account_template.contains("{role}"))
        {
            return Err(Error::Invalid(
                "--account must contain {region} and {role}: every region's prober needs its own sending and receiving accounts"
                    .into(),
            ));
        }
        if self.interval.is_zero() || self.deadline.is_zero() || self.timeout.is_zero() {
            return Err(Error::Invalid(
                "--interval, --deadline and --timeout must be positive".into(),
            ));
        }
        Ok(())
    }

    fn client_config(&self, role: Role) -> ClientConfig {
        ClientConfig {
            state_path: self.state_dir.join(format!(
                "prober-{}-{}.state",
                self.region,
                role.name()
            )),
            state_key: StateKey::KeyFile,
            kdf: rossby_client::KdfParams::default(),
            create: true,
            device_label: format!("rossby-prober-{}-{}", self.region, role.name()),
            gateway: Some(self.gateway),
            server_name: self.server_name.clone(),
            ca_cert_der: self.ca_cert_der.clone(),
            service_name: None,
            // Few, short retries: a failing path must show as failed probes
            // within an interval or two, not be hidden by patient retries.
            retry: RetryPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(500),
                max_rate_limit_wait: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(3),
                max_connect_attempts: 2,
                request_timeout: self.timeout,
            },
            state_compaction: Default::default(),
        }
    }
}

/// The prober's Prometheus metrics (one registry per prober, so several can
/// run in one process).
pub struct ProbeMetrics {
    registry: Registry,
    /// Probes the gateway accepted.
    pub sent: IntCounterVec,
    /// Probes that could not be sent, by status (`UNAVAILABLE`, `timeout`,
    /// `unreachable`, ...).
    pub send_failures: IntCounterVec,
    /// Time from starting a send to the gateway's confirmation.
    pub send_duration: HistogramVec,
    /// Probes received (each counted once).
    pub delivered: IntCounterVec,
    /// Time from the send (the sender's clock) to the fetch that returned it
    /// (the receiver's clock).
    pub delivery_duration: HistogramVec,
    /// Probes not received within the deadline.
    pub missing: IntCounterVec,
    /// Probes received after they were counted missing, or twice.
    pub late: IntCounterVec,
    /// Fetches of the prober's own account that failed, by status.
    pub fetch_failures: IntCounterVec,
    /// When the last probe of a pair arrived (Unix seconds).
    pub last_delivery: IntGaugeVec,
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<T>,
) -> Result<T> {
    let metric = metric.map_err(|e| Error::Invalid(format!("metric definition: {e}")))?;
    registry
        .register(Box::new(metric.clone()))
        .map_err(|e| Error::Invalid(format!("metric registration: {e}")))?;
    Ok(metric)
}

impl ProbeMetrics {
    /// Defines the metrics, with every series of `region`'s pairs present at 0
    /// so rates and alerts see a pair before its first event.
    pub fn new(topology: &Topology, region: &str) -> Result<ProbeMetrics> {
        let registry = Registry::new();
        let pair = &["from", "to"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let histogram = |name: &str, help: &str| {
            registered(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(PROBE_BUCKETS.to_vec()),
                    pair,
                ),
            )
        };
        let m = ProbeMetrics {
            sent: counter(
                "rossby_probe_sent_total",
                "Probes sent and confirmed by the gateway, per region pair.",
                pair,
            )?,
            send_failures: counter(
                "rossby_probe_send_failures_total",
                "Probes that could not be sent, per region pair and status.",
                &["from", "to", "status"],
            )?,
            send_duration: histogram(
                "rossby_probe_send_duration_seconds",
                "Time from starting a probe's send to the gateway's confirmation.",
            )?,
            delivered: counter(
                "rossby_probe_delivered_total",
                "Probes received by the recipient region's prober, per region pair.",
                pair,
            )?,
            delivery_duration: histogram(
                "rossby_probe_delivery_duration_seconds",
                "Time from a probe's send to the fetch that returned it (sender's and receiver's clocks).",
            )?,
            missing: counter(
                "rossby_probe_missing_total",
                "Probes not received within the deadline, per region pair.",
                pair,
            )?,
            late: counter(
                "rossby_probe_late_total",
                "Probes received after being counted missing, or twice, per region pair.",
                pair,
            )?,
            fetch_failures: counter(
                "rossby_probe_fetch_failures_total",
                "Failed fetches of the prober account of a region, by status.",
                &["region", "status"],
            )?,
            last_delivery: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "rossby_probe_last_delivery_timestamp_seconds",
                        "When the last probe of a region pair arrived, in Unix seconds.",
                    ),
                    pair,
                ),
            )?,
            registry,
        };
        for other in topology.regions() {
            let out = [region, other.name.as_str()];
            let into = [other.name.as_str(), region];
            m.sent.with_label_values(&out);
            m.send_duration.with_label_values(&out);
            m.delivered.with_label_values(&into);
            m.delivery_duration.with_label_values(&into);
            m.missing.with_label_values(&into);
            m.late.with_label_values(&into);
        }
        Ok(m)
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on invalid metric families, which the
        // definitions above rule out; an empty page is the fallback.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A status label for a failed client call.
fn status_of(e: &rossby_client::Error) -> String {
    use rossby_client::Error as E;
    match e {
        E::Status { status, .. } => rossby_client::error::status_name(*status).to_string(),
        E::Unreachable { .. } => "unreachable".into(),
        E::UnknownRecipient(_) => "NOT_FOUND".into(),
        E::BadReply(_) => "bad_reply".into(),
        E::Crypto(_) => "crypto".into(),
        E::NotAuthorized => "not_authorized".into(),
        _ => "client".into(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn client_error(region: &str, what: &str, e: rossby_client::Error) -> Error {
    Error::Prober {
        region: region.into(),
        reason: format!("{what}: {e}"),
    }
}

/// Opens this region's prober account of `role`, registering it first when
/// its state file has no credentials (which needs `codes_file`).
pub async fn open_account(config: &ProberConfig, role: Role) -> Result<Client> {
    config.check()?;
    let region = config.region.as_str();
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| Error::io("cannot create state directory", &config.state_dir, e))?;
    let client = Client::open(config.client_config(role))
        .await
        .map_err(|e| client_error(region, "opening the account's state", e))?;
    if !client.is_authorized().await {
        register(config, &client, role).await?;
    }
    Ok(client)
}

async fn register(config: &ProberConfig, client: &Client, role: Role) -> Result<()> {
    let region = config.region.as_str();
    let identifier = config.account(region, role);
    let Some(codes) = &config.codes_file else {
        return Err(Error::Prober {
            region: region.into(),
            reason: format!(
                "the account {identifier} is not provisioned in {}: run once with --codes-file FILE to register it",
                config.state_dir.display()
            ),
        });
    };
    let mut book = CodeBook::new(codes.clone());
    // A bound identifier is answered like a free one; Authorize says it is
    // bound (to a box whose device state was lost): then take it over.
    let mut recover = false;
    loop {
        book.refresh()
            .map_err(|e| Error::io("cannot read codes file", book.path(), e))?;
        let before = book.count(&identifier);
        client
            .register_homed(&identifier, recover, Some(config.region_code()?))
            .await
            .map_err(|e| client_error(region, "registering the account", e))?;
        let waited = Instant::now();
        let code = loop {
            book.refresh()
                .map_err(|e| Error::io("cannot read codes file", book.path(), e))?;
            if book.count(&identifier) > before
                && let Some(code) = book.latest(&identifier)
            {
                break code;
            }
            if waited.elapsed() >= config.code_wait {
                return Err(Error::Prober {
                    region: region.into(),
                    reason: format!(
                        "no code for {identifier} appeared in {} within {} s",
                        codes.display(),
                        config.code_wait.as_secs()
                    ),
                });
            }
            tokio::time::sleep(CODE_POLL).await;
        };
        match client.authorize(&code).await {
            Ok(_) => return Ok(()),
            Err(e) if !recover && e.status() == Some(pb::Status::AlreadyRegistered) => {
                recover = true;
            }
            Err(e) => return Err(client_error(region, "authorizing the account", e)),
        }
    }
}

/// A running prober. Dropping it stops it.
pub struct Prober {
    metrics: Arc<ProbeMetrics>,
    metrics_addr: SocketAddr,
    sender: Arc<Client>,
    receiver: Arc<Client>,
    tasks: JoinSet<()>,
}

impl Prober {
    /// Opens (or provisions) the accounts, binds `metrics_listen` and starts
    /// sending, receiving and counting.
    pub async fn start(config: ProberConfig, metrics_listen: SocketAddr) -> Result<Prober> {
        let sender = Arc::new(open_account(&config, Role::Send).await?);
        let receiver = Arc::new(open_account(&config, Role::Recv).await?);
        let metrics = Arc::new(ProbeMetrics::new(&config.topology, &config.region)?);
        let listener = tokio::net::TcpListener::bind(metrics_listen)
            .await
            .map_err(|e| Error::Invalid(format!("cannot listen on {metrics_listen}: {e}")))?;
        let metrics_addr = listener
            .local_addr()
            .map_err(|e| Error::Invalid(format!("cannot listen on {metrics_listen}: {e}")))?;
        let config = Arc::new(config);
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_metrics(listener, metrics.clone()));
        tasks.spawn(send_loop(config.clone(), sender.clone(), metrics.clone()));
        tasks.spawn(receive_loop(
            config.clone(),
            receiver.clone(),
            metrics.clone(),
            tracker.clone(),
        ));
        tasks.spawn(expire_loop(config, metrics.clone(), tracker));
        Ok(Prober {
            metrics,
            metrics_addr,
            sender,
            receiver,
            tasks,
        })
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The metrics, as served.
    pub fn metrics(&self) -> &ProbeMetrics {
        &self.metrics
    }

    /// Stops every task and closes the accounts' connections.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
        self.sender.close().await;
        self.receiver.close().await;
    }
}

async fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<ProbeMetrics>) {
    use axum::routing::get;
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/livez", get(|| async { "ok\n" }));
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "the prober's metrics listener stopped");
    }
}

/// Every interval, one probe to every region's account, concurrently; each
/// pair has its own sequence.
async fn send_loop(config: Arc<ProberConfig>, client: Arc<Client>, metrics: Arc<ProbeMetrics>) {
    let run: u64 = rand::random();
    let regions: Vec<String> = config
        .topology
        .regions()
        .iter()
        .map(|r| r.name.clone())
        .collect();
    let mut seqs = vec![0u64; regions.len()];
    let interval_ms = u64::try_from(config.interval.as_millis()).unwrap_or(u64::MAX);
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // A probe that failed is not retried (a retry would arrive late and
        // blur the measure); the next interval sends a new one.
        if let Err(e) = client.clear_outbox().await {
            tracing::warn!(error = %e, "cannot clear the prober's outbox");
        }
        let mut sends = JoinSet::new();
        for (to, seq) in regions.iter().zip(seqs.iter_mut()) {
            let payload = Payload {
                from: config.region.clone(),
                to: to.clone(),
                run,
                seq: *seq,
                sent_ms: now_ms(),
                interval_ms,
            };
            *seq += 1;
            let (client, metrics, config) = (client.clone(), metrics.clone(), config.clone());
            sends.spawn(async move {
                let labels = [payload.from.as_str(), payload.to.as_str()];
                let recipient = config.account(&payload.to, Role::Recv);
                let started = Instant::now();
                let sent = tokio::time::timeout(
                    config.timeout,
                    client.send_text(&recipient, &payload.to_text()),
                )
                .await;
                match sent {
                    Ok(Ok(_)) => {
                        metrics.sent.with_label_values(&labels).inc();
                        metrics
                            .send_duration
                            .with_label_values(&labels)
                            .observe(started.elapsed().as_secs_f64());
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(to = %payload.to, error = %e, "probe send failed");
                        let status = status_of(&e);
                        metrics
                            .send_failures
                            .with_label_values(&[labels[0], labels[1], &status])
                            .inc();
                    }
                    Err(_) => {
                        metrics
                            .send_failures
                            .with_label_values(&[labels[0], labels[1], "timeout"])
                            .inc();
                    }
                }
            });
        }
        while sends.join_next().await.is_some() {}
    }
}

/// Fetches the account's queue (acknowledging what it returns) and counts the
/// probes in it.
async fn receive_loop(
    config: Arc<ProberConfig>,
    client: Arc<Client>,
    metrics: Arc<ProbeMetrics>,
    tracker: Arc<Mutex<Tracker>>,
) {
    let me = config.region.as_str();
    let wait = FETCH_WAIT.min(config.interval);
    loop {
        let fetched = tokio::time::timeout(wait + config.timeout, client.fetch(wait)).await;
        let batch = match fetched {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "probe fetch failed");
                metrics
                    .fetch_failures
                    .with_label_values(&[me, &status_of(&e)])
                    .inc();
                tokio::time::sleep(FETCH_RETRY_PAUSE).await;
                continue;
            }
            Err(_) => {
                metrics
                    .fetch_failures
                    .with_label_values(&[me, "timeout"])
                    .inc();
                continue;
            }
        };
        let received_ms = now_ms();
        for message in batch.messages {
            let Body::Text(text) = &message.body else {
                continue;
            };
            let Some(payload) = Payload::parse(text) else {
                continue;
            };
            // Only probes from the named region's account count: the account
            // may be reachable by anyone, and a forged probe must not hide a
            // broken path.
            let genuine = payload.to == me
                && config
                    .topology
                    .region_named(&payload.from)
                    .is_some_and(|r| r.code == message.sender_box.home_region());
            if !genuine {
                continue;
            }
            let receipt = match tracker.lock() {
                Ok(mut t) => t.receive(&payload),
                Err(poisoned) => poisoned.into_inner().receive(&payload),
            };
            let labels = [payload.from.as_str(), me];
            let latency_ms = received_ms.saturating_sub(payload.sent_ms);
            match receipt {
                Receipt::Delivered => {
                    // The latency first: a scrape (which reads the counter
                    // before the histogram) never sees a delivery without it.
                    metrics
                        .delivery_duration
                        .with_label_values(&labels)
                        .observe(latency_ms as f64 / 1000.0);
                    metrics.delivered.with_label_values(&labels).inc();
                    metrics
                        .last_delivery
                        .with_label_values(&labels)
                        .set(i64::try_from(received_ms / 1000).unwrap_or(i64::MAX));
                }
                Receipt::Late => metrics.late.with_label_values(&labels).inc(),
            }
        }
    }
}

/// Counts the probes that missed their deadline.
async fn expire_loop(
    config: Arc<ProberConfig>,
    metrics: Arc<ProbeMetrics>,
    tracker: Arc<Mutex<Tracker>>,
) {
    let deadline_ms = u64::try_from(config.deadline.as_millis()).unwrap_or(u64::MAX);
    let mut ticks = tokio::time::interval(EXPIRE_EVERY);
    loop {
        ticks.tick().await;
        let expired = match tracker.lock() {
            Ok(mut t) => t.expire(now_ms(), deadline_ms),
            Err(poisoned) => poisoned.into_inner().expire(now_ms(), deadline_ms),
        };
        for (from, n) in expired {
            metrics
                .missing
                .with_label_values(&[from.as_str(), config.region.as_str()])
                .inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_of_the_region_is_exported_from_the_start() {
        let topology = Topology::parse(
            r#"
primary = "a"
survival = "zone"
[[regions]]
code = 1
name = "a"
zones = ["a1"]
gateways = [{ quic = "127.0.0.1:7400", admin = "127.0.0.1:7401" }]
[[regions]]
code = 2
name = "b"
zones = ["b1"]
gateways = [{ quic = "127.0.0.1:7500", admin = "127.0.0.1:7501" }]
[rtt_ms]
"a:b" = 80
"#,
        )
        .unwrap();
        let m = ProbeMetrics::new(&topology, "a").unwrap();
        let text = m.render();
        for line in [
            r#"rossby_probe_sent_total{from="a",to="b"} 0"#,
            r#"rossby_probe_sent_total{from="a",to="a"} 0"#,
            r#"rossby_probe_delivered_total{from="b",to="a"} 0"#,
            r#"rossby_probe_missing_total{from="b",to="a"} 0"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
