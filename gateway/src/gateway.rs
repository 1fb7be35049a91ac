//! [`Gateway`]: one running gateway (QUIC endpoint, admin listener, region
//! maintenance) in this process, as the binary, tests and benchmarks start it.

use crate::admin::{self, AdminState};
use crate::api::Api;
use crate::config::{Config, StorageConfig, load_or_create_secret};
use crate::error::{Error, Result};
use crate::maintenance::Maintenance;
use crate::metrics::{InstrumentedKv, Metrics};
use crate::peer::forward::WanDelay;
use crate::peer::{PeerGeo, Peers};
use crate::server::{self, CLOSE_DRAINING, Lifecycle, Shared};
use crate::tls;
use rossby_keyspace::RegionId;
use rossby_replication::LatencyModel;
use rossby_storage::Kv;
use rossby_storage::kv::retry::RetryPolicy;
use rossby_storage::tables::Store;
use rossby_wansim::WanSimulation;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The error [`Gateway::start`] returns.
pub type GatewayError = Error;

/// Shortest server secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest wait for closing connections to be acknowledged by their peers.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Longest wait for the last references to an opened store to go away, so that
/// fjall closes (and can be reopened) when `shutdown` returns.
const STORE_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// A running gateway. Stop it with [`Gateway::shutdown`]; dropping it instead
/// closes the endpoint and stops its tasks abruptly (no drain).
pub struct Gateway {
    quic_addr: SocketAddr,
    admin_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    identity: tls::Identity,
    cert_path: PathBuf,
    store: Store,
    metrics: Arc<Metrics>,
    api: Arc<Api>,
    maintenance: Arc<Maintenance>,
    lifecycle: Arc<Lifecycle>,
    /// The store as opened, when this gateway opened it (closed at shutdown).
    owned_kv: Option<Kv>,
    drain_grace: Duration,
    drain_timeout: Duration,
    tasks: Tasks,
}

