//! The Rossby API: turns one decoded [`pb::Request`] into one [`pb::Response`].
//!
//! [`Api::handle`] checks, in order: the rate limit of the source address
//! (`RATE_LIMITED`), the protocol version (`UNSUPPORTED_VERSION`), the method
//! (`UNKNOWN_METHOD`), then for every method except Ping, Health, Register and
//! Authorize the Hawk authorization ([`crate::auth`]) and the device's rate limit,
//! then decodes the body (`BAD_REQUEST`) and runs the RPC. Every reply carries the
//! gateway clock in `server_time_ms`, and replies to authenticated requests carry
//! `home_region` when the caller's box is homed in another region and
//! `credentials_outdated` when the caller signed with credentials of a server
//! secret version other than the current one.
//!
//! The RPCs live in one module per area: [`registration`] (Register, Authorize,
//! LinkDevice, RefreshCredentials), [`directory`] (RequestKey, KeyPackages, ListDevices),
//! [`messaging`] (Send, Fetch, Ack, Subscribe), [`account`] (Block, Unblock,
//! UpdateSettings, RemoveDevice, DeleteAccount), [`identifiers`] (AddIdentifier,
//! ConfirmIdentifier, RemoveIdentifier, ListIdentifiers,
//! SetIdentifierDiscoverable), [`attachments`] (CreateUpload, UploadPart,
//! UploadStatus, CompleteUpload, DownloadPart) and [`service`] (Ping, Health).
//!
//! # Stored device keys
//! A device record keeps the device's Ed25519 identity key in `identity_key` and
//! its whole signed public bundle (a protobuf-encoded [`pb::KeyBundle`]) in
//! `encryption_key`; RequestKey, ListDevices and stale-device answers hand that
//! bundle out unchanged, so clients verify its signature themselves.
//!
//! # Errors
//! Handlers fail with a [`Failure`]: a status, a human-readable message that never
//! contains identifiers, keys, ciphertext or internal details, and for
//! `RATE_LIMITED` the time to wait. Storage errors map as documented on
//! [`Failure::from`].

pub mod account;
pub mod attachments;
mod box_locks;
pub mod directory;
pub mod groups;
pub mod identifiers;
pub mod messaging;
mod pin;
pub mod push;
pub mod registration;
mod routing;
pub mod sealed;
pub mod service;

#[cfg(test)]
pub(crate) mod testkit;

/// Default Argon2id memory cost of registration-lock hashes, in KiB.
pub const PIN_MEMORY_KIB: u32 = pin::DEFAULT_MEMORY_KIB;

use crate::auth::device_cache::DeviceCache;
use crate::auth::secrets::ServerSecrets;
use crate::auth::{AuthFailure, Authenticated, Authenticator, DEFAULT_NONCE_CAPACITY, Presented};
use crate::context::ConnContext;
use crate::metrics::Metrics;
use crate::peer::ownership::Owner;
use crate::peer::server::OwnedWrites;
use crate::presence::Presence;
use crate::ratelimit::{Limited, RateLimiter};
use crate::settings::ApiSettings;
use crate::verifier::{self, Verifier};
use prost::Message;
use rossby_keyspace::{BoxId, DeviceId, Identifier};
use rossby_protocol::pb::{self, Method, Status};
use rossby_protocol::{PROTOCOL_VERSION, hawk::EXPORTER_LEN};
use rossby_storage::tables::Store;
use rossby_storage::tables::records::Device;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The error of [`Api::new`]: the crate's error type, with the API's complaints in
/// its [`Api`](crate::error::Error::Api) variant.
pub type ApiError = crate::error::Error;

/// Bytes reserved for a reply whose size is not bounded by a request field (a
/// reply that turns out larger waits for the difference once encoded).
pub const SMALL_REPLY_BYTES: usize = 4 * 1024;

/// Bytes of a fetched envelope's fields besides its payload (ids, sequence
/// number, timestamp, the sender's identity key, tags and lengths: 118 at
/// most), for a Fetch reply's estimate.
pub const ENVELOPE_FIELD_BYTES: usize = 128;

/// When a request refused for want of device budget may try again.
const BUDGET_RETRY_AFTER: Duration = Duration::from_millis(500);

/// Longest device label accepted, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;

/// The API of one gateway. Cheap to share: clone the `Arc` it lives in, or call
/// it from many tasks at once.
pub struct Api {
    shared: Arc<Shared>,
}

/// What every handler needs.
pub(crate) struct Shared {
    pub(crate) settings: ApiSettings,
    pub(crate) store: Store,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) auth: Authenticator,
    pub(crate) limits: RateLimiter,
    pub(crate) presence: Presence,
    pub(crate) verifier: Box<dyn Verifier>,
    pub(crate) enqueuer: Arc<messaging::Enqueuer>,
    /// Serialises acknowledgements per box (see [`box_locks`]).
    pub(crate) box_locks: box_locks::BoxLocks,
    /// The object store of attachment parts, once attached
    /// ([`Api::set_blob_store`]); until then the attachment RPCs answer
    /// `UNAVAILABLE`.
    pub(crate) blobs: std::sync::OnceLock<crate::blobstore::BlobStore>,
    /// The sender certificate keys of the server secrets ([`sealed`]).
    pub(crate) certificate_keys: sealed::CertificateKeys,
    /// Bytes of replies in flight per device ([`crate::budget`]).
    pub(crate) device_budgets: crate::budget::DeviceBudgets,
}

/// Where a request came from: [`ConnContext`] without the requirement of a QUIC
/// connection, so the API can be driven in-process (tests, benchmarks). Without a
/// connection, Subscribe answers `UNAVAILABLE`.
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    /// Process-unique id of the connection.
    pub conn_id: u64,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The connection's TLS exporter value (what Hawk's `ext` must carry).
    pub exporter: &'a [u8; EXPORTER_LEN],
    /// The connection, for push streams.
    pub connection: Option<&'a quinn::Connection>,
    /// Where an authenticated request's claim on its device's budget goes, to be
    /// held until its reply is written; `None`: no device budget is charged.
    pub reply: Option<&'a crate::budget::ReplySlot>,
}

impl<'a> From<&'a ConnContext> for Origin<'a> {
    fn from(ctx: &'a ConnContext) -> Self {
        Origin {
            conn_id: ctx.id,
            remote: ctx.remote,
            exporter: &ctx.exporter,
            connection: Some(&ctx.connection),
            reply: None,
        }
    }
}

