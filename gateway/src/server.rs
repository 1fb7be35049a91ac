//! The QUIC side of the gateway: the accept loop, one task per connection, and one
//! task per request stream.
//!
//! A request stream carries exactly one `Request` frame from the client and one
//! `Response` frame back. The declared length is checked against
//! `max_frame_bytes` before any of the body is read, so a peer cannot make the
//! gateway buffer more than the limit. Everything a peer can send is answered with
//! a status while the stream is still writable; nothing a peer sends can panic the
//! gateway (errors are logged at debug level, since they are the peer's problem).
//!
//! Concurrency per connection is bounded by QUIC itself: a client may have at most
//! `max_streams_per_connection` request streams open, and a stream's credit only
//! returns once its request has been answered.
//!
//! Memory per connection is bounded by its byte budget ([`crate::budget`]): a
//! request's declared body is reserved before it is read, the reply's expected
//! size before the handler runs, and the encoded reply until the peer
//! acknowledged it. A reply the peer does not read within the write timeout is
//! abandoned: its stream is reset and the reply dropped. Connections are capped
//! per address, and new connections prove their address with a QUIC Retry when
//! configured (always, or while many handshakes are in progress).

pub mod config;

use crate::api::Api;
use crate::budget::{ByteBudget, ReplySlot, Reservation};
use crate::context::ConnContext;
use crate::metrics::Metrics;
use config::AddressValidation;
use futures::FutureExt;
use rossby_protocol::framing::{self, LENGTH_PREFIX};
use rossby_protocol::hawk::{EXPORTER_LABEL, EXPORTER_LEN, rpc_name};
use rossby_protocol::pb::{Method, Request, Response, Status};
use rossby_protocol::status::{error_response, status_of};
use std::collections::HashMap;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Application close code sent to every connection when a gateway shuts down:
/// reconnect (to another gateway) and retry.
pub const CLOSE_DRAINING: u32 = 1;
/// Application close code of a connection whose TLS session could not export
/// its binding (should not happen with TLS 1.3).
pub const CLOSE_INTERNAL: u32 = 2;

/// Application error code of `STOP_SENDING` on a request stream whose frame was too
/// large: the gateway does not read the rest.
pub const STOP_TOO_LARGE: u32 = 1;

/// Application error code of `RESET_STREAM` on a request stream whose reply the
/// gateway abandoned (not read or not acknowledged in time, or no budget for
/// it): the request may or may not have taken effect; retry idempotently.
pub const RESET_ABANDONED: u32 = 2;

/// When a request refused for want of connection budget may try again.
const BUDGET_RETRY_AFTER_MS: u64 = 500;

/// How long a finished response may wait for the peer's acknowledgement before
/// its request stops counting as in flight (drain waits for in-flight requests).
const ACK_WAIT: Duration = Duration::from_secs(5);

/// Body bytes reserved before any arrive (most requests are far smaller).
const INITIAL_BODY_CAPACITY: usize = 16 * 1024;

/// Process-unique connection ids (several gateways may run in one process).
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Counts running things (requests, connections) so shutdown can wait for them.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    count: AtomicUsize,
    idle: Notify,
}

/// Decrements its tracker when dropped.
pub(crate) struct TrackerGuard(Arc<Tracker>);

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tracker {
    /// Counts one more running thing until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> TrackerGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        TrackerGuard(self.clone())
    }

    /// How many are running.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until nothing runs or `limit` passes; returns whether it got idle.
    pub(crate) async fn wait_idle(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Where a gateway is in its life; shared by the QUIC server, the admin server and
/// the [`Gateway`](crate::gateway::Gateway) handle.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    /// Shutdown has begun: readiness fails.
    pub draining: AtomicBool,
    /// The drain grace period is over: new connections are refused and new
    /// requests answered `STATUS_DRAINING`. Set only through [`Lifecycle::refuse`].
    pub refusing: AtomicBool,
    /// Wakes requests that give up when the gateway starts refusing.
    refused: Notify,
    /// The QUIC endpoint accepts connections.
    pub quic_open: AtomicBool,
    /// Requests being handled (from stream accept to the acknowledged response).
    pub requests: Arc<Tracker>,
    /// Connection tasks alive.
    pub connections: Arc<Tracker>,
}

