//! The order-preserving key encoding of every table.
//!
//! Layout (all integers big-endian, so byte order equals numeric order; every id is
//! its fixed 16 raw bytes, so no separators or escaping are needed):
//!
//! ```text
//! 0x01 global data
//!   0x01 0x01 <pepper version u32> <digest 32>            lookup: identifier -> box
//!   0x01 0x02 <pepper version u32> <digest 32>            pending registration of an identifier
//! 0x02 <region u16> regional data (one contiguous range per region)
//!   0x01 <box 16> <table>...                              everything of one box
//!        0x01                                             profile
//!        0x02 <device 16>                                 device record
//!        0x03 <device 16>                                 device queue pointer
//!        0x04 <device 16> <package ref 16>                MLS KeyPackage
//!        0x05 <device 16>                                 last-resort KeyPackage
//!        0x06                                             next sequence + device-list version
//!        0x07                                             low-water mark (lowest retained seq)
//!        0x08 <seq u64>                                   queued envelope
//!        0x09 <sender device 16> <message id 16>          dedup record
//!        0x0a <box 16>                                    contact
//!        0x0b <box 16>                                    blocked box
//!        0x0c <pepper version u32> <digest 32>            identifier bound to this box
//!        0x0d <device 16>                                 push presence lease of a device
//!        0x0e <group id 16>                               epoch record of a group this box created
//!        0x0f <device 16> <package ref 16>                a KeyPackage claimed recently (not stored again)
//!        0x10 <pepper version u32> <digest 32>            identifier being added to this box (code sent)
//!        0x11 <blob 16>                                   attachment blob record (size, parts, state, expiry)
//!        0x12 <blob 16> <part u32>                        one stored part of an attachment upload
//!        0x13                                             attachment usage (stored bytes, uploads in progress)
//!   0x02 <shard u8> <due at ms u64> <box 16> <entry>      expiry index
//!        0x01 <seq u64>                                   envelopes through seq (written before batch entries)
//!        0x02 <sender device 16> <message id 16>          one dedup record (written before batch entries)
//!        0x03 <last seq u64>                              what one enqueue transaction left to expire
//!   0x03 <box 16>                                         box awaiting purge
//!   0x04 <gateway id 16>                                  ownership lease of a gateway of the region
//!   0x05 <box 16> <entry id 16>                           outbox: fan-out recorded by a box, still to deliver
//!   0x06 <job>                                            maintenance lease of one background job of the region
//!        0x01 <shard u8>                                  sweeping one expiry shard
//!        0x02                                             draining the purge queue
//!   0x07 <shard u8> <due at ms u64> <box 16> <blob 16>    attachment blob expiry index
//! ```
//!
//! Tag `0x10` of the box tables is reserved for another table; attachment blobs
//! use `0x11`-`0x13`. A blob's id on the wire is its box id followed by the 16
//! bytes that name it in the box ([`Key::Blob`]).
//!
//! A box's region code is both in the regional prefix and in the box id; decoding
//! rejects keys where the two disagree.

use crate::error::{Error, Result};
use crate::ids::{BoxId, DeviceId, MessageId, RegionId};
use crate::range::KeyRange;

const GLOBAL: u8 = 0x01;
const REGIONAL: u8 = 0x02;

const GLOBAL_LOOKUP: u8 = 0x01;
const GLOBAL_REGISTRATION: u8 = 0x02;
const GLOBAL_CODE_BUDGET: u8 = 0x03;
const GLOBAL_IDENTIFIER_LIMIT: u8 = 0x04;

const REGION_BOX: u8 = 0x01;
const REGION_EXPIRY: u8 = 0x02;
const REGION_PURGE: u8 = 0x03;
const REGION_GATEWAY: u8 = 0x04;
const REGION_OUTBOX: u8 = 0x05;
const REGION_MAINTENANCE: u8 = 0x06;
const REGION_BLOB_EXPIRY: u8 = 0x07;

const JOB_EXPIRY_SHARD: u8 = 0x01;
const JOB_PURGE: u8 = 0x02;

const ENTRY_MESSAGE: u8 = 0x01;
const ENTRY_DEDUP: u8 = 0x02;
const ENTRY_BATCH: u8 = 0x03;

/// Number of shards of each region's expiry index: expiring entries of different
/// boxes land in different shards, so neither writers nor the sweeper share one hot
/// key range.
pub const EXPIRY_SHARDS: u8 = 16;

/// A background job of a region, run by whichever gateway holds its maintenance
/// lease ([`Key::MaintenanceLease`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MaintenanceJob {
    /// Deleting the due entries of one shard (`0..EXPIRY_SHARDS`) of the expiry
    /// index.
    ExpiryShard(u8),
    /// Finishing the purges of deleted accounts (draining the purge queue).
    Purge,
}

impl MaintenanceJob {
    /// Every job of a region, in key order: the expiry shards, then the purge.
    pub fn all() -> impl Iterator<Item = MaintenanceJob> {
        (0..EXPIRY_SHARDS)
            .map(MaintenanceJob::ExpiryShard)
            .chain(std::iter::once(MaintenanceJob::Purge))
    }

    /// How many jobs a region has.
    pub const COUNT: usize = EXPIRY_SHARDS as usize + 1;

    /// The job's kind, `expiry` or `purge` (a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            MaintenanceJob::ExpiryShard(_) => "expiry",
            MaintenanceJob::Purge => "purge",
        }
    }

    /// The job's bytes in its key (after the regional prefix): stable, so they
    /// also name the job for rendezvous hashing.
    pub fn to_bytes(&self) -> Vec<u8> {
        match *self {
            MaintenanceJob::ExpiryShard(shard) => vec![JOB_EXPIRY_SHARD, shard],
            MaintenanceJob::Purge => vec![JOB_PURGE],
        }
    }
}

impl std::fmt::Display for MaintenanceJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaintenanceJob::ExpiryShard(shard) => write!(f, "expiry shard {shard}"),
            MaintenanceJob::Purge => f.write_str("purge"),
        }
    }
}

