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
//! # Files
//! The state lives in a snapshot (`<state>`) and a journal of the changes made
//! since (`<state>.journal`); loading decrypts the snapshot and replays the
//! journal. A save appends one encrypted record holding what changed (see
//! `state/delta.rs` for what a record can say) and syncs it with `fdatasync`: an ack
//! writes a few dozen bytes instead of the whole state. When the journal would
//! grow past a bound ([`Compaction`]), when a change is about as large as the
//! state, or after a write failed, the save writes a fresh snapshot and starts a
//! new journal instead. `<state>.lock` is held (`flock`) while a store is open
//! (until it is released), since two writers would interleave their records.
//!
//! Snapshot:
//! ```text
//! offset  size  field
//! 0       8     magic "RSBYSTAT"
//! 8       1     format version, 2 (1: no snapshot id and no journal; still read)
//! 9       1     protection: 1 = random key in the key file, 2 = Argon2id passphrase
//! -- only for protection 2 --
//! 10      4     Argon2id memory cost in KiB (big-endian)
//! 14      4     Argon2id time cost (iterations, big-endian)
//! 18      4     Argon2id parallelism (big-endian)
//! 22      16    salt
//! -- always --
//! h       16    snapshot id (random, fresh for every snapshot; version 2)
//! h+16    12    ChaCha20-Poly1305 nonce (random, fresh for every write)
//! h+28    rest  ChaCha20-Poly1305 ciphertext and tag of the protobuf `State`;
//!               the associated data is the header (bytes 0..h+16)
//! ```
//! The journal's layout is in `state/journal.rs`: each record is sealed with the same
//! key under a fresh random nonce, and authenticated together with the
//! journal's snapshot id and the record's index, so records cannot be
//! reordered, dropped from the middle, or taken from another journal unnoticed.
//! A torn last record (a crash while appending) is discarded; any other damage
//! is an error naming the journal. Like the old single file, the files cannot
//! show that they were rolled back to an earlier copy (or that the journal's
//! tail was cut off).
//!
//! With protection 1 the 32-byte key is stored as 64 hex digits (and a newline)
//! in `<state>.key` beside the state file, created with mode 0600; with protection
//! 2 the key is Argon2id(passphrase, salt) with the parameters in the header.
//! The journal uses the same key.
//!
//! A snapshot (and a new journal) is written to a temporary file in the same
//! directory (mode 0600), synced, renamed over the old one, and the directory
//! synced: a crash leaves the old snapshot with its journal, or the new one
//! with either an empty journal or the old journal, which names the old
//! snapshot's id and is ignored (its changes are in the new snapshot).

mod delta;
mod journal;

use crate::error::{Error, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use prost::Message;
use rossby_protocol::pb;
use std::fmt;
use std::fs;
use std::io::{ErrorKind, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// How many accepted message ids the state remembers to drop replays.
pub const SEEN_MESSAGES: usize = 1000;
/// How many sent messages the state remembers for naming them in receipts.
pub const SENT_LOG: usize = 200;
/// Magic bytes at the start of a state file.
pub const MAGIC: &[u8; 8] = b"RSBYSTAT";
/// The snapshot format version written by this build (1, without a snapshot
/// id and journal, is still read).
pub const FORMAT_VERSION: u8 = 2;
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
    /// Recently accepted messages, `sender box || sender device || message id
    /// || queue sequence number (u64 big-endian)` (56 bytes each; 48 without
    /// the sequence number in older states; oldest first, at most
    /// [`SEEN_MESSAGES`]): the same message at another place in the queue is a
    /// replay and dropped, the same envelope fetched again before its
    /// acknowledgement is not.
    #[prost(bytes = "vec", repeated, tag = "18")]
    pub seen_messages: Vec<Vec<u8>>,
    /// MLS groups: the signing key, openmls' storage and the groups' bookkeeping
    /// (see [`crate::groups`]).
    #[prost(message, optional, tag = "19")]
    pub groups: Option<crate::groups::GroupsState>,
    /// This user turned read receipts off: messages shown are acknowledged to
    /// their senders as delivered only.
    #[prost(bool, tag = "24")]
    pub read_receipts_off: bool,
    /// Messages sent recently (oldest first, at most [`SENT_LOG`]), so a receipt
    /// can name what was delivered or read.
    #[prost(message, repeated, tag = "25")]
    pub sent_log: Vec<SentLogEntry>,
    /// Attachment uploads started and not finished, so a new process can resume
    /// them ([`crate::attachments`]).
    #[prost(message, optional, tag = "20")]
    pub uploads: Option<crate::attachments::PendingUploads>,
    /// Sealed sender: this account's access secret, the cached sender
    /// certificate and the gateway's certificate keys ([`crate::sealed`]).
    #[prost(message, optional, tag = "26")]
    pub sealed_sender: Option<crate::sealed::SealedSenderState>,
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
    /// The contact's sealed-sender access secret, as it shared it (32 bytes;
    /// empty: send to it identified).
    #[prost(bytes = "vec", tag = "7")]
    pub access_secret: Vec<u8>,
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
    /// The text (of a plain-text message).
    #[prost(string, tag = "3")]
    pub text: String,
    /// When it was first attempted (ms since the epoch).
    #[prost(uint64, tag = "4")]
    pub sent_at_ms: u64,
    /// A message with attachments or a location (`text` is then empty).
    #[prost(message, optional, tag = "5")]
    pub message: Option<pb::RichMessage>,
    /// A receipt (`text` is then empty).
    #[prost(message, optional, tag = "6")]
    pub receipt: Option<pb::Receipt>,
}

/// A message this device sent, as a receipt names it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SentLogEntry {
    /// Its message id (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub message_id: Vec<u8>,
    /// The recipient box (16 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub to_box: Vec<u8>,
    /// A short description: the beginning of the text, or what was attached.
    #[prost(string, tag = "3")]
    pub preview: String,
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
    with_suffix(state_path, ".key")
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
    /// Journal records appended.
    pub records: u64,
}

