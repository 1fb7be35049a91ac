//! The device's local state, encrypted at rest.
//!
//! # What is stored
//! [`State`]: the device's secret keys, its id and label, the identifier and box it
//! belongs to, its Hawk credentials, the gateway it talks to (address, TLS name,
//! pinned certificate, service name), its own box's device list, known contacts
//! (identifier, box, device list with public keys), its queue pointers, the
//! sends not yet confirmed (outbox), the ids of recently accepted messages
//! (to drop replays) and the MLS group state. It is
//! serialised as protobuf (the messages below are defined with `prost` derives;
//! nested device lists and credentials are the wire schema's own messages).
//!
//! # File format
//! ```text
//! offset  size  field
//! 0       8     magic "RSBYSTAT"
//! 8       1     format version, 1
//! 9       1     protection: 1 = random key in the key file, 2 = Argon2id passphrase
//! -- only for protection 2 --
//! 10      4     Argon2id memory cost in KiB (big-endian)
//! 14      4     Argon2id time cost (iterations, big-endian)
//! 18      4     Argon2id parallelism (big-endian)
//! 22      16    salt
//! -- always --
//! h       12    ChaCha20-Poly1305 nonce (random, fresh for every write)
//! h+12    rest  ChaCha20-Poly1305 ciphertext and tag of the protobuf `State`;
//!               the associated data is the header (bytes 0..h)
//! ```
//! With protection 1 the 32-byte key is stored as 64 hex digits (and a newline)
//! in `<state>.key` beside the state file, created with mode 0600; with protection
//! 2 the key is Argon2id(passphrase, salt) with the parameters in the header.
//!
//! Every write goes to a temporary file in the same directory (mode 0600), is
//! synced, and renamed over the state file, so a crash leaves either the old or
//! the new state, never a torn one.

use crate::error::{Error, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use prost::Message;
use rossby_protocol::pb;
use std::fmt;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// How many accepted message ids the state remembers to drop replays.
pub const SEEN_MESSAGES: usize = 1000;
/// Magic bytes at the start of a state file.
pub const MAGIC: &[u8; 8] = b"RSBYSTAT";
/// The file format version written by this build.
pub const FORMAT_VERSION: u8 = 1;
const PROTECTION_KEY_FILE: u8 = 1;
const PROTECTION_PASSPHRASE: u8 = 2;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// The device's persistent state (see the module documentation).
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct State {
    /// Layout version of this message (1).
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// This device's id (16 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub device_id: Vec<u8>,
    /// This device's secret keys (`DeviceKeys::to_secret_bytes`).
    #[prost(bytes = "vec", tag = "3")]
    pub device_secret: Vec<u8>,
    /// Label shown in device lists.
    #[prost(string, tag = "4")]
    pub device_label: String,
    /// The identifier the box is registered under (or being registered for).
    #[prost(string, tag = "5")]
    pub identifier: String,
    /// A registration was started and awaits `authorize`.
    #[prost(bool, tag = "6")]
    pub registration_pending: bool,
    /// The box this device belongs to (16 bytes; empty until authorized).
    #[prost(bytes = "vec", tag = "7")]
    pub box_id: Vec<u8>,
    /// The device's Hawk credentials (set once authorized).
    #[prost(message, optional, tag = "8")]
    pub credentials: Option<pb::Credentials>,
    /// The own box's device list as last seen.
    #[prost(message, optional, tag = "9")]
    pub own_devices: Option<pb::DeviceList>,
    /// Known contacts.
    #[prost(message, repeated, tag = "10")]
    pub contacts: Vec<Contact>,
    /// Highest sequence number acknowledged.
    #[prost(uint64, tag = "11")]
    pub acked_seq: u64,
    /// Highest sequence number seen in the box.
    #[prost(uint64, tag = "12")]
    pub last_seq: u64,
    /// Gateway address last used (`ip:port`).
    #[prost(string, tag = "13")]
    pub gateway: String,
    /// TLS server name last used.
    #[prost(string, tag = "14")]
    pub server_name: String,
    /// Service name requests are signed for (`host:port`).
    #[prost(string, tag = "15")]
    pub service_name: String,
    /// Pinned gateway or CA certificate (DER); empty: system roots.
    #[prost(bytes = "vec", tag = "16")]
    pub ca_cert_der: Vec<u8>,
    /// Sends started but not confirmed, retried with their message id.
    #[prost(message, repeated, tag = "17")]
    pub outbox: Vec<OutboxEntry>,
    /// Recently accepted messages, `sender box || sender device || message id`
    /// (48 bytes each, oldest first, at most [`SEEN_MESSAGES`]): a replayed
    /// envelope is recognised and dropped.
    #[prost(bytes = "vec", repeated, tag = "18")]
    pub seen_messages: Vec<Vec<u8>>,
    /// MLS groups: the signing key, openmls' storage and the groups' bookkeeping
    /// (see [`crate::groups`]).
    #[prost(message, optional, tag = "19")]
    pub groups: Option<crate::groups::GroupsState>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("device_id", &hex::encode(&self.device_id))
            .field("identifier", &self.identifier)
            .field("box_id", &hex::encode(&self.box_id))
            .field("authorized", &self.credentials.is_some())
            .field("contacts", &self.contacts.len())
            .field("acked_seq", &self.acked_seq)
            .finish_non_exhaustive()
    }
}