impl Lifecycle {
    /// Starts refusing connections and requests, and cuts waiting fetches short.
    pub(crate) fn refuse(&self) {
        self.refusing.store(true, Ordering::Release);
        self.refused.notify_waiters();
    }

    /// Whether the gateway refuses new work.
    pub(crate) fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    /// Resolves once the gateway refuses new work.
    pub(crate) async fn refused(&self) {
        loop {
            let notified = self.refused.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the flag is checked, so a `refuse` in between
            // still wakes this waiter.
            notified.as_mut().enable();
            if self.is_refusing() {
                return;
            }
            notified.await;
        }
    }
}

/// What every connection and request task needs.
pub(crate) struct Shared {
    pub api: Arc<Api>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    /// Largest request frame body accepted.
    pub max_frame: usize,
    /// Most open connections.
    pub max_connections: usize,
    /// How long a request may take to arrive once its stream is open.
    pub read_timeout: Duration,
    /// How long a reply may take to be written before its stream is reset.
    pub write_timeout: Duration,
    /// Bytes in flight per connection.
    pub connection_budget: usize,
    /// Most open connections per address.
    pub max_per_address: usize,
    /// When to ask for a Retry.
    pub address_validation: AddressValidation,
    /// Handshakes in progress from which `under-load` asks for a Retry.
    pub retry_above_handshakes: usize,
    /// Connections per address key ([`crate::ratelimit::ip_key`]).
    pub per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Handshakes in progress.
    pub handshaking: AtomicUsize,
}

/// Holds one of an address's connection slots until dropped.
struct AddressSlot {
    shared: Arc<Shared>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .per_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Shared {
    /// Takes a connection slot of `ip`'s address key, if it has one free.
    fn address_slot(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = crate::ratelimit::ip_key(ip);
        let mut map = self
            .per_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(key).or_insert(0);
        if *n >= self.max_per_address {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            shared: self.clone(),
            key,
        })
    }
}

/// Decrements the handshakes-in-progress count when dropped.
struct HandshakeGuard(Arc<Shared>);

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The metric label of an RPC: its signed-path name, or `unknown` for numbers this
/// build does not know (so a peer cannot create unbounded label values).
pub fn rpc_label(method: i32) -> String {
    match Method::try_from(method) {
        Ok(Method::Unspecified) | Err(_) => "unknown".to_string(),
        Ok(method) => rpc_name(method),
    }
}

/// The metric label of a status: its name without `STATUS_`, lower case
/// (`ok`, `bad_request`, `too_large`, ...).
pub fn status_label(status: Status) -> String {
    status
        .as_str_name()
        .trim_start_matches("STATUS_")
        .to_ascii_lowercase()
}

/// Accepts connections until the endpoint is closed.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let refused = &shared.metrics.connections_refused_total;
        if shared.lifecycle.is_refusing() {
            // Refusing (rather than ignoring) tells the client at once to try
            // another gateway instead of waiting for a handshake timeout.
            refused.with_label_values(&["draining"]).inc();
            incoming.refuse();
            continue;
        }
        // Before any per-address accounting: an unvalidated source address may
        // be spoofed, and a Retry costs the gateway one small packet and no state.
        let retry = match shared.address_validation {
            AddressValidation::Always => true,
            AddressValidation::UnderLoad => {
                shared.handshaking.load(Ordering::Acquire) >= shared.retry_above_handshakes
            }
            AddressValidation::Off => false,
        };
        if retry && !incoming.remote_address_validated() && incoming.may_retry() {
            shared.metrics.quic_retries_total.inc();
            if let Err(err) = incoming.retry() {
                tracing::debug!(error = %err, "retry not sent");
            }
            continue;
        }
        if endpoint.open_connections() >= shared.max_connections {
            tracing::debug!(remote = %incoming.remote_address(), "connection limit reached; refusing");
            refused.with_label_values(&["limit"]).inc();
            incoming.refuse();
            continue;
        }
        let Some(slot) = shared.address_slot(incoming.remote_address().ip()) else {
            tracing::debug!(remote = %incoming.remote_address(), "connections per address reached; refusing");
            refused.with_label_values(&["per_address"]).inc();
            incoming.refuse();
            continue;
        };
        let guard = shared.lifecycle.connections.enter();
        shared.handshaking.fetch_add(1, Ordering::AcqRel);
        let handshake = HandshakeGuard(shared.clone());
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_connection(shared, incoming, handshake).await;
            drop(slot);
            drop(guard);
        });
    }
}

