//! Shared helpers of the gateway's integration tests: starting gateways on
//! loopback, SDK clients pinned to them, registering through the real API (codes
//! read from the `file:` verifier), a raw QUIC client that builds requests by hand,
//! and a snapshot of the whole key-value store to prove that a failed request
//! changed nothing.
//!
//! Every test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use prost::Message;
use rossby_client::{Batch, Body, Client, ClientConfig, RetryPolicy};
use rossby_gateway::{Config, Gateway};
use rossby_keyspace::{BoxId, DeviceId, Identifier};
use rossby_protocol::crypto::{CONTEXT_CREDENTIALS, DeviceKeys, open};
use rossby_protocol::framing;
use rossby_protocol::hawk::SignedRequest;
use rossby_protocol::hawk::{DeviceCredentials, EXPORTER_LABEL, EXPORTER_LEN, ServiceName};
use rossby_protocol::pb::{self, Method, Status};
use rossby_protocol::status::status_of;
use rossby_storage::tables::Store;
use rossby_storage::{KeyRange, ScanOrder};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

pub mod process;

/// Upper bound of every single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// Runs `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {WAIT:?}"),
    }
}

// ----- gateways -----

/// The `file:` verifier's code file of a gateway started with
/// [`Config::for_tests`] on `data_dir`.
pub fn codes_file(data_dir: &Path) -> PathBuf {
    data_dir.join("codes.txt")
}

/// Starts a test gateway on loopback (fjall in `data_dir`).
pub async fn start_gateway(data_dir: &Path) -> Gateway {
    start_with(Config::for_tests(data_dir)).await
}

/// Starts a gateway with a prepared configuration.
pub async fn start_with(config: Config) -> Gateway {
    bounded("gateway start", Gateway::start(config))
        .await
        .expect("the gateway starts")
}

/// The most recent code the verifier wrote for `identifier`.
pub fn last_code(codes: &Path, identifier: &str) -> String {
    codes_for(codes, identifier)
        .pop()
        .unwrap_or_else(|| panic!("no code was sent to {identifier}"))
}

/// Every code the verifier wrote for `identifier`, oldest first.
pub fn codes_for(codes: &Path, identifier: &str) -> Vec<String> {
    let id = Identifier::parse(identifier).expect("valid identifier");
    let prefix = format!("{} ", id.as_str());
    std::fs::read_to_string(codes)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

/// A six-digit code different from `code`.
pub fn wrong_code(code: &str) -> String {
    let n: u32 = code.parse().expect("numeric code");
    format!("{:06}", (n + 1) % 1_000_000)
}

// ----- SDK clients -----

/// A retry policy that gives up quickly (tests must not hang on a dead gateway).
pub fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        max_rate_limit_wait: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        max_connect_attempts: 2,
        request_timeout: Duration::from_secs(10),
    }
}

/// An SDK client with its state at `state`, pinned to `cert_der`, talking to `addr`.
pub async fn client_at(state: PathBuf, addr: SocketAddr, cert_der: &[u8]) -> Client {
    let mut config = ClientConfig::new(state, addr);
    config.ca_cert_der = Some(cert_der.to_vec());
    config.device_label = "test".into();
    config.retry = quick_retry();
    Client::open(config).await.expect("client opens")
}

/// An SDK client of `gateway` with its state at `state`.
pub async fn client(gateway: &Gateway, state: PathBuf) -> Client {
    client_at(state, gateway.quic_addr(), gateway.certificate_der()).await
}

/// Registers and authorizes `client` as `identifier`; returns its box.
pub async fn register(client: &Client, identifier: &str, codes: &Path) -> BoxId {
    bounded("register", client.register(identifier, false))
        .await
        .expect("register");
    let code = last_code(codes, identifier);
    bounded("authorize", client.authorize(&code))
        .await
        .expect("authorize")
}

