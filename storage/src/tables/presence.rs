//! Presence leases: which gateway holds a device's push subscription.
//!
//! A gateway that commits a message into a box must tell the gateways where the
//! box's devices are waiting for it. Each of those gateways records, per device, a
//! [`PresenceRecord`] under `box/{box}/presence/{device}` naming its peer endpoint
//! and its run, with a lease time. The lease is renewed while the subscription
//! lives and removed when it ends; a gateway that dies simply stops renewing, so
//! its leases lapse and are ignored.
//!
//! One lease per device: the newest subscription of a device wins ([`claim`]
//! overwrites whatever is there). A renewal ([`renew`]) never takes a live lease
//! away from another gateway, so a device that moved to another gateway is not
//! pulled back by the one it left, which may not have noticed yet.
//!
//! Expired leases are deleted when the box's leases are next listed ([`live`]), so
//! no sweeper is needed: there is at most one lease per device, and the account
//! purge removes the whole box range, leases included. Claims and renewals read
//! the device record for update, so under snapshot isolation a lease cannot be
//! written for a device whose removal (or account deletion) commits concurrently;
//! a lease left by a removed device is inert (nobody is subscribed under it) and
//! is deleted once expired.

use super::decode_key;
use super::records::PresenceRecord;
use super::tx::{BoxHandle, Tx};
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
use rossby_keyspace::{BoxId, DeviceId, Key, Table};

/// Longest peer address accepted (`host:port`), in bytes.
pub const MAX_PEER_ADDRESS_BYTES: usize = 255;

/// Longest gateway id accepted, in bytes.
pub const MAX_GATEWAY_ID_BYTES: usize = 64;

/// Most leases read from one box (there is one per device, and a box has far
/// fewer devices than this).
pub const MAX_LEASES_PER_BOX: usize = 1024;

/// The gateway a lease names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    /// `host:port` of the gateway's peer endpoint.
    pub peer_address: String,
    /// The gateway run that wrote the lease.
    pub gateway_id: String,
}

impl Holder {
    /// Rejects an empty or oversized address or id.
    pub fn check(&self) -> Result<()> {
        if self.peer_address.is_empty() || self.peer_address.len() > MAX_PEER_ADDRESS_BYTES {
            return Err(Error::Invalid(format!(
                "a peer address must have 1 to {MAX_PEER_ADDRESS_BYTES} bytes"
            )));
        }
        if self.gateway_id.is_empty() || self.gateway_id.len() > MAX_GATEWAY_ID_BYTES {
            return Err(Error::Invalid(format!(
                "a gateway id must have 1 to {MAX_GATEWAY_ID_BYTES} bytes"
            )));
        }
        Ok(())
    }

    fn record(&self, expires_at_ms: u64) -> PresenceRecord {
        PresenceRecord {
            peer_address: self.peer_address.clone(),
            gateway_id: self.gateway_id.clone(),
            lease_expires_at_ms: expires_at_ms,
        }
    }
}

/// A live lease read from storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The subscribed device.
    pub device: DeviceId,
    /// Who holds the subscription.
    pub holder: Holder,
    /// When the lease lapses unless renewed.
    pub expires_at_ms: u64,
}

/// What [`renew`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The lease names the holder until the new expiry.
    Renewed,
    /// Another gateway holds a live lease of the device; nothing was written.
    HeldElsewhere,
    /// The device (or its whole box) no longer exists; nothing was written and a
    /// lease of this holder was removed.
    DeviceGone,
}

