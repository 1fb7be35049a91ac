//! The forwarding side of box ownership: writes for boxes another gateway owns
//! travel to that gateway over the peer connection and their answers come back.
//! Envelopes are batched ([`Forwarder::enqueue`]); requests that write the
//! caller's own box travel one per stream ([`Forwarder::call`]).
//!
//! One task per owner address batches everything queued for that owner (at most
//! [`MAX_FORWARD_BATCH`] envelopes or [`MAX_FORWARD_BYTES`] of payload) into one
//! [`pb::PeerRequest`] on a fresh bidirectional stream, without waiting for the
//! previous batch's answer: up to [`MAX_FORWARDS_IN_FLIGHT`] batches per owner are
//! in flight at once, so a batch never queues behind a WAN round trip. Every
//! failure (no connection, a reset stream, a malformed or short answer, the
//! deadline) is returned to the caller, which then executes the write itself:
//! writes are idempotent per (sender device, message id), so a write the owner
//! did commit is answered from its dedup record.
//!
//! Under the WAN simulation each exchange is charged the round trip between the
//! two regions, half before the request leaves and half after the answer
//! arrives, from the same latency model as the storage simulation.

use super::notifier::dial;
use crate::metrics::Metrics;
use rossby_keyspace::RegionId;
use rossby_protocol::framing;
use rossby_protocol::pb;
use rossby_replication::Topology;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most envelopes in one forwarded batch.
pub const MAX_FORWARD_BATCH: usize = 256;

/// Most payload bytes in one forwarded batch (one envelope always goes).
pub const MAX_FORWARD_BYTES: usize = 1024 * 1024;

/// Batches in flight to one owner at once.
pub const MAX_FORWARDS_IN_FLIGHT: usize = 64;

/// Envelopes queued for one owner before new ones are refused (and executed by
/// the forwarding gateway itself).
pub const FORWARD_QUEUE: usize = 4096;

/// Largest forwarded request or answer frame accepted (a full batch of the
/// largest envelopes with room for the framing).
pub const MAX_FORWARD_FRAME: usize = 2 * MAX_FORWARD_BYTES + 64 * 1024;

/// Longest one exchange may take before the forwarding gateway gives up on it.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// After an owner could not be dialled, how long writes for it fail at once (and
/// are executed by the forwarding gateway) instead of waiting for another dial:
/// about the time the ownership view needs to notice a dead owner.
pub const DOWN_FOR: Duration = Duration::from_secs(1);

/// The connection to one owner, and until when it is considered down.
#[derive(Default)]
struct LinkState {
    connection: Option<quinn::Connection>,
    down_until: Option<tokio::time::Instant>,
}

/// The answer to one forwarded envelope, or why there is none.
pub type Forwarded = Result<pb::PeerEnqueueResult, String>;

struct Pending {
    enqueue: pb::PeerEnqueue,
    reply: oneshot::Sender<Forwarded>,
}

/// Round trips between regions charged on the peer link under the WAN
/// simulation.
#[derive(Clone, Debug)]
pub struct WanDelay {
    /// The simulated deployment.
    pub topology: Arc<Topology>,
    /// This gateway's region.
    pub region: RegionId,
}

impl WanDelay {
    fn one_way(&self, to: RegionId) -> Duration {
        self.topology.rtt(self.region, to).unwrap_or_default() / 2
    }
}

struct Inner {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    gateway_id: String,
    metrics: Arc<Metrics>,
    wan: Option<WanDelay>,
    links: Mutex<HashMap<String, mpsc::Sender<Pending>>>,
    /// The connection to each owner, shared by batches and calls.
    states: Mutex<HashMap<String, Arc<tokio::sync::Mutex<LinkState>>>>,
    closed: AtomicBool,
}

/// Forwards writes to their owners. Cloning shares it.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

