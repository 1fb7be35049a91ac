//! Invariants checked against the stored data itself: raw reads of whole key
//! ranges, in one snapshot of the store without yields or faults (through
//! [`World::raw`]), plus the end-of-run checks of what the clients received.
//!
//! [`structure`] holds in every committed state and runs during the run;
//! [`final_state`] adds what must hold once everything expired and every
//! outbox and purge finished; [`deliveries`] compares what each device received
//! with what was sent.

mod deliveries;

pub use deliveries::deliveries;

use crate::model::Life;
use crate::world::World;
use rossby_keyspace::keys::{global_range, region_range};
use rossby_keyspace::{BoxId, DeviceId, ExpiryEntry, Key};
use rossby_storage::kv::Error as KvError;
use rossby_storage::tables::Record;
use rossby_storage::tables::records::{
    DedupRecord, GroupRecord, LookupRecord, LowWater, OutboxEntry, Pointer, Profile, QueueHead,
};
use rossby_storage::{KeyRange, KvPair, RetryPolicy, ScanOrder};
use std::collections::{BTreeMap, BTreeSet};

/// Reads whole ranges in one snapshot of the raw store.
async fn scan_all(w: &World, ranges: &[KeyRange]) -> Result<Vec<KvPair>, KvError> {
    let policy = RetryPolicy::once();
    rossby_storage::kv::transact!(w.raw, &policy, |txn| {
        let mut out = Vec::new();
        for range in ranges {
            out.extend(txn.scan(range, usize::MAX, ScanOrder::Forward).await?);
        }
        Ok(out)
    })
}

/// Checks that a purged box left nothing: no key in its range, no outbox entry,
/// no purge entry. (Its expiry index entries stay until they fall due.)
pub async fn check_purged(w: &World, box_id: BoxId) {
    let ranges = [
        Key::box_range(box_id),
        Key::box_outbox_range(box_id),
        KeyRange::prefix(&Key::Purge(box_id).encode()),
    ];
    match scan_all(w, &ranges).await {
        Ok(left) if left.is_empty() => {}
        Ok(left) => {
            let keys: Vec<String> = left
                .iter()
                .take(4)
                .map(|(k, _)| format!("{:?}", Key::decode(k)))
                .collect();
            w.fail(
                "a purged box leaves nothing behind",
                format!("box {box_id}: {} keys left, e.g. {keys:?}", left.len()),
            );
        }
        Err(err) => w.fail("the raw store can be read", err.to_string()),
    }
}

/// What one box holds, gathered from a scan.
#[derive(Default)]
struct BoxKeys {
    profile: Option<Profile>,
    next: Option<QueueHead>,
    low: Option<u64>,
    devices: BTreeSet<DeviceId>,
    pointers: BTreeMap<DeviceId, u64>,
    packages: BTreeMap<DeviceId, usize>,
    last_resort: BTreeSet<DeviceId>,
    queue: Vec<u64>,
    dedups: Vec<u64>,
    groups: BTreeMap<[u8; 16], u64>,
    keys: usize,
}

/// Everything the store holds, per box, plus the regional indexes.
#[derive(Default)]
struct Snapshot {
    boxes: BTreeMap<BoxId, BoxKeys>,
    expiry: Vec<(BoxId, ExpiryEntry)>,
    purges: BTreeSet<BoxId>,
    outbox: Vec<(BoxId, [u8; 16], u64)>,
    lookups: Vec<BoxId>,
    /// Lookup entries by (pepper version, digest).
    lookup_keys: BTreeMap<(u32, [u8; 32]), BoxId>,
    /// The boxes' identifier entries.
    idents: BTreeSet<(BoxId, u32, [u8; 32])>,
}

fn decode<R: Record>(w: &World, value: &[u8]) -> Option<R> {
    match R::from_stored(value) {
        Ok(r) => Some(r),
        Err(err) => {
            w.fail("stored records decode", err.to_string());
            None
        }
    }
}

