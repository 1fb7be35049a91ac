//! What persisting the SDK's local state costs on the hot paths (bytes written
//! and syncs per send, fetch and ack, printed for docs/performance.md), against
//! a real gateway on loopback:
//! `cargo test -p rossby-gateway --test client_state -- --nocapture`.

mod support;

use rossby_client::state::StateIo;
use std::time::Duration;
use support::{bounded, client, codes_file, register, start_gateway};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
/// Operations measured of each kind.
const ROUNDS: u64 = 100;

#[derive(Default)]
struct Cost {
    bytes: u64,
    syncs: u64,
    snapshots: u64,
}

impl Cost {
    fn add(&mut self, before: StateIo, after: StateIo) {
        self.bytes += after.bytes_written - before.bytes_written;
        self.syncs += after.syncs - before.syncs;
        self.snapshots += after.snapshots - before.snapshots;
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what:<6} {:>10.0} B {:>6.2} syncs {:>6.3} snapshots (per operation, {ROUNDS} operations)",
            self.bytes as f64 / ROUNDS as f64,
            self.syncs as f64 / ROUNDS as f64,
            self.snapshots as f64 / ROUNDS as f64,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_writes_per_send_fetch_and_ack() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let alice = client(&gateway, dir.path().join("alice.state")).await;
    let bob = client(&gateway, dir.path().join("bob.state")).await;
    register(&alice, ALICE, &codes).await;
    register(&bob, BOB, &codes).await;
    // Warm up: contacts looked up, gateway settings remembered.
    bounded("send", alice.send_text(BOB, "hello"))
        .await
        .expect("send");
    bounded("fetch", bob.fetch(Duration::ZERO))
        .await
        .expect("fetch");

    let (mut send, mut fetch, mut ack) = (Cost::default(), Cost::default(), Cost::default());
    for i in 0..ROUNDS {
        let before = alice.state_io().await;
        bounded("send", alice.send_text(BOB, &format!("message {i}")))
            .await
            .expect("send");
        send.add(before, alice.state_io().await);
        let before = bob.state_io().await;
        let batch = bounded("fetch", bob.fetch_batch(Duration::from_secs(5)))
            .await
            .expect("fetch");
        assert_eq!(batch.messages.len(), 1, "{batch:?}");
        fetch.add(before, bob.state_io().await);
        let before = bob.state_io().await;
        let up_to = batch.ack_up_to.expect("something to ack");
        bounded("ack", bob.ack(up_to)).await.expect("ack");
        ack.add(before, bob.state_io().await);
    }
    let files = |name: &str| -> u64 {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(name))
            .filter(|e| !e.file_name().to_string_lossy().ends_with(".key"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    eprintln!(
        "client state files: alice {} B, bob {} B",
        files("alice.state"),
        files("bob.state"),
    );
    eprintln!("{}", send.line("send"));
    eprintln!("{}", fetch.line("fetch"));
    eprintln!("{}", ack.line("ack"));
    // Each is one journal record (a send two: the outbox entry goes in with the
    // conversation's MLS ratchet before the request, and out after the
    // answer). Sends and fetches write the changed MLS message secrets, which
    // openmls stores as one value per group (a few KiB); an ack only pointers.
    // The journal is folded into a snapshot now and then (a save that does so
    // syncs four times: file, directory, journal, directory).
    for (cost, records, bytes) in [(&send, 2, 16 * 1024), (&fetch, 1, 8 * 1024), (&ack, 1, 400)] {
        assert!(
            cost.snapshots <= ROUNDS / 20,
            "{} snapshots",
            cost.snapshots
        );
        assert!(
            cost.syncs <= records * ROUNDS + 3 * cost.snapshots,
            "{} syncs",
            cost.syncs
        );
        assert!(cost.bytes < bytes * ROUNDS, "{} B", cost.bytes);
    }
    assert_eq!(ack.snapshots, 0);
}
