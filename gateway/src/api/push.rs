//! RegisterPushToken, RemovePushToken and PushInfo: how a device that is not
//! connected is woken (see [`crate::push`]).
//!
//! A token is checked before it is stored, so the scheduler only ever meets
//! usable ones: an APNs device token is hex (8 to 128 bytes, stored
//! lower-case); an FCM registration token is 1 to 4096 characters of
//! `[A-Za-z0-9_:.-]`; a Web Push endpoint passes
//! [`crate::push::webpush::check_endpoint`] (https, no internal addresses unless
//! insecure endpoints are allowed), its `p256dh` is a point on P-256 and its
//! `auth` 16 bytes. A provider this gateway has no credentials for answers
//! `PUSH_PROVIDER_UNAVAILABLE`. Tokens are credentials of the device and never
//! logged.

use super::{Failure, Shared, decode, now_ms};
use crate::auth::Authenticated;
use crate::push::ProviderKind;
use base64::Engine;
use rossby_protocol::pb::{self, Status};
use rossby_storage::tables::push::{MAX_TOKEN_BYTES, PushToken};
use rossby_storage::tables::records::PushProvider;

/// Shortest and longest APNs device token accepted, in bytes (Apple's are 32
/// today and may grow).
const APNS_TOKEN_BYTES: std::ops::RangeInclusive<usize> = 8..=128;

fn kind_of(provider: pb::PushProvider) -> Option<ProviderKind> {
    match provider {
        pb::PushProvider::Apns => Some(ProviderKind::Apns),
        pb::PushProvider::Fcm => Some(ProviderKind::Fcm),
        pb::PushProvider::Webpush => Some(ProviderKind::WebPush),
        pb::PushProvider::Unspecified => None,
    }
}

fn stored_kind(kind: ProviderKind) -> PushProvider {
    match kind {
        ProviderKind::Apns => PushProvider::Apns,
        ProviderKind::Fcm => PushProvider::Fcm,
        ProviderKind::WebPush => PushProvider::Webpush,
    }
}

/// Decodes base64url with or without padding (browsers hand out the unpadded
/// form, some libraries the padded one).
fn base64url(value: &str, what: &str) -> Result<Vec<u8>, Failure> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| Failure::bad_request(format!("{what} is not base64url")))
}

/// The token as it will be stored, or why it is refused.
fn checked_token(
    req: pb::RegisterPushTokenRequest,
    kind: ProviderKind,
    allow_insecure: bool,
) -> Result<PushToken, Failure> {
    let no_keys = || {
        if req.p256dh.is_empty() && req.auth.is_empty() {
            Ok(())
        } else {
            Err(Failure::bad_request(
                "p256dh and auth belong to Web Push subscriptions only",
            ))
        }
    };
    let (token, p256dh, auth) = match kind {
        ProviderKind::Apns => {
            no_keys()?;
            let bytes = hex::decode(&req.token)
                .map_err(|_| Failure::bad_request("an APNs device token must be hex"))?;
            if !APNS_TOKEN_BYTES.contains(&bytes.len()) {
                return Err(Failure::bad_request(format!(
                    "an APNs device token must have {} to {} bytes",
                    APNS_TOKEN_BYTES.start(),
                    APNS_TOKEN_BYTES.end()
                )));
            }
            (hex::encode(bytes), Vec::new(), Vec::new())
        }
        ProviderKind::Fcm => {
            no_keys()?;
            let valid = !req.token.is_empty()
                && req.token.len() <= MAX_TOKEN_BYTES
                && req
                    .token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b));
            if !valid {
                return Err(Failure::bad_request(format!(
                    "an FCM registration token must be 1 to {MAX_TOKEN_BYTES} characters of A-Z, a-z, 0-9, '_', ':', '.' and '-'"
                )));
            }
            (req.token, Vec::new(), Vec::new())
        }
        ProviderKind::WebPush => {
            crate::push::webpush::check_endpoint(&req.token, allow_insecure)
                .map_err(Failure::bad_request)?;
            let p256dh = base64url(&req.p256dh, "p256dh")?;
            if p256dh.len() != 65 || p256::PublicKey::from_sec1_bytes(&p256dh).is_err() {
                return Err(Failure::bad_request(
                    "p256dh must be an uncompressed P-256 public key (65 bytes)",
                ));
            }
            let auth = base64url(&req.auth, "auth")?;
            if auth.len() != 16 {
                return Err(Failure::bad_request("auth must have 16 bytes"));
            }
            (req.token, p256dh, auth)
        }
    };
    Ok(PushToken {
        provider: stored_kind(kind),
        token,
        p256dh,
        auth,
    })
}