/// Decrements the open-connections gauge when the connection task ends.
struct GaugeGuard(prometheus::IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    handshake: HandshakeGuard,
) {
    let remote = incoming.remote_address();
    let connection = incoming.await;
    drop(handshake);
    let connection = match connection {
        Ok(connection) => connection,
        Err(err) => {
            tracing::debug!(%remote, error = %err, "handshake failed");
            return;
        }
    };
    let mut exporter = [0u8; EXPORTER_LEN];
    if let Err(err) = connection.export_keying_material(&mut exporter, EXPORTER_LABEL, b"") {
        tracing::warn!(%remote, error = ?err, "TLS exporter unavailable; closing");
        connection.close(CLOSE_INTERNAL.into(), b"internal error");
        return;
    }
    let ctx = Arc::new(ConnContext {
        id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
        remote,
        exporter,
        connection: connection.clone(),
    });
    shared.metrics.open_connections.inc();
    let _gauge = GaugeGuard(shared.metrics.open_connections.clone());
    let budget = ByteBudget::new(
        shared.connection_budget,
        Some(
            shared
                .metrics
                .bytes_in_flight
                .with_label_values(&["connection"]),
        ),
    );
    tracing::debug!(conn = ctx.id, %remote, "connection open");
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                let guard = shared.lifecycle.requests.enter();
                let shared = shared.clone();
                let ctx = ctx.clone();
                let budget = budget.clone();
                tokio::spawn(async move {
                    handle_stream(&shared, &ctx, &budget, send, recv).await;
                    drop(guard);
                });
            }
            Err(err) => {
                tracing::debug!(conn = ctx.id, reason = %err, "connection closed");
                break;
            }
        }
    }
    shared.api.connection_closed(&ctx);
}

/// Why no request could be read from a stream.
enum ReadFailure {
    /// Answer with this status and message.
    Answer(Status, String),
    /// The stream or connection is gone; nothing can be answered.
    Gone(String),
    /// The connection's budget had no room for the request in time.
    Busy,
}

/// The answer to a request refused for want of budget.
fn busy_response() -> Response {
    Response {
        retry_after_ms: BUDGET_RETRY_AFTER_MS,
        ..error_response(
            Status::RateLimited,
            "too many bytes in flight on this connection; read the replies or wait",
            now_ms(),
        )
    }
}

/// Reads one request frame, checking the declared length before reading the body
/// and reserving it in the connection's budget, all before `deadline`. The
/// reservation is returned with the request: the body stays in memory until the
/// request has been handled.
async fn read_request(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
    budget: &Arc<ByteBudget>,
    deadline: tokio::time::Instant,
) -> Result<(Request, Reservation), ReadFailure> {
    let late = || {
        ReadFailure::Answer(
            Status::BadRequest,
            "the request frame did not arrive in time".into(),
        )
    };
    let mut prefix = [0u8; LENGTH_PREFIX];
    tokio::time::timeout_at(deadline, read_exact(recv, &mut prefix))
        .await
        .map_err(|_| late())??;
    let len = match framing::body_len(prefix, max_frame) {
        Ok(len) => len,
        Err(_) => {
            let declared = u32::from_be_bytes(prefix);
            // Do not read (or buffer) the body: ask the peer to stop sending it.
            let _ = recv.stop(STOP_TOO_LARGE.into());
            return Err(ReadFailure::Answer(
                Status::TooLarge,
                format!("frame of {declared} bytes exceeds the limit of {max_frame} bytes"),
            ));
        }
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let Some(reservation) = budget.reserve(len, left).await else {
        return Err(ReadFailure::Busy);
    };
    let body = tokio::time::timeout_at(deadline, read_body(recv, len))
        .await
        .map_err(|_| late())??;
    // One frame per stream. If the peer already sent more (or its FIN), say so
    // now; if nothing further has arrived yet, do not wait for the FIN, which
    // would add latency for clients that send it separately.
    let mut extra = [0u8; 1];
    if let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::ZERO, recv.read(&mut extra)).await {
        let _ = recv.stop(0u32.into());
        return Err(ReadFailure::Answer(
            Status::BadRequest,
            "trailing bytes after the request frame".into(),
        ));
    }
    framing::decode_body::<Request>(&body, "request")
        .map(|request| (request, reservation))
        .map_err(|e| ReadFailure::Answer(Status::BadRequest, e.to_string()))
}

