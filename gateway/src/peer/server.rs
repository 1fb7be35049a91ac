//! The accepting side of the gateway-to-gateway endpoint: every connection has
//! passed mutual TLS (its certificate chains to the deployment CA), and every
//! unidirectional stream on it carries one framed [`pb::PeerNotify`]. A
//! notification is applied exactly like a local commit: the box's fetch waiters
//! wake and its subscribed devices get a `MessagesAvailable` push; the ephemeral
//! messages it carries are pushed to the subscribed devices of their boxes. Every
//! bidirectional stream carries one forwarded [`pb::PeerRequest`] (writes for
//! boxes this gateway owns), executed by the [`OwnedWrites`] handler and answered
//! with one [`pb::PeerResponse`] on the same stream.
//!
//! Nothing a peer sends can panic the gateway: oversized or malformed frames are
//! counted as `rejected` and dropped.

use super::forward::MAX_FORWARD_FRAME;
use crate::metrics::Metrics;
use crate::presence::Presence;
use async_trait::async_trait;
use rossby_keyspace::{BoxId, DeviceId};
use rossby_protocol::framing;
use rossby_protocol::pb;
use std::sync::{Arc, OnceLock, Weak};
use tokio::task::JoinSet;

/// Executes writes forwarded by other gateways (the API's enqueuer).
#[async_trait]
pub trait OwnedWrites: Send + Sync {
    /// Executes every write of `request` here (never forwarding it again) and
    /// answers each.
    async fn execute(&self, request: pb::PeerRequest) -> pb::PeerResponse;
}

/// Where forwarded writes go once the API is attached; weak, so the peer
/// endpoint does not keep the API alive.
pub type Handler = Arc<OnceLock<Weak<dyn OwnedWrites>>>;

/// Most boxes one notification may name.
pub const MAX_BOXES_PER_NOTIFY: usize = 1024;

/// Most bytes of ephemeral messages one notification carries.
pub const MAX_EPHEMERAL_BYTES_PER_NOTIFY: usize = 512 * 1024;

/// Largest notification frame accepted: a full [`MAX_BOXES_PER_NOTIFY`] list and
/// [`MAX_EPHEMERAL_BYTES_PER_NOTIFY`] of ephemeral messages, with room to spare.
pub const MAX_NOTIFY_FRAME: usize = 64 * 1024 + MAX_EPHEMERAL_BYTES_PER_NOTIFY;

/// Most peer connections accepted at once (a deployment has a handful of gateways).
pub const MAX_PEER_CONNECTIONS: usize = 1024;

/// Serves the peer endpoint until it is closed.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    presence: Presence,
    metrics: Arc<Metrics>,
    handler: Handler,
) {
    let mut connections = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_PEER_CONNECTIONS {
            incoming.refuse();
            continue;
        }
        let presence = presence.clone();
        let metrics = metrics.clone();
        let handler = handler.clone();
        connections.spawn(async move {
            match incoming.await {
                Ok(connection) => {
                    tokio::join!(
                        serve(connection.clone(), presence, metrics),
                        serve_forwarded(connection, handler)
                    );
                }
                // Failed handshakes (a certificate not from the deployment CA, no
                // certificate, wrong ALPN) end here.
                Err(err) => tracing::debug!(error = %err, "peer handshake failed"),
            }
        });
    }
    connections.shutdown().await;
}

async fn serve(connection: quinn::Connection, presence: Presence, metrics: Arc<Metrics>) {
    let remote = connection.remote_address();
    tracing::debug!(%remote, "peer connected");
    let mut streams = JoinSet::new();
    while let Ok(mut stream) = connection.accept_uni().await {
        while streams.try_join_next().is_some() {}
        let presence = presence.clone();
        let metrics = metrics.clone();
        streams.spawn(async move {
            match stream
                .read_to_end(framing::LENGTH_PREFIX + MAX_NOTIFY_FRAME)
                .await
            {
                Ok(bytes) => {
                    apply(&bytes, &presence, &metrics);
                }
                Err(err) => {
                    metrics.peer_notifications("rejected", 1);
                    tracing::debug!(error = %err, "peer notification stream failed");
                }
            }
        });
    }
    streams.shutdown().await;
    tracing::debug!(%remote, "peer disconnected");
}

