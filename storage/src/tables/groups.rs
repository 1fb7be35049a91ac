//! Group epoch records: the ordering of MLS Commits.
//!
//! Each group has one record, `box/{creator}/group/{group id}`, in the key range of
//! the box that created it. It holds the group's epoch (Commits accepted so far)
//! and its member boxes. A Commit is accepted only when it was made in the stored
//! epoch (compare-and-set) by a member box; the same transaction advances the
//! epoch, applies the membership change and enqueues the Commit into every member
//! box through [`super::queue::enqueue`], so no accepted epoch exists without its
//! handshake messages in the members' queues, and each box receives Commits in
//! epoch order.
//!
//! # Correct under snapshot isolation
//! Every Commit and every leave writes the group record, so two of them running
//! concurrently conflict at commit; the retried one then reads the new epoch and
//! is told it lost. Enqueues write each recipient's `next` key as usual.
//!
//! The outcomes a client must act on ([`CommitOutcome::Conflict`],
//! [`CommitOutcome::NotMember`], ...) are values, not errors: the transaction
//! itself succeeded (and wrote nothing).

use super::queue::{self, NewEnvelope};
use super::records::{GroupRecord, QueueHead};
use super::{Limits, get, put};
use crate::error::{Error, Result};
use crate::kv::Transaction;
use rossby_keyspace::{BoxId, DeviceId, Key, MessageId};
use std::collections::BTreeSet;

/// A group's identity: the box that created it and its id within that box.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// The creating box (the record lives in its key range).
    pub creator: BoxId,
    /// The group's id (16 bytes, chosen by the creator).
    pub group_id: [u8; 16],
}

impl GroupKey {
    fn key(&self) -> Key {
        Key::GroupEpoch(self.creator, self.group_id)
    }
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

/// The result of an accepted Commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The group after the Commit.
    pub state: GroupState,
    /// Boxes the Commit was enqueued into (for push notifications), with the
    /// sequence number it got there.
    pub delivered: Vec<(BoxId, u64)>,
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
pub async fn state(txn: &mut dyn Transaction, group: GroupKey) -> Result<Option<GroupState>> {
    match get::<GroupRecord>(txn, &group.key()).await? {
        Some(record) => Ok(Some(state_of(&record)?)),
        None => Ok(None),
    }
}

/// Creates a group at epoch 0 with its creator as the only member. Creating it
/// again while it is still in that state is a no-op (a retried create); a group
/// that moved on answers [`Outcome::Conflict`].
pub async fn create(
    txn: &mut dyn Transaction,
    group: GroupKey,
    now_ms: u64,
) -> Result<Outcome<GroupState>> {
    super::accounts::require_profile(txn, group.creator).await?;
    let fresh = GroupState {
        epoch: 0,
        members: vec![group.creator],
    };
    if let Some(record) = get::<GroupRecord>(txn, &group.key()).await? {
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
    put(txn, &group.key(), &record).await?;
    Ok(Outcome::Done(fresh))
}

/// The state of a group for a member box (`NotMember` for others).
pub async fn state_for(
    txn: &mut dyn Transaction,
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
    txn: &mut dyn Transaction,
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
    let Some(mut record) = get::<GroupRecord>(txn, &c.group.key()).await? else {
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
            delivered: Vec::new(),
            duplicate: true,
        }));
    }
    if record.epoch != c.epoch {
        return Ok(Outcome::Conflict(current));
    }
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
    let mut delivered = Vec::with_capacity(recipients.len());
    for recipient in recipients {
        let payload = if welcome.contains(&recipient) {
            c.welcome_envelope
        } else {
            c.envelope
        };
        if payload.is_empty() {
            continue;
        }
        if let Some(seq) = enqueue_one(
            txn,
            limits,
            recipient,
            c.sender_box,
            c.sender_device,
            c.message_id,
            payload,
            now_ms,
        )
        .await?
        {
            delivered.push((recipient, seq));
        }
    }
    record.epoch += 1;
    record.members = members.iter().map(|b| b.as_bytes().to_vec()).collect();
    record.updated_at_ms = now_ms;
    record.last_commit_device = c.sender_device.as_bytes().to_vec();
    record.last_commit_message_id = c.message_id.as_bytes().to_vec();
    put(txn, &c.group.key(), &record).await?;
    Ok(Outcome::Done(Committed {
        state: GroupState {
            epoch: record.epoch,
            members,
        },
        delivered,
        duplicate: false,
    }))
}

