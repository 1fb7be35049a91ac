//! The client SDK: [`Client`] and the API it exposes.
//!
//! A `Client` owns one device's encrypted state file and a lazily opened QUIC
//! connection to a gateway. Every method persists the state changes it makes
//! before returning. Methods take `&self`; a `Client` can be shared with `Arc`.
//! One `Client` at a time has a state file open: opening it again, in this or
//! another process, fails with [`Error::StateInUse`] until the first is dropped
//! or closed ([`Client::close`]).
//!
//! # Sending
//! [`Client::send_text`] encrypts the text once under a fresh content key, wraps
//! that key for every device of the recipient box, signs the envelope with this
//! device's identity key, and sends it together with a `SentCopy` for the own
//! box's other devices, under one UUIDv7 message id. When the gateway answers
//! `STALE_DEVICES` for a box, its device list is refreshed and that box's
//! envelope re-encrypted; the send is repeated with the **same** message id (the
//! gateway deduplicates per recipient box, sending device and message id, so
//! boxes that already got it are answered with their original sequence number).
//! A send that could not be confirmed stays in the state's outbox; sending the
//! same text to the same recipient again reuses its message id, so re-running a
//! failed command never delivers twice.
//!
//! # Receiving
//! [`Client::fetch_batch`] fetches queued envelopes, checks each against the
//! gateway's record (sender box, device, message id), verifies the sender
//! device's signature with keys fetched by box id (and cached), and decrypts.
//! Envelopes this device sent itself are skipped. Envelopes that fail a check,
//! and replays of an envelope accepted before (same sender box, device and
//! message id; the last 1000 are remembered), are reported as [`Rejected`].
//! Device lists that gain identity keys (a new device, a re-registration) are
//! reported as key changes until the user looks at the contact again. The caller then acknowledges with
//! [`Client::ack`] after it has handled the messages; [`Client::fetch`] does both.
//!
//! # Linking a device
//! 1. The new device creates its state and a link request:
//!    [`Client::link_request`] (`rossby --state new.state link --new`).
//! 2. An authorized device of the box calls [`Client::link_device`] with it
//!    (`rossby link <request>`): the gateway adds the device and returns its
//!    credentials sealed to the new device's key, which the SDK packs into a grant.
//! 3. The new device imports the grant with [`Client::finish_link`]
//!    (`rossby --state new.state link --finish <grant>`).
//!
//! Requests and grants are one-line `base64url` strings prefixed with
//! `rossby-link-request:` / `rossby-link-grant:`. Neither holds a secret: the
//! credentials in a grant open only with the new device's private key.
//!
//! # Refreshing credentials
//! When the deployment rotates its server secret, replies to requests signed with
//! credentials of the old secret version say `credentials_outdated`. After such a
//! call completes (and, for calls that could not check, before the next
//! authenticated call), the SDK fetches credentials of the current version once
//! ([`Client::refresh_credentials`]), saves them in the state, and only then uses
//! them. A failed refresh is not reported: the old credentials keep working until
//! the deployment removes their version, and the next outdated reply tries again.

use crate::connection::{
    Connection, GatewayConfig, RetryPolicy, Subscription, ok_body, one_line, unix_ms,
};
use crate::envelopes::{KeyCache, id16, open_queued_by, seal_for_list_cached};
use crate::error::{Error, Result};
use crate::groups::GroupEngine;
use crate::messages::Outgoing;
use crate::sealed::SealedOutcome;
use crate::state::{
    Compaction, Contact, KdfParams, OutboxEntry, SEEN_MESSAGES, SENT_LOG, SentLogEntry, State,
    StateIo, StateKey, StateStore,
};
use prost::Message;
use rossby_keyspace::{BoxId, DeviceId, Identifier, MessageId};
use rossby_protocol::crypto::{
    CONTEXT_CREDENTIALS, DeviceKeys, EnvelopeHeader, PublicKeys, open, safety_number,
};
use rossby_protocol::hawk::{DeviceCredentials, KEY_LEN, ServiceName};
use rossby_protocol::pb::{self, Method};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Default gateway address.
pub const DEFAULT_GATEWAY: &str = "127.0.0.1:7400";
pub use rossby_protocol::link::{LINK_GRANT_PREFIX, LINK_REQUEST_PREFIX};
/// Envelopes asked for per Fetch.
pub const FETCH_MAX_COUNT: u32 = 100;
/// Bytes asked for per Fetch (keeps the reply well inside the frame limit).
pub const FETCH_MAX_BYTES: u32 = 960 * 1024;
/// Outbox entries older than this are not retried automatically (the gateway
/// remembers message ids for 24 hours).
const OUTBOX_MAX_AGE_MS: i64 = 23 * 3600 * 1000;
/// Rounds of re-encryption after `STALE_DEVICES` before giving up.
const MAX_STALE_ROUNDS: usize = 4;

/// How to open a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The state file.
    pub state_path: PathBuf,
    /// Where the state's key comes from.
    pub state_key: StateKey,
    /// Argon2id parameters for a new passphrase-protected state.
    pub kdf: KdfParams,
    /// Create a fresh state (new device keys) if the file does not exist.
    pub create: bool,
    /// Label of a newly created device.
    pub device_label: String,
    /// Gateway address; `None`: the one remembered in the state, else
    /// [`DEFAULT_GATEWAY`].
    pub gateway: Option<SocketAddr>,
    /// TLS name of the gateway; `None`: remembered (if the gateway is too), else
    /// the gateway's IP address.
    pub server_name: Option<String>,
    /// Pinned certificate (DER); `None`: remembered, else the web PKI roots.
    pub ca_cert_der: Option<Vec<u8>>,
    /// Service name; `None`: remembered, else `rossby:7400`.
    pub service_name: Option<ServiceName>,
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// When the state's journal is folded into a new snapshot.
    pub state_compaction: Compaction,
}

impl ClientConfig {
    /// A configuration for `state_path` talking to `gateway`, creating the state
    /// if needed, protected by a key file.
    pub fn new(state_path: impl Into<PathBuf>, gateway: SocketAddr) -> Self {
        ClientConfig {
            state_path: state_path.into(),
            state_key: StateKey::KeyFile,
            kdf: KdfParams::default(),
            create: true,
            device_label: "rossby".into(),
            gateway: Some(gateway),
            server_name: None,
            ca_cert_der: None,
            service_name: None,
            retry: RetryPolicy::default(),
            state_compaction: Compaction::default(),
        }
    }
}

/// A looked-up contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactInfo {
    /// Its box.
    pub box_id: BoxId,
    /// The identifier (empty when known by box only).
    pub identifier: String,
    /// Its devices.
    pub devices: Vec<DeviceSummary>,
    /// Device-list version.
    pub device_list_version: u64,
    /// New identity keys appeared since the contact was last checked.
    pub keys_changed: bool,
}

/// One device of a box.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSummary {
    /// Device id.
    pub device_id: DeviceId,
    /// Label.
    pub label: String,
    /// Hex of the Ed25519 identity key.
    pub identity_key: String,
    /// Whether its key bundle verifies.
    pub valid: bool,
}

/// The outcome of a send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendReport {
    /// The message id used (also on every retry).
    pub message_id: MessageId,
    /// The recipient box.
    pub to_box: BoxId,
    /// Sequence number in the recipient's queue.
    pub seq: u64,
    /// The recipient has identity keys not seen before (a new device or a
    /// re-registration) that were not checked since: compare safety numbers.
    pub keys_changed: bool,
}

/// What a received message holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// A text message.
    Text(String),
    /// A message with attachments or a location (and maybe text).
    Message(pb::RichMessage),
    /// A copy of a message this user sent from another device.
    SentCopy {
        /// Recipient box.
        to_box: BoxId,
        /// Recipient identifier as the sending device knew it (may be empty).
        to: String,
        /// The text.
        text: String,
    },
    /// A copy of a message with attachments or a location this user sent from
    /// another device.
    SentMessage {
        /// Recipient box.
        to_box: BoxId,
        /// Recipient identifier as the sending device knew it (may be empty).
        to: String,
        /// The message.
        message: pb::RichMessage,
    },
    /// The recipient of messages this user sent got them, or read them.
    Receipt {
        /// Delivered or read.
        kind: pb::ReceiptKind,
        /// The messages, with what this device remembers of them.
        messages: Vec<ReceiptedMessage>,
    },
    /// The sender started (`true`) or stopped typing (ephemeral).
    Typing(bool),
    /// A signal such as a typing indicator.
    Signal(String),
    /// An MLS message.
    Mls(Vec<u8>),
    /// A message to a group.
    Group {
        /// The group's name.
        group: String,
        /// The text.
        text: String,
    },
    /// A message with attachments or a location to a group.
    GroupMessage {
        /// The group's name.
        group: String,
        /// The message.
        message: pb::RichMessage,
    },
    /// This device joined the named group.
    GroupJoined(String),
    /// This device was removed from the named group.
    GroupRemoved(String),
    /// This account left the named group (on another of its devices).
    GroupLeft(String),
    /// Nothing this client understands.
    Empty,
}

/// A message a receipt is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptedMessage {
    /// Its message id.
    pub message_id: [u8; 16],
    /// What this device sent, when it was this device and it still remembers
    /// (the beginning of the text, or what was attached).
    pub preview: Option<String>,
}

/// A received, verified and decrypted message.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// Sequence number in this box's queue (0 for ephemeral messages).
    pub seq: u64,
    /// The message id.
    pub message_id: [u8; 16],
    /// The sending box.
    pub sender_box: BoxId,
    /// The sending device.
    pub sender_device: DeviceId,
    /// The sender's identifier if known, else its box id.
    pub sender: String,
    /// The sender's clock when sending (ms since the epoch; unverified).
    pub sent_at_ms: u64,
    /// When the gateway enqueued it.
    pub enqueued_at_ms: u64,
    /// The content.
    pub body: Body,
}

/// An envelope that failed verification or decryption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Its sequence number.
    pub seq: u64,
    /// The claimed sender box (hex or uuid).
    pub sender: String,
    /// Why it was rejected.
    pub reason: String,
}