/// The tables stored under a box prefix, with their one-byte tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Table {
    /// Profile and settings.
    Profile = 0x01,
    /// Device records (key bundle, authorized flag, credential metadata).
    Device = 0x02,
    /// Per-device queue pointers (highest acknowledged sequence).
    Pointer = 0x03,
    /// Published MLS KeyPackages, consumed once.
    KeyPackage = 0x04,
    /// The last-resort KeyPackage of a device.
    LastResortKeyPackage = 0x05,
    /// Next sequence number and device-list version.
    Next = 0x06,
    /// Lowest retained sequence number.
    Low = 0x07,
    /// Queued envelopes by sequence number.
    Queue = 0x08,
    /// Idempotency records of sends.
    Dedup = 0x09,
    /// Contacts of the box's owner.
    Contact = 0x0a,
    /// Boxes blocked by the owner.
    Block = 0x0b,
    /// Identifiers bound to the box (mirror of the lookup table for unbinding).
    Ident = 0x0c,
    /// Leases naming the gateway that holds a device's push subscription.
    Presence = 0x0d,
    /// Epoch records of the MLS groups the box created.
    Group = 0x0e,
    /// KeyPackages claimed recently, so a re-issued publish does not store them
    /// again.
    ClaimedKeyPackage = 0x0f,
    /// Identifiers being added to the box: a verification code was sent and
    /// not yet confirmed.
    PendingIdentifier = 0x10,
    /// Attachment blob records.
    Blob = 0x11,
    /// Markers of the stored parts of attachment uploads.
    BlobPart = 0x12,
    /// The box's attachment usage (stored bytes, uploads in progress).
    BlobUsage = 0x13,
    /// The wake-up push token of a device, with its wake-up state.
    PushToken = 0x14,
    /// Removed devices' last credential key versions.
    RetiredDevice = 0x15,
}

impl Table {
    fn from_tag(tag: u8) -> Result<Self> {
        Ok(match tag {
            0x01 => Table::Profile,
            0x02 => Table::Device,
            0x03 => Table::Pointer,
            0x04 => Table::KeyPackage,
            0x05 => Table::LastResortKeyPackage,
            0x06 => Table::Next,
            0x07 => Table::Low,
            0x08 => Table::Queue,
            0x09 => Table::Dedup,
            0x0a => Table::Contact,
            0x0b => Table::Block,
            0x0c => Table::Ident,
            0x0d => Table::Presence,
            0x0e => Table::Group,
            0x0f => Table::ClaimedKeyPackage,
            0x10 => Table::PendingIdentifier,
            0x11 => Table::Blob,
            0x12 => Table::BlobPart,
            0x13 => Table::BlobUsage,
            0x14 => Table::PushToken,
            0x15 => Table::RetiredDevice,
            _ => return Err(Error::MalformedKey("unknown box table")),
        })
    }
}

/// What an expiry index entry points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExpiryEntry {
    /// The queued envelope with this sequence number expires, and every older one
    /// with it.
    Message(u64),
    /// The dedup record of (sender device, message id) expires. Enqueues no
    /// longer write these (a [`ExpiryEntry::Batch`] lists its dedup records);
    /// entries written before are still swept.
    Dedup(DeviceId, MessageId),
    /// Everything one enqueue transaction stored that expires: its envelopes
    /// (through this, the batch's last sequence number) and its dedup records,
    /// which the entry's value lists. One entry per transaction instead of two
    /// per envelope; filed at the earlier of the two expiry times.
    Batch(u64),
}

/// Every key Rossby stores, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// Inbox lookup: keyed hash of a normalised identifier -> box.
    Lookup {
        /// Which pepper produced the digest.
        pepper_version: u32,
        /// HMAC-SHA-256 of the identifier.
        digest: [u8; 32],
    },
    /// A pending registration (verification code) of an identifier, by its lookup
    /// digest and the device that asked: one per (identifier, device), so a
    /// Register from another device never replaces the owner's.
    Registration {
        /// Which pepper produced the digest.
        pepper_version: u32,
        /// HMAC-SHA-256 of the identifier.
        digest: [u8; 32],
        /// The device that asked.
        device: DeviceId,
    },
    /// The deployment-wide count of verification codes sent in the current
    /// window for one scope (all codes, or one number prefix or e-mail domain),
    /// by the SHA-256 of the scope's name.
    CodeBudget([u8; 32]),
    /// The verification limits of one identifier (codes sent, wrong codes
    /// tried), by its lookup digest: kept across its registrations.
    IdentifierLimit([u8; 32]),
    /// A box's profile and settings.
    Profile(BoxId),
    /// A device record.
    Device(BoxId, DeviceId),
    /// A device's queue pointer.
    Pointer(BoxId, DeviceId),
    /// One published KeyPackage of a device, by a reference derived from its bytes.
    KeyPackage(BoxId, DeviceId, [u8; 16]),
    /// A device's last-resort KeyPackage.
    LastResortKeyPackage(BoxId, DeviceId),
    /// A KeyPackage of a device claimed recently, by its reference.
    ClaimedKeyPackage(BoxId, DeviceId, [u8; 16]),
    /// The box's next sequence number and device-list version.
    Next(BoxId),
    /// The box's low-water mark.
    Low(BoxId),
    /// A queued envelope.
    Queue(BoxId, u64),
    /// Idempotency record of a send from a device with a message id.
    Dedup(BoxId, DeviceId, MessageId),
    /// A contact (second box) of the box's owner.
    Contact(BoxId, BoxId),
    /// A box blocked by the owner.
    Block(BoxId, BoxId),
    /// An identifier bound to the box, by its lookup digest.
    Ident(BoxId, u32, [u8; 32]),
    /// An identifier being added to the box (its code not yet confirmed), by
    /// its lookup digest.
    PendingIdentifier(BoxId, u32, [u8; 32]),
    /// The push presence lease of a device: which gateway holds its subscription.
    Presence(BoxId, DeviceId),
    /// The epoch record of a group, in the key range of the box that created it.
    GroupEpoch(BoxId, [u8; 16]),
    /// A fan-out entry recorded by a transaction of the box, still to be
    /// delivered; in the box's region, outside its box range, so one scan of the
    /// region finds every pending entry.
    Outbox(BoxId, [u8; 16]),
    /// An attachment blob record of the box that uploaded it, by the blob's
    /// 16-byte name within the box.
    Blob(BoxId, [u8; 16]),
    /// Marker of one stored part (by its index) of an attachment upload.
    BlobPart(BoxId, [u8; 16], u32),
    /// The box's attachment usage: the one key every change of its stored bytes
    /// or uploads in progress writes, so the quota holds under snapshot isolation.
    BlobUsage(BoxId),
    /// The wake-up push token of a device (APNs, FCM or Web Push) and when it
    /// was last woken.
    PushToken(BoxId, DeviceId),
    /// The last credential key version of a device removed from the box, so a
    /// device linked again under the same id never gets that version again.
    RetiredDevice(BoxId, DeviceId),
    /// Attachment expiry index entry, in the home region of the box: the blob
    /// is due for deletion at `expires_at_ms` unless its record says later.
    BlobExpiry {
        /// Index shard, derived from the box ([`expiry_shard`]).
        shard: u8,
        /// When the blob falls due (milliseconds since the Unix epoch).
        expires_at_ms: u64,
        /// The box that uploaded it.
        box_id: BoxId,
        /// The blob's name within the box.
        blob: [u8; 16],
    },
    /// Expiry index entry, in the home region of the box.
    Expiry {
        /// Index shard, derived from the box.
        shard: u8,
        /// When the entry falls due (milliseconds since the Unix epoch): for a
        /// [`ExpiryEntry::Batch`], the earlier of its two expiry times.
        expires_at_ms: u64,
        /// The box the entry belongs to.
        box_id: BoxId,
        /// What expires.
        entry: ExpiryEntry,
    },
    /// A deleted box whose remaining keys still have to be removed.
    Purge(BoxId),
    /// The ownership lease of a gateway of a region, by the gateway run's id.
    GatewayLease(RegionId, [u8; 16]),
    /// The lease of the gateway that runs one background job of a region.
    MaintenanceLease(RegionId, MaintenanceJob),
}

