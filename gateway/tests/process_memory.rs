//! The two memory attacks of the abuse report, against a gateway running as its
//! own process, measured as the growth of that process's resident memory: one
//! account's unread Fetch replies on two connections, and one device subscribed
//! on many connections, reading nothing, fed ephemeral sends. Before the
//! budgets of docs/security.md §15 these pinned 966 MiB and 499 MiB; the growth
//! must now stay within what §15.1 documents per connection and per device,
//! plus a fixed allowance for the allocator.
//!
//! Linux only (the resident set is read from `/proc`).
#![cfg(target_os = "linux")]

mod support;

use rossby_protocol::framing;
use rossby_protocol::pb::{self, Method, Status};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::process::{GatewayProcess, status_kib};
use support::*;

const MIB: u64 = 1024;

/// Bytes in flight per connection (the default of `--connection-budget-bytes`).
const CONNECTION_BUDGET_KIB: u64 = 4 * MIB;
/// quinn's receive window per connection (the default of `--receive-window`):
/// request bytes not read yet.
const RECEIVE_WINDOW_KIB: u64 = MIB;
/// An open connection's own state (docs/performance.md measures 34–50 KiB).
const CONNECTION_STATE_KIB: u64 = 64;
/// Bytes of push frames queued per subscription (`--push-queue-bytes`).
const PUSH_QUEUE_KIB: u64 = MIB;
/// What the allocator may keep beyond the live bytes (mimalloc's segments and
/// page caches of the worker threads), and the noise of one process's RSS.
const ALLOCATOR_ALLOWANCE_KIB: u64 = 16 * MIB;

/// Samples a process's resident memory every 5 ms until stopped; the highest.
struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    peak.fetch_max(status_kib(pid, "VmRSS:"), Ordering::AcqRel);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        RssPeak { stop, peak, thread }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
        self.peak.load(Ordering::Acquire)
    }
}

/// A client transport that reads (almost) nothing.
fn stingy_client() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(1024u32.into());
    t.receive_window((64u32 * 1024).into());
    t.max_concurrent_uni_streams(64u32.into());
    t
}

async fn gateway(dir: &std::path::Path) -> GatewayProcess {
    let mut gateway = GatewayProcess::spawn_on_free_ports(
        &dir.join("data"),
        dir.join("gateway.log"),
        &[
            "--storage",
            "memory",
            // Short deadlines keep the test short; the bounds do not depend
            // on them.
            "--response-write-timeout-ms",
            "800",
            "--request-read-timeout-ms",
            "1500",
            "--max-connections-per-address",
            "1000",
        ],
    );
    gateway.wait_ready().await;
    gateway
}

