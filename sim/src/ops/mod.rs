//! Every call the simulation makes into the domain layer lives in this module:
//! one function per client or gateway operation, each running its domain
//! transactions with `rossby_storage::transact!` (or a `Store` method) exactly as
//! a gateway would, and recording what each answer establishes in the model the
//! moment it arrives.
//!
//! An operation whose commit comes back `Undetermined` (or whose retries ran
//! out) is re-issued with the same ids, as a client retries, up to
//! [`REISSUES`] times; what stays unresolved remains a "maybe" in the model.

mod accounts;
mod groups;
mod keypackages;
mod messaging;

pub use accounts::{check_purged_boxes, resolve_box, resolve_device};
pub use groups::resume_outbox;
pub use messaging::{drain, expire_everything};

use crate::world::{World, short};
use rossby_keyspace::{BoxId, DeviceId, MessageId, RegionId};
use rossby_storage::Error;
use rossby_storage::kv::Error as KvError;
use rossby_storage::tables::groups::GroupKey;
use std::rc::Rc;

/// How often an operation with an unknown outcome is issued again.
pub const REISSUES: usize = 3;

/// Most member boxes of a group (the gateway's `max_recipients_per_send`).
pub const MAX_GROUP_MEMBERS: usize = 6;

/// What a device does after a fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckPlan {
    /// Nothing (as if the client died before acknowledging).
    None,
    /// Everything fetched (and any gap).
    All,
    /// All but the last `n` envelopes fetched.
    AllBut(usize),
}

/// One operation, with every parameter drawn in advance from the seeded
/// generator.
#[derive(Clone, Debug)]
pub enum Op {
    /// Registers a new account: box, identifier and one authorized device.
    Register {
        /// The new box.
        box_id: BoxId,
        /// Its first device.
        device: DeviceId,
        /// The identifier it binds.
        identifier: String,
    },
    /// Binds another identifier to a box (what ConfirmIdentifier commits).
    AddIdentifier {
        /// The box.
        box_id: BoxId,
        /// The new identifier.
        identifier: String,
        /// Whether contacts may find the box by it.
        discoverable: bool,
    },
    /// Removes one of a box's identifiers (refused for its last one).
    RemoveIdentifier {
        /// The box.
        box_id: BoxId,
        /// One of the identifiers the box was given (maybe removed already).
        identifier: String,
    },
    /// Adds a device to a box, authorized at once or not.
    AddDevice {
        /// The box.
        box_id: BoxId,
        /// The new device.
        device: DeviceId,
        /// Authorize it in the same transaction.
        authorize: bool,
    },
    /// Authorizes a device added earlier.
    Authorize {
        /// The box.
        box_id: BoxId,
        /// The device.
        device: DeviceId,
    },
    /// Removes a device.
    RemoveDevice {
        /// The box.
        box_id: BoxId,
        /// The device.
        device: DeviceId,
    },
    /// Deletes an account, then purges it (or leaves that to a resumption).
    DeleteAccount {
        /// The box.
        box_id: BoxId,
        /// Purge right away, as `Store::delete_account` does.
        purge: bool,
    },
    /// Sends one-to-one messages in one enqueue batch.
    Send {
        /// The sending box.
        sender_box: BoxId,
        /// The sending device.
        sender_device: DeviceId,
        /// The recipient box.
        recipient: BoxId,
        /// Message ids, in batch order (a repeated id is a coalesced retry).
        messages: Vec<MessageId>,
    },
    /// Fetches for a device, then acknowledges.
    FetchAck {
        /// The box.
        box_id: BoxId,
        /// The device.
        device: DeviceId,
        /// The fetch's bound.
        max_count: usize,
        /// What to acknowledge.
        ack: AckPlan,
    },
    /// Acknowledges a sequence number never assigned (must be refused).
    AckBeyond {
        /// The box.
        box_id: BoxId,
        /// The device.
        device: DeviceId,
    },
    /// Publishes KeyPackages for a device.
    Publish {
        /// The box.
        box_id: BoxId,
        /// The device.
        device: DeviceId,
        /// The packages.
        packages: Vec<Vec<u8>>,
        /// A new last-resort package.
        last_resort: Option<Vec<u8>>,
    },
    /// Claims a package of one device, or one of each device of a box.
    Claim {
        /// The box.
        box_id: BoxId,
        /// The device, or every authorized device when `None`.
        device: Option<DeviceId>,
    },
    /// Creates a group.
    CreateGroup {
        /// The group (its creator box and id).
        group: GroupKey,
    },
    /// Commits in a group, then delivers its fan-out (GroupCommit).
    Commit {
        /// The group.
        group: GroupKey,
        /// The committing box.
        sender_box: BoxId,
        /// The committing device.
        sender_device: DeviceId,
        /// The Commit's message id.
        msg: MessageId,
        /// The epoch it was made in.
        epoch: u64,
        /// Boxes it adds.
        add: Vec<BoxId>,
        /// Boxes it removes.
        remove: Vec<BoxId>,
    },
    /// Sends an application message to a group (GroupSend).
    GroupSend {
        /// The group.
        group: GroupKey,
        /// The sending box.
        sender_box: BoxId,
        /// The sending device.
        sender_device: DeviceId,
        /// The message id.
        msg: MessageId,
        /// The epoch it is encrypted in.
        epoch: u64,
    },
    /// Leaves a group (LeaveGroup).
    Leave {
        /// The group.
        group: GroupKey,
        /// The leaving box.
        member: BoxId,
        /// Its device.
        device: DeviceId,
        /// The leave's message id.
        msg: MessageId,
    },
    /// Deletes what expired in a region, at clock `now`.
    Sweep {
        /// The region.
        region: RegionId,
        /// The sweep's clock.
        now: u64,
        /// Expiry entries read per batch.
        batch: usize,
    },
    /// Finishes interrupted purges of a region.
    ResumePurges {
        /// The region.
        region: RegionId,
    },
    /// Delivers a region's outbox entries older than the grace period.
    ResumeOutbox {
        /// The region.
        region: RegionId,
    },
    /// What a restarted gateway does first: resume purges and outboxes everywhere.
    Restart,
}

