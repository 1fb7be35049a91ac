//! Presence leases (`tables::presence`), run on the memory backend (snapshot
//! isolation, like TiKV) and on fjall.

mod backends;
mod support;

use backends::T0;
use rossby_keyspace::{BoxId, DeviceId, Key, RegionId, Table};
use rossby_storage::tables::presence::{self, Holder, Renewal};
use rossby_storage::tables::{Store, Tx, lifecycle};
use rossby_storage::{Error, ScanOrder, transact};

const REGION: RegionId = RegionId(3);
const LEASE: u64 = 30_000;

backends::on_every_backend!(
    claimed_leases_are_listed_until_they_expire,
    renewals_never_take_a_live_lease_from_another_gateway,
    removed_devices_lose_their_leases,
    only_the_holder_releases_a_lease,
    account_purge_removes_leases,
    a_claim_racing_a_device_removal_conflicts,
    bad_holders_are_rejected_and_change_nothing,
);

fn holder(name: &str) -> Holder {
    Holder {
        peer_address: format!("{name}.example.net:7402"),
        gateway_id: format!("id-{name}"),
    }
}

async fn new_box(store: &Store, n: usize) -> (BoxId, Vec<DeviceId>) {
    backends::new_box(store, REGION, n).await
}

/// Raw presence keys of a box, whatever their expiry.
async fn stored_leases(store: &Store, b: BoxId) -> usize {
    transact!(store, |txn| {
        Ok(txn
            .scan(
                &Key::table_range(b, Table::Presence),
                100,
                ScanOrder::Forward,
            )
            .await?
            .len())
    })
    .unwrap()
}

async fn live(store: &Store, b: BoxId, now: u64) -> Vec<(DeviceId, Holder)> {
    let mut lists = store.live_presence(&[b], now).await.unwrap();
    lists
        .pop()
        .unwrap()
        .into_iter()
        .map(|l| (l.device, l.holder))
        .collect()
}

async fn claimed_leases_are_listed_until_they_expire(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    let (g1, g2) = (holder("g1"), holder("g2"));
    assert!(live(store, b, T0).await.is_empty());
    store
        .claim_presence(b, d[0], &g1, T0 + LEASE)
        .await
        .unwrap();
    store
        .claim_presence(b, d[1], &g2, T0 + 2 * LEASE)
        .await
        .unwrap();
    let mut expected = vec![(d[0], g1.clone()), (d[1], g2.clone())];
    expected.sort_by_key(|(d, _)| *d);
    assert_eq!(live(store, b, T0).await, expected);
    let leases = store.live_presence(&[b], T0).await.unwrap();
    assert!(
        leases[0]
            .iter()
            .any(|l| l.device == d[0] && l.expires_at_ms == T0 + LEASE)
    );

    // At its expiry time the first lease is no longer used. Listing writes
    // nothing (it holds no guard of the box): the stale lease stays until the
    // device claims anew or is removed.
    assert_eq!(live(store, b, T0 + LEASE).await, vec![(d[1], g2.clone())]);
    assert_eq!(stored_leases(store, b).await, 2);

    // Renewing keeps a lease alive past its first expiry.
    let renewed = store
        .renew_presence(&[(b, d[1])], &g2, T0 + LEASE, T0 + 5 * LEASE)
        .await
        .unwrap();
    assert_eq!(renewed, vec![Renewal::Renewed]);
    assert_eq!(live(store, b, T0 + 4 * LEASE).await, vec![(d[1], g2)]);

    // Several boxes in one read; an unknown box simply has none.
    let (other, od) = new_box(store, 1).await;
    store
        .claim_presence(other, od[0], &g1, T0 + 9 * LEASE)
        .await
        .unwrap();
    let lists = store
        .live_presence(&[b, BoxId::new(REGION), other], T0 + 4 * LEASE)
        .await
        .unwrap();
    assert_eq!(
        lists.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![1, 0, 1]
    );

    // Claiming for a device that does not exist is refused.
    let err = store
        .claim_presence(b, DeviceId::new(), &g1, T0 + LEASE)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DeviceNotFound), "{err}");
}

async fn renewals_never_take_a_live_lease_from_another_gateway(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let (g1, g2) = (holder("g1"), holder("g2"));
    store
        .claim_presence(b, d[0], &g1, T0 + LEASE)
        .await
        .unwrap();
    // The device moved to g2: the newest claim wins.
    store
        .claim_presence(b, d[0], &g2, T0 + LEASE)
        .await
        .unwrap();
    assert_eq!(live(store, b, T0).await, vec![(d[0], g2.clone())]);
    // g1 has not noticed yet; its renewal leaves g2's lease alone.
    let r = store
        .renew_presence(&[(b, d[0])], &g1, T0 + 1, T0 + 2 * LEASE)
        .await
        .unwrap();
    assert_eq!(r, vec![Renewal::HeldElsewhere]);
    assert_eq!(live(store, b, T0 + 1).await, vec![(d[0], g2.clone())]);
    // Once g2's lease lapsed, g1 may take it over again.
    let r = store
        .renew_presence(&[(b, d[0])], &g1, T0 + LEASE, T0 + 2 * LEASE)
        .await
        .unwrap();
    assert_eq!(r, vec![Renewal::Renewed]);
    assert_eq!(live(store, b, T0 + LEASE).await, vec![(d[0], g1.clone())]);
    // A renewal after the lease was released (or lost) writes it again.
    let none = |_: BoxId, _: DeviceId| false;
    assert_eq!(
        store
            .release_presence(&[(b, d[0])], &g1.gateway_id, &none)
            .await
            .unwrap(),
        1
    );
    let r = store
        .renew_presence(&[(b, d[0])], &g1, T0 + LEASE, T0 + 2 * LEASE)
        .await
        .unwrap();
    assert_eq!(r, vec![Renewal::Renewed]);
    assert_eq!(live(store, b, T0 + LEASE).await, vec![(d[0], g1)]);
}

