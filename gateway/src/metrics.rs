//! Prometheus metrics of one gateway, and [`InstrumentedKv`], the storage decorator
//! that feeds the storage metrics.
//!
//! Every gateway owns its own [`prometheus::Registry`] (tests and the load generator
//! run several gateways in one process, and a process-global registry would mix
//! their counts). `/metrics` renders that registry followed by
//! [`prometheus::default_registry`], where `tikv-client` registers its own metrics.
//!
//! Metric names (all prefixed `rossby_`):
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `rossby_requests_total` | counter | `rpc`, `status` |
//! | `rossby_request_duration_seconds` | histogram | `rpc`, `status` |
//! | `rossby_open_connections` | gauge | |
//! | `rossby_auth_failures_total` | counter | `reason` |
//! | `rossby_storage_transaction_duration_seconds` | histogram | |
//! | `rossby_storage_conflicts_total` | counter | |
//! | `rossby_storage_retries_total` | counter | |
//! | `rossby_storage_errors_total` | counter | `kind` |
//! | `rossby_verification_codes_sent_total` | counter | |
//! | `rossby_verification_codes_refused_total` | counter | `budget` |
//! | `rossby_registration_lock_refused_total` | counter | |
//! | `rossby_pushes_total` | counter | |
//! | `rossby_envelopes_enqueued_total` | counter | |
//! | `rossby_build_info` | gauge (always 1) | `version` |
//! | `rossby_peer_notifications_total` | counter | `result` |
//! | `rossby_peer_forwards_total` | counter | `result` |
//! | `rossby_maintenance_work_total` | counter | `task`, `kind` |
//! | `rossby_maintenance_lag_seconds` | gauge | `task` |
//! | `rossby_maintenance_pending_purges` | gauge | |
//! | `rossby_maintenance_leases_held` | gauge | `task` |
//! | `rossby_region_code` | gauge | |
//! | `rossby_ownership_lease_held` | gauge | |
//! | `rossby_ownership_live_gateways` | gauge | |
//! | `rossby_tls_certificate_expiry_timestamp_seconds` | gauge | |
//! | `rossby_blob_bytes_total` | counter | `direction` |
//! | `rossby_blob_store_operations_total` | counter | `operation` |
//! | `rossby_blob_store_errors_total` | counter | `operation` |
//! | `rossby_push_sent_total` | counter | `provider` |
//! | `rossby_push_failed_total` | counter | `provider`, `reason` |
//! | `rossby_push_tokens_removed_total` | counter | `provider` |
//! | `rossby_push_dropped_total` | counter | `queue` |
//! | `rossby_push_duration_seconds` | histogram | `provider` |
//! | `rossby_push_pending` | gauge | `provider` |
//! | `rossby_bytes_in_flight` | gauge | `budget` |
//! | `rossby_push_queue_bytes` | gauge | |
//! | `rossby_connections_refused_total` | counter | `reason` |
//! | `rossby_quic_retries_total` | counter | |
//! | `rossby_streams_reset_total` | counter | `reason` |
//!
//! `docs/operations/metrics.md` describes each one for operators, and
//! `tests/observability.rs` checks that it documents every metric exported here.

use async_trait::async_trait;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use rossby_protocol::pb::{Method, Status};
use rossby_storage::Kv;
use rossby_storage::kv::{
    CommitDone, Key, KeyRange, KvPair, KvStore, ScanOrder, Transaction, Value,
};
use rossby_storage::kv::{Error as StorageError, Result as StorageResult};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The object-store operations counted by `rossby_blob_store_*`.
pub const BLOB_STORE_OPERATIONS: [&str; 4] = ["put", "get", "delete", "list"];

/// Buckets of request latency: from half a millisecond to a minute, because a Fetch
/// may wait up to `max_fetch_wait` for messages.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Buckets of push-service request latency: tens of milliseconds normally, up
/// to the request timeout when a service hangs.
const PUSH_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The push providers, as the `provider` label names them.
pub const PUSH_PROVIDERS: [&str; 3] = ["apns", "fcm", "webpush"];

/// Buckets of storage transaction latency: fjall group commits take a fraction of a
/// millisecond, cross-region TiKV transactions hundreds of milliseconds.
const STORAGE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The `result` labels of `rossby_peer_forwards_total`, exported from the start
/// at 0 like the storage error kinds.
pub const PEER_FORWARD_RESULTS: &[&str] = &["answered", "failed", "served"];

/// The `task` labels of the maintenance metrics: the kinds of background job
/// (`rossby_keyspace::MaintenanceJob::kind`). The label is not called `job`,
/// which Prometheus sets on every scraped series (the scrape job).
pub const MAINTENANCE_JOBS: &[&str] = &["expiry", "purge"];

/// The `budget` labels of `rossby_verification_codes_refused_total`, exported
/// from the start at 0.
pub const CODE_BUDGETS: &[&str] = &["address", "global", "prefix"];

/// The (`task`, `kind`) labels of `rossby_maintenance_work_total`, exported from
/// the start at 0: expiry index entries processed, envelopes and dedup records
/// they deleted; boxes purged and the purge transactions that took; attachment
/// blobs deleted, and due entries of blobs a send had kept alive; expired
/// pending registrations deleted.
pub const MAINTENANCE_WORK: &[(&str, &str)] = &[
    ("expiry", "entries"),
    ("expiry", "envelopes"),
    ("expiry", "dedups"),
    ("purge", "boxes"),
    ("purge", "steps"),
    ("blobs", "deleted"),
    ("blobs", "kept"),
    ("registrations", "deleted"),
];