/// The result of one fetch, not yet acknowledged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Verified messages, in queue order.
    pub messages: Vec<Received>,
    /// Envelopes that failed checks.
    pub rejected: Vec<Rejected>,
    /// Messages that expired before this device fetched them (first, last seq).
    pub gap: Option<(u64, u64)>,
    /// Acknowledge up to here once the batch is handled (`None`: nothing to ack).
    pub ack_up_to: Option<u64>,
    /// The box's last sequence number: more may be waiting if above `ack_up_to`.
    pub last_seq: u64,
    /// Contacts whose keys changed while verifying senders.
    pub key_changes: Vec<String>,
}

/// Privacy settings of the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Others can find the account by identifier.
    pub discoverable: bool,
    /// Only contacts can send messages.
    pub contacts_only: bool,
}

/// Answer to a ping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pong {
    /// Gateway clock.
    pub server_time_ms: u64,
    /// Gateway region.
    pub region: u32,
    /// Round-trip time.
    pub rtt: Duration,
    /// The gateway's service name (`host:port`): requests are signed for it,
    /// so a client configured with another one is refused (empty from older
    /// gateways).
    pub service_name: String,
}

/// A send waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSend {
    /// Its message id.
    pub message_id: MessageId,
    /// Recipient box.
    pub to_box: BoxId,
    /// Recipient identifier if known.
    pub to: String,
    /// The text, or a description of a message with attachments, a location
    /// or a receipt.
    pub text: String,
    /// When first attempted.
    pub sent_at_ms: u64,
}

/// What [`Client::deliver_contents`] sends.
#[derive(Clone)]
pub(crate) struct Delivery<'a> {
    /// The message id (reused on retries).
    pub(crate) message_id: [u8; 16],
    /// For the recipient's devices.
    pub(crate) content: &'a pb::Content,
    /// For this account's other devices.
    pub(crate) copy: Option<&'a pb::Content>,
    /// Blob ids of the attachments referenced.
    pub(crate) attachments: Vec<Vec<u8>>,
    /// Push to online devices only; store nothing.
    pub(crate) ephemeral: bool,
    /// Whether recipient devices that are not connected get a wake-up push.
    pub(crate) wake: pb::Wake,
    /// The contents hold a message of a 1:1 conversation's MLS group: after
    /// `STALE_DEVICES` the send comes back to bring the group in line, rather
    /// than sealing the same contents for a device that is not in it.
    pub(crate) mls: bool,
}

/// Length of the (sender box, sender device, message id) part of a
/// remembered message; the queue sequence number it came at follows.
const SEEN_KEY_LEN: usize = 48;

/// Whether `key` (sender, message id, sequence number) repeats a remembered
/// message at another place in the queue. The same envelope fetched again
/// before it was acknowledged (after a crash, say) is not a replay.
fn is_replay(remembered: &[Vec<u8>], key: &[u8]) -> bool {
    remembered.iter().any(|r| {
        r.len() >= SEEN_KEY_LEN
            && key.len() >= SEEN_KEY_LEN
            && r[..SEEN_KEY_LEN] == key[..SEEN_KEY_LEN]
            && r != key
    })
}

/// An outbox entry as [`Client::outbox`] lists it.
fn pending_of(e: &OutboxEntry, contacts: &[Contact]) -> Option<PendingSend> {
    let to_box = box_id(<[u8; 16]>::try_from(e.to_box.as_slice()).ok()?);
    let message_id = MessageId::try_from_slice(&e.message_id).ok()?;
    let to = contacts
        .iter()
        .find(|c| c.box_id == e.to_box)
        .map(|c| c.identifier.clone())
        .unwrap_or_default();
    let text = match &e.receipt {
        Some(r) => crate::messages::describe_receipt(r),
        None => crate::messages::preview(&e.text, e.message.as_ref()),
    };
    Some(PendingSend {
        message_id,
        to_box,
        to,
        text,
        sent_at_ms: e.sent_at_ms,
    })
}

/// One device's view of a safety number with one device of a contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetyNumber {
    /// The contact's device.
    pub device_id: DeviceId,
    /// 12 groups of 5 digits.
    pub number: String,
}

/// The client SDK for one device.
pub struct Client {
    pub(crate) store: Mutex<StateStore>,
    pub(crate) keys: DeviceKeys,
    pub(crate) device_id: [u8; 16],
    pub(crate) conn: Connection,
    /// MLS groups ([`crate::groups`]). Lock order: `groups` before `store`.
    pub(crate) groups: Mutex<GroupEngine>,
    unconfirmed: std::sync::Mutex<Option<GatewaySettings>>,
    /// Held while credentials are refreshed, so concurrent calls refresh once.
    refreshing: Mutex<()>,
    /// Key bundles already verified (contacts' and own devices').
    pub(crate) key_cache: KeyCache,
    /// The credential-free connection of sealed sends ([`crate::sealed`]),
    /// opened on first use.
    pub(crate) anonymous: tokio::sync::OnceCell<Connection>,
}

/// Gateway settings to remember in the state once they worked.
struct GatewaySettings {
    gateway: String,
    server_name: String,
    service_name: String,
    ca_cert_der: Vec<u8>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("device_id", &DeviceId::from_bytes(self.device_id).ok())
            .finish_non_exhaustive()
    }
}

/// One recipient box of a send: its id, the content for it, and the device
/// to leave out (the sending device, for the own box).
type RecipientBox<'a> = ([u8; 16], &'a pb::Content, Option<[u8; 16]>);

/// The result of resolving a recipient.
pub(crate) struct Target {
    pub(crate) box_id: [u8; 16],
    pub(crate) identifier: String,
}

pub(crate) fn normalize(identifier: &str) -> Result<String> {
    Identifier::parse(identifier)
        .map(|i| i.as_str().to_string())
        .map_err(|e| Error::Invalid(format!("invalid identifier {identifier:?}: {e}")))
}

pub(crate) fn box_display(b: &[u8]) -> String {
    match <[u8; 16]>::try_from(b) {
        Ok(raw) => uuid::Uuid::from_bytes(raw).hyphenated().to_string(),
        Err(_) => hex::encode(b),
    }
}

pub(crate) fn box_id(raw: [u8; 16]) -> BoxId {
    // BoxId accepts any 16 bytes.
    BoxId::from_bytes(raw).unwrap_or_else(|_| BoxId::with_random(rossby_keyspace::RegionId(0), raw))
}

pub(crate) fn device_id(raw: [u8; 16]) -> DeviceId {
    DeviceId::from_bytes(raw).unwrap_or_default()
}

pub(crate) fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::BadReply(format!("undecodable {what}: {e}")))
}

fn summaries(cache: &KeyCache, list: &pb::DeviceList) -> Vec<DeviceSummary> {
    list.devices
        .iter()
        .filter_map(|d| {
            let id = <[u8; 16]>::try_from(d.device_id.as_slice()).ok()?;
            let keys = d.keys.as_ref();
            Some(DeviceSummary {
                device_id: device_id(id),
                label: one_line(&d.label),
                identity_key: keys
                    .map(|k| hex::encode(&k.identity_key))
                    .unwrap_or_default(),
                valid: keys.is_some_and(|k| cache.verified(&id, k).is_ok()),
            })
        })
        .collect()
}

fn identity_keys(list: &pb::DeviceList) -> HashSet<Vec<u8>> {
    list.devices
        .iter()
        .filter_map(|d| d.keys.as_ref().map(|k| k.identity_key.clone()))
        .collect()
}

/// Stores a verified device list for a contact; returns whether identity keys
/// appeared that were not known before (a new or replaced device).
fn upsert_contact(
    state: &mut State,
    list: pb::DeviceList,
    identifier: Option<&str>,
    now_ms: u64,
) -> bool {
    let index = state.contacts.iter().position(|c| c.box_id == list.box_id);
    let contact = match index {
        Some(i) => &mut state.contacts[i],
        None => {
            state.contacts.push(Contact {
                box_id: list.box_id.clone(),
                ..Contact::default()
            });
            let last = state.contacts.len() - 1;
            &mut state.contacts[last]
        }
    };
    if let Some(identifier) = identifier {
        // An identifier now bound elsewhere moved (recovery into a new box is
        // not possible, but be safe): the newest lookup wins.
        contact.identifier = identifier.to_string();
    }
    let changed = match &contact.devices {
        Some(old) => {
            let known = identity_keys(old);
            identity_keys(&list).iter().any(|k| !known.contains(k))
        }
        None => false,
    };
    if changed {
        contact.keys_changed = true;
    }
    contact.devices = Some(list);
    contact.fetched_at_ms = now_ms;
    if let Some(identifier) = identifier {
        let bound_box = contact.box_id.clone();
        for other in &mut state.contacts {
            if other.box_id != bound_box && other.identifier == identifier {
                other.identifier.clear();
            }
        }
    }
    changed
}

/// `content` with this account's sealed-sender access secret attached.
fn with_access_secret(content: &pb::Content, secret: Vec<u8>) -> pb::Content {
    pb::Content {
        access_secret: secret,
        ..content.clone()
    }
}

pub(crate) fn body_of(content: pb::Content) -> Body {
    let to_box_of = |raw: &[u8]| {
        <[u8; 16]>::try_from(raw)
            .map(box_id)
            .unwrap_or_else(|_| box_id([0; 16]))
    };
    match content.body {
        Some(pb::content::Body::Text(t)) => Body::Text(t),
        Some(pb::content::Body::Message(m)) => Body::Message(m),
        Some(pb::content::Body::Sent(s)) => match s.message {
            Some(message) => Body::SentMessage {
                to_box: to_box_of(&s.to_box),
                to: s.to_identifier,
                message,
            },
            None => Body::SentCopy {
                to_box: to_box_of(&s.to_box),
                to: s.to_identifier,
                text: s.text,
            },
        },
        Some(pb::content::Body::Receipt(r)) => Body::Receipt {
            kind: pb::ReceiptKind::try_from(r.kind).unwrap_or(pb::ReceiptKind::Unspecified),
            messages: r
                .message_ids
                .iter()
                .filter_map(|id| <[u8; 16]>::try_from(id.as_slice()).ok())
                .map(|message_id| ReceiptedMessage {
                    message_id,
                    preview: None,
                })
                .collect(),
        },
        Some(pb::content::Body::Typing(t)) => Body::Typing(t.typing),
        Some(pb::content::Body::Signal(s)) => Body::Signal(s),
        Some(pb::content::Body::Mls(m)) => Body::Mls(m),
        None => Body::Empty,
    }
}

