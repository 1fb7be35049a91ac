//! The gateway's configuration: a TOML file, flags and `ROSSBY_*` environment
//! variables, merged with the precedence **flag > environment > file > default**.
//!
//! Every option exists in all three forms: the flag `--max-frame-bytes`, the variable
//! `ROSSBY_MAX_FRAME_BYTES` and the TOML key `max_frame_bytes` (flat, no tables).
//! `docs/configuration.md` lists them all. With no options at all the result is a
//! working single-region gateway: fjall store in `./rossby-data/store`, a generated
//! self-signed certificate, QUIC on `0.0.0.0:7400`, admin on `127.0.0.1:7401`.
//!
//! Parsing is pure: nothing is created or read except the TOML file. Secrets and
//! certificates are loaded (or generated) by [`crate::gateway::Gateway::start`].

use crate::error::{Error, Result};
use crate::settings::{ApiSettings, Rate, RateLimits, VerifierSpec};
use clap::{Parser, ValueEnum};
use rossby_keyspace::RegionId;
use rossby_protocol::hawk::ServiceName;
use rossby_replication::Topology;
use rossby_storage::kv::fjall::{Durability, FjallConfig};
use rossby_storage::kv::tikv::TikvConfig;
use rossby_storage::{BackendConfig, Kv, RetryPolicy};
use serde::Deserialize;

mod push;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Default directory of everything the gateway keeps locally.
pub const DEFAULT_DATA_DIR: &str = "./rossby-data";
/// Default QUIC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7400";
/// Default admin (HTTP) listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7401";
/// Smallest attachment part size accepted.
pub const MIN_PART_BYTES: u32 = 64 * 1024;
/// Smallest frame limit accepted: smaller ones could not carry a signed request.
pub const MIN_FRAME_BYTES: usize = 1024;

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

/// Which storage backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Embedded durable store in `--store-dir`.
    #[default]
    Fjall,
    /// In-memory store; nothing survives the process (tests and benchmarks).
    Memory,
    /// A TiKV cluster reached through `--pd`.
    Tikv,
}

/// Commit durability of the fjall store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityArg {
    /// Acknowledge commits only after a shared `fdatasync` (deployments).
    #[default]
    GroupCommit,
    /// Acknowledge commits once handed to the OS (benchmarks only).
    NoSync,
}

/// When the gateway asks a client to prove its address with a QUIC Retry before
/// it spends a handshake's work and bytes on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressValidation {
    /// Every new connection from an unvalidated address (one more round trip).
    Always,
    /// Only while many handshakes are in progress
    /// ([`crate::server::UNDER_LOAD_HANDSHAKES`]).
    #[default]
    UnderLoad,
    /// Never (a spoofed Initial is answered with up to three times its bytes).
    Off,
}

