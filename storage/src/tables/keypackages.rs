//! MLS KeyPackages: published in batches per device, each claimed at most once,
//! with one last-resort package per device handed out when the others run out.
//!
//! A package is stored under a reference derived from its bytes, so publishing the
//! same package twice stores it once. Claiming deletes the package; two concurrent
//! claims of the same package both delete it and therefore conflict, so a package
//! is never handed out twice, also under snapshot isolation.

use super::records::{Device, KeyPackageRecord};
use super::{Limits, Record, decode_key, delete, get, put};
use crate::error::{Error, Result};
use crate::kv::{ScanOrder, Transaction};
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
    txn: &mut dyn Transaction,
    limits: &Limits,
    box_id: BoxId,
    device_id: DeviceId,
    packages: &[Vec<u8>],
    last_resort: Option<&[u8]>,
    now_ms: u64,
) -> Result<usize> {
    require_authorized(txn, box_id, device_id).await?;
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
    for data in packages {
        let r = package_ref(data);
        if refs.contains(&r) {
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
        put(txn, &Key::KeyPackage(box_id, device_id, r), &record).await?;
        refs.push(r);
    }
    if let Some(data) = last_resort {
        let record = KeyPackageRecord {
            data: data.to_vec(),
            published_at_ms: now_ms,
        };
        put(txn, &Key::LastResortKeyPackage(box_id, device_id), &record).await?;
    }
    Ok(refs.len())
}

async fn require_authorized(
    txn: &mut dyn Transaction,
    box_id: BoxId,
    device_id: DeviceId,
) -> Result<Device> {
    // For update: removing the device (or deleting its account) writes its
    // record, so KeyPackages published concurrently conflict with the removal
    // instead of being left behind for a device that no longer exists.
    let record = txn
        .get_for_update(&Key::Device(box_id, device_id).encode())
        .await?
        .map(|bytes| Device::from_stored(&bytes))
        .transpose()?;
    match record {
        Some(d) if d.authorized => Ok(d),
        _ => Err(Error::DeviceNotFound),
    }
}

async fn count_refs(
    txn: &mut dyn Transaction,
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

/// Number of unclaimed (non-last-resort) packages of a device, up to `limit`; the
/// device refills when this runs low.
pub async fn count(
    txn: &mut dyn Transaction,
    box_id: BoxId,
    device_id: DeviceId,
    limit: usize,
) -> Result<usize> {
    Ok(count_refs(txn, box_id, device_id, limit).await?.len())
}

/// Claims one package of a device: an unclaimed one (deleted as it is handed out)
/// or else the last-resort one. `None` if the device published nothing.
pub async fn claim(
    txn: &mut dyn Transaction,
    box_id: BoxId,
    device_id: DeviceId,
) -> Result<Option<Claimed>> {
    require_authorized(txn, box_id, device_id).await?;
    let first = txn
        .scan(
            &Key::key_package_range(box_id, device_id),
            1,
            ScanOrder::Forward,
        )
        .await?;
    if let Some((raw, value)) = first.into_iter().next() {
        let record = KeyPackageRecord::from_stored(&value)?;
        txn.delete(raw).await?;
        return Ok(Some(Claimed {
            device: device_id,
            data: record.data,
            last_resort: false,
        }));
    }
    let last = get::<KeyPackageRecord>(txn, &Key::LastResortKeyPackage(box_id, device_id)).await?;
    Ok(last.map(|record| Claimed {
        device: device_id,
        data: record.data,
        last_resort: true,
    }))
}

/// Claims one package for every authorized device of a box (what a group creator
/// needs to add a member). Devices that published nothing are skipped.
pub async fn claim_for_box(txn: &mut dyn Transaction, box_id: BoxId) -> Result<Vec<Claimed>> {
    super::accounts::require_profile(txn, box_id).await?;
    let mut out = Vec::new();
    for (device, record) in super::devices::list(txn, box_id).await? {
        if record.authorized
            && let Some(claimed) = claim(txn, box_id, device).await?
        {
            out.push(claimed);
        }
    }
    Ok(out)
}

/// Deletes every package of a device (when it is removed).
pub async fn remove_all(
    txn: &mut dyn Transaction,
    box_id: BoxId,
    device_id: DeviceId,
) -> Result<()> {
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
            txn.delete(raw).await?;
        }
        if done {
            break;
        }
    }
    delete(txn, &Key::LastResortKeyPackage(box_id, device_id)).await
}
