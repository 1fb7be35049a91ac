//! Accounts and devices: registration, device add/authorize/remove, account
//! deletion and purge.

use super::{Answer, REISSUES, answer};
use crate::invariants;
use crate::model::Life;
use crate::world::World;
use rossby_keyspace::{BoxId, DeviceId, Identifier, RegionId};
use rossby_storage::tables::queue::{self, FetchLimits};
use rossby_storage::tables::records::Device;
use rossby_storage::tables::{accounts, devices, lifecycle, lookup};
use rossby_storage::{Error, transact};

/// A fetch that reads a device's pointer and nothing else.
const POINTER_ONLY: FetchLimits = FetchLimits {
    max_count: 0,
    max_bytes: 0,
};

fn device_record(device: DeviceId) -> Device {
    Device {
        identity_key: device.as_bytes().to_vec(),
        encryption_key: device.as_bytes().to_vec(),
        credential_version: 1,
        label: "sim".into(),
        ..Device::default()
    }
}

/// Registers a new account with one authorized device.
pub(super) async fn register(
    w: &World,
    box_id: BoxId,
    device: DeviceId,
    identifier: &str,
) -> String {
    let id = match Identifier::parse(identifier) {
        Ok(id) => id,
        Err(err) => {
            w.fail(
                "sim: generated identifiers parse",
                format!("{identifier}: {err}"),
            );
            return "bad identifier".into();
        }
    };
    let limits = &w.store.limits;
    let hasher = &w.store.hasher;
    let record = device_record(device);
    for attempt in 0..=REISSUES {
        let now = w.now();
        let result = transact!(w.store, |txn| lifecycle::create_account(
            txn, limits, hasher, &id, box_id, device, &record, now
        )
        .await);
        match answer(w, "register", result) {
            Answer::Done(_) => {}
            // A re-issue finding the account means the earlier attempt was applied.
            Answer::Refused(Error::BoxExists(_) | Error::AlreadyRegistered) if attempt > 0 => {}
            Answer::Refused(err) => {
                w.fail(
                    "a fresh identifier registers",
                    format!("{identifier}: {err}"),
                );
                return format!("refused: {err}");
            }
            Answer::Unknown | Answer::GaveUp => continue,
        }
        let mut m = w.model.borrow_mut();
        m.set_box_life(box_id, Life::Alive);
        m.device_added(box_id, device, 0, true);
        return "ok".into();
    }
    "unknown".into()
}

fn parse_identifier(w: &World, identifier: &str) -> Option<Identifier> {
    match Identifier::parse(identifier) {
        Ok(id) => Some(id),
        Err(err) => {
            w.fail(
                "sim: generated identifiers parse",
                format!("{identifier}: {err}"),
            );
            None
        }
    }
}

/// Binds another identifier to a box, as ConfirmIdentifier does once the code
/// matched. A box being deleted refuses it; a full box refuses it with its quota.
pub(super) async fn add_identifier(
    w: &World,
    box_id: BoxId,
    identifier: &str,
    discoverable: bool,
) -> String {
    let Some(id) = parse_identifier(w, identifier) else {
        return "bad identifier".into();
    };
    let hasher = &w.store.hasher;
    let max = w.store.limits.max_identifiers_per_box;
    for attempt in 0..=REISSUES {
        let now = w.now();
        let result = transact!(w.store, |txn| lookup::bind_with(
            txn,
            hasher,
            &id,
            box_id,
            discoverable,
            max,
            now
        )
        .await);
        match answer(w, "add identifier", result) {
            Answer::Done(_) => return "ok".into(),
            Answer::Refused(err @ (Error::BoxNotFound | Error::QuotaExceeded(_))) => {
                return format!("refused: {err}");
            }
            Answer::Refused(err) => {
                if attempt == 0 {
                    w.fail(
                        "a fresh identifier binds to a live box",
                        format!("{identifier}: {err}"),
                    );
                }
                return format!("refused: {err}");
            }
            Answer::Unknown | Answer::GaveUp => continue,
        }
    }
    "unknown".into()
}

/// Removes an identifier from a box. Concurrent removals race for the box's last
/// identifiers; the snapshot checks that a live box always keeps one.
pub(super) async fn remove_identifier(w: &World, box_id: BoxId, identifier: &str) -> String {
    let Some(id) = parse_identifier(w, identifier) else {
        return "bad identifier".into();
    };
    let hasher = &w.store.hasher;
    for _ in 0..=REISSUES {
        let result = transact!(w.store, |txn| lookup::remove(txn, hasher, &id, box_id)
            .await);
        match answer(w, "remove identifier", result) {
            Answer::Done(left) => return format!("ok left={left}"),
            Answer::Refused(
                err @ (Error::BoxNotFound | Error::IdentifierNotBound | Error::LastIdentifier),
            ) => return format!("refused: {err}"),
            Answer::Refused(err) => {
                w.fail(
                    "identifier removals answer as documented",
                    format!("{identifier}: {err}"),
                );
                return format!("refused: {err}");
            }
            Answer::Unknown | Answer::GaveUp => continue,
        }
    }
    "unknown".into()
}