/// Command-line flags. Each is also read from its `ROSSBY_*` variable (the flag
/// wins) and from the TOML file given by `--config` (which loses to both).
#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "rossby-gateway",
    version,
    about = "Rossby gateway: the Rossby API over QUIC, with an HTTP admin port",
    long_about = None
)]
pub struct Args {
    /// TOML configuration file (flat keys named like the flags, with `_` for `-`).
    #[arg(long, env = "ROSSBY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    // ---- general ----
    /// Directory for the store, certificate, key and secrets [default: ./rossby-data].
    #[arg(long, env = "ROSSBY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// QUIC (UDP) listen address [default: 0.0.0.0:7400].
    #[arg(long, env = "ROSSBY_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Admin HTTP listen address (/livez, /readyz, /metrics) [default: 127.0.0.1:7401].
    #[arg(long, env = "ROSSBY_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// This gateway's region code (1..65535) [default: 1].
    #[arg(long, env = "ROSSBY_REGION", value_name = "CODE")]
    pub region: Option<u16>,
    /// The deployment's topology (TOML or JSON, docs/geo.md): `--region` must be
    /// one of its regions; new boxes may only be homed in its regions, and replies
    /// name the gateways of a box's home region.
    #[arg(long, env = "ROSSBY_TOPOLOGY", value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// SIMULATION: delay every storage transaction by the round trips a TiKV
    /// deployment of the topology would pay from this gateway's region (needs
    /// `--topology`; for load tests on one machine, never for real traffic).
    #[arg(long, env = "ROSSBY_WAN_SIM", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub wan_sim: Option<bool>,
    /// Local multi-region mode: one gateway per region of `--topology` in this
    /// process, over one store, each on a free loopback port (the topology's
    /// addresses are ignored; the chosen ones are printed). For demos and load
    /// tests.
    #[arg(long, env = "ROSSBY_LOCAL", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub local: Option<bool>,
    /// The deployment's service name `host:port` that requests are signed for
    /// [default: rossby:7400].
    #[arg(long, env = "ROSSBY_SERVICE_NAME", value_name = "HOST:PORT")]
    pub service_name: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "ROSSBY_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter (`tracing` directives such as `info` or `rossby_gateway=debug`)
    /// [default: info].
    #[arg(long, env = "ROSSBY_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    // ---- storage ----
    /// Storage backend [default: fjall].
    #[arg(long, env = "ROSSBY_STORAGE", value_name = "BACKEND")]
    pub storage: Option<StorageKind>,
    /// Directory of the fjall store [default: `store` in --data-dir].
    #[arg(long, env = "ROSSBY_STORE_DIR", value_name = "DIR")]
    pub store_dir: Option<PathBuf>,
    /// fjall commit durability [default: group-commit].
    #[arg(long, env = "ROSSBY_DURABILITY", value_name = "MODE")]
    pub durability: Option<DurabilityArg>,
    /// fjall block cache in MiB [default: 64].
    #[arg(long, env = "ROSSBY_CACHE_MB", value_name = "MIB")]
    pub cache_mb: Option<u64>,
    /// TiKV placement drivers, `host:port[,host:port..]` (with `--storage tikv`).
    #[arg(
        long,
        env = "ROSSBY_PD",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub pd: Option<Vec<String>>,
    /// Removed: read only so that a configuration still setting it fails with
    /// the reason ([`TIKV_MODE_REMOVED`]) instead of being ignored.
    #[arg(long, env = "ROSSBY_TIKV_MODE", value_name = "MODE", hide = true)]
    pub tikv_mode: Option<String>,
    /// Deadline of each TiKV RPC in milliseconds [default: 2000].
    #[arg(long, env = "ROSSBY_TIKV_TIMEOUT_MS", value_name = "MS")]
    pub tikv_timeout_ms: Option<u64>,
    /// Deadline of the readiness storage probe in milliseconds [default: 1000].
    #[arg(long, env = "ROSSBY_PROBE_TIMEOUT_MS", value_name = "MS")]
    pub probe_timeout_ms: Option<u64>,
    /// Most connections the admin listener serves at once; more are closed on
    /// accept [default: 64].
    #[arg(long, env = "ROSSBY_ADMIN_MAX_CONNECTIONS", value_name = "N")]
    pub admin_max_connections: Option<usize>,
    /// How long an admin connection may take to send a request's headers, in
    /// milliseconds, before it is closed [default: 5000].
    #[arg(long, env = "ROSSBY_ADMIN_HEADER_TIMEOUT_MS", value_name = "MS")]
    pub admin_header_timeout_ms: Option<u64>,
    /// Removed: read only so that a configuration still setting it fails with
    /// the reason ([`SWEEP_INTERVAL_REMOVED`]) instead of being ignored.
    #[arg(
        long,
        env = "ROSSBY_SWEEP_INTERVAL_SECS",
        value_name = "SECS",
        hide = true
    )]
    pub sweep_interval_secs: Option<String>,
    /// Milliseconds between maintenance rounds (expiry sweeps and account
    /// purges of the region, each job run by one gateway under a lease)
    /// [default: 30000].
    #[arg(long, env = "ROSSBY_MAINTENANCE_INTERVAL_MS", value_name = "MS")]
    pub maintenance_interval_ms: Option<u64>,
    /// Lifetime of a maintenance lease in milliseconds: a dead gateway's jobs
    /// are taken over within twice this; at least twice
    /// --maintenance-interval-ms [default: 90000].
    #[arg(long, env = "ROSSBY_MAINTENANCE_LEASE_MS", value_name = "MS")]
    pub maintenance_lease_ms: Option<u64>,
    /// Most runs of a storage transaction that keeps conflicting [default: 16;
    /// setting any --retry-* option turns off the --wan-sim scaling].
    #[arg(long, env = "ROSSBY_RETRY_ATTEMPTS", value_name = "N")]
    pub retry_attempts: Option<u32>,
    /// No retry of a conflicting transaction starts later than this many
    /// milliseconds after its first run [default: 5000].
    #[arg(long, env = "ROSSBY_RETRY_DEADLINE_MS", value_name = "MS")]
    pub retry_deadline_ms: Option<u64>,
    /// Ceiling of the random back-off before the first retry, in milliseconds;
    /// it doubles with each further retry [default: 1].
    #[arg(long, env = "ROSSBY_RETRY_INITIAL_BACKOFF_MS", value_name = "MS")]
    pub retry_initial_backoff_ms: Option<u64>,
    /// Ceiling of any back-off between retries, in milliseconds [default: 100].
    #[arg(long, env = "ROSSBY_RETRY_MAX_BACKOFF_MS", value_name = "MS")]
    pub retry_max_backoff_ms: Option<u64>,

    // ---- TLS and secrets ----
    /// Certificate chain PEM file (with `--key`) [default: `cert.pem` in --data-dir, generated].
    #[arg(long, env = "ROSSBY_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Private key PEM file (with `--cert`) [default: `key.pem` in --data-dir, generated].
    #[arg(long, env = "ROSSBY_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Extra name (DNS name or IP) of the generated certificate; repeatable, or
    /// comma-separated in the variable.
    #[arg(
        long,
        env = "ROSSBY_TLS_NAME",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub tls_name: Option<Vec<String>>,
    /// Server secret file (Hawk keys, code hashes); the same on every gateway
    /// [default: `secret` in --data-dir, generated].
    #[arg(long, env = "ROSSBY_SECRET_FILE", value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Current server secret version, from which new credentials and code hashes
    /// are derived; credentials of the file's other versions still verify
    /// [default: the highest version in the secret file].
    #[arg(long, env = "ROSSBY_SECRET_VERSION", value_name = "N")]
    pub secret_version: Option<u32>,
    /// Identifier lookup pepper file; the same on every gateway
    /// [default: `pepper` in --data-dir, generated].
    #[arg(long, env = "ROSSBY_PEPPER_FILE", value_name = "FILE")]
    pub pepper_file: Option<PathBuf>,
    /// Current lookup pepper version, under which new identifier bindings are
    /// written; the file's other versions are still found
    /// [default: the highest version in the pepper file].
    #[arg(long, env = "ROSSBY_PEPPER_VERSION", value_name = "N")]
    pub pepper_version: Option<u32>,

    // ---- drain ----
    /// Seconds between failing readiness and refusing connections on shutdown
    /// [default: 5].
    #[arg(long, env = "ROSSBY_DRAIN_GRACE_SECS", value_name = "SECS")]
    pub drain_grace_secs: Option<u64>,
    /// Seconds in-flight requests may take to finish on shutdown [default: 30].
    #[arg(long, env = "ROSSBY_DRAIN_TIMEOUT_SECS", value_name = "SECS")]
    pub drain_timeout_secs: Option<u64>,

    // ---- QUIC ----
    /// Most open connections; more are refused [default: 100000].
    #[arg(long, env = "ROSSBY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u32>,
    /// Concurrent request streams per connection [default: 64].
    #[arg(long, env = "ROSSBY_MAX_STREAMS_PER_CONNECTION", value_name = "N")]
    pub max_streams_per_connection: Option<u32>,
    /// Seconds without traffic after which a connection is closed [default: 60].
    #[arg(long, env = "ROSSBY_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Receive window per stream in bytes [default: 262144].
    #[arg(long, env = "ROSSBY_STREAM_RECEIVE_WINDOW", value_name = "BYTES")]
    pub stream_receive_window: Option<u32>,
    /// Receive window per connection in bytes [default: 1048576].
    #[arg(long, env = "ROSSBY_RECEIVE_WINDOW", value_name = "BYTES")]
    pub receive_window: Option<u32>,
    /// Send window per connection in bytes [default: 1048576].
    #[arg(long, env = "ROSSBY_SEND_WINDOW", value_name = "BYTES")]
    pub send_window: Option<u64>,
    /// Receive buffer of the QUIC UDP socket in bytes; the kernel caps it at
    /// `net.core.rmem_max` [default: 4194304].
    #[arg(long, env = "ROSSBY_UDP_RECEIVE_BUFFER", value_name = "BYTES")]
    pub udp_receive_buffer: Option<u32>,
    /// Most open connections from one address (IPv6: one /64); more are
    /// refused [default: 32].
    #[arg(long, env = "ROSSBY_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N")]
    pub max_connections_per_address: Option<u32>,
    /// When new connections must prove their address with a QUIC Retry:
    /// `always`, `under-load` or `off` [default: under-load].
    #[arg(long, env = "ROSSBY_ADDRESS_VALIDATION", value_name = "MODE")]
    pub address_validation: Option<AddressValidation>,
    /// Bytes in flight per connection (request bodies being read, replies being
    /// built or not yet acknowledged) [default: 4194304].
    #[arg(long, env = "ROSSBY_CONNECTION_BUDGET_BYTES", value_name = "BYTES")]
    pub connection_budget_bytes: Option<usize>,
    /// Bytes of replies in flight per device, over all its connections
    /// [default: 8388608].
    #[arg(long, env = "ROSSBY_DEVICE_BUDGET_BYTES", value_name = "BYTES")]
    pub device_budget_bytes: Option<usize>,
    /// Milliseconds a request frame may take to arrive once its stream is open,
    /// including the wait for connection budget [default: 10000].
    #[arg(long, env = "ROSSBY_REQUEST_READ_TIMEOUT_MS", value_name = "MS")]
    pub request_read_timeout_ms: Option<u64>,
    /// Milliseconds a reply may take to be written (the peer reading it); then
    /// its stream is reset and the reply dropped [default: 5000].
    #[arg(long, env = "ROSSBY_RESPONSE_WRITE_TIMEOUT_MS", value_name = "MS")]
    pub response_write_timeout_ms: Option<u64>,
    /// Bytes of push frames queued per subscription before new pushes are
    /// dropped [default: 1048576].
    #[arg(long, env = "ROSSBY_PUSH_QUEUE_BYTES", value_name = "BYTES")]
    pub push_queue_bytes: Option<usize>,

    // ---- API ----
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
    /// Lifetime of a verification code in seconds [default: 600].
    #[arg(long, env = "ROSSBY_CODE_TTL_SECS", value_name = "SECS")]
    pub code_ttl_secs: Option<u64>,
    /// Wrong codes allowed per registration [default: 5].
    #[arg(long, env = "ROSSBY_CODE_MAX_ATTEMPTS", value_name = "N")]
    pub code_max_attempts: Option<u32>,
    /// Wrong codes allowed per identifier and day, over all its registrations [default: 20].
    #[arg(
        long,
        env = "ROSSBY_WRONG_CODES_PER_IDENTIFIER_PER_DAY",
        value_name = "N"
    )]
    pub wrong_codes_per_identifier_per_day: Option<u32>,
    /// Wrong registration-lock PINs allowed before a lockout [default: 10].
    #[arg(long, env = "ROSSBY_REGISTRATION_LOCK_MAX_ATTEMPTS", value_name = "N")]
    pub registration_lock_max_attempts: Option<u32>,
    /// Lockout after too many wrong registration-lock PINs, in seconds [default: 86400].
    #[arg(
        long,
        env = "ROSSBY_REGISTRATION_LOCK_LOCKOUT_SECS",
        value_name = "SECS"
    )]
    pub registration_lock_lockout_secs: Option<u64>,
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
    /// Largest envelope payload in bytes [default: 262144].
    #[arg(long, env = "ROSSBY_MAX_PAYLOAD_BYTES", value_name = "BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Most devices per box [default: 16].
    #[arg(long, env = "ROSSBY_MAX_DEVICES_PER_BOX", value_name = "N")]
    pub max_devices_per_box: Option<usize>,
    /// Most unclaimed KeyPackages per device [default: 200].
    #[arg(long, env = "ROSSBY_MAX_KEY_PACKAGES_PER_DEVICE", value_name = "N")]
    pub max_key_packages_per_device: Option<usize>,
    /// Largest KeyPackage in bytes [default: 16384].
    #[arg(long, env = "ROSSBY_MAX_KEY_PACKAGE_BYTES", value_name = "BYTES")]
    pub max_key_package_bytes: Option<usize>,
    /// Most bytes of envelopes one box's queue holds [default: 67108864].
    #[arg(long, env = "ROSSBY_MAX_QUEUE_BYTES", value_name = "BYTES")]
    pub max_queue_bytes: Option<u64>,
    /// Most envelopes one box's queue holds [default: 50000].
    #[arg(long, env = "ROSSBY_MAX_QUEUE_ENVELOPES", value_name = "N")]
    pub max_queue_envelopes: Option<u64>,
    /// Most contacts, and separately most blocked boxes, per box [default: 10000].
    #[arg(long, env = "ROSSBY_MAX_RELATIONS_PER_BOX", value_name = "N")]
    pub max_relations_per_box: Option<usize>,
    /// Most identifiers (phone numbers, e-mail addresses) bound to one box, at
    /// most 1024 [default: 16].
    #[arg(long, env = "ROSSBY_MAX_IDENTIFIERS_PER_BOX", value_name = "N")]
    pub max_identifiers_per_box: Option<usize>,
    /// Most identifiers one box may be adding at once (codes sent, not yet
    /// confirmed), at most 256 [default: 4].
    #[arg(long, env = "ROSSBY_MAX_PENDING_IDENTIFIERS_PER_BOX", value_name = "N")]
    pub max_pending_identifiers_per_box: Option<usize>,
    /// Most queue entries deleted per transaction [default: 1024].
    #[arg(long, env = "ROSSBY_MAX_DELETES_PER_TXN", value_name = "N")]
    pub max_deletes_per_txn: Option<usize>,
    /// Days an unacknowledged envelope is kept [default: 30].
    #[arg(long, env = "ROSSBY_RETENTION_DAYS", value_name = "DAYS")]
    pub retention_days: Option<u64>,
    /// Seconds a send stays idempotent by message id [default: 86400].
    #[arg(long, env = "ROSSBY_DEDUP_WINDOW_SECS", value_name = "SECS")]
    pub dedup_window_secs: Option<u64>,

    // ---- attachments ----
    /// Where attachment ciphertext is stored: a directory, `file:///dir`, or
    /// `s3://bucket/prefix` [default: <data-dir>/blobs].
    #[arg(long, env = "ROSSBY_BLOB_STORE", value_name = "URL")]
    pub blob_store: Option<String>,
    /// S3 endpoint URL, for S3-compatible stores other than AWS [default: AWS].
    #[arg(long, env = "ROSSBY_BLOB_S3_ENDPOINT", value_name = "URL")]
    pub blob_s3_endpoint: Option<String>,
    /// S3 region [default: $AWS_REGION, else us-east-1].
    #[arg(long, env = "ROSSBY_BLOB_S3_REGION", value_name = "REGION")]
    pub blob_s3_region: Option<String>,
    /// Allow plain HTTP to the S3 endpoint (tests) [default: false].
    #[arg(long, env = "ROSSBY_BLOB_S3_ALLOW_HTTP", value_name = "BOOL")]
    pub blob_s3_allow_http: Option<bool>,
    /// Largest attachment, in ciphertext bytes [default: 104857600].
    #[arg(long, env = "ROSSBY_MAX_ATTACHMENT_BYTES", value_name = "BYTES")]
    pub max_attachment_bytes: Option<u64>,
    /// Most attachment bytes one account may store [default: 1073741824].
    #[arg(long, env = "ROSSBY_ATTACHMENT_QUOTA_BYTES", value_name = "BYTES")]
    pub attachment_quota_bytes: Option<u64>,
    /// Bytes per upload part [default: 1048576].
    #[arg(long, env = "ROSSBY_ATTACHMENT_PART_BYTES", value_name = "BYTES")]
    pub attachment_part_bytes: Option<u32>,
    /// Most parts per attachment [default: 1024].
    #[arg(long, env = "ROSSBY_MAX_ATTACHMENT_PARTS", value_name = "N")]
    pub max_attachment_parts: Option<u32>,
    /// Most uploads in progress per account [default: 16].
    #[arg(long, env = "ROSSBY_MAX_UPLOADS_IN_PROGRESS", value_name = "N")]
    pub max_uploads_in_progress: Option<u32>,
    /// Seconds to complete an upload before it is deleted [default: 86400].
    #[arg(long, env = "ROSSBY_UPLOAD_TTL_SECS", value_name = "SECS")]
    pub upload_ttl_secs: Option<u64>,
    /// Seconds a completed attachment no send referenced is kept [default: 86400].
    #[arg(long, env = "ROSSBY_UNSENT_ATTACHMENT_TTL_SECS", value_name = "SECS")]
    pub unsent_attachment_ttl_secs: Option<u64>,
    /// Longest an attachment lives after its upload, however often it is sent,
    /// in days; 0: no limit [default: 0].
    #[arg(long, env = "ROSSBY_MAX_ATTACHMENT_AGE_DAYS", value_name = "DAYS")]
    pub max_attachment_age_days: Option<u64>,

    // ---- wake-up pushes (docs/operations/push.md) ----
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

    // ---- rate limits: RATE is `N` or `N/s` (per second), `N/min`, `N/h` ----
    /// Authenticated requests per device [default: 50/s].
    #[arg(long, env = "ROSSBY_RATE_PER_DEVICE", value_name = "RATE", value_parser = parse_rate)]
    pub rate_per_device: Option<f64>,
    /// Burst of requests per device [default: 200].
    #[arg(long, env = "ROSSBY_BURST_PER_DEVICE", value_name = "N", value_parser = parse_burst)]
    pub burst_per_device: Option<f64>,
    /// Requests per source IP address [default: 200/s].
    #[arg(long, env = "ROSSBY_RATE_PER_IP", value_name = "RATE", value_parser = parse_rate)]
    pub rate_per_ip: Option<f64>,
    /// Burst of requests per source IP address [default: 1000].
    #[arg(long, env = "ROSSBY_BURST_PER_IP", value_name = "N", value_parser = parse_burst)]
    pub burst_per_ip: Option<f64>,
    /// Verification codes sent per identifier [default: 3/h].
    #[arg(long, env = "ROSSBY_RATE_PER_IDENTIFIER", value_name = "RATE", value_parser = parse_rate)]
    pub rate_per_identifier: Option<f64>,
    /// Burst of codes per identifier [default: 3].
    #[arg(long, env = "ROSSBY_BURST_PER_IDENTIFIER", value_name = "N", value_parser = parse_burst)]
    pub burst_per_identifier: Option<f64>,
    /// Contact lookups per device [default: 1/s].
    #[arg(long, env = "ROSSBY_DISCOVERY_RATE_PER_DEVICE", value_name = "RATE", value_parser = parse_rate)]
    pub discovery_rate_per_device: Option<f64>,
    /// Burst of contact lookups per device [default: 100].
    #[arg(long, env = "ROSSBY_DISCOVERY_BURST_PER_DEVICE", value_name = "N", value_parser = parse_burst)]
    pub discovery_burst_per_device: Option<f64>,
    /// Sealed (unauthenticated) sends per recipient box [default: 10/s].
    #[arg(long, env = "ROSSBY_SEALED_RATE_PER_RECIPIENT", value_name = "RATE", value_parser = parse_rate)]
    pub sealed_rate_per_recipient: Option<f64>,
    /// Burst of sealed sends per recipient box [default: 100].
    #[arg(long, env = "ROSSBY_SEALED_BURST_PER_RECIPIENT", value_name = "N", value_parser = parse_burst)]
    pub sealed_burst_per_recipient: Option<f64>,
    /// Bytes per second a device may make the gateway store, every recipient's
    /// copy counted [default: 4194304/s].
    #[arg(long, env = "ROSSBY_STORED_BYTES_RATE_PER_DEVICE", value_name = "RATE", value_parser = parse_rate)]
    pub stored_bytes_rate_per_device: Option<f64>,
    /// Burst of the above, in bytes [default: 67108864].
    #[arg(long, env = "ROSSBY_STORED_BYTES_BURST_PER_DEVICE", value_name = "BYTES", value_parser = parse_burst)]
    pub stored_bytes_burst_per_device: Option<f64>,
    /// Verification codes requested per source address [default: 10/h].
    #[arg(long, env = "ROSSBY_CODES_RATE_PER_ADDRESS", value_name = "RATE", value_parser = parse_rate)]
    pub codes_rate_per_address: Option<f64>,
    /// Burst of codes per source address [default: 10].
    #[arg(long, env = "ROSSBY_CODES_BURST_PER_ADDRESS", value_name = "N", value_parser = parse_burst)]
    pub codes_burst_per_address: Option<f64>,
    /// Verification codes the whole deployment sends per hour, kept in storage
    /// [default: 3600].
    #[arg(long, env = "ROSSBY_CODES_PER_HOUR", value_name = "N")]
    pub codes_per_hour: Option<u64>,
    /// Verification codes per hour to the phone numbers of one range (first five
    /// digits), kept in storage [default: 60].
    #[arg(long, env = "ROSSBY_CODES_PER_PREFIX_PER_HOUR", value_name = "N")]
    pub codes_per_prefix_per_hour: Option<u64>,

    // ---- gateway-to-gateway push (docs/configuration.md, "Cross-gateway push") ----
    /// Peer endpoint (UDP) listen address; turns gateway-to-gateway notifications
    /// on (with --peer-ca, --peer-cert, --peer-key) [default: off].
    #[arg(long, env = "ROSSBY_PEER_LISTEN", value_name = "ADDR")]
    pub peer_listen: Option<SocketAddr>,
    /// `host:port` other gateways dial to reach this one's peer endpoint
    /// [default: --peer-listen, when it is a specific address].
    #[arg(long, env = "ROSSBY_PEER_ADVERTISE", value_name = "HOST:PORT")]
    pub peer_advertise: Option<String>,
    /// The deployment CA certificate (PEM) that signs every gateway's peer certificate.
    #[arg(long, env = "ROSSBY_PEER_CA", value_name = "FILE")]
    pub peer_ca: Option<PathBuf>,
    /// This gateway's peer certificate chain (PEM), signed by --peer-ca.
    #[arg(long, env = "ROSSBY_PEER_CERT", value_name = "FILE")]
    pub peer_cert: Option<PathBuf>,
    /// The private key (PEM) of --peer-cert.
    #[arg(long, env = "ROSSBY_PEER_KEY", value_name = "FILE")]
    pub peer_key: Option<PathBuf>,
    /// Lifetime of a presence lease in seconds [default: 30].
    #[arg(long, env = "ROSSBY_PEER_LEASE_SECS", value_name = "SECS")]
    pub peer_lease_secs: Option<u64>,
    /// Seconds between presence lease renewals; below --peer-lease-secs [default: 10].
    #[arg(long, env = "ROSSBY_PEER_RENEW_SECS", value_name = "SECS")]
    pub peer_renew_secs: Option<u64>,
    /// Lifetime of a gateway's box-ownership lease in milliseconds: a dead
    /// owner's boxes move within this plus --owner-renew-ms [default: 5000].
    #[arg(long, env = "ROSSBY_OWNER_LEASE_MS", value_name = "MS")]
    pub owner_lease_ms: Option<u64>,
    /// Milliseconds between ownership lease renewals (and refreshes of the view of
    /// every region's gateways); below --owner-lease-ms [default: 1000].
    #[arg(long, env = "ROSSBY_OWNER_RENEW_MS", value_name = "MS")]
    pub owner_renew_ms: Option<u64>,
    /// Milliseconds between storage re-reads of a waiting fetch (the fallback for
    /// lost notifications); 0 switches it off [default: 1000].
    #[arg(long, env = "ROSSBY_FETCH_POLL_MS", value_name = "MS")]
    pub fetch_poll_ms: Option<u64>,
}

