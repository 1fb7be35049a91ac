//! Behaviour of the domain tables, run on the memory backend (snapshot isolation,
//! like TiKV) and on fjall (serializable, persistent).

mod backends;
mod support;

use backends::{T0, device_record};
use rossby_keyspace::{
    BoxId, DeviceId, ExpiryEntry, Identifier, Key, LookupHasher, MessageId, Pepper, RegionId, Table,
};
use rossby_storage::kv::{Error as KvError, transact as kv_transact};
use rossby_storage::tables::accounts::{self, SettingsUpdate};
use rossby_storage::tables::contacts::{self, Relationship};
use rossby_storage::tables::queue::{self, FetchLimits, NewEnvelope, Sender};
use rossby_storage::tables::records::{AcceptFrom, Marker, QueueHead};
use rossby_storage::tables::records::{IdentRecord, PendingIdentifier, PendingRegistration};
use rossby_storage::tables::{
    Limits, Record, Store, Tx, code_budgets, devices, identifiers, keypackages, lifecycle, lookup,
    registrations,
};
use rossby_storage::{Error, ScanOrder, transact};
use std::collections::BTreeSet;

const REGION: RegionId = RegionId(1);

backends::on_every_backend!(
    identifiers_bind_once_and_resolve_from_any_spelling,
    pepper_rotation_migrates_lazily,
    hidden_and_blocking_users_look_unknown,
    new_device_pointer_starts_at_the_last_sequence,
    messages_reach_every_device_and_are_deleted_when_all_acked,
    retried_sends_are_answered_from_dedup,
    a_full_queue_refuses_more_until_devices_acknowledge,
    stale_device_lists_are_rejected_with_the_current_list,
    acks_are_monotonic_idempotent_and_bounded,
    removing_a_device_deletes_its_pointer_and_frees_the_queue,
    retention_expires_messages_and_reports_gaps,
    an_expiry_batch_expires_dedup_records_then_envelopes,
    an_acknowledged_batch_leaves_the_index_with_its_dedup_records,
    expiry_entries_of_the_older_layout_are_still_swept,
    fetch_is_bounded_by_count_and_bytes,
    key_wraps_must_match_the_current_devices,
    key_packages_are_claimed_once_then_last_resort,
    concurrent_claims_never_hand_out_a_package_twice,
    settings_control_who_may_send,
    sealed_senders_need_the_access_key_and_leave_no_trace,
    expired_registrations_are_swept_per_region_in_bounded_steps,
    code_budgets_are_spent_together_or_not_at_all,
    account_deletion_removes_everything,
    interrupted_purges_are_resumed,
    deletion_racing_with_sends_leaves_nothing_behind,
    bad_input_is_rejected_and_changes_nothing,
    a_corrupt_queue_head_is_reported_not_wrapped,
    expiry_never_brings_a_purged_box_back,
    an_expiry_racing_with_a_purge_conflicts,
    writes_racing_with_a_removal_or_deletion_conflict,
    concurrent_inserts_cannot_exceed_a_quota,
    several_identifiers_are_bound_listed_and_removed,
    undiscoverable_identifiers_look_unknown,
    concurrent_removals_keep_the_last_identifier,
    identifier_entries_from_before_sealing_are_listed_and_healed,
    pepper_rotation_keeps_the_sealed_identifier_and_flag,
    pending_identifier_additions_are_counted_bounded_and_deleted_with_the_account,
    concurrent_binds_keep_one_owner_and_the_quota,
);

/// Creates a box with `n` authorized devices.
async fn new_box(store: &Store, n: usize) -> (BoxId, Vec<DeviceId>) {
    backends::new_box(store, REGION, n).await
}

async fn version(store: &Store, b: BoxId) -> u64 {
    transact!(store, |txn| Ok(devices::recipients(txn, b).await?.0)).unwrap()
}

fn envelope(from: BoxId, device: DeviceId, version: u64, payload: &[u8]) -> NewEnvelope {
    NewEnvelope {
        sender: Sender::Device {
            box_id: from,
            device_id: device,
            identity_key: Some([7; 32]),
        },
        message_id: MessageId::new(),
        device_list_version: version,
        payload: payload.to_vec(),
        wrapped_for: None,
    }
}

/// Sends one message and returns its sequence number.
async fn send(store: &Store, from: (BoxId, DeviceId), to: BoxId, payload: &[u8], now: u64) -> u64 {
    let v = version(store, to).await;
    let out = store
        .enqueue(to, &[envelope(from.0, from.1, v, payload)], now)
        .await
        .unwrap();
    match &out[..] {
        [Ok(e)] => e.seq,
        other => panic!("send failed: {other:?}"),
    }
}

async fn fetch_seqs(store: &Store, b: BoxId, d: DeviceId) -> Vec<u64> {
    let f = store.fetch(b, d, FetchLimits::default()).await.unwrap();
    f.envelopes.iter().map(|e| e.seq).collect()
}

async fn queue_len(store: &Store, b: BoxId) -> usize {
    transact!(store, |txn| {
        Ok(txn
            .scan(
                &Key::table_range(b, Table::Queue),
                10_000,
                ScanOrder::Forward,
            )
            .await?
            .len())
    })
    .unwrap()
}

async fn identifiers_bind_once_and_resolve_from_any_spelling(store: &Store) {
    let (a, _) = new_box(store, 1).await;
    let (b, _) = new_box(store, 1).await;
    let phone = Identifier::phone("+1 (415) 555-0123").unwrap();
    let h = &store.hasher;
    transact!(store, |txn| lookup::bind(txn, h, &phone, a, T0).await).unwrap();
    // Binding again to the same box is a no-op; to another box it is refused.
    transact!(store, |txn| lookup::bind(txn, h, &phone, a, T0).await).unwrap();
    let err = transact!(store, |txn| lookup::bind(txn, h, &phone, b, T0).await).unwrap_err();
    assert!(matches!(err, Error::AlreadyRegistered), "{err}");
    let other_spelling = Identifier::phone("0014155550123").unwrap();
    let found = transact!(store, |txn| lookup::resolve(txn, h, &other_spelling, T0)
        .await)
    .unwrap();
    assert_eq!(found, Some(a));
    let unknown = Identifier::email("nobody@example.com").unwrap();
    assert_eq!(
        transact!(store, |txn| lookup::resolve(txn, h, &unknown, T0).await).unwrap(),
        None
    );
    assert!(transact!(store, |txn| lookup::unbind(txn, h, &phone, a).await).unwrap());
    transact!(store, |txn| lookup::bind(txn, h, &phone, b, T0).await).unwrap();
    assert_eq!(
        transact!(store, |txn| lookup::resolve(txn, h, &phone, T0).await).unwrap(),
        Some(b)
    );
}

async fn pepper_rotation_migrates_lazily(store: &Store) {
    let (a, _) = new_box(store, 1).await;
    let email = Identifier::email("Alice@Example.com").unwrap();
    let old = store.hasher.clone();
    transact!(store, |txn| lookup::bind(txn, &old, &email, a, T0).await).unwrap();
    let rotated = LookupHasher::new(
        vec![
            Pepper {
                version: 1,
                secret: vec![7; 32],
            },
            Pepper {
                version: 2,
                secret: vec![9; 32],
            },
        ],
        2,
    )
    .unwrap();
    let found = transact!(store, |txn| lookup::resolve(txn, &rotated, &email, T0)
        .await)
    .unwrap();
    assert_eq!(found, Some(a));
    let v1 = old.current(&email).key().encode();
    let v2 = rotated.current(&email).key().encode();
    let (has_v1, has_v2) = kv_transact!(store.kv, &store.retry, |txn| Ok((
        txn.get(&v1).await?.is_some(),
        txn.get(&v2).await?.is_some()
    )))
    .unwrap();
    assert!(!has_v1 && has_v2, "the binding moved to the current pepper");
    // A hasher that only knows the new pepper still finds it.
    let only_new = LookupHasher::new(
        vec![Pepper {
            version: 2,
            secret: vec![9; 32],
        }],
        2,
    )
    .unwrap();
    let found = transact!(store, |txn| lookup::resolve(txn, &only_new, &email, T0)
        .await)
    .unwrap();
    assert_eq!(found, Some(a));
}

async fn hidden_and_blocking_users_look_unknown(store: &Store) {
    let (alice, _) = new_box(store, 1).await;
    let (bob, _) = new_box(store, 1).await;
    let (carol, _) = new_box(store, 1).await;
    let h = &store.hasher;
    let id = Identifier::email("alice@example.com").unwrap();
    transact!(store, |txn| lookup::bind(txn, h, &id, alice, T0).await).unwrap();
    let discover = async |who: BoxId| {
        transact!(store, |txn| lookup::discover(txn, h, &id, who, T0).await).unwrap()
    };
    assert_eq!(discover(bob).await, Some(alice));
    transact!(store, |txn| contacts::add(
        txn,
        &store.limits,
        Relationship::Block,
        alice,
        bob,
        T0
    )
    .await)
    .unwrap();
    assert_eq!(discover(bob).await, None);
    assert_eq!(discover(carol).await, Some(alice));
    let hide = SettingsUpdate {
        hidden: Some(true),
        ..SettingsUpdate::default()
    };
    transact!(store, |txn| accounts::update_settings(
        txn, alice, &hide, T0
    )
    .await)
    .unwrap();
    assert_eq!(discover(carol).await, None);
    assert_eq!(
        discover(alice).await,
        Some(alice),
        "owners always find themselves"
    );
}

