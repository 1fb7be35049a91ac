//! Wake-up push tokens: how to wake each device that is not connected, and when
//! it was last woken.
//!
//! One [`PushTokenRecord`] per device under `box/{box}/push/{device}`, written
//! under the device's guard (so a token cannot outlive a concurrent removal of
//! the device or deletion of the account) and deleted with the device.
//!
//! # Coalescing
//! [`due_wakes`] decides, in the box's home region after a commit, which of the
//! box's devices get a wake-up now, and records it in the same transaction:
//! - not a device with a live presence lease (it is connected somewhere and
//!   hears of the message over its connection), nor one the caller knows is
//!   online here;
//! - at most one per device per `interval_ms`;
//! - none while one is outstanding: a wake-up was handed to the provider and
//!   the device has not acknowledged anything since (its pointer is still where
//!   it was). An outstanding wake-up lapses after `outstanding_ms`, since a
//!   push service may drop a wake-up without telling anyone.
//!
//! Two schedulers deciding at once (ownership moving) both write the record, so
//! only one of them commits under snapshot isolation and the device gets one
//! wake-up.

use super::decode_key;
use super::records::{PushProvider, PushTokenRecord};
use super::tx::Tx;
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
use rossby_keyspace::{BoxId, DeviceId, Key, Table};

/// Longest token accepted (an APNs token in hex, an FCM registration token or
/// a Web Push endpoint URL), in bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Most tokens read from one box (one per device).
pub const MAX_TOKENS_PER_BOX: usize = 1024;

/// A device's push token as the device registered it.
#[derive(Clone, PartialEq, Eq)]
pub struct PushToken {
    /// The push service.
    pub provider: PushProvider,
    /// APNs: the device token in lower-case hex; FCM: the registration token;
    /// Web Push: the subscription endpoint.
    pub token: String,
    /// Web Push: the subscription's P-256 public key (65 bytes); else empty.
    pub p256dh: Vec<u8>,
    /// Web Push: the subscription's authentication secret (16 bytes); else empty.
    pub auth: Vec<u8>,
}

// A token is a credential of the device: never in logs.
impl std::fmt::Debug for PushToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PushToken({:?})", self.provider)
    }
}

impl PushToken {
    /// Rejects an unspecified provider, an empty or oversized token, and Web
    /// Push keys of the wrong length (or keys on another provider's token).
    pub fn check(&self) -> Result<()> {
        if self.provider == PushProvider::Unspecified {
            return Err(Error::Invalid("a push token needs a provider".into()));
        }
        if self.token.is_empty() || self.token.len() > MAX_TOKEN_BYTES {
            return Err(Error::Invalid(format!(
                "a push token must have 1 to {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let keys_ok = if self.provider == PushProvider::Webpush {
            self.p256dh.len() == 65 && self.auth.len() == 16
        } else {
            self.p256dh.is_empty() && self.auth.is_empty()
        };
        if !keys_ok {
            return Err(Error::Invalid(
                "Web Push needs a 65-byte p256dh key and a 16-byte auth secret; other providers none"
                    .into(),
            ));
        }
        Ok(())
    }

    fn of(record: &PushTokenRecord) -> PushToken {
        PushToken {
            provider: record.provider(),
            token: record.token.clone(),
            p256dh: record.p256dh.clone(),
            auth: record.auth.clone(),
        }
    }

    fn same_as(&self, record: &PushTokenRecord) -> bool {
        record.provider() == self.provider
            && record.token == self.token
            && record.p256dh == self.p256dh
            && record.auth == self.auth
    }
}

/// When wake-ups may be sent (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WakePolicy {
    /// Least time between two wake-ups of one device, in milliseconds.
    pub interval_ms: u64,
    /// How long an unanswered wake-up blocks the next one, in milliseconds.
    pub outstanding_ms: u64,
}

/// A wake-up [`due_wakes`] decided on and recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueWake {
    /// The box.
    pub box_id: BoxId,
    /// The device to wake.
    pub device: DeviceId,
    /// Where to send it.
    pub token: PushToken,
}

/// Stores `token` as the push token of `device`, replacing any earlier one
/// and resetting its wake-up state. Fails with [`Error::DeviceNotFound`] when
/// the device does not exist.
pub async fn register(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device: DeviceId,
    token: &PushToken,
    now_ms: u64,
) -> Result<()> {
    token.check()?;
    let (handle, _) = txn.lock_device(box_id, device).await?;
    let record = PushTokenRecord {
        provider: token.provider as i32,
        token: token.token.clone(),
        p256dh: token.p256dh.clone(),
        auth: token.auth.clone(),
        registered_at_ms: now_ms,
        ..PushTokenRecord::default()
    };
    txn.put(&handle, &Key::PushToken(box_id, device), &record)
        .await
}

/// Removes the push token of `device`. Returns whether there was one; fails
/// with [`Error::DeviceNotFound`] when the device does not exist.
pub async fn remove(txn: &mut Tx<'_>, box_id: BoxId, device: DeviceId) -> Result<bool> {
    let (handle, _) = txn.lock_device(box_id, device).await?;
    let key = Key::PushToken(box_id, device);
    if txn.get_raw(&key).await?.is_none() {
        return Ok(false);
    }
    txn.delete(&handle, &key).await?;
    Ok(true)
}

/// The push token of `device` and its wake-up state, if it has one.
pub async fn get(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device: DeviceId,
) -> Result<Option<PushTokenRecord>> {
    txn.get(&Key::PushToken(box_id, device)).await
}

/// Every push token of a box, in device order.
pub async fn list(txn: &mut Tx<'_>, box_id: BoxId) -> Result<Vec<(DeviceId, PushTokenRecord)>> {
    let entries = txn
        .scan(
            &Key::table_range(box_id, Table::PushToken),
            MAX_TOKENS_PER_BOX,
            ScanOrder::Forward,
        )
        .await?;
    let mut out = Vec::with_capacity(entries.len());
    for (raw, value) in entries {
        let Key::PushToken(_, device) = decode_key(&raw)? else {
            return Err(Error::corrupt(
                "push token",
                "unexpected key in the push range",
            ));
        };
        out.push((device, super::Record::from_stored(&value)?));
    }
    Ok(out)
}

/// Decides which devices of `box_id` to wake now and records the wake-ups
/// (see the module documentation). `skip` (the device that sent the message)
/// and devices for which `online` answers true are not woken.
pub async fn due_wakes(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    skip: Option<DeviceId>,
    online: &(dyn Fn(DeviceId) -> bool + Sync),
    policy: WakePolicy,
    now_ms: u64,
) -> Result<Vec<DueWake>> {
    let tokens = list(txn, box_id).await?;
    if tokens.is_empty() {
        return Ok(Vec::new());
    }
    let leased: Vec<DeviceId> = super::presence::live(txn, box_id, now_ms)
        .await?
        .into_iter()
        .map(|lease| lease.device)
        .collect();
    let mut due = Vec::new();
    for (device, mut record) in tokens {
        if Some(device) == skip || leased.contains(&device) || online(device) {
            continue;
        }
        if record.woken_at_ms != 0 && now_ms < record.woken_at_ms.saturating_add(policy.interval_ms)
        {
            continue;
        }
        let acked = txn
            .get::<super::records::Pointer>(&Key::Pointer(box_id, device))
            .await?
            .map_or(0, |p| p.acked);
        let outstanding = record.outstanding
            && acked <= record.woken_acked
            && now_ms < record.woken_at_ms.saturating_add(policy.outstanding_ms);
        if outstanding {
            continue;
        }
        let handle = match txn.lock_device(box_id, device).await {
            Ok((handle, _)) => handle,
            Err(Error::DeviceNotFound | Error::BoxNotFound) => continue,
            Err(err) => return Err(err),
        };
        record.woken_at_ms = now_ms;
        record.woken_acked = acked;
        record.outstanding = true;
        txn.put(&handle, &Key::PushToken(box_id, device), &record)
            .await?;
        due.push(DueWake {
            box_id,
            device,
            token: PushToken::of(&record),
        });
    }
    Ok(due)
}

/// How a wake-up finally ended, for [`settle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// The provider said the token is no longer valid: remove it.
    Unregistered,
    /// Delivery failed for good (retries exhausted or refused): the wake-up is
    /// no longer outstanding, so the next message may try again once the
    /// interval has passed.
    Failed,
}

