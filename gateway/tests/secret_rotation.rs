//! Server secret rotation through the secret file and `secret_version`, with real
//! gateways on loopback restarted over one fjall store: devices registered under
//! the generated (version 1) secret keep working while version 2 is added and
//! made current, are told their credentials are outdated, and the SDK fetches
//! version 2 credentials (a four-part id) and saves them. Once version 1 is
//! removed, refreshed devices keep working and the others are unauthenticated.

mod support;

use rossby_gateway::auth::keys::{self, CredentialId};
use rossby_gateway::{Config, Gateway};
use rossby_protocol::hawk::DeviceCredentials;
use rossby_protocol::pb::{self, Method, Status};
use rossby_protocol::status::status_of;
use std::path::Path;
use support::{
    RawConn, RawDevice, bounded, client, codes_file, credentials_of, keys_of, last_code, ok,
    register, start_gateway, start_with,
};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";
/// The new secret (version 2).
const NEW_SECRET: [u8; 32] = [0x3c; 32];

fn restart_config(gw_dir: &Path, secret_file: &str, current: Option<u32>) -> Config {
    std::fs::write(gw_dir.join("secret"), secret_file).unwrap();
    let mut config = Config::for_tests(gw_dir);
    config.secret_version = current;
    config
}

/// The raw-protocol view of an SDK client's device.
async fn raw_device(c: &rossby_client::Client) -> RawDevice {
    RawDevice {
        keys: keys_of(c).await,
        device_id: c.device_id(),
        box_id: c.box_id().await.expect("authorized"),
        creds: credentials_of(c).await,
    }
}

async fn list_devices(conn: &RawConn, device: &RawDevice) -> pb::Response {
    conn.call(device, Method::ListDevices, &pb::ListDevicesRequest {})
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_refresh_their_credentials_and_survive_the_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let gw_dir = dir.path().join("gw");
    let codes = codes_file(&gw_dir);
    let state = |name: &str| dir.path().join(format!("{name}.state"));

    // Version 1: the secret the gateway generates on its first start.
    let gateway = start_gateway(&gw_dir).await;
    let alice = client(&gateway, state("alice")).await;
    register(&alice, ALICE, &codes).await;
    let bob = client(&gateway, state("bob")).await;
    register(&bob, BOB, &codes).await;
    let carol = client(&gateway, state("carol")).await;
    carol.register(CAROL, false).await.unwrap();
    let old_alice = raw_device(&alice).await;
    assert_eq!(old_alice.creds.id.split('.').count(), 3, "version 1 ids");
    for c in [&alice, &bob, &carol] {
        c.close().await;
    }
    gateway.shutdown().await;
    let generated = std::fs::read_to_string(gw_dir.join("secret")).unwrap();
    let old = generated.trim().to_string();
    assert_eq!(hex::decode(&old).unwrap().len(), 32, "one hex value");
    let both = format!("# rotation\n1 {old}\n2 {}\n", hex::encode(NEW_SECRET));

    // Roll 1: version 2 added, version 1 pinned as current: nothing changes.
    let gateway = start_with(restart_config(&gw_dir, &both, Some(1))).await;
    let conn = RawConn::connect(&gateway).await;
    let resp = list_devices(&conn, &old_alice).await;
    assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
    assert!(!resp.credentials_outdated);
    conn.close().await;
    gateway.shutdown().await;

    // Roll 2: version 2 current (the highest, by default).
    let gateway = start_with(restart_config(&gw_dir, &both, None)).await;
    let conn = RawConn::connect(&gateway).await;
    let resp = list_devices(&conn, &old_alice).await;
    let _: pb::ListDevicesResponse = ok(&resp);
    assert!(
        resp.credentials_outdated,
        "version 1 credentials are outdated"
    );

    // The SDK refreshes after the call and saves the new credentials.
    let alice = client(&gateway, state("alice")).await;
    assert_eq!(bounded("devices", alice.devices()).await.unwrap().len(), 1);
    let refreshed = credentials_of(&alice).await;
    let expected = CredentialId {
        box_id: old_alice.box_id,
        device: old_alice.device_id,
        key_version: 1,
        secret_version: 2,
    };
    assert_eq!(
        refreshed,
        DeviceCredentials {
            id: format!("{}.{}.1.2", old_alice.box_id, old_alice.device_id),
            key: keys::device_key(&NEW_SECRET, &expected),
        }
    );
    alice.close().await;
    let reopened = client(&gateway, state("alice")).await;
    assert_eq!(
        credentials_of(&reopened).await,
        refreshed,
        "the state file holds the new credentials"
    );
    reopened.close().await;
    let new_alice = RawDevice {
        creds: refreshed.clone(),
        ..old_alice.clone()
    };
    let resp = list_devices(&conn, &new_alice).await;
    let _: pb::ListDevicesResponse = ok(&resp);
    assert!(!resp.credentials_outdated);

    // A code sent under version 1 still verifies; new credentials are version 2.
    let carol = client(&gateway, state("carol")).await;
    let code = last_code(&codes, CAROL);
    bounded("authorize", carol.authorize(&code)).await.unwrap();
    assert!(credentials_of(&carol).await.id.ends_with(".1.2"));
    carol.close().await;
    conn.close().await;
    gateway.shutdown().await;

    // Roll 3: version 1 removed.
    let only_new = format!("2 {}\n", hex::encode(NEW_SECRET));
    let gateway = start_with(restart_config(&gw_dir, &only_new, None)).await;
    let alice = client(&gateway, state("alice")).await;
    let sent = bounded("send", alice.send_text(BOB, "still here")).await;
    assert!(sent.is_ok(), "{sent:?}");
    alice.close().await;
    let carol = client(&gateway, state("carol")).await;
    assert_eq!(bounded("devices", carol.devices()).await.unwrap().len(), 1);
    carol.close().await;
    // Bob never made a request while version 1 was outdated.
    let bob = client(&gateway, state("bob")).await;
    let err = bounded("devices", bob.devices()).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Unauthenticated), "{err}");
    assert_eq!(credentials_of(&bob).await.id.split('.').count(), 3);
    bob.close().await;

    // Unknown versions in a credential id are refused, whatever the key.
    let conn = RawConn::connect(&gateway).await;
    for version in [1, 3, 7] {
        let id = CredentialId {
            secret_version: version,
            ..expected
        };
        let forged = RawDevice {
            creds: keys::credentials(&NEW_SECRET, id),
            ..old_alice.clone()
        };
        let resp = list_devices(&conn, &forged).await;
        assert_eq!(
            status_of(&resp),
            Status::Unauthenticated,
            "version {version}"
        );
        assert!(!resp.credentials_outdated);
    }
    let resp = list_devices(&conn, &old_alice).await;
    assert_eq!(status_of(&resp), Status::Unauthenticated);
    conn.close().await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_current_version_missing_from_the_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = restart_config(
        dir.path(),
        &format!("1 {}\n", hex::encode([1u8; 32])),
        Some(2),
    );
    let message = Gateway::start(config).await.unwrap_err().to_string();
    assert!(message.contains("--secret-version 2"), "{message}");
}