impl Api {
    /// Builds the API over a store, with `settings.server_secret` as the only
    /// server secret (version 1). Fails when the settings are unusable (server
    /// secret shorter than 32 bytes, zero skew or attempts, bad verifier URL).
    pub fn new(
        settings: ApiSettings,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Api, ApiError> {
        if settings.server_secret.len() < crate::auth::keys::MIN_SERVER_SECRET {
            return Err(ApiError::Api(format!(
                "the server secret must have at least {} bytes",
                crate::auth::keys::MIN_SERVER_SECRET
            )));
        }
        let secrets =
            ServerSecrets::single(settings.server_secret.clone()).map_err(ApiError::Api)?;
        Api::with_server_secrets(settings, secrets, store, metrics)
    }

    /// Builds the API over a store with several server secret versions
    /// ([`crate::auth::secrets`]); `settings.server_secret` is not used. Fails
    /// when the settings are unusable (zero skew or attempts, bad verifier URL).
    pub fn with_server_secrets(
        settings: ApiSettings,
        secrets: ServerSecrets,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Api, ApiError> {
        let invalid = |msg: String| ApiError::Api(msg);
        if settings.hawk_skew.is_zero() {
            return Err(invalid("the Hawk clock skew must be positive".into()));
        }
        if settings.code_max_attempts == 0 {
            return Err(invalid("code_max_attempts must be at least 1".into()));
        }
        if settings.code_ttl.is_zero() {
            return Err(invalid("the code lifetime must be positive".into()));
        }
        if settings.max_recipients_per_send == 0 || settings.max_fetch_count == 0 {
            return Err(invalid(
                "max_recipients_per_send and max_fetch_count must be at least 1".into(),
            ));
        }
        let verifier =
            verifier::from_spec(&settings.verifier).map_err(|e| invalid(e.to_string()))?;
        let mut store = store;
        store.limits = settings.limits.clone();
        let presence = Presence::new();
        let certificate_keys = sealed::CertificateKeys::derive(&secrets).map_err(invalid)?;
        let auth = Authenticator::new(
            secrets,
            settings.service.clone(),
            settings.hawk_skew,
            DEFAULT_NONCE_CAPACITY,
            DeviceCache::new(settings.device_cache_ttl, settings.device_cache_entries),
        );
        let enqueuer = Arc::new(messaging::Enqueuer::new(
            store.clone(),
            presence.clone(),
            metrics.clone(),
        ));
        let device_budgets = crate::budget::DeviceBudgets::new(
            settings.device_budget_bytes,
            Some(metrics.bytes_in_flight.with_label_values(&["device"])),
        );
        Ok(Api {
            shared: Arc::new(Shared {
                device_budgets,
                limits: RateLimiter::new(&settings.rate_limits),
                settings,
                store,
                metrics,
                auth,
                presence,
                verifier,
                enqueuer,
                box_locks: box_locks::BoxLocks::default(),
                blobs: std::sync::OnceLock::new(),
                certificate_keys,
            }),
        })
    }

    /// The bytes a reply to `request` may take, reserved in the connection's and
    /// the device's budgets before it is handled: a Fetch's byte bound plus the
    /// envelopes' fields, a DownloadPart's frame limit, otherwise
    /// [`SMALL_REPLY_BYTES`] (a reply that turns out larger waits for the
    /// difference once encoded).
    pub fn reply_estimate(&self, request: &pb::Request) -> usize {
        let settings = &self.shared.settings;
        match Method::try_from(request.method) {
            Ok(Method::Fetch) => {
                let asked = pb::FetchRequest::decode(request.body.as_slice())
                    .map(|r| (r.max_bytes, r.max_count))
                    .unwrap_or((0, 0));
                let bound = |asked: u32, max: usize| match asked {
                    0 => max,
                    n => usize::try_from(n).unwrap_or(usize::MAX).min(max),
                };
                let count = bound(asked.1, settings.max_fetch_count);
                bound(asked.0, settings.max_fetch_bytes)
                    .saturating_add(count.saturating_mul(ENVELOPE_FIELD_BYTES))
                    .saturating_add(SMALL_REPLY_BYTES)
            }
            Ok(Method::DownloadPart) => settings.max_frame_bytes,
            _ => SMALL_REPLY_BYTES,
        }
    }

    /// Answers one request that arrived on a QUIC connection. Never panics; always
    /// answers.
    pub async fn handle(&self, ctx: &ConnContext, request: pb::Request) -> pb::Response {
        self.handle_from(&Origin::from(ctx), request).await
    }

    /// Answers one request from `origin` (see [`Origin`]).
    pub async fn handle_from(&self, origin: &Origin<'_>, request: pb::Request) -> pb::Response {
        let (result, hints) = self.shared.dispatch(origin, request).await;
        let mut response = match result {
            Ok(body) => pb::Response {
                status: Status::Ok as i32,
                body,
                ..pb::Response::default()
            },
            Err(failure) => self.shared.failure_response(failure).await,
        };
        response.home_region = hints.home.0;
        response.home_gateways = hints.home.1;
        response.credentials_outdated = hints.credentials_outdated;
        response.server_time_ms = now_ms();
        response
    }

    /// Attaches the object store of attachment parts. Returns false (and
    /// changes nothing) if one was attached already.
    pub fn set_blob_store(&self, blobs: crate::blobstore::BlobStore) -> bool {
        self.shared.blobs.set(blobs).is_ok()
    }

    /// Attaches the wake-up scheduler: from now on commits of messages that wake
    /// hand their boxes to it, and the push RPCs accept its providers. False
    /// (and nothing changes) if one was attached already.
    pub fn attach_pusher(&self, pusher: crate::push::Pusher) -> bool {
        self.shared.enqueuer.pusher.set(pusher).is_ok()
    }

    /// Forgets everything about a closed connection (its push subscriptions).
    pub fn connection_closed(&self, ctx: &ConnContext) {
        self.connection_closed_id(ctx.id);
    }

    /// [`Api::connection_closed`] by connection id.
    pub fn connection_closed_id(&self, conn_id: u64) {
        self.shared.presence.connection_closed(conn_id);
    }

    /// The presence registry (online devices), for observability.
    pub fn presence(&self) -> &Presence {
        &self.shared.presence
    }

    /// Attaches the gateway-to-gateway machinery: from now on commits are
    /// announced to other gateways, and Subscribe and waiting fetches hold
    /// presence leases. Returns false (and changes nothing) if peers were
    /// attached already.
    pub fn attach_peers(&self, peers: Arc<crate::peer::Peers>) -> bool {
        if !self.shared.enqueuer.attach(peers.clone()) {
            return false;
        }
        let handler: std::sync::Weak<Shared> = Arc::downgrade(&self.shared);
        peers.serve_forwarded(handler);
        true
    }

    /// How often a waiting fetch re-reads storage for messages committed through
    /// other gateways (the fallback for lost notifications); `None` switches that
    /// polling off. The default is [`messaging::FETCH_POLL_INTERVAL`].
    pub fn set_fetch_poll_interval(&self, interval: Option<Duration>) {
        self.shared
            .enqueuer
            .remote
            .set_fetch_poll_interval(interval);
    }
}

/// `home_region` and `home_gateways` of a reply (see [`routing::home_hint`]).
type HomeHint = (u32, Vec<String>);

/// What a reply says besides its outcome, once the caller is authenticated.
#[derive(Default)]
struct Hints {
    /// Where the caller's box is homed, when that is another region.
    home: HomeHint,
    /// The caller signed with credentials of a non-current server secret version.
    credentials_outdated: bool,
}

/// One lookup by identifier against the caller's account's discovery budget.
pub(crate) fn discovery_limit(shared: &Shared, caller: &Authenticated) -> Result<(), Failure> {
    shared
        .limits
        .discovery(caller.box_id)
        .map_err(|l| Failure::rate_limited(l, "too many lookups by identifier from this account"))
}

/// Refuses an account that is in debt for bytes its devices made the gateway
/// store ([`crate::ratelimit::RateLimiter::may_store`]).
pub(crate) fn may_store(shared: &Shared, caller: &Authenticated) -> Result<(), Failure> {
    shared.limits.may_store(caller.box_id).map_err(|limited| {
        Failure::rate_limited(
            limited,
            "this account stored too much for its recipients recently; wait",
        )
    })
}

impl Shared {
    /// Runs the checks and the RPC; returns the encoded response body or the
    /// failure, and where the caller's box is homed when that is another region.
    async fn dispatch(
        &self,
        origin: &Origin<'_>,
        request: pb::Request,
    ) -> (Result<Vec<u8>, Failure>, Hints) {
        // First, so that no request (not even one this gateway cannot parse any
        // further) escapes the per-address budget.
        if let Err(limited) = self.limits.ip(origin.remote.ip()) {
            return (
                Err(Failure::rate_limited(
                    limited,
                    "too many requests from this address",
                )),
                Hints::default(),
            );
        }
        if request.version != PROTOCOL_VERSION {
            let failure = Failure::new(
                Status::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; this gateway speaks version {PROTOCOL_VERSION}",
                    request.version
                ),
            );
            return (Err(failure), Hints::default());
        }
        let method = match Method::try_from(request.method) {
            Ok(Method::Unspecified) | Err(_) => {
                let failure = Failure::new(
                    Status::UnknownMethod,
                    format!("method {} is not known to this gateway", request.method),
                );
                return (Err(failure), Hints::default());
            }
            Ok(method) => method,
        };
        let body = request.body.as_slice();
        let result = match method {
            Method::Ping => encode(service::ping(self)),
            Method::Health => encode(Ok(service::health(self).await)),
            Method::Register => encode(registration::register(self, origin, body).await),
            Method::Authorize => encode(registration::authorize(self, body).await),
            Method::SealedSend => encode(sealed::sealed_send(self, body).await),
            _ => {
                let caller = match self.authenticate(origin, method, &request).await {
                    Ok(caller) => caller,
                    Err(failure) => return (Err(failure), Hints::default()),
                };
                let hints = Hints {
                    home: routing::home_hint(&self.settings, caller.box_id),
                    credentials_outdated: caller.credentials_outdated,
                };
                if let Err(limited) = self.limits.device(caller.box_id, caller.device_id) {
                    let failure =
                        Failure::rate_limited(limited, "too many requests from this device");
                    return (Err(failure), hints);
                }
                if let Some(slot) = origin.reply {
                    let Some(held) = self.device_budgets.try_reserve(
                        caller.box_id,
                        caller.device_id,
                        slot.estimate(),
                    ) else {
                        let failure = Failure {
                            retry_after: Some(BUDGET_RETRY_AFTER),
                            ..Failure::new(
                                Status::RateLimited,
                                "too many reply bytes in flight for this device; read the replies or wait",
                            )
                        };
                        return (Err(failure), hints);
                    };
                    slot.put(held);
                }
                if let Some(result) = self.forward_to_owner(method, &caller, body).await {
                    return (result, hints);
                }
                let result = self.authenticated(origin, method, &caller, body).await;
                return (result, hints);
            }
        };
        (result, Hints::default())
    }

    async fn authenticated(
        &self,
        origin: &Origin<'_>,
        method: Method,
        caller: &Authenticated,
        body: &[u8],
    ) -> Result<Vec<u8>, Failure> {
        match method {
            Method::LinkDevice => encode(registration::link_device(self, caller, body).await),
            Method::RequestKey => encode(directory::request_key(self, caller, body).await),
            Method::PublishKeyPackages => {
                encode(directory::publish_key_packages(self, caller, body).await)
            }
            Method::ClaimKeyPackages => {
                encode(directory::claim_key_packages(self, caller, body).await)
            }
            Method::ListDevices => encode(directory::list_devices(self, caller, body).await),
            Method::Send => encode(messaging::send(self, caller, body).await),
            Method::Fetch => encode(messaging::fetch(self, caller, body).await),
            Method::Ack => encode(messaging::ack(self, caller, body).await),
            Method::Subscribe => encode(messaging::subscribe(self, origin, caller, body).await),
            Method::Block => encode(account::block(self, caller, body).await),
            Method::Unblock => encode(account::unblock(self, caller, body).await),
            Method::RemoveContact => encode(account::remove_contact(self, caller, body).await),
            Method::UpdateSettings => encode(account::update_settings(self, caller, body).await),
            Method::RemoveDevice => encode(account::remove_device(self, caller, body).await),
            Method::DeleteAccount => encode(account::delete_account(self, caller, body).await),
            Method::CreateGroup => encode(groups::create_group(self, caller, body).await),
            Method::GroupCommit => encode(groups::group_commit(self, caller, body).await),
            Method::GroupSend => encode(groups::group_send(self, caller, body).await),
            Method::LeaveGroup => encode(groups::leave_group(self, caller, body).await),
            Method::GroupInfo => encode(groups::group_info(self, caller, body).await),
            Method::RefreshCredentials => {
                encode(registration::refresh_credentials(self, caller, body).await)
            }
            Method::AddIdentifier => encode(identifiers::add(self, origin, caller, body).await),
            Method::ConfirmIdentifier => encode(identifiers::confirm(self, caller, body).await),
            Method::RemoveIdentifier => encode(identifiers::remove(self, caller, body).await),
            Method::ListIdentifiers => encode(identifiers::list(self, caller, body).await),
            Method::SetIdentifierDiscoverable => {
                encode(identifiers::set_discoverable(self, caller, body).await)
            }
            Method::CreateUpload => encode(attachments::create_upload(self, caller, body).await),
            Method::UploadPart => encode(attachments::upload_part(self, caller, body).await),
            Method::UploadStatus => encode(attachments::upload_status(self, caller, body).await),
            Method::CompleteUpload => {
                encode(attachments::complete_upload(self, caller, body).await)
            }
            Method::DownloadPart => encode(attachments::download_part(self, caller, body).await),
            Method::RegisterPushToken => encode(push::register(self, caller, body).await),
            Method::RemovePushToken => encode(push::remove(self, caller, body).await),
            Method::PushInfo => encode(push::info(self, body)),
            Method::GetSenderCertificate => {
                encode(sealed::get_certificate(self, caller, body).await)
            }
            // Unauthenticated methods were answered by the caller of this function.
            Method::Unspecified
            | Method::Ping
            | Method::Health
            | Method::Register
            | Method::Authorize
            | Method::SealedSend => Err(Failure::internal()),
        }
    }

    /// Sends a request that writes the caller's own box, or a group's, to the
    /// owner of that box when that is another gateway, and returns its answer;
    /// `None` means: execute it here (this gateway owns the box, the method writes
    /// no box, or the owner could not be reached: every such method is safe to
    /// run where it arrived, since storage conflicts and dedup records keep two
    /// writers of one box exact).
    async fn forward_to_owner(
        &self,
        method: Method,
        caller: &Authenticated,
        body: &[u8],
    ) -> Option<Result<Vec<u8>, Failure>> {
        let target = owning_box(method, caller, body)?;
        let peers = self.enqueuer.remote.peers()?;
        let Owner::Remote(address) = peers.owner_of(target) else {
            return None;
        };
        let call = pb::PeerCall {
            method: method as i32,
            body: body.to_vec(),
            box_id: caller.box_id.as_bytes().to_vec(),
            device_id: caller.device_id.as_bytes().to_vec(),
            secret_version: caller.secret_version,
            key_version: caller.key_version,
        };
        let answer = peers.call(&address, call, target.home_region()).await;
        if REVOKING_METHODS.contains(&method) {
            // The owner recorded the revocation; this gateway serves the box's
            // devices too, and must refuse a removed one at once as well.
            self.auth.devices().revoke_box(caller.box_id);
        }
        match answer {
            Ok(response) => Some(from_response(response)),
            Err(why) => {
                tracing::debug!(peer = %address, error = %why, "owner unreachable; executing here");
                None
            }
        }
    }

    /// Executes a request another gateway authenticated and forwarded here.
    async fn execute_call(&self, call: pb::PeerCall) -> pb::Response {
        let result = async {
            let method = Method::try_from(call.method)
                .ok()
                .filter(|m| OWNER_METHODS.contains(m) || GROUP_METHODS.contains(m))
                .ok_or_else(|| Failure::bad_request("this method is not forwarded"))?;
            let box_id = parse_box_id(&call.box_id)?;
            let device_id = DeviceId::try_from_slice(&call.device_id)
                .map_err(|_| Failure::bad_request("a device id must have 16 bytes"))?;
            // The same check as at the edge (the cache or a recent snapshot,
            // refusals confirmed).
            let Some(identity_key) = self
                .auth
                .device_authorized(&self.store, box_id, device_id, call.key_version)
                .await?
            else {
                return Err(Failure::new(Status::Unauthenticated, "unknown credentials"));
            };
            let caller = Authenticated {
                box_id,
                device_id,
                key_version: call.key_version,
                secret_version: call.secret_version,
                credentials_outdated: false,
                identity_key,
            };
            let exporter = [0u8; EXPORTER_LEN];
            let origin = Origin {
                conn_id: 0,
                remote: SocketAddr::from(([0, 0, 0, 0], 0)),
                exporter: &exporter,
                connection: None,
                reply: None,
            };
            self.authenticated(&origin, method, &caller, &call.body)
                .await
        }
        .await;
        match result {
            Ok(body) => pb::Response {
                status: Status::Ok as i32,
                body,
                ..pb::Response::default()
            },
            Err(failure) => self.failure_response(failure).await,
        }
    }

    async fn authenticate(
        &self,
        origin: &Origin<'_>,
        method: Method,
        request: &pb::Request,
    ) -> Result<Authenticated, Failure> {
        let presented = Presented {
            method,
            body: &request.body,
            authorization: &request.authorization,
            exporter: origin.exporter,
        };
        match self
            .auth
            .authenticate(&self.store, presented, SystemTime::now())
            .await
        {
            Ok(caller) => Ok(caller),
            Err(AuthFailure::Storage(err)) => Err(Failure::from(err)),
            Err(failure) => {
                if let Some(reason) = failure.reason() {
                    self.metrics.auth_failure(reason);
                }
                tracing::debug!(reason = failure.reason(), "request not authenticated");
                Err(Failure::new(failure.status(), failure.message()))
            }
        }
    }

    /// The response for a failure; `STALE_DEVICES` carries the current device
    /// lists of the boxes concerned.
    async fn failure_response(&self, failure: Failure) -> pb::Response {
        let mut body = failure.body;
        if failure.status == Status::StaleDevices {
            let mut details = pb::StaleDevices::default();
            for box_id in &failure.stale {
                match directory::device_list(self, *box_id).await {
                    Ok(list) => details.current.push(list),
                    Err(err) => {
                        return pb::Response {
                            status: err.status as i32,
                            message: err.message,
                            ..pb::Response::default()
                        };
                    }
                }
            }
            body = details.encode_to_vec();
        }
        pb::Response {
            status: failure.status as i32,
            message: failure.message,
            body,
            retry_after_ms: failure.retry_after.map_or(0, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
            }),
            ..pb::Response::default()
        }
    }
}

