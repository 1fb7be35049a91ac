//! The Firebase Cloud Messaging client: HTTP v1 API
//! (`projects/<project>/messages:send`) with an OAuth 2.0 access token the
//! service account obtains by the JWT bearer grant (RFC 7523), as Google
//! documents for server-to-server applications.
//!
//! A wake-up is a data-only, high-priority message: `"rossby":"fetch"` and
//! nothing else, so Android hands it to the app instead of showing anything,
//! and (for iOS apps registered through FCM) a background push.

use super::http::{self, Versions};
use super::http::{loggable, read_bounded, service_url, transport_failure, unix_now};
use super::jwt;
use super::provider::{
    COLLAPSE_ID, Outcome, Provider, ProviderKind, Target, WAKE_DATA_KEY, WAKE_DATA_VALUE, WakeUp,
};
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The FCM endpoint.
pub const DEFAULT_URL: &str = "https://fcm.googleapis.com";
/// Google's token endpoint, when the service account file names none.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The OAuth scope that allows sending messages.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Default time one wake-up may take, a token exchange included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `urn:ietf:params:oauth:grant-type:jwt-bearer`, form-encoded.
const GRANT_TYPE_FORM: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
/// Lifetime of the signed assertion; Google accepts at most an hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// An access token is replaced this long before it expires, so no send
/// carries one that expires on the way.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// FCM's longest `ttl`: four weeks.
const MAX_TTL_SECS: u64 = 28 * 24 * 3600;
/// Error and token answers are small JSON objects; more is not read.
const MAX_BODY: usize = 16 * 1024;
/// The longest `Retry-After` honoured.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// How to reach FCM and sign in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FcmConfig {
    /// The service account's JSON key file from the Google Cloud console
    /// (`type`, `project_id`, `private_key`, `client_email`, `token_uri`).
    pub service_account_file: PathBuf,
    /// [`DEFAULT_URL`], or `http://` to a loopback address for local testing.
    pub url: String,
    /// Replaces the file's `token_uri` (same rule as `url`).
    pub token_url: Option<String>,
    /// Time one wake-up may take, a token exchange included.
    pub timeout: Duration,
}

