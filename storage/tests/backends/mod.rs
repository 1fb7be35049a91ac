//! Runs the domain-table checks on the memory backend (snapshot isolation, like
//! TiKV) and on fjall (serializable, persistent).
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
//! which yields the tests `on_memory::first_check`, `on_fjall::first_check`, ...

use crate::support::hasher;
use rossby_keyspace::{BoxId, DeviceId, RegionId};
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
    // Dropped after the store, so fjall closes before its directory goes.
    _dir: Option<TempDir>,
}

/// A store over a fresh in-memory backend.
pub fn memory() -> Env {
    let kv: Kv = Arc::new(MemoryStore::new());
    Env {
        store: Store::new(kv, hasher()),
        _dir: None,
    }
}

/// A store over a fresh fjall database in a temporary directory.
pub fn fjall() -> Env {
    let dir = TempDir::new().unwrap();
    let kv: Kv = Arc::new(FjallStore::open(FjallConfig::new(dir.path())).unwrap());
    Env {
        store: Store::new(kv, hasher()),
        _dir: Some(dir),
    }
}

/// Generates one test per backend for each check.
#[macro_export]
macro_rules! on_every_backend {
    ($($check:ident),* $(,)?) => {
        mod on_memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() { super::$check(&$crate::backends::memory().store).await; })*
        }
        mod on_fjall {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let env = $crate::backends::fjall();
                super::$check(&env.store).await;
            })*
        }
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
