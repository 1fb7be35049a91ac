//! Group epoch records: the ordering of MLS Commits.
//!
//! Each group has one record, `box/{creator}/group/{group id}`, in the key range of
//! the box that created it. It holds the group's epoch (Commits accepted so far)
//! and its member boxes. A Commit is accepted only when it was made in the stored
//! epoch (compare-and-set) by a member box; the same transaction advances the
//! epoch, applies the membership change and records the Commit's fan-out (every
//! box that was or becomes a member, each with its envelope) as an entry of the
//! creator's [`super::outbox`]. A leave likewise removes the box and records its
//! Remove proposals for the remaining members and the leaver's other devices.
//!
//! Everything such a transaction writes lies in the creator box's region (the
//! group record in its box range, the outbox entry in the region's outbox), so a
//! Commit writes in one region however many regions its members live in; a
//! Commit that adds boxes also reads their settings (the membership rules of
//! `check_membership_change`: only the creator removes others, and an added box
//! must accept messages from the committer, as for a Send). The envelopes reach the member boxes afterwards, when a deliverer (the
//! gateway) enqueues each of them in the member's home region, idempotently by
//! the Commit's sender device and message id, and then removes the entry.
//!
//! # Members never see an epoch without its handshake
//! Between the Commit and its delivery the record already says N+1 while a
//! member box may not hold Commit N+1 yet. Whoever answers with the group's state
//! or fans out in the group therefore reads the record and the group's pending
//! entries ([`super::outbox::of_group`]) in one snapshot and delivers those
//! entries first: an entry is removed only once delivered, so every entry of an
//! epoch up to the one read is either in that list or in every box already.
//! Entries are numbered per group (`outbox_seq` in the record) and delivered in
//! that order, so each box receives a group's Commits in epoch order.
//!
//! # Correct under snapshot isolation
//! Every Commit and every leave writes the group record, so two of them running
//! concurrently conflict at commit; the retried one then reads the new epoch and
//! is told it lost. The outbox entry is written in that same transaction (its
//! number comes from the record), so there is never an accepted epoch without
//! its entry nor an entry of a Commit that lost. Delivery transactions (the
//! enqueues into member boxes, and [`super::outbox::finish`]) never write the
//! group record, so they never conflict with Commits; two deliverers of one entry
//! conflict on the entry's key, and enqueues dedup on the message id.
//!
//! The outcomes a client must act on ([`Outcome::Conflict`],
//! [`Outcome::NotMember`], ...) are values, not errors: the transaction
//! itself succeeded (and wrote nothing).

use super::Limits;
use super::outbox::{self, Entry, Recipient};
use super::records::GroupRecord;
use super::tx::{BoxHandle, Tx};
use crate::error::{Error, Result};
use rossby_keyspace::{BoxId, DeviceId, Key, MessageId};
use std::collections::BTreeSet;

pub use super::outbox::GroupKey;

/// The key of a group's epoch record.
fn record_key(group: GroupKey) -> Key {
    Key::GroupEpoch(group.creator, group.group_id)
}

/// The epoch and member boxes of a group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupState {
    /// Commits accepted since creation.
    pub epoch: u64,
    /// Member boxes, in the order they are stored.
    pub members: Vec<BoxId>,
}

/// What a group operation found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// It was done.
    Done(T),
    /// No such group (never created, or its creator's account was deleted).
    NotFound,
    /// The caller's box is not a member.
    NotMember,
    /// The Commit was made in another epoch than the current one.
    Conflict(GroupState),
}

