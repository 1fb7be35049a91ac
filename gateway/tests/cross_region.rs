//! Cross-region push: two real gateways on loopback in different regions over one
//! shared fjall store, with peer notifications on (certificates from a generated
//! deployment CA) and the storage polling of waiting fetches switched off, so
//! only notifications can deliver across gateways.

mod support;

use rossby_client::Client;
use rossby_gateway::config::StorageConfig;
use rossby_gateway::peer::PeerConfig;
use rossby_gateway::peer::tls::{DevCa, PEER_ALPN, PeerCredentials, PeerIdentity, PeerTls};
use rossby_gateway::{Config, Gateway};
use rossby_keyspace::{BoxId, RegionId};
use rossby_protocol::framing;
use rossby_protocol::pb;
use rossby_storage::kv::fjall::FjallConfig;
use rossby_storage::tables::presence::Holder;
use rossby_storage::{BackendConfig, Kv};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{bounded, client, codes_file, link, register, start_with};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

/// Lease and renewal short enough for the tests to watch leases come and go.
const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Two gateways of one deployment: `g1` in region 1, `g2` in region 2.
struct Deployment {
    ca: DevCa,
    kv: Kv,
    g1: Gateway,
    g2: Gateway,
}

fn peer(ca: &DevCa) -> PeerConfig {
    let mut peer = PeerConfig::loopback(ca.issue("127.0.0.1").unwrap());
    peer.lease = LEASE;
    peer.renew_interval = RENEW;
    peer
}

async fn deployment(dir: &Path) -> Deployment {
    let kv = rossby_storage::kv::open(&BackendConfig::Fjall(FjallConfig::new(dir.join("store"))))
        .await
        .unwrap();
    let ca = DevCa::generate().unwrap();
    let mut c1 = Config::for_tests(dir.join("g1"));
    c1.storage = StorageConfig::Shared(kv.clone());
    c1.api.region = RegionId(1);
    c1.peer = Some(peer(&ca));
    c1.fetch_poll_interval = None;
    let mut c2 = Config::for_tests(dir.join("g2")).same_deployment_as(&c1);
    c2.api.region = RegionId(2);
    c2.peer = Some(peer(&ca));
    c2.fetch_poll_interval = None;
    let g1 = start_with(c1).await;
    let g2 = start_with(c2).await;
    Deployment { ca, kv, g1, g2 }
}

impl Deployment {
    async fn shutdown(self) {
        self.g1.shutdown().await;
        self.g2.shutdown().await;
        drop(self.kv);
    }
}

fn count(gateway: &Gateway, result: &str) -> u64 {
    gateway
        .metrics()
        .peer_notifications_total
        .with_label_values(&[result])
        .get()
}

/// Waits (bounded) until `check` holds.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    bounded(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn live_leases(gateway: &Gateway, box_id: BoxId) -> Vec<Holder> {
    let mut lists = gateway
        .store()
        .live_presence(&[box_id], now_ms())
        .await
        .unwrap();
    lists.pop().unwrap().into_iter().map(|l| l.holder).collect()
}

/// Alice on g1, Bob on g2, registered through their own gateways.
async fn users(d: &Deployment, dir: &Path) -> (Client, BoxId, Client, BoxId) {
    let alice = client(&d.g1, dir.join("alice.state")).await;
    let alice_box = register(&alice, ALICE, &codes_file(&dir.join("g1"))).await;
    let bob = client(&d.g2, dir.join("bob.state")).await;
    let bob_box = register(&bob, BOB, &codes_file(&dir.join("g2"))).await;
    assert_eq!(alice_box.home_region(), RegionId(1));
    assert_eq!(bob_box.home_region(), RegionId(2));
    (alice, alice_box, bob, bob_box)
}

/// Reads pushes until one announces `seq` (a first 1:1 message is preceded by
/// the Commit that starts the conversation, each announced); returns the last
/// sequence number announced.
async fn push_reaching(pushes: &mut rossby_client::Subscription, seq: u64) -> u64 {
    loop {
        let last = messages_available(bounded("a push", pushes.next()).await.unwrap());
        if last >= seq {
            return last;
        }
    }
}

