//! Receipts, typing indicators and locations between real clients through a
//! real gateway on loopback: what the gateway stores and pushes, and what each
//! device decrypts.

mod support;

use rossby_client::Body;
use rossby_client::sdk::ReceiptedMessage;
use rossby_protocol::pb;
use support::{
    bodies, bounded, client, codes_file, fetch_now, link, register, start_gateway, two_users,
};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

fn receipt(kind: pb::ReceiptKind, previews: &[(&[u8; 16], &str)]) -> Body {
    Body::Receipt {
        kind,
        messages: previews
            .iter()
            .map(|(id, preview)| ReceiptedMessage {
                message_id: **id,
                preview: Some(preview.to_string()),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_name_what_was_delivered_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, alice, bob) = two_users(dir.path(), ALICE, BOB).await;
    bob.contact(ALICE).await.unwrap();

    let first = alice.send_text(BOB, "hello bob").await.unwrap();
    let second = alice.send_text(BOB, "are you there?").await.unwrap();
    let batch = fetch_now(&bob).await;
    assert_eq!(batch.messages.len(), 2);
    assert!(bob.read_receipts().await, "read receipts are on by default");
    let sent = bob
        .send_receipts(&batch, pb::ReceiptKind::Read)
        .await
        .unwrap();
    assert_eq!(sent.len(), 1, "one receipt per sender");
    assert!(sent[0].1.is_ok(), "{:?}", sent[0].1);

    // Alice sees which of her messages Bob read.
    let batch = fetch_now(&alice).await;
    assert_eq!(
        bodies(&batch),
        vec![receipt(
            pb::ReceiptKind::Read,
            &[
                (first.message_id.as_bytes(), "hello bob"),
                (second.message_id.as_bytes(), "are you there?")
            ]
        )]
    );
    // Receipts are never answered with receipts.
    let answered = alice
        .send_receipts(&batch, pb::ReceiptKind::Read)
        .await
        .unwrap();
    assert!(answered.is_empty());
    assert!(fetch_now(&bob).await.messages.is_empty());

    // With read receipts off, Bob's client says only that messages arrived.
    bob.set_read_receipts(false).await.unwrap();
    assert!(!bob.read_receipts().await);
    let third = alice.send_text(BOB, "ping").await.unwrap();
    let batch = fetch_now(&bob).await;
    bob.send_receipts(&batch, pb::ReceiptKind::Read)
        .await
        .unwrap();
    assert_eq!(
        bodies(&fetch_now(&alice).await),
        vec![receipt(
            pb::ReceiptKind::Delivered,
            &[(third.message_id.as_bytes(), "ping")]
        )]
    );
    // The setting survives a restart of the client.
    drop(bob);
    let bob = client(&gateway, dir.path().join("b.state")).await;
    assert!(!bob.read_receipts().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_online_devices_only_and_is_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, alice, bob) = two_users(dir.path(), ALICE, BOB).await;
    bob.contact(ALICE).await.unwrap();

    // Bob is offline: the indicator reaches nobody and nothing waits for him.
    alice.send_typing(BOB, true).await.unwrap();
    assert!(fetch_now(&bob).await.messages.is_empty());

    let mut pushes = bounded("subscribe", bob.subscribe()).await.unwrap();
    alice.send_typing(BOB, true).await.unwrap();
    alice.send_typing(BOB, false).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let push = bounded("a push", pushes.next()).await.unwrap();
        let Some(pb::push::Event::Ephemeral(e)) = push.and_then(|p| p.event) else {
            continue;
        };
        let m = bob.open_ephemeral(&e).await.unwrap();
        assert_eq!(m.sender, ALICE);
        assert_eq!(m.seq, 0, "ephemeral messages have no sequence number");
        seen.push(m.body);
    }
    assert_eq!(seen, vec![Body::Typing(true), Body::Typing(false)]);
    assert!(fetch_now(&bob).await.messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_reach_the_recipient_and_the_senders_other_devices() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let alice = client(&gateway, dir.path().join("alice.state")).await;
    let alice_phone = client(&gateway, dir.path().join("alice-phone.state")).await;
    let bob = client(&gateway, dir.path().join("bob.state")).await;
    let alice_box = register(&alice, ALICE, &codes).await;
    link(&alice, &alice_phone).await;
    let bob_box = register(&bob, BOB, &codes).await;

    let location = rossby_client::messages::parse_location("52.5200,13.4050").unwrap();
    let message = pb::RichMessage {
        text: "meet here".into(),
        attachments: Vec::new(),
        location: Some(location),
    };
    let sent = alice.send_message(BOB, message.clone()).await.unwrap();
    assert_eq!(sent.to_box, bob_box);
    let batch = fetch_now(&bob).await;
    assert_eq!(bodies(&batch), vec![Body::Message(message.clone())]);
    assert_eq!(batch.messages[0].sender_box, alice_box);
    assert_eq!(
        bodies(&fetch_now(&alice_phone).await),
        vec![Body::SentMessage {
            to_box: bob_box,
            to: BOB.into(),
            message: message.clone(),
        }]
    );

    // Out-of-range coordinates are refused before anything is sent.
    let far = pb::RichMessage {
        location: Some(pb::Location {
            latitude: 91.0,
            ..pb::Location::default()
        }),
        ..message
    };
    assert!(matches!(
        alice.send_message(BOB, far).await,
        Err(rossby_client::Error::Invalid(_))
    ));
    assert!(alice.outbox().await.is_empty());
    assert!(fetch_now(&bob).await.messages.is_empty());
}
