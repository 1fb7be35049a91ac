//! Verification limits of one identifier, kept in storage: how many codes may
//! still be sent to it (a token bucket) and how many wrong codes were tried for
//! it in the current window, across all of its registrations and identifier
//! additions.
//!
//! A limit kept in a gateway's memory multiplies with the number of gateways and
//! starts again on every restart; this one is one record per identifier
//! (`global/identifier-limit/{lookup digest}`), read and written in the
//! transaction that spends it. Every spend writes the record, so two concurrent
//! spends of the last unit write a common key and, under snapshot isolation,
//! one of them conflicts and is decided again on the new count. A refusal
//! writes nothing.

use super::records::IdentifierLimitRecord;
use super::tx::{SharedKey, Tx};
use crate::error::Result;

/// A token bucket: `burst` codes at once, refilled at `per_ms` codes per
/// millisecond. An infinite `burst` or rate disables the limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CodeRate {
    /// Codes added back per millisecond.
    pub per_ms: f64,
    /// Most codes at once (a full bucket).
    pub burst: f64,
}

impl CodeRate {
    fn unlimited(&self) -> bool {
        !self.per_ms.is_finite() || !self.burst.is_finite()
    }
}

fn key(digest: &[u8; 32]) -> SharedKey {
    SharedKey::IdentifierLimit(*digest)
}

async fn read(txn: &mut Tx<'_>, digest: &[u8; 32]) -> Result<Option<IdentifierLimitRecord>> {
    txn.get(&key(digest).into()).await
}

/// The bucket's tokens at `now_ms` (a bucket never seen is full).
fn tokens_at(record: Option<&IdentifierLimitRecord>, rate: CodeRate, now_ms: u64) -> f64 {
    match record {
        None => rate.burst,
        Some(r) if r.codes_updated_ms == 0 => rate.burst,
        Some(r) => {
            let elapsed = now_ms.saturating_sub(r.codes_updated_ms) as f64;
            (r.code_tokens + elapsed * rate.per_ms.max(0.0)).min(rate.burst)
        }
    }
}

/// Takes one code from the identifier's bucket: `Ok(None)` when taken, or
/// `Ok(Some(ms))`, how long until one is available, writing nothing.
pub async fn take_code(
    txn: &mut Tx<'_>,
    digest: &[u8; 32],
    rate: CodeRate,
    now_ms: u64,
) -> Result<Option<u64>> {
    if rate.unlimited() {
        return Ok(None);
    }
    let mut record = read(txn, digest).await?.unwrap_or_default();
    let tokens = tokens_at(Some(&record), rate, now_ms);
    if tokens < 1.0 {
        let missing = 1.0 - tokens;
        let wait = if rate.per_ms > 0.0 {
            (missing / rate.per_ms).ceil().min(u64::MAX as f64) as u64
        } else {
            u64::MAX
        };
        return Ok(Some(wait.max(1)));
    }
    record.code_tokens = tokens - 1.0;
    record.codes_updated_ms = now_ms.max(1);
    txn.put_shared(key(digest), &record).await?;
    Ok(None)
}

fn window_start(now_ms: u64, window_ms: u64) -> u64 {
    now_ms - now_ms % window_ms.max(1)
}

/// Wrong codes tried for the identifier in the window of `window_ms` that
/// contains `now_ms`.
pub async fn wrong_codes(
    txn: &mut Tx<'_>,
    digest: &[u8; 32],
    now_ms: u64,
    window_ms: u64,
) -> Result<u32> {
    let start = window_start(now_ms, window_ms);
    Ok(read(txn, digest)
        .await?
        .filter(|r| r.wrong_window_start_ms == start)
        .map_or(0, |r| r.wrong_codes))
}

/// Counts one wrong code for the identifier and returns the window's count.
/// Written in the transaction that found the code wrong, so concurrent guesses
/// conflict on this record and none goes uncounted.
pub async fn record_wrong_code(
    txn: &mut Tx<'_>,
    digest: &[u8; 32],
    now_ms: u64,
    window_ms: u64,
) -> Result<u32> {
    let start = window_start(now_ms, window_ms);
    let mut record = read(txn, digest).await?.unwrap_or_default();
    if record.wrong_window_start_ms != start {
        record.wrong_window_start_ms = start;
        record.wrong_codes = 0;
    }
    record.wrong_codes = record.wrong_codes.saturating_add(1);
    let count = record.wrong_codes;
    txn.put_shared(key(digest), &record).await?;
    Ok(count)
}
