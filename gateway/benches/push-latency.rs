//! Cross-gateway push latency: `cargo bench -p rossby-gateway --bench push-latency`.
//!
//! Two gateways run in this process on loopback, in regions 1 and 2, over one
//! durable fjall store (group commit) in a temporary directory, with peer
//! notifications on (mutual TLS under a generated CA) and the storage polling of
//! waiting fetches off. A device registered and subscribed on gateway 1 receives
//! messages that another user sends through gateway 2 with the client SDK. Each
//! sample is the time from the start of `send_text` (client-side sealing
//! included) to the arrival of the `MessagesAvailable` push for that message on
//! gateway 1: the commit on gateway 2, its lease read, the notification between
//! the gateways and the push to the device.
//!
//! Sends are paced (one at a time, `ROSSBY_PUSH_LATENCY_INTERVAL_MS` apart), so
//! the numbers are the latency of an idle path, not of a queue.
//!
//! Environment: `ROSSBY_PUSH_LATENCY_N` samples (default 500, after 10 warm-up
//! sends), `ROSSBY_PUSH_LATENCY_INTERVAL_MS` (default 20),
//! `ROSSBY_PUSH_LATENCY_TIMEOUT_SECS` bounds the whole run (default 300).
//!
//! The last line of stdout is
//! `push-latency p50_ms=<A> p99_ms=<B> max_ms=<C> n=<N>`.

use hdrhistogram::Histogram;
use rossby_client::{Client, ClientConfig, RetryPolicy, Subscription};
use rossby_gateway::config::StorageConfig;
use rossby_gateway::peer::PeerConfig;
use rossby_gateway::peer::tls::DevCa;
use rossby_gateway::{Config, Gateway};
use rossby_keyspace::{Identifier, RegionId};
use rossby_protocol::pb;
use rossby_storage::BackendConfig;
use rossby_storage::kv::fjall::FjallConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WARMUP: usize = 10;
const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, got {v:?}")),
        Err(_) => default,
    }
}

fn last_code(codes: &Path, identifier: &str) -> String {
    let id = Identifier::parse(identifier).expect("valid identifier");
    let prefix = format!("{} ", id.as_str());
    std::fs::read_to_string(codes)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix).map(str::to_string))
        .next_back()
        .unwrap_or_else(|| panic!("no code was sent to {identifier}"))
}

async fn user(gateway: &Gateway, dir: &Path, name: &str, identifier: &str) -> Client {
    let mut config = ClientConfig::new(dir.join(format!("{name}.state")), gateway.quic_addr());
    config.ca_cert_der = Some(gateway.certificate_der().to_vec());
    config.device_label = name.into();
    config.retry = RetryPolicy {
        request_timeout: Duration::from_secs(10),
        ..RetryPolicy::default()
    };
    let client = Client::open(config).await.expect("client opens");
    client.register(identifier, false).await.expect("register");
    let codes = gateway
        .certificate_path()
        .parent()
        .expect("data dir")
        .join("codes.txt");
    client
        .authorize(&last_code(&codes, identifier))
        .await
        .expect("authorize");
    client
}

async fn next_seq(pushes: &mut Subscription) -> u64 {
    loop {
        match pushes.next().await.expect("push stream").map(|p| p.event) {
            Some(Some(pb::push::Event::Messages(m))) => return m.last_seq,
            Some(_) => continue,
            None => panic!("the subscription ended"),
        }
    }
}

async fn run(n: usize, interval: Duration) -> Histogram<u64> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let kv = rossby_storage::kv::open(&BackendConfig::Fjall(FjallConfig::new(
        dir.path().join("store"),
    )))
    .await
    .expect("store opens");
    let ca = DevCa::generate().expect("CA");
    let mut c1 = Config::for_tests(dir.path().join("g1"));
    c1.storage = StorageConfig::Shared(kv.clone());
    c1.api.region = RegionId(1);
    c1.peer = Some(PeerConfig::loopback(ca.issue("127.0.0.1").expect("cert")));
    c1.fetch_poll_interval = None;
    let mut c2 = Config::for_tests(dir.path().join("g2")).same_deployment_as(&c1);
    c2.api.region = RegionId(2);
    c2.peer = Some(PeerConfig::loopback(ca.issue("127.0.0.1").expect("cert")));
    c2.fetch_poll_interval = None;
    let g1 = Gateway::start(c1).await.expect("gateway 1 starts");
    let g2 = Gateway::start(c2).await.expect("gateway 2 starts");

    let alice = user(&g1, dir.path(), "alice", ALICE).await;
    let bob = Arc::new(user(&g2, dir.path(), "bob", BOB).await);
    let mut pushes = alice.subscribe().await.expect("subscribe");
    let mut seen = next_seq(&mut pushes).await;

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for i in 0..WARMUP + n {
        tokio::time::sleep(interval).await;
        let started = Instant::now();
        let send = {
            let bob = bob.clone();
            tokio::spawn(async move { bob.send_text(ALICE, "ping").await })
        };
        let expected = seen + 1;
        while seen < expected {
            seen = next_seq(&mut pushes).await;
        }
        let latency = started.elapsed();
        let report = send.await.expect("send task").expect("send");
        assert_eq!(
            report.seq, expected,
            "one sender, so sequence numbers are consecutive"
        );
        if i >= WARMUP {
            histogram
                .record(
                    u64::try_from(latency.as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                )
                .expect("recordable");
        }
    }
    let received = g1
        .metrics()
        .peer_notifications_total
        .with_label_values(&["received"])
        .get();
    println!("notifications received by gateway 1: {received}");
    alice.close().await;
    bob.close().await;
    g1.shutdown().await;
    g2.shutdown().await;
    drop(kv);
    histogram
}

fn main() {
    let n = usize::try_from(env_u64("ROSSBY_PUSH_LATENCY_N", 500))
        .unwrap_or(500)
        .max(1);
    let interval = Duration::from_millis(env_u64("ROSSBY_PUSH_LATENCY_INTERVAL_MS", 20));
    let timeout = Duration::from_secs(env_u64("ROSSBY_PUSH_LATENCY_TIMEOUT_SECS", 300));
    println!(
        "push-latency: n={n} interval={interval:?} timeout={timeout:?} (2 gateways on loopback, fjall group commit, polling off)"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let histogram = runtime
        .block_on(async { tokio::time::timeout(timeout, run(n, interval)).await })
        .unwrap_or_else(|_| panic!("the benchmark did not finish within {timeout:?}"));
    let ms = |us: u64| us as f64 / 1000.0;
    let (p50, p99, max) = (
        ms(histogram.value_at_quantile(0.50)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.max()),
    );
    println!("send start to push, over {} messages:", histogram.len());
    println!("  p50 {p50:.2} ms");
    println!("  p99 {p99:.2} ms");
    println!("  max {max:.2} ms");
    println!(
        "push-latency p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2} n={}",
        histogram.len()
    );
}
