//! The gateway's configuration: a TOML file, flags and `ROSSBY_*` environment
//! variables, merged with the precedence **flag > environment > file > default**.
//!
//! Every option exists in all three forms: the flag `--max-frame-bytes`, the variable
//! `ROSSBY_MAX_FRAME_BYTES` and the TOML key `max_frame_bytes` (flat, no tables).
//! `docs/configuration.md` lists them all. With no options at all the result is a
//! working single-region gateway: fjall store in `./rossby-data/store`, a generated
//! self-signed certificate, QUIC on `0.0.0.0:7400`, admin on `127.0.0.1:7401`.
//!
//! Each area's options are declared once, next to the code they configure, as a
//! struct that is both flags and file keys (`options!` in `config/options.rs`):
//! [`StorageOptions`], [`QuicOptions`], [`PushOptions`], ... This module gathers
//! them into [`Args`], reads the file (`config/file.rs`) and assembles the
//! [`Config`], each area checked by its own module.
//!
//! Parsing is pure: nothing is created or read except the TOML file and the
//! topology. Secrets and certificates are loaded (or generated) by
//! [`crate::gateway::Gateway::start`].

pub(crate) mod check;
mod file;
mod options;

pub use crate::admin::AdminOptions;
pub use crate::api::attachments::{AttachmentOptions, MIN_PART_BYTES};
pub use crate::blobstore::BlobStoreOptions;
pub use crate::geo::{GeoOptions, read_topology};
pub use crate::maintenance::MaintenanceOptions;
pub use crate::peer::PeerOptions;
pub use crate::private_file::load_or_create_secret;
pub(crate) use crate::private_file::{
    create_private_dir, decode_secret, warn_if_readable_by_others, write_private_file_once,
};
pub use crate::push::PushOptions;
pub use crate::ratelimit::{RateLimitOptions, parse_burst, parse_rate};
pub use crate::secret_file::SecretOptions;
pub use crate::server::config::{AddressValidation, QuicConfig, QuicOptions};
pub use crate::settings::{
    ApiOptions, LimitOptions, MIN_FRAME_BYTES, RegistrationOptions, parse_verifier,
};
pub use crate::storage::{DurabilityArg, RetryOptions, StorageConfig, StorageKind, StorageOptions};
pub use crate::tls::{TlsConfig, TlsOptions};
pub use options::Merge;
pub(crate) use options::{options, removed};

use crate::error::{Error, Result};
use crate::settings::{ApiSettings, Rate, RateLimits, VerifierSpec};
use check::secs;
use clap::{Parser, ValueEnum};
use rossby_keyspace::RegionId;
use rossby_storage::kv::fjall::FjallConfig;
use rossby_storage::{BackendConfig, RetryPolicy};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default directory of everything the gateway keeps locally.
pub const DEFAULT_DATA_DIR: &str = "./rossby-data";
/// Default QUIC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7400";
/// Default admin (HTTP) listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7401";

/// Output format of the logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

