//! The sending side of the gateway-to-gateway endpoint: one task and at most one
//! QUIC connection per peer address.
//!
//! [`Notifier::notify`] never waits: it puts the updates on the peer's bounded
//! queue and returns, dropping them when the queue is full. The peer's task takes
//! everything queued at once (coalescing updates of the same box), connects if it
//! has no connection, and writes one [`pb::PeerNotify`] on a fresh unidirectional
//! stream. A failed connection is retried with exponential back-off; updates that
//! arrive meanwhile are dropped rather than queued behind a dead peer. Every loss
//! is fine: devices fall back to fetching.
//!
//! Ephemeral messages ride along in the same notifications, at most
//! [`MAX_EPHEMERAL_BYTES_PER_NOTIFY`] bytes of them in one; the bytes queued for
//! all peers are bounded by [`PEER_EPHEMERAL_BYTES`] (beyond, they are dropped).
//!
//! Outcomes are counted per box (and per ephemeral message) in
//! `rossby_peer_notifications_total{result}`: `sent`, `dropped` (queue full),
//! `failed` (no connection or the write failed). A peer's task ends after
//! [`PEER_IDLE`] without updates.

use super::fanout::ephemeral_size;
use super::server::{MAX_BOXES_PER_NOTIFY, MAX_EPHEMERAL_BYTES_PER_NOTIFY};
use super::tls::PEER_IDLE_TIMEOUT;
use crate::metrics::Metrics;
use rossby_keyspace::BoxId;
use rossby_protocol::framing;
use rossby_protocol::pb;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Updates (box, last sequence number) queued per peer before new ones are dropped.
pub const PEER_QUEUE: usize = 1024;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long writing one notification may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// First and longest wait before reconnecting to a peer that could not be reached.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A peer's task (and connection) ends after this long without updates.
pub const PEER_IDLE: Duration = PEER_IDLE_TIMEOUT;

/// Most bytes of ephemeral messages queued for all peers together.
pub const PEER_EPHEMERAL_BYTES: usize = 8 * 1024 * 1024;

/// What a peer is told.
#[derive(Clone, Debug)]
pub enum PeerUpdate {
    /// Messages were committed into a box up to a sequence number.
    Committed(BoxId, u64),
    /// An ephemeral message for subscribed devices of a box (shared between the
    /// peers it goes to).
    Ephemeral(Arc<pb::PeerEphemeral>),
}

impl PeerUpdate {
    /// The ephemeral bytes it holds.
    fn ephemeral_bytes(&self) -> usize {
        match self {
            PeerUpdate::Committed(..) => 0,
            PeerUpdate::Ephemeral(m) => m.push.as_ref().map_or(64, ephemeral_size),
        }
    }
}

type Update = PeerUpdate;

struct Inner {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    gateway_id: String,
    metrics: Arc<Metrics>,
    links: Mutex<HashMap<String, mpsc::Sender<Update>>>,
    closed: AtomicBool,
    /// Bytes of ephemeral messages in the peers' queues.
    ephemeral_bytes: AtomicUsize,
}

/// Sends notifications to other gateways. Cloning shares it.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl Notifier {
    /// A notifier that dials out from `endpoint` with `client` (mutual TLS) and
    /// names itself `gateway_id`.
    pub fn new(
        endpoint: quinn::Endpoint,
        client: quinn::ClientConfig,
        gateway_id: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Notifier {
            inner: Arc::new(Inner {
                endpoint,
                client,
                gateway_id,
                metrics,
                links: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                ephemeral_bytes: AtomicUsize::new(0),
            }),
        }
    }

    fn links(&self) -> MutexGuard<'_, HashMap<String, mpsc::Sender<Update>>> {
        self.inner
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `updates` for the gateway at `address` (`host:port`). Never waits.
    pub fn notify(&self, address: &str, updates: Vec<Update>) {
        if self.inner.closed.load(Ordering::Acquire) {
            return;
        }
        let mut links = self.links();
        let tx = match links.get(address) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                links.insert(address.to_string(), tx.clone());
                tokio::spawn(link(self.clone(), address.to_string(), rx));
                tx
            }
        };
        drop(links);
        let mut dropped = 0;
        for update in updates {
            let bytes = update.ephemeral_bytes();
            if bytes > 0 && !self.reserve(bytes) {
                dropped += 1;
                continue;
            }
            if tx.try_send(update).is_err() {
                self.release(bytes);
                dropped += 1;
            }
        }
        self.count("dropped", dropped);
    }

    /// Takes `bytes` of the ephemeral budget; false when it is spent.
    fn reserve(&self, bytes: usize) -> bool {
        self.inner
            .ephemeral_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + bytes <= PEER_EPHEMERAL_BYTES).then_some(queued + bytes)
            })
            .is_ok()
    }

    /// Gives `bytes` of the ephemeral budget back.
    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.inner
                .ephemeral_bytes
                .fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Stops sending: every peer's task ends once it has written what it holds.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.links().clear();
    }

    /// Peers with a running task (for tests and debugging).
    pub fn peers(&self) -> usize {
        self.links().len()
    }

    /// Ends a peer's task if nothing is queued for it; returns whether it ended.
    fn retire(&self, address: &str, rx: &mpsc::Receiver<Update>) -> bool {
        let mut links = self.links();
        // Under the lock `notify` cannot queue more, so an empty queue stays empty.
        if !rx.is_empty() {
            return false;
        }
        links.remove(address);
        true
    }

    async fn connect(&self, address: &str) -> Result<quinn::Connection, String> {
        dial(&self.inner.endpoint, &self.inner.client, address).await
    }

    fn count(&self, result: &str, n: usize) {
        if n > 0 {
            self.inner.metrics.peer_notifications(result, n);
        }
    }
}