impl Forwarder {
    /// A forwarder dialling out from `endpoint` with `client` (mutual TLS).
    pub fn new(
        endpoint: quinn::Endpoint,
        client: quinn::ClientConfig,
        gateway_id: String,
        metrics: Arc<Metrics>,
        wan: Option<WanDelay>,
    ) -> Self {
        Forwarder {
            inner: Arc::new(Inner {
                endpoint,
                client,
                gateway_id,
                metrics,
                wan,
                links: Mutex::new(HashMap::new()),
                states: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    fn links(&self) -> MutexGuard<'_, HashMap<String, mpsc::Sender<Pending>>> {
        self.inner
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forwards one envelope to the owner at `address` in `region` and waits for
    /// its answer.
    pub async fn enqueue(
        &self,
        address: &str,
        region: RegionId,
        enqueue: pb::PeerEnqueue,
    ) -> Forwarded {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err("forwarding is shut down".into());
        }
        let (reply, rx) = oneshot::channel();
        let tx = {
            let mut links = self.links();
            match links.get(address) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
                    links.insert(address.to_string(), tx.clone());
                    tokio::spawn(link(self.clone(), address.to_string(), region, rx));
                    tx
                }
            }
        };
        tx.try_send(Pending { enqueue, reply })
            .map_err(|_| format!("the forwarding queue to {address} is full"))?;
        rx.await
            .unwrap_or_else(|_| Err("the forwarding task ended".into()))
    }

    /// The connection state of the owner at `address`.
    fn state(&self, address: &str) -> Arc<tokio::sync::Mutex<LinkState>> {
        self.inner
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(address.to_string())
            .or_default()
            .clone()
    }

    /// Forwards one request of a caller whose box the gateway at `address` (in
    /// `region`) owns, and returns that gateway's answer.
    pub async fn call(
        &self,
        address: &str,
        region: RegionId,
        call: pb::PeerCall,
    ) -> Result<pb::Response, String> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err("forwarding is shut down".into());
        }
        let request = pb::PeerRequest {
            gateway_id: self.inner.gateway_id.clone(),
            enqueues: Vec::new(),
            calls: vec![call],
        };
        let state = self.state(address);
        let outcome = tokio::time::timeout(
            FORWARD_TIMEOUT,
            exchange(self, address, region, &state, &request),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {address} in time")))
        .and_then(|r| {
            r.calls
                .into_iter()
                .next()
                .ok_or_else(|| format!("{address} did not answer the forwarded call"))
        });
        let result = if outcome.is_ok() {
            "answered"
        } else {
            "failed"
        };
        self.inner.metrics.peer_forwards(result, 1);
        outcome
    }

    /// Stops forwarding: queued and later writes fail (and are executed locally).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.links().clear();
    }

    fn retire(&self, address: &str, rx: &mpsc::Receiver<Pending>) -> bool {
        let mut links = self.links();
        if !rx.is_empty() {
            return false;
        }
        links.remove(address);
        true
    }
}

/// The task of one owner: batches its queue into exchanges.
async fn link(
    forwarder: Forwarder,
    address: String,
    region: RegionId,
    mut rx: mpsc::Receiver<Pending>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_FORWARDS_IN_FLIGHT));
    let connection = forwarder.state(&address);
    loop {
        let first = match tokio::time::timeout(super::notifier::PEER_IDLE, rx.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(_) => {
                if forwarder.retire(&address, &rx) {
                    break;
                }
                continue;
            }
        };
        let mut bytes = first.enqueue.payload.len();
        let mut batch = vec![first];
        while batch.len() < MAX_FORWARD_BATCH {
            match rx.try_recv() {
                Ok(p) if bytes + p.enqueue.payload.len() <= MAX_FORWARD_BYTES => {
                    bytes += p.enqueue.payload.len();
                    batch.push(p);
                }
                Ok(p) => {
                    // Over the byte budget: it leads the next batch.
                    spawn_exchange(&forwarder, &address, region, &in_flight, &connection, batch)
                        .await;
                    bytes = p.enqueue.payload.len();
                    batch = vec![p];
                }
                Err(_) => break,
            }
        }
        spawn_exchange(&forwarder, &address, region, &in_flight, &connection, batch).await;
    }
    if let Some(c) = connection.lock().await.connection.take() {
        c.close(0u32.into(), b"idle");
    }
}