impl FcmConfig {
    /// A configuration for Google's endpoints and [`DEFAULT_TIMEOUT`].
    pub fn new(service_account_file: impl Into<PathBuf>) -> FcmConfig {
        FcmConfig {
            service_account_file: service_account_file.into(),
            url: DEFAULT_URL.to_string(),
            token_url: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The fields of a service account key file the client uses. No `Debug`:
/// it holds the private key.
#[derive(serde::Deserialize)]
struct ServiceAccount {
    #[serde(rename = "type")]
    kind: String,
    project_id: String,
    #[serde(default)]
    private_key_id: Option<String>,
    private_key: String,
    client_email: String,
    #[serde(default)]
    token_uri: Option<String>,
}

/// An access token and when to stop using it.
struct AccessToken {
    value: Arc<str>,
    refresh_at: Instant,
}

/// The FCM client.
pub struct Fcm {
    client: reqwest::Client,
    send_url: String,
    token_url: String,
    client_email: String,
    key_id: Option<String>,
    key: ring::signature::RsaKeyPair,
    timeout: Duration,
    /// A tokio mutex because it is held across the token exchange: concurrent
    /// sends wait for one exchange instead of each making their own.
    token: tokio::sync::Mutex<Option<AccessToken>>,
}

// The key and the access token are credentials: never in logs.
impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("send_url", &self.send_url)
            .field("token_url", &self.token_url)
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

impl Fcm {
    /// Loads the service account and checks the configuration.
    pub fn new(config: &FcmConfig) -> Result<Fcm> {
        let path = &config.service_account_file;
        let bad = |why: String| {
            Error::Config(format!(
                "FCM service account file {}: {why}",
                path.display()
            ))
        };
        let json = std::fs::read(path)
            .map_err(|e| Error::io("cannot read the FCM service account file", path, e))?;
        let account: ServiceAccount = serde_json::from_slice(&json)
            .map_err(|e| bad(format!("not a service account JSON key ({e})")))?;
        if account.kind != "service_account" {
            return Err(bad(format!(
                "type is {:?}, not \"service_account\"",
                account.kind
            )));
        }
        // Project IDs are lower-case letters, digits and hyphens; legacy
        // domain-scoped ones add `example.com:`. It goes into the URL path.
        let project_ok = !account.project_id.is_empty()
            && account
                .project_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
        if !project_ok {
            return Err(bad(format!(
                "project_id {:?} is not a project ID",
                account.project_id
            )));
        }
        if !account.client_email.contains('@') {
            return Err(bad("client_email is not an e-mail address".into()));
        }
        let der =
            match rustls_pemfile::pkcs8_private_keys(&mut account.private_key.as_bytes()).next() {
                Some(Ok(der)) => der,
                _ => return Err(bad("private_key is not a PKCS#8 PEM private key".into())),
            };
        let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| bad(format!("private_key is not a usable RSA key ({e})")))?;
        let token_url = match (&config.token_url, &account.token_uri) {
            (Some(url), _) => service_url(url, "--fcm-token-url", true)?,
            (None, Some(uri)) => {
                service_url(uri, &format!("token_uri in {}", path.display()), true)?
            }
            (None, None) => GOOGLE_TOKEN_URL.to_string(),
        };
        let url = service_url(&config.url, "--fcm-url", false)?;
        if config.timeout.is_zero() {
            return Err(Error::Config("--fcm-timeout must not be zero".into()));
        }
        let client = http::client(Versions::Any, config.timeout, None)
            .map_err(|e| Error::Config(format!("FCM: {e}")))?;
        Ok(Fcm {
            client,
            send_url: format!("{url}/v1/projects/{}/messages:send", account.project_id),
            token_url,
            client_email: account.client_email,
            key_id: account.private_key_id.filter(|id| !id.is_empty()),
            key,
            timeout: config.timeout,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// A usable access token: the cached one, or a new one from the token
    /// endpoint. `Err` is the outcome of a send that could not get one.
    async fn access_token(&self) -> std::result::Result<Arc<str>, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.value.clone());
        }
        *cached = None;
        let token = self.exchange().await?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// Forgets `used` after FCM refused it, unless it was already replaced.
    async fn invalidate(&self, used: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| &*t.value == used) {
            *cached = None;
        }
    }

    /// Trades a freshly signed assertion for an access token.
    async fn exchange(&self) -> std::result::Result<AccessToken, Outcome> {
        const RETRY: Outcome = Outcome::Retry {
            reason: "token",
            after: None,
        };
        const FAILED: Outcome = Outcome::Failed { reason: "auth" };
        let now = unix_now();
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.as_str().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let assertion = jwt::rs256(&header, &claims, &self.key).map_err(|e| {
            tracing::warn!(error = %e, "FCM: signing the service account assertion failed");
            FAILED
        })?;
        // Measured from before the request, so the token is dropped early
        // rather than late.
        let started = Instant::now();
        let response = self
            .client
            .post(&self.token_url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(format!(
                "grant_type={GRANT_TYPE_FORM}&assertion={assertion}"
            ))
            .send()
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "FCM: the token endpoint gave no answer");
                RETRY
            })?;
        let status = response.status();
        let after = http::retry_after(response.headers(), RETRY_AFTER_CAP);
        let body = read_bounded(response, MAX_BODY).await.map_err(|_| RETRY)?;
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            tracing::debug!(
                status = status.as_u16(),
                "FCM: the token endpoint is unavailable"
            );
            return Err(Outcome::Retry {
                reason: "token",
                after,
            });
        }
        if !status.is_success() {
            // The OAuth `error` code ("invalid_grant": key revoked, clock off).
            let error = answer.get("error").and_then(|e| e.as_str());
            tracing::warn!(
                status = status.as_u16(),
                error = loggable(error),
                "FCM: the token endpoint refused the service account"
            );
            return Err(FAILED);
        }
        let value = answer.get("access_token").and_then(|v| v.as_str());
        let expires_in = answer.get("expires_in").and_then(|v| v.as_u64());
        let bearer = answer
            .get("token_type")
            .and_then(|v| v.as_str())
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer"));
        match (value, expires_in) {
            // It goes into a header: visible ASCII only.
            (Some(value), Some(expires_in))
                if bearer && !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Ok(AccessToken {
                    value: value.into(),
                    refresh_at: started
                        + Duration::from_secs(expires_in).saturating_sub(REFRESH_MARGIN),
                })
            }
            _ => {
                tracing::warn!("FCM: the token endpoint's answer is not a bearer token");
                Err(RETRY)
            }
        }
    }

    async fn deliver(&self, registration_token: &str, ttl: Duration) -> Outcome {
        let access = match self.access_token().await {
            Ok(access) => access,
            Err(outcome) => return outcome,
        };
        let message = serde_json::json!({"message": {
            "token": registration_token,
            "data": {WAKE_DATA_KEY: WAKE_DATA_VALUE},
            "android": {
                "priority": "HIGH",
                "ttl": format!("{}s", ttl.as_secs().min(MAX_TTL_SECS)),
                "collapse_key": COLLAPSE_ID,
            },
            "apns": {
                "headers": {"apns-priority": "5", "apns-push-type": "background"},
                "payload": {"aps": {"content-available": 1}},
            },
        }});
        let response = self
            .client
            .post(&self.send_url)
            .header(reqwest::header::AUTHORIZATION, format!("Bearer {access}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(message.to_string())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => return transport_failure(ProviderKind::Fcm, e),
        };
        let status = response.status().as_u16();
        if status == 200 {
            return Outcome::Delivered;
        }
        let after = http::retry_after(response.headers(), RETRY_AFTER_CAP);
        let body = read_bounded(response, MAX_BODY).await.unwrap_or_default();
        let error = FcmError::parse(&body);
        let outcome = classify(status, &error, after);
        if outcome
            == (Outcome::Retry {
                reason: "auth",
                after: None,
            })
        {
            self.invalidate(&access).await;
        }
        let rpc_status = loggable(error.status.as_deref());
        let code = loggable(error.codes.first().map(String::as_str));
        match outcome {
            Outcome::Failed { .. } => {
                tracing::warn!(status, rpc_status, code, "FCM refused a wake-up");
            }
            _ => tracing::debug!(
                status,
                rpc_status,
                code,
                ?outcome,
                "FCM did not take a wake-up"
            ),
        }
        outcome
    }
}