async fn snapshot(w: &World) -> Option<Snapshot> {
    let mut ranges = vec![global_range()];
    ranges.extend(w.regions.iter().map(|r| region_range(*r)));
    let pairs = match scan_all(w, &ranges).await {
        Ok(pairs) => pairs,
        Err(err) => {
            w.fail("the raw store can be read", err.to_string());
            return None;
        }
    };
    let mut s = Snapshot::default();
    for (raw, value) in &pairs {
        let key = match Key::decode(raw) {
            Ok(key) => key,
            Err(err) => {
                w.fail("stored keys decode", format!("{raw:02x?}: {err}"));
                return None;
            }
        };
        if let Some(owner) = box_of(&key) {
            s.boxes.entry(owner).or_default().keys += 1;
        }
        match key {
            Key::Profile(b) => s.boxes.entry(b).or_default().profile = decode(w, value),
            Key::Next(b) => s.boxes.entry(b).or_default().next = decode(w, value),
            Key::Low(b) => {
                s.boxes.entry(b).or_default().low = decode::<LowWater>(w, value).map(|l| l.low)
            }
            Key::Device(b, d) => {
                s.boxes.entry(b).or_default().devices.insert(d);
            }
            Key::Pointer(b, d) => {
                let acked = decode::<Pointer>(w, value).map_or(0, |p| p.acked);
                s.boxes.entry(b).or_default().pointers.insert(d, acked);
            }
            Key::KeyPackage(b, d, _) => {
                *s.boxes.entry(b).or_default().packages.entry(d).or_default() += 1;
            }
            Key::LastResortKeyPackage(b, d) => {
                s.boxes.entry(b).or_default().last_resort.insert(d);
            }
            Key::Queue(b, seq) => s.boxes.entry(b).or_default().queue.push(seq),
            Key::Dedup(b, _, _) => {
                let seq = decode::<DedupRecord>(w, value).map_or(0, |d| d.seq);
                s.boxes.entry(b).or_default().dedups.push(seq);
            }
            Key::GroupEpoch(b, g) => {
                let seq = decode::<GroupRecord>(w, value).map_or(0, |r| r.outbox_seq);
                s.boxes.entry(b).or_default().groups.insert(g, seq);
            }
            Key::Expiry { box_id, entry, .. } => s.expiry.push((box_id, entry)),
            Key::Purge(b) => {
                s.purges.insert(b);
            }
            Key::Outbox(creator, _) => {
                if let Some(entry) = decode::<OutboxEntry>(w, value) {
                    let group: [u8; 16] = entry.group_id.as_slice().try_into().unwrap_or([0; 16]);
                    s.outbox.push((creator, group, entry.seq));
                }
            }
            Key::Lookup {
                pepper_version,
                digest,
            } => {
                if let Some(record) = decode::<LookupRecord>(w, value)
                    && let Ok(b) = BoxId::try_from_slice(&record.box_id)
                {
                    s.lookups.push(b);
                    s.lookup_keys.insert((pepper_version, digest), b);
                }
            }
            Key::Ident(b, version, digest) => {
                s.idents.insert((b, version, digest));
            }
            _ => {}
        }
    }
    Some(s)
}

/// The box whose range holds `key`, if any.
fn box_of(key: &Key) -> Option<BoxId> {
    match *key {
        Key::Profile(b)
        | Key::Device(b, _)
        | Key::Pointer(b, _)
        | Key::KeyPackage(b, _, _)
        | Key::LastResortKeyPackage(b, _)
        | Key::Next(b)
        | Key::Low(b)
        | Key::Queue(b, _)
        | Key::Dedup(b, _, _)
        | Key::Contact(b, _)
        | Key::Block(b, _)
        | Key::Ident(b, _, _)
        | Key::PendingIdentifier(b, _, _)
        | Key::Presence(b, _)
        | Key::GroupEpoch(b, _) => Some(b),
        _ => None,
    }
}

/// Checks what must hold in every committed state of the store.
pub async fn structure(w: &World) {
    if let Some(s) = snapshot(w).await {
        check_structure(w, &s);
    }
}

