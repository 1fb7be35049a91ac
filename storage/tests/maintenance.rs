//! Maintenance leases (`tables::maintenance`) and the per-job work they schedule
//! (one expiry shard at a time, the purge queue), run on the memory backend
//! (snapshot isolation, like TiKV) and on fjall.

mod backends;
mod support;

use backends::T0;
use rossby_keyspace::keys::expiry_shard;
use rossby_keyspace::{BoxId, DeviceId, MaintenanceJob, MessageId, RegionId};
use rossby_storage::kv::Error as KvError;
use rossby_storage::tables::maintenance::{self, Acquired};
use rossby_storage::tables::presence::Holder;
use rossby_storage::tables::queue::{FetchLimits, NewEnvelope};
use rossby_storage::tables::{Store, Tx, devices, lifecycle};
use rossby_storage::{Error, transact};

const REGION: RegionId = RegionId(4);
const OTHER_REGION: RegionId = RegionId(5);
const LEASE: u64 = 15_000;
const SHARD: MaintenanceJob = MaintenanceJob::ExpiryShard(3);

backends::on_every_backend!(
    a_lease_has_one_holder_at_a_time,
    a_lapsed_lease_is_taken_over,
    the_holder_renews_even_after_its_lease_lapsed,
    only_the_holder_releases_and_then_anyone_takes_it,
    jobs_and_regions_have_independent_leases,
    bad_holders_and_expiries_are_rejected_and_change_nothing,
    racing_acquisitions_leave_exactly_one_holder,
    deleting_an_account_leaves_the_purge_to_maintenance,
    interrupted_purges_are_finished_by_bounded_steps,
    a_shard_sweep_touches_only_its_shard,
);

fn holder(name: &str) -> Holder {
    Holder {
        peer_address: format!("{name}.example.net:7402"),
        gateway_id: format!("id-{name}"),
    }
}

async fn acquire(store: &Store, job: MaintenanceJob, who: &Holder, now: u64) -> Acquired {
    store
        .acquire_maintenance(REGION, job, who, now, now + LEASE)
        .await
        .unwrap()
}

async fn lease(store: &Store, job: MaintenanceJob) -> Option<maintenance::MaintenanceLease> {
    transact!(store, |txn| maintenance::lease(txn, REGION, job).await).unwrap()
}

async fn holders(store: &Store, now: u64) -> Vec<(MaintenanceJob, String)> {
    transact!(store, |txn| maintenance::holders(txn, REGION, now).await)
        .unwrap()
        .into_iter()
        .map(|l| (l.job, l.holder.gateway_id))
        .collect()
}