/// A gateway under `dir/gw` and two registered users, `a` and `b`, one device
/// each (state files `dir/a.state`, `dir/b.state`). Keep the gateway alive for
/// as long as the clients are used.
pub async fn two_users(dir: &Path, a: &str, b: &str) -> (Gateway, Client, Client) {
    two_users_with(Config::for_tests(dir.join("gw")), dir, a, b).await
}

/// [`two_users`] on a gateway started with `config`, whose data directory must
/// be `dir/gw`.
pub async fn two_users_with(
    config: Config,
    dir: &Path,
    a: &str,
    b: &str,
) -> (Gateway, Client, Client) {
    let gateway = start_with(config).await;
    let codes = codes_file(&dir.join("gw"));
    let first = client(&gateway, dir.join("a.state")).await;
    let second = client(&gateway, dir.join("b.state")).await;
    register(&first, a, &codes).await;
    register(&second, b, &codes).await;
    (gateway, first, second)
}

/// Fetches without waiting and acknowledges; every envelope must verify.
pub async fn fetch_now(client: &Client) -> Batch {
    let batch = bounded("fetch", client.fetch(Duration::ZERO))
        .await
        .expect("fetch");
    assert!(batch.rejected.is_empty(), "rejected: {:?}", batch.rejected);
    batch
}

/// What a batch's messages hold, in order.
pub fn bodies(batch: &Batch) -> Vec<Body> {
    batch.messages.iter().map(|m| m.body.clone()).collect()
}

/// Links `new` (an unregistered client) to the box of `existing`.
pub async fn link(existing: &Client, new: &Client) -> BoxId {
    let request = new.link_request().await.expect("link request");
    let grant = bounded("link", existing.link_device(&request))
        .await
        .expect("link device");
    bounded("finish link", new.finish_link(&grant))
        .await
        .expect("finish link")
}

/// Copies a key-file protected state (snapshot, journal and key file) to `to`,
/// as a thief copying a device's files would.
pub fn copy_state(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let with = |p: &Path, suffix: &str| PathBuf::from(format!("{}{suffix}", p.display()));
    std::fs::copy(with(from, ".key"), with(to, ".key")).unwrap();
    let journal = rossby_client::state::journal_path(from);
    if journal.exists() {
        std::fs::copy(journal, rossby_client::state::journal_path(to)).unwrap();
    }
}

/// A raw protocol view of an SDK client (to read its queue without acking).
pub async fn raw_device(client: &Client) -> RawDevice {
    RawDevice {
        keys: keys_of(client).await,
        device_id: client.device_id(),
        box_id: client.box_id().await.unwrap(),
        creds: credentials_of(client).await,
    }
}

/// Fetches (acknowledging) until the queue is empty; fails on rejections.
pub async fn drain(client: &Client) -> Vec<Body> {
    let mut bodies = Vec::new();
    loop {
        let batch = bounded("fetch", client.fetch(Duration::ZERO))
            .await
            .expect("fetch");
        assert!(batch.rejected.is_empty(), "rejected: {:?}", batch.rejected);
        bodies.extend(batch.messages.iter().map(|m| m.body.clone()));
        if batch.ack_up_to.is_none_or(|a| a >= batch.last_seq) {
            return bodies;
        }
    }
}

/// The Hawk credentials an SDK client holds.
pub async fn credentials_of(client: &Client) -> DeviceCredentials {
    let creds = client.state().await.credentials.expect("authorized");
    DeviceCredentials {
        id: creds.id,
        key: creds.key.as_slice().try_into().expect("32-byte key"),
    }
}

/// The device keys an SDK client holds.
pub async fn keys_of(client: &Client) -> DeviceKeys {
    DeviceKeys::from_secret_bytes(&client.state().await.device_secret).expect("device keys")
}

// ----- raw protocol -----

static NONCE: AtomicU64 = AtomicU64::new(1);

/// A nonce never used before in this process.
pub fn fresh_nonce() -> String {
    format!(
        "t{}-{}",
        std::process::id(),
        NONCE.fetch_add(1, Ordering::Relaxed)
    )
}

