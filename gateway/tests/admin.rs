//! The admin listener (`/livez`, `/readyz`, `/metrics`) and the graceful drain of
//! a gateway on loopback, and the health checks SREs rely on: `/readyz` and the
//! `rossby health` CLI (run as a built binary) as storage fails, hangs and
//! recovers, against a draining gateway, a closed port and a wrong certificate.
//!
//! To hold a request in flight deterministically while the gateway drains, the
//! gateway runs on a fjall store wrapped in a gate that can hold every commit
//! until the test opens it (passed in with `StorageConfig::Shared`).

mod support;

use async_trait::async_trait;
use prost::Message;
use rossby_client::Body;
use rossby_gateway::Config;
use rossby_gateway::config::StorageConfig;
use rossby_keyspace::DeviceId;
use rossby_protocol::crypto::DeviceKeys;
use rossby_protocol::framing;
use rossby_protocol::pb::{self, Method, Status};
use rossby_protocol::status::status_of;
use rossby_storage::kv::fjall::FjallConfig;
use rossby_storage::kv::memory::MemoryStore;
use rossby_storage::kv::{Error as StorageError, Result};
use rossby_storage::{BackendConfig, KeyRange, Kv, KvPair, KvStore, ScanOrder, Transaction, Value};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;
use support::{
    RawConn, bounded, client, client_at, codes_file, http_get, register, register_request,
    rossby_cli, start_with,
};
use tokio::sync::Notify;

/// Holds commits while closed.
#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    waiting: AtomicUsize,
    opened: Notify,
}

impl Gate {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn open(&self) {
        self.closed.store(false, Ordering::Release);
        self.opened.notify_waiters();
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    async fn pass(&self) {
        if !self.closed.load(Ordering::Acquire) {
            return;
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        loop {
            let opened = self.opened.notified();
            let mut opened = std::pin::pin!(opened);
            opened.as_mut().enable();
            if !self.closed.load(Ordering::Acquire) {
                break;
            }
            opened.await;
        }
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A store whose commits wait at a [`Gate`].
struct GatedKv {
    inner: Kv,
    gate: Arc<Gate>,
}

struct GatedTxn {
    inner: Box<dyn Transaction>,
    gate: Arc<Gate>,
}

#[async_trait]
impl KvStore for GatedKv {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(GatedTxn {
            inner: self.inner.begin().await?,
            gate: self.gate.clone(),
        }))
    }
}

#[async_trait]
impl Transaction for GatedTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        self.inner.get(key).await
    }