async fn a_lease_has_one_holder_at_a_time(store: &Store) {
    let (g1, g2) = (holder("g1"), holder("g2"));
    assert!(holders(store, T0).await.is_empty());
    assert_eq!(acquire(store, SHARD, &g1, T0).await, Acquired::Held);
    // A second gateway finds the live lease and writes nothing.
    match acquire(store, SHARD, &g2, T0 + 1).await {
        Acquired::Elsewhere(l) => {
            assert_eq!(l.holder, g1);
            assert_eq!(l.expires_at_ms, T0 + LEASE);
            assert_eq!(l.job, SHARD);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(lease(store, SHARD).await.unwrap().holder, g1);
    assert_eq!(holders(store, T0 + 1).await, vec![(SHARD, g1.gateway_id)]);
    // Until the last millisecond of the lease.
    assert!(matches!(
        acquire(store, SHARD, &g2, T0 + LEASE - 1).await,
        Acquired::Elsewhere(_)
    ));
}

async fn a_lapsed_lease_is_taken_over(store: &Store) {
    let (g1, g2) = (holder("g1"), holder("g2"));
    acquire(store, SHARD, &g1, T0).await;
    // Lapsed at its expiry: no longer a holder, and anyone may take it.
    assert!(holders(store, T0 + LEASE).await.is_empty());
    let later = T0 + LEASE;
    assert_eq!(acquire(store, SHARD, &g2, later).await, Acquired::Held);
    let l = lease(store, SHARD).await.unwrap();
    assert_eq!((l.holder, l.expires_at_ms), (g2.clone(), later + LEASE));
    // The old holder, coming back, finds it taken.
    match acquire(store, SHARD, &g1, later + 1).await {
        Acquired::Elsewhere(l) => assert_eq!(l.holder, g2),
        other => panic!("{other:?}"),
    }
}

async fn the_holder_renews_even_after_its_lease_lapsed(store: &Store) {
    let g1 = holder("g1");
    acquire(store, SHARD, &g1, T0).await;
    assert_eq!(acquire(store, SHARD, &g1, T0 + 5_000).await, Acquired::Held);
    assert_eq!(
        lease(store, SHARD).await.unwrap().expires_at_ms,
        T0 + 5_000 + LEASE
    );
    // Nobody took it meanwhile: renewing a lapsed lease of one's own is fine.
    let late = T0 + 10 * LEASE;
    assert_eq!(acquire(store, SHARD, &g1, late).await, Acquired::Held);
    assert_eq!(
        lease(store, SHARD).await.unwrap().expires_at_ms,
        late + LEASE
    );
    // A new address of the same run is recorded too.
    let moved = Holder {
        peer_address: "elsewhere.example.net:7402".into(),
        gateway_id: g1.gateway_id.clone(),
    };
    assert_eq!(acquire(store, SHARD, &moved, late).await, Acquired::Held);
    assert_eq!(lease(store, SHARD).await.unwrap().holder, moved);
}

async fn only_the_holder_releases_and_then_anyone_takes_it(store: &Store) {
    let (g1, g2) = (holder("g1"), holder("g2"));
    acquire(store, SHARD, &g1, T0).await;
    acquire(store, MaintenanceJob::Purge, &g1, T0).await;
    acquire(store, MaintenanceJob::ExpiryShard(0), &g2, T0).await;
    assert_eq!(
        store
            .release_maintenance(REGION, &g2.gateway_id)
            .await
            .unwrap(),
        1,
        "g2 releases only its own lease"
    );
    assert_eq!(
        holders(store, T0).await,
        vec![
            (SHARD, g1.gateway_id.clone()),
            (MaintenanceJob::Purge, g1.gateway_id.clone())
        ]
    );
    // Releasing a job whose lease names another gateway changes nothing.
    assert!(
        !transact!(store, |txn| maintenance::release(
            txn, REGION, SHARD, "id-g2"
        )
        .await)
        .unwrap()
    );
    assert_eq!(lease(store, SHARD).await.unwrap().holder, g1);
    assert_eq!(
        store
            .release_maintenance(REGION, &g1.gateway_id)
            .await
            .unwrap(),
        2
    );
    assert!(holders(store, T0).await.is_empty());
    assert!(
        transact!(store, |txn| maintenance::leases(txn, REGION).await)
            .unwrap()
            .is_empty(),
        "released leases are deleted"
    );
    // Free at once, long before the released lease would have lapsed.
    assert_eq!(acquire(store, SHARD, &g2, T0 + 1).await, Acquired::Held);
}

async fn jobs_and_regions_have_independent_leases(store: &Store) {
    let (g1, g2) = (holder("g1"), holder("g2"));
    for job in MaintenanceJob::all() {
        let who = match job {
            MaintenanceJob::ExpiryShard(s) if s % 2 == 0 => &g1,
            _ => &g2,
        };
        assert_eq!(acquire(store, job, who, T0).await, Acquired::Held);
    }
    // Another region's jobs are free.
    assert_eq!(
        store
            .acquire_maintenance(OTHER_REGION, SHARD, &g1, T0, T0 + LEASE)
            .await
            .unwrap(),
        Acquired::Held
    );
    let listed = holders(store, T0).await;
    assert_eq!(listed.len(), MaintenanceJob::COUNT);
    let jobs: Vec<MaintenanceJob> = listed.iter().map(|(j, _)| *j).collect();
    assert_eq!(jobs, MaintenanceJob::all().collect::<Vec<_>>(), "job order");
    for (job, id) in &listed {
        let expected = match job {
            MaintenanceJob::ExpiryShard(s) if s % 2 == 0 => "id-g1",
            _ => "id-g2",
        };
        assert_eq!(id, expected, "{job}");
    }
    let other = store.maintenance_leases(OTHER_REGION).await.unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!((other[0].job, &other[0].holder), (SHARD, &g1));
}

async fn bad_holders_and_expiries_are_rejected_and_change_nothing(store: &Store) {
    let bad = [
        Holder {
            peer_address: String::new(),
            gateway_id: "id".into(),
        },
        Holder {
            peer_address: "x:1".into(),
            gateway_id: "i".repeat(65),
        },
    ];
    for h in &bad {
        let r = store
            .acquire_maintenance(REGION, SHARD, h, T0, T0 + LEASE)
            .await;
        assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    }
    let r = store
        .acquire_maintenance(REGION, SHARD, &holder("g1"), T0, T0)
        .await;
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    assert!(store.maintenance_leases(REGION).await.unwrap().is_empty());
}

/// Many gateways acquiring every job at once, through the retrying store: each
/// job ends with one holder, and every gateway was told the truth (the ones told
/// `Held` are exactly the holders).
async fn racing_acquisitions_leave_exactly_one_holder(store: &Store) {
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let me = holder(&format!("g{i}"));
            let mut won = Vec::new();
            for job in MaintenanceJob::all() {
                if store
                    .acquire_maintenance(REGION, job, &me, T0, T0 + LEASE)
                    .await
                    .unwrap()
                    == Acquired::Held
                {
                    won.push(job);
                }
            }
            (me.gateway_id, won)
        }));
    }
    let mut winners: Vec<(MaintenanceJob, String)> = Vec::new();
    for task in tasks {
        let (id, won) = task.await.unwrap();
        winners.extend(won.into_iter().map(|job| (job, id.clone())));
    }
    winners.sort();
    assert_eq!(winners.len(), MaintenanceJob::COUNT, "{winners:?}");
    assert_eq!(holders(store, T0).await, winners);
}

