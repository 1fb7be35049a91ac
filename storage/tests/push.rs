//! Wake-up push tokens and wake-up coalescing (`tables::push`), run on the
//! memory backend (snapshot isolation, like TiKV) and on fjall.

mod backends;
mod support;

use backends::T0;
use rossby_keyspace::{BoxId, DeviceId, MessageId, RegionId};
use rossby_storage::tables::presence::Holder;
use rossby_storage::tables::push::{self, DueWake, PushToken, Settlement, WakePolicy};
use rossby_storage::tables::queue::NewEnvelope;
use rossby_storage::tables::records::PushProvider;
use rossby_storage::tables::{Store, Tx, devices, lifecycle};
use rossby_storage::{Error, transact};

const REGION: RegionId = RegionId(3);
const POLICY: WakePolicy = WakePolicy {
    interval_ms: 10_000,
    outstanding_ms: 600_000,
};

backends::on_every_backend!(
    tokens_are_registered_replaced_and_removed,
    bad_tokens_are_rejected_and_change_nothing,
    removed_devices_and_deleted_accounts_lose_their_tokens,
    connected_devices_and_the_sender_are_not_woken,
    wakes_wait_for_an_ack_and_the_interval,
    outstanding_wakes_lapse,
    settling_removes_or_releases_only_the_same_token,
    concurrent_schedulers_wake_a_device_once,
);

async fn new_box(store: &Store, n: usize) -> (BoxId, Vec<DeviceId>) {
    backends::new_box(store, REGION, n).await
}

fn apns(token: &str) -> PushToken {
    PushToken {
        provider: PushProvider::Apns,
        token: token.into(),
        p256dh: Vec::new(),
        auth: Vec::new(),
    }
}

fn webpush() -> PushToken {
    PushToken {
        provider: PushProvider::Webpush,
        token: "https://push.example.net/sub/1".into(),
        p256dh: vec![4; 65],
        auth: vec![7; 16],
    }
}

async fn due(store: &Store, b: BoxId, skip: Option<DeviceId>, now: u64) -> Vec<DeviceId> {
    store
        .due_wakes(&[(b, skip)], &|_, _| false, POLICY, now)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.device)
        .collect()
}

/// Enqueues one message into `b` and returns its sequence number.
async fn send(store: &Store, b: BoxId, from: DeviceId, now: u64) -> u64 {
    let version = transact!(store, |txn| Ok(devices::recipients(txn, b).await?.0)).unwrap();
    let out = store
        .enqueue(
            b,
            &[NewEnvelope {
                sender: rossby_storage::tables::queue::Sender::Device {
                    box_id: b,
                    device_id: from,
                    identity_key: Some([7; 32]),
                },
                message_id: MessageId::new(),
                device_list_version: version,
                payload: b"x".to_vec(),
                wrapped_for: None,
            }],
            now,
        )
        .await
        .unwrap();
    out[0].as_ref().unwrap().seq
}

async fn tokens_are_registered_replaced_and_removed(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    assert_eq!(store.push_token(b, d[0]).await.unwrap(), None);
    store
        .register_push_token(b, d[0], &apns("ab01"), T0)
        .await
        .unwrap();
    let record = store.push_token(b, d[0]).await.unwrap().unwrap();
    assert_eq!(record.provider(), PushProvider::Apns);
    assert_eq!(record.token, "ab01");
    assert_eq!(record.registered_at_ms, T0);

    // A new registration replaces the token and forgets the wake-up state.
    assert_eq!(due(store, b, None, T0).await, vec![d[0]]);
    store
        .register_push_token(b, d[0], &webpush(), T0 + 1)
        .await
        .unwrap();
    let record = store.push_token(b, d[0]).await.unwrap().unwrap();
    assert_eq!(record.provider(), PushProvider::Webpush);
    assert_eq!((record.woken_at_ms, record.outstanding), (0, false));
    assert_eq!(record.p256dh, vec![4; 65]);

    assert!(store.remove_push_token(b, d[0]).await.unwrap());
    assert!(!store.remove_push_token(b, d[0]).await.unwrap());
    assert_eq!(store.push_token(b, d[0]).await.unwrap(), None);
    assert!(due(store, b, None, T0 + 60_000).await.is_empty());
}

async fn bad_tokens_are_rejected_and_change_nothing(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    let mut no_keys = webpush();
    no_keys.auth.clear();
    let mut keys_on_apns = apns("ab");
    keys_on_apns.auth = vec![1; 16];
    let bad = [
        apns(""),
        apns(&"a".repeat(push::MAX_TOKEN_BYTES + 1)),
        PushToken {
            provider: PushProvider::Unspecified,
            ..apns("ab")
        },
        no_keys,
        keys_on_apns,
    ];
    for token in &bad {
        let err = store
            .register_push_token(b, d[0], token, T0)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
    }
    assert_eq!(store.push_token(b, d[0]).await.unwrap(), None);
    // An unknown device, and a box that does not exist.
    let err = store
        .register_push_token(b, DeviceId::new(), &apns("ab"), T0)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DeviceNotFound), "{err}");
    let err = store
        .register_push_token(BoxId::new(REGION), DeviceId::new(), &apns("ab"), T0)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BoxNotFound), "{err}");
}

