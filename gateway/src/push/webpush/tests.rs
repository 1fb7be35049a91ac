//! The client against the local browser + push service of `rossby-pushtest`,
//! which checks every request exactly and decrypts what it receives.

use super::*;
use rossby_pushtest::Answer;
use rossby_pushtest::webpush::{Subscription, WebPushService};
use std::time::Instant;

const SUBJECT: &str = "mailto:ops@example.com";

fn config(dir: &tempfile::TempDir, allow_insecure: bool, timeout: Duration) -> WebPushConfig {
    WebPushConfig {
        vapid_key_file: dir.path().join("vapid.pem"),
        subject: SUBJECT.into(),
        allow_insecure,
        timeout,
    }
}

/// A client (insecure, since the service is on loopback http) and a service
/// trusting its key.
async fn setup(timeout: Duration) -> (tempfile::TempDir, WebPush, WebPushService) {
    let dir = tempfile::tempdir().unwrap();
    let push = WebPush::new(&config(&dir, true, timeout)).unwrap();
    let service = WebPushService::start(push.vapid_key().public_key(), SUBJECT)
        .await
        .unwrap();
    (dir, push, service)
}

fn wake(sub: &Subscription) -> WakeUp {
    wake_to(&sub.endpoint, sub)
}

fn wake_to(endpoint: &str, sub: &Subscription) -> WakeUp {
    WakeUp {
        target: Target::WebPush {
            endpoint: endpoint.to_string(),
            p256dh: sub.p256dh,
            auth: sub.auth,
        },
        ttl: Duration::from_secs(300),
    }
}

#[tokio::test]
async fn a_wake_up_reaches_the_browser_decrypted() {
    let (_dir, push, service) = setup(Duration::from_secs(5)).await;
    assert_eq!(push.kind(), ProviderKind::WebPush);
    let sub = service.subscribe();
    assert_eq!(push.send(&wake(&sub)).await, Outcome::Delivered);
    assert_eq!(push.send(&wake(&sub)).await, Outcome::Delivered);
    assert!(service.problems().is_empty(), "{:?}", service.problems());
    assert_eq!(
        service.messages(&sub),
        vec![
            br#"{"rossby":"fetch"}"#.to_vec(),
            br#"{"rossby":"fetch"}"#.to_vec()
        ]
    );
    let requests = service.requests();
    assert_eq!(requests.len(), 2);
    let first = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.header("ttl"), Some("300"));
    assert_eq!(first.header("urgency"), Some("high"));
    assert_eq!(first.header("topic"), Some(COLLAPSE_ID));
    assert_eq!(first.header("content-encoding"), Some("aes128gcm"));
    assert_eq!(
        first.header("content-type"),
        Some("application/octet-stream")
    );
    let authorization = first.header("authorization").unwrap();
    assert!(
        authorization.ends_with(&format!(", k={}", push.vapid_key().public_key_base64url())),
        "{authorization}"
    );
    // One JWT per push service origin, not one per push.
    assert_eq!(requests[1].header("authorization"), Some(authorization));
    // Every message has its own ephemeral key and salt.
    assert_ne!(first.body[..86], requests[1].body[..86]);
}

#[tokio::test]
async fn gone_subscriptions_are_unregistered() {
    let (_dir, push, service) = setup(Duration::from_secs(5)).await;
    let sub = service.subscribe();
    let unknown = format!("{}/push/never-subscribed", service.url());
    assert_eq!(
        push.send(&wake_to(&unknown, &sub)).await,
        Outcome::Unregistered { reason: "404" }
    );
    service.expire(&sub);
    assert_eq!(
        push.send(&wake(&sub)).await,
        Outcome::Unregistered { reason: "410" }
    );
    service.script([Answer::status(404)]);
    let live = service.subscribe();
    assert_eq!(
        push.send(&wake(&live)).await,
        Outcome::Unregistered { reason: "404" }
    );
    assert!(service.problems().is_empty(), "{:?}", service.problems());
    assert!(service.messages(&sub).is_empty());
    assert!(service.messages(&live).is_empty());
}

#[tokio::test]
async fn overload_and_outages_are_retried_and_refusals_fail() {
    let (_dir, push, service) = setup(Duration::from_secs(5)).await;
    let sub = service.subscribe();
    service.script([
        Answer::status(429).with_header("retry-after", "7"),
        Answer::status(503),
        Answer::status(502).with_header("retry-after", "999999"),
        Answer::status(400),
        Answer::status(401),
        Answer::status(403),
        Answer::status(413),
        Answer::status(418).with_header("x-reason", "teapot"),
    ]);
    let expected = [
        Outcome::Retry {
            reason: "429",
            after: Some(Duration::from_secs(7)),
        },
        Outcome::Retry {
            reason: "5xx",
            after: None,
        },
        Outcome::Retry {
            reason: "5xx",
            after: Some(RETRY_AFTER_CAP),
        },
        Outcome::Failed { reason: "400" },
        Outcome::Failed { reason: "401" },
        Outcome::Failed { reason: "403" },
        Outcome::Failed { reason: "413" },
        Outcome::Failed { reason: "4xx" },
    ];
    for want in expected {
        assert_eq!(push.send(&wake(&sub)).await, want);
    }
    assert!(service.problems().is_empty(), "{:?}", service.problems());
    assert!(service.messages(&sub).is_empty(), "none was accepted");
    assert_eq!(push.send(&wake(&sub)).await, Outcome::Delivered);
    assert_eq!(service.messages(&sub).len(), 1);
}