async fn new_device_pointer_starts_at_the_last_sequence(store: &Store) {
    let (b, devs) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    for i in 0..3u8 {
        send(store, (s, sd[0]), b, &[i], T0).await;
    }
    let late = DeviceId::new();
    let v_before = version(store, b).await;
    let v_added = transact!(store, |txn| devices::add(
        txn,
        &store.limits,
        b,
        late,
        &device_record(),
        T0
    )
    .await)
    .unwrap();
    assert!(
        v_added > v_before,
        "adding a device bumps the device-list version"
    );
    assert!(fetch_seqs(store, b, late).await.is_empty());
    let seq = send(store, (s, sd[0]), b, b"after", T0).await;
    assert_eq!(seq, 4);
    assert_eq!(fetch_seqs(store, b, late).await, vec![4]);
    assert_eq!(fetch_seqs(store, b, devs[0]).await, vec![1, 2, 3, 4]);
}

async fn messages_reach_every_device_and_are_deleted_when_all_acked(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    let (s, sd) = new_box(store, 1).await;
    for i in 1..=3u64 {
        assert_eq!(send(store, (s, sd[0]), b, &[i as u8; 10], T0).await, i);
    }
    for dev in &d {
        let f = store.fetch(b, *dev, FetchLimits::default()).await.unwrap();
        assert_eq!(
            f.envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(f.envelopes[1].envelope.payload, vec![2u8; 10]);
        assert_eq!(f.last_seq, 3);
        assert!(!f.more());
    }
    let acked = store.ack(b, d[0], 3, T0).await.unwrap();
    assert_eq!(
        (acked.acked, acked.deleted),
        (3, 0),
        "the other device still needs them"
    );
    assert_eq!(queue_len(store, b).await, 3);
    assert!(fetch_seqs(store, b, d[0]).await.is_empty());
    let acked = store.ack(b, d[1], 2, T0).await.unwrap();
    assert_eq!(acked.deleted, 2);
    assert_eq!(fetch_seqs(store, b, d[1]).await, vec![3]);
    store.ack(b, d[1], 3, T0).await.unwrap();
    assert_eq!(queue_len(store, b).await, 0);
    // Sequence numbers keep growing after cleanup.
    assert_eq!(send(store, (s, sd[0]), b, b"x", T0).await, 4);
}

async fn a_full_queue_refuses_more_until_devices_acknowledge(store: &Store) {
    let mut limited = store.clone();
    limited.limits.max_queue_envelopes = 3;
    let store = &limited;
    let (b, d) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    let v = version(store, b).await;
    let full = |out: &[Result<queue::Enqueued, Error>]| matches!(&out[0], Err(Error::QuotaExceeded(why)) if why.contains("queue is full"));
    let first = envelope(s, sd[0], v, b"one");
    for payload in [&b"two"[..], b"three"] {
        send(store, (s, sd[0]), b, payload, T0).await;
    }
    let out = store
        .enqueue(b, std::slice::from_ref(&first), T0)
        .await
        .unwrap();
    assert!(out[0].is_ok(), "the third fits");
    let out = store
        .enqueue(b, &[envelope(s, sd[0], v, b"four")], T0)
        .await
        .unwrap();
    assert!(full(&out), "{out:?}");
    // A retry of a stored message is still answered from its dedup record.
    let again = store
        .enqueue(b, std::slice::from_ref(&first), T0)
        .await
        .unwrap();
    assert!(again[0].as_ref().unwrap().duplicate);
    // Once the device acknowledged two, two more fit, and no more.
    store.ack(b, d[0], 2, T0).await.unwrap();
    for payload in [&b"five"[..], b"six"] {
        send(store, (s, sd[0]), b, payload, T0).await;
    }
    let out = store
        .enqueue(b, &[envelope(s, sd[0], v, b"seven")], T0)
        .await
        .unwrap();
    assert!(full(&out));

    // The byte budget: room for about two envelopes of 1000 bytes.
    let mut by_bytes = store.clone();
    by_bytes.limits.max_queue_envelopes = 1000;
    by_bytes.limits.max_queue_bytes = 2 * 1000 + 400;
    let store = &by_bytes;
    let (c, cd) = new_box(store, 1).await;
    let v = version(store, c).await;
    let big = vec![7u8; 1000];
    let batch = [
        envelope(s, sd[0], v, &big),
        envelope(s, sd[0], v, &big),
        envelope(s, sd[0], v, &big),
    ];
    let out = store.enqueue(c, &batch, T0).await.unwrap();
    assert!(out[0].is_ok() && out[1].is_ok(), "{out:?}");
    assert!(full(&out[2..]), "{out:?}");
    // Small ones still fit in what is left.
    send(store, (s, sd[0]), c, b"small", T0).await;
    store.ack(c, cd[0], 3, T0).await.unwrap();
    let out = store.enqueue(c, &batch[2..], T0).await.unwrap();
    assert!(
        out[0].is_ok(),
        "room again after the acknowledgement: {out:?}"
    );
}

async fn retried_sends_are_answered_from_dedup(store: &Store) {
    let (b, _) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    let v = version(store, b).await;
    let env = envelope(s, sd[0], v, b"hello");
    let first = store
        .enqueue(b, std::slice::from_ref(&env), T0)
        .await
        .unwrap();
    let again = store
        .enqueue(b, std::slice::from_ref(&env), T0 + 1000)
        .await
        .unwrap();
    let (first, again) = (first[0].as_ref().unwrap(), again[0].as_ref().unwrap());
    assert_eq!(first.seq, again.seq);
    assert!(!first.duplicate && again.duplicate);
    // Duplicates inside one batch get the same sequence number too.
    let other = envelope(s, sd[0], v, b"second");
    let batch = store
        .enqueue(b, &[other.clone(), other.clone()], T0)
        .await
        .unwrap();
    let seqs: Vec<u64> = batch.iter().map(|r| r.as_ref().unwrap().seq).collect();
    assert_eq!(seqs, vec![2, 2]);
    assert_eq!(queue_len(store, b).await, 2);
    // The same message id from another device is a different message.
    let mut from_other_device = env.clone();
    from_other_device.sender = Sender::Device {
        box_id: s,
        device_id: DeviceId::new(),
        identity_key: Some([7; 32]),
    };
    let out = store.enqueue(b, &[from_other_device], T0).await.unwrap();
    assert_eq!(out[0].as_ref().unwrap().seq, 3);
    // After the dedup window the record is swept and a resend is a new message.
    let after_window = T0 + store.limits.dedup_window_ms + 1;
    let swept = store.sweep(REGION, after_window, 100).await.unwrap();
    assert!(swept.dedups >= 3, "{swept:?}");
    let late = store.enqueue(b, &[env], after_window).await.unwrap();
    assert_eq!(late[0].as_ref().unwrap().seq, 4);
}

async fn stale_device_lists_are_rejected_with_the_current_list(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    let old = version(store, b).await;
    let added = DeviceId::new();
    transact!(store, |txn| {
        devices::add(txn, &store.limits, b, added, &device_record(), T0).await?;
        devices::authorize(txn, b, added, T0).await
    })
    .unwrap();
    let out = store
        .enqueue(b, &[envelope(s, sd[0], old, b"x")], T0)
        .await
        .unwrap();
    match &out[0] {
        Err(Error::StaleDeviceList {
            box_id,
            version,
            devices,
        }) => {
            assert_eq!(*box_id, b);
            assert!(*version > old);
            let got: BTreeSet<_> = devices.iter().copied().collect();
            assert_eq!(got, BTreeSet::from([d[0], added]));
        }
        other => panic!("expected StaleDeviceList, got {other:?}"),
    }
    assert_eq!(queue_len(store, b).await, 0, "nothing was enqueued");
}

async fn acks_are_monotonic_idempotent_and_bounded(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    let (s, sd) = new_box(store, 1).await;
    for i in 0..5u8 {
        send(store, (s, sd[0]), b, &[i], T0).await;
    }
    assert_eq!(store.ack(b, d[0], 3, T0).await.unwrap().acked, 3);
    assert_eq!(
        store.ack(b, d[0], 2, T0).await.unwrap().acked,
        3,
        "never backwards"
    );
    assert_eq!(
        store.ack(b, d[0], 3, T0).await.unwrap().acked,
        3,
        "idempotent"
    );
    match store.ack(b, d[0], 6, T0).await {
        Err(Error::AckBeyondLast {
            requested: 6,
            last: 5,
        }) => {}
        other => panic!("expected AckBeyondLast, got {other:?}"),
    }
    assert_eq!(
        fetch_seqs(store, b, d[0]).await,
        vec![4, 5],
        "a rejected ack changes nothing"
    );
    assert!(matches!(
        store.ack(b, DeviceId::new(), 1, T0).await,
        Err(Error::DeviceNotFound)
    ));
}

async fn removing_a_device_deletes_its_pointer_and_frees_the_queue(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    let (s, sd) = new_box(store, 1).await;
    for i in 0..4u8 {
        send(store, (s, sd[0]), b, &[i], T0).await;
    }
    store.ack(b, d[0], 4, T0).await.unwrap();
    assert_eq!(
        queue_len(store, b).await,
        4,
        "the lagging device keeps them"
    );
    let v = transact!(store, |txn| lifecycle::remove_device(
        txn,
        &store.limits,
        b,
        d[1]
    )
    .await)
    .unwrap();
    assert!(v > 0);
    assert_eq!(queue_len(store, b).await, 0, "nobody needs them anymore");
    assert!(matches!(
        store.fetch(b, d[1], FetchLimits::default()).await,
        Err(Error::DeviceNotFound)
    ));
    let pointers = transact!(store, |txn| devices::pointers(txn, b).await).unwrap();
    assert_eq!(
        pointers.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![d[0]]
    );
    let err = transact!(store, |txn| lifecycle::remove_device(
        txn,
        &store.limits,
        b,
        d[1]
    )
    .await)
    .unwrap_err();
    assert!(matches!(err, Error::DeviceNotFound));
}

async fn retention_expires_messages_and_reports_gaps(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    let (s, sd) = new_box(store, 1).await;
    send(store, (s, sd[0]), b, b"old-1", T0).await;
    send(store, (s, sd[0]), b, b"old-2", T0 + 10).await;
    let later = T0 + store.limits.retention_ms / 2;
    send(store, (s, sd[0]), b, b"new", later).await;
    store.ack(b, d[0], 3, T0).await.unwrap();
    let sweep_at = T0 + store.limits.retention_ms + 100;
    let swept = store.sweep(REGION, sweep_at, 1).await.unwrap();
    assert_eq!(swept.envelopes, 2, "{swept:?}");
    let f = store.fetch(b, d[1], FetchLimits::default()).await.unwrap();
    assert_eq!(f.gap, Some(queue::Gap { from: 1, to: 2 }));
    assert_eq!(
        f.envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3]
    );
    // Acknowledging inside the expired range is valid and closes the gap.
    store.ack(b, d[1], 2, T0).await.unwrap();
    let f = store.fetch(b, d[1], FetchLimits::default()).await.unwrap();
    assert_eq!(f.gap, None);
    // A second sweep finds nothing more to do.
    assert_eq!(
        store.sweep(REGION, sweep_at, 10).await.unwrap().envelopes,
        0
    );
}