/// When the journal is folded into a fresh snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// Compact once the journal would exceed this percentage of the snapshot's
    /// size: loading replays at most that much, and the snapshot's cost is
    /// spread over that many bytes of records.
    pub journal_percent: u32,
    /// ... but let the journal grow to at least this many bytes first, so a
    /// small state is not rewritten every few records.
    pub min_journal_bytes: u64,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            journal_percent: 200,
            min_journal_bytes: 64 * 1024,
        }
    }
}

impl Compaction {
    fn limit(&self, snapshot_len: u64) -> u64 {
        (snapshot_len.saturating_mul(u64::from(self.journal_percent)) / 100)
            .max(self.min_journal_bytes)
    }
}

/// The path of the journal of a state file: `<state>.journal`.
pub fn journal_path(state_path: &Path) -> PathBuf {
    with_suffix(state_path, ".journal")
}

/// The path of the lock file of a state file: `<state>.lock`.
pub fn lock_path(state_path: &Path) -> PathBuf {
    with_suffix(state_path, ".lock")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The journal being appended to.
struct Journal {
    file: fs::File,
    header: [u8; journal::HEADER_LEN],
    /// Bytes in the file (header and records).
    len: u64,
    /// Index of the next record.
    next: u64,
}

/// An open, decrypted state file with its journal.
pub struct StateStore {
    path: PathBuf,
    /// Snapshot header up to (not including) the snapshot id, in the current
    /// format version.
    header: Vec<u8>,
    key: Zeroizing<[u8; KEY_LEN]>,
    /// Size of the snapshot file on disk.
    snapshot_len: u64,
    /// Its id (`None`: a format 1 snapshot).
    snapshot_id: Option<[u8; journal::SNAPSHOT_ID_LEN]>,
    /// `None`: the next save writes a snapshot (none with a journal yet, or
    /// the journal could not be appended to).
    journal: Option<Journal>,
    /// The state as the files hold it (snapshot and journal).
    persisted: State,
    compaction: Compaction,
    io: StateIo,
    /// Held while the store is open (`None` after [`StateStore::release`]):
    /// two writers would interleave records.
    lock: Option<fs::File>,
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
        let lock = lock(path)?;
        // Another creator may have finished between the check and the lock.
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
            snapshot_len: 0,
            snapshot_id: None,
            journal: None,
            persisted: State::default(),
            compaction: Compaction::default(),
            io: StateIo::default(),
            lock: Some(lock),
            state,
        };
        store.write_snapshot()?;
        Ok(store)
    }

    /// Opens and decrypts an existing state file and replays its journal. The
    /// file's header decides how the key is obtained: a passphrase-protected
    /// file needs [`StateKey::Passphrase`]; a key-file-protected file is read
    /// with its key file whatever `key` says.
    pub fn open(path: &Path, key: &StateKey) -> Result<Self> {
        if !path.exists() {
            return Err(Error::NoState(path.to_path_buf()));
        }
        // Locked before reading, so no other writer compacts under us.
        let lock = lock(path)?;
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
        let aad = &bytes[..parsed.header_len];
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
                        aad,
                    },
                )
                .map_err(|_| Error::StateDecrypt(path.to_path_buf()))?,
        );
        let mut state = State::decode(plaintext.as_slice()).map_err(|e| Error::StateFormat {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let journal = match parsed.snapshot_id {
            Some(id) => replay(path, &cipher, &id, &mut state)?,
            // A snapshot of format 1 has no journal: the first save rewrites it.
            None => None,
        };
        Ok(StateStore {
            path: path.to_path_buf(),
            header: header_bytes(
                match parsed.protection {
                    Protection::KeyFile => PROTECTION_KEY_FILE,
                    Protection::Passphrase => PROTECTION_PASSPHRASE,
                },
                parsed.kdf,
            ),
            key: aead_key,
            snapshot_len: bytes.len() as u64,
            snapshot_id: parsed.snapshot_id,
            journal,
            persisted: state.clone(),
            compaction: Compaction::default(),
            io: StateIo::default(),
            lock: Some(lock),
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

    /// Sets when the journal is compacted.
    pub fn set_compaction(&mut self, compaction: Compaction) {
        self.compaction = compaction;
    }

    /// Persists the changes made to [`StateStore::state`] since the last save:
    /// appends them to the journal as one encrypted record and syncs it, or
    /// writes a fresh snapshot (when the journal grew past its bound, when the
    /// change is about as large as the state, or when there is no journal to
    /// append to). Nothing is written when nothing changed.
    pub fn save(&mut self) -> Result<()> {
        self.relock()?;
        if self.journal.is_none() {
            return self.write_snapshot();
        }
        let Some(patch) = delta::diff(&self.persisted, &self.state) else {
            return self.write_snapshot();
        };
        if patch.changes.is_empty() {
            return Ok(());
        }
        let plaintext = Zeroizing::new(patch.encode_to_vec());
        let record_len = plaintext.len() as u64 + RECORD_OVERHEAD;
        let journal_len = self.journal.as_ref().map_or(0, |j| j.len);
        if record_len > self.snapshot_len / 2
            || journal_len + record_len > self.compaction.limit(self.snapshot_len)
        {
            return self.write_snapshot();
        }
        self.append(&plaintext)?;
        // The record is durable; bring `persisted` to what the files now hold.
        // A state the record does not reproduce (a field the diff does not
        // know) is written as a snapshot, so nothing is ever left out.
        if delta::apply(&mut self.persisted, patch).is_err() || self.persisted != self.state {
            return self.write_snapshot();
        }
        Ok(())
    }

    /// Lets another store open the files (the lock is released); this one
    /// keeps its state in memory and takes the files back on its next save,
    /// unless another store changed them meanwhile
    /// ([`Error::StateInUse`] then).
    pub fn release(&mut self) {
        self.lock = None;
    }

    fn relock(&mut self) -> Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        let lock = lock(&self.path)?;
        let snapshot =
            fs::read(&self.path).map_err(|e| Error::io("cannot read state file", &self.path, e))?;
        let on_disk = parse_header(&self.path, &snapshot)?.snapshot_id;
        let journal_len = fs::metadata(journal_path(&self.path)).map(|m| m.len()).ok();
        let unchanged = on_disk == self.snapshot_id
            && snapshot.len() as u64 == self.snapshot_len
            && self
                .journal
                .as_ref()
                .is_none_or(|j| journal_len == Some(j.len));
        if !unchanged {
            return Err(Error::StateInUse(self.path.clone()));
        }
        self.lock = Some(lock);
        Ok(())
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.key[..]))
    }

    /// Appends one record and syncs it. On failure the journal is abandoned
    /// (a partly written record must not be followed by more), so the next
    /// save writes a snapshot.
    fn append(&mut self, plaintext: &[u8]) -> Result<()> {
        let cipher = self.cipher();
        let path = journal_path(&self.path);
        let Some(journal) = self.journal.as_mut() else {
            return self.write_snapshot();
        };
        let record = journal::seal(&cipher, &journal.header, journal.next, plaintext)
            .map_err(Error::Crypto)?;
        let written = journal
            .file
            .write_all(&record)
            .and_then(|()| journal.file.sync_data());
        if let Err(e) = written {
            self.journal = None;
            return Err(Error::io("cannot append to", &path, e));
        }
        journal.len += record.len() as u64;
        journal.next += 1;
        self.io.bytes_written += record.len() as u64;
        self.io.syncs += 1;
        self.io.records += 1;
        Ok(())
    }

    /// Writes the whole state as a new snapshot (temporary file, synced,
    /// renamed over the state file, directory synced) and starts an empty
    /// journal for it the same way. A crash before the snapshot's rename leaves
    /// the old snapshot and journal; after it, the old journal names the old
    /// snapshot and is ignored, so either way the files load.
    fn write_snapshot(&mut self) -> Result<()> {
        self.journal = None;
        let id: [u8; journal::SNAPSHOT_ID_LEN] = rand::random();
        let mut aad = self.header.clone();
        aad.extend_from_slice(&id);
        let plaintext = Zeroizing::new(self.state.encode_to_vec());
        let nonce: [u8; NONCE_LEN] = rand::random();
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_slice(),
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Crypto("state encryption failed".into()))?;
        let mut out = aad;
        out.reserve(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        write_atomic(&self.path, &out)?;
        self.io.bytes_written += out.len() as u64;
        self.io.syncs += 2;
        self.io.snapshots += 1;
        self.snapshot_len = out.len() as u64;
        self.snapshot_id = Some(id);
        self.persisted = self.state.clone();
        // The state is safe in the snapshot now: a journal that cannot be
        // started only means the next save writes a snapshot again.
        let header = journal::header(&id);
        if let Ok(file) = create_atomic(&journal_path(&self.path), &header) {
            self.io.bytes_written += header.len() as u64;
            self.io.syncs += 2;
            self.journal = Some(Journal {
                file,
                header,
                len: header.len() as u64,
                next: 0,
            });
        }
        Ok(())
    }
}

