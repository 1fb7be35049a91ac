//! Wake-up pushes through APNs and FCM, end to end: a real gateway, SDK
//! clients, and local servers speaking each provider's HTTP API that check
//! every request exactly (HTTP/2 and the ES256 provider token for APNs; the
//! OAuth2 exchange of the RS256 service-account assertion for FCM) and answer
//! with the error cases the providers document.

mod support;

use rossby_client::{Client, PushTarget};
use rossby_gateway::Config;
use rossby_gateway::push::apns::ApnsConfig;
use rossby_gateway::push::fcm::FcmConfig;
use rossby_keyspace::BoxId;
use rossby_pushtest::apns::{self, ApnsServer};
use rossby_pushtest::fcm::{self, FcmServer};
use rossby_pushtest::{Answer, Recorded};
use std::path::Path;
use std::time::Duration;
use support::*;

const INTERVAL: Duration = Duration::from_millis(1500);
const TEAM: &str = "TEAM123456";
const KEY_ID: &str = "KEY1234567";
const TOPIC: &str = "im.rossby.app";

/// One of the two local provider servers.
enum Service {
    Apns(ApnsServer),
    Fcm(FcmServer),
}

impl Service {
    async fn start(kind: &str, dir: &Path, config: &mut Config) -> Service {
        match kind {
            "apns" => {
                let (key_file, key) = apns::test_key(dir).unwrap();
                let server = ApnsServer::start(TEAM, KEY_ID, key, TOPIC).await.unwrap();
                let mut apns = ApnsConfig::new(key_file, KEY_ID, TEAM, TOPIC);
                apns.url = server.url();
                config.push.apns = Some(apns);
                Service::Apns(server)
            }
            _ => {
                let server = FcmServer::start_for_test_account().await.unwrap();
                let account = fcm::test_service_account(dir, &server.token_url()).unwrap();
                let mut fcm = FcmConfig::new(account);
                fcm.url = server.url();
                config.push.fcm = Some(fcm);
                Service::Fcm(server)
            }
        }
    }

    fn target(&self, n: u8) -> PushTarget {
        match self {
            Service::Apns(_) => PushTarget::Apns(hex::encode([n; 32])),
            Service::Fcm(_) => PushTarget::Fcm(format!("fcm-token-{n}:APA91b")),
        }
    }

    fn script(&self, answers: Vec<Answer>) {
        match self {
            Service::Apns(s) => s.script(answers),
            Service::Fcm(s) => s.script_send(answers),
        }
    }

    /// Wake-up requests (FCM's token exchanges left out).
    fn sends(&self) -> Vec<Recorded> {
        match self {
            Service::Apns(s) => s.requests(),
            Service::Fcm(s) => s.sends(),
        }
    }

    fn delivered(&self) -> Vec<String> {
        match self {
            Service::Apns(s) => s.delivered(),
            Service::Fcm(s) => s.delivered(),
        }
    }

    fn problems(&self) -> Vec<String> {
        match self {
            Service::Apns(s) => s.problems(),
            Service::Fcm(s) => s.problems(),
        }
    }

    fn unregistered(&self) -> Answer {
        match self {
            Service::Apns(_) => apns::unregistered(),
            Service::Fcm(_) => fcm::unregistered(),
        }
    }

    fn throttled(&self) -> Answer {
        match self {
            Service::Apns(_) => apns::too_many_requests(Some(0)),
            Service::Fcm(_) => fcm::quota_exceeded(Some(0)),
        }
    }

    fn unavailable(&self) -> Answer {
        match self {
            Service::Apns(_) => apns::unavailable(),
            Service::Fcm(_) => fcm::unavailable(),
        }
    }

    /// Waits until `n` wake-up requests arrived (or [`WAIT`] passed), then a
    /// little longer so that an extra one would show.
    async fn settle(&self, n: usize) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.sends().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.sends().len()
    }
}

struct Setup {
    gateway: rossby_gateway::Gateway,
    service: Service,
    a: Client,
    b: Client,
    b_box: BoxId,
}

async fn setup(kind: &str, dir: &Path, max_attempts: u32) -> Setup {
    let mut config = Config::for_tests(dir.join("gw"));
    config.push.settings.interval = INTERVAL;
    config.push.settings.retry_base = Duration::from_millis(50);
    config.push.settings.max_attempts = max_attempts;
    let service = Service::start(kind, dir, &mut config).await;
    let (gateway, a, b) = two_users_with(config, dir, "+15550001111", "+15550002222").await;
    let b_box = b.box_id().await.unwrap();
    bounded("register push", b.register_push(&service.target(1)))
        .await
        .unwrap();
    b.close().await;
    Setup {
        gateway,
        service,
        a,
        b,
        b_box,
    }
}