/// A Commit to apply.
#[derive(Clone, Debug)]
pub struct Commit<'a> {
    /// The group.
    pub group: GroupKey,
    /// The committing box (must be a member).
    pub sender_box: BoxId,
    /// The committing device.
    pub sender_device: DeviceId,
    /// Its identity key, stored with each envelope ([`super::queue::Sender`]).
    pub sender_identity_key: Option<[u8; super::queue::IDENTITY_KEY_LEN]>,
    /// Idempotency id of the Commit.
    pub message_id: MessageId,
    /// The epoch the Commit was made in.
    pub epoch: u64,
    /// Boxes that become members.
    pub add: &'a [BoxId],
    /// Boxes that stop being members.
    pub remove: &'a [BoxId],
    /// The envelope for member boxes not in `welcome_boxes`.
    pub envelope: &'a [u8],
    /// The envelope for `welcome_boxes` (Commit and Welcome).
    pub welcome_envelope: &'a [u8],
    /// Boxes with devices that join by this Commit.
    pub welcome_boxes: &'a [BoxId],
}

/// The result of an accepted Commit or leave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The group after the change.
    pub state: GroupState,
    /// The fan-out this transaction recorded in the creator's outbox, still to
    /// deliver (`None` for a retry of the last Commit, whose entry was recorded
    /// by the original, and when there was no envelope to deliver).
    pub fan_out: Option<Entry>,
    /// True if this was a retry of the last accepted Commit (nothing was written).
    pub duplicate: bool,
}

fn boxes(raw: &[Vec<u8>]) -> Result<Vec<BoxId>> {
    raw.iter()
        .map(|b| BoxId::try_from_slice(b).map_err(|e| Error::corrupt("group", e)))
        .collect()
}

fn state_of(record: &GroupRecord) -> Result<GroupState> {
    Ok(GroupState {
        epoch: record.epoch,
        members: boxes(&record.members)?,
    })
}

/// Reads a group's state.
pub async fn state(txn: &mut Tx<'_>, group: GroupKey) -> Result<Option<GroupState>> {
    match txn.get::<GroupRecord>(&record_key(group)).await? {
        Some(record) => Ok(Some(state_of(&record)?)),
        None => Ok(None),
    }
}

/// Creates a group at epoch 0 with its creator as the only member. Creating it
/// again while it is still in that state is a no-op (a retried create); a group
/// that moved on answers [`Outcome::Conflict`].
pub async fn create(txn: &mut Tx<'_>, group: GroupKey, now_ms: u64) -> Result<Outcome<GroupState>> {
    // Under the creator's profile guard: a group record must not outlive a
    // concurrent account deletion.
    let (handle, _) = txn.lock_profile(group.creator).await?;
    let fresh = GroupState {
        epoch: 0,
        members: vec![group.creator],
    };
    if let Some(record) = txn.get::<GroupRecord>(&record_key(group)).await? {
        let existing = state_of(&record)?;
        return Ok(if existing == fresh {
            Outcome::Done(existing)
        } else {
            Outcome::Conflict(existing)
        });
    }
    let record = GroupRecord {
        epoch: 0,
        members: vec![group.creator.as_bytes().to_vec()],
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        ..GroupRecord::default()
    };
    txn.put(&handle, &record_key(group), &record).await?;
    Ok(Outcome::Done(fresh))
}

/// The state of a group for a member box (`NotMember` for others).
pub async fn state_for(
    txn: &mut Tx<'_>,
    group: GroupKey,
    member: BoxId,
) -> Result<Outcome<GroupState>> {
    Ok(match state(txn, group).await? {
        None => Outcome::NotFound,
        Some(s) if !s.members.contains(&member) => Outcome::NotMember,
        Some(s) => Outcome::Done(s),
    })
}