/// The device's guard, or `None` when the device (or its box) is gone: removing
/// a device (or deleting its account) writes its record, so a lease written
/// concurrently conflicts with the removal instead of outliving it in a purged
/// box.
async fn device_guard(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device: DeviceId,
) -> Result<Option<BoxHandle>> {
    match txn.lock_device(box_id, device).await {
        Ok((handle, _)) => Ok(Some(handle)),
        Err(Error::DeviceNotFound | Error::BoxNotFound) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Records that `holder` holds the push subscription of `device` until
/// `expires_at_ms`, replacing any lease of the device (the newest subscription
/// wins). Fails with [`Error::DeviceNotFound`] when the device does not exist.
pub async fn claim(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device: DeviceId,
    holder: &Holder,
    expires_at_ms: u64,
) -> Result<()> {
    holder.check()?;
    let Some(handle) = device_guard(txn, box_id, device).await? else {
        return Err(Error::DeviceNotFound);
    };
    txn.put(
        &handle,
        &Key::Presence(box_id, device),
        &holder.record(expires_at_ms),
    )
    .await
}

/// Extends `holder`'s lease of `device` to `expires_at_ms`, or writes it if there
/// is none (or only an expired one). A live lease of another gateway is left
/// alone. Removing a device removes its lease, so a gone device has none left.
pub async fn renew(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device: DeviceId,
    holder: &Holder,
    now_ms: u64,
    expires_at_ms: u64,
) -> Result<Renewal> {
    holder.check()?;
    let key = Key::Presence(box_id, device);
    let Some(handle) = device_guard(txn, box_id, device).await? else {
        return Ok(Renewal::DeviceGone);
    };
    let existing: Option<PresenceRecord> = txn.get(&key).await?;
    if let Some(r) = existing
        && r.gateway_id != holder.gateway_id
        && r.lease_expires_at_ms > now_ms
    {
        return Ok(Renewal::HeldElsewhere);
    }
    txn.put(&handle, &key, &holder.record(expires_at_ms))
        .await?;
    Ok(Renewal::Renewed)
}

/// Removes the lease of `device` if it still names `gateway_id`. Returns whether
/// a lease was removed.
pub async fn release(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device: DeviceId,
    gateway_id: &str,
) -> Result<bool> {
    let key = Key::Presence(box_id, device);
    match txn.get::<PresenceRecord>(&key).await? {
        Some(r) if r.gateway_id == gateway_id => {
            let Some(handle) = device_guard(txn, box_id, device).await? else {
                return Ok(false);
            };
            txn.delete(&handle, &key).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The live leases of a box (expiring after `now_ms`), in device order. Read
/// only: an expired lease is replaced by the device's next claim and removed
/// with the device.
pub async fn live(txn: &mut Tx<'_>, box_id: BoxId, now_ms: u64) -> Result<Vec<Lease>> {
    let entries = txn
        .scan(
            &Key::table_range(box_id, Table::Presence),
            MAX_LEASES_PER_BOX,
            ScanOrder::Forward,
        )
        .await?;
    let mut leases = Vec::with_capacity(entries.len());
    for (raw, value) in entries {
        let Key::Presence(_, device) = decode_key(&raw)? else {
            return Err(Error::corrupt(
                "presence lease",
                "unexpected key in the presence range",
            ));
        };
        let record: PresenceRecord = super::Record::from_stored(&value)?;
        if record.lease_expires_at_ms <= now_ms {
            continue;
        }
        leases.push(Lease {
            device,
            holder: Holder {
                peer_address: record.peer_address,
                gateway_id: record.gateway_id,
            },
            expires_at_ms: record.lease_expires_at_ms,
        });
    }
    Ok(leases)
}

impl super::Store {
    /// Claims the lease of one device (see [`claim`]).
    pub async fn claim_presence(
        &self,
        box_id: BoxId,
        device: DeviceId,
        holder: &Holder,
        expires_at_ms: u64,
    ) -> Result<()> {
        crate::transact!(self, |txn| claim(
            txn,
            box_id,
            device,
            holder,
            expires_at_ms
        )
        .await)
    }

    /// Renews the leases of several devices in one transaction (see [`renew`]);
    /// one outcome per lease, in order.
    pub async fn renew_presence(
        &self,
        leases: &[(BoxId, DeviceId)],
        holder: &Holder,
        now_ms: u64,
        expires_at_ms: u64,
    ) -> Result<Vec<Renewal>> {
        crate::transact!(self, |txn| async {
            let mut out = Vec::with_capacity(leases.len());
            for &(box_id, device) in leases {
                out.push(renew(txn, box_id, device, holder, now_ms, expires_at_ms).await?);
            }
            Ok(out)
        }
        .await)
    }

    /// Releases the leases of several devices that still name `gateway_id`, in one
    /// transaction, skipping those for which `keep` answers true. `keep` is asked
    /// again on every attempt, so a lease claimed anew while a release conflicted
    /// with that claim is not released after all. Returns how many were removed.
    pub async fn release_presence(
        &self,
        leases: &[(BoxId, DeviceId)],
        gateway_id: &str,
        keep: &(dyn Fn(BoxId, DeviceId) -> bool + Sync),
    ) -> Result<usize> {
        crate::transact!(self, |txn| async {
            let mut removed = 0;
            for &(box_id, device) in leases {
                if !keep(box_id, device) && release(txn, box_id, device, gateway_id).await? {
                    removed += 1;
                }
            }
            Ok(removed)
        }
        .await)
    }

    /// The live leases of several boxes, read in one transaction (see [`live`]);
    /// one list per box, in order.
    pub async fn live_presence(&self, boxes: &[BoxId], now_ms: u64) -> Result<Vec<Vec<Lease>>> {
        crate::transact!(self, |txn| async {
            let mut out = Vec::with_capacity(boxes.len());
            for &box_id in boxes {
                out.push(live(txn, box_id, now_ms).await?);
            }
            Ok(out)
        }
        .await)
    }
}