/// The methods that write the caller's own box and run at the box's owner.
const OWNER_METHODS: &[Method] = &[
    Method::Ack,
    Method::CreateGroup,
    Method::LinkDevice,
    Method::RemoveDevice,
    Method::Block,
    Method::Unblock,
    Method::RemoveContact,
    Method::UpdateSettings,
    Method::DeleteAccount,
    Method::PublishKeyPackages,
    Method::AddIdentifier,
    Method::ConfirmIdentifier,
    Method::RemoveIdentifier,
    Method::SetIdentifierDiscoverable,
    Method::RegisterPushToken,
    Method::RemovePushToken,
];

/// The owner methods that remove or replace devices of the caller's box.
const REVOKING_METHODS: &[Method] = &[Method::RemoveDevice, Method::DeleteAccount];

/// The methods of a group, which run at the owner of the box that created the
/// group (its epoch record and outbox live in that box's region).
const GROUP_METHODS: &[Method] = &[
    Method::GroupCommit,
    Method::GroupSend,
    Method::LeaveGroup,
    Method::GroupInfo,
];

/// The box whose owner runs `method`: the caller's own box for [`OWNER_METHODS`],
/// the group's creator box for [`GROUP_METHODS`]; `None` for every other method,
/// and for a body that does not decode (executed here, it is refused there).
fn owning_box(method: Method, caller: &Authenticated, body: &[u8]) -> Option<BoxId> {
    if OWNER_METHODS.contains(&method) {
        return Some(caller.box_id);
    }
    let creator = match method {
        Method::GroupCommit => pb::GroupCommitRequest::decode(body).ok()?.creator_box,
        Method::GroupSend => pb::GroupSendRequest::decode(body).ok()?.creator_box,
        Method::LeaveGroup => pb::LeaveGroupRequest::decode(body).ok()?.creator_box,
        Method::GroupInfo => pb::GroupInfoRequest::decode(body).ok()?.creator_box,
        _ => return None,
    };
    BoxId::try_from_slice(&creator).ok()
}

