//! Rossby's domain model: boxes, devices, queues, groups, the inbox lookup and the
//! maintenance that keeps them tidy, written against the transactional key-value
//! abstraction of [`rossby_kv`] only (re-exported here as [`kv`]).

pub mod error;
pub mod tables;

pub use error::{Error, Result};
pub use rossby_kv as kv;
pub use rossby_kv::{
    BackendConfig, Key, KeyRange, Kv, KvPair, KvStore, RetryPolicy, ScanOrder, Transaction, Value,
};

/// Runs a domain transaction body with [`rossby_kv::transact!`]'s retry loop.
/// Inside the body `txn` is a [`Tx`](crate::tables::Tx) (see the box-transaction
/// rule in [`tables::tx`]), and the body ends in this crate's [`Error`].
///
/// ```ignore
/// let profile = transact!(store, |txn| accounts::profile(txn, box_id).await)?;
/// let head = transact!(kv, &policy, |txn| queue::head(txn, box_id).await)?;
/// ```
/// The first form takes a [`Store`](crate::tables::Store), the second a `Kv` and a
/// `&RetryPolicy`.
#[macro_export]
macro_rules! transact {
    ($store:expr, |$txn:ident| $body:expr) => {{
        let store = &$store;
        $crate::transact!(store.kv, &store.retry, |$txn| $body)
    }};
    ($kv:expr, $policy:expr, |$txn:ident| $body:expr) => {
        $crate::kv::transact!(@as $crate::Error, $kv, $policy, |raw_txn| {
            let mut tx = $crate::tables::Tx::new(raw_txn);
            let $txn: &mut $crate::tables::Tx<'_> = &mut tx;
            $body
        })
    };
}