/// The gateway's background tasks. Dropping it (a gateway dropped without
/// `shutdown`) closes the endpoint and aborts the tasks, rather than leaving them
/// serving with nobody holding the handle.
struct Tasks {
    endpoint: quinn::Endpoint,
    lifecycle: Arc<Lifecycle>,
    accept: Option<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
    admin_stop: Option<oneshot::Sender<()>>,
    /// Region maintenance and the resumption of interrupted group fan-outs.
    background: Option<JoinHandle<()>>,
    /// The gateway-to-gateway machinery, when configured.
    peers: Option<Arc<Peers>>,
    /// The wake-up scheduler and its delivery tasks.
    push: Vec<JoinHandle<()>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.lifecycle.draining.store(true, Ordering::Release);
            self.lifecycle.refuse();
            self.lifecycle.quic_open.store(false, Ordering::Release);
            self.endpoint
                .close(CLOSE_DRAINING.into(), b"gateway shutting down");
        }
        if let Some(peers) = self.peers.take() {
            peers.abort();
        }
        for task in [
            self.accept.take(),
            self.admin.take(),
            self.background.take(),
        ]
        .into_iter()
        .flatten()
        .chain(self.push.drain(..))
        {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("quic_addr", &self.quic_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Starts a gateway: creates the data directory, loads (or generates) the
    /// secrets and the certificate, opens the store, builds the API, binds the QUIC
    /// endpoint and the admin listener, and starts the region's maintenance
    /// (expiry sweeps and account purges, under leases shared with the region's
    /// other gateways: [`crate::maintenance`]).
    pub async fn start(config: Config) -> Result<Gateway> {
        crate::config::create_private_dir(&config.data_dir)?;
        let metrics = Arc::new(Metrics::new());
        metrics.region_code.set(i64::from(config.region().0));

        // The backup token is formed from the secret file's content as
        // `rossby-gateway backup` reads it (for a versioned file, the whole file).
        let file_secret =
            load_or_create_secret(&config.secret_file, MIN_SECRET_BYTES, "server secret")?;
        let backup = Arc::new(crate::backup::BackupService::new(
            &file_secret,
            config.api.limits.max_payload_bytes,
        ));
        let secrets =
            crate::secret_file::load_server_secrets(&config.secret_file, config.secret_version)?;
        let hasher = crate::secret_file::load_hasher(&config.pepper_file, config.pepper_version)?;
        let identity = tls::load_or_generate(&config.tls)?;
        if metrics.set_certificate_expiry(identity.leaf()).is_none() {
            tracing::warn!(
                cert = %config.tls.cert.display(),
                "cannot read the certificate's expiry; rossby_tls_certificate_expiry_timestamp_seconds is 0"
            );
        }
        let server_config = tls::server_config(&identity, &config.quic)?;

        let (raw_kv, owned) = match &config.storage {
            StorageConfig::Backend(backend) => (rossby_storage::kv::open(backend).await?, true),
            StorageConfig::Shared(kv) => (kv.clone(), false),
        };
        // The simulation wraps only the API's view of the store: the admin probe
        // and shutdown keep the real store.
        let (api_kv, wan_model) = simulated_wan(&config, raw_kv.clone())?;
        let mut store = Store::new(InstrumentedKv::wrap(api_kv, metrics.clone()), hasher);
        store.limits = config.api.limits.clone();
        store.retry = retry_policy(config.retry.as_ref(), wan_model.as_ref());

        let region = config.api.region;
        let max_frame = config.api.max_frame_bytes;
        let mut settings = config.api.clone();
        settings.server_secret = secrets.current().to_vec();
        let api = Arc::new(Api::with_server_secrets(
            settings,
            secrets,
            store.clone(),
            metrics.clone(),
        )?);

        let blob_store = crate::blobstore::BlobStore::open(&config.blob_store, metrics.clone())?;
        api.set_blob_store(blob_store.clone());

        // Credentials load (and fail) before anything is bound.
        let push_providers = config.push.providers()?;

        let endpoint = quic_endpoint(server_config, config.listen, &config.quic)?;
        let quic_addr = endpoint.local_addr().map_err(|e| Error::Io {
            context: "QUIC endpoint address".into(),
            source: e,
        })?;
        let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| Error::Io {
                context: format!("cannot listen on {} (admin)", config.admin_listen),
                source: e,
            })?;
        let admin_addr = admin_listener.local_addr().map_err(|e| Error::Io {
            context: "admin listener address".into(),
            source: e,
        })?;

        // Cross-gateway push: attached before the first request is served.
        api.set_fetch_poll_interval(config.fetch_poll_interval);
        let peers = match &config.peer {
            Some(peer) => {
                let geo = peer_geo(&config, wan_model.as_ref());
                let peers = Peers::start(
                    peer,
                    geo,
                    store.clone(),
                    api.presence().clone(),
                    metrics.clone(),
                )?;
                api.attach_peers(peers.clone());
                Some(peers)
            }
            None => None,
        };

        // Wake-ups never delay a send; their tasks stop with the gateway.
        let (pusher, push_tasks) = crate::push::Pusher::start(
            store.clone(),
            api.presence().clone(),
            push_providers,
            config.push.settings.clone(),
            metrics.clone(),
        );
        api.attach_pusher(pusher);

        let lifecycle = Arc::new(Lifecycle::default());
        lifecycle.quic_open.store(true, Ordering::Release);
        let shared = Arc::new(Shared {
            api: api.clone(),
            metrics: metrics.clone(),
            lifecycle: lifecycle.clone(),
            max_frame,
            max_connections: config.quic.max_connections,
            read_timeout: config.quic.request_read_timeout,
            write_timeout: config.quic.response_write_timeout,
            connection_budget: config.quic.connection_budget_bytes,
            max_per_address: config.quic.max_connections_per_address,
            address_validation: config.quic.address_validation,
            retry_above_handshakes: config.quic.retry_above_handshakes,
            per_address: std::sync::Mutex::default(),
            handshaking: std::sync::atomic::AtomicUsize::new(0),
        });
        let accept_task = {
            let endpoint = endpoint.clone();
            let lifecycle = lifecycle.clone();
            tokio::spawn(async move {
                server::accept_loop(endpoint, shared).await;
                // However the endpoint was closed, it takes no more connections:
                // readiness must say so.
                lifecycle.quic_open.store(false, Ordering::Release);
            })
        };

        let (admin_stop, admin_stopped) = oneshot::channel::<()>();
        let router = admin::router(AdminState {
            lifecycle: lifecycle.clone(),
            kv: raw_kv.clone(),
            metrics: metrics.clone(),
            probe_timeout: config.probe_timeout,
            backup,
        });
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            router,
            config.admin_limits,
            admin_stopped,
        ));

        // Maintenance leases name the gateway run as its other leases do.
        let (maintenance_id, lease_address) = match &peers {
            Some(peers) => (peers.id(), peers.advertised().to_string()),
            None => {
                let mut id = [0u8; 16];
                rand::fill(&mut id);
                (id, quic_addr.to_string())
            }
        };
        let maintenance = Arc::new(Maintenance::new(
            store.clone(),
            region,
            maintenance_id,
            lease_address,
            peers.as_ref().and_then(|p| p.ownership().cloned()),
            config.maintenance_interval,
            config.maintenance_lease,
            metrics.clone(),
        ));
        maintenance.set_blob_store(blob_store);
        let background_task = {
            let maintain = maintenance.clone().run();
            let resume = resume_outboxes(api.clone(), region);
            tokio::spawn(async move {
                tokio::join!(maintain, resume);
            })
        };

        tracing::info!(
            quic = %quic_addr,
            admin = %admin_addr,
            storage = raw_kv.backend(),
            region = %region,
            fingerprint = %identity.fingerprint(),
            "gateway started"
        );
        Ok(Gateway {
            quic_addr,
            admin_addr,
            endpoint: endpoint.clone(),
            identity,
            cert_path: config.tls.cert.clone(),
            store,
            metrics,
            api,
            maintenance,
            lifecycle: lifecycle.clone(),
            owned_kv: owned.then_some(raw_kv),
            drain_grace: config.drain_grace,
            drain_timeout: config.drain_timeout,
            tasks: Tasks {
                endpoint,
                lifecycle,
                accept: Some(accept_task),
                admin: Some(admin_task),
                admin_stop: Some(admin_stop),
                background: Some(background_task),
                peers,
                push: push_tasks,
            },
        })
    }

    /// The bound QUIC (UDP) address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The bound admin (HTTP) address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The leaf certificate the gateway presents, in DER (what clients pin).
    pub fn certificate_der(&self) -> &[u8] {
        self.identity.leaf()
    }

    /// The certificate chain the gateway presents.
    pub fn certificate_chain(&self) -> &[rustls::pki_types::CertificateDer<'static>] {
        &self.identity.chain
    }

    /// The certificate's PEM file.
    pub fn certificate_path(&self) -> &Path {
        &self.cert_path
    }

    /// SHA-256 fingerprint of the certificate (`AB:CD:...`).
    pub fn certificate_fingerprint(&self) -> String {
        self.identity.fingerprint()
    }

    /// Whether this start generated the certificate.
    pub fn certificate_generated(&self) -> bool {
        self.identity.generated
    }

    /// A quinn client configuration trusting exactly this gateway's certificate,
    /// with ALPN `rossby/1` (tests and tools).
    pub fn client_config(&self) -> Result<quinn::ClientConfig> {
        tls::client_config(&self.identity.chain)
    }

    /// The domain store the gateway serves from (its KV is instrumented).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The API layer.
    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }

    /// The maintenance of this gateway's region.
    pub fn maintenance(&self) -> &Arc<Maintenance> {
        &self.maintenance
    }

    /// The gateway-to-gateway machinery, when peer notifications are on.
    pub fn peers(&self) -> Option<&Arc<Peers>> {
        self.tasks.peers.as_ref()
    }

    /// The bound address of the peer (gateway-to-gateway) endpoint, when on.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peers().map(|p| p.local_addr())
    }

    /// Requests currently being handled.
    pub fn requests_in_flight(&self) -> usize {
        self.lifecycle.requests.count()
    }

    /// Marks the gateway as draining: `/readyz` fails from now on. The first step
    /// of [`Gateway::shutdown`], exposed for callers that sequence it themselves.
    pub fn begin_drain(&self) {
        self.lifecycle.draining.store(true, Ordering::Release);
    }

    /// Stops the gateway gracefully:
    /// 1. readiness fails (`/readyz` answers 503 `draining`), so load balancers
    ///    stop sending new clients;
    /// 2. after `drain_grace`, new connections are refused and new requests on
    ///    existing connections are answered `STATUS_DRAINING`;
    /// 3. requests in flight get up to `drain_timeout` to finish;
    /// 4. every connection is closed with application code
    ///    [`crate::server::CLOSE_DRAINING`] and the endpoint waits
    ///    for the closes to be delivered;
    /// 5. the admin listener stops and the store is released (an embedded store
    ///    is closed, so it can be reopened at once).
    ///
    /// Box ownership and the maintenance leases are handed to the region's other
    /// gateways at the start of the drain.
    pub async fn shutdown(self) {
        let Gateway {
            endpoint,
            store,
            api,
            maintenance,
            lifecycle,
            owned_kv,
            drain_grace,
            drain_timeout,
            mut tasks,
            ..
        } = self;
        lifecycle.draining.store(true, Ordering::Release);
        tracing::info!(grace = ?drain_grace, "draining: readiness now fails");
        // Hand this gateway's boxes to the others of its region first: writes
        // forwarded here meanwhile are still executed until the endpoint closes.
        if let Some(ownership) = tasks.peers.as_ref().and_then(|p| p.ownership()) {
            ownership.release().await;
        }
        // Background work stops here, and its leases go to the other gateways
        // (off the drain's path: a slow store must not delay the steps below).
        if let Some(task) = tasks.background.take() {
            task.abort();
            let _ = task.await;
        }
        let released = tokio::spawn(async move {
            if tokio::time::timeout(CLOSE_WAIT, maintenance.release())
                .await
                .is_err()
            {
                tracing::debug!("releasing the maintenance leases timed out; they lapse");
            }
        });
        tokio::time::sleep(drain_grace).await;

        lifecycle.refuse();
        let in_flight = lifecycle.requests.count();
        if in_flight > 0 {
            tracing::info!(in_flight, timeout = ?drain_timeout, "waiting for requests in flight");
        }
        if !lifecycle.requests.wait_idle(drain_timeout).await {
            tracing::warn!(
                abandoned = lifecycle.requests.count(),
                "drain timeout: closing connections with requests still in flight"
            );
        }

        lifecycle.quic_open.store(false, Ordering::Release);
        endpoint.close(CLOSE_DRAINING.into(), b"gateway shutting down");
        if tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::debug!("some connections did not acknowledge the close");
        }
        if let Some(task) = tasks.accept.take() {
            let _ = task.await;
        }
        // Connection tasks end once their connection is closed; request tasks
        // end with their streams.
        let _ = lifecycle.connections.wait_idle(CLOSE_WAIT).await;
        let _ = lifecycle.requests.wait_idle(CLOSE_WAIT).await;

        // Subscriptions have ended with their connections; other gateways stop
        // notifying this one once its leases are released.
        if let Some(peers) = tasks.peers.take() {
            peers.shutdown().await;
        }
        if let Some(stop) = tasks.admin_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = tasks.admin.take()
            && tokio::time::timeout(CLOSE_WAIT, task).await.is_err()
        {
            tracing::debug!("admin listener did not stop in time");
        }
        let _ = released.await;
        drop(tasks);
        drop(api);
        drop(store);
        if let Some(kv) = owned_kv {
            release_store(kv).await;
        }
        tracing::info!("gateway stopped");
    }
}

