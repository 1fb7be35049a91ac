//! Test harness: an [`Api`] on the memory backend with a `file:` verifier in a
//! temporary directory, and helpers that register devices and sign requests the
//! way a client does.

use super::{Api, Origin, Shared};
use crate::metrics::Metrics;
use crate::settings::{ApiSettings, Rate, RateLimits, VerifierSpec};
use prost::Message;
use rossby_keyspace::{BoxId, DeviceId, Identifier, LookupHasher, Pepper, RegionId};
use rossby_protocol::crypto::{CONTEXT_CREDENTIALS, DeviceKeys, open};
use rossby_protocol::hawk::{DeviceCredentials, SignedRequest};
use rossby_protocol::pb::{self, Method, Status};
use rossby_protocol::status::status_of;
use rossby_storage::Kv;
use rossby_storage::kv::memory::MemoryStore;
use rossby_storage::tables::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The server secret of test gateways.
pub(crate) const SECRET: [u8; 32] = [7; 32];

/// What a test may change about the gateway.
#[derive(Clone, Debug)]
pub(crate) struct TestSettings {
    pub code_max_attempts: u32,
    pub code_ttl: Duration,
    pub hawk_skew: Duration,
    pub max_recipients: usize,
    pub max_fetch_count: usize,
    /// Bytes of current device lists one Send reply carries.
    pub max_stale_list_bytes: usize,
    /// `(per_second, burst)`; `None` is unlimited.
    pub per_device: Option<(f64, f64)>,
    pub per_ip: Option<(f64, f64)>,
    pub registrations: Option<(f64, f64)>,
    pub discovery: Option<(f64, f64)>,
    pub sealed: Option<(f64, f64)>,
    pub stored_bytes: Option<(f64, f64)>,
    pub codes_per_address: Option<(f64, f64)>,
    /// Deployment-wide codes per hour: (all, per prefix or domain).
    pub code_budgets: Option<(u64, u64)>,
    /// The deployment's regions (docs/examples/three-regions.toml when set).
    pub three_regions: bool,
}

impl Default for TestSettings {
    fn default() -> Self {
        TestSettings {
            code_max_attempts: 5,
            code_ttl: Duration::from_secs(600),
            hawk_skew: Duration::from_secs(120),
            max_recipients: 16,
            max_fetch_count: 500,
            max_stale_list_bytes: 64 * 1024,
            per_device: None,
            per_ip: None,
            registrations: None,
            discovery: None,
            sealed: None,
            stored_bytes: None,
            codes_per_address: None,
            code_budgets: None,
            three_regions: false,
        }
    }
}

fn rate(limit: Option<(f64, f64)>) -> Rate {
    match limit {
        Some((per_second, burst)) => Rate { per_second, burst },
        None => Rate {
            per_second: f64::INFINITY,
            burst: f64::INFINITY,
        },
    }
}

/// A device that has keys but no credentials yet.
#[derive(Clone)]
pub(crate) struct NewDevice {
    pub keys: DeviceKeys,
    pub device_id: DeviceId,
}

/// An authorized device with its credentials.
#[derive(Clone)]
pub(crate) struct TestDevice {
    pub keys: DeviceKeys,
    pub box_id: BoxId,
    pub device_id: DeviceId,
    pub creds: DeviceCredentials,
}

impl TestDevice {
    /// The same keys and id, as a device to link.
    pub fn as_new_device(&self) -> NewDevice {
        NewDevice {
            keys: self.keys.clone(),
            device_id: self.device_id,
        }
    }
}

/// A gateway API under test. Cloning shares it.
#[derive(Clone)]
pub(crate) struct TestEnv {
    pub api: Arc<Api>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    dir: Arc<tempfile::TempDir>,
    region: RegionId,
}

static NONCES: AtomicU64 = AtomicU64::new(1);

impl TestEnv {
    /// `rossby_auth_failures_total{reason}` so far.
    pub fn auth_failures(&self, reason: &str) -> u64 {
        self.metrics
            .auth_failures_total
            .with_label_values(&[reason])
            .get()
    }

    pub fn new() -> Self {
        Self::with(TestSettings::default())
    }