/// The `kind` labels of `rossby_storage_errors_total` that storage operations
/// report. Their series exist from the start at 0, so that `rate()` sees the first
/// error of a kind and dashboards show a flat line rather than no data.
/// (`retries_exhausted` is left out: the retry helper decides it after the last
/// transaction has ended, so it never passes through [`InstrumentedKv`].)
pub const STORAGE_ERROR_KINDS: &[&str] =
    &["unavailable", "undetermined", "corrupt", "invalid", "other"];

/// The metrics of one gateway instance.
pub struct Metrics {
    /// The registry holding every metric below.
    pub registry: Registry,
    /// `rossby_requests_total{rpc, status}`: requests answered, by RPC name
    /// (`ping`, `send`, ... or `unknown`) and status name (`ok`, `bad_request`, ...).
    pub requests_total: IntCounterVec,
    /// `rossby_request_duration_seconds{rpc, status}`: time from the first byte of
    /// a request frame being awaited to the response being written.
    pub request_duration_seconds: HistogramVec,
    /// `rossby_open_connections`: established QUIC connections.
    pub open_connections: IntGauge,
    /// `rossby_auth_failures_total{reason}`: rejected authentications, by reason
    /// (set by the API layer: `malformed`, `unknown_credential`, `clock_skew`,
    /// `wrong_connection`, `payload_mismatch`, `bad_mac`, `replayed`,
    /// `unknown_secret_version`).
    pub auth_failures_total: IntCounterVec,
    /// `rossby_storage_transaction_duration_seconds`: begin to commit or rollback of
    /// every storage transaction.
    pub storage_transaction_duration_seconds: Histogram,
    /// `rossby_storage_conflicts_total`: transactions that hit a write conflict.
    pub storage_conflicts_total: IntCounter,
    /// `rossby_storage_retries_total`: transactions re-run because of a conflict
    /// (counted per conflict, so it includes the final attempt of a transaction
    /// whose retries ran out).
    pub storage_retries_total: IntCounter,
    /// `rossby_storage_errors_total{kind}`: storage operations that failed for a
    /// reason other than a conflict (`unavailable`, `undetermined`, `corrupt`,
    /// `invalid`, `retries_exhausted`, `other`).
    pub storage_errors_total: IntCounterVec,
    /// `rossby_verification_codes_sent_total`: codes handed to the verifier.
    pub verification_codes_sent_total: IntCounter,
    /// `rossby_registration_lock_refused_total`: wrong registration-lock PINs.
    pub registration_lock_refused_total: IntCounter,
    /// `rossby_verification_codes_refused_total{budget}`: codes not sent
    /// because a budget was spent (`address`, `global`, `prefix`).
    pub verification_codes_refused_total: IntCounterVec,
    /// `rossby_pushes_total`: push frames written to subscribed connections.
    pub pushes_total: IntCounter,
    /// `rossby_envelopes_enqueued_total`: envelopes stored into recipient queues.
    pub envelopes_enqueued_total: IntCounter,
    /// `rossby_bytes_in_flight{budget}`: bytes reserved in the per-connection
    /// (`connection`) and per-device (`device`) budgets: request bodies being
    /// read, replies being built and replies not yet acknowledged.
    pub bytes_in_flight: IntGaugeVec,
    /// `rossby_push_queue_bytes`: bytes of push frames queued for subscribed
    /// devices and not yet written.
    pub push_queue_bytes: IntGauge,
    /// `rossby_connections_refused_total{reason}`: connection attempts refused
    /// (`limit`: the gateway's cap, `per_address`: the cap per address,
    /// `draining`).
    pub connections_refused_total: IntCounterVec,
    /// `rossby_quic_retries_total`: connection attempts answered with a QUIC Retry
    /// (address validation).
    pub quic_retries_total: IntCounter,
    /// `rossby_streams_reset_total{reason}`: request streams whose reply was
    /// abandoned (`write_timeout`: the peer did not read it in time,
    /// `ack_timeout`: it was written but not acknowledged in time, `budget`: no
    /// budget came free for it in time).
    pub streams_reset_total: IntCounterVec,
    /// `rossby_build_info{version}`: always 1; the label carries the gateway version.
    pub build_info: IntGaugeVec,
    /// `rossby_peer_notifications_total{result}`: gateway-to-gateway notifications,
    /// counted per box: `sent`, `dropped` (a queue was full), `failed` (leases
    /// unreadable, peer unreachable or the write failed), `received`, `rejected`
    /// (malformed).
    pub peer_notifications_total: IntCounterVec,
    /// `rossby_peer_forwards_total{result}`: writes forwarded to the owning gateway
    /// of their box, counted per envelope: `answered` (the owner answered),
    /// `failed` (no answer: executed here instead), `served` (executed here for
    /// another gateway).
    pub peer_forwards_total: IntCounterVec,
    /// `rossby_maintenance_work_total{task, kind}`: work done by this gateway's
    /// maintenance jobs ([`MAINTENANCE_WORK`]).
    pub maintenance_work_total: IntCounterVec,
    /// `rossby_maintenance_lag_seconds{task}`: after this gateway's last round,
    /// the age of the oldest expiry entry still due in the shards it holds
    /// (`expiry`), and of the oldest account deletion still awaiting its purge
    /// when it holds the purge (`purge`); 0 for jobs it does not hold.
    pub maintenance_lag_seconds: GaugeVec,
    /// `rossby_maintenance_pending_purges`: deleted accounts of the region
    /// awaiting their purge, as counted by the gateway holding the purge job (0
    /// elsewhere).
    pub maintenance_pending_purges: IntGauge,
    /// `rossby_maintenance_leases_held{task}`: maintenance leases this gateway
    /// holds, by kind of job (up to 16 `expiry` shards, 1 `purge`).
    pub maintenance_leases_held: IntGaugeVec,
    /// `rossby_region_code`: the code of the region this gateway serves (a
    /// gauge, not a label, so it cannot clash with the scrape's own `region`
    /// label).
    pub region_code: IntGauge,
    /// `rossby_ownership_lease_held`: 1 while this gateway's box-ownership lease
    /// was renewed at its last refresh (docs/geo.md), else 0 (also without
    /// peers, when ownership is off).
    pub ownership_lease_held: IntGauge,
    /// `rossby_ownership_live_gateways`: the live gateways of this gateway's
    /// region in its ownership view, itself included; it owns the boxes the
    /// rendezvous hash gives it, about 1/N of the region's (0: ownership off).
    pub ownership_live_gateways: IntGauge,
    /// `rossby_tls_certificate_expiry_timestamp_seconds`: the not-after time of the
    /// certificate the QUIC endpoint presents, in Unix seconds; 0 when it could not
    /// be read (see [`Metrics::set_certificate_expiry`]).
    pub tls_certificate_expiry_timestamp_seconds: IntGauge,
    /// `rossby_blob_bytes_total{direction}`: attachment ciphertext bytes
    /// `uploaded` (parts stored), `downloaded` (parts served) and `deleted`
    /// (blobs removed by the sweeper); stored bytes are uploaded less deleted,
    /// summed over the gateways.
    pub blob_bytes_total: IntCounterVec,
    /// `rossby_blob_store_operations_total{operation}`: object-store calls
    /// (`put`, `get`, `delete`, `list`), failed ones included.
    pub blob_store_operations_total: IntCounterVec,
    /// `rossby_blob_store_errors_total{operation}`: object-store calls that
    /// failed (a missing object on `get` or `delete` is not an error).
    pub blob_store_errors_total: IntCounterVec,
    /// `rossby_push_sent_total{provider}`: wake-ups the push service accepted.
    pub push_sent_total: IntCounterVec,
    /// `rossby_push_failed_total{provider, reason}`: delivery attempts that
    /// failed, retried ones included (`reason`: the HTTP status class or
    /// `timeout`, `connect`, `auth`, ...).
    pub push_failed_total: IntCounterVec,
    /// `rossby_push_tokens_removed_total{provider}`: tokens removed because the
    /// service said they are no longer registered.
    pub push_tokens_removed_total: IntCounterVec,
    /// `rossby_push_dropped_total{queue}`: wake-ups not attempted because a
    /// bounded queue was full (`scheduler`, or a provider's queue).
    pub push_dropped_total: IntCounterVec,
    /// `rossby_push_duration_seconds{provider}`: one request to the service.
    pub push_duration_seconds: HistogramVec,
    /// `rossby_push_pending{provider}`: wake-ups queued or in delivery.
    pub push_pending: IntGaugeVec,
    /// The children of `requests_total` and `request_duration_seconds`, resolved
    /// once per (RPC, status).
    request_handles: RequestHandles,
}