/// Answers the forwarded requests of one peer connection.
async fn serve_forwarded(connection: quinn::Connection, handler: Handler) {
    let mut streams = JoinSet::new();
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        while streams.try_join_next().is_some() {}
        let handler = handler.clone();
        streams.spawn(async move {
            let response = match recv
                .read_to_end(framing::LENGTH_PREFIX + MAX_FORWARD_FRAME)
                .await
            {
                Ok(bytes) => match framing::decode_one::<pb::PeerRequest>(
                    &bytes,
                    MAX_FORWARD_FRAME,
                    "PeerRequest",
                ) {
                    Ok(request) => match handler.get().and_then(Weak::upgrade) {
                        Some(owner) => owner.execute(request).await,
                        // Not attached (starting or stopping): the forwarding
                        // gateway executes the writes itself.
                        None => return,
                    },
                    Err(err) => {
                        tracing::debug!(error = %err, "malformed forwarded request");
                        return;
                    }
                },
                Err(err) => {
                    tracing::debug!(error = %err, "forwarded request stream failed");
                    return;
                }
            };
            if send.write_all(&framing::encode(&response)).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
    streams.shutdown().await;
}

/// Decodes one notification frame and wakes the boxes it names. Returns how many
/// boxes were announced.
pub(crate) fn apply(bytes: &[u8], presence: &Presence, metrics: &Metrics) -> usize {
    let notify = match framing::decode_one::<pb::PeerNotify>(bytes, MAX_NOTIFY_FRAME, "PeerNotify")
    {
        Ok(n) => n,
        Err(err) => {
            metrics.peer_notifications("rejected", 1);
            tracing::debug!(error = %err, "malformed peer notification");
            return 0;
        }
    };
    if notify.box_id.len() != notify.last_seq.len()
        || notify.box_id.len() > MAX_BOXES_PER_NOTIFY
        || notify.ephemeral.len() > MAX_BOXES_PER_NOTIFY
    {
        metrics.peer_notifications("rejected", 1);
        tracing::debug!(
            boxes = notify.box_id.len(),
            seqs = notify.last_seq.len(),
            "peer notification with mismatched or too many entries"
        );
        return 0;
    }
    let mut applied = 0;
    for (raw, last_seq) in notify.box_id.iter().zip(&notify.last_seq) {
        match BoxId::try_from_slice(raw) {
            Ok(box_id) => {
                presence.messages_available(box_id, *last_seq);
                metrics.peer_notifications("received", 1);
                applied += 1;
            }
            Err(_) => metrics.peer_notifications("rejected", 1),
        }
    }
    for message in notify.ephemeral {
        match ephemeral_target(&message) {
            Some((box_id, skip)) => {
                let push = message.push.unwrap_or_default();
                presence.ephemeral(box_id, skip, &push);
                metrics.peer_notifications("received", 1);
                applied += 1;
            }
            None => metrics.peer_notifications("rejected", 1),
        }
    }
    applied
}

/// The box and the device to skip of an ephemeral message, if well-formed.
fn ephemeral_target(message: &pb::PeerEphemeral) -> Option<(BoxId, Option<DeviceId>)> {
    let box_id = BoxId::try_from_slice(&message.box_id).ok()?;
    let skip = match message.skip_device.as_slice() {
        [] => None,
        raw => Some(DeviceId::try_from_slice(raw).ok()?),
    };
    message.push.as_ref()?;
    Some((box_id, skip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_keyspace::RegionId;

    fn frame(boxes: &[BoxId], seqs: &[u64]) -> Vec<u8> {
        framing::encode(&pb::PeerNotify {
            box_id: boxes.iter().map(|b| b.as_bytes().to_vec()).collect(),
            last_seq: seqs.to_vec(),
            gateway_id: "g".into(),
            ephemeral: Vec::new(),
        })
    }

    #[tokio::test]
    async fn notifications_push_like_a_local_commit_and_garbage_is_counted() {
        let presence = Presence::new();
        let metrics = Metrics::new();
        let (b, other) = (BoxId::new(RegionId(2)), BoxId::new(RegionId(3)));
        let (tx, mut rx) = crate::presence::push_queue(8, 1 << 20, None);
        presence.subscribe(1, b, DeviceId::new(), tx);
        assert_eq!(apply(&frame(&[b, other], &[7, 1]), &presence, &metrics), 2);
        assert_eq!(
            rx.recv_push().await.unwrap().event,
            Some(pb::push::Event::Messages(pb::MessagesAvailable {
                last_seq: 7
            }))
        );
        let count = |r: &str| {
            metrics
                .peer_notifications_total
                .with_label_values(&[r])
                .get()
        };
        assert_eq!(count("received"), 2);

        assert_eq!(apply(&frame(&[b], &[1, 2]), &presence, &metrics), 0);
        assert_eq!(apply(&[0, 0, 0, 2, 0xff, 0xff], &presence, &metrics), 0);
        assert_eq!(apply(&[0, 1], &presence, &metrics), 0);
        let mut bad_box = pb::PeerNotify {
            box_id: vec![vec![1; 3]],
            last_seq: vec![1],
            gateway_id: String::new(),
            ephemeral: Vec::new(),
        };
        assert_eq!(apply(&framing::encode(&bad_box), &presence, &metrics), 0);
        bad_box.box_id = vec![vec![0; 16]; MAX_BOXES_PER_NOTIFY + 1];
        bad_box.last_seq = vec![1; MAX_BOXES_PER_NOTIFY + 1];
        assert_eq!(apply(&framing::encode(&bad_box), &presence, &metrics), 0);
        assert_eq!(count("rejected"), 5);
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn ephemeral_messages_reach_subscribed_devices_except_the_skipped_one() {
        let presence = Presence::new();
        let metrics = Metrics::new();
        let b = BoxId::new(RegionId(2));
        let (sender, other) = (
            rossby_keyspace::DeviceId::new(),
            rossby_keyspace::DeviceId::new(),
        );
        let (tx_sender, mut rx_sender) = crate::presence::push_queue(8, 1 << 20, None);
        let (tx_other, mut rx_other) = crate::presence::push_queue(8, 1 << 20, None);
        presence.subscribe(1, b, sender, tx_sender);
        presence.subscribe(2, b, other, tx_other);
        let push = pb::Ephemeral {
            sender_box: b.as_bytes().to_vec(),
            sender_device: sender.as_bytes().to_vec(),
            envelope: vec![7; 100],
        };
        let notify = |ephemeral: Vec<pb::PeerEphemeral>| {
            framing::encode(&pb::PeerNotify {
                ephemeral,
                ..pb::PeerNotify::default()
            })
        };
        let good = pb::PeerEphemeral {
            box_id: b.as_bytes().to_vec(),
            skip_device: sender.as_bytes().to_vec(),
            push: Some(push.clone()),
        };
        assert_eq!(apply(&notify(vec![good.clone()]), &presence, &metrics), 1);
        assert_eq!(
            rx_other.recv_push().await.unwrap().event,
            Some(pb::push::Event::Ephemeral(push))
        );
        assert!(
            rx_sender.try_recv().is_none(),
            "the sending device is skipped"
        );

        let bad = [
            pb::PeerEphemeral {
                box_id: vec![1; 3],
                ..good.clone()
            },
            pb::PeerEphemeral {
                skip_device: vec![1; 3],
                ..good.clone()
            },
            pb::PeerEphemeral {
                push: None,
                ..good.clone()
            },
        ];
        assert_eq!(apply(&notify(bad.to_vec()), &presence, &metrics), 0);
        assert_eq!(
            apply(
                &notify(vec![good; MAX_BOXES_PER_NOTIFY + 1]),
                &presence,
                &metrics
            ),
            0
        );
        let count = |r: &str| {
            metrics
                .peer_notifications_total
                .with_label_values(&[r])
                .get()
        };
        assert_eq!(count("received"), 1);
        assert_eq!(count("rejected"), 4);
        assert!(rx_other.try_recv().is_none());
    }
}
