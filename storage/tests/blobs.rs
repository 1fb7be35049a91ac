//! Attachment blob records (`tables::blobs`): the upload life cycle, the
//! per-account quota under concurrency (snapshot isolation on the memory
//! backend, like TiKV), the expiry index and the purge of a deleted account's
//! blobs.

mod backends;
mod support;

use backends::{T0, new_box};
use rossby_keyspace::keys::expiry_shard;
use rossby_keyspace::{Key, RegionId};
use rossby_storage::tables::blobs::{self, BlobLimits, DueBlob, Sweep};
use rossby_storage::tables::records::BlobState;
use rossby_storage::tables::{Store, lifecycle};
use rossby_storage::{Error, transact};

const REGION: RegionId = RegionId(6);
const MIB: u64 = 1024 * 1024;

backends::on_every_backend!(
    an_upload_is_created_filled_completed_and_extended,
    limits_and_quota_are_enforced_and_change_nothing,
    concurrent_creations_never_exceed_the_quota,
    the_sweeper_deletes_due_blobs_and_gives_back_the_quota,
    a_blob_marked_for_deletion_is_not_extended,
    a_deleted_accounts_blobs_are_filed_for_deletion_at_once,
);

fn limits() -> BlobLimits {
    BlobLimits {
        max_size: 10 * MIB,
        quota_bytes: 12 * MIB,
        part_size: MIB as u32,
        max_parts: 10,
        max_uploads_in_progress: 3,
        upload_ttl_ms: 60_000,
        unsent_ttl_ms: 120_000,
        max_age_ms: 0,
    }
}

async fn create(
    store: &Store,
    box_id: rossby_keyspace::BoxId,
    blob: [u8; 16],
    size: u64,
) -> Result<(), Error> {
    let limits = limits();
    transact!(store, |txn| blobs::create(
        txn, &limits, box_id, blob, size, T0
    )
    .await)
    .map(drop)
}

async fn usage(store: &Store, box_id: rossby_keyspace::BoxId) -> (u64, u32) {
    let u = transact!(store, |txn| blobs::usage(txn, box_id).await).unwrap();
    (u.stored_bytes, u.uploads_in_progress)
}

async fn due(store: &Store, box_id: rossby_keyspace::BoxId, now: u64) -> Vec<DueBlob> {
    transact!(store, |txn| blobs::due(
        txn,
        REGION,
        expiry_shard(box_id),
        now,
        100
    )
    .await)
    .unwrap()
}