    async fn batch_get(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Value>>> {
        self.inner.batch_get(keys).await
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> Result<Vec<KvPair>> {
        self.inner.scan(range, limit, order).await
    }

    async fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Value>> {
        self.inner.get_for_update(key).await
    }

    async fn put(&mut self, key: Vec<u8>, value: Value) -> Result<()> {
        self.inner.put(key, value).await
    }

    async fn delete(&mut self, key: Vec<u8>) -> Result<()> {
        self.inner.delete(key).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.gate.pass().await;
        self.inner.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.inner.rollback().await
    }
}

/// GETs `path` until `accept` holds for the answer (bounded).
async fn poll_admin(
    addr: std::net::SocketAddr,
    path: &str,
    accept: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    bounded(&format!("GET {path}"), async {
        loop {
            if let Ok((status, body)) = http_get(addr, path).await
                && accept(status, &body)
            {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_graceful_drain() {
    let dir = tempfile::tempdir().unwrap();
    let fjall = rossby_storage::kv::open(&BackendConfig::Fjall(FjallConfig::new(
        dir.path().join("store"),
    )))
    .await
    .unwrap();
    let gate = Arc::new(Gate::default());
    let kv: Kv = Arc::new(GatedKv {
        inner: fjall.clone(),
        gate: gate.clone(),
    });
    let gw_dir = dir.path().join("gw");
    let mut config = Config::for_tests(&gw_dir);
    config.storage = StorageConfig::Shared(kv);
    let gw = start_with(config.clone()).await;
    let admin = gw.admin_addr();
    let codes = codes_file(&gw_dir);

    // Health checks.
    assert_eq!(
        http_get(admin, "/livez").await.unwrap(),
        (200, "ok\n".into())
    );
    assert_eq!(
        http_get(admin, "/readyz").await.unwrap(),
        (200, "ready\n".into())
    );
    assert_eq!(http_get(admin, "/nowhere").await.unwrap().0, 404);

    // Metrics count requests by RPC and status.
    let alice = client(&gw, dir.path().join("alice.state")).await;
    let bob = client(&gw, dir.path().join("bob.state")).await;
    register(&alice, "alice@example.com", &codes).await;
    register(&bob, "bob@example.com", &codes).await;
    alice.send_text("bob@example.com", "warm-up").await.unwrap();
    let (status, metrics) = http_get(admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let requests: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("rossby_requests_total{"))
        .collect();
    assert!(
        requests
            .iter()
            .any(|l| l.contains("rpc=\"send\"") && l.contains("status=\"ok\"")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|l| l.contains("rpc=\"register\"") && l.contains("status=\"ok\"")),
        "{requests:?}"
    );
    assert!(metrics.contains("rossby_open_connections"));
    assert!(metrics.contains("rossby_request_duration_seconds"));

    // Graceful shutdown: a request in flight (its commit held at the gate) when
    // the drain begins finishes with OK; new requests are told DRAINING.
    let raw = RawConn::connect(&gw).await;
    gate.close();
    let in_flight = tokio::spawn(async move {
        let report = alice.send_text("bob@example.com", "in flight").await;
        (alice, report)
    });
    bounded("the send to reach storage", async {
        while gate.waiting() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(gw.requests_in_flight() >= 1);
    let shutdown = tokio::spawn(gw.shutdown());
    let (status, body) = poll_admin(admin, "/readyz", |s, _| s == 503).await;
    assert_eq!((status, body.as_str()), (503, "draining\n"));
    let refused = bounded("a new request to be refused", async {
        loop {
            let response = raw.call_anonymous(Method::Ping, &pb::PingRequest {}).await;
            if status_of(&response) != Status::Ok {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(status_of(&refused), Status::Draining, "{}", refused.message);
    assert!(!in_flight.is_finished(), "the held send finished early");
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the send"
    );

    gate.open();
    let (alice, report) = bounded("the in-flight send", in_flight).await.unwrap();
    let report = report.expect("the in-flight send succeeds during the drain");
    bounded("shutdown", shutdown).await.unwrap();
    drop(raw);
    drop(alice);

    // The send was stored: a new gateway on the same store delivers it once.
    let gw2_dir = dir.path().join("gw2");
    let gw2 = start_with(Config::for_tests(&gw2_dir).same_deployment_as(&config)).await;
    drop(bob);
    let bob = client_at(
        dir.path().join("bob.state"),
        gw2.quic_addr(),
        gw2.certificate_der(),
    )
    .await;
    let batch = bounded("fetch", bob.fetch(Duration::ZERO)).await.unwrap();
    let texts: Vec<_> = batch.messages.iter().map(|m| m.body.clone()).collect();
    assert_eq!(
        texts,
        vec![Body::Text("warm-up".into()), Body::Text("in flight".into())]
    );
    assert_eq!(batch.messages[1].seq, report.seq);
    gw2.shutdown().await;
    drop(config);
    tokio::task::spawn_blocking(move || drop(fjall))
        .await
        .unwrap();
}

// ----- health checks: /readyz and `rossby health` against storage failures -----

/// A store the health tests switch between healthy, failing (every `begin`
/// answers `Unavailable`) and hanging (`begin` never returns).
struct SwitchableKv {
    inner: Kv,
    mode: Arc<AtomicU8>,
    /// Transactions begun while hanging.
    hung: Arc<AtomicUsize>,
}

const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const HANGING: u8 = 2;

#[async_trait]
impl KvStore for SwitchableKv {
    fn backend(&self) -> &'static str {
        "switchable"
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        match self.mode.load(Ordering::Acquire) {
            FAILING => Err(StorageError::Unavailable("disk on fire".into())),
            HANGING => {
                self.hung.fetch_add(1, Ordering::AcqRel);
                std::future::pending().await
            }
            _ => self.inner.begin().await,
        }
    }
}

/// What one run of the CLI did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `rossby health --gateway <addr> <extra...>` in an empty directory, with no
/// ROSSBY_* settings from the environment.
async fn rossby_health(addr: std::net::SocketAddr, extra: &[&str]) -> Run {
    // Building may take a while the first time: not bounded by `WAIT`.
    let cli = tokio::task::spawn_blocking(rossby_cli).await.unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let mut command = Command::new(cli);
    command
        .current_dir(cwd.path())
        .args(["health", "--gateway", &addr.to_string()])
        .args(extra);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ROSSBY_") {
            command.env_remove(key);
        }
    }
    let output = bounded(
        "rossby health",
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .unwrap()
    .unwrap();
    drop(cwd);
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Asserts the run failed with exit status 1 and a single `rossby: ` line
/// containing `needle`.
fn assert_fails_with(run: &Run, needle: &str) {
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stdout, "", "{run:?}");
    let line = run.stderr.strip_suffix('\n').unwrap_or(&run.stderr);
    assert!(!line.contains('\n'), "one line expected: {run:?}");
    assert!(line.starts_with("rossby: "), "{run:?}");
    assert!(line.contains(needle), "expected {needle:?} in {run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_rossby_health_follow_storage_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let mode = Arc::new(AtomicU8::new(HEALTHY));
    let hung = Arc::new(AtomicUsize::new(0));
    let mut config = Config::for_tests(dir.path());
    config.storage = StorageConfig::Shared(Arc::new(SwitchableKv {
        inner: Arc::new(MemoryStore::new()),
        mode: mode.clone(),
        hung: hung.clone(),
    }));
    config.probe_timeout = Duration::from_millis(300);
    // Only the requests of this test touch storage while it hangs.
    config.maintenance_interval = Duration::from_secs(3600);
    config.maintenance_lease = Duration::from_secs(7200);
    let gw = start_with(config).await;
    let admin = gw.admin_addr();
    let cert = dir.path().join("cert.pem");
    assert_eq!(gw.certificate_path(), cert);
    let pinned = ["--ca-cert", cert.to_str().unwrap()];

    // Healthy: a full QUIC round trip with a storage read.
    assert_eq!(
        http_get(admin, "/readyz").await.unwrap(),
        (200, "ready\n".into())
    );
    let run = rossby_health(gw.quic_addr(), &pinned).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.starts_with("ok region 1 storage latency ") && run.stdout.contains(" rtt "),
        "{run:?}"
    );
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");

    // Storage fails: readiness says why, `rossby health` fails with a reason;
    // liveness is unaffected.
    mode.store(FAILING, Ordering::Release);
    assert_eq!(
        http_get(admin, "/readyz").await.unwrap(),
        (503, "storage: storage unavailable: disk on fire\n".into())
    );
    assert_eq!(
        http_get(admin, "/livez").await.unwrap(),
        (200, "ok\n".into())
    );
    let run = rossby_health(gw.quic_addr(), &pinned).await;
    assert_fails_with(&run, "storage not ok");
    assert!(run.stderr.contains("(region 1)"), "{run:?}");

    // Storage hangs: the probe's deadline turns readiness off; the Health RPC
    // gives up after its own deadline, and a shorter --timeout stops the CLI first.
    mode.store(HANGING, Ordering::Release);
    assert_eq!(
        http_get(admin, "/readyz").await.unwrap(),
        (503, "storage: probe timed out\n".into())
    );
    let run = rossby_health(gw.quic_addr(), &pinned).await;
    assert_fails_with(&run, "storage not ok");
    let run = rossby_health(gw.quic_addr(), &[pinned[0], pinned[1], "--timeout", "1"]).await;
    assert_fails_with(
        &run,
        "health check timed out after 1 s waiting for the Health RPC's storage read",
    );

    // Storage recovers: so do both checks, at once.
    mode.store(HEALTHY, Ordering::Release);
    assert_eq!(
        http_get(admin, "/readyz").await.unwrap(),
        (200, "ready\n".into())
    );
    let run = rossby_health(gw.quic_addr(), &pinned).await;
    assert_eq!(run.code, Some(0), "{run:?}");

    // Draining: readiness fails at once, and a new `rossby health` is refused
    // while a request in flight (a Register whose storage transaction hangs)
    // holds the drain open, up to the drain timeout.
    mode.store(HANGING, Ordering::Release);
    let raw = RawConn::connect(&gw).await;
    let hung_before = hung.load(Ordering::Acquire);
    let register = register_request("hold@example.com", &DeviceKeys::generate(), DeviceId::new());
    let request = pb::Request {
        version: rossby_protocol::PROTOCOL_VERSION,
        method: Method::Register as i32,
        body: register.encode_to_vec(),
        authorization: String::new(),
    };
    let (mut send, _answer) = raw.conn.open_bi().await.unwrap();
    send.write_all(&framing::encode(&request)).await.unwrap();
    send.finish().unwrap();
    bounded("the Register to reach storage", async {
        while hung.load(Ordering::Acquire) == hung_before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let quic = gw.quic_addr();
    let shutdown = tokio::spawn(gw.shutdown());
    let (_, body) = poll_admin(admin, "/readyz", |status, _| status == 503).await;
    assert_eq!(body, "draining\n");
    let run = rossby_health(quic, &[pinned[0], pinned[1], "--timeout", "2"]).await;
    assert_fails_with(
        &run,
        &format!(
            "cannot reach the gateway at {quic}: aborted by peer: the server refused to accept a new connection"
        ),
    );
    bounded("shutdown", shutdown).await.unwrap();
    drop(raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rossby_health_fails_on_a_closed_port_and_on_an_unexpected_certificate() {
    // A port nobody listens on: no handshake completes within the timeout.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    tokio::task::spawn_blocking(rossby_cli).await.unwrap();
    let started = std::time::Instant::now();
    let run = rossby_health(closed, &["--timeout", "2"]).await;
    assert_fails_with(
        &run,
        &format!(
            "cannot reach the gateway at {closed}: health check timed out after 2 s waiting for the QUIC handshake and Ping"
        ),
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // A live gateway whose certificate is not the pinned one.
    let dir = tempfile::tempdir().unwrap();
    let gw = start_with(Config::for_tests(dir.path()).in_memory()).await;
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let other_pem = dir.path().join("other.pem");
    std::fs::write(&other_pem, other.cert.pem()).unwrap();
    let run = rossby_health(gw.quic_addr(), &["--ca-cert", other_pem.to_str().unwrap()]).await;
    assert_fails_with(&run, "TLS");
    // No pin at all: the self-signed certificate is not in the web PKI either.
    let run = rossby_health(gw.quic_addr(), &["--timeout", "5"]).await;
    assert_fails_with(&run, "TLS");
    gw.shutdown().await;
}

/// Sends `request` (a whole HTTP/1.1 request) to the admin listener and returns
/// the raw answer.
async fn raw_http(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded("admin request", async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).unwrap()
    })
    .await
}

#[tokio::test]
async fn health_endpoints_answer_head_and_refuse_other_methods() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_with(Config::for_tests(dir.path()).in_memory()).await;
    let admin = gw.admin_addr();
    let head = raw_http(
        admin,
        "HEAD /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    let post = raw_http(
        admin,
        "POST /livez HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_and_surplus_admin_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path()).in_memory();
    config.admin_limits = rossby_gateway::admin::AdminLimits {
        max_connections: 2,
        header_timeout: Duration::from_millis(300),
    };
    let gw = start_with(config).await;
    let admin = gw.admin_addr();

    // Two clients hold connections open without finishing their headers.
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
        stream.write_all(b"GET /livez HTTP/1.1\r\n").await.unwrap();
        idle.push(stream);
    }
    // A third connection is closed on accept while they hold the two places.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut third = tokio::net::TcpStream::connect(admin).await.unwrap();
    let _ = third
        .write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = bounded("surplus connection", third.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));

    // The header timeout closes the slow ones, without an answer or with 408.
    for mut stream in idle {
        let mut raw = Vec::new();
        let _ = bounded("slow connection", stream.read_to_end(&mut raw)).await;
        let raw = String::from_utf8_lossy(&raw);
        assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 408"), "{raw}");
    }
    // Their places are free again.
    let ok = raw_http(
        admin,
        "GET /livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    gw.shutdown().await;
}
