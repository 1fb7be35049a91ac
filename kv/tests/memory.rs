//! Runs the backend conformance suite against the in-memory MVCC store.

mod conformance;

use rossby_kv::Kv;
use rossby_kv::memory::MemoryStore;
use std::sync::Arc;

/// A fresh store per case: nothing to skip, nothing shared between cases.
async fn make_store() -> Option<Kv> {
    Some(Arc::new(MemoryStore::new()))
}

conformance::conformance_suite!(make_store, write_skew = conformance::WriteSkew::Allowed);
