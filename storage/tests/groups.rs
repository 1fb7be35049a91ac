//! Group epoch records and KeyPackage claims under concurrency, on the memory
//! backend (snapshot isolation, like TiKV) and on fjall (serializable, persistent).

mod backends;
mod support;

use backends::T0;
use rossby_keyspace::{BoxId, DeviceId, MessageId, RegionId};
use rossby_storage::tables::groups::{self, Commit, GroupKey, Outcome};
use rossby_storage::tables::queue::{self, FetchLimits};
use rossby_storage::tables::{Store, keypackages};
use rossby_storage::transact;
use std::collections::BTreeSet;

const REGION: RegionId = RegionId(1);
const MAX_MEMBERS: usize = 256;

backends::on_every_backend!(
    concurrent_commits_in_one_epoch_have_one_winner,
    concurrent_box_claims_hand_out_each_package_once,
    leaving_keeps_the_epoch_and_stops_delivery,
);

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
    let add = Commit {
        group,
        sender_box: creator,
        sender_device: cd[0],
        message_id: MessageId::new(),
        epoch: 0,
        add: &others,
        remove: &[],
        envelope: b"epoch-1",
        welcome_envelope: &[],
        welcome_boxes: &[],
    };
    let limits = store.limits.clone();
    let outcome = transact!(store, |txn| groups::commit(
        txn,
        &limits,
        MAX_MEMBERS,
        &add,
        T0
    )
    .await)
    .unwrap();
    assert!(matches!(outcome, Outcome::Done(ref c) if c.state.epoch == 1));

    // Every member commits in epoch 1 at once: exactly one wins.
    let mut tasks = Vec::new();
    for (i, (b, d)) in members.iter().copied().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let payload = format!("from-{i}").into_bytes();
            let c = Commit {
                group,
                sender_box: b,
                sender_device: d,
                message_id: MessageId::new(),
                epoch: 1,
                add: &[],
                remove: &[],
                envelope: &payload,
                welcome_envelope: &[],
                welcome_boxes: &[],
            };
            let limits = store.limits.clone();
            let outcome = transact!(store, |txn| groups::commit(
                txn,
                &limits,
                MAX_MEMBERS,
                &c,
                T0
            )
            .await)
            .unwrap();
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
            transact!(store, |txn| keypackages::claim_for_box(txn, b).await)
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
    let c = Commit {
        group,
        sender_box: a,
        sender_device: ad[0],
        message_id: MessageId::new(),
        epoch: 0,
        add: &add,
        remove: &[],
        envelope: b"c1",
        welcome_envelope: b"w1",
        welcome_boxes: &add,
    };
    let limits = store.limits.clone();
    transact!(store, |txn| groups::commit(
        txn,
        &limits,
        MAX_MEMBERS,
        &c,
        T0
    )
    .await)
    .unwrap();
    // The new member's box got the Welcome envelope, the creator's the Commit.
    assert_eq!(queued(store, b, bd[0]).await, vec![b"w1".to_vec()]);
    assert_eq!(queued(store, a, ad[0]).await, vec![b"c1".to_vec()]);
    let left = transact!(store, |txn| groups::leave(
        txn,
        &limits,
        group,
        b,
        bd[0],
        MessageId::new(),
        b"bye",
        T0
    )
    .await)
    .unwrap();
    let Outcome::Done(left) = left else {
        panic!("leave failed: {left:?}")
    };
    assert_eq!(left.state.epoch, 1);
    assert_eq!(left.state.members, vec![a]);
    // The remaining member and the leaver's other device learn of it.
    assert_eq!(queued(store, a, ad[0]).await.last().unwrap(), b"bye");
    assert_eq!(queued(store, b, bd[1]).await.last().unwrap(), b"bye");
    // The leaver can no longer commit; leaving twice is refused.
    let c = Commit {
        group,
        sender_box: b,
        sender_device: bd[0],
        message_id: MessageId::new(),
        epoch: 1,
        add: &[],
        remove: &[],
        envelope: b"late",
        welcome_envelope: &[],
        welcome_boxes: &[],
    };
    let outcome = transact!(store, |txn| groups::commit(
        txn,
        &limits,
        MAX_MEMBERS,
        &c,
        T0
    )
    .await)
    .unwrap();
    assert_eq!(outcome, Outcome::NotMember);
    let again = transact!(store, |txn| groups::leave(
        txn,
        &limits,
        group,
        b,
        bd[0],
        MessageId::new(),
        b"",
        T0
    )
    .await)
    .unwrap();
    assert_eq!(again, Outcome::NotMember);
}