async fn an_upload_is_created_filled_completed_and_extended(store: &Store) {
    let (b, _) = new_box(store, REGION, 1).await;
    let blob = [1; 16];
    let limits = limits();
    let record = transact!(store, |txn| blobs::create(
        txn,
        &limits,
        b,
        blob,
        2 * MIB + 5,
        T0
    )
    .await)
    .unwrap();
    assert_eq!((record.part_count, record.part_size), (3, MIB as u32));
    assert_eq!(record.state(), BlobState::Uploading);
    assert_eq!(blobs::part_len(&record, 2), Some(5));
    assert_eq!(blobs::part_len(&record, 3), None);
    assert_eq!(usage(store, b).await, (2 * MIB + 5, 1));
    // Not downloadable while uploading.
    let err = transact!(store, |txn| blobs::downloadable(txn, b, blob, T0).await).unwrap_err();
    assert!(matches!(err, Error::BlobNotFound), "{err}");
    for index in [2, 0] {
        transact!(store, |txn| blobs::mark_part(txn, b, blob, index, T0 + 1)
            .await)
        .unwrap();
    }
    let err = transact!(store, |txn| blobs::mark_part(txn, b, blob, 3, T0 + 1).await).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let err = transact!(store, |txn| blobs::complete(txn, &limits, b, blob, T0 + 2)
        .await)
    .unwrap_err();
    assert!(
        matches!(&err, Error::UploadIncomplete { missing } if missing == &vec![1]),
        "{err}"
    );
    transact!(store, |txn| blobs::mark_part(txn, b, blob, 1, T0 + 3).await).unwrap();
    let done = transact!(store, |txn| blobs::complete(txn, &limits, b, blob, T0 + 4)
        .await)
    .unwrap();
    assert_eq!(done.state(), BlobState::Complete);
    assert_eq!(done.expires_at_ms, T0 + 4 + limits.unsent_ttl_ms);
    // Completing again changes nothing; parts are no longer accepted.
    let again = transact!(store, |txn| blobs::complete(txn, &limits, b, blob, T0 + 9)
        .await)
    .unwrap();
    assert_eq!(again, done);
    let err = transact!(store, |txn| blobs::mark_part(txn, b, blob, 0, T0 + 10)
        .await)
    .unwrap_err();
    assert!(matches!(err, Error::BlobNotFound), "{err}");
    assert_eq!(usage(store, b).await, (2 * MIB + 5, 0));
    // One expiry entry, under the record's time.
    assert!(due(store, b, done.expires_at_ms).await.is_empty());
    assert_eq!(
        due(store, b, done.expires_at_ms + 1).await,
        vec![DueBlob {
            box_id: b,
            blob,
            expires_at_ms: done.expires_at_ms
        }]
    );
    // A send extends it (with slack), and the entry moves along.
    transact!(store, |txn| blobs::extend(
        txn,
        b,
        blob,
        T0 + 20,
        T0 + 1_000_000,
        500,
        0
    )
    .await)
    .unwrap();
    let r = transact!(store, |txn| blobs::downloadable(
        txn,
        b,
        blob,
        T0 + 1_000_000
    )
    .await)
    .unwrap();
    assert_eq!(r.expires_at_ms, T0 + 1_000_500);
    assert_eq!(due(store, b, T0 + 1_000_501).await.len(), 1);
    assert_eq!(due(store, b, T0 + 1_000_500).await, vec![]);
    // A shorter extension keeps the longer life.
    transact!(store, |txn| blobs::extend(
        txn,
        b,
        blob,
        T0 + 30,
        T0 + 5_000,
        500,
        0
    )
    .await)
    .unwrap();
    let r = transact!(store, |txn| blobs::downloadable(txn, b, blob, T0 + 40)
        .await)
    .unwrap();
    assert_eq!(r.expires_at_ms, T0 + 1_000_500);
    // A blob may not be kept past its maximum age: the send is refused.
    let err = transact!(store, |txn| blobs::extend(
        txn,
        b,
        blob,
        T0 + 50,
        T0 + 2_000_000,
        0,
        1_500_000
    )
    .await)
    .unwrap_err();
    assert!(matches!(err, Error::BlobNotFound), "{err}");
    transact!(store, |txn| blobs::extend(
        txn,
        b,
        blob,
        T0 + 50,
        T0 + 1_200_000,
        900_000,
        1_500_000
    )
    .await)
    .unwrap();
    let r = transact!(store, |txn| blobs::downloadable(txn, b, blob, T0 + 50)
        .await)
    .unwrap();
    assert_eq!(
        r.expires_at_ms,
        r.created_at_ms + 1_500_000,
        "the slack stops at the maximum age"
    );
    // Unknown blobs are not extended.
    let err = transact!(store, |txn| blobs::extend(
        txn,
        b,
        [9; 16],
        T0,
        T0 + 9,
        0,
        0
    )
    .await)
    .unwrap_err();
    assert!(matches!(err, Error::BlobNotFound), "{err}");
}