async fn removed_devices_lose_their_leases(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    let g1 = holder("g1");
    for device in &d {
        store
            .claim_presence(b, *device, &g1, T0 + LEASE)
            .await
            .unwrap();
    }
    transact!(store, |txn| lifecycle::remove_device(
        txn,
        &store.limits,
        b,
        d[0]
    )
    .await)
    .unwrap();
    let r = store
        .renew_presence(&[(b, d[0]), (b, d[1])], &g1, T0, T0 + 2 * LEASE)
        .await
        .unwrap();
    assert_eq!(r, vec![Renewal::DeviceGone, Renewal::Renewed]);
    assert_eq!(live(store, b, T0).await, vec![(d[1], g1)]);
    assert_eq!(stored_leases(store, b).await, 1);
}

async fn only_the_holder_releases_a_lease(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    let (g1, g2) = (holder("g1"), holder("g2"));
    store
        .claim_presence(b, d[0], &g1, T0 + LEASE)
        .await
        .unwrap();
    store
        .claim_presence(b, d[1], &g1, T0 + LEASE)
        .await
        .unwrap();
    let none = |_: BoxId, _: DeviceId| false;
    // Another gateway's release does nothing.
    assert_eq!(
        store
            .release_presence(&[(b, d[0])], &g2.gateway_id, &none)
            .await
            .unwrap(),
        0
    );
    // A lease the caller still wants is kept.
    let keep_first = |_: BoxId, device: DeviceId| device == d[0];
    assert_eq!(
        store
            .release_presence(&[(b, d[0]), (b, d[1])], &g1.gateway_id, &keep_first)
            .await
            .unwrap(),
        1
    );
    assert_eq!(live(store, b, T0).await, vec![(d[0], g1.clone())]);
    // Releasing what is not there is a no-op.
    assert_eq!(
        store
            .release_presence(&[(b, d[1])], &g1.gateway_id, &none)
            .await
            .unwrap(),
        0
    );
}

async fn account_purge_removes_leases(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    store
        .claim_presence(b, d[0], &holder("g1"), T0 + LEASE)
        .await
        .unwrap();
    store.delete_account(b, T0).await.unwrap();
    store.purge(b).await.unwrap();
    assert_eq!(stored_leases(store, b).await, 0);
    assert!(!transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap());
    // A late renewal of a deleted box writes nothing back.
    let r = store
        .renew_presence(&[(b, d[0])], &holder("g1"), T0, T0 + LEASE)
        .await
        .unwrap();
    assert_eq!(r, vec![Renewal::DeviceGone]);
    assert!(!transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap());
}

async fn bad_holders_are_rejected_and_change_nothing(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let bad = [
        Holder {
            peer_address: String::new(),
            gateway_id: "id".into(),
        },
        Holder {
            peer_address: "x".repeat(256),
            gateway_id: "id".into(),
        },
        Holder {
            peer_address: "g:1".into(),
            gateway_id: String::new(),
        },
        Holder {
            peer_address: "g:1".into(),
            gateway_id: "i".repeat(65),
        },
    ];
    for h in &bad {
        let err = store
            .claim_presence(b, d[0], h, T0 + LEASE)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        let err = store
            .renew_presence(&[(b, d[0])], h, T0, T0 + LEASE)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
    }
    assert_eq!(stored_leases(store, b).await, 0);
}

async fn a_claim_racing_a_device_removal_conflicts(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    let mut claim = store.kv.begin().await.unwrap();
    presence::claim(
        &mut Tx::new(&mut *claim),
        b,
        d[0],
        &holder("g1"),
        T0 + LEASE,
    )
    .await
    .unwrap();
    // The device is removed and that commits first.
    transact!(store, |txn| lifecycle::remove_device(
        txn,
        &store.limits,
        b,
        d[0]
    )
    .await)
    .unwrap();
    let err = claim.commit().await.unwrap_err();
    assert!(
        matches!(err, rossby_storage::kv::Error::Conflict(_)),
        "{err}"
    );
    assert_eq!(stored_leases(store, b).await, 0);
    // Retried, the claim finds the device gone.
    let err = store
        .claim_presence(b, d[0], &holder("g1"), T0 + LEASE)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DeviceNotFound), "{err}");
}