/// Adds a device (authorized in the same transaction or not) and learns its
/// starting pointer from the same transaction.
pub(super) async fn add_device(
    w: &World,
    box_id: BoxId,
    device: DeviceId,
    authorize: bool,
) -> String {
    let limits = &w.store.limits;
    let record = device_record(device);
    for attempt in 0..=REISSUES {
        let now = w.now();
        let result = transact!(w.store, |txn| async {
            devices::add(txn, limits, box_id, device, &record, now).await?;
            if authorize {
                devices::authorize(txn, box_id, device, now).await?;
            }
            // The pointer the add just set (the transaction sees its own writes).
            Ok::<u64, Error>(queue::fetch(txn, box_id, device, POINTER_ONLY).await?.acked)
        }
        .await);
        match answer(w, "add device", result) {
            Answer::Done(p0) => {
                w.model
                    .borrow_mut()
                    .device_added(box_id, device, p0, authorize);
                return format!("ok p0={p0}");
            }
            Answer::Refused(Error::DeviceExists(_)) if attempt > 0 => {
                return resolve_device(w, box_id, device).await;
            }
            Answer::Refused(err @ (Error::BoxNotFound | Error::QuotaExceeded(_))) => {
                let mut m = w.model.borrow_mut();
                if matches!(err, Error::BoxNotFound) && m.box_life(box_id) == Life::Alive {
                    m.fail(
                        "a live box takes devices",
                        format!("box {box_id}: add refused with {err}"),
                    );
                }
                if attempt == 0 {
                    m.set_device_life(box_id, device, Life::Absent);
                }
                return format!("refused: {err}");
            }
            Answer::Refused(err) => {
                w.fail("a device is added once", format!("{device}: {err}"));
                return format!("refused: {err}");
            }
            Answer::Unknown | Answer::GaveUp => continue,
        }
    }
    "unknown".into()
}

/// Finds out whether a device whose add had an unknown outcome exists, and if
/// so its starting pointer (nothing acknowledged for it since: the clients only
/// fetch for devices they know exist).
pub async fn resolve_device(w: &World, box_id: BoxId, device: DeviceId) -> String {
    let result = transact!(w.store, |txn| async {
        match devices::get_device(txn, box_id, device).await? {
            Some(record) => {
                let pointer = queue::fetch(txn, box_id, device, POINTER_ONLY).await?;
                Ok::<_, Error>(Some((pointer.acked, record.authorized)))
            }
            None => Ok(None),
        }
    }
    .await);
    match answer(w, "resolve device", result) {
        Answer::Done(Some((p0, authorized))) => {
            w.model
                .borrow_mut()
                .device_added(box_id, device, p0, authorized);
            format!("exists p0={p0}")
        }
        Answer::Done(None) => {
            let mut m = w.model.borrow_mut();
            let life = if m.device_life(box_id, device) == Life::Creating {
                Life::Absent
            } else {
                Life::Deleted
            };
            m.set_device_life(box_id, device, life);
            "absent".into()
        }
        Answer::Refused(Error::BoxNotFound | Error::DeviceNotFound) => {
            w.model
                .borrow_mut()
                .set_device_life(box_id, device, Life::Deleted);
            "box gone".into()
        }
        Answer::Refused(err) => format!("refused: {err}"),
        Answer::Unknown | Answer::GaveUp => "unknown".into(),
    }
}

/// Authorizes a device.
pub(super) async fn authorize(w: &World, box_id: BoxId, device: DeviceId) -> String {
    for _ in 0..=REISSUES {
        let now = w.now();
        let result = transact!(w.store, |txn| devices::authorize(txn, box_id, device, now)
            .await);
        match answer(w, "authorize", result) {
            Answer::Done(version) => {
                w.model.borrow_mut().device_authorized(box_id, device);
                return format!("ok version={version}");
            }
            Answer::Refused(err) => {
                let mut m = w.model.borrow_mut();
                if m.surely_present(box_id, device) {
                    m.fail(
                        "a present device can be authorized",
                        format!("{device}: {err}"),
                    );
                }
                return format!("refused: {err}");
            }
            Answer::Unknown | Answer::GaveUp => continue,
        }
    }
    "unknown".into()
}