/// The expiry index entries of box `b`, as (due at, entry), in index order.
async fn index_of(store: &Store, b: BoxId) -> Vec<(u64, ExpiryEntry)> {
    let shard = rossby_keyspace::keys::expiry_shard(b);
    let range = Key::expiry_due(REGION, shard, u64::MAX);
    let all = kv_transact!(store.kv, &store.retry, |txn| txn
        .scan(&range, 10_000, ScanOrder::Forward)
        .await)
    .unwrap();
    all.iter()
        .filter_map(|(k, _)| match Key::decode(k) {
            Ok(Key::Expiry {
                box_id,
                expires_at_ms,
                entry,
                ..
            }) if box_id == b => Some((expires_at_ms, entry)),
            _ => None,
        })
        .collect()
}

fn expiry(b: BoxId, at: u64, entry: ExpiryEntry) -> Key {
    Key::Expiry {
        shard: rossby_keyspace::keys::expiry_shard(b),
        expires_at_ms: at,
        box_id: b,
        entry,
    }
}

/// One index entry per enqueue transaction: its dedup records go when their
/// window ends, its envelopes when their retention does, each exactly then.
async fn an_expiry_batch_expires_dedup_records_then_envelopes(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    let v = version(store, b).await;
    let (window, retention) = (store.limits.dedup_window_ms, store.limits.retention_ms);
    let first = envelope(s, sd[0], v, b"one");
    let batch = [first.clone(), envelope(s, sd[0], v, b"two")];
    let out = store.enqueue(b, &batch, T0).await.unwrap();
    assert_eq!(out[1].as_ref().unwrap().seq, 2);
    assert_eq!(
        index_of(store, b).await,
        vec![(T0 + window, ExpiryEntry::Batch(2))]
    );
    // Sent again after its window, before any sweep: a new message, whose dedup
    // record replaces the expired one.
    let late = T0 + window + 1;
    let again = store
        .enqueue(b, std::slice::from_ref(&first), late)
        .await
        .unwrap();
    assert_eq!(again[0].as_ref().unwrap().seq, 3);
    assert!(!again[0].as_ref().unwrap().duplicate);
    let swept = store.sweep(REGION, late + 1, 100).await.unwrap();
    assert_eq!((swept.dedups, swept.envelopes), (1, 0), "{swept:?}");
    // The re-created record survived the first batch's sweep.
    let retry = store
        .enqueue(b, std::slice::from_ref(&first), late + 2)
        .await
        .unwrap();
    assert_eq!(retry[0].as_ref().unwrap().seq, 3);
    assert!(retry[0].as_ref().unwrap().duplicate);
    // The first batch's envelopes wait for their retention under a plain entry.
    assert_eq!(
        index_of(store, b).await,
        vec![
            (late + window, ExpiryEntry::Batch(3)),
            (T0 + retention, ExpiryEntry::Message(2)),
        ]
    );
    assert_eq!(fetch_seqs(store, b, d[0]).await, vec![1, 2, 3]);
    // The second batch's dedup record is due; the first one's envelopes are not
    // a millisecond early.
    let swept = store.sweep(REGION, T0 + retention, 100).await.unwrap();
    assert_eq!((swept.envelopes, swept.dedups), (0, 1), "{swept:?}");
    let swept = store.sweep(REGION, T0 + retention + 1, 100).await.unwrap();
    assert_eq!((swept.envelopes, swept.dedups), (2, 0), "{swept:?}");
    assert_eq!(
        index_of(store, b).await,
        vec![(late + retention, ExpiryEntry::Message(3))]
    );
    let f = store.fetch(b, d[0], FetchLimits::default()).await.unwrap();
    assert_eq!(f.gap, Some(queue::Gap { from: 1, to: 2 }));
    let swept = store
        .sweep(REGION, late + retention + 1, 100)
        .await
        .unwrap();
    assert_eq!(swept.envelopes, 1, "{swept:?}");
    assert_eq!(index_of(store, b).await, vec![]);
    assert_eq!(queue_len(store, b).await, 0);
    let dedups = transact!(store, |txn| {
        Ok(txn
            .scan(&Key::table_range(b, Table::Dedup), 10, ScanOrder::Forward)
            .await?
            .len())
    })
    .unwrap();
    assert_eq!(dedups, 0);
}

/// Envelopes every device acknowledged are gone before their dedup window ends;
/// the batch's entry then has nothing left to file again.
async fn an_acknowledged_batch_leaves_the_index_with_its_dedup_records(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    let v = version(store, b).await;
    let window = store.limits.dedup_window_ms;
    let batch = [envelope(s, sd[0], v, b"1"), envelope(s, sd[0], v, b"2")];
    store.enqueue(b, &batch, T0).await.unwrap();
    assert_eq!(store.ack(b, d[0], 2, T0).await.unwrap().deleted, 2);
    let swept = store.sweep(REGION, T0 + window + 1, 100).await.unwrap();
    assert_eq!(
        (swept.entries, swept.dedups, swept.envelopes),
        (1, 2, 0),
        "{swept:?}"
    );
    assert_eq!(index_of(store, b).await, vec![]);
}

/// Stores written before batch entries have one message and one dedup entry
/// per envelope (with `Marker` values); the sweep still handles them.
async fn expiry_entries_of_the_older_layout_are_still_swept(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    let v = version(store, b).await;
    let (window, retention) = (store.limits.dedup_window_ms, store.limits.retention_ms);
    let env = envelope(s, sd[0], v, b"old");
    let seq = send_envelope(store, b, &env, T0).await;
    let marker = Marker { at_ms: T0 }.to_stored();
    let dedup_entry = ExpiryEntry::Dedup(sd[0], env.message_id);
    kv_transact!(store.kv, &store.retry, |txn| {
        txn.delete(expiry(b, T0 + window, ExpiryEntry::Batch(seq)).encode())
            .await?;
        txn.put(
            expiry(b, T0 + retention, ExpiryEntry::Message(seq)).encode(),
            marker.clone(),
        )
        .await?;
        txn.put(expiry(b, T0 + window, dedup_entry).encode(), marker.clone())
            .await
    })
    .unwrap();
    let swept = store.sweep(REGION, T0 + window + 1, 100).await.unwrap();
    assert_eq!((swept.entries, swept.dedups, swept.envelopes), (1, 1, 0));
    let dedup_left = kv_transact!(store.kv, &store.retry, |txn| txn
        .get(&Key::Dedup(b, sd[0], env.message_id).encode())
        .await)
    .unwrap();
    assert_eq!(dedup_left, None);
    assert_eq!(
        index_of(store, b).await,
        vec![(T0 + retention, ExpiryEntry::Message(seq))]
    );
    assert_eq!(fetch_seqs(store, b, d[0]).await, vec![seq]);
    let swept = store.sweep(REGION, T0 + retention + 1, 100).await.unwrap();
    assert_eq!((swept.entries, swept.envelopes), (1, 1));
    assert_eq!(index_of(store, b).await, vec![]);
    assert_eq!(queue_len(store, b).await, 0);
}

async fn send_envelope(store: &Store, to: BoxId, env: &NewEnvelope, now: u64) -> u64 {
    let out = store
        .enqueue(to, std::slice::from_ref(env), now)
        .await
        .unwrap();
    match &out[..] {
        [Ok(e)] if !e.duplicate => e.seq,
        other => panic!("send failed: {other:?}"),
    }
}