/// Reads `len` body bytes. The buffer grows as data arrives instead of being
/// allocated at the declared length, so streams that announce a large frame and
/// then stall cost no more memory than they actually sent.
async fn read_body(recv: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, ReadFailure> {
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(ReadFailure::Answer(
                    Status::BadRequest,
                    format!(
                        "truncated frame: the stream ended after {} of {len} body bytes",
                        body.len()
                    ),
                ));
            }
            Err(err) => return Err(ReadFailure::Gone(err.to_string())),
        }
    }
    Ok(body)
}

async fn read_exact(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), ReadFailure> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(got)) => Err(ReadFailure::Answer(
            Status::BadRequest,
            format!(
                "truncated frame: the stream ended after {got} of {} bytes",
                buf.len()
            ),
        )),
        Err(quinn::ReadExactError::ReadError(err)) => Err(ReadFailure::Gone(err.to_string())),
    }
}

async fn handle_stream(
    shared: &Arc<Shared>,
    ctx: &Arc<ConnContext>,
    budget: &Arc<ByteBudget>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let started = Instant::now();
    let read_deadline = tokio::time::Instant::now() + shared.read_timeout;
    let read = read_request(&mut recv, shared.max_frame, budget, read_deadline).await;
    let slot;
    let mut held: Option<Reservation> = None;
    let (method, response) = match read {
        Ok((request, mut reservation)) => {
            let method = request.method;
            slot = ReplySlot::new(shared.api.reply_estimate(&request));
            // The body stays until the handler is done, and the reply's expected
            // size is reserved before it is built.
            let wanted = reservation.bytes().saturating_add(slot.estimate());
            let left = read_deadline.saturating_duration_since(tokio::time::Instant::now());
            let response = if shared.lifecycle.is_refusing() {
                error_response(
                    Status::Draining,
                    "gateway shutting down; reconnect and retry",
                    now_ms(),
                )
            } else if !reservation.resize(wanted, left).await {
                busy_response()
            } else {
                // A fetch only reads, so abandoning one (typically waiting for
                // messages) loses nothing; other requests finish what they began.
                let cancel_on_drain = request.method == Method::Fetch as i32;
                call_api(shared, ctx, request, &slot, cancel_on_drain).await
            };
            held = Some(reservation);
            (method, response)
        }
        Err(ReadFailure::Answer(status, message)) => {
            tracing::debug!(conn = ctx.id, ?status, %message, "bad request frame");
            slot = ReplySlot::default();
            (
                Method::Unspecified as i32,
                error_response(status, message, now_ms()),
            )
        }
        Err(ReadFailure::Busy) => {
            slot = ReplySlot::default();
            (Method::Unspecified as i32, busy_response())
        }
        Err(ReadFailure::Gone(reason)) => {
            tracing::debug!(conn = ctx.id, %reason, "request stream lost");
            return;
        }
    };
    let device_held = slot.take();
    let status = status_of(&response);
    // Handed to quinn as is: no copy into its send buffer, and the reply struct
    // is gone before the write starts.
    let frame = bytes::Bytes::from(framing::encode(&response));
    drop(response);
    // From here the reservation covers the encoded reply only.
    let covered = match held.as_mut() {
        Some(reservation) => reservation.resize(frame.len(), shared.write_timeout).await,
        None => match budget.reserve(frame.len(), shared.write_timeout).await {
            Some(reservation) => {
                held = Some(reservation);
                true
            }
            None => false,
        },
    };
    if !covered {
        shared
            .metrics
            .observe_rpc(method, status, started.elapsed());
        abandon(shared, ctx, &mut send, "budget");
        return;
    }
    let write = async {
        send.write_chunk(frame).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())
    };
    let written = tokio::time::timeout(shared.write_timeout, write).await;
    shared
        .metrics
        .observe_rpc(method, status, started.elapsed());
    match written {
        // Keep counting the request (and its bytes) as in flight until the peer
        // has the response, so a draining gateway does not close the connection
        // under it; a reply still unacknowledged then is given up, so that quinn
        // lets go of its bytes.
        Ok(Ok(())) => {
            if tokio::time::timeout(ACK_WAIT, send.stopped())
                .await
                .is_err()
            {
                abandon(shared, ctx, &mut send, "ack_timeout");
            }
        }
        Ok(Err(reason)) => tracing::debug!(conn = ctx.id, %reason, "response not delivered"),
        Err(_) => abandon(shared, ctx, &mut send, "write_timeout"),
    }
    drop(held);
    drop(device_held);
}