impl Op {
    /// A one-line description for the trace.
    pub fn describe(&self) -> String {
        let s = |id: &BoxId| short(id.as_bytes());
        let d = |id: &DeviceId| short(id.as_bytes());
        let g = |k: &GroupKey| format!("{}/{}", s(&k.creator), short(&k.group_id));
        match self {
            Op::Register { box_id, device, .. } => {
                format!("register {} dev {}", s(box_id), d(device))
            }
            Op::AddDevice {
                box_id,
                device,
                authorize,
            } => format!(
                "add-device {} dev {} auth={authorize}",
                s(box_id),
                d(device)
            ),
            Op::Authorize { box_id, device } => {
                format!("authorize {} dev {}", s(box_id), d(device))
            }
            Op::AddIdentifier {
                box_id,
                discoverable,
                ..
            } => format!("add-identifier {} discoverable={discoverable}", s(box_id)),
            Op::RemoveIdentifier { box_id, .. } => format!("remove-identifier {}", s(box_id)),
            Op::RemoveDevice { box_id, device } => {
                format!("remove-device {} dev {}", s(box_id), d(device))
            }
            Op::DeleteAccount { box_id, purge } => {
                format!("delete-account {} purge={purge}", s(box_id))
            }
            Op::Send {
                sender_box,
                recipient,
                messages,
                ..
            } => format!(
                "send {} -> {} x{}",
                s(sender_box),
                s(recipient),
                messages.len()
            ),
            Op::FetchAck {
                box_id,
                device,
                max_count,
                ack,
            } => format!(
                "fetch {} dev {} max={max_count} ack={ack:?}",
                s(box_id),
                d(device)
            ),
            Op::AckBeyond { box_id, device } => {
                format!("ack-beyond {} dev {}", s(box_id), d(device))
            }
            Op::Publish {
                box_id,
                device,
                packages,
                last_resort,
            } => format!(
                "publish {} dev {} n={} last_resort={}",
                s(box_id),
                d(device),
                packages.len(),
                last_resort.is_some()
            ),
            Op::Claim { box_id, device } => format!(
                "claim {} dev {}",
                s(box_id),
                device.as_ref().map_or_else(|| "all".to_string(), d)
            ),
            Op::CreateGroup { group } => format!("create-group {}", g(group)),
            Op::Commit {
                group,
                sender_box,
                epoch,
                add,
                remove,
                ..
            } => format!(
                "commit {} by {} epoch={epoch} add={:?} remove={:?}",
                g(group),
                s(sender_box),
                add.iter().map(s).collect::<Vec<_>>(),
                remove.iter().map(s).collect::<Vec<_>>()
            ),
            Op::GroupSend {
                group,
                sender_box,
                epoch,
                ..
            } => format!("group-send {} by {} epoch={epoch}", g(group), s(sender_box)),
            Op::Leave { group, member, .. } => format!("leave {} by {}", g(group), s(member)),
            Op::Sweep { region, now, batch } => {
                format!("sweep region {region} now={now} batch={batch}")
            }
            Op::ResumePurges { region } => format!("resume-purges region {region}"),
            Op::ResumeOutbox { region } => format!("resume-outbox region {region}"),
            Op::Restart => "restart".to_string(),
        }
    }
}