/// The prefix of every key of one box.
pub fn box_prefix(box_id: BoxId) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.push(REGIONAL);
    out.extend_from_slice(&box_id.home_region().to_bytes());
    out.push(REGION_BOX);
    out.extend_from_slice(box_id.as_bytes());
    out
}

fn table_prefix(box_id: BoxId, table: Table) -> Vec<u8> {
    let mut out = box_prefix(box_id);
    out.push(table as u8);
    out
}

fn region_prefix(region: RegionId, kind: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    out.push(REGIONAL);
    out.extend_from_slice(&region.to_bytes());
    out.push(kind);
    out
}

/// The expiry shard of a box: spread by the box's random bytes.
pub fn expiry_shard(box_id: BoxId) -> u8 {
    box_id.as_bytes()[15] % EXPIRY_SHARDS
}

impl Key {
    /// The box this key belongs to: every key in a box's range, and the keys kept
    /// for a box elsewhere in its region (its expiry entries, outbox entries and
    /// purge marker). `None` for data of no one box (lookups, pending
    /// registrations, gateway and maintenance leases). Storage lets only a transaction holding
    /// the box's guard write such a key.
    pub fn owner_box(&self) -> Option<BoxId> {
        match *self {
            Key::Lookup { .. }
            | Key::Registration { .. }
            | Key::CodeBudget(_)
            | Key::IdentifierLimit(_)
            | Key::GatewayLease(..)
            | Key::MaintenanceLease(..) => None,
            Key::Profile(b)
            | Key::Device(b, _)
            | Key::Pointer(b, _)
            | Key::KeyPackage(b, _, _)
            | Key::LastResortKeyPackage(b, _)
            | Key::ClaimedKeyPackage(b, _, _)
            | Key::Next(b)
            | Key::Low(b)
            | Key::Queue(b, _)
            | Key::Dedup(b, _, _)
            | Key::Contact(b, _)
            | Key::Block(b, _)
            | Key::Ident(b, _, _)
            | Key::PendingIdentifier(b, _, _)
            | Key::Presence(b, _)
            | Key::GroupEpoch(b, _)
            | Key::Outbox(b, _)
            | Key::Expiry { box_id: b, .. }
            | Key::Blob(b, _)
            | Key::BlobPart(b, _, _)
            | Key::BlobUsage(b)
            | Key::PushToken(b, _)
            | Key::RetiredDevice(b, _)
            | Key::BlobExpiry { box_id: b, .. }
            | Key::Purge(b) => Some(b),
        }
    }

