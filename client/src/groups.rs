//! Groups with MLS (RFC 9420, openmls): KeyPackages, creating groups, adding and
//! removing members, leaving, updating key material, and group messages.
//!
//! # Model
//! A group is created by one box and named by `creator box || group id` (its MLS
//! group id). Its name travels in the group context (extension
//! [`mls::EXTENSION_GROUP_META`]), so members see it. Every device of a member
//! box is its own MLS leaf; adding a user adds all their devices (one claimed
//! KeyPackage each), removing a user removes all of them.
//!
//! # Ordering
//! The gateway keeps the group's epoch and member boxes. A Commit is sent with
//! the epoch it was made in ([`Client`]'s GroupCommit): the gateway accepts it
//! only in that epoch and delivers it into every member box (through an outbox
//! recorded with the epoch change) before it answers; the device merges its pending Commit only after that. A device
//! that loses the race (`EPOCH_CONFLICT`) discards its Commit, processes the
//! group envelopes waiting in its queue (without acknowledging anything) and makes
//! the Commit again, so concurrent Commits never fork the group. A Commit whose
//! answer was lost stays in the state and is sent again, with the same message
//! id, before anything else happens in the group.
//!
//! # Messages
//! Group envelopes carry a `GroupMessage` in `Envelope.group`: MLS protects
//! them, so the same bytes go to every member box (application messages are
//! encrypted once and fanned out by one GroupSend). Receiving checks that the
//! MLS sender's credential names the device the gateway recorded as sender and
//! is vouched for by that device's identity key ([`mls`]). Messages of a later
//! epoch are buffered until the Commits before them are processed; duplicates
//! and messages of epochs no longer kept are rejected with a reason.
//!
//! # Persistence
//! openmls' storage lives in memory and is written into the state file, with
//! the groups' bookkeeping, whenever a group operation or a fetch saves the
//! state: before a Commit or application message is sent, and before a fetched
//! batch is returned (so before it can be acknowledged). Results of processed
//! group envelopes are kept in the state until acknowledged, so fetching again
//! without acknowledging returns them again.

pub mod direct;
pub mod mls;
pub mod state;

pub use state::GroupsState;

use crate::envelopes::device_keys_cached;
use crate::error::{Error, Result};
use crate::sdk::{Body, Client, FETCH_MAX_BYTES, Received, Rejected, box_display, box_id, decode};
use mls::{CredentialClaim, MlsProvider, mls_error};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use prost::Message as _;
use rossby_keyspace::{BoxId, MessageId};
use rossby_protocol::crypto::IdentityKey;
use rossby_protocol::pb::{self, Method};
use state::{Buffered, Delivery, DeliveryKind, GroupContent, GroupEntry, Membership};
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

/// KeyPackages a device keeps published.
pub const KEY_PACKAGE_BATCH: usize = 30;
/// Publish more when fewer than this many are left.
pub const KEY_PACKAGE_LOW: usize = 10;
/// How often the number of published KeyPackages is checked.
const KEY_PACKAGE_CHECK_MS: u64 = 3600 * 1000;
/// The last-resort KeyPackage is replaced after this long (its MLS lifetime is
/// longer).
const LAST_RESORT_MAX_AGE_MS: u64 = 28 * 24 * 3600 * 1000;
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 64;
/// Most messages buffered for later epochs.
const MAX_BUFFERED: usize = 200;
/// Rounds of Commit, conflict and catching up before giving up.
const MAX_COMMIT_ATTEMPTS: usize = 4;
/// Envelopes read when catching up after a conflict.
const SYNC_MAX_COUNT: u32 = 500;

/// One group as this device sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group's name.
    pub name: String,
    /// The box that created it.
    pub creator_box: BoxId,
    /// Its id within that box.
    pub group_id: [u8; 16],
    /// The MLS epoch this device is at (0 when no longer a member).
    pub epoch: u64,
    /// Member users (identifier if known, else box id), this account included.
    pub members: Vec<String>,
    /// Member devices (MLS leaves).
    pub devices: usize,
    /// The MLS ciphersuite, read from the group state (`None` when no longer a
    /// member).
    pub ciphersuite: Option<Ciphersuite>,
    /// This device's membership.
    pub membership: Membership,
}

/// The outcome of a group send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSendReport {
    /// The message id of the envelope.
    pub message_id: MessageId,
    /// Member boxes it was stored for.
    pub delivered: usize,
    /// Member boxes that did not take it (deleted accounts, blocks, failures).
    pub failed: usize,
}

/// The MLS side of a client: openmls' provider (its storage is saved in the state
/// file), the device's MLS signature key and the groups' bookkeeping. One lock
/// guards it, so group operations of a client run one at a time.
pub struct GroupEngine {
    provider: MlsProvider,
    signer: SignatureKeyPair,
    meta: GroupsState,
    /// Credentials (identity, leaf signature key) verified in this session.
    verified: HashSet<(Vec<u8>, Vec<u8>)>,
    /// Groups that may hold proposals to commit: a proposal is only stored
    /// while processing one, so after a batch only the groups that received
    /// some are loaded to look for them (all of them at start, or after a
    /// commit of proposals failed).
    proposals_unchecked: HashSet<([u8; 16], [u8; 16])>,
    check_all_proposals: bool,
}

impl std::fmt::Debug for GroupEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupEngine")
            .field("groups", &self.meta.groups.len())
            .finish_non_exhaustive()
    }
}

impl GroupEngine {
    /// The engine of a state (a fresh one when the state has no groups yet).
    pub fn from_state(state: Option<&GroupsState>) -> Result<Self> {
        let mut meta = state.cloned().unwrap_or_default();
        let provider = MlsProvider::from_entries(&meta.mls_storage);
        let signer = mls::signer_from(&meta, &provider)?;
        meta.mls_storage.clear();
        meta.signature_public = signer.to_public_vec();
        Ok(GroupEngine {
            provider,
            signer,
            meta,
            verified: HashSet::new(),
            proposals_unchecked: HashSet::new(),
            check_all_proposals: true,
        })
    }

    /// Everything to save in the state file.
    pub fn snapshot(&self) -> GroupsState {
        let mut s = self.meta.clone();
        s.mls_storage = self.provider.entries();
        s
    }

    /// Brings `slot` to [`GroupEngine::snapshot`], copying only what changed in
    /// openmls' storage: most saves (acks, fetches without group messages) leave
    /// it alone, and exporting all of it copies and sorts every key.
    pub fn snapshot_into(&self, slot: &mut Option<GroupsState>) {
        let mut storage = slot.take().map(|g| g.mls_storage).unwrap_or_default();
        self.provider.export_into(&mut storage);
        let mut s = self.meta.clone();
        s.mls_storage = storage;
        *slot = Some(s);
    }

    /// Forgets every group and KeyPackage (the account is gone from this device).
    pub fn reset(&mut self) -> Result<()> {
        *self = GroupEngine::from_state(None)?;
        Ok(())
    }

    /// Forgets the results of group envelopes up to an acknowledged sequence
    /// number.
    pub fn acked(&mut self, up_to: u64) {
        self.meta.deliveries.retain(|d| d.trigger_seq > up_to);
        self.meta.direct_opened.retain(|d| d.seq > up_to);
    }

    fn index(&self, creator: &[u8], group_id: &[u8]) -> Option<usize> {
        self.meta
            .groups
            .iter()
            .position(|g| g.creator_box == creator && g.group_id == group_id)
    }