impl Client {
    /// Opens (or, with `config.create`, creates) the state file and prepares the
    /// connection (connected lazily on the first request). Must run inside a
    /// tokio runtime. Fails with [`Error::StateInUse`] while another `Client`
    /// has the state open.
    pub async fn open(config: ClientConfig) -> Result<Self> {
        let mut store = match StateStore::open(&config.state_path, &config.state_key) {
            Ok(s) => s,
            Err(Error::NoState(path)) if config.create => {
                let keys = DeviceKeys::generate();
                let state = State {
                    format: 1,
                    device_id: DeviceId::new().as_bytes().to_vec(),
                    device_secret: keys.to_secret_bytes(),
                    device_label: config.device_label.clone(),
                    ..State::default()
                };
                StateStore::create(&path, &config.state_key, config.kdf, state)?
            }
            Err(e) => return Err(e),
        };
        store.set_compaction(config.state_compaction);
        let keys = DeviceKeys::from_secret_bytes(&store.state.device_secret).map_err(|e| {
            Error::StateFormat {
                path: config.state_path.clone(),
                reason: format!("device keys: {e}"),
            }
        })?;
        let device_id = <[u8; 16]>::try_from(store.state.device_id.as_slice()).map_err(|_| {
            Error::StateFormat {
                path: config.state_path.clone(),
                reason: "device id must be 16 bytes".into(),
            }
        })?;

        // Gateway settings: explicit configuration, else remembered, else defaults.
        let s = &store.state;
        let remembered_gateway: Option<SocketAddr> = s.gateway.parse().ok();
        let gateway = config
            .gateway
            .or(remembered_gateway)
            .or_else(|| DEFAULT_GATEWAY.parse().ok())
            .ok_or_else(|| Error::Config("no gateway address".into()))?;
        let server_name = match (&config.server_name, config.gateway) {
            (Some(n), _) => n.clone(),
            (None, Some(g)) => g.ip().to_string(),
            (None, None) if !s.server_name.is_empty() => s.server_name.clone(),
            (None, None) => gateway.ip().to_string(),
        };
        let ca_cert_der = config
            .ca_cert_der
            .clone()
            .or_else(|| (!s.ca_cert_der.is_empty()).then(|| s.ca_cert_der.clone()));
        let service = match &config.service_name {
            Some(n) => n.clone(),
            None if !s.service_name.is_empty() => s
                .service_name
                .parse()
                .map_err(|e| Error::Config(format!("remembered service name: {e}")))?,
            None => ServiceName::default(),
        };
        let service_text = service.to_string();
        let ca_bytes = ca_cert_der.clone().unwrap_or_default();
        // Remembered only once the gateway answered through them, so a mistyped
        // option does not stick.
        let unconfirmed = (s.gateway != gateway.to_string()
            || s.server_name != server_name
            || s.service_name != service_text
            || s.ca_cert_der != ca_bytes)
            .then(|| GatewaySettings {
                gateway: gateway.to_string(),
                server_name: server_name.clone(),
                service_name: service_text,
                ca_cert_der: ca_bytes,
            });
        let groups = GroupEngine::from_state(store.state.groups.as_ref())?;
        let conn = Connection::new(GatewayConfig {
            addr: gateway,
            server_name,
            ca_cert_der,
            service,
            retry: config.retry,
        })?;
        Ok(Client {
            store: Mutex::new(store),
            keys,
            device_id,
            conn,
            groups: Mutex::new(groups),
            unconfirmed: std::sync::Mutex::new(unconfirmed),
            refreshing: Mutex::new(()),
            key_cache: KeyCache::default(),
            anonymous: tokio::sync::OnceCell::new(),
        })
    }

    /// Remembers the gateway settings in the state after a request through
    /// them succeeded.
    async fn confirm_settings(&self) -> Result<()> {
        let pending = match self.unconfirmed.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(settings) = pending else {
            return Ok(());
        };
        let mut store = self.store.lock().await;
        store.state.gateway = settings.gateway;
        store.state.server_name = settings.server_name;
        store.state.service_name = settings.service_name;
        store.state.ca_cert_der = settings.ca_cert_der;
        store.save()
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        device_id(self.device_id)
    }

    /// The service name this client signs its requests for (`host:port`).
    pub fn service_name(&self) -> String {
        self.conn.config().service.to_string()
    }

    /// This device's public key bundle.
    pub fn key_bundle(&self) -> pb::KeyBundle {
        self.keys.bundle()
    }

    /// The box this device belongs to, once authorized.
    pub async fn box_id(&self) -> Option<BoxId> {
        let store = self.store.lock().await;
        <[u8; 16]>::try_from(store.state.box_id.as_slice())
            .ok()
            .map(box_id)
    }

    /// The identifier the account is registered under (or being registered for).
    pub async fn identifier(&self) -> String {
        self.store.lock().await.state.identifier.clone()
    }

    /// True once the device holds credentials.
    pub async fn is_authorized(&self) -> bool {
        self.store.lock().await.state.credentials.is_some()
    }

    /// A copy of the decrypted state (for inspection and tests).
    pub async fn state(&self) -> State {
        self.store.lock().await.state.clone()
    }

    /// What persisting the state wrote to disk since this client was opened.
    pub async fn state_io(&self) -> StateIo {
        self.store.lock().await.io()
    }

    /// Where this device's box lives, when the last authenticated reply said it
    /// is homed in another region than the gateway's: its region code and that
    /// region's gateways (closer to the box's data). `None` when it is local.
    pub fn home_hint(&self) -> Option<crate::HomeHint> {
        self.conn.home_hint()
    }