/// One counter and one histogram child per (RPC, status), resolved on first use
/// (so only pairs that occurred are exported), so that answering a request
/// neither formats nor hashes label values.
struct RequestHandles {
    statuses: usize,
    slots: Vec<OnceLock<(IntCounter, Histogram)>>,
}

impl RequestHandles {
    fn new() -> Self {
        // Enum values are small and dense; slot 0 of the methods is `unknown`.
        let highest = |known: &dyn Fn(i32) -> bool| -> usize {
            (0..=255).filter(|v| known(*v)).max().unwrap_or(0) as usize
        };
        let methods = highest(&|v| Method::try_from(v).is_ok()) + 1;
        let statuses = highest(&|v| Status::try_from(v).is_ok()) + 1;
        RequestHandles {
            statuses,
            slots: (0..methods * statuses).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers a collector built from constant, valid definitions.
fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: prometheus::Result<C>,
) -> C {
    // The definitions are constants with distinct names, so neither building nor
    // registering can fail; the test `every_metric_is_rendered` covers them.
    let collector = collector.expect("metric definitions are valid");
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are distinct");
    collector
}

impl Metrics {
    /// Fresh metrics in a fresh registry, with `rossby_build_info` set.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let metrics = Metrics {
            requests_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_requests_total",
                        "Requests answered, by RPC and status.",
                    ),
                    &["rpc", "status"],
                ),
            ),
            request_duration_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "rossby_request_duration_seconds",
                        "Time to answer a request, by RPC and status.",
                    )
                    .buckets(REQUEST_BUCKETS.to_vec()),
                    &["rpc", "status"],
                ),
            ),
            open_connections: register(
                r,
                IntGauge::new("rossby_open_connections", "Established QUIC connections."),
            ),
            auth_failures_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_auth_failures_total",
                        "Rejected request authentications, by reason.",
                    ),
                    &["reason"],
                ),
            ),
            storage_transaction_duration_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "rossby_storage_transaction_duration_seconds",
                        "Storage transactions from begin to commit or rollback.",
                    )
                    .buckets(STORAGE_BUCKETS.to_vec()),
                ),
            ),
            storage_conflicts_total: register(
                r,
                IntCounter::new(
                    "rossby_storage_conflicts_total",
                    "Storage transactions that hit a write conflict.",
                ),
            ),
            storage_retries_total: register(
                r,
                IntCounter::new(
                    "rossby_storage_retries_total",
                    "Storage transactions re-run because of a conflict.",
                ),
            ),
            storage_errors_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_storage_errors_total",
                        "Failed storage operations other than conflicts, by kind.",
                    ),
                    &["kind"],
                ),
            ),
            verification_codes_sent_total: register(
                r,
                IntCounter::new(
                    "rossby_verification_codes_sent_total",
                    "Verification codes handed to the verifier.",
                ),
            ),
            registration_lock_refused_total: register(
                r,
                IntCounter::new(
                    "rossby_registration_lock_refused_total",
                    "Wrong registration-lock PINs presented in recoveries.",
                ),
            ),
            verification_codes_refused_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_verification_codes_refused_total",
                        "Verification codes not sent because a budget was spent, by budget.",
                    ),
                    &["budget"],
                ),
            ),
            pushes_total: register(
                r,
                IntCounter::new("rossby_pushes_total", "Push frames written to devices."),
            ),
            envelopes_enqueued_total: register(
                r,
                IntCounter::new(
                    "rossby_envelopes_enqueued_total",
                    "Envelopes stored into recipient queues.",
                ),
            ),
            bytes_in_flight: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "rossby_bytes_in_flight",
                        "Bytes reserved in the connection and device budgets, by budget.",
                    ),
                    &["budget"],
                ),
            ),
            push_queue_bytes: register(
                r,
                IntGauge::new(
                    "rossby_push_queue_bytes",
                    "Bytes of push frames queued for subscribed devices.",
                ),
            ),
            connections_refused_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_connections_refused_total",
                        "Connection attempts refused, by reason.",
                    ),
                    &["reason"],
                ),
            ),
            quic_retries_total: register(
                r,
                IntCounter::new(
                    "rossby_quic_retries_total",
                    "Connection attempts answered with a QUIC Retry.",
                ),
            ),
            streams_reset_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_streams_reset_total",
                        "Request streams whose reply was abandoned, by reason.",
                    ),
                    &["reason"],
                ),
            ),
            build_info: register(
                r,
                IntGaugeVec::new(
                    Opts::new("rossby_build_info", "Gateway build; always 1."),
                    &["version"],
                ),
            ),
            peer_notifications_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_peer_notifications_total",
                        "Gateway-to-gateway notifications per box, by result.",
                    ),
                    &["result"],
                ),
            ),
            peer_forwards_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_peer_forwards_total",
                        "Envelopes forwarded to or served for the owning gateway of their box, by result.",
                    ),
                    &["result"],
                ),
            ),
            maintenance_work_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_maintenance_work_total",
                        "Work done by this gateway's maintenance jobs, by task and kind.",
                    ),
                    &["task", "kind"],
                ),
            ),
            maintenance_lag_seconds: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "rossby_maintenance_lag_seconds",
                        "Age of the oldest work left after the last maintenance round, by task.",
                    ),
                    &["task"],
                ),
            ),
            maintenance_pending_purges: register(
                r,
                IntGauge::new(
                    "rossby_maintenance_pending_purges",
                    "Deleted accounts awaiting their purge (counted by the purge job's holder).",
                ),
            ),
            maintenance_leases_held: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "rossby_maintenance_leases_held",
                        "Maintenance leases held by this gateway, by task.",
                    ),
                    &["task"],
                ),
            ),
            region_code: register(
                r,
                IntGauge::new(
                    "rossby_region_code",
                    "Code of the region this gateway serves.",
                ),
            ),
            ownership_lease_held: register(
                r,
                IntGauge::new(
                    "rossby_ownership_lease_held",
                    "1 while this gateway's box-ownership lease is renewed.",
                ),
            ),
            ownership_live_gateways: register(
                r,
                IntGauge::new(
                    "rossby_ownership_live_gateways",
                    "Live gateways of this gateway's region in its ownership view; it owns about 1/N of the region's boxes.",
                ),
            ),
            tls_certificate_expiry_timestamp_seconds: register(
                r,
                IntGauge::new(
                    "rossby_tls_certificate_expiry_timestamp_seconds",
                    "Not-after time of the served TLS certificate, in Unix seconds (0: unreadable).",
                ),
            ),
            blob_bytes_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_blob_bytes_total",
                        "Attachment ciphertext bytes uploaded, downloaded and deleted, by direction.",
                    ),
                    &["direction"],
                ),
            ),
            blob_store_operations_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_blob_store_operations_total",
                        "Object-store operations, by operation.",
                    ),
                    &["operation"],
                ),
            ),
            blob_store_errors_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_blob_store_errors_total",
                        "Object-store operations that failed, by operation.",
                    ),
                    &["operation"],
                ),
            ),
            push_sent_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_push_sent_total",
                        "Wake-up pushes the push service accepted, by provider.",
                    ),
                    &["provider"],
                ),
            ),
            push_failed_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_push_failed_total",
                        "Wake-up push attempts that failed, by provider and reason.",
                    ),
                    &["provider", "reason"],
                ),
            ),
            push_tokens_removed_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_push_tokens_removed_total",
                        "Push tokens removed because the service no longer knows them.",
                    ),
                    &["provider"],
                ),
            ),
            push_dropped_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rossby_push_dropped_total",
                        "Wake-ups not attempted because a queue was full, by queue.",
                    ),
                    &["queue"],
                ),
            ),
            push_duration_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "rossby_push_duration_seconds",
                        "One request to a push service, by provider.",
                    )
                    .buckets(PUSH_BUCKETS.to_vec()),
                    &["provider"],
                ),
            ),
            push_pending: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "rossby_push_pending",
                        "Wake-ups queued or in delivery, by provider.",
                    ),
                    &["provider"],
                ),
            ),
            request_handles: RequestHandles::new(),
            registry,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for kind in STORAGE_ERROR_KINDS {
            metrics.storage_errors_total.with_label_values(&[kind]);
        }
        for result in PEER_FORWARD_RESULTS {
            metrics.peer_forwards_total.with_label_values(&[result]);
        }
        for (job, kind) in MAINTENANCE_WORK {
            metrics
                .maintenance_work_total
                .with_label_values(&[job, kind]);
        }
        for direction in ["uploaded", "downloaded", "deleted"] {
            metrics.blob_bytes_total.with_label_values(&[direction]);
        }
        for budget in CODE_BUDGETS {
            metrics
                .verification_codes_refused_total
                .with_label_values(&[budget]);
        }
        for operation in BLOB_STORE_OPERATIONS {
            metrics
                .blob_store_operations_total
                .with_label_values(&[operation]);
            metrics
                .blob_store_errors_total
                .with_label_values(&[operation]);
        }
        for provider in PUSH_PROVIDERS {
            metrics.push_sent_total.with_label_values(&[provider]);
            metrics
                .push_tokens_removed_total
                .with_label_values(&[provider]);
            metrics.push_dropped_total.with_label_values(&[provider]);
            metrics.push_pending.with_label_values(&[provider]);
            metrics.push_duration_seconds.with_label_values(&[provider]);
            // The reasons every provider can meet, so ratios exist before the
            // first failure.
            for reason in ["429", "5xx", "timeout", "connect"] {
                metrics
                    .push_failed_total
                    .with_label_values(&[provider, reason]);
            }
        }
        metrics.push_dropped_total.with_label_values(&["scheduler"]);
        for budget in ["connection", "device"] {
            metrics.bytes_in_flight.with_label_values(&[budget]);
        }
        for reason in ["limit", "per_address", "draining"] {
            metrics
                .connections_refused_total
                .with_label_values(&[reason]);
        }
        for reason in ["write_timeout", "ack_timeout", "budget"] {
            metrics.streams_reset_total.with_label_values(&[reason]);
        }
        for job in MAINTENANCE_JOBS {
            metrics.maintenance_lag_seconds.with_label_values(&[job]);
            metrics.maintenance_leases_held.with_label_values(&[job]);
        }
        metrics
    }

    /// Records one answered request of RPC number `method` (numbers this build
    /// does not know count as `unknown`).
    pub fn observe_rpc(&self, method: i32, status: Status, elapsed: Duration) {
        let handles = &self.request_handles;
        let method_slot = match Method::try_from(method) {
            Ok(m) => m as usize,
            Err(_) => 0,
        };
        let slot = method_slot * handles.statuses + status as usize;
        let Some(cell) = handles.slots.get(slot) else {
            let rpc = crate::server::rpc_label(method);
            let status = crate::server::status_label(status);
            return self.observe_request(&rpc, &status, elapsed);
        };
        let (count, duration) = cell.get_or_init(|| {
            let labels = [
                crate::server::rpc_label(method),
                crate::server::status_label(status),
            ];
            let labels = [labels[0].as_str(), labels[1].as_str()];
            (
                self.requests_total.with_label_values(&labels),
                self.request_duration_seconds.with_label_values(&labels),
            )
        });
        count.inc();
        duration.observe(elapsed.as_secs_f64());
    }

    /// Records one answered request.
    pub fn observe_request(&self, rpc: &str, status: &str, elapsed: Duration) {
        self.requests_total.with_label_values(&[rpc, status]).inc();
        self.request_duration_seconds
            .with_label_values(&[rpc, status])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts `n` gateway-to-gateway notifications with `result`.
    pub fn peer_notifications(&self, result: &str, n: usize) {
        self.peer_notifications_total
            .with_label_values(&[result])
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Counts one verification code refused by `budget`.
    pub fn verification_code_refused(&self, budget: &str) {
        self.verification_codes_refused_total
            .with_label_values(&[budget])
            .inc();
    }

    /// Counts `n` units of maintenance work of `kind` done by `task`.
    pub fn maintenance_work(&self, task: &str, kind: &str, n: u64) {
        if n > 0 {
            self.maintenance_work_total
                .with_label_values(&[task, kind])
                .inc_by(n);
        }
    }

    /// Counts `n` attachment bytes in `direction` (`uploaded`, `downloaded`,
    /// `deleted`).
    pub fn blob_bytes(&self, direction: &str, n: u64) {
        self.blob_bytes_total
            .with_label_values(&[direction])
            .inc_by(n);
    }

    /// Counts one object-store `operation`, and its failure when `failed`.
    pub fn blob_store_operation(&self, operation: &str, failed: bool) {
        self.blob_store_operations_total
            .with_label_values(&[operation])
            .inc();
        if failed {
            self.blob_store_errors_total
                .with_label_values(&[operation])
                .inc();
        }
    }

    /// Counts `n` forwarded envelopes with `result`.
    pub fn peer_forwards(&self, result: &str, n: usize) {
        self.peer_forwards_total
            .with_label_values(&[result])
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Sets `rossby_tls_certificate_expiry_timestamp_seconds` from the leaf
    /// certificate (DER) and returns its not-after time. A certificate whose
    /// validity cannot be read leaves the gauge at 0, which the expiry alert treats
    /// as expired: an unknown expiry is worth a look.
    pub fn set_certificate_expiry(&self, leaf_der: &[u8]) -> Option<i64> {
        let not_after = certificate_not_after(leaf_der);
        self.tls_certificate_expiry_timestamp_seconds
            .set(not_after.unwrap_or(0));
        not_after
    }

    /// Counts one rejected authentication.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures_total.with_label_values(&[reason]).inc();
    }

    /// Counts a failed storage operation under its kind; conflicts are counted
    /// separately by the caller.
    fn storage_error(&self, err: &StorageError) {
        self.storage_errors_total
            .with_label_values(&[storage_error_kind(err)])
            .inc();
    }

    /// This registry and the process-wide default registry (tikv-client's metrics)
    /// in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        let own: std::collections::HashSet<String> =
            families.iter().map(|f| f.get_name().to_string()).collect();
        families.extend(
            prometheus::default_registry()
                .gather()
                .into_iter()
                .filter(|f| !own.contains(f.get_name())),
        );
        let mut out = Vec::new();
        match TextEncoder::new().encode(&families, &mut out) {
            Ok(()) => String::from_utf8_lossy(&out).into_owned(),
            Err(err) => format!("# metrics could not be encoded: {err}\n"),
        }
    }
}

