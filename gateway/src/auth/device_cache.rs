//! The authorized devices this gateway checked recently, so that a device's
//! requests do not each cost a storage read.
//!
//! An entry says "device D of box B was authorized with key version V when a read
//! started at time T". It is used for at most the cache TTL after T, and never
//! after a revocation of B that this gateway saw at or after T. Only positive
//! answers are kept: a refusal is always read again, so a device authorized a
//! moment ago is never refused because of the cache.
//!
//! Revocations (RemoveDevice, DeleteAccount, recovery) are recorded per box by
//! the gateway that executes them and by the gateway that forwarded them. For
//! twice [`RECENT_READ_STALENESS`] after a revocation, device reads of that box
//! skip the recent snapshot and read fresh, so on those two gateways a removed
//! device is refused as soon as the removal is answered. Other gateways learn of
//! a removal from storage only: they may still accept the device for the TTL plus
//! [`RECENT_READ_STALENESS`] (the snapshot an entry was read from may be that
//! much older than the read), the bound docs/security.md states.
//!
//! Memory: an entry is a box id, a device id, a key version and an instant, about
//! 460 bytes of heap with the cache's bookkeeping (measured with 100,000 entries),
//! at most `capacity` entries, each gone a TTL after its read. Revocation records
//! (about 50 bytes each) are kept at most `capacity` at a time as well; when there
//! would be more, every entry read before the newest revocation is treated as
//! revoked instead.

use rossby_keyspace::{BoxId, DeviceId};
use rossby_storage::kv::RECENT_READ_STALENESS;
use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Default lifetime of an entry.
pub const DEFAULT_DEVICE_CACHE_TTL: Duration = Duration::from_secs(2);

/// Default most entries.
pub const DEFAULT_DEVICE_CACHE_ENTRIES: u64 = 50_000;

/// How long after a revocation reads of the box skip the recent snapshot: a
/// recent snapshot may predate the revocation by up to [`RECENT_READ_STALENESS`],
/// and the margin covers the time between the commit and its recording here.
const CONFIRM_WINDOW: Duration = RECENT_READ_STALENESS.saturating_mul(2);

#[derive(Clone, Copy)]
struct Entry {
    key_version: u32,
    identity_key: Option<IdentityKey>,
    read_at: Instant,
}

/// A device's Ed25519 identity key, as its record holds it (`None` if the
/// record's is not 32 bytes, which the API never stores).
pub type IdentityKey = [u8; 32];

/// A device read about to start: when, and whether it must skip the recent
/// snapshot.
#[derive(Clone, Copy, Debug)]
pub struct Read {
    started: Instant,
    /// The box had a revocation recently: read fresh.
    pub fresh: bool,
}

struct Revocations {
    by_box: HashMap<BoxId, Instant>,
    /// Every box counts as revoked at this instant (set when `by_box` was full).
    all: Option<Instant>,
    last_prune: Instant,
}

/// See the module documentation.
pub struct DeviceCache {
    entries: Option<moka::sync::Cache<(BoxId, DeviceId), Entry>>,
    ttl: Duration,
    capacity: usize,
    /// How long a revocation record matters: entries older than it are expired
    /// anyway, and fresh reads are needed only within [`CONFIRM_WINDOW`].
    keep: Duration,
    /// Whether `revocations` may hold anything, so most requests skip its lock.
    any_revoked: AtomicBool,
    revocations: RwLock<Revocations>,
}