    /// The connection to the gateway.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Closes the connection and lets another `Client` open the state file.
    /// This client stays usable: its next change takes the state file back,
    /// or fails with [`Error::StateInUse`] if another client changed it since.
    pub async fn close(&self) {
        self.conn.close().await;
        self.store.lock().await.release();
    }

    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(unix_ms(self.conn.now())).unwrap_or(0)
    }

    /// The credentials to sign the next request with (refreshed first when a
    /// reply said they are outdated).
    pub(crate) async fn credentials(&self) -> Result<DeviceCredentials> {
        self.refresh_if_outdated().await;
        self.stored_credentials().await
    }

    async fn stored_credentials(&self) -> Result<DeviceCredentials> {
        let store = self.store.lock().await;
        let creds = store
            .state
            .credentials
            .as_ref()
            .ok_or(Error::NotAuthorized)?;
        let key: [u8; KEY_LEN] = creds
            .key
            .as_slice()
            .try_into()
            .map_err(|_| Error::Crypto("stored Hawk key must be 32 bytes".into()))?;
        Ok(DeviceCredentials {
            id: creds.id.clone(),
            key,
        })
    }

    /// Fetches credentials under the gateway's current server secret version
    /// (RefreshCredentials; this device keeps its key version) and saves them in
    /// the state before anything uses them. The SDK does this by itself when a
    /// reply says `credentials_outdated`; call it only to force a refresh.
    pub async fn refresh_credentials(&self) -> Result<()> {
        self.refresh(None).await
    }

    /// After an authenticated call: refreshes once when a reply said the stored
    /// credentials are outdated. Best effort (see the module documentation).
    async fn refresh_if_outdated(&self) {
        let Some(id) = self.conn.outdated_credentials() else {
            return;
        };
        // A failure leaves the old credentials in place; they still work.
        let _ = self.refresh(Some(&id)).await;
    }

    /// Refreshes the stored credentials; with `outdated`, only if they still are
    /// the ones with that id.
    async fn refresh(&self, outdated: Option<&str>) -> Result<()> {
        let _one_at_a_time = self.refreshing.lock().await;
        let old = self.stored_credentials().await?;
        if let Some(id) = outdated
            && old.id != id
        {
            // Already replaced (by a concurrent refresh, or a new registration).
            self.conn.clear_outdated(id);
            return Ok(());
        }
        let body = self
            .conn
            .call_ok(
                Method::RefreshCredentials,
                &pb::RefreshCredentialsRequest {}.encode_to_vec(),
                Some(&old),
                Duration::ZERO,
            )
            .await?;
        let reply: pb::RefreshCredentialsResponse = decode(&body, "refresh response")?;
        let fresh = self.open_credentials(&reply.sealed_credentials)?;
        {
            let mut store = self.store.lock().await;
            if store.state.credentials.as_ref().map(|c| c.id.as_str()) != Some(old.id.as_str()) {
                // The device was signed out or re-registered meanwhile.
                return Ok(());
            }
            let previous = store.state.credentials.replace(fresh);
            if let Err(err) = store.save() {
                store.state.credentials = previous;
                return Err(err);
            }
        }
        self.conn.clear_outdated(&old.id);
        Ok(())
    }

    pub(crate) async fn own_box(&self) -> Result<[u8; 16]> {
        let store = self.store.lock().await;
        <[u8; 16]>::try_from(store.state.box_id.as_slice()).map_err(|_| Error::NotAuthorized)
    }

    /// Sends an authenticated request and decodes the OK response.
    pub(crate) async fn rpc<Req: Message, Resp: Message + Default>(
        &self,
        method: Method,
        request: &Req,
    ) -> Result<Resp> {
        let creds = self.credentials().await?;
        let body = self
            .conn
            .call_ok(
                method,
                &request.encode_to_vec(),
                Some(&creds),
                Duration::ZERO,
            )
            .await;
        self.refresh_if_outdated().await;
        let body = body?;
        self.confirm_settings().await?;
        decode(&body, "response")
    }

    /// Sends an unauthenticated request and decodes the OK response.
    async fn rpc_anonymous<Req: Message, Resp: Message + Default>(
        &self,
        method: Method,
        request: &Req,
    ) -> Result<Resp> {
        let body = self
            .conn
            .call_ok(method, &request.encode_to_vec(), None, Duration::ZERO)
            .await?;
        self.confirm_settings().await?;
        decode(&body, "response")
    }

    // ----- account -----

    /// Starts registering `identifier` (phone number or e-mail address): the
    /// gateway sends a code out of band; complete with [`Client::authorize`].
    /// `recover` replaces the devices of an account already bound to it. An
    /// identifier that is already registered gets a code like any other;
    /// without `recover`, [`Client::authorize`] then fails with
    /// `ALREADY_REGISTERED`. Returns when the code expires (ms since the epoch).
    pub async fn register(&self, identifier: &str, recover: bool) -> Result<u64> {
        self.register_homed(identifier, recover, None).await
    }

    /// [`Client::register`] asking for the new box to be homed in `region`
    /// (`None`: the gateway's region). Gateways with a topology refuse regions it
    /// does not name (`STATUS_BAD_REQUEST`).
    pub async fn register_homed(
        &self,
        identifier: &str,
        recover: bool,
        region: Option<rossby_keyspace::RegionId>,
    ) -> Result<u64> {
        let identifier = normalize(identifier)?;
        let label = {
            let store = self.store.lock().await;
            if store.state.credentials.is_some() {
                return Err(Error::AlreadyAuthorized(box_display(&store.state.box_id)));
            }
            store.state.device_label.clone()
        };
        let request = pb::RegisterRequest {
            identifier: identifier.clone(),
            device_id: self.device_id.to_vec(),
            keys: Some(self.keys.bundle()),
            device_label: label,
            recover,
            region: region.map_or(0, |r| u32::from(r.0)),
        };
        let response: pb::RegisterResponse = self.rpc_anonymous(Method::Register, &request).await?;
        let mut store = self.store.lock().await;
        store.state.identifier = identifier;
        store.state.registration_pending = true;
        store.save()?;
        Ok(response.code_expires_at_ms)
    }

    /// Completes the pending registration with the code; returns the box id.
    pub async fn authorize(&self, code: &str) -> Result<BoxId> {
        self.authorize_with(code, None).await
    }

    /// [`Client::authorize`], with the registration-lock PIN a recovery of a
    /// locked account needs.
    pub(crate) async fn authorize_with(&self, code: &str, pin: Option<&str>) -> Result<BoxId> {
        let identifier = {
            let store = self.store.lock().await;
            if store.state.credentials.is_some() {
                return Err(Error::AlreadyAuthorized(box_display(&store.state.box_id)));
            }
            if !store.state.registration_pending {
                return Err(Error::NoPendingRegistration);
            }
            store.state.identifier.clone()
        };
        let request = pb::AuthorizeRequest {
            identifier,
            device_id: self.device_id.to_vec(),
            code: code.trim().to_string(),
            registration_lock_pin: pin.unwrap_or_default().to_string(),
        };
        let response: pb::AuthorizeResponse =
            self.rpc_anonymous(Method::Authorize, &request).await?;
        let box_raw = id16(&response.box_id, "box id")?;
        let credentials = self.open_credentials(&response.sealed_credentials)?;
        {
            let mut store = self.store.lock().await;
            let s = &mut store.state;
            s.box_id = box_raw.to_vec();
            s.credentials = Some(credentials);
            s.registration_pending = false;
            s.own_devices = None;
            s.acked_seq = 0;
            s.last_seq = 0;
            s.outbox.clear();
            store.save()?;
        }
        // Best effort: learn the own box's devices and publish KeyPackages now.
        // The gateway this device was pointed at answered as the new device:
        // remember it (and its service name), as registering does.
        if self.devices().await.is_ok() {
            self.confirm_settings().await?;
        }
        let _ = self.publish_key_packages().await;
        Ok(box_id(box_raw))
    }

    fn open_credentials(&self, sealed: &[u8]) -> Result<pb::Credentials> {
        let sealed: pb::Sealed = decode(sealed, "sealed credentials")?;
        let plain = zeroize::Zeroizing::new(
            open(&self.keys, CONTEXT_CREDENTIALS, &sealed)
                .map_err(|e| Error::Crypto(format!("cannot open the sealed credentials: {e}")))?,
        );
        let creds: pb::Credentials = decode(&plain, "credentials")?;
        if creds.key.len() != KEY_LEN || creds.id.is_empty() {
            return Err(Error::BadReply(
                "credentials have an invalid id or key".into(),
            ));
        }
        Ok(creds)
    }

    /// The one-line link request of this (new, unauthorized) device.
    pub async fn link_request(&self) -> Result<String> {
        let store = self.store.lock().await;
        if store.state.credentials.is_some() {
            return Err(Error::AlreadyAuthorized(box_display(&store.state.box_id)));
        }
        let request = pb::LinkDeviceRequest {
            device_id: self.device_id.to_vec(),
            keys: Some(self.keys.bundle()),
            label: store.state.device_label.clone(),
        };
        Ok(rossby_protocol::link::encode_link_request(&request))
    }

    /// Links the device of a link request to this device's box and returns the
    /// one-line grant for the new device.
    pub async fn link_device(&self, link_request: &str) -> Result<String> {
        let request = rossby_protocol::link::decode_link_request(link_request)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let new_device = <[u8; 16]>::try_from(request.device_id.as_slice())
            .map_err(|_| Error::Invalid("the link request has an invalid device id".into()))?;
        let keys = request
            .keys
            .as_ref()
            .ok_or_else(|| Error::Invalid("the link request has no keys".into()))?;
        PublicKeys::from_bundle(keys)
            .map_err(|e| Error::Invalid(format!("the link request's keys are invalid: {e}")))?;
        let response: pb::LinkDeviceResponse = self.rpc(Method::LinkDevice, &request).await?;
        let (own_box, identifier) = {
            let store = self.store.lock().await;
            (store.state.box_id.clone(), store.state.identifier.clone())
        };
        let grant = pb::LinkGrant {
            device_id: new_device.to_vec(),
            box_id: own_box,
            identifier,
            sealed_credentials: response.sealed_credentials,
            device_list_version: response.device_list_version,
        };
        let _ = self.devices().await;
        Ok(rossby_protocol::link::encode_link_grant(&grant))
    }

    /// Imports a link grant made by [`Client::link_device`] for this device.
    pub async fn finish_link(&self, grant: &str) -> Result<BoxId> {
        let grant = rossby_protocol::link::decode_link_grant(grant)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        if grant.device_id != self.device_id {
            return Err(Error::Invalid(
                "this link grant is for another device".into(),
            ));
        }
        let box_raw = <[u8; 16]>::try_from(grant.box_id.as_slice())
            .map_err(|_| Error::Invalid("the link grant has an invalid box id".into()))?;
        let credentials = self.open_credentials(&grant.sealed_credentials)?;
        {
            let mut store = self.store.lock().await;
            if store.state.credentials.is_some() {
                return Err(Error::AlreadyAuthorized(box_display(&store.state.box_id)));
            }
            let s = &mut store.state;
            s.box_id = box_raw.to_vec();
            s.identifier = grant.identifier;
            s.credentials = Some(credentials);
            s.registration_pending = false;
            s.own_devices = None;
            store.save()?;
        }
        // The gateway this device was pointed at answered as the new device:
        // remember it (and its service name), as registering does.
        if self.devices().await.is_ok() {
            self.confirm_settings().await?;
        }
        let _ = self.publish_key_packages().await;
        Ok(box_id(box_raw))
    }

    /// Lists the own box's devices (and remembers them).
    pub async fn devices(&self) -> Result<Vec<DeviceSummary>> {
        let list = self.refresh_own_devices().await?;
        Ok(summaries(&self.key_cache, &list))
    }

    async fn refresh_own_devices(&self) -> Result<pb::DeviceList> {
        let response: pb::ListDevicesResponse = self
            .rpc(Method::ListDevices, &pb::ListDevicesRequest {})
            .await?;
        let list = response
            .devices
            .ok_or_else(|| Error::BadReply("no device list".into()))?;
        let mut store = self.store.lock().await;
        if list.box_id != store.state.box_id {
            return Err(Error::BadReply("the device list is for another box".into()));
        }
        store.state.own_devices = Some(list.clone());
        store.save()?;
        Ok(list)
    }

    /// Removes a device from the own box (this device too: then its
    /// credentials are forgotten). Returns the new device-list version.
    pub async fn remove_device(&self, device: DeviceId) -> Result<u64> {
        let request = pb::RemoveDeviceRequest {
            device_id: device.as_bytes().to_vec(),
        };
        let response: pb::RemoveDeviceResponse = self.rpc(Method::RemoveDevice, &request).await?;
        let mut groups = self.groups.lock().await;
        let mut store = self.store.lock().await;
        if device.as_bytes() == &self.device_id {
            groups.reset()?;
            forget_account(&mut store.state);
        } else {
            store.state.own_devices = None;
        }
        store.save()?;
        Ok(response.device_list_version)
    }

    /// Deletes the account and all its data; the local state keeps only this
    /// device's keys.
    pub async fn delete_account(&self) -> Result<()> {
        let _: pb::DeleteAccountResponse = self
            .rpc(Method::DeleteAccount, &pb::DeleteAccountRequest {})
            .await?;
        let mut groups = self.groups.lock().await;
        groups.reset()?;
        let mut store = self.store.lock().await;
        forget_account(&mut store.state);
        store.state.identifier.clear();
        store.save()
    }

    /// Changes privacy settings; `None` keeps a value.
    pub async fn update_settings(
        &self,
        discoverable: Option<bool>,
        contacts_only: Option<bool>,
    ) -> Result<Settings> {
        let request = pb::UpdateSettingsRequest {
            discoverable,
            contacts_only,
            ..pb::UpdateSettingsRequest::default()
        };
        let response: pb::UpdateSettingsResponse =
            self.rpc(Method::UpdateSettings, &request).await?;
        Ok(Settings {
            discoverable: response.discoverable,
            contacts_only: response.contacts_only,
        })
    }

    // ----- contacts -----

    /// Looks a user up by identifier (adding it to the account's contacts),
    /// verifies its device keys and remembers them. `keys_changed` reports new
    /// identity keys since the last check; looking up clears that mark.
    pub async fn contact(&self, identifier: &str) -> Result<ContactInfo> {
        let identifier = normalize(identifier)?;
        let (list, mut changed) = self.lookup_identifier(&identifier).await?;
        let mut store = self.store.lock().await;
        if let Some(c) = store
            .state
            .contacts
            .iter_mut()
            .find(|c| c.box_id == list.box_id)
        {
            changed |= c.keys_changed;
            c.keys_changed = false;
        }
        store.save()?;
        let raw = id16(&list.box_id, "box id")?;
        Ok(ContactInfo {
            box_id: box_id(raw),
            identifier,
            devices: summaries(&self.key_cache, &list),
            device_list_version: list.version,
            keys_changed: changed,
        })
    }

    /// The contacts this device knows (without network access).
    pub async fn contacts(&self) -> Vec<ContactInfo> {
        let store = self.store.lock().await;
        store
            .state
            .contacts
            .iter()
            .filter_map(|c| {
                let raw = <[u8; 16]>::try_from(c.box_id.as_slice()).ok()?;
                let list = c.devices.clone().unwrap_or_default();
                Some(ContactInfo {
                    box_id: box_id(raw),
                    identifier: c.identifier.clone(),
                    devices: summaries(&self.key_cache, &list),
                    device_list_version: list.version,
                    keys_changed: c.keys_changed,
                })
            })
            .collect()
    }

    async fn lookup_identifier(&self, identifier: &str) -> Result<(pb::DeviceList, bool)> {
        let request = pb::RequestKeyRequest {
            identifier: identifier.to_string(),
            add_contact: true,
            box_id: Vec::new(),
        };
        let response: pb::RequestKeyResponse = match self.rpc(Method::RequestKey, &request).await {
            Err(e) if e.status() == Some(pb::Status::NotFound) => {
                return Err(Error::UnknownRecipient(identifier.to_string()));
            }
            other => other?,
        };
        let list = response
            .devices
            .ok_or_else(|| Error::BadReply("no device list".into()))?;
        id16(&list.box_id, "box id")?;
        let now = self.now_ms();
        let mut store = self.store.lock().await;
        let changed = upsert_contact(&mut store.state, list.clone(), Some(identifier), now);
        store.save()?;
        Ok((list, changed))
    }

    /// Fetches (and caches) the device list of a box by id. Returns the list and
    /// whether its identity keys changed.
    pub(crate) async fn lookup_box(&self, box_raw: &[u8; 16]) -> Result<(pb::DeviceList, bool)> {
        if box_raw.as_slice() == self.own_box().await?.as_slice() {
            return Ok((self.refresh_own_devices().await?, false));
        }
        let request = pb::RequestKeyRequest {
            identifier: String::new(),
            add_contact: false,
            box_id: box_raw.to_vec(),
        };
        let response: pb::RequestKeyResponse = self.rpc(Method::RequestKey, &request).await?;
        let list = response
            .devices
            .ok_or_else(|| Error::BadReply("no device list".into()))?;
        if list.box_id != box_raw {
            return Err(Error::BadReply("the device list is for another box".into()));
        }
        let now = self.now_ms();
        let mut store = self.store.lock().await;
        let changed = upsert_contact(&mut store.state, list.clone(), None, now);
        store.save()?;
        Ok((list, changed))
    }

    /// Adopts the current device list a `STALE_DEVICES` answer carried (when it
    /// is for the right box and every device has keys), else looks it up.
    pub(crate) async fn adopt_list(
        &self,
        box_raw: &[u8; 16],
        current: Option<pb::DeviceList>,
    ) -> Result<pb::DeviceList> {
        let usable = current.filter(|l| {
            l.box_id == box_raw
                && !l.devices.is_empty()
                && l.devices.iter().all(|d| d.keys.is_some())
        });
        let Some(list) = usable else {
            return Ok(self.lookup_box(box_raw).await?.0);
        };
        let now = self.now_ms();
        let mut store = self.store.lock().await;
        if store.state.box_id == box_raw {
            store.state.own_devices = Some(list.clone());
        } else {
            upsert_contact(&mut store.state, list.clone(), None, now);
        }
        store.save()?;
        Ok(list)
    }

    /// A cached device list for a box (own or contact).
    pub(crate) async fn cached_devices(&self, box_raw: &[u8]) -> Option<pb::DeviceList> {
        let store = self.store.lock().await;
        if box_raw == store.state.box_id.as_slice() {
            return store.state.own_devices.clone();
        }
        store
            .state
            .contacts
            .iter()
            .find(|c| c.box_id == box_raw)
            .and_then(|c| c.devices.clone())
    }

    pub(crate) async fn display_name(&self, box_raw: &[u8]) -> String {
        let store = self.store.lock().await;
        if box_raw == store.state.box_id.as_slice() && !store.state.identifier.is_empty() {
            return store.state.identifier.clone();
        }
        store
            .state
            .contacts
            .iter()
            .find(|c| c.box_id == box_raw && !c.identifier.is_empty())
            .map_or_else(|| box_display(box_raw), |c| c.identifier.clone())
    }

    /// Resolves an identifier or a box id (UUID text) to a box, looking the
    /// identifier up when it is not a known contact.
    pub(crate) async fn resolve(&self, to: &str) -> Result<Target> {
        if let Ok(uuid) = uuid::Uuid::parse_str(to.trim()) {
            let raw = *uuid.as_bytes();
            let identifier = {
                let store = self.store.lock().await;
                store
                    .state
                    .contacts
                    .iter()
                    .find(|c| c.box_id == raw)
                    .map(|c| c.identifier.clone())
                    .unwrap_or_default()
            };
            return Ok(Target {
                box_id: raw,
                identifier,
            });
        }
        let identifier = normalize(to)?;
        let known = {
            let store = self.store.lock().await;
            if identifier == store.state.identifier {
                <[u8; 16]>::try_from(store.state.box_id.as_slice()).ok()
            } else {
                store
                    .state
                    .contacts
                    .iter()
                    .find(|c| c.identifier == identifier && c.devices.is_some())
                    .and_then(|c| <[u8; 16]>::try_from(c.box_id.as_slice()).ok())
            }
        };
        let raw = match known {
            Some(raw) => raw,
            None => id16(
                &self.lookup_identifier(&identifier).await?.0.box_id,
                "box id",
            )?,
        };
        Ok(Target {
            box_id: raw,
            identifier,
        })
    }

    /// Blocks a user (identifier or box id): they can no longer message this
    /// account or find it.
    pub async fn block(&self, who: &str) -> Result<()> {
        let request = self.block_request(who)?;
        let _: pb::BlockResponse = self.rpc(Method::Block, &request).await?;
        self.mark_blocked(&request, true).await?;
        // The blocked user may hold the access secret: a new one shuts it out
        // of sealed sends too.
        self.rotate_access_secret().await
    }

    /// Unblocks a user.
    pub async fn unblock(&self, who: &str) -> Result<()> {
        let request = self.block_request(who)?;
        let _: pb::BlockResponse = self.rpc(Method::Unblock, &request).await?;
        self.mark_blocked(&request, false).await
    }

    /// Takes a user (identifier or box id) off this account's contacts: with
    /// `contacts_only` on, they can no longer message it (RequestKey with
    /// `add_contact` makes them one again). The sealed-sender access secret,
    /// which they may hold, is replaced. The local entry is forgotten unless
    /// the user is blocked (the block stays).
    pub async fn remove_contact(&self, who: &str) -> Result<()> {
        let box_raw = match uuid::Uuid::parse_str(who.trim()) {
            Ok(uuid) => *uuid.as_bytes(),
            Err(_) => {
                let identifier = normalize(who)?;
                let store = self.store.lock().await;
                let found = store
                    .state
                    .contacts
                    .iter()
                    .find(|c| c.identifier == identifier)
                    .and_then(|c| <[u8; 16]>::try_from(c.box_id.as_slice()).ok());
                found.ok_or_else(|| Error::UnknownRecipient(identifier.clone()))?
            }
        };
        let request = pb::RemoveContactRequest {
            box_id: box_raw.to_vec(),
        };
        let _: pb::RemoveContactResponse = self.rpc(Method::RemoveContact, &request).await?;
        {
            let mut store = self.store.lock().await;
            store
                .state
                .contacts
                .retain(|c| c.box_id.as_slice() != box_raw || c.blocked);
            store.save()?;
        }
        self.rotate_access_secret().await
    }

    fn block_request(&self, who: &str) -> Result<pb::BlockRequest> {
        Ok(match uuid::Uuid::parse_str(who.trim()) {
            Ok(uuid) => pb::BlockRequest {
                identifier: String::new(),
                box_id: uuid.as_bytes().to_vec(),
            },
            Err(_) => pb::BlockRequest {
                identifier: normalize(who)?,
                box_id: Vec::new(),
            },
        })
    }

    async fn mark_blocked(&self, request: &pb::BlockRequest, blocked: bool) -> Result<()> {
        let mut store = self.store.lock().await;
        for c in &mut store.state.contacts {
            if (!request.box_id.is_empty() && c.box_id == request.box_id)
                || (!request.identifier.is_empty() && c.identifier == request.identifier)
            {
                c.blocked = blocked;
            }
        }
        store.save()
    }

    /// Safety numbers between this device and each device of a contact
    /// (identifier or box id). Both users see the same number for a pair of
    /// devices; compare it out of band. Clears the contact's key-change mark.
    pub async fn safety_number(&self, who: &str) -> Result<Vec<SafetyNumber>> {
        let own = self.own_box().await?;
        let target = self.resolve(who).await?;
        let (list, _) = self.lookup_box(&target.box_id).await?;
        let mine = self.keys.identity_public();
        let mut numbers = Vec::new();
        for info in &list.devices {
            let Ok(id) = <[u8; 16]>::try_from(info.device_id.as_slice()) else {
                continue;
            };
            if id == self.device_id {
                continue;
            }
            let Some(Ok(keys)) = info.keys.as_ref().map(PublicKeys::from_bundle) else {
                continue;
            };
            numbers.push(SafetyNumber {
                device_id: device_id(id),
                number: safety_number(&mine, &own, &keys.identity(), &target.box_id),
            });
        }
        let mut store = self.store.lock().await;
        if let Some(c) = store
            .state
            .contacts
            .iter_mut()
            .find(|c| c.box_id == target.box_id)
        {
            c.keys_changed = false;
        }
        store.save()?;
        if numbers.is_empty() {
            return Err(Error::Invalid(
                "that box has no other device with valid keys".into(),
            ));
        }
        Ok(numbers)
    }

    // ----- messages -----

    /// Sends a text to a user (identifier or box id) and a copy to this
    /// account's other devices. See the module documentation for retries.
    pub async fn send_text(&self, to: &str, text: &str) -> Result<SendReport> {
        self.credentials().await?;
        let target = self.resolve(to).await?;
        self.send_entry(target, Outgoing::Text(text.to_string()))
            .await
    }

    /// Puts a send into the outbox (reusing the message id of an unconfirmed
    /// identical one) and delivers it.
    pub(crate) async fn send_entry(
        &self,
        target: Target,
        outgoing: Outgoing,
    ) -> Result<SendReport> {
        let now = self.now_ms();
        let (text, message, receipt) = outgoing.into_fields();
        let entry = {
            let mut store = self.store.lock().await;
            let existing = store
                .state
                .outbox
                .iter()
                .find(|e| {
                    e.to_box == target.box_id
                        && e.text == text
                        && e.message == message
                        && e.receipt == receipt
                        && i64::try_from(now.saturating_sub(e.sent_at_ms)).unwrap_or(i64::MAX)
                            < OUTBOX_MAX_AGE_MS
                })
                .cloned();
            match existing {
                Some(e) => e,
                None => {
                    let e = OutboxEntry {
                        message_id: MessageId::new().as_bytes().to_vec(),
                        to_box: target.box_id.to_vec(),
                        text,
                        sent_at_ms: now,
                        message,
                        receipt,
                    };
                    // Saved before anything of it leaves the device: with
                    // the MLS ratchet when a conversation encrypts it, else
                    // at the start of the transport.
                    store.state.outbox.push(e.clone());
                    e
                }
            }
        };
        self.deliver(&entry, &target).await
    }

    /// Sends pending outbox entries again (same message ids). Returns one
    /// result per entry; confirmed ones leave the outbox.
    pub async fn retry_outbox(&self) -> Result<Vec<(PendingSend, Result<SendReport>)>> {
        let entries = {
            let store = self.store.lock().await;
            store
                .state
                .outbox
                .iter()
                .filter_map(|e| Some((pending_of(e, &store.state.contacts)?, e.clone())))
                .collect::<Vec<_>>()
        };
        let mut results = Vec::with_capacity(entries.len());
        for (p, entry) in entries {
            let target = Target {
                box_id: *p.to_box.as_bytes(),
                identifier: p.to.clone(),
            };
            let result = self.deliver(&entry, &target).await;
            results.push((p, result));
        }
        Ok(results)
    }

    /// Sends that were not confirmed.
    pub async fn outbox(&self) -> Vec<PendingSend> {
        let store = self.store.lock().await;
        store
            .state
            .outbox
            .iter()
            .filter_map(|e| pending_of(e, &store.state.contacts))
            .collect()
    }

    /// Forgets unconfirmed sends.
    pub async fn clear_outbox(&self) -> Result<usize> {
        let mut store = self.store.lock().await;
        let n = store.state.outbox.len();
        store.state.outbox.clear();
        store.save()?;
        Ok(n)
    }

    /// Takes a settled send out of the outbox; a confirmed message (not a
    /// receipt) is remembered so receipts for it can name it.
    async fn remove_from_outbox(&self, entry: &OutboxEntry, confirmed: bool) -> Result<()> {
        let mut store = self.store.lock().await;
        store
            .state
            .outbox
            .retain(|e| e.message_id != entry.message_id);
        if confirmed && entry.receipt.is_none() {
            let log = &mut store.state.sent_log;
            log.push(SentLogEntry {
                message_id: entry.message_id.clone(),
                to_box: entry.to_box.clone(),
                preview: crate::messages::shorten(&crate::messages::preview(
                    &entry.text,
                    entry.message.as_ref(),
                )),
            });
            if log.len() > SENT_LOG {
                let excess = log.len() - SENT_LOG;
                log.drain(..excess);
            }
        }
        store.save()
    }

    pub(crate) async fn devices_for(&self, box_raw: &[u8; 16]) -> Result<pb::DeviceList> {
        match self.cached_devices(box_raw).await {
            Some(list) => Ok(list),
            None => Ok(self.lookup_box(box_raw).await?.0),
        }
    }

    async fn deliver(&self, entry: &OutboxEntry, target: &Target) -> Result<SendReport> {
        let result = self.deliver_inner(entry, target).await;
        match &result {
            // Unconfirmed: keep it for a retry with the same id.
            Err(Error::Unreachable { .. }) => {}
            Err(e) if e.status().is_some_and(pb::Status::is_retryable) => {}
            Err(_) => self.remove_from_outbox(entry, false).await?,
            Ok(_) => self.remove_from_outbox(entry, true).await?,
        }
        result
    }

    async fn deliver_inner(&self, entry: &OutboxEntry, target: &Target) -> Result<SendReport> {
        let message_id = id16(&entry.message_id, "message id")?;
        let (content, copy) = crate::messages::outgoing(entry, target);
        let delivery = Delivery {
            message_id,
            content: &content,
            copy: copy.as_ref(),
            attachments: crate::messages::blob_ids(entry.message.as_ref()),
            ephemeral: false,
            // Nobody waits for a receipt: it is seen at the next fetch.
            wake: if entry.receipt.is_some() {
                pb::Wake::None
            } else {
                pb::Wake::High
            },
            mls: false,
        };
        self.deliver_contents(delivery, target).await
    }

    /// Sends `content` to the target's devices (and `copy` to this account's
    /// other devices), adopting changed device lists. A 1:1 message (not
    /// ephemeral, not a note to self) is encrypted in the conversation's MLS
    /// group first ([`crate::groups::direct`]).
    pub(crate) async fn deliver_contents(
        &self,
        delivery: Delivery<'_>,
        target: &Target,
    ) -> Result<SendReport> {
        let own = self.own_box().await?;
        // The sealed-sender access secret goes to contacts and own devices.
        let (content_shared, copy_shared);
        let mut delivery = delivery;
        if !delivery.ephemeral {
            let secret = self.secret_to_share(&target.box_id).await;
            if !secret.is_empty() {
                content_shared = with_access_secret(delivery.content, secret);
                delivery.content = &content_shared;
            }
            let own_secret = self.secret_to_share(&own).await;
            if let (false, Some(copy)) = (own_secret.is_empty(), delivery.copy) {
                copy_shared = with_access_secret(copy, own_secret);
                delivery.copy = Some(&copy_shared);
            }
        }
        let in_conversation = !delivery.ephemeral && target.box_id != own;
        for _round in 0..MAX_STALE_ROUNDS {
            let wrapped = if in_conversation {
                self.direct_wrap(target, &own, delivery.content, delivery.copy.is_some())
                    .await?
            } else {
                None
            };
            let current = match &wrapped {
                Some(w) => Delivery {
                    content: &w.content,
                    copy: w.copy.as_ref(),
                    mls: true,
                    ..delivery.clone()
                },
                None => delivery.clone(),
            };
            if let Some(report) = self.transport(&current, target, &own).await? {
                return Ok(report);
            }
        }
        Err(Error::Status {
            status: pb::Status::StaleDevices,
            message: "the recipient's devices kept changing; try again".into(),
        })
    }

    /// Seals the contents of `delivery` for the devices of the target (sealed
    /// sender when it may) and of the own box, and sends them. `None`: a
    /// device list changed under an MLS message ([`Delivery::mls`]).
    async fn transport(
        &self,
        delivery: &Delivery<'_>,
        target: &Target,
        own: &[u8; 16],
    ) -> Result<Option<SendReport>> {
        let creds = self.credentials().await?;
        // An outbox entry not yet on disk goes there before its request does;
        // an MLS message's contents were saved with the ratchet already.
        if !delivery.mls {
            self.store.lock().await.save()?;
        }
        let own = *own;
        let message_id = delivery.message_id;
        // Sealed when the recipient let this account (attachments excepted: their
        // uploads were authenticated, which would name the sender anyway).
        if delivery.attachments.is_empty()
            && let Some(outcome) = self.try_deliver_sealed(delivery, target, &own).await?
            && !matches!(outcome, SealedOutcome::Refused)
        {
            let SealedOutcome::Sent(seq) = outcome else {
                return Ok(None);
            };
            if let Some(copy) = delivery.copy {
                let own_list = self.devices_for(&own).await?;
                if own_list
                    .devices
                    .iter()
                    .any(|d| d.device_id.as_slice() != self.device_id.as_slice())
                {
                    let own_target = Target {
                        box_id: own,
                        identifier: self.identifier().await,
                    };
                    let copy_delivery = Delivery {
                        message_id,
                        content: copy,
                        copy: None,
                        attachments: Vec::new(),
                        ephemeral: false,
                        wake: pb::Wake::None,
                        mls: false,
                    };
                    // Best effort, as the copy of an identified send.
                    let _ = Box::pin(self.deliver_contents(copy_delivery, &own_target)).await;
                }
            }
            return self.send_report(message_id, target, seq).await.map(Some);
        }
        let header = EnvelopeHeader {
            sender_box: own,
            sender_device: self.device_id,
            message_id,
        };
        let to_self = target.box_id == own;
        // Recipients: [target, own box] (just the own box for a note to self;
        // no copy of a receipt).
        let mut boxes: Vec<RecipientBox<'_>> = vec![(
            target.box_id,
            delivery.content,
            to_self.then_some(self.device_id),
        )];
        if let (false, Some(copy)) = (to_self, delivery.copy) {
            boxes.push((own, copy, Some(self.device_id)));
        }
        let mut lists = Vec::with_capacity(boxes.len());
        for (b, _, _) in &boxes {
            lists.push(self.devices_for(b).await?);
        }
        // The copy is for the sender's other devices: with none (as far as this
        // device knows), storing it would only leave an envelope nobody can open.
        let has_other_own_device = |list: &pb::DeviceList| {
            list.devices
                .iter()
                .any(|d| d.device_id.as_slice() != self.device_id.as_slice())
        };
        if boxes.len() > 1 && lists.last().is_some_and(|own| !has_other_own_device(own)) {
            boxes.pop();
            lists.pop();
        }
        let mut envelopes: Vec<Option<Vec<u8>>> = vec![None; boxes.len()];
        for _round in 0..MAX_STALE_ROUNDS {
            let mut recipients = Vec::with_capacity(boxes.len());
            for (i, (b, content, exclude)) in boxes.iter().enumerate() {
                let envelope = match &envelopes[i] {
                    Some(e) => e.clone(),
                    None => {
                        let e = seal_for_list_cached(
                            &self.key_cache,
                            &self.keys,
                            &header,
                            content,
                            &lists[i],
                            exclude.as_ref(),
                        )?;
                        envelopes[i] = Some(e.clone());
                        e
                    }
                };
                recipients.push(pb::Recipient {
                    box_id: b.to_vec(),
                    device_list_version: lists[i].version,
                    envelope,
                });
            }
            let request = pb::SendRequest {
                message_id: message_id.to_vec(),
                recipients,
                ephemeral: delivery.ephemeral,
                attachments: delivery.attachments.clone(),
                wake: delivery.wake as i32,
            };
            let response = self
                .conn
                .call(
                    Method::Send,
                    &request.encode_to_vec(),
                    Some(&creds),
                    Duration::ZERO,
                )
                .await;
            // A repeated Send keeps the credentials it started with; they still work.
            self.refresh_if_outdated().await;
            let response = response?;
            let mut stale: Vec<(usize, Option<pb::DeviceList>)> = Vec::new();
            let mut seq = None;
            if crate::connection::status_is(&response, pb::Status::StaleDevices) {
                let details: pb::StaleDevices = decode(&response.body, "stale devices")?;
                for current in details.current {
                    if let Some(i) = boxes
                        .iter()
                        .position(|(b, _, _)| b.as_slice() == current.box_id.as_slice())
                    {
                        stale.push((i, Some(current)));
                    }
                }
                if stale.is_empty() {
                    stale = (0..boxes.len()).map(|i| (i, None)).collect();
                }
            } else {
                let body = ok_body(response)?;
                let reply: pb::SendResponse = decode(&body, "send response")?;
                if reply.results.len() != boxes.len() {
                    return Err(Error::BadReply(format!(
                        "{} results for {} recipients",
                        reply.results.len(),
                        boxes.len()
                    )));
                }
                for (i, r) in reply.results.iter().enumerate() {
                    let status = pb::Status::try_from(r.status).unwrap_or(pb::Status::Internal);
                    match status {
                        pb::Status::Ok => {
                            if i == 0 {
                                seq = Some(r.seq);
                            }
                        }
                        pb::Status::StaleDevices => stale.push((i, r.current.clone())),
                        pb::Status::NotFound if i == 0 => {
                            let name = if target.identifier.is_empty() {
                                box_display(&target.box_id)
                            } else {
                                target.identifier.clone()
                            };
                            return Err(Error::UnknownRecipient(name));
                        }
                        // The copy for the own devices is best effort.
                        _ if i > 0 => {}
                        other => {
                            return Err(Error::Status {
                                status: other,
                                message: format!("recipient {}", box_display(&r.box_id)),
                            });
                        }
                    }
                }
                if stale.is_empty() {
                    let seq = seq.ok_or_else(|| Error::BadReply("no sequence number".into()))?;
                    return self.send_report(message_id, target, seq).await.map(Some);
                }
            }
            for (i, current) in stale {
                lists[i] = self.adopt_list(&boxes[i].0, current).await?;
                envelopes[i] = None;
            }
            if delivery.mls {
                return Ok(None);
            }
        }
        Err(Error::Status {
            status: pb::Status::StaleDevices,
            message: "the recipient's devices kept changing; try again".into(),
        })
    }

    /// The report of a stored send.
    async fn send_report(
        &self,
        message_id: [u8; 16],
        target: &Target,
        seq: u64,
    ) -> Result<SendReport> {
        let keys_changed = {
            let store = self.store.lock().await;
            store
                .state
                .contacts
                .iter()
                .any(|c| c.box_id == target.box_id && c.keys_changed)
        };
        self.confirm_settings().await?;
        Ok(SendReport {
            message_id: MessageId::from_bytes(message_id)
                .map_err(|e| Error::Invalid(e.to_string()))?,
            to_box: box_id(target.box_id),
            seq,
            keys_changed,
        })
    }

    /// Fetches queued messages (waiting up to `wait` when none is queued),
    /// verifies and decrypts them, without acknowledging. Call [`Client::ack`]
    /// with `batch.ack_up_to` once handled.
    pub async fn fetch_batch(&self, wait: Duration) -> Result<Batch> {
        let creds = self.credentials().await?;
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let request = pb::FetchRequest {
            max_count: FETCH_MAX_COUNT,
            max_bytes: FETCH_MAX_BYTES,
            wait_ms,
        };
        let body = self
            .conn
            .call_ok(Method::Fetch, &request.encode_to_vec(), Some(&creds), wait)
            .await;
        self.refresh_if_outdated().await;
        let body = body?;
        self.confirm_settings().await?;
        let reply: pb::FetchResponse = decode(&body, "fetch response")?;
        let own = self.own_box().await?;
        let mut batch = Batch {
            last_seq: reply.last_seq,
            gap: (reply.gap_to > 0).then_some((reply.gap_from, reply.gap_to)),
            ..Batch::default()
        };
        let mut new_seen: Vec<Vec<u8>> = Vec::new();
        for queued in &reply.envelopes {
            batch.ack_up_to = Some(
                batch
                    .ack_up_to
                    .map_or(queued.seq, |a: u64| a.max(queued.seq)),
            );
            if queued.sender_box == own && queued.sender_device == self.device_id {
                continue;
            }
            if let Some(results) = self.group_receipts(queued).await? {
                for result in results {
                    match result {
                        Ok(received) => batch.messages.push(received),
                        Err(rejected) => batch.rejected.push(rejected),
                    }
                }
                continue;
            }
            let outcome = match self.process(queued, &mut batch.key_changes).await? {
                Ok(received) => {
                    // The sender as verified: for a sealed sender, the
                    // certified one (the gateway recorded none).
                    let mut key = Vec::with_capacity(SEEN_KEY_LEN + 8);
                    key.extend_from_slice(received.sender_box.as_bytes());
                    key.extend_from_slice(received.sender_device.as_bytes());
                    key.extend_from_slice(&queued.message_id);
                    key.extend_from_slice(&queued.seq.to_be_bytes());
                    // A scan of the remembered ids: cheaper than hashing a copy
                    // of all of them for every fetch, as most fetches accept a
                    // message or two.
                    let replay = is_replay(&new_seen, &key) || {
                        let store = self.store.lock().await;
                        is_replay(&store.state.seen_messages, &key)
                    };
                    if replay {
                        Err("a replay of a message received before".to_string())
                    } else {
                        if !new_seen.contains(&key) {
                            new_seen.push(key);
                        }
                        Ok(received)
                    }
                }
                Err(reason) => Err(reason),
            };
            match outcome {
                Ok(received) => batch.messages.push(received),
                Err(reason) => batch.rejected.push(Rejected {
                    seq: queued.seq,
                    sender: box_display(&queued.sender_box),
                    reason,
                }),
            }
        }
        self.after_group_batch().await;
        let groups = self.groups.lock().await;
        let mut store = self.store.lock().await;
        groups.snapshot_into(&mut store.state.groups);
        store.state.last_seq = store.state.last_seq.max(reply.last_seq);
        let remembered = &mut store.state.seen_messages;
        new_seen.retain(|k| !remembered.contains(k));
        remembered.extend(new_seen);
        if remembered.len() > SEEN_MESSAGES {
            let excess = remembered.len() - SEEN_MESSAGES;
            remembered.drain(..excess);
        }
        store.save()?;
        Ok(batch)
    }

    /// Verifies and decrypts one envelope. The outer error is for failures
    /// worth retrying later (network); the inner one rejects the envelope.
    async fn process(
        &self,
        queued: &pb::QueuedEnvelope,
        key_changes: &mut Vec<String>,
    ) -> Result<Result<Received, String>> {
        if queued.sender_box.is_empty() && queued.sender_device.is_empty() {
            return self.process_sealed(queued).await;
        }
        let Ok(sender_box) = <[u8; 16]>::try_from(queued.sender_box.as_slice()) else {
            return Ok(Err("invalid sender box".into()));
        };
        let Ok(sender_device) = <[u8; 16]>::try_from(queued.sender_device.as_slice()) else {
            return Ok(Err("invalid sender device".into()));
        };
        let Ok(message_id) = <[u8; 16]>::try_from(queued.message_id.as_slice()) else {
            return Ok(Err("invalid message id".into()));
        };
        let (key, changed) = self
            .sender_identity(&sender_box, &sender_device, &queued.sender_identity_key)
            .await?;
        if changed {
            key_changes.push(self.display_name(&sender_box).await);
        }
        let Some(keys) = key else {
            return Ok(Err(
                "the sending device has no valid keys (and the gateway recorded none)".into(),
            ));
        };
        let content = match open_queued_by(&self.keys, &self.device_id, queued, &keys) {
            Ok(c) => c,
            Err(r) => return Ok(Err(r.0)),
        };
        let content = match self
            .direct_unwrap(
                queued.seq,
                &queued.message_id,
                (&sender_box, &sender_device, &keys),
                content,
            )
            .await?
        {
            Ok(c) => c,
            Err(reason) => return Ok(Err(reason)),
        };
        self.after_open(&sender_box, &content).await?;
        Ok(Ok(Received {
            seq: queued.seq,
            message_id,
            sender_box: box_id(sender_box),
            sender_device: device_id(sender_device),
            sender: self.display_name(&sender_box).await,
            sent_at_ms: content.sent_at_ms,
            enqueued_at_ms: queued.enqueued_at_ms,
            body: self.with_previews(body_of(content)).await,
        }))
    }

    /// Verifies and decrypts an envelope outside the queue (for example one
    /// captured elsewhere), as a fetch would; a rejection is an error. Nothing
    /// is kept for a later fetch.
    pub async fn open_envelope(&self, queued: &pb::QueuedEnvelope) -> Result<Received> {
        let outside = pb::QueuedEnvelope {
            seq: 0,
            ..queued.clone()
        };
        let mut key_changes = Vec::new();
        self.process(&outside, &mut key_changes)
            .await?
            .map_err(Error::Crypto)
    }

    /// What a verified message teaches: the identifier a copy from another own
    /// device names, and the sender's sealed-sender access secret.
    pub(crate) async fn after_open(
        &self,
        sender_box: &[u8; 16],
        content: &pb::Content,
    ) -> Result<()> {
        if let Some(pb::content::Body::Sent(copy)) = &content.body {
            self.learn_from_copy(sender_box, copy).await?;
        }
        self.learn_access_secret(sender_box, &content.access_secret)
            .await
    }

    /// A verified copy from another own device names the identifier its
    /// recipient box was looked up by: remember it for display (never
    /// overriding what this device looked up itself).
    async fn learn_from_copy(&self, sender_box: &[u8; 16], copy: &pb::SentCopy) -> Result<()> {
        let mut store = self.store.lock().await;
        if store.state.box_id != sender_box
            || copy.to_identifier.is_empty()
            || copy.to_box.len() != 16
            || copy.to_box == store.state.box_id
            || normalize(&copy.to_identifier).ok().as_deref() != Some(copy.to_identifier.as_str())
        {
            return Ok(());
        }
        let state = &mut store.state;
        if state
            .contacts
            .iter()
            .any(|c| c.identifier == copy.to_identifier)
        {
            return Ok(());
        }
        match state.contacts.iter_mut().find(|c| c.box_id == copy.to_box) {
            Some(c) if !c.identifier.is_empty() => return Ok(()),
            Some(c) => c.identifier = copy.to_identifier.clone(),
            None => state.contacts.push(Contact {
                box_id: copy.to_box.clone(),
                identifier: copy.to_identifier.clone(),
                ..Contact::default()
            }),
        }
        store.save()
    }

    /// Acknowledges everything up to `up_to`, after which the gateway may
    /// delete it for this device.
    pub async fn ack(&self, up_to: u64) -> Result<()> {
        let _: pb::AckResponse = self.rpc(Method::Ack, &pb::AckRequest { up_to }).await?;
        let mut groups = self.groups.lock().await;
        groups.acked(up_to);
        let mut store = self.store.lock().await;
        groups.snapshot_into(&mut store.state.groups);
        store.state.acked_seq = store.state.acked_seq.max(up_to);
        store.save()
    }

    /// Fetches, verifies, decrypts and acknowledges queued messages. Rejected
    /// envelopes are acknowledged too (and dropped). A wait is not ended by
    /// envelopes that show nothing (the Commit that starts a 1:1 conversation
    /// comes just before its first message): those are acknowledged and the
    /// fetch waits on for the rest of `wait`.
    pub async fn fetch(&self, wait: Duration) -> Result<Batch> {
        let deadline = Instant::now() + wait;
        let mut merged = Batch::default();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let batch = self.fetch_batch(remaining).await?;
            if let Some(up_to) = batch.ack_up_to {
                self.ack(up_to).await?;
            }
            let silent = batch.ack_up_to.is_some()
                && batch.messages.is_empty()
                && batch.rejected.is_empty()
                && batch.gap.is_none();
            merged.messages.extend(batch.messages);
            merged.rejected.extend(batch.rejected);
            merged.key_changes.extend(batch.key_changes);
            merged.gap = merged.gap.or(batch.gap);
            merged.ack_up_to = batch.ack_up_to.or(merged.ack_up_to);
            merged.last_seq = merged.last_seq.max(batch.last_seq);
            if !silent || remaining.is_zero() {
                return Ok(merged);
            }
        }
    }

    /// Verifies and decrypts an ephemeral message pushed by the gateway.
    pub async fn open_ephemeral(&self, ephemeral: &pb::Ephemeral) -> Result<Received> {
        let envelope: pb::Envelope = decode(&ephemeral.envelope, "ephemeral envelope")?;
        let queued = pb::QueuedEnvelope {
            seq: 0,
            sender_box: ephemeral.sender_box.clone(),
            sender_device: ephemeral.sender_device.clone(),
            message_id: envelope.message_id,
            enqueued_at_ms: 0,
            envelope: ephemeral.envelope.clone(),
            // The sender is connected and sending now: its list has the key.
            sender_identity_key: Vec::new(),
        };
        let mut changes = Vec::new();
        self.process(&queued, &mut changes)
            .await?
            .map_err(Error::Crypto)
    }

    /// Subscribes to pushes on the current connection.
    pub async fn subscribe(&self) -> Result<Subscription> {
        let creds = self.credentials().await?;
        let subscription = self.conn.subscribe(&creds).await;
        self.refresh_if_outdated().await;
        let subscription = subscription?;
        self.confirm_settings().await?;
        Ok(subscription)
    }

    // ----- service -----

    /// Pings the gateway (no authentication).
    pub async fn ping(&self) -> Result<Pong> {
        let pong = ping(&self.conn).await?;
        self.confirm_settings().await?;
        Ok(pong)
    }

    /// Asks the gateway about its health (no authentication).
    pub async fn health(&self) -> Result<pb::HealthResponse> {
        let health = health(&self.conn).await?;
        self.confirm_settings().await?;
        Ok(health)
    }
}