    /// Encodes the key into its stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Key::Lookup {
                pepper_version,
                digest,
            } => {
                let mut out = vec![GLOBAL, GLOBAL_LOOKUP];
                out.extend_from_slice(&pepper_version.to_be_bytes());
                out.extend_from_slice(&digest);
                out
            }
            Key::Registration {
                pepper_version,
                digest,
                device,
            } => {
                let mut out = vec![GLOBAL, GLOBAL_REGISTRATION];
                out.extend_from_slice(&pepper_version.to_be_bytes());
                out.extend_from_slice(&digest);
                out.extend_from_slice(device.as_bytes());
                out
            }
            Key::CodeBudget(scope) => {
                let mut out = vec![GLOBAL, GLOBAL_CODE_BUDGET];
                out.extend_from_slice(&scope);
                out
            }
            Key::IdentifierLimit(digest) => {
                let mut out = vec![GLOBAL, GLOBAL_IDENTIFIER_LIMIT];
                out.extend_from_slice(&digest);
                out
            }
            Key::Profile(b) => table_prefix(b, Table::Profile),
            Key::Device(b, d) => with(table_prefix(b, Table::Device), &[d.as_bytes()]),
            Key::Pointer(b, d) => with(table_prefix(b, Table::Pointer), &[d.as_bytes()]),
            Key::KeyPackage(b, d, r) => {
                with(table_prefix(b, Table::KeyPackage), &[d.as_bytes(), &r])
            }
            Key::ClaimedKeyPackage(b, d, r) => with(
                table_prefix(b, Table::ClaimedKeyPackage),
                &[d.as_bytes(), &r],
            ),
            Key::LastResortKeyPackage(b, d) => with(
                table_prefix(b, Table::LastResortKeyPackage),
                &[d.as_bytes()],
            ),
            Key::Next(b) => table_prefix(b, Table::Next),
            Key::Low(b) => table_prefix(b, Table::Low),
            Key::Queue(b, seq) => with(table_prefix(b, Table::Queue), &[&seq.to_be_bytes()]),
            Key::Dedup(b, d, m) => {
                with(table_prefix(b, Table::Dedup), &[d.as_bytes(), m.as_bytes()])
            }
            Key::Contact(b, other) => with(table_prefix(b, Table::Contact), &[other.as_bytes()]),
            Key::Block(b, other) => with(table_prefix(b, Table::Block), &[other.as_bytes()]),
            Key::Ident(b, version, digest) => with(
                table_prefix(b, Table::Ident),
                &[&version.to_be_bytes(), &digest],
            ),
            Key::PendingIdentifier(b, version, digest) => with(
                table_prefix(b, Table::PendingIdentifier),
                &[&version.to_be_bytes(), &digest],
            ),
            Key::Presence(b, d) => with(table_prefix(b, Table::Presence), &[d.as_bytes()]),
            Key::GroupEpoch(b, g) => with(table_prefix(b, Table::Group), &[&g]),
            Key::Blob(b, x) => with(table_prefix(b, Table::Blob), &[&x]),
            Key::BlobPart(b, x, i) => {
                with(table_prefix(b, Table::BlobPart), &[&x, &i.to_be_bytes()])
            }
            Key::BlobUsage(b) => table_prefix(b, Table::BlobUsage),
            Key::PushToken(b, d) => with(table_prefix(b, Table::PushToken), &[d.as_bytes()]),
            Key::RetiredDevice(b, d) => {
                with(table_prefix(b, Table::RetiredDevice), &[d.as_bytes()])
            }
            Key::BlobExpiry {
                shard,
                expires_at_ms,
                box_id,
                blob,
            } => with(
                region_prefix(box_id.home_region(), REGION_BLOB_EXPIRY),
                &[
                    &[shard],
                    &expires_at_ms.to_be_bytes(),
                    box_id.as_bytes(),
                    &blob,
                ],
            ),
            Key::Outbox(b, id) => with(
                region_prefix(b.home_region(), REGION_OUTBOX),
                &[b.as_bytes(), &id],
            ),
            Key::Expiry {
                shard,
                expires_at_ms,
                box_id,
                entry,
            } => {
                let mut out = region_prefix(box_id.home_region(), REGION_EXPIRY);
                out.push(shard);
                out.extend_from_slice(&expires_at_ms.to_be_bytes());
                out.extend_from_slice(box_id.as_bytes());
                match entry {
                    ExpiryEntry::Message(seq) => {
                        out.push(ENTRY_MESSAGE);
                        out.extend_from_slice(&seq.to_be_bytes());
                    }
                    ExpiryEntry::Dedup(d, m) => {
                        out.push(ENTRY_DEDUP);
                        out.extend_from_slice(d.as_bytes());
                        out.extend_from_slice(m.as_bytes());
                    }
                    ExpiryEntry::Batch(seq) => {
                        out.push(ENTRY_BATCH);
                        out.extend_from_slice(&seq.to_be_bytes());
                    }
                }
                out
            }
            Key::Purge(b) => with(
                region_prefix(b.home_region(), REGION_PURGE),
                &[b.as_bytes()],
            ),
            Key::GatewayLease(region, id) => with(region_prefix(region, REGION_GATEWAY), &[&id]),
            Key::MaintenanceLease(region, job) => with(
                region_prefix(region, REGION_MAINTENANCE),
                &[&job.to_bytes()],
            ),
        }
    }

    /// Decodes stored bytes; rejects anything that is not exactly one key.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader(bytes);
        let key = match r.u8()? {
            GLOBAL => match r.u8()? {
                GLOBAL_LOOKUP => Key::Lookup {
                    pepper_version: r.u32()?,
                    digest: r.array()?,
                },
                GLOBAL_REGISTRATION => Key::Registration {
                    pepper_version: r.u32()?,
                    digest: r.array()?,
                    device: r.device()?,
                },
                GLOBAL_CODE_BUDGET => Key::CodeBudget(r.array()?),
                GLOBAL_IDENTIFIER_LIMIT => Key::IdentifierLimit(r.array()?),
                _ => return Err(Error::MalformedKey("unknown global table")),
            },
            REGIONAL => {
                let region = RegionId(r.u16()?);
                match r.u8()? {
                    REGION_BOX => {
                        let b = r.box_in(region)?;
                        Self::decode_box_table(b, &mut r)?
                    }
                    REGION_EXPIRY => {
                        let shard = r.u8()?;
                        let expires_at_ms = r.u64()?;
                        let box_id = r.box_in(region)?;
                        let entry = match r.u8()? {
                            ENTRY_MESSAGE => ExpiryEntry::Message(r.u64()?),
                            ENTRY_DEDUP => ExpiryEntry::Dedup(r.device()?, r.message()?),
                            ENTRY_BATCH => ExpiryEntry::Batch(r.u64()?),
                            _ => return Err(Error::MalformedKey("unknown expiry entry")),
                        };
                        Key::Expiry {
                            shard,
                            expires_at_ms,
                            box_id,
                            entry,
                        }
                    }
                    REGION_PURGE => Key::Purge(r.box_in(region)?),
                    REGION_GATEWAY => Key::GatewayLease(region, r.array()?),
                    REGION_OUTBOX => Key::Outbox(r.box_in(region)?, r.array()?),
                    REGION_MAINTENANCE => Key::MaintenanceLease(region, r.job()?),
                    REGION_BLOB_EXPIRY => Key::BlobExpiry {
                        shard: r.u8()?,
                        expires_at_ms: r.u64()?,
                        box_id: r.box_in(region)?,
                        blob: r.array()?,
                    },
                    _ => return Err(Error::MalformedKey("unknown regional kind")),
                }
            }
            _ => return Err(Error::MalformedKey("unknown top-level tag")),
        };
        if !r.0.is_empty() {
            return Err(Error::MalformedKey("trailing bytes"));
        }
        Ok(key)
    }

    fn decode_box_table(b: BoxId, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match Table::from_tag(r.u8()?)? {
            Table::Profile => Key::Profile(b),
            Table::Device => Key::Device(b, r.device()?),
            Table::Pointer => Key::Pointer(b, r.device()?),
            Table::KeyPackage => Key::KeyPackage(b, r.device()?, r.array()?),
            Table::LastResortKeyPackage => Key::LastResortKeyPackage(b, r.device()?),
            Table::ClaimedKeyPackage => Key::ClaimedKeyPackage(b, r.device()?, r.array()?),
            Table::Next => Key::Next(b),
            Table::Low => Key::Low(b),
            Table::Queue => Key::Queue(b, r.u64()?),
            Table::Dedup => Key::Dedup(b, r.device()?, r.message()?),
            Table::Contact => Key::Contact(b, r.box_any()?),
            Table::Block => Key::Block(b, r.box_any()?),
            Table::Ident => Key::Ident(b, r.u32()?, r.array()?),
            Table::PendingIdentifier => Key::PendingIdentifier(b, r.u32()?, r.array()?),
            Table::Presence => Key::Presence(b, r.device()?),
            Table::Group => Key::GroupEpoch(b, r.array()?),
            Table::Blob => Key::Blob(b, r.array()?),
            Table::BlobPart => Key::BlobPart(b, r.array()?, r.u32()?),
            Table::BlobUsage => Key::BlobUsage(b),
            Table::PushToken => Key::PushToken(b, r.device()?),
            Table::RetiredDevice => Key::RetiredDevice(b, r.device()?),
        })
    }

    /// All keys of one table of one box.
    pub fn table_range(box_id: BoxId, table: Table) -> KeyRange {
        KeyRange::prefix(&table_prefix(box_id, table))
    }

    /// Every key of one box (all tables).
    pub fn box_range(box_id: BoxId) -> KeyRange {
        KeyRange::prefix(&box_prefix(box_id))
    }

    /// Queue entries of a box with sequence numbers in `[from, to)`.
    pub fn queue_range(box_id: BoxId, from: u64, to: u64) -> KeyRange {
        KeyRange::new(
            Key::Queue(box_id, from).encode(),
            Key::Queue(box_id, to).encode(),
        )
    }

    /// Queue entries of a box with sequence numbers from `from` on.
    pub fn queue_from(box_id: BoxId, from: u64) -> KeyRange {
        KeyRange {
            start: Key::Queue(box_id, from).encode(),
            end: Key::table_range(box_id, Table::Queue).end,
        }
    }

    /// KeyPackages of one device.
    pub fn key_package_range(box_id: BoxId, device: DeviceId) -> KeyRange {
        KeyRange::prefix(&with(
            table_prefix(box_id, Table::KeyPackage),
            &[device.as_bytes()],
        ))
    }

    /// Recently claimed KeyPackages of one device.
    pub fn claimed_key_package_range(box_id: BoxId, device: DeviceId) -> KeyRange {
        KeyRange::prefix(&with(
            table_prefix(box_id, Table::ClaimedKeyPackage),
            &[device.as_bytes()],
        ))
    }

    /// Expiry entries of one shard of a region that expire before `before_ms`.
    pub fn expiry_due(region: RegionId, shard: u8, before_ms: u64) -> KeyRange {
        let mut start = region_prefix(region, REGION_EXPIRY);
        start.push(shard);
        let mut end = start.clone();
        end.extend_from_slice(&before_ms.to_be_bytes());
        KeyRange::new(start, end)
    }

    /// The part markers of one blob.
    pub fn blob_parts_range(box_id: BoxId, blob: [u8; 16]) -> KeyRange {
        KeyRange::prefix(&with(table_prefix(box_id, Table::BlobPart), &[&blob]))
    }

    /// Blob expiry entries of one shard of a region that fall due before
    /// `before_ms`.
    pub fn blob_expiry_due(region: RegionId, shard: u8, before_ms: u64) -> KeyRange {
        let mut start = region_prefix(region, REGION_BLOB_EXPIRY);
        start.push(shard);
        let mut end = start.clone();
        end.extend_from_slice(&before_ms.to_be_bytes());
        KeyRange::new(start, end)
    }

    /// Ownership leases of the gateways of a region.
    pub fn gateway_lease_range(region: RegionId) -> KeyRange {
        KeyRange::prefix(&region_prefix(region, REGION_GATEWAY))
    }

    /// The maintenance leases of a region's background jobs.
    pub fn maintenance_lease_range(region: RegionId) -> KeyRange {
        KeyRange::prefix(&region_prefix(region, REGION_MAINTENANCE))
    }

    /// Every outbox entry of a region.
    pub fn outbox_range(region: RegionId) -> KeyRange {
        KeyRange::prefix(&region_prefix(region, REGION_OUTBOX))
    }

    /// The outbox entries of one box.
    pub fn box_outbox_range(box_id: BoxId) -> KeyRange {
        KeyRange::prefix(&with(
            region_prefix(box_id.home_region(), REGION_OUTBOX),
            &[box_id.as_bytes()],
        ))
    }

    /// Boxes of a region awaiting purge.
    pub fn purge_range(region: RegionId) -> KeyRange {
        KeyRange::prefix(&region_prefix(region, REGION_PURGE))
    }

    /// The lookup entries of every pepper version.
    pub fn lookup_range() -> KeyRange {
        KeyRange::prefix(&[GLOBAL, GLOBAL_LOOKUP])
    }

    /// The pending registrations of every pepper version.
    pub fn registration_range() -> KeyRange {
        KeyRange::prefix(&[GLOBAL, GLOBAL_REGISTRATION])
    }
}