/// Applies a Commit (see the module documentation). `max_members` bounds the
/// member boxes after the change.
pub async fn commit(
    txn: &mut Tx<'_>,
    limits: &Limits,
    max_members: usize,
    c: &Commit<'_>,
    now_ms: u64,
) -> Result<Outcome<Committed>> {
    for payload in [c.envelope, c.welcome_envelope] {
        if payload.len() > limits.max_payload_bytes {
            return Err(Error::Invalid(format!(
                "envelope of {} bytes exceeds the limit of {} bytes",
                payload.len(),
                limits.max_payload_bytes
            )));
        }
    }
    if c.remove.contains(&c.sender_box) {
        return Err(Error::Invalid(
            "a Commit cannot remove the committing box; leave the group instead".into(),
        ));
    }
    let Some((handle, mut record)) = lock_group(txn, c.group).await? else {
        return Ok(Outcome::NotFound);
    };
    let current = state_of(&record)?;
    if !current.members.contains(&c.sender_box) {
        return Ok(Outcome::NotMember);
    }
    if record.epoch == c.epoch.saturating_add(1)
        && record.last_commit_device == c.sender_device.as_bytes()
        && record.last_commit_message_id == c.message_id.as_bytes()
    {
        return Ok(Outcome::Done(Committed {
            state: current,
            fan_out: None,
            duplicate: true,
        }));
    }
    if record.epoch != c.epoch {
        return Ok(Outcome::Conflict(current));
    }
    check_membership_change(txn, c, &current.members).await?;
    let mut members = current.members.clone();
    members.retain(|m| !c.remove.contains(m));
    for added in c.add {
        if !members.contains(added) {
            members.push(*added);
        }
    }
    if members.len() > max_members {
        return Err(Error::QuotaExceeded(format!(
            "a group may have at most {max_members} member boxes"
        )));
    }
    let welcome: BTreeSet<BoxId> = c.welcome_boxes.iter().copied().collect();
    if let Some(outsider) = welcome.iter().find(|b| !members.contains(b)) {
        return Err(Error::Invalid(format!(
            "welcome box {outsider} is not a member after the Commit"
        )));
    }
    if !welcome.is_empty() && c.welcome_envelope.is_empty() {
        return Err(Error::Invalid(
            "welcome boxes need a welcome envelope".into(),
        ));
    }
    // Every box that was or becomes a member learns of the Commit: removed members
    // learn that they were removed.
    let mut recipients = current.members.clone();
    for m in &members {
        if !recipients.contains(m) {
            recipients.push(*m);
        }
    }
    let recipients: Vec<(BoxId, &[u8])> = recipients
        .into_iter()
        .map(|r| {
            let payload = if welcome.contains(&r) {
                c.welcome_envelope
            } else {
                c.envelope
            };
            (r, payload)
        })
        .collect();
    record.epoch += 1;
    record.members = members.iter().map(|b| b.as_bytes().to_vec()).collect();
    record.last_commit_device = c.sender_device.as_bytes().to_vec();
    record.last_commit_message_id = c.message_id.as_bytes().to_vec();
    let sender = FanOutSender {
        box_id: c.sender_box,
        device_id: c.sender_device,
        identity_key: c.sender_identity_key,
        message_id: c.message_id,
    };
    let fan_out = write_with_fan_out(
        txn,
        &handle,
        c.group,
        &mut record,
        sender,
        &recipients,
        now_ms,
    )
    .await?;
    Ok(Outcome::Done(Committed {
        state: GroupState {
            epoch: record.epoch,
            members,
        },
        fan_out,
        duplicate: false,
    }))
}

/// The rules of a membership change (docs/protocol.md §9), checked in the
/// Commit's transaction:
/// - only the group's creator removes other member boxes (every box may leave,
///   through [`leave`]); naming a box that is no member removes nothing and is
///   allowed;
/// - a box is added only if it would accept a message from the committing box,
///   by the rule of a Send: it exists, has not blocked the committer, and if it
///   accepts messages from contacts only, has the committer as a contact. The
///   refusal is the one of a Send ([`Error::RecipientUnavailable`]), so a box
///   that refuses looks like an unknown one.
///
/// These are reads of the added boxes' profiles and relations: a Block that
/// commits concurrently with the Commit does not conflict with it (as with a
/// Send), but the delivery of the Commit's Welcome is an enqueue that checks
/// the block again, so a box blocking the committer by then does not get it.
async fn check_membership_change(
    txn: &mut Tx<'_>,
    c: &Commit<'_>,
    members: &[BoxId],
) -> Result<()> {
    if c.sender_box != c.group.creator && c.remove.iter().any(|r| members.contains(r)) {
        return Err(Error::Forbidden(
            "only the group's creator removes other members; leave the group instead".into(),
        ));
    }
    for added in c.add {
        if members.contains(added) || *added == c.sender_box {
            continue;
        }
        let Some(profile) = super::accounts::profile(txn, *added).await? else {
            return Err(Error::RecipientUnavailable);
        };
        if super::contacts::is_blocked(txn, *added, c.sender_box).await? {
            return Err(Error::RecipientUnavailable);
        }
        if profile.accept_from() == super::records::AcceptFrom::Contacts
            && !super::contacts::contains(
                txn,
                super::contacts::Relationship::Contact,
                *added,
                c.sender_box,
            )
            .await?
        {
            return Err(Error::RecipientUnavailable);
        }
    }
    Ok(())
}

