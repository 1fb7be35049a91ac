//! Memory bounds under abuse: replies a client does not read, bodies that never
//! arrive, many subscriptions of one device fed ephemeral messages, and many
//! connections from one address. Each test reproduces the attack on a real
//! gateway over loopback and checks the bound: the gateway's own gauge of bytes
//! in flight (`rossby_bytes_in_flight`) or queued for pushes
//! (`rossby_push_queue_bytes`) never passes the configured budget, and the
//! bytes are given back once the deadline passed. The test process's resident
//! memory is printed alongside; `process_memory.rs` asserts the resident memory
//! of a gateway running as its own process.

mod support;

use rossby_gateway::{Config, Gateway};
use rossby_protocol::framing;
use rossby_protocol::pb::{self, Method, Status};
use rossby_protocol::status::status_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// Resident memory of this process in KiB (Linux), 0 where unknown.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Samples `gauge` every few milliseconds until stopped; the highest value seen.
struct PeakSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakSampler {
    fn start(gauge: prometheus::IntGauge) -> PeakSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicI64::new(0));
        let task = {
            let (stop, peak) = (stop.clone(), peak.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    peak.fetch_max(gauge.get(), Ordering::AcqRel);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        PeakSampler { stop, peak, task }
    }

    async fn finish(self) -> i64 {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
        self.peak.load(Ordering::Acquire)
    }
}

/// A client transport that reads (almost) nothing: tiny receive windows, so
/// whatever the gateway writes stays on its side until the client reads.
fn stingy_client() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(1024u32.into());
    t.receive_window((64u32 * 1024).into());
    t.max_concurrent_uni_streams(64u32.into());
    t
}

