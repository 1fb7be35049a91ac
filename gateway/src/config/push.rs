//! The wake-up push options (`--webpush-*`, `--apns-*`, `--fcm-*`, `--push-*`).

use super::{Args, FileConfig, pick};
use crate::error::{Error, Result};
use crate::push::PushConfig;
use crate::push::apns::ApnsConfig;
use crate::push::fcm::FcmConfig;
use crate::push::scheduler::PushSettings;
use crate::push::webpush::WebPushConfig;
use std::path::Path;
use std::time::Duration;

/// The VAPID subject without `--webpush-subject`: syntactically valid, but
/// push services that check it (Apple's) want a real contact.
pub(super) const DEFAULT_WEBPUSH_SUBJECT: &str = "mailto:push@rossby.invalid";

/// Default time one request to a push service may take.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Web Push with a generated key, no APNs or FCM, default scheduling.
pub(super) fn defaults(data_dir: &Path) -> PushConfig {
    PushConfig {
        settings: PushSettings::default(),
        webpush: Some(WebPushConfig {
            vapid_key_file: data_dir.join("vapid.pem"),
            subject: DEFAULT_WEBPUSH_SUBJECT.into(),
            allow_insecure: false,
            timeout: DEFAULT_TIMEOUT,
        }),
        apns: None,
        fcm: None,
    }
}

fn positive(flag: &str, value: u64) -> Result<u64> {
    if value == 0 {
        return Err(Error::Config(format!("--{flag} must be positive")));
    }
    Ok(value)
}

/// Flags over the file over the defaults, checked.
pub(super) fn options(a: &Args, f: &FileConfig, data_dir: &Path) -> Result<PushConfig> {
    let d = PushSettings::default();
    let ms = |flag: Option<u64>, file: Option<u64>, default: Duration| {
        flag.or(file).map_or(default, Duration::from_millis)
    };
    let secs = |flag: Option<u64>, file: Option<u64>, default: Duration| {
        flag.or(file).map_or(default, Duration::from_secs)
    };
    let settings = PushSettings {
        interval: ms(a.push_interval_ms, f.push_interval_ms, d.interval),
        outstanding: secs(
            a.push_outstanding_secs,
            f.push_outstanding_secs,
            d.outstanding,
        ),
        queue: pick(a.push_queue, f.push_queue, d.queue),
        provider_queue: pick(
            a.push_provider_queue,
            f.push_provider_queue,
            d.provider_queue,
        ),
        concurrency: pick(a.push_concurrency, f.push_concurrency, d.concurrency),
        max_attempts: pick(a.push_max_attempts, f.push_max_attempts, d.max_attempts),
        retry_base: ms(a.push_retry_base_ms, f.push_retry_base_ms, d.retry_base),
        retry_cap: secs(a.push_retry_cap_secs, f.push_retry_cap_secs, d.retry_cap),
        ttl: secs(a.push_ttl_secs, f.push_ttl_secs, d.ttl),
    };
    settings.check().map_err(Error::Config)?;
    let timeout = match a.push_timeout_ms.or(f.push_timeout_ms) {
        Some(t) => Duration::from_millis(positive("push-timeout-ms", t)?),
        None => DEFAULT_TIMEOUT,
    };

    let webpush = pick(a.webpush, f.webpush, true).then(|| WebPushConfig {
        vapid_key_file: a
            .webpush_vapid_key
            .clone()
            .or_else(|| f.webpush_vapid_key.clone())
            .unwrap_or_else(|| data_dir.join("vapid.pem")),
        subject: a
            .webpush_subject
            .clone()
            .or_else(|| f.webpush_subject.clone())
            .unwrap_or_else(|| DEFAULT_WEBPUSH_SUBJECT.into()),
        allow_insecure: pick(a.webpush_allow_insecure, f.webpush_allow_insecure, false),
        timeout,
    });
    if let Some(w) = &webpush {
        crate::push::webpush::check_subject(&w.subject)?;
    }

    let apns_key = a.apns_key.clone().or_else(|| f.apns_key.clone());
    let apns_rest = [
        (
            "apns-key-id",
            a.apns_key_id.clone().or_else(|| f.apns_key_id.clone()),
        ),
        (
            "apns-team-id",
            a.apns_team_id.clone().or_else(|| f.apns_team_id.clone()),
        ),
        (
            "apns-topic",
            a.apns_topic.clone().or_else(|| f.apns_topic.clone()),
        ),
    ];
    let apns_url = a.apns_url.clone().or_else(|| f.apns_url.clone());
    let apns_push_type = a
        .apns_push_type
        .clone()
        .or_else(|| f.apns_push_type.clone());
    let apns = match apns_key {
        None => {
            if apns_rest.iter().any(|(_, v)| v.is_some())
                || apns_url.is_some()
                || apns_push_type.is_some()
            {
                return Err(Error::Config(
                    "the --apns-* options need --apns-key (the .p8 signing key)".into(),
                ));
            }
            None
        }
        Some(key_file) => {
            let [key_id, team_id, topic] = apns_rest.map(|(flag, value)| {
                value.ok_or_else(|| Error::Config(format!("APNs needs --{flag} with --apns-key")))
            });
            Some(ApnsConfig {
                key_file,
                key_id: key_id?,
                team_id: team_id?,
                topic: topic?,
                url: apns_url.unwrap_or_else(|| crate::push::apns::DEFAULT_URL.into()),
                push_type: match apns_push_type {
                    Some(t) => t.parse()?,
                    None => crate::push::apns::ApnsPushType::default(),
                },
                timeout,
            })
        }
    };

    let fcm_url = a.fcm_url.clone().or_else(|| f.fcm_url.clone());
    let fcm_token_url = a.fcm_token_url.clone().or_else(|| f.fcm_token_url.clone());
    let fcm = match a
        .fcm_service_account
        .clone()
        .or_else(|| f.fcm_service_account.clone())
    {
        None => {
            if fcm_url.is_some() || fcm_token_url.is_some() {
                return Err(Error::Config(
                    "--fcm-url and --fcm-token-url need --fcm-service-account".into(),
                ));
            }
            None
        }
        Some(service_account_file) => Some(FcmConfig {
            service_account_file,
            url: fcm_url.unwrap_or_else(|| crate::push::fcm::DEFAULT_URL.into()),
            token_url: fcm_token_url,
            timeout,
        }),
    };
    Ok(PushConfig {
        settings,
        webpush,
        apns,
        fcm,
    })
}