/// What an FCM error answer says, as far as the outcome depends on it.
#[derive(Debug, Default)]
struct FcmError {
    /// `error.status`, the `google.rpc.Code` name.
    status: Option<String>,
    /// The `errorCode` of every `FcmError` detail.
    codes: Vec<String>,
    /// A `BadRequest` detail names `message.token` as the invalid field.
    token_invalid: bool,
}

impl FcmError {
    fn parse(body: &[u8]) -> FcmError {
        let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let error = &value["error"];
        let mut parsed = FcmError {
            status: error["status"].as_str().map(str::to_string),
            ..FcmError::default()
        };
        for detail in error["details"].as_array().into_iter().flatten() {
            let kind = detail["@type"].as_str().unwrap_or_default();
            if kind.ends_with("/google.firebase.fcm.v1.FcmError")
                && let Some(code) = detail["errorCode"].as_str()
            {
                parsed.codes.push(code.to_string());
            }
            if kind.ends_with("/google.rpc.BadRequest") {
                let violations = detail["fieldViolations"].as_array().into_iter().flatten();
                parsed.token_invalid |= violations
                    .into_iter()
                    .any(|v| v["field"].as_str() == Some("message.token"));
            }
        }
        parsed
    }

    fn has_code(&self, code: &str) -> bool {
        self.codes.iter().any(|c| c == code)
    }
}

/// What an FCM error answer means for the scheduler. Only fixed reasons come
/// out; the service's text selects among them and is never passed on.
fn classify(status: u16, error: &FcmError, after: Option<Duration>) -> Outcome {
    if error.has_code("UNREGISTERED") {
        return Outcome::Unregistered {
            reason: "unregistered",
        };
    }
    let rpc_status = error.status.as_deref();
    match status {
        404 if rpc_status == Some("NOT_FOUND") => Outcome::Unregistered {
            reason: "unregistered",
        },
        // INVALID_ARGUMENT covers any malformed field; only a violation on
        // the token itself means the token is bad, so only then drop it.
        400 if rpc_status == Some("INVALID_ARGUMENT")
            && error.token_invalid
            && (error.codes.is_empty() || error.has_code("INVALID_ARGUMENT")) =>
        {
            Outcome::Unregistered {
                reason: "invalid_token",
            }
        }
        // The APNs credentials uploaded to Firebase are wrong: not our
        // access token, so a new one would not help.
        401 if error.has_code("THIRD_PARTY_AUTH_ERROR") => Outcome::Failed {
            reason: "third_party_auth",
        },
        401 => Outcome::Retry {
            reason: "auth",
            after: None,
        },
        429 => Outcome::Retry {
            reason: "429",
            after,
        },
        500..=599 => Outcome::Retry {
            reason: "5xx",
            after,
        },
        400 => Outcome::Failed { reason: "400" },
        403 => Outcome::Failed { reason: "403" },
        404 => Outcome::Failed { reason: "404" },
        _ if (400..500).contains(&status) => Outcome::Failed { reason: "4xx" },
        _ => Outcome::Failed {
            reason: "unexpected_status",
        },
    }
}