#[tokio::test]
async fn a_hanging_service_is_retried_after_the_timeout() {
    let timeout = Duration::from_millis(400);
    let (_dir, push, service) = setup(timeout).await;
    let sub = service.subscribe();
    service.script([Answer::status(201).delayed(Duration::from_secs(10))]);
    let started = Instant::now();
    let outcome = push.send(&wake(&sub)).await;
    let took = started.elapsed();
    assert_eq!(
        outcome,
        Outcome::Retry {
            reason: "timeout",
            after: None
        }
    );
    // Well before the 10 s answer, even on a busy machine.
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn unreachable_services_are_retried() {
    let (_dir, push, service) = setup(Duration::from_secs(5)).await;
    let sub = service.subscribe();
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}/push/x");
    assert_eq!(
        push.send(&wake_to(&endpoint, &sub)).await,
        Outcome::Retry {
            reason: "connect",
            after: None
        }
    );
}

#[tokio::test]
async fn local_endpoints_are_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let push = WebPush::new(&config(&dir, false, Duration::from_secs(5))).unwrap();
    let service = WebPushService::start(push.vapid_key().public_key(), SUBJECT)
        .await
        .unwrap();
    let sub = service.subscribe();
    let port = service.addr().port();
    for (endpoint, reason) in [
        (sub.endpoint.clone(), "bad_endpoint"),
        (
            format!("https://127.0.0.1:{port}/push/x"),
            "forbidden_address",
        ),
        (
            format!("https://[::ffff:127.0.0.1]:{port}/push/x"),
            "forbidden_address",
        ),
        (
            format!("https://localhost:{port}/push/x"),
            "forbidden_address",
        ),
    ] {
        assert_eq!(
            push.send(&wake_to(&endpoint, &sub)).await,
            Outcome::Failed { reason },
            "{endpoint}"
        );
    }
    // Past the endpoint check, a name resolving to loopback is refused when
    // connecting (as a public name re-pointed at an internal address would be).
    let url = reqwest::Url::parse(&format!("http://localhost:{port}/push/x")).unwrap();
    assert_eq!(
        push.post(url, &sub.p256dh, &sub.auth, Duration::from_secs(60))
            .await,
        Outcome::Failed {
            reason: "forbidden_address"
        }
    );
    assert_eq!(service.wait_for(1, Duration::from_millis(200)).await, 0);
}

#[tokio::test]
async fn unusable_targets_fail_without_a_request() {
    let (_dir, push, service) = setup(Duration::from_secs(5)).await;
    let sub = service.subscribe();
    let mut bad_key = sub.p256dh;
    bad_key[64] ^= 1;
    let wake_bad_key = WakeUp {
        target: Target::WebPush {
            endpoint: sub.endpoint.clone(),
            p256dh: bad_key,
            auth: sub.auth,
        },
        ttl: Duration::from_secs(60),
    };
    assert_eq!(
        push.send(&wake_bad_key).await,
        Outcome::Unregistered { reason: "bad_key" }
    );
    let apns = WakeUp {
        target: Target::Apns {
            device_token: "00".into(),
        },
        ttl: Duration::from_secs(60),
    };
    assert_eq!(
        push.send(&apns).await,
        Outcome::Failed {
            reason: "wrong_target"
        }
    );
    assert_eq!(
        push.send(&wake_to("https://", &sub)).await,
        Outcome::Failed {
            reason: "bad_endpoint"
        }
    );
    assert_eq!(service.wait_for(1, Duration::from_millis(200)).await, 0);
}

#[test]
fn configuration_errors_name_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad_subject = config(&dir, false, Duration::from_secs(5));
    bad_subject.subject = "ops@example.com".into();
    let message = WebPush::new(&bad_subject).unwrap_err().to_string();
    assert!(message.contains("--webpush-subject"), "{message}");
    std::fs::write(dir.path().join("vapid.pem"), "garbage").unwrap();
    let message = WebPush::new(&config(&dir, false, Duration::from_secs(5)))
        .unwrap_err()
        .to_string();
    assert!(message.contains("vapid.pem"), "{message}");
}

#[test]
fn the_topic_is_a_valid_collapse_key() {
    // RFC 8030 §5.4: at most 32 characters of the base64url alphabet.
    assert!(!COLLAPSE_ID.is_empty() && COLLAPSE_ID.len() <= 32);
    assert!(
        COLLAPSE_ID
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
}
