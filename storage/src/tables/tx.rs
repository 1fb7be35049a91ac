//! Domain transactions: the only way table code reaches the KV layer.
//!
//! # The box-transaction rule
//! Under snapshot isolation two transactions that must not both succeed must
//! write a common key; a plain read protects nothing. For boxes the rule is made
//! a type: a key that belongs to a box (see [`Key::owner_box`]) can only be
//! written through a [`BoxHandle`], and a handle can only be obtained by locking
//! or writing one of the box's guard keys ([`Guard`]), after checking that the box
//! is alive. Account deletion writes every guard key of the box in one
//! transaction (the profile tombstone, `next`, `low` and every device record),
//! so nothing that writes into a box can commit concurrently with its deletion,
//! and a transaction that begins after it finds the box gone. An operation that
//! writes two boxes holds two handles.
//!
//! [`Tx`] wraps the backend's transaction and keeps it private: reads are open,
//! writes of box keys take a handle, and writes of data that belongs to no box
//! take a [`SharedKey`], which cannot name a box key. Code that writes a box
//! without a handle does not compile.
//!
//! An enqueue reads everything it needs in one round trip ([`Tx::read_batch`]);
//! the batch proves the box alive ([`BatchRead::live_box`]) and the guard is
//! then taken by writing `next` ([`Tx::write_next`]) instead of locking it,
//! which would cost a round trip of its own.
//!
//! Three exceptions keep the rule honest rather than bypass it: entries of the
//! region's expiry indexes may be *deleted* without a handle (removing an index
//! entry never brings anything back into a box; writing one still needs the
//! handle); a box being purged is written through a handle obtained by
//! writing its `low` key ([`Tx::open_for_purge`]), the key every expiry locks;
//! and an attachment part marker is written through a handle obtained by
//! *reading* its blob record uploading in a live box ([`Tx::read_uploading_blob`]),
//! so that parallel parts of one upload never conflict. Such a marker can only
//! outlive its record if its transaction overlaps the record's deletion, which
//! the gateway rules out in time (parts are refused near the upload's deadline
//! and the sweeper deletes only after it) or which leaves a marker the purge of
//! a deleted box removes.

use super::Record;
use super::records::{BlobRecord, BlobState, Device, LowWater, Profile, QueueHead, Stored};
use crate::error::{Error, Result};
use crate::kv::{Key as RawKey, KeyRange, KvPair, ScanOrder, Transaction, Value};
use rossby_keyspace::{BoxId, DeviceId, Key, LookupDigest, MaintenanceJob, RegionId};
use std::sync::atomic::{AtomicU64, Ordering};

/// Tells transactions apart, so a handle cannot be used in a transaction other
/// than the one that took its guard.
static NEXT_TX: AtomicU64 = AtomicU64::new(1);

/// A domain transaction over one backend transaction.
pub struct Tx<'t> {
    inner: &'t mut dyn Transaction,
    id: u64,
}

/// Which guard key of a box a [`BoxHandle`] was obtained with. Each guard is
/// also what the operations taking it contend on, so they are chosen to keep
/// unrelated work apart: acknowledgements never conflict with enqueues, and a
/// device's KeyPackages never conflict with its box's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// The profile: changes to what the box is (settings, contacts, blocks,
    /// identifiers, the groups it created, its deletion).
    Profile,
    /// `next`: enqueues and device-list changes.
    Next,
    /// `low`: acknowledgements, expiry and purge steps.
    Low,
    /// One device's record: writes about that device only (its KeyPackages and
    /// its push presence).
    Device(DeviceId),
    /// One existing entry of the box's outbox: rewriting or deleting that entry
    /// only, as its delivery does. Deletion does not write it, but the purge
    /// deletes it, so a delivery racing with the purge conflicts on the entry,
    /// and one that begins later finds it gone.
    OutboxEntry([u8; 16]),
    /// One existing attachment blob record, locked: rewriting that record, its
    /// part markers and its expiry entries only (extending, sealing or deleting
    /// the blob). Like an outbox entry, deletion does not write it but the purge
    /// deletes it, so a racing extension conflicts with the purge.
    Blob([u8; 16]),
    /// One uploading blob record, read (not locked): writing that blob's part
    /// markers only (see the module documentation).
    BlobParts([u8; 16]),
}

