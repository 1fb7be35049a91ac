//! Deployment-wide budgets of verification codes (against SMS pumping: sending
//! codes to many numbers, often in one range, to earn from the messages).
//!
//! A budget is a scope (every code, one number prefix, one e-mail domain) and a
//! most-codes-per-window. Its count lives in one global record per scope,
//! [`CodeBudgetRecord`], so it holds across the deployment's gateways and
//! restarts. Spending reads and writes the records of every scope of a code in
//! one transaction: two codes spending the last unit of a budget write the same
//! key, so under snapshot isolation one of them conflicts and is decided again.
//! A refusal writes nothing, so a refused code spends no other budget either.

use super::records::CodeBudgetRecord;
use super::tx::{SharedKey, Tx};
use crate::error::Result;
use sha2::{Digest, Sha256};

/// One budget a code must fit in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Its name (`all`, `prefix:+14155`, `domain:example.com`): what is counted.
    pub scope: String,
    /// Most codes per window.
    pub limit: u64,
}

/// The key of a scope's record.
fn scope_key(scope: &str) -> SharedKey {
    SharedKey::CodeBudget(Sha256::digest(scope.as_bytes()).into())
}

/// Spends one code from every budget, or none: `Ok(Some(i))` names the first
/// budget (by index) that has no room left in the window that began at the
/// latest multiple of `window_ms` before `now_ms`, and writes nothing.
pub async fn spend(
    txn: &mut Tx<'_>,
    budgets: &[Budget],
    now_ms: u64,
    window_ms: u64,
) -> Result<Option<usize>> {
    let window_start_ms = now_ms - now_ms % window_ms.max(1);
    let mut records = Vec::with_capacity(budgets.len());
    for (i, budget) in budgets.iter().enumerate() {
        let key = scope_key(&budget.scope);
        let stored: Option<CodeBudgetRecord> = txn.get(&key.into()).await?;
        let count = match stored {
            Some(r) if r.window_start_ms == window_start_ms => r.count,
            _ => 0,
        };
        if count >= budget.limit {
            return Ok(Some(i));
        }
        records.push((
            key,
            CodeBudgetRecord {
                window_start_ms,
                count: count + 1,
            },
        ));
    }
    for (key, record) in records {
        txn.put_shared(key, &record).await?;
    }
    Ok(None)
}

/// Codes sent in the current window of `scope` (0 in a new window).
pub async fn spent(txn: &mut Tx<'_>, scope: &str, now_ms: u64, window_ms: u64) -> Result<u64> {
    let window_start_ms = now_ms - now_ms % window_ms.max(1);
    let stored: Option<CodeBudgetRecord> = txn.get(&scope_key(scope).into()).await?;
    Ok(stored
        .filter(|r| r.window_start_ms == window_start_ms)
        .map_or(0, |r| r.count))
}