/// The not-after time (Unix seconds) of an X.509 certificate in DER, or `None`
/// when it is not a certificate. Only the outer structure is walked (Certificate,
/// TBSCertificate, Validity, RFC 5280 section 4.1); BER is accepted, as some
/// issuers are not strict about DER.
pub fn certificate_not_after(der: &[u8]) -> Option<i64> {
    yasna::parse_ber(der, |reader| {
        reader.read_sequence(|certificate| {
            let not_after = certificate.next().read_sequence(|tbs| {
                // version [0] EXPLICIT, absent in v1 certificates.
                tbs.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_der()))?;
                tbs.next().read_der()?; // serialNumber
                tbs.next().read_der()?; // signature (algorithm)
                tbs.next().read_der()?; // issuer
                let not_after = tbs.next().read_sequence(|validity| {
                    read_x509_time(validity.next())?; // notBefore
                    read_x509_time(validity.next())
                })?;
                // subject, subjectPublicKeyInfo, unique ids, extensions.
                while tbs.read_optional(|r| r.read_der())?.is_some() {}
                Ok(not_after)
            })?;
            certificate.next().read_der()?; // signatureAlgorithm
            certificate.next().read_der()?; // signatureValue
            Ok(not_after)
        })
    })
    .ok()
}

/// An X.509 `Time` (UTCTime or GeneralizedTime) as Unix seconds.
fn read_x509_time(reader: yasna::BERReader<'_, '_>) -> yasna::ASN1Result<i64> {
    if reader.lookahead_tag()? == yasna::tags::TAG_UTCTIME {
        Ok(reader.read_utctime()?.datetime().unix_timestamp())
    } else {
        Ok(reader.read_generalized_time()?.datetime().unix_timestamp())
    }
}