impl Guard {
    fn key(self, box_id: BoxId) -> Key {
        match self {
            Guard::Profile => Key::Profile(box_id),
            Guard::Next => Key::Next(box_id),
            Guard::Low => Key::Low(box_id),
            Guard::Device(device) => Key::Device(box_id, device),
            Guard::OutboxEntry(id) => Key::Outbox(box_id, id),
            Guard::Blob(blob) | Guard::BlobParts(blob) => Key::Blob(box_id, blob),
        }
    }
}

/// Proof that a transaction holds a guard key of a box (see the module
/// documentation). Not `Clone`: obtained from [`Tx`] only, valid in that
/// transaction only.
#[derive(Debug)]
pub struct BoxHandle {
    box_id: BoxId,
    guard: Guard,
    tx: u64,
}

impl BoxHandle {
    /// The box this handle writes.
    pub fn box_id(&self) -> BoxId {
        self.box_id
    }

    /// The guard key it was obtained with.
    pub fn guard(&self) -> Guard {
        self.guard
    }
}

/// The values of a set of keys, read in one round trip by [`Tx::read_batch`].
pub struct BatchRead {
    values: foldhash::HashMap<Key, Option<Value>>,
    tx: u64,
}

impl BatchRead {
    /// The stored value of `key`. A key left out of the read is an error, not
    /// "absent": a forgotten key must not pass for a missing block or dedup record.
    pub fn raw(&self, key: &Key) -> Result<Option<&[u8]>> {
        self.values
            .get(key)
            .map(Option::as_deref)
            .ok_or_else(|| Error::corrupt("batch read", "a key the caller needs was not read"))
    }

    /// True if `key` exists.
    pub fn contains(&self, key: &Key) -> Result<bool> {
        Ok(self.raw(key)?.is_some())
    }

    /// Decodes the record at `key`.
    pub fn record<R: Record>(&self, key: &Key) -> Result<Option<R>> {
        self.raw(key)?.map(R::from_stored).transpose()
    }

    /// The box's profile and queue head if the box is alive in this snapshot
    /// (both keys must have been read); `None` for an unknown box and for one
    /// being deleted (tombstoned profile), as with [`Tx::lock_next`]. The result
    /// takes the box's `next` guard with [`Tx::write_next`].
    pub fn live_box(&self, box_id: BoxId) -> Result<Option<LiveBox>> {
        let profile = self
            .record::<Profile>(&Key::Profile(box_id))?
            .filter(|p| !p.deleted);
        let head = self.record::<QueueHead>(&Key::Next(box_id))?;
        Ok(match (profile, head) {
            (Some(profile), Some(head)) => Some(LiveBox {
                box_id,
                tx: self.tx,
                profile,
                head,
            }),
            _ => None,
        })
    }
}

/// A box a [`BatchRead`] found alive, with what it read. Only
/// [`BatchRead::live_box`] makes one, so holding it proves the check.
#[derive(Debug)]
pub struct LiveBox {
    box_id: BoxId,
    tx: u64,
    /// The profile as read.
    pub profile: Profile,
    /// `next` as read.
    pub head: QueueHead,
}

impl LiveBox {
    /// The box.
    pub fn box_id(&self) -> BoxId {
        self.box_id
    }
}

/// A key that belongs to no box: written without a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedKey {
    /// Inbox lookup of an identifier digest.
    Lookup {
        /// Which pepper produced the digest.
        pepper_version: u32,
        /// The identifier's digest.
        digest: [u8; 32],
    },
    /// A pending registration of an identifier digest, by the device that asked.
    Registration {
        /// Which pepper produced the digest.
        pepper_version: u32,
        /// The identifier's digest.
        digest: [u8; 32],
        /// The device that asked.
        device: DeviceId,
    },
    /// The ownership lease of a gateway of a region.
    GatewayLease(RegionId, [u8; 16]),
    /// The lease of a background job of a region.
    MaintenanceLease(RegionId, MaintenanceJob),
    /// A deployment-wide budget of verification codes.
    CodeBudget([u8; 32]),
    /// The verification limits of one identifier, by its lookup digest.
    IdentifierLimit([u8; 32]),
}

