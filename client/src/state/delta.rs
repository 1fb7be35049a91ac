//! The content of a journal record: what changed in the [`State`] since the
//! previous record (or the snapshot), as protobuf.
//!
//! A record is computed by comparing the state as last persisted with the state
//! now, not logged by each caller: every `save` of the SDK persists exactly what
//! its callers changed, and a mutation nobody thought of journaling cannot be
//! lost (the store checks that replaying the record reproduces the state, and
//! writes a snapshot when it does not).
//!
//! Kinds of change, chosen so the hot paths stay small:
//! - [`FieldSet`]: top-level fields replaced by value (queue pointers, credentials,
//!   gateway settings, the own device list...). An ack is one of these.
//! - [`Splice`]: a range of a repeated field replaced (contacts, the outbox, the
//!   remembered message ids, group entries, group deliveries, buffered group
//!   messages). A send adds and later removes one outbox entry; a fetch appends
//!   message ids and drops as many from the front.
//! - [`StoragePut`] / `storage_delete`: single keys of openmls' storage (a
//!   consumed KeyPackage, a group's new epoch).
//! - [`GroupFieldSet`]: the scalar fields of the groups' bookkeeping.
//!
//! Changes that touch most of the state (creating or forgetting the groups
//! state, publishing a batch of KeyPackages) produce a record as large as the
//! state; the store writes a snapshot instead.

use super::State;
use crate::groups::state::{GroupsState, StorageEntry};
use prost::Message;

/// The layout version of [`Patch`] written by this build.
pub const PATCH_FORMAT: u32 = 1;

/// One journal record's plaintext.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct Patch {
    /// Layout version ([`PATCH_FORMAT`]); a reader refuses newer ones.
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// The changes, applied in order.
    #[prost(message, repeated, tag = "2")]
    pub changes: Vec<Change>,
}

impl std::fmt::Debug for Patch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patch")
            .field("changes", &self.changes.len())
            .finish_non_exhaustive()
    }
}

/// One change.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct Change {
    /// What changes.
    #[prost(oneof = "change::Kind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<change::Kind>,
}

/// The kinds of [`Change`].
pub mod change {
    /// What a [`super::Change`] does.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Top-level fields of the state replaced.
        #[prost(message, tag = "1")]
        Fields(super::FieldSet),
        /// Scalar fields of the groups' bookkeeping replaced.
        #[prost(message, tag = "2")]
        GroupFields(super::GroupFieldSet),
        /// A range of a repeated field replaced.
        #[prost(message, tag = "3")]
        Splice(super::Splice),
        /// A key of openmls' storage set.
        #[prost(message, tag = "4")]
        StoragePut(super::StoragePut),
        /// A key of openmls' storage removed.
        #[prost(bytes, tag = "5")]
        StorageDelete(Vec<u8>),
    }
}

/// Fields of [`State`] (by tag) and their new values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FieldSet {
    /// The tags of the fields replaced (a field at its default value is not
    /// encoded in `values`, hence the explicit list).
    #[prost(uint32, repeated, tag = "1")]
    pub tags: Vec<u32>,
    /// A state holding the new values of those fields (and nothing else).
    #[prost(message, optional, boxed, tag = "2")]
    pub values: Option<Box<State>>,
}

/// Fields of [`GroupsState`] (by tag) and their new values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupFieldSet {
    /// The tags of the fields replaced.
    #[prost(uint32, repeated, tag = "1")]
    pub tags: Vec<u32>,
    /// A groups state holding the new values of those fields.
    #[prost(message, optional, boxed, tag = "2")]
    pub values: Option<Box<GroupsState>>,
}

/// The repeated fields a [`Splice`] can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum List {
    /// Not a valid list.
    Unspecified = 0,
    /// `State.contacts`.
    Contacts = 10,
    /// `State.outbox`.
    Outbox = 17,
    /// `State.seen_messages`.
    SeenMessages = 18,
    /// `State.sent_log`.
    SentLog = 25,
    /// `GroupsState.groups`.
    Groups = 104,
    /// `GroupsState.deliveries`.
    Deliveries = 106,
    /// `GroupsState.buffered`.
    Buffered = 107,
    /// `GroupsState.direct_opened`.
    DirectOpened = 111,
}

