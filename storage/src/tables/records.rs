//! Stored record types and their versioned encoding.
//!
//! A stored value is `[RECORD_FORMAT]` followed by the protobuf encoding of one
//! message from `proto/records.proto`. The leading byte keeps values non-empty
//! (some backends reject empty values) and leaves room to change the encoding
//! itself; protobuf's field rules let each message gain fields compatibly.

use crate::error::{Error, Result};
use prost::Message;
use rossby_keyspace::{DeviceId, MessageId};

#[allow(
    missing_docs,
    clippy::doc_markdown,
    clippy::derive_partial_eq_without_eq
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/rossby.storage.v1.rs"));
}

pub use generated::GroupRecord;
pub use generated::IdentifierLimitRecord;
pub use generated::PresenceRecord;
pub use generated::{
    AcceptFrom, DedupRecord, Device, ExpiryBatch, IdentRecord, KeyPackageRecord, LookupRecord,
    LowWater, Marker, PendingIdentifier, PendingRegistration, Pointer, Profile, QueueHead,
    Relation, StoredEnvelope,
};
pub use generated::{BlobRecord, BlobState, BlobUsage};
pub use generated::{CodeBudgetRecord, PushProvider, PushTokenRecord, RetiredDevice};
pub use generated::{OutboxEntry, OutboxRecipient};

/// The device-list version of an envelope that is not sealed per device (a
/// group's MLS message, readable by every member device): it is accepted against
/// whatever device list the box has, so a group fan-out needs no read of the
/// member boxes' lists (in other regions) and never meets a stale list. Clients
/// cannot send it (the gateway refuses it in a Send).
pub const ANY_DEVICE_LIST: u64 = u64::MAX;

impl QueueHead {
    /// The highest sequence number assigned in the box (0 before the first).
    /// Sequence numbers start at 1, so a record whose next one is 0 is corrupt:
    /// reported, never wrapped around.
    pub fn last_seq(&self) -> crate::Result<u64> {
        self.next_seq
            .checked_sub(1)
            .ok_or_else(|| crate::Error::corrupt(Self::WHAT, "next sequence number 0"))
    }

    /// Takes the next sequence number (corrupt records and an exhausted counter
    /// are errors, not wrap-arounds).
    pub fn assign(&mut self) -> crate::Result<u64> {
        let seq = self.next_assignable()?;
        self.next_seq = seq + 1;
        Ok(seq)
    }

    /// The sequence number [`QueueHead::assign`] would take, checked the same
    /// way, without taking it.
    pub fn next_assignable(&self) -> crate::Result<u64> {
        self.last_seq()?;
        self.next_seq
            .checked_add(1)
            .ok_or_else(|| crate::Error::corrupt(Self::WHAT, "sequence numbers exhausted"))?;
        Ok(self.next_seq)
    }

    /// Records that `device` is, or no longer is, an authorized device of the
    /// list (call with every change, before the version is bumped).
    pub fn set_authorized(&mut self, device: DeviceId, authorized: bool) {
        let id = device.as_bytes().to_vec();
        match (self.devices.binary_search(&id), authorized) {
            (Err(at), true) => self.devices.insert(at, id),
            (Ok(at), false) => {
                self.devices.remove(at);
            }
            _ => {}
        }
    }

    /// The authorized devices of the current list, when the head keeps them.
    pub fn authorized_devices(&self) -> Option<&[Vec<u8>]> {
        self.devices_known.then_some(self.devices.as_slice())
    }

    /// Moves the device-list version on and returns it. The last value is never
    /// reached: it is [`ANY_DEVICE_LIST`].
    pub fn bump_device_list(&mut self) -> crate::Result<u64> {
        self.device_list_version = self
            .device_list_version
            .checked_add(1)
            .filter(|v| *v != ANY_DEVICE_LIST)
            .ok_or_else(|| crate::Error::corrupt(Self::WHAT, "device-list versions exhausted"))?;
        Ok(self.device_list_version)
    }
}

/// Bytes of one dedup reference in [`ExpiryBatch::dedups`].
const DEDUP_REF_BYTES: usize = 32;

impl ExpiryBatch {
    /// Adds the dedup record of (`device`, `message`) to the batch.
    pub fn push_dedup(&mut self, device: DeviceId, message: MessageId) {
        self.dedups.extend_from_slice(device.as_bytes());
        self.dedups.extend_from_slice(message.as_bytes());
    }

