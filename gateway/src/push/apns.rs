//! The Apple Push Notification service client: token-based authentication
//! (an ES256 provider token signed with the team's `.p8` key) and one HTTP/2
//! `POST /3/device/<token>` per wake-up, as Apple's "Sending notification
//! requests to APNs" and "Establishing a token-based connection to APNs"
//! describe.
//!
//! The notification says nothing about the message: an alert carries the
//! generic [`ALERT_TITLE`]/[`ALERT_BODY`] and `mutable-content`, so the app's
//! notification service extension fetches and replaces it; a background push
//! carries only `content-available`. Both carry `"rossby":"fetch"`.

use super::http::{
    self, Versions, loggable, read_bounded, service_url, transport_failure, unix_now,
};
use super::jwt;
use super::provider::{
    COLLAPSE_ID, Outcome, Provider, ProviderKind, Target, WAKE_DATA_KEY, WAKE_DATA_VALUE, WakeUp,
};
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The production APNs endpoint.
pub const DEFAULT_URL: &str = "https://api.push.apple.com";
/// The development (sandbox) APNs endpoint, for apps signed for development.
pub const SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";
/// Default time one request may take, connection set-up included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The title of an alert wake-up. Generic on purpose: the push service and
/// the lock screen (if the extension cannot run) must learn nothing.
pub const ALERT_TITLE: &str = "Rossby";
/// The body of an alert wake-up; see [`ALERT_TITLE`].
pub const ALERT_BODY: &str = "New message";

/// Age at which a provider token is replaced. Apple refuses tokens older than
/// an hour and answers `TooManyProviderTokenUpdates` to a provider replacing
/// its token more often than every 20 minutes.
const TOKEN_LIFETIME_SECS: u64 = 50 * 60;
/// A token younger than this is not replaced on `ExpiredProviderToken`: Apple
/// would refuse the update, and a token that young being called expired means
/// the clocks disagree, which a new token does not fix.
const MIN_TOKEN_AGE_SECS: u64 = 20 * 60;
/// Error answers are a small JSON object; more is not read.
const MAX_ERROR_BODY: usize = 4096;
/// The longest `Retry-After` honoured.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);
/// Device tokens are 64 hex digits today; Apple warns they may grow.
const MAX_DEVICE_TOKEN_LEN: usize = 200;

/// The `apns-push-type` of wake-ups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApnsPushType {
    /// A visible notification with generic text that the app's notification
    /// service extension replaces (`mutable-content`). Delivered promptly.
    #[default]
    Alert,
    /// A silent `content-available` push. iOS throttles these and drops them
    /// for force-quit apps.
    Background,
}

impl ApnsPushType {
    /// The `apns-push-type` header value, also the configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            ApnsPushType::Alert => "alert",
            ApnsPushType::Background => "background",
        }
    }

    /// The `apns-priority`: immediate for alerts; Apple requires 5 for
    /// background pushes.
    pub fn priority(self) -> &'static str {
        match self {
            ApnsPushType::Alert => "10",
            ApnsPushType::Background => "5",
        }
    }

    /// The notification payload.
    fn payload(self) -> serde_json::Value {
        let aps = match self {
            ApnsPushType::Alert => serde_json::json!({
                "alert": {"title": ALERT_TITLE, "body": ALERT_BODY},
                "mutable-content": 1,
            }),
            ApnsPushType::Background => serde_json::json!({"content-available": 1}),
        };
        serde_json::json!({"aps": aps, WAKE_DATA_KEY: WAKE_DATA_VALUE})
    }
}

impl std::fmt::Display for ApnsPushType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ApnsPushType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "alert" => Ok(ApnsPushType::Alert),
            "background" => Ok(ApnsPushType::Background),
            other => Err(Error::Config(format!(
                "APNs push type {other:?} is not one: use \"alert\" or \"background\""
            ))),
        }
    }
}

/// How to reach APNs and sign in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApnsConfig {
    /// The `.p8` file Apple issues: a P-256 private key, PKCS#8 PEM.
    pub key_file: PathBuf,
    /// The key's ID (10 characters, shown next to the key in the developer
    /// account).
    pub key_id: String,
    /// The team ID (10 characters).
    pub team_id: String,
    /// The app's bundle ID (`apns-topic`).
    pub topic: String,
    /// [`DEFAULT_URL`], [`SANDBOX_URL`], or `http://` to a loopback address
    /// for local testing.
    pub url: String,
    /// Alert (default) or background wake-ups.
    pub push_type: ApnsPushType,
    /// Time one request may take.
    pub timeout: Duration,
}

