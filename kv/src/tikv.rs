//! TiKV backend: the [`KvStore`] abstraction on top of `tikv-client`'s
//! transactional API.
//!
//! Transactions are optimistic, plain two-phase (percolator) commits: writes are
//! buffered and checked for conflicts at prewrite, exactly the snapshot-isolation
//! contract of [`KvStore`]. There is deliberately no pessimistic mode: the client
//! takes pessimistic locks at a fresh `for_update_ts`, so a key read with a plain
//! `get` and then written does not conflict with commits made after the
//! transaction began. An enqueue reads `next` that way, so two gateways could give
//! two envelopes the same sequence number and one message would be lost. Enqueues
//! into one box go through one owner, so there is no lock contention left for
//! pessimistic locking to save.
//!
//! Async commit and 1PC are deliberately left off: the Rust client's async-commit
//! path is incomplete (by its own FIXME it has no fallback to 2PC when TiKV
//! declines async commit), and 1PC gains little for the small transactions Rossby
//! runs.
//!
//! The part that needs care is error reporting. The client returns one large error
//! enum whose interesting cases arrive nested (a write conflict is a `KeyError`
//! inside `MultipleKeyErrors`, possibly inside `PessimisticLockError` or
//! `ExtractedErrors`), so [`classify`] walks the whole tree and reports the most
//! telling finding. A failed commit is judged more strictly
//! ([`classify_commit`]): the client only flags an unknown outcome for one kind of
//! transport failure, so every failure that does not prove the primary key was left
//! uncommitted is reported as [`Error::Undetermined`].

use crate::{Error, Result};
use crate::{Key, KeyRange, KvPair, KvStore, ScanOrder, Transaction, Value, check_value_size};
use async_trait::async_trait;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Bound;
use std::time::Duration;
use tikv_client::{BoundRange, CheckLevel, TransactionClient, TransactionOptions};

/// Settings for connecting to a TiKV cluster.
#[derive(Clone, Debug)]
pub struct TikvConfig {
    /// Placement driver addresses (`host:port`); any reachable one is enough.
    pub pd_endpoints: Vec<String>,
    /// Deadline of each RPC to PD or TiKV (the client retries failed RPCs with
    /// back-off, so one operation may take several of these).
    pub request_timeout: Duration,
}

impl TikvConfig {
    /// The client's own default RPC deadline.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

    /// The given placement drivers, with the default request timeout.
    pub fn new<I, S>(pd_endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TikvConfig {
            pd_endpoints: pd_endpoints.into_iter().map(Into::into).collect(),
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The same settings with another RPC deadline.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long [`TikvStore::connect`] may take in total. The client puts no
    /// deadline on opening connections, so an unreachable (black-holed) PD address
    /// would otherwise stall start-up for minutes.
    fn connect_timeout(&self) -> Duration {
        self.request_timeout
            .saturating_mul(4)
            .max(Duration::from_secs(10))
    }
}

/// The environment variable that names the TiKV cluster the test suites run
/// against: comma-separated `host:port` placement driver endpoints.
pub const TEST_PD_ENV: &str = "ROSSBY_TEST_PD";

/// For test suites: the placement drivers named by [`TEST_PD_ENV`], or `None`
/// when it is unset or names none, in which case a suite skips its cluster tests
/// (and says so). Surrounding spaces and empty entries are ignored.
pub fn test_endpoints_from_env() -> Option<Vec<String>> {
    parse_endpoints(&std::env::var(TEST_PD_ENV).ok()?)
}

/// The endpoints of a comma-separated list, or `None` when it names none.
fn parse_endpoints(list: &str) -> Option<Vec<String>> {
    let endpoints: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty())
        .map(str::to_owned)
        .collect();
    (!endpoints.is_empty()).then_some(endpoints)
}

/// A TiKV cluster seen through the [`KvStore`] abstraction.
pub struct TikvStore {
    client: TransactionClient,
    endpoints: Vec<String>,
}

impl fmt::Debug for TikvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TikvStore")
            .field("pd_endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl TikvStore {
    /// Connects to the placement drivers in `cfg`.
    ///
    /// Fails with [`Error::Invalid`] when no endpoint is configured and with
    /// [`Error::Unavailable`] (naming the endpoints) when none can be reached.
    pub async fn connect(cfg: TikvConfig) -> Result<TikvStore> {
        if cfg.pd_endpoints.is_empty() {
            return Err(Error::Invalid(
                "no TiKV placement driver endpoint configured".into(),
            ));
        }
        let endpoints = cfg.pd_endpoints.clone();
        let client_config = tikv_client::Config::default().with_timeout(cfg.request_timeout);
        let connecting = TransactionClient::new_with_config(endpoints.clone(), client_config);
        let unreachable = |detail: String| {
            Error::Unavailable(format!(
                "cannot connect to the TiKV placement drivers [{}]: {detail}",
                endpoints.join(", ")
            ))
        };
        let client = match tokio::time::timeout(cfg.connect_timeout(), connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(err)) => return Err(unreachable(assess(&err).detail)),
            Err(_elapsed) => {
                return Err(unreachable(format!(
                    "no answer within {:?}",
                    cfg.connect_timeout()
                )));
            }
        };
        Ok(TikvStore { client, endpoints })
    }