/// Resets a request stream whose reply is given up, so that neither the gateway
/// nor quinn keeps its bytes.
fn abandon(shared: &Shared, ctx: &ConnContext, send: &mut quinn::SendStream, reason: &str) {
    tracing::debug!(
        conn = ctx.id,
        reason,
        "reply abandoned; resetting the stream"
    );
    shared
        .metrics
        .streams_reset_total
        .with_label_values(&[reason])
        .inc();
    let _ = send.reset(RESET_ABANDONED.into());
}

/// Runs the API handler, catching a panic in it (a bug) so that it is answered
/// with `STATUS_INTERNAL` instead of a reset stream. The handler runs in the
/// request's own task: a panic leaves nothing behind that other requests use (the
/// handler's state is dropped with it). With `cancel_on_drain`, the handler is
/// abandoned (and the client told `STATUS_DRAINING`) when the gateway starts
/// refusing work, so a long-polling fetch does not hold up the drain.
async fn call_api(
    shared: &Arc<Shared>,
    ctx: &Arc<ConnContext>,
    request: Request,
    slot: &ReplySlot,
    cancel_on_drain: bool,
) -> Response {
    let origin = crate::api::Origin {
        reply: Some(slot),
        ..crate::api::Origin::from(ctx.as_ref())
    };
    let handled = AssertUnwindSafe(shared.api.handle_from(&origin, request)).catch_unwind();
    let outcome = if cancel_on_drain {
        tokio::select! {
            outcome = handled => outcome,
            () = shared.lifecycle.refused() => {
                return error_response(
                    Status::Draining,
                    "gateway shutting down; reconnect and retry",
                    now_ms(),
                );
            }
        }
    } else {
        handled.await
    };
    match outcome {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("a panic");
            tracing::error!(error = %what, "request handler panicked");
            error_response(Status::Internal, "internal error", now_ms())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_short_and_bounded() {
        assert_eq!(rpc_label(Method::Ping as i32), "ping");
        assert_eq!(
            rpc_label(Method::PublishKeyPackages as i32),
            "publish_key_packages"
        );
        assert_eq!(rpc_label(0), "unknown");
        assert_eq!(rpc_label(9999), "unknown");
        assert_eq!(status_label(Status::Ok), "ok");
        assert_eq!(status_label(Status::TooLarge), "too_large");
    }

    #[tokio::test]
    async fn refused_wakes_waiters_and_returns_at_once_afterwards() {
        let lifecycle = Arc::new(Lifecycle::default());
        let waiter = {
            let lifecycle = lifecycle.clone();
            tokio::spawn(async move { lifecycle.refused().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        lifecycle.refuse();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), lifecycle.refused())
            .await
            .unwrap();
        assert!(lifecycle.is_refusing());
    }

    #[tokio::test]
    async fn trackers_wait_until_idle() {
        let tracker = Arc::new(Tracker::default());
        assert!(tracker.wait_idle(Duration::from_millis(1)).await);
        let guard = tracker.enter();
        assert!(!tracker.wait_idle(Duration::from_millis(20)).await);
        let waiter = {
            let tracker = tracker.clone();
            tokio::spawn(async move { tracker.wait_idle(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(guard);
        assert!(waiter.await.unwrap());
        assert_eq!(tracker.count(), 0);
    }
}
