//! MLS groups as the gateway runs them (gateway/src/api/groups.rs): create,
//! compare-and-set Commits and leaves recorded with their fan-out in the
//! creator's outbox, delivery of that outbox in order, and group sends that
//! deliver pending handshakes first.

use super::messaging::{fingerprint, refused_recipient};
use super::{Answer, MAX_GROUP_MEMBERS, REISSUES, answer};
use crate::model::Life;
use crate::payload::Payload;
use crate::world::World;
use rossby_keyspace::{BoxId, DeviceId, MessageId, RegionId};
use rossby_storage::tables::groups::{self, Commit, GroupKey, GroupMessage, Outcome};
use rossby_storage::tables::outbox::{self, Entry};
use rossby_storage::tables::queue::{self, ANY_DEVICE_LIST, NewEnvelope};
use rossby_storage::transact;
use std::collections::BTreeSet;

/// How old an outbox entry must be before a resumption delivers it (the
/// gateway's `OUTBOX_GRACE`): younger ones belong to the request delivering them.
pub const OUTBOX_GRACE_MS: u64 = 5_000;

/// Creates a group.
pub(super) async fn create(w: &World, group: GroupKey) -> String {
    for _ in 0..=REISSUES {
        let now = w.now();
        let result = transact!(w.store, |txn| groups::create(txn, group, now).await);
        match answer(w, "create group", result) {
            Answer::Done(Outcome::Done(state)) => {
                let mut m = w.model.borrow_mut();
                m.group_state(group, &state);
                m.groups.entry(group).or_default().created = true;
                return "ok".into();
            }
            Answer::Done(other) => {
                w.fail(
                    "a fresh group is created at epoch 0",
                    format!("{group:?}: {other:?}"),
                );
                return "refused".into();
            }
            Answer::Refused(err) => {
                let mut m = w.model.borrow_mut();
                if m.box_life(group.creator) == Life::Alive {
                    m.fail("a live box can create groups", format!("{group:?}: {err}"));
                }
                return format!("refused: {err}");
            }
            Answer::Unknown | Answer::GaveUp => continue,
        }
    }
    "unknown".into()
}

/// A Commit to make.
pub(super) struct CommitPlan<'a> {
    pub group: GroupKey,
    pub sender_box: BoxId,
    pub sender_device: DeviceId,
    pub msg: MessageId,
    pub epoch: u64,
    pub add: &'a [BoxId],
    pub remove: &'a [BoxId],
}

/// GroupCommit: compare-and-set of the epoch, then delivery of the group's
/// pending fan-out. Re-issued with the same message id while its outcome is
/// unknown (the retry is answered as a duplicate once the first was applied).
pub(super) async fn commit(w: &World, plan: &CommitPlan<'_>) -> String {
    let limits = &w.store.limits;
    let group = plan.group;
    let epoch_after = plan.epoch + 1;
    let envelope = Payload::Commit {
        group,
        epoch: epoch_after,
        msg: plan.msg,
        welcome: false,
    }
    .encode();
    let welcome = Payload::Commit {
        group,
        epoch: epoch_after,
        msg: plan.msg,
        welcome: true,
    }
    .encode();
    let commit = Commit {
        group,
        sender_box: plan.sender_box,
        sender_device: plan.sender_device,
        // The simulation models storage, not keys.
        sender_identity_key: None,
        message_id: plan.msg,
        epoch: plan.epoch,
        add: plan.add,
        remove: plan.remove,
        envelope: &envelope,
        welcome_envelope: if plan.add.is_empty() { &[] } else { &welcome },
        welcome_boxes: plan.add,
    };
    let mut result = "unknown".to_string();
    for _ in 0..=REISSUES {
        let now = w.now();
        let outcome = transact!(w.store, |txn| groups::commit(
            txn,
            limits,
            MAX_GROUP_MEMBERS,
            &commit,
            now
        )
        .await);
        result = match answer(w, "commit", outcome) {
            Answer::Done(Outcome::Done(committed)) => {
                w.model.borrow_mut().committed(
                    group,
                    plan.sender_device,
                    plan.msg,
                    plan.epoch,
                    &committed,
                );
                format!(
                    "epoch {}{}",
                    committed.state.epoch,
                    if committed.duplicate { " (dup)" } else { "" }
                )
            }
            Answer::Done(Outcome::Conflict(state)) => {
                w.model.borrow_mut().group_state(group, &state);
                format!("conflict, group at {}", state.epoch)
            }
            Answer::Done(other) => format!("{other:?}"),
            Answer::Refused(err) => format!("refused: {err}"),
            Answer::Unknown | Answer::GaveUp => continue,
        };
        break;
    }
    // Delivered whatever the outcome, as the gateway does: the answer may report
    // an epoch whose handshake is still in the outbox.
    let missing = deliver_group(w, group).await;
    format!("{result}; {missing}")
}