/// An owner's answer as this gateway's outcome.
fn from_response(response: pb::Response) -> Result<Vec<u8>, Failure> {
    let status = Status::try_from(response.status).unwrap_or(Status::Internal);
    if status == Status::Ok {
        return Ok(response.body);
    }
    Err(Failure {
        status,
        message: response.message,
        retry_after: (response.retry_after_ms > 0)
            .then(|| Duration::from_millis(response.retry_after_ms)),
        stale: Vec::new(),
        body: response.body,
    })
}

#[async_trait::async_trait]
impl OwnedWrites for Shared {
    async fn execute(&self, request: pb::PeerRequest) -> pb::PeerResponse {
        let enqueues = self.enqueuer.execute_forwarded(request.enqueues).await;
        let mut calls = Vec::with_capacity(request.calls.len());
        for call in request.calls {
            calls.push(self.execute_call(call).await);
            self.metrics.peer_forwards("served", 1);
        }
        pb::PeerResponse { enqueues, calls }
    }
}

/// Why a request failed: what the client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The status.
    pub status: Status,
    /// A human-readable explanation (no identifiers, keys or internals).
    pub message: String,
    /// For `RATE_LIMITED`: how long to wait.
    pub retry_after: Option<Duration>,
    /// For `STALE_DEVICES`: the boxes whose current device lists go into the
    /// reply's `StaleDevices` details.
    pub stale: Vec<BoxId>,
    /// A protobuf body for the reply (for `EPOCH_CONFLICT`: a `GroupState`).
    pub body: Vec<u8>,
}

impl Failure {
    /// A failure with a status and message.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            retry_after: None,
            stale: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `BAD_REQUEST`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Status::BadRequest, message)
    }

    /// `NOT_FOUND` with the one message every unknown, hidden or blocking target
    /// gets, so they cannot be told apart.
    pub fn not_found() -> Self {
        Self::new(Status::NotFound, "no such user, box or device")
    }

    /// `INTERNAL` with a generic message (details belong in the logs).
    pub fn internal() -> Self {
        Self::new(Status::Internal, "internal error")
    }

    /// `UNAVAILABLE`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Status::Unavailable, message)
    }

    /// `RATE_LIMITED` with the time to wait.
    pub fn rate_limited(limited: Limited, message: impl Into<String>) -> Self {
        Failure {
            retry_after: Some(limited.retry_after),
            ..Self::new(Status::RateLimited, message)
        }
    }
}

