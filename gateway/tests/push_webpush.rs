//! Wake-up pushes through Web Push, end to end: a real gateway, SDK clients,
//! and a local push service that checks every request (VAPID signature and
//! claims, headers) and decrypts the payload with the subscription's keys as a
//! browser does.

mod support;

use rossby_client::{Client, PushTarget};
use rossby_gateway::Config;
use rossby_gateway::push::webpush::VapidKey;
use rossby_protocol::pb;
use rossby_pushtest::Answer;
use rossby_pushtest::webpush::{Subscription, WebPushService};
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

const SUBJECT: &str = "mailto:ops@example.net";
const INTERVAL: Duration = Duration::from_millis(1500);
const WAKE: &[u8] = br#"{"rossby":"fetch"}"#;

/// A gateway configured for the local push service, the service, and two
/// users (`a` writes to `b`, whose device registered `sub`).
struct Setup {
    gateway: rossby_gateway::Gateway,
    service: WebPushService,
    a: Client,
    b: Client,
    b_box: rossby_keyspace::BoxId,
    sub: Subscription,
}

fn config(dir: &Path, tune: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::for_tests(dir.join("gw"));
    let webpush = config
        .push
        .webpush
        .as_mut()
        .expect("Web Push is on by default");
    webpush.subject = SUBJECT.into();
    webpush.allow_insecure = true;
    config.push.settings.interval = INTERVAL;
    config.push.settings.retry_base = Duration::from_millis(50);
    tune(&mut config);
    config
}

async fn setup(dir: &Path, tune: impl FnOnce(&mut Config)) -> Setup {
    let config = config(dir, tune);
    // The key the gateway will load, so the service knows what to expect.
    let vapid_file = &config.push.webpush.as_ref().unwrap().vapid_key_file;
    std::fs::create_dir_all(vapid_file.parent().unwrap()).unwrap();
    let key = VapidKey::load_or_generate(vapid_file).unwrap();
    let service = WebPushService::start(key.public_key(), SUBJECT)
        .await
        .unwrap();
    let (gateway, a, b) = two_users_with(config, dir, "+15550001111", "+15550002222").await;
    let b_box = b.box_id().await.unwrap();
    let sub = service.subscribe();
    bounded(
        "register push",
        b.register_push(&PushTarget::WebPush {
            endpoint: sub.endpoint.clone(),
            p256dh: sub.p256dh_b64.clone(),
            auth: sub.auth_b64.clone(),
        }),
    )
    .await
    .unwrap();
    // b stops holding a connection: it is now reachable by wake-ups only.
    b.close().await;
    Setup {
        gateway,
        service,
        a,
        b,
        b_box,
        sub,
    }
}

async fn send(a: &Client, text: &str) -> Duration {
    let started = Instant::now();
    bounded("send", a.send_text("+15550002222", text))
        .await
        .unwrap();
    started.elapsed()
}

