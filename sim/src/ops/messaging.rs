//! One-to-one messaging: send (with the device-list version dance a client
//! does), fetch and acknowledge, and the expiry sweep.

use super::{AckPlan, Answer, REISSUES, answer};
use crate::model::{Fingerprint, Life};
use crate::payload::Payload;
use crate::world::{World, short};
use rossby_keyspace::{BoxId, DeviceId, MessageId, RegionId};
use rossby_storage::tables::queue::{FetchLimits, NewEnvelope, Sender};
use rossby_storage::tables::{devices, queue};
use rossby_storage::{Error, transact};

/// How often a send is re-encrypted for a changed device list before the
/// client gives up (each round is one more device-list change that raced it).
const STALE_ROUNDS: usize = 4;

/// Sends `messages` from one device to `recipient` in one enqueue batch, as a
/// client does: learn the recipient's device-list version, enqueue, and on a
/// stale list enqueue again against the current one; an unknown outcome is
/// re-issued with the same message ids.
pub(super) async fn send(
    w: &World,
    sender_box: BoxId,
    sender_device: DeviceId,
    recipient: BoxId,
    messages: &[MessageId],
) -> String {
    let limits = &w.store.limits;
    let version = transact!(w.store, |txn| devices::recipients(txn, recipient).await);
    let mut version = match answer(w, "recipients", version) {
        Answer::Done((version, _)) => version,
        Answer::Refused(err) => return refused_recipient(w, recipient, &err),
        Answer::Unknown | Answer::GaveUp => return "could not read the device list".into(),
    };
    let mut pending: Vec<MessageId> = messages.to_vec();
    let mut out = Vec::new();
    let mut tries = 0;
    while !pending.is_empty() && tries <= REISSUES + STALE_ROUNDS {
        tries += 1;
        let now = w.now();
        let envelopes: Vec<NewEnvelope> = pending
            .iter()
            .map(|msg| NewEnvelope {
                sender: Sender::Device {
                    box_id: sender_box,
                    device_id: sender_device,
                    identity_key: None,
                },
                message_id: *msg,
                device_list_version: version,
                payload: Payload::Direct(*msg).encode(),
                wrapped_for: None,
            })
            .collect();
        {
            let mut m = w.model.borrow_mut();
            for env in &envelopes {
                m.intend(recipient, fingerprint(env), now);
            }
        }
        let result = transact!(w.store, |txn| queue::enqueue(
            txn, limits, recipient, &envelopes, now
        )
        .await);
        let outcomes = match answer(w, "enqueue", result) {
            Answer::Done(outcomes) => outcomes,
            Answer::Refused(err) => {
                w.fail("an enqueue answers per envelope", format!("{err}"));
                return format!("refused: {err}");
            }
            Answer::Unknown | Answer::GaveUp => continue,
        };
        if outcomes.len() != envelopes.len() {
            w.fail(
                "an enqueue answers per envelope",
                format!("{} envelopes, {} outcomes", envelopes.len(), outcomes.len()),
            );
            return "bad answer".into();
        }
        let mut again = Vec::new();
        for (env, outcome) in envelopes.iter().zip(outcomes) {
            match outcome {
                Ok(enqueued) => {
                    let key = (recipient, sender_device, env.message_id);
                    w.model.borrow_mut().enqueued(key, enqueued, now);
                    out.push(format!("seq {}{}", enqueued.seq, dup(enqueued.duplicate)));
                }
                Err(Error::StaleDeviceList { version: v, .. }) => {
                    version = v;
                    again.push(env.message_id);
                }
                Err(err) => return refused_recipient(w, recipient, &err),
            }
        }
        pending = again;
    }
    if !pending.is_empty() {
        out.push(format!("{} unresolved", pending.len()));
    }
    out.join(", ")
}

fn dup(duplicate: bool) -> &'static str {
    if duplicate { " (dup)" } else { "" }
}

