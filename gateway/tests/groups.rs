//! MLS groups end to end: real gateways on loopback over fjall, SDK clients with
//! their state files. Three users with two devices each converse; messages reach
//! every device exactly once; a device restarted mid-conversation continues; a
//! removed member cannot read later messages even with its old state; two
//! members adding at once do not fork the group.

mod support;

use rossby_client::groups::GroupSummary;
use rossby_client::groups::state::Membership;
use rossby_client::{Body, Client};
use rossby_gateway::Gateway;
use rossby_keyspace::{BoxId, MessageId, RegionId};
use rossby_protocol::pb::{self, Method};
use rossby_storage::tables::groups::{self, Commit, GroupKey, Outcome};
use rossby_storage::tables::outbox::{self, Entry};
use rossby_storage::transact;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use support::{
    RawConn, RawDevice, bounded, client, codes_file, copy_state, drain, fetch_raw, link,
    raw_device, register, rossby, start_gateway,
};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";
const DAVE: &str = "dave@example.com";
const ERIN: &str = "erin@example.com";

fn group_texts(bodies: &[Body]) -> Vec<String> {
    bodies
        .iter()
        .filter_map(|b| match b {
            Body::Group { group, text } => Some(format!("{group}:{text}")),
            _ => None,
        })
        .collect()
}

/// The ciphersuite every group runs, as openmls spells it.
const HYBRID_SUITE: &str = "MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519";

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
        // The creator's and every joiner's group state (from its Welcome) run
        // the hybrid post-quantum ciphersuite.
        assert_eq!(
            g.ciphersuite.map(|s| s.to_string()).as_deref(),
            Some(HYBRID_SUITE)
        );
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

// ----- the outbox: fan-out delivered after the Commit's transaction -----

const GROUP_ID: [u8; 16] = [0x42; 16];

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Commits through storage alone, as a gateway that crashed right after the
/// Commit's transaction leaves it: accepted, its fan-out still in the outbox,
/// recorded at `at_ms`.
#[allow(clippy::too_many_arguments)]
async fn commit_without_delivery(
    gateway: &Gateway,
    by: &RawDevice,
    epoch: u64,
    add: &[BoxId],
    payload: &[u8],
    welcome: &[u8],
    at_ms: u64,
) -> Entry {
    let store = gateway.store();
    let commit = Commit {
        group: GroupKey {
            creator: by.box_id,
            group_id: GROUP_ID,
        },
        sender_box: by.box_id,
        sender_device: by.device_id,
        sender_identity_key: Some(by.keys.identity_public()),
        message_id: MessageId::new(),
        epoch,
        add,
        remove: &[],
        envelope: payload,
        welcome_envelope: welcome,
        welcome_boxes: if welcome.is_empty() { &[] } else { add },
    };
    let limits = store.limits.clone();
    let outcome = transact!(store, |txn| groups::commit(
        txn, &limits, 256, &commit, at_ms
    )
    .await)
    .expect("the Commit's transaction");
    match outcome {
        Outcome::Done(committed) => committed.fan_out.expect("a fan-out"),
        other => panic!("the Commit was not accepted: {other:?}"),
    }
}

async fn pending_entries(gateway: &Gateway, region: RegionId) -> usize {
    let store = gateway.store();
    transact!(store, |txn| outbox::pending(txn, region, None, 1000).await)
        .unwrap()
        .len()
}

/// The envelopes queued for `device`, oldest first (nothing acknowledged).
async fn queue_of(conn: &RawConn, device: &RawDevice) -> Vec<Vec<u8>> {
    fetch_raw(conn, device)
        .await
        .envelopes
        .into_iter()
        .map(|e| e.envelope)
        .collect()
}

fn count(queue: &[Vec<u8>], payload: &[u8]) -> usize {
    queue.iter().filter(|e| e.as_slice() == payload).count()
}