    fn options() -> TransactionOptions {
        // An optimistic transaction holds nothing on TiKV before commit, so
        // dropping it (a cancelled request) is its whole rollback; the client's
        // default check would panic instead. Async commit and 1PC stay off (the
        // constructor's defaults), see the module docs.
        TransactionOptions::new_optimistic().drop_check(CheckLevel::None)
    }
}

#[async_trait]
impl KvStore for TikvStore {
    fn backend(&self) -> &'static str {
        "tikv"
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let txn = self
            .client
            .begin_with_options(Self::options())
            .await
            .map_err(classify)?;
        Ok(Box::new(TikvTxn { inner: Some(txn) }))
    }
}

/// One running TiKV transaction.
struct TikvTxn {
    /// `None` once commit took the transaction over.
    inner: Option<tikv_client::Transaction>,
}

impl TikvTxn {
    fn txn(&mut self) -> Result<&mut tikv_client::Transaction> {
        // Unreachable through the trait (commit and rollback consume the box), but
        // an error is cheaper than a panic if that ever changes.
        self.inner
            .as_mut()
            .ok_or_else(|| Error::Invalid("the TiKV transaction has already ended".into()))
    }
}

#[async_trait]
impl Transaction for TikvTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        self.txn()?.get(key.to_vec()).await.map_err(classify)
    }

    async fn batch_get(&mut self, keys: &[Key]) -> Result<Vec<Option<Value>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Ask for each key once; duplicates in the request share the answer.
        let mut seen = HashSet::with_capacity(keys.len());
        let unique: Vec<Key> = keys
            .iter()
            .filter(|key| seen.insert(key.as_slice()))
            .cloned()
            .collect();
        let mut found: HashMap<Key, Value> = self
            .txn()?
            .batch_get(unique)
            .await
            .map_err(classify)?
            .map(into_pair)
            .collect();
        let mut values: Vec<Option<Value>> = Vec::with_capacity(keys.len());
        let mut first_index: HashMap<&[u8], usize> = HashMap::with_capacity(keys.len());
        for key in keys {
            match first_index.entry(key.as_slice()) {
                Entry::Occupied(first) => values.push(values[*first.get()].clone()),
                Entry::Vacant(slot) => {
                    slot.insert(values.len());
                    values.push(found.remove(key.as_slice()));
                }
            }
        }
        Ok(values)
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> Result<Vec<KvPair>> {
        if limit == 0 || range.is_empty() {
            return Ok(Vec::new());
        }
        // TiKV takes a u32; a larger limit cannot be told apart from "everything".
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let bounds = bound_range(range, order);
        let txn = self.txn()?;
        let pairs: Vec<tikv_client::KvPair> = match order {
            ScanOrder::Forward => txn.scan(bounds, limit).await.map_err(classify)?.collect(),
            ScanOrder::Reverse => txn
                .scan_reverse(bounds, limit)
                .await
                .map_err(classify)?
                .collect(),
        };
        Ok(pairs.into_iter().map(into_pair).collect())
    }

    async fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Value>> {
        // The lock becomes a `Lock` mutation in the prewrite, where TiKV rejects it
        // if anyone committed the key after our start: the same guarantee as
        // writing the key.
        let txn = self.txn()?;
        txn.lock_keys([key.to_vec()]).await.map_err(classify)?;
        txn.get(key.to_vec()).await.map_err(classify)
    }

    async fn put(&mut self, key: Key, value: Value) -> Result<()> {
        check_value_size(&value)?;
        self.txn()?.put(key, value).await.map_err(classify)
    }

    async fn delete(&mut self, key: Key) -> Result<()> {
        self.txn()?.delete(key).await.map_err(classify)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        // Taken out first: if this future is dropped mid-commit, the primary key may
        // already be committed, and rolling back the secondaries then would tear
        // the transaction apart. Its locks are resolved by TiKV's usual lock
        // resolution instead.
        let mut txn = match self.inner.take() {
            Some(txn) => txn,
            None => {
                return Err(Error::Invalid(
                    "the TiKV transaction has already ended".into(),
                ));
            }
        };
        match txn.commit().await {
            Ok(_commit_ts) => Ok(()),
            Err(err) => {
                let err = classify_commit(err);
                if !matches!(err, Error::Undetermined(_)) {
                    // The primary is known not to be committed, so cleaning up the
                    // prewrite locks now spares the next attempt (ours or a
                    // competitor's) from waiting out their TTL.
                    spawn_rollback(txn, "after a failed commit");
                }
                Err(err)
            }
        }
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        // Before commit an optimistic transaction exists only in this process, so
        // dropping it is the whole rollback; the client's own rollback would
        // still write a rollback record for every buffered key.
        Ok(())
    }
}