/// The fingerprint of an envelope a client sends.
pub(super) fn fingerprint(env: &NewEnvelope) -> Fingerprint {
    // The simulation sends as devices only; a sealed sender would be the nil
    // ids (the store keeps no sender for it).
    let (sender_box, sender_device) = match env.sender {
        Sender::Device {
            box_id, device_id, ..
        } => (box_id, device_id),
        Sender::Sealed { .. } => (
            BoxId::with_random(rossby_keyspace::RegionId(0), [0; 16]),
            DeviceId::UNIDENTIFIED,
        ),
    };
    Fingerprint {
        sender_box,
        sender_device,
        message_id: env.message_id,
        payload: env.payload.clone(),
    }
}

/// A recipient refused a send: fine for a box on its way out, an invariant
/// broken for a live one (the simulated boxes accept messages from anyone).
pub(super) fn refused_recipient(w: &World, recipient: BoxId, err: &Error) -> String {
    let mut m = w.model.borrow_mut();
    let gone = matches!(err, Error::RecipientUnavailable | Error::BoxNotFound);
    if !gone || m.box_life(recipient) == Life::Alive {
        m.fail(
            "a live box accepts messages from anyone",
            format!("box {recipient}: {err}"),
        );
    }
    format!("refused: {err}")
}

/// Fetches for a device, then acknowledges as `ack` says.
pub(super) async fn fetch_ack(
    w: &World,
    box_id: BoxId,
    device: DeviceId,
    max_count: usize,
    ack: AckPlan,
) -> String {
    // Taken before the fetch's snapshot: every ack confirmed by now is in it.
    let floor = w
        .model
        .borrow()
        .devices
        .get(&(box_id, device))
        .map_or(0, |d| d.floor);
    let bounds = FetchLimits {
        max_count,
        max_bytes: 1 << 20,
    };
    let result = transact!(w.store, |txn| queue::fetch(txn, box_id, device, bounds)
        .await);
    let fetched = match answer(w, "fetch", result) {
        Answer::Done(fetched) => fetched,
        Answer::Refused(err) => return device_gone(w, box_id, device, &err),
        Answer::Unknown | Answer::GaveUp => return "fetch failed".into(),
    };
    w.model
        .borrow_mut()
        .fetched(box_id, device, floor, max_count, &fetched);
    let seqs: Vec<u64> = fetched.envelopes.iter().map(|e| e.seq).collect();
    let mut summary = format!(
        "got {:?} gap {:?} last {} ptr {}",
        seqs,
        fetched.gap.map(|g| (g.from, g.to)),
        fetched.last_seq,
        fetched.acked
    );
    let keep = match ack {
        AckPlan::None => return summary,
        AckPlan::All => 0,
        AckPlan::AllBut(n) => n,
    };
    let upto = match seqs.len().checked_sub(keep + 1) {
        Some(i) => seqs[i],
        // Nothing of the batch to acknowledge: still move past a gap.
        None => match fetched.gap {
            Some(gap) => gap.to,
            None => return summary,
        },
    };
    summary.push_str(&format!("; {}", ack_upto(w, box_id, device, upto).await));
    summary
}

/// Acknowledges up to `upto` (something the device was handed).
async fn ack_upto(w: &World, box_id: BoxId, device: DeviceId, upto: u64) -> String {
    let limits = &w.store.limits;
    for _ in 0..=REISSUES {
        let now = w.now();
        let result = transact!(w.store, |txn| queue::ack(
            txn, limits, box_id, device, upto, now
        )
        .await);
        match answer(w, "ack", result) {
            Answer::Done(acked) => {
                w.model
                    .borrow_mut()
                    .acked(box_id, device, upto, acked.acked);
                return format!("acked {} (deleted {})", acked.acked, acked.deleted);
            }
            Answer::Refused(err @ Error::AckBeyondLast { .. }) => {
                w.fail(
                    "a device can acknowledge what it was handed",
                    format!("box {box_id} device {device}: {err}"),
                );
                return format!("refused: {err}");
            }
            Answer::Refused(err) => return device_gone(w, box_id, device, &err),
            // Acks are idempotent: issue it again.
            Answer::Unknown | Answer::GaveUp => continue,
        }
    }
    "ack unknown".into()
}