    /// The batch's dedup records, as (sender device, message id).
    pub fn dedup_refs(&self) -> crate::Result<Vec<(DeviceId, MessageId)>> {
        let bad = |detail: &str| crate::Error::corrupt(Self::WHAT, detail);
        if !self.dedups.len().is_multiple_of(DEDUP_REF_BYTES) {
            return Err(bad("dedup list is not a whole number of references"));
        }
        self.dedups
            .chunks_exact(DEDUP_REF_BYTES)
            .map(|chunk| {
                let (device, message) = chunk.split_at(DEDUP_REF_BYTES / 2);
                Ok((
                    DeviceId::try_from_slice(device)
                        .map_err(|e| crate::Error::corrupt(Self::WHAT, e))?,
                    MessageId::try_from_slice(message)
                        .map_err(|e| crate::Error::corrupt(Self::WHAT, e))?,
                ))
            })
            .collect()
    }
}

/// The record-format byte written before every stored message.
pub const RECORD_FORMAT: u8 = 1;

/// A value that can be written to a table: a [`Record`], or a borrowed view
/// that encodes to the same bytes as one ([`EnvelopeRef`]).
pub trait Stored {
    /// The stored bytes.
    fn stored_bytes(&self) -> Vec<u8>;
}

impl<R: Record> Stored for R {
    fn stored_bytes(&self) -> Vec<u8> {
        self.to_stored()
    }
}

/// A [`StoredEnvelope`] over borrowed parts. Building the message would copy the
/// payload (up to the payload limit) only to copy it again into the encoding;
/// this writes the same bytes straight from the request's buffers.
#[derive(Clone, Copy, Debug)]
pub struct EnvelopeRef<'a> {
    /// [`StoredEnvelope::sender_box`].
    pub sender_box: &'a [u8],
    /// [`StoredEnvelope::sender_device`].
    pub sender_device: &'a [u8],
    /// [`StoredEnvelope::message_id`].
    pub message_id: &'a [u8],
    /// [`StoredEnvelope::enqueued_at_ms`].
    pub enqueued_at_ms: u64,
    /// [`StoredEnvelope::expires_at_ms`].
    pub expires_at_ms: u64,
    /// [`StoredEnvelope::device_list_version`].
    pub device_list_version: u64,
    /// [`StoredEnvelope::payload`].
    pub payload: &'a [u8],
    /// [`StoredEnvelope::sender_identity_key`].
    pub sender_identity_key: &'a [u8],
}

impl EnvelopeRef<'_> {
    /// The length of [`Stored::stored_bytes`], without encoding.
    pub fn stored_len(&self) -> usize {
        1 + self.encoded_len()
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{encoded_len_varint, key_len};
        let slices = [
            (1, self.sender_box),
            (2, self.sender_device),
            (3, self.message_id),
            (7, self.payload),
            (8, self.sender_identity_key),
        ];
        let numbers = [
            (4, self.enqueued_at_ms),
            (5, self.expires_at_ms),
            (6, self.device_list_version),
        ];
        let slice_len = |(tag, bytes): &(u32, &[u8])| {
            if bytes.is_empty() {
                0
            } else {
                key_len(*tag) + encoded_len_varint(bytes.len() as u64) + bytes.len()
            }
        };
        let number_len = |(tag, value): &(u32, u64)| {
            if *value == 0 {
                0
            } else {
                key_len(*tag) + encoded_len_varint(*value)
            }
        };
        slices.iter().map(slice_len).sum::<usize>() + numbers.iter().map(number_len).sum::<usize>()
    }
}