fn messages_available(push: Option<pb::Push>) -> u64 {
    match push.and_then(|p| p.event) {
        Some(pb::push::Event::Messages(m)) => m.last_seq,
        other => panic!("expected MessagesAvailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_one_gateway_hears_of_a_message_sent_through_another() {
    let dir = tempfile::tempdir().unwrap();
    let d = deployment(dir.path()).await;
    let (alice, alice_box, bob, _) = users(&d, dir.path()).await;
    let g1_peers = d.g1.peers().expect("peers are on");

    let mut pushes = bounded("subscribe", alice.subscribe()).await.unwrap();
    assert_eq!(
        messages_available(bounded("first push", pushes.next()).await.unwrap()),
        0
    );
    // The subscription recorded a lease naming g1's peer endpoint.
    let leases = live_leases(&d.g2, alice_box).await;
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].peer_address, g1_peers.advertised());
    assert_eq!(leases[0].gateway_id, g1_peers.gateway_id());
    assert_eq!(d.g1.peer_addr().unwrap().to_string(), g1_peers.advertised());

    // Alice's second device waits in a fetch on g1; polling is off, so only a
    // notification can end it before its deadline.
    let fetcher = client(&d.g1, dir.path().join("alice2.state")).await;
    assert_eq!(link(&alice, &fetcher).await, alice_box);
    let wait = Duration::from_secs(30);
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let batch = fetcher.fetch(wait).await;
        (batch, started.elapsed())
    });
    // Waiting, it holds a lease of its own.
    until("the fetch to wait on g1", async || {
        d.g1.requests_in_flight() > 0 && live_leases(&d.g2, alice_box).await.len() == 2
    })
    .await;

    let sent = bounded("send through g2", bob.send_text(ALICE, "across regions"))
        .await
        .unwrap();
    assert_eq!(sent.to_box, alice_box);
    assert_eq!(push_reaching(&mut pushes, sent.seq).await, sent.seq);
    let (batch, waited) = bounded("the waiting fetch", waiting).await.unwrap();
    let batch = batch.unwrap();
    assert_eq!(batch.messages.len(), 1, "{:?}", batch.rejected);
    assert_eq!(batch.messages[0].seq, sent.seq);
    assert!(
        waited < wait / 2,
        "the fetch was woken by the notification, not by its deadline ({waited:?})"
    );
    assert!(count(&d.g2, "sent") >= 1);
    assert!(count(&d.g1, "received") >= 1);
    assert_eq!(count(&d.g1, "rejected"), 0);
    assert!(
        d.g1.metrics()
            .render()
            .contains("rossby_peer_notifications_total")
    );

    // The other way round: Alice writes from g1 to Bob, who waits on g2.
    let mut bob_pushes = bounded("bob subscribes", bob.subscribe()).await.unwrap();
    bounded("bob's first push", bob_pushes.next())
        .await
        .unwrap();
    let sent = bounded("send through g1", alice.send_text(BOB, "and back"))
        .await
        .unwrap();
    assert_eq!(push_reaching(&mut bob_pushes, sent.seq).await, sent.seq);
    alice.close().await;
    bob.close().await;
    d.shutdown().await;
}

/// A quinn client of the peer endpoint with the given TLS identity.
fn peer_client(identity: &PeerIdentity) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    endpoint.set_default_client_config(identity.client_config().unwrap());
    endpoint
}

/// Tries to deliver a notification for `box_id` to the peer endpoint at `addr`;
/// returns how the connection ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_a_device_subscribed_on_another_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let d = deployment(dir.path()).await;
    let (alice, _, bob, _) = users(&d, dir.path()).await;
    alice.contact(BOB).await.unwrap();

    // Alice's device is subscribed on g1; Bob types on g2.
    let mut pushes = bounded("subscribe", alice.subscribe()).await.unwrap();
    assert_eq!(
        messages_available(bounded("first push", pushes.next()).await.unwrap()),
        0
    );
    let before = count(&d.g1, "received");
    bounded("typing through g2", bob.send_typing(ALICE, true))
        .await
        .unwrap();
    let push = bounded("the typing push", pushes.next()).await.unwrap();
    let Some(pb::push::Event::Ephemeral(e)) = push.and_then(|p| p.event) else {
        panic!("expected an ephemeral push");
    };
    let typing = alice.open_ephemeral(&e).await.unwrap();
    assert_eq!(typing.sender, BOB);
    assert_eq!(typing.body, rossby_client::Body::Typing(true));
    assert!(count(&d.g1, "received") > before);
    // Nothing was stored.
    assert!(
        alice
            .fetch(Duration::ZERO)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    d.shutdown().await;
}