impl DeviceCache {
    /// A cache whose entries live `ttl` (zero: nothing is cached, revocations
    /// still make reads fresh), holding at most `capacity` entries.
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        let capacity = capacity.max(1);
        let entries = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build()
        });
        DeviceCache {
            entries,
            ttl,
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
            keep: ttl.max(CONFIRM_WINDOW),
            any_revoked: AtomicBool::new(false),
            revocations: RwLock::new(Revocations {
                by_box: HashMap::new(),
                all: None,
                last_prune: Instant::now(),
            }),
        }
    }

    /// Whether the device is known to be authorized with `key_version`.
    pub fn contains(&self, box_id: BoxId, device: DeviceId, key_version: u32) -> bool {
        self.get(box_id, device, key_version).is_some()
    }

    /// The device's identity key (`Some(None)`: not recorded) if it is known
    /// to be authorized with `key_version`. A (device, key version) pair never
    /// changes its keys: keys are replaced only by a recovery or a new link,
    /// which give the next key version.
    pub fn get(
        &self,
        box_id: BoxId,
        device: DeviceId,
        key_version: u32,
    ) -> Option<Option<IdentityKey>> {
        let entries = self.entries.as_ref()?;
        let entry = entries.get(&(box_id, device))?;
        // moka's expiry counts from the insertion; the bound counts from the read.
        let valid = entry.key_version == key_version
            && entry.read_at.elapsed() < self.ttl
            && self.revoked_at(box_id).is_none_or(|at| entry.read_at > at);
        valid.then_some(entry.identity_key)
    }

    /// Call before reading a device record that [`DeviceCache::insert`] may cache.
    pub fn begin_read(&self, box_id: BoxId) -> Read {
        let started = Instant::now();
        let fresh = self
            .revoked_at(box_id)
            .is_some_and(|at| started.saturating_duration_since(at) < CONFIRM_WINDOW);
        Read { started, fresh }
    }

    /// Remembers that a read begun with `read` found the device authorized with
    /// `key_version`.
    pub fn insert(
        &self,
        box_id: BoxId,
        device: DeviceId,
        key_version: u32,
        identity_key: Option<IdentityKey>,
        read: Read,
    ) {
        if let Some(entries) = &self.entries {
            let entry = Entry {
                key_version,
                identity_key,
                read_at: read.started,
            };
            entries.insert((box_id, device), entry);
        }
    }

    /// Records that devices of `box_id` were (or may have been) removed or
    /// changed; call once the change is committed, or its outcome unknown.
    pub fn revoke_box(&self, box_id: BoxId) {
        let now = Instant::now();
        let mut revocations = self.write();
        if now.saturating_duration_since(revocations.last_prune) >= self.keep
            || revocations.by_box.len() >= self.capacity
        {
            Self::prune(&mut revocations, now, self.keep);
        }
        if revocations.by_box.len() >= self.capacity {
            // Too many to track one by one: revoke everything read until now.
            revocations.by_box.clear();
            revocations.all = Some(now);
        } else {
            revocations.by_box.insert(box_id, now);
        }
        self.any_revoked.store(true, Ordering::Release);
    }

    /// Records a revocation that may concern any box.
    pub fn revoke_all(&self) {
        let now = Instant::now();
        let mut revocations = self.write();
        revocations.by_box.clear();
        revocations.all = Some(now);
        self.any_revoked.store(true, Ordering::Release);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Revocations> {
        // The data stays consistent whatever panicked while holding the lock.
        match self.revocations.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The latest revocation of `box_id` that still matters.
    fn revoked_at(&self, box_id: BoxId) -> Option<Instant> {
        if !self.any_revoked.load(Ordering::Acquire) {
            return None;
        }
        let now = Instant::now();
        let (at, stale) = {
            let revocations = match self.revocations.read() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            let at = match (revocations.by_box.get(&box_id).copied(), revocations.all) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let stale = now.saturating_duration_since(revocations.last_prune) >= self.keep;
            (at, stale)
        };
        if stale {
            // Records older than `keep` no longer change any answer; dropping them
            // lets requests skip the lock again once revocations stop.
            if let Ok(mut revocations) = self.revocations.try_write() {
                Self::prune(&mut revocations, now, self.keep);
                if revocations.by_box.is_empty() && revocations.all.is_none() {
                    self.any_revoked.store(false, Ordering::Release);
                }
            }
        }
        at.filter(|at| now.saturating_duration_since(*at) < self.keep)
    }

    fn prune(revocations: &mut Revocations, now: Instant, keep: Duration) {
        revocations
            .by_box
            .retain(|_, at| now.saturating_duration_since(*at) < keep);
        if revocations
            .all
            .is_some_and(|at| now.saturating_duration_since(at) >= keep)
        {
            revocations.all = None;
        }
        revocations.last_prune = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_keyspace::RegionId;

    #[test]
    fn hits_need_the_key_version_and_no_later_revocation() {
        let cache = DeviceCache::new(Duration::from_secs(60), 100);
        let (b, d) = (BoxId::new(RegionId(1)), DeviceId::new());
        assert!(!cache.contains(b, d, 1));
        let read = cache.begin_read(b);
        assert!(!read.fresh);
        cache.insert(b, d, 1, Some([5; 32]), read);
        assert!(cache.contains(b, d, 1));
        assert!(!cache.contains(b, d, 2), "another key version");
        // A revocation of another box changes nothing.
        cache.revoke_box(BoxId::new(RegionId(1)));
        assert!(cache.contains(b, d, 1));
        cache.revoke_box(b);
        assert!(!cache.contains(b, d, 1));
        std::thread::sleep(Duration::from_millis(1));
        // A read that began before the revocation but is stored after it is no
        // good either.
        cache.insert(b, d, 1, Some([5; 32]), read);
        assert!(!cache.contains(b, d, 1));
        // Reads right after a revocation are fresh, and what they find is kept.
        let read = cache.begin_read(b);
        assert!(read.fresh);
        cache.insert(b, d, 1, Some([5; 32]), read);
        assert!(cache.contains(b, d, 1));
    }

    #[test]
    fn entries_expire_from_the_read() {
        let cache = DeviceCache::new(Duration::from_millis(30), 100);
        let (b, d) = (BoxId::new(RegionId(1)), DeviceId::new());
        let read = cache.begin_read(b);
        std::thread::sleep(Duration::from_millis(40));
        cache.insert(b, d, 1, Some([5; 32]), read);
        assert!(!cache.contains(b, d, 1));
        cache.insert(b, d, 1, Some([5; 32]), cache.begin_read(b));
        assert!(cache.contains(b, d, 1));
    }

    #[test]
    fn a_zero_ttl_caches_nothing_but_still_reads_fresh_after_revocations() {
        let cache = DeviceCache::new(Duration::ZERO, 100);
        let (b, d) = (BoxId::new(RegionId(1)), DeviceId::new());
        cache.insert(b, d, 1, Some([5; 32]), cache.begin_read(b));
        assert!(!cache.contains(b, d, 1));
        cache.revoke_box(b);
        assert!(cache.begin_read(b).fresh);
    }

    #[test]
    fn too_many_revocations_revoke_everything() {
        let cache = DeviceCache::new(Duration::from_secs(60), 4);
        let (b, d) = (BoxId::new(RegionId(1)), DeviceId::new());
        cache.insert(b, d, 1, Some([5; 32]), cache.begin_read(b));
        for _ in 0..4 {
            cache.revoke_box(BoxId::new(RegionId(2)));
        }
        assert!(cache.contains(b, d, 1), "four records fit");
        cache.revoke_box(BoxId::new(RegionId(2)));
        assert!(!cache.contains(b, d, 1));
        std::thread::sleep(Duration::from_millis(1));
        assert!(cache.begin_read(b).fresh);
        let read = cache.begin_read(b);
        cache.insert(b, d, 1, Some([5; 32]), read);
        assert!(cache.contains(b, d, 1));
    }
}
