//! Every error path of the API over real QUIC connections to a gateway on loopback
//! (fjall in a temporary directory), with requests built by hand: each answers its
//! documented status (docs/protocol.md §6) and changes nothing, checked with a
//! snapshot of the whole store before and after (and, where it matters, a fetch).

mod support;

use prost::Message;
use rossby_keyspace::{BoxId, RegionId};
use rossby_protocol::framing;
use rossby_protocol::pb::{self, Method, Status};
use rossby_protocol::status::status_of;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{
    RawConn, RawDevice, assert_unchanged, codes_file, codes_for, device_list, expect_status,
    fetch_raw, fresh_nonce, last_code, link_raw, ok, register_raw, register_request, send_request,
    snapshot, start_gateway, wrong_code,
};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";
const NOBODY: &str = "nobody@example.com";

fn request_key(identifier: &str) -> pb::RequestKeyRequest {
    pb::RequestKeyRequest {
        identifier: identifier.into(),
        ..pb::RequestKeyRequest::default()
    }
}

fn request_key_by_box(box_id: BoxId) -> pb::RequestKeyRequest {
    pb::RequestKeyRequest {
        box_id: box_id.as_bytes().to_vec(),
        ..pb::RequestKeyRequest::default()
    }
}

/// The single result of a one-recipient Send.
async fn send_one(conn: &RawConn, by: &RawDevice, request: &pb::SendRequest) -> pb::SendResult {
    let reply: pb::SendResponse = ok(&conn.call(by, Method::Send, request).await);
    assert_eq!(reply.results.len(), 1);
    reply.results.into_iter().next().unwrap()
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_blocked_and_hidden_users_answer_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(dir.path()).await;
    let codes = codes_file(dir.path());
    let conn = RawConn::connect(&gw).await;
    let alice = register_raw(&conn, &codes, ALICE).await;
    let bob = register_raw(&conn, &codes, BOB).await;
    let carol = register_raw(&conn, &codes, CAROL).await;
    let bob_list = device_list(&conn, &alice, BOB).await;
    let carol_list = device_list(&conn, &alice, CAROL).await;

    // Unknown recipient: lookups answer NOT_FOUND, a send's result is NOT_FOUND.
    let before = snapshot(gw.store()).await;
    let unknown = conn
        .call(&alice, Method::RequestKey, &request_key(NOBODY))
        .await;
    expect_status(&unknown, Status::NotFound);
    let nowhere = BoxId::new(RegionId(1));
    let by_box = conn
        .call(&alice, Method::RequestKey, &request_key_by_box(nowhere))
        .await;
    expect_status(&by_box, Status::NotFound);
    assert_eq!(by_box.message, unknown.message);
    let unknown_send = send_one(
        &conn,
        &alice,
        &send_request(
            &pb::DeviceList {
                box_id: nowhere.as_bytes().to_vec(),
                version: 1,
                ..pb::DeviceList::default()
            },
            &alice,
            b"envelope",
        ),
    )
    .await;
    assert_eq!(unknown_send.status, Status::NotFound as i32);
    assert_eq!(unknown_send.seq, 0);
    assert!(unknown_send.current.is_none());
    assert_unchanged(
        "requests to an unknown user",
        &before,
        &snapshot(gw.store()).await,
    );

    // Bob blocks Alice: to her he looks exactly like an unknown user.
    let block = pb::BlockRequest {
        identifier: ALICE.into(),
        box_id: Vec::new(),
    };
    let _: pb::BlockResponse = ok(&conn.call(&bob, Method::Block, &block).await);
    let before = snapshot(gw.store()).await;
    let blocked = conn
        .call(&alice, Method::RequestKey, &request_key(BOB))
        .await;
    expect_status(&blocked, Status::NotFound);
    assert_eq!(blocked.message, unknown.message);
    assert!(blocked.body.is_empty());
    let blocked_by_box = conn
        .call(&alice, Method::RequestKey, &request_key_by_box(bob.box_id))
        .await;
    expect_status(&blocked_by_box, Status::NotFound);
    assert_eq!(blocked_by_box.message, unknown.message);
    let blocked_send = send_one(&conn, &alice, &send_request(&bob_list, &alice, b"envelope")).await;
    assert_eq!(
        (blocked_send.status, blocked_send.seq, &blocked_send.current),
        (unknown_send.status, unknown_send.seq, &unknown_send.current)
    );
    let claim = pb::ClaimKeyPackagesRequest {
        box_id: bob.box_id.as_bytes().to_vec(),
    };
    let blocked_claim = conn.call(&alice, Method::ClaimKeyPackages, &claim).await;
    expect_status(&blocked_claim, Status::NotFound);
    assert_eq!(blocked_claim.message, unknown.message);
    assert_unchanged(
        "requests to a blocking user",
        &before,
        &snapshot(gw.store()).await,
    );
    assert!(fetch_raw(&conn, &bob).await.envelopes.is_empty());
    // Control: Carol, not blocked, reaches Bob.
    assert_eq!(
        device_list(&conn, &carol, BOB).await.box_id,
        bob.box_id.as_bytes()
    );
    let reached = send_one(
        &conn,
        &carol,
        &send_request(&bob_list, &carol, b"from carol"),
    )
    .await;
    assert_eq!(reached.status, Status::Ok as i32);

    // Carol becomes undiscoverable: RequestKey by identifier is NOT_FOUND.
    let hide = pb::UpdateSettingsRequest {
        discoverable: Some(false),
        ..pb::UpdateSettingsRequest::default()
    };
    let settings: pb::UpdateSettingsResponse =
        ok(&conn.call(&carol, Method::UpdateSettings, &hide).await);
    assert!(!settings.discoverable);
    let before = snapshot(gw.store()).await;
    let hidden = conn
        .call(&alice, Method::RequestKey, &request_key(CAROL))
        .await;
    expect_status(&hidden, Status::NotFound);
    assert_eq!(hidden.message, unknown.message);
    let hidden_block = conn
        .call(
            &alice,
            Method::Block,
            &pb::BlockRequest {
                identifier: CAROL.into(),
                box_id: Vec::new(),
            },
        )
        .await;
    expect_status(&hidden_block, Status::NotFound);
    assert_eq!(hidden_block.message, unknown.message);
    assert_unchanged(
        "lookups of an undiscoverable user",
        &before,
        &snapshot(gw.store()).await,
    );
    // Hiding is about identifiers: messages still arrive.
    let reached = send_one(
        &conn,
        &alice,
        &send_request(&carol_list, &alice, b"hi carol"),
    )
    .await;
    assert_eq!(reached.status, Status::Ok as i32);

    conn.close().await;
    gw.shutdown().await;
}