/// Where the gateway sits, for box ownership and the peer link's simulated
/// round trips. Without a topology there is no ownership: every gateway writes
/// every box (a single gateway, or several without a shared picture of regions).
fn peer_geo(config: &Config, wan: Option<&LatencyModel>) -> PeerGeo {
    let topology = config.api.topology.as_ref();
    PeerGeo {
        region: config.api.region,
        regions: topology.map_or_else(Vec::new, |t| t.regions().iter().map(|r| r.code).collect()),
        // The simulation is on only with a topology: the model's is this one.
        wan: wan.and(topology).map(|topology| WanDelay {
            topology: topology.clone(),
            region: config.api.region,
        }),
    }
}

/// The store as the API sees it: `kv` itself, or with `--wan-sim` `kv` delayed by
/// the round trips the topology's TiKV deployment would pay from this region.
/// Also returns the latency model when the simulation is on.
fn simulated_wan(config: &Config, kv: Kv) -> Result<(Kv, Option<LatencyModel>)> {
    if !config.wan_sim {
        return Ok((kv, None));
    }
    let Some(topology) = config.api.topology.as_deref() else {
        return Err(Error::Config("--wan-sim needs --topology".into()));
    };
    let model = LatencyModel::new(topology.clone(), config.api.region)
        .map_err(|e| Error::Config(format!("--wan-sim: {e}")))?;
    tracing::warn!(
        region = %config.api.region,
        timestamp_rtt = ?model.timestamp(),
        "WAN SIMULATION: storage transactions are delayed by modelled round trips; not for real traffic"
    );
    Ok((WanSimulation::wrap(kv, model.clone()), Some(model)))
}

