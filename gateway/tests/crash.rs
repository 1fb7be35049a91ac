//! The gateway as a process. Killed with SIGKILL while clients are sending, then
//! restarted on the same data directory, it has lost nothing it acknowledged:
//! every send that got a sequence number is fetched afterwards, exactly once, and
//! sends that were cut off are delivered at most once when retried with their
//! message ids. Everything it writes is private to its user.

mod support;

use rossby_client::{Body, Client, RetryPolicy};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::process::{GatewayProcess, free_tcp_port, free_udp_port};
use support::{bounded, register};

const BOB: &str = "bob@example.com";
const SENDERS: [&str; 3] = ["alice@example.com", "carol@example.com", "dave@example.com"];
/// Acknowledged sends before the kill.
const BEFORE_KILL: usize = 30;
/// Acknowledged sends after the restart before the senders stop.
const AFTER_RESTART: usize = 6;
/// Most sends per sender (bounds the run).
const MAX_PER_SENDER: usize = 400;

/// Retries bounded so that a sender notices the dead gateway within seconds.
fn crash_retry() -> RetryPolicy {
    RetryPolicy {
        request_timeout: Duration::from_secs(3),
        ..support::quick_retry()
    }
}

#[derive(Default)]
struct Ledger {
    /// text -> (seq, message id) of every acknowledged send.
    acked: BTreeMap<String, (u64, [u8; 16])>,
    /// Sends that failed, with the reason (retried from the outbox later).
    failed: BTreeMap<String, String>,
    /// Sends that began before the kill and ended after it.
    spanning_kill: usize,
}

async fn sender(
    name: &'static str,
    client: Arc<Client>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
) {
    for i in 0..MAX_PER_SENDER {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let text = format!("{name}#{i}");
        let before_kill = !killed.load(Ordering::Acquire);
        let result = client.send_text(BOB, &text).await;
        if before_kill && killed.load(Ordering::Acquire) {
            ledger.lock().unwrap().spanning_kill += 1;
        }
        match result {
            Ok(report) => {
                let mut ledger = ledger.lock().unwrap();
                ledger
                    .acked
                    .insert(text, (report.seq, *report.message_id.as_bytes()));
            }
            Err(err) => {
                ledger.lock().unwrap().failed.insert(text, err.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn until_acked(ledger: &Mutex<Ledger>, n: usize) {
    bounded("acknowledged sends", async {
        while ledger.lock().unwrap().acked.len() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let codes = data.join("codes.txt");
    let log = dir.path().join("gateway.log");
    let quic = free_udp_port();
    let admin = free_tcp_port();
    let mut gateway = GatewayProcess::spawn(&data, quic, admin, log.clone(), &[]);
    gateway.wait_ready().await;
    let cert = gateway.certificate();

    let open = |name: &str| {
        let mut config = rossby_client::ClientConfig::new(dir.path().join(name), quic);
        config.ca_cert_der = Some(cert.clone());
        config.retry = crash_retry();
        Client::open(config)
    };
    let bob = open("bob.state").await.unwrap();
    register(&bob, BOB, &codes).await;
    let mut senders = Vec::new();
    for name in SENDERS {
        let client = open(&format!("{name}.state")).await.unwrap();
        register(&client, name, &codes).await;
        senders.push((name, Arc::new(client)));
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = senders
        .iter()
        .map(|(name, client)| {
            tokio::spawn(sender(
                name,
                client.clone(),
                ledger.clone(),
                stop.clone(),
                killed.clone(),
            ))
        })
        .collect();

    // Kill the gateway while the senders keep sending, then restart it at once on
    // the same directory and address.
    until_acked(&ledger, BEFORE_KILL).await;
    gateway.kill();
    killed.store(true, Ordering::Release);
    let acked_at_kill = ledger.lock().unwrap().acked.len();
    let admin = free_tcp_port();
    let mut gateway = GatewayProcess::spawn(&data, quic, admin, log.clone(), &[]);
    gateway.wait_ready().await;

    // The senders recover on their own; then they stop.
    until_acked(&ledger, acked_at_kill + AFTER_RESTART).await;
    stop.store(true, Ordering::Release);
    for task in tasks {
        bounded("a sender to stop", task).await.unwrap();
    }
    // Sends that were cut off are retried with their message ids.
    for (_, client) in &senders {
        let retried = bounded("retrying the outbox", client.retry_outbox())
            .await
            .unwrap();
        let mut ledger = ledger.lock().unwrap();
        for (pending, result) in retried {
            let report = result.unwrap_or_else(|e| panic!("retry of {}: {e}", pending.text));
            assert_eq!(report.message_id, pending.message_id);
            ledger
                .acked
                .insert(pending.text, (report.seq, *report.message_id.as_bytes()));
        }
    }

    // Bob fetches everything: each acknowledged send exactly once, with its seq.
    let mut received: HashMap<String, Vec<(u64, [u8; 16])>> = HashMap::new();
    loop {
        let batch = bounded("fetch", bob.fetch(Duration::ZERO)).await.unwrap();
        assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
        assert!(batch.gap.is_none());
        for m in &batch.messages {
            let Body::Text(text) = &m.body else {
                panic!("unexpected message {m:?}");
            };
            received
                .entry(text.clone())
                .or_default()
                .push((m.seq, m.message_id));
        }
        if batch.ack_up_to.is_none() {
            break;
        }
    }
    let ledger = ledger.lock().unwrap();
    for (text, copies) in &received {
        assert_eq!(
            copies.len(),
            1,
            "{text} was delivered {} times",
            copies.len()
        );
    }
    for (text, (seq, message_id)) in &ledger.acked {
        let copies = received
            .get(text)
            .unwrap_or_else(|| panic!("acknowledged send {text} (seq {seq}) was lost"));
        assert_eq!(copies[0], (*seq, *message_id), "{text}");
    }
    // Whatever else arrived is a send that failed from the sender's point of view
    // (cut off by the kill) and was not confirmed by a retry.
    for text in received.keys() {
        assert!(
            ledger.acked.contains_key(text) || ledger.failed.contains_key(text),
            "{text} arrived but was never sent"
        );
    }
    assert!(ledger.acked.len() >= BEFORE_KILL + AFTER_RESTART);
    assert!(
        ledger.spanning_kill > 0,
        "no send was in flight when the gateway was killed"
    );
    eprintln!(
        "crash test: {} sends acknowledged ({} before the kill, {} in flight at the kill), {} received, failed attempts: {:?}",
        ledger.acked.len(),
        acked_at_kill,
        ledger.spanning_kill,
        received.len(),
        ledger.failed
    );
    drop(gateway);
}

/// Every file and directory under the data directory (store, secrets,
/// certificate, codes) whose mode lets group or others in.
#[cfg(unix)]
fn shared_entries(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        }
    }
    out
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_the_gateway_writes_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let codes = data.join("codes.txt");
    let quic = free_udp_port();
    let admin = free_tcp_port();
    let mut gateway =
        GatewayProcess::spawn(&data, quic, admin, dir.path().join("gateway.log"), &[]);
    gateway.wait_ready().await;
    let mut config = rossby_client::ClientConfig::new(dir.path().join("bob.state"), quic);
    config.ca_cert_der = Some(gateway.certificate());
    let bob = Client::open(config).await.unwrap();
    // A code in the code file, and a registration in the store.
    register(&bob, BOB, &codes).await;
    bob.send_text(BOB, "a note to self").await.unwrap();
    assert!(codes.exists());
    let shared = shared_entries(&data);
    assert!(shared.is_empty(), "readable by others: {shared:?}");
    gateway.kill();
}