/// Who made a fan-out, and its idempotency id.
struct FanOutSender {
    box_id: BoxId,
    device_id: DeviceId,
    identity_key: Option<[u8; super::queue::IDENTITY_KEY_LEN]>,
    message_id: MessageId,
}

/// Records the fan-out of a change of `record` (already updated to the group's
/// new epoch) as the group's next outbox entry, and writes `record`, stamped
/// `now_ms` (its `outbox_seq` numbers the entry); recipients with an empty
/// envelope are left out, and no entry is recorded when none is left.
async fn write_with_fan_out(
    txn: &mut Tx<'_>,
    creator: &BoxHandle,
    group: GroupKey,
    record: &mut GroupRecord,
    sender: FanOutSender,
    recipients: &[(BoxId, &[u8])],
    now_ms: u64,
) -> Result<Option<Entry>> {
    record.updated_at_ms = now_ms;
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut to = Vec::with_capacity(recipients.len());
    for (box_id, payload) in recipients {
        if payload.is_empty() {
            continue;
        }
        // Boxes getting the same envelope share one stored copy.
        let index = match payloads.iter().position(|p| p.as_slice() == *payload) {
            Some(i) => i,
            None => {
                payloads.push(payload.to_vec());
                payloads.len() - 1
            }
        };
        to.push(Recipient {
            box_id: *box_id,
            payload: index,
        });
    }
    if to.is_empty() {
        txn.put(creator, &record_key(group), record).await?;
        return Ok(None);
    }
    record.outbox_seq += 1;
    let entry = Entry {
        group,
        id: outbox::entry_id(group, record.outbox_seq),
        seq: record.outbox_seq,
        epoch: record.epoch,
        sender_box: sender.box_id,
        sender_device: sender.device_id,
        sender_identity_key: sender.identity_key,
        message_id: sender.message_id,
        payloads,
        recipients: to,
        created_at_ms: now_ms,
    };
    outbox::record(txn, creator, &entry).await?;
    txn.put(creator, &record_key(group), record).await?;
    Ok(Some(entry))
}

/// Removes `member` from a group's member boxes and records `envelope` (its
/// Remove proposals) in the outbox for the remaining member boxes and for
/// `member` itself (its other devices), as a Commit does. The epoch is unchanged.
#[allow(clippy::too_many_arguments)]
pub async fn leave(
    txn: &mut Tx<'_>,
    limits: &Limits,
    group: GroupKey,
    member: BoxId,
    sender_device: DeviceId,
    sender_identity_key: Option<[u8; super::queue::IDENTITY_KEY_LEN]>,
    message_id: MessageId,
    envelope: &[u8],
    now_ms: u64,
) -> Result<Outcome<Committed>> {
    if envelope.len() > limits.max_payload_bytes {
        return Err(Error::Invalid(format!(
            "envelope of {} bytes exceeds the limit of {} bytes",
            envelope.len(),
            limits.max_payload_bytes
        )));
    }
    let Some((handle, mut record)) = lock_group(txn, group).await? else {
        return Ok(Outcome::NotFound);
    };
    let mut current = state_of(&record)?;
    if !current.members.contains(&member) {
        return Ok(Outcome::NotMember);
    }
    current.members.retain(|m| *m != member);
    // The leaving box's other devices learn of it too.
    let recipients: Vec<(BoxId, &[u8])> = current
        .members
        .iter()
        .chain(std::iter::once(&member))
        .map(|b| (*b, envelope))
        .collect();
    record.members = current
        .members
        .iter()
        .map(|b| b.as_bytes().to_vec())
        .collect();
    let sender = FanOutSender {
        box_id: member,
        device_id: sender_device,
        identity_key: sender_identity_key,
        message_id,
    };
    let fan_out = write_with_fan_out(
        txn,
        &handle,
        group,
        &mut record,
        sender,
        &recipients,
        now_ms,
    )
    .await?;
    Ok(Outcome::Done(Committed {
        state: current,
        fan_out,
        duplicate: false,
    }))
}