/// A rate in a TOML file: a number (per second) or a string such as `"3/h"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum RateValue {
    Number(f64),
    Text(String),
}

/// The TOML file: the same options as [`Args`], as flat keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    region: Option<u16>,
    topology: Option<PathBuf>,
    wan_sim: Option<bool>,
    local: Option<bool>,
    service_name: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    storage: Option<StorageKind>,
    store_dir: Option<PathBuf>,
    durability: Option<DurabilityArg>,
    cache_mb: Option<u64>,
    pd: Option<Vec<String>>,
    /// Removed; any value is an error (see [`TIKV_MODE_REMOVED`]).
    tikv_mode: Option<serde::de::IgnoredAny>,
    tikv_timeout_ms: Option<u64>,
    probe_timeout_ms: Option<u64>,
    admin_max_connections: Option<usize>,
    admin_header_timeout_ms: Option<u64>,
    /// Removed; any value is an error (see [`SWEEP_INTERVAL_REMOVED`]).
    sweep_interval_secs: Option<serde::de::IgnoredAny>,
    maintenance_interval_ms: Option<u64>,
    maintenance_lease_ms: Option<u64>,
    retry_attempts: Option<u32>,
    retry_deadline_ms: Option<u64>,
    retry_initial_backoff_ms: Option<u64>,
    retry_max_backoff_ms: Option<u64>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    tls_name: Option<Vec<String>>,
    secret_file: Option<PathBuf>,
    secret_version: Option<u32>,
    pepper_file: Option<PathBuf>,
    pepper_version: Option<u32>,
    drain_grace_secs: Option<u64>,
    drain_timeout_secs: Option<u64>,
    max_connections: Option<u32>,
    max_streams_per_connection: Option<u32>,
    idle_timeout_secs: Option<u64>,
    stream_receive_window: Option<u32>,
    receive_window: Option<u32>,
    send_window: Option<u64>,
    udp_receive_buffer: Option<u32>,
    max_connections_per_address: Option<u32>,
    address_validation: Option<AddressValidation>,
    connection_budget_bytes: Option<usize>,
    device_budget_bytes: Option<usize>,
    request_read_timeout_ms: Option<u64>,
    response_write_timeout_ms: Option<u64>,
    push_queue_bytes: Option<usize>,
    verifier: Option<String>,
    hawk_skew_secs: Option<u64>,
    device_cache_ttl_ms: Option<u64>,
    device_cache_entries: Option<u64>,
    code_ttl_secs: Option<u64>,
    code_max_attempts: Option<u32>,
    wrong_codes_per_identifier_per_day: Option<u32>,
    registration_lock_max_attempts: Option<u32>,
    registration_lock_lockout_secs: Option<u64>,
    max_recipients: Option<usize>,
    max_frame_bytes: Option<usize>,
    max_fetch_count: Option<usize>,
    max_fetch_bytes: Option<usize>,
    max_fetch_wait_secs: Option<u64>,
    max_stale_list_bytes: Option<usize>,
    max_payload_bytes: Option<usize>,
    max_devices_per_box: Option<usize>,
    max_key_packages_per_device: Option<usize>,
    max_key_package_bytes: Option<usize>,
    max_queue_bytes: Option<u64>,
    max_queue_envelopes: Option<u64>,
    max_relations_per_box: Option<usize>,
    max_identifiers_per_box: Option<usize>,
    max_pending_identifiers_per_box: Option<usize>,
    max_deletes_per_txn: Option<usize>,
    retention_days: Option<u64>,
    dedup_window_secs: Option<u64>,
    blob_store: Option<String>,
    blob_s3_endpoint: Option<String>,
    blob_s3_region: Option<String>,
    blob_s3_allow_http: Option<bool>,
    max_attachment_bytes: Option<u64>,
    attachment_quota_bytes: Option<u64>,
    attachment_part_bytes: Option<u32>,
    max_attachment_parts: Option<u32>,
    max_uploads_in_progress: Option<u32>,
    upload_ttl_secs: Option<u64>,
    unsent_attachment_ttl_secs: Option<u64>,
    max_attachment_age_days: Option<u64>,
    webpush: Option<bool>,
    webpush_vapid_key: Option<PathBuf>,
    webpush_subject: Option<String>,
    webpush_allow_insecure: Option<bool>,
    apns_key: Option<PathBuf>,
    apns_key_id: Option<String>,
    apns_team_id: Option<String>,
    apns_topic: Option<String>,
    apns_url: Option<String>,
    apns_push_type: Option<String>,
    fcm_service_account: Option<PathBuf>,
    fcm_url: Option<String>,
    fcm_token_url: Option<String>,
    push_interval_ms: Option<u64>,
    push_outstanding_secs: Option<u64>,
    push_queue: Option<usize>,
    push_provider_queue: Option<usize>,
    push_concurrency: Option<usize>,
    push_max_attempts: Option<u32>,
    push_retry_base_ms: Option<u64>,
    push_retry_cap_secs: Option<u64>,
    push_ttl_secs: Option<u64>,
    push_timeout_ms: Option<u64>,
    rate_per_device: Option<RateValue>,
    burst_per_device: Option<f64>,
    rate_per_ip: Option<RateValue>,
    burst_per_ip: Option<f64>,
    rate_per_identifier: Option<RateValue>,
    burst_per_identifier: Option<f64>,
    discovery_rate_per_device: Option<RateValue>,
    discovery_burst_per_device: Option<f64>,
    sealed_rate_per_recipient: Option<RateValue>,
    sealed_burst_per_recipient: Option<f64>,
    stored_bytes_rate_per_device: Option<RateValue>,
    stored_bytes_burst_per_device: Option<f64>,
    codes_rate_per_address: Option<RateValue>,
    codes_burst_per_address: Option<f64>,
    codes_per_hour: Option<u64>,
    codes_per_prefix_per_hour: Option<u64>,
    peer_listen: Option<SocketAddr>,
    peer_advertise: Option<String>,
    peer_ca: Option<PathBuf>,
    peer_cert: Option<PathBuf>,
    peer_key: Option<PathBuf>,
    peer_lease_secs: Option<u64>,
    peer_renew_secs: Option<u64>,
    owner_lease_ms: Option<u64>,
    owner_renew_ms: Option<u64>,
    fetch_poll_ms: Option<u64>,
}

/// Where the store lives.
#[derive(Clone)]
pub enum StorageConfig {
    /// Open this backend at start (and close it at shutdown).
    Backend(BackendConfig),
    /// Use an already opened store. Several gateways in one process can share one
    /// store this way (tests); the gateway never closes it.
    Shared(Kv),
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageConfig::Backend(b) => f.debug_tuple("Backend").field(b).finish(),
            StorageConfig::Shared(kv) => write!(f, "Shared({})", kv.backend()),
        }
    }
}

/// The gateway's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate chain PEM file.
    pub cert: PathBuf,
    /// Private key PEM file.
    pub key: PathBuf,
    /// Generate a self-signed certificate and key at these paths if the
    /// certificate file does not exist yet (off when `--cert`/`--key` were given:
    /// a missing production certificate is an error, not a reason to improvise).
    pub generate: bool,
    /// Names of a generated certificate besides `localhost`, `127.0.0.1` and `::1`.
    pub extra_names: Vec<String>,
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// `tracing` filter directives.
    pub level: String,
}