/// Storage errors as statuses:
///
/// | storage error | status |
/// | --- | --- |
/// | `StaleDeviceList` | `STALE_DEVICES` (current device list in the details) |
/// | `RecipientUnavailable`, `BoxNotFound`, `DeviceNotFound` | `NOT_FOUND` |
/// | `AckBeyondLast` | `ACK_BEYOND_LAST` |
/// | `QuotaExceeded` | `QUOTA_EXCEEDED` |
/// | `BlobNotFound` | `NOT_FOUND` (one message for unknown, incomplete and expired blobs) |
/// | `UploadIncomplete` | `UPLOAD_INCOMPLETE` |
/// | `TooLarge` | `TOO_LARGE` |
/// | `AlreadyRegistered` | `ALREADY_REGISTERED` |
/// | `IdentifierNotBound` | `NOT_FOUND` |
/// | `LastIdentifier` | `LAST_IDENTIFIER` |
/// | `Invalid`, `Kv(Invalid)`, `DeviceExists`, `KeyWrapsMismatch` | `BAD_REQUEST` |
/// | `Kv(Conflict)`, `Kv(RetriesExhausted)`, `Kv(Unavailable)`, `BoxExists` | `UNAVAILABLE` |
/// | `Kv(Undetermined)` | `UNDETERMINED` |
/// | `Corrupt` | `INTERNAL` (generic message; details logged) |
impl From<rossby_storage::kv::Error> for Failure {
    fn from(err: rossby_storage::kv::Error) -> Self {
        Failure::from(rossby_storage::Error::from(err))
    }
}