/// An authorized device, registered through the real API.
#[derive(Clone)]
pub struct RawDevice {
    pub keys: DeviceKeys,
    pub device_id: DeviceId,
    pub box_id: BoxId,
    pub creds: DeviceCredentials,
}

/// One QUIC connection to a gateway on which requests are built by hand.
pub struct RawConn {
    endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    /// The connection's TLS exporter value (what Hawk's `ext` carries).
    pub exporter: [u8; EXPORTER_LEN],
    pub service: ServiceName,
}

impl RawConn {
    /// Connects to `gateway`, trusting exactly its certificate.
    pub async fn connect(gateway: &Gateway) -> RawConn {
        RawConn::try_connect_with(gateway, None)
            .await
            .expect("handshake")
    }

    /// Connects with the client transport settings `transport` (for example
    /// small receive windows: a client that does not read).
    pub async fn connect_with(gateway: &Gateway, transport: quinn::TransportConfig) -> RawConn {
        RawConn::try_connect_with(gateway, Some(transport))
            .await
            .expect("handshake")
    }

    /// Connects, returning the handshake's error if the gateway refuses.
    pub async fn try_connect_with(
        gateway: &Gateway,
        transport: Option<quinn::TransportConfig>,
    ) -> Result<RawConn, quinn::ConnectionError> {
        let config = gateway.client_config().expect("client config");
        RawConn::try_connect_to(gateway.quic_addr(), config, transport).await
    }

    /// Connects to a gateway at `addr` (another process), trusting exactly the
    /// certificate `cert_der`.
    pub async fn connect_to(
        addr: SocketAddr,
        cert_der: &[u8],
        transport: Option<quinn::TransportConfig>,
    ) -> RawConn {
        let cert = rustls::pki_types::CertificateDer::from(cert_der.to_vec());
        let config = rossby_gateway::tls::client_config(&[cert]).expect("client config");
        RawConn::try_connect_to(addr, config, transport)
            .await
            .expect("handshake")
    }

    async fn try_connect_to(
        addr: SocketAddr,
        mut config: quinn::ClientConfig,
        transport: Option<quinn::TransportConfig>,
    ) -> Result<RawConn, quinn::ConnectionError> {
        let mut endpoint =
            quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("UDP socket");
        if let Some(transport) = transport {
            config.transport_config(std::sync::Arc::new(transport));
        }
        endpoint.set_default_client_config(config);
        let conn = bounded(
            "QUIC handshake",
            endpoint.connect(addr, "localhost").expect("connect"),
        )
        .await?;
        let mut exporter = [0u8; EXPORTER_LEN];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .expect("TLS exporter");
        Ok(RawConn {
            endpoint,
            conn,
            exporter,
            service: ServiceName::default(),
        })
    }

    /// Writes `frame` on a new stream (tolerating the gateway refusing to read
    /// it) and returns the decoded response.
    pub async fn exchange(&self, frame: &[u8]) -> pb::Response {
        bounded("raw exchange", async {
            let (mut send, mut recv) = self.conn.open_bi().await.expect("open stream");
            let write = async {
                // The gateway may stop reading (oversize frames): not an error here.
                if send.write_all(frame).await.is_ok() {
                    let _ = send.finish();
                }
            };
            let read = recv.read_to_end(framing::DEFAULT_MAX_FRAME + framing::LENGTH_PREFIX);
            let ((), bytes) = tokio::join!(write, read);
            let bytes = bytes.expect("a response");
            framing::decode_one::<pb::Response>(&bytes, framing::DEFAULT_MAX_FRAME, "response")
                .expect("a response frame")
        })
        .await
    }

    /// Sends a request and returns the response.
    pub async fn send(&self, request: &pb::Request) -> pb::Response {
        self.exchange(&framing::encode(request)).await
    }

    /// A request signed by `device` for this connection, at `ts` with `nonce`.
    pub fn signed_at(
        &self,
        device: &RawDevice,
        method: Method,
        body: Vec<u8>,
        ts: SystemTime,
        nonce: &str,
    ) -> pb::Request {
        let authorization = SignedRequest {
            service: &self.service,
            method,
            body: &body,
            exporter: &self.exporter,
        }
        .sign(&device.creds, ts, nonce)
        .expect("sign");
        pb::Request {
            version: rossby_protocol::PROTOCOL_VERSION,
            method: method as i32,
            body,
            authorization,
        }
    }

