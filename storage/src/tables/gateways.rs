//! Ownership leases: which gateways of a region are alive to own boxes.
//!
//! Each gateway that takes part in box ownership writes a lease under
//! `0x02 <region> 0x04 <gateway id>` (in its region's key range, so renewing it
//! is a transaction in the region) naming its peer endpoint, and renews it well
//! before it lapses. Every gateway reads the live leases of every region and
//! picks each box's owner among the live gateways of the box's home region
//! (`rossby_replication::ownership`). A gateway that drains deletes its lease;
//! one that dies stops renewing and drops out when the lease lapses.
//!
//! Each gateway writes only its own lease, so renewals never conflict. Leases that
//! lapsed long ago (a gateway that died) are deleted by the renewals of the others
//! once they are older than [`STALE_AFTER_MS`].

use super::presence::Holder;
use super::records::PresenceRecord;
use super::tx::{SharedKey, Tx};
use super::{Record, decode_key};
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
use rossby_keyspace::{Key, RegionId};

/// Most leases read from one region (a region runs a handful of gateways).
pub const MAX_GATEWAYS_PER_REGION: usize = 256;

/// How long after lapsing a lease is deleted by another gateway's renewal.
pub const STALE_AFTER_MS: u64 = 60_000;

/// A gateway's lease as read from storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayLease {
    /// The gateway run's id (random per start).
    pub id: [u8; 16],
    /// Its peer endpoint.
    pub peer_address: String,
    /// When the lease lapses unless renewed.
    pub expires_at_ms: u64,
}

/// Writes (or renews) the lease of gateway `id` in `region`, lapsing at
/// `expires_at_ms`, and deletes leases of the region that lapsed more than
/// [`STALE_AFTER_MS`] before `now_ms`.
pub async fn renew(
    txn: &mut Tx<'_>,
    region: RegionId,
    id: [u8; 16],
    peer_address: &str,
    expires_at_ms: u64,
    now_ms: u64,
) -> Result<()> {
    Holder {
        peer_address: peer_address.to_string(),
        gateway_id: hex_id(id),
    }
    .check()?;
    for stale in all(txn, region)
        .await?
        .into_iter()
        .filter(|l| l.id != id && l.expires_at_ms.saturating_add(STALE_AFTER_MS) < now_ms)
    {
        txn.delete_shared(SharedKey::GatewayLease(region, stale.id))
            .await?;
    }
    let record = PresenceRecord {
        peer_address: peer_address.to_string(),
        gateway_id: hex_id(id),
        lease_expires_at_ms: expires_at_ms,
    };
    txn.put_shared(SharedKey::GatewayLease(region, id), &record)
        .await
}

/// Deletes the lease of gateway `id` (a draining gateway gives its boxes away).
pub async fn release(txn: &mut Tx<'_>, region: RegionId, id: [u8; 16]) -> Result<()> {
    txn.delete_shared(SharedKey::GatewayLease(region, id)).await
}

/// The leases of `region` that are live at `now_ms`, ordered by gateway id.
pub async fn live(txn: &mut Tx<'_>, region: RegionId, now_ms: u64) -> Result<Vec<GatewayLease>> {
    let mut leases = all(txn, region).await?;
    leases.retain(|l| l.expires_at_ms > now_ms);
    Ok(leases)
}

async fn all(txn: &mut Tx<'_>, region: RegionId) -> Result<Vec<GatewayLease>> {
    let entries = txn
        .scan(
            &Key::gateway_lease_range(region),
            MAX_GATEWAYS_PER_REGION,
            ScanOrder::Forward,
        )
        .await?;
    entries
        .iter()
        .map(|(raw, value)| {
            let Key::GatewayLease(_, id) = decode_key(raw)? else {
                return Err(Error::corrupt(
                    "gateway lease",
                    "unexpected key in the lease range",
                ));
            };
            let record = PresenceRecord::from_stored(value)?;
            Ok(GatewayLease {
                id,
                peer_address: record.peer_address,
                expires_at_ms: record.lease_expires_at_ms,
            })
        })
        .collect()
}

/// The gateway id as lowercase hex (how presence leases name a gateway run).
pub fn hex_id(id: [u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
