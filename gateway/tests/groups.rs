//! MLS groups end to end: real gateways on loopback over fjall, SDK clients with
//! their state files. Three users with two devices each converse; messages reach
//! every device exactly once; a device restarted mid-conversation continues; a
//! removed member cannot read later messages even with its old state; two
//! members adding at once do not fork the group.

mod support;

use rossby_client::groups::GroupSummary;
use rossby_client::groups::state::Membership;
use rossby_client::{Batch, Body, Client};
use rossby_gateway::Gateway;
use rossby_protocol::pb;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{
    RawConn, RawDevice, bounded, client, codes_file, credentials_of, fetch_raw, keys_of, link,
    register, start_gateway,
};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";
const DAVE: &str = "dave@example.com";
const ERIN: &str = "erin@example.com";

/// Fetches (acknowledging) until the queue is empty; fails on rejections.
async fn drain(client: &Client) -> Vec<Body> {
    let mut bodies = Vec::new();
    loop {
        let batch: Batch = bounded("fetch", client.fetch(Duration::ZERO))
            .await
            .expect("fetch");
        assert!(batch.rejected.is_empty(), "rejected: {:?}", batch.rejected);
        bodies.extend(batch.messages.iter().map(|m| m.body.clone()));
        if batch.ack_up_to.is_none_or(|a| a >= batch.last_seq) {
            return bodies;
        }
    }
}

fn group_texts(bodies: &[Body]) -> Vec<String> {
    bodies
        .iter()
        .filter_map(|b| match b {
            Body::Group { group, text } => Some(format!("{group}:{text}")),
            _ => None,
        })
        .collect()
}

fn summary(groups: &[GroupSummary], name: &str) -> GroupSummary {
    groups
        .iter()
        .find(|g| g.name == name && g.membership == Membership::Active)
        .cloned()
        .unwrap_or_else(|| panic!("no active group {name} in {groups:?}"))
}

/// A user with two devices (the second one linked).
async fn user(gateway: &Gateway, dir: &Path, identifier: &str) -> (Client, Client) {
    let codes = codes_file(&dir.join("gw"));
    let first = client(gateway, state_path(dir, identifier, 1)).await;
    let second = client(gateway, state_path(dir, identifier, 2)).await;
    register(&first, identifier, &codes).await;
    link(&first, &second).await;
    // The first device learns about the second.
    first.devices().await.unwrap();
    (first, second)
}

fn state_path(dir: &Path, identifier: &str, n: u8) -> PathBuf {
    dir.join(format!("{identifier}-{n}.state"))
}

/// Copies a key-file protected state file (and its key file) to `to`.
fn copy_state(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let key = |p: &Path| PathBuf::from(format!("{}.key", p.display()));
    std::fs::copy(key(from), key(to)).unwrap();
}