async fn key_wraps_must_match_the_current_devices(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    let (s, sd) = new_box(store, 1).await;
    let v = version(store, b).await;
    let with_wraps = |from: (BoxId, DeviceId), wraps: Vec<DeviceId>| NewEnvelope {
        wrapped_for: Some(wraps),
        ..envelope(from.0, from.1, v, b"x")
    };
    let outcome =
        |env: NewEnvelope| async move { store.enqueue(b, &[env], T0).await.unwrap().remove(0) };
    // Another box: exactly both devices, in any order.
    for wraps in [
        vec![d[0]],
        vec![d[0], d[1], DeviceId::new()],
        vec![d[0], d[1], d[1]],
    ] {
        let out = outcome(with_wraps((s, sd[0]), wraps)).await;
        assert!(
            matches!(out, Err(Error::KeyWrapsMismatch { .. })),
            "{out:?}"
        );
    }
    assert!(
        outcome(with_wraps((s, sd[0]), vec![d[1], d[0]]))
            .await
            .is_ok()
    );
    // The own box: every device but the sending one.
    let own = outcome(with_wraps((b, d[0]), vec![d[0], d[1]])).await;
    match own {
        Err(Error::KeyWrapsMismatch { unexpected, .. }) => assert_eq!(unexpected, vec![d[0]]),
        other => panic!("{other:?}"),
    }
    assert!(outcome(with_wraps((b, d[0]), vec![d[1]])).await.is_ok());
    // A removed device leaves the list the wraps are checked against.
    transact!(store, |txn| lifecycle::remove_device(
        txn,
        &store.limits,
        b,
        d[1]
    )
    .await)
    .unwrap();
    let v = version(store, b).await;
    let env = NewEnvelope {
        wrapped_for: Some(vec![d[0]]),
        ..envelope(s, sd[0], v, b"y")
    };
    assert!(outcome(env).await.is_ok());
}

async fn fetch_is_bounded_by_count_and_bytes(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    for _ in 0..10 {
        send(store, (s, sd[0]), b, &[0; 100], T0).await;
    }
    let f = store
        .fetch(
            b,
            d[0],
            FetchLimits {
                max_count: 4,
                max_bytes: 1 << 20,
            },
        )
        .await
        .unwrap();
    assert_eq!(f.envelopes.len(), 4);
    assert!(f.more());
    // Every envelope names its sender and the key it was accepted under.
    for e in &f.envelopes {
        assert_eq!(e.envelope.sender_box, s.as_bytes());
        assert_eq!(e.envelope.sender_identity_key, [7; 32]);
    }
    let f = store
        .fetch(
            b,
            d[0],
            FetchLimits {
                max_count: 100,
                max_bytes: 250,
            },
        )
        .await
        .unwrap();
    assert_eq!(f.envelopes.len(), 2);
    let f = store
        .fetch(
            b,
            d[0],
            FetchLimits {
                max_count: 100,
                max_bytes: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        f.envelopes.len(),
        1,
        "one envelope always fits, so a device makes progress"
    );
    let f = store
        .fetch(
            b,
            d[0],
            FetchLimits {
                max_count: 0,
                max_bytes: 10,
            },
        )
        .await
        .unwrap();
    assert!(f.envelopes.is_empty());
}

async fn key_packages_are_claimed_once_then_last_resort(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let packages: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 50]).collect();
    let n = transact!(store, |txn| {
        keypackages::publish(txn, &store.limits, b, d[0], &packages, Some(&[9; 50]), T0).await
    })
    .unwrap();
    assert_eq!(n, 3);
    // Publishing the same package again stores it once.
    let n = transact!(store, |txn| {
        keypackages::publish(txn, &store.limits, b, d[0], &packages[..1], None, T0).await
    })
    .unwrap();
    assert_eq!(n, 3);
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let c = transact!(store, |txn| keypackages::claim(txn, b, d[0], T0).await)
            .unwrap()
            .unwrap();
        assert!(!c.last_resort);
        assert!(seen.insert(c.data));
    }
    for _ in 0..2 {
        let c = transact!(store, |txn| keypackages::claim(txn, b, d[0], T0).await)
            .unwrap()
            .unwrap();
        assert!(c.last_resort);
        assert_eq!(c.data, vec![9; 50]);
    }
    let all = transact!(store, |txn| keypackages::claim_for_box(txn, b, T0).await).unwrap();
    assert_eq!(all.len(), 1);
    // A publish re-issued after its first run was applied and a package claimed
    // (an unknown outcome, retried) does not store the claimed package again.
    let n = transact!(store, |txn| {
        keypackages::publish(txn, &store.limits, b, d[0], &packages, None, T0 + 1).await
    })
    .unwrap();
    assert_eq!(n, 0, "claimed packages were stored again");
    let c = transact!(store, |txn| keypackages::claim(txn, b, d[0], T0 + 2).await)
        .unwrap()
        .unwrap();
    assert!(c.last_resort, "a claimed package was handed out twice");
    // Once the dedup window has passed, the markers go and the bytes count as new.
    let later = T0 + store.limits.dedup_window_ms + 2;
    let n = transact!(store, |txn| {
        keypackages::publish(txn, &store.limits, b, d[0], &packages[..1], None, later).await
    })
    .unwrap();
    assert_eq!(n, 1);
    let markers = kv_transact!(store.kv, &store.retry, |txn| txn
        .scan(
            &Key::claimed_key_package_range(b, d[0]),
            10,
            ScanOrder::Forward
        )
        .await)
    .unwrap();
    assert!(
        markers.is_empty(),
        "{} stale claim markers left",
        markers.len()
    );
}

async fn concurrent_claims_never_hand_out_a_package_twice(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let packages: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 20]).collect();
    transact!(store, |txn| {
        keypackages::publish(txn, &store.limits, b, d[0], &packages, Some(&[99; 20]), T0).await
    })
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        let dev = d[0];
        tasks.push(tokio::spawn(async move {
            transact!(store, |txn| keypackages::claim(txn, b, dev, T0).await)
        }));
    }
    let mut regular = Vec::new();
    let mut last_resort = 0;
    for t in tasks {
        let c = t.await.unwrap().unwrap().unwrap();
        if c.last_resort {
            last_resort += 1
        } else {
            regular.push(c.data)
        }
    }
    let distinct: BTreeSet<_> = regular.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        regular.len(),
        "a package was handed out twice"
    );
    assert_eq!(regular.len(), 10);
    assert_eq!(last_resort, 6);
}

fn sealed(access_key: [u8; 16], version: u64, payload: &[u8]) -> NewEnvelope {
    NewEnvelope {
        sender: Sender::Sealed { access_key },
        message_id: MessageId::new(),
        device_list_version: version,
        payload: payload.to_vec(),
        wrapped_for: None,
    }
}

async fn sealed_senders_need_the_access_key_and_leave_no_trace(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let (blocked, _) = new_box(store, 1).await;
    let v = version(store, b).await;
    let key = [7u8; 16];
    // No key set: sealed-sender mail is refused whatever the key.
    let out = store
        .enqueue(b, &[sealed(key, v, b"early")], T0)
        .await
        .unwrap();
    assert!(matches!(out[0], Err(Error::RecipientUnavailable)));

    let set = |key: Vec<u8>, anyone: bool| SettingsUpdate {
        sealed_sender_key: Some(key),
        sealed_sender_anyone: Some(anyone),
        ..SettingsUpdate::default()
    };
    // Keys of another length are refused and change nothing.
    let err = transact!(store, |txn| {
        accounts::update_settings(txn, b, &set(vec![1; 15], false), T0).await
    })
    .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    transact!(store, |txn| {
        accounts::update_settings(txn, b, &set(key.to_vec(), false), T0).await
    })
    .unwrap();
    // Contacts-only and a block list concern identified senders only.
    let contacts_only = SettingsUpdate {
        accept_from: Some(AcceptFrom::Contacts),
        ..SettingsUpdate::default()
    };
    transact!(store, |txn| {
        accounts::update_settings(txn, b, &contacts_only, T0).await
    })
    .unwrap();
    transact!(store, |txn| contacts::add(
        txn,
        &store.limits,
        Relationship::Block,
        b,
        blocked,
        T0
    )
    .await)
    .unwrap();

    let mut wrong = key;
    wrong[15] ^= 1;
    let good = sealed(key, v, b"sealed");
    let out = store
        .enqueue(b, &[sealed(wrong, v, b"forged"), good.clone()], T0)
        .await
        .unwrap();
    assert!(matches!(out[0], Err(Error::RecipientUnavailable)));
    let seq = out[1].as_ref().unwrap().seq;
    // A retry of the same message id is answered from the dedup record.
    let again = store
        .enqueue(b, std::slice::from_ref(&good), T0 + 1)
        .await
        .unwrap();
    assert_eq!(again[0].as_ref().unwrap().seq, seq);
    assert!(again[0].as_ref().unwrap().duplicate);
    // A stale device list is reported as for anyone.
    let out = store
        .enqueue(b, &[sealed(key, v + 1, b"stale")], T0)
        .await
        .unwrap();
    assert!(matches!(out[0], Err(Error::StaleDeviceList { .. })));

    // The stored envelope names nobody.
    let fetched = store.fetch(b, d[0], FetchLimits::default()).await.unwrap();
    assert_eq!(fetched.envelopes.len(), 1);
    let stored = &fetched.envelopes[0].envelope;
    assert!(stored.sender_box.is_empty() && stored.sender_device.is_empty());
    assert!(stored.sender_identity_key.is_empty());
    assert_eq!(stored.payload, b"sealed");

    // "Anyone" takes any key; turning it off and clearing the key refuses all.
    transact!(store, |txn| {
        accounts::update_settings(txn, b, &set(Vec::new(), true), T0).await
    })
    .unwrap();
    let out = store
        .enqueue(b, &[sealed(wrong, v, b"any")], T0)
        .await
        .unwrap();
    assert!(out[0].is_ok());
    transact!(store, |txn| {
        accounts::update_settings(txn, b, &set(Vec::new(), false), T0).await
    })
    .unwrap();
    let out = store
        .enqueue(b, &[sealed(key, v, b"off")], T0)
        .await
        .unwrap();
    assert!(matches!(out[0], Err(Error::RecipientUnavailable)));
}

