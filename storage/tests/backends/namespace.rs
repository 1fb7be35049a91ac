//! Checks on a backend other tests use at the same time: a TiKV cluster named by
//! `ROSSBY_TEST_PD` (comma-separated placement driver endpoints), or one memory
//! store shared by the whole test binary, which runs exactly what the cluster
//! runs minus the connection.
//!
//! Domain keys are absolute, and region-wide ones (expiry index shards, leases,
//! outbox, purge markers) are shared by every box, so each check gets a
//! [`Namespaced`] view of the backend under a prefix of its own: its region
//! scans see its own data only. After a check passed its namespace is deleted;
//! a failed check leaves its keys for inspection (the prefix names the check).

use rossby_storage::Kv;
use rossby_storage::kv::Namespaced;
use rossby_storage::kv::memory::MemoryStore;
use rossby_storage::kv::tikv::{TEST_PD_ENV, TikvConfig, TikvStore, test_endpoints_from_env};
use std::sync::{Arc, LazyLock};

/// Keys deleted per transaction when a namespace is cleared, far below TiKV's
/// transaction size limits.
const CLEAR_BATCH: usize = 512;

/// A connection to the test cluster, or `None` (after saying so) when
/// `ROSSBY_TEST_PD` is not set. `check` names what is skipped.
pub async fn tikv(check: &str) -> Option<Kv> {
    let Some(endpoints) = test_endpoints_from_env() else {
        // Both streams: libtest captures stdout of passing tests, CI logs stderr.
        eprintln!("skipped: set {TEST_PD_ENV} to run {check} on TiKV");
        println!("skipped: set {TEST_PD_ENV} to run {check} on TiKV");
        return None;
    };
    match TikvStore::connect(TikvConfig::new(endpoints)).await {
        Ok(store) => Some(Arc::new(store)),
        // A configured but unreachable cluster is a failure, not a skip.
        Err(err) => panic!("{TEST_PD_ENV} is set but TiKV is unreachable: {err}"),
    }
}

/// The memory store every check of this test binary shares.
pub fn shared_memory() -> Kv {
    static SHARED: LazyLock<Kv> = LazyLock::new(|| Arc::new(MemoryStore::new()));
    Arc::clone(&SHARED)
}

/// A fresh namespace of `inner` for `check`: a readable tag and the check's name
/// (to spot leftovers on a shared cluster), then 16 random bytes. The name
/// contains no NUL, so no two such prefixes are prefixes of each other.
pub fn namespace(inner: Kv, check: &str) -> Arc<Namespaced> {
    let mut prefix = format!("storage-test\0{check}\0").into_bytes();
    prefix.extend_from_slice(&rand::random::<[u8; 16]>());
    Arc::new(Namespaced::new(inner, prefix))
}

/// Deletes everything in `namespace`, in bounded transactions. Best effort: a
/// failure is reported, not raised, since the check itself passed.
pub async fn clear(namespace: &Namespaced) {
    if let Err(err) = namespace.clear(CLEAR_BATCH).await {
        eprintln!("warning: leaving test keys behind in {namespace:?}: {err}");
    }
}