/// A snapshot without the deployment's code budgets (global keys `0x01 0x03`)
/// and the identifiers' verification limits (`0x01 0x04`), which count every
/// code sent and every wrong code tried, across registrations.
fn without_code_budgets(
    mut snapshot: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    snapshot.retain(|key, _| !key.starts_with(&[0x01, 0x03]) && !key.starts_with(&[0x01, 0x04]));
    snapshot
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_exhausted_codes_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(dir.path()).await;
    let codes = codes_file(dir.path());
    let conn = RawConn::connect(&gw).await;
    let authorize =
        |identifier: &str, device: rossby_keyspace::DeviceId, code: String| pb::AuthorizeRequest {
            identifier: identifier.into(),
            device_id: device.as_bytes().to_vec(),
            code,
            registration_lock_pin: String::new(),
        };

    // A wrong code: INVALID_CODE; only the stored attempt counter moves, no
    // account appears, and the right code still works afterwards.
    let keys = rossby_protocol::crypto::DeviceKeys::generate();
    let device = rossby_keyspace::DeviceId::new();
    let _: pb::RegisterResponse = ok(&conn
        .call_anonymous(Method::Register, &register_request(ALICE, &keys, device))
        .await);
    let code = last_code(&codes, ALICE);
    let before = snapshot(gw.store()).await;
    let wrong = conn
        .call_anonymous(
            Method::Authorize,
            &authorize(ALICE, device, wrong_code(&code)),
        )
        .await;
    expect_status(&wrong, Status::InvalidCode);
    let after = snapshot(gw.store()).await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "a wrong code added or removed keys"
    );
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    // Exactly the pending registration (key 0x01 0x02 ...) and the
    // identifier's limits (0x01 0x04 ...) changed: their attempt counters,
    // kept in storage so the limits hold across gateways and restarts.
    assert!(
        changed.len() == 2
            && changed[0].starts_with(&[0x01, 0x02])
            && changed[1].starts_with(&[0x01, 0x04]),
        "a wrong code should change only the attempt counters: {changed:?}"
    );
    let reply: pb::AuthorizeResponse = ok(&conn
        .call_anonymous(Method::Authorize, &authorize(ALICE, device, code))
        .await);
    let alice = RawDevice {
        box_id: BoxId::try_from_slice(&reply.box_id).unwrap(),
        creds: support::open_credentials(&keys, &reply.sealed_credentials),
        keys,
        device_id: device,
    };

    // Exhausted attempts: the attempt that reaches the limit answers
    // CODE_ATTEMPTS_EXHAUSTED and deletes the registration, leaving storage as it
    // was before Register; the right code is then refused too.
    let before_register = snapshot(gw.store()).await;
    let keys = rossby_protocol::crypto::DeviceKeys::generate();
    let device = rossby_keyspace::DeviceId::new();
    let _: pb::RegisterResponse = ok(&conn
        .call_anonymous(Method::Register, &register_request(BOB, &keys, device))
        .await);
    let code = last_code(&codes, BOB);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = conn
            .call_anonymous(
                Method::Authorize,
                &authorize(BOB, device, wrong_code(&code)),
            )
            .await;
        statuses.push(status_of(&response));
    }
    assert_eq!(
        statuses,
        vec![
            Status::InvalidCode,
            Status::InvalidCode,
            Status::InvalidCode,
            Status::InvalidCode,
            Status::CodeAttemptsExhausted
        ]
    );
    // The deployment's budgets of codes counted the code that was sent: that
    // is all that may remain.
    let before_register = without_code_budgets(before_register);
    assert_unchanged(
        "an exhausted registration",
        &before_register,
        &without_code_budgets(snapshot(gw.store()).await),
    );
    let late = conn
        .call_anonymous(Method::Authorize, &authorize(BOB, device, code))
        .await;
    expect_status(&late, Status::CodeExpired);
    assert_unchanged(
        "the right code after exhaustion",
        &before_register,
        &without_code_budgets(snapshot(gw.store()).await),
    );
    // Bob does not exist; registering again starts over with a new code.
    let lookup = conn
        .call(&alice, Method::RequestKey, &request_key(BOB))
        .await;
    expect_status(&lookup, Status::NotFound);
    assert_eq!(codes_for(&codes, BOB).len(), 1);
    let bob = register_raw(&conn, &codes, BOB).await;
    assert_eq!(codes_for(&codes, BOB).len(), 2);
    assert!(fetch_raw(&conn, &bob).await.envelopes.is_empty());

    conn.close().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hawk_failures_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(dir.path()).await;
    let codes = codes_file(dir.path());
    let conn = RawConn::connect(&gw).await;
    let alice = register_raw(&conn, &codes, ALICE).await;
    let bob = register_raw(&conn, &codes, BOB).await;
    let bob_list = device_list(&conn, &alice, BOB).await;

    // Replayed nonce: a captured UpdateSettings that hid Alice, replayed after she
    // became discoverable again on the same connection, is REPLAYED and does not
    // hide her again.
    let hide = pb::UpdateSettingsRequest {
        discoverable: Some(false),
        ..pb::UpdateSettingsRequest::default()
    };
    let captured = conn.signed(&alice, Method::UpdateSettings, hide.encode_to_vec());
    let _: pb::UpdateSettingsResponse = ok(&conn.send(&captured).await);
    let show = pb::UpdateSettingsRequest {
        discoverable: Some(true),
        ..pb::UpdateSettingsRequest::default()
    };
    let _: pb::UpdateSettingsResponse = ok(&conn.call(&alice, Method::UpdateSettings, &show).await);
    let before = snapshot(gw.store()).await;
    let replayed = conn.send(&captured).await;
    expect_status(&replayed, Status::Replayed);
    assert_unchanged("a replayed request", &before, &snapshot(gw.store()).await);
    assert_eq!(
        device_list(&conn, &bob, ALICE).await.box_id,
        alice.box_id.as_bytes()
    );

    // The same holds for a replayed Send: the queue keeps one copy.
    let send = conn.signed(
        &alice,
        Method::Send,
        send_request(&bob_list, &alice, b"first").encode_to_vec(),
    );
    let first: pb::SendResponse = ok(&conn.send(&send).await);
    assert_eq!(first.results[0].status, Status::Ok as i32);
    let before = snapshot(gw.store()).await;
    expect_status(&conn.send(&send).await, Status::Replayed);
    assert_unchanged("a replayed send", &before, &snapshot(gw.store()).await);

    // A request signed for one connection and sent on another: UNAUTHENTICATED.
    let other = RawConn::connect(&gw).await;
    assert_ne!(other.exporter, conn.exporter);
    let bound = conn.signed(
        &alice,
        Method::Send,
        send_request(&bob_list, &alice, b"bound").encode_to_vec(),
    );
    let moved = other.send(&bound).await;
    expect_status(&moved, Status::Unauthenticated);
    assert_unchanged(
        "a request replayed on another connection",
        &before,
        &snapshot(gw.store()).await,
    );

    // A skewed timestamp (either way): CLOCK_SKEW with the gateway's clock.
    for skew in [-600i64, 600] {
        let ts = if skew < 0 {
            SystemTime::now() - Duration::from_secs(skew.unsigned_abs())
        } else {
            SystemTime::now() + Duration::from_secs(skew.unsigned_abs())
        };
        let skewed = conn.signed_at(
            &alice,
            Method::Send,
            send_request(&bob_list, &alice, b"skewed").encode_to_vec(),
            ts,
            &fresh_nonce(),
        );
        let local = now_ms();
        let response = conn.send(&skewed).await;
        expect_status(&response, Status::ClockSkew);
        assert!(
            response.server_time_ms.abs_diff(local) < 60_000,
            "server_time_ms {} is not the gateway's clock (local {local})",
            response.server_time_ms
        );
    }
    assert_unchanged("skewed requests", &before, &snapshot(gw.store()).await);

    // A tampered payload (body changed after signing): UNAUTHENTICATED.
    let mut tampered = conn.signed(
        &alice,
        Method::Send,
        send_request(&bob_list, &alice, b"original").encode_to_vec(),
    );
    let mut body = pb::SendRequest::decode(tampered.body.as_slice()).unwrap();
    body.recipients[0].envelope = b"tampered".to_vec();
    tampered.body = body.encode_to_vec();
    expect_status(&conn.send(&tampered).await, Status::Unauthenticated);
    // ...and a flipped bit in the MAC.
    let mut forged = conn.signed(
        &alice,
        Method::Send,
        send_request(&bob_list, &alice, b"forged").encode_to_vec(),
    );
    let mac_at = forged.authorization.find("mac=\"").unwrap() + 5;
    let mut auth = forged.authorization.into_bytes();
    auth[mac_at] = if auth[mac_at] == b'A' { b'B' } else { b'A' };
    forged.authorization = String::from_utf8(auth).unwrap();
    expect_status(&conn.send(&forged).await, Status::Unauthenticated);
    // ...and no authorization at all.
    let mut anonymous = tampered.clone();
    anonymous.authorization.clear();
    expect_status(&conn.send(&anonymous).await, Status::Unauthenticated);
    assert_unchanged("tampered requests", &before, &snapshot(gw.store()).await);

    // Bob received exactly the one valid send.
    let fetched = fetch_raw(&conn, &bob).await;
    assert_eq!(fetched.envelopes.len(), 1);
    assert_eq!(support::body_of(&fetched.envelopes[0].envelope), b"first");
    // The request bound to the first connection was valid there, and its nonce
    // was not used up by the rejected attempt.
    let delivered: pb::SendResponse = ok(&conn.send(&bound).await);
    assert_eq!(delivered.results[0].status, Status::Ok as i32);

    let metrics = gw.metrics().render();
    for reason in [
        "replayed",
        "wrong_connection",
        "clock_skew",
        "payload_mismatch",
        "bad_mac",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "no auth failure {reason} in the metrics"
        );
    }
    other.close().await;
    conn.close().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(dir.path()).await;
    let codes = codes_file(dir.path());
    let conn = RawConn::connect(&gw).await;
    let alice = register_raw(&conn, &codes, ALICE).await;
    let bob = register_raw(&conn, &codes, BOB).await;
    let bob_list = device_list(&conn, &alice, BOB).await;
    let before = snapshot(gw.store()).await;

    // Oversize frame: a properly signed Send whose frame exceeds the limit.
    let huge = vec![0x5a; framing::DEFAULT_MAX_FRAME];
    let request = conn.signed(
        &alice,
        Method::Send,
        send_request(&bob_list, &alice, &huge).encode_to_vec(),
    );
    let frame = framing::encode(&request);
    assert!(frame.len() > framing::DEFAULT_MAX_FRAME + framing::LENGTH_PREFIX);
    expect_status(&conn.exchange(&frame).await, Status::TooLarge);
    // Only the declared length matters: a prefix alone is answered at once.
    let mut prefix_only = u32::MAX.to_be_bytes().to_vec();
    prefix_only.extend_from_slice(b"abc");
    expect_status(&conn.exchange(&prefix_only).await, Status::TooLarge);

    // Malformed protobuf: the frame itself, a signed request's body, an
    // unauthenticated request's body.
    expect_status(
        &conn.exchange(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await,
        Status::BadRequest,
    );
    let garbage = conn.signed(&alice, Method::Send, vec![0xff, 0xff, 0xff, 0xff]);
    expect_status(&conn.send(&garbage).await, Status::BadRequest);
    let register = pb::Request {
        version: 1,
        method: Method::Register as i32,
        body: vec![0x0a, 0x80],
        authorization: String::new(),
    };
    expect_status(&conn.send(&register).await, Status::BadRequest);
    // A frame shorter than its declared length.
    expect_status(
        &conn.exchange(&[0, 0, 0, 9, 0x08, 0x01]).await,
        Status::BadRequest,
    );

    // Unknown RPC numbers (and the unspecified one), with or without a signature.
    for method in [999, 0, 9999] {
        let unknown = pb::Request {
            version: 1,
            method,
            body: Vec::new(),
            authorization: String::new(),
        };
        let response = conn.send(&unknown).await;
        expect_status(&response, Status::UnknownMethod);
    }
    let mut signed_unknown = conn.signed(&alice, Method::Send, Vec::new());
    signed_unknown.method = 4242;
    expect_status(&conn.send(&signed_unknown).await, Status::UnknownMethod);
    // An unsupported protocol version.
    let mut future = conn.signed(&alice, Method::Fetch, Vec::new());
    future.version = 2;
    expect_status(&conn.send(&future).await, Status::UnsupportedVersion);

    assert_unchanged("malformed requests", &before, &snapshot(gw.store()).await);
    // The connection survived all of it.
    let _: pb::PingResponse = ok(&conn.call_anonymous(Method::Ping, &pb::PingRequest {}).await);
    assert!(fetch_raw(&conn, &bob).await.envelopes.is_empty());
    conn.close().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_device_list_answers_the_current_list() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(dir.path()).await;
    let codes = codes_file(dir.path());
    let conn = RawConn::connect(&gw).await;
    let alice = register_raw(&conn, &codes, ALICE).await;
    let bob = register_raw(&conn, &codes, BOB).await;
    let old = device_list(&conn, &alice, BOB).await;
    assert_eq!(old.devices.len(), 1);
    let bob2 = link_raw(&conn, &bob).await;

    let before = snapshot(gw.store()).await;
    let request = send_request(&old, &alice, b"for the old list");
    let result = send_one(&conn, &alice, &request).await;
    assert_eq!(result.status, Status::StaleDevices as i32);
    assert_eq!(result.seq, 0);
    let current = result.current.expect("the current device list");
    assert_eq!(current.box_id, bob.box_id.as_bytes());
    assert!(current.version > old.version);
    let mut ids: Vec<Vec<u8>> = current
        .devices
        .iter()
        .map(|d| d.device_id.clone())
        .collect();
    ids.sort();
    let mut expected = vec![
        bob.device_id.as_bytes().to_vec(),
        bob2.device_id.as_bytes().to_vec(),
    ];
    expected.sort();
    assert_eq!(ids, expected);
    for d in &current.devices {
        let keys = if d.device_id == bob.device_id.as_bytes() {
            &bob.keys
        } else {
            &bob2.keys
        };
        assert_eq!(d.keys.as_ref(), Some(&keys.bundle()));
    }
    assert_eq!(current, device_list(&conn, &alice, BOB).await);
    assert_unchanged(
        "a send for a stale list",
        &before,
        &snapshot(gw.store()).await,
    );
    assert!(fetch_raw(&conn, &bob).await.envelopes.is_empty());

    // Re-sent for the current list with the same message id: delivered.
    let mut again = request.clone();
    again.recipients[0].device_list_version = current.version;
    again.recipients[0].envelope = support::envelope_for(&current, &alice, b"for the current list");
    let result = send_one(&conn, &alice, &again).await;
    assert_eq!(result.status, Status::Ok as i32);
    for device in [&bob, &bob2] {
        let fetched = fetch_raw(&conn, device).await;
        assert_eq!(fetched.envelopes.len(), 1);
        assert_eq!(fetched.envelopes[0].seq, result.seq);
        assert_eq!(fetched.envelopes[0].message_id, request.message_id);
    }
    conn.close().await;
    gw.shutdown().await;
}
