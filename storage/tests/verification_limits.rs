//! Verification limits kept in storage (`tables::identifier_limits`) and the
//! registration lock's PIN attempts (`tables::registration_lock`): counted
//! across registrations, shared by every gateway of a store, and never
//! exceeded by concurrent attempts (snapshot isolation on the memory backend,
//! like TiKV).

mod backends;
mod support;

use backends::{T0, new_box};
use rossby_keyspace::RegionId;
use rossby_storage::tables::identifier_limits::{self, CodeRate};
use rossby_storage::tables::registration_lock::{self, Gate};
use rossby_storage::tables::{Store, accounts};
use rossby_storage::transact;

const REGION: RegionId = RegionId(3);
const MINUTE: u64 = 60_000;

backends::on_every_backend!(
    codes_refill_and_are_refused_when_spent,
    concurrent_codes_never_exceed_the_bucket,
    wrong_codes_are_counted_per_identifier_and_window,
    concurrent_wrong_codes_are_all_counted,
    pin_attempts_are_counted_then_locked_out,
    concurrent_pin_attempts_never_exceed_the_limit,
);

/// Three codes at once, then one every ten minutes.
const RATE: CodeRate = CodeRate {
    per_ms: 1.0 / (10.0 * MINUTE as f64),
    burst: 3.0,
};

async fn take(store: &Store, digest: [u8; 32], now: u64) -> Option<u64> {
    transact!(store, |txn| identifier_limits::take_code(
        txn, &digest, RATE, now
    )
    .await)
    .unwrap()
}

async fn codes_refill_and_are_refused_when_spent(store: &Store) {
    let (a, b) = ([1; 32], [2; 32]);
    for i in 0..3 {
        assert_eq!(take(store, a, T0 + i).await, None);
    }
    let wait = take(store, a, T0 + 3)
        .await
        .expect("a fourth code is refused");
    assert!(wait > 9 * MINUTE && wait <= 10 * MINUTE, "{wait}");
    // Refusals spend nothing: still refused, and the wait does not grow.
    assert!(take(store, a, T0 + 4).await.unwrap() <= wait);
    // Another identifier has its own bucket.
    assert_eq!(take(store, b, T0 + 5).await, None);
    // Ten minutes later one more code.
    assert_eq!(take(store, a, T0 + 10 * MINUTE + 10).await, None);
    assert!(take(store, a, T0 + 10 * MINUTE + 11).await.is_some());
    // Unlimited rates never refuse nor write.
    let unlimited = CodeRate {
        per_ms: f64::INFINITY,
        burst: f64::INFINITY,
    };
    let got = transact!(store, |txn| identifier_limits::take_code(
        txn, &a, unlimited, T0
    )
    .await)
    .unwrap();
    assert_eq!(got, None);
}

async fn concurrent_codes_never_exceed_the_bucket(store: &Store) {
    let digest = [7; 32];
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = store.clone();
        tasks.push(tokio::spawn(
            async move { take(&store, digest, T0 + i).await },
        ));
    }
    let mut sent = 0;
    for task in tasks {
        if task.await.unwrap().is_none() {
            sent += 1;
        }
    }
    assert_eq!(sent, 3, "twelve concurrent registrations sent three codes");
}

const DAY: u64 = 24 * 60 * MINUTE;

async fn wrong_codes_are_counted_per_identifier_and_window(store: &Store) {
    let digest = [3; 32];
    let wrong = |now: u64| async move {
        transact!(store, |txn| identifier_limits::record_wrong_code(
            txn, &digest, now, DAY
        )
        .await)
        .unwrap()
    };
    let count = |now: u64| async move {
        transact!(store, |txn| identifier_limits::wrong_codes(
            txn, &digest, now, DAY
        )
        .await)
        .unwrap()
    };
    let start = 100 * DAY;
    assert_eq!(count(start).await, 0);
    assert_eq!(wrong(start).await, 1);
    assert_eq!(wrong(start + 1).await, 2);
    assert_eq!(count(start + 2).await, 2);
    // The next window starts from nothing.
    assert_eq!(count(start + DAY).await, 0);
    assert_eq!(wrong(start + DAY).await, 1);
}

async fn concurrent_wrong_codes_are_all_counted(store: &Store) {
    let digest = [4; 32];
    let now = 50 * DAY;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            transact!(store, |txn| identifier_limits::record_wrong_code(
                txn, &digest, now, DAY
            )
            .await)
            .unwrap()
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=10).collect::<Vec<u32>>(), "each counted once");
}

const MAX: u32 = 10;
const LOCKOUT: u64 = 60 * MINUTE;

async fn attempt(store: &Store, b: rossby_keyspace::BoxId, now: u64) -> Gate {
    transact!(store, |txn| registration_lock::begin_attempt(
        txn, b, MAX, LOCKOUT, now
    )
    .await)
    .unwrap()
}

async fn pin_attempts_are_counted_then_locked_out(store: &Store) {
    let (b, _) = new_box(store, REGION, 1).await;
    assert_eq!(attempt(store, b, T0).await, Gate::Unlocked);
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
    transact!(store, |txn| registration_lock::set(txn, b, Some(hash), T0)
        .await)
    .unwrap();
    // A right PIN forgives the attempts counted before it.
    for _ in 0..MAX - 1 {
        assert!(matches!(attempt(store, b, T0).await, Gate::Check { .. }));
    }
    assert!(transact!(store, |txn| registration_lock::accept(txn, b, hash).await).unwrap());
    // Ten wrong ones, then none is checked for the lockout period.
    for i in 0..MAX {
        let Gate::Check { hash: got } = attempt(store, b, T0 + 1).await else {
            panic!("attempt {i} was refused");
        };
        assert_eq!(got, hash);
        let locked = transact!(store, |txn| registration_lock::refuse(
            txn,
            b,
            MAX,
            LOCKOUT,
            T0 + 1
        )
        .await)
        .unwrap();
        assert_eq!(locked, i + 1 == MAX);
    }
    assert_eq!(
        attempt(store, b, T0 + 2).await,
        Gate::LockedOut {
            retry_after_ms: LOCKOUT - 1
        }
    );
    // Settings changes keep the lock.
    transact!(store, |txn| accounts::update_settings(
        txn,
        b,
        &accounts::SettingsUpdate {
            hidden: Some(true),
            ..Default::default()
        },
        T0 + 3
    )
    .await)
    .unwrap();
    assert!(matches!(
        attempt(store, b, T0 + 4).await,
        Gate::LockedOut { .. }
    ));
    // After the lockout PINs are checked again.
    assert!(matches!(
        attempt(store, b, T0 + 1 + LOCKOUT).await,
        Gate::Check { .. }
    ));
    // A check of a lock changed meanwhile does not count.
    assert!(
        !transact!(store, |txn| registration_lock::accept(txn, b, "other")
            .await)
        .unwrap()
    );
    // Cleared: recovery needs no PIN.
    transact!(store, |txn| registration_lock::set(txn, b, None, T0 + 5)
        .await)
    .unwrap();
    assert_eq!(attempt(store, b, T0 + 6).await, Gate::Unlocked);
}

async fn concurrent_pin_attempts_never_exceed_the_limit(store: &Store) {
    let (b, _) = new_box(store, REGION, 1).await;
    transact!(store, |txn| registration_lock::set(txn, b, Some("h"), T0)
        .await)
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { attempt(&store, b, T0).await }));
    }
    let mut checked = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), Gate::Check { .. }) {
            checked += 1;
        }
    }
    assert_eq!(
        checked, MAX,
        "24 concurrent guesses checked only {MAX} PINs"
    );
}