async fn send(a: &Client, text: &str) {
    bounded("send", a.send_text("+15550002222", text))
        .await
        .unwrap();
}

async fn wakes_are_coalesced_until_the_device_fetches(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(kind, dir.path(), 4).await;
    let token = match s.service.target(1) {
        PushTarget::Apns(t) | PushTarget::Fcm(t) => t,
        PushTarget::WebPush { .. } => unreachable!(),
    };
    send(&s.a, "hello").await;
    assert_eq!(s.service.settle(1).await, 1);
    assert_eq!(s.service.delivered(), vec![token.clone()]);
    for i in 0..10 {
        send(&s.a, &format!("quick {i}")).await;
    }
    tokio::time::sleep(INTERVAL).await;
    send(&s.a, "after the interval").await;
    assert_eq!(s.service.settle(1).await, 1, "one wake-up while unanswered");

    let batch = fetch_now(&s.b).await;
    assert_eq!(batch.messages.len(), 12);
    s.b.close().await;
    send(&s.a, "after the fetch").await;
    assert_eq!(s.service.settle(2).await, 2);
    assert_eq!(s.service.delivered(), vec![token.clone(), token]);
    assert_eq!(s.service.problems(), Vec::<String>::new());
    let text = s.gateway.metrics().render();
    assert!(
        text.contains(&format!("rossby_push_sent_total{{provider=\"{kind}\"}} 2")),
        "{text}"
    );
}

async fn throttling_and_outages_are_retried_a_bounded_number_of_times(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(kind, dir.path(), 3).await;
    // Throttled, then down, then accepted: one wake-up, three requests.
    s.service
        .script(vec![s.service.throttled(), s.service.unavailable()]);
    send(&s.a, "one").await;
    assert_eq!(s.service.settle(3).await, 3);
    assert_eq!(s.service.delivered().len(), 1);

    // Down for longer than the attempts allow: three requests, then nothing.
    let _ = fetch_now(&s.b).await;
    s.b.close().await;
    tokio::time::sleep(INTERVAL).await;
    s.service.script(vec![
        s.service.unavailable(),
        s.service.unavailable(),
        s.service.unavailable(),
        s.service.unavailable(),
    ]);
    send(&s.a, "two").await;
    assert_eq!(s.service.settle(6).await, 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.service.sends().len(), 6);
    assert_eq!(s.service.delivered().len(), 1);
    assert_eq!(s.service.problems(), Vec::<String>::new());
    let text = s.gateway.metrics().render();
    assert!(
        text.contains(&format!(
            "rossby_push_failed_total{{provider=\"{kind}\",reason="
        )),
        "{text}"
    );
}

async fn unregistered_tokens_are_removed(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(kind, dir.path(), 4).await;
    s.service.script(vec![s.service.unregistered()]);
    send(&s.a, "one").await;
    assert_eq!(s.service.settle(1).await, 1);
    let removed = async {
        while s
            .gateway
            .store()
            .push_token(s.b_box, s.b.device_id())
            .await
            .unwrap()
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    bounded("token removal", removed).await;
    tokio::time::sleep(INTERVAL).await;
    send(&s.a, "two").await;
    assert_eq!(
        s.service.settle(1).await,
        1,
        "nothing goes to a removed token"
    );
    let text = s.gateway.metrics().render();
    assert!(
        text.contains(&format!(
            "rossby_push_tokens_removed_total{{provider=\"{kind}\"}} 1"
        )),
        "{text}"
    );

    // Registering again (the app got a new token) wakes the device again.
    let b = client(&s.gateway, dir.path().join("b.state")).await;
    b.register_push(&s.service.target(2)).await.unwrap();
    b.close().await;
    send(&s.a, "three").await;
    assert_eq!(s.service.settle(2).await, 2);
    assert_eq!(s.service.problems(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_wakes_are_coalesced_until_the_device_fetches() {
    wakes_are_coalesced_until_the_device_fetches("apns").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_wakes_are_coalesced_until_the_device_fetches() {
    wakes_are_coalesced_until_the_device_fetches("fcm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_throttling_and_outages_are_retried_a_bounded_number_of_times() {
    throttling_and_outages_are_retried_a_bounded_number_of_times("apns").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_throttling_and_outages_are_retried_a_bounded_number_of_times() {
    throttling_and_outages_are_retried_a_bounded_number_of_times("fcm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_unregistered_tokens_are_removed() {
    unregistered_tokens_are_removed("apns").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_unregistered_tokens_are_removed() {
    unregistered_tokens_are_removed("fcm").await;
}