/// The `kind` label of a storage error.
pub fn storage_error_kind(err: &StorageError) -> &'static str {
    match err {
        StorageError::Conflict(_) => "conflict",
        StorageError::Undetermined(_) => "undetermined",
        StorageError::Unavailable(_) => "unavailable",
        StorageError::RetriesExhausted { .. } => "retries_exhausted",
        StorageError::Invalid(_) => "invalid",
    }
}

/// A [`KvStore`] decorator that measures every transaction: its duration from
/// `begin` to `commit` or `rollback` (or being dropped), conflicts, and other
/// errors by kind. The gateway wraps the opened store with it before building the
/// domain `Store`, so every domain transaction is measured without the domain code
/// knowing about metrics.
pub struct InstrumentedKv {
    inner: Kv,
    metrics: Arc<Metrics>,
}

impl InstrumentedKv {
    /// Wraps `inner`, reporting into `metrics`.
    pub fn new(inner: Kv, metrics: Arc<Metrics>) -> Self {
        InstrumentedKv { inner, metrics }
    }

    /// Wraps `inner` and returns the result as a shared handle.
    pub fn wrap(inner: Kv, metrics: Arc<Metrics>) -> Kv {
        Arc::new(Self::new(inner, metrics))
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Kv {
        &self.inner
    }
}

#[async_trait]
impl KvStore for InstrumentedKv {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn begin(&self) -> StorageResult<Box<dyn Transaction>> {
        let started = Instant::now();
        let begun = self.inner.begin().await;
        self.instrument(started, begun)
    }

