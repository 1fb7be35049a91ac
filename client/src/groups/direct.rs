//! 1:1 conversations as two-party MLS groups.
//!
//! # Model
//! A conversation between two accounts is an MLS group (marked `direct` in its
//! group context, with no name) whose leaves are every device of both boxes.
//! The first 1:1 message from a device creates it from claimed KeyPackages
//! (one Commit adds the peer's devices and this account's other devices);
//! before every later message the sender brings the group's leaves in line with
//! the two device lists it is about to send to (devices linked since are added
//! from a claimed KeyPackage, removed ones are removed), so both sides join and
//! leave the way group members' devices do. A device added later reads from the
//! Commit that added it on: MLS gives it no history.
//!
//! # Messages
//! The plaintext `Content` of a 1:1 message is an MLS application message of
//! the conversation. It travels inside the ordinary 1:1 transport (a signed or
//! sealed-sender envelope with per-device wraps, device-list versions and
//! dedup): the recipient box gets `Content.mls`, the sender's own box a
//! `SentCopy` whose `mls` holds the same MLS message. Only the MLS layer holds
//! the plaintext, and its keys are deleted once used, so the per-device wraps
//! around it (static keys) no longer decide whether old messages can be read:
//! 1:1 messages get MLS's forward secrecy and post-compromise security. When
//! the gateway reports a changed device list, the membership is brought in
//! line again and the message encrypted anew (same message id).
//!
//! When both accounts create a conversation at once, both groups are kept;
//! each side sends in the one with the smallest MLS group id, so they settle on
//! the same one. When the peer has no device with a KeyPackage, the message is
//! sealed to its devices' static keys only (docs/security.md).

use super::state::{DirectOpened, Membership};
use super::{CommitPlan, GroupEngine, Sender, leaves, mls};
use crate::error::{Error, Result};
use crate::sdk::{Client, Target, box_id};
use mls::mls_error;
use openmls::prelude::*;
use prost::Message as _;
use rossby_keyspace::BoxId;
use rossby_protocol::crypto::IdentityKey;
use rossby_protocol::pb;
use std::collections::HashSet;

/// A device renews its leaf keys in a conversation (an MLS self-update
/// Commit, for post-compromise security) before sending when its last Commit
/// there is older than this.
pub const KEY_UPDATE_INTERVAL_MS: u64 = 7 * 24 * 3600 * 1000;

/// One 1:1 conversation as this device sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The other account (identifier if known, else box id).
    pub peer: String,
    /// The other account's box.
    pub peer_box: BoxId,
    /// The MLS epoch this device is at.
    pub epoch: u64,
    /// Devices in the conversation (MLS leaves), both accounts together.
    pub devices: usize,
    /// The MLS ciphersuite, read from the group state.
    pub ciphersuite: Ciphersuite,
    /// The box that created the conversation's group.
    pub creator_box: BoxId,
    /// The group's id in that box.
    pub group_id: [u8; 16],
}

/// The outer contents of an MLS-encrypted 1:1 message.
pub(crate) struct Wrapped {
    /// For the recipient box: `Content.mls`.
    pub(crate) content: pb::Content,
    /// For the sender's own box: a `SentCopy` with the same MLS message.
    pub(crate) copy: Option<pb::Content>,
}

impl GroupEngine {
    /// The conversation with `peer` messages are sent in: of the active ones,
    /// the one with the smallest MLS group id (both sides pick the same).
    fn direct_with(&self, peer: &[u8; 16]) -> Option<usize> {
        self.meta
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.direct_peer == peer && g.membership == Membership::Active as i32)
            .min_by(|(_, a), (_, b)| {
                (&a.creator_box, &a.group_id).cmp(&(&b.creator_box, &b.group_id))
            })
            .map(|(i, _)| i)
    }
}

