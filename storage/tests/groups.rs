//! Group epoch records, their outbox fan-out and KeyPackage claims under
//! concurrency, on the memory backend (snapshot isolation, like TiKV) and on
//! fjall (serializable, persistent).
//!
//! [`deliver`] plays the gateway's part: it enqueues a group's outbox entries
//! into their boxes (each box in a transaction of its own) and then finishes the
//! entries.

mod backends;
mod support;

use async_trait::async_trait;
use backends::T0;
use rossby_keyspace::{BoxId, DeviceId, MessageId, RegionId};
use rossby_replication::{Home, home_of_key};
use rossby_storage::tables::groups::{self, Commit, Committed, GroupKey, GroupMessage, Outcome};
use rossby_storage::tables::outbox::{self, Entry};
use rossby_storage::tables::queue::{self, ANY_DEVICE_LIST, FetchLimits};
use rossby_storage::tables::{Store, Tx, keypackages};
use rossby_storage::{Error, KeyRange, KvPair, ScanOrder, Transaction, Value, transact};
use std::collections::BTreeSet;

const REGION: RegionId = RegionId(1);
const FAR: RegionId = RegionId(2);
const MAX_MEMBERS: usize = 256;

backends::on_every_backend!(
    concurrent_commits_in_one_epoch_have_one_winner,
    concurrent_box_claims_hand_out_each_package_once,
    leaving_keeps_the_epoch_and_stops_delivery,
    a_commit_writes_only_the_creators_region_and_delivery_follows,
    a_retried_commit_records_its_fan_out_once,
    entries_are_listed_and_delivered_in_the_order_they_were_recorded,
    finishing_one_entry_twice_at_once_conflicts,
    deleting_the_creator_purges_its_outbox,
    a_message_racing_a_commit_is_ordered_before_it_or_refused,
    only_the_creator_removes_and_adds_respect_the_added_box,
);

/// A Commit of `sender` (box, device) made in `epoch` that adds `add`, with a
/// fresh message id: `envelope` for the members, `welcome` (envelope, boxes) for
/// the boxes that join.
fn commit_in<'a>(
    group: GroupKey,
    (sender_box, sender_device): (BoxId, DeviceId),
    epoch: u64,
    add: &'a [BoxId],
    envelope: &'a [u8],
    (welcome_envelope, welcome_boxes): (&'a [u8], &'a [BoxId]),
) -> Commit<'a> {
    Commit {
        group,
        sender_box,
        sender_device,
        sender_identity_key: Some([7; 32]),
        message_id: MessageId::new(),
        epoch,
        add,
        remove: &[],
        envelope,
        welcome_envelope,
        welcome_boxes,
    }
}

async fn new_box(store: &Store, n: usize) -> (BoxId, Vec<DeviceId>) {
    backends::new_box(store, REGION, n).await
}

async fn queued(store: &Store, b: BoxId, d: DeviceId) -> Vec<Vec<u8>> {
    let fetched = transact!(store, |txn| queue::fetch(txn, b, d, FetchLimits::default())
        .await)
    .unwrap();
    fetched
        .envelopes
        .into_iter()
        .map(|e| e.envelope.payload)
        .collect()
}

async fn commit(store: &Store, c: &Commit<'_>) -> Outcome<Committed> {
    let limits = store.limits.clone();
    transact!(store, |txn| groups::commit(
        txn,
        &limits,
        MAX_MEMBERS,
        c,
        T0
    )
    .await)
    .unwrap()
}

async fn leave(
    store: &Store,
    group: GroupKey,
    b: BoxId,
    d: DeviceId,
    envelope: &[u8],
) -> Outcome<Committed> {
    let limits = store.limits.clone();
    transact!(store, |txn| groups::leave(
        txn,
        &limits,
        group,
        b,
        d,
        Some([7; 32]),
        MessageId::new(),
        envelope,
        T0
    )
    .await)
    .unwrap()
}

/// Delivers every pending outbox entry of `group` the way a gateway does: into
/// each box against its current device-list version, idempotently by the
/// entry's sender device and message id; then finishes the entries. Returns how
/// many envelopes were newly enqueued.
async fn deliver(store: &Store, group: GroupKey) -> usize {
    let entries = transact!(store, |txn| outbox::of_group(txn, group).await).unwrap();
    let mut enqueued = 0;
    for entry in &entries {
        let (done, new) = enqueue_entry(store, entry).await;
        enqueued += new;
        let (creator, id) = (entry.group.creator, entry.id);
        let gone = transact!(store, |txn| outbox::finish(txn, creator, id, &done).await).unwrap();
        assert!(gone, "every recipient was done");
    }
    enqueued
}