async fn expired_registrations_are_swept_per_region_in_bounded_steps(store: &Store) {
    // (expires at, requested region): region 0 is any region's.
    let cases = [
        (T0 - 1, 1u32, false),
        (T0 - 1, 0, false),
        (T0 + 1, 1, true),
        (T0 - 1, 2, true),
        (T0, 1, false),
    ];
    let mut digests = Vec::new();
    for (n, (expires, region, _)) in cases.iter().enumerate() {
        let id = Identifier::parse(&format!("pending{n}@example.com")).unwrap();
        let digest = store.hasher.current(&id);
        let record = PendingRegistration {
            expires_at_ms: *expires,
            region: *region,
            ..PendingRegistration::default()
        };
        transact!(store, |txn| registrations::store_pending(
            txn,
            &digest,
            DeviceId::UNIDENTIFIED,
            &record
        )
        .await)
        .unwrap();
        digests.push(digest);
    }
    // Two per step: the cursor walks the whole range.
    let mut from: Option<Vec<u8>> = None;
    let mut deleted = 0;
    let mut steps = 0;
    loop {
        let swept = store
            .sweep_registrations(REGION, T0, from.as_deref(), 2)
            .await
            .unwrap();
        deleted += swept.deleted;
        steps += 1;
        match swept.next {
            Some(next) => from = Some(next),
            None => break,
        }
    }
    assert_eq!(deleted, 3);
    assert!(steps >= 3, "bounded steps: {steps}");
    for (digest, (_, _, kept)) in digests.iter().zip(cases) {
        let left = transact!(store, |txn| registrations::pending(
            txn,
            digest,
            DeviceId::UNIDENTIFIED
        )
        .await)
        .unwrap();
        assert_eq!(left.is_some(), kept);
    }
}

async fn code_budgets_are_spent_together_or_not_at_all(store: &Store) {
    use code_budgets::Budget;
    const HOUR: u64 = 3_600_000;
    let budgets = |prefix: &str| {
        vec![
            Budget {
                scope: "all".into(),
                limit: 5,
            },
            Budget {
                scope: format!("prefix:{prefix}"),
                limit: 2,
            },
        ]
    };
    let spend = |b: Vec<Budget>, now: u64| async move {
        transact!(store, |txn| code_budgets::spend(txn, &b, now, HOUR).await).unwrap()
    };
    let spent = |scope: &'static str, now: u64| async move {
        transact!(store, |txn| code_budgets::spent(txn, scope, now, HOUR)
            .await)
        .unwrap()
    };
    let t = 10 * HOUR;
    assert_eq!(spend(budgets("+14155"), t).await, None);
    assert_eq!(spend(budgets("+14155"), t + 1).await, None);
    // The prefix is spent: refused, and the global budget is not charged.
    assert_eq!(spend(budgets("+14155"), t + 2).await, Some(1));
    assert_eq!(spent("all", t + 2).await, 2);
    // Other prefixes share the global budget until it is spent.
    assert_eq!(spend(budgets("+44207"), t + 3).await, None);
    assert_eq!(spend(budgets("+44207"), t + 4).await, None);
    assert_eq!(spend(budgets("+33144"), t + 5).await, None);
    assert_eq!(spend(budgets("+33144"), t + 6).await, Some(0));
    assert_eq!(spent("all", t + 6).await, 5);
    // A new window starts from nothing.
    assert_eq!(spend(budgets("+14155"), t + HOUR).await, None);
    assert_eq!(spent("all", t + HOUR).await, 1);
}

async fn settings_control_who_may_send(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let (friend, fd) = new_box(store, 1).await;
    let (stranger, sd) = new_box(store, 1).await;
    let contacts_only = SettingsUpdate {
        accept_from: Some(AcceptFrom::Contacts),
        ..SettingsUpdate::default()
    };
    transact!(store, |txn| {
        accounts::update_settings(txn, b, &contacts_only, T0).await
    })
    .unwrap();
    transact!(store, |txn| contacts::add(
        txn,
        &store.limits,
        Relationship::Contact,
        b,
        friend,
        T0
    )
    .await)
    .unwrap();
    let v = version(store, b).await;
    let out = store
        .enqueue(
            b,
            &[
                envelope(friend, fd[0], v, b"hi"),
                envelope(stranger, sd[0], v, b"spam"),
            ],
            T0,
        )
        .await
        .unwrap();
    assert!(out[0].is_ok());
    assert!(matches!(out[1], Err(Error::RecipientUnavailable)));
    transact!(store, |txn| contacts::add(
        txn,
        &store.limits,
        Relationship::Block,
        b,
        friend,
        T0
    )
    .await)
    .unwrap();
    let out = store
        .enqueue(b, &[envelope(friend, fd[0], v, b"hi")], T0)
        .await
        .unwrap();
    assert!(matches!(out[0], Err(Error::RecipientUnavailable)));
    // The owner's own devices can always write to their box.
    let out = store
        .enqueue(b, &[envelope(b, d[0], v, b"note to self")], T0)
        .await
        .unwrap();
    assert!(out[0].is_ok());
    let blocked = transact!(store, |txn| contacts::list(txn, Relationship::Block, b, 10)
        .await)
    .unwrap();
    assert_eq!(blocked, vec![friend]);
    assert!(
        transact!(store, |txn| contacts::remove(
            txn,
            Relationship::Block,
            b,
            friend
        )
        .await)
        .unwrap()
    );
}

async fn account_deletion_removes_everything(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    let (s, sd) = new_box(store, 1).await;
    let h = &store.hasher;
    let id = Identifier::email("gone@example.com").unwrap();
    transact!(store, |txn| lookup::bind(txn, h, &id, b, T0).await).unwrap();
    transact!(store, |txn| {
        keypackages::publish(
            txn,
            &store.limits,
            b,
            d[0],
            &[vec![1; 10]],
            Some(&[2; 10]),
            T0,
        )
        .await
    })
    .unwrap();
    for i in 0..50u8 {
        send(store, (s, sd[0]), b, &[i], T0).await;
    }
    store.delete_account(b, T0).await.unwrap();
    assert_eq!(
        transact!(store, |txn| lookup::resolve(txn, h, &id, T0).await).unwrap(),
        None
    );
    // The deletion left the purge to maintenance: the keys are still there.
    assert!(transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap());
    assert_eq!(
        transact!(store, |txn| lifecycle::pending_purges(txn, REGION, 10)
            .await)
        .unwrap(),
        vec![b]
    );
    let v = version(store, s).await;
    let out = store
        .enqueue(b, &[envelope(s, sd[0], v, b"x")], T0)
        .await
        .unwrap();
    assert!(matches!(out[0], Err(Error::RecipientUnavailable)));
    store.purge(b).await.unwrap();
    assert!(!transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap());
    assert!(
        transact!(store, |txn| lifecycle::pending_purges(txn, REGION, 10)
            .await)
        .unwrap()
        .is_empty()
    );
    // The identifier is free again.
    transact!(store, |txn| lookup::bind(txn, h, &id, s, T0).await).unwrap();
    assert!(matches!(
        store.delete_account(b, T0).await,
        Err(Error::BoxNotFound)
    ));
}

async fn interrupted_purges_are_resumed(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    for i in 0..20u8 {
        send(store, (s, sd[0]), b, &[i], T0).await;
    }
    // Only the deletion transaction runs, as if the process died before purging.
    transact!(store, |txn| lifecycle::delete_account(
        txn,
        &store.limits,
        b,
        T0
    )
    .await)
    .unwrap();
    // Already invisible: the device is gone and the profile reads as absent.
    assert!(matches!(
        store.fetch(b, d[0], FetchLimits::default()).await,
        Err(Error::DeviceNotFound)
    ));
    assert_eq!(
        transact!(store, |txn| accounts::profile(txn, b).await).unwrap(),
        None
    );
    assert_eq!(store.resume_purges(REGION).await.unwrap(), 1);
    assert!(!transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap());
}