/// Connects from `endpoint` to the peer at `address` (`host:port`) with `client`
/// (mutual TLS), within [`CONNECT_TIMEOUT`].
pub(crate) async fn dial(
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    address: &str,
) -> Result<quinn::Connection, String> {
    let (host, _) = split_host_port(address)
        .ok_or_else(|| format!("peer address {address:?} is not host:port"))?;
    let attempt = async {
        let target = tokio::net::lookup_host(address)
            .await
            .map_err(|e| format!("cannot resolve {address}: {e}"))?
            .next()
            .ok_or_else(|| format!("{address} resolves to no address"))?;
        let connecting = endpoint
            .connect_with(client.clone(), target, host)
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        connecting
            .await
            .map_err(|e| format!("handshake with {address} failed: {e}"))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("connecting to {address} timed out"))?
}

/// `host` and `port` of `host:port` (`[v6]:port` for IPv6).
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

async fn write(connection: &quinn::Connection, frame: &[u8]) -> Result<(), String> {
    let attempt = async {
        let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
        stream.write_all(frame).await.map_err(|e| e.to_string())?;
        stream.finish().map_err(|e| e.to_string())
    };
    tokio::time::timeout(WRITE_TIMEOUT, attempt)
        .await
        .map_err(|_| "write timed out".to_string())?
}

/// The task of one peer: drains its queue into notifications.
async fn link(notifier: Notifier, address: String, mut rx: mpsc::Receiver<Update>) {
    let mut connection: Option<quinn::Connection> = None;
    let mut backoff = BACKOFF_MIN;
    let mut retry_at: Option<Instant> = None;
    loop {
        let first = match tokio::time::timeout(PEER_IDLE, rx.recv()).await {
            Ok(Some(update)) => update,
            Ok(None) => break,
            Err(_) => {
                if notifier.retire(&address, &rx) {
                    break;
                }
                continue;
            }
        };
        let mut batch: HashMap<BoxId, u64> = HashMap::new();
        let mut ephemeral: Vec<pb::PeerEphemeral> = Vec::new();
        let mut ephemeral_bytes = 0;
        let mut next = Some(first);
        while let Some(update) = next.take() {
            let bytes = update.ephemeral_bytes();
            match update {
                PeerUpdate::Committed(b, seq) => {
                    let entry = batch.entry(b).or_insert(seq);
                    *entry = (*entry).max(seq);
                }
                PeerUpdate::Ephemeral(m) => {
                    notifier.release(bytes);
                    // Beyond one notification's share the message is dropped: it
                    // only showed that someone is typing.
                    if ephemeral_bytes + bytes <= MAX_EPHEMERAL_BYTES_PER_NOTIFY
                        && ephemeral.len() < MAX_BOXES_PER_NOTIFY
                    {
                        ephemeral_bytes += bytes;
                        ephemeral.push(m.as_ref().clone());
                    } else {
                        notifier.count("dropped", 1);
                    }
                }
            }
            if batch.len() < MAX_BOXES_PER_NOTIFY
                && ephemeral_bytes < MAX_EPHEMERAL_BYTES_PER_NOTIFY
            {
                next = rx.try_recv().ok();
            }
        }
        let updates = batch.len() + ephemeral.len();
        if retry_at.is_some_and(|at| Instant::now() < at) {
            notifier.count("failed", updates);
            continue;
        }
        let (box_id, last_seq) = batch
            .iter()
            .map(|(b, s)| (b.as_bytes().to_vec(), *s))
            .unzip();
        let frame = framing::encode(&pb::PeerNotify {
            box_id,
            last_seq,
            gateway_id: notifier.inner.gateway_id.clone(),
            ephemeral,
        });
        // A connection that died since its last use fails the first write; one
        // fresh connection is tried before giving up on this batch.
        let mut sent = false;
        for _ in 0..2 {
            let conn = match connection.as_ref().filter(|c| c.close_reason().is_none()) {
                Some(c) => c.clone(),
                None => match notifier.connect(&address).await {
                    Ok(c) => {
                        connection = Some(c.clone());
                        c
                    }
                    Err(err) => {
                        tracing::debug!(peer = %address, error = %err, "peer unreachable");
                        connection = None;
                        break;
                    }
                },
            };
            match write(&conn, &frame).await {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(err) => {
                    tracing::debug!(peer = %address, error = %err, "peer notification failed");
                    conn.close(0u32.into(), b"write failed");
                    connection = None;
                }
            }
        }
        if sent {
            notifier.count("sent", updates);
            backoff = BACKOFF_MIN;
            retry_at = None;
        } else {
            notifier.count("failed", updates);
            retry_at = Some(Instant::now() + backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
    if let Some(c) = connection {
        c.close(0u32.into(), b"idle");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_split() {
        assert_eq!(
            split_host_port("gw.example:7402"),
            Some(("gw.example", 7402))
        );
        assert_eq!(split_host_port("127.0.0.1:1"), Some(("127.0.0.1", 1)));
        assert_eq!(split_host_port("[::1]:7402"), Some(("::1", 7402)));
        assert_eq!(split_host_port("gw.example"), None);
        assert_eq!(split_host_port(":7402"), None);
        assert_eq!(split_host_port("gw:0"), None);
        assert_eq!(split_host_port("gw:99999"), None);
    }
}