options! {
    /// Command-line flags. Each is also read from its `ROSSBY_*` variable (the flag
    /// wins) and from the TOML file given by `--config` (which loses to both).
    #[derive(Parser, Deserialize, Debug, Default, Clone)]
    #[command(
        name = "rossby-gateway",
        version,
        about = "Rossby gateway: the Rossby API over QUIC, with an HTTP admin port",
        long_about = None
    )]
    pub struct Args {
        /// TOML configuration file (flat keys named like the flags, with `_` for `-`).
        #[arg(long, env = "ROSSBY_CONFIG", value_name = "FILE")]
        #[serde(skip)]
        pub config: Option<PathBuf>,
        /// Directory for the store, certificate, key and secrets [default: ./rossby-data].
        #[arg(long, env = "ROSSBY_DATA_DIR", value_name = "DIR")]
        pub data_dir: Option<PathBuf>,
        /// QUIC (UDP) listen address [default: 0.0.0.0:7400].
        #[arg(long, env = "ROSSBY_LISTEN", value_name = "ADDR")]
        pub listen: Option<SocketAddr>,
        /// Log format [default: text].
        #[arg(long, env = "ROSSBY_LOG_FORMAT", value_name = "FORMAT")]
        pub log_format: Option<LogFormat>,
        /// Log filter (`tracing` directives such as `info` or `rossby_gateway=debug`)
        /// [default: info].
        #[arg(long, env = "ROSSBY_LOG_LEVEL", value_name = "FILTER")]
        pub log_level: Option<String>,
        /// Seconds between failing readiness and refusing connections on shutdown
        /// [default: 5].
        #[arg(long, env = "ROSSBY_DRAIN_GRACE_SECS", value_name = "SECS")]
        pub drain_grace_secs: Option<u64>,
        /// Seconds in-flight requests may take to finish on shutdown [default: 30].
        #[arg(long, env = "ROSSBY_DRAIN_TIMEOUT_SECS", value_name = "SECS")]
        pub drain_timeout_secs: Option<u64>,
        /// Region, topology and the local simulations.
        #[command(flatten)]
        #[serde(flatten)]
        pub geo: GeoOptions,
        /// The admin listener.
        #[command(flatten)]
        #[serde(flatten)]
        pub admin: AdminOptions,
        /// The storage backend.
        #[command(flatten)]
        #[serde(flatten)]
        pub store: StorageOptions,
        /// Retries of conflicting storage transactions.
        #[command(flatten)]
        #[serde(flatten)]
        pub retry: RetryOptions,
        /// The maintenance rounds and their leases.
        #[command(flatten)]
        #[serde(flatten)]
        pub maintenance: MaintenanceOptions,
        /// The certificate.
        #[command(flatten)]
        #[serde(flatten)]
        pub tls: TlsOptions,
        /// The server secret and lookup pepper files.
        #[command(flatten)]
        #[serde(flatten)]
        pub secrets: SecretOptions,
        /// The QUIC transport.
        #[command(flatten)]
        #[serde(flatten)]
        pub quic: QuicOptions,
        /// The API's requests, frames and fetches.
        #[command(flatten)]
        #[serde(flatten)]
        pub api: ApiOptions,
        /// Verification codes and registration-lock PINs.
        #[command(flatten)]
        #[serde(flatten)]
        pub registration: RegistrationOptions,
        /// Per-box and per-device storage limits.
        #[command(flatten)]
        #[serde(flatten)]
        pub limits: LimitOptions,
        /// Rate limits and code budgets.
        #[command(flatten)]
        #[serde(flatten)]
        pub rate_limits: RateLimitOptions,
        /// Where attachments are stored.
        #[command(flatten)]
        #[serde(flatten)]
        pub blob_store: BlobStoreOptions,
        /// Attachment limits.
        #[command(flatten)]
        #[serde(flatten)]
        pub attachments: AttachmentOptions,
        /// Wake-up pushes.
        #[command(flatten)]
        #[serde(flatten)]
        pub push: PushOptions,
        /// The gateway-to-gateway endpoint and leases.
        #[command(flatten)]
        #[serde(flatten)]
        pub peer: PeerOptions,
    }
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// `tracing` filter directives.
    pub level: String,
}

