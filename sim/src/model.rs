//! The model: what the simulated clients asked for and what they were told, and
//! the checks made as each answer arrives.
//!
//! The model never predicts the store's state; it accumulates facts the answers
//! establish and flags answers that contradict them. An operation whose outcome
//! is unknown (its commit was `Undetermined` and never resolved, or its gateway
//! crashed) leaves a "maybe": the box or device stays in a transitional
//! [`Life`], the message stays an intent that may or may not show up in a
//! fetch. Every fetched envelope must match an intent; every sequence number
//! must carry one envelope; a device's pointer never moves backwards; and so on
//! (each check names its invariant).
//!
//! Operations record answers the moment they arrive (before their next await),
//! so a crash that drops an operation loses nothing the client had learnt.

use crate::payload::Payload;
use rossby_keyspace::{BoxId, DeviceId, MessageId, RegionId};
use rossby_storage::tables::Limits;
use rossby_storage::tables::groups::{Committed, GroupKey, GroupState};
use rossby_storage::tables::keypackages::Claimed;
use rossby_storage::tables::queue::{Delivered, Enqueued, Fetched};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// What was observed.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// Where a box or device stands, as far as the clients know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Its creation was issued and its outcome is not known yet.
    Creating,
    /// It exists.
    Alive,
    /// Its deletion was issued and its outcome is not known yet.
    Deleting,
    /// It was deleted.
    Deleted,
    /// Its creation did not happen.
    Absent,
}

/// A box as the clients know it.
#[derive(Clone, Debug)]
pub struct BoxModel {
    /// Its home region.
    pub region: RegionId,
    /// Where it stands.
    pub life: Life,
    /// The identifier it registered with.
    pub identifier: String,
    /// Devices ever added (in the order they were), whatever became of them.
    pub devices: Vec<DeviceId>,
}

/// A device as its client knows it.
#[derive(Clone, Debug)]
pub struct DeviceModel {
    /// Where it stands.
    pub life: Life,
    /// Its pointer when it was added (it must receive every later message).
    pub p0: Option<u64>,
    /// Known to be authorized.
    pub authorized: bool,
    /// Highest pointer an acknowledgement was confirmed to set.
    pub floor: u64,
    /// Sequence numbers fetched.
    pub delivered: BTreeSet<u64>,
    /// Gaps reported (inclusive ranges).
    pub gaps: Vec<(u64, u64)>,
    /// The highest last sequence number of the box a fetch reported.
    pub last_seen: u64,
}

/// The envelope a client meant to enqueue (what a fetch must hand back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// The sending box.
    pub sender_box: BoxId,
    /// The sending device.
    pub sender_device: DeviceId,
    /// The message id.
    pub message_id: MessageId,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// The dedup scope of a send: recipient box, sender device, message id.
pub type MsgKey = (BoxId, DeviceId, MessageId);

#[derive(Clone, Debug)]
struct Intent {
    fingerprint: Fingerprint,
    /// The earliest clock any attempt used: its dedup record expires from then on.
    first_now: u64,
    /// Sequence numbers it was seen at.
    seqs: BTreeSet<u64>,
}

#[derive(Clone, Debug)]
struct Stored {
    key: MsgKey,
    /// Exact expiry, when known (from the attempt that enqueued it, or a fetch).
    expires_at: Option<u64>,
}

/// A Commit the store accepted, with the boxes its fan-out must reach.
#[derive(Clone, Debug)]
pub struct AcceptedCommit {
    /// The committing device (the fan-out's dedup scope).
    pub sender_device: DeviceId,
    /// The Commit's message id.
    pub msg: MessageId,
    /// Every box its fan-out names.
    pub recipients: Vec<BoxId>,
}