    async fn begin_after(&self, prior: CommitDone) -> StorageResult<Box<dyn Transaction>> {
        let started = Instant::now();
        let begun = self.inner.begin_after(prior).await;
        self.instrument(started, begun)
    }

    async fn begin_recent_read(&self) -> StorageResult<Box<dyn Transaction>> {
        let started = Instant::now();
        let begun = self.inner.begin_recent_read().await;
        self.instrument(started, begun)
    }
}

impl InstrumentedKv {
    fn instrument(
        &self,
        started: Instant,
        begun: StorageResult<Box<dyn Transaction>>,
    ) -> StorageResult<Box<dyn Transaction>> {
        match begun {
            Ok(txn) => Ok(Box::new(InstrumentedTxn {
                inner: Some(txn),
                metrics: self.metrics.clone(),
                started,
                conflicted: false,
            })),
            Err(err) => {
                self.metrics.storage_error(&err);
                Err(err)
            }
        }
    }
}

/// A transaction of an [`InstrumentedKv`]. `inner` is `None` once committed or
/// rolled back; dropping a transaction that is still open records its duration too
/// (the backend rolls it back), so cancelled requests are not invisible.
struct InstrumentedTxn {
    inner: Option<Box<dyn Transaction>>,
    metrics: Arc<Metrics>,
    started: Instant,
    conflicted: bool,
}

impl InstrumentedTxn {
    fn txn(&mut self) -> StorageResult<&mut Box<dyn Transaction>> {
        self.inner
            .as_mut()
            .ok_or_else(|| StorageError::Invalid("transaction already finished".into()))
    }

