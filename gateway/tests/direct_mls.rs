//! 1:1 conversations as two-party MLS groups, end to end on a real gateway:
//! the first message creates the conversation (post-quantum suite), a copy of a
//! device's state taken after it read a message cannot read that message's
//! captured ciphertext (forward secrecy) nor messages after the device renewed
//! its keys (post-compromise security), devices linked or removed on either
//! side join or leave, both sides starting at once settle on one conversation,
//! and a peer without KeyPackages still gets the message sealed to its keys.

mod support;

use rossby_client::{Body, Client};
use rossby_gateway::Gateway;
use rossby_protocol::pb;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{
    RawConn, bounded, client, codes_file, copy_state, drain, fetch_raw, link, raw_device, register,
    register_raw, start_gateway, two_users,
};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";

/// The ciphersuite every conversation runs, as openmls spells it.
const HYBRID_SUITE: &str = "MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519";

fn state_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.state"))
}

fn texts(bodies: &[Body]) -> Vec<String> {
    bodies
        .iter()
        .filter_map(|b| match b {
            Body::Text(t) => Some(t.clone()),
            Body::SentCopy { text, .. } => Some(format!("sent:{text}")),
            _ => None,
        })
        .collect()
}

/// The last envelope queued for `client`, read without acknowledging.
async fn last_queued(gateway: &Gateway, client: &Client) -> pb::QueuedEnvelope {
    let conn = RawConn::connect(gateway).await;
    let queue = fetch_raw(&conn, &raw_device(client).await).await;
    conn.close().await;
    queue.envelopes.last().cloned().expect("a queued envelope")
}