/// A group as its members know it.
#[derive(Clone, Debug, Default)]
pub struct GroupModel {
    /// Confirmed created.
    pub created: bool,
    /// The newest state any answer reported.
    pub state: GroupState,
    /// The Commit that produced each epoch (from accepted Commits).
    pub winners: BTreeMap<u64, MessageId>,
    /// Commits the store accepted.
    pub accepted: Vec<AcceptedCommit>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PackageOwner {
    box_id: BoxId,
    device: DeviceId,
    last_resort: bool,
}

/// Everything the clients know.
pub struct Model {
    /// The limits the store runs with (retention and dedup window matter here).
    pub limits: Limits,
    /// The simulated clock.
    pub now: u64,
    /// The latest clock any sweep was started with: nothing expires before it.
    pub max_sweep_now: u64,
    /// Boxes by id.
    pub boxes: BTreeMap<BoxId, BoxModel>,
    /// Devices by box and id.
    pub devices: BTreeMap<(BoxId, DeviceId), DeviceModel>,
    /// Groups by key.
    pub groups: BTreeMap<GroupKey, GroupModel>,
    intents: BTreeMap<MsgKey, Intent>,
    contents: BTreeMap<(BoxId, u64), Stored>,
    delivered_commits: BTreeMap<(GroupKey, u64), MessageId>,
    packages: BTreeMap<Vec<u8>, PackageOwner>,
    claimed: BTreeSet<Vec<u8>>,
    failure: Option<Violation>,
}

impl Model {
    /// An empty model at clock `now`.
    pub fn new(limits: Limits, now: u64) -> Self {
        Model {
            limits,
            now,
            max_sweep_now: 0,
            boxes: BTreeMap::new(),
            devices: BTreeMap::new(),
            groups: BTreeMap::new(),
            intents: BTreeMap::new(),
            contents: BTreeMap::new(),
            delivered_commits: BTreeMap::new(),
            packages: BTreeMap::new(),
            claimed: BTreeSet::new(),
            failure: None,
        }
    }

    /// Records a broken invariant (the first one is kept: it is the cause).
    pub fn fail(&mut self, invariant: &'static str, detail: impl Into<String>) {
        if self.failure.is_none() {
            self.failure = Some(Violation {
                invariant,
                detail: detail.into(),
            });
        }
    }

    /// The first broken invariant, if any.
    pub fn failure(&self) -> Option<&Violation> {
        self.failure.as_ref()
    }

    /// The life of a box (`Absent` for unknown ones).
    pub fn box_life(&self, box_id: BoxId) -> Life {
        self.boxes.get(&box_id).map_or(Life::Absent, |b| b.life)
    }

    /// The life of a device (`Absent` for unknown ones).
    pub fn device_life(&self, box_id: BoxId, device: DeviceId) -> Life {
        self.devices
            .get(&(box_id, device))
            .map_or(Life::Absent, |d| d.life)
    }

    /// True when the device and its box are both known to exist, so "not found"
    /// would contradict what the clients know.
    pub fn surely_present(&self, box_id: BoxId, device: DeviceId) -> bool {
        self.box_life(box_id) == Life::Alive && self.device_life(box_id, device) == Life::Alive
    }

    /// Sets a box's life.
    pub fn set_box_life(&mut self, box_id: BoxId, life: Life) {
        if let Some(b) = self.boxes.get_mut(&box_id) {
            b.life = life;
        }
    }

    /// Sets a device's life.
    pub fn set_device_life(&mut self, box_id: BoxId, device: DeviceId, life: Life) {
        if let Some(d) = self.devices.get_mut(&(box_id, device)) {
            d.life = life;
        }
    }

    /// Registers a device about to be added.
    pub fn add_device(&mut self, box_id: BoxId, device: DeviceId) {
        self.devices.insert(
            (box_id, device),
            DeviceModel {
                life: Life::Creating,
                p0: None,
                authorized: false,
                floor: 0,
                delivered: BTreeSet::new(),
                gaps: Vec::new(),
                last_seen: 0,
            },
        );
        if let Some(b) = self.boxes.get_mut(&box_id) {
            b.devices.push(device);
        }
    }

    /// A device's add is confirmed, with its starting pointer.
    pub fn device_added(&mut self, box_id: BoxId, device: DeviceId, p0: u64, authorized: bool) {
        if let Some(d) = self.devices.get_mut(&(box_id, device)) {
            d.life = Life::Alive;
            d.p0 = Some(p0);
            d.authorized |= authorized;
            d.floor = d.floor.max(p0);
        }
    }