async fn connect(gateway: &GatewayProcess, transport: Option<quinn::TransportConfig>) -> RawConn {
    RawConn::connect_to(gateway.quic, &gateway.certificate(), transport).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_fetch_replies_grow_the_gateway_by_the_connection_budget_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(dir.path()).await;
    let codes = codes_file(&gateway.data_dir);
    let setup = connect(&gateway, None).await;
    // Four envelopes of 200 KiB: each Fetch with `max_bytes = 0` answers about
    // 800 KiB.
    let alice = register_with_mail(&setup, &codes, "alice@example.com", 4, 200 * 1024).await;
    // Read once, so the first reply's buffers are part of the baseline.
    let fetched = fetch_raw(&setup, &alice).await;
    assert_eq!(fetched.envelopes.len(), 4);
    let before = gateway.rss_kib();
    let sampler = RssPeak::start(gateway.pid());

    // The attack: two connections, 64 Fetches each (the stream limit), none
    // of whose replies is read.
    let mut attackers = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let attacker = connect(&gateway, Some(stingy_client())).await;
        for _ in 0..64 {
            let (mut send, recv) = attacker.conn.open_bi().await.unwrap();
            let request = attacker.signed(&alice, Method::Fetch, Vec::new());
            send.write_all(&framing::encode(&request)).await.unwrap();
            send.finish().unwrap();
            streams.push((send, recv));
        }
        attackers.push(attacker);
    }
    // Hold them until every reply was reset or refused.
    bounded("every stream answered or reset", async {
        for (_send, mut recv) in streams {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(Some(_)) = recv.read(&mut buf).await {}
        }
    })
    .await;
    let peak = sampler.finish();
    let bound = 2 * (CONNECTION_BUDGET_KIB + RECEIVE_WINDOW_KIB + CONNECTION_STATE_KIB)
        + ALLOCATOR_ALLOWANCE_KIB;
    println!(
        "128 unread Fetches of ~{} KiB on 2 connections: gateway RSS {before} KiB, peak {peak} \
         KiB (+{} KiB; bound +{bound} KiB)",
        fetched
            .envelopes
            .iter()
            .map(|e| e.envelope.len())
            .sum::<usize>()
            / 1024,
        peak.saturating_sub(before)
    );
    assert!(
        peak.saturating_sub(before) <= bound,
        "the gateway grew by {} KiB, more than {bound} KiB",
        peak.saturating_sub(before)
    );
    // The account is still served.
    assert_eq!(fetch_raw(&setup, &alice).await.envelopes.len(), 4);
    for attacker in attackers {
        attacker.close().await;
    }
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_subscriptions_fed_ephemeral_sends_grow_the_gateway_by_one_push_queue() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(dir.path()).await;
    let codes = codes_file(&gateway.data_dir);
    let setup = connect(&gateway, None).await;
    let alice = register_raw(&setup, &codes, "alice@example.com").await;
    let bob = register_raw(&setup, &codes, "bob@example.com").await;
    let to_alice = device_list(&setup, &bob, "alice@example.com").await;
    let envelope = vec![1u8; 250 * 1024];
    let ephemeral = || {
        let mut request = send_request(&to_alice, &bob, &envelope);
        request.ephemeral = true;
        request
    };
    // One send before measuring, so its buffers are part of the baseline.
    let _: pb::SendResponse = ok(&setup.call(&bob, Method::Send, &ephemeral()).await);
    let before = gateway.rss_kib();
    let sampler = RssPeak::start(gateway.pid());

    // The attack: Alice subscribes on 30 connections and reads nothing; Bob
    // sends 66 ephemeral envelopes of 250 KiB (16.5 MiB).
    const SUBSCRIBERS: u64 = 30;
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let conn = connect(&gateway, Some(stingy_client())).await;
        let _: pb::SubscribeResponse = ok(&conn
            .call(&alice, Method::Subscribe, &pb::SubscribeRequest {})
            .await);
        subscribers.push(conn);
    }
    for _ in 0..66 {
        let sent: pb::SendResponse = ok(&setup.call(&bob, Method::Send, &ephemeral()).await);
        assert_eq!(sent.results[0].status, Status::Ok as i32);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peak = sampler.finish();
    // One live subscription, whose queue holds at most its bytes plus one
    // frame; Bob's connection its budget; every connection its own state.
    let bound = PUSH_QUEUE_KIB
        + 256
        + CONNECTION_BUDGET_KIB
        + RECEIVE_WINDOW_KIB
        + (SUBSCRIBERS + 1) * CONNECTION_STATE_KIB
        + ALLOCATOR_ALLOWANCE_KIB;
    println!(
        "{SUBSCRIBERS} unread subscriptions of one device, 66 ephemeral sends of 250 KiB: gateway \
         RSS {before} KiB, peak {peak} KiB (+{} KiB; bound +{bound} KiB)",
        peak.saturating_sub(before)
    );
    assert!(
        peak.saturating_sub(before) <= bound,
        "the gateway grew by {} KiB, more than {bound} KiB",
        peak.saturating_sub(before)
    );
    for conn in subscribers {
        conn.close().await;
    }
    setup.close().await;
}