/// The retry policy of the API's transactions: the configured one when any
/// `--retry-*` option was given (it wins over the WAN scaling: whoever sets it
/// tunes it for this deployment), otherwise the default, stretched under the WAN
/// simulation.
fn retry_policy(configured: Option<&RetryPolicy>, wan: Option<&LatencyModel>) -> RetryPolicy {
    match (configured, wan) {
        (Some(policy), _) => policy.clone(),
        (None, Some(model)) => wan_retry_policy(model, RetryPolicy::default()),
        (None, None) => RetryPolicy::default(),
    }
}

/// The retry policy under the WAN simulation. A simulated transaction lasts as
/// long as its round trips (up to a second between distant regions), so the
/// default budget (a few seconds, back-off in milliseconds) would give up on write
/// conflicts between regions after a handful of attempts that all collide again.
/// The deadline and the largest back-off scale with the slowest modelled send, so
/// retries spread out as they would against a real multi-region cluster.
fn wan_retry_policy(model: &LatencyModel, default: RetryPolicy) -> RetryPolicy {
    let slowest = model
        .topology()
        .regions()
        .iter()
        .map(|r| model.send(r.code))
        .max()
        .unwrap_or_default();
    RetryPolicy {
        deadline: default.deadline.max(slowest * default.max_attempts),
        max_backoff: default.max_backoff.max(slowest),
        ..default
    }
}