/// Enqueues one envelope into a box against its current device list (group
/// envelopes are not sealed per device). Returns its sequence number, or `None`
/// when the box does not accept it (deleted, or blocking the sender).
#[allow(clippy::too_many_arguments)]
async fn enqueue_one(
    txn: &mut dyn Transaction,
    limits: &Limits,
    recipient: BoxId,
    sender_box: BoxId,
    sender_device: DeviceId,
    message_id: MessageId,
    payload: &[u8],
    now_ms: u64,
) -> Result<Option<u64>> {
    let Some(head) = get::<QueueHead>(txn, &Key::Next(recipient)).await? else {
        return Ok(None);
    };
    let envelope = NewEnvelope {
        sender_box,
        sender_device,
        message_id,
        device_list_version: head.device_list_version,
        payload: payload.to_vec(),
    };
    let outcome = queue::enqueue(txn, limits, recipient, &[envelope], now_ms)
        .await?
        .into_iter()
        .next();
    match outcome {
        Some(Ok(enqueued)) => Ok(Some(enqueued.seq)),
        Some(Err(Error::RecipientUnavailable)) | None => Ok(None),
        Some(Err(other)) => Err(other),
    }
}

/// Removes `member` from a group's member boxes and enqueues `envelope` (its
/// Remove proposals) into the remaining member boxes and into `member` itself (for
/// its other devices). The epoch is unchanged.
#[allow(clippy::too_many_arguments)]
pub async fn leave(
    txn: &mut dyn Transaction,
    limits: &Limits,
    group: GroupKey,
    member: BoxId,
    sender_device: DeviceId,
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
    let Some(mut record) = get::<GroupRecord>(txn, &group.key()).await? else {
        return Ok(Outcome::NotFound);
    };
    let mut current = state_of(&record)?;
    if !current.members.contains(&member) {
        return Ok(Outcome::NotMember);
    }
    current.members.retain(|m| *m != member);
    let mut delivered = Vec::new();
    if !envelope.is_empty() {
        // The leaving box's other devices learn of it too.
        let recipients = current.members.iter().chain(std::iter::once(&member));
        for recipient in recipients {
            if let Some(seq) = enqueue_one(
                txn,
                limits,
                *recipient,
                member,
                sender_device,
                message_id,
                envelope,
                now_ms,
            )
            .await?
            {
                delivered.push((*recipient, seq));
            }
        }
    }
    record.members = current
        .members
        .iter()
        .map(|b| b.as_bytes().to_vec())
        .collect();
    record.updated_at_ms = now_ms;
    put(txn, &group.key(), &record).await?;
    Ok(Outcome::Done(Committed {
        state: current,
        delivered,
        duplicate: false,
    }))
}

/// The member boxes of a group with their current device-list versions, for a
/// member about to fan out an application message encrypted in `epoch`
/// ([`Outcome::Conflict`] unless that is the current epoch).
pub async fn fan_out_targets(
    txn: &mut dyn Transaction,
    group: GroupKey,
    sender: BoxId,
    epoch: u64,
) -> Result<Outcome<(GroupState, Vec<(BoxId, u64)>)>> {
    let state = match state_for(txn, group, sender).await? {
        Outcome::Done(s) if s.epoch != epoch => return Ok(Outcome::Conflict(s)),
        Outcome::Done(s) => s,
        Outcome::NotFound => return Ok(Outcome::NotFound),
        Outcome::NotMember => return Ok(Outcome::NotMember),
        Outcome::Conflict(s) => return Ok(Outcome::Conflict(s)),
    };
    let mut targets = Vec::with_capacity(state.members.len());
    for member in &state.members {
        let version = get::<QueueHead>(txn, &Key::Next(*member))
            .await?
            .map_or(0, |h| h.device_list_version);
        targets.push((*member, version));
    }
    Ok(Outcome::Done((state, targets)))
}
