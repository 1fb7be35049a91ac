//! Settings of the API layer: authentication, verification codes, limits and rate
//! limits, and the options that set them ([`ApiOptions`], [`RegistrationOptions`],
//! [`LimitOptions`] and [`crate::ratelimit::RateLimitOptions`]).

mod limits;
mod registration;

pub use limits::LimitOptions;
pub use registration::RegistrationOptions;

use crate::config::check::{at_least, secs};
use crate::error::{Error, Result};
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
    /// Bytes an account's devices make the gateway store, every recipient
    /// box's copy counted (Send, GroupSend, GroupCommit): a device of an
    /// account in debt is refused.
    pub stored_bytes_per_account: Rate,
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
            stored_bytes_per_account: Rate {
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

/// Smallest frame limit accepted: smaller ones could not carry a signed request.
pub const MIN_FRAME_BYTES: usize = 1024;

crate::config::options! {
    /// The API's requests: who signs them for what, where codes go, and how big
    /// requests, fetches and replies may be.
    #[derive(clap::Args, serde::Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "API")]
    pub struct ApiOptions {
        /// The deployment's service name `host:port` that requests are signed for
        /// [default: rossby:7400].
        #[arg(long, env = "ROSSBY_SERVICE_NAME", value_name = "HOST:PORT")]
        pub service_name: Option<String>,
        /// Where verification codes go: `log`, `file:PATH` or `webhook:URL` [default: log].
        #[arg(long, env = "ROSSBY_VERIFIER", value_name = "SPEC")]
        pub verifier: Option<String>,
        /// Allowed Hawk timestamp skew in seconds [default: 120].
        #[arg(long, env = "ROSSBY_HAWK_SKEW_SECS", value_name = "SECS")]
        pub hawk_skew_secs: Option<u64>,
        /// Milliseconds an authorized device is trusted without reading its record
        /// again; a device removed through another gateway may act this long plus
        /// 1 s; 0 reads on every request [default: 2000].
        #[arg(long, env = "ROSSBY_DEVICE_CACHE_TTL_MS", value_name = "MS")]
        pub device_cache_ttl_ms: Option<u64>,
        /// Most authorized devices remembered (about 460 bytes each) [default: 50000].
        #[arg(long, env = "ROSSBY_DEVICE_CACHE_ENTRIES", value_name = "N")]
        pub device_cache_entries: Option<u64>,
        /// Most recipient boxes per Send [default: 256].
        #[arg(long, env = "ROSSBY_MAX_RECIPIENTS", value_name = "N")]
        pub max_recipients: Option<usize>,
        /// Largest request frame in bytes [default: 1114112].
        #[arg(long, env = "ROSSBY_MAX_FRAME_BYTES", value_name = "BYTES")]
        pub max_frame_bytes: Option<usize>,
        /// Most envelopes per Fetch [default: 500].
        #[arg(long, env = "ROSSBY_MAX_FETCH_COUNT", value_name = "N")]
        pub max_fetch_count: Option<usize>,
        /// Most envelope bytes per Fetch; a Fetch asking for 0 gets this many
        /// [default: 1048576].
        #[arg(long, env = "ROSSBY_MAX_FETCH_BYTES", value_name = "BYTES")]
        pub max_fetch_bytes: Option<usize>,
        /// Longest wait a Fetch may ask for, in seconds [default: 60].
        #[arg(long, env = "ROSSBY_MAX_FETCH_WAIT_SECS", value_name = "SECS")]
        pub max_fetch_wait_secs: Option<u64>,
        /// Bytes of current device lists one Send reply carries for stale
        /// recipients; further stale recipients get only their list's version
        /// [default: 65536].
        #[arg(long, env = "ROSSBY_MAX_STALE_LIST_BYTES", value_name = "BYTES")]
        pub max_stale_list_bytes: Option<usize>,
        /// Bytes of replies in flight per device, over all its connections
        /// [default: 8388608].
        #[arg(long, env = "ROSSBY_DEVICE_BUDGET_BYTES", value_name = "BYTES")]
        pub device_budget_bytes: Option<usize>,
        /// Bytes of push frames queued per subscription before new pushes are
        /// dropped [default: 1048576].
        #[arg(long, env = "ROSSBY_PUSH_QUEUE_BYTES", value_name = "BYTES")]
        pub push_queue_bytes: Option<usize>,
    }
}

impl ApiOptions {
    /// Sets what these options set in `api`, checked; unset ones keep `api`'s
    /// values.
    pub fn apply(self, api: &mut ApiSettings) -> Result<()> {
        if let Some(name) = self.service_name {
            api.service = name
                .parse::<ServiceName>()
                .map_err(|e| Error::Config(format!("--service-name {name:?}: {e}")))?;
        }
        if let Some(spec) = self.verifier {
            api.verifier = parse_verifier(&spec).map_err(Error::Config)?;
        }
        api.hawk_skew = secs(
            "hawk-skew-secs",
            self.hawk_skew_secs.unwrap_or(api.hawk_skew.as_secs()),
            1,
            86_400,
        )?;
        let device_ttl_ms = self
            .device_cache_ttl_ms
            .unwrap_or(crate::config::check::millis(api.device_cache_ttl));
        if device_ttl_ms > 60_000 {
            return Err(Error::Config(format!(
                "--device-cache-ttl-ms must be at most 60000 (got {device_ttl_ms})"
            )));
        }
        api.device_cache_ttl = Duration::from_millis(device_ttl_ms);
        api.device_cache_entries = at_least(
            "device-cache-entries",
            self.device_cache_entries
                .unwrap_or(api.device_cache_entries),
            1,
        )?;
        api.max_recipients_per_send = at_least(
            "max-recipients",
            self.max_recipients.unwrap_or(api.max_recipients_per_send),
            1,
        )?;
        api.max_frame_bytes = at_least(
            "max-frame-bytes",
            self.max_frame_bytes.unwrap_or(api.max_frame_bytes),
            MIN_FRAME_BYTES,
        )?;
        if api.max_frame_bytes > u32::MAX as usize {
            return Err(Error::Config(format!(
                "--max-frame-bytes must be at most {} (got {})",
                u32::MAX,
                api.max_frame_bytes
            )));
        }
        api.max_fetch_count = at_least(
            "max-fetch-count",
            self.max_fetch_count.unwrap_or(api.max_fetch_count),
            1,
        )?;
        api.max_fetch_bytes = at_least(
            "max-fetch-bytes",
            self.max_fetch_bytes.unwrap_or(api.max_fetch_bytes),
            1024,
        )?;
        api.max_stale_list_bytes = self
            .max_stale_list_bytes
            .unwrap_or(api.max_stale_list_bytes);
        api.device_budget_bytes = at_least(
            "device-budget-bytes",
            self.device_budget_bytes.unwrap_or(api.device_budget_bytes),
            64 * 1024,
        )?;
        api.push_queue_bytes = at_least(
            "push-queue-bytes",
            self.push_queue_bytes.unwrap_or(api.push_queue_bytes),
            1024,
        )?;
        api.max_fetch_wait = secs(
            "max-fetch-wait-secs",
            self.max_fetch_wait_secs
                .unwrap_or(api.max_fetch_wait.as_secs()),
            0,
            3600,
        )?;
        Ok(())
    }
}

/// Parses a verifier spec: `log`, `file:PATH` or `webhook:URL`.
pub fn parse_verifier(s: &str) -> std::result::Result<VerifierSpec, String> {
    let s = s.trim();
    if s == "log" {
        return Ok(VerifierSpec::Log);
    }
    if let Some(path) = s.strip_prefix("file:") {
        if path.is_empty() {
            return Err("--verifier file: needs a path (file:PATH)".into());
        }
        return Ok(VerifierSpec::File(PathBuf::from(path)));
    }
    if let Some(url) = s.strip_prefix("webhook:") {
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(format!(
                "--verifier webhook: needs an http:// URL, got {url:?}"
            ));
        }
        return Ok(VerifierSpec::Webhook(url.to_string()));
    }
    Err(format!(
        "--verifier must be log, file:PATH or webhook:URL, got {s:?}"
    ))
}