/// A known contact.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Contact {
    /// The contact's box (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub box_id: Vec<u8>,
    /// The identifier it was looked up by (empty if known by box only).
    #[prost(string, tag = "2")]
    pub identifier: String,
    /// Its devices and their public keys, as last verified.
    #[prost(message, optional, tag = "3")]
    pub devices: Option<pb::DeviceList>,
    /// The identity keys changed since the contact was first seen (safety number
    /// changed); cleared by looking the contact up again explicitly.
    #[prost(bool, tag = "4")]
    pub keys_changed: bool,
    /// Blocked by this user.
    #[prost(bool, tag = "5")]
    pub blocked: bool,
    /// When the device list was last fetched (ms since the epoch).
    #[prost(uint64, tag = "6")]
    pub fetched_at_ms: u64,
}

/// A send that has not been confirmed by the gateway yet.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboxEntry {
    /// Its UUIDv7 message id (16 bytes), reused on every retry.
    #[prost(bytes = "vec", tag = "1")]
    pub message_id: Vec<u8>,
    /// Recipient box (16 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub to_box: Vec<u8>,
    /// The text.
    #[prost(string, tag = "3")]
    pub text: String,
    /// When it was first attempted (ms since the epoch).
    #[prost(uint64, tag = "4")]
    pub sent_at_ms: u64,
}

/// Argon2id cost parameters for passphrase-protected state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Parallelism.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// OWASP's recommendation for Argon2id: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// Very cheap parameters, for tests only.
    pub fn insecure_for_tests() -> Self {
        KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }
}

/// Where the state's encryption key comes from.
#[derive(Clone)]
pub enum StateKey {
    /// Derived from this passphrase with Argon2id.
    Passphrase(Zeroizing<String>),
    /// A random key in `<state>.key` beside the state file (mode 0600).
    KeyFile,
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateKey::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
            StateKey::KeyFile => f.write_str("KeyFile"),
        }
    }
}

impl StateKey {
    /// A passphrase key.
    pub fn passphrase(p: impl Into<String>) -> Self {
        StateKey::Passphrase(Zeroizing::new(p.into()))
    }
}

/// How an existing state file is protected (read from its header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// A random key in the key file.
    KeyFile,
    /// A passphrase.
    Passphrase,
}

/// The path of the key file of a state file: `<state>.key`.
pub fn key_file_path(state_path: &Path) -> PathBuf {
    let mut s = state_path.as_os_str().to_owned();
    s.push(".key");
    PathBuf::from(s)
}

/// What a [`StateStore`] wrote to disk since it was opened: lets an
/// application (and the benchmarks) see what persisting costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateIo {
    /// Bytes written to the state's files.
    pub bytes_written: u64,
    /// `fsync`/`fdatasync` calls, on files and on the directory.
    pub syncs: u64,
    /// Full snapshots written.
    pub snapshots: u64,
}