async fn spawn_exchange(
    forwarder: &Forwarder,
    address: &str,
    region: RegionId,
    in_flight: &Arc<Semaphore>,
    connection: &Arc<tokio::sync::Mutex<LinkState>>,
    batch: Vec<Pending>,
) {
    let Ok(permit) = in_flight.clone().acquire_owned().await else {
        fail(batch, "forwarding stopped");
        return;
    };
    let forwarder = forwarder.clone();
    let address = address.to_string();
    let connection = connection.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let (enqueues, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.enqueue, p.reply)).unzip();
        let n = enqueues.len();
        let request = pb::PeerRequest {
            gateway_id: forwarder.inner.gateway_id.clone(),
            enqueues,
            calls: Vec::new(),
        };
        let outcome = tokio::time::timeout(
            FORWARD_TIMEOUT,
            exchange(&forwarder, &address, region, &connection, &request),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {address} in time")));
        match outcome {
            Ok(response) if response.enqueues.len() == n => {
                forwarder.inner.metrics.peer_forwards("answered", n);
                for (reply, result) in replies.into_iter().zip(response.enqueues) {
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(response) => {
                forwarder.inner.metrics.peer_forwards("failed", n);
                let why = format!(
                    "{address} answered {} of {n} forwarded envelopes",
                    response.enqueues.len()
                );
                for reply in replies {
                    let _ = reply.send(Err(why.clone()));
                }
            }
            Err(why) => {
                forwarder.inner.metrics.peer_forwards("failed", n);
                tracing::debug!(peer = %address, error = %why, "forwarding failed");
                for reply in replies {
                    let _ = reply.send(Err(why.clone()));
                }
            }
        }
    });
}

fn fail(batch: Vec<Pending>, why: &str) {
    for p in batch {
        let _ = p.reply.send(Err(why.to_string()));
    }
}

/// One request and its answer on a fresh stream; a connection that turns out
/// dead is replaced once.
async fn exchange(
    forwarder: &Forwarder,
    address: &str,
    region: RegionId,
    connection: &tokio::sync::Mutex<LinkState>,
    request: &pb::PeerRequest,
) -> Result<pb::PeerResponse, String> {
    let delay = forwarder.inner.wan.as_ref().map(|w| w.one_way(region));
    if let Some(d) = delay.filter(|d| !d.is_zero()) {
        tokio::time::sleep(d).await;
    }
    let frame = framing::encode(request);
    let mut last = String::new();
    for _ in 0..2 {
        let conn = {
            let mut link = connection.lock().await;
            if link
                .down_until
                .is_some_and(|t| tokio::time::Instant::now() < t)
            {
                return Err(format!("{address} was unreachable a moment ago"));
            }
            match link
                .connection
                .as_ref()
                .filter(|c| c.close_reason().is_none())
            {
                Some(c) => c.clone(),
                None => {
                    match dial(&forwarder.inner.endpoint, &forwarder.inner.client, address).await {
                        Ok(c) => {
                            link.connection = Some(c.clone());
                            link.down_until = None;
                            c
                        }
                        Err(why) => {
                            link.connection = None;
                            link.down_until = Some(tokio::time::Instant::now() + DOWN_FOR);
                            return Err(why);
                        }
                    }
                }
            }
        };
        match round_trip(&conn, &frame).await {
            Ok(bytes) => {
                let response = framing::decode_one::<pb::PeerResponse>(
                    &bytes,
                    MAX_FORWARD_FRAME,
                    "PeerResponse",
                )
                .map_err(|e| format!("malformed answer from {address}: {e}"))?;
                if let Some(d) = delay.filter(|d| !d.is_zero()) {
                    tokio::time::sleep(d).await;
                }
                return Ok(response);
            }
            Err((why, retry)) => {
                last = why;
                if !retry {
                    break;
                }
                conn.close(0u32.into(), b"stream failed");
                connection.lock().await.connection = None;
            }
        }
    }
    Err(last)
}

/// Writes the request and reads the answer. On failure, whether a fresh
/// connection may help (the stream could not even be opened).
async fn round_trip(conn: &quinn::Connection, frame: &[u8]) -> Result<Vec<u8>, (String, bool)> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| (e.to_string(), true))?;
    send.write_all(frame)
        .await
        .map_err(|e| (e.to_string(), false))?;
    send.finish().map_err(|e| (e.to_string(), false))?;
    recv.read_to_end(framing::LENGTH_PREFIX + MAX_FORWARD_FRAME)
        .await
        .map_err(|e| (e.to_string(), false))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../docs/examples/three-regions.toml");

    #[test]
    fn the_peer_hop_is_charged_half_the_round_trip_each_way() {
        let topology = Arc::new(Topology::parse(EXAMPLE).unwrap());
        let from_us = WanDelay {
            topology,
            region: RegionId(1),
        };
        // us-east <-> eu-west 68 ms, us-east <-> ap-southeast 215 ms.
        assert_eq!(from_us.one_way(RegionId(2)), Duration::from_millis(34));
        assert_eq!(from_us.one_way(RegionId(3)), Duration::from_micros(107_500));
        assert_eq!(from_us.one_way(RegionId(1)), Duration::ZERO);
    }
}
