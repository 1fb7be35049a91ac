//! Flows that span several tables of a box: creating and recovering an account,
//! removing a device, deleting and purging an account.
//!
//! The table modules each keep one aggregate (the box's profile, its devices, its
//! queue, its KeyPackages, its identifiers) and do not call each other's writes;
//! what has to change several of them at once lives here, so the order of the
//! steps and the guards they take are in one place. Every flow runs inside the
//! caller's transaction.

use super::records::{Device, LowWater, Marker, QueueHead, RetiredDevice};
use super::tx::{BoxHandle, Tx};
use super::{Limits, accounts, decode_key, devices, identifiers, keypackages, lookup, queue};
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
use rossby_keyspace::{BoxId, DeviceId, Identifier, Key, LookupHasher, RegionId};

/// Creates a new account for `id`: an empty box (discoverable, accepting messages
/// from anyone), the identifier bound to it, and `device` added and authorized.
/// Returns the device-list version. Fails with [`Error::AlreadyRegistered`] if the
/// identifier is bound to a box already and with [`Error::BoxExists`] if `box_id`
/// is taken (draw another id and retry).
#[allow(clippy::too_many_arguments)]
pub async fn create_account(
    txn: &mut Tx<'_>,
    limits: &Limits,
    hasher: &LookupHasher,
    id: &Identifier,
    box_id: BoxId,
    device_id: DeviceId,
    device: &Device,
    now_ms: u64,
) -> Result<u64> {
    accounts::create_box(txn, box_id, now_ms).await?;
    lookup::bind_with(
        txn,
        hasher,
        id,
        box_id,
        true,
        limits.max_identifiers_per_box,
        now_ms,
    )
    .await?;
    devices::add(txn, limits, box_id, device_id, device, now_ms).await?;
    devices::authorize(txn, box_id, device_id, now_ms).await
}

/// Recovers an account: every device of the box is removed (with its queue pointer
/// and KeyPackages), the queue is dropped (see [`drop_queue`]), and `device` is
/// added and authorized. Profile, settings, contacts and blocks stay. Every step
/// bumps the device-list version, so senders holding the old keys get
/// `StaleDeviceList` and contacts see the new keys on their next lookup. Returns
/// the device-list version.
///
/// Returns `Ok(false)` as second value when envelopes remain below the new
/// low-water mark; [`purge_dropped`] removes them in later transactions (they are
/// never served, because fetches start at the low-water mark).
pub async fn recover_account(
    txn: &mut Tx<'_>,
    limits: &Limits,
    box_id: BoxId,
    device_id: DeviceId,
    device: &Device,
    now_ms: u64,
) -> Result<(u64, bool)> {
    accounts::require_profile(txn, box_id).await?;
    for (old, _) in devices::list(txn, box_id).await? {
        remove_device(txn, limits, box_id, old).await?;
    }
    let complete = drop_queue(txn, box_id, limits.max_deletes_per_txn).await?;
    devices::add(txn, limits, box_id, device_id, device, now_ms).await?;
    let version = devices::authorize(txn, box_id, device_id, now_ms).await?;
    Ok((version, complete))
}

/// Drops a box's queue: raises the low-water mark to the next sequence number (so
/// nothing queued so far is ever served again) and deletes up to `max_deletes`
/// queued envelopes. Returns `true` if none remain. The expiry index entries of
/// dropped envelopes are removed by the sweeper when they fall due.
pub async fn drop_queue(txn: &mut Tx<'_>, box_id: BoxId, max_deletes: usize) -> Result<bool> {
    let (handle, _) = txn.lock_low(box_id).await?;
    let head: QueueHead = txn
        .get(&Key::Next(box_id))
        .await?
        .ok_or(Error::BoxNotFound)?;
    let water = queue::low_water(txn, box_id).await?;
    // Everything queued so far is gone for the quota too.
    txn.put(
        &handle,
        &Key::Low(box_id),
        &LowWater {
            low: head.next_seq.max(1),
            deleted_bytes: head.enqueued_bytes.max(water.deleted_bytes),
        },
    )
    .await?;
    delete_queued_below(txn, &handle, head.next_seq, max_deletes).await
}

/// Deletes up to `max_deletes` envelopes left below the low-water mark after
/// [`drop_queue`]. Returns `true` when none remain.
pub async fn purge_dropped(txn: &mut Tx<'_>, box_id: BoxId, max_deletes: usize) -> Result<bool> {
    let (handle, low) = txn.lock_low(box_id).await?;
    delete_queued_below(txn, &handle, low, max_deletes).await
}

