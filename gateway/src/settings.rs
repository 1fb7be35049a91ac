//! Settings of the API layer: authentication, verification codes, limits and rate
//! limits. `config` fills them from the TOML file, flags and `ROSSBY_*` variables.

use rossby_keyspace::RegionId;
use rossby_protocol::hawk::ServiceName;
use rossby_replication::Topology;
use rossby_storage::tables::Limits;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where verification codes are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifierSpec {
    /// Log the code (development).
    Log,
    /// Append `<identifier> <code>` lines to a file (tests and demos).
    File(PathBuf),
    /// POST a JSON document to a URL (production; an SMS or e-mail service).
    Webhook(String),
}

/// Token-bucket parameters: `per_second` sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Sustained rate.
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
}

/// Rate limits. Each can be raised for benchmarks.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimits {
    /// Authenticated requests per device.
    pub per_device: Rate,
    /// Requests per source IP address (authenticated or not).
    pub per_ip: Rate,
    /// Registration attempts (codes sent) per identifier.
    pub registrations_per_identifier: Rate,
    /// Lookups by identifier (RequestKey, Block, Unblock) per account (the
    /// setting keeps its historical name).
    pub discovery_per_device: Rate,
    /// Sealed sends (unauthenticated) per recipient box.
    pub sealed_per_recipient: Rate,
    /// Bytes a device makes the gateway store, every recipient box's copy
    /// counted (Send, GroupSend, GroupCommit): a device in debt is refused.
    pub stored_bytes_per_device: Rate,
    /// Verification codes requested per source address (Register and
    /// AddIdentifier).
    pub codes_per_address: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_device: Rate {
                per_second: 50.0,
                burst: 200.0,
            },
            per_ip: Rate {
                per_second: 200.0,
                burst: 1000.0,
            },
            registrations_per_identifier: Rate {
                per_second: 3.0 / 3600.0,
                burst: 3.0,
            },
            discovery_per_device: Rate {
                per_second: 1.0,
                burst: 100.0,
            },
            sealed_per_recipient: Rate {
                per_second: 10.0,
                burst: 100.0,
            },
            stored_bytes_per_device: Rate {
                per_second: 4.0 * 1024.0 * 1024.0,
                burst: 64.0 * 1024.0 * 1024.0,
            },
            codes_per_address: Rate {
                per_second: 10.0 / 3600.0,
                burst: 10.0,
            },
        }
    }
}

/// Settings of the API layer.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// This gateway's region (new boxes are homed here unless asked otherwise).
    pub region: RegionId,
    /// The service name requests are signed for.
    pub service: ServiceName,
    /// The current server secret (at least 32 bytes), the same on every gateway of
    /// a deployment. A gateway started from a secret file with several versions
    /// builds its API with all of them (`Api::with_server_secrets`); this field is
    /// then the current one.
    pub server_secret: Vec<u8>,
    /// Allowed difference between a request's Hawk timestamp and the gateway clock.
    pub hawk_skew: Duration,
    /// How long an authorized device is trusted without reading its record again
    /// (zero: every request reads it); see [`crate::auth::device_cache`].
    pub device_cache_ttl: Duration,
    /// Most devices remembered as authorized.
    pub device_cache_entries: u64,
    /// How long a verification code is valid.
    pub code_ttl: Duration,
    /// Wrong codes allowed before a registration must start again.
    pub code_max_attempts: u32,
    /// Wrong codes allowed per identifier and day, over all its registrations
    /// and identifier additions (kept in storage, shared by every gateway).
    pub wrong_codes_per_identifier_per_day: u32,
    /// Wrong registration-lock PINs allowed before the account's PIN checks
    /// stop for [`ApiSettings::registration_lock_lockout`].
    pub registration_lock_max_attempts: u32,
    /// How long PIN checks stop after too many wrong PINs.
    pub registration_lock_lockout: Duration,
    /// Argon2id memory cost of new registration-lock hashes, in KiB.
    pub registration_lock_memory_kib: u32,
    /// Deployment-wide budgets of codes sent per hour, kept in storage
    /// (against SMS pumping): every code, and per number prefix or e-mail
    /// domain.
    pub codes_per_hour: u64,
    /// See [`ApiSettings::codes_per_hour`].
    pub codes_per_prefix_per_hour: u64,
    /// Where codes are sent.
    pub verifier: VerifierSpec,
    /// Storage limits (payload size, devices, KeyPackages, retention, ...).
    pub limits: Limits,
    /// Most recipient boxes in one Send.
    pub max_recipients_per_send: usize,
    /// Largest frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Most envelopes returned by one Fetch.
    pub max_fetch_count: usize,
    /// Most bytes returned by one Fetch.
    pub max_fetch_bytes: usize,
    /// Longest wait a Fetch may ask for.
    pub max_fetch_wait: Duration,
    /// Bytes of current device lists one Send reply carries for recipients
    /// whose list was stale; the rest get the version only (and look it up).
    pub max_stale_list_bytes: usize,
    /// Bytes of replies in flight per device, over all its connections.
    pub device_budget_bytes: usize,
    /// Bytes of push frames queued per subscription.
    pub push_queue_bytes: usize,
    /// Rate limits.
    pub rate_limits: RateLimits,
    /// Attachment limits (sizes, quota, parts, lifetimes).
    pub attachments: rossby_storage::tables::blobs::BlobLimits,
    /// The deployment's regions and gateways, when configured: registrations may
    /// only home boxes in its regions, and replies to a box homed elsewhere name
    /// the gateways of its home region.
    pub topology: Option<Arc<Topology>>,
}

impl ApiSettings {
    /// Defaults for a single-region development gateway with the given secret.
    pub fn with_secret(server_secret: Vec<u8>) -> Self {
        ApiSettings {
            region: RegionId(1),
            service: ServiceName::default(),
            server_secret,
            hawk_skew: Duration::from_secs(120),
            device_cache_ttl: crate::auth::device_cache::DEFAULT_DEVICE_CACHE_TTL,
            device_cache_entries: crate::auth::device_cache::DEFAULT_DEVICE_CACHE_ENTRIES,
            code_ttl: Duration::from_secs(600),
            code_max_attempts: 5,
            wrong_codes_per_identifier_per_day: 20,
            registration_lock_max_attempts: 10,
            registration_lock_lockout: Duration::from_secs(24 * 3600),
            registration_lock_memory_kib: crate::api::PIN_MEMORY_KIB,
            codes_per_hour: 3600,
            codes_per_prefix_per_hour: 60,
            verifier: VerifierSpec::Log,
            limits: Limits::default(),
            max_recipients_per_send: 256,
            max_frame_bytes: rossby_protocol::framing::DEFAULT_MAX_FRAME,
            max_fetch_count: 500,
            max_fetch_bytes: 1024 * 1024,
            max_fetch_wait: Duration::from_secs(60),
            max_stale_list_bytes: 64 * 1024,
            device_budget_bytes: 8 * 1024 * 1024,
            push_queue_bytes: 1024 * 1024,
            rate_limits: RateLimits::default(),
            attachments: rossby_storage::tables::blobs::BlobLimits::default(),
            topology: None,
        }
    }
}