/// Enqueues an entry into its boxes without finishing it (what a gateway that
/// crashes right after the enqueues leaves behind). Returns the boxes done with
/// it and how many envelopes were newly enqueued.
async fn enqueue_entry(store: &Store, entry: &Entry) -> (Vec<BoxId>, usize) {
    let mut done = Vec::new();
    let mut enqueued = 0;
    for r in &entry.recipients {
        let outcome = transact!(store, |txn| {
            let envelope = entry.envelope_for(r, ANY_DEVICE_LIST);
            queue::enqueue(txn, &store.limits, r.box_id, &[envelope], T0).await
        })
        .unwrap();
        match &outcome[0] {
            Ok(e) => enqueued += usize::from(!e.duplicate),
            Err(Error::RecipientUnavailable) => {}
            Err(other) => panic!("delivery failed: {other}"),
        }
        done.push(r.box_id);
    }
    (done, enqueued)
}

async fn pending_in(store: &Store, region: RegionId) -> Vec<Entry> {
    transact!(store, |txn| outbox::pending(txn, region, None, 1000).await).unwrap()
}

/// A transaction that remembers the keys written through it.
struct Recording {
    inner: Box<dyn Transaction>,
    written: Vec<Vec<u8>>,
}

#[async_trait]
impl Transaction for Recording {
    async fn get(&mut self, key: &[u8]) -> rossby_storage::kv::Result<Option<Value>> {
        self.inner.get(key).await
    }

    async fn batch_get(
        &mut self,
        keys: &[Vec<u8>],
    ) -> rossby_storage::kv::Result<Vec<Option<Value>>> {
        self.inner.batch_get(keys).await
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> rossby_storage::kv::Result<Vec<KvPair>> {
        self.inner.scan(range, limit, order).await
    }

    async fn get_for_update(&mut self, key: &[u8]) -> rossby_storage::kv::Result<Option<Value>> {
        self.written.push(key.to_vec());
        self.inner.get_for_update(key).await
    }

    async fn put(&mut self, key: Vec<u8>, value: Value) -> rossby_storage::kv::Result<()> {
        self.written.push(key.clone());
        self.inner.put(key, value).await
    }

    async fn delete(&mut self, key: Vec<u8>) -> rossby_storage::kv::Result<()> {
        self.written.push(key.clone());
        self.inner.delete(key).await
    }

    async fn commit(self: Box<Self>) -> rossby_storage::kv::Result<()> {
        self.inner.commit().await
    }

    async fn rollback(self: Box<Self>) -> rossby_storage::kv::Result<()> {
        self.inner.rollback().await
    }
}

async fn concurrent_commits_in_one_epoch_have_one_winner(store: &Store) {
    let (creator, cd) = new_box(store, 1).await;
    let mut members = vec![(creator, cd[0])];
    for _ in 0..4 {
        let (b, d) = new_box(store, 1).await;
        members.push((b, d[0]));
    }
    let group = GroupKey {
        creator,
        group_id: [3; 16],
    };
    let created = transact!(store, |txn| groups::create(txn, group, T0).await).unwrap();
    assert!(matches!(created, Outcome::Done(_)));
    let others: Vec<BoxId> = members[1..].iter().map(|(b, _)| *b).collect();
    let add = commit_in(group, (creator, cd[0]), 0, &others, b"epoch-1", (&[], &[]));
    let outcome = commit(store, &add).await;
    assert!(matches!(outcome, Outcome::Done(ref c) if c.state.epoch == 1));

    // Every member commits in epoch 1 at once: exactly one wins.
    let mut tasks = Vec::new();
    for (i, (b, d)) in members.iter().copied().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let payload = format!("from-{i}").into_bytes();
            let c = commit_in(group, (b, d), 1, &[], &payload, (&[], &[]));
            let outcome = commit(&store, &c).await;
            (payload, outcome)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (payload, outcome) = t.await.unwrap();
        match outcome {
            Outcome::Done(c) => {
                assert_eq!(c.state.epoch, 2);
                winners.push(payload);
            }
            Outcome::Conflict(state) => assert_eq!(state.epoch, 2),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "one Commit per epoch");
    // Only the accepted Commits recorded a fan-out, one each.
    let entries = transact!(store, |txn| outbox::of_group(txn, group).await).unwrap();
    let epochs: Vec<u64> = entries.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, vec![1, 2]);
    assert_eq!(entries[1].payloads, vec![winners[0].clone()]);
    // Nothing is in the boxes before delivery.
    assert!(queued(store, members[1].0, members[1].1).await.is_empty());
    assert_eq!(deliver(store, group).await, 2 * members.len());
    // Every member box holds the epoch-1 and the winning Commit, and nothing else.
    for (b, d) in &members {
        let payloads = queued(store, *b, *d).await;
        assert_eq!(payloads, vec![b"epoch-1".to_vec(), winners[0].clone()]);
    }
    let state = transact!(store, |txn| groups::state(txn, group).await)
        .unwrap()
        .unwrap();
    assert_eq!(state.epoch, 2);
    assert_eq!(state.members.len(), 5);
    assert!(pending_in(store, REGION).await.is_empty());
}

