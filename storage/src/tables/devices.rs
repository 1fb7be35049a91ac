//! Devices of a box and their queue pointers.
//!
//! Every change to the set of devices that receive messages (add, authorize,
//! rekey, remove) bumps the device-list version stored in the box's `next` key.
//! Enqueues read that version and write `next`, so under snapshot isolation a send
//! and a device-list change to the same box always conflict: a send can never
//! commit against a device list that changed under it.

use super::records::{Device, Pointer, QueueHead, RetiredDevice};
use super::tx::{BoxHandle, Tx};
use super::{Limits, Record, decode_key};
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
use rossby_keyspace::{BoxId, DeviceId, Key, Table};

/// Upper bound on devices scanned when listing (far above any configured limit).
const DEVICE_SCAN_LIMIT: usize = 1024;

async fn head(txn: &mut Tx<'_>, box_id: BoxId) -> Result<QueueHead> {
    txn.get(&Key::Next(box_id)).await?.ok_or(Error::BoxNotFound)
}

/// Writes `head` with its device-list version bumped; returns the new version.
pub(crate) async fn bump_device_list(
    txn: &mut Tx<'_>,
    handle: &BoxHandle,
    mut head: QueueHead,
) -> Result<u64> {
    let version = head.bump_device_list()?;
    txn.put(handle, &Key::Next(handle.box_id()), &head).await?;
    Ok(version)
}

/// Adds a device. Its queue pointer starts at the box's current last sequence
/// number (set in the same transaction), so it receives only messages sent after
/// it was added. A device id removed from the box before gets a credential key
/// version above the one it had (read the stored record for it). Returns the
/// new device-list version.
pub async fn add(
    txn: &mut Tx<'_>,
    limits: &Limits,
    box_id: BoxId,
    device_id: DeviceId,
    record: &Device,
    now_ms: u64,
) -> Result<u64> {
    // Two adds both write `next`, so the device quota below holds under
    // snapshot isolation.
    let (handle, mut head) = txn.lock_next(box_id).await?;
    head.set_authorized(device_id, record.authorized);
    if txn
        .get_raw(&Key::Device(box_id, device_id))
        .await?
        .is_some()
    {
        return Err(Error::DeviceExists(device_id));
    }
    let existing = list(txn, box_id).await?;
    if existing.len() >= limits.max_devices_per_box {
        return Err(Error::QuotaExceeded(format!(
            "a box may have at most {} devices",
            limits.max_devices_per_box
        )));
    }
    let pointer = Pointer {
        acked: head.last_seq()?,
        last_seen_ms: now_ms,
    };
    let mut record = record.clone();
    record.created_at_ms = now_ms;
    // A device id used before in this box continues above its last key
    // version: credentials issued before its removal must not work again.
    if let Some(retired) = txn
        .get::<RetiredDevice>(&Key::RetiredDevice(box_id, device_id))
        .await?
        && record.credential_version <= retired.credential_version
    {
        record.credential_version = retired.credential_version.saturating_add(1);
    }
    txn.put(&handle, &Key::Device(box_id, device_id), &record)
        .await?;
    txn.put(&handle, &Key::Pointer(box_id, device_id), &pointer)
        .await?;
    bump_device_list(txn, &handle, head).await
}

/// One device's record, if it exists.
pub async fn get_device(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device_id: DeviceId,
) -> Result<Option<Device>> {
    txn.get(&Key::Device(box_id, device_id)).await
}

/// Marks a device authorized (it may then authenticate and receive messages).
/// Returns the new device-list version.
pub async fn authorize(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device_id: DeviceId,
    now_ms: u64,
) -> Result<u64> {
    let mut device = get_device(txn, box_id, device_id)
        .await?
        .ok_or(Error::DeviceNotFound)?;
    if device.authorized {
        return Ok(head(txn, box_id).await?.device_list_version);
    }
    let (handle, mut head) = txn.lock_next(box_id).await?;
    head.set_authorized(device_id, true);
    device.authorized = true;
    device.authorized_at_ms = now_ms;
    txn.put(&handle, &Key::Device(box_id, device_id), &device)
        .await?;
    bump_device_list(txn, &handle, head).await
}

/// All devices of a box, in device id order.
pub async fn list(txn: &mut Tx<'_>, box_id: BoxId) -> Result<Vec<(DeviceId, Device)>> {
    let entries = txn
        .scan(
            &Key::table_range(box_id, Table::Device),
            DEVICE_SCAN_LIMIT,
            ScanOrder::Forward,
        )
        .await?;
    entries
        .iter()
        .map(|(raw, value)| match decode_key(raw)? {
            Key::Device(_, d) => Ok((d, Device::from_stored(value)?)),
            _ => Err(Error::corrupt("device", "unexpected key in device range")),
        })
        .collect()
}

/// The current device-list version and the authorized devices: what a sender must
/// encrypt for.
pub async fn recipients(txn: &mut Tx<'_>, box_id: BoxId) -> Result<(u64, Vec<(DeviceId, Device)>)> {
    let version = head(txn, box_id).await?.device_list_version;
    let devices = list(txn, box_id)
        .await?
        .into_iter()
        .filter(|(_, d)| d.authorized)
        .collect();
    Ok((version, devices))
}

/// All queue pointers of a box.
pub async fn pointers(txn: &mut Tx<'_>, box_id: BoxId) -> Result<Vec<(DeviceId, Pointer)>> {
    let entries = txn
        .scan(
            &Key::table_range(box_id, Table::Pointer),
            DEVICE_SCAN_LIMIT,
            ScanOrder::Forward,
        )
        .await?;
    entries
        .iter()
        .map(|(raw, value)| match decode_key(raw)? {
            Key::Pointer(_, d) => Ok((d, Pointer::from_stored(value)?)),
            _ => Err(Error::corrupt("pointer", "unexpected key in pointer range")),
        })
        .collect()
}