    /// A request signed by `device` for this connection, now, with a fresh nonce.
    pub fn signed(&self, device: &RawDevice, method: Method, body: Vec<u8>) -> pb::Request {
        self.signed_at(device, method, body, SystemTime::now(), &fresh_nonce())
    }

    /// An authenticated call.
    pub async fn call<M: Message>(
        &self,
        device: &RawDevice,
        method: Method,
        message: &M,
    ) -> pb::Response {
        self.send(&self.signed(device, method, message.encode_to_vec()))
            .await
    }

    /// An unauthenticated call.
    pub async fn call_anonymous<M: Message>(&self, method: Method, message: &M) -> pb::Response {
        self.send(&pb::Request {
            version: rossby_protocol::PROTOCOL_VERSION,
            method: method as i32,
            body: message.encode_to_vec(),
            authorization: String::new(),
        })
        .await
    }

    /// Closes the connection and waits for the close to be sent.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Asserts `response` is OK and decodes its body.
pub fn ok<M: Message + Default>(response: &pb::Response) -> M {
    assert_eq!(
        status_of(response),
        Status::Ok,
        "expected OK, got {:?}: {}",
        status_of(response),
        response.message
    );
    M::decode(response.body.as_slice()).expect("response body decodes")
}

/// Asserts `response` carries `status`.
pub fn expect_status(response: &pb::Response, status: Status) {
    assert_eq!(
        status_of(response),
        status,
        "expected {status:?}, got {:?}: {}",
        status_of(response),
        response.message
    );
}

/// A Register request for a fresh device.
pub fn register_request(
    identifier: &str,
    keys: &DeviceKeys,
    device: DeviceId,
) -> pb::RegisterRequest {
    pb::RegisterRequest {
        identifier: identifier.into(),
        device_id: device.as_bytes().to_vec(),
        keys: Some(keys.bundle()),
        device_label: "raw".into(),
        recover: false,
        region: 0,
    }
}

/// Opens the sealed credentials of an Authorize or LinkDevice reply.
pub fn open_credentials(keys: &DeviceKeys, sealed: &[u8]) -> DeviceCredentials {
    let sealed = pb::Sealed::decode(sealed).expect("sealed credentials decode");
    let plain = open(keys, CONTEXT_CREDENTIALS, &sealed).expect("credentials open");
    let creds = pb::Credentials::decode(plain.as_slice()).expect("credentials decode");
    DeviceCredentials {
        id: creds.id,
        key: creds.key.as_slice().try_into().expect("32-byte key"),
    }
}

/// Registers a new account through the real API (Register, the code from the
/// `file:` verifier, Authorize) and returns its device with credentials.
pub async fn register_raw(conn: &RawConn, codes: &Path, identifier: &str) -> RawDevice {
    let keys = DeviceKeys::generate();
    let device_id = DeviceId::new();
    let response = conn
        .call_anonymous(
            Method::Register,
            &register_request(identifier, &keys, device_id),
        )
        .await;
    let _: pb::RegisterResponse = ok(&response);
    let authorize = pb::AuthorizeRequest {
        identifier: identifier.into(),
        device_id: device_id.as_bytes().to_vec(),
        code: last_code(codes, identifier),
        registration_lock_pin: String::new(),
    };
    let reply: pb::AuthorizeResponse =
        ok(&conn.call_anonymous(Method::Authorize, &authorize).await);
    let box_id = BoxId::try_from_slice(&reply.box_id).expect("box id");
    let creds = open_credentials(&keys, &reply.sealed_credentials);
    RawDevice {
        keys,
        device_id,
        box_id,
        creds,
    }
}

/// Registers `identifier` and stores `count` envelopes of `bytes` bytes in its
/// own box (what a Fetch then answers in one large reply).
pub async fn register_with_mail(
    conn: &RawConn,
    codes: &Path,
    identifier: &str,
    count: usize,
    bytes: usize,
) -> RawDevice {
    let device = register_raw(conn, codes, identifier).await;
    let own = device_list(conn, &device, identifier).await;
    for _ in 0..count {
        let request = send_request(&own, &device, &vec![7u8; bytes]);
        let sent: pb::SendResponse = ok(&conn.call(&device, Method::Send, &request).await);
        assert_eq!(sent.results[0].status, Status::Ok as i32);
    }
    device
}

/// Links a fresh device to `by`'s box through the real API.
pub async fn link_raw(conn: &RawConn, by: &RawDevice) -> RawDevice {
    let keys = DeviceKeys::generate();
    let device_id = DeviceId::new();
    let request = pb::LinkDeviceRequest {
        device_id: device_id.as_bytes().to_vec(),
        keys: Some(keys.bundle()),
        label: "linked".into(),
    };
    let reply: pb::LinkDeviceResponse = ok(&conn.call(by, Method::LinkDevice, &request).await);
    RawDevice {
        creds: open_credentials(&keys, &reply.sealed_credentials),
        keys,
        device_id,
        box_id: by.box_id,
    }
}

/// The device list of the user `identifier` as `by` sees it.
pub async fn device_list(conn: &RawConn, by: &RawDevice, identifier: &str) -> pb::DeviceList {
    let request = pb::RequestKeyRequest {
        identifier: identifier.into(),
        ..pb::RequestKeyRequest::default()
    };
    let reply: pb::RequestKeyResponse = ok(&conn.call(by, Method::RequestKey, &request).await);
    reply.devices.expect("a device list")
}

/// An `Envelope` of `body` (as its ciphertext, nothing encrypted: the gateway
/// never opens envelopes) from `from`, its key wrapped for every device of the
/// list `to` (the sending device excepted in its own box): the shape the
/// gateway accepts for that list.
pub fn envelope_for(to: &pb::DeviceList, from: &RawDevice, body: &[u8]) -> Vec<u8> {
    let own = to.box_id == from.box_id.as_bytes();
    pb::Envelope {
        version: 1,
        sender_box: from.box_id.as_bytes().to_vec(),
        sender_device: from.device_id.as_bytes().to_vec(),
        ciphertext: body.to_vec(),
        keys: to
            .devices
            .iter()
            .filter(|d| !(own && d.device_id == from.device_id.as_bytes()))
            .map(|d| pb::WrappedKey {
                device_id: d.device_id.clone(),
                sealed: None,
            })
            .collect(),
        ..pb::Envelope::default()
    }
    .encode_to_vec()
}

/// The ciphertext of an envelope made by [`envelope_for`].
pub fn body_of(envelope: &[u8]) -> Vec<u8> {
    pb::Envelope::decode(envelope)
        .expect("an Envelope")
        .ciphertext
}

/// A Send of one opaque envelope to one box.
pub fn send_request(to: &pb::DeviceList, from: &RawDevice, body: &[u8]) -> pb::SendRequest {
    pb::SendRequest {
        message_id: rossby_keyspace::MessageId::new().as_bytes().to_vec(),
        recipients: vec![pb::Recipient {
            box_id: to.box_id.clone(),
            device_list_version: to.version,
            envelope: envelope_for(to, from, body),
        }],
        ephemeral: false,
        attachments: Vec::new(),
        wake: pb::Wake::High as i32,
    }
}

/// Everything queued for `device` (fetched without waiting, not acknowledged).
pub async fn fetch_raw(conn: &RawConn, device: &RawDevice) -> pb::FetchResponse {
    ok(&conn
        .call(device, Method::Fetch, &pb::FetchRequest::default())
        .await)
}

// ----- storage -----

/// Every key and value in the store, read in one snapshot, except the leases
/// of gateways and their maintenance jobs.
pub async fn snapshot(store: &Store) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut txn = store.kv.begin().await.expect("begin");
    let everything = KeyRange {
        start: Vec::new(),
        end: None,
    };
    let pairs = txn
        .scan(&everything, usize::MAX, ScanOrder::Forward)
        .await
        .expect("scan");
    txn.rollback().await.expect("rollback");
    // The leases of the gateway's own background work are renewed on their own
    // schedule; they are not data a request changes.
    pairs
        .into_iter()
        .filter(|(key, _)| {
            !matches!(
                rossby_keyspace::Key::decode(key),
                Ok(rossby_keyspace::Key::MaintenanceLease(..)
                    | rossby_keyspace::Key::GatewayLease(..))
            )
        })
        .collect()
}

