//! What every push provider client offers the wake-up scheduler: one call that
//! delivers one content-free wake-up and says how it went, in the terms the
//! scheduler acts on (delivered, drop the token, retry later, give up).

use std::time::Duration;

/// The JSON every provider carries to the device: "fetch now", nothing about
/// who wrote or what.
pub const WAKE_DATA_KEY: &str = "rossby";
/// The value under [`WAKE_DATA_KEY`].
pub const WAKE_DATA_VALUE: &str = "fetch";

/// The collapse key of every wake-up (APNs `apns-collapse-id`, FCM
/// `collapse_key`, Web Push `Topic`): a newer wake-up replaces an undelivered
/// older one at the push service, since both say the same thing.
pub const COLLAPSE_ID: &str = "rossby-wake";

/// The push services a device can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderKind {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
    /// A Web Push (RFC 8030) push service named by the subscription's endpoint.
    WebPush,
}

impl ProviderKind {
    /// Every kind, in metric order.
    pub const ALL: [ProviderKind; 3] =
        [ProviderKind::Apns, ProviderKind::Fcm, ProviderKind::WebPush];

    /// The name used in metrics, logs, configuration and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Apns => "apns",
            ProviderKind::Fcm => "fcm",
            ProviderKind::WebPush => "webpush",
        }
    }
}

/// Where one wake-up goes: a device's registered token.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// An APNs device token (hex, as the device reports it).
    Apns {
        /// Lower-case hex.
        device_token: String,
    },
    /// An FCM registration token.
    Fcm {
        /// As the app's FCM SDK returned it.
        registration_token: String,
    },
    /// A Web Push subscription.
    WebPush {
        /// The push service URL the browser gave (https, or http on loopback
        /// when insecure endpoints are allowed).
        endpoint: String,
        /// The subscription's P-256 public key, uncompressed (65 bytes).
        p256dh: [u8; 65],
        /// The subscription's authentication secret.
        auth: [u8; 16],
    },
}

impl Target {
    /// The provider this target belongs to.
    pub fn kind(&self) -> ProviderKind {
        match self {
            Target::Apns { .. } => ProviderKind::Apns,
            Target::Fcm { .. } => ProviderKind::Fcm,
            Target::WebPush { .. } => ProviderKind::WebPush,
        }
    }
}

// Tokens are credentials of the device: never in logs.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({})", self.kind().name())
    }
}

/// One wake-up to deliver.
#[derive(Clone, Debug)]
pub struct WakeUp {
    /// Where it goes.
    pub target: Target,
    /// How long the push service may keep it for an unreachable device.
    pub ttl: Duration,
}

/// How a delivery attempt ended, as the scheduler needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The push service accepted it.
    Delivered,
    /// The token is invalid or no longer registered (APNs 410 or
    /// `BadDeviceToken`, FCM `UNREGISTERED`/`INVALID_ARGUMENT` on the token, Web
    /// Push 404/410): the token is removed.
    Unregistered {
        /// Short, stable reason for metrics (`"410"`, `"unregistered"`, ...).
        reason: &'static str,
    },
    /// Worth trying again (429, 5xx, timeout, connection failure), no sooner
    /// than `after` when the service said so (`Retry-After`).
    Retry {
        /// Short, stable reason for metrics (`"429"`, `"5xx"`, `"timeout"`,
        /// `"connect"`).
        reason: &'static str,
        /// The service's `Retry-After`, if it sent one.
        after: Option<Duration>,
    },
    /// Failed in a way retrying does not fix (a rejected request, bad
    /// credentials); the token is kept.
    Failed {
        /// Short, stable reason for metrics (`"400"`, `"403"`, `"auth"`, ...).
        reason: &'static str,
    },
}

/// A push service client.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Which service this is.
    fn kind(&self) -> ProviderKind;

    /// Delivers one wake-up to `wake.target` (always of [`Provider::kind`]). Must
    /// return within the client's request timeout; never panics.
    async fn send(&self, wake: &WakeUp) -> Outcome;
}