async fn concurrent_box_claims_hand_out_each_package_once(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    for (i, device) in d.iter().enumerate() {
        let packages: Vec<Vec<u8>> = (0..5u8).map(|p| vec![p, i as u8, 1, 2, 3]).collect();
        let last = vec![0xff, i as u8];
        transact!(store, |txn| keypackages::publish(
            txn,
            &store.limits,
            b,
            *device,
            &packages,
            Some(&last),
            T0
        )
        .await)
        .unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            transact!(store, |txn| keypackages::claim_for_box(txn, b, T0).await)
        }));
    }
    let mut regular = Vec::new();
    let mut last_resort = 0;
    for t in tasks {
        let claimed = t.await.unwrap().unwrap();
        assert_eq!(claimed.len(), 2, "one package per device");
        let devices: BTreeSet<DeviceId> = claimed.iter().map(|c| c.device).collect();
        assert_eq!(devices.len(), 2);
        for c in claimed {
            if c.last_resort {
                last_resort += 1;
            } else {
                regular.push(c.data);
            }
        }
    }
    let distinct: BTreeSet<Vec<u8>> = regular.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        regular.len(),
        "a package was handed out twice"
    );
    assert_eq!(regular.len(), 10, "every published package was handed out");
    assert_eq!(last_resort, 6, "then the last-resort ones");
}

async fn leaving_keeps_the_epoch_and_stops_delivery(store: &Store) {
    let (a, ad) = new_box(store, 1).await;
    let (b, bd) = new_box(store, 2).await;
    let group = GroupKey {
        creator: a,
        group_id: [4; 16],
    };
    transact!(store, |txn| groups::create(txn, group, T0).await).unwrap();
    let add = [b];
    let c = commit_in(group, (a, ad[0]), 0, &add, b"c1", (b"w1", &add));
    assert!(matches!(commit(store, &c).await, Outcome::Done(_)));
    assert_eq!(deliver(store, group).await, 2);
    // The new member's box got the Welcome envelope, the creator's the Commit.
    assert_eq!(queued(store, b, bd[0]).await, vec![b"w1".to_vec()]);
    assert_eq!(queued(store, a, ad[0]).await, vec![b"c1".to_vec()]);
    let Outcome::Done(left) = leave(store, group, b, bd[0], b"bye").await else {
        panic!("leave failed")
    };
    assert_eq!(left.state.epoch, 1);
    assert_eq!(left.state.members, vec![a]);
    let entry = left.fan_out.expect("the leave recorded its fan-out");
    assert_eq!((entry.seq, entry.epoch), (2, 1));
    assert_eq!(deliver(store, group).await, 2);
    // The remaining member and the leaver's other device learn of it.
    assert_eq!(queued(store, a, ad[0]).await.last().unwrap(), b"bye");
    assert_eq!(queued(store, b, bd[1]).await.last().unwrap(), b"bye");
    // The leaver can no longer commit; leaving twice is refused.
    let c = commit_in(group, (b, bd[0]), 1, &[], b"late", (&[], &[]));
    assert_eq!(commit(store, &c).await, Outcome::NotMember);
    assert_eq!(leave(store, group, b, bd[0], &[]).await, Outcome::NotMember);
    assert!(
        pending_in(store, REGION).await.is_empty(),
        "a refusal records nothing"
    );
}

