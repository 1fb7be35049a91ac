//! Sealed sender end to end, on a real gateway on loopback: Bob lets his
//! contacts send him sealed messages; Alice learns his access secret from his
//! message and her next message to him goes sealed. Whatever the gateway wrote
//! for that send (its store, its logs at debug level, its metrics) names
//! neither Alice's box nor her device, yet Bob sees her as the sender. A
//! forged certificate is shown as forged; after Bob blocks Alice her sealed
//! sends stop working as well.

mod support;

use prost::Message;
use rossby_client::Body;
use rossby_client::sealed::SealedSenderMode;
use rossby_keyspace::{BoxId, DeviceId};
use rossby_protocol::PROTOCOL_VERSION;
use rossby_protocol::crypto::sealed_sender::{access_key, seal_sender};
use rossby_protocol::crypto::{EnvelopeHeader, RecipientDevice, seal_envelope};
use rossby_protocol::pb::{self, Method, Status};
use rossby_storage::{KeyRange, ScanOrder};
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use support::{RawConn, bounded, http_get, keys_of, two_users};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

/// Everything the process logged (the gateway runs in this process).
fn log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| Mutex::new(Vec::new()))
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        log()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_len() -> usize {
    log().lock().unwrap().len()
}

fn log_since(offset: usize) -> String {
    String::from_utf8_lossy(&log().lock().unwrap()[offset..]).into_owned()
}

/// Every key and value in the store.
async fn dump(gateway: &rossby_gateway::Gateway) -> Vec<(Vec<u8>, Vec<u8>)> {
    let kv = &gateway.store().kv;
    let mut txn = kv.begin().await.unwrap();
    let all = KeyRange {
        start: Vec::new(),
        end: None,
    };
    let pairs = txn
        .scan(&all, usize::MAX, ScanOrder::Forward)
        .await
        .unwrap();
    txn.rollback().await.unwrap();
    pairs
}