/// `list[start .. start + remove]` replaced by `insert`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Splice {
    /// The repeated field.
    #[prost(enumeration = "List", tag = "1")]
    pub list: i32,
    /// First element replaced.
    #[prost(uint64, tag = "2")]
    pub start: u64,
    /// Elements removed.
    #[prost(uint64, tag = "3")]
    pub remove: u64,
    /// Elements inserted at `start`, each its protobuf encoding.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub insert: Vec<Vec<u8>>,
}

/// A key of openmls' storage and its new value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoragePut {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// Generates, from one list of `tag => field`, the functions that find the
/// changed fields, copy them into a value holder, and apply them; one list keeps
/// the three in agreement.
macro_rules! scalar_fields {
    ($ty:ty, $changed:ident, $values:ident, $apply:ident, { $($tag:literal => $field:ident),* $(,)? }) => {
        fn $changed(old: &$ty, new: &$ty) -> Vec<u32> {
            let mut tags = Vec::new();
            $( if old.$field != new.$field { tags.push($tag); } )*
            tags
        }

        fn $values(tags: &[u32], from: &$ty) -> $ty {
            let mut values = <$ty>::default();
            for tag in tags {
                match tag {
                    $( $tag => values.$field = from.$field.clone(), )*
                    _ => {}
                }
            }
            values
        }

        fn $apply(tags: &[u32], mut from: $ty, to: &mut $ty) -> Result<(), String> {
            for tag in tags {
                match tag {
                    $( $tag => to.$field = std::mem::take(&mut from.$field), )*
                    other => return Err(format!("unknown field {other}")),
                }
            }
            Ok(())
        }
    };
}

// Every field of `State` except the repeated ones (spliced) and `groups`
// (diffed field by field below).
scalar_fields!(State, state_changed, state_values, apply_state_fields, {
    1 => format,
    2 => device_id,
    3 => device_secret,
    4 => device_label,
    5 => identifier,
    6 => registration_pending,
    7 => box_id,
    8 => credentials,
    9 => own_devices,
    11 => acked_seq,
    12 => last_seq,
    13 => gateway,
    14 => server_name,
    15 => service_name,
    16 => ca_cert_der,
    24 => read_receipts_off,
    20 => uploads,
    26 => sealed_sender,
});

// Every field of `GroupsState` except `mls_storage` (keyed) and the repeated ones.
scalar_fields!(GroupsState, groups_changed, groups_values, apply_groups_fields, {
    2 => signature_public,
    5 => processed_through,
    8 => key_packages_checked_at_ms,
    9 => last_resort_at_ms,
    10 => key_packages_used,
});

/// The changes from `old` to `new`, or `None` when they are better written as a
/// snapshot (the groups state appeared or went away).
pub fn diff(old: &State, new: &State) -> Option<Patch> {
    let mut changes = Vec::new();
    let tags = state_changed(old, new);
    if !tags.is_empty() {
        let values = state_values(&tags, new);
        changes.push(kind(change::Kind::Fields(FieldSet {
            tags,
            values: Some(Box::new(values)),
        })));
    }
    splice(List::Contacts, &old.contacts, &new.contacts, &mut changes);
    splice(List::Outbox, &old.outbox, &new.outbox, &mut changes);
    splice(
        List::SeenMessages,
        &old.seen_messages,
        &new.seen_messages,
        &mut changes,
    );
    splice(List::SentLog, &old.sent_log, &new.sent_log, &mut changes);
    match (&old.groups, &new.groups) {
        (None, None) => {}
        (Some(old), Some(new)) => diff_groups(old, new, &mut changes),
        _ => return None,
    }
    Some(Patch {
        format: PATCH_FORMAT,
        changes,
    })
}

fn diff_groups(old: &GroupsState, new: &GroupsState, changes: &mut Vec<Change>) {
    let tags = groups_changed(old, new);
    if !tags.is_empty() {
        let values = groups_values(&tags, new);
        changes.push(kind(change::Kind::GroupFields(GroupFieldSet {
            tags,
            values: Some(Box::new(values)),
        })));
    }
    diff_storage(&old.mls_storage, &new.mls_storage, changes);
    splice(List::Groups, &old.groups, &new.groups, changes);
    splice(List::Deliveries, &old.deliveries, &new.deliveries, changes);
    splice(List::Buffered, &old.buffered, &new.buffered, changes);
    splice(
        List::DirectOpened,
        &old.direct_opened,
        &new.direct_opened,
        changes,
    );
}

fn kind(kind: change::Kind) -> Change {
    Change { kind: Some(kind) }
}