async fn a_commit_writes_only_the_creators_region_and_delivery_follows(store: &Store) {
    let (creator, cd) = new_box(store, 1).await;
    let (far, fd) = backends::new_box(store, FAR, 2).await;
    let group = GroupKey {
        creator,
        group_id: [5; 16],
    };
    transact!(store, |txn| groups::create(txn, group, T0).await).unwrap();
    let add = [far];
    let c = commit_in(
        group,
        (creator, cd[0]),
        0,
        &add,
        b"commit",
        (b"commit+welcome", &add),
    );
    let mut txn = Recording {
        inner: store.kv.begin().await.unwrap(),
        written: Vec::new(),
    };
    let outcome = groups::commit(&mut Tx::new(&mut txn), &store.limits, MAX_MEMBERS, &c, T0)
        .await
        .unwrap();
    let written = std::mem::take(&mut txn.written);
    Box::new(txn).commit().await.unwrap();
    let Outcome::Done(committed) = outcome else {
        panic!("the Commit failed: {outcome:?}")
    };
    assert!(!written.is_empty());
    for key in &written {
        assert_eq!(
            home_of_key(key),
            Some(Home::Region(REGION)),
            "the Commit wrote outside the creator's region: {key:02x?}"
        );
    }

    // The fan-out waits in the creator's region; the far box has nothing yet.
    let entry = committed.fan_out.expect("a fan-out was recorded");
    assert_eq!(pending_in(store, REGION).await, vec![entry.clone()]);
    assert!(pending_in(store, FAR).await.is_empty());
    assert_eq!((entry.seq, entry.epoch), (1, 1));
    let mut to: Vec<(BoxId, Vec<u8>)> = entry
        .recipients
        .iter()
        .map(|r| (r.box_id, entry.payloads[r.payload].clone()))
        .collect();
    to.sort();
    let mut want = vec![
        (creator, b"commit".to_vec()),
        (far, b"commit+welcome".to_vec()),
    ];
    want.sort();
    assert_eq!(to, want);
    assert!(queued(store, far, fd[0]).await.is_empty());

    // A gateway enqueues into every box and crashes before finishing the entry:
    // delivering it again enqueues nothing twice, and then the entry is gone.
    let (_, first) = enqueue_entry(store, &entry).await;
    assert_eq!(first, 2);
    assert_eq!(pending_in(store, REGION).await.len(), 1);
    assert_eq!(deliver(store, group).await, 0, "all deduplicated");
    assert!(pending_in(store, REGION).await.is_empty());
    for d in &fd {
        assert_eq!(
            queued(store, far, *d).await,
            vec![b"commit+welcome".to_vec()]
        );
    }
    assert_eq!(
        queued(store, creator, cd[0]).await,
        vec![b"commit".to_vec()]
    );
}

async fn a_retried_commit_records_its_fan_out_once(store: &Store) {
    let (creator, cd) = new_box(store, 1).await;
    let (b, bd) = new_box(store, 1).await;
    let group = GroupKey {
        creator,
        group_id: [6; 16],
    };
    transact!(store, |txn| groups::create(txn, group, T0).await).unwrap();
    let add = [b];
    let c = commit_in(group, (creator, cd[0]), 0, &add, b"c1", (b"w1", &add));
    let Outcome::Done(first) = commit(store, &c).await else {
        panic!("the Commit failed")
    };
    assert!(!first.duplicate);
    // Retried before delivery (its answer was lost): same state, no new entry.
    let Outcome::Done(again) = commit(store, &c).await else {
        panic!("the retry failed")
    };
    assert!(again.duplicate);
    assert_eq!(again.state, first.state);
    assert_eq!(again.fan_out, None);
    assert_eq!(
        pending_in(store, REGION).await,
        vec![first.fan_out.unwrap()]
    );
    assert_eq!(deliver(store, group).await, 2);
    // Retried after delivery: still nothing recorded, nothing enqueued.
    let Outcome::Done(late) = commit(store, &c).await else {
        panic!("the late retry failed")
    };
    assert!(late.duplicate);
    assert!(pending_in(store, REGION).await.is_empty());
    assert_eq!(queued(store, b, bd[0]).await, vec![b"w1".to_vec()]);
    assert_eq!(queued(store, creator, cd[0]).await, vec![b"c1".to_vec()]);
}