async fn limits_and_quota_are_enforced_and_change_nothing(store: &Store) {
    let (b, _) = new_box(store, REGION, 1).await;
    for (size, expected) in [(0, "invalid"), (10 * MIB + 1, "too large")] {
        let err = create(store, b, [2; 16], size).await.unwrap_err();
        let ok = match expected {
            "invalid" => matches!(err, Error::Invalid(_)),
            _ => matches!(err, Error::TooLarge(_)),
        };
        assert!(ok, "{size}: {err}");
    }
    let few_parts = BlobLimits {
        max_parts: 2,
        ..limits()
    };
    let err = transact!(store, |txn| blobs::create(
        txn,
        &few_parts,
        b,
        [2; 16],
        3 * MIB,
        T0
    )
    .await)
    .unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    assert_eq!(usage(store, b).await, (0, 0));
    create(store, b, [3; 16], 10 * MIB).await.unwrap();
    let err = create(store, b, [4; 16], 2 * MIB + 1).await.unwrap_err();
    assert!(matches!(err, Error::QuotaExceeded(_)), "{err}");
    create(store, b, [4; 16], 2 * MIB).await.unwrap();
    create(store, b, [5; 16], 0).await.unwrap_err();
    // The name is taken.
    assert!(matches!(
        create(store, b, [4; 16], 1).await,
        Err(Error::Invalid(_))
    ));
    // Uploads in progress are limited too (quota raised to see that limit).
    let roomy = BlobLimits {
        quota_bytes: 100 * MIB,
        ..limits()
    };
    transact!(store, |txn| blobs::create(txn, &roomy, b, [6; 16], 1, T0)
        .await)
    .unwrap();
    let err = transact!(store, |txn| blobs::create(txn, &roomy, b, [7; 16], 1, T0)
        .await)
    .unwrap_err();
    assert!(matches!(err, Error::QuotaExceeded(_)), "{err}");
    assert_eq!(usage(store, b).await, (12 * MIB + 1, 3));
}

async fn concurrent_creations_never_exceed_the_quota(store: &Store) {
    let (b, _) = new_box(store, REGION, 1).await;
    // 12 MiB of quota, 3 uploads in progress: of 8 concurrent 5 MiB uploads
    // exactly two fit.
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            create(&store, b, [i + 10; 16], 5 * MIB).await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(Error::QuotaExceeded(_)) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(usage(store, b).await, (10 * MIB, 2));
}

async fn sweep(store: &Store, entry: &DueBlob, now: u64) -> Sweep {
    let outcome = transact!(store, |txn| blobs::mark_deleting(txn, entry, now).await).unwrap();
    if outcome == Sweep::DeleteObjects {
        while !transact!(store, |txn| blobs::finish_deleting(txn, entry, 2).await).unwrap() {}
    }
    outcome
}

async fn the_sweeper_deletes_due_blobs_and_gives_back_the_quota(store: &Store) {
    let (b, _) = new_box(store, REGION, 1).await;
    let limits = limits();
    // One upload never completed, one completed and never sent, one sent.
    for (blob, complete) in [([1; 16], false), ([2; 16], true), ([3; 16], true)] {
        create(store, b, blob, 5 * MIB / 2).await.unwrap();
        for index in 0..3 {
            transact!(store, |txn| blobs::mark_part(txn, b, blob, index, T0).await).unwrap();
        }
        if complete {
            transact!(store, |txn| blobs::complete(txn, &limits, b, blob, T0)
                .await)
            .unwrap();
        }
    }
    transact!(store, |txn| blobs::extend(
        txn,
        b,
        [3; 16],
        T0,
        T0 + 500_000,
        0,
        0
    )
    .await)
    .unwrap();
    // Nothing is due before the upload deadline.
    assert!(due(store, b, T0 + limits.upload_ttl_ms).await.is_empty());
    let now = T0 + limits.unsent_ttl_ms + 1;
    let entries = due(store, b, now).await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    for entry in &entries {
        assert_eq!(sweep(store, entry, now).await, Sweep::DeleteObjects);
        // A second sweeper doing the same after the first is harmless.
        assert_eq!(sweep(store, entry, now).await, Sweep::DeleteObjects);
    }
    assert!(due(store, b, now).await.is_empty());
    for blob in [[1; 16], [2; 16]] {
        assert!(
            transact!(store, |txn| blobs::record(txn, b, blob).await)
                .unwrap()
                .is_none()
        );
        let markers = transact!(store, |txn| txn
            .scan(
                &Key::blob_parts_range(b, blob),
                10,
                rossby_storage::ScanOrder::Forward
            )
            .await)
        .unwrap();
        assert!(markers.is_empty());
    }
    // The sent blob stays, and only its bytes still count.
    assert_eq!(usage(store, b).await, (5 * MIB / 2, 0));
    transact!(store, |txn| blobs::downloadable(txn, b, [3; 16], now).await).unwrap();
}