impl SharedKey {
    /// The global lookup key of an identifier digest.
    pub fn lookup(digest: &LookupDigest) -> Self {
        SharedKey::Lookup {
            pepper_version: digest.version,
            digest: digest.digest,
        }
    }

    /// The pending-registration key of an identifier digest and a device.
    pub fn registration(digest: &LookupDigest, device: DeviceId) -> Self {
        SharedKey::Registration {
            pepper_version: digest.version,
            digest: digest.digest,
            device,
        }
    }
}

impl From<SharedKey> for Key {
    fn from(key: SharedKey) -> Key {
        match key {
            SharedKey::Lookup {
                pepper_version,
                digest,
            } => Key::Lookup {
                pepper_version,
                digest,
            },
            SharedKey::Registration {
                pepper_version,
                digest,
                device,
            } => Key::Registration {
                pepper_version,
                digest,
                device,
            },
            SharedKey::GatewayLease(region, id) => Key::GatewayLease(region, id),
            SharedKey::MaintenanceLease(region, job) => Key::MaintenanceLease(region, job),
            SharedKey::CodeBudget(scope) => Key::CodeBudget(scope),
            SharedKey::IdentifierLimit(digest) => Key::IdentifierLimit(digest),
        }
    }
}

impl<'t> Tx<'t> {
    /// Wraps a backend transaction. Ending it (commit or rollback) stays with
    /// whoever began it.
    pub fn new(inner: &'t mut dyn Transaction) -> Self {
        Tx {
            inner,
            id: NEXT_TX.fetch_add(1, Ordering::Relaxed),
        }
    }

    // --- reads -------------------------------------------------------------

    /// Reads one key's raw value.
    pub async fn get_raw(&mut self, key: &Key) -> Result<Option<Value>> {
        Ok(self.inner.get(&key.encode()).await?)
    }