/// An open, decrypted state file.
pub struct StateStore {
    path: PathBuf,
    header: Vec<u8>,
    key: Zeroizing<[u8; KEY_LEN]>,
    io: StateIo,
    /// The decrypted state; call [`StateStore::save`] after changing it.
    pub state: State,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// How the state file at `path` is protected, or `None` if there is none.
    pub fn protection(path: &Path) -> Result<Option<Protection>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot read state file", path, e)),
        };
        let parsed = parse_header(path, &bytes)?;
        Ok(Some(parsed.protection))
    }

    /// Creates a new state file holding `state`. Fails if the file exists.
    pub fn create(path: &Path, key: &StateKey, kdf: KdfParams, state: State) -> Result<Self> {
        if path.exists() {
            return Err(Error::Invalid(format!(
                "state file {} exists already",
                path.display()
            )));
        }
        let (header, key) = match key {
            StateKey::KeyFile => {
                let key = load_or_create_key_file(&key_file_path(path))?;
                (header_bytes(PROTECTION_KEY_FILE, None), key)
            }
            StateKey::Passphrase(p) => {
                let salt: [u8; SALT_LEN] = rand::random();
                let key = derive_key(path, p.as_bytes(), &salt, kdf)?;
                (header_bytes(PROTECTION_PASSPHRASE, Some((kdf, salt))), key)
            }
        };
        let mut store = StateStore {
            path: path.to_path_buf(),
            header,
            key,
            io: StateIo::default(),
            state,
        };
        store.save()?;
        Ok(store)
    }

    /// Opens and decrypts an existing state file. The file's header decides how
    /// the key is obtained: a passphrase-protected file needs
    /// [`StateKey::Passphrase`]; a key-file-protected file is read with its key
    /// file whatever `key` says.
    pub fn open(path: &Path, key: &StateKey) -> Result<Self> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::NoState(path.to_path_buf()));
            }
            Err(e) => return Err(Error::io("cannot read state file", path, e)),
        };
        let parsed = parse_header(path, &bytes)?;
        let aead_key = match (parsed.protection, key) {
            (Protection::KeyFile, _) => read_key_file(&key_file_path(path))?,
            (Protection::Passphrase, StateKey::Passphrase(p)) => {
                let (kdf, salt) = parsed.kdf.ok_or_else(|| Error::StateFormat {
                    path: path.to_path_buf(),
                    reason: "missing key derivation parameters".into(),
                })?;
                derive_key(path, p.as_bytes(), &salt, kdf)?
            }
            (Protection::Passphrase, StateKey::KeyFile) => {
                return Err(Error::PassphraseRequired(path.to_path_buf()));
            }
        };
        let header = bytes[..parsed.header_len].to_vec();
        let rest = &bytes[parsed.header_len..];
        if rest.len() < NONCE_LEN {
            return Err(Error::StateFormat {
                path: path.to_path_buf(),
                reason: "truncated".into(),
            });
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&aead_key[..]));
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &header,
                    },
                )
                .map_err(|_| Error::StateDecrypt(path.to_path_buf()))?,
        );
        let state = State::decode(plaintext.as_slice()).map_err(|e| Error::StateFormat {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(StateStore {
            path: path.to_path_buf(),
            header,
            key: aead_key,
            io: StateIo::default(),
            state,
        })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What this store wrote since it was opened.
    pub fn io(&self) -> StateIo {
        self.io
    }

    /// Encrypts the state and atomically replaces the file with it.
    pub fn save(&mut self) -> Result<()> {
        let plaintext = Zeroizing::new(self.state.encode_to_vec());
        let nonce: [u8; NONCE_LEN] = rand::random();
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key[..]));
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_slice(),
                    aad: &self.header,
                },
            )
            .map_err(|_| Error::Crypto("state encryption failed".into()))?;
        let mut out = Vec::with_capacity(self.header.len() + NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        write_atomic(&self.path, &out)?;
        self.io.bytes_written += out.len() as u64;
        self.io.syncs += 2;
        self.io.snapshots += 1;
        Ok(())
    }
}

struct ParsedHeader {
    protection: Protection,
    kdf: Option<(KdfParams, [u8; SALT_LEN])>,
    header_len: usize,
}