/// The forms an id could take in bytes or text.
fn forms(raw: &[u8; 16]) -> Vec<Vec<u8>> {
    vec![
        raw.to_vec(),
        hex::encode(raw).into_bytes(),
        DeviceId::from_bytes(*raw).unwrap().to_string().into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_send_names_nobody_to_the_gateway_and_the_right_sender_to_the_recipient() {
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .init();
    let dir = tempfile::tempdir().unwrap();
    let (gateway, alice, bob) = two_users(dir.path(), ALICE, BOB).await;
    let alice_box = *alice.box_id().await.unwrap().as_bytes();
    let alice_device = *alice.device_id().as_bytes();

    // Bob takes sealed mail from contacts and writes to Alice: his message
    // carries his access secret.
    bob.set_sealed_sender(SealedSenderMode::Contacts)
        .await
        .unwrap();
    assert_eq!(bob.sealed_sender_mode().await, SealedSenderMode::Contacts);
    bounded("bob writes", bob.send_text(ALICE, "hello alice"))
        .await
        .unwrap();
    let batch = bounded("alice fetches", alice.fetch(std::time::Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(batch.messages.len(), 1, "{:?}", batch.rejected);

    // Alice's reply goes sealed: watch what the gateway writes, logs and counts
    // for it. (Her certificate, fetched with her credentials, is fetched
    // before: a client holds one for a day.)
    alice.sender_certificate().await.unwrap();
    // She knows Bob as a contact (looked up by identifier, identified, once).
    alice.contact(BOB).await.unwrap();
    let before = dump(&gateway).await;
    let log_offset = log_len();
    let report = bounded("sealed send", alice.send_text(BOB, "sealed hello"))
        .await
        .unwrap();
    assert!(report.seq > 0);
    let after = dump(&gateway).await;
    let written: Vec<&(Vec<u8>, Vec<u8>)> = after.iter().filter(|p| !before.contains(p)).collect();
    assert!(!written.is_empty(), "the sealed send stored something");
    let logged = log_since(log_offset);
    let (_, metrics) = http_get(gateway.admin_addr(), "/metrics").await.unwrap();
    for id in [alice_box, alice_device] {
        for form in forms(&id) {
            for (key, value) in &written {
                assert!(
                    !contains(key, &form) && !contains(value, &form),
                    "the store names the sender: {} = {}",
                    hex::encode(key),
                    hex::encode(value)
                );
            }
            assert!(
                !contains(logged.as_bytes(), &form),
                "the log names the sender"
            );
            assert!(
                !contains(metrics.as_bytes(), &form),
                "metrics name the sender"
            );
        }
    }
    // The stored envelope is one with no sender fields.
    let queued: Vec<_> = written
        .iter()
        // A stored record is a format byte, then the protobuf message.
        .filter_map(|(_, v)| {
            rossby_storage::tables::records::StoredEnvelope::decode(v.get(1..)?).ok()
        })
        .filter(|e| !e.payload.is_empty())
        .collect();
    assert!(
        queued
            .iter()
            .any(|e| e.sender_box.is_empty() && e.sender_device.is_empty()),
        "a sealed envelope was stored"
    );

    // Bob sees Alice, verified.
    let batch = bounded("bob fetches", bob.fetch(std::time::Duration::ZERO))
        .await
        .unwrap();
    assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
    assert_eq!(batch.messages.len(), 1);
    let m = &batch.messages[0];
    assert_eq!(m.sender, ALICE);
    assert_eq!(m.sender_box.as_bytes(), &alice_box);
    assert_eq!(m.sender_device.as_bytes(), &alice_device);
    assert_eq!(m.body, Body::Text("sealed hello".into()));

    // A forged certificate: Alice's, claiming another box. Sent raw, with the
    // access key Alice learned.
    let bob_box = *bob.box_id().await.unwrap().as_bytes();
    // Bob's device list as his device knows it now.
    bob.devices().await.unwrap();
    let bob_device = *bob.device_id().as_bytes();
    let secret = alice
        .state()
        .await
        .contacts
        .iter()
        .find(|c| c.box_id == bob_box)
        .map(|c| c.access_secret.clone())
        .unwrap();
    let mut forged = alice.sender_certificate().await.unwrap();
    forged.box_id = BoxId::new(rossby_keyspace::RegionId(1)).as_bytes().to_vec();
    let message_id = rossby_keyspace::MessageId::new();
    let header = EnvelopeHeader {
        sender_box: forged.box_id.as_slice().try_into().unwrap(),
        sender_device: alice_device,
        message_id: *message_id.as_bytes(),
    };
    let devices = vec![RecipientDevice {
        device_id: bob_device,
        keys: keys_of(&bob).await.public_keys(),
    }];
    let content = pb::Content {
        sent_at_ms: 1,
        body: Some(pb::content::Body::Text("forged".into())),
        access_secret: Vec::new(),
    };
    let inner = seal_envelope(&keys_of(&alice).await, &header, &content, &devices).unwrap();
    let outer = seal_sender(&forged, &inner, &bob_box, &devices).unwrap();
    let raw = RawConn::connect(&gateway).await;
    let request = pb::SealedSendRequest {
        box_id: bob_box.to_vec(),
        access_key: access_key(&secret.as_slice().try_into().unwrap()).to_vec(),
        message_id: message_id.as_bytes().to_vec(),
        device_list_version: bob_version(&bob).await,
        envelope: outer.encode_to_vec(),
        wake: pb::Wake::High as i32,
    };
    let response = raw
        .send(&pb::Request {
            version: PROTOCOL_VERSION,
            method: Method::SealedSend as i32,
            body: request.encode_to_vec(),
            authorization: String::new(),
        })
        .await;
    assert_eq!(response.status, Status::Ok as i32, "{}", response.message);
    let batch = bounded("bob fetches", bob.fetch(std::time::Duration::ZERO))
        .await
        .unwrap();
    assert!(batch.messages.is_empty());
    assert_eq!(batch.rejected.len(), 1);
    assert!(
        batch.rejected[0].reason.contains("forged"),
        "{}",
        batch.rejected[0].reason
    );

    // Bob blocks Alice: his access secret changes, so her sealed send is
    // refused, and the identified one is refused as a block.
    bob.block(ALICE).await.unwrap();
    let err = bounded("send after block", alice.send_text(BOB, "still there?"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, rossby_client::Error::UnknownRecipient(_)),
        "{err}"
    );
}

/// Bob's current device-list version as his own device knows it.
async fn bob_version(bob: &rossby_client::Client) -> u64 {
    bob.state()
        .await
        .own_devices
        .map(|l| l.version)
        .unwrap_or_default()
}
