//! MLS KeyPackages: published in batches per device, each claimed at most once,
//! with one last-resort package per device handed out when the others run out.
//!
//! A package is stored under a reference derived from its bytes, so publishing the
//! same package twice stores it once. Claiming deletes the package; two concurrent
//! claims of the same package both delete it and therefore conflict, so a package
//! is never handed out twice, also under snapshot isolation. Claiming also leaves
//! a marker of the package's reference for the dedup window, so a publish
//! re-issued after an unknown outcome (applied, then claimed, then sent again)
//! does not store the package a second time; publishes remove markers older than
//! the window, and removing the device removes them all.

use super::records::{KeyPackageRecord, Marker};
use super::tx::{BoxHandle, Tx};
use super::{Limits, Record, decode_key};
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
use rossby_keyspace::{BoxId, DeviceId, Key};
use sha2::{Digest, Sha256};

/// A claimed KeyPackage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// The device the package belongs to.
    pub device: DeviceId,
    /// The serialized KeyPackage.
    pub data: Vec<u8>,
    /// True if this is the device's last-resort package (it stays published).
    pub last_resort: bool,
}

fn package_ref(data: &[u8]) -> [u8; 16] {
    let digest = Sha256::digest(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Publishes KeyPackages for an authorized device, and optionally replaces its
/// last-resort package. Returns how many unclaimed packages the device now has.
pub async fn publish(
    txn: &mut Tx<'_>,
    limits: &Limits,
    box_id: BoxId,
    device_id: DeviceId,
    packages: &[Vec<u8>],
    last_resort: Option<&[u8]>,
    now_ms: u64,
) -> Result<usize> {
    let handle = require_authorized(txn, box_id, device_id).await?;
    for data in packages.iter().map(Vec::as_slice).chain(last_resort) {
        if data.is_empty() || data.len() > limits.max_key_package_bytes {
            return Err(Error::Invalid(format!(
                "KeyPackages must have 1 to {} bytes",
                limits.max_key_package_bytes
            )));
        }
    }
    let max = limits.max_key_packages_per_device;
    let mut refs = count_refs(txn, box_id, device_id, max + 1).await?;
    let claimed = claimed_recently(txn, &handle, device_id, limits, now_ms).await?;
    for data in packages {
        let r = package_ref(data);
        if refs.contains(&r) || claimed.contains(&r) {
            continue;
        }
        if refs.len() >= max {
            return Err(Error::QuotaExceeded(format!(
                "a device may have at most {max} unclaimed KeyPackages"
            )));
        }
        let record = KeyPackageRecord {
            data: data.clone(),
            published_at_ms: now_ms,
        };
        txn.put(&handle, &Key::KeyPackage(box_id, device_id, r), &record)
            .await?;
        refs.push(r);
    }
    if let Some(data) = last_resort {
        let record = KeyPackageRecord {
            data: data.to_vec(),
            published_at_ms: now_ms,
        };
        txn.put(
            &handle,
            &Key::LastResortKeyPackage(box_id, device_id),
            &record,
        )
        .await?;
    }
    Ok(refs.len())
}

/// The device's guard, for an authorized device. Removing the device (or
/// deleting its account) writes its record, so KeyPackages published or claimed
/// concurrently conflict with the removal instead of being left behind for a
/// device that no longer exists; the device's publishes also conflict with each
/// other, so together they cannot pass the quota.
async fn require_authorized(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device_id: DeviceId,
) -> Result<BoxHandle> {
    match txn.lock_device(box_id, device_id).await {
        Ok((handle, device)) if device.authorized => Ok(handle),
        Ok(_) | Err(Error::BoxNotFound) => Err(Error::DeviceNotFound),
        Err(err) => Err(err),
    }
}

async fn count_refs(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device_id: DeviceId,
    limit: usize,
) -> Result<Vec<[u8; 16]>> {
    let entries = txn
        .scan(
            &Key::key_package_range(box_id, device_id),
            limit,
            ScanOrder::Forward,
        )
        .await?;
    entries
        .iter()
        .map(|(raw, _)| match decode_key(raw)? {
            Key::KeyPackage(_, _, r) => Ok(r),
            _ => Err(Error::corrupt("key package", "unexpected key in range")),
        })
        .collect()
}

/// The references of the device's packages claimed within the dedup window
/// before `now_ms`; markers older than that are deleted on the way. At most
/// one marker per package published within the window stays, so the scan is
/// bounded by what the device published.
async fn claimed_recently(
    txn: &mut Tx<'_>,
    handle: &BoxHandle,
    device_id: DeviceId,
    limits: &Limits,
    now_ms: u64,
) -> Result<Vec<[u8; 16]>> {
    let range = Key::claimed_key_package_range(handle.box_id(), device_id);
    let cutoff = now_ms.saturating_sub(limits.dedup_window_ms);
    let mut recent = Vec::new();
    for (raw, value) in txn.scan(&range, usize::MAX, ScanOrder::Forward).await? {
        let Key::ClaimedKeyPackage(_, _, r) = decode_key(&raw)? else {
            return Err(Error::corrupt(
                "claimed key package",
                "unexpected key in range",
            ));
        };
        if Marker::from_stored(&value)?.at_ms <= cutoff {
            txn.delete_scanned(handle, raw).await?;
        } else {
            recent.push(r);
        }
    }
    Ok(recent)
}

/// Number of unclaimed (non-last-resort) packages of a device, up to `limit`; the
/// device refills when this runs low.
pub async fn count(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device_id: DeviceId,
    limit: usize,
) -> Result<usize> {
    Ok(count_refs(txn, box_id, device_id, limit).await?.len())
}

/// Claims one package of a device: an unclaimed one (deleted as it is handed
/// out, and marked claimed at `now_ms`) or else the last-resort one. `None` if
/// the device published nothing.
pub async fn claim(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device_id: DeviceId,
    now_ms: u64,
) -> Result<Option<Claimed>> {
    let handle = require_authorized(txn, box_id, device_id).await?;
    let first = txn
        .scan(
            &Key::key_package_range(box_id, device_id),
            1,
            ScanOrder::Forward,
        )
        .await?;
    if let Some((raw, value)) = first.into_iter().next() {
        let record = KeyPackageRecord::from_stored(&value)?;
        let Key::KeyPackage(_, _, r) = decode_key(&raw)? else {
            return Err(Error::corrupt("key package", "unexpected key in range"));
        };
        txn.delete_scanned(&handle, raw).await?;
        txn.put(
            &handle,
            &Key::ClaimedKeyPackage(box_id, device_id, r),
            &Marker { at_ms: now_ms },
        )
        .await?;
        return Ok(Some(Claimed {
            device: device_id,
            data: record.data,
            last_resort: false,
        }));
    }
    let last = txn
        .get::<KeyPackageRecord>(&Key::LastResortKeyPackage(box_id, device_id))
        .await?;
    Ok(last.map(|record| Claimed {
        device: device_id,
        data: record.data,
        last_resort: true,
    }))
}

/// Claims one package for every authorized device of a box (what a group creator
/// needs to add a member). Devices that published nothing are skipped.
pub async fn claim_for_box(txn: &mut Tx<'_>, box_id: BoxId, now_ms: u64) -> Result<Vec<Claimed>> {
    super::accounts::require_profile(txn, box_id).await?;
    let mut out = Vec::new();
    for (device, record) in super::devices::list(txn, box_id).await? {
        if record.authorized
            && let Some(claimed) = claim(txn, box_id, device, now_ms).await?
        {
            out.push(claimed);
        }
    }
    Ok(out)
}

/// Deletes every package of a device of the handle's box (when it is removed).
pub async fn remove_all(txn: &mut Tx<'_>, handle: &BoxHandle, device_id: DeviceId) -> Result<()> {
    let box_id = handle.box_id();
    loop {
        let batch = txn
            .scan(
                &Key::key_package_range(box_id, device_id),
                256,
                ScanOrder::Forward,
            )
            .await?;
        let done = batch.len() < 256;
        for (raw, _) in batch {
            txn.delete_scanned(handle, raw).await?;
        }
        if done {
            break;
        }
    }
    let claimed = Key::claimed_key_package_range(box_id, device_id);
    for (raw, _) in txn.scan(&claimed, usize::MAX, ScanOrder::Forward).await? {
        txn.delete_scanned(handle, raw).await?;
    }
    txn.delete(handle, &Key::LastResortKeyPackage(box_id, device_id))
        .await
}