/// A GroupSend of an application message made in `epoch` (framed as the
/// gateway checks; `payload` stands for its ciphertext).
fn group_send(creator: &RawDevice, epoch: u64, payload: &[u8]) -> pb::GroupSendRequest {
    use rossby_protocol::mls;
    let mut mls_group = creator.box_id.as_bytes().to_vec();
    mls_group.extend_from_slice(&GROUP_ID);
    let framed = mls::frame_private(&mls_group, epoch, mls::ContentType::Application, payload)
        .expect("a small message frames");
    let envelope = pb::Envelope {
        version: 1,
        group: Some(pb::GroupMessage {
            creator_box: creator.box_id.as_bytes().to_vec(),
            group_id: GROUP_ID.to_vec(),
            mls: framed,
            ..pb::GroupMessage::default()
        }),
        ..pb::Envelope::default()
    };
    pb::GroupSendRequest {
        creator_box: creator.box_id.as_bytes().to_vec(),
        group_id: GROUP_ID.to_vec(),
        message_id: MessageId::new().as_bytes().to_vec(),
        envelope: prost::Message::encode_to_vec(&envelope),
        epoch,
        attachments: Vec::new(),
    }
}

fn group_info(creator: &RawDevice) -> pb::GroupInfoRequest {
    pb::GroupInfoRequest {
        creator_box: creator.box_id.as_bytes().to_vec(),
        group_id: GROUP_ID.to_vec(),
    }
}