async fn send(from: &Client, to: &str, text: &str) {
    bounded("send", from.send_text(to, text))
        .await
        .unwrap_or_else(|e| panic!("send {text:?} to {to}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_messages_have_forward_secrecy_and_post_compromise_security() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, alice, bob) = two_users(dir.path(), ALICE, BOB).await;
    let bob_path = dir.path().join("b.state");
    let bob_box = bob.box_id().await.unwrap();

    send(&alice, BOB, "first").await;
    let conversations = alice.conversations().await;
    assert_eq!(conversations.len(), 1, "{conversations:?}");
    let c = &conversations[0];
    assert_eq!(c.peer_box, bob_box);
    assert_eq!(c.devices, 2);
    assert_eq!(c.ciphersuite.to_string(), HYBRID_SUITE);
    assert_eq!(texts(&drain(&bob).await), vec!["first"]);
    let bob_view = bob.conversations().await;
    assert_eq!(bob_view.len(), 1);
    assert_eq!(bob_view[0].group_id, c.group_id);
    assert_eq!(bob_view[0].ciphersuite.to_string(), HYBRID_SUITE);

    // Bob's state before the next message, and its ciphertext as an
    // eavesdropper records it.
    let before = dir.path().join("bob-before.state");
    copy_state(&bob_path, &before);
    send(&alice, BOB, "second").await;
    let captured = last_queued(&gateway, &bob).await;

    // Fetching twice without acknowledging shows the message twice (MLS opens
    // it once; the plaintext is kept until acknowledged).
    for _ in 0..2 {
        let batch = bounded("fetch", bob.fetch_batch(Duration::ZERO))
            .await
            .unwrap();
        assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
        assert_eq!(texts(&support::bodies(&batch)), vec!["second"]);
    }
    assert_eq!(texts(&drain(&bob).await), vec!["second"]);

    // Bob's device is seized after it read the message: its state, long-term
    // keys included, no longer opens the recorded ciphertext.
    let after = dir.path().join("bob-after.state");
    copy_state(&bob_path, &after);
    let seized = client(&gateway, after).await;
    let opened = seized.open_envelope(&captured).await;
    assert!(opened.is_err(), "read a past message: {opened:?}");
    // The capture itself is sound: the state from before reading opens it.
    let earlier = client(&gateway, before).await;
    let opened = earlier.open_envelope(&captured).await.unwrap();
    assert_eq!(opened.body, Body::Text("second".into()));

    // With the seized state, messages keep opening until Bob renews his keys.
    send(&alice, BOB, "third").await;
    let third = last_queued(&gateway, &bob).await;
    let opened = seized.open_envelope(&third).await.unwrap();
    assert_eq!(opened.body, Body::Text("third".into()));
    assert_eq!(texts(&drain(&bob).await), vec!["third"]);
    let renewed = bounded("update", bob.update_conversation_keys(ALICE))
        .await
        .unwrap();
    assert!(renewed.epoch > c.epoch, "{renewed:?} after {c:?}");
    // The seized copy follows Bob's Commit as a member would (it reaches
    // Alice's queue), and still cannot read what comes after it.
    let commit = last_queued(&gateway, &alice).await;
    let followed = seized.open_group_envelope(&commit).await;
    assert!(
        followed.is_err(),
        "the seized copy merged its own renewal: {followed:?}"
    );
    assert!(drain(&alice).await.is_empty());
    send(&alice, BOB, "fourth").await;
    let fourth = last_queued(&gateway, &bob).await;
    let opened = seized.open_envelope(&fourth).await;
    assert!(
        opened.is_err(),
        "read a message after the key update: {opened:?}"
    );
    assert_eq!(texts(&drain(&bob).await), vec!["fourth"]);

    // Bob answers in the same conversation.
    send(&bob, ALICE, "hi alice").await;
    assert_eq!(texts(&drain(&alice).await), vec!["hi alice"]);
    assert_eq!(alice.conversations().await.len(), 1);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_linked_or_removed_join_or_leave_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let alice1 = client(&gateway, state_path(dir.path(), "alice1")).await;
    let bob1 = client(&gateway, state_path(dir.path(), "bob1")).await;
    register(&alice1, ALICE, &codes).await;
    register(&bob1, BOB, &codes).await;
    send(&alice1, BOB, "before anyone linked").await;
    assert_eq!(texts(&drain(&bob1).await), vec!["before anyone linked"]);

    // Both link a second device; the next message brings both in.
    let alice2 = client(&gateway, state_path(dir.path(), "alice2")).await;
    let bob2 = client(&gateway, state_path(dir.path(), "bob2")).await;
    link(&alice1, &alice2).await;
    link(&bob1, &bob2).await;
    // A linked device remembers the gateway it was linked through, and its
    // service name, as a registered one does.
    let state = alice2.state().await;
    assert_eq!(state.gateway, gateway.quic_addr().to_string());
    assert_eq!(state.service_name, alice1.state().await.service_name);
    assert!(!state.service_name.is_empty());
    send(&alice1, BOB, "to both of you").await;
    let c = alice1.conversations().await;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].devices, 4, "{c:?}");
    for device in [&bob1, &bob2] {
        // The linked device reads from now on: no history.
        assert_eq!(texts(&drain(device).await), vec!["to both of you"]);
    }
    assert_eq!(texts(&drain(&alice2).await), vec!["sent:to both of you"]);
    // Bob's phone still has Alice's device list from before her laptop was
    // linked: answering must not take the laptop out (and put it back).
    let before = bob1.conversations().await[0].epoch;
    let alice_box = alice1.box_id().await.unwrap().to_string();
    send(&bob1, &alice_box, "answer from an old list").await;
    assert_eq!(bob1.conversations().await[0].epoch, before, "no Commit");
    for device in [&alice1, &alice2] {
        assert_eq!(texts(&drain(device).await), vec!["answer from an old list"]);
    }
    assert_eq!(
        texts(&drain(&bob2).await),
        vec!["sent:answer from an old list"]
    );
    // The new devices write in it too.
    send(&bob2, ALICE, "from bob's laptop").await;
    for device in [&alice1, &alice2] {
        assert_eq!(texts(&drain(device).await), vec!["from bob's laptop"]);
    }
    assert_eq!(texts(&drain(&bob1).await), vec!["sent:from bob's laptop"]);
    let views = [
        alice1.conversations().await,
        alice2.conversations().await,
        bob1.conversations().await,
        bob2.conversations().await,
    ];
    for v in &views {
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].group_id, views[0][0].group_id);
    }

    // Bob removes his laptop: the next message leaves it out.
    bob1.remove_device(bob2.device_id()).await.unwrap();
    send(&alice1, BOB, "after the laptop went").await;
    let c = alice1.conversations().await;
    assert_eq!(c[0].devices, 3, "{c:?}");
    assert_eq!(texts(&drain(&bob1).await), vec!["after the laptop went"]);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_starting_at_once_settle_on_one_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, alice, bob) = two_users(dir.path(), ALICE, BOB).await;
    let (a, b) = tokio::join!(
        alice.send_text(BOB, "hi bob"),
        bob.send_text(ALICE, "hi alice")
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(texts(&drain(&bob).await), vec!["hi bob"]);
    assert_eq!(texts(&drain(&alice).await), vec!["hi alice"]);
    send(&alice, BOB, "again").await;
    send(&bob, ALICE, "again too").await;
    assert_eq!(texts(&drain(&bob).await), vec!["again"]);
    assert_eq!(texts(&drain(&alice).await), vec!["again too"]);
    let (a, b) = (alice.conversations().await, bob.conversations().await);
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 1);
    assert_eq!(
        (a[0].creator_box, a[0].group_id),
        (b[0].creator_box, b[0].group_id)
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_key_packages_gets_the_message_sealed_to_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let alice = client(&gateway, state_path(dir.path(), "alice")).await;
    register(&alice, ALICE, &codes).await;
    // A device that never published a KeyPackage (an implementation without MLS).
    let conn = RawConn::connect(&gateway).await;
    let carol = register_raw(&conn, &codes, CAROL).await;
    send(&alice, CAROL, "no mls here").await;
    assert!(alice.conversations().await.is_empty());
    let queue = fetch_raw(&conn, &carol).await;
    let queued = queue.envelopes.last().expect("queued");
    let list = support::device_list(&conn, &carol, ALICE).await;
    let content = rossby_client::envelopes::open_queued(
        &carol.keys,
        carol.device_id.as_bytes(),
        queued,
        &list,
    )
    .expect("opens with the device's own keys");
    assert_eq!(
        content.body,
        Some(pb::content::Body::Text("no mls here".into()))
    );
    conn.close().await;
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_taken_off_cannot_write_to_a_contacts_only_account() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, alice, bob) = two_users(dir.path(), ALICE, BOB).await;
    alice.update_settings(None, Some(true)).await.unwrap();
    // Looking Bob up makes him a contact: his messages arrive.
    alice.contact(BOB).await.unwrap();
    send(&bob, ALICE, "may I?").await;
    assert_eq!(texts(&drain(&alice).await), vec!["may I?"]);
    // Taken off: refused as an unknown recipient, and forgotten locally.
    bounded("remove contact", alice.remove_contact(BOB))
        .await
        .unwrap();
    assert!(alice.contacts().await.iter().all(|c| c.identifier != BOB));
    let refused = bounded("send", bob.send_text(ALICE, "and now?")).await;
    assert!(
        matches!(refused, Err(rossby_client::Error::UnknownRecipient(_))),
        "{refused:?}"
    );
    assert!(drain(&alice).await.is_empty());
    // An identifier that was never a contact is named as unknown.
    let unknown = alice.remove_contact("carol@example.com").await;
    assert!(
        matches!(unknown, Err(rossby_client::Error::UnknownRecipient(_))),
        "{unknown:?}"
    );
    gateway.shutdown().await;
}
