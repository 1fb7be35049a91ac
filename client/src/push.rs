//! Wake-up pushes: registering this device's APNs, FCM or Web Push token so
//! the gateway can wake it ("fetch now", nothing else) while it holds no
//! connection (docs/protocol.md, "Wake-up pushes").
//!
//! Tokens are checked here as the gateway checks them, so a malformed one
//! fails locally with [`Error::Invalid`].

use crate::error::{Error, Result};
use crate::sdk::Client;
use base64::Engine;
use rossby_protocol::pb::{self, Method};

/// A push token of this device.
#[derive(Clone, PartialEq, Eq)]
pub enum PushTarget {
    /// An APNs device token, hex.
    Apns(String),
    /// An FCM registration token.
    Fcm(String),
    /// A Web Push subscription as a browser's `PushSubscription` gives it.
    WebPush {
        /// The push service endpoint URL.
        endpoint: String,
        /// `keys.p256dh`, base64url.
        p256dh: String,
        /// `keys.auth`, base64url.
        auth: String,
    },
}

// Tokens are credentials: never printed whole.
impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            PushTarget::Apns(_) => "apns",
            PushTarget::Fcm(_) => "fcm",
            PushTarget::WebPush { .. } => "webpush",
        };
        write!(f, "PushTarget({kind})")
    }
}

/// What the gateway can wake devices through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushInfo {
    /// `apns`, `fcm`, `webpush`: the providers the gateway has credentials for.
    pub providers: Vec<String>,
    /// The VAPID public key (base64url) a web app subscribes with, when Web
    /// Push is among them.
    pub vapid_public_key: Option<String>,
}

fn decode_b64url(value: &str, what: &str, len: usize) -> Result<()> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| Error::Invalid(format!("{what} is not base64url")))?;
    if bytes.len() != len {
        return Err(Error::Invalid(format!(
            "{what} must decode to {len} bytes, not {}",
            bytes.len()
        )));
    }
    Ok(())
}

impl PushTarget {
    fn request(&self) -> Result<pb::RegisterPushTokenRequest> {
        Ok(match self {
            PushTarget::Apns(token) => {
                if hex::decode(token).is_err() {
                    return Err(Error::Invalid("an APNs device token must be hex".into()));
                }
                pb::RegisterPushTokenRequest {
                    provider: pb::PushProvider::Apns as i32,
                    token: token.clone(),
                    ..Default::default()
                }
            }
            PushTarget::Fcm(token) => pb::RegisterPushTokenRequest {
                provider: pb::PushProvider::Fcm as i32,
                token: token.clone(),
                ..Default::default()
            },
            PushTarget::WebPush {
                endpoint,
                p256dh,
                auth,
            } => {
                if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                    return Err(Error::Invalid(
                        "a Web Push endpoint must be an https:// URL".into(),
                    ));
                }
                decode_b64url(p256dh, "p256dh", 65)?;
                decode_b64url(auth, "auth", 16)?;
                pb::RegisterPushTokenRequest {
                    provider: pb::PushProvider::Webpush as i32,
                    token: endpoint.clone(),
                    p256dh: p256dh.clone(),
                    auth: auth.clone(),
                }
            }
        })
    }
}

impl Client {
    /// Sets this device's push token, replacing any earlier one. Fails with
    /// `PUSH_PROVIDER_UNAVAILABLE` when the gateway has no credentials for the
    /// provider ([`Client::push_info`] lists the ones it has).
    pub async fn register_push(&self, target: &PushTarget) -> Result<()> {
        let request = target.request()?;
        let _: pb::RegisterPushTokenResponse =
            self.rpc(Method::RegisterPushToken, &request).await?;
        Ok(())
    }

    /// Removes this device's push token; false when it had none.
    pub async fn remove_push(&self) -> Result<bool> {
        let response: pb::RemovePushTokenResponse = self
            .rpc(Method::RemovePushToken, &pb::RemovePushTokenRequest {})
            .await?;
        Ok(response.removed)
    }

    /// The providers the gateway wakes devices through.
    pub async fn push_info(&self) -> Result<PushInfo> {
        let response: pb::PushInfoResponse =
            self.rpc(Method::PushInfo, &pb::PushInfoRequest {}).await?;
        let providers = response
            .providers
            .into_iter()
            .filter_map(|p| match pb::PushProvider::try_from(p).ok()? {
                pb::PushProvider::Apns => Some("apns".to_string()),
                pb::PushProvider::Fcm => Some("fcm".to_string()),
                pb::PushProvider::Webpush => Some("webpush".to_string()),
                pb::PushProvider::Unspecified => None,
            })
            .collect();
        Ok(PushInfo {
            providers,
            vapid_public_key: (!response.vapid_public_key.is_empty())
                .then_some(response.vapid_public_key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_tokens_fail_locally() {
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([4u8; 65]);
        let auth = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 16]);
        let ok = PushTarget::WebPush {
            endpoint: "https://push.example.net/x".into(),
            p256dh: key.clone(),
            auth: auth.clone(),
        };
        assert!(ok.request().is_ok());
        let bad = [
            PushTarget::Apns("not hex".into()),
            PushTarget::WebPush {
                endpoint: "ftp://x".into(),
                p256dh: key.clone(),
                auth: auth.clone(),
            },
            PushTarget::WebPush {
                endpoint: "https://x".into(),
                p256dh: auth.clone(),
                auth: auth.clone(),
            },
            PushTarget::WebPush {
                endpoint: "https://x".into(),
                p256dh: key,
                auth: "%%".into(),
            },
        ];
        for target in bad {
            assert!(
                matches!(target.request(), Err(Error::Invalid(_))),
                "{target:?}"
            );
        }
    }
}
