//! The workload: which operation starts next, on what, drawn from the seeded
//! generator and the model's view of which boxes, devices and groups exist.
//!
//! Targets are picked among things the clients know exist (a client does not
//! fetch for a device it never added); the model marks a box or device as on
//! its way out the moment its deletion is issued, so no later operation picks it
//! and any "not found" an earlier one meets is expected.

use crate::ids;
use crate::model::{Life, Model};
use crate::ops::{AckPlan, Op};
use crate::world::World;
use rand::Rng;
use rand::rngs::StdRng;
use rossby_keyspace::{BoxId, DeviceId, MessageId, RegionId};
use rossby_storage::tables::groups::GroupKey;

/// The relative weight of each kind of operation.
const WEIGHTS: &[(Kind, u32)] = &[
    (Kind::Send, 22),
    (Kind::Fetch, 22),
    (Kind::Register, 3),
    (Kind::AddDevice, 4),
    (Kind::Authorize, 2),
    (Kind::RemoveDevice, 3),
    (Kind::DeleteAccount, 3),
    (Kind::Publish, 5),
    (Kind::Claim, 5),
    (Kind::CreateGroup, 3),
    (Kind::Commit, 6),
    (Kind::GroupSend, 8),
    (Kind::Leave, 1),
    (Kind::Sweep, 4),
    (Kind::ResumePurges, 1),
    (Kind::ResumeOutbox, 2),
    (Kind::AckBeyond, 1),
    (Kind::AddIdentifier, 2),
    (Kind::RemoveIdentifier, 3),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Send,
    Fetch,
    Register,
    AddDevice,
    Authorize,
    RemoveDevice,
    DeleteAccount,
    Publish,
    Claim,
    CreateGroup,
    Commit,
    GroupSend,
    Leave,
    Sweep,
    ResumePurges,
    ResumeOutbox,
    AckBeyond,
    AddIdentifier,
    RemoveIdentifier,
}

/// Fewest live boxes before accounts stop being deleted.
const MIN_LIVE_BOXES: usize = 3;
/// Most live boxes before registrations stop.
const MAX_LIVE_BOXES: usize = 10;
/// Most groups created per run.
const MAX_GROUPS: usize = 8;
/// Recent one-to-one sends kept for re-sending (a client retrying after a lost
/// reply).
const RECENT: usize = 16;

/// The workload's own memory across operations.
#[derive(Debug, Default)]
pub struct Workload {
    registered: u64,
    recent: Vec<(BoxId, DeviceId, BoxId, MessageId)>,
    /// Identifiers added so far (each a fresh phone number).
    added: u64,
    /// Identifiers given to each box (some maybe removed since).
    identifiers: std::collections::BTreeMap<BoxId, Vec<String>>,
}

impl Workload {
    /// A fresh workload.
    pub fn new() -> Self {
        Workload::default()
    }

    /// Advances the clock and draws the next operation.
    pub fn next(&mut self, w: &World) -> Op {
        let control = &w.control;
        let mut m = w.model.borrow_mut();
        control.with_rng(|rng| {
            advance_clock(&mut m, rng);
            for _ in 0..8 {
                let kind = pick_kind(rng);
                if let Some(op) = self.plan(kind, &mut m, w, rng) {
                    return op;
                }
            }
            // Nothing fitted (everything is being deleted, say): sweep.
            sweep(&mut m, w, rng)
        })
    }

    /// A new account (used for the initial population too).
    pub fn register(&mut self, m: &mut Model, w: &World, rng: &mut StdRng) -> Op {
        let region = w.regions[rng.random_range(0..w.regions.len())];
        let box_id = ids::box_id(rng, region);
        let device = ids::device_id(rng);
        self.registered += 1;
        let identifier = format!("sim{}@example.org", self.registered);
        self.identifiers
            .entry(box_id)
            .or_default()
            .push(identifier.clone());
        m.boxes.insert(
            box_id,
            crate::model::BoxModel {
                region,
                life: Life::Creating,
                identifier: identifier.clone(),
                devices: Vec::new(),
            },
        );
        m.add_device(box_id, device);
        Op::Register {
            box_id,
            device,
            identifier,
        }
    }

    /// A device added to a live box (used for the initial population too).
    pub fn add_device(
        &mut self,
        m: &mut Model,
        rng: &mut StdRng,
        box_id: BoxId,
        authorize: bool,
    ) -> Op {
        let device = ids::device_id(rng);
        m.add_device(box_id, device);
        Op::AddDevice {
            box_id,
            device,
            authorize,
        }
    }