/// The complete, validated configuration of a gateway.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory of local state (created at start).
    pub data_dir: PathBuf,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address.
    pub admin_listen: SocketAddr,
    /// The store.
    pub storage: StorageConfig,
    /// Certificate and key.
    pub tls: TlsConfig,
    /// Server secret file (generated with 32 random bytes if missing).
    pub secret_file: PathBuf,
    /// The current server secret version; `None`: the highest in the secret file
    /// ([`crate::secret_file`]).
    pub secret_version: Option<u32>,
    /// Lookup pepper file (generated with 32 random bytes if missing).
    pub pepper_file: PathBuf,
    /// The current lookup pepper version; `None`: the highest in the pepper file
    /// ([`crate::secret_file`]).
    pub pepper_version: Option<u32>,
    /// Logging.
    pub log: LogConfig,
    /// QUIC transport limits.
    pub quic: QuicConfig,
    /// On shutdown, how long readiness fails before connections are refused (so
    /// load balancers stop sending new clients first).
    pub drain_grace: Duration,
    /// On shutdown, how long in-flight requests may take before connections close.
    pub drain_timeout: Duration,
    /// Deadline of the readiness probe transaction.
    pub probe_timeout: Duration,
    /// Bounds of the admin listener ([`crate::admin::serve`]).
    pub admin_limits: crate::admin::AdminLimits,
    /// Interval between maintenance rounds ([`crate::maintenance`]).
    pub maintenance_interval: Duration,
    /// Lifetime of a maintenance lease; at least twice `maintenance_interval`.
    pub maintenance_lease: Duration,
    /// How the API's storage transactions are retried on conflict; `None` when no
    /// `--retry-*` option was given: the default policy, stretched to the modelled
    /// round trips under the WAN simulation (`crate::gateway`).
    pub retry: Option<RetryPolicy>,
    /// The file the topology (in `api.topology`) was read from.
    pub topology_file: Option<PathBuf>,
    /// Whether storage transactions are delayed by the simulated WAN round trips
    /// of the topology (`rossby_wansim`).
    pub wan_sim: bool,
    /// Whether the process runs every region of the topology locally
    /// ([`crate::local`]).
    pub local: bool,
    /// The gateway-to-gateway endpoint; `None`: peer notifications are off.
    /// Enable it programmatically with [`crate::peer::PeerConfig::loopback`] and
    /// credentials from [`crate::peer::tls::DevCa`].
    pub peer: Option<crate::peer::PeerConfig>,
    /// How often a waiting fetch re-reads storage for messages that arrived through
    /// other gateways; `None`: never (notifications alone wake it).
    pub fetch_poll_interval: Option<Duration>,
    /// Lifetime and renewal interval of the box-ownership lease (with peers and
    /// a topology; docs/geo.md).
    pub owner_lease: (Duration, Duration),
    /// Where attachment ciphertext is stored ([`crate::blobstore`]).
    pub blob_store: crate::blobstore::BlobStoreConfig,
    /// Wake-up pushes ([`crate::push`]).
    pub push: crate::push::PushConfig,
    /// Settings of the API layer. `server_secret` is ignored here: the gateway
    /// fills it from `secret_file` at start.
    pub api: ApiSettings,
}

impl Config {
    /// Parses the process's flags and `ROSSBY_*` variables and the file they name.
    /// A usage error is returned as a `clap` error (help and version requests too).
    pub fn from_process() -> std::result::Result<Result<Config>, clap::Error> {
        Args::try_parse().map(Config::from_args)
    }

    /// Builds the configuration from parsed flags (which already include the
    /// `ROSSBY_*` variables) and the TOML file they name, if any.
    pub fn from_args(mut args: Args) -> Result<Config> {
        let file = match &args.config {
            Some(path) => file::read(path)?,
            None => Args::default(),
        };
        args.store.reject_removed(&file.store)?;
        args.maintenance.reject_removed(&file.maintenance)?;
        args.merge(file);
        assemble(args)
    }

    /// A configuration for tests: both listeners on `127.0.0.1:0`, fjall storage,
    /// certificate, key and secrets in `data_dir`, codes appended to
    /// `<data_dir>/codes.txt`, no drain grace and rate limits raised so they never
    /// interfere (tests of rate limiting lower them again).
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Config {
        let data_dir = data_dir.into();
        let mut config = Config::defaults(data_dir.clone());
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.api.verifier = VerifierSpec::File(data_dir.join("codes.txt"));
        let unlimited = Rate {
            per_second: 1e6,
            burst: 1e6,
        };
        // Tests register many users of one domain at once.
        config.api.codes_per_hour = u64::MAX;
        config.api.codes_per_prefix_per_hour = u64::MAX;
        config.api.rate_limits = RateLimits {
            per_device: unlimited,
            per_ip: unlimited,
            registrations_per_identifier: unlimited,
            discovery_per_device: unlimited,
            sealed_per_recipient: unlimited,
            stored_bytes_per_account: unlimited,
            codes_per_address: unlimited,
        };
        config.drain_grace = Duration::ZERO;
        config.drain_timeout = Duration::from_secs(5);
        // Every test client (and every simulated user of a local load test)
        // connects from loopback.
        config.quic.max_connections_per_address = config.quic.max_connections;
        config
    }

    /// The same configuration over the in-memory store.
    #[must_use]
    pub fn in_memory(mut self) -> Config {
        self.storage = StorageConfig::Backend(BackendConfig::Memory);
        self
    }