async fn entries_are_listed_and_delivered_in_the_order_they_were_recorded(store: &Store) {
    let (creator, cd) = new_box(store, 1).await;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(new_box(store, 1).await);
    }
    let group = GroupKey {
        creator,
        group_id: [8; 16],
    };
    let other = GroupKey {
        creator,
        group_id: [9; 16],
    };
    for g in [group, other] {
        transact!(store, |txn| groups::create(txn, g, T0).await).unwrap();
    }
    // Enough undelivered Commits in two groups of one creator that their (hashed)
    // ids do not sort by number. The Commit made in epoch e adds member e mod 3.
    let boxes: Vec<BoxId> = members.iter().map(|(b, _)| *b).collect();
    for epoch in 0..8u64 {
        let add = [boxes[(epoch % 3) as usize]];
        let payload = format!("e{}", epoch + 1).into_bytes();
        for g in [group, other] {
            let c = commit_in(g, (creator, cd[0]), epoch, &add, &payload, (&[], &[]));
            assert!(matches!(commit(store, &c).await, Outcome::Done(_)));
        }
    }
    let entries = transact!(store, |txn| outbox::of_group(txn, group).await).unwrap();
    assert!(entries.iter().all(|e| e.group == group));
    let order: Vec<(u64, u64)> = entries.iter().map(|e| (e.seq, e.epoch)).collect();
    let want: Vec<(u64, u64)> = (1..=8).map(|n| (n, n)).collect();
    assert_eq!(order, want);
    // Paging through the region finds both groups' entries, each once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = transact!(store, |txn| outbox::pending(txn, REGION, after, 3).await).unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.group.creator, last.id));
        seen.extend(page.iter().map(|e| (e.group.group_id, e.seq)));
    }
    assert_eq!(seen.len(), 16);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 16);
    // Delivered in order: each box gets the group's Commits in epoch order, from
    // the one that added it.
    deliver(store, group).await;
    let from = |first: usize| -> Vec<Vec<u8>> {
        (first..=8).map(|n| format!("e{n}").into_bytes()).collect()
    };
    assert_eq!(queued(store, creator, cd[0]).await, from(1));
    for (i, (b, d)) in members.iter().enumerate() {
        assert_eq!(queued(store, *b, d[0]).await, from(i + 1), "member {i}");
    }
    // The other group's entries are still pending.
    let rest = pending_in(store, REGION).await;
    assert_eq!(rest.len(), 8);
    assert!(rest.iter().all(|e| e.group == other));
}

async fn finishing_one_entry_twice_at_once_conflicts(store: &Store) {
    let (creator, cd) = new_box(store, 1).await;
    let (a, _) = new_box(store, 1).await;
    let (b, _) = new_box(store, 1).await;
    let group = GroupKey {
        creator,
        group_id: [10; 16],
    };
    transact!(store, |txn| groups::create(txn, group, T0).await).unwrap();
    let add = [a, b];
    let c = commit_in(group, (creator, cd[0]), 0, &add, b"c", (&[], &[]));
    let Outcome::Done(committed) = commit(store, &c).await else {
        panic!("the Commit failed")
    };
    let entry = committed.fan_out.unwrap();
    // Two deliverers finish different boxes from the same snapshot: one must
    // lose, or the entry would keep a box that is done or drop one that is not.
    let mut t1 = store.kv.begin().await.unwrap();
    let mut t2 = store.kv.begin().await.unwrap();
    let gone1 = outbox::finish(&mut Tx::new(&mut *t1), creator, entry.id, &[creator, a])
        .await
        .unwrap();
    let gone2 = outbox::finish(&mut Tx::new(&mut *t2), creator, entry.id, &[b])
        .await
        .unwrap();
    assert!(!gone1 && !gone2);
    t1.commit().await.unwrap();
    let second = t2.commit().await;
    assert!(
        matches!(second, Err(rossby_storage::kv::Error::Conflict(_))),
        "expected a conflict, got {second:?}"
    );
    let left = pending_in(store, REGION).await;
    let boxes: Vec<BoxId> = left[0].recipients.iter().map(|r| r.box_id).collect();
    assert_eq!(boxes, vec![b]);
    // The retry sees the first deliverer's progress and finishes the entry.
    let gone = transact!(store, |txn| outbox::finish(txn, creator, entry.id, &[b])
        .await)
    .unwrap();
    assert!(gone);
    assert!(pending_in(store, REGION).await.is_empty());
    // Finishing an entry that is gone changes nothing.
    let again = transact!(store, |txn| outbox::finish(txn, creator, entry.id, &[b])
        .await)
    .unwrap();
    assert!(again);
    assert!(pending_in(store, REGION).await.is_empty());
}

