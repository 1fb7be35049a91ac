//! CreateGroup, GroupCommit, GroupSend, LeaveGroup and GroupInfo: ordering and
//! fan-out of MLS groups.
//!
//! The gateway never reads MLS content: of a Commit it checks only the public
//! header of its MLS message (group id, epoch, content type; `check_commit`),
//! and it enforces who may change the member boxes (only the creator removes
//! others; an added box must accept the committer's messages). It keeps one
//! epoch record per group ([`rossby_storage::tables::groups`]) and:
//! - **GroupCommit** compares the sender's epoch with the stored one. A match
//!   advances the epoch, applies the member-box change and records the Commit's
//!   fan-out (every member box before and after the change) in the creator's
//!   outbox, in one transaction of the creator's region; the gateway then
//!   delivers it and answers `OK` only once every member box has it (so a client
//!   that sees `OK` knows its members have the handshake). A mismatch answers
//!   `EPOCH_CONFLICT` with a `GroupState` body, and the client fetches the Commit
//!   that won, processes it and commits again. A retry of an accepted Commit
//!   (same device and message id) is answered with the state it produced, after
//!   delivering whatever of its fan-out is still pending.
//! - **GroupSend** accepts one envelope, encrypted in the group's current epoch
//!   (`EPOCH_CONFLICT` otherwise): in the same transaction as the epoch check
//!   its fan-out to every member box becomes the group's next outbox entry, so
//!   a message and a Commit of the group never both pass the check, and every
//!   box receives the group's messages and Commits in one order. It is then
//!   delivered like a Commit's fan-out (idempotent by message id), against
//!   whatever device list each box has: group envelopes are not sealed per
//!   device ([`ANY_DEVICE_LIST`]), so no member's list is read.
//! - **LeaveGroup** removes the caller's box from the member boxes and records its
//!   Remove proposals for the remaining ones (and the caller's other devices),
//!   delivered like a Commit's; the next Commit of a remaining member removes the
//!   box's devices from the MLS group.
//!
//! Only member boxes may commit, send, leave or read the state (`NOT_GROUP_MEMBER`
//! otherwise); an unknown group is `NOT_FOUND`. Member boxes per group are bounded
//! by `max_recipients_per_send`.
//!
//! # Delivering the outbox
//! An outbox entry ([`rossby_storage::tables::outbox`]) is delivered by enqueuing
//! its envelope into each recipient box through the [`Enqueuer`](super::messaging::Enqueuer)
//! (which runs the enqueue where the box's writes run), against any device list
//! ([`ANY_DEVICE_LIST`]). The enqueue is
//! idempotent by the entry's sender device and message id, so delivering an
//! entry again (after a crash, or by two gateways at once) enqueues nothing
//! twice. A box that refuses it (`NOT_FOUND`: deleted, or blocking the sender) is
//! done with; a box that could not be reached (`UNAVAILABLE`, a crash) stays in
//! the entry. Boxes that have it are removed from the entry, and the entry once
//! none is left. A group's entries are delivered in the order they were recorded,
//! and a box that missed one gets none of the group's later entries until it
//! has it, so every box receives the group's Commits in epoch order.
//!
//! # Members never see an epoch without its handshake
//! Between a Commit's transaction and its delivery the group record says N+1
//! while some member box may not hold Commit N+1 yet. So before answering,
//! GroupInfo reads the group record and the group's pending entries in one
//! snapshot and delivers those entries first; GroupCommit, GroupSend and
//! LeaveGroup read and deliver them after their own transaction, before
//! answering. An entry is removed only once delivered, so everything up to the
//! epoch a request read has reached the boxes when it answers, except for boxes
//! the delivery could not reach: the request then answers `UNAVAILABLE` if the
//! caller's own box is one of them (or, for GroupCommit and LeaveGroup, if any
//! box is), and a GroupSend's result for those boxes is `UNAVAILABLE` (its entry
//! stays in the outbox). A GroupSend at epoch N+1 is recorded after Commit N+1,
//! so it never reaches a box before that box's Commit N+1. What stays undelivered is finished by the next request on
//! the group or by [`Api::resume_outboxes`].

use super::{Api, Failure, Shared, decode, now_ms, parse_box_id};
use crate::auth::Authenticated;
use prost::Message;
use rossby_keyspace::{BoxId, MessageId, RegionId};
use rossby_protocol::mls;
use rossby_protocol::pb::{self, Status};
use rossby_storage::tables::groups::{self, Commit, GroupKey, GroupMessage, GroupState, Outcome};
use rossby_storage::tables::outbox::{self, Entry, Recipient};
use rossby_storage::tables::queue::ANY_DEVICE_LIST;
use rossby_storage::transact;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How old an outbox entry must be before [`Api::resume_outboxes`] delivers it:
/// younger ones are normally being delivered by the request that recorded them
/// (delivering them twice would be harmless, only wasted work).
pub const OUTBOX_GRACE: Duration = Duration::from_secs(5);

/// Outbox entries [`Api::resume_outboxes`] reads per page.
const RESUME_PAGE: usize = 64;

fn parse_group(creator_box: &[u8], group_id: &[u8]) -> Result<GroupKey, Failure> {
    let creator = parse_box_id(creator_box)?;
    let group_id = <[u8; 16]>::try_from(group_id)
        .map_err(|_| Failure::bad_request("a group id must have 16 bytes"))?;
    Ok(GroupKey { creator, group_id })
}