    /// This configuration as a second gateway of `other`'s deployment: the same
    /// store, server secret, lookup pepper, service name and region (so
    /// credentials, identifiers and messages work across both). For an embedded
    /// store, `other.storage` must be [`StorageConfig::Shared`]: fjall allows one
    /// opener per directory.
    #[must_use]
    pub fn same_deployment_as(mut self, other: &Config) -> Config {
        self.storage = other.storage.clone();
        self.secret_file = other.secret_file.clone();
        self.secret_version = other.secret_version;
        self.pepper_file = other.pepper_file.clone();
        self.pepper_version = other.pepper_version;
        self.api.service = other.api.service.clone();
        self.api.region = other.api.region;
        self
    }

    /// The configuration with no options, rooted at `data_dir`.
    fn defaults(data_dir: PathBuf) -> Config {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], rossby_protocol::DEFAULT_PORT)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], rossby_protocol::DEFAULT_PORT + 1)),
            storage: StorageConfig::Backend(BackendConfig::Fjall(FjallConfig::new(
                data_dir.join("store"),
            ))),
            tls: TlsConfig::generated_in(&data_dir),
            secret_file: data_dir.join("secret"),
            secret_version: None,
            pepper_file: data_dir.join("pepper"),
            pepper_version: None,
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".into(),
            },
            quic: QuicConfig::default(),
            drain_grace: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(1),
            admin_limits: crate::admin::AdminLimits::default(),
            maintenance_interval: crate::maintenance::DEFAULT_INTERVAL,
            maintenance_lease: crate::maintenance::DEFAULT_LEASE,
            retry: None,
            topology_file: None,
            wan_sim: false,
            local: false,
            peer: None,
            fetch_poll_interval: Some(crate::api::messaging::FETCH_POLL_INTERVAL),
            owner_lease: (
                crate::peer::ownership::DEFAULT_OWNER_LEASE,
                crate::peer::ownership::DEFAULT_OWNER_RENEW,
            ),
            api: ApiSettings::with_secret(Vec::new()),
            blob_store: crate::blobstore::BlobStoreConfig::Local(data_dir.join("blobs")),
            push: crate::push::PushConfig::defaults(&data_dir),
            data_dir,
        }
    }

    /// The region this gateway serves.
    pub fn region(&self) -> RegionId {
        self.api.region
    }
}