impl ApnsConfig {
    /// A configuration for production APNs, alert wake-ups and
    /// [`DEFAULT_TIMEOUT`].
    pub fn new(
        key_file: impl Into<PathBuf>,
        key_id: impl Into<String>,
        team_id: impl Into<String>,
        topic: impl Into<String>,
    ) -> ApnsConfig {
        ApnsConfig {
            key_file: key_file.into(),
            key_id: key_id.into(),
            team_id: team_id.into(),
            topic: topic.into(),
            url: DEFAULT_URL.to_string(),
            push_type: ApnsPushType::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A provider token and when it was made.
#[derive(Clone)]
struct ProviderToken {
    iat: u64,
    jwt: Arc<str>,
}

/// The APNs client.
pub struct Apns {
    client: reqwest::Client,
    key: p256::ecdsa::SigningKey,
    key_id: String,
    team_id: String,
    topic: String,
    url: String,
    push_type: ApnsPushType,
    payload: bytes::Bytes,
    /// Shared by every send: Apple wants one token reused, not one per request.
    token: Mutex<Option<ProviderToken>>,
}

// The key and the provider token are credentials: never in logs.
impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("url", &self.url)
            .field("push_type", &self.push_type)
            .finish_non_exhaustive()
    }
}

fn ten_alphanumerics(value: &str, what: &str, option: &str) -> Result<()> {
    if value.len() == 10 && value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{option}: the APNs {what} {value:?} is not 10 letters and digits"
        )))
    }
}

impl Apns {
    /// Loads the key and checks the configuration.
    pub fn new(config: &ApnsConfig) -> Result<Apns> {
        use p256::pkcs8::DecodePrivateKey;

        let pem = std::fs::read_to_string(&config.key_file)
            .map_err(|e| Error::io("cannot read the APNs key file", &config.key_file, e))?;
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            Error::Config(format!(
                "APNs key file {}: not a P-256 private key in PKCS#8 PEM (the .p8 file \
                 Apple issues): {e}",
                config.key_file.display()
            ))
        })?;
        ten_alphanumerics(&config.key_id, "key ID", "--apns-key-id")?;
        ten_alphanumerics(&config.team_id, "team ID", "--apns-team-id")?;
        let topic_ok = !config.topic.is_empty()
            && config
                .topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b));
        if !topic_ok {
            return Err(Error::Config(format!(
                "--apns-topic: {:?} is not a bundle ID",
                config.topic
            )));
        }
        let url = service_url(&config.url, "--apns-url", false)?;
        if config.timeout.is_zero() {
            return Err(Error::Config("--apns-timeout must not be zero".into()));
        }
        let client = http::client(Versions::Http2Only, config.timeout, None)
            .map_err(|e| Error::Config(format!("APNs: {e}")))?;
        Ok(Apns {
            client,
            key,
            key_id: config.key_id.clone(),
            team_id: config.team_id.clone(),
            topic: config.topic.clone(),
            url,
            push_type: config.push_type,
            payload: config.push_type.payload().to_string().into(),
            token: Mutex::new(None),
        })
    }

    fn sign(&self, iat: u64) -> ProviderToken {
        let jwt = jwt::es256(
            &serde_json::json!({"alg": "ES256", "kid": self.key_id}),
            &serde_json::json!({"iss": self.team_id, "iat": iat}),
            &self.key,
        );
        ProviderToken {
            iat,
            jwt: jwt.into(),
        }
    }

    /// The current provider token, made anew when it is old enough.
    fn provider_token(&self, now: u64) -> ProviderToken {
        let mut cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(token) = cached.as_ref()
            // A clock that went back makes the token look young; replace it.
            && now >= token.iat
            && now - token.iat < TOKEN_LIFETIME_SECS
        {
            return token.clone();
        }
        let token = self.sign(now);
        *cached = Some(token.clone());
        token
    }

    /// Drops the token made at `iat` after APNs called it expired, unless
    /// another send already replaced it (one refresh for many refusals).
    fn retire_token(&self, iat: u64, now: u64) {
        let mut cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if cached.as_ref().is_some_and(|t| t.iat == iat)
            && now.saturating_sub(iat) >= MIN_TOKEN_AGE_SECS
        {
            *cached = None;
        }
    }
}

