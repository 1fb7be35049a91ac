//! Runs the domain-table checks on the memory backend (snapshot isolation, like
//! TiKV), on fjall (serializable, persistent) and, when `ROSSBY_TEST_PD` names a
//! cluster, on TiKV.
//!
//! A test file declares both shared modules at its root, writes each check as a
//! plain `async fn check(store: &Store)`, and lists them once:
//!
//! ```ignore
//! mod backends;
//! mod support;
//! backends::on_every_backend!(first_check, second_check);
//! ```
//!
//! which yields the tests `on_memory::first_check`, `on_fjall::first_check`,
//! `on_tikv::first_check` and `on_shared_memory::first_check`, ...
//!
//! On TiKV each check works in a namespace of its own over the shared cluster
//! and deletes it afterwards ([`namespace`]); without `ROSSBY_TEST_PD` those tests
//! print `skipped: set ROSSBY_TEST_PD to run <check> on TiKV` and pass.
//! `on_shared_memory` runs the same checks the same way over one memory store
//! shared by the whole test binary, so everything but the cluster connection is
//! exercised on every run, including that concurrently running checks do not
//! see each other's data.
//!
//! A check that cannot run on TiKV goes after `not_on_tikv:`, with a comment
//! saying why; it still runs on memory and fjall:
//!
//! ```ignore
//! backends::on_every_backend!(
//!     first_check,
//!     second_check;
//!     // Why this one cannot run on a cluster.
//!     not_on_tikv: third_check,
//! );
//! ```

pub mod namespace;

use crate::support::hasher;
use rossby_keyspace::{BoxId, DeviceId, RegionId};
use rossby_storage::kv::Namespaced;
use rossby_storage::kv::fjall::{FjallConfig, FjallStore};
use rossby_storage::kv::memory::MemoryStore;
use rossby_storage::tables::records::Device;
use rossby_storage::tables::{Store, accounts, devices};
use rossby_storage::{Kv, transact};
use std::sync::Arc;
use tempfile::TempDir;

/// The clock reading every check starts from (milliseconds since the epoch).
pub const T0: u64 = 1_700_000_000_000;

/// A store and whatever keeps its backend alive.
pub struct Env {
    pub store: Store,
    /// The check's namespace when the backend is shared; [`Env::finish`]
    /// deletes it.
    namespace: Option<Arc<Namespaced>>,
    // Dropped after the store, so fjall closes before its directory goes.
    _dir: Option<TempDir>,
}

impl Env {
    /// A store in a fresh namespace of `inner` for `check`.
    fn namespaced(inner: Kv, check: &str) -> Env {
        let namespace = namespace::namespace(inner, check);
        Env {
            store: Store::new(namespace.clone(), hasher()),
            namespace: Some(namespace),
            _dir: None,
        }
    }

    /// Ends a check that passed: deletes its namespace from a shared backend.
    pub async fn finish(self) {
        if let Some(namespace) = &self.namespace {
            namespace::clear(namespace).await;
        }
    }
}

/// A store over a fresh in-memory backend.
pub fn memory() -> Env {
    let kv: Kv = Arc::new(MemoryStore::new());
    Env {
        store: Store::new(kv, hasher()),
        namespace: None,
        _dir: None,
    }
}

/// A store over a fresh fjall database in a temporary directory.
pub fn fjall() -> Env {
    let dir = TempDir::new().unwrap();
    let kv: Kv = Arc::new(FjallStore::open(FjallConfig::new(dir.path())).unwrap());
    Env {
        store: Store::new(kv, hasher()),
        namespace: None,
        _dir: Some(dir),
    }
}

/// A store in a namespace of its own on the TiKV cluster named by
/// `ROSSBY_TEST_PD`, or `None` (after saying so) when none is.
pub async fn tikv(check: &str) -> Option<Env> {
    Some(Env::namespaced(namespace::tikv(check).await?, check))
}

/// A store in a namespace of its own on the memory store this test binary
/// shares: what [`tikv`] does, without a cluster.
pub fn shared_memory(check: &str) -> Env {
    Env::namespaced(namespace::shared_memory(), check)
}

/// Generates one test per backend for each check (see the module docs).
#[macro_export]
macro_rules! on_every_backend {
    ($($check:ident),* $(,)? ; not_on_tikv: $($local:ident),* $(,)?) => {
        mod on_memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() { super::$check(&$crate::backends::memory().store).await; })*
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $local() { super::$local(&$crate::backends::memory().store).await; })*
        }
        mod on_fjall {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let env = $crate::backends::fjall();
                super::$check(&env.store).await;
            })*
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $local() {
                let env = $crate::backends::fjall();
                super::$local(&env.store).await;
            })*
        }
        mod on_tikv {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(env) = $crate::backends::tikv(stringify!($check)).await else {
                    return;
                };
                super::$check(&env.store).await;
                env.finish().await;
            })*
        }
        mod on_shared_memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let env = $crate::backends::shared_memory(stringify!($check));
                super::$check(&env.store).await;
                env.finish().await;
            })*
        }
    };
    ($($check:ident),* $(,)?) => {
        $crate::on_every_backend!($($check),* ; not_on_tikv:);
    };
}
pub use on_every_backend;

/// A device record with plausible key sizes.
pub fn device_record() -> Device {
    Device {
        identity_key: vec![1; 32],
        encryption_key: vec![2; 64],
        label: "test".into(),
        ..Device::default()
    }
}

/// Creates a box homed in `region` with `n` authorized devices, at [`T0`].
pub async fn new_box(store: &Store, region: RegionId, n: usize) -> (BoxId, Vec<DeviceId>) {
    let b = BoxId::new(region);
    let list: Vec<DeviceId> = (0..n).map(|_| DeviceId::new()).collect();
    transact!(store, |txn| {
        accounts::create_box(txn, b, T0).await?;
        for d in &list {
            devices::add(txn, &store.limits, b, *d, &device_record(), T0).await?;
            devices::authorize(txn, b, *d, T0).await?;
        }
        Ok(())
    })
    .unwrap();
    (b, list)
}