    fn by_name(&self, name: &str) -> Result<usize> {
        let matches: Vec<usize> = self
            .meta
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                g.name == name
                    && g.direct_peer.is_empty()
                    && g.membership == Membership::Active as i32
            })
            .map(|(i, _)| i)
            .collect();
        match matches.as_slice() {
            [i] => Ok(*i),
            [] => Err(Error::Group(format!("no group named {name:?}"))),
            _ => Err(Error::Group(format!(
                "several groups are named {name:?}; rename one of them"
            ))),
        }
    }

    fn ids(&self, idx: usize) -> Result<([u8; 16], [u8; 16])> {
        let g = &self.meta.groups[idx];
        let creator = <[u8; 16]>::try_from(g.creator_box.as_slice())
            .map_err(|_| Error::Group("corrupt group entry".into()))?;
        let group_id = <[u8; 16]>::try_from(g.group_id.as_slice())
            .map_err(|_| Error::Group("corrupt group entry".into()))?;
        Ok((creator, group_id))
    }

    fn load(&self, idx: usize) -> Result<MlsGroup> {
        let (creator, group_id) = self.ids(idx)?;
        MlsGroup::load(
            self.provider.storage(),
            &mls::mls_group_id(&creator, &group_id),
        )
        .map_err(|e| mls_error("cannot load the group", e))?
        .ok_or_else(|| {
            Error::Group(format!(
                "the state of group {:?} is missing",
                self.meta.groups[idx].name
            ))
        })
    }

    fn leave_locally(&mut self, idx: usize, membership: Membership) -> Result<()> {
        if let Ok(mut group) = self.load(idx) {
            group
                .delete(self.provider.storage())
                .map_err(|e| mls_error("cannot delete the group state", e))?;
        }
        let entry = &mut self.meta.groups[idx];
        entry.membership = membership as i32;
        entry.pending_commit.clear();
        Ok(())
    }
}

/// The (box, device) of every leaf of a group, by leaf index.
fn leaves(group: &MlsGroup) -> Vec<(LeafNodeIndex, [u8; 16], [u8; 16])> {
    group
        .members()
        .filter_map(|m| {
            let claim = CredentialClaim::parse(&m.credential)?;
            Some((m.index, claim.box_id, claim.device_id))
        })
        .collect()
}

/// Member boxes of a group's tree, in leaf order.
fn tree_boxes(group: &MlsGroup) -> Vec<[u8; 16]> {
    let mut out: Vec<[u8; 16]> = Vec::new();
    for (_, b, _) in leaves(group) {
        if !out.contains(&b) {
            out.push(b);
        }
    }
    out
}

/// What a Commit should do besides committing pending proposals and removing
/// the devices of boxes that left.
#[derive(Default)]
struct CommitPlan {
    key_packages: Vec<KeyPackage>,
    add_boxes: Vec<[u8; 16]>,
    welcome_boxes: Vec<[u8; 16]>,
    remove_leaves: Vec<LeafNodeIndex>,
    remove_boxes: Vec<[u8; 16]>,
    /// Commit even with nothing else to do (every Commit renews the committer's
    /// leaf keys).
    self_update: bool,
}

/// How the gateway answered a Commit.
enum CommitAnswer {
    Accepted,
    Conflict,
}

fn group_envelope(
    sender_box: &[u8; 16],
    sender_device: &[u8; 16],
    message_id: &MessageId,
    message: pb::GroupMessage,
) -> Vec<u8> {
    pb::Envelope {
        version: 1,
        sender_box: sender_box.to_vec(),
        sender_device: sender_device.to_vec(),
        message_id: message_id.as_bytes().to_vec(),
        group: Some(message),
        ..pb::Envelope::default()
    }
    .encode_to_vec()
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "a group name must have 1 to {MAX_GROUP_NAME_BYTES} bytes and no control characters"
        )));
    }
    Ok(())
}