#[async_trait::async_trait]
impl Provider for Apns {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Apns
    }

    async fn send(&self, wake: &WakeUp) -> Outcome {
        let Target::Apns { device_token } = &wake.target else {
            return Outcome::Failed {
                reason: "wrong_target",
            };
        };
        // The token goes into the request path: anything but hex could
        // change the request, and is no device token anyway.
        if device_token.is_empty()
            || device_token.len() > MAX_DEVICE_TOKEN_LEN
            || !device_token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Outcome::Unregistered {
                reason: "bad_device_token",
            };
        }
        let now = unix_now();
        let token = self.provider_token(now);
        let response = self
            .client
            .post(format!("{}/3/device/{device_token}", self.url))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("bearer {}", token.jwt),
            )
            .header("apns-topic", &self.topic)
            .header("apns-push-type", self.push_type.name())
            .header("apns-priority", self.push_type.priority())
            .header(
                "apns-expiration",
                now.saturating_add(wake.ttl.as_secs()).to_string(),
            )
            .header("apns-collapse-id", COLLAPSE_ID)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.payload.clone())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => return transport_failure(ProviderKind::Apns, e),
        };
        let status = response.status().as_u16();
        if status == 200 {
            return Outcome::Delivered;
        }
        let after = http::retry_after(response.headers(), RETRY_AFTER_CAP);
        // A body cut short by the timeout still leaves the status to go by.
        let body = read_bounded(response, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("reason")?.as_str().map(str::to_string));
        if status == 403 && reason.as_deref() == Some("ExpiredProviderToken") {
            self.retire_token(token.iat, unix_now());
        }
        let outcome = classify(status, reason.as_deref(), after);
        let reason = loggable(reason.as_deref());
        match outcome {
            Outcome::Failed { .. } => {
                tracing::warn!(status, reason, "APNs refused a wake-up");
            }
            _ => tracing::debug!(status, reason, ?outcome, "APNs did not take a wake-up"),
        }
        outcome
    }
}

