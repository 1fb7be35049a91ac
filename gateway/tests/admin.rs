//! The admin listener (`/livez`, `/readyz`, `/metrics`) and the graceful drain of
//! a gateway on loopback.
//!
//! To hold a request in flight deterministically while the gateway drains, the
//! gateway runs on a fjall store wrapped in a gate that can hold every commit
//! until the test opens it (passed in with `StorageConfig::Shared`).

mod support;

use async_trait::async_trait;
use rossby_client::Body;
use rossby_gateway::Config;
use rossby_gateway::config::StorageConfig;
use rossby_protocol::pb::{self, Method, Status};
use rossby_protocol::status::status_of;
use rossby_storage::kv::fjall::FjallConfig;
use rossby_storage::{
    BackendConfig, KeyRange, Kv, KvPair, KvStore, Result, ScanOrder, Transaction, Value,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::{RawConn, bounded, client, client_at, codes_file, http_get, register, start_with};
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
