//! Mail from senders who can no longer be looked up is still verified: every
//! queued envelope carries the sending device's identity key as the gateway
//! recorded it when it accepted the envelope (docs/security.md §8.3), and a
//! recipient verifies with it when the sender's device list no longer has the
//! device: the sender blocked the recipient, deleted the account, or removed
//! the device after sending.

mod support;

use rossby_client::{Body, Client};
use std::path::Path;
use support::{
    RawConn, bounded, client, codes_file, drain, fetch_raw, link, raw_device, register,
    start_gateway,
};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";
const DAVE: &str = "dave@example.com";

fn texts(bodies: &[Body]) -> Vec<String> {
    bodies
        .iter()
        .filter_map(|b| match b {
            Body::Text(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

async fn user(gateway: &rossby_gateway::Gateway, dir: &Path, name: &str, id: &str) -> Client {
    let c = client(gateway, dir.join(format!("{name}.state"))).await;
    register(&c, id, &codes_file(&dir.join("gw"))).await;
    c
}

async fn send(from: &Client, to: &str, text: &str) {
    bounded("send", from.send_text(to, text))
        .await
        .expect("send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_who_blocked_left_or_removed_the_device_are_still_verified() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let bob = user(&gateway, dir.path(), "bob", BOB).await;
    let alice = user(&gateway, dir.path(), "alice", ALICE).await;
    let carol = user(&gateway, dir.path(), "carol", CAROL).await;
    let dave = user(&gateway, dir.path(), "dave", DAVE).await;
    let dave_tablet = client(&gateway, dir.path().join("dave-tablet.state")).await;
    link(&dave, &dave_tablet).await;
    let mut senders = Vec::new();
    for sender in [&alice, &carol, &dave_tablet] {
        let raw = raw_device(sender).await;
        senders.push((raw.device_id, raw.keys.identity_public()));
    }

    // Each writes to Bob, then becomes impossible to look up.
    send(&alice, BOB, "from alice, who then blocks bob").await;
    alice.block(BOB).await.expect("block");
    send(&carol, BOB, "from carol, who then leaves").await;
    carol.delete_account().await.expect("delete account");
    send(&dave_tablet, BOB, "from dave's tablet, removed since").await;
    dave.remove_device(dave_tablet.device_id())
        .await
        .expect("remove device");

    // What the gateway recorded: each sending device's identity key.
    let conn = RawConn::connect(&gateway).await;
    let raw_bob = raw_device(&bob).await;
    let queued = fetch_raw(&conn, &raw_bob).await;
    let recorded: Vec<(Vec<u8>, Vec<u8>)> = queued
        .envelopes
        .iter()
        .map(|e| (e.sender_device.clone(), e.sender_identity_key.clone()))
        .collect();
    for (device, key) in &senders {
        assert!(
            recorded
                .iter()
                .any(|(d, k)| d.as_slice() == device.as_bytes() && k == key),
            "the envelopes of device {device} carry its identity key"
        );
    }
    assert!(
        recorded.iter().all(|(_, k)| k.len() == 32),
        "every envelope (the Commits that start the conversations too)"
    );
    conn.close().await;

    // Bob reads all three: verified with the recorded keys.
    let mut read = texts(&drain(&bob).await);
    read.sort();
    assert_eq!(
        read,
        [
            "from alice, who then blocks bob",
            "from carol, who then leaves",
            "from dave's tablet, removed since",
        ]
    );
    gateway.shutdown().await;
}