    /// A device's authorization is confirmed.
    pub fn device_authorized(&mut self, box_id: BoxId, device: DeviceId) {
        if let Some(d) = self.devices.get_mut(&(box_id, device)) {
            d.authorized = true;
        }
    }

    // --- messages -------------------------------------------------------

    /// A client is about to (re-)send `fingerprint` to `recipient` at `now`.
    pub fn intend(&mut self, recipient: BoxId, fingerprint: Fingerprint, now: u64) {
        let key = (recipient, fingerprint.sender_device, fingerprint.message_id);
        match self.intents.get_mut(&key) {
            Some(intent) => {
                intent.first_now = intent.first_now.min(now);
                if intent.fingerprint != fingerprint {
                    self.fail(
                        "sim: one message id reused for two payloads",
                        format!("{key:?}"),
                    );
                }
            }
            None => {
                self.intents.insert(
                    key,
                    Intent {
                        fingerprint,
                        first_now: now,
                        seqs: BTreeSet::new(),
                    },
                );
            }
        }
    }

    /// An enqueue of `key` answered `Ok` at clock `now`.
    pub fn enqueued(&mut self, key: MsgKey, enqueued: Enqueued, now: u64) {
        // Only a fresh enqueue tells its exact expiry: a duplicate answer comes
        // from whichever earlier attempt was applied.
        let expires = (!enqueued.duplicate).then(|| now.saturating_add(self.limits.retention_ms));
        self.place(key, enqueued.seq, expires);
    }