/// QUIC transport limits. Small stream limits and windows keep idle connections
/// cheap (quinn's per-connection memory grows with them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicConfig {
    /// Most open connections; further handshakes are refused.
    pub max_connections: usize,
    /// Concurrent bidirectional (request) streams a client may open.
    pub max_streams_per_connection: u32,
    /// Idle timeout of a connection.
    pub idle_timeout: Duration,
    /// Receive window of one stream, in bytes.
    pub stream_receive_window: u32,
    /// Receive window of a connection, in bytes.
    pub receive_window: u32,
    /// Send window of a connection, in bytes.
    pub send_window: u64,
    /// Receive buffer of the UDP socket, in bytes: datagrams that arrive while the
    /// gateway is busy wait there instead of being dropped (a drop costs a QUIC
    /// loss recovery and a smaller congestion window).
    pub udp_receive_buffer: u32,
    /// Most open connections from one address (IPv6: one /64 prefix).
    pub max_connections_per_address: usize,
    /// When new connections must prove their address with a Retry.
    pub address_validation: AddressValidation,
    /// Bytes in flight per connection ([`crate::budget`]).
    pub connection_budget_bytes: usize,
    /// How long a request frame may take to arrive (and to get budget).
    pub request_read_timeout: Duration,
    /// How long a reply may take to be written before its stream is reset.
    pub response_write_timeout: Duration,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            max_connections: 100_000,
            max_streams_per_connection: 64,
            idle_timeout: Duration::from_secs(60),
            stream_receive_window: 256 * 1024,
            receive_window: 1024 * 1024,
            send_window: 1024 * 1024,
            udp_receive_buffer: 4 * 1024 * 1024,
            max_connections_per_address: 32,
            address_validation: AddressValidation::UnderLoad,
            connection_budget_bytes: 4 * 1024 * 1024,
            request_read_timeout: Duration::from_secs(10),
            response_write_timeout: Duration::from_secs(5),
        }
    }
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
    pub fn from_args(args: Args) -> Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        merge(args, file)
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
            stored_bytes_per_device: unlimited,
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
            tls: TlsConfig {
                cert: data_dir.join("cert.pem"),
                key: data_dir.join("key.pem"),
                generate: true,
                extra_names: Vec::new(),
            },
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
            push: push::defaults(&data_dir),
            data_dir,
        }
    }

    /// The region this gateway serves.
    pub fn region(&self) -> RegionId {
        self.api.region
    }
}

/// Reads and parses the TOML file; errors name the file and the line.
fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map(|before| before.matches('\n').count() + 1);
        let mut message = e.message().replace('\n', " ");
        // serde lists every known key after an unknown one; too long for one line.
        if let Some(cut) = message.find(", expected one of") {
            message.truncate(cut);
            message.push_str(" (the keys are listed in docs/configuration.md)");
        }
        match line {
            Some(line) => Error::Config(format!(
                "config file {} line {line}: {message}",
                path.display()
            )),
            None => Error::Config(format!("config file {}: {message}", path.display())),
        }
    })
}

/// Reads and validates a topology file (TOML, or JSON when it starts with `{`).
pub fn read_topology(path: &Path) -> Result<Topology> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read topology file {}: {e}", path.display())))?;
    Topology::parse(&text)
        .map_err(|e| Error::Config(format!("topology file {}: {e}", path.display())))
}