/// Puts and deletes turning `old` into `new`. Both are sorted by key (openmls'
/// storage is exported sorted); if they were not, the store's check after
/// replaying would catch it and write a snapshot.
fn diff_storage(old: &[StorageEntry], new: &[StorageEntry], changes: &mut Vec<Change>) {
    if old == new {
        return;
    }
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) => o.key.cmp(&n.key),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                changes.push(kind(change::Kind::StorageDelete(old[i].key.clone())));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                changes.push(put(&new[j]));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if old[i].value != new[j].value {
                    changes.push(put(&new[j]));
                }
                i += 1;
                j += 1;
            }
        }
    }
}

fn put(entry: &StorageEntry) -> Change {
    kind(change::Kind::StoragePut(StoragePut {
        key: entry.key.clone(),
        value: entry.value.clone(),
    }))
}

/// The splices turning `old` into `new`: one range replaced, or, for a list
/// used as a sliding window (remembered message ids), elements dropped from the
/// front and appended at the back.
fn splice<T: Message + PartialEq>(list: List, old: &[T], new: &[T], changes: &mut Vec<Change>) {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    if prefix == old.len() && prefix == new.len() {
        return;
    }
    let encode = |items: &[T]| items.iter().map(Message::encode_to_vec).collect();
    if prefix == 0
        && let Some(first) = new.first()
        && let Some(dropped) = old.iter().position(|x| x == first)
    {
        let kept = old.len() - dropped;
        if dropped > 0 && kept <= new.len() && old[dropped..] == new[..kept] {
            changes.push(kind(change::Kind::Splice(Splice {
                list: list as i32,
                start: 0,
                remove: dropped as u64,
                insert: Vec::new(),
            })));
            changes.push(kind(change::Kind::Splice(Splice {
                list: list as i32,
                start: kept as u64,
                remove: 0,
                insert: encode(&new[kept..]),
            })));
            return;
        }
    }
    let suffix = old[prefix..]
        .iter()
        .rev()
        .zip(new[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    changes.push(kind(change::Kind::Splice(Splice {
        list: list as i32,
        start: prefix as u64,
        remove: (old.len() - prefix - suffix) as u64,
        insert: encode(&new[prefix..new.len() - suffix]),
    })));
}

/// Applies a record to `state`. An error means the record does not fit the
/// state (a record of a newer format, or a state that is not the one it was
/// made against).
pub fn apply(state: &mut State, patch: Patch) -> Result<(), String> {
    if patch.format > PATCH_FORMAT {
        return Err(format!(
            "record format {} is newer than this build understands ({PATCH_FORMAT})",
            patch.format
        ));
    }
    for change in patch.changes {
        match change.kind {
            None => return Err("empty change".into()),
            Some(change::Kind::Fields(set)) => {
                apply_state_fields(&set.tags, set.values.map(|v| *v).unwrap_or_default(), state)?;
            }
            Some(change::Kind::GroupFields(set)) => {
                let groups = groups_mut(state)?;
                apply_groups_fields(
                    &set.tags,
                    set.values.map(|v| *v).unwrap_or_default(),
                    groups,
                )?;
            }
            Some(change::Kind::Splice(s)) => apply_splice(state, s)?,
            Some(change::Kind::StoragePut(p)) => {
                let storage = &mut groups_mut(state)?.mls_storage;
                match storage.binary_search_by(|e| e.key.as_slice().cmp(&p.key)) {
                    Ok(i) => storage[i].value = p.value,
                    Err(i) => storage.insert(
                        i,
                        StorageEntry {
                            key: p.key,
                            value: p.value,
                        },
                    ),
                }
            }
            Some(change::Kind::StorageDelete(key)) => {
                let storage = &mut groups_mut(state)?.mls_storage;
                match storage.binary_search_by(|e| e.key.as_slice().cmp(&key)) {
                    Ok(i) => {
                        storage.remove(i);
                    }
                    Err(_) => return Err("deletes a storage key that is not there".into()),
                }
            }
        }
    }
    Ok(())
}

fn groups_mut(state: &mut State) -> Result<&mut GroupsState, String> {
    state
        .groups
        .as_mut()
        .ok_or_else(|| "changes groups state that is not there".to_string())
}

fn apply_splice(state: &mut State, s: Splice) -> Result<(), String> {
    let list = List::try_from(s.list).map_err(|_| format!("unknown list {}", s.list))?;
    match list {
        List::Unspecified => Err("unknown list 0".into()),
        List::Contacts => splice_into(&mut state.contacts, s),
        List::Outbox => splice_into(&mut state.outbox, s),
        List::SeenMessages => splice_into(&mut state.seen_messages, s),
        List::SentLog => splice_into(&mut state.sent_log, s),
        List::Groups => splice_into(&mut groups_mut(state)?.groups, s),
        List::Deliveries => splice_into(&mut groups_mut(state)?.deliveries, s),
        List::Buffered => splice_into(&mut groups_mut(state)?.buffered, s),
        List::DirectOpened => splice_into(&mut groups_mut(state)?.direct_opened, s),
    }
}

fn splice_into<T: Message + Default>(items: &mut Vec<T>, s: Splice) -> Result<(), String> {
    let start = usize::try_from(s.start).map_err(|_| "splice out of range".to_string())?;
    let remove = usize::try_from(s.remove).map_err(|_| "splice out of range".to_string())?;
    let end = start
        .checked_add(remove)
        .filter(|end| *end <= items.len())
        .ok_or_else(|| "splice out of range".to_string())?;
    let inserted = s
        .insert
        .iter()
        .map(|bytes| T::decode(bytes.as_slice()).map_err(|e| e.to_string()))
        .collect::<Result<Vec<T>, String>>()?;
    items.splice(start..end, inserted);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::state::{Delivery, GroupEntry};
    use crate::state::{Contact, OutboxEntry, SentLogEntry};

    fn base() -> State {
        State {
            format: 1,
            device_id: vec![1; 16],
            device_secret: vec![2; 96],
            acked_seq: 5,
            contacts: (0..3)
                .map(|i| Contact {
                    box_id: vec![i; 16],
                    ..Contact::default()
                })
                .collect(),
            seen_messages: (0..10).map(|i| vec![i; 48]).collect(),
            groups: Some(GroupsState {
                mls_storage: (0..20)
                    .map(|i| StorageEntry {
                        key: vec![i * 2],
                        value: vec![i; 100],
                    })
                    .collect(),
                groups: vec![GroupEntry::default()],
                ..GroupsState::default()
            }),
            ..State::default()
        }
    }

    /// Diffs, round-trips the record through its encoding, applies it, and
    /// returns its size.
    fn check(old: &State, new: &State) -> usize {
        let patch = diff(old, new).expect("a record");
        let bytes = patch.encode_to_vec();
        let mut replayed = old.clone();
        apply(&mut replayed, Patch::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(&replayed, new);
        bytes.len()
    }

    #[test]
    fn every_kind_of_change_replays() {
        let old = base();
        assert_eq!(check(&old, &old), 2, "no change, an empty record");

        let mut new = old.clone();
        new.acked_seq = 9;
        new.last_seq = 0;
        assert!(check(&old, &new) < 20);
        let mut new = old.clone();
        new.acked_seq = 0;
        new.credentials = None;
        new.device_label = "x".into();
        check(&old, &new);

        // Contacts: changed in the middle, appended, cleared.
        let mut new = old.clone();
        new.contacts[1].blocked = true;
        check(&old, &new);
        new.contacts.push(Contact::default());
        check(&old, &new);
        new.contacts.clear();
        check(&old, &new);

        // Outbox: added, removed.
        let mut new = old.clone();
        new.outbox.push(OutboxEntry {
            message_id: vec![3; 16],
            ..OutboxEntry::default()
        });
        check(&old, &new);
        check(&new, &old);

        // Seen ids as a sliding window: a small record.
        let mut new = old.clone();
        new.seen_messages.drain(..2);
        new.seen_messages.push(vec![100; 48]);
        new.seen_messages.push(vec![101; 48]);
        assert!(check(&old, &new) < 2 * 48 + 30);

        // Storage: put (new and changed keys), delete.
        let mut new = old.clone();
        let storage = &mut new.groups.as_mut().unwrap().mls_storage;
        storage[3].value = vec![9; 10];
        storage.remove(7);
        storage.insert(
            0,
            StorageEntry {
                key: vec![0, 1],
                value: vec![1],
            },
        );
        storage.sort_by(|a, b| a.key.cmp(&b.key));
        storage.push(StorageEntry {
            key: vec![200],
            value: vec![2],
        });
        check(&old, &new);

        // Group bookkeeping.
        let mut new = old.clone();
        let groups = new.groups.as_mut().unwrap();
        groups.processed_through = 7;
        groups.deliveries.push(Delivery {
            trigger_seq: 7,
            ..Delivery::default()
        });
        groups.groups[0].server_epoch = 3;
        check(&old, &new);
    }

    #[test]
    fn the_groups_state_appearing_or_going_is_a_snapshot() {
        let old = base();
        let mut new = old.clone();
        new.groups = None;
        assert!(diff(&old, &new).is_none());
        assert!(diff(&new, &old).is_none());
    }

    #[test]
    fn records_that_do_not_fit_are_refused() {
        let old = base();
        let mut new = old.clone();
        new.outbox.push(OutboxEntry::default());
        let patch = diff(&old, &new).unwrap();
        // Applied to a state whose outbox is shorter than the record assumes.
        let mut other = old.clone();
        let mut removal = diff(&new, &old).unwrap();
        assert!(apply(&mut other, removal.clone()).is_err());
        // A newer format.
        removal.format = PATCH_FORMAT + 1;
        assert!(apply(&mut new.clone(), removal).is_err());
        // Unknown field tags.
        let bad = Patch {
            format: PATCH_FORMAT,
            changes: vec![kind(change::Kind::Fields(FieldSet {
                tags: vec![99],
                values: None,
            }))],
        };
        assert!(apply(&mut old.clone(), bad).is_err());
        // Group changes without a groups state.
        let mut bare = old.clone();
        bare.groups = None;
        let storage = Patch {
            format: PATCH_FORMAT,
            changes: vec![kind(change::Kind::StorageDelete(vec![0]))],
        };
        assert!(apply(&mut bare, storage).is_err());
        // The record fits the state it was made against.
        apply(&mut old.clone(), patch).unwrap();
    }

    /// A field added to `State` must be covered by the diff: set every field and
    /// check that a record built from a default state reproduces it.
    #[test]
    fn every_state_field_is_covered() {
        let mut full = base();
        full.device_label = "l".into();
        full.identifier = "i".into();
        full.registration_pending = true;
        full.box_id = vec![4; 16];
        full.credentials = Some(rossby_protocol::pb::Credentials::default());
        full.own_devices = Some(rossby_protocol::pb::DeviceList::default());
        full.last_seq = 6;
        full.gateway = "g".into();
        full.server_name = "s".into();
        full.service_name = "v".into();
        full.ca_cert_der = vec![5];
        full.outbox.push(OutboxEntry::default());
        full.read_receipts_off = true;
        full.sent_log.push(SentLogEntry::default());
        full.uploads = Some(crate::attachments::PendingUploads {
            uploads: vec![crate::attachments::PendingUpload::default()],
        });
        full.sealed_sender = Some(crate::sealed::SealedSenderState {
            access_secret: vec![7; 32],
            anyone: true,
            ..crate::sealed::SealedSenderState::default()
        });
        let groups = full.groups.as_mut().unwrap();
        groups.signature_public = vec![6];
        groups.processed_through = 1;
        groups.deliveries.push(Delivery::default());
        groups
            .buffered
            .push(crate::groups::state::Buffered::default());
        groups
            .direct_opened
            .push(crate::groups::state::DirectOpened::default());
        groups.key_packages_checked_at_ms = 1;
        groups.last_resort_at_ms = 1;
        groups.key_packages_used = true;
        let empty = State {
            groups: Some(GroupsState::default()),
            ..State::default()
        };
        check(&empty, &full);
        // Adding a field to either message breaks these patterns: add it to
        // `scalar_fields!` or to the splices, then here.
        let State {
            format: _,
            device_id: _,
            device_secret: _,
            device_label: _,
            identifier: _,
            registration_pending: _,
            box_id: _,
            credentials: _,
            own_devices: _,
            contacts: _,
            acked_seq: _,
            last_seq: _,
            gateway: _,
            server_name: _,
            service_name: _,
            ca_cert_der: _,
            outbox: _,
            seen_messages: _,
            groups: _,
            read_receipts_off: _,
            sent_log: _,
            uploads: _,
            sealed_sender: _,
        } = full;
        let GroupsState {
            signature_public: _,
            mls_storage: _,
            groups: _,
            processed_through: _,
            deliveries: _,
            buffered: _,
            key_packages_checked_at_ms: _,
            last_resort_at_ms: _,
            key_packages_used: _,
            direct_opened: _,
        } = GroupsState::default();
    }
}
