use crate::api::testkit::{TestEnv, TestSettings};
use prost::Message;
use rossby_keyspace::{BoxId, MessageId, RegionId};
use rossby_protocol::crypto::sealed_sender::{access_key, verify_certificate};
use rossby_protocol::pb::{self, Method, Status};
use rossby_protocol::status::status_of;

/// A sealed-sender send of `body` to `to`, its key wrapped for `to`'s
/// current devices.
async fn sealed_request(
    env: &TestEnv,
    to: BoxId,
    key: [u8; 16],
    version: u64,
    body: &[u8],
) -> pb::SealedSendRequest {
    let plain = pb::Envelope::decode(env.envelope_to(to, None, body).await.as_slice()).unwrap();
    let envelope = pb::Envelope {
        version: 1,
        sealed_sender: Some(pb::SealedSender {
            keys: plain.keys,
            ciphertext: plain.ciphertext,
        }),
        ..pb::Envelope::default()
    };
    pb::SealedSendRequest {
        box_id: to.as_bytes().to_vec(),
        access_key: key.to_vec(),
        message_id: MessageId::new().as_bytes().to_vec(),
        device_list_version: version,
        envelope: envelope.encode_to_vec(),
        wake: pb::Wake::High as i32,
    }
}

/// The ciphertext of an envelope made by [`sealed_request`].
fn sealed_body(envelope: &[u8]) -> Vec<u8> {
    pb::Envelope::decode(envelope)
        .unwrap()
        .sealed_sender
        .unwrap()
        .ciphertext
}

async fn sealed_send(env: &TestEnv, req: &pb::SealedSendRequest) -> pb::SendResult {
    let resp = env.call(7, Method::SealedSend, req).await;
    assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
    TestEnv::body::<pb::SealedSendResponse>(&resp)
        .result
        .expect("a result")
}

#[tokio::test]
async fn certificates_name_the_caller_and_verify_under_the_published_keys() {
    let env = TestEnv::new();
    let alice = env.register("alice@example.com").await;
    let resp = env
        .call_as(
            &alice,
            1,
            Method::GetSenderCertificate,
            &pb::GetSenderCertificateRequest {},
        )
        .await;
    assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
    let cert = TestEnv::body::<pb::GetSenderCertificateResponse>(&resp)
        .certificate
        .expect("a certificate");
    let ping: pb::PingResponse =
        TestEnv::body(&env.call(2, Method::Ping, &pb::PingRequest {}).await);
    let keys: Vec<(u32, [u8; 32])> = ping
        .sender_certificate_keys
        .iter()
        .map(|k| (k.version, k.public_key.as_slice().try_into().unwrap()))
        .collect();
    assert_eq!(keys.len(), 1);
    let now = super::now_ms();
    let certified = verify_certificate(&cert, &keys, now).unwrap();
    assert_eq!(certified.box_id, *alice.box_id.as_bytes());
    assert_eq!(certified.device_id, *alice.device_id.as_bytes());
    assert_eq!(certified.keys, alice.keys.public_keys());
    let lifetime = u64::try_from(super::CERTIFICATE_LIFETIME.as_millis()).unwrap();
    assert!(cert.expires_at_ms > now && cert.expires_at_ms <= now + lifetime);
    // Unauthenticated callers get none.
    let resp = env
        .call(
            3,
            Method::GetSenderCertificate,
            &pb::GetSenderCertificateRequest {},
        )
        .await;
    assert_eq!(status_of(&resp), Status::Unauthenticated);
}