fn header_bytes(protection: u8, kdf: Option<(KdfParams, [u8; SALT_LEN])>) -> Vec<u8> {
    let mut h = Vec::with_capacity(38);
    h.extend_from_slice(MAGIC);
    h.push(FORMAT_VERSION);
    h.push(protection);
    if let Some((p, salt)) = kdf {
        h.extend_from_slice(&p.m_cost_kib.to_be_bytes());
        h.extend_from_slice(&p.t_cost.to_be_bytes());
        h.extend_from_slice(&p.p_cost.to_be_bytes());
        h.extend_from_slice(&salt);
    }
    h
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<ParsedHeader> {
    let bad = |reason: &str| Error::StateFormat {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    if bytes.len() < 10 || &bytes[..8] != MAGIC {
        return Err(bad("not a Rossby state file"));
    }
    if bytes[8] != FORMAT_VERSION {
        return Err(bad(&format!("unsupported format version {}", bytes[8])));
    }
    match bytes[9] {
        PROTECTION_KEY_FILE => Ok(ParsedHeader {
            protection: Protection::KeyFile,
            kdf: None,
            header_len: 10,
        }),
        PROTECTION_PASSPHRASE => {
            let Some(fields) = bytes.get(10..38) else {
                return Err(bad("truncated header"));
            };
            let word = |i: usize| {
                let mut w = [0u8; 4];
                w.copy_from_slice(&fields[i..i + 4]);
                u32::from_be_bytes(w)
            };
            let params = KdfParams {
                m_cost_kib: word(0),
                t_cost: word(4),
                p_cost: word(8),
            };
            let mut salt = [0u8; SALT_LEN];
            salt.copy_from_slice(&fields[12..28]);
            Ok(ParsedHeader {
                protection: Protection::Passphrase,
                kdf: Some((params, salt)),
                header_len: 38,
            })
        }
        other => Err(bad(&format!("unknown protection {other}"))),
    }
}

fn derive_key(
    path: &Path,
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    kdf: KdfParams,
) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    // The parameters come from the file: bound them so a corrupt or hostile
    // header cannot make the derivation overflow or exhaust memory.
    let sane = (1..=16).contains(&kdf.p_cost)
        && (1..=64).contains(&kdf.t_cost)
        && (8 * kdf.p_cost..=(1 << 21)).contains(&kdf.m_cost_kib);
    if !sane {
        return Err(Error::StateFormat {
            path: path.to_path_buf(),
            reason: "key derivation parameters out of range".into(),
        });
    }
    let params = argon2::Params::new(kdf.m_cost_kib, kdf.t_cost, kdf.p_cost, Some(KEY_LEN))
        .map_err(|e| Error::StateFormat {
            path: path.to_path_buf(),
            reason: format!("invalid key derivation parameters: {e}"),
        })?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(passphrase, salt, &mut key[..])
        .map_err(|e| Error::Crypto(format!("key derivation failed: {e}")))?;
    Ok(key)
}

fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::Invalid(format!(
                "the key file {} of this state is missing (or use the passphrase it was created with)",
                path.display()
            ))
        } else {
            Error::io("cannot read key file", path, e)
        }
    })?);
    check_private(path)?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(text.trim(), &mut key[..]).map_err(|_| Error::StateFormat {
        path: path.to_path_buf(),
        reason: "the key file must hold 64 hex digits".into(),
    })?;
    Ok(key)
}

fn load_or_create_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    if path.exists() {
        return read_key_file(path);
    }
    let key = Zeroizing::new(rand::random::<[u8; KEY_LEN]>());
    let mut text = Zeroizing::new(hex::encode(&key[..]));
    text.push('\n');
    let mut file = private_options()
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io("cannot create key file", path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("cannot write key file", path, e))?;
    sync_parent(path);
    Ok(key)
}

