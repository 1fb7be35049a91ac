//! Geography on real gateways: the local multi-region mode over the example
//! topology, homing of new boxes, replies that point a client to its box's home
//! region, and a conversation between users homed in different regions.

mod support;

use rossby_client::{Body, HomeHint};
use rossby_gateway::config::read_topology;
use rossby_gateway::{Config, LocalDeployment};
use rossby_keyspace::DeviceId;
use rossby_keyspace::{BoxId, RegionId};
use rossby_protocol::crypto::DeviceKeys;
use rossby_protocol::pb::{self, Method, Status};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::{
    RawConn, bounded, client_at, codes_file, expect_status, ok, register, register_raw,
    register_request, snapshot,
};

const US_EAST: RegionId = RegionId(1);
const EU_WEST: RegionId = RegionId(2);
const AP_SOUTHEAST: RegionId = RegionId(3);

fn example_topology() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/three-regions.toml")
}

/// The example topology's three regions, locally, over one in-memory store.
async fn local(dir: &Path) -> LocalDeployment {
    let mut config = Config::for_tests(dir).in_memory();
    let path = example_topology();
    config.api.topology = Some(Arc::new(read_topology(&path).expect("example topology")));
    config.topology_file = Some(path);
    config.local = true;
    bounded("local deployment", LocalDeployment::start(config))
        .await
        .expect("local deployment starts")
}