impl Client {
    /// The 1:1 conversations this device is in (no network).
    pub async fn conversations(&self) -> Vec<ConversationSummary> {
        let engine = self.groups.lock().await;
        let mut out = Vec::new();
        for (idx, entry) in engine.meta.groups.iter().enumerate() {
            let Ok(peer) = <[u8; 16]>::try_from(entry.direct_peer.as_slice()) else {
                continue;
            };
            // The one messages go in: one per peer.
            if engine.direct_with(&peer) != Some(idx) {
                continue;
            }
            if let Ok(summary) = self.conversation_summary(&engine, idx, peer).await {
                out.push(summary);
            }
        }
        out
    }

    async fn conversation_summary(
        &self,
        engine: &GroupEngine,
        idx: usize,
        peer: [u8; 16],
    ) -> Result<ConversationSummary> {
        let group = engine.load(idx)?;
        let (creator, group_id) = engine.ids(idx)?;
        Ok(ConversationSummary {
            peer: self.display_name(&peer).await,
            peer_box: box_id(peer),
            epoch: group.epoch().as_u64(),
            devices: group.members().count(),
            ciphersuite: group.ciphersuite(),
            creator_box: box_id(creator),
            group_id,
        })
    }

    /// Renews this device's key material in the conversation with a user
    /// (identifier or box id): an MLS self-update Commit, after which a copy of
    /// this device's earlier state reads nothing new. Sending does it by itself
    /// once a week ([`KEY_UPDATE_INTERVAL_MS`]).
    pub async fn update_conversation_keys(&self, who: &str) -> Result<ConversationSummary> {
        let target = self.resolve(who).await?;
        let mut engine = self.groups.lock().await;
        let idx = engine
            .direct_with(&target.box_id)
            .ok_or_else(|| Error::Group(format!("no conversation with {who}")))?;
        self.commit_with(&mut engine, idx, true, |_| {
            Some(CommitPlan {
                self_update: true,
                ..CommitPlan::default()
            })
        })
        .await?;
        self.conversation_summary(&engine, idx, target.box_id).await
    }

    /// Encrypts `content` in the conversation with `target` (created or brought
    /// in line with the two device lists first). `None`: no device of the peer
    /// can join (no KeyPackage), so the message is sent sealed only.
    pub(crate) async fn direct_wrap(
        &self,
        target: &Target,
        own: &[u8; 16],
        content: &pb::Content,
        with_copy: bool,
    ) -> Result<Option<Wrapped>> {
        let peer_list = self.devices_for(&target.box_id).await?;
        let own_list = self.devices_for(own).await?;
        let who = if target.identifier.is_empty() {
            crate::sdk::box_display(&target.box_id)
        } else {
            target.identifier.clone()
        };
        let mut engine = self.groups.lock().await;
        let Some(idx) = self
            .direct_group(&mut engine, &target.box_id, &peer_list, &own_list, &who)
            .await?
        else {
            return Ok(None);
        };
        let (creator, group_id) = engine.ids(idx)?;
        let mut group = engine.load(idx)?;
        let message = group
            .create_message(&engine.provider, &engine.signer, &content.encode_to_vec())
            .map_err(|e| mls_error("cannot encrypt the message", e))?;
        // The ratchet moved: persist it before the ciphertext leaves the device.
        self.save_groups(&engine).await?;
        let mls_message = pb::GroupMessage {
            creator_box: creator.to_vec(),
            group_id: group_id.to_vec(),
            mls: mls::to_bytes(&message)?,
            ..pb::GroupMessage::default()
        }
        .encode_to_vec();
        let copy = with_copy.then(|| pb::Content {
            sent_at_ms: content.sent_at_ms,
            body: Some(pb::content::Body::Sent(pb::SentCopy {
                to_box: target.box_id.to_vec(),
                to_identifier: target.identifier.clone(),
                mls: mls_message.clone(),
                ..pb::SentCopy::default()
            })),
            access_secret: Vec::new(),
        });
        Ok(Some(Wrapped {
            content: pb::Content {
                sent_at_ms: content.sent_at_ms,
                body: Some(pb::content::Body::Mls(mls_message)),
                access_secret: Vec::new(),
            },
            copy,
        }))
    }

