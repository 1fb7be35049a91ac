//! SDK clients killed with SIGKILL at random points, again and again, while they
//! send, fetch and acknowledge against a real gateway on loopback, then
//! restarted on the same state: every state loads, no message is shown twice,
//! and none is lost.
//!
//! The clients run in child processes (this test binary started again with
//! [`child_process`] selected), with a tiny compaction bound so that kills also
//! land while the state's journal is being compacted. A sender sends `m<i>` for
//! increasing `i`, retrying its outbox first on every start; a receiver fetches,
//! prints what it shows and acknowledges. Both print one line per step, which
//! the parent reads to know what was confirmed and shown.
//!
//! A message the receiver's fetch accepted (and remembered, so that a repeated
//! envelope is dropped as a replay) is handed to the application when
//! `fetch_batch` returns; a kill in the instant between that and the
//! application showing it is the application's window, not the SDK's. Such a
//! message is accepted as "handed over" only if the restarted receiver reports
//! its envelope as a replay and the killed receiver was inside a fetch.

mod support;

use rossby_client::state::Compaction;
use rossby_client::{Body, Client, ClientConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{client, codes_file, quick_retry, register, start_gateway};
use tokio::task::block_in_place;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
/// Messages the sender sends.
const MESSAGES: u64 = 60;
/// Kills of each client.
const KILLS: usize = 8;
const PREFIX: &str = "@@ ";

/// The child's side: runs only when started by the parent test.
#[test]
fn child_process() {
    let Ok(role) = std::env::var("ROSSBY_KILL_ROLE") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(child(&role));
}

fn say(line: impl AsRef<str>) {
    println!("{PREFIX}{}", line.as_ref());
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn child(role: &str) {
    let mut config = ClientConfig::new(
        PathBuf::from(var("ROSSBY_KILL_STATE")),
        var("ROSSBY_KILL_GATEWAY").parse().expect("address"),
    );
    config.ca_cert_der = Some(std::fs::read(var("ROSSBY_KILL_CERT")).expect("certificate"));
    config.create = false;
    config.retry = quick_retry();
    config.state_compaction = Compaction {
        journal_percent: 1,
        min_journal_bytes: 0,
    };
    let client = match Client::open(config).await {
        Ok(c) => c,
        Err(e) => {
            say(format!("error cannot open the state: {e}"));
            std::process::exit(2);
        }
    };
    say("opened");
    match role {
        "send" => sender(&client).await,
        "receive" => receiver(&client, false).await,
        "drain" => receiver(&client, true).await,
        other => panic!("unknown role {other}"),
    }
}

fn index_of(text: &str) -> u64 {
    text.strip_prefix('m')
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("unexpected text {text:?}"))
}

async fn sender(client: &Client) {
    let from: u64 = var("ROSSBY_KILL_FROM").parse().expect("index");
    match client.retry_outbox().await {
        Ok(results) => {
            for (pending, result) in results {
                match result {
                    Ok(r) => say(format!(
                        "sent {} {} {}",
                        index_of(&pending.text),
                        r.seq,
                        hex(r.message_id.as_bytes())
                    )),
                    Err(e) => say(format!("retry-failed {}: {e}", pending.text)),
                }
            }
        }
        Err(e) => say(format!("retry-failed {e}")),
    }
    for i in from..MESSAGES {
        say(format!("sending {i}"));
        match client.send_text(BOB, &format!("m{i}")).await {
            Ok(r) => say(format!(
                "sent {i} {} {} snapshots={}",
                r.seq,
                hex(r.message_id.as_bytes()),
                client.state_io().await.snapshots
            )),
            Err(e) => say(format!("send-failed {i}: {e}")),
        }
    }
    say(format!("done outbox={}", client.outbox().await.len()));
}

async fn receiver(client: &Client, drain: bool) {
    loop {
        say("fetching");
        let wait = if drain {
            Duration::ZERO
        } else {
            Duration::from_millis(300)
        };
        let batch = match client.fetch_batch(wait).await {
            Ok(b) => b,
            Err(e) => {
                say(format!("fetch-failed {e}"));
                continue;
            }
        };
        for m in &batch.messages {
            let Body::Text(text) = &m.body else {
                panic!("unexpected message {m:?}");
            };
            say(format!("shown {text} {} {}", m.seq, hex(&m.message_id)));
        }
        for r in &batch.rejected {
            say(format!("rejected {} {}", r.seq, r.reason));
        }
        say("fetched");
        let Some(up_to) = batch.ack_up_to else {
            if drain {
                say("drained");
                return;
            }
            continue;
        };
        match client.ack(up_to).await {
            Ok(()) => say(format!(
                "acked {up_to} snapshots={}",
                client.state_io().await.snapshots
            )),
            Err(e) => say(format!("ack-failed {e}")),
        }
    }
}

/// One run of a child process and the lines it printed.
struct Run {
    child: Child,
    reader: std::thread::JoinHandle<()>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Run {
    fn start(role: &str, state: &Path, env: &[(&str, String)]) -> Run {
        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        command
            .args([
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ROSSBY_KILL_ROLE", role)
            .env("ROSSBY_KILL_STATE", state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the child starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(l) = line.strip_prefix(PREFIX) {
                    sink.lock().unwrap().push(l.to_string());
                }
            }
        });
        Run {
            child,
            reader,
            lines,
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("child status").is_none()
    }

    /// SIGKILL (if still running), reap, and every line it printed.
    fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        self.child.wait().expect("reap");
        self.finish()
    }

    /// Waits (bounded) for it to exit by itself; its lines.
    fn wait(mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.running() {
            assert!(Instant::now() < deadline, "a child did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.wait().expect("reap");
        let lines = self.finish();
        assert!(status.success(), "child failed ({status}): {lines:?}");
        lines
    }

    fn finish(self) -> Vec<String> {
        self.reader.join().expect("reader");
        let lines = self.lines.lock().unwrap().clone();
        for line in &lines {
            assert!(!line.starts_with("error"), "{line}");
        }
        lines
    }
}

/// A small deterministic generator (xorshift), seeded per run and printed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Ledger {
    /// i -> (seq, message id) of every send the sender saw confirmed.
    confirmed: BTreeMap<u64, (u64, String)>,
    /// Every i the sender started to send.
    attempted: BTreeSet<u64>,
    /// text -> every (seq, message id) it was shown with.
    shown: BTreeMap<String, Vec<(u64, String)>>,
    /// Sequence numbers reported as replays.
    replays: BTreeSet<u64>,
    /// Receivers killed between "fetching" and "fetched".
    killed_in_fetch: usize,
    /// Snapshots written (compactions), summed over the runs.
    snapshots: u64,
}

impl Ledger {
    fn sender_lines(&mut self, lines: &[String]) -> Option<u64> {
        self.count_snapshots(lines);
        let mut last = None;
        for line in lines {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["sending", i] => {
                    let i: u64 = i.parse().unwrap();
                    self.attempted.insert(i);
                    last = Some(i);
                }
                ["sent", i, seq, id, ..] => {
                    let entry = (seq.parse().unwrap(), id.to_string());
                    let i: u64 = i.parse().unwrap();
                    if let Some(before) = self.confirmed.insert(i, entry.clone()) {
                        assert_eq!(before, entry, "m{i} confirmed twice differently");
                    }
                }
                _ => {}
            }
        }
        last
    }

    fn receiver_lines(&mut self, lines: &[String], killed: bool) {
        self.count_snapshots(lines);
        for line in lines {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["shown", text, seq, id] => self
                    .shown
                    .entry(text.to_string())
                    .or_default()
                    .push((seq.parse().unwrap(), id.to_string())),
                ["rejected", seq, reason @ ..] => {
                    assert!(reason.join(" ").contains("replay"), "{line}");
                    self.replays.insert(seq.parse().unwrap());
                }
                _ => {}
            }
        }
        let in_fetch = lines
            .iter()
            .rev()
            .find(|l| *l == "fetching" || *l == "fetched")
            .is_some_and(|l| l == "fetching");
        if killed && in_fetch {
            self.killed_in_fetch += 1;
        }
    }

    /// Adds the snapshots one run wrote (its last report).
    fn count_snapshots(&mut self, lines: &[String]) {
        let last = lines.iter().rev().find_map(|l| {
            l.split(' ')
                .find_map(|w| w.strip_prefix("snapshots="))
                .and_then(|n| n.parse::<u64>().ok())
        });
        self.snapshots += last.unwrap_or(0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_clients_lose_and_repeat_nothing() {
    let seed = std::env::var("ROSSBY_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("client kill test: seed {seed} (rerun with ROSSBY_KILL_SEED={seed})");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let alice_state = dir.path().join("alice.state");
    let bob_state = dir.path().join("bob.state");
    {
        let alice = client(&gateway, alice_state.clone()).await;
        let bob = client(&gateway, bob_state.clone()).await;
        register(&alice, ALICE, &codes).await;
        register(&bob, BOB, &codes).await;
        alice.contact(BOB).await.expect("bob is found");
        alice.close().await;
        bob.close().await;
    }
    let cert = dir.path().join("gateway.der");
    std::fs::write(&cert, gateway.certificate_der()).unwrap();
    let env = vec![
        ("ROSSBY_KILL_GATEWAY", gateway.quic_addr().to_string()),
        ("ROSSBY_KILL_CERT", cert.display().to_string()),
    ];
    let sender_env = |from: u64| {
        let mut e = env.clone();
        e.push(("ROSSBY_KILL_FROM", from.to_string()));
        e
    };

    let mut ledger = Ledger::default();
    let mut next = 0u64;
    let mut sender = Some(Run::start("send", &alice_state, &sender_env(next)));
    let mut receiver = Run::start("receive", &bob_state, &env);
    let (mut sender_kills, mut receiver_kills) = (0, 0);
    for k in 0..2 * KILLS {
        block_in_place(|| std::thread::sleep(Duration::from_millis(20 + rng.below(400))));
        if k % 2 == 0 {
            let Some(mut run) = sender.take() else {
                continue;
            };
            if !run.running() {
                let lines = block_in_place(|| run.wait());
                ledger.sender_lines(&lines);
                continue;
            }
            let lines = block_in_place(|| run.kill());
            sender_kills += 1;
            if let Some(last) = ledger.sender_lines(&lines) {
                next = last + 1;
            }
            if next < MESSAGES {
                sender = Some(Run::start("send", &alice_state, &sender_env(next)));
            }
        } else {
            let lines = block_in_place(|| receiver.kill());
            receiver_kills += 1;
            ledger.receiver_lines(&lines, true);
            receiver = Run::start("receive", &bob_state, &env);
        }
    }
    // The sender finishes, a last run retries its outbox; the receiver drains.
    if let Some(run) = sender.take() {
        let lines = block_in_place(|| run.wait());
        ledger.sender_lines(&lines);
    }
    let lines = block_in_place(|| Run::start("send", &alice_state, &sender_env(MESSAGES)).wait());
    assert!(
        lines.iter().any(|l| l == "done outbox=0"),
        "the outbox is empty at the end: {lines:?}"
    );
    ledger.sender_lines(&lines);
    let lines = block_in_place(|| receiver.kill());
    ledger.receiver_lines(&lines, true);
    let lines = block_in_place(|| Run::start("drain", &bob_state, &env).wait());
    ledger.receiver_lines(&lines, false);

    // Shown at most once.
    for (text, copies) in &ledger.shown {
        assert_eq!(copies.len(), 1, "{text} was shown {copies:?}");
        assert!(
            ledger.attempted.contains(&index_of(text)),
            "{text} was shown but never sent"
        );
    }
    // Nothing confirmed is lost.
    let mut handed_over = 0;
    for (i, (seq, id)) in &ledger.confirmed {
        match ledger.shown.get(&format!("m{i}")) {
            Some(copies) => assert_eq!(copies[0], (*seq, id.clone()), "m{i}"),
            None => {
                assert!(
                    ledger.replays.contains(seq) && ledger.killed_in_fetch > 0,
                    "m{i} (seq {seq}) was confirmed but never shown"
                );
                handed_over += 1;
            }
        }
    }
    assert!(ledger.confirmed.len() as u64 >= MESSAGES - sender_kills as u64);
    assert!(ledger.snapshots > 0, "no compaction happened");
    eprintln!(
        "client kill test: {sender_kills} sender and {receiver_kills} receiver kills; {} of {} messages attempted, {} confirmed, {} shown, {} handed over by a fetch cut short, {} replays dropped; {} snapshots written",
        ledger.attempted.len(),
        MESSAGES,
        ledger.confirmed.len(),
        ledger.shown.len(),
        handed_over,
        ledger.replays.len(),
        ledger.snapshots
    );
}