/// The crate's form of a pair returned by the client.
fn into_pair(pair: tikv_client::KvPair) -> KvPair {
    let tikv_client::KvPair(key, value) = pair;
    (key.into(), value)
}

/// Rolls `txn` back on the current Tokio runtime without waiting for it.
fn spawn_rollback(mut txn: tikv_client::Transaction, what: &'static str) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                if let Err(err) = txn.rollback().await {
                    // Harmless: the locks expire with their TTL and are then
                    // resolved by whoever meets them.
                    tracing::debug!(error = %classify(err), "TiKV rollback {what} failed");
                }
            });
        }
        Err(_) => {
            tracing::warn!(
                "TiKV rollback {what} skipped: no Tokio runtime; its locks stay until their TTL expires"
            );
        }
    }
}

/// Largest raw key TiKV accepts is below 8 KiB (`storage.max-key-size` limits the
/// encoded key), so every storable key sorts before this many `0xff` bytes.
const KEY_CEILING_LEN: usize = 8 * 1024;

/// The client's view of `range` for a scan in `order`.
fn bound_range(range: &KeyRange, order: ScanOrder) -> BoundRange {
    let start = Bound::Included(range.start.clone().into());
    let end = match (&range.end, order) {
        (Some(end), _) => Bound::Excluded(end.clone().into()),
        (None, ScanOrder::Forward) => Bound::Unbounded,
        // A reverse scan sends its upper bound as the request's start key, and TiKV
        // reads an empty start key as the smallest key rather than "unbounded", so
        // the last region would come back empty. A finite ceiling above every
        // storable key avoids that.
        (None, ScanOrder::Reverse) => Bound::Excluded(vec![0xff; KEY_CEILING_LEN].into()),
    };
    BoundRange::new(start, end)
}

/// Maps an error from any operation except commit to the crate's error.
///
/// See [`Verdict`] for the mapping. Transport and cluster failures become
/// [`Error::Unavailable`].
fn classify(err: tikv_client::Error) -> Error {
    let finding = assess(&err);
    match finding.verdict {
        Verdict::Unreachable | Verdict::Refused => Error::Unavailable(finding.detail),
        Verdict::Conflict => Error::Conflict(finding.detail),
        Verdict::Invalid => Error::Invalid(finding.detail),
        Verdict::Undetermined => Error::Undetermined(finding.detail),
    }
}

/// Maps an error from `commit` to the crate's error.
///
/// The client reports prewrite and primary-commit failures alike and marks the
/// outcome unknown only for one kind of transport error (and not for RPC timeouts,
/// which arrive as gRPC statuses). So only an answer from TiKV (a key error, a
/// refused region) or a conflict proves nothing was committed; every other failure
/// may have hit the primary commit after it was applied and is
/// [`Error::Undetermined`].
fn classify_commit(err: tikv_client::Error) -> Error {
    let finding = assess(&err);
    match finding.verdict {
        Verdict::Unreachable => Error::Undetermined(format!(
            "commit failed and the primary key may have been committed: {}",
            finding.detail
        )),
        _ => classify(err),
    }
}