    pub fn with(t: TestSettings) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut settings = ApiSettings::with_secret(SECRET.to_vec());
        settings.verifier = VerifierSpec::File(dir.path().join("codes.txt"));
        settings.code_max_attempts = t.code_max_attempts;
        settings.code_ttl = t.code_ttl;
        // Unbounded unless a test asks: many register users of one domain.
        let (all, prefix) = t.code_budgets.unwrap_or((u64::MAX, u64::MAX));
        settings.codes_per_hour = all;
        settings.codes_per_prefix_per_hour = prefix;
        settings.hawk_skew = t.hawk_skew;
        settings.max_recipients_per_send = t.max_recipients;
        settings.max_fetch_count = t.max_fetch_count;
        settings.max_stale_list_bytes = t.max_stale_list_bytes;
        settings.rate_limits = RateLimits {
            per_device: rate(t.per_device),
            per_ip: rate(t.per_ip),
            registrations_per_identifier: rate(t.registrations),
            discovery_per_device: rate(t.discovery),
            sealed_per_recipient: rate(t.sealed),
            stored_bytes_per_account: rate(t.stored_bytes),
            codes_per_address: rate(t.codes_per_address),
        };
        if t.three_regions {
            let example = include_str!("../../../docs/examples/three-regions.toml");
            settings.topology = Some(Arc::new(
                rossby_replication::Topology::parse(example).expect("the example topology"),
            ));
        }
        let region = settings.region;
        let kv: Kv = Arc::new(MemoryStore::new());
        let hasher = LookupHasher::new(
            vec![Pepper {
                version: 1,
                secret: vec![9; 32],
            }],
            1,
        )
        .expect("pepper");
        let store = Store::new(kv, hasher);
        let metrics = Arc::new(Metrics::new());
        let api = Api::new(settings, store.clone(), metrics.clone()).expect("api");
        TestEnv {
            api: Arc::new(api),
            store,
            metrics,
            dir: Arc::new(dir),
            region,
        }
    }

    pub fn clone_handle(&self) -> TestEnv {
        self.clone()
    }

    /// Another API over the same store, settings and code file, with these
    /// server secrets: a restart of the deployment with a rotated secret file.
    pub fn with_server_secrets(&self, secrets: crate::auth::secrets::ServerSecrets) -> TestEnv {
        let metrics = Arc::new(Metrics::new());
        let api = Api::with_server_secrets(
            self.api.shared.settings.clone(),
            secrets,
            self.store.clone(),
            metrics.clone(),
        )
        .expect("api");
        TestEnv {
            api: Arc::new(api),
            store: self.store.clone(),
            metrics,
            dir: self.dir.clone(),
            region: self.region,
        }
    }

    pub fn region(&self) -> RegionId {
        self.region
    }

    pub fn shared(&self) -> &Shared {
        &self.api.shared
    }

    pub fn presence_boxes(&self) -> usize {
        self.api.presence().tracked_boxes()
    }

    pub fn new_device() -> NewDevice {
        NewDevice {
            keys: DeviceKeys::generate(),
            device_id: DeviceId::new(),
        }
    }

    /// The exporter value of test connection `conn`.
    pub fn exporter(conn: u64) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[..8].copy_from_slice(&conn.to_be_bytes());
        e
    }

    /// Sends a request as connection `conn` (from 127.0.0.<conn>).
    pub async fn request(&self, conn: u64, request: pb::Request) -> pb::Response {
        let exporter = Self::exporter(conn);
        let remote: SocketAddr = SocketAddr::from(([127, 0, 0, (conn % 250) as u8 + 1], 40_000));
        let origin = Origin {
            conn_id: conn,
            remote,
            exporter: &exporter,
            connection: None,
            reply: None,
        };
        self.api.handle_from(&origin, request).await
    }

    pub async fn call_raw(&self, conn: u64, method: Method, body: Vec<u8>) -> pb::Response {
        let request = pb::Request {
            version: 1,
            method: method as i32,
            body,
            authorization: String::new(),
        };
        self.request(conn, request).await
    }

    pub async fn call<M: Message>(&self, conn: u64, method: Method, msg: &M) -> pb::Response {
        self.call_raw(conn, method, msg.encode_to_vec()).await
    }

    /// A signed request of `device` on connection `conn`, with the given time and nonce.
    pub fn signed_request(
        device: &TestDevice,
        conn: u64,
        method: Method,
        body: Vec<u8>,
        ts: SystemTime,
        nonce: &str,
    ) -> pb::Request {
        let service = rossby_protocol::hawk::ServiceName::default();
        let exporter = Self::exporter(conn);
        let signed = SignedRequest {
            service: &service,
            method,
            body: &body,
            exporter: &exporter,
        };
        let authorization = signed.sign(&device.creds, ts, nonce).expect("sign");
        pb::Request {
            version: 1,
            method: method as i32,
            body,
            authorization,
        }
    }

    pub fn fresh_nonce() -> String {
        format!("n{}", NONCES.fetch_add(1, Ordering::Relaxed))
    }

    pub async fn call_as<M: Message>(
        &self,
        device: &TestDevice,
        conn: u64,
        method: Method,
        msg: &M,
    ) -> pb::Response {
        let request = Self::signed_request(
            device,
            conn,
            method,
            msg.encode_to_vec(),
            SystemTime::now(),
            &Self::fresh_nonce(),
        );
        self.request(conn, request).await
    }

    /// The decoded body of an OK response (panics otherwise).
    pub fn body<M: Message + Default>(resp: &pb::Response) -> M {
        assert_eq!(status_of(resp), Status::Ok, "{}", resp.message);
        M::decode(resp.body.as_slice()).expect("response body")
    }

    pub fn code_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("codes.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn last_code(&self, identifier: &str) -> String {
        let id = Identifier::parse(identifier).expect("identifier");
        let prefix = format!("{} ", id.as_str());
        self.code_lines()
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .expect("a code was sent")
    }

    pub async fn register_request(
        &self,
        identifier: &str,
        device: &NewDevice,
        recover: bool,
    ) -> pb::Response {
        let req = pb::RegisterRequest {
            identifier: identifier.into(),
            device_id: device.device_id.as_bytes().to_vec(),
            keys: Some(device.keys.bundle()),
            device_label: "phone".into(),
            recover,
            region: 0,
        };
        self.call(1000, Method::Register, &req).await
    }

    pub async fn authorize_request(
        &self,
        identifier: &str,
        device: &NewDevice,
        code: &str,
    ) -> pb::Response {
        let req = pb::AuthorizeRequest {
            identifier: identifier.into(),
            device_id: device.device_id.as_bytes().to_vec(),
            code: code.into(),
            registration_lock_pin: String::new(),
        };
        self.call(1000, Method::Authorize, &req).await
    }

    /// Opens sealed credentials and checks they name the device.
    pub fn open_credentials(device: &NewDevice, box_id: BoxId, sealed: &[u8]) -> TestDevice {
        Self::open_credentials_of_version(device, box_id, sealed, 1)
    }

    /// [`TestEnv::open_credentials`] for credentials of key version `key_version`.
    pub fn open_credentials_of_version(
        device: &NewDevice,
        box_id: BoxId,
        sealed: &[u8],
        key_version: u32,
    ) -> TestDevice {
        let sealed = pb::Sealed::decode(sealed).expect("sealed credentials");
        let plain = open(&device.keys, CONTEXT_CREDENTIALS, &sealed).expect("credentials open");
        let creds = pb::Credentials::decode(plain.as_slice()).expect("credentials");
        assert_eq!(
            creds.id,
            crate::auth::keys::CredentialId {
                box_id,
                device: device.device_id,
                key_version,
                secret_version: 1,
            }
            .to_string()
        );
        TestDevice {
            keys: device.keys.clone(),
            box_id,
            device_id: device.device_id,
            creds: DeviceCredentials {
                id: creds.id,
                key: creds.key.as_slice().try_into().expect("32-byte key"),
            },
        }
    }

    async fn complete(&self, identifier: &str, recover: bool) -> TestDevice {
        let device = Self::new_device();
        let resp = self.register_request(identifier, &device, recover).await;
        let registered: pb::RegisterResponse = Self::body(&resp);
        assert!(registered.code_expires_at_ms > resp.server_time_ms);
        let code = self.last_code(identifier);
        let resp = self.authorize_request(identifier, &device, &code).await;
        let authorized: pb::AuthorizeResponse = Self::body(&resp);
        let box_id = BoxId::try_from_slice(&authorized.box_id).expect("box id");
        Self::open_credentials(&device, box_id, &authorized.sealed_credentials)
    }

    /// Registers a new account and returns its first device.
    pub async fn register(&self, identifier: &str) -> TestDevice {
        self.complete(identifier, false).await
    }

    /// Recovers an account on a fresh device.
    pub async fn recover(&self, identifier: &str) -> TestDevice {
        self.complete(identifier, true).await
    }

    pub async fn link_request(
        &self,
        by: &TestDevice,
        device: &NewDevice,
        label: &str,
    ) -> pb::Response {
        let req = pb::LinkDeviceRequest {
            device_id: device.device_id.as_bytes().to_vec(),
            keys: Some(device.keys.bundle()),
            label: label.into(),
        };
        self.call_as(by, 1, Method::LinkDevice, &req).await
    }

    /// Links a fresh device to `by`'s box.
    pub async fn link(&self, by: &TestDevice, label: &str) -> TestDevice {
        let device = Self::new_device();
        let resp = self.link_request(by, &device, label).await;
        let linked: pb::LinkDeviceResponse = Self::body(&resp);
        Self::open_credentials(&device, by.box_id, &linked.sealed_credentials)
    }

    pub async fn request_key(&self, by: &TestDevice, identifier: &str) -> pb::Response {
        let req = pb::RequestKeyRequest {
            identifier: identifier.into(),
            ..pb::RequestKeyRequest::default()
        };
        self.call_as(by, 1, Method::RequestKey, &req).await
    }

    pub async fn request_key_by_box(&self, by: &TestDevice, box_id: BoxId) -> pb::Response {
        let req = pb::RequestKeyRequest {
            box_id: box_id.as_bytes().to_vec(),
            ..pb::RequestKeyRequest::default()
        };
        self.call_as(by, 1, Method::RequestKey, &req).await
    }

    /// The device-list version of the user `identifier` as `by` sees it.
    pub async fn device_list_version(&self, by: &TestDevice, identifier: &str) -> u64 {
        let resp: pb::RequestKeyResponse = Self::body(&self.request_key(by, identifier).await);
        resp.devices.expect("device list").version
    }

    /// An `Envelope` whose ciphertext is `body` and whose key wraps are for
    /// the current authorized devices of `to` (less `from`'s device in its own
    /// box): what the gateway accepts as a per-device envelope. Nothing is
    /// encrypted; the gateway never opens envelopes.
    pub async fn envelope_to(&self, to: BoxId, from: Option<&TestDevice>, body: &[u8]) -> Vec<u8> {
        let store = &self.shared().store;
        let devices = rossby_storage::transact!(store, |txn| Ok(
            rossby_storage::tables::devices::recipients(txn, to)
                .await?
                .1
        ))
        .unwrap_or_default();
        let skip = from.filter(|f| f.box_id == to).map(|f| f.device_id);
        pb::Envelope {
            version: 1,
            sender_box: from
                .map(|f| f.box_id.as_bytes().to_vec())
                .unwrap_or_default(),
            sender_device: from
                .map(|f| f.device_id.as_bytes().to_vec())
                .unwrap_or_default(),
            ciphertext: body.to_vec(),
            keys: devices
                .into_iter()
                .filter(|(d, _)| Some(*d) != skip)
                .map(|(d, _)| pb::WrappedKey {
                    device_id: d.as_bytes().to_vec(),
                    sealed: None,
                })
                .collect(),
            ..pb::Envelope::default()
        }
        .encode_to_vec()
    }

    /// The ciphertext of an envelope made by [`TestEnv::envelope_to`].
    pub fn body_of(envelope: &[u8]) -> Vec<u8> {
        pb::Envelope::decode(envelope)
            .expect("an Envelope")
            .ciphertext
    }

    /// Sends one envelope to one box and returns its result.
    pub async fn send(
        &self,
        by: &TestDevice,
        to: BoxId,
        version: u64,
        payload: &[u8],
    ) -> pb::SendResult {
        let req = pb::SendRequest {
            message_id: rossby_keyspace::MessageId::new().as_bytes().to_vec(),
            recipients: vec![pb::Recipient {
                box_id: to.as_bytes().to_vec(),
                device_list_version: version,
                envelope: self.envelope_to(to, Some(by), payload).await,
            }],
            ephemeral: false,
            attachments: Vec::new(),
            wake: pb::Wake::High as i32,
        };
        let resp: pb::SendResponse = Self::body(&self.call_as(by, 1, Method::Send, &req).await);
        resp.results.into_iter().next().expect("one result")
    }

    /// Fetches with the gateway's bounds, waiting up to `wait_ms`.
    pub async fn fetch(&self, by: &TestDevice, wait_ms: u32) -> pb::FetchResponse {
        let req = pb::FetchRequest {
            wait_ms,
            ..pb::FetchRequest::default()
        };
        Self::body(&self.call_as(by, 1, Method::Fetch, &req).await)
    }
}