/// `name=code` of every region, for error messages.
fn region_list(topology: &Topology) -> String {
    topology
        .regions()
        .iter()
        .map(|r| format!("{}={}", r.name, r.code))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a rate: `N`, `N/s`, `N/sec`, `N/m`, `N/min`, `N/h`, `N/hour`, as tokens
/// per second. Must be positive and finite.
pub fn parse_rate(s: &str) -> std::result::Result<f64, String> {
    let s = s.trim();
    let (number, per) = match s.split_once('/') {
        Some((n, unit)) => {
            let secs = match unit.trim() {
                "s" | "sec" | "second" => 1.0,
                "m" | "min" | "minute" => 60.0,
                "h" | "hour" => 3600.0,
                "d" | "day" => 86400.0,
                other => {
                    return Err(format!(
                        "unknown rate unit {other:?} in {s:?} (use /s, /min, /h or /day)"
                    ));
                }
            };
            (n.trim(), secs)
        }
        None => (s, 1.0),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (examples: 50, 50/s, 3/h)"))?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("rate {s:?} must be positive"));
    }
    Ok(n / per)
}

/// Parses a burst size: a finite number of at least 1.
pub fn parse_burst(s: &str) -> std::result::Result<f64, String> {
    let n: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    check_burst(n)
}

fn check_burst(n: f64) -> std::result::Result<f64, String> {
    if !n.is_finite() || n < 1.0 {
        return Err(format!("burst {n} must be at least 1"));
    }
    Ok(n)
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

/// Why `--tikv-mode` is gone, for configurations that still set it.
const TIKV_MODE_REMOVED: &str = "was removed: TiKV transactions are always optimistic. \
Pessimistic mode read a box's `next` key without locking it, so two gateways could give \
two messages the same sequence number and one would be lost; delete the setting";

/// Fails if the removed `--tikv-mode` is set anywhere, naming where.
fn reject_tikv_mode(flag_or_env: bool, file: bool) -> Result<()> {
    if flag_or_env {
        return Err(Error::Config(format!(
            "--tikv-mode (ROSSBY_TIKV_MODE) {TIKV_MODE_REMOVED}"
        )));
    }
    if file {
        return Err(Error::Config(format!(
            "config key tikv_mode {TIKV_MODE_REMOVED}"
        )));
    }
    Ok(())
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why `--sweep-interval-secs` is gone, for configurations that still set it.
const SWEEP_INTERVAL_REMOVED: &str = "was removed: expired messages are swept by the \
region's maintenance jobs, one gateway per job under a lease, every \
--maintenance-interval-ms (milliseconds, default 30000); delete the setting or set that one";

/// Fails if the removed `--sweep-interval-secs` is set anywhere, naming where.
fn reject_sweep_interval(flag_or_env: bool, file: bool) -> Result<()> {
    if flag_or_env {
        return Err(Error::Config(format!(
            "--sweep-interval-secs (ROSSBY_SWEEP_INTERVAL_SECS) {SWEEP_INTERVAL_REMOVED}"
        )));
    }
    if file {
        return Err(Error::Config(format!(
            "config key sweep_interval_secs {SWEEP_INTERVAL_REMOVED}"
        )));
    }
    Ok(())
}

/// The maintenance interval and lease, checked: a lease must outlast two
/// rounds, so one slow round does not lose it.
fn maintenance(interval_ms: u64, lease_ms: u64) -> Result<(Duration, Duration)> {
    if !(10..=3_600_000).contains(&interval_ms) {
        return Err(Error::Config(format!(
            "--maintenance-interval-ms must be between 10 and 3600000 (got {interval_ms})"
        )));
    }
    if lease_ms < interval_ms.saturating_mul(2) || lease_ms > 86_400_000 {
        return Err(Error::Config(format!(
            "--maintenance-lease-ms must be at least twice --maintenance-interval-ms ({interval_ms}) and at most 86400000 (got {lease_ms})"
        )));
    }
    Ok((
        Duration::from_millis(interval_ms),
        Duration::from_millis(lease_ms),
    ))
}

/// Longest retry deadline or back-off accepted, in milliseconds: a request waits
/// for its retries, and an hour is already far beyond any client's patience.
const MAX_RETRY_MS: u64 = 3_600_000;

/// The retry policy from the `--retry-*` options (already merged flag over
/// environment over file); `None` when none is set, so the gateway keeps its
/// default (scaled under the WAN simulation). Unset options take
/// [`RetryPolicy::default`]'s values.
fn retry_policy(
    attempts: Option<u32>,
    deadline_ms: Option<u64>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
) -> Result<Option<RetryPolicy>> {
    if attempts.is_none()
        && deadline_ms.is_none()
        && initial_backoff_ms.is_none()
        && max_backoff_ms.is_none()
    {
        return Ok(None);
    }
    let default = RetryPolicy::default();
    let default_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let max_attempts = at_least(
        "retry-attempts",
        attempts.unwrap_or(default.max_attempts),
        1,
    )?;
    let deadline = deadline_ms.unwrap_or(default_ms(default.deadline));
    if deadline == 0 || deadline > MAX_RETRY_MS {
        return Err(Error::Config(format!(
            "--retry-deadline-ms must be between 1 and {MAX_RETRY_MS} (got {deadline})"
        )));
    }
    let initial = initial_backoff_ms.unwrap_or(default_ms(default.base_backoff));
    let max = max_backoff_ms.unwrap_or(default_ms(default.max_backoff));
    if max > MAX_RETRY_MS {
        return Err(Error::Config(format!(
            "--retry-max-backoff-ms must be at most {MAX_RETRY_MS} (got {max})"
        )));
    }
    if initial > max {
        let which = if max_backoff_ms.is_some() {
            "--retry-max-backoff-ms"
        } else {
            "the default --retry-max-backoff-ms"
        };
        return Err(Error::Config(format!(
            "--retry-initial-backoff-ms ({initial}) must not exceed {which} ({max})"
        )));
    }
    Ok(Some(RetryPolicy {
        max_attempts,
        base_backoff: Duration::from_millis(initial),
        max_backoff: Duration::from_millis(max),
        deadline: Duration::from_millis(deadline),
    }))
}

/// Flag over file over default.
fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

fn rate_of(flag: Option<f64>, file: Option<RateValue>, name: &str) -> Result<Option<f64>> {
    if flag.is_some() {
        return Ok(flag);
    }
    match file {
        None => Ok(None),
        Some(RateValue::Number(n)) => parse_rate(&n.to_string())
            .map(Some)
            .map_err(|e| Error::Config(format!("{name}: {e}"))),
        Some(RateValue::Text(s)) => parse_rate(&s)
            .map(Some)
            .map_err(|e| Error::Config(format!("{name}: {e}"))),
    }
}

fn burst_of(flag: Option<f64>, file: Option<f64>, name: &str) -> Result<Option<f64>> {
    match flag.or(file) {
        None => Ok(None),
        Some(n) => check_burst(n)
            .map(Some)
            .map_err(|e| Error::Config(format!("{name}: {e}"))),
    }
}

/// Fails unless `value >= min`, naming the flag.
fn at_least<T: PartialOrd + std::fmt::Display>(flag: &str, value: T, min: T) -> Result<T> {
    if value < min {
        return Err(Error::Config(format!(
            "--{flag} must be at least {min} (got {value})"
        )));
    }
    Ok(value)
}

fn between(flag: &str, value: usize, min: usize, max: usize) -> Result<usize> {
    if value < min || value > max {
        return Err(Error::Config(format!(
            "--{flag} must be between {min} and {max} (got {value})"
        )));
    }
    Ok(value)
}

fn secs(flag: &str, value: u64, min: u64, max: u64) -> Result<Duration> {
    if value < min || value > max {
        return Err(Error::Config(format!(
            "--{flag} must be between {min} and {max} seconds (got {value})"
        )));
    }
    Ok(Duration::from_secs(value))
}

/// Applies flags and file over the defaults and validates the result.
fn merge(a: Args, f: FileConfig) -> Result<Config> {
    let (blob_store, attachment_limits) = attachments(&a, &f)?;
    let data_dir = pick(
        a.data_dir.clone(),
        f.data_dir.clone(),
        PathBuf::from(DEFAULT_DATA_DIR),
    );
    if data_dir.as_os_str().is_empty() {
        return Err(Error::Config("--data-dir must not be empty".into()));
    }
    let mut c = Config::defaults(data_dir.clone());
    c.blob_store = blob_store;
    c.push = push::options(&a, &f, &data_dir)?;
    c.api.attachments = attachment_limits;
    c.listen = pick(a.listen, f.listen, c.listen);
    c.admin_listen = pick(a.admin_listen, f.admin_listen, c.admin_listen);
    if c.listen.port() != 0 && c.listen == c.admin_listen {
        return Err(Error::Config(
            "--listen and --admin-listen must differ".into(),
        ));
    }

    // Logging.
    c.log.format = pick(a.log_format, f.log_format, c.log.format);
    c.log.level = pick(a.log_level, f.log_level, c.log.level);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        return Err(Error::Config(format!(
            "--log-level {:?} is not a valid filter: {e}",
            c.log.level
        )));
    }

    // Storage.
    let kind = pick(a.storage, f.storage, StorageKind::Fjall);
    let pd = a.pd.or(f.pd).unwrap_or_default();
    let pd: Vec<String> = pd
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let store_dir = pick(a.store_dir, f.store_dir, data_dir.join("store"));
    let durability = pick(a.durability, f.durability, DurabilityArg::GroupCommit);
    let cache_mb = at_least("cache-mb", pick(a.cache_mb, f.cache_mb, 64), 1)?;
    reject_tikv_mode(a.tikv_mode.is_some(), f.tikv_mode.is_some())?;
    let tikv_timeout_ms = at_least(
        "tikv-timeout-ms",
        pick(a.tikv_timeout_ms, f.tikv_timeout_ms, 2000),
        1,
    )?;
    c.storage = StorageConfig::Backend(match kind {
        StorageKind::Memory => BackendConfig::Memory,
        StorageKind::Fjall => BackendConfig::Fjall(FjallConfig {
            path: store_dir,
            durability: match durability {
                DurabilityArg::GroupCommit => Durability::GroupCommit,
                DurabilityArg::NoSync => Durability::NoSync,
            },
            cache_bytes: cache_mb.saturating_mul(1024 * 1024),
        }),
        StorageKind::Tikv => {
            if pd.is_empty() {
                return Err(Error::Config(
                    "--storage tikv needs --pd host:port[,host:port..]".into(),
                ));
            }
            for endpoint in &pd {
                check_host_port("pd", endpoint)?;
            }
            BackendConfig::Tikv(
                TikvConfig::new(pd.clone())
                    .with_request_timeout(Duration::from_millis(tikv_timeout_ms)),
            )
        }
    });
    if !pd.is_empty() && kind != StorageKind::Tikv {
        return Err(Error::Config(format!(
            "--pd is only used with --storage tikv (storage is {})",
            match kind {
                StorageKind::Fjall => "fjall",
                StorageKind::Memory => "memory",
                StorageKind::Tikv => "tikv",
            }
        )));
    }
    let probe_ms = pick(a.probe_timeout_ms, f.probe_timeout_ms, 1000);
    if probe_ms == 0 || probe_ms > 60_000 {
        return Err(Error::Config(format!(
            "--probe-timeout-ms must be between 1 and 60000 (got {probe_ms})"
        )));
    }
    c.probe_timeout = Duration::from_millis(probe_ms);
    let max_connections = pick(a.admin_max_connections, f.admin_max_connections, 64);
    if max_connections == 0 || max_connections > 10_000 {
        return Err(Error::Config(format!(
            "--admin-max-connections must be between 1 and 10000 (got {max_connections})"
        )));
    }
    let header_ms = pick(a.admin_header_timeout_ms, f.admin_header_timeout_ms, 5000);
    if header_ms == 0 || header_ms > 600_000 {
        return Err(Error::Config(format!(
            "--admin-header-timeout-ms must be between 1 and 600000 (got {header_ms})"
        )));
    }
    c.admin_limits = crate::admin::AdminLimits {
        max_connections,
        header_timeout: Duration::from_millis(header_ms),
    };
    reject_sweep_interval(
        a.sweep_interval_secs.is_some(),
        f.sweep_interval_secs.is_some(),
    )?;
    (c.maintenance_interval, c.maintenance_lease) = maintenance(
        pick(
            a.maintenance_interval_ms,
            f.maintenance_interval_ms,
            millis(crate::maintenance::DEFAULT_INTERVAL),
        ),
        pick(
            a.maintenance_lease_ms,
            f.maintenance_lease_ms,
            millis(crate::maintenance::DEFAULT_LEASE),
        ),
    )?;
    c.retry = retry_policy(
        a.retry_attempts.or(f.retry_attempts),
        a.retry_deadline_ms.or(f.retry_deadline_ms),
        a.retry_initial_backoff_ms.or(f.retry_initial_backoff_ms),
        a.retry_max_backoff_ms.or(f.retry_max_backoff_ms),
    )?;

    // TLS and secrets.
    let cert = a.cert.or(f.cert);
    let key = a.key.or(f.key);
    c.tls = match (cert, key) {
        (Some(cert), Some(key)) => TlsConfig {
            cert,
            key,
            generate: false,
            extra_names: Vec::new(),
        },
        (None, None) => TlsConfig {
            cert: data_dir.join("cert.pem"),
            key: data_dir.join("key.pem"),
            generate: true,
            extra_names: Vec::new(),
        },
        (Some(_), None) => return Err(Error::Config("--cert needs --key".into())),
        (None, Some(_)) => return Err(Error::Config("--key needs --cert".into())),
    };
    c.tls.extra_names = a
        .tls_name
        .or(f.tls_name)
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for name in &c.tls.extra_names {
        crate::tls::check_name(name)
            .map_err(|e| Error::Config(format!("--tls-name {name:?}: {e}")))?;
    }
    c.secret_file = pick(a.secret_file, f.secret_file, data_dir.join("secret"));
    c.secret_version = a.secret_version.or(f.secret_version);
    if c.secret_version == Some(0) {
        return Err(Error::Config("--secret-version must be at least 1".into()));
    }
    c.pepper_file = pick(a.pepper_file, f.pepper_file, data_dir.join("pepper"));
    c.pepper_version = a.pepper_version.or(f.pepper_version);
    if c.pepper_version == Some(0) {
        return Err(Error::Config("--pepper-version must be at least 1".into()));
    }

    // Drain.
    c.drain_grace = secs(
        "drain-grace-secs",
        pick(a.drain_grace_secs, f.drain_grace_secs, 5),
        0,
        3600,
    )?;
    c.drain_timeout = secs(
        "drain-timeout-secs",
        pick(a.drain_timeout_secs, f.drain_timeout_secs, 30),
        0,
        3600,
    )?;

    // QUIC.
    let q = &mut c.quic;
    q.max_connections = at_least(
        "max-connections",
        pick(a.max_connections, f.max_connections, 100_000),
        1,
    )? as usize;
    q.max_streams_per_connection = at_least(
        "max-streams-per-connection",
        pick(
            a.max_streams_per_connection,
            f.max_streams_per_connection,
            64,
        ),
        1,
    )?;
    q.idle_timeout = secs(
        "idle-timeout-secs",
        pick(a.idle_timeout_secs, f.idle_timeout_secs, 60),
        1,
        86_400,
    )?;
    q.stream_receive_window = at_least(
        "stream-receive-window",
        pick(a.stream_receive_window, f.stream_receive_window, 256 * 1024),
        1024,
    )?;
    q.receive_window = at_least(
        "receive-window",
        pick(a.receive_window, f.receive_window, 1024 * 1024),
        1024,
    )?;
    q.send_window = at_least(
        "send-window",
        pick(a.send_window, f.send_window, 1024 * 1024),
        1024,
    )?;
    q.udp_receive_buffer = at_least(
        "udp-receive-buffer",
        pick(a.udp_receive_buffer, f.udp_receive_buffer, 4 * 1024 * 1024),
        4096,
    )?;
    q.max_connections_per_address = at_least(
        "max-connections-per-address",
        pick(
            a.max_connections_per_address,
            f.max_connections_per_address,
            32,
        ),
        1,
    )? as usize;
    q.address_validation = pick(
        a.address_validation,
        f.address_validation,
        AddressValidation::UnderLoad,
    );
    q.connection_budget_bytes = at_least(
        "connection-budget-bytes",
        pick(
            a.connection_budget_bytes,
            f.connection_budget_bytes,
            4 * 1024 * 1024,
        ),
        64 * 1024,
    )?;
    let read_ms = pick(a.request_read_timeout_ms, f.request_read_timeout_ms, 10_000);
    q.request_read_timeout = Duration::from_millis(between(
        "request-read-timeout-ms",
        usize::try_from(read_ms).unwrap_or(usize::MAX),
        100,
        600_000,
    )? as u64);
    let write_ms = pick(
        a.response_write_timeout_ms,
        f.response_write_timeout_ms,
        5_000,
    );
    q.response_write_timeout = Duration::from_millis(between(
        "response-write-timeout-ms",
        usize::try_from(write_ms).unwrap_or(usize::MAX),
        100,
        600_000,
    )? as u64);

    // API.
    let api = &mut c.api;
    api.region = RegionId(at_least("region", pick(a.region, f.region, 1), 1)?);
    if let Some(name) = a.service_name.or(f.service_name) {
        api.service = name
            .parse::<ServiceName>()
            .map_err(|e| Error::Config(format!("--service-name {name:?}: {e}")))?;
    }
    if let Some(spec) = a.verifier.or(f.verifier) {
        api.verifier = parse_verifier(&spec).map_err(Error::Config)?;
    }
    api.hawk_skew = secs(
        "hawk-skew-secs",
        pick(a.hawk_skew_secs, f.hawk_skew_secs, 120),
        1,
        86_400,
    )?;
    let device_ttl_ms = pick(a.device_cache_ttl_ms, f.device_cache_ttl_ms, 2000);
    if device_ttl_ms > 60_000 {
        return Err(Error::Config(format!(
            "--device-cache-ttl-ms must be at most 60000 (got {device_ttl_ms})"
        )));
    }
    api.device_cache_ttl = Duration::from_millis(device_ttl_ms);
    api.device_cache_entries = at_least(
        "device-cache-entries",
        pick(a.device_cache_entries, f.device_cache_entries, 50_000),
        1,
    )?;
    api.code_ttl = secs(
        "code-ttl-secs",
        pick(a.code_ttl_secs, f.code_ttl_secs, 600),
        1,
        7 * 86_400,
    )?;
    api.code_max_attempts = at_least(
        "code-max-attempts",
        pick(a.code_max_attempts, f.code_max_attempts, 5),
        1,
    )?;
    api.wrong_codes_per_identifier_per_day = at_least(
        "wrong-codes-per-identifier-per-day",
        pick(
            a.wrong_codes_per_identifier_per_day,
            f.wrong_codes_per_identifier_per_day,
            20,
        ),
        1,
    )?;
    api.registration_lock_max_attempts = at_least(
        "registration-lock-max-attempts",
        pick(
            a.registration_lock_max_attempts,
            f.registration_lock_max_attempts,
            10,
        ),
        1,
    )?;
    api.registration_lock_lockout = secs(
        "registration-lock-lockout-secs",
        pick(
            a.registration_lock_lockout_secs,
            f.registration_lock_lockout_secs,
            86_400,
        ),
        1,
        365 * 86_400,
    )?;
    api.max_recipients_per_send = at_least(
        "max-recipients",
        pick(
            a.max_recipients,
            f.max_recipients,
            api.max_recipients_per_send,
        ),
        1,
    )?;
    api.max_frame_bytes = at_least(
        "max-frame-bytes",
        pick(a.max_frame_bytes, f.max_frame_bytes, api.max_frame_bytes),
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
        pick(a.max_fetch_count, f.max_fetch_count, api.max_fetch_count),
        1,
    )?;
    api.max_fetch_bytes = at_least(
        "max-fetch-bytes",
        pick(a.max_fetch_bytes, f.max_fetch_bytes, api.max_fetch_bytes),
        1024,
    )?;
    api.max_stale_list_bytes = pick(
        a.max_stale_list_bytes,
        f.max_stale_list_bytes,
        api.max_stale_list_bytes,
    );
    api.device_budget_bytes = at_least(
        "device-budget-bytes",
        pick(
            a.device_budget_bytes,
            f.device_budget_bytes,
            api.device_budget_bytes,
        ),
        64 * 1024,
    )?;
    api.push_queue_bytes = at_least(
        "push-queue-bytes",
        pick(a.push_queue_bytes, f.push_queue_bytes, api.push_queue_bytes),
        1024,
    )?;
    api.max_fetch_wait = secs(
        "max-fetch-wait-secs",
        pick(a.max_fetch_wait_secs, f.max_fetch_wait_secs, 60),
        0,
        3600,
    )?;
    let l = &mut api.limits;
    l.max_payload_bytes = at_least(
        "max-payload-bytes",
        pick(
            a.max_payload_bytes,
            f.max_payload_bytes,
            l.max_payload_bytes,
        ),
        1,
    )?;
    l.max_devices_per_box = at_least(
        "max-devices-per-box",
        pick(
            a.max_devices_per_box,
            f.max_devices_per_box,
            l.max_devices_per_box,
        ),
        1,
    )?;
    l.max_key_packages_per_device = at_least(
        "max-key-packages-per-device",
        pick(
            a.max_key_packages_per_device,
            f.max_key_packages_per_device,
            l.max_key_packages_per_device,
        ),
        1,
    )?;
    l.max_key_package_bytes = at_least(
        "max-key-package-bytes",
        pick(
            a.max_key_package_bytes,
            f.max_key_package_bytes,
            l.max_key_package_bytes,
        ),
        1,
    )?;
    l.max_queue_envelopes = at_least(
        "max-queue-envelopes",
        pick(
            a.max_queue_envelopes,
            f.max_queue_envelopes,
            l.max_queue_envelopes,
        ),
        1,
    )?;
    l.max_relations_per_box = at_least(
        "max-relations-per-box",
        pick(
            a.max_relations_per_box,
            f.max_relations_per_box,
            l.max_relations_per_box,
        ),
        1,
    )?;
    l.max_identifiers_per_box = between(
        "max-identifiers-per-box",
        pick(
            a.max_identifiers_per_box,
            f.max_identifiers_per_box,
            l.max_identifiers_per_box,
        ),
        1,
        rossby_storage::tables::lookup::MAX_IDENTIFIERS_LIMIT,
    )?;
    l.max_pending_identifiers_per_box = between(
        "max-pending-identifiers-per-box",
        pick(
            a.max_pending_identifiers_per_box,
            f.max_pending_identifiers_per_box,
            l.max_pending_identifiers_per_box,
        ),
        1,
        rossby_storage::tables::identifiers::MAX_PENDING_LIMIT,
    )?;
    l.max_deletes_per_txn = at_least(
        "max-deletes-per-txn",
        pick(
            a.max_deletes_per_txn,
            f.max_deletes_per_txn,
            l.max_deletes_per_txn,
        ),
        1,
    )?;
    let days = pick(a.retention_days, f.retention_days, 30);
    if !(1..=3650).contains(&days) {
        return Err(Error::Config(format!(
            "--retention-days must be between 1 and 3650 (got {days})"
        )));
    }
    l.retention_ms = days * 86_400_000;
    let dedup = secs(
        "dedup-window-secs",
        pick(a.dedup_window_secs, f.dedup_window_secs, 86_400),
        1,
        days * 86_400,
    )?;
    l.dedup_window_ms = dedup.as_secs() * 1000;
    l.max_queue_bytes = pick(a.max_queue_bytes, f.max_queue_bytes, l.max_queue_bytes);
    // A queue must be able to hold at least one envelope of the largest size.
    if l.max_queue_bytes < l.max_payload_bytes as u64 + 1024 {
        return Err(Error::Config(format!(
            "--max-queue-bytes ({}) must exceed --max-payload-bytes ({}) by at least 1024",
            l.max_queue_bytes, l.max_payload_bytes
        )));
    }
    // A payload, KeyPackage or profile that cannot fit in a frame could never be
    // sent: catch the contradiction at start rather than at the first request.
    for (flag, value) in [
        ("max-payload-bytes", l.max_payload_bytes),
        ("max-key-package-bytes", l.max_key_package_bytes),
    ] {
        if value >= api.max_frame_bytes {
            return Err(Error::Config(format!(
                "--{flag} ({value}) must be below --max-frame-bytes ({})",
                api.max_frame_bytes
            )));
        }
    }

    // Rate limits.
    let r = &mut api.rate_limits;
    if let Some(v) = rate_of(a.rate_per_device, f.rate_per_device, "rate_per_device")? {
        r.per_device.per_second = v;
    }
    if let Some(v) = burst_of(a.burst_per_device, f.burst_per_device, "burst_per_device")? {
        r.per_device.burst = v;
    }
    if let Some(v) = rate_of(a.rate_per_ip, f.rate_per_ip, "rate_per_ip")? {
        r.per_ip.per_second = v;
    }
    if let Some(v) = burst_of(a.burst_per_ip, f.burst_per_ip, "burst_per_ip")? {
        r.per_ip.burst = v;
    }
    if let Some(v) = rate_of(
        a.rate_per_identifier,
        f.rate_per_identifier,
        "rate_per_identifier",
    )? {
        r.registrations_per_identifier.per_second = v;
    }
    if let Some(v) = burst_of(
        a.burst_per_identifier,
        f.burst_per_identifier,
        "burst_per_identifier",
    )? {
        r.registrations_per_identifier.burst = v;
    }
    if let Some(v) = rate_of(
        a.discovery_rate_per_device,
        f.discovery_rate_per_device,
        "discovery_rate_per_device",
    )? {
        r.discovery_per_device.per_second = v;
    }
    if let Some(v) = burst_of(
        a.discovery_burst_per_device,
        f.discovery_burst_per_device,
        "discovery_burst_per_device",
    )? {
        r.discovery_per_device.burst = v;
    }
    if let Some(v) = rate_of(
        a.sealed_rate_per_recipient,
        f.sealed_rate_per_recipient,
        "sealed_rate_per_recipient",
    )? {
        r.sealed_per_recipient.per_second = v;
    }
    if let Some(v) = burst_of(
        a.sealed_burst_per_recipient,
        f.sealed_burst_per_recipient,
        "sealed_burst_per_recipient",
    )? {
        r.sealed_per_recipient.burst = v;
    }
    if let Some(v) = rate_of(
        a.stored_bytes_rate_per_device,
        f.stored_bytes_rate_per_device,
        "stored_bytes_rate_per_device",
    )? {
        r.stored_bytes_per_device.per_second = v;
    }
    if let Some(v) = burst_of(
        a.stored_bytes_burst_per_device,
        f.stored_bytes_burst_per_device,
        "stored_bytes_burst_per_device",
    )? {
        r.stored_bytes_per_device.burst = v;
    }
    if let Some(v) = rate_of(
        a.codes_rate_per_address,
        f.codes_rate_per_address,
        "codes_rate_per_address",
    )? {
        r.codes_per_address.per_second = v;
    }
    if let Some(v) = burst_of(
        a.codes_burst_per_address,
        f.codes_burst_per_address,
        "codes_burst_per_address",
    )? {
        r.codes_per_address.burst = v;
    }
    api.codes_per_hour = at_least(
        "codes-per-hour",
        pick(a.codes_per_hour, f.codes_per_hour, api.codes_per_hour),
        1,
    )?;
    api.codes_per_prefix_per_hour = at_least(
        "codes-per-prefix-per-hour",
        pick(
            a.codes_per_prefix_per_hour,
            f.codes_per_prefix_per_hour,
            api.codes_per_prefix_per_hour,
        ),
        1,
    )?;

    // Geography.
    c.local = a.local.or(f.local).unwrap_or(false);
    c.wan_sim = a.wan_sim.or(f.wan_sim).unwrap_or(false);
    if let Some(path) = a.topology.or(f.topology) {
        let topology = read_topology(&path)?;
        // In local mode every region gets its own gateway, so --region is not used.
        if !c.local && topology.region(c.api.region).is_none() {
            return Err(Error::Config(format!(
                "--region {} is not a region of the topology {} (its regions: {})",
                c.api.region,
                path.display(),
                region_list(&topology)
            )));
        }
        c.api.topology = Some(Arc::new(topology));
        c.topology_file = Some(path);
    }
    if c.api.topology.is_none() {
        if c.wan_sim {
            return Err(Error::Config(
                "--wan-sim needs --topology (the simulated round trips come from its rtt_ms)"
                    .into(),
            ));
        }
        if c.local {
            return Err(Error::Config(
                "--local needs --topology (one gateway is started per region)".into(),
            ));
        }
    }

    // Gateway-to-gateway push.
    let poll_ms = pick(a.fetch_poll_ms, f.fetch_poll_ms, 1000);
    if poll_ms > 60_000 {
        return Err(Error::Config(format!(
            "--fetch-poll-ms must be between 0 (off) and 60000 (got {poll_ms})"
        )));
    }
    c.fetch_poll_interval = (poll_ms > 0).then(|| Duration::from_millis(poll_ms));
    c.owner_lease = owner_lease(
        pick(a.owner_lease_ms, f.owner_lease_ms, 5000),
        pick(a.owner_renew_ms, f.owner_renew_ms, 1000),
    )?;
    c.peer = peer_config(
        c.owner_lease,
        a.peer_listen.or(f.peer_listen),
        a.peer_advertise.or(f.peer_advertise),
        [
            ("peer-ca", a.peer_ca.or(f.peer_ca)),
            ("peer-cert", a.peer_cert.or(f.peer_cert)),
            ("peer-key", a.peer_key.or(f.peer_key)),
        ],
        pick(a.peer_lease_secs, f.peer_lease_secs, 30),
        pick(a.peer_renew_secs, f.peer_renew_secs, 10),
    )?;
    Ok(c)
}

/// The attachment options: the object store and the limits.
fn attachments(
    a: &Args,
    f: &FileConfig,
) -> Result<(
    crate::blobstore::BlobStoreConfig,
    rossby_storage::tables::blobs::BlobLimits,
)> {
    use crate::blobstore::BlobStoreConfig;
    let store = a.blob_store.clone().or_else(|| f.blob_store.clone());
    let endpoint = a
        .blob_s3_endpoint
        .clone()
        .or_else(|| f.blob_s3_endpoint.clone());
    let region = a
        .blob_s3_region
        .clone()
        .or_else(|| f.blob_s3_region.clone());
    let allow_http = pick(a.blob_s3_allow_http, f.blob_s3_allow_http, false);
    let data_dir = a
        .data_dir
        .clone()
        .or_else(|| f.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let blob_store = match store {
        None => BlobStoreConfig::Local(data_dir.join("blobs")),
        Some(url) => BlobStoreConfig::parse(&url, endpoint.clone(), region.clone(), allow_http)
            .map_err(Error::Config)?,
    };
    if !matches!(blob_store, BlobStoreConfig::S3 { .. })
        && (endpoint.is_some() || region.is_some() || allow_http)
    {
        return Err(Error::Config(
            "--blob-s3-endpoint, --blob-s3-region and --blob-s3-allow-http need an s3:// --blob-store"
                .into(),
        ));
    }
    let mut limits = rossby_storage::tables::blobs::BlobLimits::default();
    let b = &mut limits;
    // A part travels in one frame with its request around it. Without an
    // explicit part size, a smaller frame limit shrinks the default to fit.
    let frame = pick(
        a.max_frame_bytes,
        f.max_frame_bytes,
        rossby_protocol::framing::DEFAULT_MAX_FRAME,
    );
    let most = frame.saturating_sub(crate::api::attachments::FRAME_OVERHEAD);
    match a.attachment_part_bytes.or(f.attachment_part_bytes) {
        Some(part) => {
            if part < MIN_PART_BYTES || usize::try_from(part).map_or(true, |p| p > most) {
                return Err(Error::Config(format!(
                    "--attachment-part-bytes must be between {MIN_PART_BYTES} and {most} (the frame limit less {} bytes); got {part}",
                    crate::api::attachments::FRAME_OVERHEAD
                )));
            }
            b.part_size = part;
        }
        None => {
            let fits = u32::try_from(most).unwrap_or(u32::MAX);
            b.part_size = b.part_size.min(fits).max(MIN_PART_BYTES);
        }
    }
    b.max_size = at_least(
        "max-attachment-bytes",
        pick(a.max_attachment_bytes, f.max_attachment_bytes, b.max_size),
        1,
    )?;
    b.quota_bytes = at_least(
        "attachment-quota-bytes",
        pick(
            a.attachment_quota_bytes,
            f.attachment_quota_bytes,
            b.quota_bytes,
        ),
        1,
    )?;
    b.max_parts = at_least(
        "max-attachment-parts",
        pick(a.max_attachment_parts, f.max_attachment_parts, b.max_parts),
        1,
    )?;
    let explicit = a.max_attachment_bytes.is_some()
        || f.max_attachment_bytes.is_some()
        || a.max_attachment_parts.is_some()
        || f.max_attachment_parts.is_some()
        || a.attachment_part_bytes.is_some()
        || f.attachment_part_bytes.is_some();
    let fits = u64::from(b.max_parts) * u64::from(b.part_size);
    if !explicit {
        // Only a small frame limit shrank the default part: the default size
        // shrinks with it rather than contradict options nobody set.
        b.max_size = b.max_size.min(fits);
    } else if b.max_size.div_ceil(u64::from(b.part_size)) > u64::from(b.max_parts) {
        return Err(Error::Config(format!(
            "--max-attachment-bytes {} needs more than --max-attachment-parts {} parts of {} bytes",
            b.max_size, b.max_parts, b.part_size
        )));
    }
    b.max_uploads_in_progress = at_least(
        "max-uploads-in-progress",
        pick(
            a.max_uploads_in_progress,
            f.max_uploads_in_progress,
            b.max_uploads_in_progress,
        ),
        1,
    )?;
    b.upload_ttl_ms = secs(
        "upload-ttl-secs",
        pick(a.upload_ttl_secs, f.upload_ttl_secs, b.upload_ttl_ms / 1000),
        60,
        30 * 86_400,
    )?
    .as_secs()
        * 1000;
    b.unsent_ttl_ms = secs(
        "unsent-attachment-ttl-secs",
        pick(
            a.unsent_attachment_ttl_secs,
            f.unsent_attachment_ttl_secs,
            b.unsent_ttl_ms / 1000,
        ),
        60,
        365 * 86_400,
    )?
    .as_secs()
        * 1000;
    let age_days = pick(a.max_attachment_age_days, f.max_attachment_age_days, 0);
    if age_days > 36_500 {
        return Err(Error::Config(format!(
            "--max-attachment-age-days must be between 0 (no limit) and 36500 (got {age_days})"
        )));
    }
    limits.max_age_ms = age_days * 86_400_000;
    Ok((blob_store, limits))
}

/// The box-ownership lease and its renewal interval, checked.
fn owner_lease(lease_ms: u64, renew_ms: u64) -> Result<(Duration, Duration)> {
    if !(100..=600_000).contains(&lease_ms) {
        return Err(Error::Config(format!(
            "--owner-lease-ms must be between 100 and 600000 (got {lease_ms})"
        )));
    }
    if renew_ms == 0 || renew_ms >= lease_ms {
        return Err(Error::Config(format!(
            "--owner-renew-ms must be positive and below --owner-lease-ms ({lease_ms}) (got {renew_ms})"
        )));
    }
    Ok((
        Duration::from_millis(lease_ms),
        Duration::from_millis(renew_ms),
    ))
}

/// The peer endpoint's configuration: off without `--peer-listen`, which then
/// needs the CA, certificate and key files.
fn peer_config(
    (owner_lease, owner_renew): (Duration, Duration),
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    files: [(&str, Option<PathBuf>); 3],
    lease_secs: u64,
    renew_secs: u64,
) -> Result<Option<crate::peer::PeerConfig>> {
    let lease = secs("peer-lease-secs", lease_secs, 2, 3600)?;
    let renew_interval = secs("peer-renew-secs", renew_secs, 1, 3600)?;
    let Some(listen) = listen else {
        if let Some((flag, _)) = files.iter().find(|(_, path)| path.is_some()) {
            return Err(Error::Config(format!("--{flag} needs --peer-listen")));
        }
        if advertise.is_some() {
            return Err(Error::Config("--peer-advertise needs --peer-listen".into()));
        }
        return Ok(None);
    };
    let [(_, ca), (_, cert), (_, key)] = files;
    let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else {
        return Err(Error::Config(
            "--peer-listen needs --peer-ca, --peer-cert and --peer-key".into(),
        ));
    };
    let advertise = advertise.map(|a| a.trim().to_string());
    if advertise.is_none() && listen.ip().is_unspecified() {
        return Err(Error::Config(format!(
            "--peer-advertise is needed when --peer-listen is {listen} (other gateways cannot dial it)"
        )));
    }
    let peer = crate::peer::PeerConfig {
        listen,
        advertise,
        tls: crate::peer::tls::PeerTls::Files { ca, cert, key },
        lease,
        renew_interval,
        owner_lease,
        owner_renew,
    };
    peer.check()?;
    Ok(Some(peer))
}

/// Checks a `host:port` endpoint.
fn check_host_port(flag: &str, s: &str) -> Result<()> {
    let ok = match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!("--{flag} {s:?} is not host:port")))
    }
}

