//! Rossby's storage: a transactional key-value abstraction with TiKV's semantics,
//! its backends (embedded fjall with group commit, in-memory MVCC, TiKV), and the
//! domain tables (inbox lookup, profiles, devices, key packages, message queues)
//! written against that abstraction only.

pub mod error;
pub mod kv;

pub use error::{Error, Result};
pub use kv::retry::RetryPolicy;
pub use kv::{BackendConfig, Key, KeyRange, Kv, KvPair, KvStore, ScanOrder, Transaction, Value};
pub mod tables;