    /// The conversation with `peer`, its leaves matching both device lists:
    /// created when there is none, devices added or removed otherwise.
    async fn direct_group(
        &self,
        engine: &mut GroupEngine,
        peer: &[u8; 16],
        peer_list: &pb::DeviceList,
        own_list: &pb::DeviceList,
        who: &str,
    ) -> Result<Option<usize>> {
        let own = self.own_box().await?;
        let idx = match engine.direct_with(peer) {
            Some(idx) => idx,
            None => {
                let claimed = self.claim_verified(engine, peer, peer_list, who).await?;
                if claimed.is_empty() {
                    return Ok(None);
                }
                let idx = self.start_group(engine, "", Some(*peer)).await?;
                let mut key_packages: Vec<KeyPackage> =
                    claimed.into_iter().map(|(_, kp)| kp).collect();
                let mut welcome_boxes = vec![*peer];
                if own_list
                    .devices
                    .iter()
                    .any(|d| d.device_id.as_slice() != self.device_id.as_slice())
                {
                    let own_claimed = self
                        .claim_verified(engine, &own, own_list, "your other devices")
                        .await?;
                    if !own_claimed.is_empty() {
                        welcome_boxes.push(own);
                        key_packages.extend(own_claimed.into_iter().map(|(_, kp)| kp));
                    }
                }
                self.commit_with(engine, idx, true, |_| {
                    Some(CommitPlan {
                        key_packages: key_packages.clone(),
                        add_boxes: vec![*peer],
                        welcome_boxes: welcome_boxes.clone(),
                        ..CommitPlan::default()
                    })
                })
                .await?;
                return Ok(Some(idx));
            }
        };
        let group = engine.load(idx)?;
        let present: HashSet<([u8; 16], [u8; 16])> =
            leaves(&group).into_iter().map(|(_, b, d)| (b, d)).collect();
        drop(group);
        // A leaf whose device a list lacks was either removed or linked after
        // the list was cached: ask the gateway before removing anyone.
        let (mut peer_list, mut own_list) = (peer_list.clone(), own_list.clone());
        for (b, list) in [(peer, &mut peer_list), (&own, &mut own_list)] {
            let unlisted = present.iter().any(|(leaf_box, d)| {
                leaf_box == b && !list.devices.iter().any(|x| x.device_id.as_slice() == d)
            });
            if unlisted {
                *list = match self.lookup_box(b).await {
                    Ok((fresh, _)) => fresh,
                    Err(e) if e.status() == Some(pb::Status::NotFound) => {
                        return Err(Error::UnknownRecipient(who.to_string()));
                    }
                    Err(e) => return Err(e),
                };
            }
        }
        let wanted: HashSet<([u8; 16], [u8; 16])> = [(peer, &peer_list), (&own, &own_list)]
            .into_iter()
            .flat_map(|(b, list)| {
                list.devices.iter().filter_map(move |d| {
                    Some((*b, <[u8; 16]>::try_from(d.device_id.as_slice()).ok()?))
                })
            })
            .collect();
        // Devices to add: claim KeyPackages for the boxes that have some.
        let mut claimed: Vec<([u8; 16], [u8; 16], KeyPackage)> = Vec::new();
        for (b, list, name) in [
            (peer, &peer_list, who),
            (&own, &own_list, "your other devices"),
        ] {
            let missing = wanted
                .iter()
                .any(|(wb, d)| wb == b && !present.contains(&(*wb, *d)) && *d != self.device_id);
            if missing {
                for (d, kp) in self.claim_verified(engine, b, list, name).await? {
                    claimed.push((*b, d, kp));
                }
            }
        }
        let in_server = |engine: &GroupEngine, b: &[u8; 16]| {
            engine.meta.groups[idx]
                .server_members
                .iter()
                .any(|m| m.as_slice() == b)
        };
        let peer_listed = in_server(engine, peer);
        let peer = *peer;
        let renew = self
            .now_ms()
            .saturating_sub(engine.meta.groups[idx].updated_at_ms)
            > KEY_UPDATE_INTERVAL_MS;
        self.commit_with(engine, idx, true, |group| {
            let present: HashSet<([u8; 16], [u8; 16])> =
                leaves(group).into_iter().map(|(_, b, d)| (b, d)).collect();
            let mut plan = CommitPlan::default();
            for (b, d, kp) in &claimed {
                if !present.contains(&(*b, *d)) {
                    plan.key_packages.push(kp.clone());
                    if !plan.welcome_boxes.contains(b) {
                        plan.welcome_boxes.push(*b);
                    }
                }
            }
            for (leaf, b, d) in leaves(group) {
                if !wanted.contains(&(b, d)) {
                    plan.remove_leaves.push(leaf);
                }
            }
            if !peer_listed && plan.welcome_boxes.contains(&peer) {
                plan.add_boxes.push(peer);
            }
            plan.self_update = renew;
            (renew || !plan.key_packages.is_empty() || !plan.remove_leaves.is_empty())
                .then_some(plan)
        })
        .await?;
        Ok(Some(idx))
    }

