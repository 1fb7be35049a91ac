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

use crate::api::Api;
use crate::context::ConnContext;
use crate::metrics::Metrics;
use futures::FutureExt;
use rossby_protocol::framing::{self, LENGTH_PREFIX};
use rossby_protocol::hawk::{EXPORTER_LABEL, EXPORTER_LEN, rpc_name};
use rossby_protocol::pb::{Method, Request, Response, Status};
use rossby_protocol::status::{error_response, status_of};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
        if shared.lifecycle.is_refusing() {
            // Refusing (rather than ignoring) tells the client at once to try
            // another gateway instead of waiting for a handshake timeout.
            incoming.refuse();
            continue;
        }
        if endpoint.open_connections() >= shared.max_connections {
            tracing::debug!(remote = %incoming.remote_address(), "connection limit reached; refusing");
            incoming.refuse();
            continue;
        }
        let guard = shared.lifecycle.connections.enter();
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_connection(shared, incoming).await;
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

async fn serve_connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
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
    tracing::debug!(conn = ctx.id, %remote, "connection open");
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                let guard = shared.lifecycle.requests.enter();
                let shared = shared.clone();
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    handle_stream(&shared, &ctx, send, recv).await;
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
}

/// Reads one request frame, checking the declared length before reading the body.
async fn read_request(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
) -> Result<Request, ReadFailure> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    read_exact(recv, &mut prefix).await?;
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
    let body = read_body(recv, len).await?;
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
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let started = Instant::now();
    let read = tokio::time::timeout(
        shared.read_timeout,
        read_request(&mut recv, shared.max_frame),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ReadFailure::Answer(
            Status::BadRequest,
            "the request frame did not arrive in time".into(),
        ))
    });
    let (method, response) = match read {
        Ok(request) => {
            let method = request.method;
            let response = if shared.lifecycle.is_refusing() {
                error_response(
                    Status::Draining,
                    "gateway shutting down; reconnect and retry",
                    now_ms(),
                )
            } else {
                // A fetch only reads, so abandoning one (typically waiting for
                // messages) loses nothing; other requests finish what they began.
                let cancel_on_drain = request.method == Method::Fetch as i32;
                call_api(shared, ctx, request, cancel_on_drain).await
            };
            (method, response)
        }
        Err(ReadFailure::Answer(status, message)) => {
            tracing::debug!(conn = ctx.id, ?status, %message, "bad request frame");
            (
                Method::Unspecified as i32,
                error_response(status, message, now_ms()),
            )
        }
        Err(ReadFailure::Gone(reason)) => {
            tracing::debug!(conn = ctx.id, %reason, "request stream lost");
            return;
        }
    };
    let status = status_of(&response);
    // Handed to quinn as is: no copy into its send buffer, and nothing left here
    // while the acknowledgement is awaited.
    let frame = bytes::Bytes::from(framing::encode(&response));
    drop(response);
    let written = match send.write_chunk(frame).await {
        Ok(()) => send.finish().map_err(|e| e.to_string()),
        Err(err) => Err(err.to_string()),
    };
    shared
        .metrics
        .observe_rpc(method, status, started.elapsed());
    match written {
        // Keep counting the request as in flight until the peer has the response,
        // so a draining gateway does not close the connection under it.
        Ok(()) => {
            let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
        }
        Err(reason) => tracing::debug!(conn = ctx.id, %reason, "response not delivered"),
    }
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
    cancel_on_drain: bool,
) -> Response {
    let handled = AssertUnwindSafe(shared.api.handle(ctx, request)).catch_unwind();
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