/// Alice, Bob and Carol registered raw; Alice's group created (epoch 0).
async fn three_raw(gateway: &Gateway, dir: &Path) -> (RawConn, [RawDevice; 3]) {
    let codes = codes_file(&dir.join("gw"));
    let conn = RawConn::connect(gateway).await;
    let alice = support::register_raw(&conn, &codes, ALICE).await;
    let bob = support::register_raw(&conn, &codes, BOB).await;
    let carol = support::register_raw(&conn, &codes, CAROL).await;
    let create = pb::CreateGroupRequest {
        group_id: GROUP_ID.to_vec(),
    };
    let _: pb::CreateGroupResponse =
        support::ok(&conn.call(&alice, Method::CreateGroup, &create).await);
    (conn, [alice, bob, carol])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_fan_out_is_resumed_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let (conn, [alice, bob, carol]) = three_raw(&gateway, dir.path()).await;
    let region = alice.box_id.home_region();

    // Alice's gateway crashed a minute ago, right after her Commit's transaction.
    let add = [bob.box_id, carol.box_id];
    commit_without_delivery(&gateway, &alice, 0, &add, b"c1", b"c1+w", now_ms() - 60_000).await;
    assert_eq!(pending_entries(&gateway, region).await, 1);
    for device in [&alice, &bob, &carol] {
        assert!(
            queue_of(&conn, device).await.is_empty(),
            "delivered too early"
        );
    }

    // The resume delivers it once, and running it again delivers nothing twice.
    let api = gateway.api();
    assert_eq!(
        bounded("resume", api.resume_outboxes(region))
            .await
            .unwrap(),
        1
    );
    assert_eq!(pending_entries(&gateway, region).await, 0);
    assert_eq!(
        bounded("resume", api.resume_outboxes(region))
            .await
            .unwrap(),
        0
    );
    assert_eq!(queue_of(&conn, &alice).await, vec![b"c1".to_vec()]);
    for device in [&bob, &carol] {
        assert_eq!(queue_of(&conn, device).await, vec![b"c1+w".to_vec()]);
    }

    // A fan-out recorded just now is left to the request delivering it...
    commit_without_delivery(&gateway, &alice, 1, &[], b"c2", b"", now_ms()).await;
    assert_eq!(
        bounded("resume", api.resume_outboxes(region))
            .await
            .unwrap(),
        0
    );
    assert_eq!(pending_entries(&gateway, region).await, 1);
    // ...and any request on the group delivers it before answering: GroupInfo
    // never shows epoch 2 to a member whose box lacks Commit 2.
    let info: pb::GroupInfoResponse = support::ok(
        &conn
            .call(&carol, Method::GroupInfo, &group_info(&alice))
            .await,
    );
    assert_eq!(info.state.unwrap().epoch, 2);
    assert_eq!(pending_entries(&gateway, region).await, 0);
    for device in [&alice, &bob, &carol] {
        let queue = queue_of(&conn, device).await;
        assert_eq!(queue.last().unwrap(), b"c2");
        assert_eq!(count(&queue, b"c2"), 1);
    }
    conn.close().await;
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_send_never_lands_before_the_commit_of_its_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let (conn, [alice, bob, carol]) = three_raw(&gateway, dir.path()).await;
    let region = alice.box_id.home_region();
    // Alice adds Bob through the API: the answer comes once Bob has the Commit.
    let add_bob = pb::GroupCommitRequest {
        creator_box: alice.box_id.as_bytes().to_vec(),
        group_id: GROUP_ID.to_vec(),
        epoch: 0,
        message_id: MessageId::new().as_bytes().to_vec(),
        add_boxes: vec![bob.box_id.as_bytes().to_vec()],
        envelope: support::commit_envelope(alice.box_id, GROUP_ID, 0, b"c1", None),
        welcome_envelope: support::commit_envelope(alice.box_id, GROUP_ID, 0, b"c1", Some(b"w")),
        welcome_boxes: vec![bob.box_id.as_bytes().to_vec()],
        ..pb::GroupCommitRequest::default()
    };
    let reply: pb::GroupCommitResponse =
        support::ok(&conn.call(&alice, Method::GroupCommit, &add_bob).await);
    assert_eq!(reply.state.unwrap().epoch, 1);
    assert_eq!(
        queue_of(&conn, &bob).await,
        vec![add_bob.welcome_envelope.clone()]
    );
    assert_eq!(pending_entries(&gateway, region).await, 0);

    // Rounds in which a Commit adding nobody new is accepted but not delivered
    // (its gateway crashed), and then a member sends in the new epoch while the
    // resume and a GroupInfo deliver the same fan-out at the same time.
    let members = [&alice, &bob];
    for round in 1..=3u64 {
        let commit = format!("commit-{round}").into_bytes();
        let add: &[BoxId] = if round == 2 { &[carol.box_id] } else { &[] };
        let welcome = if round == 2 {
            b"welcome".as_slice()
        } else {
            b""
        };
        commit_without_delivery(
            &gateway,
            &alice,
            round,
            add,
            &commit,
            welcome,
            now_ms() - 60_000,
        )
        .await;
        let sender = members[(round % 2) as usize];
        let send = group_send(&alice, round + 1, format!("message-{round}").as_bytes());
        let message = send.envelope.clone();
        let api = gateway.api();
        let info = group_info(&alice);
        let (sent, info, resumed) = tokio::join!(
            conn.call(sender, Method::GroupSend, &send),
            conn.call(&alice, Method::GroupInfo, &info),
            api.resume_outboxes(region),
        );
        let sent: pb::GroupSendResponse = support::ok(&sent);
        let expected = if round >= 2 { 3 } else { 2 };
        assert_eq!(sent.results.len(), expected);
        for r in &sent.results {
            assert_eq!(r.status, pb::Status::Ok as i32, "{r:?}");
        }
        let _: pb::GroupInfoResponse = support::ok(&info);
        resumed.unwrap();
        assert_eq!(pending_entries(&gateway, region).await, 0);

        let mut recipients = vec![&alice, &bob];
        if round >= 2 {
            recipients.push(&carol);
        }
        for device in recipients {
            let queue = queue_of(&conn, device).await;
            let handshake = if round == 2 && device.box_id == carol.box_id {
                b"welcome".to_vec()
            } else {
                commit.clone()
            };
            assert_eq!(count(&queue, &handshake), 1, "round {round}: {queue:?}");
            assert_eq!(count(&queue, &message), 1, "round {round}: {queue:?}");
            let at = |p: &[u8]| queue.iter().position(|e| e.as_slice() == p).unwrap();
            assert!(
                at(&handshake) < at(&message),
                "round {round}: a message of epoch {} came before its Commit: {queue:?}",
                round + 1
            );
        }
    }
    conn.close().await;
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_groups_with_their_ciphersuite() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let state = dir.path().join("alice.state");
    {
        let alice = client(&gateway, state.clone()).await;
        register(&alice, ALICE, &codes_file(&dir.path().join("gw"))).await;
        bounded("create", alice.create_group("friends"))
            .await
            .unwrap();
    }
    let (code, out, err) = rossby(&state, &["group", "list"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("friends epoch "), "{out}");
    assert!(
        out.ends_with(&format!(
            " members {ALICE} devices 1 suite={HYBRID_SUITE}\n"
        )),
        "{out}"
    );
}