async fn delete_queued_below(
    txn: &mut Tx<'_>,
    handle: &BoxHandle,
    below: u64,
    max_deletes: usize,
) -> Result<bool> {
    let max = max_deletes.max(1);
    let entries = txn
        .scan(
            &Key::queue_range(handle.box_id(), 0, below),
            max,
            ScanOrder::Forward,
        )
        .await?;
    let complete = entries.len() < max;
    for (key, _) in entries {
        txn.delete_scanned(handle, key).await?;
    }
    Ok(complete)
}

/// Removes a device, its queue pointer, its push presence lease, its push
/// token and its KeyPackages, then deletes queue entries every remaining device has
/// acknowledged. Returns the new device-list version.
pub async fn remove_device(
    txn: &mut Tx<'_>,
    limits: &Limits,
    box_id: BoxId,
    device_id: DeviceId,
) -> Result<u64> {
    let (handle, mut head) = txn.lock_next(box_id).await?;
    let Some(device) = devices::get_device(txn, box_id, device_id).await? else {
        return Err(Error::DeviceNotFound);
    };
    head.set_authorized(device_id, false);
    // Remembered, so that linking this device id again never hands out a key
    // version (and so credentials) it had before.
    let retired = RetiredDevice {
        credential_version: device.credential_version,
    };
    txn.put(&handle, &Key::RetiredDevice(box_id, device_id), &retired)
        .await?;
    txn.delete(&handle, &Key::Device(box_id, device_id)).await?;
    txn.delete(&handle, &Key::Pointer(box_id, device_id))
        .await?;
    txn.delete(&handle, &Key::Presence(box_id, device_id))
        .await?;
    txn.delete(&handle, &Key::PushToken(box_id, device_id))
        .await?;
    keypackages::remove_all(txn, &handle, device_id).await?;
    let version = devices::bump_device_list(txn, &handle, head).await?;
    queue::collect_acknowledged(txn, &handle, limits.max_deletes_per_txn).await?;
    Ok(version)
}

/// Deletes an account: in this one transaction the box becomes invisible (profile
/// tombstoned, identifiers unbound and pending additions deleted, devices and their credentials gone), and a
/// purge entry records that its remaining keys must be removed. It writes every
/// guard key of the box (the profile, `next`, `low` and each device record), so
/// no other write into the box can commit concurrently (see [`super::tx`]).
/// [`purge_step`] then removes the rest in bounded transactions.
pub async fn delete_account(
    txn: &mut Tx<'_>,
    limits: &Limits,
    box_id: BoxId,
    now_ms: u64,
) -> Result<()> {
    let (handle, mut profile) = txn.lock_profile(box_id).await?;
    // Removing the devices bumps the device list in `next` and deletes each
    // device record; done while the profile is still live.
    lookup::unbind_all(txn, &handle).await?;
    identifiers::remove_all_pending(txn, &handle).await?;
    for (device, _) in devices::list(txn, box_id).await? {
        remove_device(txn, limits, box_id, device).await?;
    }
    let (_, mut head) = txn.lock_next(box_id).await?;
    head.bump_device_list()?;
    txn.put(&handle, &Key::Next(box_id), &head).await?;
    txn.lock_low(box_id).await?;
    let water = queue::low_water(txn, box_id).await?;
    txn.put(&handle, &Key::Low(box_id), &water).await?;
    profile.deleted = true;
    profile.updated_at_ms = now_ms;
    txn.put(&handle, &Key::Profile(box_id), &profile).await?;
    txn.put(&handle, &Key::Purge(box_id), &Marker { at_ms: now_ms })
        .await
}

/// Removes up to `max_keys` remaining keys of a deleted box (its outbox entries,
/// then its box range). Returns `true` when the box is gone completely (its purge
/// entry is removed in the same transaction).
pub async fn purge_step(txn: &mut Tx<'_>, box_id: BoxId, max_keys: usize) -> Result<bool> {
    // Written by every step (even when already gone), as every expiry locks
    // `low`: an expiry that saw the box alive conflicts with the purge instead of
    // writing `low` back into the emptied range.
    let handle = txn.open_for_purge(box_id).await?;
    // Undelivered fan-out of the box's groups lives in the region's outbox,
    // outside the box range; it goes first, while the tombstone still marks the
    // box deleted (its groups are gone with it, so nothing is left to deliver).
    let outbox = txn
        .scan(
            &Key::box_outbox_range(box_id),
            max_keys.max(1),
            ScanOrder::Forward,
        )
        .await?;
    if !outbox.is_empty() {
        for (key, _) in outbox {
            txn.delete_scanned(&handle, key).await?;
        }
        return Ok(false);
    }
    // Attachment blobs have objects outside storage: their records go to the
    // blob sweeper (filed as due at once) before the range is emptied.
    if super::blobs::purge_records(txn, &handle, max_keys).await? > 0 {
        return Ok(false);
    }
    let keys = txn
        .scan(&Key::box_range(box_id), max_keys.max(1), ScanOrder::Reverse)
        .await?;
    let done = keys.len() < max_keys.max(1);
    // Reverse order deletes the profile tombstone last, so an interrupted purge
    // still finds the box marked deleted.
    for (key, _) in keys {
        txn.delete_scanned(&handle, key).await?;
    }
    if done {
        txn.delete(&handle, &Key::Purge(box_id)).await?;
    }
    Ok(done)
}