/// Waits until `n` wake-ups arrived (failing after [`WAIT`]), then a little
/// longer, and returns how many there are then (more would be a bug).
async fn wakes(s: &Setup, n: usize) -> usize {
    s.service.wait_for(n, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.service.messages(&s.sub).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_device_is_woken_once_per_interval_until_it_fetches() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), |_| {}).await;

    send(&s.a, "hello").await;
    assert_eq!(wakes(&s, 1).await, 1);
    assert_eq!(s.service.messages(&s.sub), vec![WAKE.to_vec()]);

    // Ten quick messages while the wake-up is unanswered: nothing more, even
    // once the interval has passed.
    for i in 0..10 {
        send(&s.a, &format!("quick {i}")).await;
    }
    tokio::time::sleep(INTERVAL).await;
    send(&s.a, "after the interval").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.service.messages(&s.sub).len(), 1);

    // The device fetches (and acknowledges): the next message wakes it again.
    let batch = fetch_now(&s.b).await;
    assert_eq!(batch.messages.len(), 12);
    s.b.close().await;
    send(&s.a, "after the fetch").await;
    assert_eq!(wakes(&s, 2).await, 2);

    // A receipt does not wake anyone (nobody waits for it): b fetches, which
    // answers the wake-up, and a's device is the one that would be woken —
    // register a subscription for a and check that b's receipt stays silent.
    let a_sub = s.service.subscribe();
    s.a.register_push(&PushTarget::WebPush {
        endpoint: a_sub.endpoint.clone(),
        p256dh: a_sub.p256dh_b64.clone(),
        auth: a_sub.auth_b64.clone(),
    })
    .await
    .unwrap();
    s.a.close().await;
    let batch = fetch_now(&s.b).await;
    bounded(
        "receipts",
        s.b.send_receipts(&batch, pb::ReceiptKind::Delivered),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.service.messages(&a_sub).is_empty());

    // Every request was exactly right.
    assert_eq!(s.service.problems(), Vec::<String>::new());
    let text = s.gateway.metrics().render();
    assert!(
        text.contains("rossby_push_sent_total{provider=\"webpush\"} 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_device_gets_no_wake_up() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), |_| {}).await;
    let mut subscription = bounded("subscribe", s.b.subscribe()).await.unwrap();
    // The first push says where the queue stands.
    bounded("first push", subscription.next()).await.unwrap();
    send(&s.a, "you are online").await;
    let push = bounded("push", subscription.next()).await.unwrap();
    assert!(push.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.service.requests().is_empty());

    // Once it disconnects, the next message wakes it.
    drop(subscription);
    s.b.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&s.a, "now you are not").await;
    assert_eq!(wakes(&s, 1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_push_service_does_not_slow_sends() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), |c| {
        c.push.webpush.as_mut().unwrap().timeout = Duration::from_secs(30);
    })
    .await;
    // A normal send first, for the bound.
    let normal = send(&s.a, "before").await;
    assert_eq!(wakes(&s, 1).await, 1);
    let _ = fetch_now(&s.b).await;
    s.b.close().await;
    tokio::time::sleep(INTERVAL).await;

    // The service now holds its answers for far longer than any send may take.
    s.service
        .script([Answer::status(201).delayed(Duration::from_secs(20))]);
    let first = send(&s.a, "while it hangs").await;
    assert_eq!(
        s.service.wait_for(2, WAIT).await,
        2,
        "the wake-up is in flight"
    );
    let mut slowest = first;
    for i in 0..5 {
        slowest = slowest.max(send(&s.a, &format!("still hanging {i}")).await);
    }
    let bound = normal.max(Duration::from_millis(200)) * 5;
    assert!(
        slowest < bound,
        "a send took {slowest:?} while the push service hung (normal {normal:?})"
    );
    // The wake-up is still outstanding: the hanging request is the only one.
    assert_eq!(s.service.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_subscriptions_are_removed_and_failures_retried_with_a_bound() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), |c| {
        c.push.settings.max_attempts = 3;
    })
    .await;

    // Overloaded three times: three attempts, then the wake-up is given up
    // (and released, so the next message may try again after the interval).
    s.service.script([
        Answer::status(503),
        Answer::status(429).with_header("retry-after", "0"),
        Answer::status(503),
    ]);
    send(&s.a, "one").await;
    assert_eq!(s.service.wait_for(3, WAIT).await, 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.service.requests().len(), 3);
    assert!(s.service.messages(&s.sub).is_empty());

    tokio::time::sleep(INTERVAL).await;
    send(&s.a, "two").await;
    assert_eq!(wakes(&s, 4).await, 1);

    // The browser unsubscribed: 410 removes the token, and nothing more is
    // sent to it.
    let _ = fetch_now(&s.b).await;
    s.b.close().await;
    s.service.expire(&s.sub);
    tokio::time::sleep(INTERVAL).await;
    send(&s.a, "three").await;
    assert_eq!(s.service.wait_for(5, WAIT).await, 5);
    let removed = async {
        loop {
            let record = s
                .gateway
                .store()
                .push_token(s.b_box, s.b.device_id())
                .await
                .unwrap();
            if record.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    bounded("token removal", removed).await;
    tokio::time::sleep(INTERVAL).await;
    send(&s.a, "four").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.service.requests().len(), 5);
    assert_eq!(s.service.problems(), Vec::<String>::new());
    let text = s.gateway.metrics().render();
    assert!(
        text.contains("rossby_push_tokens_removed_total{provider=\"webpush\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_are_refused_and_push_info_tells_the_vapid_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), |_| {}).await;
    let info = s.a.push_info().await.unwrap();
    assert_eq!(info.providers, vec!["webpush".to_string()]);
    let key = VapidKey::load_or_generate(&dir.path().join("gw").join("vapid.pem")).unwrap();
    assert_eq!(info.vapid_public_key, Some(key.public_key_base64url()));

    // A key that is not a point on the curve, and a provider without
    // credentials here.
    let err =
        s.a.register_push(&PushTarget::WebPush {
            endpoint: s.sub.endpoint.clone(),
            p256dh: base64url(&[4u8; 65]),
            auth: s.sub.auth_b64.clone(),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("p256dh"), "{err}");
    let err =
        s.a.register_push(&PushTarget::Apns("ab".repeat(32)))
            .await
            .unwrap_err();
    assert!(err.to_string().contains("no credentials for apns"), "{err}");
    assert!(!s.a.remove_push().await.unwrap());
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_registers_and_removes_a_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), |_| {}).await;
    let state = dir.path().join("c.state");
    {
        let c = client(&s.gateway, state.clone()).await;
        register(&c, "+15550003333", &codes_file(&dir.path().join("gw"))).await;
    }
    let sub = s.service.subscribe();
    let (code, out, err) = rossby(
        &state,
        &[
            "push",
            "webpush",
            &sub.endpoint,
            &sub.p256dh_b64,
            &sub.auth_b64,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, "Web Push subscription registered for this device\n");
    let (code, out, err) = rossby(&state, &["push", "info"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let key = VapidKey::load_or_generate(&dir.path().join("gw").join("vapid.pem")).unwrap();
    assert_eq!(
        out,
        format!(
            "providers webpush\nvapid-public-key {}\n",
            key.public_key_base64url()
        )
    );

    bounded("send", s.a.send_text("+15550003333", "to the CLI user"))
        .await
        .unwrap();
    s.service.wait_for(1, WAIT).await;
    assert_eq!(s.service.messages(&sub), vec![WAKE.to_vec()]);

    let (code, out, err) = rossby(&state, &["push", "remove"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, "push token removed\n");
    let (code, out, _) = rossby(&state, &["push", "remove"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(out, "this device had no push token\n");
    // A malformed subscription fails locally, naming what is wrong.
    let (code, out, err) = rossby(
        &state,
        &["push", "webpush", &sub.endpoint, "short", &sub.auth_b64],
    )
    .await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("p256dh"), "{err}");
}