async fn deleting_the_creator_purges_its_outbox(store: &Store) {
    let (creator, cd) = new_box(store, 1).await;
    let (b, _) = new_box(store, 1).await;
    let (other_creator, od) = new_box(store, 1).await;
    for (owner, device, id) in [(creator, cd[0], [11; 16]), (other_creator, od[0], [12; 16])] {
        let group = GroupKey {
            creator: owner,
            group_id: id,
        };
        transact!(store, |txn| groups::create(txn, group, T0).await).unwrap();
        let add = [b];
        let c = commit_in(group, (owner, device), 0, &add, b"c", (&[], &[]));
        assert!(matches!(commit(store, &c).await, Outcome::Done(_)));
    }
    assert_eq!(pending_in(store, REGION).await.len(), 2);
    store.delete_account(creator, T0).await.unwrap();
    store.purge(creator).await.unwrap();
    let left = pending_in(store, REGION).await;
    assert_eq!(left.len(), 1, "only the other creator's entry is left");
    assert_eq!(left[0].group.creator, other_creator);
}

/// A GroupSend in epoch 1 and a Commit moving the group to epoch 2, in
/// overlapping transactions: they cannot both pass the epoch check. The message
/// that loses is told the new epoch on its retry; one that wins is ordered before
/// the Commit in every box.
async fn a_message_racing_a_commit_is_ordered_before_it_or_refused(store: &Store) {
    let (creator, cd) = new_box(store, 1).await;
    let (member, md) = new_box(store, 1).await;
    let group = GroupKey {
        creator,
        group_id: [11; 16],
    };
    transact!(store, |txn| groups::create(txn, group, T0).await).unwrap();
    let add = [member];
    let c = commit_in(group, (creator, cd[0]), 0, &add, b"epoch-1", (&[], &[]));
    assert!(matches!(commit(store, &c).await, Outcome::Done(_)));
    let message = GroupMessage {
        group,
        sender_box: member,
        sender_device: md[0],
        sender_identity_key: Some([7; 32]),
        message_id: MessageId::new(),
        epoch: 1,
        envelope: b"hello in epoch 1",
    };
    let limits = store.limits.clone();
    let mut send = store.kv.begin().await.unwrap();
    let sent = groups::send(&mut Tx::new(&mut *send), &limits, &message, T0)
        .await
        .unwrap();
    assert!(matches!(sent, Outcome::Done(_)), "{sent:?}");
    // The Commit to epoch 2 commits first.
    let c2 = commit_in(group, (creator, cd[0]), 1, &[], b"epoch-2", (&[], &[]));
    assert!(matches!(commit(store, &c2).await, Outcome::Done(_)));
    let err = send.commit().await.unwrap_err();
    assert!(
        matches!(err, rossby_storage::kv::Error::Conflict(_)),
        "a message of epoch 1 was accepted after the Commit to epoch 2: {err}"
    );
    // Re-run, it is told the group moved on, and records nothing.
    let again = transact!(store, |txn| groups::send(txn, &limits, &message, T0).await).unwrap();
    assert!(
        matches!(again, Outcome::Conflict(ref s) if s.epoch == 2),
        "{again:?}"
    );
    // A message in the current epoch follows the Commit in every box.
    let current = GroupMessage {
        epoch: 2,
        envelope: b"hello in epoch 2",
        message_id: MessageId::new(),
        ..message
    };
    let sent = transact!(store, |txn| groups::send(txn, &limits, &current, T0).await).unwrap();
    assert!(matches!(sent, Outcome::Done(_)), "{sent:?}");
    deliver(store, group).await;
    for (b, d) in [(creator, cd[0]), (member, md[0])] {
        let payloads = queued(store, b, d).await;
        let tail = &payloads[payloads.len() - 2..];
        assert_eq!(tail, [b"epoch-2".to_vec(), b"hello in epoch 2".to_vec()]);
    }
}

/// The epoch of a group.
async fn epoch_of(store: &Store, group: GroupKey) -> u64 {
    transact!(store, |txn| groups::state(txn, group).await)
        .unwrap()
        .unwrap()
        .epoch
}