/// Checks the merged options and builds the configuration, each area by the
/// module it configures.
fn assemble(a: Args) -> Result<Config> {
    let data_dir = a
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let blob_store = a.blob_store.into_config(&data_dir)?;
    let attachments = a.attachments.into_limits(
        a.api
            .max_frame_bytes
            .unwrap_or(rossby_protocol::framing::DEFAULT_MAX_FRAME),
    )?;
    if data_dir.as_os_str().is_empty() {
        return Err(Error::Config("--data-dir must not be empty".into()));
    }
    let mut c = Config::defaults(data_dir.clone());
    c.blob_store = blob_store;
    c.api.attachments = attachments;
    c.push = a.push.into_config(&data_dir)?;
    c.listen = a.listen.unwrap_or(c.listen);
    let admin = a.admin.into_settings()?;
    c.admin_listen = admin.listen;
    if c.listen.port() != 0 && c.listen == c.admin_listen {
        return Err(Error::Config(
            "--listen and --admin-listen must differ".into(),
        ));
    }
    c.log.format = a.log_format.unwrap_or(c.log.format);
    c.log.level = a.log_level.unwrap_or(c.log.level);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        return Err(Error::Config(format!(
            "--log-level {:?} is not a valid filter: {e}",
            c.log.level
        )));
    }
    c.storage = a.store.into_config(&data_dir)?;
    c.probe_timeout = admin.probe_timeout;
    c.admin_limits = admin.limits;
    (c.maintenance_interval, c.maintenance_lease) = a.maintenance.into_interval_and_lease()?;
    c.retry = a.retry.into_policy()?;
    c.tls = a.tls.into_config(&data_dir)?;
    let secrets = a.secrets.into_files(&data_dir)?;
    c.secret_file = secrets.secret_file;
    c.secret_version = secrets.secret_version;
    c.pepper_file = secrets.pepper_file;
    c.pepper_version = secrets.pepper_version;
    c.drain_grace = secs("drain-grace-secs", a.drain_grace_secs.unwrap_or(5), 0, 3600)?;
    c.drain_timeout = secs(
        "drain-timeout-secs",
        a.drain_timeout_secs.unwrap_or(30),
        0,
        3600,
    )?;
    c.quic = a.quic.into_config()?;
    a.api.apply(&mut c.api)?;
    a.registration.apply(&mut c.api)?;
    a.limits.apply(&mut c.api)?;
    a.rate_limits.apply(&mut c.api)?;
    let geo = a.geo.into_geo()?;
    c.api.region = geo.region;
    c.api.topology = geo.topology;
    c.topology_file = geo.topology_file;
    c.wan_sim = geo.wan_sim;
    c.local = geo.local;
    let peer = a.peer.into_settings()?;
    c.peer = peer.peer;
    c.owner_lease = peer.owner_lease;
    c.fetch_poll_interval = peer.fetch_poll_interval;
    Ok(c)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers of the tests that parse whole configurations, wherever they live.

    use super::*;
    use std::sync::Mutex;

    /// Tests that read `ROSSBY_*` variables (every `Args` parse does) run one at a
    /// time, because some of them set variables.
    pub(crate) static ENV_LOCK: Mutex<()> = Mutex::new(());

    /// The configuration from these flags (and the variables set).
    pub(crate) fn parse(argv: &[&str]) -> Result<Config> {
        let args =
            Args::try_parse_from(std::iter::once("rossby-gateway").chain(argv.iter().copied()))
                .map_err(|e| Error::Config(e.to_string()))?;
        Config::from_args(args)
    }

    /// The error these flags give.
    pub(crate) fn err(argv: &[&str]) -> String {
        match parse(argv) {
            Ok(_) => panic!("{argv:?} should fail"),
            Err(e) => e.to_string(),
        }
    }

    /// The three-region example topology of the docs.
    pub(crate) fn example_topology() -> String {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/examples/three-regions.toml"
        )
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{ENV_LOCK, err, parse};
    use super::*;
    use rossby_storage::kv::fjall::Durability;

    #[test]
    fn no_options_gives_the_documented_defaults() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let c = parse(&[]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./rossby-data"));
        assert_eq!(c.listen, "0.0.0.0:7400".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:7401".parse().unwrap());
        match &c.storage {
            StorageConfig::Backend(BackendConfig::Fjall(f)) => {
                assert_eq!(f.path, PathBuf::from("./rossby-data/store"));
                assert_eq!(f.durability, Durability::GroupCommit);
            }
            other => panic!("unexpected storage {other:?}"),
        }
        assert_eq!(c.tls.cert, PathBuf::from("./rossby-data/cert.pem"));
        assert_eq!(c.tls.key, PathBuf::from("./rossby-data/key.pem"));
        assert!(c.tls.generate);
        assert_eq!(c.secret_file, PathBuf::from("./rossby-data/secret"));
        assert_eq!(c.pepper_file, PathBuf::from("./rossby-data/pepper"));
        assert_eq!(c.api.verifier, VerifierSpec::Log);
        assert_eq!(c.quic.max_streams_per_connection, 64);
        assert_eq!(c.api.rate_limits, RateLimits::default());
        assert_eq!(c.api.limits, rossby_storage::tables::Limits::default());
        assert_eq!(
            c.api.max_frame_bytes,
            rossby_protocol::framing::DEFAULT_MAX_FRAME
        );
        assert_eq!(c.region(), RegionId(1));
        assert_eq!(c.maintenance_interval, Duration::from_secs(30));
        assert_eq!(c.maintenance_lease, Duration::from_secs(90));
        assert_eq!(c.api.device_cache_ttl, Duration::from_secs(2));
        assert_eq!(c.api.device_cache_entries, 50_000);
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rossby.toml");
        std::fs::write(
            &file,
            r#"
max_recipients = 10
max_fetch_count = 20
code_max_attempts = 7
registration_lock_max_attempts = 4
registration_lock_lockout_secs = 600
wrong_codes_per_identifier_per_day = 9
address_validation = "off"
response_write_timeout_ms = 700
rate_per_identifier = "6/h"
rate_per_ip = 5
storage = "memory"
tls_name = ["chat.example.net"]
"#,
        )
        .unwrap();
        let file_arg = file.to_str().unwrap();
        // SAFETY (edition 2024 marks these unsafe): the lock above keeps every
        // other test that reads the environment out while these are set.
        unsafe {
            std::env::set_var("ROSSBY_MAX_RECIPIENTS", "11");
            std::env::set_var("ROSSBY_MAX_FETCH_COUNT", "21");
        }
        let result = parse(&["--config", file_arg, "--max-recipients", "12"]);
        unsafe {
            std::env::remove_var("ROSSBY_MAX_RECIPIENTS");
            std::env::remove_var("ROSSBY_MAX_FETCH_COUNT");
        }
        let c = result.unwrap();
        assert_eq!(c.api.max_recipients_per_send, 12, "flag wins");
        assert_eq!(c.api.max_fetch_count, 21, "env beats the file");
        assert_eq!(c.api.code_max_attempts, 7, "file beats the default");
        assert_eq!(c.api.registration_lock_max_attempts, 4);
        assert_eq!(c.api.registration_lock_lockout, Duration::from_secs(600));
        assert_eq!(c.api.wrong_codes_per_identifier_per_day, 9);
        assert_eq!(c.api.max_fetch_bytes, 1024 * 1024, "default");
        assert_eq!(c.quic.address_validation, AddressValidation::Off);
        assert_eq!(c.quic.response_write_timeout, Duration::from_millis(700));
        assert_eq!(c.quic.max_connections_per_address, 32, "default");
        assert!(
            (c.api.rate_limits.registrations_per_identifier.per_second - 6.0 / 3600.0).abs()
                < 1e-12
        );
        assert!((c.api.rate_limits.per_ip.per_second - 5.0).abs() < 1e-12);
        assert!(matches!(
            c.storage,
            StorageConfig::Backend(BackendConfig::Memory)
        ));
        assert_eq!(c.tls.extra_names, vec!["chat.example.net".to_string()]);
    }

    #[test]
    fn every_option_has_a_flag() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let c = parse(&[
            "--data-dir",
            d,
            "--listen",
            "127.0.0.1:9000",
            "--admin-listen",
            "127.0.0.1:9001",
            "--region",
            "3",
            "--service-name",
            "chat.example.net:443",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--storage",
            "tikv",
            "--pd",
            "pd1:2379,pd2:2379",
            "--tikv-timeout-ms",
            "500",
            "--probe-timeout-ms",
            "250",
            "--maintenance-interval-ms",
            "250",
            "--maintenance-lease-ms",
            "900",
            "--retry-attempts",
            "4",
            "--retry-deadline-ms",
            "900",
            "--retry-initial-backoff-ms",
            "2",
            "--retry-max-backoff-ms",
            "50",
            "--tls-name",
            "a.example",
            "--tls-name",
            "10.0.0.1",
            "--secret-file",
            "/s",
            "--secret-version",
            "2",
            "--pepper-file",
            "/p",
            "--drain-grace-secs",
            "1",
            "--drain-timeout-secs",
            "2",
            "--max-connections",
            "10",
            "--max-streams-per-connection",
            "8",
            "--idle-timeout-secs",
            "9",
            "--stream-receive-window",
            "4096",
            "--receive-window",
            "8192",
            "--send-window",
            "16384",
            "--udp-receive-buffer",
            "65536",
            "--verifier",
            "file:/tmp/codes",
            "--hawk-skew-secs",
            "30",
            "--device-cache-ttl-ms",
            "500",
            "--device-cache-entries",
            "1000",
            "--code-ttl-secs",
            "60",
            "--code-max-attempts",
            "2",
            "--max-recipients",
            "3",
            "--max-frame-bytes",
            "100000",
            "--max-fetch-count",
            "4",
            "--max-fetch-bytes",
            "5000",
            "--max-fetch-wait-secs",
            "6",
            "--max-payload-bytes",
            "7000",
            "--max-devices-per-box",
            "8",
            "--max-key-packages-per-device",
            "9",
            "--max-key-package-bytes",
            "1000",
            "--max-identifiers-per-box",
            "5",
            "--max-pending-identifiers-per-box",
            "2",
            "--max-deletes-per-txn",
            "11",
            "--retention-days",
            "2",
            "--dedup-window-secs",
            "3600",
            "--rate-per-device",
            "10/s",
            "--burst-per-device",
            "20",
            "--rate-per-ip",
            "30/min",
            "--burst-per-ip",
            "40",
            "--rate-per-identifier",
            "1/h",
            "--burst-per-identifier",
            "2",
            "--discovery-rate-per-device",
            "2",
            "--discovery-burst-per-device",
            "3",
            "--max-connections-per-address",
            "4",
            "--address-validation",
            "always",
            "--retry-above-handshakes",
            "16",
            "--connection-budget-bytes",
            "100000",
            "--device-budget-bytes",
            "200000",
            "--request-read-timeout-ms",
            "1500",
            "--response-write-timeout-ms",
            "2500",
            "--push-queue-bytes",
            "3000",
            "--max-stale-list-bytes",
            "4000",
        ])
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.admin_listen.port(), 9001);
        assert_eq!(c.region(), RegionId(3));
        assert_eq!(c.api.service.host, "chat.example.net");
        assert_eq!(c.api.service.port, 443);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "debug");
        match &c.storage {
            StorageConfig::Backend(BackendConfig::Tikv(t)) => {
                assert_eq!(t.pd_endpoints, vec!["pd1:2379", "pd2:2379"]);
                assert_eq!(t.request_timeout, Duration::from_millis(500));
            }
            other => panic!("unexpected storage {other:?}"),
        }
        assert_eq!(c.probe_timeout, Duration::from_millis(250));
        assert_eq!(c.maintenance_interval, Duration::from_millis(250));
        assert_eq!(c.maintenance_lease, Duration::from_millis(900));
        assert_eq!(
            c.retry,
            Some(RetryPolicy {
                max_attempts: 4,
                base_backoff: Duration::from_millis(2),
                max_backoff: Duration::from_millis(50),
                deadline: Duration::from_millis(900),
            })
        );
        assert_eq!(c.tls.extra_names, vec!["a.example", "10.0.0.1"]);
        assert_eq!(c.secret_file, PathBuf::from("/s"));
        assert_eq!(c.secret_version, Some(2));
        assert_eq!(c.pepper_file, PathBuf::from("/p"));
        assert_eq!(c.drain_grace, Duration::from_secs(1));
        assert_eq!(c.drain_timeout, Duration::from_secs(2));
        assert_eq!(
            c.quic,
            QuicConfig {
                max_connections: 10,
                max_streams_per_connection: 8,
                idle_timeout: Duration::from_secs(9),
                stream_receive_window: 4096,
                receive_window: 8192,
                send_window: 16384,
                udp_receive_buffer: 65536,
                max_connections_per_address: 4,
                address_validation: AddressValidation::Always,
                retry_above_handshakes: 16,
                connection_budget_bytes: 100_000,
                request_read_timeout: Duration::from_millis(1500),
                response_write_timeout: Duration::from_millis(2500),
            }
        );
        let api = &c.api;
        assert_eq!(api.verifier, VerifierSpec::File("/tmp/codes".into()));
        assert_eq!(api.hawk_skew, Duration::from_secs(30));
        assert_eq!(api.device_cache_ttl, Duration::from_millis(500));
        assert_eq!(api.device_cache_entries, 1000);
        assert_eq!(api.code_ttl, Duration::from_secs(60));
        assert_eq!(api.code_max_attempts, 2);
        assert_eq!(api.max_recipients_per_send, 3);
        assert_eq!(api.max_frame_bytes, 100_000);
        assert_eq!(api.max_fetch_count, 4);
        assert_eq!(api.max_fetch_bytes, 5000);
        assert_eq!(api.max_fetch_wait, Duration::from_secs(6));
        assert_eq!(api.device_budget_bytes, 200_000);
        assert_eq!(api.push_queue_bytes, 3000);
        assert_eq!(api.max_stale_list_bytes, 4000);
        assert_eq!(api.limits.max_payload_bytes, 7000);
        assert_eq!(api.limits.max_devices_per_box, 8);
        assert_eq!(api.limits.max_key_packages_per_device, 9);
        assert_eq!(api.limits.max_key_package_bytes, 1000);
        assert_eq!(api.limits.max_identifiers_per_box, 5);
        assert_eq!(api.limits.max_pending_identifiers_per_box, 2);
        assert_eq!(api.limits.max_deletes_per_txn, 11);
        assert_eq!(api.limits.retention_ms, 2 * 86_400_000);
        assert_eq!(api.limits.dedup_window_ms, 3_600_000);
        let r = &api.rate_limits;
        assert_eq!(
            r.per_device,
            Rate {
                per_second: 10.0,
                burst: 20.0
            }
        );
        assert_eq!(
            r.per_ip,
            Rate {
                per_second: 0.5,
                burst: 40.0
            }
        );
        assert_eq!(
            r.registrations_per_identifier,
            Rate {
                per_second: 1.0 / 3600.0,
                burst: 2.0
            }
        );
        assert_eq!(
            r.discovery_per_device,
            Rate {
                per_second: 2.0,
                burst: 3.0
            }
        );
    }

    #[test]
    fn bad_values_are_one_line_errors_naming_the_option() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for (argv, needle) in [
            (&["--storage", "mysql"][..], "--storage"),
            (&["--listen", "nowhere"][..], "--listen"),
            (&["--storage", "tikv"][..], "--pd"),
            (
                &["--pd", "pd:2379"][..],
                "--pd is only used with --storage tikv",
            ),
            (
                &["--storage", "tikv", "--pd", "nohost"][..],
                "not host:port",
            ),
            (&["--verifier", "sms"][..], "--verifier"),
            (&["--verifier", "webhook:ftp://x"][..], "http://"),
            (&["--rate-per-device", "0"][..], "positive"),
            (&["--rate-per-device", "5/week"][..], "unit"),
            (&["--burst-per-ip", "0.5"][..], "at least 1"),
            (
                &["--max-frame-bytes", "10"][..],
                "--max-frame-bytes must be at least",
            ),
            (
                &["--max-payload-bytes", "2000000"][..],
                "must be below --max-frame-bytes",
            ),
            (&["--max-streams-per-connection", "0"][..], "at least 1"),
            (&["--cert", "/c.pem"][..], "--cert needs --key"),
            (&["--service-name", "bad host:1"][..], "--service-name"),
            (&["--retention-days", "0"][..], "--retention-days"),
            (
                &["--max-identifiers-per-box", "5000"][..],
                "--max-identifiers-per-box must be between 1 and 1024",
            ),
            (
                &["--max-pending-identifiers-per-box", "0"][..],
                "--max-pending-identifiers-per-box",
            ),
            (&["--owner-lease-ms", "50"][..], "--owner-lease-ms"),
            (
                &["--maintenance-interval-ms", "5"][..],
                "--maintenance-interval-ms",
            ),
            (
                &["--maintenance-lease-ms", "9000"][..],
                "--maintenance-lease-ms must be at least twice",
            ),
            (
                &[
                    "--maintenance-interval-ms",
                    "1000",
                    "--maintenance-lease-ms",
                    "1999",
                ][..],
                "--maintenance-lease-ms",
            ),
            (
                &["--owner-lease-ms", "1000", "--owner-renew-ms", "1000"][..],
                "--owner-renew-ms",
            ),
            (&["--log-level", "=="][..], "--log-level"),
            (&["--tls-name", "bad name"][..], "--tls-name"),
            (&["--region", "0"][..], "--region"),
        ] {
            let message = err(argv);
            assert!(message.contains(needle), "{argv:?}: {message}");
        }
    }

    /// docs/configuration.md, for the tests that keep it honest.
    fn configuration_doc() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/configuration.md"
        ))
        .unwrap()
    }

    #[test]
    fn every_option_is_documented_with_its_variable_and_key() {
        use clap::CommandFactory;
        let doc = configuration_doc();
        let mut toml_keys = 0;
        for arg in Args::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            // Hidden flags are removed options kept only to explain their removal.
            if matches!(long, "help" | "version") || arg.is_hide_set() {
                continue;
            }
            assert!(
                doc.contains(&format!("| `--{long}")),
                "--{long} is not documented"
            );
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{long} has no variable"));
            let env = env.to_str().unwrap();
            assert_eq!(
                env,
                format!("ROSSBY_{}", long.to_uppercase().replace('-', "_"))
            );
            assert!(doc.contains(&format!("`{env}`")), "{env} is not documented");
            if long != "config" {
                let key = long.replace('-', "_");
                assert!(
                    doc.contains(&format!("| `{key}` |")),
                    "TOML key {key} is not documented"
                );
                toml_keys += 1;
            }
        }
        assert!(toml_keys > 50, "{toml_keys}");
    }

    #[test]
    fn the_documented_example_file_is_valid() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let doc = configuration_doc();
        let example = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, example).unwrap();
        let c = parse(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.region(), RegionId(2));
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(!c.tls.generate);
        assert!(matches!(
            c.storage,
            StorageConfig::Backend(BackendConfig::Tikv(_))
        ));
    }
}