/// Asserts two snapshots are equal, naming the first differing key.
pub fn assert_unchanged(
    what: &str,
    before: &BTreeMap<Vec<u8>, Vec<u8>>,
    after: &BTreeMap<Vec<u8>, Vec<u8>>,
) {
    if before == after {
        return;
    }
    let changed: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .take(5)
        .map(hex::encode)
        .collect();
    panic!(
        "{what} changed storage ({} keys before, {} after); first changed keys: {changed:?}",
        before.len(),
        after.len()
    );
}

// ----- admin HTTP -----

/// A plain HTTP/1.1 GET against an admin listener: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "admin request timed out")
        })??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status"))?;
    Ok((status, body.to_string()))
}

/// The `rossby` CLI of this workspace, (re)built by Cargo in this test's profile.
/// The binary belongs to another package, so Cargo does not hand its path to
/// these tests; building it here also keeps a stale binary from being tested.
pub fn rossby_cli() -> PathBuf {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| {
        // <target>/<profile>/deps/<test>-<hash>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
            "debug" => "dev".to_string(),
            other => other.to_string(),
        };
        let output = Command::new(env!("CARGO"))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args(["build", "--quiet", "--message-format=json"])
            .args([
                "--profile",
                &profile,
                "-p",
                "rossby-client",
                "--bin",
                "rossby",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "building the rossby CLI failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "rossby")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the rossby executable")
    })
    .clone()
}