fn gateway(deployment: &LocalDeployment, region: RegionId) -> &rossby_gateway::Gateway {
    deployment.gateway(region).expect("region has a gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_runs_one_gateway_per_region_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = local(dir.path()).await;
    assert_eq!(deployment.gateways().len(), 3);
    for local in deployment.gateways() {
        let addr = local.gateway.quic_addr();
        assert!(addr.ip().is_loopback(), "{addr}");
        // The deployment's topology names the local gateways, not the file's.
        let region = deployment.topology().region(local.code).unwrap();
        assert_eq!(region.name, local.name);
        assert_eq!(region.gateways.len(), 1);
        assert_eq!(region.gateways[0].quic, addr.to_string());
        assert_eq!(
            region.gateways[0].admin,
            local.gateway.admin_addr().to_string()
        );
        // Each gateway serves its own region.
        let conn = RawConn::connect(&local.gateway).await;
        let pong: pb::PingResponse = ok(&conn
            .call_anonymous(Method::Ping, &pb::PingRequest::default())
            .await);
        assert_eq!(pong.region, u32::from(local.code.0));
        conn.close().await;
    }
    bounded("shutdown", deployment.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_name_the_home_region_and_its_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = local(dir.path()).await;
    let codes = codes_file(dir.path());
    let us = gateway(&deployment, US_EAST);
    let eu = gateway(&deployment, EU_WEST);

    let at_us = RawConn::connect(us).await;
    let alice = register_raw(&at_us, &codes, "alice@example.com").await;
    assert_eq!(alice.box_id.home_region(), US_EAST);
    let list = pb::ListDevicesRequest::default();

    // At home: no hint.
    let at_home = at_us.call(&alice, Method::ListDevices, &list).await;
    expect_status(&at_home, Status::Ok);
    assert_eq!(at_home.home_region, 0);
    assert!(at_home.home_gateways.is_empty());

    // Elsewhere: served, and told where the box lives.
    let at_eu = RawConn::connect(eu).await;
    let away = at_eu.call(&alice, Method::ListDevices, &list).await;
    expect_status(&away, Status::Ok);
    assert_eq!(away.home_region, u32::from(US_EAST.0));
    assert_eq!(away.home_gateways, vec![us.quic_addr().to_string()]);
    // Failures carry the hint too.
    let bad = at_eu
        .call(&alice, Method::Ack, &pb::AckRequest { up_to: 1_000 })
        .await;
    expect_status(&bad, Status::AckBeyondLast);
    assert_eq!(bad.home_region, u32::from(US_EAST.0));
    assert_eq!(bad.home_gateways, vec![us.quic_addr().to_string()]);

    at_us.close().await;
    at_eu.close().await;
    bounded("shutdown", deployment.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_boxes_are_homed_where_asked_within_the_topology() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = local(dir.path()).await;
    let codes = codes_file(dir.path());
    let us = gateway(&deployment, US_EAST);
    let conn = RawConn::connect(us).await;

    // By default, the registering gateway's region.
    let local_user = register_raw(&conn, &codes, "local@example.com").await;
    assert_eq!(local_user.box_id.home_region(), US_EAST);

    // Asked for another region of the topology.
    let keys = DeviceKeys::generate();
    let device = DeviceId::new();
    let mut request = register_request("far@example.com", &keys, device);
    request.region = u32::from(AP_SOUTHEAST.0);
    let _: pb::RegisterResponse = ok(&conn.call_anonymous(Method::Register, &request).await);
    let authorize = pb::AuthorizeRequest {
        identifier: "far@example.com".into(),
        device_id: device.as_bytes().to_vec(),
        code: support::last_code(&codes, "far@example.com"),
        registration_lock_pin: String::new(),
    };
    let reply: pb::AuthorizeResponse =
        ok(&conn.call_anonymous(Method::Authorize, &authorize).await);
    let far = BoxId::try_from_slice(&reply.box_id).unwrap();
    assert_eq!(far.home_region(), AP_SOUTHEAST);

    // A region the topology does not name is refused and changes nothing.
    let before = snapshot(us.store()).await;
    let keys = DeviceKeys::generate();
    for region in [9u32, 70_000] {
        let mut request = register_request("nowhere@example.com", &keys, DeviceId::new());
        request.region = region;
        let response = conn.call_anonymous(Method::Register, &request).await;
        expect_status(&response, Status::BadRequest);
        assert!(response.message.contains("region"), "{}", response.message);
    }
    assert_eq!(snapshot(us.store()).await, before);

    conn.close().await;
    bounded("shutdown", deployment.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_homed_in_different_regions_converse_through_their_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = local(dir.path()).await;
    let codes = codes_file(dir.path());
    let us = gateway(&deployment, US_EAST);
    let ap = gateway(&deployment, AP_SOUTHEAST);

    let alice = client_at(
        dir.path().join("alice.state"),
        us.quic_addr(),
        us.certificate_der(),
    )
    .await;
    let bob = client_at(
        dir.path().join("bob.state"),
        ap.quic_addr(),
        ap.certificate_der(),
    )
    .await;
    let alice_box = register(&alice, "alice@example.com", &codes).await;
    let bob_box = register(&bob, "bob@example.com", &codes).await;
    assert_eq!(alice_box.home_region(), US_EAST);
    assert_eq!(bob_box.home_region(), AP_SOUTHEAST);

    let sent = bounded(
        "send",
        alice.send_text("bob@example.com", "hello from us-east"),
    )
    .await
    .expect("cross-region send");
    assert_eq!(sent.to_box, bob_box);
    let batch = bounded("fetch", bob.fetch(Duration::from_secs(5)))
        .await
        .expect("fetch");
    let bodies: Vec<Body> = batch.messages.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, vec![Body::Text("hello from us-east".into())]);
    assert_eq!(batch.messages[0].sender_box, alice_box);
    // Both are at home: no hint.
    assert_eq!(alice.home_hint(), None);
    assert_eq!(bob.home_hint(), None);

    // Bob, travelling, uses the us-east gateway: the SDK learns where his box lives.
    bob.close().await;
    drop(bob);
    let bob_away = client_at(
        dir.path().join("bob.state"),
        us.quic_addr(),
        us.certificate_der(),
    )
    .await;
    bounded("fetch away", bob_away.fetch(Duration::ZERO))
        .await
        .expect("fetch through another region");
    assert_eq!(
        bob_away.home_hint(),
        Some(HomeHint {
            region: u32::from(AP_SOUTHEAST.0),
            gateways: vec![ap.quic_addr().to_string()],
        })
    );

    alice.close().await;
    bob_away.close().await;
    bounded("shutdown", deployment.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_gateways_wake_each_other_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path()).in_memory();
    let path = example_topology();
    config.api.topology = Some(Arc::new(read_topology(&path).expect("example topology")));
    config.local = true;
    // Notifications only: a fetch waiting on one gateway is woken by a send through
    // another region's gateway, or it times out empty.
    config.fetch_poll_interval = None;
    let deployment = bounded("local deployment", LocalDeployment::start(config))
        .await
        .expect("local deployment starts");
    let codes = codes_file(dir.path());
    let us = gateway(&deployment, US_EAST);
    let eu = gateway(&deployment, EU_WEST);
    let alice = client_at(
        dir.path().join("alice.state"),
        us.quic_addr(),
        us.certificate_der(),
    )
    .await;
    let bob = Arc::new(
        client_at(
            dir.path().join("bob.state"),
            eu.quic_addr(),
            eu.certificate_der(),
        )
        .await,
    );
    register(&alice, "alice@example.com", &codes).await;
    register(&bob, "bob@example.com", &codes).await;

    let waiting = {
        let bob = bob.clone();
        tokio::spawn(async move { bob.fetch(Duration::from_secs(15)).await })
    };
    // Let the fetch reach the gateway and record its lease before the send.
    tokio::time::sleep(Duration::from_millis(300)).await;
    bounded("send", alice.send_text("bob@example.com", "wake up"))
        .await
        .expect("send");
    let batch = bounded("woken fetch", waiting)
        .await
        .expect("fetch task")
        .expect("fetch");
    let bodies: Vec<Body> = batch.messages.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, vec![Body::Text("wake up".into())]);

    alice.close().await;
    bob.close().await;
    bounded("shutdown", deployment.shutdown()).await;
}