impl Stored for EnvelopeRef<'_> {
    fn stored_bytes(&self) -> Vec<u8> {
        use prost::encoding::{self, WireType};
        // Field numbers of `StoredEnvelope` in records.proto. proto3 leaves out
        // fields at their default, and so does this, so the bytes are prost's.
        let mut out = Vec::with_capacity(self.stored_len());
        out.push(RECORD_FORMAT);
        let put_slice = |out: &mut Vec<u8>, tag: u32, bytes: &[u8]| {
            if !bytes.is_empty() {
                encoding::encode_key(tag, WireType::LengthDelimited, out);
                encoding::encode_varint(bytes.len() as u64, out);
                out.extend_from_slice(bytes);
            }
        };
        let put_number = |out: &mut Vec<u8>, tag: u32, value: u64| {
            if value != 0 {
                encoding::uint64::encode(tag, &value, out);
            }
        };
        // prost writes fields in field-number order.
        put_slice(&mut out, 1, self.sender_box);
        put_slice(&mut out, 2, self.sender_device);
        put_slice(&mut out, 3, self.message_id);
        put_number(&mut out, 4, self.enqueued_at_ms);
        put_number(&mut out, 5, self.expires_at_ms);
        put_number(&mut out, 6, self.device_list_version);
        put_slice(&mut out, 7, self.payload);
        put_slice(&mut out, 8, self.sender_identity_key);
        out
    }
}

/// A message stored in one of the tables.
pub trait Record: Message + Default + Sized {
    /// Table name for error messages.
    const WHAT: &'static str;

    /// The stored bytes.
    fn to_stored(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.encoded_len());
        out.push(RECORD_FORMAT);
        // Encoding into a Vec only fails when the buffer is too small, and a Vec grows.
        self.encode(&mut out).ok();
        out
    }

    /// Decodes stored bytes, rejecting unknown formats and malformed protobuf.
    fn from_stored(bytes: &[u8]) -> Result<Self> {
        match bytes.split_first() {
            Some((&RECORD_FORMAT, body)) => {
                Self::decode(body).map_err(|e| Error::corrupt(Self::WHAT, e))
            }
            Some((other, _)) => Err(Error::corrupt(
                Self::WHAT,
                format!("unknown record format {other}"),
            )),
            None => Err(Error::corrupt(Self::WHAT, "empty value")),
        }
    }
}

macro_rules! record {
    ($($ty:ty => $what:literal),* $(,)?) => {
        $(impl Record for $ty {
            const WHAT: &'static str = $what;
        })*
    };
}

record! {
    Profile => "profile",
    Device => "device",
    Pointer => "pointer",
    QueueHead => "queue head",
    LowWater => "low-water mark",
    StoredEnvelope => "envelope",
    DedupRecord => "dedup",
    ExpiryBatch => "expiry batch",
    KeyPackageRecord => "key package",
    Relation => "relation",
    LookupRecord => "lookup",
    Marker => "marker",
    PendingRegistration => "pending registration",
    IdentRecord => "identifier",
    PendingIdentifier => "pending identifier",
    GroupRecord => "group",
    OutboxEntry => "outbox entry",
    PresenceRecord => "presence lease",
    BlobRecord => "blob",
    BlobUsage => "blob usage",
    PushTokenRecord => "push token",
    RetiredDevice => "retired device",
    CodeBudgetRecord => "code budget",
    IdentifierLimitRecord => "identifier limit",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_are_never_empty() {
        let p = Pointer::default();
        let stored = p.to_stored();
        assert_eq!(stored, vec![RECORD_FORMAT]);
        assert_eq!(Pointer::from_stored(&stored).unwrap(), p);
        let d = Device {
            identity_key: vec![1; 32],
            authorized: true,
            label: "phone".into(),
            ..Device::default()
        };
        assert_eq!(Device::from_stored(&d.to_stored()).unwrap(), d);
    }

    #[test]
    fn a_profile_written_before_fields_were_added_still_decodes() {
        // A profile as the first schema wrote it: only created_at_ms (field 1,
        // varint 1_700_000_000_000) and accept_from (field 3, CONTACTS).
        let old: &[u8] = &[1, 0x08, 0x80, 0xd0, 0x95, 0xff, 0xbc, 0x31, 0x18, 0x01];
        let p = Profile::from_stored(old).unwrap();
        assert_eq!(p.created_at_ms, 1_700_000_000_000);
        assert_eq!(p.accept_from(), AcceptFrom::Contacts);
        // Fields added later take defaults that preserve the old behaviour.
        assert!(!p.hidden);
        assert!(!p.deleted);
        // No registration lock: recovery needs no PIN.
        assert!(p.registration_lock.is_empty());
        assert_eq!(p.registration_lock_failures, 0);
    }