#[async_trait::async_trait]
impl Provider for Fcm {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Fcm
    }

    async fn send(&self, wake: &WakeUp) -> Outcome {
        let Target::Fcm { registration_token } = &wake.target else {
            return Outcome::Failed {
                reason: "wrong_target",
            };
        };
        if registration_token.is_empty() {
            return Outcome::Unregistered {
                reason: "invalid_token",
            };
        }
        // A send may need a token exchange first; together they get one
        // timeout, as the Provider contract asks.
        match tokio::time::timeout(self.timeout, self.deliver(registration_token, wake.ttl)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry {
                reason: "timeout",
                after: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_pushtest::Answer;
    use rossby_pushtest::fcm::{self as server, FcmServer};

    const REGISTRATION: &str = "fPq3:APA91bH-registration-token_example";

    struct Setup {
        dir: tempfile::TempDir,
        server: FcmServer,
        fcm: Fcm,
    }

    async fn setup_with(timeout: Duration) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let server = FcmServer::start_for_test_account().await.unwrap();
        let file = server::test_service_account(dir.path(), &server.token_url()).unwrap();
        let mut config = FcmConfig::new(file);
        config.url = server.url();
        config.timeout = timeout;
        let fcm = Fcm::new(&config).unwrap();
        Setup { dir, server, fcm }
    }

    async fn setup() -> Setup {
        setup_with(Duration::from_secs(5)).await
    }

    fn wake() -> WakeUp {
        WakeUp {
            target: Target::Fcm {
                registration_token: REGISTRATION.to_string(),
            },
            ttl: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn delivers_a_data_only_wake_up_that_passes_every_check() {
        let s = setup().await;
        assert_eq!(s.fcm.send(&wake()).await, Outcome::Delivered);
        assert_eq!(s.server.problems(), Vec::<String>::new());
        assert_eq!(s.server.token_exchanges(), 1);
        assert_eq!(s.server.delivered(), vec![REGISTRATION.to_string()]);
        let send = &s.server.sends()[0];
        assert_eq!(
            send.path,
            format!("/v1/projects/{}/messages:send", server::TEST_PROJECT_ID)
        );
        let body: serde_json::Value = serde_json::from_slice(&send.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"message": {
                "token": REGISTRATION,
                "data": {"rossby": "fetch"},
                "android": {"priority": "HIGH", "ttl": "3600s", "collapse_key": "rossby-wake"},
                "apns": {
                    "headers": {"apns-priority": "5", "apns-push-type": "background"},
                    "payload": {"aps": {"content-available": 1}},
                },
            }})
        );
    }

    #[tokio::test]
    async fn the_access_token_is_reused() {
        let s = setup().await;
        for _ in 0..3 {
            assert_eq!(s.fcm.send(&wake()).await, Outcome::Delivered);
        }
        assert_eq!(s.server.problems(), Vec::<String>::new());
        assert_eq!(s.server.token_exchanges(), 1);
        assert_eq!(s.server.delivered().len(), 3);
    }

    #[tokio::test]
    async fn concurrent_sends_share_one_token_exchange() {
        let s = setup().await;
        let wake_up = wake();
        let sends = (0..8).map(|_| s.fcm.send(&wake_up));
        let outcomes = futures::future::join_all(sends).await;
        assert!(
            outcomes.iter().all(|o| *o == Outcome::Delivered),
            "{outcomes:?}"
        );
        assert_eq!(s.server.problems(), Vec::<String>::new());
        assert_eq!(s.server.token_exchanges(), 1);
    }

    #[tokio::test]
    async fn a_token_is_replaced_five_minutes_before_it_expires() {
        let s = setup().await;
        // Expires within the margin: used once, then replaced.
        s.server.set_expires_in(299);
        assert_eq!(s.fcm.send(&wake()).await, Outcome::Delivered);
        assert_eq!(s.fcm.send(&wake()).await, Outcome::Delivered);
        assert_eq!(s.server.token_exchanges(), 2);
        s.server.set_expires_in(301);
        assert_eq!(s.fcm.send(&wake()).await, Outcome::Delivered);
        assert_eq!(s.fcm.send(&wake()).await, Outcome::Delivered);
        assert_eq!(s.server.token_exchanges(), 3);
        assert_eq!(s.server.problems(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_refused_access_token_is_replaced_next_time() {
        let s = setup().await;
        s.server.script_send([server::unauthenticated()]);
        assert_eq!(
            s.fcm.send(&wake()).await,
            Outcome::Retry {
                reason: "auth",
                after: None
            }
        );
        assert_eq!(s.fcm.send(&wake()).await, Outcome::Delivered);
        assert_eq!(s.server.token_exchanges(), 2);
        let sends = s.server.sends();
        assert_ne!(
            sends[0].header("authorization"),
            sends[1].header("authorization")
        );
        assert_eq!(s.server.problems(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn gone_and_invalid_tokens_are_unregistered_and_refusals_fail() {
        let s = setup().await;
        s.server.script_send([
            server::unregistered(),
            server::invalid_token(),
            server::invalid_argument(),
            server::sender_id_mismatch(),
            server::error(401, "UNAUTHENTICATED", "x", Some("THIRD_PARTY_AUTH_ERROR")),
            server::error(404, "NOT_FOUND", "Requested entity was not found.", None),
        ]);
        let mut outcomes = Vec::new();
        for _ in 0..6 {
            outcomes.push(s.fcm.send(&wake()).await);
        }
        assert_eq!(
            outcomes,
            vec![
                Outcome::Unregistered {
                    reason: "unregistered"
                },
                Outcome::Unregistered {
                    reason: "invalid_token"
                },
                Outcome::Failed { reason: "400" },
                Outcome::Failed { reason: "403" },
                Outcome::Failed {
                    reason: "third_party_auth"
                },
                Outcome::Unregistered {
                    reason: "unregistered"
                },
            ]
        );
        // No failure above was about the access token.
        assert_eq!(s.server.token_exchanges(), 1);
        assert_eq!(s.server.problems(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn throttling_and_outages_are_retried() {
        let s = setup().await;
        s.server.script_send([
            server::quota_exceeded(Some(30)),
            server::unavailable().with_header("retry-after", "5"),
            server::error(500, "INTERNAL", "Internal error.", Some("INTERNAL")),
        ]);
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            outcomes.push(s.fcm.send(&wake()).await);
        }
        assert_eq!(
            outcomes,
            vec![
                Outcome::Retry {
                    reason: "429",
                    after: Some(Duration::from_secs(30))
                },
                Outcome::Retry {
                    reason: "5xx",
                    after: Some(Duration::from_secs(5))
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
    async fn token_endpoint_failures() {
        let s = setup().await;
        s.server.script_token([
            Answer::status(503),
            Answer::json(
                400,
                serde_json::json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            ),
            Answer::json(200, serde_json::json!({"access_token": "x", "token_type": "Bearer"})),
        ]);
        let token = Outcome::Retry {
            reason: "token",
            after: None,
        };
        assert_eq!(s.fcm.send(&wake()).await, token);
        assert_eq!(
            s.fcm.send(&wake()).await,
            Outcome::Failed { reason: "auth" }
        );
        // No expires_in: not a token to use.
        assert_eq!(s.fcm.send(&wake()).await, token);
        assert!(s.server.sends().is_empty());
        assert_eq!(s.fcm.send(&wake()).await, Outcome::Delivered);
        assert_eq!(s.server.token_exchanges(), 4);
        assert_eq!(s.server.problems(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_hanging_service_is_a_timeout() {
        let s = setup_with(Duration::from_millis(500)).await;
        s.server
            .script_send([Answer::status(200).delayed(Duration::from_secs(30))]);
        super::super::http::assert_times_out(s.fcm.send(&wake())).await;
    }

    #[tokio::test]
    async fn the_local_service_refuses_another_account() {
        let dir = tempfile::tempdir().unwrap();
        let public_key = server::test_public_key().unwrap();
        let server = FcmServer::start(
            server::TEST_PROJECT_ID,
            "someone-else@rossby-test.iam.gserviceaccount.com",
            Some(server::TEST_PRIVATE_KEY_ID),
            public_key,
        )
        .await
        .unwrap();
        let file = server::test_service_account(dir.path(), &server.token_url()).unwrap();
        let mut config = FcmConfig::new(file);
        config.url = server.url();
        let fcm = Fcm::new(&config).unwrap();
        assert_eq!(fcm.send(&wake()).await, Outcome::Failed { reason: "auth" });
        let problems = server.problems();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("iss"), "{problems:?}");
    }

    fn config_error(config: &FcmConfig) -> String {
        Fcm::new(config).unwrap_err().to_string()
    }

    #[tokio::test]
    async fn configuration_errors_name_the_file_or_option() {
        let s = setup().await;
        let good_file = server::test_service_account(s.dir.path(), &s.server.token_url()).unwrap();
        let good = FcmConfig::new(&good_file);
        Fcm::new(&good).unwrap();

        let err = config_error(&FcmConfig::new(s.dir.path().join("missing.json")));
        assert!(err.contains("missing.json"), "{err}");

        let account: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&good_file).unwrap()).unwrap();
        let write = |name: &str, change: &dyn Fn(&mut serde_json::Value)| {
            let mut account = account.clone();
            change(&mut account);
            let path = s.dir.path().join(name);
            std::fs::write(&path, account.to_string()).unwrap();
            FcmConfig::new(path)
        };
        let err = config_error(&write("user.json", &|a| {
            a["type"] = "authorized_user".into()
        }));
        assert!(
            err.contains("user.json") && err.contains("service_account"),
            "{err}"
        );
        let err = config_error(&write("nokey.json", &|a| {
            a["private_key"] =
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into()
        }));
        assert!(
            err.contains("nokey.json") && err.contains("private_key"),
            "{err}"
        );
        let err = config_error(&write("project.json", &|a| {
            a["project_id"] = "a/../b".into()
        }));
        assert!(err.contains("project_id"), "{err}");
        let err = config_error(&write("plain.json", &|a| {
            a["token_uri"] = "http://oauth2.googleapis.com/token".into()
        }));
        assert!(
            err.contains("token_uri in") && err.contains("plain.json"),
            "{err}"
        );
        let not_json = s.dir.path().join("not.json");
        std::fs::write(&not_json, "{").unwrap();
        let err = config_error(&FcmConfig::new(&not_json));
        assert!(err.contains("not.json"), "{err}");

        let mut c = good.clone();
        c.url = "http://fcm.googleapis.com".into();
        assert!(config_error(&c).contains("--fcm-url"));
        let mut c = good.clone();
        c.url = "https://fcm.googleapis.com/v1".into();
        assert!(config_error(&c).contains("--fcm-url"));
        let mut c = good.clone();
        c.token_url = Some("http://192.0.2.1/token".into());
        assert!(config_error(&c).contains("--fcm-token-url"));
        let mut c = good.clone();
        c.token_url = Some("http://localhost:9/token".into());
        let fcm = Fcm::new(&c).unwrap();
        assert_eq!(fcm.token_url, "http://localhost:9/token");
    }

    #[test]
    fn errors_select_fixed_reasons() {
        let parse = |v: serde_json::Value| FcmError::parse(v.to_string().as_bytes());
        // A violation on another field is no reason to drop the token.
        let other_field = parse(serde_json::json!({"error": {
            "code": 400, "status": "INVALID_ARGUMENT", "message": "bad ttl",
            "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                         "fieldViolations": [{"field": "message.android.ttl"}]}],
        }}));
        assert_eq!(
            classify(400, &other_field, None),
            Outcome::Failed { reason: "400" }
        );
        let garbage = FcmError::parse(b"<html>oops</html>");
        assert_eq!(
            classify(404, &garbage, None),
            Outcome::Failed { reason: "404" }
        );
        assert_eq!(
            classify(418, &garbage, None),
            Outcome::Failed { reason: "4xx" }
        );
        assert_eq!(
            classify(302, &garbage, None),
            Outcome::Failed {
                reason: "unexpected_status"
            }
        );
    }
}