/// What an error says about the transaction, from least to most decisive: when
/// several errors are nested or listed, the largest verdict wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    /// PD or TiKV could not be reached or did not serve the request (transport,
    /// timeout, region or leader trouble). Nothing is known about a request that
    /// was in flight. [`Error::Unavailable`]; during commit [`Error::Undetermined`].
    Unreachable,
    /// TiKV answered and refused the request for a reason re-running will not fix
    /// (`abort`, assertion failures). Nothing was applied. [`Error::Unavailable`].
    Refused,
    /// Another transaction got in the way (write conflict, deadlock, a lock that
    /// could not be resolved, our locks rolled back by someone else). Nothing was
    /// applied; re-running the transaction may succeed. [`Error::Conflict`].
    Conflict,
    /// The request itself is wrong (too large, key already exists, misuse of the
    /// client); re-running would fail again. [`Error::Invalid`].
    Invalid,
    /// The client itself says the commit outcome is unknown.
    /// [`Error::Undetermined`].
    Undetermined,
}

/// A verdict with a human-readable explanation (keys in hex, never values).
#[derive(Debug)]
struct Finding {
    verdict: Verdict,
    detail: String,
}

impl Finding {
    fn new(verdict: Verdict, detail: impl Into<String>) -> Self {
        Finding {
            verdict,
            detail: detail.into(),
        }
    }
}

/// Walks `err` and every error nested inside it.
fn assess(err: &tikv_client::Error) -> Finding {
    use Verdict::*;
    use tikv_client::Error as E;
    match err {
        E::UndeterminedError(inner) => Finding::new(
            Undetermined,
            format!(
                "the primary commit failed after a successful prewrite: {}",
                assess(inner).detail
            ),
        ),
        E::PessimisticLockError { inner, .. } => {
            let inner = assess(inner);
            Finding::new(
                inner.verdict,
                format!("pessimistic lock failed: {}", inner.detail),
            )
        }
        E::MultipleKeyErrors(errors) | E::ExtractedErrors(errors) => assess_all(errors),
        E::KeyError(key_error) => assess_key_error(key_error),
        E::RegionError(region_error) => assess_region_error(region_error),
        E::ResolveLockError(locks) => Finding::new(
            Conflict,
            format!(
                "{} key(s) stayed locked by other running transactions",
                locks.len()
            ),
        ),
        E::TxnNotFound(_) => Finding::new(
            Conflict,
            "met a lock whose transaction could not be found yet",
        ),
        E::DuplicateKeyInsertion
        | E::InvalidTransactionType
        | E::OperationAfterCommitError
        | E::NoPrimaryKey
        | E::UnsupportedMode
        | E::Unimplemented
        | E::ColumnFamilyError(_)
        | E::MaxScanLimitExceeded { .. } => {
            Finding::new(Invalid, format!("TiKV client rejected the call: {err}"))
        }
        E::OnePcFailure => Finding::new(Refused, "TiKV refused the one-phase commit"),
        E::GrpcAPI(status) => Finding::new(
            Unreachable,
            format!("gRPC status {:?}: {}", status.code(), status.message()),
        ),
        E::RegionForKeyNotFound { key } => Finding::new(
            Unreachable,
            format!("no region found for key {}", key_for_log(key)),
        ),
        E::RegionForRangeNotFound { .. } => {
            Finding::new(Unreachable, "no region found for a key range")
        }
        E::LeaderNotFound { region } => Finding::new(
            Unreachable,
            format!("no leader found for region {}", region.id),
        ),
        E::KvError { message } => Finding::new(Unreachable, format!("TiKV error: {message}")),
        // Transport (Grpc, Io, Channel, Canceled, JoinError), PD and region-cache
        // trouble, string and internal errors, and anything a later client version
        // adds: the request's fate is unknown.
        other => Finding::new(Unreachable, other.to_string()),
    }
}

/// The most decisive finding among `errors`, noting how many others there were.
fn assess_all(errors: &[tikv_client::Error]) -> Finding {
    let mut best: Option<Finding> = None;
    for finding in errors.iter().map(assess) {
        // Strictly greater: the first of equally decisive errors explains best.
        if best.as_ref().is_none_or(|b| finding.verdict > b.verdict) {
            best = Some(finding);
        }
    }
    match best {
        Some(mut finding) => {
            if errors.len() > 1 {
                finding.detail =
                    format!("{} (and {} more errors)", finding.detail, errors.len() - 1);
            }
            finding
        }
        None => Finding::new(
            Verdict::Unreachable,
            "TiKV reported an empty list of errors",
        ),
    }
}

