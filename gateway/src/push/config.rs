//! The push options of a gateway (`--webpush-*`, `--apns-*`, `--fcm-*`,
//! `--push-*`) and the clients they make.

use super::apns::{Apns, ApnsConfig};
use super::fcm::{Fcm, FcmConfig};
use super::scheduler::{Providers, PushSettings};
use super::webpush::{WebPush, WebPushConfig};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The VAPID subject without `--webpush-subject`: syntactically valid, but
/// push services that check it (Apple's) want a real contact.
pub const DEFAULT_WEBPUSH_SUBJECT: &str = "mailto:push@rossby.invalid";

/// Default time one request to a push service may take.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which push services a gateway wakes devices through, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushConfig {
    /// Scheduling, queues and retries.
    pub settings: PushSettings,
    /// Web Push (on by default: its VAPID key is generated when absent).
    pub webpush: Option<WebPushConfig>,
    /// APNs, when its key is configured.
    pub apns: Option<ApnsConfig>,
    /// FCM, when a service account is configured.
    pub fcm: Option<FcmConfig>,
}

impl PushConfig {
    /// Web Push with a key generated in `data_dir`, no APNs or FCM, default
    /// scheduling.
    pub fn defaults(data_dir: &Path) -> PushConfig {
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

    /// Loads the credentials and builds one client per configured service.
    pub fn providers(&self) -> Result<Providers> {
        let mut providers = Providers::default();
        if let Some(config) = &self.webpush {
            let client = WebPush::new(config)?;
            let public = client.vapid_key().public_key_base64url();
            tracing::info!(vapid_public_key = %public, "Web Push on");
            providers.vapid_public_key = Some(public);
            providers.allow_insecure_endpoints = config.allow_insecure;
            providers.clients.push(Arc::new(client));
        }
        if let Some(config) = &self.apns {
            providers.clients.push(Arc::new(Apns::new(config)?));
            tracing::info!("APNs on");
        }
        if let Some(config) = &self.fcm {
            providers.clients.push(Arc::new(Fcm::new(config)?));
            tracing::info!("FCM on");
        }
        Ok(providers)
    }
}

crate::config::options! {
    /// Which push services wake devices, and how wake-ups are scheduled
    /// (docs/operations/push.md).
    #[derive(clap::Args, serde::Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "Wake-up pushes")]
    pub struct PushOptions {
        /// Web Push on or off [default: true].
        #[arg(long, env = "ROSSBY_WEBPUSH", value_name = "BOOL")]
        pub webpush: Option<bool>,
        /// The VAPID private key (PEM, or a raw 32-byte P-256 key); generated when
        /// absent [default: <data-dir>/vapid.pem].
        #[arg(long, env = "ROSSBY_WEBPUSH_VAPID_KEY", value_name = "FILE")]
        pub webpush_vapid_key: Option<PathBuf>,
        /// The VAPID subject push services may contact: `mailto:` or `https://`
        /// [default: mailto:push@rossby.invalid].
        #[arg(long, env = "ROSSBY_WEBPUSH_SUBJECT", value_name = "URI")]
        pub webpush_subject: Option<String>,
        /// Accept Web Push endpoints over http and on loopback or private
        /// addresses (tests only) [default: false].
        #[arg(long, env = "ROSSBY_WEBPUSH_ALLOW_INSECURE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        pub webpush_allow_insecure: Option<bool>,
        /// The APNs signing key (.p8); turns APNs on (with --apns-key-id,
        /// --apns-team-id, --apns-topic) [default: off].
        #[arg(long, env = "ROSSBY_APNS_KEY", value_name = "FILE")]
        pub apns_key: Option<PathBuf>,
        /// The key's 10-character id from Apple.
        #[arg(long, env = "ROSSBY_APNS_KEY_ID", value_name = "ID")]
        pub apns_key_id: Option<String>,
        /// The 10-character Apple developer team id.
        #[arg(long, env = "ROSSBY_APNS_TEAM_ID", value_name = "ID")]
        pub apns_team_id: Option<String>,
        /// The app's bundle id (`apns-topic`).
        #[arg(long, env = "ROSSBY_APNS_TOPIC", value_name = "BUNDLE")]
        pub apns_topic: Option<String>,
        /// APNs base URL [default: https://api.push.apple.com].
        #[arg(long, env = "ROSSBY_APNS_URL", value_name = "URL")]
        pub apns_url: Option<String>,
        /// `alert` (a generic text the app replaces) or `background` [default: alert].
        #[arg(long, env = "ROSSBY_APNS_PUSH_TYPE", value_name = "TYPE")]
        pub apns_push_type: Option<String>,
        /// The Firebase service-account JSON; turns FCM on [default: off].
        #[arg(long, env = "ROSSBY_FCM_SERVICE_ACCOUNT", value_name = "FILE")]
        pub fcm_service_account: Option<PathBuf>,
        /// FCM base URL [default: https://fcm.googleapis.com].
        #[arg(long, env = "ROSSBY_FCM_URL", value_name = "URL")]
        pub fcm_url: Option<String>,
        /// OAuth2 token URL [default: the service account's token_uri].
        #[arg(long, env = "ROSSBY_FCM_TOKEN_URL", value_name = "URL")]
        pub fcm_token_url: Option<String>,
        /// Least milliseconds between two wake-ups of one device [default: 30000].
        #[arg(long, env = "ROSSBY_PUSH_INTERVAL_MS", value_name = "MS")]
        pub push_interval_ms: Option<u64>,
        /// Seconds an unanswered wake-up (no ack since) blocks the next [default: 900].
        #[arg(long, env = "ROSSBY_PUSH_OUTSTANDING_SECS", value_name = "SECS")]
        pub push_outstanding_secs: Option<u64>,
        /// Boxes waiting for the wake-up scheduler before more are dropped [default: 8192].
        #[arg(long, env = "ROSSBY_PUSH_QUEUE", value_name = "N")]
        pub push_queue: Option<usize>,
        /// Wake-ups waiting per push service before more are dropped [default: 4096].
        #[arg(long, env = "ROSSBY_PUSH_PROVIDER_QUEUE", value_name = "N")]
        pub push_provider_queue: Option<usize>,
        /// Requests in flight per push service [default: 32].
        #[arg(long, env = "ROSSBY_PUSH_CONCURRENCY", value_name = "N")]
        pub push_concurrency: Option<usize>,
        /// Delivery attempts per wake-up [default: 4].
        #[arg(long, env = "ROSSBY_PUSH_MAX_ATTEMPTS", value_name = "N")]
        pub push_max_attempts: Option<u32>,
        /// Milliseconds before the first retry, doubling [default: 500].
        #[arg(long, env = "ROSSBY_PUSH_RETRY_BASE_MS", value_name = "MS")]
        pub push_retry_base_ms: Option<u64>,
        /// Longest wait before a retry, in seconds [default: 60].
        #[arg(long, env = "ROSSBY_PUSH_RETRY_CAP_SECS", value_name = "SECS")]
        pub push_retry_cap_secs: Option<u64>,
        /// Seconds a push service keeps a wake-up for an unreachable device [default: 86400].
        #[arg(long, env = "ROSSBY_PUSH_TTL_SECS", value_name = "SECS")]
        pub push_ttl_secs: Option<u64>,
        /// Milliseconds one request to a push service may take [default: 10000].
        #[arg(long, env = "ROSSBY_PUSH_TIMEOUT_MS", value_name = "MS")]
        pub push_timeout_ms: Option<u64>,
    }
}

impl PushOptions {
    /// The push configuration, checked; the VAPID key defaults to `vapid.pem`
    /// in `data_dir`.
    pub fn into_config(self, data_dir: &Path) -> Result<PushConfig> {
        let d = PushSettings::default();
        let ms =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        let secs =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_secs);
        let settings = PushSettings {
            interval: ms(self.push_interval_ms, d.interval),
            outstanding: secs(self.push_outstanding_secs, d.outstanding),
            queue: self.push_queue.unwrap_or(d.queue),
            provider_queue: self.push_provider_queue.unwrap_or(d.provider_queue),
            concurrency: self.push_concurrency.unwrap_or(d.concurrency),
            max_attempts: self.push_max_attempts.unwrap_or(d.max_attempts),
            retry_base: ms(self.push_retry_base_ms, d.retry_base),
            retry_cap: secs(self.push_retry_cap_secs, d.retry_cap),
            ttl: secs(self.push_ttl_secs, d.ttl),
        };
        settings.check().map_err(Error::Config)?;
        let timeout = match self.push_timeout_ms {
            Some(0) => return Err(Error::Config("--push-timeout-ms must be positive".into())),
            Some(t) => Duration::from_millis(t),
            None => DEFAULT_TIMEOUT,
        };