    /// Opens the MLS layer of a 1:1 message: `content` as the outer envelope
    /// held it, from a sender whose envelope (or certificate) was verified.
    /// Returns the content as if it had been sealed directly: the recipient's
    /// `Content`, or for a copy from another own device a `SentCopy` naming the
    /// message. Contents without an MLS layer come back unchanged. The result
    /// is kept until the queue is acknowledged past `seq`, as MLS opens a
    /// message once (`seq` 0: outside the queue, nothing kept).
    pub(crate) async fn direct_unwrap(
        &self,
        seq: u64,
        message_id: &[u8],
        sender: (&[u8; 16], &[u8; 16], &IdentityKey),
        content: pb::Content,
    ) -> Result<std::result::Result<pb::Content, String>> {
        let own = self.own_box().await?;
        let (sender_box, sender_device, keys) = sender;
        let (message, peer, copy) = match &content.body {
            Some(pb::content::Body::Mls(bytes)) if *sender_box != own => {
                (bytes.clone(), *sender_box, None)
            }
            Some(pb::content::Body::Sent(copy)) if !copy.mls.is_empty() => {
                if *sender_box != own {
                    return Ok(Err("a sent copy from another account".into()));
                }
                let Ok(to_box) = <[u8; 16]>::try_from(copy.to_box.as_slice()) else {
                    return Ok(Err("a sent copy without a recipient".into()));
                };
                (copy.mls.clone(), to_box, Some(copy.clone()))
            }
            Some(pb::content::Body::Mls(_)) => {
                return Ok(Err("a 1:1 MLS message from this account to itself".into()));
            }
            _ => return Ok(Ok(content)),
        };
        let opened = {
            let mut engine = self.groups.lock().await;
            let cached = engine
                .meta
                .direct_opened
                .iter()
                .find(|o| seq > 0 && o.seq == seq && o.message_id == message_id)
                .cloned();
            match cached {
                Some(o) if o.rejected.is_empty() => Ok(o.content),
                Some(o) => Err(o.rejected),
                None => {
                    let sender = Sender {
                        box_id: *sender_box,
                        device_id: *sender_device,
                        keys: *keys,
                    };
                    let result = self.open_direct_mls(&mut engine, &message, &peer, &sender)?;
                    if seq > 0 {
                        let (content, rejected) = match &result {
                            Ok(c) => (c.clone(), String::new()),
                            Err(r) => (Vec::new(), r.clone()),
                        };
                        engine.meta.direct_opened.push(DirectOpened {
                            seq,
                            message_id: message_id.to_vec(),
                            content,
                            rejected,
                        });
                    }
                    // In the queue, the fetch saves the state (ratchet and
                    // plaintext) before it returns the batch; a crash before
                    // that leaves the old state, which opens the message again.
                    if seq == 0 {
                        self.save_groups(&engine).await?;
                    }
                    result
                }
            }
        };
        let plain = match opened {
            Ok(p) => p,
            Err(reason) => return Ok(Err(reason)),
        };
        let inner = match pb::Content::decode(plain.as_slice()) {
            Ok(c) => c,
            Err(e) => return Ok(Err(format!("undecodable 1:1 MLS plaintext: {e}"))),
        };
        let Some(copy) = copy else {
            return Ok(match &inner.body {
                Some(pb::content::Body::Mls(_) | pb::content::Body::Sent(_)) => {
                    Err("a 1:1 MLS plaintext that is not a message".into())
                }
                _ => Ok(inner),
            });
        };
        let (text, message) = match inner.body {
            Some(pb::content::Body::Text(t)) => (t, None),
            Some(pb::content::Body::Message(m)) => (String::new(), Some(m)),
            _ => return Ok(Err("a sent copy of something that is not a message".into())),
        };
        Ok(Ok(pb::Content {
            sent_at_ms: inner.sent_at_ms,
            body: Some(pb::content::Body::Sent(pb::SentCopy {
                to_box: copy.to_box,
                to_identifier: copy.to_identifier,
                text,
                message,
                mls: Vec::new(),
            })),
            access_secret: inner.access_secret,
        }))
    }