/// The group's record under its creator's profile guard, or `None` when the
/// group (or its creator) is gone.
async fn lock_group(txn: &mut Tx<'_>, group: GroupKey) -> Result<Option<(BoxHandle, GroupRecord)>> {
    let handle = match txn.lock_profile(group.creator).await {
        Ok((handle, _)) => handle,
        Err(Error::BoxNotFound) => return Ok(None),
        Err(err) => return Err(err),
    };
    Ok(txn
        .get::<GroupRecord>(&record_key(group))
        .await?
        .map(|record| (handle, record)))
}

/// An application message to fan out in a group.
#[derive(Clone, Copy, Debug)]
pub struct GroupMessage<'a> {
    /// The group.
    pub group: GroupKey,
    /// The sending box (must be a member).
    pub sender_box: BoxId,
    /// The sending device.
    pub sender_device: DeviceId,
    /// Its identity key, stored with each envelope ([`super::queue::Sender`]).
    pub sender_identity_key: Option<[u8; super::queue::IDENTITY_KEY_LEN]>,
    /// Idempotency id of the message.
    pub message_id: MessageId,
    /// The epoch the message was encrypted in (must be the current one).
    pub epoch: u64,
    /// The MLS ciphertext for every member box.
    pub envelope: &'a [u8],
}

/// Accepts an application message: checks membership and the epoch, and records
/// the fan-out to every member box (the sender's own box too, for its other
/// devices) as the group's next outbox entry, all in this transaction. Like a
/// Commit it writes the group record (its `outbox_seq`), so a message and a
/// Commit of the group never both pass the epoch check: the message is either
/// ordered before the Commit in every box, or told [`Outcome::Conflict`].
pub async fn send(
    txn: &mut Tx<'_>,
    limits: &Limits,
    m: &GroupMessage<'_>,
    now_ms: u64,
) -> Result<Outcome<Committed>> {
    if m.envelope.is_empty() || m.envelope.len() > limits.max_payload_bytes {
        return Err(Error::Invalid(format!(
            "a group envelope must have 1 to {} bytes",
            limits.max_payload_bytes
        )));
    }
    let Some((handle, mut record)) = lock_group(txn, m.group).await? else {
        return Ok(Outcome::NotFound);
    };
    let current = state_of(&record)?;
    if !current.members.contains(&m.sender_box) {
        return Ok(Outcome::NotMember);
    }
    if record.epoch != m.epoch {
        return Ok(Outcome::Conflict(current));
    }
    let recipients: Vec<(BoxId, &[u8])> =
        current.members.iter().map(|b| (*b, m.envelope)).collect();
    let sender = FanOutSender {
        box_id: m.sender_box,
        device_id: m.sender_device,
        identity_key: m.sender_identity_key,
        message_id: m.message_id,
    };
    let fan_out = write_with_fan_out(
        txn,
        &handle,
        m.group,
        &mut record,
        sender,
        &recipients,
        now_ms,
    )
    .await?;
    Ok(Outcome::Done(Committed {
        state: current,
        fan_out,
        duplicate: false,
    }))
}