    fn plan(&mut self, kind: Kind, m: &mut Model, w: &World, rng: &mut StdRng) -> Option<Op> {
        Some(match kind {
            Kind::Send => self.send(m, rng)?,
            Kind::Fetch => {
                let (box_id, device) = pick(rng, &live_devices(m, false))?;
                let ack = match rng.random_range(0..20) {
                    0..=13 => AckPlan::All,
                    14..=16 => AckPlan::AllBut(1),
                    _ => AckPlan::None,
                };
                Op::FetchAck {
                    box_id,
                    device,
                    max_count: rng.random_range(1..=6),
                    ack,
                }
            }
            Kind::Register => {
                if live_boxes(m).len() >= MAX_LIVE_BOXES {
                    return None;
                }
                self.register(m, w, rng)
            }
            Kind::AddDevice => {
                let box_id = pick(rng, &live_boxes(m))?;
                let authorize = rng.random_bool(0.8);
                self.add_device(m, rng, box_id, authorize)
            }
            Kind::Authorize => {
                let unauthorized: Vec<_> = live_devices(m, false)
                    .into_iter()
                    .filter(|k| m.devices.get(k).is_some_and(|d| !d.authorized))
                    .collect();
                let (box_id, device) = pick(rng, &unauthorized)?;
                Op::Authorize { box_id, device }
            }
            Kind::RemoveDevice => {
                let (box_id, device) = pick(rng, &live_devices(m, false))?;
                m.set_device_life(box_id, device, Life::Deleting);
                Op::RemoveDevice { box_id, device }
            }
            Kind::DeleteAccount => {
                let live = live_boxes(m);
                if live.len() <= MIN_LIVE_BOXES {
                    return None;
                }
                let box_id = pick(rng, &live)?;
                m.set_box_life(box_id, Life::Deleting);
                Op::DeleteAccount {
                    box_id,
                    purge: rng.random_bool(0.7),
                }
            }
            Kind::Publish => {
                let (box_id, device) = pick(rng, &live_devices(m, true))?;
                let last_resort = rng.random_bool(0.3).then(|| ids::key_package(rng));
                let count = rng.random_range(usize::from(last_resort.is_none())..=3);
                let packages = (0..count).map(|_| ids::key_package(rng)).collect();
                Op::Publish {
                    box_id,
                    device,
                    packages,
                    last_resort,
                }
            }
            Kind::Claim => {
                if rng.random_bool(0.3) {
                    let box_id = pick(rng, &live_boxes(m))?;
                    Op::Claim {
                        box_id,
                        device: None,
                    }
                } else {
                    let (box_id, device) = pick(rng, &live_devices(m, true))?;
                    Op::Claim {
                        box_id,
                        device: Some(device),
                    }
                }
            }
            Kind::CreateGroup => {
                if m.groups.len() >= MAX_GROUPS {
                    return None;
                }
                let creator = pick(rng, &live_boxes(m))?;
                let group = GroupKey {
                    creator,
                    group_id: ids::group_id(rng),
                };
                m.groups.entry(group).or_default();
                Op::CreateGroup { group }
            }
            Kind::Commit => commit(m, rng)?,
            Kind::GroupSend => {
                let (group, sender_box, sender_device) = group_sender(m, rng)?;
                let known = m.groups.get(&group).map_or(0, |g| g.state.epoch);
                // Now and then a client still in an older epoch.
                let epoch = if rng.random_bool(0.1) {
                    known.saturating_sub(1)
                } else {
                    known
                };
                Op::GroupSend {
                    group,
                    sender_box,
                    sender_device,
                    msg: ids::message_id(rng, m.now),
                    epoch,
                }
            }
            Kind::Leave => {
                let (group, member, device) = group_sender(m, rng)?;
                Op::Leave {
                    group,
                    member,
                    device,
                    msg: ids::message_id(rng, m.now),
                }
            }
            Kind::Sweep => sweep(m, w, rng),
            Kind::ResumePurges => Op::ResumePurges {
                region: region(w, rng),
            },
            Kind::ResumeOutbox => Op::ResumeOutbox {
                region: region(w, rng),
            },
            Kind::AckBeyond => {
                let (box_id, device) = pick(rng, &live_devices(m, false))?;
                Op::AckBeyond { box_id, device }
            }
            Kind::AddIdentifier => {
                let box_id = pick(rng, &live_boxes(m))?;
                self.added += 1;
                let identifier = format!("+1415{:07}", self.added);
                self.identifiers
                    .entry(box_id)
                    .or_default()
                    .push(identifier.clone());
                Op::AddIdentifier {
                    box_id,
                    identifier,
                    discoverable: rng.random_bool(0.7),
                }
            }
            Kind::RemoveIdentifier => {
                let box_id = pick(rng, &live_boxes(m))?;
                let given = self.identifiers.get(&box_id)?;
                let identifier = pick_ref(rng, given)?.clone();
                Op::RemoveIdentifier { box_id, identifier }
            }
        })
    }

