//! End-to-end conversations through real gateways on loopback (fjall in temporary
//! directories) with the client SDK: two users, one with two linked devices,
//! messages both ways, sent-message copies on the sender's other device,
//! idempotent retries, fetches woken by sends, and two gateways sharing one store.

mod support;

use prost::Message;
use rossby_client::Body;
use rossby_gateway::Config;
use rossby_gateway::config::StorageConfig;
use rossby_keyspace::{BoxId, MessageId};
use rossby_protocol::crypto::EnvelopeHeader;
use rossby_protocol::pb::{self, Method, Status};
use rossby_storage::BackendConfig;
use rossby_storage::kv::fjall::FjallConfig;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{
    WAIT, bodies, bounded, client, client_at, codes_file, credentials_of, fetch_now, keys_of, link,
    register, start_gateway, start_with,
};

const ALICE: &str = "alice@example.com";
const BOB: &str = "+14155550123";

fn text(s: &str) -> Body {
    Body::Text(s.to_string())
}

/// Waits (bounded) until `gateway` is handling at least one request.
async fn until_in_flight(gateway: &rossby_gateway::Gateway) {
    bounded("a request in flight", async {
        while gateway.requests_in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_three_devices_converse() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let alice1 = client(&gateway, dir.path().join("alice1.state")).await;
    let alice2 = client(&gateway, dir.path().join("alice2.state")).await;
    let bob = Arc::new(client(&gateway, dir.path().join("bob.state")).await);

    let alice_box = register(&alice1, ALICE, &codes).await;
    assert_eq!(link(&alice1, &alice2).await, alice_box);
    let bob_box = register(&bob, BOB, &codes).await;
    assert_ne!(alice_box, bob_box);
    assert_eq!(alice1.devices().await.unwrap().len(), 2);
    assert_eq!(alice2.identifier().await, ALICE);

    // Alice's first device writes to Bob.
    let sent = alice1.send_text(BOB, "hello bob").await.unwrap();
    assert_eq!(sent.to_box, bob_box);
    let batch = fetch_now(&bob).await;
    assert_eq!(bodies(&batch), vec![text("hello bob")]);
    let m = &batch.messages[0];
    assert_eq!(m.sender_box, alice_box);
    assert_eq!(m.sender_device, alice1.device_id());
    assert_eq!(m.seq, sent.seq);
    assert_eq!(m.message_id, *sent.message_id.as_bytes());

    // Her other device sees what she sent; the sending device gets no copy.
    let batch = fetch_now(&alice2).await;
    assert_eq!(
        bodies(&batch),
        vec![Body::SentCopy {
            to_box: bob_box,
            to: BOB.into(),
            text: "hello bob".into(),
        }]
    );
    assert_eq!(batch.messages[0].sender_device, alice1.device_id());
    assert!(fetch_now(&alice1).await.messages.is_empty());

    // Bob answers: both of Alice's devices get it.
    let sent = bob.send_text(ALICE, "hello alice").await.unwrap();
    assert_eq!(sent.to_box, alice_box);
    for device in [&alice1, &alice2] {
        let batch = fetch_now(device).await;
        assert_eq!(bodies(&batch), vec![text("hello alice")]);
        assert_eq!(batch.messages[0].sender_box, bob_box);
        assert_eq!(batch.messages[0].sender_device, bob.device_id());
    }
    // Bob's own copy (for his other devices, he has none) is not shown to him.
    assert!(fetch_now(&bob).await.messages.is_empty());

    // Alice's second device writes; the first sees the copy.
    alice2.send_text(BOB, "from my laptop").await.unwrap();
    let batch = fetch_now(&bob).await;
    assert_eq!(bodies(&batch), vec![text("from my laptop")]);
    assert_eq!(batch.messages[0].sender_device, alice2.device_id());
    let batch = fetch_now(&alice1).await;
    assert_eq!(
        bodies(&batch),
        vec![Body::SentCopy {
            to_box: bob_box,
            to: BOB.into(),
            text: "from my laptop".into(),
        }]
    );

    // A send retried with the same message id (here on a new connection, as after
    // a lost reply) is answered with the original seq and delivered once.
    let creds = credentials_of(&alice1).await;
    let keys = keys_of(&alice1).await;
    let bob_list = alice1
        .state()
        .await
        .contacts
        .iter()
        .find(|c| c.box_id == bob_box.as_bytes())
        .and_then(|c| c.devices.clone())
        .expect("Bob's devices are known");
    let message_id = MessageId::new();
    let header = EnvelopeHeader {
        sender_box: *alice_box.as_bytes(),
        sender_device: *alice1.device_id().as_bytes(),
        message_id: *message_id.as_bytes(),
    };
    let content = pb::Content {
        access_secret: Vec::new(),
        sent_at_ms: u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap(),
        body: Some(pb::content::Body::Text("only once".into())),
    };
    let envelope =
        rossby_client::envelopes::seal_for_list(&keys, &header, &content, &bob_list, None).unwrap();
    let body = pb::SendRequest {
        message_id: message_id.as_bytes().to_vec(),
        recipients: vec![pb::Recipient {
            box_id: bob_box.as_bytes().to_vec(),
            device_list_version: bob_list.version,
            envelope,
        }],
        ephemeral: false,
        attachments: Vec::new(),
        wake: pb::Wake::High as i32,
    }
    .encode_to_vec();
    let mut seqs = Vec::new();
    for attempt in 0..3 {
        if attempt == 2 {
            alice1.close().await;
        }
        let response = alice1
            .connection()
            .call(Method::Send, &body, Some(&creds), Duration::ZERO)
            .await
            .unwrap();
        let reply: pb::SendResponse = support::ok(&response);
        assert_eq!(reply.results.len(), 1);
        assert_eq!(reply.results[0].status, Status::Ok as i32);
        seqs.push(reply.results[0].seq);
    }
    assert!(seqs.iter().all(|s| *s == seqs[0]), "{seqs:?}");
    let batch = fetch_now(&bob).await;
    assert_eq!(bodies(&batch), vec![text("only once")]);
    assert_eq!(batch.messages[0].seq, seqs[0]);
    assert_eq!(batch.messages[0].message_id, *message_id.as_bytes());

    // A fetch that waits is woken by a send.
    let waiting = tokio::spawn({
        let bob = bob.clone();
        async move { bob.fetch(WAIT).await }
    });
    until_in_flight(&gateway).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "a fetch with wait returned although nothing was queued"
    );
    let sent = alice1.send_text(BOB, "wake up").await.unwrap();
    let batch = bounded("the waiting fetch", waiting)
        .await
        .unwrap()
        .expect("fetch");
    assert_eq!(bodies(&batch), vec![text("wake up")]);
    assert_eq!(batch.messages[0].seq, sent.seq);

    // Nothing is left over anywhere.
    for device in [&alice1, &alice2, &*bob] {
        let batch = fetch_now(device).await;
        assert!(
            batch
                .messages
                .iter()
                .all(|m| matches!(&m.body, Body::SentCopy { text, .. } if text == "wake up")),
            "{:?}",
            batch.messages
        );
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    // fjall allows one open per directory and process: both gateways use one
    // opened store.
    let kv = rossby_storage::kv::open(&BackendConfig::Fjall(FjallConfig::new(
        dir.path().join("store"),
    )))
    .await
    .unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    let mut config_a = Config::for_tests(&dir_a);
    config_a.storage = StorageConfig::Shared(kv.clone());
    let config_b = Config::for_tests(&dir_b).same_deployment_as(&config_a);
    let a = start_with(config_a).await;
    let b = start_with(config_b).await;
    assert_ne!(a.quic_addr(), b.quic_addr());

    let alice = client(&a, dir.path().join("alice.state")).await;
    let bob = Arc::new(client(&b, dir.path().join("bob.state")).await);
    let alice_box: BoxId = register(&alice, ALICE, &codes_file(&dir_a)).await;
    let bob_box: BoxId = register(&bob, BOB, &codes_file(&dir_b)).await;

    // Sent through A (which looks up Bob, registered through B), fetched through B.
    let sent = alice.send_text(BOB, "via gateway a").await.unwrap();
    assert_eq!(sent.to_box, bob_box);
    let batch = fetch_now(&bob).await;
    assert_eq!(bodies(&batch), vec![text("via gateway a")]);
    assert_eq!(batch.messages[0].sender_box, alice_box);
    assert_eq!(batch.messages[0].seq, sent.seq);

    // And back: sent through B, fetched through A.
    bob.send_text(ALICE, "via gateway b").await.unwrap();
    let batch = fetch_now(&alice).await;
    assert_eq!(bodies(&batch), vec![text("via gateway b")]);
    assert_eq!(batch.messages[0].sender_box, bob_box);
    // Bob's own-box copy of that send (he has no other device) is skipped and
    // acknowledged, so it does not wake the fetch below.
    assert!(fetch_now(&bob).await.messages.is_empty());

    // A fetch waiting on B sees a message committed through A.
    let waiting = tokio::spawn({
        let bob = bob.clone();
        async move { bob.fetch(WAIT).await }
    });
    until_in_flight(&b).await;
    alice.send_text(BOB, "across gateways").await.unwrap();
    let batch = bounded("the waiting fetch", waiting)
        .await
        .unwrap()
        .expect("fetch");
    assert_eq!(bodies(&batch), vec![text("across gateways")]);

    // Bob's credentials (issued by B) work on A too: keys are derived from the
    // shared secret, not stored per gateway.
    drop(bob);
    let bob_on_a = client_at(
        dir.path().join("bob.state"),
        a.quic_addr(),
        a.certificate_der(),
    )
    .await;
    assert!(fetch_now(&bob_on_a).await.messages.is_empty());
    bob_on_a.send_text(ALICE, "bob via a").await.unwrap();
    assert_eq!(bodies(&fetch_now(&alice).await), vec![text("bob via a")]);

    a.shutdown().await;
    b.shutdown().await;
    tokio::task::spawn_blocking(move || drop(kv)).await.unwrap();
}
