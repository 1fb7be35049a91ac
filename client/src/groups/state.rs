//! What the state file keeps about groups (the `groups` field of
//! [`crate::state::State`]), as protobuf messages.

use std::fmt;

/// Everything this device knows about its MLS groups.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct GroupsState {
    /// The public key of the device's MLS signature key pair (Ed25519); the
    /// pair itself is in `mls_storage`.
    #[prost(bytes = "vec", tag = "2")]
    pub signature_public: Vec<u8>,
    /// openmls' storage (group states, epoch secrets, KeyPackage private keys),
    /// sorted by key.
    #[prost(message, repeated, tag = "3")]
    pub mls_storage: Vec<StorageEntry>,
    /// The groups this device is or was in.
    #[prost(message, repeated, tag = "4")]
    pub groups: Vec<GroupEntry>,
    /// Every group envelope of the queue up to this sequence number was processed
    /// (its results are in `deliveries` until acknowledged).
    #[prost(uint64, tag = "5")]
    pub processed_through: u64,
    /// Results of processed group envelopes, kept until acknowledged.
    #[prost(message, repeated, tag = "6")]
    pub deliveries: Vec<Delivery>,
    /// Messages of a later epoch than their group's, kept until the Commits
    /// before them arrive.
    #[prost(message, repeated, tag = "7")]
    pub buffered: Vec<Buffered>,
    /// When the number of published KeyPackages was last checked (ms).
    #[prost(uint64, tag = "8")]
    pub key_packages_checked_at_ms: u64,
    /// When the last-resort KeyPackage was last published (ms).
    #[prost(uint64, tag = "9")]
    pub last_resort_at_ms: u64,
    /// A KeyPackage was used since the last check: check (and refill) soon.
    #[prost(bool, tag = "10")]
    pub key_packages_used: bool,
    /// Plaintexts of 1:1 messages opened from their conversation's MLS group,
    /// kept until acknowledged: MLS lets a message be decrypted once, and a
    /// fetch without an acknowledgement returns it again.
    #[prost(message, repeated, tag = "11")]
    pub direct_opened: Vec<DirectOpened>,
}

/// A 1:1 message opened from its conversation's group, by queue position.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DirectOpened {
    /// The queue sequence number of its envelope.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The envelope's message id (16 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub message_id: Vec<u8>,
    /// The decrypted `Content` (protobuf), or empty when it was rejected.
    #[prost(bytes = "vec", tag = "3")]
    pub content: Vec<u8>,
    /// Why it was rejected (empty when opened).
    #[prost(string, tag = "4")]
    pub rejected: String,
}

impl fmt::Debug for GroupsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupsState")
            .field("groups", &self.groups.len())
            .field("mls_storage_entries", &self.mls_storage.len())
            .field("processed_through", &self.processed_through)
            .finish_non_exhaustive()
    }
}

/// One key and value of openmls' storage.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StorageEntry {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// Membership of this device in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Membership {
    /// A member.
    Active = 0,
    /// Removed by another member.
    Removed = 1,
    /// Left (from this or another device of the account).
    Left = 2,
}

/// A group this device is or was in.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupEntry {
    /// The box that created the group (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub creator_box: Vec<u8>,
    /// The group's id in that box (16 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub group_id: Vec<u8>,
    /// The group's name (from its group context).
    #[prost(string, tag = "3")]
    pub name: String,
    /// Member boxes as the gateway last reported them (16 bytes each), minus
    /// boxes seen leaving since. Used to remove the devices of boxes that left,
    /// and only while `server_epoch` is the group's epoch.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub server_members: Vec<Vec<u8>>,
    /// The epoch the gateway reported with `server_members`.
    #[prost(uint64, tag = "5")]
    pub server_epoch: u64,
    /// A GroupCommit request (protobuf) sent but not answered: sent again, with
    /// the same message id, before anything else happens in the group.
    #[prost(bytes = "vec", tag = "6")]
    pub pending_commit: Vec<u8>,
    /// This device's membership.
    #[prost(enumeration = "Membership", tag = "7")]
    pub membership: i32,
    /// For a 1:1 conversation: the other box (16 bytes); empty for a group.
    #[prost(bytes = "vec", tag = "8")]
    pub direct_peer: Vec<u8>,
    /// When a Commit of this device (which renews its leaf keys) was last
    /// accepted in the group (ms); 1:1 conversations renew them when it is old.
    #[prost(uint64, tag = "9")]
    pub updated_at_ms: u64,
}

/// What a processed group envelope produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum DeliveryKind {
    /// Nothing to show.
    Unspecified = 0,
    /// An application message.
    Message = 1,
    /// This device joined the group.
    Joined = 2,
    /// This device was removed from the group.
    Removed = 3,
    /// This account left the group (from another device).
    Left = 4,
    /// The envelope was rejected (`text` holds the reason).
    Rejected = 5,
}

/// A result of a processed group envelope, kept until acknowledged.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Delivery {
    /// The queue sequence number whose processing produced it.
    #[prost(uint64, tag = "1")]
    pub trigger_seq: u64,
    /// The sequence number of the envelope it stems from (differs from
    /// `trigger_seq` for buffered messages).
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// What it is.
    #[prost(enumeration = "DeliveryKind", tag = "3")]
    pub kind: i32,
    /// The group's name.
    #[prost(string, tag = "4")]
    pub group: String,
    /// The sending box and device (16 bytes each).
    #[prost(bytes = "vec", tag = "5")]
    pub sender_box: Vec<u8>,
    /// The sending device.
    #[prost(bytes = "vec", tag = "6")]
    pub sender_device: Vec<u8>,
    /// The envelope's message id.
    #[prost(bytes = "vec", tag = "7")]
    pub message_id: Vec<u8>,
    /// The text (or the reason of a rejection).
    #[prost(string, tag = "8")]
    pub text: String,
    /// The sender's clock when sending.
    #[prost(uint64, tag = "9")]
    pub sent_at_ms: u64,
    /// When the gateway enqueued it.
    #[prost(uint64, tag = "10")]
    pub enqueued_at_ms: u64,
    /// A message with attachments or a location (`text` is then empty).
    #[prost(message, optional, tag = "11")]
    pub message: Option<rossby_protocol::pb::RichMessage>,
}

/// A group envelope of a later epoch than its group's.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Buffered {
    /// The queued envelope as fetched.
    #[prost(message, optional, tag = "1")]
    pub queued: Option<rossby_protocol::pb::QueuedEnvelope>,
    /// Its epoch.
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
}

/// The plaintext of a group application message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupContent {
    /// The sender's clock (ms since the epoch).
    #[prost(uint64, tag = "1")]
    pub sent_at_ms: u64,
    /// The text.
    #[prost(string, tag = "2")]
    pub text: String,
    /// Attached files (references to encrypted blobs).
    #[prost(message, repeated, tag = "3")]
    pub attachments: Vec<rossby_protocol::pb::Attachment>,
    /// A location.
    #[prost(message, optional, tag = "4")]
    pub location: Option<rossby_protocol::pb::Location>,
}

/// The group's metadata in its group context (MLS extension
/// [`super::mls::EXTENSION_GROUP_META`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupMeta {
    /// The group's name (empty for a 1:1 conversation).
    #[prost(string, tag = "1")]
    pub name: String,
    /// A 1:1 conversation: exactly two boxes, whose messages travel inside
    /// ordinary 1:1 envelopes ([`crate::groups::direct`]).
    #[prost(bool, tag = "2")]
    pub direct: bool,
}