    fn send(&mut self, m: &mut Model, rng: &mut StdRng) -> Option<Op> {
        // Now and then a client re-sends a message whose reply it lost.
        if !self.recent.is_empty() && rng.random_bool(0.1) {
            let (sender_box, sender_device, recipient, msg) = *pick_ref(rng, &self.recent)?;
            if m.box_life(recipient) == Life::Alive {
                return Some(Op::Send {
                    sender_box,
                    sender_device,
                    recipient,
                    messages: vec![msg],
                });
            }
        }
        let (sender_box, sender_device) = pick(rng, &live_devices(m, false))?;
        let recipient = pick(rng, &live_boxes(m))?;
        let count = rng.random_range(1..=3);
        let mut messages: Vec<MessageId> =
            (0..count).map(|_| ids::message_id(rng, m.now)).collect();
        // A coalesced retry: the same message twice in one batch.
        if rng.random_bool(0.1) {
            messages.push(messages[0]);
        }
        for msg in &messages {
            if self.recent.len() == RECENT {
                self.recent.remove(0);
            }
            self.recent
                .push((sender_box, sender_device, recipient, *msg));
        }
        Some(Op::Send {
            sender_box,
            sender_device,
            recipient,
            messages,
        })
    }
}

fn pick_kind(rng: &mut StdRng) -> Kind {
    let total: u32 = WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut r = rng.random_range(0..total);
    for (kind, weight) in WEIGHTS {
        if r < *weight {
            return *kind;
        }
        r -= weight;
    }
    Kind::Send
}

/// Moves the clock on a little, and now and then past the retention period.
fn advance_clock(m: &mut Model, rng: &mut StdRng) {
    m.now += rng.random_range(0..400);
    if rng.random_bool(0.01) {
        let retention = m.limits.retention_ms;
        m.now += retention + rng.random_range(0..retention);
    }
}

fn sweep(m: &mut Model, w: &World, rng: &mut StdRng) -> Op {
    let now = m.now;
    m.max_sweep_now = m.max_sweep_now.max(now);
    Op::Sweep {
        region: region(w, rng),
        now,
        batch: rng.random_range(1..=8),
    }
}

fn region(w: &World, rng: &mut StdRng) -> RegionId {
    w.regions[rng.random_range(0..w.regions.len())]
}

fn commit(m: &Model, rng: &mut StdRng) -> Option<Op> {
    let (group, sender_box, sender_device) = group_sender(m, rng)?;
    let state = &m.groups.get(&group)?.state;
    let epoch = match rng.random_range(0..10) {
        0 => state.epoch.saturating_sub(1),
        1 => state.epoch + 1,
        _ => state.epoch,
    };
    let outsiders: Vec<BoxId> = live_boxes(m)
        .into_iter()
        .filter(|b| !state.members.contains(b))
        .collect();
    let add = match rng.random_bool(0.5) {
        true => pick(rng, &outsiders).into_iter().collect(),
        false => Vec::new(),
    };
    let others: Vec<BoxId> = state
        .members
        .iter()
        .copied()
        .filter(|b| *b != sender_box)
        .collect();
    let remove = match rng.random_bool(0.25) {
        true => pick(rng, &others).into_iter().collect(),
        false => Vec::new(),
    };
    Some(Op::Commit {
        group,
        sender_box,
        sender_device,
        msg: ids::message_id(rng, m.now),
        epoch,
        add,
        remove,
    })
}

/// A created group and a member box of it (as last known) with a live device.
fn group_sender(m: &Model, rng: &mut StdRng) -> Option<(GroupKey, BoxId, DeviceId)> {
    let groups: Vec<GroupKey> = m
        .groups
        .iter()
        .filter(|(_, g)| g.created)
        .map(|(k, _)| *k)
        .collect();
    let group = pick(rng, &groups)?;
    let members: Vec<(BoxId, DeviceId)> = live_devices(m, false)
        .into_iter()
        .filter(|(b, _)| {
            m.groups
                .get(&group)
                .is_some_and(|g| g.state.members.contains(b))
        })
        .collect();
    let (box_id, device) = pick(rng, &members)?;
    Some((group, box_id, device))
}

fn live_boxes(m: &Model) -> Vec<BoxId> {
    m.boxes
        .iter()
        .filter(|(_, b)| b.life == Life::Alive)
        .map(|(id, _)| *id)
        .collect()
}

/// Devices known to exist in live boxes (authorized ones only when asked).
fn live_devices(m: &Model, authorized: bool) -> Vec<(BoxId, DeviceId)> {
    m.devices
        .iter()
        .filter(|((b, _), d)| {
            d.life == Life::Alive && (!authorized || d.authorized) && m.box_life(*b) == Life::Alive
        })
        .map(|(k, _)| *k)
        .collect()
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> Option<T> {
    pick_ref(rng, items).copied()
}

fn pick_ref<'a, T>(rng: &mut StdRng, items: &'a [T]) -> Option<&'a T> {
    if items.is_empty() {
        None
    } else {
        items.get(rng.random_range(0..items.len()))
    }
}