/// RegisterPushToken: sets the calling device's push token.
pub(crate) async fn register(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::RegisterPushTokenResponse, Failure> {
    let req: pb::RegisterPushTokenRequest = decode(body, "RegisterPushTokenRequest")?;
    let provider = pb::PushProvider::try_from(req.provider)
        .ok()
        .and_then(kind_of)
        .ok_or_else(|| Failure::bad_request("provider must be apns, fcm or webpush"))?;
    let pusher = shared
        .enqueuer
        .pusher
        .get()
        .filter(|p| p.supports(provider))
        .ok_or_else(|| {
            Failure::new(
                Status::PushProviderUnavailable,
                format!(
                    "this gateway has no credentials for {}; PushInfo lists the providers it has",
                    provider.name()
                ),
            )
        })?;
    let token = checked_token(req, provider, pusher.allows_insecure_endpoints())?;
    shared
        .store
        .register_push_token(caller.box_id, caller.device_id, &token, now_ms())
        .await?;
    Ok(pb::RegisterPushTokenResponse {})
}

/// RemovePushToken: removes the calling device's push token.
pub(crate) async fn remove(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::RemovePushTokenResponse, Failure> {
    let _: pb::RemovePushTokenRequest = decode(body, "RemovePushTokenRequest")?;
    let removed = shared
        .store
        .remove_push_token(caller.box_id, caller.device_id)
        .await?;
    Ok(pb::RemovePushTokenResponse { removed })
}

/// PushInfo: the providers this gateway wakes devices through.
pub(crate) fn info(shared: &Shared, body: &[u8]) -> Result<pb::PushInfoResponse, Failure> {
    let _: pb::PushInfoRequest = decode(body, "PushInfoRequest")?;
    let Some(pusher) = shared.enqueuer.pusher.get() else {
        return Ok(pb::PushInfoResponse::default());
    };
    let providers = pusher
        .providers()
        .into_iter()
        .map(|kind| match kind {
            ProviderKind::Apns => pb::PushProvider::Apns as i32,
            ProviderKind::Fcm => pb::PushProvider::Fcm as i32,
            ProviderKind::WebPush => pb::PushProvider::Webpush as i32,
        })
        .collect();
    Ok(pb::PushInfoResponse {
        providers,
        vapid_public_key: pusher.vapid_public_key().unwrap_or_default().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        provider: pb::PushProvider,
        token: &str,
        p256dh: &str,
        auth: &str,
    ) -> pb::RegisterPushTokenRequest {
        pb::RegisterPushTokenRequest {
            provider: provider as i32,
            token: token.into(),
            p256dh: p256dh.into(),
            auth: auth.into(),
        }
    }

    fn p256dh() -> String {
        let key = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let point = key.public_key().to_sec1_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(point)
    }

    #[test]
    fn apns_tokens_are_hex_and_stored_lower_case() {
        let token = checked_token(
            request(pb::PushProvider::Apns, &"AB".repeat(32), "", ""),
            ProviderKind::Apns,
            false,
        )
        .unwrap();
        assert_eq!(token.token, "ab".repeat(32));
        for bad in ["xyz", "ab", &"ab".repeat(129)] {
            let req = request(pb::PushProvider::Apns, bad, "", "");
            assert!(
                checked_token(req, ProviderKind::Apns, false).is_err(),
                "{bad}"
            );
        }
        let with_keys = request(pb::PushProvider::Apns, &"ab".repeat(32), "x", "");
        assert!(checked_token(with_keys, ProviderKind::Apns, false).is_err());
    }

    #[test]
    fn fcm_tokens_are_bounded_and_plain() {
        let ok = "dGVzdA:APA91bH-x_y.z";
        assert!(
            checked_token(
                request(pb::PushProvider::Fcm, ok, "", ""),
                ProviderKind::Fcm,
                false
            )
            .is_ok()
        );
        for bad in ["", "has space", "slash/", &"a".repeat(MAX_TOKEN_BYTES + 1)] {
            let req = request(pb::PushProvider::Fcm, bad, "", "");
            assert!(
                checked_token(req, ProviderKind::Fcm, false).is_err(),
                "{bad:.20}"
            );
        }
    }

    #[test]
    fn webpush_subscriptions_need_valid_keys() {
        let endpoint = "https://fcm.googleapis.com/fcm/send/abc";
        let auth = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 16]);
        let key = p256dh();
        let token = checked_token(
            request(pb::PushProvider::Webpush, endpoint, &key, &auth),
            ProviderKind::WebPush,
            false,
        )
        .unwrap();
        assert_eq!((token.p256dh.len(), token.auth.len()), (65, 16));
        // Padded base64url is accepted too.
        let padded = format!("{auth}==");
        assert!(
            checked_token(
                request(pb::PushProvider::Webpush, endpoint, &key, &padded),
                ProviderKind::WebPush,
                false
            )
            .is_ok()
        );
        let not_a_point = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([4u8; 65]);
        let short_auth = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 8]);
        for (e, k, a) in [
            ("http://push.example.net/x", key.as_str(), auth.as_str()),
            (endpoint, not_a_point.as_str(), auth.as_str()),
            (endpoint, key.as_str(), short_auth.as_str()),
            (endpoint, "!!", auth.as_str()),
        ] {
            let req = request(pb::PushProvider::Webpush, e, k, a);
            assert!(
                checked_token(req, ProviderKind::WebPush, false).is_err(),
                "{e} {k} {a}"
            );
        }
    }
}