/// Rejects a key file that others can read (unix only).
fn check_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(|e| Error::io("cannot stat key file", path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Invalid(format!(
                "key file {} has permissions {mode:04o}; run `chmod 600` on it",
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn private_options() -> fs::OpenOptions {
    let mut o = fs::OpenOptions::new();
    o.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// Writes `bytes` to a temporary file beside `path` (mode 0600), syncs it and
/// renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file = private_options()
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io("cannot create", &tmp, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("cannot replace state file", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_parent(path);
    Ok(())
}

/// Syncs the directory holding `path` so a rename or creation is durable (best
/// effort: not every platform can open directories).
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = fs::File::open(parent) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            format: 1,
            device_id: vec![7; 16],
            device_secret: b"SECRET-KEY-MATERIAL-0123456789".to_vec(),
            device_label: "laptop".into(),
            identifier: "alice@example.com".into(),
            box_id: vec![1; 16],
            credentials: Some(pb::Credentials {
                id: "a.b.1".into(),
                key: b"HAWK-KEY-HAWK-KEY-HAWK-KEY-HAWK!".to_vec(),
            }),
            contacts: vec![Contact {
                box_id: vec![2; 16],
                identifier: "bob@example.com".into(),
                ..Contact::default()
            }],
            acked_seq: 42,
            ..State::default()
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn key_file_state_round_trips_and_is_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let store =
            StateStore::create(&path, &StateKey::KeyFile, KdfParams::default(), sample()).unwrap();
        drop(store);
        let raw = fs::read(&path).unwrap();
        assert!(raw.starts_with(MAGIC));
        assert!(!contains(&raw, b"SECRET-KEY-MATERIAL"));
        assert!(!contains(&raw, b"HAWK-KEY"));
        assert!(!contains(&raw, b"alice@example.com"));
        assert_eq!(
            StateStore::protection(&path).unwrap(),
            Some(Protection::KeyFile)
        );
        let mut store = StateStore::open(&path, &StateKey::KeyFile).unwrap();
        assert_eq!(store.state, sample());
        store.state.acked_seq = 43;
        store.save().unwrap();
        let again = StateStore::open(&path, &StateKey::KeyFile).unwrap();
        assert_eq!(again.state.acked_seq, 43);
        // A second write used a fresh nonce.
        assert_ne!(fs::read(&path).unwrap(), raw);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key_mode = fs::metadata(key_file_path(&path))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(key_mode & 0o777, 0o600);
            let state_mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(state_mode & 0o777, 0o600);
            // A key file others can read is refused.
            fs::set_permissions(key_file_path(&path), fs::Permissions::from_mode(0o644)).unwrap();
            let err = StateStore::open(&path, &StateKey::KeyFile).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn passphrase_state_round_trips_and_a_wrong_passphrase_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let kdf = KdfParams::insecure_for_tests();
        StateStore::create(&path, &StateKey::passphrase("correct horse"), kdf, sample()).unwrap();
        assert!(!key_file_path(&path).exists());
        let raw = fs::read(&path).unwrap();
        assert!(!contains(&raw, b"SECRET-KEY-MATERIAL"));
        assert_eq!(
            StateStore::protection(&path).unwrap(),
            Some(Protection::Passphrase)
        );
        let store = StateStore::open(&path, &StateKey::passphrase("correct horse")).unwrap();
        assert_eq!(store.state, sample());
        let err = StateStore::open(&path, &StateKey::passphrase("wrong")).unwrap_err();
        assert!(matches!(err, Error::StateDecrypt(_)), "{err}");
        assert!(err.to_string().contains("wrong passphrase"));
        let err = StateStore::open(&path, &StateKey::KeyFile).unwrap_err();
        assert!(matches!(err, Error::PassphraseRequired(_)), "{err}");
    }

    #[test]
    fn tampering_and_garbage_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        StateStore::create(&path, &StateKey::KeyFile, KdfParams::default(), sample()).unwrap();
        let mut raw = fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        fs::write(&path, &raw).unwrap();
        assert!(matches!(
            StateStore::open(&path, &StateKey::KeyFile),
            Err(Error::StateDecrypt(_))
        ));
        // Flipping the protection byte in the (authenticated) header is caught too.
        raw[last] ^= 1;
        raw[9] = 2;
        fs::write(&path, &raw).unwrap();
        assert!(StateStore::open(&path, &StateKey::passphrase("x")).is_err());
        fs::write(&path, b"hello").unwrap();
        assert!(matches!(
            StateStore::open(&path, &StateKey::KeyFile),
            Err(Error::StateFormat { .. })
        ));
        let missing = dir.path().join("nope");
        assert!(matches!(
            StateStore::open(&missing, &StateKey::KeyFile),
            Err(Error::NoState(_))
        ));
        assert_eq!(StateStore::protection(&missing).unwrap(), None);
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("SECRET"));
        assert!(!s.contains("HAWK"));
    }
}