/// Runs `rossby --state <state> <args...>` without ROSSBY_* settings; returns
/// (exit code, stdout, stderr).
pub async fn rossby(state: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let cli = tokio::task::spawn_blocking(rossby_cli).await.unwrap();
    let mut command = Command::new(cli);
    command.arg("--state").arg(state).args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ROSSBY_") {
            command.env_remove(key);
        }
    }
    let output = bounded(
        "rossby",
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .unwrap()
    .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

// ----- groups -----

/// An `Envelope` holding what the gateway can tell of an MLS Commit of the group
/// `creator ‖ group_id`, made in `epoch`: an MLS 1.0 `PrivateMessage` header
/// with content type Commit, `tag` standing for its encrypted part. With
/// `welcome`, the welcome envelope of that Commit (an MLS Welcome of `welcome`).
pub fn commit_envelope(
    creator: BoxId,
    group_id: [u8; 16],
    epoch: u64,
    tag: &[u8],
    welcome: Option<&[u8]>,
) -> Vec<u8> {
    use rossby_protocol::mls;
    let mut mls_group = creator.as_bytes().to_vec();
    mls_group.extend_from_slice(&group_id);
    let commit = mls::frame_private(&mls_group, epoch, mls::ContentType::Commit, tag)
        .expect("a small Commit frames");
    let welcome = welcome.map(|w| {
        // version mls10, wire format mls_welcome, then the (opaque) rest.
        let mut out = vec![0, 1, 0, 3];
        out.extend_from_slice(w);
        out
    });
    pb::Envelope {
        version: 1,
        sender_box: creator.as_bytes().to_vec(),
        group: Some(pb::GroupMessage {
            creator_box: creator.as_bytes().to_vec(),
            group_id: group_id.to_vec(),
            mls: commit,
            welcome: welcome.unwrap_or_default(),
            ..pb::GroupMessage::default()
        }),
        ..pb::Envelope::default()
    }
    .encode_to_vec()
}