/// Ping's whole answer.
pub(crate) async fn ping_response(conn: &Connection) -> Result<pb::PingResponse> {
    let body = conn
        .call_ok(
            Method::Ping,
            &pb::PingRequest {}.encode_to_vec(),
            None,
            Duration::ZERO,
        )
        .await?;
    decode(&body, "ping response")
}

/// Pings a gateway over a connection (no state or credentials needed).
pub async fn ping(conn: &Connection) -> Result<Pong> {
    let start = Instant::now();
    let response = ping_response(conn).await?;
    Ok(Pong {
        server_time_ms: response.server_time_ms,
        region: response.region,
        rtt: start.elapsed(),
        service_name: response.service_name,
    })
}

/// Asks a gateway about its health (no state or credentials needed).
pub async fn health(conn: &Connection) -> Result<pb::HealthResponse> {
    let body = conn
        .call_ok(
            Method::Health,
            &pb::HealthRequest {}.encode_to_vec(),
            None,
            Duration::ZERO,
        )
        .await?;
    decode(&body, "health response")
}

/// Forgets the box binding and credentials (keeps the device keys).
fn forget_account(state: &mut State) {
    state.box_id.clear();
    state.credentials = None;
    state.registration_pending = false;
    state.own_devices = None;
    state.contacts.clear();
    state.outbox.clear();
    state.acked_seq = 0;
    state.last_seq = 0;
    state.groups = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(box_id: u8, keys: &[&DeviceKeys]) -> pb::DeviceList {
        pb::DeviceList {
            box_id: vec![box_id; 16],
            version: 1,
            devices: keys
                .iter()
                .enumerate()
                .map(|(i, k)| pb::DeviceInfo {
                    device_id: vec![u8::try_from(i).unwrap(); 16],
                    keys: Some(k.bundle()),
                    label: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn contact_key_changes_are_detected() {
        let a = DeviceKeys::generate();
        let b = DeviceKeys::generate();
        let mut state = State::default();
        assert!(!upsert_contact(
            &mut state,
            list(1, &[&a]),
            Some("bob@example.com"),
            1
        ));
        assert!(!upsert_contact(&mut state, list(1, &[&a]), None, 2));
        assert!(!state.contacts[0].keys_changed);
        assert_eq!(state.contacts[0].identifier, "bob@example.com");
        // A new device (or a re-registration) is a key change.
        assert!(upsert_contact(&mut state, list(1, &[&a, &b]), None, 3));
        assert!(state.contacts[0].keys_changed);
        assert_eq!(state.contacts.len(), 1);
        // The identifier moves to the box it is bound to now.
        upsert_contact(&mut state, list(2, &[&b]), Some("bob@example.com"), 4);
        assert_eq!(state.contacts[0].identifier, "");
        assert_eq!(state.contacts[1].identifier, "bob@example.com");
    }

    #[test]
    fn a_replay_is_the_same_message_at_another_place_in_the_queue() {
        let key = |seq: u64| {
            let mut k = vec![7u8; SEEN_KEY_LEN];
            k.extend_from_slice(&seq.to_be_bytes());
            k
        };
        let remembered = vec![key(5)];
        assert!(
            !is_replay(&remembered, &key(5)),
            "fetched again before the ack"
        );
        assert!(is_replay(&remembered, &key(9)), "stored again later");
        // Entries of older states carry no sequence number: any repeat is one.
        assert!(is_replay(&[vec![7u8; SEEN_KEY_LEN]], &key(5)));
        let mut other = key(9);
        other[0] = 8;
        assert!(!is_replay(&remembered, &other));
    }

    #[test]
    fn identifiers_are_normalised() {
        assert_eq!(normalize("Alice@Example.COM").unwrap(), "alice@example.com");
        assert_eq!(normalize("+1 (415) 555-0123").unwrap(), "+14155550123");
        assert!(normalize("nonsense").is_err());
    }
}