impl From<rossby_storage::Error> for Failure {
    fn from(err: rossby_storage::Error) -> Self {
        use rossby_storage::Error as E;
        use rossby_storage::kv::Error as KvError;
        match err {
            E::StaleDeviceList { box_id, .. } => Failure {
                stale: vec![box_id],
                ..Failure::new(
                    Status::StaleDevices,
                    "the recipient's device list changed; encrypt for the current devices and retry",
                )
            },
            E::KeyWrapsMismatch {
                version,
                missing,
                unexpected,
            } => {
                let ids = |d: &[rossby_keyspace::DeviceId]| {
                    d.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                Failure::bad_request(format!(
                    "the envelope's key wraps do not match device list version {version} (missing: [{}]; not in the list or twice: [{}]); wrap the key for exactly the list's devices, the sending device excepted in its own box",
                    ids(&missing),
                    ids(&unexpected)
                ))
            }
            E::RecipientUnavailable | E::BoxNotFound | E::DeviceNotFound => Failure::not_found(),
            E::AckBeyondLast { requested, last } => Failure::new(
                Status::AckBeyondLast,
                format!("cannot acknowledge {requested}: the last sequence number is {last}"),
            ),
            E::QuotaExceeded(what) => {
                Failure::new(Status::QuotaExceeded, format!("quota exceeded: {what}"))
            }
            E::BlobNotFound => Failure::new(
                Status::NotFound,
                "no such attachment (unknown, incomplete or expired)",
            ),
            E::UploadIncomplete { missing } => Failure::new(
                Status::UploadIncomplete,
                format!(
                    "{} parts of the upload are missing; UploadStatus lists them",
                    missing.len()
                ),
            ),
            E::TooLarge(what) => Failure::new(Status::TooLarge, what),
            E::Forbidden(what) => Failure::new(Status::Forbidden, what),
            E::AlreadyRegistered => Failure::new(
                Status::AlreadyRegistered,
                "this identifier is already registered",
            ),
            E::IdentifierNotBound => Failure::new(
                Status::NotFound,
                "this identifier is not bound to your account",
            ),
            E::LastIdentifier => Failure::new(
                Status::LastIdentifier,
                "the last identifier of an account cannot be removed; add another one first",
            ),
            E::Invalid(what) => Failure::bad_request(what),
            E::DeviceExists(_) => Failure::bad_request("a device with this id already exists"),
            E::Kv(KvError::Undetermined(detail)) => {
                tracing::warn!(%detail, "storage commit outcome undetermined");
                Failure::new(
                    Status::Undetermined,
                    "the outcome of the write is unknown; retry if the request is idempotent",
                )
            }
            E::Kv(KvError::Invalid(what)) => Failure::bad_request(what),
            E::Corrupt { what, detail } => {
                tracing::error!(what, %detail, "stored record could not be decoded");
                Failure::internal()
            }
            err @ (E::Kv(
                KvError::Conflict(_) | KvError::RetriesExhausted { .. } | KvError::Unavailable(_),
            )
            | E::BoxExists(_)) => {
                tracing::warn!(error = %err, "storage could not complete a request");
                Failure::unavailable("storage is busy or unavailable; retry shortly")
            }
        }
    }
}

fn encode<M: Message>(result: Result<M, Failure>) -> Result<Vec<u8>, Failure> {
    result.map(|m| m.encode_to_vec())
}

/// Decodes a request body.
pub(crate) fn decode<M: Message + Default>(body: &[u8], what: &str) -> Result<M, Failure> {
    M::decode(body).map_err(|_| Failure::bad_request(format!("the body is not a valid {what}")))
}

/// The current time in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses a normalised identifier.
pub(crate) fn parse_identifier(raw: &str) -> Result<Identifier, Failure> {
    Identifier::parse(raw).map_err(|_| {
        Failure::bad_request(
            "the identifier must be a phone number in international format (+ and country code) or an e-mail address",
        )
    })
}

/// Parses a 16-byte box id.
pub(crate) fn parse_box_id(raw: &[u8]) -> Result<BoxId, Failure> {
    BoxId::try_from_slice(raw).map_err(|_| Failure::bad_request("a box id must have 16 bytes"))
}

/// Parses a 16-byte device id.
pub(crate) fn parse_device_id(raw: &[u8]) -> Result<DeviceId, Failure> {
    let id = DeviceId::try_from_slice(raw)
        .map_err(|_| Failure::bad_request("a device id must have 16 bytes"))?;
    // The nil id is reserved: it is the dedup scope of sealed-sender envelopes.
    if id == DeviceId::UNIDENTIFIED {
        return Err(Failure::bad_request("a device id must not be the nil UUID"));
    }
    Ok(id)
}

/// Checks a device label.
pub(crate) fn check_label(label: &str) -> Result<(), Failure> {
    if label.len() > MAX_LABEL_BYTES || label.chars().any(char::is_control) {
        return Err(Failure::bad_request(format!(
            "a device label must have at most {MAX_LABEL_BYTES} bytes and no control characters"
        )));
    }
    Ok(())
}

/// A device as handed to clients: id, signed key bundle and label.
pub(crate) fn device_info(id: DeviceId, device: &Device) -> Result<pb::DeviceInfo, Failure> {
    let keys = pb::KeyBundle::decode(device.encryption_key.as_slice()).map_err(|e| {
        tracing::error!(error = %e, "stored key bundle could not be decoded");
        Failure::internal()
    })?;
    Ok(pb::DeviceInfo {
        device_id: id.as_bytes().to_vec(),
        keys: Some(keys),
        label: device.label.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::testkit::{SECRET, TestDevice, TestEnv, TestSettings};
    use super::*;
    use crate::auth::keys;
    use rossby_protocol::status::status_of;
    use rossby_storage::tables::registrations;
    use rossby_storage::transact;

    fn list_devices(device: &TestDevice, conn: u64, ts: SystemTime, nonce: &str) -> pb::Request {
        TestEnv::signed_request(device, conn, Method::ListDevices, Vec::new(), ts, nonce)
    }

    #[tokio::test]
    async fn hawk_accepts_good_requests_and_rejects_every_tampering() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let now = SystemTime::now();

        // A good request, then the same request again: replayed.
        let req = list_devices(&alice, 1, now, "nonce-1");
        let resp = env.request(1, req.clone()).await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        assert_eq!(resp.home_region, 0);
        let resp = env.request(1, req.clone()).await;
        assert_eq!(status_of(&resp), Status::Replayed);
        assert_eq!(env.auth_failures("replayed"), 1);

        // Captured and replayed on another connection (other exporter).
        let req = list_devices(&alice, 1, now, "nonce-2");
        let resp = env.request(2, req).await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        assert_eq!(env.auth_failures("wrong_connection"), 1);

        // Outside the skew window: CLOCK_SKEW with the server's time.
        let old = now - Duration::from_secs(600);
        let resp = env
            .request(1, list_devices(&alice, 1, old, "nonce-3"))
            .await;
        assert_eq!(status_of(&resp), Status::ClockSkew);
        let server = UNIX_EPOCH + Duration::from_millis(resp.server_time_ms);
        assert!(server.duration_since(now).unwrap_or_default() < Duration::from_secs(60));
        assert_eq!(env.auth_failures("clock_skew"), 1);

        // A body changed after signing.
        let mut req = TestEnv::signed_request(
            &alice,
            1,
            Method::Fetch,
            pb::FetchRequest::default().encode_to_vec(),
            now,
            "nonce-4",
        );
        req.body = pb::FetchRequest {
            max_count: 1,
            ..pb::FetchRequest::default()
        }
        .encode_to_vec();
        let resp = env.request(1, req).await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        assert_eq!(env.auth_failures("payload_mismatch"), 1);

        // Signed for one RPC, sent as another.
        let mut req = list_devices(&alice, 1, now, "nonce-5");
        req.method = Method::DeleteAccount as i32;
        let resp = env.request(1, req).await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        assert_eq!(env.auth_failures("bad_mac"), 1);

        // A forged credential: right shape, unknown device (so a wrong key), and a
        // correctly derived key for a device that does not exist.
        let mut forged = alice.clone();
        forged.creds.key = [0x55; 32];
        let resp = env
            .request(1, list_devices(&forged, 1, now, "nonce-6"))
            .await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        let ghost = DeviceId::new();
        let mut unknown = alice.clone();
        unknown.creds = keys::credentials(
            &SECRET,
            keys::CredentialId {
                box_id: alice.box_id,
                device: ghost,
                key_version: 1,
                secret_version: 1,
            },
        );
        let resp = env
            .request(1, list_devices(&unknown, 1, now, "nonce-7"))
            .await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        assert_eq!(env.auth_failures("unknown_credential"), 1);
        // A stale key version.
        let mut revoked = alice.clone();
        revoked.creds = keys::credentials(
            &SECRET,
            keys::CredentialId {
                box_id: alice.box_id,
                device: alice.device_id,
                key_version: 2,
                secret_version: 1,
            },
        );
        let resp = env
            .request(1, list_devices(&revoked, 1, now, "nonce-8"))
            .await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        assert_eq!(env.auth_failures("unknown_credential"), 2);

        // Missing and malformed authorization.
        let resp = env
            .call(1, Method::ListDevices, &pb::ListDevicesRequest {})
            .await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        let mut req = list_devices(&alice, 1, now, "nonce-9");
        req.authorization = "Hawk id=\"x\"".into();
        let resp = env.request(1, req).await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        assert_eq!(env.auth_failures("malformed"), 2);
        // None of these messages says anything about keys or devices.
        for nonce in ["nonce-10", "nonce-11"] {
            let resp = env.request(2, list_devices(&alice, 1, now, nonce)).await;
            assert!(!resp.message.contains(&alice.box_id.to_string()));
            assert!(!resp.message.contains(&alice.device_id.to_string()));
        }
    }

    #[tokio::test]
    async fn version_method_and_body_are_checked_first() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let mut req = list_devices(&alice, 1, SystemTime::now(), "v");
        req.version = 2;
        let resp = env.request(1, req).await;
        assert_eq!(status_of(&resp), Status::UnsupportedVersion);
        assert!(resp.server_time_ms > 0);
        let resp = env.call_raw(1, Method::Unspecified, Vec::new()).await;
        assert_eq!(status_of(&resp), Status::UnknownMethod);
        let mut req = list_devices(&alice, 1, SystemTime::now(), "m");
        req.method = 999;
        assert_eq!(status_of(&env.request(1, req).await), Status::UnknownMethod);
        // A signed but undecodable body.
        let req = TestEnv::signed_request(
            &alice,
            1,
            Method::Fetch,
            vec![0xff, 0xff, 0xff],
            SystemTime::now(),
            "b",
        );
        let resp = env.request(1, req).await;
        assert_eq!(status_of(&resp), Status::BadRequest);
    }

    #[tokio::test]
    async fn rate_limits_per_address_and_per_device() {
        let env = TestEnv::with(TestSettings {
            per_ip: Some((0.0, 5.0)),
            per_device: Some((0.0, 2.0)),
            ..TestSettings::default()
        });
        let alice = env.register("alice@example.com").await;
        // Registration came from another address (connection 1000).
        for _ in 0..2 {
            let resp = env
                .call_as(&alice, 1, Method::ListDevices, &pb::ListDevicesRequest {})
                .await;
            assert_eq!(status_of(&resp), Status::Ok);
        }
        let resp = env
            .call_as(&alice, 1, Method::ListDevices, &pb::ListDevicesRequest {})
            .await;
        assert_eq!(status_of(&resp), Status::RateLimited);
        assert!(resp.retry_after_ms > 0);
        // The same address is limited for unauthenticated requests as well.
        for _ in 0..2 {
            assert_eq!(
                status_of(&env.call(1, Method::Ping, &pb::PingRequest {}).await),
                Status::Ok
            );
        }
        let resp = env.call(1, Method::Ping, &pb::PingRequest {}).await;
        assert_eq!(status_of(&resp), Status::RateLimited);
        // Another address is not.
        assert_eq!(
            status_of(&env.call(2, Method::Ping, &pb::PingRequest {}).await),
            Status::Ok
        );
    }

    #[tokio::test]
    async fn unparsable_requests_spend_the_address_budget_too() {
        let env = TestEnv::with(TestSettings {
            per_ip: Some((0.0, 3.0)),
            ..TestSettings::default()
        });
        let mut bad_version = pb::Request {
            version: 2,
            method: Method::Ping as i32,
            ..pb::Request::default()
        };
        for _ in 0..2 {
            let resp = env.request(1, bad_version.clone()).await;
            assert_eq!(status_of(&resp), Status::UnsupportedVersion);
        }
        let resp = env.call_raw(1, Method::Unspecified, Vec::new()).await;
        assert_eq!(status_of(&resp), Status::UnknownMethod);
        // The budget of three is spent: whatever comes next is limited.
        let resp = env.request(1, bad_version.clone()).await;
        assert_eq!(status_of(&resp), Status::RateLimited);
        bad_version.method = 999;
        bad_version.version = PROTOCOL_VERSION;
        assert_eq!(
            status_of(&env.request(1, bad_version).await),
            Status::RateLimited
        );
        let resp = env.call(1, Method::Ping, &pb::PingRequest {}).await;
        assert_eq!(status_of(&resp), Status::RateLimited);
    }

    #[tokio::test]
    async fn codes_are_stored_only_as_keyed_hashes() {
        let env = TestEnv::new();
        let device = TestEnv::new_device();
        let resp = env
            .register_request("alice@example.com", &device, false)
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        let code = env.last_code("alice@example.com");
        let id = Identifier::parse("alice@example.com").unwrap();
        let digest = env.store.hasher.current(&id);
        let pending = transact!(env.store, |txn| registrations::pending(
            txn,
            &digest,
            device.device_id
        )
        .await)
        .unwrap()
        .unwrap();
        assert_eq!(
            pending.code_mac,
            crate::auth::codes::code_mac(&SECRET, &digest.digest, &code)
        );
        assert!(!pending.code_mac.windows(6).any(|w| w == code.as_bytes()));
        assert_eq!(pending.attempts, 0);
        assert_eq!(env.metrics.verification_codes_sent_total.get(), 1);
    }

    #[tokio::test]
    async fn requests_from_other_home_regions_are_told_their_region() {
        let env = TestEnv::with(TestSettings {
            three_regions: true,
            ..TestSettings::default()
        });
        let device = TestEnv::new_device();
        let req = pb::RegisterRequest {
            identifier: "far@example.com".into(),
            device_id: device.device_id.as_bytes().to_vec(),
            keys: Some(device.keys.bundle()),
            region: 3,
            ..pb::RegisterRequest::default()
        };
        assert_eq!(
            status_of(&env.call(1, Method::Register, &req).await),
            Status::Ok
        );
        let code = env.last_code("far@example.com");
        let resp = env
            .authorize_request("far@example.com", &device, &code)
            .await;
        let authorized: pb::AuthorizeResponse = TestEnv::body(&resp);
        let box_id = BoxId::try_from_slice(&authorized.box_id).unwrap();
        assert_eq!(box_id.home_region(), rossby_keyspace::RegionId(3));
        let far = TestEnv::open_credentials(&device, box_id, &authorized.sealed_credentials);
        let resp = env
            .call_as(&far, 1, Method::ListDevices, &pb::ListDevicesRequest {})
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        assert_eq!(resp.home_region, 3);
    }

    #[tokio::test]
    async fn without_a_topology_only_the_own_region_is_accepted() {
        let env = TestEnv::new();
        let register = |identifier: &str, region: u32| {
            let device = TestEnv::new_device();
            pb::RegisterRequest {
                identifier: identifier.into(),
                device_id: device.device_id.as_bytes().to_vec(),
                keys: Some(device.keys.bundle()),
                region,
                ..pb::RegisterRequest::default()
            }
        };
        let resp = env
            .call(1, Method::Register, &register("far@example.com", 7))
            .await;
        assert_eq!(status_of(&resp), Status::BadRequest);
        assert!(resp.message.contains("no topology"), "{}", resp.message);
        // Nothing was stored and no code was sent.
        assert!(env.code_lines().is_empty());
        let own = u32::from(env.region().0);
        for (identifier, region) in [("near@example.com", own), ("default@example.com", 0)] {
            let resp = env
                .call(1, Method::Register, &register(identifier, region))
                .await;
            assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        }
    }

    #[test]
    fn storage_errors_map_to_documented_statuses() {
        use rossby_storage::Error as E;
        use rossby_storage::kv::Error as KvError;
        let b = BoxId::new(rossby_keyspace::RegionId(1));
        let cases: Vec<(E, Status)> = vec![
            (
                E::StaleDeviceList {
                    box_id: b,
                    version: 3,
                    devices: vec![],
                },
                Status::StaleDevices,
            ),
            (E::RecipientUnavailable, Status::NotFound),
            (E::BoxNotFound, Status::NotFound),
            (E::DeviceNotFound, Status::NotFound),
            (
                E::AckBeyondLast {
                    requested: 9,
                    last: 3,
                },
                Status::AckBeyondLast,
            ),
            (E::QuotaExceeded("devices".into()), Status::QuotaExceeded),
            (E::Invalid("too big".into()), Status::BadRequest),
            (E::DeviceExists(DeviceId::new()), Status::BadRequest),
            (E::AlreadyRegistered, Status::AlreadyRegistered),
            (KvError::Conflict("x".into()).into(), Status::Unavailable),
            (
                KvError::RetriesExhausted {
                    attempts: 3,
                    last: Box::new(KvError::Conflict("x".into())),
                }
                .into(),
                Status::Unavailable,
            ),
            (
                KvError::Unavailable("disk on fire at /var/lib/x".into()).into(),
                Status::Unavailable,
            ),
            (E::BoxExists(b), Status::Unavailable),
            (
                KvError::Undetermined("x".into()).into(),
                Status::Undetermined,
            ),
            (
                KvError::Invalid("too big".into()).into(),
                Status::BadRequest,
            ),
            (
                E::Corrupt {
                    what: "device",
                    detail: "secret detail".into(),
                },
                Status::Internal,
            ),
        ];
        for (err, status) in cases {
            let failure = Failure::from(err);
            assert_eq!(failure.status, status);
            assert!(!failure.message.contains("secret detail"));
            assert!(!failure.message.contains("/var/lib"));
            assert!(!failure.message.contains(&b.to_string()));
        }
        let stale = Failure::from(E::StaleDeviceList {
            box_id: b,
            version: 3,
            devices: vec![],
        });
        assert_eq!(stale.stale, vec![b]);
    }

    #[tokio::test]
    async fn stale_failures_carry_the_current_device_lists() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let failure = Failure::from(rossby_storage::Error::StaleDeviceList {
            box_id: alice.box_id,
            version: 1,
            devices: vec![],
        });
        let resp = env.shared().failure_response(failure).await;
        assert_eq!(status_of(&resp), Status::StaleDevices);
        let details = pb::StaleDevices::decode(resp.body.as_slice()).unwrap();
        assert_eq!(details.current.len(), 1);
        assert_eq!(
            details.current[0].devices[0].device_id,
            alice.device_id.as_bytes()
        );
    }