fn parse_message_id(raw: &[u8]) -> Result<MessageId, Failure> {
    MessageId::try_from_slice(raw)
        .map_err(|_| Failure::bad_request("message_id must be a UUIDv7 (16 bytes)"))
}

fn parse_boxes(raw: &[Vec<u8>], max: usize, what: &str) -> Result<Vec<BoxId>, Failure> {
    if raw.len() > max {
        return Err(Failure::new(
            Status::TooLarge,
            format!("at most {max} {what}"),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for b in raw {
        let b = parse_box_id(b)?;
        if out.contains(&b) {
            return Err(Failure::bad_request(format!("{what} must be distinct")));
        }
        out.push(b);
    }
    Ok(out)
}

fn check_envelope(shared: &Shared, envelope: &[u8], required: bool) -> Result<(), Failure> {
    if required && envelope.is_empty() {
        return Err(Failure::bad_request("envelopes must not be empty"));
    }
    let max = shared.store.limits.max_payload_bytes;
    if envelope.len() > max {
        return Err(Failure::new(
            Status::TooLarge,
            format!("an envelope may have at most {max} bytes"),
        ));
    }
    Ok(())
}

/// The wire form of a group state.
pub(crate) fn state_message(state: &GroupState) -> pb::GroupState {
    pb::GroupState {
        epoch: state.epoch,
        members: state
            .members
            .iter()
            .map(|b| b.as_bytes().to_vec())
            .collect(),
    }
}

fn not_member() -> Failure {
    Failure::new(
        Status::NotGroupMember,
        "your box is not a member of this group",
    )
}

fn unknown_group() -> Failure {
    Failure::new(Status::NotFound, "no such group")
}

/// `EPOCH_CONFLICT` with the current state as the body.
fn conflict(state: &GroupState) -> Failure {
    Failure {
        body: state_message(state).encode_to_vec(),
        ..Failure::new(
            Status::EpochConflict,
            format!(
                "the group is at epoch {}: fetch and process its messages, then commit again",
                state.epoch
            ),
        )
    }
}

fn settle<T>(outcome: Outcome<T>) -> Result<T, Failure> {
    match outcome {
        Outcome::Done(v) => Ok(v),
        Outcome::NotFound => Err(unknown_group()),
        Outcome::NotMember => Err(not_member()),
        Outcome::Conflict(state) => Err(conflict(&state)),
    }
}

/// [`settle`] for a caller whose box may still miss some of the group's
/// handshakes: telling it the group's state before it has them could show it an
/// epoch it cannot follow yet.
fn settle_for<T>(outcome: Outcome<T>, delivery: &Delivery, caller: BoxId) -> Result<T, Failure> {
    if delivery.missing.contains(&caller) {
        return Err(Failure::unavailable(
            "a change of this group has not reached your box yet; retry shortly",
        ));
    }
    settle(outcome)
}

/// What delivering some of a group's outbox entries left undone.
#[derive(Debug, Default)]
struct Delivery {
    /// Boxes still missing at least one of the entries (they were given none of
    /// the later ones either).
    missing: BTreeSet<BoxId>,
    /// What enqueuing each entry (by id) into each box answered: the sequence
    /// number, or the status of a refusal.
    enqueued: BTreeMap<([u8; 16], BoxId), Result<u64, Status>>,
    /// Entries delivered to every recipient (and removed from the outbox).
    completed: usize,
}

/// Delivers one group's outbox entries, in the order [`outbox::of_group`] lists
/// them (see the module documentation). Never fails: what could not be
/// delivered stays in the outbox and is reported in [`Delivery::missing`].
async fn deliver(shared: &Shared, entries: &[Entry]) -> Delivery {
    let mut delivery = Delivery::default();
    for entry in entries {
        // A box that missed an earlier entry of the group must not get this one first.
        let todo: Vec<Recipient> = entry
            .recipients
            .iter()
            .filter(|r| !delivery.missing.contains(&r.box_id))
            .copied()
            .collect();
        let (done, missing) = deliver_entry(shared, entry, todo, &mut delivery.enqueued).await;
        delivery.missing.extend(missing);
        if done.is_empty() {
            continue;
        }
        let (creator, id) = (entry.group.creator, entry.id);
        match transact!(shared.store, |txn| outbox::finish(txn, creator, id, &done)
            .await)
        {
            Ok(true) => delivery.completed += 1,
            Ok(false) => {}
            // The boxes have the envelope; a later delivery finds it deduplicated.
            Err(err) => tracing::warn!(error = %err, "could not record a delivered group fan-out"),
        }
    }
    delivery
}

/// Enqueues one entry's envelope into `todo` (against any device list: group
/// envelopes are not sealed per device). Returns the boxes that are done with it
/// (enqueued now or before, or refusing it for good) and those that still need
/// it.
async fn deliver_entry(
    shared: &Shared,
    entry: &Entry,
    todo: Vec<Recipient>,
    enqueued: &mut BTreeMap<([u8; 16], BoxId), Result<u64, Status>>,
) -> (Vec<BoxId>, Vec<BoxId>) {
    let receivers: Vec<_> = todo
        .iter()
        .map(|r| {
            let envelope = entry.envelope_for(r, ANY_DEVICE_LIST);
            // Every group message wakes: its kind is inside the MLS ciphertext.
            (
                r.box_id,
                shared.enqueuer.submit(r.box_id, envelope, pb::Wake::High),
            )
        })
        .collect();
    let mut done = Vec::with_capacity(receivers.len());
    let mut failed = Vec::new();
    for (box_id, rx) in receivers {
        let outcome = rx
            .await
            .unwrap_or_else(|_| Err(Failure::unavailable("the enqueue did not complete; retry")));
        enqueued.insert(
            (entry.id, box_id),
            outcome.as_ref().map(|e| e.seq).map_err(|f| f.status),
        );
        match outcome {
            Ok(_) => done.push(box_id),
            // Deleted, or blocking the sender: there is nobody to deliver to.
            Err(f) if f.status == Status::NotFound => done.push(box_id),
            // Refused for good (an envelope over a since lowered size limit):
            // retrying cannot help, and it must not hold up the group.
            Err(f) if f.status == Status::BadRequest => {
                tracing::warn!(message = %f.message, "a group fan-out was refused by a box");
                done.push(box_id);
            }
            Err(_) => failed.push(box_id),
        }
    }
    (done, failed)
}

/// Reads and delivers every pending outbox entry of `group`.
async fn deliver_group(shared: &Shared, group: GroupKey) -> Result<Delivery, Failure> {
    let entries = transact!(shared.store, |txn| outbox::of_group(txn, group).await)?;
    Ok(deliver(shared, &entries).await)
}

impl Api {
    /// Delivers the group fan-out left in `region`'s outbox by requests that did
    /// not finish it (the gateway crashed, or a member box was unreachable), so
    /// that every accepted Commit and leave eventually reaches its boxes. Entries
    /// younger than [`OUTBOX_GRACE`] are left to the request delivering them now.
    /// Each group's entries go out in order, as a request would deliver them, and
    /// idempotently: running this concurrently with requests or with itself
    /// enqueues nothing twice.
    ///
    /// Meant to run periodically on the gateway that owns the creator boxes of
    /// `region` (the outbox lives in the creator's region). Returns how many
    /// entries were delivered completely; what still cannot be delivered stays for
    /// the next run. Fails only when the outbox cannot be read.
    pub async fn resume_outboxes(&self, region: RegionId) -> Result<usize, Failure> {
        let shared = &*self.shared;
        let store = &shared.store;
        let grace = u64::try_from(OUTBOX_GRACE.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms().saturating_sub(grace);
        let mut after = None;
        let mut groups_seen: BTreeSet<GroupKey> = BTreeSet::new();
        let mut completed = 0;
        loop {
            let page = transact!(store, |txn| outbox::pending(
                txn,
                region,
                after,
                RESUME_PAGE
            )
            .await)?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some((last.group.creator, last.id));
            for entry in &page {
                if entry.created_at_ms > cutoff || !groups_seen.insert(entry.group) {
                    continue;
                }
                let group = entry.group;
                let entries = match transact!(store, |txn| outbox::of_group(txn, group).await) {
                    Ok(entries) => entries,
                    Err(err) => {
                        tracing::warn!(error = %err, "could not read a group's outbox");
                        continue;
                    }
                };
                // In order, up to the first entry still in its grace period.
                let due: Vec<Entry> = entries
                    .into_iter()
                    .take_while(|e| e.created_at_ms <= cutoff)
                    .collect();
                completed += deliver(shared, &due).await.completed;
            }
            if page.len() < RESUME_PAGE {
                break;
            }
        }
        Ok(completed)
    }
}

/// CreateGroup: registers a group of the caller's box at epoch 0.
pub(crate) async fn create_group(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::CreateGroupResponse, Failure> {
    let req: pb::CreateGroupRequest = decode(body, "CreateGroupRequest")?;
    let group = parse_group(caller.box_id.as_bytes(), &req.group_id)?;
    let store = &shared.store;
    let now = now_ms();
    let outcome = transact!(store, |txn| groups::create(txn, group, now).await)?;
    let state = settle(outcome)?;
    Ok(pb::CreateGroupResponse {
        state: Some(state_message(&state)),
    })
}

/// `UNAVAILABLE` for a Commit or leave that was accepted but has not reached
/// every box yet (it stays in the outbox).
fn undelivered(what: &str) -> Failure {
    Failure::unavailable(format!(
        "the {what} was accepted but has not reached every member box yet; \
         send it again with the same message id"
    ))
}

/// The `GroupMessage` of a group envelope: `raw` must be a protobuf
/// `Envelope` holding one of this group. `what` names the envelope in errors.
fn group_message(raw: &[u8], group: GroupKey, what: &str) -> Result<pb::GroupMessage, Failure> {
    let bad = |problem: &str| Failure::bad_request(format!("the {what}'s envelope {problem}"));
    let envelope = pb::Envelope::decode(raw).map_err(|_| bad("is not a protobuf Envelope"))?;
    let message = envelope
        .group
        .ok_or_else(|| bad("carries no group message"))?;
    if message.creator_box != group.creator.as_bytes() || message.group_id != group.group_id {
        return Err(bad("is of another group"));
    }
    Ok(message)
}

/// Checks that `bytes` is an MLS 1.0 framed message (`PrivateMessage` or
/// `PublicMessage`) of the group's MLS id (`creator_box || group_id`), with
/// content type `content` and, when given, made in `epoch`.
fn check_framed(
    bytes: &[u8],
    group: GroupKey,
    what: &str,
    content: mls::ContentType,
    epoch: Option<u64>,
) -> Result<(), Failure> {
    let framed = mls::parse_framed(bytes)
        .map_err(|e| Failure::bad_request(format!("the {what} is not an MLS message: {e}")))?;
    let mut group_id = group.creator.as_bytes().to_vec();
    group_id.extend_from_slice(&group.group_id);
    if framed.group_id != group_id.as_slice() {
        return Err(Failure::bad_request(format!(
            "the {what} is of another MLS group"
        )));
    }
    if let Some(epoch) = epoch
        && framed.epoch != epoch
    {
        return Err(Failure::bad_request(format!(
            "the {what} was made in epoch {}, not the request's {epoch}",
            framed.epoch
        )));
    }
    if framed.content_type != content {
        return Err(Failure::bad_request(format!(
            "the {what}'s MLS message has content type {:?}, not {content:?}",
            framed.content_type
        )));
    }
    Ok(())
}

/// What the gateway can check of a Commit without the group's keys
/// (docs/protocol.md §9): its envelope is an `Envelope` holding a `GroupMessage` of this group, whose `mls` is an MLS 1.0
/// `PrivateMessage` or `PublicMessage` with the group's MLS group id
/// (`creator_box || group_id`), the request's epoch and content type Commit;
/// a welcome envelope carries the same Commit and an MLS Welcome. Who made the
/// Commit and what it changes are encrypted and stay unchecked.
fn check_commit(req: &pb::GroupCommitRequest, group: GroupKey) -> Result<(), Failure> {
    let message = group_message(&req.envelope, group, "Commit")?;
    check_framed(
        &message.mls,
        group,
        "Commit",
        mls::ContentType::Commit,
        Some(req.epoch),
    )?;
    if !req.welcome_envelope.is_empty() {
        let welcome = group_message(&req.welcome_envelope, group, "Commit")?;
        if welcome.mls != message.mls {
            return Err(Failure::bad_request(
                "the welcome envelope carries another Commit",
            ));
        }
        if mls::wire_format_of(&welcome.welcome).ok() != Some(mls::WireFormat::Welcome) {
            return Err(Failure::bad_request(
                "the welcome envelope carries no MLS Welcome",
            ));
        }
    }
    Ok(())
}

/// The same for a GroupSend: an application message of the group, made in the
/// request's epoch.
fn check_group_send(req: &pb::GroupSendRequest, group: GroupKey) -> Result<(), Failure> {
    let message = group_message(&req.envelope, group, "message")?;
    check_framed(
        &message.mls,
        group,
        "message",
        mls::ContentType::Application,
        Some(req.epoch),
    )
}

/// The same for a LeaveGroup's envelope, when there is one: each of its
/// `proposals` is a proposal of the group (the leaving devices' Removes).
fn check_leave(req: &pb::LeaveGroupRequest, group: GroupKey) -> Result<(), Failure> {
    if req.envelope.is_empty() {
        return Ok(());
    }
    let message = group_message(&req.envelope, group, "leave")?;
    if message.proposals.is_empty() && message.mls.is_empty() {
        return Err(Failure::bad_request(
            "the leave's envelope carries no MLS proposal",
        ));
    }
    for proposal in &message.proposals {
        check_framed(proposal, group, "leave", mls::ContentType::Proposal, None)?;
    }
    if !message.mls.is_empty() {
        check_framed(
            &message.mls,
            group,
            "leave",
            mls::ContentType::Proposal,
            None,
        )?;
    }
    Ok(())
}

/// GroupCommit: compare-and-set of the epoch, then delivery of the Commit's fan-out.
pub(crate) async fn group_commit(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::GroupCommitResponse, Failure> {
    let req: pb::GroupCommitRequest = decode(body, "GroupCommitRequest")?;
    let group = parse_group(&req.creator_box, &req.group_id)?;
    let message_id = parse_message_id(&req.message_id)?;
    let max = shared.settings.max_recipients_per_send;
    let add = parse_boxes(&req.add_boxes, max, "added boxes")?;
    let remove = parse_boxes(&req.remove_boxes, max, "removed boxes")?;
    let welcome_boxes = parse_boxes(&req.welcome_boxes, max, "welcome boxes")?;
    check_envelope(shared, &req.envelope, true)?;
    check_envelope(shared, &req.welcome_envelope, !welcome_boxes.is_empty())?;
    check_commit(&req, group)?;
    super::may_store(shared, caller)?;
    let commit = Commit {
        group,
        sender_box: caller.box_id,
        sender_device: caller.device_id,
        sender_identity_key: caller.identity_key,
        message_id,
        epoch: req.epoch,
        add: &add,
        remove: &remove,
        envelope: &req.envelope,
        welcome_envelope: &req.welcome_envelope,
        welcome_boxes: &welcome_boxes,
    };
    let store = &shared.store;
    let limits = &store.limits;
    let now = now_ms();
    let outcome = transact!(store, |txn| groups::commit(txn, limits, max, &commit, now)
        .await)?;
    if outcome == Outcome::NotFound {
        return Err(unknown_group());
    }
    // Read after the Commit's transaction: holds its own entry (unless already
    // delivered) and every earlier one still pending, including those of the
    // epoch a conflict answer reports.
    let delivery = deliver_group(shared, group).await?;
    let committed = settle_for(outcome, &delivery, caller.box_id)?;
    // Paid afterwards: the members are known only now.
    let members = committed.state.members.len() as u64;
    let bytes = (req.envelope.len() as u64).saturating_mul(members)
        + (req.welcome_envelope.len() as u64).saturating_mul(welcome_boxes.len() as u64);
    shared.limits.stored(caller.box_id, bytes);
    if !delivery.missing.is_empty() {
        return Err(undelivered("Commit"));
    }
    Ok(pb::GroupCommitResponse {
        state: Some(state_message(&committed.state)),
    })
}

/// GroupSend: one envelope into every member box. The epoch check and the
/// fan-out are one transaction (the message becomes the group's next outbox
/// entry, ordered with its Commits), then the group's pending entries are
/// delivered in order. A box the message has not reached yet gets it later
/// from the outbox; its result says `UNAVAILABLE` meanwhile.
pub(crate) async fn group_send(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::GroupSendResponse, Failure> {
    let req: pb::GroupSendRequest = decode(body, "GroupSendRequest")?;
    let group = parse_group(&req.creator_box, &req.group_id)?;
    let message_id = parse_message_id(&req.message_id)?;
    check_envelope(shared, &req.envelope, true)?;
    check_group_send(&req, group)?;
    super::may_store(shared, caller)?;
    super::attachments::keep_referenced(shared, &req.attachments).await?;
    let store = &shared.store;
    let limits = &store.limits;
    let message = GroupMessage {
        group,
        sender_box: caller.box_id,
        sender_device: caller.device_id,
        sender_identity_key: caller.identity_key,
        message_id,
        epoch: req.epoch,
        envelope: &req.envelope,
    };
    let now = now_ms();
    let outcome = transact!(store, |txn| groups::send(txn, limits, &message, now).await)?;
    if outcome == Outcome::NotFound {
        return Err(unknown_group());
    }
    // Read after the send's transaction: holds its entry (unless another
    // request delivered it already) and every earlier one still pending.
    let delivery = deliver_group(shared, group).await?;
    let sent = settle_for(outcome, &delivery, caller.box_id)?;
    // One copy per member box, paid afterwards: the members are known only now.
    let bytes = (req.envelope.len() as u64).saturating_mul(sent.state.members.len() as u64);
    shared.limits.stored(caller.box_id, bytes);
    let results = sent
        .state
        .members
        .iter()
        .map(|b| {
            let (status, seq) = match sent
                .fan_out
                .as_ref()
                .and_then(|entry| delivery.enqueued.get(&(entry.id, *b)))
            {
                Some(Ok(seq)) => (Status::Ok, *seq),
                Some(Err(status)) => (*status, 0),
                // Delivered by another request, or still waiting in the outbox.
                None if delivery.missing.contains(b) => (Status::Unavailable, 0),
                None => (Status::Ok, 0),
            };
            pb::SendResult {
                box_id: b.as_bytes().to_vec(),
                status: status as i32,
                seq,
                ..pb::SendResult::default()
            }
        })
        .collect();
    Ok(pb::GroupSendResponse {
        state: Some(state_message(&sent.state)),
        results,
    })
}

/// LeaveGroup: the caller's box stops being a member.
pub(crate) async fn leave_group(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::LeaveGroupResponse, Failure> {
    let req: pb::LeaveGroupRequest = decode(body, "LeaveGroupRequest")?;
    let group = parse_group(&req.creator_box, &req.group_id)?;
    let message_id = parse_message_id(&req.message_id)?;
    check_envelope(shared, &req.envelope, false)?;
    check_leave(&req, group)?;
    let store = &shared.store;
    let limits = &store.limits;
    let now = now_ms();
    let (member, device) = (caller.box_id, caller.device_id);
    let outcome = transact!(store, |txn| groups::leave(
        txn,
        limits,
        group,
        member,
        device,
        caller.identity_key,
        message_id,
        &req.envelope,
        now
    )
    .await)?;
    if outcome == Outcome::NotFound {
        return Err(unknown_group());
    }
    let delivery = deliver_group(shared, group).await?;
    settle_for(outcome, &delivery, caller.box_id)?;
    // A retry answers NOT_GROUP_MEMBER, which tells the client it has left.
    if !delivery.missing.is_empty() {
        return Err(undelivered("leave"));
    }
    Ok(pb::LeaveGroupResponse {})
}

/// GroupInfo: the epoch and member boxes, for members.
pub(crate) async fn group_info(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::GroupInfoResponse, Failure> {
    let req: pb::GroupInfoRequest = decode(body, "GroupInfoRequest")?;
    let group = parse_group(&req.creator_box, &req.group_id)?;
    let store = &shared.store;
    let member = caller.box_id;
    let (outcome, entries) = transact!(store, |txn| {
        let outcome = groups::state_for(txn, group, member).await?;
        let entries = outbox::of_group(txn, group).await?;
        Ok((outcome, entries))
    })?;
    let delivery = deliver(shared, &entries).await;
    let state = settle_for(outcome, &delivery, caller.box_id)?;
    Ok(pb::GroupInfoResponse {
        state: Some(state_message(&state)),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{TestDevice, TestEnv};
    use prost::Message;
    use rossby_keyspace::MessageId;
    use rossby_protocol::mls;
    use rossby_protocol::pb::{self, Method, Status};
    use rossby_protocol::status::status_of;

    const GROUP: [u8; 16] = [7; 16];

    async fn create(env: &TestEnv, by: &TestDevice) -> pb::Response {
        let req = pb::CreateGroupRequest {
            group_id: GROUP.to_vec(),
        };
        env.call_as(by, 1, Method::CreateGroup, &req).await
    }

    fn commit(
        creator: &TestDevice,
        epoch: u64,
        add: &[&TestDevice],
        remove: &[&TestDevice],
        payload: &[u8],
    ) -> pb::GroupCommitRequest {
        pb::GroupCommitRequest {
            creator_box: creator.box_id.as_bytes().to_vec(),
            group_id: GROUP.to_vec(),
            epoch,
            message_id: MessageId::new().as_bytes().to_vec(),
            add_boxes: add.iter().map(|d| d.box_id.as_bytes().to_vec()).collect(),
            remove_boxes: remove
                .iter()
                .map(|d| d.box_id.as_bytes().to_vec())
                .collect(),
            envelope: commit_envelope(creator, epoch, payload),
            ..pb::GroupCommitRequest::default()
        }
    }

    /// An envelope of a Commit made in `epoch` of the test group of `creator`,
    /// as far as the gateway can tell: `payload` stands for the encrypted part
    /// (and is kept in `ciphertext` to tell envelopes apart).
    fn commit_envelope(creator: &TestDevice, epoch: u64, payload: &[u8]) -> Vec<u8> {
        group_envelope(creator, epoch, mls::ContentType::Commit, payload)
    }

    /// The same for any content type: a leave's proposal goes into
    /// `proposals`, anything else into `mls`.
    fn group_envelope(
        creator: &TestDevice,
        epoch: u64,
        content: mls::ContentType,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut group_id = creator.box_id.as_bytes().to_vec();
        group_id.extend_from_slice(&GROUP);
        let framed = mls::frame_private(&group_id, epoch, content, payload).unwrap();
        let (mls, proposals) = match content {
            mls::ContentType::Proposal => (Vec::new(), vec![framed]),
            _ => (framed, Vec::new()),
        };
        pb::Envelope {
            version: 1,
            ciphertext: payload.to_vec(),
            group: Some(pb::GroupMessage {
                creator_box: creator.box_id.as_bytes().to_vec(),
                group_id: GROUP.to_vec(),
                mls,
                proposals,
                ..pb::GroupMessage::default()
            }),
            ..pb::Envelope::default()
        }
        .encode_to_vec()
    }

    /// What [`commit_envelope`] was given.
    fn tag(envelope: &[u8]) -> Vec<u8> {
        pb::Envelope::decode(envelope).unwrap().ciphertext
    }

    fn state(resp: &pb::Response) -> pb::GroupState {
        TestEnv::body::<pb::GroupCommitResponse>(resp)
            .state
            .unwrap()
    }

    #[tokio::test]
    async fn commits_are_ordered_by_compare_and_set() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let carol = env.register("carol@example.com").await;
        let resp = create(&env, &alice).await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        // Creating again is harmless.
        assert_eq!(status_of(&create(&env, &alice).await), Status::Ok);

        // Alice adds Bob in epoch 0.
        let add_bob = commit(&alice, 0, &[&bob], &[], b"commit-1");
        let resp = env.call_as(&alice, 1, Method::GroupCommit, &add_bob).await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        let s = state(&resp);
        assert_eq!(s.epoch, 1);
        assert_eq!(s.members.len(), 2);
        // A retry of the same Commit is answered with the state it produced.
        let resp = env.call_as(&alice, 1, Method::GroupCommit, &add_bob).await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        assert_eq!(state(&resp).epoch, 1);
        // Bob got the Commit once.
        let fetched = env.fetch(&bob, 0).await;
        assert_eq!(fetched.envelopes.len(), 1);
        assert_eq!(tag(&fetched.envelopes[0].envelope), b"commit-1");

        // Both commit in epoch 1: the first wins, the second is told the epoch.
        let resp = env
            .call_as(
                &bob,
                1,
                Method::GroupCommit,
                &commit(&alice, 1, &[&carol], &[], b"b"),
            )
            .await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        let resp = env
            .call_as(
                &alice,
                1,
                Method::GroupCommit,
                &commit(&alice, 1, &[], &[], b"a"),
            )
            .await;
        assert_eq!(status_of(&resp), Status::EpochConflict);
        let current = pb::GroupState::decode(resp.body.as_slice()).unwrap();
        assert_eq!(current.epoch, 2);
        assert_eq!(current.members.len(), 3);
        // The loser's Commit reached nobody.
        assert_eq!(env.fetch(&carol, 0).await.envelopes.len(), 1);
        let alice_queue = env.fetch(&alice, 0).await;
        assert!(
            alice_queue
                .envelopes
                .iter()
                .all(|e| tag(&e.envelope) != b"a")
        );

        // Removing Carol: she still gets the Commit that removes her, then nothing.
        let resp = env
            .call_as(
                &alice,
                1,
                Method::GroupCommit,
                &commit(&alice, 2, &[], &[&carol], b"rm"),
            )
            .await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        let carol_queue = env.fetch(&carol, 0).await;
        assert_eq!(tag(&carol_queue.envelopes.last().unwrap().envelope), b"rm");
        let resp = env
            .call_as(
                &carol,
                1,
                Method::GroupCommit,
                &commit(&alice, 3, &[], &[], b"x"),
            )
            .await;
        assert_eq!(status_of(&resp), Status::NotGroupMember);
        // A committer cannot remove its own box.
        let resp = env
            .call_as(
                &alice,
                1,
                Method::GroupCommit,
                &commit(&alice, 3, &[], &[&alice], b"x"),
            )
            .await;
        assert_eq!(status_of(&resp), Status::BadRequest);
    }

    #[tokio::test]
    async fn sends_reach_every_member_box_and_leaving_stops_them() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let alice2 = env.link(&alice, "laptop").await;
        let bob = env.register("bob@example.com").await;
        let carol = env.register("carol@example.com").await;
        assert_eq!(status_of(&create(&env, &alice).await), Status::Ok);
        let resp = env
            .call_as(
                &alice,
                1,
                Method::GroupCommit,
                &commit(&alice, 0, &[&bob], &[], b"c"),
            )
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        let send_in = |payload: &[u8], epoch: u64| pb::GroupSendRequest {
            creator_box: alice.box_id.as_bytes().to_vec(),
            group_id: GROUP.to_vec(),
            message_id: MessageId::new().as_bytes().to_vec(),
            envelope: group_envelope(&alice, epoch, mls::ContentType::Application, payload),
            epoch,
            attachments: Vec::new(),
        };
        let send = |payload: &[u8]| send_in(payload, 1);
        // What is not an application message of the group in this epoch is
        // refused before anything is stored.
        for (bad, reason) in [
            (commit_envelope(&alice, 1, b"c2"), "not Application"),
            (commit_envelope(&bob, 1, b"x"), "of another group"),
            (b"garbage".to_vec(), "not a protobuf Envelope"),
        ] {
            let req = pb::GroupSendRequest {
                envelope: bad,
                ..send(b"-")
            };
            let resp = env.call_as(&bob, 1, Method::GroupSend, &req).await;
            assert_eq!(status_of(&resp), Status::BadRequest);
            assert!(resp.message.contains(reason), "{}", resp.message);
        }
        let mut mismatched = send(b"-");
        mismatched.epoch = 2;
        let resp = env.call_as(&bob, 1, Method::GroupSend, &mismatched).await;
        assert!(resp.message.contains("made in epoch 1"), "{}", resp.message);
        let req = send(b"hello");
        let resp = env.call_as(&bob, 1, Method::GroupSend, &req).await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        let sent: pb::GroupSendResponse = TestEnv::body(&resp);
        assert_eq!(sent.results.len(), 2);
        assert!(sent.results.iter().all(|r| r.status == Status::Ok as i32));
        // A retry enqueues nothing twice.
        let again: pb::GroupSendResponse =
            TestEnv::body(&env.call_as(&bob, 1, Method::GroupSend, &req).await);
        assert_eq!(again.results, sent.results);
        for device in [&alice, &alice2] {
            let queue = env.fetch(device, 0).await;
            assert_eq!(tag(&queue.envelopes.last().unwrap().envelope), b"hello");
            let hellos = queue
                .envelopes
                .iter()
                .filter(|e| tag(&e.envelope) == b"hello");
            assert_eq!(hellos.count(), 1);
        }
        // Outsiders can neither send nor read the state.
        let resp = env.call_as(&carol, 1, Method::GroupSend, &send(b"x")).await;
        assert_eq!(status_of(&resp), Status::NotGroupMember);
        // A message of an old epoch is refused with the current one.
        let stale = send_in(b"old", 0);
        let resp = env.call_as(&bob, 1, Method::GroupSend, &stale).await;
        assert_eq!(status_of(&resp), Status::EpochConflict);
        assert_eq!(
            pb::GroupState::decode(resp.body.as_slice()).unwrap().epoch,
            1
        );
        let info = pb::GroupInfoRequest {
            creator_box: alice.box_id.as_bytes().to_vec(),
            group_id: GROUP.to_vec(),
        };
        let resp = env.call_as(&carol, 1, Method::GroupInfo, &info).await;
        assert_eq!(status_of(&resp), Status::NotGroupMember);
        let unknown = pb::GroupInfoRequest {
            creator_box: alice.box_id.as_bytes().to_vec(),
            group_id: vec![9; 16],
        };
        let resp = env.call_as(&alice, 1, Method::GroupInfo, &unknown).await;
        assert_eq!(status_of(&resp), Status::NotFound);

        // Bob leaves: Alice's box gets his proposals, he gets nothing more.
        let leave = pb::LeaveGroupRequest {
            creator_box: alice.box_id.as_bytes().to_vec(),
            group_id: GROUP.to_vec(),
            message_id: MessageId::new().as_bytes().to_vec(),
            envelope: group_envelope(&alice, 1, mls::ContentType::Proposal, b"bye"),
        };
        let resp = env.call_as(&bob, 1, Method::LeaveGroup, &leave).await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        let last = env.fetch(&alice, 0).await.envelopes.pop().unwrap();
        assert_eq!(tag(&last.envelope), b"bye");
        let resp = env.call_as(&alice, 1, Method::GroupInfo, &info).await;
        let info_state = TestEnv::body::<pb::GroupInfoResponse>(&resp).state.unwrap();
        assert_eq!(info_state.members, vec![alice.box_id.as_bytes().to_vec()]);
        assert_eq!(info_state.epoch, 1);
        let bob_before = env.fetch(&bob, 0).await.envelopes.len();
        let resp = env
            .call_as(&alice, 1, Method::GroupSend, &send(b"later"))
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        assert_eq!(env.fetch(&bob, 0).await.envelopes.len(), bob_before);
    }

    #[tokio::test]
    async fn bad_group_requests_are_rejected() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let req = pb::CreateGroupRequest {
            group_id: vec![1; 3],
        };
        let resp = env.call_as(&alice, 1, Method::CreateGroup, &req).await;
        assert_eq!(status_of(&resp), Status::BadRequest);
        assert_eq!(status_of(&create(&env, &alice).await), Status::Ok);
        let mut c = commit(&alice, 0, &[], &[], b"");
        c.envelope = Vec::new();
        let resp = env.call_as(&alice, 1, Method::GroupCommit, &c).await;
        assert_eq!(status_of(&resp), Status::BadRequest, "empty envelope");
        c.envelope = b"x".to_vec();
        c.message_id = vec![0; 16];
        let resp = env.call_as(&alice, 1, Method::GroupCommit, &c).await;
        assert_eq!(status_of(&resp), Status::BadRequest, "message id");
        let mut c = commit(&alice, 0, &[], &[], b"x");
        c.welcome_boxes = vec![vec![5; 16]];
        c.welcome_envelope = b"w".to_vec();
        let resp = env.call_as(&alice, 1, Method::GroupCommit, &c).await;
        assert_eq!(
            status_of(&resp),
            Status::BadRequest,
            "welcome to an outsider"
        );
        let mut c = commit(&alice, 0, &[], &[], b"x");
        c.add_boxes = vec![vec![5; 16], vec![5; 16]];
        let resp = env.call_as(&alice, 1, Method::GroupCommit, &c).await;
        assert_eq!(status_of(&resp), Status::BadRequest, "duplicate boxes");
    }

    #[tokio::test]
    async fn commits_the_gateway_can_tell_are_wrong_are_refused() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        assert_eq!(status_of(&create(&env, &alice).await), Status::Ok);
        let framed = |group_id: &[u8], epoch: u64, content: mls::ContentType| {
            let mut c = commit(&alice, 0, &[&bob], &[], b"x");
            let mut envelope = pb::Envelope::decode(c.envelope.as_slice()).unwrap();
            let message = envelope.group.as_mut().unwrap();
            message.mls = mls::frame_private(group_id, epoch, content, b"x").unwrap();
            c.envelope = envelope.encode_to_vec();
            c
        };
        let mut right_group = alice.box_id.as_bytes().to_vec();
        right_group.extend_from_slice(&GROUP);
        let mut garbage = commit(&alice, 0, &[&bob], &[], b"x");
        garbage.envelope = b"not an envelope at all".to_vec();
        let mut no_group = commit(&alice, 0, &[&bob], &[], b"x");
        no_group.envelope = pb::Envelope::default().encode_to_vec();
        let mut not_mls = commit(&alice, 0, &[&bob], &[], b"x");
        let mut envelope = pb::Envelope::decode(not_mls.envelope.as_slice()).unwrap();
        envelope.group.as_mut().unwrap().mls = b"c1".to_vec();
        not_mls.envelope = envelope.encode_to_vec();
        let mut bad_welcome = commit(&alice, 0, &[&bob], &[], b"x");
        bad_welcome.welcome_boxes = vec![bob.box_id.as_bytes().to_vec()];
        bad_welcome.welcome_envelope = commit(&alice, 0, &[], &[], b"other").envelope;
        for (what, c) in [
            ("garbage", garbage),
            ("no group message", no_group),
            ("not MLS", not_mls),
            (
                "another group",
                framed(&[9; 32], 0, mls::ContentType::Commit),
            ),
            (
                "another epoch",
                framed(&right_group, 5, mls::ContentType::Commit),
            ),
            (
                "an application message",
                framed(&right_group, 0, mls::ContentType::Application),
            ),
            ("a welcome of another Commit", bad_welcome),
        ] {
            let resp = env.call_as(&alice, 1, Method::GroupCommit, &c).await;
            assert_eq!(status_of(&resp), Status::BadRequest, "{what}");
        }
        // Nothing was stored: the group is where it was, Bob got nothing.
        let info = pb::GroupInfoRequest {
            creator_box: alice.box_id.as_bytes().to_vec(),
            group_id: GROUP.to_vec(),
        };
        let resp = env.call_as(&alice, 1, Method::GroupInfo, &info).await;
        let state = TestEnv::body::<pb::GroupInfoResponse>(&resp).state.unwrap();
        assert_eq!((state.epoch, state.members.len()), (0, 1));
        assert!(env.fetch(&bob, 0).await.envelopes.is_empty());
        // A well-formed Commit passes.
        let c = framed(&right_group, 0, mls::ContentType::Commit);
        let resp = env.call_as(&alice, 1, Method::GroupCommit, &c).await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
    }
}