#[tokio::test]
async fn sealed_sends_need_the_access_key_and_store_no_sender() {
    let env = TestEnv::new();
    let alice = env.register("alice@example.com").await;
    let bob = env.register("bob@example.com").await;
    let version = env.device_list_version(&alice, "bob@example.com").await;
    let key = access_key(&[5; 32]);
    // Before Bob sets a key, sealed sends to him look like sends to nobody.
    let unknown = BoxId::new(RegionId(env.region().0));
    let to_nobody = sealed_send(
        &env,
        &sealed_request(&env, unknown, key, version, b"x").await,
    )
    .await;
    let early = sealed_send(
        &env,
        &sealed_request(&env, bob.box_id, key, version, b"x").await,
    )
    .await;
    assert_eq!(to_nobody.status, Status::NotFound as i32);
    assert_eq!(early.status, to_nobody.status);

    let settings = pb::UpdateSettingsRequest {
        sealed_sender_key: Some(key.to_vec()),
        ..pb::UpdateSettingsRequest::default()
    };
    let resp = env
        .call_as(&bob, 1, Method::UpdateSettings, &settings)
        .await;
    let set: pb::UpdateSettingsResponse = TestEnv::body(&resp);
    assert!(set.sealed_sender && !set.sealed_sender_anyone);
    // A key of the wrong length is a bad request and changes nothing.
    let bad = pb::UpdateSettingsRequest {
        sealed_sender_key: Some(vec![1; 15]),
        ..pb::UpdateSettingsRequest::default()
    };
    let resp = env.call_as(&bob, 1, Method::UpdateSettings, &bad).await;
    assert_eq!(status_of(&resp), Status::BadRequest);

    // A wrong key: the same answer as an unknown box, messages included.
    let mut wrong = key;
    wrong[0] ^= 1;
    let resp_wrong = env
        .call(
            7,
            Method::SealedSend,
            &sealed_request(&env, bob.box_id, wrong, version, b"x").await,
        )
        .await;
    let resp_unknown = env
        .call(
            7,
            Method::SealedSend,
            &sealed_request(&env, unknown, wrong, version, b"x").await,
        )
        .await;
    let (a, b) = (
        TestEnv::body::<pb::SealedSendResponse>(&resp_wrong)
            .result
            .unwrap(),
        TestEnv::body::<pb::SealedSendResponse>(&resp_unknown)
            .result
            .unwrap(),
    );
    assert_eq!(
        (a.status, b.status),
        (Status::NotFound as i32, Status::NotFound as i32)
    );
    assert_eq!(resp_wrong.message, resp_unknown.message);

    // The right key: stored, and the stored envelope names nobody.
    let ok = sealed_send(
        &env,
        &sealed_request(&env, bob.box_id, key, version, b"sealed").await,
    )
    .await;
    assert_eq!(ok.status, Status::Ok as i32);
    let fetched: pb::FetchResponse = TestEnv::body(
        &env.call_as(&bob, 1, Method::Fetch, &pb::FetchRequest::default())
            .await,
    );
    assert_eq!(fetched.envelopes.len(), 1);
    let e = &fetched.envelopes[0];
    assert!(e.sender_box.is_empty() && e.sender_device.is_empty());
    assert_eq!(sealed_body(&e.envelope), b"sealed");

    // A stale device list is answered with the current list, as for a Send.
    let stale = sealed_send(
        &env,
        &sealed_request(&env, bob.box_id, key, version + 1, b"x").await,
    )
    .await;
    assert_eq!(stale.status, Status::StaleDevices as i32);
    assert!(stale.current.is_some());

    // Malformed requests are refused before anything is read.
    let mut short_key = sealed_request(&env, bob.box_id, key, version, b"x").await;
    short_key.access_key.pop();
    let resp = env.call(7, Method::SealedSend, &short_key).await;
    assert_eq!(status_of(&resp), Status::BadRequest);
    let mut not_v7 = sealed_request(&env, bob.box_id, key, version, b"x").await;
    not_v7.message_id = vec![0; 16];
    let resp = env.call(7, Method::SealedSend, &not_v7).await;
    assert_eq!(status_of(&resp), Status::BadRequest);
}

#[tokio::test]
async fn sealed_sends_are_limited_per_recipient() {
    let env = TestEnv::with(TestSettings {
        sealed: Some((0.0, 2.0)),
        ..TestSettings::default()
    });
    let alice = env.register("alice@example.com").await;
    let bob = env.register("bob@example.com").await;
    let version = env.device_list_version(&alice, "bob@example.com").await;
    let anyone = pb::UpdateSettingsRequest {
        sealed_sender_anyone: Some(true),
        ..pb::UpdateSettingsRequest::default()
    };
    env.call_as(&bob, 1, Method::UpdateSettings, &anyone).await;
    for _ in 0..2 {
        let ok = sealed_send(
            &env,
            &sealed_request(&env, bob.box_id, [0; 16], version, b"x").await,
        )
        .await;
        assert_eq!(ok.status, Status::Ok as i32);
    }
    let resp = env
        .call(
            8,
            Method::SealedSend,
            &sealed_request(&env, bob.box_id, [0; 16], version, b"x").await,
        )
        .await;
    assert_eq!(status_of(&resp), Status::RateLimited);
    assert!(resp.retry_after_ms > 0);
    // Another recipient has its own budget.
    let alice_version = env.device_list_version(&bob, "alice@example.com").await;
    env.call_as(&alice, 1, Method::UpdateSettings, &anyone)
        .await;
    let ok = sealed_send(
        &env,
        &sealed_request(&env, alice.box_id, [0; 16], alice_version, b"x").await,
    )
    .await;
    assert_eq!(ok.status, Status::Ok as i32);
}