    #[tokio::test]
    async fn replies_in_flight_are_bounded_per_device() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let limit = env.shared().settings.device_budget_bytes;
        // Fetch replies are estimated at their byte bound.
        let fetch = TestEnv::signed_request(
            &alice,
            1,
            Method::Fetch,
            pb::FetchRequest::default().encode_to_vec(),
            SystemTime::now(),
            &TestEnv::fresh_nonce(),
        );
        let estimate = env.api.reply_estimate(&fetch);
        assert!(estimate > env.shared().settings.max_fetch_bytes);
        let exporter = TestEnv::exporter(1);
        let call = async |estimate: usize| {
            let slot = crate::budget::ReplySlot::new(estimate);
            let origin = Origin {
                conn_id: 1,
                remote: SocketAddr::from(([127, 0, 0, 2], 40_000)),
                exporter: &exporter,
                connection: None,
                reply: Some(&slot),
            };
            let request = TestEnv::signed_request(
                &alice,
                1,
                Method::Fetch,
                pb::FetchRequest::default().encode_to_vec(),
                SystemTime::now(),
                &TestEnv::fresh_nonce(),
            );
            let response = env.api.handle_from(&origin, request).await;
            (response, slot.take())
        };
        // Replies held (not yet acknowledged) use up the device's budget.
        let mut held = Vec::new();
        while held.len() * estimate + estimate <= limit {
            let (response, reservation) = call(estimate).await;
            assert_eq!(status_of(&response), Status::Ok, "{}", response.message);
            held.push(reservation.expect("a reservation"));
        }
        let used = env
            .shared()
            .metrics
            .bytes_in_flight
            .with_label_values(&["device"]);
        assert_eq!(usize::try_from(used.get()).unwrap(), held.len() * estimate);
        let (response, reservation) = call(estimate).await;
        assert_eq!(status_of(&response), Status::RateLimited);
        assert!(response.retry_after_ms > 0);
        assert!(reservation.is_none());
        // Acknowledged replies give it back.
        held.clear();
        assert_eq!(used.get(), 0);
        let (response, _) = call(estimate).await;
        assert_eq!(status_of(&response), Status::Ok);
    }

    #[tokio::test]
    async fn handling_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let env = TestEnv::new();
        let exporter = [0u8; EXPORTER_LEN];
        let origin = Origin {
            conn_id: 1,
            remote: SocketAddr::from(([127, 0, 0, 1], 1)),
            exporter: &exporter,
            connection: None,
            reply: None,
        };
        let fut = env.api.handle_from(&origin, pb::Request::default());
        assert_send(&fut);
        drop(fut);
    }

    #[test]
    fn settings_are_checked() {
        let metrics = Arc::new(Metrics::new());
        let store = || {
            let kv: rossby_storage::Kv = Arc::new(rossby_storage::kv::memory::MemoryStore::new());
            let hasher = rossby_keyspace::LookupHasher::new(
                vec![rossby_keyspace::Pepper {
                    version: 1,
                    secret: vec![1; 32],
                }],
                1,
            )
            .unwrap();
            Store::new(kv, hasher)
        };
        let short = ApiSettings::with_secret(vec![1; 16]);
        assert!(Api::new(short, store(), metrics.clone()).is_err());
        let mut https = ApiSettings::with_secret(vec![1; 32]);
        https.verifier = crate::settings::VerifierSpec::Webhook("https://sms.example/".into());
        let err = Api::new(https, store(), metrics.clone()).err().unwrap();
        assert!(err.to_string().contains("http://"), "{err}");
        assert!(Api::new(ApiSettings::with_secret(vec![1; 32]), store(), metrics).is_ok());
    }

    /// A server and a client endpoint on loopback, connected.
    async fn loopback() -> (
        quinn::Endpoint,
        quinn::Connection,
        quinn::Endpoint,
        quinn::Connection,
    ) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
        let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key.into())
            .unwrap();
        let server_config = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).unwrap(),
        ));
        let server =
            quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der).unwrap();
        let client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client_config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).unwrap(),
        ));
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connecting = client
            .connect_with(client_config, server.local_addr().unwrap(), "localhost")
            .unwrap();
        let accept = async { server.accept().await.unwrap().await.unwrap() };
        let (client_conn, server_conn) = tokio::join!(connecting, accept);
        (server, server_conn, client, client_conn.unwrap())
    }

    async fn read_push(stream: &mut quinn::RecvStream) -> pb::Push {
        let mut prefix = [0u8; 4];
        stream.read_exact(&mut prefix).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
        stream.read_exact(&mut body).await.unwrap();
        pb::Push::decode(body.as_slice()).unwrap()
    }

    #[tokio::test]
    async fn subscribers_get_pushes_on_one_server_stream() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let version = env.device_list_version(&bob, "alice@example.com").await;
        let (_server, server_conn, _client, client_conn) = loopback().await;
        let mut exporter = [0u8; EXPORTER_LEN];
        server_conn
            .export_keying_material(&mut exporter, rossby_protocol::hawk::EXPORTER_LABEL, b"")
            .unwrap();
        let ctx = ConnContext {
            id: 77,
            remote: server_conn.remote_address(),
            exporter,
            connection: server_conn.clone(),
        };
        // Alice subscribes; the request is signed for this connection's binding.
        let sign = |method: Method, nonce: &str| {
            let service = rossby_protocol::hawk::ServiceName::default();
            let body = pb::SubscribeRequest {}.encode_to_vec();
            let signed = rossby_protocol::hawk::SignedRequest {
                service: &service,
                method,
                body: &body,
                exporter: &exporter,
            };
            pb::Request {
                version: 1,
                method: method as i32,
                authorization: signed.sign(&alice.creds, SystemTime::now(), nonce).unwrap(),
                body,
            }
        };
        let resp = env.api.handle(&ctx, sign(Method::Subscribe, "s1")).await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        // A second Subscribe on the same connection reuses the stream.
        let resp = env.api.handle(&ctx, sign(Method::Subscribe, "s2")).await;
        assert_eq!(status_of(&resp), Status::Ok);
        assert_eq!(env.api.presence().online(alice.box_id), 1);

        let mut stream = client_conn.accept_uni().await.unwrap();
        let first = read_push(&mut stream).await;
        assert_eq!(
            first.event,
            Some(pb::push::Event::Messages(pb::MessagesAvailable {
                last_seq: 0
            }))
        );
        // Bob sends: Alice is told.
        assert_eq!(
            env.send(&bob, alice.box_id, version, b"hi").await.status,
            Status::Ok as i32
        );
        let push = read_push(&mut stream).await;
        assert_eq!(
            push.event,
            Some(pb::push::Event::Messages(pb::MessagesAvailable {
                last_seq: 1
            }))
        );
        // Bob types: an ephemeral push, nothing stored.
        let req = pb::SendRequest {
            message_id: rossby_keyspace::MessageId::new().as_bytes().to_vec(),
            recipients: vec![pb::Recipient {
                box_id: alice.box_id.as_bytes().to_vec(),
                device_list_version: version,
                envelope: env.envelope_to(alice.box_id, Some(&bob), b"typing").await,
            }],
            ephemeral: true,
            attachments: Vec::new(),
            wake: pb::Wake::High as i32,
        };
        let resp: pb::SendResponse = TestEnv::body(&env.call_as(&bob, 1, Method::Send, &req).await);
        assert_eq!(resp.results[0].status, Status::Ok as i32);
        assert_eq!(resp.results[0].seq, 0);
        match read_push(&mut stream).await.event {
            Some(pb::push::Event::Ephemeral(e)) => {
                assert_eq!(TestEnv::body_of(&e.envelope), b"typing");
                assert_eq!(e.sender_box, bob.box_id.as_bytes());
                assert_eq!(e.sender_device, bob.device_id.as_bytes());
            }
            other => panic!("expected an ephemeral push, got {other:?}"),
        }
        assert_eq!(
            env.fetch(&alice, 0).await.envelopes.len(),
            1,
            "ephemeral is not stored"
        );
        assert_eq!(env.metrics.pushes_total.get(), 3);

        // The connection goes away: the subscription is dropped.
        env.api.connection_closed(&ctx);
        assert_eq!(env.api.presence().online(alice.box_id), 0);
        server_conn.close(0u32.into(), b"bye");
    }
}