async fn removed_devices_and_deleted_accounts_lose_their_tokens(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    for device in &d {
        store
            .register_push_token(b, *device, &apns("ab"), T0)
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
    assert_eq!(store.push_token(b, d[0]).await.unwrap(), None);
    assert!(store.push_token(b, d[1]).await.unwrap().is_some());

    store.delete_account(b, T0).await.unwrap();
    // A deleted box wakes nobody, before and after its purge.
    assert!(due(store, b, None, T0 + 60_000).await.is_empty());
    store.purge(b).await.unwrap();
    assert_eq!(store.push_token(b, d[1]).await.unwrap(), None);
    assert!(!transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap());
}

async fn connected_devices_and_the_sender_are_not_woken(store: &Store) {
    let (b, d) = new_box(store, 4).await;
    for device in &d {
        store
            .register_push_token(b, *device, &apns("ab"), T0)
            .await
            .unwrap();
    }
    // d[1] holds a live presence lease (connected to some gateway); d[2] is
    // online here; d[0] sent the message.
    let holder = Holder {
        peer_address: "g1.example.net:7402".into(),
        gateway_id: "id-g1".into(),
    };
    store
        .claim_presence(b, d[1], &holder, T0 + 30_000)
        .await
        .unwrap();
    let woken = store
        .due_wakes(&[(b, Some(d[0]))], &|_, dev| dev == d[2], POLICY, T0)
        .await
        .unwrap();
    assert_eq!(
        woken,
        vec![DueWake {
            box_id: b,
            device: d[3],
            token: apns("ab"),
        }]
    );
    // Once the lease lapses d[1] is woken too, and d[2] once it is no longer
    // online (d[3] not again yet).
    let mut expected = vec![d[1], d[2]];
    expected.sort();
    assert_eq!(due(store, b, Some(d[0]), T0 + 30_000).await, expected);
}

async fn wakes_wait_for_an_ack_and_the_interval(store: &Store) {
    let (b, d) = new_box(store, 2).await;
    store
        .register_push_token(b, d[1], &apns("ab"), T0)
        .await
        .unwrap();
    let seq = send(store, b, d[0], T0).await;
    assert_eq!(due(store, b, Some(d[0]), T0).await, vec![d[1]]);
    // Outstanding: neither more messages nor the interval passing wake again.
    send(store, b, d[0], T0 + 1).await;
    assert!(due(store, b, Some(d[0]), T0 + 1).await.is_empty());
    assert!(
        due(store, b, Some(d[0]), T0 + 2 * POLICY.interval_ms)
            .await
            .is_empty()
    );
    // The device fetched and acknowledged: the next message wakes it, but no
    // sooner than the interval after the last wake-up.
    store.ack(b, d[1], seq, T0 + 2).await.unwrap();
    assert!(due(store, b, None, T0 + 3).await.is_empty());
    assert_eq!(
        due(store, b, None, T0 + POLICY.interval_ms).await,
        vec![d[1]]
    );
    let record = store.push_token(b, d[1]).await.unwrap().unwrap();
    assert_eq!(
        (record.woken_at_ms, record.woken_acked, record.outstanding),
        (T0 + POLICY.interval_ms, seq, true)
    );
}

async fn outstanding_wakes_lapse(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    store
        .register_push_token(b, d[0], &apns("ab"), T0)
        .await
        .unwrap();
    assert_eq!(due(store, b, None, T0).await, vec![d[0]]);
    assert!(
        due(store, b, None, T0 + POLICY.outstanding_ms - 1)
            .await
            .is_empty()
    );
    assert_eq!(
        due(store, b, None, T0 + POLICY.outstanding_ms).await,
        vec![d[0]]
    );
}

async fn settling_removes_or_releases_only_the_same_token(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    store
        .register_push_token(b, d[0], &apns("ab"), T0)
        .await
        .unwrap();
    let wake = store
        .due_wakes(&[(b, None)], &|_, _| false, POLICY, T0)
        .await
        .unwrap()
        .pop()
        .unwrap();
    // A failed delivery releases the wake-up: after the interval the device
    // is tried again although it acknowledged nothing.
    assert!(store.settle_wake(&wake, Settlement::Failed).await.unwrap());
    assert!(!store.settle_wake(&wake, Settlement::Failed).await.unwrap());
    assert!(due(store, b, None, T0 + 1).await.is_empty());
    assert_eq!(
        due(store, b, None, T0 + POLICY.interval_ms).await,
        vec![d[0]]
    );

    // The device registered a new token meanwhile: the old one's answers
    // change nothing.
    store
        .register_push_token(b, d[0], &apns("cd"), T0 + 1)
        .await
        .unwrap();
    assert!(
        !store
            .settle_wake(&wake, Settlement::Unregistered)
            .await
            .unwrap()
    );
    assert_eq!(
        store.push_token(b, d[0]).await.unwrap().unwrap().token,
        "cd"
    );
    let wake = store
        .due_wakes(&[(b, None)], &|_, _| false, POLICY, T0 + 2)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(
        store
            .settle_wake(&wake, Settlement::Unregistered)
            .await
            .unwrap()
    );
    assert_eq!(store.push_token(b, d[0]).await.unwrap(), None);
}

async fn concurrent_schedulers_wake_a_device_once(store: &Store) {
    let (b, d) = new_box(store, 1).await;
    store
        .register_push_token(b, d[0], &apns("ab"), T0)
        .await
        .unwrap();
    let mut first = store.kv.begin().await.unwrap();
    let mut second = store.kv.begin().await.unwrap();
    let no = |_: DeviceId| false;
    let a = push::due_wakes(&mut Tx::new(&mut *first), b, None, &no, POLICY, T0)
        .await
        .unwrap();
    let c = push::due_wakes(&mut Tx::new(&mut *second), b, None, &no, POLICY, T0)
        .await
        .unwrap();
    assert_eq!((a.len(), c.len()), (1, 1));
    first.commit().await.unwrap();
    let err = second.commit().await.unwrap_err();
    assert!(
        matches!(err, rossby_storage::kv::Error::Conflict(_)),
        "{err}"
    );
}