    /// Decrypts an MLS application message of the conversation with `peer`.
    /// The inner error is the reason to reject it.
    fn open_direct_mls(
        &self,
        engine: &mut GroupEngine,
        message: &[u8],
        peer: &[u8; 16],
        sender: &Sender,
    ) -> Result<std::result::Result<Vec<u8>, String>> {
        let Ok(message) = pb::GroupMessage::decode(message) else {
            return Ok(Err("undecodable 1:1 MLS message".into()));
        };
        let Some(idx) = engine.index(&message.creator_box, &message.group_id) else {
            return Ok(Err(
                "a 1:1 message of a conversation this device is not in".into()
            ));
        };
        let entry = &engine.meta.groups[idx];
        if entry.direct_peer != peer {
            return Ok(Err(
                "a 1:1 message in a group that is not the conversation with its sender".into(),
            ));
        }
        if entry.membership != Membership::Active as i32 {
            return Ok(Err(
                "a 1:1 message of a conversation this device was removed from".into(),
            ));
        }
        let mut group = engine.load(idx)?;
        let protocol =
            match mls::from_bytes(&message.mls).map(MlsMessageIn::try_into_protocol_message) {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return Ok(Err(format!("not an MLS message: {e}"))),
                Err(e) => return Ok(Err(e)),
            };
        let epoch = protocol.epoch().as_u64();
        let current = group.epoch().as_u64();
        if epoch > current {
            return Ok(Err(format!(
                "a 1:1 message of epoch {epoch} while the conversation is at epoch {current}"
            )));
        }
        let processed = match group.process_message(&engine.provider, protocol) {
            Ok(p) => p,
            Err(e) => {
                return Ok(Err(format!(
                    "cannot decrypt a 1:1 message of epoch {epoch} (at epoch {current}; a duplicate, or its keys are gone): {e}"
                )));
            }
        };
        let openmls::prelude::Sender::Member(leaf) = processed.sender() else {
            return Ok(Err("the message is not from a member".into()));
        };
        let Some(member) = group.member_at(*leaf) else {
            return Ok(Err("the sender's leaf is empty".into()));
        };
        if let Err(reason) =
            engine.check_leaf(sender, processed.credential(), &member.signature_key)
        {
            return Ok(Err(reason));
        }
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Ok(Ok(app.into_bytes())),
            _ => Ok(Err(
                "a 1:1 MLS message that is not an application message".into()
            )),
        }
    }
}