/// Reads a secret file, or creates it with 32 random bytes (hex, mode 0600) if it
/// does not exist. Two gateways starting at once over the same path agree on one
/// secret: the file appears atomically (written aside, then hard-linked into
/// place, which fails if the other won) and the loser reads the winner's.
///
/// The file holds hex (as generated, easy to copy to other gateways) or raw bytes;
/// whitespace around hex is ignored.
pub fn load_or_create_secret(path: &Path, min_len: usize, what: &str) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => return decode_secret(path, &bytes, min_len, what),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot read", path, e)),
    }
    let mut secret = [0u8; 32];
    rand::fill(&mut secret);
    let text = format!("{}\n", hex::encode(secret));
    write_private_file_once(path, text.as_bytes())?;
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    let secret = decode_secret(path, &bytes, min_len, what)?;
    tracing::info!(path = %path.display(), "generated the {what}");
    Ok(secret)
}

/// Decodes a secret file's content (hex, or raw bytes) and checks its length.
pub(crate) fn decode_secret(
    path: &Path,
    bytes: &[u8],
    min_len: usize,
    what: &str,
) -> Result<Vec<u8>> {
    warn_if_readable_by_others(path, what);
    let trimmed = std::str::from_utf8(bytes).map(str::trim).ok();
    let secret = match trimmed.and_then(|t| hex::decode(t).ok()) {
        Some(decoded) => decoded,
        None => bytes.to_vec(),
    };
    if secret.len() < min_len {
        return Err(Error::Config(format!(
            "the {what} in {} has {} bytes; at least {min_len} are required",
            path.display(),
            secret.len()
        )));
    }
    Ok(secret)
}