/// Bytes a journal record adds to its plaintext: lengths, nonce and tag.
const RECORD_OVERHEAD: u64 = 8 + 12 + 16;

/// Replays the journal of snapshot `id` into `state`; returns it ready for
/// appending, or `None` when the next save should write a snapshot.
fn replay(
    path: &Path,
    cipher: &ChaCha20Poly1305,
    id: &[u8; journal::SNAPSHOT_ID_LEN],
    state: &mut State,
) -> Result<Option<Journal>> {
    let jpath = journal_path(path);
    let bad = |reason: String| Error::StateFormat {
        path: jpath.clone(),
        reason,
    };
    let bytes = match fs::read(&jpath) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read state journal", &jpath, e)),
    };
    // A journal is created whole (temporary file and rename), so its header
    // is never torn.
    let journal_id = journal::parse_header(&bytes).map_err(bad)?;
    if journal_id != *id {
        // Left by a crash between a snapshot and its new journal: everything
        // in it is in the snapshot already.
        return Ok(None);
    }
    let header = journal::header(id);
    let scan = journal::scan(cipher, &header, &bytes).map_err(bad)?;
    let count = scan.records.len() as u64;
    for (i, record) in scan.records.into_iter().enumerate() {
        let patch = delta::Patch::decode(record.as_slice())
            .map_err(|e| bad(format!("record {i} does not decode: {e}")))?;
        delta::apply(state, patch).map_err(|e| bad(format!("record {i}: {e}")))?;
    }
    let opened = private_options().open(&jpath).and_then(|mut file| {
        if scan.torn {
            file.set_len(scan.good_len)?;
            file.sync_data()?;
        }
        file.seek(SeekFrom::Start(scan.good_len))?;
        Ok(file)
    });
    Ok(opened.ok().map(|file| Journal {
        file,
        header,
        len: scan.good_len,
        next: count,
    }))
}