/// Boxes of a region whose purge has not finished (for example after a crash).
pub async fn pending_purges(
    txn: &mut Tx<'_>,
    region: RegionId,
    limit: usize,
) -> Result<Vec<BoxId>> {
    let entries = txn
        .scan(&Key::purge_range(region), limit, ScanOrder::Forward)
        .await?;
    entries
        .iter()
        .map(|(key, _)| match decode_key(key)? {
            Key::Purge(b) => Ok(b),
            _ => Err(Error::corrupt(
                "purge entry",
                "unexpected key in purge range",
            )),
        })
        .collect()
}

/// True if any key of the box remains (used by tests and the purge loop).
pub async fn box_has_keys(txn: &mut Tx<'_>, box_id: BoxId) -> Result<bool> {
    Ok(!txn
        .scan(&Key::box_range(box_id), 1, ScanOrder::Forward)
        .await?
        .is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::memory::MemoryStore;
    use crate::tables::queue::{FetchLimits, NewEnvelope};
    use crate::tables::records::PendingRegistration;
    use crate::tables::registrations::{
        pending, record_wrong_attempt, remove_pending, store_pending,
    };
    use crate::tables::{Store, accounts, devices, keypackages, lookup};
    use crate::{Kv, transact};
    use rossby_keyspace::{MessageId, Pepper, RegionId};
    use std::sync::Arc;

    const T0: u64 = 1_700_000_000_000;

    fn store() -> Store {
        let kv: Kv = Arc::new(MemoryStore::new());
        let hasher = LookupHasher::new(
            vec![Pepper {
                version: 1,
                secret: vec![7; 32],
            }],
            1,
        )
        .unwrap();
        Store::new(kv, hasher)
    }

    fn device(byte: u8) -> Device {
        Device {
            identity_key: vec![byte; 32],
            encryption_key: vec![byte; 8],
            credential_version: 1,
            label: format!("device {byte}"),
            ..Device::default()
        }
    }

    fn envelope(sender_box: BoxId, sender_device: DeviceId, version: u64) -> NewEnvelope {
        NewEnvelope {
            sender: crate::tables::queue::Sender::Device {
                box_id: sender_box,
                device_id: sender_device,
                identity_key: Some([7; 32]),
            },
            message_id: MessageId::new(),
            device_list_version: version,
            payload: vec![1, 2, 3],
            wrapped_for: None,
        }
    }

    #[tokio::test]
    async fn pending_records_round_trip_and_count_wrong_attempts() {
        let store = store();
        let id = Identifier::parse("alice@example.com").unwrap();
        let digest = store.hasher.current(&id);
        let device = DeviceId::new();
        let record = PendingRegistration {
            code_mac: vec![9; 32],
            expires_at_ms: T0 + 600_000,
            device_id: device.as_bytes().to_vec(),
            label: "phone".into(),
            ..PendingRegistration::default()
        };
        transact!(store, |txn| store_pending(txn, &digest, device, &record)
            .await)
        .unwrap();
        let got = transact!(store, |txn| pending(txn, &digest, device).await).unwrap();
        assert_eq!(got.as_ref(), Some(&record));
        assert_eq!(
            transact!(store, |txn| record_wrong_attempt(txn, &digest, device)
                .await)
            .unwrap(),
            1
        );
        assert_eq!(
            transact!(store, |txn| record_wrong_attempt(txn, &digest, device)
                .await)
            .unwrap(),
            2
        );
        transact!(store, |txn| remove_pending(txn, &digest, device).await).unwrap();
        assert!(
            transact!(store, |txn| pending(txn, &digest, device).await)
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            transact!(store, |txn| record_wrong_attempt(txn, &digest, device)
                .await),
            Err(Error::Invalid(_))
        ));
        // Another device's registration of the same identifier is its own.
        let other = DeviceId::new();
        transact!(store, |txn| store_pending(txn, &digest, device, &record)
            .await)
        .unwrap();
        transact!(store, |txn| store_pending(txn, &digest, other, &record)
            .await)
        .unwrap();
        transact!(store, |txn| record_wrong_attempt(txn, &digest, other).await).unwrap();
        let mine = transact!(store, |txn| pending(txn, &digest, device).await).unwrap();
        assert_eq!(mine.map(|r| r.attempts), Some(0));
    }

    #[tokio::test]
    async fn create_then_recover_replaces_devices_and_drops_the_queue() {
        let store = store();
        let limits = store.limits.clone();
        let id = Identifier::parse("+14155550123").unwrap();
        let box_id = BoxId::new(RegionId(1));
        let (d1, d2) = (DeviceId::new(), DeviceId::new());
        let v1 = transact!(store, |txn| create_account(
            txn,
            &limits,
            &store.hasher,
            &id,
            box_id,
            d1,
            &device(1),
            T0
        )
        .await)
        .unwrap();
        // The identifier is bound; a second account for it is refused.
        assert!(matches!(
            transact!(store, |txn| create_account(
                txn,
                &limits,
                &store.hasher,
                &id,
                BoxId::new(RegionId(1)),
                d2,
                &device(2),
                T0
            )
            .await),
            Err(Error::AlreadyRegistered)
        ));
        assert_eq!(
            transact!(store, |txn| lookup::resolve(txn, &store.hasher, &id, T0)
                .await)
            .unwrap(),
            Some(box_id)
        );
        // A second device, a KeyPackage, and three queued envelopes.
        transact!(store, |txn| async {
            devices::add(txn, &limits, box_id, d2, &device(2), T0).await?;
            devices::authorize(txn, box_id, d2, T0).await
        }
        .await)
        .unwrap();
        transact!(store, |txn| keypackages::publish(
            txn,
            &limits,
            box_id,
            d2,
            &[vec![5; 10]],
            None,
            T0
        )
        .await)
        .unwrap();
        let (version, _) = transact!(store, |txn| devices::recipients(txn, box_id).await).unwrap();
        assert!(version > v1);
        let envs: Vec<NewEnvelope> = (0..3).map(|_| envelope(box_id, d1, version)).collect();
        let out = store.enqueue(box_id, &envs, T0).await.unwrap();
        assert!(out.iter().all(Result::is_ok));

        // Recover with a fresh device, deleting at most two envelopes in the
        // recovery transaction itself.
        let d3 = DeviceId::new();
        let small = Limits {
            max_deletes_per_txn: 2,
            ..limits.clone()
        };
        let (v3, complete) = transact!(store, |txn| recover_account(
            txn,
            &small,
            box_id,
            d3,
            &device(3),
            T0 + 1
        )
        .await)
        .unwrap();
        assert!(v3 > version);
        assert!(!complete);
        while !transact!(store, |txn| purge_dropped(txn, box_id, 1).await).unwrap() {}
        let (_, now) = transact!(store, |txn| devices::recipients(txn, box_id).await).unwrap();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].0, d3);
        assert!(now[0].1.authorized);
        // Old devices' KeyPackages and pointers are gone; the new device sees
        // nothing of the dropped queue, and new messages arrive normally.
        assert!(
            transact!(store, |txn| keypackages::count(txn, box_id, d2, 10).await)
                .is_ok_and(|n| n == 0)
        );
        let fetched = store
            .fetch(box_id, d3, FetchLimits::default())
            .await
            .unwrap();
        assert!(fetched.envelopes.is_empty());
        assert!(fetched.gap.is_none());
        let scan = crate::kv::transact!(store.kv, &store.retry, |txn| txn
            .scan(
                &Key::queue_range(box_id, 0, u64::MAX),
                10,
                ScanOrder::Forward
            )
            .await)
        .unwrap();
        assert!(scan.is_empty());
        let sent = store
            .enqueue(box_id, &[envelope(box_id, d3, v3)], T0 + 2)
            .await
            .unwrap();
        let seq = sent[0].as_ref().unwrap().seq;
        let fetched = store
            .fetch(box_id, d3, FetchLimits::default())
            .await
            .unwrap();
        assert_eq!(fetched.envelopes.len(), 1);
        assert_eq!(fetched.envelopes[0].seq, seq);
        // A sender still encrypting for the old device list is told it is stale.
        let stale = store
            .enqueue(box_id, &[envelope(box_id, d3, version)], T0 + 3)
            .await
            .unwrap();
        assert!(matches!(stale[0], Err(Error::StaleDeviceList { .. })));
        // The profile survived.
        assert!(
            transact!(store, |txn| accounts::profile(txn, box_id).await)
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn recovering_an_unknown_box_fails() {
        let store = store();
        let limits = store.limits.clone();
        let result = transact!(store, |txn| recover_account(
            txn,
            &limits,
            BoxId::new(RegionId(1)),
            DeviceId::new(),
            &device(1),
            T0
        )
        .await);
        assert!(matches!(result, Err(Error::BoxNotFound)));
    }
}