/// Two raw transactions on the memory backend (TiKV's snapshot isolation), both
/// finding the lease free in their snapshots: the second to commit conflicts,
/// so the lease never names two gateways.
#[tokio::test]
async fn interleaved_acquisitions_conflict_under_snapshot_isolation() {
    let env = backends::memory();
    let store = &env.store;
    let (g1, g2) = (holder("g1"), holder("g2"));
    for (first_holds, job) in [(false, SHARD), (true, MaintenanceJob::Purge)] {
        if first_holds {
            // A lapsed lease of a third gateway: both may take it.
            acquire(store, job, &holder("g0"), T0 - 2 * LEASE).await;
        }
        let mut t1 = store.kv.begin().await.unwrap();
        let mut t2 = store.kv.begin().await.unwrap();
        let a1 = maintenance::acquire(&mut Tx::new(&mut *t1), REGION, job, &g1, T0, T0 + LEASE)
            .await
            .unwrap();
        let a2 = maintenance::acquire(&mut Tx::new(&mut *t2), REGION, job, &g2, T0, T0 + LEASE)
            .await
            .unwrap();
        assert_eq!((a1, a2), (Acquired::Held, Acquired::Held), "{job}");
        t1.commit().await.unwrap();
        let second = t2.commit().await;
        assert!(matches!(second, Err(KvError::Conflict(_))), "{second:?}");
        assert_eq!(lease(store, job).await.unwrap().holder, g1);
    }
    // A renewal racing a takeover of the same lapsed lease: one of them loses.
    acquire(store, SHARD, &g1, T0 + LEASE).await;
    let later = T0 + 3 * LEASE;
    let mut renewal = store.kv.begin().await.unwrap();
    let mut takeover = store.kv.begin().await.unwrap();
    maintenance::acquire(
        &mut Tx::new(&mut *renewal),
        REGION,
        SHARD,
        &g1,
        later,
        later + LEASE,
    )
    .await
    .unwrap();
    maintenance::acquire(
        &mut Tx::new(&mut *takeover),
        REGION,
        SHARD,
        &g2,
        later,
        later + LEASE,
    )
    .await
    .unwrap();
    takeover.commit().await.unwrap();
    assert!(matches!(renewal.commit().await, Err(KvError::Conflict(_))));
    assert_eq!(lease(store, SHARD).await.unwrap().holder, g2);
    // A release racing a takeover cannot delete the new holder's lease.
    let mut release = store.kv.begin().await.unwrap();
    assert!(
        maintenance::release(&mut Tx::new(&mut *release), REGION, SHARD, &g2.gateway_id)
            .await
            .unwrap()
    );
    let mut renew = store.kv.begin().await.unwrap();
    maintenance::acquire(
        &mut Tx::new(&mut *renew),
        REGION,
        SHARD,
        &g2,
        later + 1,
        later + 2 * LEASE,
    )
    .await
    .unwrap();
    renew.commit().await.unwrap();
    assert!(matches!(release.commit().await, Err(KvError::Conflict(_))));
    assert_eq!(
        lease(store, SHARD).await.unwrap().expires_at_ms,
        later + 2 * LEASE
    );
}