async fn try_commit(store: &Store, c: &Commit<'_>) -> Result<Outcome<Committed>, Error> {
    let limits = store.limits.clone();
    transact!(store, |txn| groups::commit(
        txn,
        &limits,
        MAX_MEMBERS,
        c,
        T0
    )
    .await)
}

async fn only_the_creator_removes_and_adds_respect_the_added_box(store: &Store) {
    use rossby_storage::tables::accounts::{self, SettingsUpdate};
    use rossby_storage::tables::contacts::{self, Relationship};
    use rossby_storage::tables::records::AcceptFrom;
    let (creator, cd) = new_box(store, 1).await;
    let (member, md) = new_box(store, 1).await;
    let (blocker, _) = new_box(store, 1).await;
    let (private, _) = new_box(store, 1).await;
    let group = GroupKey {
        creator,
        group_id: [8; 16],
    };
    transact!(store, |txn| groups::create(txn, group, T0).await).unwrap();
    let add = [member];
    let c = commit_in(group, (creator, cd[0]), 0, &add, b"add", (&[], &[]));
    assert!(matches!(commit(store, &c).await, Outcome::Done(_)));

    // A member evicting the creator: refused, nothing written.
    let remove = [creator];
    let mut evict = commit_in(group, (member, md[0]), 1, &[], b"evict", (&[], &[]));
    evict.remove = &remove;
    let err = try_commit(store, &evict).await.unwrap_err();
    assert!(matches!(err, Error::Forbidden(_)), "{err}");
    assert_eq!(epoch_of(store, group).await, 1);
    // Naming a box that is no member removes nothing and is allowed.
    let stranger = [private];
    let mut noop = commit_in(group, (member, md[0]), 1, &[], b"noop", (&[], &[]));
    noop.remove = &stranger;
    assert!(matches!(commit(store, &noop).await, Outcome::Done(_)));

    // A box that blocked the member cannot be added by it.
    transact!(store, |txn| contacts::add(
        txn,
        &store.limits,
        Relationship::Block,
        blocker,
        member,
        T0
    )
    .await)
    .unwrap();
    let add = [blocker];
    let c = commit_in(group, (member, md[0]), 2, &add, b"add-blocker", (&[], &[]));
    let err = try_commit(store, &c).await.unwrap_err();
    assert!(matches!(err, Error::RecipientUnavailable), "{err}");
    assert_eq!(epoch_of(store, group).await, 2);
    // But by the creator, whom it did not block.
    let c = commit_in(group, (creator, cd[0]), 2, &add, b"add-blocker", (&[], &[]));
    assert!(matches!(commit(store, &c).await, Outcome::Done(_)));

    // A contacts-only box only by its contacts.
    transact!(store, |txn| accounts::update_settings(
        txn,
        private,
        &SettingsUpdate {
            accept_from: Some(AcceptFrom::Contacts),
            ..SettingsUpdate::default()
        },
        T0
    )
    .await)
    .unwrap();
    let add = [private];
    let c = commit_in(group, (creator, cd[0]), 3, &add, b"add-private", (&[], &[]));
    let err = try_commit(store, &c).await.unwrap_err();
    assert!(matches!(err, Error::RecipientUnavailable), "{err}");
    transact!(store, |txn| contacts::add(
        txn,
        &store.limits,
        Relationship::Contact,
        private,
        creator,
        T0
    )
    .await)
    .unwrap();
    let c = commit_in(group, (creator, cd[0]), 3, &add, b"add-private", (&[], &[]));
    assert!(matches!(commit(store, &c).await, Outcome::Done(_)));

    // An unknown box cannot be added either.
    let ghost = [BoxId::new(REGION)];
    let c = commit_in(group, (creator, cd[0]), 4, &ghost, b"ghost", (&[], &[]));
    let err = try_commit(store, &c).await.unwrap_err();
    assert!(matches!(err, Error::RecipientUnavailable), "{err}");

    // The creator removes others.
    let remove = [member];
    let mut kick = commit_in(group, (creator, cd[0]), 4, &[], b"kick", (&[], &[]));
    kick.remove = &remove;
    let Outcome::Done(done) = commit(store, &kick).await else {
        panic!("the creator's removal was refused");
    };
    assert!(!done.state.members.contains(&member));
}