fn check_structure(w: &World, s: &Snapshot) {
    let max_packages = w.store.limits.max_key_packages_per_device;
    for (b, k) in &s.boxes {
        let Some(profile) = &k.profile else {
            // Purges delete the profile last: nothing may outlive it.
            w.fail(
                "every key of a box lies under its profile",
                format!("box {b}: {} keys but no profile", k.keys),
            );
            return;
        };
        if profile.deleted {
            if !k.devices.is_empty()
                || !k.pointers.is_empty()
                || !k.packages.is_empty()
                || !k.last_resort.is_empty()
            {
                w.fail(
                    "a deleted box has no devices",
                    format!(
                        "box {b}: devices {:?}, pointers {:?}, KeyPackages of {:?}, last-resort ones of {:?}",
                        k.devices,
                        k.pointers.keys().collect::<Vec<_>>(),
                        k.packages.keys().collect::<Vec<_>>(),
                        k.last_resort
                    ),
                );
            }
            if !s.purges.contains(b) {
                w.fail("a deleted box awaits its purge", format!("box {b}"));
            }
            continue;
        }
        let Some(next) = &k.next else {
            w.fail("a live box has a queue head", format!("box {b}"));
            continue;
        };
        let last = next.next_seq.saturating_sub(1);
        for (d, acked) in &k.pointers {
            if *acked > last {
                w.fail(
                    "pointers never pass the last sequence number",
                    format!("box {b} device {d}: pointer {acked} > last {last}"),
                );
            }
        }
        let devices: BTreeSet<&DeviceId> = k.devices.iter().collect();
        let pointers: BTreeSet<&DeviceId> = k.pointers.keys().collect();
        if devices != pointers {
            w.fail(
                "every device has exactly one pointer",
                format!("box {b}: devices {devices:?} pointers {pointers:?}"),
            );
        }
        for d in k.packages.keys().chain(k.last_resort.iter()) {
            if !k.devices.contains(d) {
                w.fail(
                    "KeyPackages belong to existing devices",
                    format!("box {b}: packages of removed device {d}"),
                );
            }
        }
        for (d, n) in &k.packages {
            if *n > max_packages {
                w.fail(
                    "a device holds at most its quota of KeyPackages",
                    format!("box {b} device {d}: {n}"),
                );
            }
        }
        // Deletion only ever removes the oldest envelopes: the queue is exactly
        // [low, next).
        let low = k.low.unwrap_or(1).max(1);
        let expected: Vec<u64> = (low..next.next_seq).collect();
        if k.queue != expected {
            w.fail(
                "a queue holds exactly the envelopes from low to next",
                format!(
                    "box {b}: low {low} next {} holds {:?}",
                    next.next_seq,
                    summary(&k.queue)
                ),
            );
        }
        if let Some(stale) = uncollected(w, *b, k) {
            w.fail(
                "envelopes every device acknowledged are deleted",
                format!("box {b}: {stale}"),
            );
        }
        if let Some(seq) = k.dedups.iter().find(|seq| **seq >= next.next_seq) {
            w.fail(
                "dedup records name assigned sequence numbers",
                format!("box {b}: dedup seq {seq} >= next {}", next.next_seq),
            );
        }
    }
    for (b, entry) in &s.expiry {
        let Some(k) = s.boxes.get(b) else { continue };
        if let (ExpiryEntry::Message(seq) | ExpiryEntry::Batch(seq), Some(next)) = (entry, &k.next)
            && k.profile.as_ref().is_some_and(|p| !p.deleted)
            && *seq >= next.next_seq
        {
            w.fail(
                "expiry entries name assigned sequence numbers",
                format!("box {b}: expiry of seq {seq} >= next {}", next.next_seq),
            );
        }
    }
    for (creator, group, seq) in &s.outbox {
        let recorded = s.boxes.get(creator).and_then(|k| k.groups.get(group));
        match recorded {
            Some(outbox_seq) if seq <= outbox_seq => {}
            _ => w.fail(
                "outbox entries belong to a group record",
                format!("creator {creator}: entry {seq} of a group recorded as {recorded:?}"),
            ),
        }
    }
    for purge in &s.purges {
        if let Some(k) = s.boxes.get(purge)
            && k.profile.as_ref().is_some_and(|p| !p.deleted)
        {
            w.fail("only deleted boxes are purged", format!("box {purge}"));
        }
    }
    // A live box keeps at least one identifier (the last one is never removed,
    // also by concurrent removals), and each identifier entry mirrors its lookup.
    for (b, keys) in &s.boxes {
        let live = keys.profile.as_ref().is_some_and(|p| !p.deleted);
        if live && !s.idents.iter().any(|(owner, _, _)| owner == b) {
            w.fail(
                "a live box keeps an identifier",
                format!("box {b} has none"),
            );
        }
    }
    for (b, version, digest) in &s.idents {
        if s.lookup_keys.get(&(*version, *digest)) != Some(b) {
            w.fail(
                "identifier entries mirror the lookup",
                format!("box {b}: an identifier entry without its lookup entry"),
            );
        }
    }
    for ((version, digest), b) in &s.lookup_keys {
        if !s.idents.contains(&(*b, *version, *digest)) {
            w.fail(
                "identifier entries mirror the lookup",
                format!("box {b}: a lookup entry without its identifier entry"),
            );
        }
    }
    for b in &s.lookups {
        let live = s
            .boxes
            .get(b)
            .and_then(|k| k.profile.as_ref())
            .is_some_and(|p| !p.deleted);
        if !live {
            w.fail(
                "identifiers are bound to live boxes",
                format!("an identifier points at box {b}"),
            );
        }
    }
}