    /// Reads and decodes one record.
    pub async fn get<R: Record>(&mut self, key: &Key) -> Result<Option<R>> {
        match self.get_raw(key).await? {
            Some(bytes) => Ok(Some(R::from_stored(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Reads a set of keys in one round trip (duplicates are read once). A
    /// [`BatchRead`] that holds a box's profile and `next` can also take the box's
    /// `next` guard ([`BatchRead::live_box`], [`Tx::write_next`]), so an operation
    /// on several boxes still reads in one round.
    pub async fn read_batch(&mut self, keys: impl IntoIterator<Item = Key>) -> Result<BatchRead> {
        let mut values: foldhash::HashMap<Key, Option<Value>> = foldhash::HashMap::default();
        let mut order: Vec<Key> = Vec::new();
        for key in keys {
            if values.insert(key, None).is_none() {
                order.push(key);
            }
        }
        let raw: Vec<RawKey> = order.iter().map(Key::encode).collect();
        let read = self.inner.batch_get(&raw).await?;
        if read.len() != order.len() {
            return Err(Error::corrupt(
                "batch read",
                format!(
                    "the store answered a read of {} keys with {} values",
                    order.len(),
                    read.len()
                ),
            ));
        }
        for (key, value) in order.into_iter().zip(read) {
            values.insert(key, value);
        }
        Ok(BatchRead {
            values,
            tx: self.id,
        })
    }

    /// Scans a range (see [`Transaction::scan`]).
    pub async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> Result<Vec<KvPair>> {
        Ok(self.inner.scan(range, limit, order).await?)
    }

    // --- guards --------------------------------------------------------------

    fn handle(&self, box_id: BoxId, guard: Guard) -> BoxHandle {
        BoxHandle {
            box_id,
            guard,
            tx: self.id,
        }
    }

    async fn lock_raw(&mut self, key: &Key) -> Result<Option<Value>> {
        Ok(self.inner.get_for_update(&key.encode()).await?)
    }

    /// The live profile of a box read in this snapshot, or [`Error::BoxNotFound`].
    async fn live_profile(&mut self, box_id: BoxId) -> Result<Profile> {
        self.get::<Profile>(&Key::Profile(box_id))
            .await?
            .filter(|p| !p.deleted)
            .ok_or(Error::BoxNotFound)
    }

    /// Locks the box's profile: a handle for changes to what the box is.
    /// [`Error::BoxNotFound`] for unknown and deleted boxes.
    pub async fn lock_profile(&mut self, box_id: BoxId) -> Result<(BoxHandle, Profile)> {
        let profile = self
            .lock_raw(&Key::Profile(box_id))
            .await?
            .map(|bytes| Profile::from_stored(&bytes))
            .transpose()?
            .filter(|p| !p.deleted)
            .ok_or(Error::BoxNotFound)?;
        Ok((self.handle(box_id, Guard::Profile), profile))
    }

    /// Locks the box's `next` key: a handle for enqueues and device-list changes.
    pub async fn lock_next(&mut self, box_id: BoxId) -> Result<(BoxHandle, QueueHead)> {
        let head = self
            .lock_raw(&Key::Next(box_id))
            .await?
            .map(|bytes| QueueHead::from_stored(&bytes))
            .transpose()?
            .ok_or(Error::BoxNotFound)?;
        self.live_profile(box_id).await?;
        Ok((self.handle(box_id, Guard::Next), head))
    }

    /// Locks the box's `low` key: a handle for acknowledgements and expiry.
    /// Returns the low-water mark (1 when none was written yet).
    pub async fn lock_low(&mut self, box_id: BoxId) -> Result<(BoxHandle, u64)> {
        let low = self
            .lock_raw(&Key::Low(box_id))
            .await?
            .map(|bytes| LowWater::from_stored(&bytes))
            .transpose()?
            .map_or(1, |l| l.low.max(1));
        self.live_profile(box_id).await?;
        Ok((self.handle(box_id, Guard::Low), low))
    }

    /// Locks one device's record: a handle for writes about that device.
    /// [`Error::DeviceNotFound`] when the device is not in the box (deletion
    /// removes every device), [`Error::BoxNotFound`] when the box is gone.
    pub async fn lock_device(
        &mut self,
        box_id: BoxId,
        device: DeviceId,
    ) -> Result<(BoxHandle, Device)> {
        match self.lock_raw(&Key::Device(box_id, device)).await? {
            Some(bytes) => Ok((
                self.handle(box_id, Guard::Device(device)),
                Device::from_stored(&bytes)?,
            )),
            None => {
                self.live_profile(box_id).await?;
                Err(Error::DeviceNotFound)
            }
        }
    }

    /// Locks an existing outbox entry of `creator`: a handle that may rewrite or
    /// delete that entry only. `None` when the entry is gone.
    pub async fn lock_outbox_entry(
        &mut self,
        creator: BoxId,
        id: [u8; 16],
    ) -> Result<Option<(BoxHandle, Value)>> {
        let guard = Guard::OutboxEntry(id);
        Ok(self
            .lock_raw(&guard.key(creator))
            .await?
            .map(|value| (self.handle(creator, guard), value)))
    }

    /// Locks an existing attachment blob record of `box_id`: a handle that may
    /// rewrite that record, its part markers and its expiry entries. `None`
    /// when the record is gone.
    pub async fn lock_blob(
        &mut self,
        box_id: BoxId,
        blob: [u8; 16],
    ) -> Result<Option<(BoxHandle, BlobRecord)>> {
        let guard = Guard::Blob(blob);
        match self.lock_raw(&guard.key(box_id)).await? {
            Some(bytes) => Ok(Some((
                self.handle(box_id, guard),
                BlobRecord::from_stored(&bytes)?,
            ))),
            None => Ok(None),
        }
    }

    /// Reads an attachment blob record that is still uploading, in a live box:
    /// a handle that may write that blob's part markers only (the exception in
    /// the module documentation). [`Error::BlobNotFound`] for a missing blob,
    /// one that is no longer uploading, and a deleted box.
    pub async fn read_uploading_blob(
        &mut self,
        box_id: BoxId,
        blob: [u8; 16],
    ) -> Result<(BoxHandle, BlobRecord)> {
        let record = self
            .get::<BlobRecord>(&Key::Blob(box_id, blob))
            .await?
            .filter(|r| r.state() == BlobState::Uploading)
            .ok_or(Error::BlobNotFound)?;
        match self.live_profile(box_id).await {
            Ok(_) => {}
            Err(Error::BoxNotFound) => return Err(Error::BlobNotFound),
            Err(err) => return Err(err),
        }
        Ok((self.handle(box_id, Guard::BlobParts(blob)), record))
    }

    /// Takes the `next` guard of a box that a batch read of this transaction
    /// found alive, by writing `head`: the write makes a concurrent deletion
    /// conflict just as a lock would, and needs no read beyond the batch.
    pub async fn write_next(&mut self, live: &LiveBox, head: &QueueHead) -> Result<BoxHandle> {
        if live.tx != self.id {
            return Err(Error::Invalid(
                "a batch read was used outside the transaction that made it".into(),
            ));
        }
        let handle = self.handle(live.box_id, Guard::Next);
        self.put(&handle, &Key::Next(live.box_id), head).await?;
        Ok(handle)
    }

    /// Creates a box: writes its profile and `next` (two creators of one box
    /// conflict on both) and returns the handle. [`Error::BoxExists`] if either
    /// key exists, even as a tombstone.
    pub async fn create_box(
        &mut self,
        box_id: BoxId,
        profile: &Profile,
        head: &QueueHead,
    ) -> Result<BoxHandle> {
        if self.get_raw(&Key::Next(box_id)).await?.is_some()
            || self.get_raw(&Key::Profile(box_id)).await?.is_some()
        {
            return Err(Error::BoxExists(box_id));
        }
        let handle = self.handle(box_id, Guard::Profile);
        self.put(&handle, &Key::Profile(box_id), profile).await?;
        self.put(&handle, &Key::Next(box_id), head).await?;
        Ok(handle)
    }

    /// A handle on a deleted box for one purge step, obtained by writing
    /// (deleting) its `low` key: every expiry locks `low`, so an expiry that saw
    /// the box alive conflicts with the step instead of writing `low` back into
    /// the emptied range. [`Error::Invalid`] if the box is alive.
    pub async fn open_for_purge(&mut self, box_id: BoxId) -> Result<BoxHandle> {
        if self
            .get::<Profile>(&Key::Profile(box_id))
            .await?
            .is_some_and(|p| !p.deleted)
        {
            return Err(Error::Invalid("box is not deleted".into()));
        }
        let handle = self.handle(box_id, Guard::Low);
        self.delete(&handle, &Key::Low(box_id)).await?;
        Ok(handle)
    }

    // --- writes --------------------------------------------------------------

    /// Checks that `key` belongs to the handle's box and the handle to this
    /// transaction. A mismatch is a bug in the caller, reported, never written.
    fn check(&self, handle: &BoxHandle, key: &Key) -> Result<()> {
        if handle.tx != self.id {
            return Err(Error::Invalid(
                "a box handle was used outside the transaction that took it".into(),
            ));
        }
        let allowed = match handle.guard {
            Guard::OutboxEntry(_) => *key == handle.guard.key(handle.box_id),
            Guard::Blob(blob) => match *key {
                Key::Blob(b, x) | Key::BlobPart(b, x, _) => b == handle.box_id && x == blob,
                Key::BlobExpiry {
                    box_id, blob: x, ..
                } => box_id == handle.box_id && x == blob,
                _ => false,
            },
            Guard::BlobParts(blob) => {
                matches!(*key, Key::BlobPart(b, x, _) if b == handle.box_id && x == blob)
            }
            _ => key.owner_box() == Some(handle.box_id),
        };
        if allowed {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "a key outside what a {:?} handle of box {} may write was written through it",
                handle.guard, handle.box_id
            )))
        }
    }

    /// Encodes and writes one record of the handle's box.
    pub async fn put<R: Stored>(
        &mut self,
        handle: &BoxHandle,
        key: &Key,
        record: &R,
    ) -> Result<()> {
        self.check(handle, key)?;
        Ok(self.inner.put(key.encode(), record.stored_bytes()).await?)
    }

    /// Deletes one key of the handle's box.
    pub async fn delete(&mut self, handle: &BoxHandle, key: &Key) -> Result<()> {
        self.check(handle, key)?;
        Ok(self.inner.delete(key.encode()).await?)
    }

    /// Deletes a raw key returned by a scan, which must belong to the handle's
    /// box. Returns the key decoded (the check decodes it anyway), so a caller
    /// that needs it does not decode it twice.
    pub async fn delete_scanned(&mut self, handle: &BoxHandle, raw: RawKey) -> Result<Key> {
        let key = super::decode_key(&raw)?;
        self.check(handle, &key)?;
        self.inner.delete(raw).await?;
        Ok(key)
    }

    /// Deletes an entry of the region's expiry index (no handle needed: see the
    /// module documentation). [`Error::Invalid`] for any other key.
    pub async fn delete_expiry_entry(&mut self, key: &Key) -> Result<()> {
        if !matches!(key, Key::Expiry { .. } | Key::BlobExpiry { .. }) {
            return Err(Error::Invalid(
                "only expiry index entries are deleted without a box handle".into(),
            ));
        }
        Ok(self.inner.delete(key.encode()).await?)
    }

    /// Reads a key that belongs to no box for update (see
    /// [`Transaction::get_for_update`]).
    pub async fn lock_shared<R: Record>(&mut self, key: SharedKey) -> Result<Option<R>> {
        self.lock_raw(&key.into())
            .await?
            .map(|bytes| R::from_stored(&bytes))
            .transpose()
    }

    /// Encodes and writes one record that belongs to no box.
    pub async fn put_shared<R: Record>(&mut self, key: SharedKey, record: &R) -> Result<()> {
        let key: Key = key.into();
        Ok(self.inner.put(key.encode(), record.to_stored()).await?)
    }

    /// Deletes a pending registration found by a scan of the registration range,
    /// by its raw key (so keys of an earlier layout are removed too).
    /// [`Error::Invalid`] for a key outside that range.
    pub async fn delete_scanned_registration(&mut self, raw: RawKey) -> Result<()> {
        if !Key::registration_range().contains(&raw) {
            return Err(Error::Invalid(
                "not a key of the pending-registration range".into(),
            ));
        }
        Ok(self.inner.delete(raw).await?)
    }

    /// Deletes one key that belongs to no box.
    pub async fn delete_shared(&mut self, key: SharedKey) -> Result<()> {
        let key: Key = key.into();
        Ok(self.inner.delete(key.encode()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Kv;
    use crate::kv::memory::MemoryStore;
    use crate::tables::records::Marker;
    use crate::tables::{accounts, lifecycle};
    use std::sync::Arc;

    const T0: u64 = 1_700_000_000_000;

    async fn store_with_box() -> (Kv, BoxId) {
        let kv: Kv = Arc::new(MemoryStore::new());
        let b = BoxId::new(RegionId(1));
        let mut txn = kv.begin().await.unwrap();
        accounts::create_box(&mut Tx::new(&mut *txn), b, T0)
            .await
            .unwrap();
        txn.commit().await.unwrap();
        (kv, b)
    }

    #[tokio::test]
    async fn a_handle_writes_only_its_own_box() {
        let (kv, b) = store_with_box().await;
        let other = BoxId::new(RegionId(1));
        let mut txn = kv.begin().await.unwrap();
        let mut tx = Tx::new(&mut *txn);
        let (handle, _) = tx.lock_profile(b).await.unwrap();
        let marker = Marker { at_ms: T0 };
        tx.put(&handle, &Key::Purge(b), &marker).await.unwrap();
        for key in [Key::Profile(other), Key::Purge(other)] {
            let err = tx.put(&handle, &key, &marker).await.unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{err}");
        }
        txn.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn a_handle_is_valid_only_in_its_transaction() {
        let (kv, b) = store_with_box().await;
        let mut first = kv.begin().await.unwrap();
        let (handle, profile) = Tx::new(&mut *first).lock_profile(b).await.unwrap();
        let mut second = kv.begin().await.unwrap();
        let err = Tx::new(&mut *second)
            .put(&handle, &Key::Profile(b), &profile)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        first.rollback().await.unwrap();
        second.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_read_proves_a_box_alive_in_its_own_transaction_only() {
        let (kv, b) = store_with_box().await;
        let unknown = BoxId::new(RegionId(1));
        let mut first = kv.begin().await.unwrap();
        {
            let mut tx = Tx::new(&mut *first);
            let read = tx
                .read_batch([
                    Key::Profile(b),
                    Key::Next(b),
                    Key::Profile(unknown),
                    Key::Next(unknown),
                    // Read once however often it is asked for.
                    Key::Next(b),
                ])
                .await
                .unwrap();
            assert!(read.live_box(unknown).unwrap().is_none());
            // A key the read left out is an error, never "absent".
            assert!(matches!(
                read.contains(&Key::Low(b)),
                Err(Error::Corrupt { .. })
            ));
            let live = read.live_box(b).unwrap().unwrap();
            let mut second = kv.begin().await.unwrap();
            let err = Tx::new(&mut *second)
                .write_next(&live, &live.head)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{err}");
            second.rollback().await.unwrap();
            let handle = tx.write_next(&live, &live.head).await.unwrap();
            assert_eq!((handle.box_id(), handle.guard()), (b, Guard::Next));
        }
        first.commit().await.unwrap();
        // A tombstoned profile is as absent as a missing one.
        let mut deletion = kv.begin().await.unwrap();
        lifecycle::delete_account(
            &mut Tx::new(&mut *deletion),
            &crate::tables::Limits::default(),
            b,
            T0,
        )
        .await
        .unwrap();
        deletion.commit().await.unwrap();
        let mut after = kv.begin().await.unwrap();
        let read = Tx::new(&mut *after)
            .read_batch([Key::Profile(b), Key::Next(b)])
            .await
            .unwrap();
        assert!(read.live_box(b).unwrap().is_none());
        after.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn an_outbox_entry_handle_writes_that_entry_only() {
        let (kv, b) = store_with_box().await;
        let marker = Marker { at_ms: T0 };
        let mut txn = kv.begin().await.unwrap();
        {
            let mut tx = Tx::new(&mut *txn);
            let (handle, _) = tx.lock_profile(b).await.unwrap();
            tx.put(&handle, &Key::Outbox(b, [1; 16]), &marker)
                .await
                .unwrap();
        }
        txn.commit().await.unwrap();
        let mut txn = kv.begin().await.unwrap();
        let mut tx = Tx::new(&mut *txn);
        assert!(tx.lock_outbox_entry(b, [2; 16]).await.unwrap().is_none());
        let (handle, _) = tx.lock_outbox_entry(b, [1; 16]).await.unwrap().unwrap();
        let err = tx
            .put(&handle, &Key::Profile(b), &Profile::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        tx.delete(&handle, &Key::Outbox(b, [1; 16])).await.unwrap();
        txn.commit().await.unwrap();
    }

    #[tokio::test]
    async fn every_guard_conflicts_with_the_deletion_of_its_box_and_then_reports_it() {
        let limits = crate::tables::Limits::default();
        let device = DeviceId::new();
        for guard in [
            Guard::Profile,
            Guard::Next,
            Guard::Low,
            Guard::Device(device),
        ] {
            let (kv, b) = store_with_box().await;
            let mut txn = kv.begin().await.unwrap();
            crate::tables::devices::add(
                &mut Tx::new(&mut *txn),
                &limits,
                b,
                device,
                &Device::default(),
                T0,
            )
            .await
            .unwrap();
            txn.commit().await.unwrap();
            // The guard is taken (a lock, no write) before the deletion commits.
            let mut racing = kv.begin().await.unwrap();
            let mut tx = Tx::new(&mut *racing);
            let taken = match guard {
                Guard::Profile => tx.lock_profile(b).await.map(drop),
                Guard::Next => tx.lock_next(b).await.map(drop),
                Guard::Low => tx.lock_low(b).await.map(drop),
                _ => tx.lock_device(b, device).await.map(drop),
            };
            taken.unwrap();
            let mut deletion = kv.begin().await.unwrap();
            lifecycle::delete_account(&mut Tx::new(&mut *deletion), &limits, b, T0)
                .await
                .unwrap();
            deletion.commit().await.unwrap();
            assert!(
                matches!(racing.commit().await, Err(crate::kv::Error::Conflict(_))),
                "{guard:?} did not conflict with the deletion"
            );
            // Begun after the deletion, every guard finds the box gone.
            let mut after = kv.begin().await.unwrap();
            let mut tx = Tx::new(&mut *after);
            assert!(matches!(tx.lock_profile(b).await, Err(Error::BoxNotFound)));
            assert!(matches!(tx.lock_next(b).await, Err(Error::BoxNotFound)));
            assert!(matches!(tx.lock_low(b).await, Err(Error::BoxNotFound)));
            assert!(matches!(
                tx.lock_device(b, device).await,
                Err(Error::BoxNotFound)
            ));
            after.rollback().await.unwrap();
        }
    }
}
