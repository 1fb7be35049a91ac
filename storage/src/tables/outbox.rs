//! The outbox: fan-out recorded by a transaction in one region and delivered into
//! boxes of any region afterwards.
//!
//! A group Commit or leave changes the group's epoch record, which lives in the
//! creator box's region, and has to reach every member box, which may live
//! anywhere. Enqueuing into every member box inside the same transaction would
//! make it a transaction across every member's home region. Instead the
//! transaction that changes the group record also records an [`Entry`] under
//! `Key::Outbox(creator, entry id)`: in the creator's region, outside its box
//! range, so one scan of `Key::outbox_range(region)` finds every entry a region
//! still has to deliver ([`pending`]) and `Key::box_outbox_range(creator)` those
//! of one creator's groups ([`of_group`]).
//!
//! A deliverer (the gateway) enqueues the entry's envelope into each recipient
//! box with [`super::queue::enqueue`], one box at a time and each in that box's
//! own transaction, with the entry's sender device and message id: the queue's
//! dedup record makes a second delivery (after a crash, or by two deliverers at
//! once) answer with the first one's sequence number instead of enqueuing again.
//! Once boxes have their envelope, [`finish`] removes them from the entry, and
//! the entry itself once none is left.
//!
//! # Order
//! A group numbers its entries (`seq`, from the group record, which every entry's
//! transaction writes). A box must get a group's entries in that order, so a
//! deliverer takes [`of_group`]'s list in order and does not hand a box a later
//! entry while an earlier one is still waiting for that box. An entry is removed
//! only after its envelopes are in the boxes, so a deliverer that reads the group
//! record and the group's entries in one snapshot sees every entry of an epoch up
//! to the record's that some box is still missing.
//!
//! # Correct under snapshot isolation
//! Recording an entry happens in the transaction that writes the group record.
//! [`finish`] and [`remove`] write the entry's key, so two deliverers finishing
//! the same entry conflict and the retried one reads what the other left; they
//! never write the group record, so delivery never conflicts with Commits.

use super::Record;
use super::queue::{NewEnvelope, Sender};
use super::records::{OutboxEntry, OutboxRecipient};
use super::tx::{BoxHandle, Tx};
use crate::error::{Error, Result};
use crate::kv::{KeyRange, ScanOrder};
use rossby_keyspace::{BoxId, DeviceId, Key, MessageId, RegionId};
use sha2::{Digest, Sha256};

/// A group's identity: the box that created it and its id within that box.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// The creating box (the record lives in its key range).
    pub creator: BoxId,
    /// The group's id (16 bytes, chosen by the creator).
    pub group_id: [u8; 16],
}

/// Entries read per scan while listing one creator's entries.
const SCAN_PAGE: usize = 64;

/// One recipient box of an [`Entry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The box.
    pub box_id: BoxId,
    /// Index into [`Entry::payloads`] of the envelope this box gets.
    pub payload: usize,
}

/// A recorded fan-out, still to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The group it belongs to (its creator's region holds the entry).
    pub group: GroupKey,
    /// The entry's id within the creator's outbox ([`entry_id`]).
    pub id: [u8; 16],
    /// Position among the group's entries: boxes receive them in this order.
    pub seq: u64,
    /// The epoch the fan-out belongs to: the one a Commit produced, or the
    /// unchanged epoch of a leave.
    pub epoch: u64,
    /// The sending box.
    pub sender_box: BoxId,
    /// The sending device (with `message_id`, the queue's dedup key).
    pub sender_device: DeviceId,
    /// The sending device's identity key, stored with each envelope
    /// ([`Sender::Device`]).
    pub sender_identity_key: Option<[u8; super::queue::IDENTITY_KEY_LEN]>,
    /// The message id of the Commit or leave.
    pub message_id: MessageId,
    /// The distinct envelopes, each stored once.
    pub payloads: Vec<Vec<u8>>,
    /// The boxes still waiting for their envelope.
    pub recipients: Vec<Recipient>,
    /// When it was recorded (milliseconds since the Unix epoch).
    pub created_at_ms: u64,
}

impl Entry {
    /// The envelope for `recipient`, to enqueue against the box's device-list
    /// version `device_list_version` (group envelopes are not sealed per device,
    /// so the current version is always the right one).
    pub fn envelope_for(&self, recipient: &Recipient, device_list_version: u64) -> NewEnvelope {
        NewEnvelope {
            sender: Sender::Device {
                box_id: self.sender_box,
                device_id: self.sender_device,
                identity_key: self.sender_identity_key,
            },
            message_id: self.message_id,
            device_list_version,
            // `from_stored` checked every index.
            payload: self
                .payloads
                .get(recipient.payload)
                .cloned()
                .unwrap_or_default(),
            wrapped_for: None,
        }
    }