    /// Counts an operation's failure: a conflict once per transaction (the retry
    /// helper re-runs the whole transaction), anything else by kind.
    fn note<T>(&mut self, result: StorageResult<T>) -> StorageResult<T> {
        if let Err(err) = &result {
            if matches!(err, StorageError::Conflict(_)) {
                if !self.conflicted {
                    self.conflicted = true;
                    self.metrics.storage_conflicts_total.inc();
                    self.metrics.storage_retries_total.inc();
                }
            } else {
                self.metrics.storage_error(err);
            }
        }
        result
    }

    fn observe_duration(&self) {
        self.metrics
            .storage_transaction_duration_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for InstrumentedTxn {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.observe_duration();
        }
    }
}

#[async_trait]
impl Transaction for InstrumentedTxn {
    async fn get(&mut self, key: &[u8]) -> StorageResult<Option<Value>> {
        let result = self.txn()?.get(key).await;
        self.note(result)
    }

    async fn batch_get(&mut self, keys: &[Key]) -> StorageResult<Vec<Option<Value>>> {
        let result = self.txn()?.batch_get(keys).await;
        self.note(result)
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> StorageResult<Vec<KvPair>> {
        let result = self.txn()?.scan(range, limit, order).await;
        self.note(result)
    }

    async fn get_for_update(&mut self, key: &[u8]) -> StorageResult<Option<Value>> {
        let result = self.txn()?.get_for_update(key).await;
        self.note(result)
    }

    async fn put(&mut self, key: Key, value: Value) -> StorageResult<()> {
        let result = self.txn()?.put(key, value).await;
        self.note(result)
    }

    async fn delete(&mut self, key: Key) -> StorageResult<()> {
        let result = self.txn()?.delete(key).await;
        self.note(result)
    }

    async fn commit(mut self: Box<Self>) -> StorageResult<()> {
        let result = match self.inner.take() {
            Some(inner) => inner.commit().await,
            None => Err(StorageError::Invalid("transaction already finished".into())),
        };
        self.observe_duration();
        self.note(result)
    }

    async fn rollback(mut self: Box<Self>) -> StorageResult<()> {
        let result = match self.inner.take() {
            Some(inner) => inner.rollback().await,
            None => Ok(()),
        };
        self.observe_duration();
        self.note(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_storage::kv::memory::MemoryStore;

    #[test]
    fn requests_are_counted_under_their_rpc_and_status_names() {
        let metrics = Metrics::new();
        let count = |rpc: &str, status: &str| {
            metrics
                .requests_total
                .with_label_values(&[rpc, status])
                .get()
        };
        for _ in 0..3 {
            metrics.observe_rpc(Method::Send as i32, Status::Ok, Duration::from_millis(1));
        }
        metrics.observe_rpc(
            Method::RefreshCredentials as i32,
            Status::StaleDevices,
            Duration::ZERO,
        );
        metrics.observe_rpc(9999, Status::UnknownMethod, Duration::ZERO);
        metrics.observe_rpc(0, Status::BadRequest, Duration::ZERO);
        assert_eq!(count("send", "ok"), 3);
        assert_eq!(count("refresh_credentials", "stale_devices"), 1);
        assert_eq!(count("unknown", "unknown_method"), 1);
        assert_eq!(count("unknown", "bad_request"), 1);
        assert_eq!(
            metrics
                .request_duration_seconds
                .with_label_values(&["send", "ok"])
                .get_sample_count(),
            3
        );
        // Only pairs that occurred are exported.
        assert!(!metrics.render().contains("status=\"too_large\""));
    }

    #[test]
    fn every_metric_is_rendered_with_the_rossby_prefix() {
        let metrics = Metrics::new();
        metrics.observe_request("ping", "ok", Duration::from_millis(2));
        metrics.auth_failure("bad_mac");
        metrics.peer_notifications("sent", 2);
        metrics
            .storage_errors_total
            .with_label_values(&["unavailable"])
            .inc();
        let text = metrics.render();
        for name in [
            "rossby_requests_total{rpc=\"ping\",status=\"ok\"} 1",
            "rossby_request_duration_seconds_bucket{rpc=\"ping\",status=\"ok\",le=\"0.0025\"} 1",
            "rossby_open_connections 0",
            "rossby_auth_failures_total{reason=\"bad_mac\"} 1",
            "rossby_storage_transaction_duration_seconds_count 0",
            "rossby_storage_conflicts_total 0",
            "rossby_storage_retries_total 0",
            "rossby_storage_errors_total{kind=\"unavailable\"} 1",
            "rossby_verification_codes_sent_total 0",
            "rossby_pushes_total 0",
            "rossby_envelopes_enqueued_total 0",
            "rossby_bytes_in_flight{budget=\"connection\"} 0",
            "rossby_bytes_in_flight{budget=\"device\"} 0",
            "rossby_push_queue_bytes 0",
            "rossby_connections_refused_total{reason=\"per_address\"} 0",
            "rossby_quic_retries_total 0",
            "rossby_streams_reset_total{reason=\"write_timeout\"} 0",
            "rossby_build_info{version=\"",
            "rossby_peer_notifications_total{result=\"sent\"} 2",
            "rossby_maintenance_work_total{kind=\"envelopes\",task=\"expiry\"} 0",
            "rossby_maintenance_work_total{kind=\"boxes\",task=\"purge\"} 0",
            "rossby_maintenance_lag_seconds{task=\"expiry\"} 0",
            "rossby_maintenance_lag_seconds{task=\"purge\"} 0",
            "rossby_maintenance_pending_purges 0",
            "rossby_maintenance_leases_held{task=\"purge\"} 0",
            "rossby_tls_certificate_expiry_timestamp_seconds 0",
            "rossby_region_code 0",
            "rossby_ownership_lease_held 0",
            "rossby_ownership_live_gateways 0",
            "rossby_storage_errors_total{kind=\"undetermined\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn certificate_expiry_is_read_from_the_certificate() {
        // 2031-05-06 (encoded as UTCTime) and 2051-01-02 (RFC 5280 requires
        // GeneralizedTime from 2050 on), both at midnight UTC.
        for ((year, month, day), unix) in
            [((2031, 5, 6), 1_935_792_000), ((2051, 1, 2), 2_556_230_400)]
        {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, month, day);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(certificate_not_after(cert.der()), Some(unix));
            let metrics = Metrics::new();
            assert_eq!(metrics.set_certificate_expiry(cert.der()), Some(unix));
            assert_eq!(metrics.tls_certificate_expiry_timestamp_seconds.get(), unix);
        }
        let metrics = Metrics::new();
        assert_eq!(metrics.set_certificate_expiry(b"not a certificate"), None);
        assert_eq!(metrics.tls_certificate_expiry_timestamp_seconds.get(), 0);
        assert_eq!(certificate_not_after(&[]), None);
    }

    #[test]
    fn instances_do_not_share_counts() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.pushes_total.inc();
        assert_eq!(a.pushes_total.get(), 1);
        assert_eq!(b.pushes_total.get(), 0);
    }

    #[tokio::test]
    async fn instrumented_kv_times_transactions_and_counts_conflicts() {
        let metrics = Arc::new(Metrics::new());
        let kv = InstrumentedKv::wrap(Arc::new(MemoryStore::new()), metrics.clone());
        assert_eq!(kv.backend(), "memory");

        let mut t = kv.begin().await.unwrap();
        t.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
        assert_eq!(t.get(b"k").await.unwrap(), Some(b"v".to_vec()));
        t.commit().await.unwrap();

        // Two transactions write the same key: the second commit conflicts.
        let mut a = kv.begin().await.unwrap();
        let mut b = kv.begin().await.unwrap();
        a.put(b"k".to_vec(), b"a".to_vec()).await.unwrap();
        b.put(b"k".to_vec(), b"b".to_vec()).await.unwrap();
        a.commit().await.unwrap();
        assert!(matches!(b.commit().await, Err(StorageError::Conflict(_))));

        // A dropped transaction is measured too.
        drop(kv.begin().await.unwrap());
        let r = kv.begin().await.unwrap();
        r.rollback().await.unwrap();

        assert_eq!(
            metrics
                .storage_transaction_duration_seconds
                .get_sample_count(),
            5
        );
        assert_eq!(metrics.storage_conflicts_total.get(), 1);
        assert_eq!(metrics.storage_retries_total.get(), 1);
        let value =
            rossby_storage::kv::transact!(kv, &rossby_storage::RetryPolicy::default(), |txn| {
                txn.get(b"k").await
            })
            .unwrap();
        assert_eq!(value, Some(b"a".to_vec()));
    }
}