/// The key range of all global data (the lookup table): replicated to every region,
/// led from the primary region.
pub fn global_range() -> KeyRange {
    KeyRange::prefix(&[GLOBAL])
}

/// The key range of everything homed in one region: its boxes, its expiry index and
/// its purge queue. Placement pins this range's leaders to the region.
pub fn region_range(region: RegionId) -> KeyRange {
    let mut prefix = vec![REGIONAL];
    prefix.extend_from_slice(&region.to_bytes());
    KeyRange::prefix(&prefix)
}

fn with(mut prefix: Vec<u8>, parts: &[&[u8]]) -> Vec<u8> {
    for part in parts {
        prefix.extend_from_slice(part);
    }
    prefix
}

/// A cursor over key bytes that fails cleanly on truncation.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            return Err(Error::MalformedKey("truncated key"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn box_any(&mut self) -> Result<BoxId> {
        BoxId::from_bytes(self.array()?)
    }

    fn box_in(&mut self, region: RegionId) -> Result<BoxId> {
        let b = self.box_any()?;
        if b.home_region() != region {
            return Err(Error::MalformedKey("box id outside its region prefix"));
        }
        Ok(b)
    }

    fn device(&mut self) -> Result<DeviceId> {
        DeviceId::from_bytes(self.array()?)
    }

    fn message(&mut self) -> Result<MessageId> {
        MessageId::from_bytes(self.array()?)
    }

    fn job(&mut self) -> Result<MaintenanceJob> {
        match self.u8()? {
            JOB_EXPIRY_SHARD => match self.u8()? {
                shard if shard < EXPIRY_SHARDS => Ok(MaintenanceJob::ExpiryShard(shard)),
                _ => Err(Error::MalformedKey("expiry shard out of range")),
            },
            JOB_PURGE => Ok(MaintenanceJob::Purge),
            _ => Err(Error::MalformedKey("unknown maintenance job")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_box() -> impl Strategy<Value = BoxId> {
        (any::<u16>(), any::<[u8; 16]>()).prop_map(|(r, raw)| BoxId::with_random(RegionId(r), raw))
    }

    fn any_device() -> impl Strategy<Value = DeviceId> {
        any::<[u8; 16]>().prop_map(|raw| DeviceId::from_bytes(raw).unwrap())
    }

    fn any_message() -> impl Strategy<Value = MessageId> {
        any::<[u8; 16]>().prop_map(|mut raw| {
            raw[6] = (raw[6] & 0x0f) | 0x70;
            raw[8] = (raw[8] & 0x3f) | 0x80;
            MessageId::from_bytes(raw).unwrap()
        })
    }

    fn any_job() -> impl Strategy<Value = MaintenanceJob> {
        prop_oneof![
            (0..EXPIRY_SHARDS).prop_map(MaintenanceJob::ExpiryShard),
            Just(MaintenanceJob::Purge),
        ]
    }

    fn any_key() -> impl Strategy<Value = Key> {
        prop_oneof![
            (any::<u32>(), any::<[u8; 32]>()).prop_map(|(pepper_version, digest)| Key::Lookup {
                pepper_version,
                digest
            }),
            any::<[u8; 32]>().prop_map(Key::CodeBudget),
            any::<[u8; 32]>().prop_map(Key::IdentifierLimit),
            (any::<u32>(), any::<[u8; 32]>(), any_device()).prop_map(
                |(pepper_version, digest, device)| Key::Registration {
                    pepper_version,
                    digest,
                    device,
                }
            ),
            any_box().prop_map(Key::Profile),
            (any_box(), any_device()).prop_map(|(b, d)| Key::Device(b, d)),
            (any_box(), any_device()).prop_map(|(b, d)| Key::Pointer(b, d)),
            (any_box(), any_device(), any::<[u8; 16]>())
                .prop_map(|(b, d, r)| Key::KeyPackage(b, d, r)),
            (any_box(), any_device()).prop_map(|(b, d)| Key::LastResortKeyPackage(b, d)),
            (any_box(), any_device(), any::<[u8; 16]>())
                .prop_map(|(b, d, r)| Key::ClaimedKeyPackage(b, d, r)),
            any_box().prop_map(Key::Next),
            any_box().prop_map(Key::Low),
            (any_box(), any::<u64>()).prop_map(|(b, s)| Key::Queue(b, s)),
            (any_box(), any_device(), any_message()).prop_map(|(b, d, m)| Key::Dedup(b, d, m)),
            (any_box(), any_box()).prop_map(|(b, o)| Key::Contact(b, o)),
            (any_box(), any_box()).prop_map(|(b, o)| Key::Block(b, o)),
            (any_box(), any::<u32>(), any::<[u8; 32]>()).prop_map(|(b, v, d)| Key::Ident(b, v, d)),
            (any_box(), any::<u32>(), any::<[u8; 32]>())
                .prop_map(|(b, v, d)| Key::PendingIdentifier(b, v, d)),
            (any_box(), any_device()).prop_map(|(b, d)| Key::Presence(b, d)),
            (any_box(), any::<[u8; 16]>()).prop_map(|(b, g)| Key::GroupEpoch(b, g)),
            (any_box(), any::<[u8; 16]>()).prop_map(|(b, id)| Key::Outbox(b, id)),
            (any::<u16>(), any::<[u8; 16]>())
                .prop_map(|(r, id)| Key::GatewayLease(RegionId(r), id)),
            (any::<u16>(), any_job()).prop_map(|(r, job)| Key::MaintenanceLease(RegionId(r), job)),
            (any_box(), any::<u64>(), any::<u64>()).prop_map(|(b, t, s)| Key::Expiry {
                shard: expiry_shard(b),
                expires_at_ms: t,
                box_id: b,
                entry: ExpiryEntry::Message(s)
            }),
            (any_box(), any::<u64>(), any_device(), any_message()).prop_map(|(b, t, d, m)| {
                Key::Expiry {
                    shard: expiry_shard(b),
                    expires_at_ms: t,
                    box_id: b,
                    entry: ExpiryEntry::Dedup(d, m),
                }
            }),
            (any_box(), any::<u64>(), any::<u64>()).prop_map(|(b, t, s)| Key::Expiry {
                shard: expiry_shard(b),
                expires_at_ms: t,
                box_id: b,
                entry: ExpiryEntry::Batch(s)
            }),
            any_box().prop_map(Key::Purge),
            (any_box(), any::<[u8; 16]>()).prop_map(|(b, x)| Key::Blob(b, x)),
            (any_box(), any::<[u8; 16]>(), any::<u32>())
                .prop_map(|(b, x, i)| Key::BlobPart(b, x, i)),
            any_box().prop_map(Key::BlobUsage),
            (any_box(), any_device()).prop_map(|(b, d)| Key::PushToken(b, d)),
            (any_box(), any_device()).prop_map(|(b, d)| Key::RetiredDevice(b, d)),
            (any_box(), any::<u64>(), any::<[u8; 16]>()).prop_map(|(b, t, x)| Key::BlobExpiry {
                shard: expiry_shard(b),
                expires_at_ms: t,
                box_id: b,
                blob: x,
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_key_round_trips(key in any_key()) {
            prop_assert_eq!(Key::decode(&key.encode()).unwrap(), key);
        }

        #[test]
        fn truncated_or_extended_keys_are_rejected(key in any_key(), extra in any::<u8>()) {
            let bytes = key.encode();
            prop_assert!(Key::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.clone();
            longer.push(extra);
            prop_assert!(Key::decode(&longer).is_err());
        }

        #[test]
        fn queue_byte_order_is_sequence_order(b in any_box(), x in any::<u64>(), y in any::<u64>()) {
            prop_assert_eq!(Key::Queue(b, x).encode().cmp(&Key::Queue(b, y).encode()), x.cmp(&y));
        }

        #[test]
        fn box_byte_order_is_box_order(a in any_box(), b in any_box()) {
            prop_assert_eq!(Key::Profile(a).encode().cmp(&Key::Profile(b).encode()), a.cmp(&b));
            prop_assert_eq!(box_prefix(a).cmp(&box_prefix(b)), a.cmp(&b));
        }

        #[test]
        fn region_byte_order_is_region_order(a in any::<u16>(), b in any::<u16>()) {
            let (ra, rb) = (region_range(RegionId(a)), region_range(RegionId(b)));
            prop_assert_eq!(ra.start.cmp(&rb.start), a.cmp(&b));
            if a < b {
                // Ranges of different regions never overlap.
                prop_assert!(ra.end.as_ref().unwrap() <= &rb.start);
            }
        }

        #[test]
        fn every_box_key_lies_in_its_region_and_box_range(key in any_key()) {
            let bytes = key.encode();
            if let Some(owner) = key.owner_box() {
                prop_assert!(region_range(owner.home_region()).contains(&bytes));
            }
            let home = match key {
                Key::Lookup { .. }
                | Key::Registration { .. }
                | Key::CodeBudget(_)
                | Key::IdentifierLimit(_) => {
                    prop_assert!(key.owner_box().is_none());
                    prop_assert!(global_range().contains(&bytes));
                    return Ok(());
                }
                Key::Profile(b) | Key::Device(b, _) | Key::Pointer(b, _) | Key::KeyPackage(b, _, _)
                | Key::LastResortKeyPackage(b, _) | Key::Next(b) | Key::Low(b) | Key::Queue(b, _)
                | Key::Dedup(b, _, _) | Key::Contact(b, _) | Key::Block(b, _) | Key::Ident(b, _, _)
                | Key::Presence(b, _) | Key::GroupEpoch(b, _) | Key::ClaimedKeyPackage(b, _, _)
                | Key::PendingIdentifier(b, _, _)
                | Key::Blob(b, _) | Key::BlobPart(b, _, _) | Key::BlobUsage(b)
                | Key::PushToken(b, _) | Key::RetiredDevice(b, _) => {
                    prop_assert!(Key::box_range(b).contains(&bytes));
                    b.home_region()
                }
                Key::Expiry { box_id, .. } | Key::Purge(box_id) => box_id.home_region(),
                Key::BlobExpiry { box_id, .. } => {
                    prop_assert!(!Key::box_range(box_id).contains(&bytes));
                    box_id.home_region()
                }
                Key::Outbox(b, _) => {
                    prop_assert!(Key::outbox_range(b.home_region()).contains(&bytes));
                    prop_assert!(Key::box_outbox_range(b).contains(&bytes));
                    b.home_region()
                }
                Key::GatewayLease(region, _) => {
                    prop_assert!(Key::gateway_lease_range(region).contains(&bytes));
                    region
                }
                Key::MaintenanceLease(region, _) => {
                    prop_assert!(Key::maintenance_lease_range(region).contains(&bytes));
                    region
                }
            };
            prop_assert!(region_range(home).contains(&bytes));
            prop_assert!(!global_range().contains(&bytes));
        }

        #[test]
        fn expiry_order_is_time_order_within_a_shard(b in any_box(), c in any_box(), t in any::<u64>(), u in any::<u64>()) {
            let k = |b: BoxId, t| Key::Expiry { shard: 3, expires_at_ms: t, box_id: b, entry: ExpiryEntry::Message(0) };
            if b.home_region() == c.home_region() && t != u {
                prop_assert_eq!(k(b, t).encode().cmp(&k(c, u).encode()), t.cmp(&u));
            }
        }
    }

    #[test]
    fn expiry_due_range_selects_entries_before_the_deadline() {
        let b = BoxId::new(RegionId(7));
        let shard = expiry_shard(b);
        let entry = |t| {
            Key::Expiry {
                shard,
                expires_at_ms: t,
                box_id: b,
                entry: ExpiryEntry::Message(1),
            }
            .encode()
        };
        let due = Key::expiry_due(RegionId(7), shard, 1_000);
        assert!(due.contains(&entry(0)));
        assert!(due.contains(&entry(999)));
        assert!(!due.contains(&entry(1_000)));
        assert!(region_range(RegionId(7)).contains(&due.start));
    }

    #[test]
    fn maintenance_leases_are_one_per_job_in_job_order_inside_their_region() {
        let region = RegionId(5);
        let jobs: Vec<MaintenanceJob> = MaintenanceJob::all().collect();
        assert_eq!(jobs.len(), MaintenanceJob::COUNT);
        assert_eq!(jobs[0], MaintenanceJob::ExpiryShard(0));
        assert_eq!(jobs[16], MaintenanceJob::Purge);
        let keys: Vec<Vec<u8>> = jobs
            .iter()
            .map(|j| Key::MaintenanceLease(region, *j).encode())
            .collect();
        // Byte order is job order: shards in numeric order, then the purge.
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        assert_eq!(
            keys[3],
            vec![0x02, 0x00, 0x05, 0x06, 0x01, 0x03],
            "0x02 <region> 0x06 0x01 <shard>"
        );
        assert_eq!(keys[16], vec![0x02, 0x00, 0x05, 0x06, 0x02]);
        let range = Key::maintenance_lease_range(region);
        for key in &keys {
            assert!(range.contains(key));
            assert!(region_range(region).contains(key));
            assert!(!Key::gateway_lease_range(region).contains(key));
            assert!(!Key::maintenance_lease_range(RegionId(6)).contains(key));
        }
        // A shard beyond the index and an unknown job tag are rejected.
        assert_eq!(
            Key::decode(&[0x02, 0x00, 0x05, 0x06, 0x01, EXPIRY_SHARDS]),
            Err(Error::MalformedKey("expiry shard out of range"))
        );
        assert_eq!(
            Key::decode(&[0x02, 0x00, 0x05, 0x06, 0x03]),
            Err(Error::MalformedKey("unknown maintenance job"))
        );
    }

    #[test]
    fn a_batch_expiry_entry_has_its_own_tag_after_the_older_kinds() {
        let b = BoxId::with_random(RegionId(5), [7; 16]);
        let key = Key::Expiry {
            shard: expiry_shard(b),
            expires_at_ms: 1_000,
            box_id: b,
            entry: ExpiryEntry::Batch(9),
        };
        let bytes = key.encode();
        let mut expected = vec![0x02, 0x00, 0x05, 0x02, expiry_shard(b)];
        expected.extend_from_slice(&1_000u64.to_be_bytes());
        expected.extend_from_slice(b.as_bytes());
        expected.push(0x03);
        expected.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(Key::decode(&bytes), Ok(key));
        assert!(Key::expiry_due(RegionId(5), expiry_shard(b), 1_001).contains(&bytes));
    }

    #[test]
    fn push_tokens_use_tag_0x14_inside_the_box_range() {
        let b = BoxId::new(RegionId(3));
        let d = DeviceId::new();
        let key = Key::PushToken(b, d);
        assert_eq!(key.encode()[box_prefix(b).len()], 0x14);
        assert!(Key::box_range(b).contains(&key.encode()));
        assert!(Key::table_range(b, Table::PushToken).contains(&key.encode()));
        assert_eq!(Key::decode(&key.encode()).unwrap(), key);
    }

    #[test]
    fn blob_keys_use_tags_0x11_to_0x13_and_a_region_wide_expiry_index() {
        let b = BoxId::new(RegionId(3));
        let x = [9u8; 16];
        let prefix = box_prefix(b);
        assert_eq!(Key::Blob(b, x).encode()[prefix.len()], 0x11);
        assert_eq!(Key::BlobPart(b, x, 1).encode()[prefix.len()], 0x12);
        assert_eq!(Key::BlobUsage(b).encode()[prefix.len()], 0x13);
        for key in [Key::Blob(b, x), Key::BlobPart(b, x, 7), Key::BlobUsage(b)] {
            assert!(Key::box_range(b).contains(&key.encode()));
        }
        let parts = Key::blob_parts_range(b, x);
        assert!(parts.contains(&Key::BlobPart(b, x, 0).encode()));
        assert!(parts.contains(&Key::BlobPart(b, x, u32::MAX).encode()));
        assert!(!parts.contains(&Key::BlobPart(b, [10; 16], 0).encode()));
        // Part markers sort by index.
        assert!(Key::BlobPart(b, x, 2).encode() < Key::BlobPart(b, x, 256).encode());
        let entry = |t| Key::BlobExpiry {
            shard: expiry_shard(b),
            expires_at_ms: t,
            box_id: b,
            blob: x,
        };
        let due = Key::blob_expiry_due(RegionId(3), expiry_shard(b), 1000);
        assert!(due.contains(&entry(999).encode()));
        assert!(!due.contains(&entry(1000).encode()));
        assert!(region_range(RegionId(3)).contains(&entry(5).encode()));
        assert!(!Key::box_range(b).contains(&entry(5).encode()));
        assert_eq!(entry(5).owner_box(), Some(b));
        // Tag 0x10 belongs to another table and is not decoded as a blob.
        let mut other = prefix.clone();
        other.push(0x10);
        assert!(!matches!(Key::decode(&other), Ok(Key::Blob(..))));
    }

    #[test]
    fn queue_ranges_are_half_open() {
        let b = BoxId::new(RegionId(1));
        let r = Key::queue_range(b, 5, 8);
        assert!(!r.contains(&Key::Queue(b, 4).encode()));
        assert!(r.contains(&Key::Queue(b, 5).encode()));
        assert!(r.contains(&Key::Queue(b, 7).encode()));
        assert!(!r.contains(&Key::Queue(b, 8).encode()));
        let open = Key::queue_from(b, 5);
        assert!(open.contains(&Key::Queue(b, u64::MAX).encode()));
        assert!(!open.contains(&Key::Dedup(b, DeviceId::new(), MessageId::new()).encode()));
    }

    #[test]
    fn mismatched_region_prefix_is_rejected() {
        let b = BoxId::new(RegionId(1));
        let mut bytes = Key::Profile(b).encode();
        bytes[2] = 9;
        assert_eq!(
            Key::decode(&bytes),
            Err(Error::MalformedKey("box id outside its region prefix"))
        );
        assert!(Key::decode(&[]).is_err());
        assert!(Key::decode(&[0x77]).is_err());
    }
}