    /// The key the entry is stored under.
    pub fn key(&self) -> Key {
        Key::Outbox(self.group.creator, self.id)
    }

    fn to_record(&self) -> OutboxEntry {
        OutboxEntry {
            group_id: self.group.group_id.to_vec(),
            seq: self.seq,
            epoch: self.epoch,
            sender_box: self.sender_box.as_bytes().to_vec(),
            sender_device: self.sender_device.as_bytes().to_vec(),
            sender_identity_key: self
                .sender_identity_key
                .map(|k| k.to_vec())
                .unwrap_or_default(),
            message_id: self.message_id.as_bytes().to_vec(),
            payloads: self.payloads.clone(),
            recipients: self
                .recipients
                .iter()
                .map(|r| OutboxRecipient {
                    box_id: r.box_id.as_bytes().to_vec(),
                    // Entries hold at most two payloads (see `groups`).
                    payload: u32::try_from(r.payload).unwrap_or(u32::MAX),
                })
                .collect(),
            created_at_ms: self.created_at_ms,
        }
    }

    fn from_record(creator: BoxId, id: [u8; 16], r: OutboxEntry) -> Result<Entry> {
        let bad = |detail: &str| Error::corrupt(OutboxEntry::WHAT, detail);
        let group_id = <[u8; 16]>::try_from(r.group_id.as_slice())
            .map_err(|_| bad("group id is not 16 bytes"))?;
        let recipients = r
            .recipients
            .iter()
            .map(|rec| {
                let box_id = BoxId::try_from_slice(&rec.box_id)
                    .map_err(|e| Error::corrupt(OutboxEntry::WHAT, e))?;
                let payload = usize::try_from(rec.payload)
                    .ok()
                    .filter(|i| *i < r.payloads.len())
                    .ok_or_else(|| bad("recipient names a missing payload"))?;
                Ok(Recipient { box_id, payload })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Entry {
            group: GroupKey { creator, group_id },
            id,
            seq: r.seq,
            epoch: r.epoch,
            sender_box: BoxId::try_from_slice(&r.sender_box)
                .map_err(|e| Error::corrupt(OutboxEntry::WHAT, e))?,
            sender_device: DeviceId::try_from_slice(&r.sender_device)
                .map_err(|e| Error::corrupt(OutboxEntry::WHAT, e))?,
            sender_identity_key: match r.sender_identity_key.len() {
                0 => None,
                _ => Some(
                    <[u8; super::queue::IDENTITY_KEY_LEN]>::try_from(
                        r.sender_identity_key.as_slice(),
                    )
                    .map_err(|_| bad("sender identity key is not 32 bytes"))?,
                ),
            },
            message_id: MessageId::try_from_slice(&r.message_id)
                .map_err(|e| Error::corrupt(OutboxEntry::WHAT, e))?,
            payloads: r.payloads,
            recipients,
            created_at_ms: r.created_at_ms,
        })
    }
}

/// The id of a group's entry number `seq`: a hash of both, so entries of one
/// creator's groups never share a key.
pub fn entry_id(group: GroupKey, seq: u64) -> [u8; 16] {
    let mut hasher = Sha256::new();
    hasher.update(b"rossby/outbox/group/v1");
    hasher.update(group.group_id);
    hasher.update(seq.to_be_bytes());
    let digest = hasher.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// Writes `entry` through the creator's handle (in the caller's transaction,
/// which must also write the group record the entry's `seq` came from).
pub async fn record(txn: &mut Tx<'_>, creator: &BoxHandle, entry: &Entry) -> Result<()> {
    txn.put(creator, &entry.key(), &entry.to_record()).await
}

fn decode_pair(key: &[u8], value: &[u8]) -> Result<Entry> {
    match Key::decode(key).map_err(|e| Error::corrupt("key", e))? {
        Key::Outbox(creator, id) => {
            Entry::from_record(creator, id, OutboxEntry::from_stored(value)?)
        }
        _ => Err(Error::corrupt(
            OutboxEntry::WHAT,
            "unexpected key in the outbox range",
        )),
    }
}

/// Up to `limit` entries of `region`, in key order, starting after the entry
/// keyed `after` (a creator box and entry id) when given: a sweep pages through
/// the region with the last entry of each page.
pub async fn pending(
    txn: &mut Tx<'_>,
    region: RegionId,
    after: Option<(BoxId, [u8; 16])>,
    limit: usize,
) -> Result<Vec<Entry>> {
    let mut range = Key::outbox_range(region);
    if let Some((creator, id)) = after {
        // The smallest key after that entry's.
        let mut start = Key::Outbox(creator, id).encode();
        start.push(0);
        range.start = start.max(range.start);
    }
    let pairs = txn.scan(&range, limit.max(1), ScanOrder::Forward).await?;
    pairs.iter().map(|(k, v)| decode_pair(k, v)).collect()
}

/// Every entry of `group`, in the order its boxes must receive them.
pub async fn of_group(txn: &mut Tx<'_>, group: GroupKey) -> Result<Vec<Entry>> {
    let full = Key::box_outbox_range(group.creator);
    let mut range: KeyRange = full.clone();
    let mut entries = Vec::new();
    // All of the creator's entries, page by page within this one snapshot: a
    // later entry of the group must never be seen without the earlier ones.
    loop {
        let pairs = txn.scan(&range, SCAN_PAGE, ScanOrder::Forward).await?;
        let short = pairs.len() < SCAN_PAGE;
        for (k, v) in &pairs {
            let entry = decode_pair(k, v)?;
            if entry.group == group {
                entries.push(entry);
            }
        }
        match pairs.last() {
            Some((last, _)) if !short => {
                let mut start = last.clone();
                start.push(0);
                range = KeyRange {
                    start,
                    end: full.end.clone(),
                };
            }
            _ => break,
        }
    }
    entries.sort_by_key(|e| e.seq);
    Ok(entries)
}

/// Removes `delivered` boxes from an entry of `creator`'s outbox, and the entry
/// itself when no recipient is left. Returns true when the entry is gone (also
/// when it was gone already: another deliverer finished it, or the creator's
/// account was purged).
pub async fn finish(
    txn: &mut Tx<'_>,
    creator: BoxId,
    id: [u8; 16],
    delivered: &[BoxId],
) -> Result<bool> {
    let key = Key::Outbox(creator, id);
    let Some((handle, value)) = txn.lock_outbox_entry(creator, id).await? else {
        return Ok(true);
    };
    let mut record = OutboxEntry::from_stored(&value)?;
    let before = record.recipients.len();
    record.recipients.retain(|r| {
        !delivered
            .iter()
            .any(|b| b.as_bytes() == r.box_id.as_slice())
    });
    if record.recipients.is_empty() {
        txn.delete(&handle, &key).await?;
        return Ok(true);
    }
    if record.recipients.len() != before {
        txn.put(&handle, &key, &record).await?;
    }
    Ok(false)
}

/// Removes an entry of `creator`'s outbox, whatever is left in it.
pub async fn remove(txn: &mut Tx<'_>, creator: BoxId, id: [u8; 16]) -> Result<()> {
    if let Some((handle, _)) = txn.lock_outbox_entry(creator, id).await? {
        txn.delete(&handle, &Key::Outbox(creator, id)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_keyspace::RegionId;

    fn entry() -> Entry {
        let group = GroupKey {
            creator: BoxId::new(RegionId(3)),
            group_id: [9; 16],
        };
        Entry {
            group,
            id: entry_id(group, 4),
            seq: 4,
            epoch: 2,
            sender_box: BoxId::new(RegionId(5)),
            sender_device: DeviceId::new(),
            sender_identity_key: Some([6; 32]),
            message_id: MessageId::new(),
            payloads: vec![b"commit".to_vec(), b"welcome".to_vec()],
            recipients: vec![
                Recipient {
                    box_id: BoxId::new(RegionId(7)),
                    payload: 0,
                },
                Recipient {
                    box_id: BoxId::new(RegionId(3)),
                    payload: 1,
                },
            ],
            created_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn entries_round_trip_through_their_record() {
        let e = entry();
        let stored = e.to_record().to_stored();
        let back = Entry::from_record(
            e.group.creator,
            e.id,
            OutboxEntry::from_stored(&stored).unwrap(),
        )
        .unwrap();
        assert_eq!(back, e);
        let welcome = back.envelope_for(&back.recipients[1], 6);
        assert_eq!(welcome.payload, b"welcome");
        assert_eq!(welcome.device_list_version, 6);
        assert_eq!(welcome.message_id, e.message_id);
    }

    #[test]
    fn a_recipient_naming_a_missing_payload_is_corrupt() {
        let e = entry();
        let mut record = e.to_record();
        record.recipients[0].payload = 2;
        let err = Entry::from_record(e.group.creator, e.id, record).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn entry_ids_differ_by_group_and_number() {
        let a = GroupKey {
            creator: BoxId::new(RegionId(1)),
            group_id: [1; 16],
        };
        let b = GroupKey {
            group_id: [2; 16],
            ..a
        };
        assert_ne!(entry_id(a, 1), entry_id(a, 2));
        assert_ne!(entry_id(a, 1), entry_id(b, 1));
        assert_eq!(entry_id(a, 1), entry_id(a, 1));
    }
}