async fn new_box(store: &Store, n: usize) -> (BoxId, Vec<DeviceId>) {
    backends::new_box(store, REGION, n).await
}

async fn send(store: &Store, from: (BoxId, DeviceId), to: BoxId, body: &[u8], now: u64) {
    let version = transact!(store, |txn| Ok(devices::recipients(txn, to).await?.0)).unwrap();
    let out = store
        .enqueue(
            to,
            &[NewEnvelope {
                sender: rossby_storage::tables::queue::Sender::Device {
                    box_id: from.0,
                    device_id: from.1,
                    identity_key: Some([7; 32]),
                },
                message_id: MessageId::new(),
                device_list_version: version,
                payload: body.to_vec(),
                wrapped_for: None,
            }],
            now,
        )
        .await
        .unwrap();
    assert!(out[0].is_ok(), "{out:?}");
}

async fn has_keys(store: &Store, b: BoxId) -> bool {
    transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap()
}

/// `Store::delete_account` commits the tombstone and the purge entry and
/// returns: the account is invisible at once, and its keys wait for the holder
/// of the region's purge lease.
async fn deleting_an_account_leaves_the_purge_to_maintenance(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    let (s, sd) = new_box(store, 1).await;
    for i in 0..10u8 {
        send(store, (s, sd[0]), b, &[i], T0).await;
    }
    store.delete_account(b, T0 + 5).await.unwrap();
    assert!(matches!(
        store.fetch(b, d[0], FetchLimits::default()).await,
        Err(Error::DeviceNotFound)
    ));
    assert!(matches!(
        store.delete_account(b, T0 + 6).await,
        Err(Error::BoxNotFound)
    ));
    assert!(has_keys(store, b).await, "the deletion purged inline");
    assert_eq!(store.pending_purges(REGION, 10).await.unwrap(), vec![b]);
    assert_eq!(
        store.purge_backlog(REGION, 100).await.unwrap(),
        maintenance::PurgeBacklog {
            pending: 1,
            oldest_at_ms: Some(T0 + 5),
        }
    );
    assert_eq!(store.resume_purges(REGION).await.unwrap(), 1);
    assert!(!has_keys(store, b).await);
    assert!(store.pending_purges(REGION, 10).await.unwrap().is_empty());
}