        let webpush = self.webpush.unwrap_or(true).then(|| WebPushConfig {
            vapid_key_file: self
                .webpush_vapid_key
                .unwrap_or_else(|| data_dir.join("vapid.pem")),
            subject: self
                .webpush_subject
                .unwrap_or_else(|| DEFAULT_WEBPUSH_SUBJECT.into()),
            allow_insecure: self.webpush_allow_insecure.unwrap_or(false),
            timeout,
        });
        if let Some(w) = &webpush {
            super::webpush::check_subject(&w.subject)?;
        }

        let apns_rest = [
            ("apns-key-id", self.apns_key_id),
            ("apns-team-id", self.apns_team_id),
            ("apns-topic", self.apns_topic),
        ];
        let apns = match self.apns_key {
            None => {
                if apns_rest.iter().any(|(_, v)| v.is_some())
                    || self.apns_url.is_some()
                    || self.apns_push_type.is_some()
                {
                    return Err(Error::Config(
                        "the --apns-* options need --apns-key (the .p8 signing key)".into(),
                    ));
                }
                None
            }
            Some(key_file) => {
                let [key_id, team_id, topic] = apns_rest.map(|(flag, value)| {
                    value.ok_or_else(|| {
                        Error::Config(format!("APNs needs --{flag} with --apns-key"))
                    })
                });
                Some(ApnsConfig {
                    key_file,
                    key_id: key_id?,
                    team_id: team_id?,
                    topic: topic?,
                    url: self
                        .apns_url
                        .unwrap_or_else(|| super::apns::DEFAULT_URL.into()),
                    push_type: match self.apns_push_type {
                        Some(t) => t.parse()?,
                        None => super::apns::ApnsPushType::default(),
                    },
                    timeout,
                })
            }
        };