/// Markers of TiKV `abort` messages meaning this transaction's pessimistic lock is
/// gone (expired and resolved by someone else): it cannot commit, but a new attempt can.
const LOST_LOCK_MARKERS: [&str; 2] = ["PessimisticLockNotFound", "PessimisticLockRolledBack"];

/// Judges one per-key error from TiKV. TiKV fills exactly one field (plus
/// `retryable` next to `conflict` for old clients), so the order only matters for
/// malformed replies.
fn assess_key_error(e: &tikv_client::ProtoKeyError) -> Finding {
    use Verdict::*;
    if let Some(conflict) = &e.conflict {
        return Finding::new(
            Conflict,
            format!(
                "write conflict on key {} (reason {}, conflicting commit at ts {})",
                key_for_log(&conflict.key),
                conflict.reason().as_str_name(),
                conflict.conflict_commit_ts
            ),
        );
    }
    if let Some(deadlock) = &e.deadlock {
        return Finding::new(
            Conflict,
            format!(
                "deadlock while waiting for the lock of transaction {} on key {}",
                deadlock.lock_ts,
                key_for_log(&deadlock.lock_key)
            ),
        );
    }
    if let Some(exists) = &e.already_exist {
        return Finding::new(
            Invalid,
            format!("key {} already exists", key_for_log(&exists.key)),
        );
    }
    if let Some(expired) = &e.commit_ts_expired {
        return Finding::new(
            Conflict,
            format!(
                "commit timestamp expired for key {}",
                key_for_log(&expired.key)
            ),
        );
    }
    if let Some(missing) = &e.txn_not_found {
        return Finding::new(
            Conflict,
            format!(
                "met a lock of transaction {} that could not be found",
                missing.start_ts
            ),
        );
    }
    if let Some(lock) = &e.locked {
        return Finding::new(
            Conflict,
            format!(
                "key {} is locked by transaction {}",
                key_for_log(&lock.key),
                lock.lock_version
            ),
        );
    }
    if !e.retryable.is_empty() {
        // TxnLockNotFound at commit: our lock was rolled back by a transaction that
        // found it expired, so the primary is certainly not committed.
        let detail = if e.retryable.contains("TxnLockNotFound") {
            "this transaction's locks were rolled back by another transaction".to_owned()
        } else {
            format!("TiKV asked to retry: {}", truncate(&e.retryable))
        };
        return Finding::new(Conflict, detail);
    }
    if e.commit_ts_too_large.is_some() {
        return Finding::new(Refused, "commit timestamp too large");
    }
    if let Some(failed) = &e.assertion_failed {
        return Finding::new(
            Refused,
            format!("assertion failed on key {}", key_for_log(&failed.key)),
        );
    }
    if e.primary_mismatch.is_some() {
        return Finding::new(Refused, "lock does not belong to the expected primary key");
    }
    if !e.abort.is_empty() {
        if LOST_LOCK_MARKERS
            .iter()
            .any(|marker| e.abort.contains(marker))
        {
            return Finding::new(
                Conflict,
                format!(
                    "this transaction's pessimistic lock is gone: {}",
                    truncate(&e.abort)
                ),
            );
        }
        return Finding::new(
            Refused,
            format!("TiKV aborted the transaction: {}", truncate(&e.abort)),
        );
    }
    Finding::new(Refused, "TiKV returned an empty key error")
}

/// Judges a region error left over after the client's own retries.
fn assess_region_error(e: &tikv_client::ProtoRegionError) -> Finding {
    let kind = if e.not_leader.is_some() {
        "not leader"
    } else if e.region_not_found.is_some() {
        "region not found"
    } else if e.key_not_in_region.is_some() {
        "key not in region"
    } else if e.epoch_not_match.is_some() {
        "epoch not match"
    } else if e.server_is_busy.is_some() {
        "server is busy"
    } else if e.stale_command.is_some() {
        "stale command"
    } else if e.store_not_match.is_some() {
        "store not match"
    } else if e.raft_entry_too_large.is_some() {
        // TiKV refuses before proposing: nothing was applied, and the same
        // transaction would be refused again.
        return Finding::new(
            Verdict::Invalid,
            "the transaction is too large for one TiKV raft entry",
        );
    } else if e.max_timestamp_not_synced.is_some() {
        "max timestamp not synced"
    } else if e.read_index_not_ready.is_some() {
        "read index not ready"
    } else if e.proposal_in_merging_mode.is_some() {
        "region is merging"
    } else if e.data_is_not_ready.is_some() {
        "data is not ready"
    } else if e.region_not_initialized.is_some() {
        "region not initialized"
    } else if e.disk_full.is_some() {
        "disk full"
    } else if e.recovery_in_progress.is_some() {
        "recovery in progress"
    } else if e.flashback_in_progress.is_some() || e.flashback_not_prepared.is_some() {
        "flashback in progress"
    } else {
        "region error"
    };
    let detail = if e.message.is_empty() {
        format!("TiKV region error: {kind}")
    } else {
        format!("TiKV region error: {kind} ({})", truncate(&e.message))
    };
    Finding::new(Verdict::Unreachable, detail)
}