#[cfg(unix)]
pub(crate) fn warn_if_readable_by_others(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        let (noun, fix) = if meta.is_dir() {
            ("", "chmod 700")
        } else {
            (" file", "chmod 600")
        };
        tracing::warn!(path = %path.display(), "the {what}{noun} is accessible to other users; {fix} it");
    }
}

#[cfg(not(unix))]
pub(crate) fn warn_if_readable_by_others(_path: &Path, _what: &str) {}

/// Creates the directory `path` (and missing parents) accessible to the owner
/// only (mode 0700): it holds the store, secrets and, with the `file:` verifier,
/// codes. An existing directory is left as it is, with a warning when others can
/// enter it.
pub(crate) fn create_private_dir(path: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(path)
        .map_err(|e| Error::io("cannot create data directory", path, e))?;
    warn_if_readable_by_others(path, "data directory");
    Ok(())
}

/// Creates `path` with `contents` and mode 0600 unless it already exists. The file
/// appears complete or not at all. Returns whether this call created it.
pub(crate) fn write_private_file_once(path: &Path, contents: &[u8]) -> Result<bool> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let tmp = PathBuf::from(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options
            .open(&tmp)
            .map_err(|e| Error::io("cannot create", &tmp, e))?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("cannot create", path, e)),
        }
    })();
    // The temporary name is only a staging step; failing to remove it leaves a
    // harmless stray file.
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Tests that read `ROSSBY_*` variables (every `Args` parse does) run one at a
    /// time, because one of them sets variables.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    fn parse(argv: &[&str]) -> Result<Config> {
        let args =
            Args::try_parse_from(std::iter::once("rossby-gateway").chain(argv.iter().copied()))
                .map_err(|e| Error::Config(e.to_string()))?;
        Config::from_args(args)
    }

    #[test]
    fn push_options_have_documented_defaults_and_are_checked() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let c = parse(&["--data-dir", "/srv/r"]).unwrap();
        let p = &c.push;
        let webpush = p.webpush.as_ref().expect("Web Push is on by default");
        assert_eq!(webpush.vapid_key_file, PathBuf::from("/srv/r/vapid.pem"));
        assert_eq!(webpush.subject, push::DEFAULT_WEBPUSH_SUBJECT);
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

    #[test]
    fn attachment_options_have_documented_defaults_and_are_checked() {
        use crate::blobstore::BlobStoreConfig;
        let c = parse(&["--data-dir", "/srv/r"]).unwrap();
        assert_eq!(c.blob_store, BlobStoreConfig::Local("/srv/r/blobs".into()));
        let a = &c.api.attachments;
        assert_eq!(a.max_size, 100 * 1024 * 1024);
        assert_eq!(a.quota_bytes, 1024 * 1024 * 1024);
        assert_eq!(a.part_size, 1024 * 1024);
        assert_eq!(a.max_parts, 1024);
        assert_eq!(a.max_uploads_in_progress, 16);
        assert_eq!(a.upload_ttl_ms, 86_400_000);
        assert_eq!(a.unsent_ttl_ms, 86_400_000);
        assert_eq!(a.max_age_ms, 0, "no limit by default");
        // The default part fits the default frame with its request around it.
        assert!(
            a.part_size as usize + crate::api::attachments::FRAME_OVERHEAD <= c.api.max_frame_bytes
        );
        let c = parse(&[
            "--blob-store",
            "s3://rossby-blobs/eu",
            "--blob-s3-endpoint",
            "http://127.0.0.1:9000",
            "--blob-s3-allow-http",
            "true",
            "--max-attachment-bytes",
            "1000",
            "--attachment-part-bytes",
            "65536",
            "--upload-ttl-secs",
            "600",
            "--max-attachment-age-days",
            "36",
        ])
        .unwrap();
        assert_eq!(
            c.blob_store,
            BlobStoreConfig::S3 {
                bucket: "rossby-blobs".into(),
                prefix: "eu".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: None,
                allow_http: true,
            }
        );
        assert_eq!(c.api.attachments.max_size, 1000);
        assert_eq!(c.api.attachments.part_size, 65536);
        assert_eq!(c.api.attachments.upload_ttl_ms, 600_000);
        assert_eq!(c.api.attachments.max_age_ms, 36 * 86_400_000);
        for (argv, flag) in [
            (
                &["--attachment-part-bytes", "2000000"][..],
                "--attachment-part-bytes",
            ),
            (
                &["--attachment-part-bytes", "1000"][..],
                "--attachment-part-bytes",
            ),
            (
                &["--max-attachment-bytes", "2000000000"][..],
                "--max-attachment-parts",
            ),
            (
                &["--blob-s3-endpoint", "http://x:1"][..],
                "--blob-s3-endpoint",
            ),
            (&["--blob-store", "gs://bucket"][..], "--blob-store"),
            (&["--upload-ttl-secs", "5"][..], "--upload-ttl-secs"),
        ] {
            let message = err(argv);
            assert!(message.contains(flag), "{argv:?}: {message}");
        }
    }

    fn err(argv: &[&str]) -> String {
        match parse(argv) {
            Ok(_) => panic!("{argv:?} should fail"),
            Err(e) => e.to_string(),
        }
    }

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

    fn example_topology() -> String {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/examples/three-regions.toml"
        )
        .to_string()
    }

    #[test]
    fn a_topology_must_name_the_gateways_region() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let topology = example_topology();
        let c = parse(&["--topology", &topology, "--region", "2"]).unwrap();
        let loaded = c.api.topology.as_deref().unwrap();
        assert_eq!(loaded.regions().len(), 3);
        assert_eq!(c.topology_file.as_deref(), Some(Path::new(&topology)));
        assert!(!c.wan_sim && !c.local);
        let message = err(&["--topology", &topology, "--region", "9"]);
        assert!(message.contains("--region 9 is not a region"), "{message}");
        assert!(message.contains("us-east=1"), "{message}");
        // In local mode every region runs, so --region does not matter.
        let c = parse(&["--topology", &topology, "--region", "9", "--local"]).unwrap();
        assert!(c.local);
        let c = parse(&["--topology", &topology, "--wan-sim"]).unwrap();
        assert!(c.wan_sim);
        let c = parse(&["--topology", &topology, "--wan-sim", "false"]).unwrap();
        assert!(!c.wan_sim);
    }

    #[test]
    fn geography_options_are_checked() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "primary = \"nowhere\"\n").unwrap();
        let bad = bad.to_str().unwrap().to_string();
        let missing = dir.path().join("missing.toml");
        let missing = missing.to_str().unwrap().to_string();
        for (argv, needle) in [
            (vec!["--wan-sim"], "--wan-sim needs --topology"),
            (vec!["--local"], "--local needs --topology"),
            (vec!["--topology", &bad], "topology file"),
            (vec!["--topology", &missing], "cannot read topology file"),
        ] {
            let message = err(&argv);
            assert!(message.contains(needle), "{argv:?}: {message}");
        }
        // The same options from a file.
        let file = dir.path().join("gw.toml");
        std::fs::write(
            &file,
            format!(
                "topology = {:?}\nregion = 3\nwan_sim = true\n",
                example_topology()
            ),
        )
        .unwrap();
        let c = parse(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.region(), RegionId(3));
        assert!(c.wan_sim);
    }

    #[test]
    fn bad_files_are_reported_with_their_line() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:1\"\nmax_recipeints = 3\n").unwrap();
        let message = err(&["--config", file.to_str().unwrap()]);
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("max_recipeints"), "{message}");
        assert!(!message.contains('\n'), "{message}");
        std::fs::write(&file, "max_recipients = \"many\"\n").unwrap();
        let message = err(&["--config", file.to_str().unwrap()]);
        assert!(message.contains("line 1"), "{message}");
        let message = err(&[
            "--config",
            dir.path().join("missing.toml").to_str().unwrap(),
        ]);
        assert!(message.contains("cannot read config file"), "{message}");
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

    #[test]
    fn rates_accept_units() {
        assert_eq!(parse_rate("50"), Ok(50.0));
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert_eq!(parse_rate("120/min"), Ok(2.0));
        assert_eq!(parse_rate("3600/h"), Ok(1.0));
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_rate("x/s").is_err());
    }

    #[test]
    fn secrets_are_generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("secret");
        let a = load_or_create_secret(&path, 32, "server secret").unwrap();
        assert_eq!(a.len(), 32);
        let b = load_or_create_secret(&path, 32, "server secret").unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "abcd\n").unwrap();
        let message = load_or_create_secret(&path, 32, "server secret")
            .unwrap_err()
            .to_string();
        assert!(message.contains("at least 32"), "{message}");
        // Raw (non-hex) secrets are accepted as they are.
        std::fs::write(&path, [0xffu8; 40]).unwrap();
        assert_eq!(
            load_or_create_secret(&path, 32, "server secret").unwrap(),
            vec![0xff; 40]
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn peer_options_turn_notifications_on_and_are_checked() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let c = parse(&[]).unwrap();
        assert!(c.peer.is_none(), "off by default");
        assert_eq!(c.fetch_poll_interval, Some(Duration::from_secs(1)));

        let c = parse(&[
            "--peer-listen",
            "0.0.0.0:7402",
            "--peer-advertise",
            "gw1.us-east.internal:7402",
            "--peer-ca",
            "/ca.pem",
            "--peer-cert",
            "/peer.pem",
            "--peer-key",
            "/peer.key",
            "--peer-lease-secs",
            "20",
            "--peer-renew-secs",
            "5",
            "--owner-lease-ms",
            "3000",
            "--owner-renew-ms",
            "500",
            "--fetch-poll-ms",
            "0",
        ])
        .unwrap();
        let peer = c.peer.unwrap();
        assert_eq!(peer.owner_lease, Duration::from_millis(3000));
        assert_eq!(peer.owner_renew, Duration::from_millis(500));
        assert_eq!(peer.listen, "0.0.0.0:7402".parse().unwrap());
        assert_eq!(peer.advertise.as_deref(), Some("gw1.us-east.internal:7402"));
        assert_eq!(
            peer.tls,
            crate::peer::tls::PeerTls::Files {
                ca: "/ca.pem".into(),
                cert: "/peer.pem".into(),
                key: "/peer.key".into(),
            }
        );
        assert_eq!(peer.lease, Duration::from_secs(20));
        assert_eq!(peer.renew_interval, Duration::from_secs(5));
        assert_eq!(c.fetch_poll_interval, None);

        let files = ["--peer-ca", "/c", "--peer-cert", "/p", "--peer-key", "/k"];
        let with = |extra: &[&'static str]| {
            let mut argv = files.to_vec();
            argv.extend_from_slice(extra);
            argv
        };
        for (argv, needle) in [
            (vec!["--peer-ca", "/c"], "--peer-ca needs --peer-listen"),
            (
                vec!["--peer-advertise", "gw:1"],
                "--peer-advertise needs --peer-listen",
            ),
            (
                vec!["--peer-listen", "127.0.0.1:7402"],
                "needs --peer-ca, --peer-cert and --peer-key",
            ),
            (
                with(&["--peer-listen", "0.0.0.0:7402"]),
                "--peer-advertise is needed",
            ),
            (
                with(&[
                    "--peer-listen",
                    "127.0.0.1:7402",
                    "--peer-advertise",
                    "nohost",
                ]),
                "--peer-advertise",
            ),
            (
                with(&["--peer-listen", "127.0.0.1:7402", "--peer-renew-secs", "30"]),
                "--peer-renew-secs",
            ),
            (vec!["--fetch-poll-ms", "70000"], "--fetch-poll-ms"),
        ] {
            let message = err(&argv);
            assert!(message.contains(needle), "{argv:?}: {message}");
        }
    }

    #[test]
    fn no_retry_option_keeps_the_gateway_default() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(parse(&[]).unwrap().retry, None);
        let topology = example_topology();
        let c = parse(&["--topology", &topology, "--wan-sim"]).unwrap();
        assert_eq!(c.retry, None, "the WAN scaling is the gateway's to apply");
    }

    #[test]
    fn retry_options_follow_flag_env_file_precedence() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rossby.toml");
        std::fs::write(
            &file,
            "retry_attempts = 3\nretry_deadline_ms = 700\nretry_initial_backoff_ms = 5\nretry_max_backoff_ms = 40\n",
        )
        .unwrap();
        let file_arg = file.to_str().unwrap();
        let from_file = parse(&["--config", file_arg]).unwrap().retry.unwrap();
        assert_eq!(
            from_file,
            RetryPolicy {
                max_attempts: 3,
                base_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(40),
                deadline: Duration::from_millis(700),
            }
        );
        // SAFETY (edition 2024 marks these unsafe): the lock above keeps every
        // other test that reads the environment out while these are set.
        unsafe {
            std::env::set_var("ROSSBY_RETRY_ATTEMPTS", "6");
            std::env::set_var("ROSSBY_RETRY_MAX_BACKOFF_MS", "80");
        }
        let result = parse(&["--config", file_arg, "--retry-attempts", "9"]);
        unsafe {
            std::env::remove_var("ROSSBY_RETRY_ATTEMPTS");
            std::env::remove_var("ROSSBY_RETRY_MAX_BACKOFF_MS");
        }
        let policy = result.unwrap().retry.unwrap();
        assert_eq!(policy.max_attempts, 9, "flag wins");
        assert_eq!(
            policy.max_backoff,
            Duration::from_millis(80),
            "env beats the file"
        );
        assert_eq!(policy.deadline, Duration::from_millis(700), "file");
        assert_eq!(policy.base_backoff, Duration::from_millis(5), "file");
        // One option alone: the others keep the default policy's values.
        let one = parse(&["--retry-deadline-ms", "250"])
            .unwrap()
            .retry
            .unwrap();
        assert_eq!(
            one,
            RetryPolicy {
                deadline: Duration::from_millis(250),
                ..RetryPolicy::default()
            }
        );
    }

    #[test]
    fn retry_options_are_validated() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for (argv, needle) in [
            (
                &["--retry-attempts", "0"][..],
                "--retry-attempts must be at least 1",
            ),
            (
                &["--retry-deadline-ms", "0"][..],
                "--retry-deadline-ms must be between 1",
            ),
            (
                &["--retry-deadline-ms", "3600001"][..],
                "--retry-deadline-ms must be between 1",
            ),
            (
                &["--retry-max-backoff-ms", "3600001"][..],
                "--retry-max-backoff-ms must be at most",
            ),
            (
                &[
                    "--retry-initial-backoff-ms",
                    "20",
                    "--retry-max-backoff-ms",
                    "10",
                ][..],
                "--retry-initial-backoff-ms (20) must not exceed --retry-max-backoff-ms (10)",
            ),
            (
                &["--retry-initial-backoff-ms", "500"][..],
                "must not exceed the default --retry-max-backoff-ms (100)",
            ),
            (&["--retry-attempts", "many"][..], "--retry-attempts"),
        ] {
            let message = err(argv);
            assert!(message.contains(needle), "{argv:?}: {message}");
        }
        // Equal back-offs and no back-off at all are fine.
        let flat = parse(&[
            "--retry-initial-backoff-ms",
            "7",
            "--retry-max-backoff-ms",
            "7",
        ])
        .unwrap()
        .retry
        .unwrap();
        assert_eq!(flat.backoff_ceiling(5), Duration::from_millis(7));
        let none = parse(&[
            "--retry-initial-backoff-ms",
            "0",
            "--retry-max-backoff-ms",
            "0",
        ])
        .unwrap()
        .retry
        .unwrap();
        assert_eq!(none.backoff_ceiling(1), Duration::ZERO);
        // The same checks apply to the file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rossby.toml");
        std::fs::write(&file, "retry_attempts = 0\n").unwrap();
        let message = err(&["--config", file.to_str().unwrap()]);
        assert!(message.contains("--retry-attempts"), "{message}");
    }

    #[test]
    fn the_removed_tikv_mode_is_an_error_that_says_why() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let check = |message: &str, names: &str| {
            assert!(message.contains(names), "{message}");
            assert!(message.contains("was removed"), "{message}");
            assert!(message.contains("same sequence number"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        };
        for mode in ["pessimistic", "optimistic"] {
            check(&err(&["--tikv-mode", mode]), "--tikv-mode");
        }
        // SAFETY: as above, the lock keeps other environment readers out.
        unsafe { std::env::set_var("ROSSBY_TIKV_MODE", "pessimistic") };
        let result = parse(&[]);
        unsafe { std::env::remove_var("ROSSBY_TIKV_MODE") };
        match result {
            Ok(_) => panic!("ROSSBY_TIKV_MODE should be refused"),
            Err(e) => check(&e.to_string(), "ROSSBY_TIKV_MODE"),
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rossby.toml");
        std::fs::write(
            &file,
            "storage = \"tikv\"\npd = [\"pd:2379\"]\ntikv_mode = \"pessimistic\"\n",
        )
        .unwrap();
        check(&err(&["--config", file.to_str().unwrap()]), "tikv_mode");
        // The flag is gone from the help.
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        assert!(!help.contains("tikv-mode"), "{help}");
    }

    #[test]
    fn the_removed_sweep_interval_is_an_error_that_names_its_replacement() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let check = |message: &str, names: &str| {
            assert!(message.contains(names), "{message}");
            assert!(message.contains("was removed"), "{message}");
            assert!(message.contains("--maintenance-interval-ms"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        };
        check(
            &err(&["--sweep-interval-secs", "30"]),
            "--sweep-interval-secs",
        );
        // SAFETY: as above, the lock keeps other environment readers out.
        unsafe { std::env::set_var("ROSSBY_SWEEP_INTERVAL_SECS", "30") };
        let result = parse(&[]);
        unsafe { std::env::remove_var("ROSSBY_SWEEP_INTERVAL_SECS") };
        match result {
            Ok(_) => panic!("ROSSBY_SWEEP_INTERVAL_SECS should be refused"),
            Err(e) => check(&e.to_string(), "ROSSBY_SWEEP_INTERVAL_SECS"),
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rossby.toml");
        std::fs::write(&file, "sweep_interval_secs = 30\n").unwrap();
        check(
            &err(&["--config", file.to_str().unwrap()]),
            "sweep_interval_secs",
        );
        // The replacement, from a file.
        std::fs::write(
            &file,
            "maintenance_interval_ms = 2000\nmaintenance_lease_ms = 4000\n",
        )
        .unwrap();
        let c = parse(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(
            (c.maintenance_interval, c.maintenance_lease),
            (Duration::from_secs(2), Duration::from_secs(4))
        );
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        assert!(!help.contains("sweep-interval"), "{help}");
        assert!(help.contains("--maintenance-lease-ms"), "{help}");
    }
}