/// What an APNs error answer means for the scheduler. `reason` is Apple's
/// `reason` string; it selects among fixed outcomes and is never passed on.
fn classify(status: u16, reason: Option<&str>, after: Option<Duration>) -> Outcome {
    match (status, reason) {
        // "Unregistered" or "ExpiredToken": the app is gone from the device.
        (410, _) => Outcome::Unregistered { reason: "410" },
        (400, Some("BadDeviceToken")) => Outcome::Unregistered {
            reason: "bad_device_token",
        },
        (400, Some("DeviceTokenNotForTopic")) => Outcome::Unregistered {
            reason: "device_token_not_for_topic",
        },
        (403, Some("ExpiredProviderToken")) => Outcome::Retry {
            reason: "expired_provider_token",
            after: None,
        },
        (429, _) => Outcome::Retry {
            reason: "429",
            after,
        },
        (500..=599, _) => Outcome::Retry {
            reason: "5xx",
            after,
        },
        (400, _) => Outcome::Failed { reason: "400" },
        (403, _) => Outcome::Failed { reason: "403" },
        (404, _) => Outcome::Failed { reason: "404" },
        (405, _) => Outcome::Failed { reason: "405" },
        (413, _) => Outcome::Failed { reason: "413" },
        (400..=499, _) => Outcome::Failed { reason: "4xx" },
        _ => Outcome::Failed {
            reason: "unexpected_status",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rossby_pushtest::Answer;
    use rossby_pushtest::apns::{self as server, ApnsServer};

    const KEY_ID: &str = "ABCDE12345";
    const TEAM_ID: &str = "TEAM012345";
    const TOPIC: &str = "im.rossby.app";
    const DEVICE: &str = "6b1f3c0e9a2d4b5c8e7f6a5b4c3d2e1f00112233445566778899aabbccddeeff";

    struct Setup {
        _dir: tempfile::TempDir,
        server: ApnsServer,
        apns: Apns,
    }

    async fn setup_with(push_type: ApnsPushType, timeout: Duration) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (key_file, public) = server::test_key(dir.path()).unwrap();
        let server = ApnsServer::start(TEAM_ID, KEY_ID, public, TOPIC)
            .await
            .unwrap();
        let mut config = ApnsConfig::new(key_file, KEY_ID, TEAM_ID, TOPIC);
        config.url = server.url();
        config.push_type = push_type;
        config.timeout = timeout;
        let apns = Apns::new(&config).unwrap();
        Setup {
            _dir: dir,
            server,
            apns,
        }
    }

    async fn setup() -> Setup {
        setup_with(ApnsPushType::Alert, Duration::from_secs(5)).await
    }

    fn wake(device_token: &str) -> WakeUp {
        WakeUp {
            target: Target::Apns {
                device_token: device_token.to_string(),
            },
            ttl: Duration::from_secs(3600),
        }
    }

    /// The claims of the provider token a request carried.
    fn claims(request: &rossby_pushtest::Recorded) -> serde_json::Value {
        let jwt = request
            .header("authorization")
            .unwrap()
            .strip_prefix("bearer ")
            .unwrap();
        let claims = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn delivers_an_alert_wake_up_that_passes_every_check() {
        let s = setup().await;
        assert_eq!(s.apns.send(&wake(DEVICE)).await, Outcome::Delivered);
        assert_eq!(s.server.problems(), Vec::<String>::new());
        assert_eq!(s.server.delivered(), vec![DEVICE.to_string()]);
        let request = &s.server.requests()[0];
        assert_eq!(request.path, format!("/3/device/{DEVICE}"));
        assert_eq!(request.header("apns-push-type"), Some("alert"));
        assert_eq!(request.header("apns-priority"), Some("10"));
        assert_eq!(request.header("apns-topic"), Some(TOPIC));
        assert_eq!(request.header("apns-collapse-id"), Some(COLLAPSE_ID));
        let expiration: u64 = request.header("apns-expiration").unwrap().parse().unwrap();
        assert!(expiration.abs_diff(unix_now() + 3600) <= 5, "{expiration}");
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "aps": {
                    "alert": {"title": "Rossby", "body": "New message"},
                    "mutable-content": 1,
                },
                "rossby": "fetch",
            })
        );
    }

    #[tokio::test]
    async fn delivers_a_background_wake_up_with_priority_5() {
        let s = setup_with(ApnsPushType::Background, Duration::from_secs(5)).await;
        assert_eq!(s.apns.send(&wake(DEVICE)).await, Outcome::Delivered);
        assert_eq!(s.server.problems(), Vec::<String>::new());
        let request = &s.server.requests()[0];
        assert_eq!(request.header("apns-push-type"), Some("background"));
        assert_eq!(request.header("apns-priority"), Some("5"));
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"aps": {"content-available": 1}, "rossby": "fetch"})
        );
    }

    #[tokio::test]
    async fn one_provider_token_serves_many_sends() {
        let s = setup().await;
        for _ in 0..3 {
            assert_eq!(s.apns.send(&wake(DEVICE)).await, Outcome::Delivered);
        }
        assert_eq!(s.server.problems(), Vec::<String>::new());
        assert_eq!(s.server.provider_tokens().len(), 1);
    }

    #[tokio::test]
    async fn the_provider_token_is_replaced_after_50_minutes() {
        let s = setup().await;
        let now = unix_now();
        // 30 minutes old: still used.
        *s.apns.token.lock().unwrap() = Some(s.apns.sign(now - 30 * 60));
        assert_eq!(s.apns.send(&wake(DEVICE)).await, Outcome::Delivered);
        // 51 minutes old: replaced before it is used.
        *s.apns.token.lock().unwrap() = Some(s.apns.sign(now - 51 * 60));
        assert_eq!(s.apns.send(&wake(DEVICE)).await, Outcome::Delivered);
        assert_eq!(s.server.problems(), Vec::<String>::new());
        let requests = s.server.requests();
        assert_eq!(claims(&requests[0])["iat"], now - 30 * 60);
        let fresh = claims(&requests[1])["iat"].as_u64().unwrap();
        assert!(fresh >= now, "{fresh} < {now}");
        assert_eq!(claims(&requests[1])["iss"], TEAM_ID);
    }

    #[tokio::test]
    async fn expired_provider_token_is_replaced_and_retried() {
        let s = setup().await;
        let now = unix_now();
        *s.apns.token.lock().unwrap() = Some(s.apns.sign(now - 30 * 60));
        s.server.script([server::expired_provider_token()]);
        assert_eq!(
            s.apns.send(&wake(DEVICE)).await,
            Outcome::Retry {
                reason: "expired_provider_token",
                after: None
            }
        );
        assert_eq!(s.apns.send(&wake(DEVICE)).await, Outcome::Delivered);
        assert_eq!(s.server.problems(), Vec::<String>::new());
        let requests = s.server.requests();
        assert_eq!(claims(&requests[0])["iat"], now - 30 * 60);
        assert!(claims(&requests[1])["iat"].as_u64().unwrap() >= now);
    }

    #[tokio::test]
    async fn a_young_provider_token_called_expired_is_kept() {
        let s = setup().await;
        let now = unix_now();
        *s.apns.token.lock().unwrap() = Some(s.apns.sign(now - 5 * 60));
        s.server.script([server::expired_provider_token()]);
        assert_eq!(
            s.apns.send(&wake(DEVICE)).await,
            Outcome::Retry {
                reason: "expired_provider_token",
                after: None
            }
        );
        // Replacing it would earn TooManyProviderTokenUpdates, and a new
        // token does not fix a clock Apple disagrees with.
        assert_eq!(s.apns.send(&wake(DEVICE)).await, Outcome::Delivered);
        assert_eq!(s.server.provider_tokens().len(), 1);
        assert_eq!(claims(&s.server.requests()[1])["iat"], now - 5 * 60);
    }

    #[tokio::test]
    async fn gone_devices_are_unregistered_and_refusals_fail() {
        let s = setup().await;
        s.server.script([
            server::unregistered(),
            server::bad_device_token(),
            server::reason(400, "DeviceTokenNotForTopic"),
            server::reason(400, "BadTopic"),
            server::reason(403, "InvalidProviderToken"),
            server::reason(413, "PayloadTooLarge"),
            server::reason(404, "BadPath"),
        ]);
        let mut outcomes = Vec::new();
        for _ in 0..7 {
            outcomes.push(s.apns.send(&wake(DEVICE)).await);
        }
        assert_eq!(
            outcomes,
            vec![
                Outcome::Unregistered { reason: "410" },
                Outcome::Unregistered {
                    reason: "bad_device_token"
                },
                Outcome::Unregistered {
                    reason: "device_token_not_for_topic"
                },
                Outcome::Failed { reason: "400" },
                Outcome::Failed { reason: "403" },
                Outcome::Failed { reason: "413" },
                Outcome::Failed { reason: "404" },
            ]
        );
        assert_eq!(s.server.problems(), Vec::<String>::new());
        assert!(s.server.delivered().is_empty());
    }

    #[tokio::test]
    async fn throttling_and_outages_are_retried() {
        let s = setup().await;
        s.server.script([
            server::too_many_requests(Some(30)),
            server::too_many_requests(None),
            server::unavailable(),
            server::reason(500, "InternalServerError"),
        ]);
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            outcomes.push(s.apns.send(&wake(DEVICE)).await);
        }
        assert_eq!(
            outcomes,
            vec![
                Outcome::Retry {
                    reason: "429",
                    after: Some(Duration::from_secs(30))
                },
                Outcome::Retry {
                    reason: "429",
                    after: None
                },
                Outcome::Retry {
                    reason: "5xx",
                    after: None
                },
                Outcome::Retry {
                    reason: "5xx",
                    after: None
                },
            ]
        );
        assert_eq!(s.server.problems(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_hanging_service_is_a_timeout() {
        let s = setup_with(ApnsPushType::Alert, Duration::from_millis(500)).await;
        s.server
            .script([Answer::status(200).delayed(Duration::from_secs(30))]);
        super::super::http::assert_times_out(s.apns.send(&wake(DEVICE))).await;
    }

    #[tokio::test]
    async fn an_unreachable_service_is_a_connection_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (key_file, _) = server::test_key(dir.path()).unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let mut config = ApnsConfig::new(key_file, KEY_ID, TEAM_ID, TOPIC);
        config.url = format!("http://127.0.0.1:{port}");
        let apns = Apns::new(&config).unwrap();
        assert_eq!(
            apns.send(&wake(DEVICE)).await,
            Outcome::Retry {
                reason: "connect",
                after: None
            }
        );
    }

    #[tokio::test]
    async fn a_malformed_device_token_is_dropped_without_a_request() {
        let s = setup().await;
        for bad in ["", "../../3/device/00", "zz", &"a".repeat(201)] {
            assert_eq!(
                s.apns.send(&wake(bad)).await,
                Outcome::Unregistered {
                    reason: "bad_device_token"
                },
                "{bad:?}"
            );
        }
        let fcm = WakeUp {
            target: Target::Fcm {
                registration_token: "x".into(),
            },
            ttl: Duration::from_secs(1),
        };
        assert_eq!(
            s.apns.send(&fcm).await,
            Outcome::Failed {
                reason: "wrong_target"
            }
        );
        assert!(s.server.requests().is_empty());
    }

    #[tokio::test]
    async fn the_local_service_refuses_a_token_signed_with_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key_file, _) = server::test_key(dir.path()).unwrap();
        let other = tempfile::tempdir().unwrap();
        let (_, other_public) = server::test_key(other.path()).unwrap();
        let server = ApnsServer::start(TEAM_ID, KEY_ID, other_public, TOPIC)
            .await
            .unwrap();
        let mut config = ApnsConfig::new(key_file, KEY_ID, TEAM_ID, TOPIC);
        config.url = server.url();
        let apns = Apns::new(&config).unwrap();
        assert_eq!(
            apns.send(&wake(DEVICE)).await,
            Outcome::Failed { reason: "400" }
        );
        let problems = server.problems();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("signature"), "{problems:?}");
    }

    fn config_error(config: &ApnsConfig) -> String {
        Apns::new(config).unwrap_err().to_string()
    }

    #[test]
    fn configuration_errors_name_the_file_or_option() {
        let dir = tempfile::tempdir().unwrap();
        let (key_file, _) = server::test_key(dir.path()).unwrap();
        let good = ApnsConfig::new(&key_file, KEY_ID, TEAM_ID, TOPIC);
        Apns::new(&good).unwrap();

        let missing = dir.path().join("missing.p8");
        let err = config_error(&ApnsConfig::new(&missing, KEY_ID, TEAM_ID, TOPIC));
        assert!(err.contains("missing.p8"), "{err}");

        let garbage = dir.path().join("garbage.p8");
        std::fs::write(
            &garbage,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = config_error(&ApnsConfig::new(&garbage, KEY_ID, TEAM_ID, TOPIC));
        assert!(err.contains("garbage.p8") && err.contains("P-256"), "{err}");

        let mut c = good.clone();
        c.key_id = "SHORT".into();
        assert!(config_error(&c).contains("--apns-key-id"));
        let mut c = good.clone();
        c.team_id = "TEAM-12345".into();
        assert!(config_error(&c).contains("--apns-team-id"));
        let mut c = good.clone();
        c.topic = String::new();
        assert!(config_error(&c).contains("--apns-topic"));

        for bad in [
            "http://api.push.apple.com",
            "http://10.0.0.1:8443",
            "ftp://127.0.0.1",
            "https://api.push.apple.com/3/device",
            "https://user:pw@api.push.apple.com",
            "not a url",
        ] {
            let mut c = good.clone();
            c.url = bad.into();
            let err = config_error(&c);
            assert!(err.contains("--apns-url"), "{bad}: {err}");
        }
        for ok in [
            DEFAULT_URL,
            SANDBOX_URL,
            "https://api.push.apple.com/",
            "http://127.0.0.1:8443",
            "http://127.8.9.10:1",
            "http://localhost:1",
            "http://[::1]:1",
        ] {
            let mut c = good.clone();
            c.url = ok.into();
            let apns = Apns::new(&c).unwrap();
            assert!(!apns.url.ends_with('/'), "{ok}");
        }
    }

    #[test]
    fn push_types_parse_from_their_names() {
        assert_eq!(
            "alert".parse::<ApnsPushType>().unwrap(),
            ApnsPushType::Alert
        );
        assert_eq!(
            "background".parse::<ApnsPushType>().unwrap(),
            ApnsPushType::Background
        );
        let err = "voip".parse::<ApnsPushType>().unwrap_err().to_string();
        assert!(err.contains("voip") && err.contains("background"), "{err}");
        assert_eq!(ApnsPushType::default(), ApnsPushType::Alert);
    }

    #[tokio::test]
    async fn debug_output_holds_no_credentials() {
        let s = setup().await;
        s.apns.send(&wake(DEVICE)).await;
        let token = s.server.provider_tokens().remove(0);
        let shown = format!("{:?} {:?}", s.apns, wake(DEVICE));
        assert!(
            !shown.contains(&token) && !shown.contains(DEVICE),
            "{shown}"
        );
    }
}