/// Longest excerpt of a TiKV-provided message kept in our errors.
const MAX_MESSAGE_CHARS: usize = 160;

/// `message` cut to [`MAX_MESSAGE_CHARS`] characters: TiKV's messages are debug
/// dumps that can run long.
fn truncate(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_owned(),
    }
}

/// Longest key prefix printed in errors.
const MAX_KEY_BYTES_SHOWN: usize = 32;

/// A key in hex for messages, shortened when long.
fn key_for_log(key: &[u8]) -> String {
    let shown = &key[..key.len().min(MAX_KEY_BYTES_SHOWN)];
    let mut out = String::with_capacity(2 + 2 * shown.len() + 16);
    out.push_str("0x");
    for byte in shown {
        out.push_str(&format!("{byte:02x}"));
    }
    if key.len() > shown.len() {
        out.push_str(&format!("… ({} bytes)", key.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tikv_client::Error as E;
    use tikv_client::{ProtoKeyError, ProtoRegionError};

    /// `WriteConflict.reason` values from kvrpcpb.
    const OPTIMISTIC: i32 = 1;
    const PESSIMISTIC_RETRY: i32 = 2;

    fn conflict(key: &[u8], reason: i32) -> E {
        let mut e = ProtoKeyError::default();
        let mut wc = e.conflict.take().unwrap_or_default();
        wc.key = key.to_vec();
        wc.reason = reason;
        wc.conflict_commit_ts = 42;
        e.conflict = Some(wc);
        // TiKV also fills `retryable` with a debug dump for old clients.
        e.retryable = "WriteConflict { .. }".into();
        E::KeyError(Box::new(e))
    }

    fn key_error(fill: impl FnOnce(&mut ProtoKeyError)) -> E {
        let mut e = ProtoKeyError::default();
        fill(&mut e);
        E::KeyError(Box::new(e))
    }

    fn region_error(fill: impl FnOnce(&mut ProtoRegionError)) -> E {
        let mut e = ProtoRegionError::default();
        fill(&mut e);
        E::RegionError(Box::new(e))
    }

    fn pessimistic(inner: E) -> E {
        E::PessimisticLockError {
            inner: Box::new(inner),
            success_keys: vec![b"ok".to_vec()],
        }
    }

    fn io() -> E {
        E::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ))
    }

    fn is_conflict(e: &Error) -> bool {
        matches!(e, Error::Conflict(_))
    }

    #[test]
    fn optimistic_write_conflict_in_multiple_key_errors_is_a_conflict() {
        let err = || E::MultipleKeyErrors(vec![conflict(b"k1", OPTIMISTIC)]);
        let classified = classify(err());
        assert!(is_conflict(&classified), "{classified:?}");
        let msg = classified.to_string();
        assert!(msg.contains("0x6b31"), "{msg}");
        assert!(msg.contains("Optimistic"), "{msg}");
        assert!(is_conflict(&classify_commit(err())));
    }

    #[test]
    fn pessimistic_retry_inside_pessimistic_lock_error_is_a_conflict() {
        let err = pessimistic(E::MultipleKeyErrors(vec![conflict(
            b"k",
            PESSIMISTIC_RETRY,
        )]));
        let classified = classify(err);
        assert!(is_conflict(&classified), "{classified:?}");
        assert!(classified.to_string().contains("PessimisticRetry"));
    }

    #[test]
    fn deeply_nested_conflicts_are_found() {
        let err = E::MultipleKeyErrors(vec![pessimistic(E::ExtractedErrors(vec![
            E::MultipleKeyErrors(vec![conflict(b"deep", OPTIMISTIC)]),
        ]))]);
        assert!(is_conflict(&classify(err)));

        let err = E::ExtractedErrors(vec![
            io(),
            E::MultipleKeyErrors(vec![pessimistic(conflict(b"deep", PESSIMISTIC_RETRY))]),
        ]);
        let classified = classify_commit(err);
        // The conflict proves the prewrite failed, so the commit is not in doubt.
        assert!(is_conflict(&classified), "{classified:?}");
        assert!(classified.to_string().contains("1 more errors"));
    }

    #[test]
    fn retryable_key_errors_are_conflicts() {
        let lock_gone = || {
            key_error(|e| {
                e.retryable =
                    "Error(Txn(Error(Mvcc(Error(TxnLockNotFound { start_ts: 1 })))))".into();
            })
        };
        assert!(is_conflict(&classify(lock_gone())));
        let at_commit = classify_commit(E::ExtractedErrors(vec![lock_gone()]));
        assert!(is_conflict(&at_commit), "{at_commit:?}");
        assert!(at_commit.to_string().contains("rolled back by another"));
        assert!(is_conflict(&classify(key_error(
            |e| e.retryable = "try again".into()
        ))));
    }

    #[test]
    fn deadlock_and_lock_errors_are_conflicts() {
        let deadlock = key_error(|e| e.deadlock = Some(Default::default()));
        assert!(is_conflict(&classify(pessimistic(deadlock))));

        let locked = key_error(|e| e.locked = Some(Default::default()));
        assert!(is_conflict(&classify(locked)));

        let unresolved = E::ResolveLockError(vec![tikv_client::ProtoLockInfo::default()]);
        assert!(is_conflict(&classify_commit(unresolved)));

        assert!(is_conflict(&classify(E::TxnNotFound(Default::default()))));
        let txn_not_found = key_error(|e| e.txn_not_found = Some(Default::default()));
        assert!(is_conflict(&classify_commit(txn_not_found)));

        let expired = key_error(|e| e.commit_ts_expired = Some(Default::default()));
        assert!(is_conflict(&classify_commit(E::ExtractedErrors(vec![
            expired
        ]))));
    }

    #[test]
    fn already_exist_is_not_a_conflict() {
        let exists = || key_error(|e| e.already_exist = Some(Default::default()));
        assert!(matches!(classify(exists()), Error::Invalid(_)));
        assert!(matches!(classify_commit(exists()), Error::Invalid(_)));
    }

    #[test]
    fn undetermined_anywhere_wins() {
        let undetermined = || E::UndeterminedError(Box::new(E::StringError("lost reply".into())));
        assert!(matches!(classify(undetermined()), Error::Undetermined(_)));
        assert!(matches!(
            classify_commit(undetermined()),
            Error::Undetermined(_)
        ));
        let nested = E::ExtractedErrors(vec![conflict(b"k", OPTIMISTIC), undetermined()]);
        let classified = classify_commit(nested);
        assert!(
            matches!(classified, Error::Undetermined(_)),
            "{classified:?}"
        );
        assert!(classified.to_string().contains("lost reply"));
    }

    #[test]
    fn transport_and_region_errors_are_unavailable_but_undetermined_at_commit() {
        let cases: Vec<fn() -> E> = vec![
            io,
            || region_error(|e| e.not_leader = Some(Default::default())),
            || region_error(|e| e.server_is_busy = Some(Default::default())),
            || region_error(|e| e.stale_command = Some(Default::default())),
            || E::RegionForKeyNotFound { key: b"k".to_vec() },
            || E::StringError("PD timed out".into()),
            || E::InternalError {
                message: "tso stream closed".into(),
            },
            || {
                E::ExtractedErrors(vec![region_error(|e| {
                    e.epoch_not_match = Some(Default::default())
                })])
            },
        ];
        for case in cases {
            let classified = classify(case());
            assert!(
                matches!(classified, Error::Unavailable(_)),
                "{classified:?}"
            );
            let at_commit = classify_commit(case());
            assert!(matches!(at_commit, Error::Undetermined(_)), "{at_commit:?}");
        }
    }

    #[tokio::test]
    async fn a_failed_task_join_is_unavailable() {
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        let join_error = task.await.unwrap_err();
        assert!(matches!(
            classify(E::JoinError(join_error)),
            Error::Unavailable(_)
        ));
    }

    #[test]
    fn raft_entry_too_large_is_invalid_even_at_commit() {
        let too_large = || region_error(|e| e.raft_entry_too_large = Some(Default::default()));
        assert!(matches!(classify(too_large()), Error::Invalid(_)));
        assert!(matches!(classify_commit(too_large()), Error::Invalid(_)));
    }

    #[test]
    fn refusals_are_unavailable_and_determined() {
        let aborted = || key_error(|e| e.abort = "Other(\"disk read error\")".into());
        assert!(matches!(classify(aborted()), Error::Unavailable(_)));
        // TiKV answered, so nothing was committed: not undetermined.
        assert!(matches!(classify_commit(aborted()), Error::Unavailable(_)));
        let assertion = key_error(|e| e.assertion_failed = Some(Default::default()));
        assert!(matches!(classify_commit(assertion), Error::Unavailable(_)));
        assert!(matches!(classify(key_error(|_| {})), Error::Unavailable(_)));
    }

    #[test]
    fn a_lost_pessimistic_lock_is_a_conflict() {
        let lost = key_error(|e| {
            e.abort =
                "Error(Txn(Error(Mvcc(Error(PessimisticLockNotFound { start_ts: 5 })))))".into();
        });
        assert!(is_conflict(&classify_commit(E::ExtractedErrors(vec![
            lost
        ]))));
    }

    #[test]
    fn client_misuse_is_invalid() {
        assert!(matches!(
            classify(E::OperationAfterCommitError),
            Error::Invalid(_)
        ));
        assert!(matches!(
            classify(E::InvalidTransactionType),
            Error::Invalid(_)
        ));
        assert!(matches!(
            classify(E::MaxScanLimitExceeded {
                limit: 2,
                max_limit: 1
            }),
            Error::Invalid(_)
        ));
    }

    #[test]
    fn empty_error_lists_do_not_panic() {
        assert!(matches!(
            classify(E::MultipleKeyErrors(vec![])),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            classify_commit(E::ExtractedErrors(vec![])),
            Error::Undetermined(_)
        ));
    }

    #[test]
    fn messages_stay_short() {
        let long = "x".repeat(10_000);
        let msg = classify(key_error(|e| e.abort = long.clone())).to_string();
        assert!(msg.len() < 400, "{} chars", msg.len());
        assert_eq!(key_for_log(&[0xab, 0x01]), "0xab01");
        let shown = key_for_log(&[7; 100]);
        assert!(shown.ends_with("… (100 bytes)"), "{shown}");
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn config_keeps_endpoints_and_timeouts() {
        let cfg = TikvConfig::new(["pd1:2379", "pd2:2379"]);
        assert_eq!(
            cfg.pd_endpoints,
            vec!["pd1:2379".to_owned(), "pd2:2379".to_owned()]
        );
        assert_eq!(cfg.request_timeout, TikvConfig::DEFAULT_REQUEST_TIMEOUT);
        let cfg = cfg.with_request_timeout(Duration::from_secs(1));
        assert_eq!(cfg.request_timeout, Duration::from_secs(1));
        assert_eq!(cfg.connect_timeout(), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn connect_without_endpoints_is_invalid() {
        let err = TikvStore::connect(TikvConfig::new(Vec::<String>::new()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    }

    #[test]
    fn test_endpoints_are_a_comma_separated_list() {
        assert_eq!(
            parse_endpoints(" pd1:2379, ,pd2:2379,"),
            Some(vec!["pd1:2379".to_string(), "pd2:2379".to_string()])
        );
        assert_eq!(
            parse_endpoints("127.0.0.1:2379"),
            Some(vec!["127.0.0.1:2379".to_string()])
        );
        for none in ["", " ", ",", " , ,"] {
            assert_eq!(parse_endpoints(none), None, "{none:?}");
        }
    }

    #[test]
    fn scan_bounds_follow_the_key_range() {
        let bounded = KeyRange::new(b"a".to_vec(), b"c".to_vec());
        for order in [ScanOrder::Forward, ScanOrder::Reverse] {
            let (start, end) = bound_range(&bounded, order).into_keys();
            assert_eq!(Vec::<u8>::from(start), b"a".to_vec());
            assert_eq!(end.map(Vec::<u8>::from), Some(b"c".to_vec()));
        }
        let open = KeyRange::prefix(&[]);
        let (start, end) = bound_range(&open, ScanOrder::Forward).into_keys();
        assert!(Vec::<u8>::from(start).is_empty());
        assert!(end.is_none());
        let (_, end) = bound_range(&open, ScanOrder::Reverse).into_keys();
        let end = end.map(Vec::<u8>::from).unwrap_or_default();
        assert_eq!(end.len(), KEY_CEILING_LEN);
        assert!(vec![0xff; KEY_CEILING_LEN - 1].as_slice() < end.as_slice());
    }
}