fn boxes_of(raw: &[Vec<u8>]) -> Vec<[u8; 16]> {
    raw.iter()
        .filter_map(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        .collect()
}

impl Client {
    /// Saves the engine's state into the state file.
    async fn save_groups(&self, engine: &GroupEngine) -> Result<()> {
        let mut store = self.store.lock().await;
        engine.snapshot_into(&mut store.state.groups);
        store.save()
    }

    /// This device's credential (needs the box, so only once authorized).
    async fn credential(&self, engine: &GroupEngine) -> Result<CredentialWithKey> {
        let own = self.own_box().await?;
        Ok(mls::own_credential(
            &self.keys,
            &own,
            &self.device_id,
            &engine.signer,
        ))
    }

    // ----- KeyPackages -----

    /// Makes sure this device has KeyPackages published: a batch of
    /// [`KEY_PACKAGE_BATCH`] when fewer than [`KEY_PACKAGE_LOW`] are left, and a
    /// last-resort one (replaced every four weeks). The private keys are saved in
    /// the state before anything is published. Returns how many (not counting the
    /// last-resort one) the gateway holds.
    pub async fn publish_key_packages(&self) -> Result<usize> {
        let mut engine = self.groups.lock().await;
        self.refill_key_packages(&mut engine).await
    }

    async fn refill_key_packages(&self, engine: &mut GroupEngine) -> Result<usize> {
        let credential = self.credential(engine).await?;
        let now = self.now_ms();
        let stale_last_resort = engine.meta.last_resort_at_ms == 0
            || now.saturating_sub(engine.meta.last_resort_at_ms) > LAST_RESORT_MAX_AGE_MS;
        let last_resort = if stale_last_resort {
            let bundle = KeyPackage::builder()
                .leaf_node_capabilities(mls::capabilities())
                .mark_as_last_resort()
                .build(
                    mls::CIPHERSUITE,
                    &engine.provider,
                    &engine.signer,
                    credential.clone(),
                )
                .map_err(|e| mls_error("cannot create a KeyPackage", e))?;
            self.save_groups(engine).await?;
            mls::to_bytes(&MlsMessageOut::from(bundle.key_package().clone()))?
        } else {
            Vec::new()
        };
        let request = pb::PublishKeyPackagesRequest {
            key_packages: Vec::new(),
            last_resort,
        };
        let reply: pb::PublishKeyPackagesResponse =
            self.rpc(Method::PublishKeyPackages, &request).await?;
        if stale_last_resort {
            engine.meta.last_resort_at_ms = now;
        }
        let mut stored = usize::try_from(reply.stored).unwrap_or(usize::MAX);
        if stored < KEY_PACKAGE_LOW {
            let mut packages = Vec::with_capacity(KEY_PACKAGE_BATCH - stored);
            for _ in stored..KEY_PACKAGE_BATCH {
                let bundle = KeyPackage::builder()
                    .leaf_node_capabilities(mls::capabilities())
                    .build(
                        mls::CIPHERSUITE,
                        &engine.provider,
                        &engine.signer,
                        credential.clone(),
                    )
                    .map_err(|e| mls_error("cannot create a KeyPackage", e))?;
                packages.push(mls::to_bytes(&MlsMessageOut::from(
                    bundle.key_package().clone(),
                ))?);
            }
            // The private keys must be on disk before anyone can claim the packages.
            self.save_groups(engine).await?;
            let request = pb::PublishKeyPackagesRequest {
                key_packages: packages,
                last_resort: Vec::new(),
            };
            let reply: pb::PublishKeyPackagesResponse =
                self.rpc(Method::PublishKeyPackages, &request).await?;
            stored = usize::try_from(reply.stored).unwrap_or(usize::MAX);
        }
        engine.meta.key_packages_checked_at_ms = now;
        engine.meta.key_packages_used = false;
        self.save_groups(engine).await?;
        Ok(stored)
    }

    /// Claims one KeyPackage per device of `target` and keeps those that
    /// verify: a KeyPackage of that box and device, vouched for by the device's
    /// identity key in `list`.
    async fn claim_verified(
        &self,
        engine: &GroupEngine,
        target: &[u8; 16],
        list: &pb::DeviceList,
        who: &str,
    ) -> Result<Vec<([u8; 16], KeyPackage)>> {
        let request = pb::ClaimKeyPackagesRequest {
            box_id: target.to_vec(),
        };
        let claimed: pb::ClaimKeyPackagesResponse =
            match self.rpc(Method::ClaimKeyPackages, &request).await {
                Err(e) if e.status() == Some(pb::Status::NotFound) => {
                    return Err(Error::UnknownRecipient(who.to_string()));
                }
                other => other?,
            };
        let mut out = Vec::new();
        for c in claimed.packages {
            let Ok(device) = <[u8; 16]>::try_from(c.device_id.as_slice()) else {
                continue;
            };
            if target == &self.own_box().await? && device == self.device_id {
                continue;
            }
            let Ok(kp) = mls::key_package(&c.key_package, engine.provider.crypto()) else {
                continue;
            };
            let Some(claim) = CredentialClaim::parse(kp.leaf_node().credential()) else {
                continue;
            };
            let Some(keys) = device_keys_cached(&self.key_cache, list, &device) else {
                continue;
            };
            if claim.box_id == *target
                && claim.device_id == device
                && claim.verify(&keys, kp.leaf_node().signature_key().as_slice())
            {
                out.push((device, kp));
            }
        }
        Ok(out)
    }

    // ----- group operations -----

    /// Creates a group named `name` (its name travels in the group context) with
    /// this account's other devices in it.
    pub async fn create_group(&self, name: &str) -> Result<GroupSummary> {
        check_name(name)?;
        let own = self.own_box().await?;
        let mut engine = self.groups.lock().await;
        if engine.by_name(name).is_ok() {
            return Err(Error::Group(format!(
                "a group named {name:?} exists already"
            )));
        }
        let idx = self.start_group(&mut engine, name, None).await?;
        // The account's other devices join right away.
        let list = self.lookup_box(&own).await?.0;
        if list.devices.iter().any(|d| d.device_id != self.device_id) {
            self.add_box(&mut engine, idx, own, &list, "your other devices")
                .await?;
        }
        self.summary(&engine, idx).await
    }

    /// Creates an MLS group with this device as its only member and registers
    /// it with the gateway (a 1:1 conversation when `direct_peer` is set, with
    /// an empty name). Returns its index; nothing is kept if the gateway
    /// refuses it.
    async fn start_group(
        &self,
        engine: &mut GroupEngine,
        name: &str,
        direct_peer: Option<[u8; 16]>,
    ) -> Result<usize> {
        let own = self.own_box().await?;
        let group_id: [u8; 16] = rand::random();
        let credential = self.credential(engine).await?;
        let mls_id = mls::mls_group_id(&own, &group_id);
        let group = MlsGroup::builder()
            .with_group_id(mls_id)
            .ciphersuite(mls::CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(mls::MAX_PAST_EPOCHS)
            .with_capabilities(mls::capabilities())
            .with_group_context_extensions(mls::meta_extensions(name, direct_peer.is_some())?)
            .build(&engine.provider, &engine.signer, credential)
            .map_err(|e| mls_error("cannot create the group", e))?;
        drop(group);
        engine.meta.groups.push(GroupEntry {
            creator_box: own.to_vec(),
            group_id: group_id.to_vec(),
            name: name.to_string(),
            server_members: vec![own.to_vec()],
            server_epoch: 0,
            pending_commit: Vec::new(),
            membership: Membership::Active as i32,
            direct_peer: direct_peer.map(|p| p.to_vec()).unwrap_or_default(),
            updated_at_ms: self.now_ms(),
        });
        let idx = engine.meta.groups.len() - 1;
        self.save_groups(engine).await?;
        let request = pb::CreateGroupRequest {
            group_id: group_id.to_vec(),
        };
        if let Err(e) = self
            .rpc::<_, pb::CreateGroupResponse>(Method::CreateGroup, &request)
            .await
        {
            engine.leave_locally(idx, Membership::Left)?;
            engine.meta.groups.remove(idx);
            self.save_groups(engine).await?;
            return Err(e);
        }
        Ok(idx)
    }

    /// Adds every device of a user (identifier or box id) to the group, with one
    /// claimed KeyPackage each. Devices in the group already are skipped, so
    /// adding one's own account adds its newly linked devices.
    pub async fn add_to_group(&self, name: &str, who: &str) -> Result<GroupSummary> {
        let target = self.resolve(who).await?;
        let (list, _) = self.lookup_box(&target.box_id).await?;
        let mut engine = self.groups.lock().await;
        let idx = engine.by_name(name)?;
        self.add_box(&mut engine, idx, target.box_id, &list, who)
            .await?;
        self.summary(&engine, idx).await
    }

    async fn add_box(
        &self,
        engine: &mut GroupEngine,
        idx: usize,
        target: [u8; 16],
        list: &pb::DeviceList,
        who: &str,
    ) -> Result<()> {
        let claimed = self.claim_verified(engine, &target, list, who).await?;
        if claimed.is_empty() {
            return Err(Error::Group(format!(
                "{who} has no device that can join groups (no KeyPackages published)"
            )));
        }
        let committed = self
            .commit_with(engine, idx, true, |group| {
                let present: HashSet<([u8; 16], [u8; 16])> =
                    leaves(group).into_iter().map(|(_, b, d)| (b, d)).collect();
                let key_packages: Vec<KeyPackage> = claimed
                    .iter()
                    .filter(|(d, _)| !present.contains(&(target, *d)))
                    .map(|(_, kp)| kp.clone())
                    .collect();
                if key_packages.is_empty() {
                    return None;
                }
                Some(CommitPlan {
                    key_packages,
                    add_boxes: vec![target],
                    welcome_boxes: vec![target],
                    ..CommitPlan::default()
                })
            })
            .await?;
        if !committed {
            return Err(Error::Group(format!(
                "every device of {who} is in the group already"
            )));
        }
        Ok(())
    }

    /// Removes every device of a user (identifier or box id) from the group.
    pub async fn remove_from_group(&self, name: &str, who: &str) -> Result<GroupSummary> {
        let target = self.resolve(who).await?;
        if target.box_id == self.own_box().await? {
            return Err(Error::Invalid(
                "to remove yourself, leave the group (`group leave`)".into(),
            ));
        }
        let mut engine = self.groups.lock().await;
        let idx = engine.by_name(name)?;
        let target_box = target.box_id;
        let committed = self
            .commit_with(&mut engine, idx, true, |group| {
                let remove_leaves: Vec<LeafNodeIndex> = leaves(group)
                    .into_iter()
                    .filter(|(_, b, _)| *b == target_box)
                    .map(|(i, _, _)| i)
                    .collect();
                if remove_leaves.is_empty() {
                    return None;
                }
                Some(CommitPlan {
                    remove_leaves,
                    remove_boxes: vec![target_box],
                    ..CommitPlan::default()
                })
            })
            .await?;
        if !committed {
            return Err(Error::Group(format!("{who} is not a member of {name:?}")));
        }
        self.summary(&engine, idx).await
    }

    /// Replaces this device's key material in the group (an MLS self-update).
    pub async fn update_group_keys(&self, name: &str) -> Result<GroupSummary> {
        let mut engine = self.groups.lock().await;
        let idx = engine.by_name(name)?;
        self.commit_with(&mut engine, idx, true, |_| {
            Some(CommitPlan {
                self_update: true,
                ..CommitPlan::default()
            })
        })
        .await?;
        self.summary(&engine, idx).await
    }

    /// Leaves the group with every device of this account: the gateway stops
    /// delivering the group to this box, and the remaining members remove its
    /// devices with their next Commit.
    pub async fn leave_group(&self, name: &str) -> Result<()> {
        let own = self.own_box().await?;
        let mut engine = self.groups.lock().await;
        let idx = engine.by_name(name)?;
        self.resume_pending(&mut engine, idx).await?;
        let (creator, group_id) = engine.ids(idx)?;
        let mut group = engine.load(idx)?;
        let mut proposals = Vec::new();
        for (leaf, b, _) in leaves(&group) {
            if b != own {
                continue;
            }
            let (message, _) = group
                .propose_remove_member(&engine.provider, &engine.signer, leaf)
                .map_err(|e| mls_error("cannot propose leaving", e))?;
            proposals.push(mls::to_bytes(&message)?);
        }
        let message_id = MessageId::new();
        let envelope = group_envelope(
            &own,
            &self.device_id,
            &message_id,
            pb::GroupMessage {
                creator_box: creator.to_vec(),
                group_id: group_id.to_vec(),
                proposals,
                ..pb::GroupMessage::default()
            },
        );
        let request = pb::LeaveGroupRequest {
            creator_box: creator.to_vec(),
            group_id: group_id.to_vec(),
            message_id: message_id.as_bytes().to_vec(),
            envelope,
        };
        let result = self
            .rpc::<_, pb::LeaveGroupResponse>(Method::LeaveGroup, &request)
            .await;
        match result {
            Ok(_) => {}
            Err(e) if e.status() == Some(pb::Status::NotGroupMember) => {}
            Err(e) => {
                group
                    .clear_pending_proposals(engine.provider.storage())
                    .map_err(|e| mls_error("cannot discard the proposals", e))?;
                return Err(e);
            }
        }
        engine.leave_locally(idx, Membership::Left)?;
        self.save_groups(&engine).await
    }

    /// Sends a text to the group: encrypted once by MLS and stored for every
    /// member box by one GroupSend. Pending proposals (members who left) are
    /// committed first. The gateway takes it only in the group's current epoch;
    /// when another member's Commit came first, this device catches up and
    /// encrypts again.
    pub async fn send_to_group(&self, name: &str, text: &str) -> Result<GroupSendReport> {
        let message = pb::RichMessage {
            text: text.to_string(),
            ..pb::RichMessage::default()
        };
        self.send_message_to_group(name, message).await
    }

    /// Sends a message with attachments or a location (and maybe text) to the
    /// group, like [`Client::send_to_group`]; the MLS message carries the
    /// attachment references.
    pub async fn send_message_to_group(
        &self,
        name: &str,
        message: pb::RichMessage,
    ) -> Result<GroupSendReport> {
        crate::messages::check_message(&message)?;
        let own = self.own_box().await?;
        let mut engine = self.groups.lock().await;
        let idx = engine.by_name(name)?;
        let attachments = crate::messages::blob_ids(Some(&message));
        let content = GroupContent {
            sent_at_ms: self.now_ms(),
            text: message.text,
            attachments: message.attachments,
            location: message.location,
        }
        .encode_to_vec();
        for _attempt in 0..MAX_COMMIT_ATTEMPTS {
            self.commit_with(&mut engine, idx, true, |_| Some(CommitPlan::default()))
                .await?;
            let (creator, group_id) = engine.ids(idx)?;
            let mut group = engine.load(idx)?;
            let message = group
                .create_message(&engine.provider, &engine.signer, &content)
                .map_err(|e| mls_error("cannot encrypt the message", e))?;
            // The ratchet moved: persist it before the ciphertext leaves the device.
            self.save_groups(&engine).await?;
            let message_id = MessageId::new();
            let envelope = group_envelope(
                &own,
                &self.device_id,
                &message_id,
                pb::GroupMessage {
                    creator_box: creator.to_vec(),
                    group_id: group_id.to_vec(),
                    mls: mls::to_bytes(&message)?,
                    ..pb::GroupMessage::default()
                },
            );
            let request = pb::GroupSendRequest {
                creator_box: creator.to_vec(),
                group_id: group_id.to_vec(),
                message_id: message_id.as_bytes().to_vec(),
                envelope,
                epoch: group.epoch().as_u64(),
                attachments: attachments.clone(),
            };
            let creds = self.credentials().await?;
            let response = self
                .conn
                .call(
                    Method::GroupSend,
                    &request.encode_to_vec(),
                    Some(&creds),
                    Duration::ZERO,
                )
                .await?;
            if rossby_protocol::status::status_of(&response) == pb::Status::EpochConflict {
                let state: pb::GroupState = decode(&response.body, "group state")?;
                let entry = &mut engine.meta.groups[idx];
                entry.server_members = state.members;
                entry.server_epoch = state.epoch;
                self.catch_up(&mut engine).await?;
                continue;
            }
            let reply: pb::GroupSendResponse = decode(
                &crate::connection::ok_body(response)?,
                "group send response",
            )?;
            if let Some(state) = &reply.state {
                let entry = &mut engine.meta.groups[idx];
                entry.server_members = state.members.clone();
                entry.server_epoch = state.epoch;
            }
            let delivered = reply
                .results
                .iter()
                .filter(|r| r.status == pb::Status::Ok as i32)
                .count();
            // Members that left since: remove their devices now (best effort).
            let _ = self
                .commit_with(&mut engine, idx, false, |_| Some(CommitPlan::default()))
                .await;
            self.save_groups(&engine).await?;
            return Ok(GroupSendReport {
                message_id,
                delivered,
                failed: reply.results.len() - delivered,
            });
        }
        Err(Error::Group(
            "the group kept changing while sending; try again".into(),
        ))
    }

    /// The groups this device is or was in (no network).
    pub async fn groups(&self) -> Vec<GroupSummary> {
        let engine = self.groups.lock().await;
        let mut out = Vec::new();
        for idx in 0..engine.meta.groups.len() {
            if !engine.meta.groups[idx].direct_peer.is_empty() {
                continue;
            }
            if let Ok(s) = self.summary(&engine, idx).await {
                out.push(s);
            }
        }
        out
    }

    async fn summary(&self, engine: &GroupEngine, idx: usize) -> Result<GroupSummary> {
        let (creator, group_id) = engine.ids(idx)?;
        let entry = &engine.meta.groups[idx];
        let membership = Membership::try_from(entry.membership).unwrap_or(Membership::Active);
        let (epoch, boxes, devices, ciphersuite) = match engine.load(idx) {
            Ok(group) if membership == Membership::Active => {
                let boxes = tree_boxes(&group);
                (
                    group.epoch().as_u64(),
                    boxes,
                    group.members().count(),
                    Some(group.ciphersuite()),
                )
            }
            _ => (0, Vec::new(), 0, None),
        };
        let mut members = Vec::with_capacity(boxes.len());
        for b in &boxes {
            members.push(self.display_name(b).await);
        }
        Ok(GroupSummary {
            name: entry.name.clone(),
            creator_box: box_id(creator),
            group_id,
            epoch,
            members,
            devices,
            ciphersuite,
            membership,
        })
    }

    // ----- Commits -----

    /// Makes a Commit from `plan` (plus pending proposals and the removal of
    /// devices whose box left) and has the gateway order it; on
    /// `EPOCH_CONFLICT` catches up (when `catch_up`) and tries again. Returns
    /// false when there was nothing to commit.
    async fn commit_with<F>(
        &self,
        engine: &mut GroupEngine,
        idx: usize,
        catch_up: bool,
        plan: F,
    ) -> Result<bool>
    where
        F: Fn(&MlsGroup) -> Option<CommitPlan>,
    {
        let own = self.own_box().await?;
        for _attempt in 0..MAX_COMMIT_ATTEMPTS {
            self.resume_pending(engine, idx).await?;
            if engine.meta.groups[idx].membership != Membership::Active as i32 {
                return Err(Error::Group(format!(
                    "this device is no longer a member of {:?}",
                    engine.meta.groups[idx].name
                )));
            }
            let (creator, group_id) = engine.ids(idx)?;
            let mut group = engine.load(idx)?;
            let Some(mut plan) = plan(&group) else {
                return Ok(false);
            };
            // Devices of boxes the gateway no longer lists (they left). The list
            // is only trusted when the gateway reported it for the current epoch.
            let entry = &engine.meta.groups[idx];
            let server = if entry.server_epoch == group.epoch().as_u64() {
                boxes_of(&entry.server_members)
            } else {
                Vec::new()
            };
            let proposed: HashSet<u32> = group
                .pending_proposals()
                .filter_map(|p| match p.proposal() {
                    Proposal::Remove(r) => Some(r.removed().u32()),
                    _ => None,
                })
                .collect();
            if !server.is_empty() {
                for (leaf, b, _) in leaves(&group) {
                    if !server.contains(&b) && b != own && !proposed.contains(&leaf.u32()) {
                        plan.remove_leaves.push(leaf);
                        if !plan.remove_boxes.contains(&b) {
                            plan.remove_boxes.push(b);
                        }
                    }
                }
            }
            let mut seen = BTreeSet::new();
            plan.remove_leaves
                .retain(|l| seen.insert(l.u32()) && !proposed.contains(&l.u32()));
            let nothing = plan.key_packages.is_empty()
                && plan.remove_leaves.is_empty()
                && !plan.self_update
                && !group.has_pending_proposals();
            if nothing {
                return Ok(false);
            }
            let bundle = group
                .commit_builder()
                .consume_proposal_store(true)
                .propose_adds(plan.key_packages.clone())
                .propose_removals(plan.remove_leaves.clone())
                .force_self_update(true)
                .load_psks(engine.provider.storage())
                .map_err(|e| mls_error("cannot prepare the Commit", e))?
                .build(
                    engine.provider.rand(),
                    engine.provider.crypto(),
                    &engine.signer,
                    |_| true,
                )
                .map_err(|e| mls_error("cannot build the Commit", e))?
                .stage_commit(&engine.provider)
                .map_err(|e| mls_error("cannot stage the Commit", e))?;
            let (commit, welcome, _) = bundle.into_messages();
            let commit = mls::to_bytes(&commit)?;
            let message_id = MessageId::new();
            let message = pb::GroupMessage {
                creator_box: creator.to_vec(),
                group_id: group_id.to_vec(),
                mls: commit,
                ..pb::GroupMessage::default()
            };
            let welcome_envelope = match &welcome {
                Some(w) => group_envelope(
                    &own,
                    &self.device_id,
                    &message_id,
                    pb::GroupMessage {
                        welcome: mls::to_bytes(w)?,
                        ..message.clone()
                    },
                ),
                None => Vec::new(),
            };
            let request = pb::GroupCommitRequest {
                creator_box: creator.to_vec(),
                group_id: group_id.to_vec(),
                epoch: group.epoch().as_u64(),
                message_id: message_id.as_bytes().to_vec(),
                add_boxes: plan.add_boxes.iter().map(|b| b.to_vec()).collect(),
                remove_boxes: plan.remove_boxes.iter().map(|b| b.to_vec()).collect(),
                envelope: group_envelope(&own, &self.device_id, &message_id, message),
                welcome_boxes: if welcome.is_some() {
                    plan.welcome_boxes.iter().map(|b| b.to_vec()).collect()
                } else {
                    Vec::new()
                },
                welcome_envelope,
            };
            engine.meta.groups[idx].pending_commit = request.encode_to_vec();
            // The staged Commit and the request are on disk before they are sent.
            self.save_groups(engine).await?;
            match self.send_commit(engine, idx, &request).await? {
                CommitAnswer::Accepted => return Ok(true),
                CommitAnswer::Conflict if catch_up => self.catch_up(engine).await?,
                CommitAnswer::Conflict => {
                    return Err(Error::Group(
                        "another member's Commit came first; try again".into(),
                    ));
                }
            }
        }
        Err(Error::Group(
            "the group kept changing while committing; try again".into(),
        ))
    }

    /// Sends a Commit left unanswered (a crash or lost connection) again, with
    /// its original message id.
    async fn resume_pending(&self, engine: &mut GroupEngine, idx: usize) -> Result<()> {
        let pending = engine.meta.groups[idx].pending_commit.clone();
        if pending.is_empty() {
            return Ok(());
        }
        let request = pb::GroupCommitRequest::decode(pending.as_slice())
            .map_err(|e| mls_error("corrupt pending Commit", e))?;
        self.send_commit(engine, idx, &request).await.map(|_| ())
    }

    async fn send_commit(
        &self,
        engine: &mut GroupEngine,
        idx: usize,
        request: &pb::GroupCommitRequest,
    ) -> Result<CommitAnswer> {
        let creds = self.credentials().await?;
        let response = self
            .conn
            .call(
                Method::GroupCommit,
                &request.encode_to_vec(),
                Some(&creds),
                Duration::ZERO,
            )
            .await?;
        let status = rossby_protocol::status::status_of(&response);
        let mut group = engine.load(idx)?;
        let outcome = match status {
            pb::Status::Ok => {
                let reply: pb::GroupCommitResponse = decode(&response.body, "commit response")?;
                group
                    .merge_pending_commit(&engine.provider)
                    .map_err(|e| mls_error("cannot merge the Commit", e))?;
                engine.meta.groups[idx].updated_at_ms = self.now_ms();
                if let Some(state) = reply.state {
                    let entry = &mut engine.meta.groups[idx];
                    entry.server_members = state.members;
                    entry.server_epoch = state.epoch;
                }
                Ok(CommitAnswer::Accepted)
            }
            pb::Status::EpochConflict => {
                let state: pb::GroupState = decode(&response.body, "group state")?;
                group
                    .clear_pending_commit(engine.provider.storage())
                    .map_err(|e| mls_error("cannot discard the Commit", e))?;
                let entry = &mut engine.meta.groups[idx];
                entry.server_members = state.members;
                entry.server_epoch = state.epoch;
                Ok(CommitAnswer::Conflict)
            }
            s if s.is_retryable() => {
                // Unknown outcome: keep the Commit and send it again later.
                return Err(Error::Status {
                    status: s,
                    message: response.message,
                });
            }
            s => {
                group
                    .clear_pending_commit(engine.provider.storage())
                    .map_err(|e| mls_error("cannot discard the Commit", e))?;
                Err(Error::Status {
                    status: s,
                    message: response.message,
                })
            }
        };
        engine.meta.groups[idx].pending_commit.clear();
        self.save_groups(engine).await?;
        outcome
    }

    /// After a conflict: processes the group envelopes waiting in the queue
    /// (without acknowledging; their results wait in the state for the next fetch).
    async fn catch_up(&self, engine: &mut GroupEngine) -> Result<()> {
        let creds = self.credentials().await?;
        let request = pb::FetchRequest {
            max_count: SYNC_MAX_COUNT,
            max_bytes: FETCH_MAX_BYTES,
            wait_ms: 0,
        };
        let body = self
            .conn
            .call_ok(
                Method::Fetch,
                &request.encode_to_vec(),
                Some(&creds),
                Duration::ZERO,
            )
            .await?;
        let reply: pb::FetchResponse = decode(&body, "fetch response")?;
        let own = self.own_box().await?;
        for queued in &reply.envelopes {
            if queued.seq <= engine.meta.processed_through
                || (queued.sender_box == own && queued.sender_device == self.device_id)
            {
                continue;
            }
            let Ok(envelope) = pb::Envelope::decode(queued.envelope.as_slice()) else {
                continue;
            };
            let Some(message) = envelope.group.clone() else {
                continue;
            };
            self.process_group_envelope(engine, queued, &envelope, &message, queued.seq)
                .await?;
            engine.meta.processed_through = queued.seq;
        }
        self.save_groups(engine).await
    }

    // ----- receiving -----

    /// The group part of a fetch: `None` if `queued` is not a group envelope,
    /// else the results of processing it (processed once; kept until acked).
    pub(crate) async fn group_receipts(
        &self,
        queued: &pb::QueuedEnvelope,
    ) -> Result<Option<Vec<std::result::Result<Received, Rejected>>>> {
        let Ok(envelope) = pb::Envelope::decode(queued.envelope.as_slice()) else {
            return Ok(None);
        };
        let Some(message) = envelope.group.clone() else {
            return Ok(None);
        };
        let deliveries = {
            let mut engine = self.groups.lock().await;
            if queued.seq > engine.meta.processed_through {
                self.process_group_envelope(&mut engine, queued, &envelope, &message, queued.seq)
                    .await?;
                engine.meta.processed_through = queued.seq;
            }
            engine
                .meta
                .deliveries
                .iter()
                .filter(|d| d.trigger_seq == queued.seq)
                .cloned()
                .collect::<Vec<_>>()
        };
        let mut out = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            out.push(self.delivery_to_received(d).await);
        }
        Ok(Some(out))
    }

    /// Processes a group envelope outside the queue (for example one captured
    /// elsewhere) and returns what it holds; a rejection is an error. Nothing is
    /// kept for a later fetch.
    pub async fn open_group_envelope(&self, queued: &pb::QueuedEnvelope) -> Result<Vec<Received>> {
        let envelope = pb::Envelope::decode(queued.envelope.as_slice())
            .map_err(|e| Error::Group(format!("undecodable envelope: {e}")))?;
        let message = envelope
            .group
            .clone()
            .ok_or_else(|| Error::Group("not a group envelope".into()))?;
        let deliveries = {
            let mut engine = self.groups.lock().await;
            let before = engine.meta.deliveries.len();
            let buffered = engine.meta.buffered.len();
            self.process_group_envelope(&mut engine, queued, &envelope, &message, 0)
                .await?;
            let produced: Vec<Delivery> = engine.meta.deliveries.drain(before..).collect();
            let later_epoch = engine.meta.buffered.len() > buffered;
            engine.meta.buffered.truncate(buffered);
            self.save_groups(&engine).await?;
            if later_epoch {
                return Err(Error::Group(
                    "the message is of a later epoch than this device's state of the group".into(),
                ));
            }
            if produced.is_empty() {
                return Err(Error::Group(
                    "this device is not a member of the message's group".into(),
                ));
            }
            produced
        };
        let mut out = Vec::new();
        for d in deliveries {
            match self.delivery_to_received(d).await {
                Ok(r) => out.push(r),
                Err(rejected) => return Err(Error::Group(rejected.reason)),
            }
        }
        Ok(out)
    }

    async fn delivery_to_received(&self, d: Delivery) -> std::result::Result<Received, Rejected> {
        let sender_raw = <[u8; 16]>::try_from(d.sender_box.as_slice()).unwrap_or([0; 16]);
        let kind = DeliveryKind::try_from(d.kind).unwrap_or(DeliveryKind::Unspecified);
        let body = match kind {
            DeliveryKind::Message => match d.message {
                Some(message) => Body::GroupMessage {
                    group: d.group,
                    message,
                },
                None => Body::Group {
                    group: d.group,
                    text: d.text,
                },
            },
            DeliveryKind::Joined => Body::GroupJoined(d.group),
            DeliveryKind::Removed => Body::GroupRemoved(d.group),
            DeliveryKind::Left => Body::GroupLeft(d.group),
            DeliveryKind::Rejected | DeliveryKind::Unspecified => {
                return Err(Rejected {
                    seq: d.seq,
                    sender: box_display(&d.sender_box),
                    reason: d.text,
                });
            }
        };
        Ok(Received {
            seq: d.seq,
            message_id: <[u8; 16]>::try_from(d.message_id.as_slice()).unwrap_or([0; 16]),
            sender_box: box_id(sender_raw),
            sender_device: crate::sdk::device_id(
                <[u8; 16]>::try_from(d.sender_device.as_slice()).unwrap_or([0; 16]),
            ),
            sender: self.display_name(&sender_raw).await,
            sent_at_ms: d.sent_at_ms,
            enqueued_at_ms: d.enqueued_at_ms,
            body,
        })
    }

    /// The identity key of the device that sent a queued envelope, and
    /// whether looking it up found the sender's device list changed (a key
    /// change to report). The key comes from the sender's device list (the
    /// cached one when it has the device, else a fresh lookup); when the sender
    /// can no longer be looked up (it blocked this account or deleted its
    /// own) or no longer lists the device (removed since), it is the key the
    /// gateway recorded when it accepted the envelope, `recorded`
    /// (security.md §8.3). `None`: no key at all.
    pub(crate) async fn sender_identity(
        &self,
        sender_box: &[u8; 16],
        device: &[u8; 16],
        recorded: &[u8],
    ) -> Result<(Option<IdentityKey>, bool)> {
        let cached = self.cached_devices(sender_box).await;
        let (list, changed) = match cached {
            Some(list) if list.devices.iter().any(|d| d.device_id == device) => (Some(list), false),
            _ => match self.lookup_box(sender_box).await {
                Ok((list, changed)) => (Some(list), changed),
                Err(e) if e.status() == Some(pb::Status::NotFound) => (None, false),
                Err(e) => return Err(e),
            },
        };
        let listed = list
            .filter(|l| l.devices.iter().any(|d| d.device_id == device))
            .map(|l| device_keys_cached(&self.key_cache, &l, device));
        let key = match listed {
            // A listed device whose bundle does not verify has no key: the
            // gateway's record does not override the list.
            Some(keys) => keys.map(|k| *k.identity_key()),
            None => IdentityKey::from_bytes(recorded).ok(),
        };
        Ok((key, changed))
    }

    /// Processes one group envelope; its results go to `deliveries` under
    /// `trigger_seq`. Errors are only for failures worth retrying (network).
    async fn process_group_envelope(
        &self,
        engine: &mut GroupEngine,
        queued: &pb::QueuedEnvelope,
        envelope: &pb::Envelope,
        message: &pb::GroupMessage,
        trigger_seq: u64,
    ) -> Result<()> {
        let mut receipt = Receipt::new(queued, trigger_seq);
        let result = self
            .process_group_inner(engine, queued, envelope, message, &mut receipt)
            .await?;
        if let Err(reason) = result {
            receipt.push(DeliveryKind::Rejected, receipt.group.clone(), reason, 0);
        }
        engine.meta.deliveries.extend(receipt.out);
        // Messages that waited for the Commits just processed.
        self.replay_buffered(engine, trigger_seq).await
    }

    async fn replay_buffered(&self, engine: &mut GroupEngine, trigger_seq: u64) -> Result<()> {
        loop {
            let ready = engine.meta.buffered.iter().position(|b| {
                let Some(q) = &b.queued else { return true };
                let Ok(env) = pb::Envelope::decode(q.envelope.as_slice()) else {
                    return true;
                };
                let Some(g) = env.group else { return true };
                match engine.index(&g.creator_box, &g.group_id) {
                    Some(i) if engine.meta.groups[i].membership == Membership::Active as i32 => {
                        engine
                            .load(i)
                            .is_ok_and(|group| group.epoch().as_u64() >= b.epoch)
                    }
                    _ => true,
                }
            });
            let Some(pos) = ready else { return Ok(()) };
            let buffered = engine.meta.buffered.remove(pos);
            let Some(queued) = buffered.queued else {
                continue;
            };
            let Ok(envelope) = pb::Envelope::decode(queued.envelope.as_slice()) else {
                continue;
            };
            let Some(message) = envelope.group.clone() else {
                continue;
            };
            let mut receipt = Receipt::new(&queued, trigger_seq);
            let result = self
                .process_group_inner(engine, &queued, &envelope, &message, &mut receipt)
                .await?;
            if let Err(reason) = result {
                receipt.push(DeliveryKind::Rejected, receipt.group.clone(), reason, 0);
            }
            engine.meta.deliveries.extend(receipt.out);
        }
    }

    /// The checks and MLS processing of one group envelope. The inner error is
    /// the reason to reject it.
    async fn process_group_inner(
        &self,
        engine: &mut GroupEngine,
        queued: &pb::QueuedEnvelope,
        envelope: &pb::Envelope,
        message: &pb::GroupMessage,
        receipt: &mut Receipt,
    ) -> Result<std::result::Result<(), String>> {
        if envelope.sender_box != queued.sender_box
            || envelope.sender_device != queued.sender_device
            || envelope.message_id != queued.message_id
        {
            return Ok(Err(
                "the envelope's sender or message id differs from the gateway's record".into(),
            ));
        }
        let (Ok(sender_box), Ok(sender_device)) = (
            <[u8; 16]>::try_from(queued.sender_box.as_slice()),
            <[u8; 16]>::try_from(queued.sender_device.as_slice()),
        ) else {
            return Ok(Err("invalid sender".into()));
        };
        let (Ok(creator), Ok(group_id)) = (
            <[u8; 16]>::try_from(message.creator_box.as_slice()),
            <[u8; 16]>::try_from(message.group_id.as_slice()),
        ) else {
            return Ok(Err("invalid group id".into()));
        };
        let idx = engine.index(&creator, &group_id);
        if let Some(i) = idx {
            receipt.group = engine.meta.groups[i].name.clone();
            if engine.meta.groups[i].membership != Membership::Active as i32 {
                // Traffic of a group this device left or was removed from.
                return Ok(Ok(()));
            }
        } else if message.welcome.is_empty() {
            // A group this device is not in (for example one its account joined
            // before this device was added).
            return Ok(Ok(()));
        }
        let (key, _) = self
            .sender_identity(&sender_box, &sender_device, &queued.sender_identity_key)
            .await?;
        let Some(sender_keys) = key else {
            return Ok(Err(
                "the sending device is not among the sender's devices".into()
            ));
        };
        let sender = Sender {
            box_id: sender_box,
            device_id: sender_device,
            keys: sender_keys,
        };
        match idx {
            Some(i) => {
                self.member_message(engine, i, queued, message, &sender, receipt)
                    .await
            }
            None => {
                self.join(engine, (creator, group_id), message, &sender, receipt)
                    .await
            }
        }
    }

    /// Joins a group from a Welcome, if one of this device's KeyPackages is in it.
    async fn join(
        &self,
        engine: &mut GroupEngine,
        (creator, group_id): ([u8; 16], [u8; 16]),
        message: &pb::GroupMessage,
        sender: &Sender,
        receipt: &mut Receipt,
    ) -> Result<std::result::Result<(), String>> {
        let welcome = match mls::from_bytes(&message.welcome).map(MlsMessageIn::extract) {
            Ok(MlsMessageBodyIn::Welcome(w)) => w,
            Ok(_) => return Ok(Err("the welcome field holds no Welcome".into())),
            Err(e) => return Ok(Err(e)),
        };
        let staged = match StagedWelcome::new_from_welcome(
            &engine.provider,
            &mls::join_config(),
            welcome,
            None,
        ) {
            Ok(s) => s,
            // A Welcome for other devices of this box.
            Err(WelcomeError::NoMatchingKeyPackage) => return Ok(Ok(())),
            Err(e) => return Ok(Err(format!("cannot join the group: {e}"))),
        };
        if staged.group_context().group_id() != &mls::mls_group_id(&creator, &group_id) {
            return Ok(Err("the Welcome is for another group".into()));
        }
        let welcomer = match staged.welcome_sender() {
            Ok(leaf) => leaf,
            Err(e) => return Ok(Err(format!("the Welcome names no sender: {e}"))),
        };
        if let Err(reason) = engine.check_leaf(
            sender,
            welcomer.credential(),
            welcomer.signature_key().as_slice(),
        ) {
            return Ok(Err(reason));
        }
        let group = match staged.into_group(&engine.provider) {
            Ok(g) => g,
            Err(e) => return Ok(Err(format!("cannot join the group: {e}"))),
        };
        let meta = mls::group_meta(&group);
        let boxes = tree_boxes(&group);
        let own = self.own_box().await?;
        let direct_peer = if meta.direct {
            // A 1:1 conversation has exactly two boxes, this one among them.
            match boxes.as_slice() {
                [a, b] if *a == own && *b != own => b.to_vec(),
                [a, b] if *b == own && *a != own => a.to_vec(),
                _ => {
                    let mut group = group;
                    let _ = group.delete(engine.provider.storage());
                    return Ok(Err(
                        "a Welcome to a 1:1 conversation that is not between two accounts".into(),
                    ));
                }
            }
        } else {
            Vec::new()
        };
        let name = if meta.direct {
            String::new()
        } else {
            meta.name
        };
        let entry = GroupEntry {
            creator_box: creator.to_vec(),
            group_id: group_id.to_vec(),
            name: name.clone(),
            server_members: boxes.iter().map(|b| b.to_vec()).collect(),
            server_epoch: group.epoch().as_u64(),
            pending_commit: Vec::new(),
            membership: Membership::Active as i32,
            direct_peer,
            updated_at_ms: self.now_ms(),
        };
        match engine.index(&creator, &group_id) {
            Some(i) => engine.meta.groups[i] = entry,
            None => engine.meta.groups.push(entry),
        }
        engine.meta.key_packages_used = true;
        if !meta.direct {
            // Joining a 1:1 conversation is not news: its messages are.
            receipt.group = name.clone();
            receipt.push(DeliveryKind::Joined, name, String::new(), 0);
        }
        Ok(Ok(()))
    }

    /// A Commit, proposals or an application message of a group this device is in.
    async fn member_message(
        &self,
        engine: &mut GroupEngine,
        idx: usize,
        queued: &pb::QueuedEnvelope,
        message: &pb::GroupMessage,
        sender: &Sender,
        receipt: &mut Receipt,
    ) -> Result<std::result::Result<(), String>> {
        let own = self.own_box().await?;
        let name = engine.meta.groups[idx].name.clone();
        if !message.proposals.is_empty() && sender.box_id != own {
            // A leave: the gateway dropped the box already.
            engine.meta.groups[idx]
                .server_members
                .retain(|b| b.as_slice() != sender.box_id);
        }
        let parts = message
            .proposals
            .iter()
            .chain(std::iter::once(&message.mls))
            .filter(|m| !m.is_empty());
        for bytes in parts {
            let mut group = engine.load(idx)?;
            let protocol = match mls::from_bytes(bytes).map(MlsMessageIn::try_into_protocol_message)
            {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return Ok(Err(format!("not a group message: {e}"))),
                Err(e) => return Ok(Err(e)),
            };
            let epoch = protocol.epoch().as_u64();
            let current = group.epoch().as_u64();
            if epoch > current {
                if engine.meta.buffered.len() >= MAX_BUFFERED {
                    return Ok(Err(format!(
                        "a message of epoch {epoch} while {name:?} is at epoch {current}, and the buffer is full"
                    )));
                }
                engine.meta.buffered.push(Buffered {
                    queued: Some(queued.clone()),
                    epoch,
                });
                return Ok(Ok(()));
            }
            let processed = match group.process_message(&engine.provider, protocol) {
                Ok(p) => p,
                Err(e) => {
                    return Ok(Err(format!(
                        "cannot process a message of epoch {epoch} in {name:?} (at epoch {current}; a duplicate or too old?): {e}"
                    )));
                }
            };
            let openmls::prelude::Sender::Member(leaf) = processed.sender() else {
                return Ok(Err("the message is not from a group member".into()));
            };
            let Some(member) = group.member_at(*leaf) else {
                return Ok(Err("the sender's leaf is empty".into()));
            };
            if let Err(reason) =
                engine.check_leaf(sender, processed.credential(), &member.signature_key)
            {
                return Ok(Err(reason));
            }
            let direct = !engine.meta.groups[idx].direct_peer.is_empty();
            match processed.into_content() {
                ProcessedMessageContent::ApplicationMessage(_) if direct => {
                    return Ok(Err(
                        "a 1:1 conversation's messages come inside 1:1 envelopes".into(),
                    ));
                }
                ProcessedMessageContent::ApplicationMessage(app) => {
                    match GroupContent::decode(app.into_bytes().as_slice()) {
                        Ok(content) => {
                            let plain =
                                content.attachments.is_empty() && content.location.is_none();
                            let delivery = receipt.push(
                                DeliveryKind::Message,
                                name.clone(),
                                String::new(),
                                content.sent_at_ms,
                            );
                            if plain {
                                delivery.text = content.text;
                            } else {
                                delivery.message = Some(pb::RichMessage {
                                    text: content.text,
                                    attachments: content.attachments,
                                    location: content.location,
                                });
                            }
                        }
                        Err(e) => return Ok(Err(format!("undecodable group message: {e}"))),
                    }
                }
                ProcessedMessageContent::ProposalMessage(proposal) => {
                    let removes_me = matches!(proposal.proposal(),
                        Proposal::Remove(r) if r.removed() == group.own_leaf_index());
                    if removes_me && sender.box_id == own {
                        // This account left, from another of its devices.
                        engine.leave_locally(idx, Membership::Left)?;
                        receipt.push(DeliveryKind::Left, name.clone(), String::new(), 0);
                        return Ok(Ok(()));
                    }
                    group
                        .store_pending_proposal(engine.provider.storage(), *proposal)
                        .map_err(|e| mls_error("cannot store a proposal", e))?;
                    if let Ok(ids) = engine.ids(idx) {
                        engine.proposals_unchecked.insert(ids);
                    }
                }
                ProcessedMessageContent::StagedCommitMessage(commit) => {
                    if let Some(leaf) = commit.update_path_leaf_node()
                        && let Err(reason) = engine.check_leaf(
                            sender,
                            leaf.credential(),
                            leaf.signature_key().as_slice(),
                        )
                    {
                        return Ok(Err(reason));
                    }
                    let removed = commit.self_removed();
                    if let Err(e) = group.merge_staged_commit(&engine.provider, *commit) {
                        return Ok(Err(format!("cannot apply the Commit: {e}")));
                    }
                    if removed {
                        engine.leave_locally(idx, Membership::Removed)?;
                        if !direct {
                            receipt.push(DeliveryKind::Removed, name.clone(), String::new(), 0);
                        }
                        return Ok(Ok(()));
                    }
                }
                _ => return Ok(Err("an MLS message kind groups do not use".into())),
            }
        }
        Ok(Ok(()))
    }

    /// After a fetched batch: commits what members who left proposed, and
    /// refills KeyPackages when one was used or the last check is old. Best
    /// effort: failures wait for the next batch.
    pub(crate) async fn after_group_batch(&self) {
        let mut engine = self.groups.lock().await;
        if engine.check_all_proposals || !engine.proposals_unchecked.is_empty() {
            let due: Vec<usize> = (0..engine.meta.groups.len())
                .filter(|&i| {
                    engine.meta.groups[i].membership == Membership::Active as i32
                        && (engine.check_all_proposals
                            || engine
                                .ids(i)
                                .is_ok_and(|ids| engine.proposals_unchecked.contains(&ids)))
                        && engine.load(i).is_ok_and(|g| g.has_pending_proposals())
                })
                .collect();
            let mut all_committed = true;
            for idx in due {
                let committed = self
                    .commit_with(&mut engine, idx, false, |_| Some(CommitPlan::default()))
                    .await;
                all_committed &= committed.is_ok();
            }
            engine.proposals_unchecked.clear();
            engine.check_all_proposals = !all_committed;
        }
        let now = self.now_ms();
        let check = engine.meta.key_packages_used
            || now.saturating_sub(engine.meta.key_packages_checked_at_ms) > KEY_PACKAGE_CHECK_MS;
        if check {
            let _ = self.refill_key_packages(&mut engine).await;
        }
    }
}

/// The device an envelope came from, with its identity key.
struct Sender {
    box_id: [u8; 16],
    device_id: [u8; 16],
    keys: IdentityKey,
}

impl GroupEngine {
    /// Checks that an MLS leaf's credential names `sender` and is vouched for by
    /// its identity key.
    fn check_leaf(
        &mut self,
        sender: &Sender,
        credential: &Credential,
        signature_key: &[u8],
    ) -> std::result::Result<(), String> {
        let Some(claim) = CredentialClaim::parse(credential) else {
            return Err("the MLS sender has no Rossby credential".into());
        };
        if claim.box_id != sender.box_id || claim.device_id != sender.device_id {
            return Err("the MLS sender is not the device the gateway recorded as sender".into());
        }
        let key = (
            credential.serialized_content().to_vec(),
            signature_key.to_vec(),
        );
        if self.verified.contains(&key) {
            return Ok(());
        }
        if !claim.verify(&sender.keys, signature_key) {
            return Err("the MLS sender's credential is not signed by its device key".into());
        }
        self.verified.insert(key);
        Ok(())
    }
}

/// Results of one envelope, collected before they go to the state.
struct Receipt {
    trigger_seq: u64,
    seq: u64,
    sender_box: Vec<u8>,
    sender_device: Vec<u8>,
    message_id: Vec<u8>,
    enqueued_at_ms: u64,
    group: String,
    out: Vec<Delivery>,
}

impl Receipt {
    fn new(queued: &pb::QueuedEnvelope, trigger_seq: u64) -> Self {
        Receipt {
            trigger_seq,
            seq: queued.seq,
            sender_box: queued.sender_box.clone(),
            sender_device: queued.sender_device.clone(),
            message_id: queued.message_id.clone(),
            enqueued_at_ms: queued.enqueued_at_ms,
            group: String::new(),
            out: Vec::new(),
        }
    }

    /// Records a result; returns it for the caller to add what only it knows.
    fn push(
        &mut self,
        kind: DeliveryKind,
        group: String,
        text: String,
        sent_at_ms: u64,
    ) -> &mut Delivery {
        self.out.push(Delivery {
            trigger_seq: self.trigger_seq,
            seq: self.seq,
            kind: kind as i32,
            group,
            sender_box: self.sender_box.clone(),
            sender_device: self.sender_device.clone(),
            message_id: self.message_id.clone(),
            text,
            sent_at_ms,
            enqueued_at_ms: self.enqueued_at_ms,
            message: None,
        });
        let last = self.out.len() - 1;
        &mut self.out[last]
    }
}