/// Records how the wake-up of `wake` ended, if the device still has the same
/// token (a token registered meanwhile is left alone). Returns whether
/// anything was written.
pub async fn settle(txn: &mut Tx<'_>, wake: &DueWake, how: Settlement) -> Result<bool> {
    let key = Key::PushToken(wake.box_id, wake.device);
    let Some(mut record) = txn.get::<PushTokenRecord>(&key).await? else {
        return Ok(false);
    };
    if !wake.token.same_as(&record) {
        return Ok(false);
    }
    let handle = match txn.lock_device(wake.box_id, wake.device).await {
        Ok((handle, _)) => handle,
        Err(Error::DeviceNotFound | Error::BoxNotFound) => return Ok(false),
        Err(err) => return Err(err),
    };
    match how {
        Settlement::Unregistered => txn.delete(&handle, &key).await?,
        Settlement::Failed => {
            if !record.outstanding {
                return Ok(false);
            }
            record.outstanding = false;
            txn.put(&handle, &key, &record).await?;
        }
    }
    Ok(true)
}

impl super::Store {
    /// Registers the push token of a device (see [`register`]).
    pub async fn register_push_token(
        &self,
        box_id: BoxId,
        device: DeviceId,
        token: &PushToken,
        now_ms: u64,
    ) -> Result<()> {
        crate::transact!(self, |txn| register(txn, box_id, device, token, now_ms)
            .await)
    }

    /// Removes the push token of a device (see [`remove`]).
    pub async fn remove_push_token(&self, box_id: BoxId, device: DeviceId) -> Result<bool> {
        crate::transact!(self, |txn| remove(txn, box_id, device).await)
    }

    /// The push token of a device (see [`get`]).
    pub async fn push_token(
        &self,
        box_id: BoxId,
        device: DeviceId,
    ) -> Result<Option<PushTokenRecord>> {
        crate::transact!(self, |txn| get(txn, box_id, device).await)
    }

    /// Decides and records the wake-ups of several boxes in one transaction
    /// (see [`due_wakes`]); `boxes` pairs each box with the device to skip.
    pub async fn due_wakes(
        &self,
        boxes: &[(BoxId, Option<DeviceId>)],
        online: &(dyn Fn(BoxId, DeviceId) -> bool + Sync),
        policy: WakePolicy,
        now_ms: u64,
    ) -> Result<Vec<DueWake>> {
        crate::transact!(self, |txn| async {
            let mut out = Vec::new();
            for &(box_id, skip) in boxes {
                let online = |device| online(box_id, device);
                out.extend(due_wakes(txn, box_id, skip, &online, policy, now_ms).await?);
            }
            Ok(out)
        }
        .await)
    }

    /// Records how a wake-up ended (see [`settle`]).
    pub async fn settle_wake(&self, wake: &DueWake, how: Settlement) -> Result<bool> {
        crate::transact!(self, |txn| settle(txn, wake, how).await)
    }
}