/// A raw protocol view of an SDK client (to read its queue without acking).
async fn raw_device(client: &Client) -> RawDevice {
    RawDevice {
        keys: keys_of(client).await,
        device_id: client.device_id(),
        box_id: client.box_id().await.unwrap(),
        creds: credentials_of(client).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_with_two_devices_each() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let (alice1, alice2) = user(&gateway, dir.path(), ALICE).await;
    let (bob1, bob2) = user(&gateway, dir.path(), BOB).await;
    let (carol1, carol2) = user(&gateway, dir.path(), CAROL).await;

    // Alice creates the group (her laptop joins) and adds Bob and Carol.
    let created = bounded("create", alice1.create_group("friends"))
        .await
        .unwrap();
    assert_eq!(created.devices, 2);
    bounded("add bob", alice1.add_to_group("friends", BOB))
        .await
        .unwrap();
    let g = bounded("add carol", alice1.add_to_group("friends", CAROL))
        .await
        .unwrap();
    assert_eq!(g.devices, 6);
    assert_eq!(g.members.len(), 3);
    // Adding again finds nobody new.
    assert!(alice1.add_to_group("friends", CAROL).await.is_err());

    let others = [&alice2, &bob1, &bob2, &carol1, &carol2];
    for device in others {
        let bodies = drain(device).await;
        assert!(
            bodies.contains(&Body::GroupJoined("friends".into())),
            "{bodies:?}"
        );
    }
    for device in others.iter().chain([&&alice1]) {
        let g = summary(&device.groups().await, "friends");
        assert_eq!(g.epoch, 3, "every device is at the same epoch");
        assert_eq!(g.devices, 6);
    }

    // Every device sends; every other device gets each message exactly once.
    let all = [&alice1, &alice2, &bob1, &bob2, &carol1, &carol2];
    for (i, device) in all.iter().enumerate() {
        let report = bounded(
            "group send",
            device.send_to_group("friends", &format!("m{i}")),
        )
        .await
        .unwrap();
        assert_eq!(
            report.delivered,
            3,
            "{report:?} {:?}",
            device.groups().await
        );
        assert_eq!(report.failed, 0);
    }
    for (i, device) in all.iter().enumerate() {
        let mut got = group_texts(&drain(device).await);
        got.sort();
        let mut want: Vec<String> = (0..all.len())
            .filter(|j| *j != i)
            .map(|j| format!("friends:m{j}"))
            .collect();
        want.sort();
        assert_eq!(got, want, "device {i}");
        assert!(drain(device).await.is_empty(), "nothing twice");
    }

    // Carol's laptop goes away mid-conversation and comes back from its state file.
    bob1.send_to_group("friends", "while you were away")
        .await
        .unwrap();
    carol2.close().await;
    drop(carol2);
    bob2.send_to_group("friends", "still away").await.unwrap();
    let carol2 = client(&gateway, state_path(dir.path(), CAROL, 2)).await;
    assert_eq!(
        group_texts(&drain(&carol2).await),
        vec!["friends:while you were away", "friends:still away"]
    );
    carol2.send_to_group("friends", "back").await.unwrap();
    for device in [&alice1, &alice2, &bob1, &bob2, &carol1] {
        let texts = group_texts(&drain(device).await);
        assert!(texts.contains(&"friends:back".to_string()), "{texts:?}");
    }

    // Keep a copy of Carol's phone as it is before she is removed.
    let old_carol_path = dir.path().join("carol-old.state");
    copy_state(&state_path(dir.path(), CAROL, 1), &old_carol_path);

    // Bob updates his keys; Alice removes Carol.
    bob1.update_group_keys("friends").await.unwrap();
    let g = alice1.remove_from_group("friends", CAROL).await.unwrap();
    assert_eq!(g.devices, 4);
    for device in [&carol1, &carol2] {
        let bodies = drain(device).await;
        assert!(
            bodies.contains(&Body::GroupRemoved("friends".into())),
            "{bodies:?}"
        );
        assert!(device.send_to_group("friends", "x").await.is_err());
    }

    // A message after the removal: Carol's devices, old state included, cannot
    // read it even when handed the ciphertext directly.
    alice2
        .send_to_group("friends", "carol must not read this")
        .await
        .unwrap();
    let conn = RawConn::connect(&gateway).await;
    let bob_raw = raw_device(&bob1).await;
    let queue = fetch_raw(&conn, &bob_raw).await;
    let secret: pb::QueuedEnvelope = queue.envelopes.last().cloned().unwrap();
    conn.close().await;
    let old_carol = client(&gateway, old_carol_path).await;
    for (who, device) in [("carol", &carol1), ("carol (old state)", &old_carol)] {
        let opened = device.open_group_envelope(&secret).await;
        assert!(
            opened.is_err(),
            "{who} read a message after removal: {opened:?}"
        );
    }
    for device in [&alice1, &bob1, &bob2] {
        let texts = group_texts(&drain(device).await);
        assert!(
            texts.contains(&"friends:carol must not read this".to_string()),
            "{texts:?}"
        );
    }
    // A duplicate of a message already read is rejected, not shown twice.
    let again = bob1.open_group_envelope(&secret).await;
    assert!(again.is_err(), "{again:?}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_do_not_fork_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let mut clients = BTreeMap::new();
    for id in [ALICE, BOB, CAROL, DAVE, ERIN] {
        let c = client(&gateway, state_path(dir.path(), id, 1)).await;
        register(&c, id, &codes).await;
        clients.insert(id, c);
    }
    let alice = &clients[ALICE];
    let bob = &clients[BOB];
    alice.create_group("team").await.unwrap();
    alice.add_to_group("team", BOB).await.unwrap();
    drain(bob).await;

    // Bob has not seen Alice's latest Commit when he adds Erin: his Commit
    // conflicts, he catches up and commits again.
    alice.add_to_group("team", DAVE).await.unwrap();
    let g = bounded("stale add", bob.add_to_group("team", ERIN))
        .await
        .unwrap();
    assert_eq!(g.epoch, 3);
    assert_eq!(g.members.len(), 4);

    // Both add at the same moment.
    let (a, b) = tokio::join!(
        bounded("alice adds carol", alice.add_to_group("team", CAROL)),
        bounded("bob updates", bob.update_group_keys("team")),
    );
    a.unwrap();
    b.unwrap();

    // Everybody converges on one epoch and one membership.
    let mut epochs = Vec::new();
    for (id, c) in &clients {
        let bodies = drain(c).await;
        assert!(
            !bodies.iter().any(|b| matches!(b, Body::GroupRemoved(_))),
            "{id}: {bodies:?}"
        );
        let g = summary(&c.groups().await, "team");
        assert_eq!(g.members.len(), 5, "{id}");
        assert_eq!(g.devices, 5, "{id}");
        epochs.push(g.epoch);
    }
    assert!(epochs.iter().all(|e| *e == 5), "epochs {epochs:?}");
    // And they can all read each other.
    clients[ERIN]
        .send_to_group("team", "hello from erin")
        .await
        .unwrap();
    for (id, c) in &clients {
        if *id == ERIN {
            continue;
        }
        assert_eq!(
            group_texts(&drain(c).await),
            vec!["team:hello from erin"],
            "{id}"
        );
    }

    // Leaving: Dave leaves; the others commit his removal; he gets nothing more.
    clients[DAVE].leave_group("team").await.unwrap();
    for (id, c) in &clients {
        if *id != DAVE {
            drain(c).await;
        }
    }
    clients[CAROL]
        .send_to_group("team", "after dave")
        .await
        .unwrap();
    for (id, c) in &clients {
        let texts = group_texts(&drain(c).await);
        if *id == DAVE {
            assert!(texts.is_empty(), "{texts:?}");
        } else if *id != CAROL {
            assert_eq!(texts, vec!["team:after dave"], "{id}");
        }
    }
    for (id, c) in &clients {
        if *id != DAVE {
            let g = summary(&c.groups().await, "team");
            assert_eq!(g.members.len(), 4, "{id}: {:?}", g.members);
        }
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_published_on_authorize_and_refilled() {
    use rossby_client::groups::{KEY_PACKAGE_BATCH, KEY_PACKAGE_LOW};
    use rossby_protocol::pb::Method;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let alice = client(&gateway, state_path(dir.path(), ALICE, 1)).await;
    let alice_box = register(&alice, ALICE, &codes).await;
    let conn = RawConn::connect(&gateway).await;
    let bob = support::register_raw(&conn, &codes, BOB).await;
    let claim = pb::ClaimKeyPackagesRequest {
        box_id: alice_box.as_bytes().to_vec(),
    };
    // A batch was published on authorize: claims drain it, one package each.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..(KEY_PACKAGE_BATCH - KEY_PACKAGE_LOW + 1) {
        let reply: pb::ClaimKeyPackagesResponse =
            support::ok(&conn.call(&bob, Method::ClaimKeyPackages, &claim).await);
        assert_eq!(reply.packages.len(), 1);
        assert!(!reply.packages[0].last_resort);
        assert!(seen.insert(reply.packages[0].key_package.clone()));
    }
    // Below the low-water mark: the device refills to a full batch.
    let stored = alice.publish_key_packages().await.unwrap();
    assert_eq!(stored, KEY_PACKAGE_BATCH);
    for _ in 0..KEY_PACKAGE_BATCH {
        let reply: pb::ClaimKeyPackagesResponse =
            support::ok(&conn.call(&bob, Method::ClaimKeyPackages, &claim).await);
        assert!(!reply.packages[0].last_resort);
        assert!(seen.insert(reply.packages[0].key_package.clone()));
    }
    // Then the last-resort package, again and again; a group add still works.
    for _ in 0..2 {
        let reply: pb::ClaimKeyPackagesResponse =
            support::ok(&conn.call(&bob, Method::ClaimKeyPackages, &claim).await);
        assert!(reply.packages[0].last_resort);
    }
    conn.close().await;
    let carol = client(&gateway, state_path(dir.path(), CAROL, 1)).await;
    register(&carol, CAROL, &codes).await;
    carol.create_group("g").await.unwrap();
    let g = carol.add_to_group("g", ALICE).await.unwrap();
    assert_eq!(g.devices, 2);
    let bodies = drain(&alice).await;
    assert_eq!(bodies, vec![Body::GroupJoined("g".into())]);
    gateway.shutdown().await;
}