    #[test]
    fn a_profile_with_the_removed_encrypted_profile_field_still_decodes() {
        // Version 1, created_at_ms = 5 (field 1), the removed field 4 (bytes
        // "ab"), then accept_from = CONTACTS (field 3): field 4 is skipped.
        let old: &[u8] = &[1, 0x08, 0x05, 0x22, 0x02, b'a', b'b', 0x18, 0x01];
        let p = Profile::from_stored(old).unwrap();
        assert_eq!(p.created_at_ms, 5);
        assert_eq!(p.accept_from(), AcceptFrom::Contacts);
        // Written again, it no longer carries the removed field.
        assert!(!p.to_stored().windows(2).any(|w| w == b"ab"));
    }

    #[test]
    fn an_identifier_entry_written_as_a_marker_decodes_as_discoverable_and_unsealed() {
        let old = Marker {
            at_ms: 1_700_000_000_000,
        }
        .to_stored();
        let entry = IdentRecord::from_stored(&old).unwrap();
        assert_eq!(entry.at_ms, 1_700_000_000_000);
        assert!(entry.sealed_identifier.is_empty());
        assert!(!entry.undiscoverable);
    }

    #[test]
    fn a_record_from_a_newer_schema_with_unknown_fields_decodes() {
        // Pointer with acked = 5 plus an unknown field 15 (varint 1).
        let newer: &[u8] = &[1, 0x08, 0x05, 0x78, 0x01];
        assert_eq!(Pointer::from_stored(newer).unwrap().acked, 5);
    }

    #[test]
    fn a_group_record_from_before_the_outbox_decodes_with_no_entries() {
        // epoch = 3 (field 1) and one member box (field 2, 16 bytes of 5).
        let mut old = vec![1, 0x08, 0x03, 0x12, 0x10];
        old.extend_from_slice(&[5; 16]);
        let g = GroupRecord::from_stored(&old).unwrap();
        assert_eq!(g.epoch, 3);
        assert_eq!(g.members, vec![vec![5; 16]]);
        // No outbox entry was ever recorded for it: the next one is number 1.
        assert_eq!(g.outbox_seq, 0);
    }

    #[test]
    fn a_borrowed_envelope_encodes_to_the_records_bytes() {
        let full = StoredEnvelope {
            sender_box: vec![1; 16],
            sender_device: vec![2; 16],
            message_id: vec![3; 16],
            enqueued_at_ms: 1_700_000_000_000,
            expires_at_ms: 1_702_592_000_000,
            device_list_version: u64::MAX,
            payload: vec![9; 300],
            sender_identity_key: vec![8; 32],
        };
        // Defaults are left out by prost; the borrowed form must leave them out too.
        let sparse = StoredEnvelope {
            payload: vec![4; 5],
            device_list_version: 0,
            ..StoredEnvelope::default()
        };
        for record in [full, sparse, StoredEnvelope::default()] {
            let borrowed = EnvelopeRef {
                sender_box: &record.sender_box,
                sender_device: &record.sender_device,
                message_id: &record.message_id,
                enqueued_at_ms: record.enqueued_at_ms,
                expires_at_ms: record.expires_at_ms,
                device_list_version: record.device_list_version,
                payload: &record.payload,
                sender_identity_key: &record.sender_identity_key,
            };
            assert_eq!(borrowed.stored_bytes(), record.to_stored(), "{record:?}");
        }
    }

    #[test]
    fn an_expiry_batch_lists_its_dedup_records() {
        let refs = [
            (DeviceId::new(), MessageId::new()),
            (DeviceId::new(), MessageId::new()),
        ];
        let mut batch = ExpiryBatch {
            messages_expire_at_ms: 2,
            dedup_expire_at_ms: 1,
            ..ExpiryBatch::default()
        };
        for (device, message) in refs {
            batch.push_dedup(device, message);
        }
        let stored = ExpiryBatch::from_stored(&batch.to_stored()).unwrap();
        assert_eq!(stored.dedup_refs().unwrap(), refs.to_vec());
        let torn = ExpiryBatch {
            dedups: vec![0; 31],
            ..ExpiryBatch::default()
        };
        assert!(matches!(torn.dedup_refs(), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn garbage_is_reported_as_corrupt() {
        assert!(matches!(
            Pointer::from_stored(&[]),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            Pointer::from_stored(&[9, 1]),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            Pointer::from_stored(&[1, 0x08]),
            Err(Error::Corrupt { .. })
        ));
    }
}