/// Removes a device.
pub(super) async fn remove_device(w: &World, box_id: BoxId, device: DeviceId) -> String {
    let limits = &w.store.limits;
    for attempt in 0..=REISSUES {
        let result = transact!(w.store, |txn| lifecycle::remove_device(
            txn, limits, box_id, device
        )
        .await);
        match answer(w, "remove device", result) {
            Answer::Done(_) => {}
            Answer::Refused(Error::DeviceNotFound | Error::BoxNotFound)
                if attempt > 0 || w.model.borrow().box_life(box_id) != Life::Alive => {}
            Answer::Refused(err) => {
                w.fail(
                    "a present device can be removed",
                    format!("{device}: {err}"),
                );
                return format!("refused: {err}");
            }
            Answer::Unknown | Answer::GaveUp => continue,
        }
        w.model
            .borrow_mut()
            .set_device_life(box_id, device, Life::Deleted);
        return "ok".into();
    }
    "unknown".into()
}

/// Deletes an account, and purges it unless the purge is left for later.
pub(super) async fn delete_account(w: &World, box_id: BoxId, purge: bool) -> String {
    let limits = &w.store.limits;
    let mut deleted = false;
    for attempt in 0..=REISSUES {
        let now = w.now();
        let result = transact!(w.store, |txn| lifecycle::delete_account(
            txn, limits, box_id, now
        )
        .await);
        match answer(w, "delete account", result) {
            Answer::Done(()) => {}
            Answer::Refused(Error::BoxNotFound) if attempt > 0 => {}
            Answer::Refused(err) => {
                w.fail("a live account can be deleted", format!("{box_id}: {err}"));
                return format!("refused: {err}");
            }
            Answer::Unknown | Answer::GaveUp => continue,
        }
        deleted = true;
        break;
    }
    if !deleted {
        return "unknown".into();
    }
    mark_deleted(w, box_id);
    if !purge {
        return "ok (purge left for later)".into();
    }
    match answer(w, "purge", w.store.purge(box_id).await) {
        Answer::Done(()) => {
            invariants::check_purged(w, box_id).await;
            "ok, purged".into()
        }
        Answer::Refused(err) => format!("ok, purge refused: {err}"),
        Answer::Unknown | Answer::GaveUp => "ok, purge interrupted".into(),
    }
}

fn mark_deleted(w: &World, box_id: BoxId) {
    let mut m = w.model.borrow_mut();
    m.set_box_life(box_id, Life::Deleted);
    let devices = m
        .boxes
        .get(&box_id)
        .map(|b| b.devices.clone())
        .unwrap_or_default();
    for device in devices {
        m.set_device_life(box_id, device, Life::Deleted);
    }
}

/// Finds out whether a box whose creation or deletion had an unknown outcome
/// exists.
pub async fn resolve_box(w: &World, box_id: BoxId) -> String {
    let result = transact!(w.store, |txn| accounts::profile(txn, box_id).await);
    let life = w.model.borrow().box_life(box_id);
    match answer(w, "resolve box", result) {
        Answer::Done(Some(_)) => {
            w.model.borrow_mut().set_box_life(box_id, Life::Alive);
            "alive".into()
        }
        Answer::Done(None) if life == Life::Creating => {
            w.model.borrow_mut().set_box_life(box_id, Life::Absent);
            "never created".into()
        }
        Answer::Done(None) => {
            mark_deleted(w, box_id);
            "deleted".into()
        }
        Answer::Refused(err) => format!("refused: {err}"),
        Answer::Unknown | Answer::GaveUp => "unknown".into(),
    }
}

/// Finishes the interrupted purges of a region; every box known deleted before
/// it started must then be gone.
pub(super) async fn resume_purges(w: &World, region: RegionId) -> String {
    let deleted = deleted_boxes(w, region);
    match answer(w, "resume purges", w.store.resume_purges(region).await) {
        Answer::Done(n) => {
            check_purged_boxes(w, &deleted).await;
            format!("purged {n} in region {region}")
        }
        Answer::Refused(err) => format!("refused: {err}"),
        Answer::Unknown | Answer::GaveUp => format!("interrupted in region {region}"),
    }
}

fn deleted_boxes(w: &World, region: RegionId) -> Vec<BoxId> {
    w.model
        .borrow()
        .boxes
        .iter()
        .filter(|(_, b)| b.region == region && b.life == Life::Deleted)
        .map(|(id, _)| *id)
        .collect()
}

/// Checks that each of `boxes` left nothing behind.
pub async fn check_purged_boxes(w: &World, boxes: &[BoxId]) {
    for box_id in boxes {
        invariants::check_purged(w, *box_id).await;
    }
}