/// With unbounded deletes, every commit that moves a pointer or removes a
/// device deletes what all remaining devices acknowledged. So in any committed
/// state no envelope lies between the latest starting pointer of the box's
/// devices (envelopes before it may predate a device and wait for expiry) and
/// the lowest pointer. Judged only when the model knows every device's start.
fn uncollected(w: &World, b: BoxId, k: &BoxKeys) -> Option<String> {
    if w.store.limits.max_deletes_per_txn < 1024 || k.pointers.is_empty() {
        return None;
    }
    let m = w.model.borrow();
    let mut since = 0;
    for d in k.pointers.keys() {
        since = since.max(m.devices.get(&(b, *d))?.p0?);
    }
    let min = k.pointers.values().copied().min()?;
    let stale: Vec<u64> = k
        .queue
        .iter()
        .copied()
        .filter(|seq| *seq > since && *seq <= min)
        .collect();
    (!stale.is_empty()).then(|| {
        format!(
            "{} left after every device acknowledged them (devices start at most at {since}, pointers {:?})",
            summary(&stale),
            k.pointers
        )
    })
}

fn summary(seqs: &[u64]) -> String {
    match (seqs.first(), seqs.last()) {
        (Some(a), Some(b)) => format!("{} entries {a}..={b}", seqs.len()),
        _ => "nothing".into(),
    }
}

/// Checks the store once everything expired and every purge and outbox
/// finished: nothing transient remains, and deleted boxes are gone entirely.
pub async fn final_state(w: &World) {
    let Some(s) = snapshot(w).await else {
        return;
    };
    check_structure(w, &s);
    if let Some((b, e)) = s.expiry.first() {
        w.fail(
            "everything due leaves the expiry index",
            format!("{} entries left, e.g. box {b} {e:?}", s.expiry.len()),
        );
    }
    if let Some(b) = s.purges.iter().next() {
        w.fail(
            "every purge finishes",
            format!("box {b} still awaits its purge"),
        );
    }
    if let Some((creator, _, seq)) = s.outbox.first() {
        w.fail(
            "every outbox entry is delivered",
            format!("creator {creator}: entry {seq} left"),
        );
    }
    for (b, k) in &s.boxes {
        if !k.queue.is_empty() || !k.dedups.is_empty() {
            w.fail(
                "everything expired is deleted",
                format!(
                    "box {b}: {} envelopes and {} dedup records left",
                    k.queue.len(),
                    k.dedups.len()
                ),
            );
        }
    }
    let leftover = w
        .model
        .borrow()
        .boxes
        .iter()
        .find(|(b, model)| model.life == Life::Deleted && s.boxes.contains_key(b))
        .map(|(b, _)| *b);
    if let Some(b) = leftover {
        w.fail("a purged box leaves nothing behind", format!("box {b}"));
    }
}
