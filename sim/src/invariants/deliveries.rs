//! End-of-run checks of what the clients received against what was sent: every
//! message reached every device present when it was sent, and groups' Commits
//! arrived in order and before the messages of their epoch.

use crate::model::Life;
use crate::payload::Payload;
use crate::world::World;
use rossby_keyspace::BoxId;
use std::collections::{BTreeMap, BTreeSet};

/// Compares what each device received with what was sent (after the drain).
pub fn deliveries(w: &World) {
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    {
        let m = w.model.borrow();
        for ((b, d), dev) in &m.devices {
            if dev.life != Life::Alive || m.box_life(*b) != Life::Alive {
                continue;
            }
            let Some(p0) = dev.p0 else { continue };
            let missed = (p0 + 1..=dev.last_seen).find(|s| {
                !dev.delivered.contains(s) && !dev.gaps.iter().any(|(f, t)| f <= s && s <= t)
            });
            if let Some(seq) = missed {
                problems.push((
                    "every message reaches every device present when it was sent",
                    format!("box {b} device {d} (added at {p0}) never got seq {seq}"),
                ));
            }
            if dev.floor != dev.last_seen {
                problems.push((
                    "a drained device has acknowledged everything",
                    format!(
                        "box {b} device {d}: pointer {} last {}",
                        dev.floor, dev.last_seen
                    ),
                ));
            }
        }
        for (b, model) in &m.boxes {
            if model.life == Life::Alive {
                group_order(&m.box_contents(*b), *b, &mut problems);
            }
        }
        for (group, g) in &m.groups {
            if m.box_life(group.creator) != Life::Alive {
                continue;
            }
            for c in &g.accepted {
                for r in &c.recipients {
                    if m.box_life(*r) == Life::Alive && !m.was_placed(&(*r, c.sender_device, c.msg))
                    {
                        problems.push((
                            "an accepted Commit reaches every member box",
                            format!("Commit {} of {group:?} never reached box {r}", c.msg),
                        ));
                    }
                }
            }
        }
    }
    for (invariant, detail) in problems {
        w.fail(invariant, detail);
    }
}

/// Within one box: a group's Commits arrive in epoch order, and an application
/// message of epoch `e` never before the Commit that produced `e`.
fn group_order(
    contents: &[(u64, Option<Payload>)],
    b: BoxId,
    problems: &mut Vec<(&'static str, String)>,
) {
    let mut commits: BTreeMap<_, (u64, u64)> = BTreeMap::new();
    let mut commit_seq = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (seq, payload) in contents {
        if let Some(Payload::Commit {
            group, epoch, msg, ..
        }) = payload
        {
            // A second copy is the dedup invariant's business (it may be
            // legitimate once the dedup window passed).
            if !seen.insert(*msg) {
                continue;
            }
            if let Some((last_epoch, last_seq)) = commits.get(group)
                && epoch <= last_epoch
            {
                problems.push((
                    "a box receives a group's Commits in epoch order",
                    format!(
                        "box {b}: Commit {msg} for epoch {epoch} at seq {seq} after epoch {last_epoch} at seq {last_seq}"
                    ),
                ));
            }
            commits.insert(*group, (*epoch, *seq));
            commit_seq.insert((*group, *epoch), *seq);
        }
    }
    for (seq, payload) in contents {
        if let Some(Payload::App { group, epoch, msg }) = payload
            && let Some(commit) = commit_seq.get(&(*group, *epoch))
            && commit > seq
        {
            problems.push((
                "members never see an epoch before its Commit",
                format!(
                    "box {b}: message {msg} of epoch {epoch} at seq {seq}, its Commit at seq {commit}"
                ),
            ));
        }
    }
}
