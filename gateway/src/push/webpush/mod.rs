//! Web Push (RFC 8030) wake-ups: an encrypted (RFC 8291) `{"rossby":"fetch"}`
//! posted to the subscription's endpoint with a VAPID (RFC 8292) signature, so
//! the browser's service worker wakes and fetches.
//!
//! The endpoint comes from the device, so it is treated as untrusted: only
//! public https endpoints are posted to (see [`endpoint`]), and its path, a
//! capability to push to that browser, is never logged.

mod encrypt;
pub mod endpoint;
mod vapid;

pub use encrypt::check_subscription_key;
pub use endpoint::{MAX_ENDPOINT_LEN, check_endpoint};
pub use vapid::{VapidKey, check_subject};

use crate::error::{Error, Result};
use crate::push::http::{self, Versions};
use crate::push::provider::{
    COLLAPSE_ID, Outcome, Provider, ProviderKind, Target, WAKE_DATA_KEY, WAKE_DATA_VALUE, WakeUp,
};
use endpoint::{EndpointError, GuardedResolver};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The longest `Retry-After` honoured: a push service asking for more is still
/// retried after this.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);
/// How many push service origins keep a cached VAPID JWT. Browsers use a
/// handful of push services, so this bound is only reached by odd endpoints.
const TOKEN_CACHE_ORIGINS: u64 = 1024;

/// Web Push settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebPushConfig {
    /// The VAPID private key file (generated when missing).
    pub vapid_key_file: PathBuf,
    /// The VAPID contact (`sub` claim): `mailto:...` or `https://...`
    /// (RFC 8292 §2.1), from `--webpush-subject`.
    pub subject: String,
    /// Also post to `http` and loopback or private endpoints (local testing
    /// only: it lets subscriptions make the gateway reach internal services).
    pub allow_insecure: bool,
    /// Time allowed for each request (connect, TLS, request and answer).
    pub timeout: Duration,
}

/// The Web Push client.
pub struct WebPush {
    client: reqwest::Client,
    key: VapidKey,
    subject: String,
    allow_insecure: bool,
    /// `Authorization` header values by push service origin: signing per push
    /// would be wasted work, as one JWT is valid for hours.
    tokens: moka::sync::Cache<String, Arc<str>>,
    /// The plaintext of every wake-up.
    payload: Vec<u8>,
}

impl std::fmt::Debug for WebPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPush")
            .field("key", &self.key)
            .field("subject", &self.subject)
            .field("allow_insecure", &self.allow_insecure)
            .finish_non_exhaustive()
    }
}

impl WebPush {
    /// Checks the subject, loads (or generates) the VAPID key and builds the
    /// HTTP client.
    pub fn new(config: &WebPushConfig) -> Result<WebPush> {
        check_subject(&config.subject)?;
        let key = VapidKey::load_or_generate(&config.vapid_key_file)?;
        WebPush::with_key(key, config)
    }

    /// [`WebPush::new`] with the key given (the config's key file is not read).
    pub fn with_key(key: VapidKey, config: &WebPushConfig) -> Result<WebPush> {
        check_subject(&config.subject)?;
        let resolver = GuardedResolver {
            allow_insecure: config.allow_insecure,
        };
        let client = http::client(Versions::Any, config.timeout, Some(Arc::new(resolver)))
            .map_err(|e| Error::Config(format!("web push: {e}")))?;
        let tokens = moka::sync::Cache::builder()
            .max_capacity(TOKEN_CACHE_ORIGINS)
            .time_to_live(vapid::TOKEN_LIFETIME - vapid::TOKEN_RENEW_BEFORE)
            .build();
        let payload = serde_json::json!({ WAKE_DATA_KEY: WAKE_DATA_VALUE })
            .to_string()
            .into_bytes();
        Ok(WebPush {
            client,
            key,
            subject: config.subject.clone(),
            allow_insecure: config.allow_insecure,
            tokens,
            payload,
        })
    }

    /// The VAPID key (its public half is the web app's `applicationServerKey`).
    pub fn vapid_key(&self) -> &VapidKey {
        &self.key
    }

    /// The `Authorization` header for the push service serving `url`.
    fn authorization(&self, url: &reqwest::Url) -> Arc<str> {
        // RFC 8292 §2: the audience is the origin of the push resource.
        let audience = url.origin().ascii_serialization();
        self.tokens.get_with(audience.clone(), || {
            let exp = http::unix_now() + vapid::TOKEN_LIFETIME.as_secs();
            Arc::from(self.key.authorization(&audience, &self.subject, exp))
        })
    }