/// Runs operation number `n` on `gateway`, tracing its start and its result.
pub async fn run(world: Rc<World>, n: u64, gateway: usize, op: Op) {
    let w = &*world;
    let label = format!("#{n} g{gateway} {}", op.describe());
    w.note(format!("{label} ..."));
    let result = match op {
        Op::Register {
            box_id,
            device,
            identifier,
        } => accounts::register(w, box_id, device, &identifier).await,
        Op::AddDevice {
            box_id,
            device,
            authorize,
        } => accounts::add_device(w, box_id, device, authorize).await,
        Op::Authorize { box_id, device } => accounts::authorize(w, box_id, device).await,
        Op::AddIdentifier {
            box_id,
            identifier,
            discoverable,
        } => accounts::add_identifier(w, box_id, &identifier, discoverable).await,
        Op::RemoveIdentifier { box_id, identifier } => {
            accounts::remove_identifier(w, box_id, &identifier).await
        }
        Op::RemoveDevice { box_id, device } => accounts::remove_device(w, box_id, device).await,
        Op::DeleteAccount { box_id, purge } => accounts::delete_account(w, box_id, purge).await,
        Op::Send {
            sender_box,
            sender_device,
            recipient,
            messages,
        } => messaging::send(w, sender_box, sender_device, recipient, &messages).await,
        Op::FetchAck {
            box_id,
            device,
            max_count,
            ack,
        } => messaging::fetch_ack(w, box_id, device, max_count, ack).await,
        Op::AckBeyond { box_id, device } => messaging::ack_beyond(w, box_id, device).await,
        Op::Publish {
            box_id,
            device,
            packages,
            last_resort,
        } => keypackages::publish(w, box_id, device, &packages, last_resort.as_deref()).await,
        Op::Claim { box_id, device } => keypackages::claim(w, box_id, device).await,
        Op::CreateGroup { group } => groups::create(w, group).await,
        Op::Commit {
            group,
            sender_box,
            sender_device,
            msg,
            epoch,
            add,
            remove,
        } => {
            let commit = groups::CommitPlan {
                group,
                sender_box,
                sender_device,
                msg,
                epoch,
                add: &add,
                remove: &remove,
            };
            groups::commit(w, &commit).await
        }
        Op::GroupSend {
            group,
            sender_box,
            sender_device,
            msg,
            epoch,
        } => groups::send(w, group, sender_box, sender_device, msg, epoch).await,
        Op::Leave {
            group,
            member,
            device,
            msg,
        } => groups::leave(w, group, member, device, msg).await,
        Op::Sweep { region, now, batch } => messaging::sweep(w, region, now, batch).await,
        Op::ResumePurges { region } => accounts::resume_purges(w, region).await,
        Op::ResumeOutbox { region } => {
            let cutoff = w.now().saturating_sub(groups::OUTBOX_GRACE_MS);
            groups::resume_outbox(w, region, cutoff).await
        }
        Op::Restart => {
            let mut out = Vec::new();
            let cutoff = w.now().saturating_sub(groups::OUTBOX_GRACE_MS);
            for region in w.regions.clone() {
                out.push(accounts::resume_purges(w, region).await);
                out.push(groups::resume_outbox(w, region, cutoff).await);
            }
            out.join("; ")
        }
    };
    w.note(format!("{label} -> {result}"));
}

/// How a domain call ended, as its client sees it.
pub(crate) enum Answer<T> {
    /// It succeeded.
    Done(T),
    /// The domain refused it (the transaction committed nothing).
    Refused(Error),
    /// The commit's outcome is unknown.
    Unknown,
    /// Every attempt conflicted: nothing was applied.
    GaveUp,
}

/// Sorts a result into an [`Answer`]. Errors no simulated request may cause
/// (corrupt data, an invalid request, an unavailable store) break an invariant.
pub(crate) fn answer<T>(w: &World, what: &str, result: Result<T, Error>) -> Answer<T> {
    match result {
        Ok(value) => Answer::Done(value),
        Err(Error::Kv(KvError::Undetermined(_))) => Answer::Unknown,
        Err(Error::Kv(KvError::RetriesExhausted { .. })) => Answer::GaveUp,
        Err(err @ (Error::Kv(_) | Error::Corrupt { .. } | Error::Invalid(_))) => {
            w.fail("no unexpected errors", format!("{what}: {err}"));
            Answer::GaveUp
        }
        Err(err) => Answer::Refused(err),
    }
}