        let fcm = match self.fcm_service_account {
            None => {
                if self.fcm_url.is_some() || self.fcm_token_url.is_some() {
                    return Err(Error::Config(
                        "--fcm-url and --fcm-token-url need --fcm-service-account".into(),
                    ));
                }
                None
            }
            Some(service_account_file) => Some(FcmConfig {
                service_account_file,
                url: self
                    .fcm_url
                    .unwrap_or_else(|| super::fcm::DEFAULT_URL.into()),
                token_url: self.fcm_token_url,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{ENV_LOCK, parse};

    #[test]
    fn push_options_have_documented_defaults_and_are_checked() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let c = parse(&["--data-dir", "/srv/r"]).unwrap();
        let p = &c.push;
        let webpush = p.webpush.as_ref().expect("Web Push is on by default");
        assert_eq!(webpush.vapid_key_file, PathBuf::from("/srv/r/vapid.pem"));
        assert_eq!(webpush.subject, DEFAULT_WEBPUSH_SUBJECT);
        assert!(!webpush.allow_insecure);
        assert_eq!((p.apns.is_none(), p.fcm.is_none()), (true, true));
        assert_eq!(p.settings, crate::push::PushSettings::default());
        assert_eq!(p.settings.interval, Duration::from_secs(30));

        let c = parse(&[
            "--webpush-subject",
            "mailto:ops@example.net",
            "--webpush-allow-insecure",
            "--apns-key",
            "/k.p8",
            "--apns-key-id",
            "ABCDE12345",
            "--apns-team-id",
            "TEAM012345",
            "--apns-topic",
            "im.rossby.app",
            "--apns-push-type",
            "background",
            "--fcm-service-account",
            "/fcm.json",
            "--push-interval-ms",
            "1500",
            "--push-max-attempts",
            "2",
            "--push-timeout-ms",
            "2500",
        ])
        .unwrap();
        let p = &c.push;
        let webpush = p.webpush.as_ref().unwrap();
        assert!(webpush.allow_insecure);
        assert_eq!(webpush.timeout, Duration::from_millis(2500));
        let apns = p.apns.as_ref().unwrap();
        assert_eq!(apns.url, crate::push::apns::DEFAULT_URL);
        assert_eq!(apns.push_type, crate::push::apns::ApnsPushType::Background);
        assert_eq!(apns.timeout, Duration::from_millis(2500));
        let fcm = p.fcm.as_ref().unwrap();
        assert_eq!(fcm.service_account_file, PathBuf::from("/fcm.json"));
        assert_eq!(fcm.url, crate::push::fcm::DEFAULT_URL);
        assert_eq!(p.settings.interval, Duration::from_millis(1500));
        assert_eq!(p.settings.max_attempts, 2);
        assert!(
            parse(&["--webpush", "false"])
                .unwrap()
                .push
                .webpush
                .is_none()
        );

        for (argv, needle) in [
            (&["--apns-key", "/k.p8"][..], "--apns-key-id"),
            (&["--apns-topic", "x"][..], "--apns-key"),
            (&["--fcm-url", "https://x"][..], "--fcm-service-account"),
            (
                &["--webpush-subject", "ops@example.net"][..],
                "--webpush-subject",
            ),
            (&["--push-max-attempts", "0"][..], "--push-max-attempts"),
            (&["--push-timeout-ms", "0"][..], "--push-timeout-ms"),
            (
                &[
                    "--push-interval-ms",
                    "600000",
                    "--push-outstanding-secs",
                    "60",
                ][..],
                "--push-outstanding-secs",
            ),
        ] {
            let message = parse(argv).unwrap_err().to_string();
            assert!(message.contains(needle), "{argv:?}: {message}");
        }
    }
}