async fn try_notify(endpoint: &quinn::Endpoint, addr: SocketAddr, box_id: BoxId) -> String {
    let frame = framing::encode(&pb::PeerNotify {
        box_id: vec![box_id.as_bytes().to_vec()],
        last_seq: vec![99],
        gateway_id: "rogue".into(),
        ephemeral: Vec::new(),
    });
    let connection = match endpoint.connect(addr, "127.0.0.1").unwrap().await {
        Ok(c) => c,
        Err(err) => return format!("handshake: {err}"),
    };
    // TLS 1.3 lets the client finish its side before the server has checked the
    // client certificate; the server then closes the connection.
    if let Ok(mut stream) = connection.open_uni().await
        && stream.write_all(&frame).await.is_ok()
    {
        let _ = stream.finish();
    }
    format!("closed: {}", connection.closed().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_certificate_from_the_deployment_ca_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let d = deployment(dir.path()).await;
    let (alice, alice_box, bob, _) = users(&d, dir.path()).await;
    let mut pushes = bounded("subscribe", alice.subscribe()).await.unwrap();
    bounded("first push", pushes.next()).await.unwrap();
    let g1_peer = d.g1.peer_addr().unwrap();
    let real_ca = d.ca.ca_pem();
    let rogue = DevCa::generate().unwrap().issue("127.0.0.1").unwrap();

    // A client certificate from another CA (trusting the real CA for the server).
    let foreign = PeerIdentity::load(&PeerTls::Pem(PeerCredentials {
        ca_pem: real_ca.clone(),
        ..rogue.clone()
    }))
    .unwrap();
    let ended = bounded(
        "foreign certificate",
        try_notify(&peer_client(&foreign), g1_peer, alice_box),
    )
    .await;
    assert!(
        ended.contains("cryptographic handshake failed") && ended.contains("certificate"),
        "{ended}"
    );

    // No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut real_ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut anonymous = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    anonymous.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let ended = bounded("no certificate", try_notify(&anonymous, g1_peer, alice_box)).await;
    assert!(
        ended.contains("cryptographic handshake failed") && ended.contains("no certificates"),
        "{ended}"
    );

    // Neither got a notification through: no push, nothing received.
    assert_eq!(count(&d.g1, "received"), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), pushes.next())
            .await
            .is_err(),
        "no push may come from a rejected peer"
    );

    // A server with a certificate from another CA (accepting the real CA's
    // clients) is not trusted by a gateway that notifies it.
    let impostor = PeerIdentity::load(&PeerTls::Pem(PeerCredentials {
        ca_pem: real_ca,
        ..rogue
    }))
    .unwrap();
    let server = quinn::Endpoint::server(
        impostor.server_config().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let impostor_addr = server.local_addr().unwrap();
    let accepted = tokio::spawn(async move {
        let incoming = server.accept().await.unwrap();
        incoming.await.is_ok()
    });
    let alice_device = alice.device_id();
    d.g2.store()
        .claim_presence(
            alice_box,
            alice_device,
            &Holder {
                peer_address: impostor_addr.to_string(),
                gateway_id: "impostor".into(),
            },
            now_ms() + 60_000,
        )
        .await
        .unwrap();
    bounded("send", bob.send_text(ALICE, "hello?"))
        .await
        .unwrap();
    until("the notification to the impostor to fail", async || {
        count(&d.g2, "failed") >= 1
    })
    .await;
    assert_eq!(count(&d.g2, "sent"), 0);
    assert!(
        !bounded("impostor handshake", accepted).await.unwrap(),
        "the gateway must not complete a handshake with an impostor"
    );
    alice.close().await;
    bob.close().await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_unreachable_leases_are_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let d = deployment(dir.path()).await;
    let (alice, alice_box, bob, _) = users(&d, dir.path()).await;
    let device = alice.device_id();
    let g1 = d.g1.peers().unwrap();
    let store = d.g2.store();
    // Nobody is subscribed: a lease naming g1 that has expired.
    let ghost = Holder {
        peer_address: g1.advertised().to_string(),
        gateway_id: "ghost".into(),
    };
    store
        .claim_presence(alice_box, device, &ghost, now_ms() - 1)
        .await
        .unwrap();
    bounded("send", bob.send_text(ALICE, "one")).await.unwrap();
    // The fan-out reads the expired lease and leaves it unused: had it notified
    // g1, the count of sent notifications at the end would be one too many.
    assert_eq!(count(&d.g2, "sent") + count(&d.g2, "failed"), 0);
    assert_eq!(count(&d.g1, "received"), 0);

    // A live lease naming an address where nobody answers: the notification
    // fails, and sends are not held up by it.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = Holder {
        peer_address: silent.local_addr().unwrap().to_string(),
        gateway_id: "dead".into(),
    };
    store
        .claim_presence(alice_box, device, &dead, now_ms() + 60_000)
        .await
        .unwrap();
    bounded("send", bob.send_text(ALICE, "two")).await.unwrap();
    bounded("send", bob.send_text(ALICE, "three"))
        .await
        .unwrap();
    // Both sends were answered while the notification was still trying to
    // connect (for up to notifier::CONNECT_TIMEOUT).
    assert_eq!(count(&d.g2, "failed"), 0, "sends must not wait for peers");
    until("the notification to the dead peer to fail", async || {
        count(&d.g2, "failed") >= 1
    })
    .await;
    assert_eq!(count(&d.g2, "sent"), 0);

    // The same live lease naming g1 instead: g1 is notified.
    store
        .claim_presence(alice_box, device, &ghost, now_ms() + 60_000)
        .await
        .unwrap();
    bounded("send", bob.send_text(ALICE, "four")).await.unwrap();
    until("g1 to receive the notification", async || {
        count(&d.g1, "received") >= 1
    })
    .await;
    assert_eq!(count(&d.g2, "sent"), 1, "only the live lease was used");
    drop(silent);
    alice.close().await;
    bob.close().await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_follow_subscriptions_and_end_with_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let d = deployment(dir.path()).await;
    let (alice, alice_box, bob, _) = users(&d, dir.path()).await;
    assert!(live_leases(&d.g1, alice_box).await.is_empty());

    let mut pushes = bounded("subscribe", alice.subscribe()).await.unwrap();
    bounded("first push", pushes.next()).await.unwrap();
    assert_eq!(live_leases(&d.g1, alice_box).await.len(), 1);
    // Renewed while the subscription lives: still there after several leases.
    tokio::time::sleep(LEASE + LEASE / 2).await;
    assert_eq!(live_leases(&d.g1, alice_box).await.len(), 1);

    // The connection ends: the lease is released at the next renewal tick.
    alice.close().await;
    drop(pushes);
    until("the lease to be released", async || {
        live_leases(&d.g1, alice_box).await.is_empty()
    })
    .await;

    // Subscribed again, then g1 shuts down: its leases go with it.
    let alice = client(&d.g1, dir.path().join("alice.state")).await;
    let mut pushes = bounded("subscribe again", alice.subscribe()).await.unwrap();
    bounded("first push", pushes.next()).await.unwrap();
    assert_eq!(live_leases(&d.g2, alice_box).await.len(), 1);
    let Deployment { kv, g1, g2, .. } = d;
    g1.shutdown().await;
    assert!(live_leases(&g2, alice_box).await.is_empty());
    // Sending to a box with no lease notifies nobody.
    bounded("send", bob.send_text(ALICE, "anyone?"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&g2, "sent") + count(&g2, "failed"), 0);
    alice.close().await;
    bob.close().await;
    g2.shutdown().await;
    drop(kv);
}