/// Purge entries drive bounded purge steps (what the gateway's maintenance loop
/// runs), and the backlog shows them meanwhile.
async fn interrupted_purges_are_finished_by_bounded_steps(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    let (c, _) = new_box(store, 1).await;
    let (s, sd) = new_box(store, 1).await;
    for i in 0..10u8 {
        send(store, (s, sd[0]), b, &[i], T0).await;
    }
    let empty = store.purge_backlog(REGION, 100).await.unwrap();
    assert_eq!(empty, maintenance::PurgeBacklog::default());

    // Only the deletion transactions run, as if the process died before purging.
    for (x, at) in [(b, T0 + 5), (c, T0 + 9)] {
        transact!(store, |txn| lifecycle::delete_account(
            txn,
            &store.limits,
            x,
            at
        )
        .await)
        .unwrap();
    }
    assert!(matches!(
        store.fetch(b, d[0], FetchLimits::default()).await,
        Err(Error::DeviceNotFound)
    ));
    assert!(has_keys(store, b).await);
    let mut pending = store.pending_purges(REGION, 10).await.unwrap();
    pending.sort();
    let mut expected = vec![b, c];
    expected.sort();
    assert_eq!(pending, expected);
    assert_eq!(
        store.purge_backlog(REGION, 100).await.unwrap(),
        maintenance::PurgeBacklog {
            pending: 2,
            oldest_at_ms: Some(T0 + 5),
        }
    );
    assert_eq!(store.purge_backlog(REGION, 1).await.unwrap().pending, 1);

    // Bounded steps: a few keys per transaction until the box is gone.
    let mut small = store.clone();
    small.limits.max_deletes_per_txn = 4;
    let mut steps = 0;
    while !small.purge_step(b).await.unwrap() {
        steps += 1;
        assert!(steps < 100, "the purge of one box never ends");
    }
    assert!(steps > 2, "{steps} steps");
    assert!(!has_keys(store, b).await);
    assert_eq!(store.pending_purges(REGION, 10).await.unwrap(), vec![c]);
    // A purge step of a box already gone is done at once.
    assert!(store.purge_step(b).await.unwrap());
    assert!(store.purge_step(c).await.unwrap());
    assert!(!has_keys(store, c).await);
    assert_eq!(
        store.purge_backlog(REGION, 100).await.unwrap(),
        maintenance::PurgeBacklog::default()
    );
}

/// `Store::sweep_shard` deletes due entries of its shard only, in batches, and
/// says whether more are due; `oldest_due_expiry` reports the shard's lag.
async fn a_shard_sweep_touches_only_its_shard(store: &Store) {
    let (s, sd) = new_box(store, 1).await;
    // Two recipient boxes in different shards.
    let mut boxes: Vec<BoxId> = Vec::new();
    while boxes.len() < 2 {
        let (b, _) = new_box(store, 1).await;
        if boxes.iter().all(|o| expiry_shard(*o) != expiry_shard(b)) {
            boxes.push(b);
        }
    }
    let (a, b) = (boxes[0], boxes[1]);
    for i in 0..5u8 {
        send(store, (s, sd[0]), a, &[i], T0 + u64::from(i)).await;
    }
    send(store, (s, sd[0]), b, b"b", T0).await;
    let (shard_a, shard_b) = (expiry_shard(a), expiry_shard(b));
    let retention = store.limits.retention_ms;
    let due_at = T0 + retention + 1_000;

    assert_eq!(
        store.oldest_due_expiry(REGION, shard_a, T0).await.unwrap(),
        None,
        "nothing is due yet"
    );
    let oldest = store
        .oldest_due_expiry(REGION, shard_a, due_at)
        .await
        .unwrap()
        .unwrap();
    assert!(oldest <= T0 + retention, "{oldest}");

    // Batches of two: the first sweeps say more may be due.
    let mut envelopes = 0;
    let mut rounds = 0;
    loop {
        let (swept, more) = store.sweep_shard(REGION, shard_a, due_at, 2).await.unwrap();
        envelopes += swept.envelopes;
        rounds += 1;
        if !more {
            break;
        }
        assert!(rounds < 20);
    }
    assert!(rounds >= 2, "{rounds}");
    assert_eq!(envelopes, 5);
    assert_eq!(
        store
            .oldest_due_expiry(REGION, shard_a, due_at)
            .await
            .unwrap(),
        None
    );
    // The other shard was not touched.
    assert!(
        store
            .oldest_due_expiry(REGION, shard_b, due_at)
            .await
            .unwrap()
            .is_some()
    );
    let (swept, more) = store
        .sweep_shard(REGION, shard_b, due_at, 100)
        .await
        .unwrap();
    assert_eq!((swept.envelopes, more), (1, false));
}