/// Takes the exclusive lock of a state file.
fn lock(path: &Path) -> Result<fs::File> {
    let lpath = lock_path(path);
    let file = private_options()
        .create(true)
        .truncate(false)
        .open(&lpath)
        .map_err(|e| Error::io("cannot open lock file", &lpath, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::StateInUse(path.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(Error::io("cannot lock", &lpath, e)),
    }
}

struct ParsedHeader {
    protection: Protection,
    kdf: Option<(KdfParams, [u8; SALT_LEN])>,
    /// Bytes of the header, the snapshot id included (the associated data).
    header_len: usize,
    /// The snapshot id (format 2 and later).
    snapshot_id: Option<[u8; journal::SNAPSHOT_ID_LEN]>,
}

fn header_bytes(protection: u8, kdf: Option<(KdfParams, [u8; SALT_LEN])>) -> Vec<u8> {
    let mut h = Vec::with_capacity(38 + journal::SNAPSHOT_ID_LEN);
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
    let version = bytes[8];
    if version != 1 && version != FORMAT_VERSION {
        return Err(bad(&format!("unsupported format version {version}")));
    }
    let (protection, kdf, len) = match bytes[9] {
        PROTECTION_KEY_FILE => (Protection::KeyFile, None, 10),
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
            (Protection::Passphrase, Some((params, salt)), 38)
        }
        other => return Err(bad(&format!("unknown protection {other}"))),
    };
    if version == 1 {
        return Ok(ParsedHeader {
            protection,
            kdf,
            header_len: len,
            snapshot_id: None,
        });
    }
    let Some(id) = bytes.get(len..len + journal::SNAPSHOT_ID_LEN) else {
        return Err(bad("truncated header"));
    };
    let mut snapshot_id = [0u8; journal::SNAPSHOT_ID_LEN];
    snapshot_id.copy_from_slice(id);
    Ok(ParsedHeader {
        protection,
        kdf,
        header_len: len + journal::SNAPSHOT_ID_LEN,
        snapshot_id: Some(snapshot_id),
    })
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
    create_atomic(path, bytes).map(drop)
}

/// [`write_atomic`], returning the file open for writing after `bytes`.
fn create_atomic(path: &Path, bytes: &[u8]) -> Result<fs::File> {
    let tmp = with_suffix(path, &format!(".tmp{}", std::process::id()));
    let result = (|| -> Result<fs::File> {
        let mut file = private_options()
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io("cannot create", &tmp, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("cannot replace", path, e))?;
        Ok(file)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let file = result?;
    sync_parent(path);
    Ok(file)
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
        drop(store);
        let again = StateStore::open(&path, &StateKey::KeyFile).unwrap();
        assert_eq!(again.state.acked_seq, 43);
        let journal = fs::read(journal_path(&path)).unwrap();
        assert!(!contains(&journal, b"alice@example.com"));
        drop(again);
        // A snapshot written again uses a fresh nonce (and snapshot id).
        let mut store = StateStore::open(&path, &StateKey::KeyFile).unwrap();
        store.write_snapshot().unwrap();
        assert_ne!(fs::read(&path).unwrap()[10..26], raw[10..26]);
        drop(store);
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
        // No temporary files are left behind: state, key, journal, lock.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    #[test]
    fn passphrase_state_round_trips_and_a_wrong_passphrase_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let kdf = KdfParams::insecure_for_tests();
        drop(
            StateStore::create(&path, &StateKey::passphrase("correct horse"), kdf, sample())
                .unwrap(),
        );
        assert!(!key_file_path(&path).exists());
        let raw = fs::read(&path).unwrap();
        assert!(!contains(&raw, b"SECRET-KEY-MATERIAL"));
        assert_eq!(
            StateStore::protection(&path).unwrap(),
            Some(Protection::Passphrase)
        );
        let store = StateStore::open(&path, &StateKey::passphrase("correct horse")).unwrap();
        assert_eq!(store.state, sample());
        drop(store);
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
        drop(
            StateStore::create(&path, &StateKey::KeyFile, KdfParams::default(), sample()).unwrap(),
        );
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

    fn open(path: &Path) -> Result<StateStore> {
        StateStore::open(path, &StateKey::KeyFile)
    }

    /// A state of a realistic size (a pinned certificate), so small changes
    /// are journal records.
    fn create(dir: &Path) -> (PathBuf, StateStore) {
        let path = dir.join("state");
        let state = State {
            ca_cert_der: vec![9; 4096],
            ..sample()
        };
        let store =
            StateStore::create(&path, &StateKey::KeyFile, KdfParams::default(), state).unwrap();
        (path, store)
    }

    /// Record `i` of a test run: pointers move, an outbox entry comes and goes,
    /// a message id is remembered.
    fn step(state: &mut State, i: u64) {
        state.acked_seq = i;
        state.last_seq = i + 1;
        if i.is_multiple_of(2) {
            state.outbox.push(OutboxEntry {
                message_id: i.to_be_bytes().to_vec(),
                text: format!("text {i}"),
                ..OutboxEntry::default()
            });
        } else {
            state.outbox.clear();
        }
        state
            .seen_messages
            .push(vec![u8::try_from(i % 256).unwrap(); 48]);
        if state.seen_messages.len() > 5 {
            state.seen_messages.remove(0);
        }
    }

    #[test]
    fn saves_append_small_records_that_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut store) = create(dir.path());
        let created = store.io();
        assert_eq!(created.snapshots, 1);
        let mut expected = store.state.clone();
        for i in 0..20 {
            step(&mut store.state, i);
            step(&mut expected, i);
            let before = store.io();
            store.save().unwrap();
            let cost = store.io();
            assert_eq!(cost.records - before.records, 1);
            assert_eq!(cost.syncs - before.syncs, 1);
            assert!(cost.bytes_written - before.bytes_written < 200, "{cost:?}");
        }
        // Nothing changed, nothing written.
        let before = store.io();
        store.save().unwrap();
        assert_eq!(store.io(), before);
        assert_eq!(store.io().snapshots, 1);
        drop(store);
        let store = open(&path).unwrap();
        assert_eq!(store.state, expected);
        // Appending continues after a reopen.
        let mut store = store;
        step(&mut store.state, 20);
        step(&mut expected, 20);
        store.save().unwrap();
        drop(store);
        assert_eq!(open(&path).unwrap().state, expected);
    }

    #[test]
    fn the_journal_is_compacted_into_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut store) = create(dir.path());
        store.set_compaction(Compaction {
            journal_percent: 100,
            min_journal_bytes: 0,
        });
        let mut expected = store.state.clone();
        for i in 0..200 {
            step(&mut store.state, i);
            step(&mut expected, i);
            store.save().unwrap();
            let journal = fs::metadata(journal_path(&path)).unwrap().len();
            let snapshot = fs::metadata(&path).unwrap().len();
            assert!(journal <= snapshot.max(200), "{journal} > {snapshot}");
        }
        assert!(store.io().snapshots > 5, "{:?}", store.io());
        drop(store);
        assert_eq!(open(&path).unwrap().state, expected);
    }

    #[test]
    fn a_large_change_is_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut store) = create(dir.path());
        store.state.contacts = (0..200)
            .map(|i| Contact {
                box_id: vec![i; 16],
                identifier: format!("user{i}@example.com"),
                ..Contact::default()
            })
            .collect();
        store.save().unwrap();
        assert_eq!(store.io().snapshots, 2);
        assert_eq!(store.io().records, 0);
        let expected = store.state.clone();
        drop(store);
        assert_eq!(open(&path).unwrap().state, expected);
    }

    /// Every file the state consists of, by name.
    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn restore(dir: &Path, files: &[(String, Vec<u8>)]) {
        for entry in fs::read_dir(dir).unwrap() {
            fs::remove_file(entry.unwrap().path()).unwrap();
        }
        for (name, bytes) in files {
            fs::write(dir.join(name), bytes).unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.join("state.key");
            fs::set_permissions(key, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[test]
    fn a_crash_at_any_point_of_compaction_leaves_a_loadable_state() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut store) = create(dir.path());
        for i in 0..5 {
            step(&mut store.state, i);
            store.save().unwrap();
        }
        let old_state = store.state.clone();
        let old = files(dir.path());
        step(&mut store.state, 5);
        store.write_snapshot().unwrap();
        let new_state = store.state.clone();
        let new = files(dir.path());
        drop(store);
        let pick = |name: &str, from: &[(String, Vec<u8>)]| {
            from.iter().find(|(n, _)| n == name).cloned().unwrap()
        };
        let key = pick("state.key", &old);
        let tmp = |name: &str, bytes: &[u8]| (format!("{name}.tmp4242"), bytes.to_vec());
        let (_, old_snap) = pick("state", &old);
        let (_, old_journal) = pick("state.journal", &old);
        let (_, new_snap) = pick("state", &new);
        let (_, new_journal) = pick("state.journal", &new);
        // The file sets a crash can leave, in the order compaction writes them,
        // and the state each must load as.
        type Files = Vec<(String, Vec<u8>)>;
        let cases: Vec<(&str, Files, &State)> = vec![
            (
                "snapshot half written to its temporary file",
                vec![
                    key.clone(),
                    ("state".into(), old_snap.clone()),
                    ("state.journal".into(), old_journal.clone()),
                    tmp("state", &new_snap[..new_snap.len() / 2]),
                ],
                &old_state,
            ),
            (
                "snapshot synced, not renamed",
                vec![
                    key.clone(),
                    ("state".into(), old_snap.clone()),
                    ("state.journal".into(), old_journal.clone()),
                    tmp("state", &new_snap),
                ],
                &old_state,
            ),
            (
                "snapshot renamed, journal not started",
                vec![
                    key.clone(),
                    ("state".into(), new_snap.clone()),
                    ("state.journal".into(), old_journal.clone()),
                ],
                &new_state,
            ),
            (
                "new journal in its temporary file",
                vec![
                    key.clone(),
                    ("state".into(), new_snap.clone()),
                    ("state.journal".into(), old_journal.clone()),
                    tmp("state.journal", &new_journal[..10]),
                ],
                &new_state,
            ),
            (
                "done",
                vec![
                    key.clone(),
                    ("state".into(), new_snap.clone()),
                    ("state.journal".into(), new_journal.clone()),
                ],
                &new_state,
            ),
            (
                "snapshot renamed, journal gone",
                vec![key.clone(), ("state".into(), new_snap.clone())],
                &new_state,
            ),
        ];
        for (what, set, expected) in cases {
            restore(dir.path(), &set);
            let mut store = open(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(&store.state, expected, "{what}");
            // And it keeps working from there.
            step(&mut store.state, 6);
            store.save().unwrap();
            let after = store.state.clone();
            drop(store);
            assert_eq!(open(&path).unwrap().state, after, "{what}");
        }
    }

    #[test]
    fn a_torn_last_record_is_discarded_and_appending_continues() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut store) = create(dir.path());
        let mut states = vec![store.state.clone()];
        let mut ends = vec![fs::metadata(journal_path(&path)).unwrap().len()];
        for i in 0..3 {
            step(&mut store.state, i);
            store.save().unwrap();
            states.push(store.state.clone());
            ends.push(fs::metadata(journal_path(&path)).unwrap().len());
        }
        drop(store);
        let full = files(dir.path());
        let journal = full
            .iter()
            .find(|(n, _)| n == "state.journal")
            .unwrap()
            .1
            .clone();
        let (last_start, end) = (ends[2] as usize, ends[3] as usize);
        for cut in last_start..end {
            restore(dir.path(), &full);
            fs::write(journal_path(&path), &journal[..cut]).unwrap();
            let mut store = open(&path).unwrap();
            assert_eq!(store.state, states[2], "cut at {cut}");
            step(&mut store.state, 10);
            store.save().unwrap();
            let after = store.state.clone();
            drop(store);
            assert_eq!(open(&path).unwrap().state, after, "cut at {cut}");
        }
    }

    #[test]
    fn a_damaged_or_reordered_journal_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut store) = create(dir.path());
        let mut ends = vec![fs::metadata(journal_path(&path)).unwrap().len() as usize];
        for i in 0..3 {
            step(&mut store.state, i);
            store.save().unwrap();
            ends.push(fs::metadata(journal_path(&path)).unwrap().len() as usize);
        }
        drop(store);
        let full = files(dir.path());
        let journal = full
            .iter()
            .find(|(n, _)| n == "state.journal")
            .unwrap()
            .1
            .clone();
        let is_journal_error = |r: Result<StateStore>| match r {
            Err(Error::StateFormat { path, reason }) => {
                assert!(path.ends_with("state.journal"), "{path:?}");
                reason
            }
            other => panic!("{:?}", other.map(|s| s.state)),
        };
        // A flipped bit in the second record.
        restore(dir.path(), &full);
        let mut damaged = journal.clone();
        damaged[ends[1] + 30] ^= 1;
        fs::write(journal_path(&path), &damaged).unwrap();
        let reason = is_journal_error(open(&path));
        assert!(reason.contains("authentication"), "{reason}");
        // The first two records swapped.
        let mut swapped = journal[..ends[0]].to_vec();
        swapped.extend_from_slice(&journal[ends[1]..ends[2]]);
        swapped.extend_from_slice(&journal[ends[0]..ends[1]]);
        swapped.extend_from_slice(&journal[ends[2]..]);
        fs::write(journal_path(&path), &swapped).unwrap();
        is_journal_error(open(&path));
        // The first record dropped.
        let mut dropped = journal[..ends[0]].to_vec();
        dropped.extend_from_slice(&journal[ends[1]..]);
        fs::write(journal_path(&path), &dropped).unwrap();
        is_journal_error(open(&path));
        // Not a journal.
        fs::write(journal_path(&path), b"garbage").unwrap();
        is_journal_error(open(&path));
    }

    #[test]
    fn a_journal_from_another_state_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut store) = create(dir.path());
        let base = store.state.clone();
        step(&mut store.state, 1);
        store.save().unwrap();
        let own = fs::read(journal_path(&path)).unwrap();
        drop(store);
        // Same key, a second state file: its journal names its own snapshot.
        let other = dir.path().join("other");
        fs::copy(key_file_path(&path), key_file_path(&other)).unwrap();
        let mut second =
            StateStore::create(&other, &StateKey::KeyFile, KdfParams::default(), sample()).unwrap();
        step(&mut second.state, 7);
        second.save().unwrap();
        drop(second);
        // The whole foreign journal: names another snapshot, ignored.
        fs::copy(journal_path(&other), journal_path(&path)).unwrap();
        assert_eq!(open(&path).unwrap().state, base);
        // A foreign record appended to the own journal (same index, same key).
        let foreign = fs::read(journal_path(&other)).unwrap();
        let mut spliced = own.clone();
        spliced.extend_from_slice(&foreign[journal::HEADER_LEN..]);
        spliced.extend_from_slice(&own[journal::HEADER_LEN..]);
        fs::write(journal_path(&path), &spliced).unwrap();
        assert!(matches!(open(&path), Err(Error::StateFormat { .. })));
    }

    #[test]
    fn format_1_files_are_read_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let key = load_or_create_key_file(&key_file_path(&path)).unwrap();
        let mut header = header_bytes(PROTECTION_KEY_FILE, None);
        header[8] = 1;
        let nonce = [3u8; NONCE_LEN];
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&key[..]));
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &sample().encode_to_vec(),
                    aad: &header,
                },
            )
            .unwrap();
        let mut v1 = header.clone();
        v1.extend_from_slice(&nonce);
        v1.extend_from_slice(&ciphertext);
        fs::write(&path, &v1).unwrap();
        let mut store = open(&path).unwrap();
        assert_eq!(store.state, sample());
        step(&mut store.state, 1);
        store.save().unwrap();
        assert_eq!(store.io().snapshots, 1, "the first save rewrites it");
        let expected = store.state.clone();
        drop(store);
        assert_eq!(fs::read(&path).unwrap()[8], FORMAT_VERSION);
        assert_eq!(open(&path).unwrap().state, expected);
    }

    #[test]
    fn a_released_store_takes_the_files_back_unless_they_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut first) = create(dir.path());
        first.release();
        let mut second = open(&path).unwrap();
        assert!(matches!(first.save(), Err(Error::StateInUse(_))));
        // Unchanged by the second store: the first takes the files back.
        second.release();
        step(&mut first.state, 1);
        first.save().unwrap();
        assert!(matches!(open(&path), Err(Error::StateInUse(_))));
        first.release();
        let mut second = open(&path).unwrap();
        assert_eq!(second.state, first.state);
        // Changed by the second store: the first must not write over it.
        step(&mut second.state, 2);
        second.save().unwrap();
        second.release();
        step(&mut first.state, 3);
        assert!(matches!(first.save(), Err(Error::StateInUse(_))));
        let expected = second.state.clone();
        drop((first, second));
        assert_eq!(open(&path).unwrap().state, expected);
    }

    #[test]
    fn one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = create(dir.path());
        assert!(matches!(open(&path), Err(Error::StateInUse(_))));
        drop(store);
        let again = open(&path).unwrap();
        assert!(matches!(open(&path), Err(Error::StateInUse(_))));
        drop(again);
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("SECRET"));
        assert!(!s.contains("HAWK"));
    }
}