/// Acknowledges a sequence number no box ever reaches: must be refused.
pub(super) async fn ack_beyond(w: &World, box_id: BoxId, device: DeviceId) -> String {
    let limits = &w.store.limits;
    let now = w.now();
    let upto = u64::MAX / 2;
    let result = transact!(w.store, |txn| queue::ack(
        txn, limits, box_id, device, upto, now
    )
    .await);
    match answer(w, "ack beyond", result) {
        Answer::Done(acked) => {
            w.fail(
                "an ack beyond the last sequence number is refused",
                format!("box {box_id} device {device}: acked {}", acked.acked),
            );
            "accepted".into()
        }
        Answer::Refused(Error::AckBeyondLast { .. }) => "refused".into(),
        Answer::Refused(err) => device_gone(w, box_id, device, &err),
        Answer::Unknown | Answer::GaveUp => "unknown".into(),
    }
}

/// A device (or its box) was not found: fine once its removal (or its
/// account's deletion) was issued, an invariant broken before.
fn device_gone(w: &World, box_id: BoxId, device: DeviceId, err: &Error) -> String {
    let mut m = w.model.borrow_mut();
    let gone = matches!(err, Error::DeviceNotFound | Error::BoxNotFound);
    if !gone || m.surely_present(box_id, device) {
        m.fail(
            "a present device is found",
            format!("box {box_id} device {device}: {err}"),
        );
    }
    format!("refused: {err}")
}

/// Sweeps a region's expiry index at clock `now`.
pub(super) async fn sweep(w: &World, region: RegionId, now: u64, batch: usize) -> String {
    match answer(w, "sweep", w.store.sweep(region, now, batch).await) {
        Answer::Done(swept) => format!(
            "entries {} envelopes {} dedups {}",
            swept.entries, swept.envelopes, swept.dedups
        ),
        Answer::Refused(err) => format!("refused: {err}"),
        Answer::Unknown | Answer::GaveUp => "interrupted".into(),
    }
}

/// Fetches and acknowledges for a device until it has everything (the final
/// drain, without faults). Returns false when the device could not be drained.
pub async fn drain(w: &World, box_id: BoxId, device: DeviceId) -> bool {
    for _ in 0..10_000 {
        let floor = w
            .model
            .borrow()
            .devices
            .get(&(box_id, device))
            .map_or(0, |d| d.floor);
        let bounds = FetchLimits {
            max_count: 64,
            max_bytes: 1 << 20,
        };
        let result = transact!(w.store, |txn| queue::fetch(txn, box_id, device, bounds)
            .await);
        let Answer::Done(fetched) = answer(w, "drain fetch", result) else {
            w.fail(
                "a live device can fetch",
                format!("box {box_id} device {device}: the final fetch failed"),
            );
            return false;
        };
        w.model
            .borrow_mut()
            .fetched(box_id, device, floor, bounds.max_count, &fetched);
        let upto = fetched
            .envelopes
            .last()
            .map(|e| e.seq)
            .or(fetched.gap.map(|g| g.to));
        let Some(upto) = upto else {
            w.note(format!(
                "final: drain {} dev {} done at {} (last {})",
                short(box_id.as_bytes()),
                short(device.as_bytes()),
                fetched.acked,
                fetched.last_seq
            ));
            return true;
        };
        let acked = ack_upto(w, box_id, device, upto).await;
        w.note(format!(
            "final: drain {} dev {} fetched up to {upto}: {acked}",
            short(box_id.as_bytes()),
            short(device.as_bytes())
        ));
        if acked == "ack unknown" {
            return false;
        }
    }
    w.fail(
        "a device can be drained",
        format!("box {box_id} device {device}: still fetching after 10000 rounds"),
    );
    false
}

/// Sweeps a region at `now` until a sweep finds nothing due (the final phase:
/// a sweep leaves entries whose envelopes it could not delete in one bounded
/// transaction for the next one).
pub async fn expire_everything(w: &World, region: RegionId, now: u64) {
    for _ in 0..100 {
        match w.store.sweep(region, now, 16).await {
            Ok(swept) if swept.entries == 0 => return,
            Ok(_) => {}
            Err(err) => {
                w.fail("a sweep without faults succeeds", err.to_string());
                return;
            }
        }
    }
    w.fail(
        "sweeps finish",
        format!("region {region}: still sweeping after 100 rounds"),
    );
}
