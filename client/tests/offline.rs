//! The SDK without a gateway: state creation and reopening, link requests and
//! grants, and the checks that fail before any request is sent.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use rossby_client::sdk::{LINK_GRANT_PREFIX, LINK_REQUEST_PREFIX};
use rossby_client::state::key_file_path;
use rossby_client::{Client, ClientConfig, Error, KdfParams, RetryPolicy, StateKey};
use rossby_protocol::crypto::{CONTEXT_CREDENTIALS, PublicKeys, seal};
use rossby_protocol::pb;
use std::path::Path;
use std::time::Duration;

fn config(path: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(path, "127.0.0.1:9".parse().unwrap());
    c.retry = RetryPolicy {
        max_attempts: 1,
        max_connect_attempts: 1,
        connect_timeout: Duration::from_millis(200),
        ..RetryPolicy::default()
    };
    c
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_new_state_is_created_once_and_reopened_with_its_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut no_create = config(&path);
    no_create.create = false;
    assert!(matches!(
        Client::open(no_create.clone()).await,
        Err(Error::NoState(_))
    ));

    let client = Client::open(config(&path)).await.unwrap();
    let device = client.device_id();
    let secret = client.state().await.device_secret;
    assert!(!client.is_authorized().await);
    drop(client);
    assert!(key_file_path(&path).exists());
    let raw = std::fs::read(&path).unwrap();
    assert!(
        !contains(&raw, &secret[1..33]),
        "the secret keys are not stored in clear"
    );

    let again = Client::open(no_create).await.unwrap();
    assert_eq!(again.device_id(), device);
    assert_eq!(again.state().await.device_secret, secret);
}

#[tokio::test]
async fn passphrase_states_need_the_right_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut c = config(&path);
    c.state_key = StateKey::passphrase("open sesame");
    c.kdf = KdfParams::insecure_for_tests();
    Client::open(c.clone()).await.unwrap();
    assert!(!key_file_path(&path).exists());
    c.state_key = StateKey::passphrase("open barley");
    assert!(matches!(
        Client::open(c.clone()).await,
        Err(Error::StateDecrypt(_))
    ));
    c.state_key = StateKey::KeyFile;
    assert!(matches!(
        Client::open(c).await,
        Err(Error::PassphraseRequired(_))
    ));
}

#[tokio::test]
async fn requests_that_cannot_succeed_fail_before_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::open(config(&dir.path().join("s"))).await.unwrap();
    assert!(matches!(
        client.send_text("bob@example.com", "hi").await,
        Err(Error::NotAuthorized)
    ));
    assert!(matches!(
        client.fetch(Duration::ZERO).await,
        Err(Error::NotAuthorized)
    ));
    assert!(matches!(
        client.authorize("123456").await,
        Err(Error::NoPendingRegistration)
    ));
    assert!(matches!(
        client.register("not an identifier", false).await,
        Err(Error::Invalid(_))
    ));
    // Nothing listens on the discard port: the failure is one line.
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn link_requests_and_grants() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::open(config(&dir.path().join("new"))).await.unwrap();
    let request = client.link_request().await.unwrap();
    let encoded = request.strip_prefix(LINK_REQUEST_PREFIX).unwrap();
    let decoded =
        pb::LinkDeviceRequest::decode(URL_SAFE_NO_PAD.decode(encoded).unwrap().as_slice()).unwrap();
    assert_eq!(decoded.device_id, client.device_id().as_bytes().to_vec());
    let keys = PublicKeys::from_bundle(decoded.keys.as_ref().unwrap()).unwrap();

    // What the gateway would return, sealed to the new device's key.
    let creds = pb::Credentials {
        id: "box.device.1".into(),
        key: vec![7; 32],
    };
    let sealed = seal(&keys, CONTEXT_CREDENTIALS, &creds.encode_to_vec()).unwrap();
    let grant = |device_id: Vec<u8>| {
        let g = pb::LinkGrant {
            device_id,
            box_id: vec![0x11; 16],
            identifier: "alice@example.com".into(),
            sealed_credentials: sealed.encode_to_vec(),
            device_list_version: 2,
        };
        format!(
            "{LINK_GRANT_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(g.encode_to_vec())
        )
    };
    assert!(matches!(
        client.finish_link("garbage").await,
        Err(Error::Invalid(_))
    ));
    let err = client.finish_link(&grant(vec![9; 16])).await.unwrap_err();
    assert!(err.to_string().contains("another device"), "{err}");
    assert!(!client.is_authorized().await);

    let box_id = client
        .finish_link(&grant(decoded.device_id.clone()))
        .await
        .unwrap();
    assert_eq!(box_id.as_bytes(), &[0x11; 16]);
    assert!(client.is_authorized().await);
    assert_eq!(client.identifier().await, "alice@example.com");
    let state = client.state().await;
    assert_eq!(state.credentials, Some(creds));
    // An authorized device makes no link request, and a grant cannot be reused.
    assert!(matches!(
        client.link_request().await,
        Err(Error::AlreadyAuthorized(_))
    ));
    assert!(matches!(
        client.finish_link(&grant(decoded.device_id)).await,
        Err(Error::AlreadyAuthorized(_))
    ));
}