/// Waits until `gauge` reads `want` (or fails after the test bound).
async fn gauge_settles(gauge: &prometheus::IntGauge, want: i64) {
    bounded("gauge settles", async {
        while gauge.get() != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

const BUDGET: usize = 2 * 1024 * 1024;

async fn gateway_with(dir: &std::path::Path, edit: impl FnOnce(&mut Config)) -> Gateway {
    let mut config = Config::for_tests(dir).in_memory();
    config.quic.connection_budget_bytes = BUDGET;
    config.quic.response_write_timeout = Duration::from_millis(800);
    config.quic.request_read_timeout = Duration::from_millis(1500);
    edit(&mut config);
    start_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_replies_are_reset_and_bytes_in_flight_stay_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with(dir.path(), |_| {}).await;
    let codes = codes_file(dir.path());
    let setup = RawConn::connect(&gateway).await;
    // Four envelopes of 200 KiB in her own box: a Fetch for "0 bytes" (the
    // gateway's default, 1 MiB) returns all of them, about 800 KiB.
    let alice = register_with_mail(&setup, &codes, "alice@example.com", 4, 200 * 1024).await;
    let fetched = fetch_raw(&setup, &alice).await;
    let fetched_bytes: usize = fetched.envelopes.iter().map(|e| e.envelope.len()).sum();
    assert!(
        fetched_bytes <= gateway_default_fetch_bytes(),
        "{fetched_bytes}"
    );

    let metrics = gateway.metrics().clone();
    let in_flight = metrics.bytes_in_flight.with_label_values(&["connection"]);
    let resets = metrics
        .streams_reset_total
        .with_label_values(&["write_timeout"]);
    let rss_before = rss_kib();
    let sampler = PeakSampler::start(in_flight.clone());
    let started = Instant::now();

    // The attack: one connection, 32 Fetches whose replies are never read.
    let attacker = RawConn::connect_with(&gateway, stingy_client()).await;
    let mut streams = Vec::new();
    for _ in 0..32 {
        let (mut send, recv) = attacker.conn.open_bi().await.unwrap();
        let request = attacker.signed(&alice, Method::Fetch, Vec::new());
        let frame = framing::encode(&request);
        send.write_all(&frame).await.unwrap();
        send.finish().unwrap();
        streams.push((send, recv));
    }
    // Every reply is abandoned (reset after the write deadline, or refused for
    // want of budget) and the budget is given back.
    bounded("every stream answered or reset", async {
        for (_send, mut recv) in streams {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(Some(_)) = recv.read(&mut buf).await {}
        }
    })
    .await;
    gauge_settles(&in_flight, 0).await;
    let peak = sampler.finish().await;
    let rss_after = rss_kib();
    println!(
        "32 unread fetches of ~{fetched_bytes} bytes on one connection: peak bytes in flight \
         {peak} (budget {BUDGET}), {} streams reset after the write deadline, RSS {rss_before} -> \
         {rss_after} KiB, {:?}",
        resets.get(),
        started.elapsed()
    );
    assert!(peak > 0, "the replies were in flight");
    assert!(
        peak <= BUDGET as i64,
        "peak {peak} above the budget {BUDGET}"
    );
    assert!(resets.get() >= 1, "unread replies are reset");
    // The gateway still serves the connection's owner elsewhere.
    let again = fetch_raw(&setup, &alice).await;
    assert_eq!(again.envelopes.len(), fetched.envelopes.len());
    attacker.close().await;
    setup.close().await;
    gateway.shutdown().await;
}

fn gateway_default_fetch_bytes() -> usize {
    Config::for_tests("/nonexistent").api.max_fetch_bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_never_arrive_time_out_and_give_their_budget_back() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with(dir.path(), |_| {}).await;
    let in_flight = gateway
        .metrics()
        .bytes_in_flight
        .with_label_values(&["connection"]);
    let sampler = PeakSampler::start(in_flight.clone());
    let conn = RawConn::connect(&gateway).await;
    // Eight streams each announce a frame of about 1 MB and send 10 bytes of it.
    let declared = 1_000_000u32;
    let mut streams = Vec::new();
    let started = Instant::now();
    for _ in 0..8 {
        let (mut send, recv) = conn.conn.open_bi().await.unwrap();
        send.write_all(&declared.to_be_bytes()).await.unwrap();
        send.write_all(&[0u8; 10]).await.unwrap();
        streams.push((send, recv));
    }
    let mut statuses = Vec::new();
    for (_send, mut recv) in streams {
        let bytes = bounded("an answer", recv.read_to_end(1 << 20))
            .await
            .unwrap();
        let response: pb::Response =
            framing::decode_one(&bytes, 1 << 20, "response").expect("a response");
        statuses.push(status_of(&response));
    }
    let elapsed = started.elapsed();
    gauge_settles(&in_flight, 0).await;
    let peak = sampler.finish().await;
    println!(
        "8 stalled bodies of {declared} bytes: {statuses:?} after {elapsed:?}, peak reserved {peak}"
    );
    // Two fit the budget and time out; the others wait for budget and get none,
    // or too late for their bodies to arrive.
    assert!(
        statuses
            .iter()
            .all(|s| matches!(s, Status::BadRequest | Status::RateLimited)),
        "{statuses:?}"
    );
    assert!(
        peak >= 2 * i64::from(declared),
        "two bodies fit the budget: {peak}"
    );
    assert!(peak <= BUDGET as i64, "{peak}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    conn.close().await;
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscription_per_device_and_push_queues_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let queue_bytes = 512 * 1024;
    let gateway = gateway_with(dir.path(), |c| {
        c.api.push_queue_bytes = queue_bytes;
        // The attack sends 8 MB: more than the test default of stored bytes.
        c.api.rate_limits.stored_bytes_per_account.per_second = 1e12;
        c.api.rate_limits.stored_bytes_per_account.burst = 1e12;
    })
    .await;
    let codes = codes_file(dir.path());
    let setup = RawConn::connect(&gateway).await;
    let alice = register_raw(&setup, &codes, "alice@example.com").await;
    let bob = register_raw(&setup, &codes, "bob@example.com").await;
    let to_alice = device_list(&setup, &bob, "alice@example.com").await;

    // Alice subscribes on 10 connections and reads none of her pushes.
    let mut subscribers = Vec::new();
    for _ in 0..10 {
        let conn = RawConn::connect_with(&gateway, stingy_client()).await;
        let _: pb::SubscribeResponse = ok(&conn
            .call(&alice, Method::Subscribe, &pb::SubscribeRequest {})
            .await);
        subscribers.push(conn);
    }
    let presence = gateway.api().presence().clone();
    assert_eq!(presence.online(alice.box_id), 1, "only the newest lives");
    // An older subscription's push stream ended after its first push.
    let mut first = bounded("the first push stream", subscribers[0].conn.accept_uni())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    bounded("the replaced stream ends", async {
        while let Ok(Some(_)) = first.read(&mut buf).await {}
    })
    .await;

    let queued = gateway.metrics().push_queue_bytes.clone();
    let sampler = PeakSampler::start(queued.clone());
    let rss_before = rss_kib();
    // Bob sends 40 ephemeral messages of 200 KiB (8 MB).
    for _ in 0..40 {
        let mut request = send_request(&to_alice, &bob, &vec![1u8; 200 * 1024]);
        request.ephemeral = true;
        let sent: pb::SendResponse = ok(&setup.call(&bob, Method::Send, &request).await);
        assert_eq!(sent.results[0].status, Status::Ok as i32);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let peak = sampler.finish().await;
    let rss_after = rss_kib();
    println!(
        "10 subscriptions of one device, 40 ephemeral sends of 200 KiB: peak queued {peak} \
         (bound {queue_bytes} + one frame), RSS {rss_before} -> {rss_after} KiB"
    );
    // One frame is always admitted into an empty queue.
    assert!(
        peak <= (queue_bytes + 201 * 1024) as i64,
        "peak {peak} above the queue bound"
    );
    for conn in subscribers {
        conn.close().await;
    }
    gauge_settles(&queued, 0).await;
    setup.close().await;
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with(dir.path(), |c| c.quic.max_connections_per_address = 3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(RawConn::connect(&gateway).await);
    }
    let refused = RawConn::try_connect_with(&gateway, None).await;
    assert!(
        refused.is_err(),
        "a fourth connection from one address is refused"
    );
    let counter = gateway
        .metrics()
        .connections_refused_total
        .with_label_values(&["per_address"]);
    assert_eq!(counter.get(), 1);
    // A closed connection frees its slot.
    open.pop().unwrap().close().await;
    bounded("a slot frees up", async {
        loop {
            if let Ok(conn) = RawConn::try_connect_with(&gateway, None).await {
                break conn;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .close()
    .await;
    for conn in open {
        conn.close().await;
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_validation_sends_a_retry_first() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with(dir.path(), |c| {
        c.quic.address_validation = rossby_gateway::config::AddressValidation::Always;
    })
    .await;
    let conn = RawConn::connect(&gateway).await;
    let pong = conn.call_anonymous(Method::Ping, &pb::PingRequest {}).await;
    assert_eq!(status_of(&pong), Status::Ok);
    assert_eq!(gateway.metrics().quic_retries_total.get(), 1);
    conn.close().await;
    gateway.shutdown().await;
}