    /// Records that `key` sits at `seq` of its recipient box.
    fn place(&mut self, key: MsgKey, seq: u64, expires_at: Option<u64>) {
        let box_id = key.0;
        match self.contents.get_mut(&(box_id, seq)) {
            Some(stored) if stored.key != key => {
                let other = stored.key;
                self.fail(
                    "one sequence number, one envelope",
                    format!("box {box_id} seq {seq} holds {other:?} and {key:?}"),
                );
                return;
            }
            Some(stored) => {
                if stored.expires_at.is_none() {
                    stored.expires_at = expires_at;
                }
            }
            None => {
                self.contents
                    .insert((box_id, seq), Stored { key, expires_at });
            }
        }
        let now = self.now;
        let window = self.limits.dedup_window_ms;
        let Some(intent) = self.intents.get_mut(&key) else {
            self.fail(
                "every envelope was sent by someone",
                format!("box {box_id} seq {seq}: {key:?} was never sent"),
            );
            return;
        };
        intent.seqs.insert(seq);
        let duplicated = (intent.seqs.len() > 1 && now < intent.first_now.saturating_add(window))
            .then(|| intent.seqs.clone());
        let payload = intent.fingerprint.payload.clone();
        if let Some(seqs) = duplicated {
            self.fail(
                "a send is enqueued once within the dedup window",
                format!("{key:?} sits at seqs {seqs:?}"),
            );
        }
        if let Some(Payload::Commit {
            group, epoch, msg, ..
        }) = Payload::decode(&payload)
        {
            match self.delivered_commits.get(&(group, epoch)) {
                Some(other) if *other != msg => {
                    let other = *other;
                    self.fail(
                        "group epochs never fork",
                        format!(
                            "boxes received two Commits for epoch {epoch} of {group:?}: {other} and {msg}"
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    self.delivered_commits.insert((group, epoch), msg);
                }
            }
        }
    }

    /// A fetch by `device` of `box_id` answered. `floor` is the device's
    /// confirmed pointer when the fetch was issued (its snapshot is at least as
    /// new), `max_count` the fetch's bound.
    pub fn fetched(
        &mut self,
        box_id: BoxId,
        device: DeviceId,
        floor: u64,
        max_count: usize,
        fetched: &Fetched,
    ) {
        let who = format!("box {box_id} device {device}");
        if fetched.acked < floor {
            self.fail(
                "pointers never move backwards",
                format!(
                    "{who}: pointer {} after an acknowledged {floor}",
                    fetched.acked
                ),
            );
            return;
        }
        if fetched.acked > fetched.last_seq {
            self.fail(
                "pointers never pass the last sequence number",
                format!(
                    "{who}: pointer {} > last {}",
                    fetched.acked, fetched.last_seq
                ),
            );
            return;
        }
        let mut from = fetched.acked + 1;
        if let Some(gap) = fetched.gap {
            if gap.from != fetched.acked + 1 || gap.to < gap.from {
                self.fail(
                    "gaps start after the pointer",
                    format!("{who}: gap {gap:?} with pointer {}", fetched.acked),
                );
                return;
            }
            from = gap.to + 1;
        }
        if max_count > 0 && fetched.envelopes.is_empty() && from <= fetched.last_seq {
            self.fail(
                "a queue has no holes",
                format!(
                    "{who}: nothing fetched from {from} though the last seq is {}",
                    fetched.last_seq
                ),
            );
            return;
        }
        for (i, delivered) in fetched.envelopes.iter().enumerate() {
            let expected = from + i as u64;
            if delivered.seq != expected || delivered.seq > fetched.last_seq {
                self.fail(
                    "fetches hand out consecutive sequence numbers",
                    format!(
                        "{who}: got seq {} where {expected} was due (last {})",
                        delivered.seq, fetched.last_seq
                    ),
                );
                return;
            }
            self.check_envelope(box_id, delivered);
        }
        let gap = fetched.gap.map(|g| (g.from, g.to));
        if let Some((_, to)) = gap
            && !self.gap_explained(box_id, to, fetched.last_seq)
        {
            self.fail(
                "gaps only come from expiry",
                format!(
                    "{who}: gap up to {to} but nothing up to {} had expired by the latest sweep ({})",
                    fetched.last_seq, self.max_sweep_now
                ),
            );
        }
        if let Some(d) = self.devices.get_mut(&(box_id, device)) {
            d.delivered.extend(fetched.envelopes.iter().map(|e| e.seq));
            d.gaps.extend(gap);
            d.last_seen = d.last_seen.max(fetched.last_seq);
            // The fetch saw the pointer itself (an ack whose reply was lost may
            // have moved it), and pointers never move backwards.
            d.floor = d.floor.max(fetched.acked);
        }
    }

    /// Checks a fetched envelope against the intent it must come from.
    fn check_envelope(&mut self, box_id: BoxId, delivered: &Delivered) {
        let env = &delivered.envelope;
        let parsed = (
            BoxId::try_from_slice(&env.sender_box),
            DeviceId::try_from_slice(&env.sender_device),
            MessageId::try_from_slice(&env.message_id),
        );
        let (Ok(sender_box), Ok(sender_device), Ok(message_id)) = parsed else {
            self.fail(
                "stored envelopes are well formed",
                format!("box {box_id} seq {}: bad ids", delivered.seq),
            );
            return;
        };
        let key = (box_id, sender_device, message_id);
        let fingerprint = Fingerprint {
            sender_box,
            sender_device,
            message_id,
            payload: env.payload.clone(),
        };
        if let Some(intent) = self.intents.get(&key)
            && intent.fingerprint != fingerprint
        {
            self.fail(
                "envelopes arrive as sent",
                format!("box {box_id} seq {}: {fingerprint:?}", delivered.seq),
            );
            return;
        }
        self.place(key, delivered.seq, Some(env.expires_at_ms));
    }

    /// Whether a gap ending at `to` can come from expiry: false only when every
    /// envelope from `to` to `last` is known and none was due at the latest
    /// sweep (expiring an envelope deletes everything before it, so the
    /// envelope whose expiry raised the low-water mark lies in that range).
    fn gap_explained(&self, box_id: BoxId, to: u64, last: u64) -> bool {
        let mut known = 0u64;
        for (_, stored) in self.contents.range((box_id, to)..=(box_id, last)) {
            match stored.expires_at {
                Some(at) if at < self.max_sweep_now => return true,
                Some(_) => known += 1,
                None => return true,
            }
        }
        known < last - to + 1
    }

    /// An acknowledgement up to `upto` answered with the pointer `acked`.
    pub fn acked(&mut self, box_id: BoxId, device: DeviceId, upto: u64, acked: u64) {
        if acked < upto {
            self.fail(
                "an ack sets the pointer at least to what it names",
                format!("box {box_id} device {device}: ack {upto} answered {acked}"),
            );
        }
        if let Some(d) = self.devices.get_mut(&(box_id, device)) {
            d.floor = d.floor.max(acked);
        }
    }

    /// Every sequence number placed in `box_id`, in order, with its payload.
    pub fn box_contents(&self, box_id: BoxId) -> Vec<(u64, Option<Payload>)> {
        self.contents
            .range((box_id, 0)..=(box_id, u64::MAX))
            .map(|((_, seq), stored)| {
                let payload = self
                    .intents
                    .get(&stored.key)
                    .and_then(|i| Payload::decode(&i.fingerprint.payload));
                (*seq, payload)
            })
            .collect()
    }

    /// Whether `key` was seen in its box at all.
    pub fn was_placed(&self, key: &MsgKey) -> bool {
        self.intents.get(key).is_some_and(|i| !i.seqs.is_empty())
    }

    // --- KeyPackages ------------------------------------------------------

    /// KeyPackages a device is about to publish.
    pub fn publishing(
        &mut self,
        box_id: BoxId,
        device: DeviceId,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) {
        for data in packages {
            self.packages.insert(
                data.clone(),
                PackageOwner {
                    box_id,
                    device,
                    last_resort: false,
                },
            );
        }
        if let Some(data) = last_resort {
            self.packages.insert(
                data.to_vec(),
                PackageOwner {
                    box_id,
                    device,
                    last_resort: true,
                },
            );
        }
    }

    /// A claim on `box_id` handed out `claimed`.
    pub fn claimed(&mut self, box_id: BoxId, claimed: &Claimed) {
        let owner = PackageOwner {
            box_id,
            device: claimed.device,
            last_resort: claimed.last_resort,
        };
        match self.packages.get(&claimed.data) {
            Some(o) if *o == owner => {}
            other => {
                let other = other.copied();
                self.fail(
                    "a claim hands out a package of the device it names",
                    format!("claimed {owner:?}, published as {other:?}"),
                );
                return;
            }
        }
        if !claimed.last_resort && !self.claimed.insert(claimed.data.clone()) {
            self.fail(
                "a KeyPackage is handed out at most once",
                format!(
                    "box {box_id} device {}: package {:02x?} claimed twice",
                    claimed.device,
                    &claimed.data[..claimed.data.len().min(8)]
                ),
            );
        }
    }

    // --- groups -----------------------------------------------------------

    /// Notes a state an answer reported, if newer than the known one.
    pub fn group_state(&mut self, group: GroupKey, state: &GroupState) {
        let g = self.groups.entry(group).or_default();
        if state.epoch >= g.state.epoch {
            g.state = state.clone();
        }
    }

    /// A Commit made in `epoch` was accepted (or answered as a duplicate of
    /// the accepted one).
    pub fn committed(
        &mut self,
        group: GroupKey,
        sender_device: DeviceId,
        msg: MessageId,
        epoch: u64,
        committed: &Committed,
    ) {
        let after = committed.state.epoch;
        if after != epoch + 1 {
            self.fail(
                "a Commit advances the epoch by one",
                format!("{group:?}: Commit in epoch {epoch} answered epoch {after}"),
            );
            return;
        }
        let g = self.groups.entry(group).or_default();
        match g.winners.get(&after) {
            Some(other) if *other != msg => {
                let other = *other;
                self.fail(
                    "group epochs never fork",
                    format!("{group:?}: epoch {after} accepted Commits {other} and {msg}"),
                );
                return;
            }
            Some(_) => {}
            None => {
                g.winners.insert(after, msg);
            }
        }
        if let Some(entry) = &committed.fan_out {
            if entry.epoch != after || entry.message_id != msg {
                self.fail(
                    "a Commit's fan-out names its epoch and message",
                    format!(
                        "{group:?}: entry for epoch {} of {}",
                        entry.epoch, entry.message_id
                    ),
                );
                return;
            }
            g.accepted.push(AcceptedCommit {
                sender_device,
                msg,
                recipients: entry.recipients.iter().map(|r| r.box_id).collect(),
            });
        }
        self.group_state(group, &committed.state);
    }
}
