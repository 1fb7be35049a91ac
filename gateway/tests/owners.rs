//! Home-region writers on real gateways: every write to a box is executed by its
//! owning gateway in the box's home region, other gateways forward to it, and the
//! owner's death moves its boxes within the ownership lease.

mod support;

use rossby_gateway::config::{StorageConfig, read_topology};
use rossby_gateway::peer::PeerConfig;
use rossby_gateway::peer::ownership::Owner;
use rossby_gateway::peer::tls::DevCa;
use rossby_gateway::{Config, Gateway, LocalDeployment};
use rossby_keyspace::{MessageId, RegionId};
use rossby_protocol::pb::{self, Method, Status};
use rossby_storage::kv::BackendConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{RawConn, RawDevice, bounded, codes_file, device_list, fetch_raw, ok, register_raw};

const US_EAST: RegionId = RegionId(1);
const EU_WEST: RegionId = RegionId(2);
const AP_SOUTHEAST: RegionId = RegionId(3);

fn example_topology() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/three-regions.toml")
}

fn conflicts(gateway: &Gateway) -> u64 {
    gateway.metrics().storage_conflicts_total.get()
}

/// Waits (bounded) until every gateway's ownership view has a live gateway in
/// each of `regions`.
async fn settled(gateways: &[&Gateway], regions: &[(RegionId, usize)]) {
    bounded("ownership views settle", async {
        loop {
            let done = gateways.iter().all(|g| {
                let own = g.peers().and_then(|p| p.ownership()).expect("ownership on");
                regions.iter().all(|(r, n)| own.live_in(*r) == *n)
            });
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// One Send from `from` of an opaque envelope to several boxes (their
/// device lists) with a given message id.
fn send_to(
    targets: &[pb::DeviceList],
    from: &RawDevice,
    message_id: MessageId,
    text: &[u8],
) -> pb::SendRequest {
    pb::SendRequest {
        message_id: message_id.as_bytes().to_vec(),
        recipients: targets
            .iter()
            .map(|list| pb::Recipient {
                box_id: list.box_id.clone(),
                device_list_version: list.version,
                envelope: support::envelope_for(list, from, text),
            })
            .collect(),
        ephemeral: false,
        attachments: Vec::new(),
        wake: pb::Wake::High as i32,
    }
}

/// Every envelope in the box of `device`, as (sender device, message id) -> seq,
/// checking that each appears once and that sequence numbers have no gap.
async fn queued(conn: &RawConn, device: &RawDevice) -> BTreeMap<(Vec<u8>, Vec<u8>), u64> {
    let mut seen = BTreeMap::new();
    let mut after = 0u64;
    loop {
        let fetched = fetch_raw(conn, device).await;
        if fetched.envelopes.is_empty() {
            break;
        }
        for e in &fetched.envelopes {
            assert_eq!(e.seq, after + 1, "sequence numbers without gaps");
            after = e.seq;
            let key = (e.sender_device.clone(), e.message_id.clone());
            assert!(seen.insert(key, e.seq).is_none(), "an envelope twice");
        }
        let ack = pb::AckRequest { up_to: after };
        let _: pb::AckResponse = ok(&conn.call(device, Method::Ack, &ack).await);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_in_three_regions_write_into_the_same_boxes_without_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path()).in_memory();
    let path = example_topology();
    config.api.topology = Some(Arc::new(read_topology(&path).expect("example topology")));
    config.topology_file = Some(path);
    config.local = true;
    config.wan_sim = true;
    let deployment = bounded("local deployment", LocalDeployment::start(config))
        .await
        .expect("local deployment starts");
    let codes = codes_file(dir.path());
    let regions = [US_EAST, EU_WEST, AP_SOUTHEAST];
    let gateways: Vec<&Gateway> = regions
        .iter()
        .map(|r| deployment.gateway(*r).expect("a gateway per region"))
        .collect();
    settled(&gateways, &[(US_EAST, 1), (EU_WEST, 1), (AP_SOUTHEAST, 1)]).await;

    // One user homed in each region, each connected to its home gateway.
    let mut users = Vec::new();
    for (i, gateway) in gateways.iter().enumerate() {
        let conn = RawConn::connect(gateway).await;
        let identifier = format!("user{i}@example.com");
        let device = register_raw(&conn, &codes, &identifier).await;
        assert_eq!(device.box_id.home_region(), regions[i]);
        users.push((conn, device, identifier));
    }
    // Each owner is the home gateway of the box (one gateway per region).
    for (i, (_, device, _)) in users.iter().enumerate() {
        for (j, gateway) in gateways.iter().enumerate() {
            let owner = gateway.peers().unwrap().owner_of(device.box_id);
            let expected = if i == j {
                Owner::Local
            } else {
                Owner::Remote(gateways[i].peers().unwrap().advertised().to_string())
            };
            assert_eq!(owner, expected);
        }
    }
    let mut targets = Vec::new();
    for (_, _, identifier) in &users {
        targets.push(device_list(&users[0].0, &users[0].1, identifier).await);
    }
    let before: u64 = gateways.iter().map(|g| conflicts(g)).sum();

    // Every user sends ROUNDS messages, concurrently with the others, each into
    // all three boxes (its own included).
    const ROUNDS: usize = 8;
    let mut tasks = Vec::new();
    for (conn, device, _) in &users {
        let targets = targets.clone();
        let sends = async move {
            let mut sent = Vec::new();
            for round in 0..ROUNDS {
                let id = MessageId::new();
                let request = send_to(&targets, device, id, format!("round {round}").as_bytes());
                let reply: pb::SendResponse = ok(&conn.call(device, Method::Send, &request).await);
                for r in &reply.results {
                    assert_eq!(r.status, Status::Ok as i32);
                }
                sent.push((device.device_id.as_bytes().to_vec(), id.as_bytes().to_vec()));
            }
            sent
        };
        tasks.push(sends);
    }
    let sent: Vec<Vec<(Vec<u8>, Vec<u8>)>> = bounded("concurrent sends", join_all(tasks)).await;
    let expected: BTreeSet<(Vec<u8>, Vec<u8>)> = sent.into_iter().flatten().collect();
    assert_eq!(expected.len(), 3 * ROUNDS);
    let after: u64 = gateways.iter().map(|g| conflicts(g)).sum();
    assert_eq!(
        after, before,
        "writes from three regions into one box never conflicted"
    );

    for (conn, device, _) in &users {
        let got = queued(conn, device).await;
        let keys: BTreeSet<_> = got.keys().cloned().collect();
        assert_eq!(keys, expected, "every message exactly once in every box");
    }
    // The forwarding really happened: each gateway served writes for the others.
    for gateway in &gateways {
        let served = gateway
            .metrics()
            .peer_forwards_total
            .with_label_values(&["served"])
            .get();
        assert!(served >= (2 * ROUNDS) as u64, "served {served}");
    }
    drop(users);
    deployment.shutdown().await;
}

/// Runs the futures concurrently and returns their outputs in order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    use std::task::Poll;
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

fn peer(ca: &DevCa) -> PeerConfig {
    let mut peer = PeerConfig::loopback(ca.issue("127.0.0.1").unwrap());
    peer.owner_lease = Duration::from_millis(800);
    peer.owner_renew = Duration::from_millis(200);
    peer
}

/// Gateways of the example topology over one in-memory store, with short
/// ownership leases: each started by [`Fleet::config`] with its own directory.
struct Fleet {
    dir: tempfile::TempDir,
    kv: rossby_storage::Kv,
    ca: DevCa,
    topology: Arc<rossby_replication::Topology>,
}

impl Fleet {
    async fn new() -> Fleet {
        Fleet {
            dir: tempfile::tempdir().unwrap(),
            kv: rossby_storage::kv::open(&BackendConfig::Memory)
                .await
                .unwrap(),
            ca: DevCa::generate().unwrap(),
            topology: Arc::new(read_topology(&example_topology()).unwrap()),
        }
    }

    /// A gateway of `region` named `name`, of the same deployment as `base`.
    fn config(&self, name: &str, region: RegionId, base: Option<&Config>) -> Config {
        let mut c = Config::for_tests(self.dir.path().join(name));
        if let Some(base) = base {
            c = c.same_deployment_as(base);
        }
        c.storage = StorageConfig::Shared(self.kv.clone());
        c.api.region = region;
        c.api.topology = Some(self.topology.clone());
        c.peer = Some(peer(&self.ca));
        c
    }

    fn codes(&self, name: &str) -> PathBuf {
        codes_file(&self.dir.path().join(name))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_death_of_an_owner_moves_its_boxes_and_loses_no_send() {
    let fleet = Fleet::new().await;
    let c1 = fleet.config("a1", US_EAST, None);
    let c2 = fleet.config("a2", US_EAST, Some(&c1));
    let cb = fleet.config("b", EU_WEST, Some(&c1));
    let a1 = support::start_with(c1).await;
    let a2 = support::start_with(c2).await;
    let b = support::start_with(cb).await;
    settled(&[&a1, &a2, &b], &[(US_EAST, 2), (EU_WEST, 1)]).await;

    // The recipient is homed in us-east (two gateways), the sender in eu-west.
    let conn_a = RawConn::connect(&a1).await;
    let recipient = register_raw(&conn_a, &fleet.codes("a1"), "r@example.com").await;
    let conn_b = RawConn::connect(&b).await;
    let sender = register_raw(&conn_b, &fleet.codes("b"), "s@example.com").await;
    let to_recipient = device_list(&conn_b, &sender, "r@example.com").await;
    let Owner::Remote(owner_addr) = b.peers().unwrap().owner_of(recipient.box_id) else {
        panic!("the recipient's box is owned in us-east");
    };
    let (owner, survivor, survivor_conn) = if a1.peers().unwrap().advertised() == owner_addr {
        (a1, a2, None)
    } else {
        (a2, a1, Some(conn_a))
    };
    let survivor_conn = match survivor_conn {
        Some(c) => c,
        None => RawConn::connect(&survivor).await,
    };
    let lease = Duration::from_millis(800);
    let renew = Duration::from_millis(200);

    // Sends stream from eu-west; each is retried with its message id until OK.
    let send = |i: usize, id: MessageId| {
        let conn = &conn_b;
        let sender = &sender;
        let to_recipient = &to_recipient;
        async move {
            let request = send_to(
                std::slice::from_ref(to_recipient),
                sender,
                id,
                format!("m{i}").as_bytes(),
            );
            for _ in 0..50 {
                let response = conn.call(sender, Method::Send, &request).await;
                if response.status == Status::Ok as i32 {
                    let reply: pb::SendResponse = ok(&response);
                    if reply.results[0].status == Status::Ok as i32 {
                        return reply.results[0].seq;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("send {i} never succeeded");
        }
    };
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = MessageId::new();
        acked.push((id, send(i, id).await));
    }
    // Kill the owner: no drain, no lease release; its lease lapses by itself.
    // A watcher notes when eu-west's view moves the box to the survivor.
    let view = b.peers().unwrap().ownership().unwrap().clone();
    let survivor_addr = survivor.peers().unwrap().advertised().to_string();
    let box_id = recipient.box_id;
    let killed_at = Instant::now();
    drop(owner);
    let watcher = tokio::spawn(async move {
        loop {
            if view.owner_of(box_id) == Owner::Remote(survivor_addr.clone()) {
                return killed_at.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut i = 20;
    while !watcher.is_finished() {
        let id = MessageId::new();
        acked.push((id, send(i, id).await));
        i += 1;
        assert!(killed_at.elapsed() < 5 * lease, "ownership did not move");
    }
    let moved = watcher.await.unwrap();
    assert!(
        moved <= lease + renew + Duration::from_millis(400),
        "moved after {moved:?}"
    );
    for _ in 0..20 {
        let id = MessageId::new();
        acked.push((id, send(i, id).await));
        i += 1;
    }
    // Every acknowledged send is in the box exactly once, at the seq it was given.
    let got = queued(&survivor_conn, &recipient).await;
    assert_eq!(got.len(), acked.len(), "nothing lost, nothing twice");
    for (id, seq) in &acked {
        let key = (sender.device_id.as_bytes().to_vec(), id.as_bytes().to_vec());
        assert_eq!(got.get(&key), Some(seq));
    }
    survivor.shutdown().await;
    b.shutdown().await;
}

fn forwards(gateway: &Gateway, result: &str) -> u64 {
    gateway
        .metrics()
        .peer_forwards_total
        .with_label_values(&[result])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_the_callers_own_box_run_at_its_owner() {
    let fleet = Fleet::new().await;
    let ca_config = fleet.config("a", US_EAST, None);
    let cb = fleet.config("b", EU_WEST, Some(&ca_config));
    let a = support::start_with(ca_config).await;
    let b = support::start_with(cb).await;
    settled(&[&a, &b], &[(US_EAST, 1), (EU_WEST, 1)]).await;

    // Alice is homed in us-east; her second device and all her requests below
    // go through eu-west, which forwards them to us-east.
    let conn_a = RawConn::connect(&a).await;
    let alice = register_raw(&conn_a, &fleet.codes("a"), "a@example.com").await;
    let conn_b = RawConn::connect(&b).await;
    let served = forwards(&a, "served");
    let laptop = support::link_raw(&conn_b, &alice).await;
    let list = device_list(&conn_b, &alice, "a@example.com").await;
    assert_eq!(list.devices.len(), 2, "the link committed");
    // A message to herself, then an ack of it through eu-west.
    let request = send_to(
        std::slice::from_ref(&list),
        &laptop,
        MessageId::new(),
        b"note",
    );
    let reply: pb::SendResponse = ok(&conn_b.call(&laptop, Method::Send, &request).await);
    assert_eq!(reply.results[0].status, Status::Ok as i32);
    let seq = reply.results[0].seq;
    let ack = pb::AckRequest { up_to: seq };
    let acked: pb::AckResponse = ok(&conn_b.call(&alice, Method::Ack, &ack).await);
    assert_eq!(acked.acked, seq);
    assert!(fetch_raw(&conn_a, &alice).await.envelopes.is_empty());
    // Removing the laptop (forwarded too) bumps the device-list version.
    let remove = pb::RemoveDeviceRequest {
        device_id: laptop.device_id.as_bytes().to_vec(),
    };
    let _: pb::RemoveDeviceResponse = ok(&conn_b.call(&alice, Method::RemoveDevice, &remove).await);
    let after = device_list(&conn_a, &alice, "a@example.com").await;
    assert_eq!(after.devices.len(), 1);
    assert!(after.version > list.version);
    // Group requests run at the owner of the group's creator box.
    let group_id = vec![7u8; 16];
    let create = pb::CreateGroupRequest {
        group_id: group_id.clone(),
    };
    let _: pb::CreateGroupResponse = ok(&conn_b.call(&alice, Method::CreateGroup, &create).await);
    let info = pb::GroupInfoRequest {
        creator_box: alice.box_id.as_bytes().to_vec(),
        group_id,
    };
    let state: pb::GroupInfoResponse = ok(&conn_b.call(&alice, Method::GroupInfo, &info).await);
    assert_eq!(state.state.unwrap().epoch, 0);
    // us-east executed the link, the envelope, the ack, the removal and the two
    // group requests.
    assert!(
        forwards(&a, "served") >= served + 6,
        "{}",
        forwards(&a, "served")
    );
    assert_eq!(forwards(&b, "failed"), 0);
    // An error at the owner reaches the client as the owner gave it.
    let beyond = pb::AckRequest { up_to: seq + 10 };
    let response = conn_b.call(&alice, Method::Ack, &beyond).await;
    assert_eq!(response.status, Status::AckBeyondLast as i32);
    a.shutdown().await;
    b.shutdown().await;
}