async fn deletion_racing_with_sends_leaves_nothing_behind(store: &Store) {
    let (b, _) = new_box(store, 2).await;
    let (s, sd) = new_box(store, 1).await;
    let v = version(store, b).await;
    let mut senders = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        let dev = sd[0];
        senders.push(tokio::spawn(async move {
            for i in 0..20u8 {
                let out = store.enqueue(b, &[envelope(s, dev, v, &[i])], T0).await;
                match out.as_deref() {
                    Ok([Ok(_)]) => {}
                    Ok([Err(Error::RecipientUnavailable)])
                    | Ok([Err(Error::StaleDeviceList { .. })]) => break,
                    Err(Error::Kv(KvError::RetriesExhausted { .. })) => {}
                    other => panic!("unexpected send outcome {other:?}"),
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::task::yield_now().await;
    store.delete_account(b, T0).await.unwrap();
    for t in senders {
        t.await.unwrap();
    }
    store.purge(b).await.unwrap();
    assert!(
        !transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap(),
        "a send committed into a box being deleted"
    );
}

async fn bad_input_is_rejected_and_changes_nothing(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    let limits = Limits::default();
    let v = version(store, b).await;
    let big = vec![0u8; limits.max_payload_bytes + 1];
    let out = store
        .enqueue(b, &[envelope(s, sd[0], v, &big)], T0)
        .await
        .unwrap();
    assert!(matches!(out[0], Err(Error::Invalid(_))));
    assert_eq!(queue_len(store, b).await, 0);
    let err = transact!(store, |txn| {
        keypackages::publish(txn, &store.limits, b, d[0], &[vec![]], None, T0).await
    })
    .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)));
    let err = transact!(store, |txn| devices::add(
        txn,
        &store.limits,
        b,
        d[0],
        &device_record(),
        T0
    )
    .await)
    .unwrap_err();
    assert!(matches!(err, Error::DeviceExists(_)));
    let err = transact!(store, |txn| accounts::create_box(txn, b, T0).await).unwrap_err();
    assert!(matches!(err, Error::BoxExists(_)));
    let unknown = BoxId::new(REGION);
    let out = store
        .enqueue(unknown, &[envelope(s, sd[0], 1, b"x")], T0)
        .await
        .unwrap();
    assert!(matches!(out[0], Err(Error::RecipientUnavailable)));
    let mut limits_small = store.limits.clone();
    limits_small.max_devices_per_box = 1;
    let err = transact!(store, |txn| {
        devices::add(txn, &limits_small, b, DeviceId::new(), &device_record(), T0).await
    })
    .unwrap_err();
    assert!(matches!(err, Error::QuotaExceeded(_)));
}

/// A stored queue head whose counters cannot be right (next sequence number 0,
/// exhausted counters) is reported as corrupt by every operation that computes
/// from it, instead of panicking (debug) or wrapping around (release).
async fn a_corrupt_queue_head_is_reported_not_wrapped(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let (sender, sd) = new_box(store, 1).await;
    let write_head = async |head: QueueHead| {
        let bytes = head.to_stored();
        kv_transact!(store.kv, &store.retry, |txn| txn
            .put(Key::Next(b).encode(), bytes.clone())
            .await)
        .unwrap();
    };
    let corrupt = |r: &Result<(), Error>| matches!(r, Err(Error::Corrupt { .. }));
    write_head(QueueHead {
        next_seq: 0,
        device_list_version: 1,
        enqueued_bytes: 0,
        ..QueueHead::default()
    })
    .await;
    let fetched = store
        .fetch(b, d[0], FetchLimits::default())
        .await
        .map(|_| ());
    assert!(corrupt(&fetched), "{fetched:?}");
    let acked = store.ack(b, d[0], 3, T0).await.map(|_| ());
    assert!(corrupt(&acked), "{acked:?}");
    let added = transact!(store, |txn| devices::add(
        txn,
        &store.limits,
        b,
        DeviceId::new(),
        &device_record(),
        T0
    )
    .await)
    .map(|_| ());
    assert!(corrupt(&added), "{added:?}");
    let sent = store
        .enqueue(b, &[envelope(sender, sd[0], 1, b"x")], T0)
        .await
        .map(|mut o| o.pop().unwrap().map(|_| ()))
        .and_then(|o| o);
    assert!(corrupt(&sent), "{sent:?}");
    // Exhausted counters.
    write_head(QueueHead {
        next_seq: u64::MAX,
        device_list_version: u64::MAX - 1,
        enqueued_bytes: 0,
        ..QueueHead::default()
    })
    .await;
    let sent = store
        .enqueue(b, &[envelope(sender, sd[0], u64::MAX - 1, b"x")], T0)
        .await
        .map(|mut o| o.pop().unwrap().map(|_| ()))
        .and_then(|o| o);
    assert!(corrupt(&sent), "{sent:?}");
    let removed = transact!(store, |txn| lifecycle::remove_device(
        txn,
        &store.limits,
        b,
        d[0]
    )
    .await)
    .map(|_| ());
    assert!(corrupt(&removed), "{removed:?}");
    // A pointer past the last sequence number.
    write_head(QueueHead {
        next_seq: 5,
        device_list_version: 1,
        enqueued_bytes: 0,
        ..QueueHead::default()
    })
    .await;
    let pointer = rossby_storage::tables::records::Pointer {
        acked: u64::MAX,
        last_seen_ms: T0,
    }
    .to_stored();
    kv_transact!(store.kv, &store.retry, |txn| txn
        .put(Key::Pointer(b, d[0]).encode(), pointer.clone())
        .await)
    .unwrap();
    let fetched = store
        .fetch(b, d[0], FetchLimits::default())
        .await
        .map(|_| ());
    assert!(corrupt(&fetched), "{fetched:?}");
}

/// The expiry index keeps entries of a box after its account is deleted and
/// purged; when they fall due the sweep removes them and writes nothing into the
/// purged box (it used to write the box's `low` key back).
async fn expiry_never_brings_a_purged_box_back(store: &Store) {
    let (b, _) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    for i in 0..3u8 {
        send(store, (s, sd[0]), b, &[i], T0).await;
    }
    store.delete_account(b, T0).await.unwrap();
    store.purge(b).await.unwrap();
    assert!(!transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap());
    let shard = rossby_keyspace::keys::expiry_shard(b);
    let entries_of_b = async || {
        let range = Key::expiry_due(REGION, shard, u64::MAX);
        let all = kv_transact!(store.kv, &store.retry, |txn| txn
            .scan(&range, 10_000, ScanOrder::Forward)
            .await)
        .unwrap();
        all.iter()
            .filter(
                |(k, _)| matches!(Key::decode(k), Ok(Key::Expiry { box_id, .. }) if box_id == b),
            )
            .count()
    };
    assert!(
        entries_of_b().await > 0,
        "the index still names the purged box"
    );
    let swept = store
        .sweep(REGION, T0 + store.limits.retention_ms + 100, 100)
        .await
        .unwrap();
    assert!(swept.entries > 0);
    assert!(
        !transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap(),
        "the sweep wrote into the purged box"
    );
    assert_eq!(entries_of_b().await, 0, "its index entries are gone");
}

/// An expiry that read the box alive and a purge that empties it write common
/// keys (`low`, which every purge step writes even when it is absent, and the
/// expired envelope), so the expiry cannot commit a `low` into the purged range
/// (snapshot isolation detects only write-write conflicts).
async fn an_expiry_racing_with_a_purge_conflicts(store: &Store) {
    let (b, _) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    let seq = send(store, (s, sd[0]), b, b"x", T0).await;
    // A box without a `low` key yet (read as 1): the purge finds nothing to
    // delete there, and still writes it.
    kv_transact!(store.kv, &store.retry, |txn| txn
        .delete(Key::Low(b).encode())
        .await)
    .unwrap();
    let expires = T0 + store.limits.retention_ms;
    let mut expiry = store.kv.begin().await.unwrap();
    let swept = queue::expire(
        &mut Tx::new(&mut *expiry),
        &store.limits,
        b,
        &[(expires, rossby_keyspace::ExpiryEntry::Message(seq))],
        expires + 1,
    )
    .await
    .unwrap();
    assert_eq!(swept.envelopes, 1, "the box was alive in its snapshot");
    store.delete_account(b, T0).await.unwrap();
    store.purge(b).await.unwrap();
    let committed = expiry.commit().await;
    assert!(
        matches!(committed, Err(KvError::Conflict(_))),
        "{committed:?}"
    );
    assert!(!transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap());
}

/// Publishing KeyPackages for a device, adding a contact and creating a group
/// each write into a box that a concurrent device removal or account deletion
/// empties. They read the device record or profile for update, so under
/// snapshot isolation they conflict with the removal instead of leaving orphan
/// keys behind (a plain read protects nothing there).
async fn writes_racing_with_a_removal_or_deletion_conflict(store: &Store) {
    let conflicted = |r: Result<(), KvError>| matches!(r, Err(KvError::Conflict(_)));
    // KeyPackages of a device removed meanwhile.
    let (b, d) = new_box(store, 2).await;
    let mut publish = store.kv.begin().await.unwrap();
    publish_one(&mut *publish, store, (b, d[1]), vec![1; 10]).await;
    transact!(store, |txn| lifecycle::remove_device(
        txn,
        &store.limits,
        b,
        d[1]
    )
    .await)
    .unwrap();
    assert!(
        conflicted(publish.commit().await),
        "KeyPackages outlived their device"
    );
    // A contact of an account deleted meanwhile.
    let (owner, _) = new_box(store, 1).await;
    let (other, _) = new_box(store, 1).await;
    let mut add = store.kv.begin().await.unwrap();
    contacts::add(
        &mut Tx::new(&mut *add),
        &store.limits,
        Relationship::Contact,
        owner,
        other,
        T0,
    )
    .await
    .unwrap();
    store.delete_account(owner, T0).await.unwrap();
    store.purge(owner).await.unwrap();
    assert!(
        conflicted(add.commit().await),
        "a contact outlived its account"
    );
    assert!(!transact!(store, |txn| lifecycle::box_has_keys(txn, owner).await).unwrap());
    // A group of an account deleted meanwhile.
    let (creator, _) = new_box(store, 1).await;
    let group = rossby_storage::tables::groups::GroupKey {
        creator,
        group_id: [3; 16],
    };
    let mut create = store.kv.begin().await.unwrap();
    rossby_storage::tables::groups::create(&mut Tx::new(&mut *create), group, T0)
        .await
        .unwrap();
    store.delete_account(creator, T0).await.unwrap();
    store.purge(creator).await.unwrap();
    assert!(
        conflicted(create.commit().await),
        "a group outlived its creator"
    );
    assert!(!transact!(store, |txn| lifecycle::box_has_keys(txn, creator).await).unwrap());
}

/// Count-then-insert quotas hold under concurrency: two KeyPackage publishes of
/// one device that each fit the quota on their own both lock the device record,
/// so the second to commit conflicts (and, re-run, is refused) instead of both
/// landing over the limit. Contacts lock the owner's profile the same way.
async fn concurrent_inserts_cannot_exceed_a_quota(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let max = store.limits.max_key_packages_per_device;
    let almost: Vec<Vec<u8>> = (0..max - 1)
        .map(|i| vec![u8::try_from(i % 250).unwrap(); 12])
        .collect();
    transact!(store, |txn| keypackages::publish(
        txn,
        &store.limits,
        b,
        d[0],
        &almost,
        None,
        T0
    )
    .await)
    .unwrap();
    let mut first = store.kv.begin().await.unwrap();
    let mut second = store.kv.begin().await.unwrap();
    publish_one(&mut *first, store, (b, d[0]), vec![251; 12]).await;
    publish_one(&mut *second, store, (b, d[0]), vec![252; 12]).await;
    first.commit().await.unwrap();
    assert!(matches!(second.commit().await, Err(KvError::Conflict(_))));
    let again = transact!(store, |txn| keypackages::publish(
        txn,
        &store.limits,
        b,
        d[0],
        &[vec![252; 12]],
        None,
        T0
    )
    .await);
    assert!(matches!(again, Err(Error::QuotaExceeded(_))), "{again:?}");

    // The same for contacts, under a small configured limit.
    let limits = Limits {
        max_relations_per_box: 2,
        ..store.limits.clone()
    };
    let (owner, _) = new_box(store, 1).await;
    let others: Vec<BoxId> = (0..3).map(|_| BoxId::new(REGION)).collect();
    transact!(store, |txn| contacts::add(
        txn,
        &limits,
        Relationship::Contact,
        owner,
        others[0],
        T0
    )
    .await)
    .unwrap();
    let mut first = store.kv.begin().await.unwrap();
    let mut second = store.kv.begin().await.unwrap();
    for (txn, other) in [(&mut first, others[1]), (&mut second, others[2])] {
        contacts::add(
            &mut Tx::new(&mut **txn),
            &limits,
            Relationship::Contact,
            owner,
            other,
            T0,
        )
        .await
        .unwrap();
    }
    first.commit().await.unwrap();
    assert!(matches!(second.commit().await, Err(KvError::Conflict(_))));
    let listed = transact!(store, |txn| contacts::list(
        txn,
        Relationship::Contact,
        owner,
        10
    )
    .await)
    .unwrap();
    assert_eq!(listed.len(), 2, "the quota of 2 contacts was exceeded");
}

/// Publishes one KeyPackage for `device` inside `txn`.
async fn publish_one(
    txn: &mut dyn rossby_storage::Transaction,
    store: &Store,
    (b, device): (BoxId, DeviceId),
    package: Vec<u8>,
) {
    keypackages::publish(
        &mut Tx::new(txn),
        &store.limits,
        b,
        device,
        &[package],
        None,
        T0,
    )
    .await
    .unwrap();
}

/// The box's identifiers as (identifier, discoverable), in listing order.
async fn listed(store: &Store, hasher: &LookupHasher, b: BoxId) -> Vec<(Option<String>, bool)> {
    transact!(store, |txn| lookup::list(txn, hasher, b).await)
        .unwrap()
        .into_iter()
        .map(|i| (i.identifier.map(|i| i.as_str().to_string()), i.discoverable))
        .collect()
}

async fn bind_flagged(store: &Store, id: &Identifier, b: BoxId, discoverable: bool, at: u64) {
    let max = store.limits.max_identifiers_per_box;
    transact!(store, |txn| lookup::bind_with(
        txn,
        &store.hasher,
        id,
        b,
        discoverable,
        max,
        at
    )
    .await)
    .unwrap();
}

async fn several_identifiers_are_bound_listed_and_removed(store: &Store) {
    let (a, _) = new_box(store, 1).await;
    let (other, _) = new_box(store, 1).await;
    let h = &store.hasher;
    let email = Identifier::email("Ann@Example.com").unwrap();
    let phone = Identifier::phone("+1 415 555 0100").unwrap();
    let third = Identifier::email("ann@work.example").unwrap();
    let theirs = Identifier::email("theirs@example.com").unwrap();
    bind_flagged(store, &email, a, true, T0).await;
    bind_flagged(store, &phone, a, false, T0 + 1).await;
    bind_flagged(store, &theirs, other, true, T0).await;
    assert_eq!(
        listed(store, h, a).await,
        vec![
            (Some("ann@example.com".to_string()), true),
            (Some("+14155550100".to_string()), false),
        ]
    );
    let bound = transact!(store, |txn| lookup::list(txn, h, a).await).unwrap();
    assert_eq!(bound[1].bound_at_ms, T0 + 1);
    // Only the box's own identifiers can be removed.
    for (id, owner) in [(&theirs, a), (&third, a)] {
        let err = transact!(store, |txn| lookup::remove(txn, h, id, owner).await).unwrap_err();
        assert!(matches!(err, Error::IdentifierNotBound), "{err}");
    }
    // A third one beyond a quota of two is refused and changes nothing.
    let err = transact!(store, |txn| lookup::bind_with(
        txn, h, &third, a, true, 2, T0
    )
    .await)
    .unwrap_err();
    assert!(matches!(err, Error::QuotaExceeded(_)), "{err}");
    assert_eq!(listed(store, h, a).await.len(), 2);
    // Remove one; the last one stays.
    let remaining = transact!(store, |txn| lookup::remove(txn, h, &phone, a).await).unwrap();
    assert_eq!(remaining, 1);
    assert_eq!(
        transact!(store, |txn| lookup::resolve(txn, h, &phone, T0).await).unwrap(),
        None
    );
    let err = transact!(store, |txn| lookup::remove(txn, h, &email, a).await).unwrap_err();
    assert!(matches!(err, Error::LastIdentifier), "{err}");
    assert_eq!(
        listed(store, h, a).await,
        vec![(Some("ann@example.com".to_string()), true)]
    );
    // A removed identifier is free for another box.
    bind_flagged(store, &phone, other, true, T0).await;
    assert_eq!(
        transact!(store, |txn| lookup::resolve(txn, h, &phone, T0).await).unwrap(),
        Some(other)
    );
}

async fn undiscoverable_identifiers_look_unknown(store: &Store) {
    let (alice, _) = new_box(store, 1).await;
    let (bob, _) = new_box(store, 1).await;
    let h = &store.hasher;
    let email = Identifier::email("alice@example.org").unwrap();
    let phone = Identifier::phone("+14155550111").unwrap();
    let unknown = Identifier::phone("+14155550112").unwrap();
    bind_flagged(store, &email, alice, true, T0).await;
    bind_flagged(store, &phone, alice, false, T0).await;
    let discover = async |id: &Identifier, who: BoxId| {
        transact!(store, |txn| lookup::discover(txn, h, id, who, T0).await).unwrap()
    };
    assert_eq!(discover(&email, bob).await, Some(alice));
    assert_eq!(discover(&phone, bob).await, None);
    assert_eq!(discover(&unknown, bob).await, None);
    // The owner still finds itself by it.
    assert_eq!(discover(&phone, alice).await, Some(alice));
    // Flags change one identifier at a time.
    let set = async |id: &Identifier, on: bool| {
        transact!(store, |txn| lookup::set_discoverable(
            txn, h, id, alice, on, T0
        )
        .await)
        .unwrap()
    };
    assert!(set(&phone, true).await.discoverable);
    assert!(!set(&email, false).await.discoverable);
    assert_eq!(discover(&phone, bob).await, Some(alice));
    assert_eq!(discover(&email, bob).await, None);
    // The account-wide setting hides every identifier.
    let hide = SettingsUpdate {
        hidden: Some(true),
        ..SettingsUpdate::default()
    };
    transact!(store, |txn| accounts::update_settings(
        txn, alice, &hide, T0
    )
    .await)
    .unwrap();
    assert_eq!(discover(&phone, bob).await, None);
    // Another box cannot change alice's flags.
    let err = transact!(store, |txn| lookup::set_discoverable(
        txn, h, &phone, bob, true, T0
    )
    .await)
    .unwrap_err();
    assert!(matches!(err, Error::IdentifierNotBound), "{err}");
}

/// Under snapshot isolation a read protects nothing: both removals would count
/// two identifiers and leave none. They both lock the profile, so the second
/// commit conflicts, and run again it finds only one left. (On the memory
/// backend this is what TiKV does; fjall's read validation would also refuse
/// it, so the memory run is the one that tests the lock.)
async fn concurrent_removals_keep_the_last_identifier(store: &Store) {
    let (a, _) = new_box(store, 1).await;
    let h = &store.hasher;
    let one = Identifier::email("one@example.com").unwrap();
    let two = Identifier::email("two@example.com").unwrap();
    bind_flagged(store, &one, a, true, T0).await;
    bind_flagged(store, &two, a, true, T0).await;
    let mut first = store.kv.begin().await.unwrap();
    let mut second = store.kv.begin().await.unwrap();
    let left = lookup::remove(&mut Tx::new(&mut *first), h, &one, a)
        .await
        .unwrap();
    assert_eq!(left, 1);
    let left = lookup::remove(&mut Tx::new(&mut *second), h, &two, a)
        .await
        .unwrap();
    assert_eq!(left, 1, "the second removal counts in its own snapshot");
    first.commit().await.unwrap();
    assert!(matches!(second.commit().await, Err(KvError::Conflict(_))));
    let again = transact!(store, |txn| lookup::remove(txn, h, &two, a).await);
    assert!(matches!(again, Err(Error::LastIdentifier)), "{again:?}");
    assert_eq!(
        listed(store, h, a).await,
        vec![(Some("two@example.com".to_string()), true)]
    );
}

async fn identifier_entries_from_before_sealing_are_listed_and_healed(store: &Store) {
    let (a, _) = new_box(store, 1).await;
    let (bob, _) = new_box(store, 1).await;
    let h = &store.hasher;
    let id = Identifier::email("legacy@example.com").unwrap();
    transact!(store, |txn| lookup::bind(txn, h, &id, a, T0).await).unwrap();
    // Rewrite the box's entry as the code before sealed copies wrote it.
    let digest = h.current(&id);
    let entry = Key::Ident(a, digest.version, digest.digest).encode();
    let old = Marker { at_ms: T0 - 5 }.to_stored();
    kv_transact!(store.kv, &store.retry, |txn| txn
        .put(entry.clone(), old.clone())
        .await)
    .unwrap();
    let bound = transact!(store, |txn| lookup::list(txn, h, a).await).unwrap();
    assert_eq!(bound.len(), 1);
    assert_eq!(bound[0].identifier, None);
    assert!(bound[0].discoverable);
    assert_eq!(bound[0].bound_at_ms, T0 - 5);
    // Still found by contacts, as every identifier was before.
    assert_eq!(
        transact!(store, |txn| lookup::discover(txn, h, &id, bob, T0).await).unwrap(),
        Some(a)
    );
    // Binding it again to its own box seals a copy and keeps its time.
    transact!(store, |txn| lookup::bind(txn, h, &id, a, T0).await).unwrap();
    let bound = transact!(store, |txn| lookup::list(txn, h, a).await).unwrap();
    assert_eq!(bound[0].identifier.as_ref(), Some(&id));
    assert_eq!(bound[0].bound_at_ms, T0 - 5);
    // A sealed copy moved to another entry does not open.
    let raw = kv_transact!(store.kv, &store.retry, |txn| txn.get(&entry).await)
        .unwrap()
        .unwrap();
    let sealed = IdentRecord::from_stored(&raw).unwrap();
    assert_eq!(sealed.at_ms, T0 - 5);
    let other = Identifier::email("other@example.com").unwrap();
    bind_flagged(store, &other, a, true, T0).await;
    let od = h.current(&other);
    let other_entry = Key::Ident(a, od.version, od.digest).encode();
    kv_transact!(store.kv, &store.retry, |txn| txn
        .put(other_entry.clone(), raw.clone())
        .await)
    .unwrap();
    let err = transact!(store, |txn| lookup::list(txn, h, a).await).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

async fn pepper_rotation_keeps_the_sealed_identifier_and_flag(store: &Store) {
    let (a, _) = new_box(store, 1).await;
    let old = store.hasher.clone();
    let id = Identifier::phone("+14155550177").unwrap();
    transact!(store, |txn| lookup::bind_with(
        txn, &old, &id, a, false, 16, T0
    )
    .await)
    .unwrap();
    let rotated = LookupHasher::new(
        vec![
            Pepper {
                version: 1,
                secret: vec![7; 32],
            },
            Pepper {
                version: 2,
                secret: vec![9; 32],
            },
        ],
        2,
    )
    .unwrap();
    let found = transact!(store, |txn| lookup::resolve(txn, &rotated, &id, T0 + 50)
        .await)
    .unwrap();
    assert_eq!(found, Some(a));
    let only_new = LookupHasher::new(
        vec![Pepper {
            version: 2,
            secret: vec![9; 32],
        }],
        2,
    )
    .unwrap();
    let bound = transact!(store, |txn| lookup::list(txn, &only_new, a).await).unwrap();
    assert_eq!(bound.len(), 1);
    assert_eq!(bound[0].identifier.as_ref(), Some(&id));
    assert!(!bound[0].discoverable);
    assert_eq!(bound[0].bound_at_ms, T0);
}

async fn pending_identifier_additions_are_counted_bounded_and_deleted_with_the_account(
    store: &Store,
) {
    let (a, _) = new_box(store, 1).await;
    let h = &store.hasher;
    let limits = Limits {
        max_pending_identifiers_per_box: 2,
        ..store.limits.clone()
    };
    let record = |expires_at_ms| PendingIdentifier {
        code_mac: vec![3; 32],
        expires_at_ms,
        discoverable: true,
        ..PendingIdentifier::default()
    };
    let ids: Vec<Identifier> = (0..3)
        .map(|i| Identifier::email(&format!("p{i}@example.com")).unwrap())
        .collect();
    let digests: Vec<_> = ids.iter().map(|i| h.current(i)).collect();
    let store_pending = async |i: usize, expires: u64, now: u64| {
        transact!(store, |txn| identifiers::store_pending(
            txn,
            &limits,
            a,
            &digests[i],
            &record(expires),
            now
        )
        .await)
    };
    store_pending(0, T0 + 100, T0).await.unwrap();
    store_pending(1, T0 + 1000, T0).await.unwrap();
    // Replacing one is allowed; a third live one is not.
    store_pending(1, T0 + 1000, T0).await.unwrap();
    let err = store_pending(2, T0 + 1000, T0).await.unwrap_err();
    assert!(matches!(err, Error::QuotaExceeded(_)), "{err}");
    // Once the first expired it makes room (and is deleted).
    store_pending(2, T0 + 1000, T0 + 200).await.unwrap();
    assert!(
        transact!(store, |txn| identifiers::pending(txn, a, &digests[0]).await)
            .unwrap()
            .is_none()
    );
    // Wrong attempts are counted by writing the record.
    for expected in 1..=2 {
        let n = transact!(store, |txn| identifiers::record_wrong_attempt(
            txn,
            a,
            &digests[1]
        )
        .await)
        .unwrap();
        assert_eq!(n, expected);
    }
    let mut first = store.kv.begin().await.unwrap();
    let mut second = store.kv.begin().await.unwrap();
    for txn in [&mut first, &mut second] {
        identifiers::record_wrong_attempt(&mut Tx::new(&mut **txn), a, &digests[1])
            .await
            .unwrap();
    }
    first.commit().await.unwrap();
    assert!(matches!(second.commit().await, Err(KvError::Conflict(_))));
    let pending = transact!(store, |txn| identifiers::pending(txn, a, &digests[1]).await)
        .unwrap()
        .unwrap();
    assert_eq!(pending.attempts, 3);
    // Deleting the account deletes them in its own transaction.
    let email = Identifier::email("owner@example.com").unwrap();
    transact!(store, |txn| lookup::bind(txn, h, &email, a, T0).await).unwrap();
    store.delete_account(a, T0 + 300).await.unwrap();
    let left = transact!(store, |txn| Ok(txn
        .scan(
            &Key::table_range(a, Table::PendingIdentifier),
            10,
            ScanOrder::Forward
        )
        .await?
        .len()))
    .unwrap();
    assert_eq!(left, 0);
    let err = store_pending(0, T0 + 1000, T0 + 400).await.unwrap_err();
    assert!(matches!(err, Error::BoxNotFound), "{err}");
}

async fn concurrent_binds_keep_one_owner_and_the_quota(store: &Store) {
    let (a, _) = new_box(store, 1).await;
    let (b, _) = new_box(store, 1).await;
    let h = &store.hasher;
    // Two boxes confirming one identifier at once: one wins, the other is told.
    let contested = Identifier::email("both@example.com").unwrap();
    let mut first = store.kv.begin().await.unwrap();
    let mut second = store.kv.begin().await.unwrap();
    for (txn, owner) in [(&mut first, a), (&mut second, b)] {
        lookup::bind_with(&mut Tx::new(&mut **txn), h, &contested, owner, true, 16, T0)
            .await
            .unwrap();
    }
    first.commit().await.unwrap();
    assert!(matches!(second.commit().await, Err(KvError::Conflict(_))));
    let again = transact!(store, |txn| lookup::bind(txn, h, &contested, b, T0).await);
    assert!(matches!(again, Err(Error::AlreadyRegistered)), "{again:?}");
    // Two binds into one box with room for one more: the quota holds.
    let (x, y) = (
        Identifier::email("x@example.com").unwrap(),
        Identifier::email("y@example.com").unwrap(),
    );
    let mut first = store.kv.begin().await.unwrap();
    let mut second = store.kv.begin().await.unwrap();
    for (txn, id) in [(&mut first, &x), (&mut second, &y)] {
        lookup::bind_with(&mut Tx::new(&mut **txn), h, id, a, true, 2, T0)
            .await
            .unwrap();
    }
    first.commit().await.unwrap();
    assert!(matches!(second.commit().await, Err(KvError::Conflict(_))));
    let again = transact!(store, |txn| lookup::bind_with(txn, h, &y, a, true, 2, T0)
        .await);
    assert!(matches!(again, Err(Error::QuotaExceeded(_))), "{again:?}");
    assert_eq!(listed(store, h, a).await.len(), 2);
}