/// GroupSend: the epoch check and the message's fan-out in one transaction (the
/// group's next outbox entry), then delivery of the group's pending fan-out in
/// order. Re-issued with the same message id while its outcome is unknown (a
/// second entry of one message enqueues nothing twice: the enqueue dedups).
pub(super) async fn send(
    w: &World,
    group: GroupKey,
    sender_box: BoxId,
    sender_device: DeviceId,
    msg: MessageId,
    epoch: u64,
) -> String {
    let limits = &w.store.limits;
    let payload = Payload::App { group, epoch, msg }.encode();
    let message = GroupMessage {
        group,
        sender_box,
        sender_device,
        sender_identity_key: None,
        message_id: msg,
        epoch,
        envelope: &payload,
    };
    let mut result = "unknown".to_string();
    for _ in 0..=REISSUES {
        let now = w.now();
        let outcome = transact!(w.store, |txn| groups::send(txn, limits, &message, now)
            .await);
        result = match answer(w, "group send", outcome) {
            Answer::Done(Outcome::Done(sent)) => {
                w.model.borrow_mut().group_state(group, &sent.state);
                format!("sent in epoch {}", sent.state.epoch)
            }
            Answer::Done(Outcome::Conflict(state)) => {
                w.model.borrow_mut().group_state(group, &state);
                format!("conflict, group at {}", state.epoch)
            }
            Answer::Done(other) => format!("{other:?}"),
            Answer::Refused(err) => format!("refused: {err}"),
            Answer::Unknown | Answer::GaveUp => continue,
        };
        break;
    }
    let missing = deliver_group(w, group).await;
    format!("{result}; {missing}")
}

/// Enqueues one envelope into one box, re-issuing while the outcome is unknown.
/// `Ok` with a description once the box has it (or refuses it for good, being
/// gone), `Err` when it could not be delivered.
async fn enqueue_one(
    w: &World,
    box_id: BoxId,
    env: &NewEnvelope,
    limits: &rossby_storage::tables::Limits,
) -> Result<String, String> {
    for _ in 0..=REISSUES {
        let now = w.now();
        w.model.borrow_mut().intend(box_id, fingerprint(env), now);
        let envelopes = std::slice::from_ref(env);
        let result = transact!(w.store, |txn| queue::enqueue(
            txn, limits, box_id, envelopes, now
        )
        .await);
        match answer(w, "group enqueue", result) {
            Answer::Done(mut outcomes) => match outcomes.pop() {
                Some(Ok(enqueued)) => {
                    let key = (box_id, env.sender.dedup_device(), env.message_id);
                    w.model.borrow_mut().enqueued(key, enqueued, now);
                    return Ok(format!("seq {}", enqueued.seq));
                }
                Some(Err(err)) => return Ok(refused_recipient(w, box_id, &err)),
                None => {
                    w.fail("an enqueue answers per envelope", "no outcome");
                    return Err("no outcome".into());
                }
            },
            Answer::Refused(err) => return Err(format!("refused: {err}")),
            Answer::Unknown | Answer::GaveUp => continue,
        }
    }
    Err("unknown".into())
}