    /// Posts one wake-up to an endpoint already checked.
    async fn post(
        &self,
        url: reqwest::Url,
        p256dh: &[u8; 65],
        auth: &[u8; 16],
        ttl: Duration,
    ) -> Outcome {
        let host = url.host_str().unwrap_or_default().to_string();
        let body = match encrypt::encrypt(&self.payload, p256dh, auth) {
            Ok(body) => body,
            Err(encrypt::EncryptError::BadSubscriptionKey) => {
                return Outcome::Unregistered { reason: "bad_key" };
            }
            Err(e) => {
                tracing::warn!(%host, error = %e, "web push message not encrypted");
                return Outcome::Failed { reason: "encrypt" };
            }
        };
        let authorization = self.authorization(&url);
        let sent = self
            .client
            .post(url)
            .header("TTL", ttl.as_secs().to_string())
            // A wake-up is what the user waits for when a message arrives.
            .header("Urgency", "high")
            .header("Topic", COLLAPSE_ID)
            .header(CONTENT_ENCODING, "aes128gcm")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(AUTHORIZATION, authorization.as_ref())
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                let outcome = transport_outcome(&e);
                // reqwest's message includes the URL; only the host may be logged.
                tracing::debug!(%host, ?outcome, error = %e.without_url(), "web push not sent");
                return outcome;
            }
        };
        let status = response.status();
        let outcome = status_outcome(status, response.headers());
        // Reading the (short) body lets the connection be reused.
        let _ = response.bytes().await;
        match outcome {
            Outcome::Delivered => {}
            Outcome::Failed { .. } => {
                tracing::warn!(%host, status = status.as_u16(), "web push refused")
            }
            _ => tracing::debug!(%host, status = status.as_u16(), "web push not delivered"),
        }
        outcome
    }
}

/// What an answer's status means for the scheduler. Labels come from a fixed
/// set; nothing the push service wrote ends up in them.
fn status_outcome(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Delivered,
        404 => Outcome::Unregistered { reason: "404" },
        410 => Outcome::Unregistered { reason: "410" },
        429 => Outcome::Retry {
            reason: "429",
            after: http::retry_after(headers, RETRY_AFTER_CAP),
        },
        500..=599 => Outcome::Retry {
            reason: "5xx",
            after: http::retry_after(headers, RETRY_AFTER_CAP),
        },
        400..=499 => Outcome::Failed {
            reason: client_error(status.as_u16()),
        },
        _ => Outcome::Failed { reason: "status" },
    }
}

/// The label of a 4xx answer other than 404, 410 and 429: the codes push
/// services document get their own, the rest share one.
fn client_error(code: u16) -> &'static str {
    match code {
        400 => "400",
        401 => "401",
        403 => "403",
        413 => "413",
        _ => "4xx",
    }
}

/// What a request that got no answer means for the scheduler.
fn transport_outcome(error: &reqwest::Error) -> Outcome {
    if endpoint::is_forbidden(error) {
        Outcome::Failed {
            reason: "forbidden_address",
        }
    } else if error.is_timeout() {
        Outcome::Retry {
            reason: "timeout",
            after: None,
        }
    } else {
        Outcome::Retry {
            reason: "connect",
            after: None,
        }
    }
}

#[async_trait::async_trait]
impl Provider for WebPush {
    fn kind(&self) -> ProviderKind {
        ProviderKind::WebPush
    }

    async fn send(&self, wake: &WakeUp) -> Outcome {
        let Target::WebPush {
            endpoint,
            p256dh,
            auth,
        } = &wake.target
        else {
            return Outcome::Failed {
                reason: "wrong_target",
            };
        };
        // Checked again although registration did: reqwest does not resolve IP
        // literals (so the resolver cannot refuse them), and the setting may
        // have changed since.
        let url = match endpoint::parse_endpoint(endpoint, self.allow_insecure) {
            Ok(url) => url,
            Err(EndpointError::Forbidden(_)) => {
                return Outcome::Failed {
                    reason: "forbidden_address",
                };
            }
            Err(EndpointError::Invalid(_)) => {
                return Outcome::Failed {
                    reason: "bad_endpoint",
                };
            }
        };
        self.post(url, p256dh, auth, wake.ttl).await
    }
}

#[cfg(test)]
mod tests;