async fn a_blob_marked_for_deletion_is_not_extended(store: &Store) {
    let (b, _) = new_box(store, REGION, 1).await;
    let limits = limits();
    let blob = [4; 16];
    create(store, b, blob, 10).await.unwrap();
    transact!(store, |txn| blobs::mark_part(txn, b, blob, 0, T0).await).unwrap();
    transact!(store, |txn| blobs::complete(txn, &limits, b, blob, T0)
        .await)
    .unwrap();
    let now = T0 + limits.unsent_ttl_ms + 1;
    let entry = due(store, b, now).await[0];
    assert_eq!(
        transact!(store, |txn| blobs::mark_deleting(txn, &entry, now).await).unwrap(),
        Sweep::DeleteObjects
    );
    // A send now (its clock a little behind) finds the blob gone.
    let err = transact!(store, |txn| blobs::extend(
        txn,
        b,
        blob,
        T0 + 10,
        now + 1_000,
        0,
        0
    )
    .await)
    .unwrap_err();
    assert!(matches!(err, Error::BlobNotFound), "{err}");
    // A blob extended before the sweeper got to it is kept, and its stale
    // entry (if any) goes.
    let kept = [5; 16];
    create(store, b, kept, 10).await.unwrap();
    transact!(store, |txn| blobs::mark_part(txn, b, kept, 0, T0).await).unwrap();
    transact!(store, |txn| blobs::complete(txn, &limits, b, kept, T0)
        .await)
    .unwrap();
    let stale = DueBlob {
        box_id: b,
        blob: kept,
        expires_at_ms: T0 + 1,
    };
    assert_eq!(
        transact!(store, |txn| blobs::mark_deleting(txn, &stale, T0 + 2).await).unwrap(),
        Sweep::Kept
    );
    transact!(store, |txn| blobs::downloadable(txn, b, kept, T0 + 2).await).unwrap();
}

async fn a_deleted_accounts_blobs_are_filed_for_deletion_at_once(store: &Store) {
    let (b, _) = new_box(store, REGION, 1).await;
    let limits = limits();
    for blob in [[1; 16], [2; 16], [3; 16]] {
        create(store, b, blob, 10).await.unwrap();
        transact!(store, |txn| blobs::mark_part(txn, b, blob, 0, T0).await).unwrap();
    }
    transact!(store, |txn| blobs::complete(txn, &limits, b, [1; 16], T0)
        .await)
    .unwrap();
    store.delete_account(b, T0 + 1).await.unwrap();
    // Gone for downloads at once.
    let err = transact!(store, |txn| blobs::downloadable(txn, b, [1; 16], T0 + 1)
        .await)
    .unwrap_err();
    assert!(matches!(err, Error::BlobNotFound), "{err}");
    // The purge, in steps of two keys, moves every blob to the front of the
    // index and empties the box.
    while !transact!(store, |txn| lifecycle::purge_step(txn, b, 2).await).unwrap() {}
    let entries = due(store, b, 1).await;
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert!(!transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap());
    for entry in &entries {
        assert_eq!(entry.expires_at_ms, 0);
        assert_eq!(sweep(store, entry, T0 + 2).await, Sweep::DeleteObjects);
    }
    assert!(due(store, b, u64::MAX).await.is_empty());
    assert!(!transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap());
}