/// Leaves a group, then delivers its fan-out.
pub(super) async fn leave(
    w: &World,
    group: GroupKey,
    member: BoxId,
    device: DeviceId,
    msg: MessageId,
) -> String {
    let limits = &w.store.limits;
    let epoch = w
        .model
        .borrow()
        .groups
        .get(&group)
        .map_or(0, |g| g.state.epoch);
    let envelope = Payload::Leave { group, epoch, msg }.encode();
    let mut result = "unknown".to_string();
    for _ in 0..=REISSUES {
        let now = w.now();
        let outcome = transact!(w.store, |txn| groups::leave(
            txn, limits, group, member, device, None, msg, &envelope, now
        )
        .await);
        result = match answer(w, "leave", outcome) {
            Answer::Done(Outcome::Done(committed)) => {
                w.model.borrow_mut().group_state(group, &committed.state);
                "ok".into()
            }
            // A retry of an applied leave finds the box no longer a member.
            Answer::Done(other) => format!("{other:?}"),
            Answer::Refused(err) => format!("refused: {err}"),
            Answer::Unknown | Answer::GaveUp => continue,
        };
        break;
    }
    let missing = deliver_group(w, group).await;
    format!("{result}; {missing}")
}

/// Reads and delivers every pending entry of a group.
async fn deliver_group(w: &World, group: GroupKey) -> String {
    let entries = transact!(w.store, |txn| outbox::of_group(txn, group).await);
    match answer(w, "outbox of group", entries) {
        Answer::Done(entries) => {
            let missing = deliver(w, &entries).await;
            format!("{} entries, {} boxes missing", entries.len(), missing.len())
        }
        _ => "outbox unread".into(),
    }
}

/// Delivers entries in order; a box that misses one gets none of the later
/// ones. Returns the boxes still missing something.
async fn deliver(w: &World, entries: &[Entry]) -> BTreeSet<BoxId> {
    let limits = &w.store.limits;
    let mut missing = BTreeSet::new();
    for entry in entries {
        let mut done = Vec::new();
        for recipient in &entry.recipients {
            if missing.contains(&recipient.box_id) {
                continue;
            }
            let env = entry.envelope_for(recipient, ANY_DEVICE_LIST);
            match enqueue_one(w, recipient.box_id, &env, limits).await {
                Ok(_) => done.push(recipient.box_id),
                Err(_) => {
                    missing.insert(recipient.box_id);
                }
            }
        }
        if done.is_empty() {
            continue;
        }
        let (creator, id) = (entry.group.creator, entry.id);
        // A failure leaves the boxes in the entry: a later delivery finds them
        // deduplicated.
        let finished = transact!(w.store, |txn| outbox::finish(txn, creator, id, &done).await);
        let _ = answer(w, "outbox finish", finished);
    }
    missing
}

/// Delivers a region's outbox entries recorded at or before `cutoff`, each
/// group's in order (the gateway's `resume_outboxes`).
pub async fn resume_outbox(w: &World, region: RegionId, cutoff: u64) -> String {
    let mut after = None;
    let mut seen: BTreeSet<GroupKey> = BTreeSet::new();
    let mut delivered = 0;
    loop {
        let page = transact!(w.store, |txn| outbox::pending(txn, region, after, 64).await);
        let page = match answer(w, "outbox pending", page) {
            Answer::Done(page) => page,
            _ => return format!("interrupted after {delivered} groups"),
        };
        let Some(last) = page.last() else {
            break;
        };
        after = Some((last.group.creator, last.id));
        for entry in &page {
            if entry.created_at_ms > cutoff || !seen.insert(entry.group) {
                continue;
            }
            let group = entry.group;
            let entries = transact!(w.store, |txn| outbox::of_group(txn, group).await);
            let Answer::Done(entries) = answer(w, "outbox of group", entries) else {
                continue;
            };
            let due: Vec<Entry> = entries
                .into_iter()
                .take_while(|e| e.created_at_ms <= cutoff)
                .collect();
            deliver(w, &due).await;
            delivered += 1;
        }
        if page.len() < 64 {
            break;
        }
    }
    format!("{delivered} groups in region {region}")
}