/// Waits for other holders of an opened store (tasks still finishing) to let go,
/// then closes it off the async threads (fjall's close joins its commit pipeline threads),
/// so it can be reopened as soon as `shutdown` returns.
pub(crate) async fn release_store(kv: Kv) {
    let waited = tokio::time::timeout(STORE_RELEASE_WAIT, async {
        while Arc::strong_count(&kv) > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if waited.is_err() {
        tracing::warn!(
            holders = Arc::strong_count(&kv) - 1,
            "the store is still in use; it closes when the last user finishes"
        );
    }
    let _ = tokio::task::spawn_blocking(move || drop(kv)).await;
}

/// How often interrupted group fan-outs of this region are resumed.
const OUTBOX_RESUME_INTERVAL: Duration = Duration::from_secs(10);

/// Delivers the fan-outs (group Commits and leaves) that a crashed or failed
/// request left in this region's outbox, every [`OUTBOX_RESUME_INTERVAL`].
/// Delivery is idempotent, so gateways of one region resuming the same entry at
/// once is harmless.
async fn resume_outboxes(api: Arc<Api>, region: RegionId) {
    let mut ticker = tokio::time::interval(OUTBOX_RESUME_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match api.resume_outboxes(region).await {
            Ok(0) => {}
            Ok(delivered) => tracing::info!(delivered, "resumed interrupted group fan-outs"),
            Err(err) => tracing::warn!(error = %err.message, "resuming group fan-outs failed"),
        }
    }
}

/// Binds the QUIC endpoint on a UDP socket with the configured receive buffer.
fn quic_endpoint(
    server_config: quinn::ServerConfig,
    listen: SocketAddr,
    quic: &crate::server::config::QuicConfig,
) -> Result<quinn::Endpoint> {
    let io_error = |context: String| move |source| Error::Io { context, source };
    let socket = std::net::UdpSocket::bind(listen)
        .map_err(io_error(format!("cannot listen on {listen} (QUIC)")))?;
    let wanted = quic.udp_receive_buffer as usize;
    let sock = socket2::SockRef::from(&socket);
    sock.set_recv_buffer_size(wanted).map_err(io_error(format!(
        "cannot size the receive buffer of {listen}"
    )))?;
    // Linux reports twice what it grants (the doubling covers its bookkeeping).
    let granted = sock.recv_buffer_size().unwrap_or(0) / 2;
    if granted < wanted {
        tracing::warn!(
            wanted,
            granted,
            "the kernel capped the QUIC socket's receive buffer (raise net.core.rmem_max)"
        );
    }
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        runtime,
    )
    .map_err(io_error(format!("cannot listen on {listen} (QUIC)")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::STOP_TOO_LARGE;
    use async_trait::async_trait;
    use rossby_protocol::framing;
    use rossby_protocol::pb;
    use rossby_protocol::status::status_of;
    use rossby_storage::kv::memory::MemoryStore;
    use rossby_storage::{KvStore, Transaction};
    use std::sync::atomic::AtomicU8;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_wan_simulation_stretches_the_retry_budget_to_its_round_trips() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/examples/three-regions.toml"
        ))
        .unwrap();
        let topology = rossby_replication::Topology::parse(&text).unwrap();
        let model = LatencyModel::new(topology, RegionId(3)).unwrap();
        let slowest = model.send(RegionId(1)).max(model.send(RegionId(2)));
        assert!(slowest >= Duration::from_millis(215), "{slowest:?}");
        let default = RetryPolicy::default();
        let policy = wan_retry_policy(&model, default.clone());
        assert_eq!(policy.max_attempts, default.max_attempts);
        assert!(policy.deadline >= slowest * default.max_attempts);
        assert!(policy.max_backoff >= slowest);
        assert!(policy.deadline > default.deadline);

        // Without options the gateway uses exactly these; configured ones win.
        assert_eq!(retry_policy(None, None), default);
        assert_eq!(retry_policy(None, Some(&model)), policy);
        let configured = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert_eq!(retry_policy(Some(&configured), Some(&model)), configured);
        assert_eq!(retry_policy(Some(&configured), None), configured);
    }

    /// A store whose health tests switch: healthy, failing with `Unavailable`, or
    /// hanging forever on `begin`.
    struct SwitchableKv {
        inner: MemoryStore,
        mode: Arc<AtomicU8>,
    }

    const HEALTHY: u8 = 0;
    const FAILING: u8 = 1;
    const HANGING: u8 = 2;

    #[async_trait]
    impl KvStore for SwitchableKv {
        fn backend(&self) -> &'static str {
            "switchable"
        }

        async fn begin(&self) -> rossby_storage::kv::Result<Box<dyn Transaction>> {
            match self.mode.load(Ordering::Acquire) {
                FAILING => Err(rossby_storage::kv::Error::Unavailable(
                    "disk on fire".into(),
                )),
                HANGING => std::future::pending().await,
                _ => self.inner.begin().await,
            }
        }
    }

    /// GET over a fresh HTTP/1.1 connection: (status code, body).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, body.to_string())
    }

    fn test_config(dir: &Path) -> Config {
        let mut config = Config::for_tests(dir).in_memory();
        config.probe_timeout = Duration::from_millis(200);
        config
    }

    async fn connect(gateway: &Gateway) -> (quinn::Endpoint, quinn::Connection) {
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        endpoint.set_default_client_config(gateway.client_config().unwrap());
        let connection = endpoint
            .connect(gateway.quic_addr(), "localhost")
            .unwrap()
            .await
            .unwrap();
        (endpoint, connection)
    }

    /// Sends raw bytes on a new request stream and reads the response frame.
    async fn exchange(connection: &quinn::Connection, bytes: &[u8]) -> pb::Response {
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        // The gateway may stop the stream (oversize frame) before the FIN.
        let _ = send.finish();
        let raw = recv.read_to_end(1 << 20).await.unwrap();
        framing::decode_one(&raw, 1 << 20, "response").unwrap()
    }

    fn ping() -> pb::Request {
        pb::Request {
            version: rossby_protocol::PROTOCOL_VERSION,
            method: pb::Method::Ping as i32,
            ..pb::Request::default()
        }
    }

    #[tokio::test]
    async fn admin_endpoints_report_liveness_readiness_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.drain_grace = Duration::from_secs(2);
        let gateway = Gateway::start(config).await.unwrap();
        let admin = gateway.admin_addr();
        assert_eq!(get(admin, "/livez").await, (200, "ok\n".into()));
        assert_eq!(get(admin, "/readyz").await, (200, "ready\n".into()));
        let (code, metrics) = get(admin, "/metrics").await;
        assert_eq!(code, 200);
        assert!(metrics.contains("rossby_build_info{version="), "{metrics}");
        assert!(metrics.contains("rossby_open_connections 0"), "{metrics}");
        assert_eq!(get(admin, "/nope").await.0, 404);

        let shutdown = tokio::spawn(gateway.shutdown());
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Readiness fails first; the process is still alive.
        assert_eq!(get(admin, "/readyz").await, (503, "draining\n".into()));
        assert_eq!(get(admin, "/livez").await.0, 200);
        shutdown.await.unwrap();
        assert!(tokio::net::TcpStream::connect(admin).await.is_err());
    }

    #[tokio::test]
    async fn readiness_follows_the_storage_probe() {
        let dir = tempfile::tempdir().unwrap();
        let mode = Arc::new(AtomicU8::new(HEALTHY));
        let mut config = test_config(dir.path());
        config.storage = StorageConfig::Shared(Arc::new(SwitchableKv {
            inner: MemoryStore::new(),
            mode: mode.clone(),
        }));
        let gateway = Gateway::start(config).await.unwrap();
        let admin = gateway.admin_addr();
        assert_eq!(get(admin, "/readyz").await.0, 200);

        mode.store(FAILING, Ordering::Release);
        let (code, body) = get(admin, "/readyz").await;
        assert_eq!(code, 503);
        assert_eq!(body, "storage: storage unavailable: disk on fire\n");

        mode.store(HANGING, Ordering::Release);
        assert_eq!(
            get(admin, "/readyz").await,
            (503, "storage: probe timed out\n".into())
        );

        mode.store(HEALTHY, Ordering::Release);
        assert_eq!(get(admin, "/readyz").await, (200, "ready\n".into()));
        gateway.shutdown().await;
    }

    #[tokio::test]
    async fn readiness_fails_once_the_quic_endpoint_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Gateway::start(test_config(dir.path())).await.unwrap();
        let admin = gateway.admin_addr();
        assert_eq!(get(admin, "/readyz").await, (200, "ready\n".into()));

        // Closed under the gateway, without a drain: not draining, yet not ready.
        gateway
            .endpoint
            .close(0u32.into(), b"closed under the gateway");
        let mut answer = get(admin, "/readyz").await;
        for _ in 0..200 {
            if answer.0 != 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            answer = get(admin, "/readyz").await;
        }
        assert_eq!(answer, (503, "quic endpoint closed\n".into()));
        assert_eq!(get(admin, "/livez").await, (200, "ok\n".into()));
        gateway.shutdown().await;
    }

    #[tokio::test]
    async fn quic_round_trip_and_bad_frames() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.api.max_frame_bytes = 4096;
        let gateway = Gateway::start(config).await.unwrap();
        let (_client, connection) = connect(&gateway).await;
        assert_eq!(
            connection
                .handshake_data()
                .and_then(|d| { d.downcast::<quinn::crypto::rustls::HandshakeData>().ok() })
                .and_then(|d| d.protocol),
            Some(rossby_protocol::ALPN.to_vec())
        );

        let response = exchange(&connection, &framing::encode(&ping())).await;
        assert_eq!(status_of(&response), pb::Status::Ok, "{response:?}");
        assert!(response.server_time_ms > 0);

        // A frame spanning several packets, just under the limit, is read whole.
        let big = pb::Request {
            body: vec![0u8; 3000],
            ..ping()
        };
        let frame = framing::encode(&big);
        assert!(frame.len() > 3000 && frame.len() - 4 <= 4096);
        let response = exchange(&connection, &frame).await;
        assert_ne!(status_of(&response), pb::Status::TooLarge, "{response:?}");

        // Declared length above the limit: answered without reading the body.
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&5000u32.to_be_bytes()).await.unwrap();
        send.write_all(&[0u8; 100]).await.unwrap();
        let raw = recv.read_to_end(1 << 20).await.unwrap();
        let response: pb::Response = framing::decode_one(&raw, 1 << 20, "response").unwrap();
        assert_eq!(status_of(&response), pb::Status::TooLarge, "{response:?}");
        // ... and the client is asked to stop sending the body.
        assert_eq!(send.stopped().await.unwrap(), Some(STOP_TOO_LARGE.into()));

        // Garbage protobuf.
        let response = exchange(&connection, &[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
        assert_eq!(status_of(&response), pb::Status::BadRequest, "{response:?}");

        // A stream that ends inside the frame.
        let response = exchange(&connection, &[0, 0, 0, 9, 8, 1]).await;
        assert_eq!(status_of(&response), pb::Status::BadRequest, "{response:?}");
        let response = exchange(&connection, &[0, 0]).await;
        assert_eq!(status_of(&response), pb::Status::BadRequest, "{response:?}");

        // Two frames on one stream.
        let mut two = framing::encode(&ping());
        two.extend_from_slice(&framing::encode(&ping()));
        let response = exchange(&connection, &two).await;
        assert_eq!(status_of(&response), pb::Status::BadRequest, "{response:?}");

        // Unknown method: the API answers, and the metric label stays bounded.
        let unknown = pb::Request {
            method: 999,
            ..ping()
        };
        let response = exchange(&connection, &framing::encode(&unknown)).await;
        assert_eq!(
            status_of(&response),
            pb::Status::UnknownMethod,
            "{response:?}"
        );

        // The connection still works after all that.
        let response = exchange(&connection, &framing::encode(&ping())).await;
        assert_eq!(status_of(&response), pb::Status::Ok);

        let metrics = gateway.metrics();
        let count = |rpc: &str, status: &str| {
            metrics
                .requests_total
                .with_label_values(&[rpc, status])
                .get()
        };
        assert_eq!(count("ping", "ok"), 3);
        assert_eq!(count("unknown", "too_large"), 1);
        assert_eq!(count("unknown", "bad_request"), 4);
        assert_eq!(count("unknown", "unknown_method"), 1);
        assert_eq!(metrics.open_connections.get(), 1);
        let (_, text) = get(gateway.admin_addr(), "/metrics").await;
        assert!(
            text.contains("rossby_requests_total{rpc=\"ping\",status=\"ok\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("rossby_request_duration_seconds_count{rpc=\"ping\",status=\"ok\"} 3"),
            "{text}"
        );

        connection.close(0u32.into(), b"bye");
        gateway.shutdown().await;
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.quic.max_connections = 1;
        let gateway = Gateway::start(config).await.unwrap();
        let (_a, first) = connect(&gateway).await;
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        endpoint.set_default_client_config(gateway.client_config().unwrap());
        let second = endpoint
            .connect(gateway.quic_addr(), "localhost")
            .unwrap()
            .await;
        assert!(
            matches!(second, Err(quinn::ConnectionError::ConnectionClosed(_))),
            "{second:?}"
        );
        let response = exchange(&first, &framing::encode(&ping())).await;
        assert_eq!(status_of(&response), pb::Status::Ok);
        gateway.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_finishes_requests_in_flight_answers_draining_and_refuses_new_connections() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Gateway::start(test_config(dir.path())).await.unwrap();
        let quic_addr = gateway.quic_addr();
        let client_config = gateway.client_config().unwrap();
        let (_client, connection) = connect(&gateway).await;

        // A request whose frame is half sent when the drain begins.
        let frame = framing::encode(&ping());
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&frame[..2]).await.unwrap();
        for _ in 0..500 {
            if gateway.requests_in_flight() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(gateway.requests_in_flight(), 1);

        let shutdown = tokio::spawn(gateway.shutdown());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !shutdown.is_finished(),
            "shutdown must wait for the request"
        );

        // New connections are refused while draining.
        let mut other = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        other.set_default_client_config(client_config);
        let refused = other.connect(quic_addr, "localhost").unwrap().await;
        assert!(refused.is_err(), "{refused:?}");

        // The request in flight completes, and is told the gateway is draining.
        send.write_all(&frame[2..]).await.unwrap();
        send.finish().unwrap();
        let raw = recv.read_to_end(1 << 20).await.unwrap();
        let response: pb::Response = framing::decode_one(&raw, 1 << 20, "response").unwrap();
        assert_eq!(status_of(&response), pb::Status::Draining);

        tokio::time::timeout(Duration::from_secs(10), shutdown)
            .await
            .unwrap()
            .unwrap();
        match connection.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, CLOSE_DRAINING.into());
            }
            other => panic!("unexpected close {other:?}"),
        }
    }

    #[tokio::test]
    async fn two_gateways_share_one_store_and_one_set_of_secrets() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let kv: Kv = Arc::new(MemoryStore::new());
        let mut a_config = Config::for_tests(a_dir.path());
        a_config.storage = StorageConfig::Shared(kv.clone());
        let b_config = Config::for_tests(b_dir.path()).same_deployment_as(&a_config);
        let a = Gateway::start(a_config).await.unwrap();
        let b = Gateway::start(b_config).await.unwrap();
        assert_ne!(a.quic_addr(), b.quic_addr());
        assert!(!b_dir.path().join("secret").exists());

        let mut txn = a.store().kv.begin().await.unwrap();
        txn.put(b"\x00test".to_vec(), b"shared".to_vec())
            .await
            .unwrap();
        txn.commit().await.unwrap();
        let mut txn = b.store().kv.begin().await.unwrap();
        assert_eq!(
            txn.get(b"\x00test").await.unwrap(),
            Some(b"shared".to_vec())
        );
        txn.rollback().await.unwrap();
        for gateway in [&a, &b] {
            let (_client, connection) = connect(gateway).await;
            let response = exchange(&connection, &framing::encode(&ping())).await;
            assert_eq!(status_of(&response), pb::Status::Ok);
        }
        a.shutdown().await;
        // The store is shared, so stopping one gateway leaves it to the other.
        assert_eq!(get(b.admin_addr(), "/readyz").await.0, 200);
        b.shutdown().await;
    }

    #[tokio::test]
    async fn a_fjall_gateway_restarts_on_the_same_data_dir_with_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::for_tests(dir.path());
        let first = Gateway::start(config.clone()).await.unwrap();
        assert!(first.certificate_generated());
        let fingerprint = first.certificate_fingerprint();
        assert_eq!(first.certificate_path(), dir.path().join("cert.pem"));
        assert_eq!(tls::fingerprint(first.certificate_der()), fingerprint);
        let secret = std::fs::read(dir.path().join("secret")).unwrap();
        first.shutdown().await;

        let second = Gateway::start(config).await.unwrap();
        assert!(!second.certificate_generated());
        assert_eq!(second.certificate_fingerprint(), fingerprint);
        assert_eq!(std::fs::read(dir.path().join("secret")).unwrap(), secret);
        let (_client, connection) = connect(&second).await;
        let response = exchange(&connection, &framing::encode(&ping())).await;
        assert_eq!(status_of(&response), pb::Status::Ok);
        assert_eq!(get(second.admin_addr(), "/readyz").await.0, 200);
        second.shutdown().await;
    }
}
