//! How fast a removed device is refused by real gateways that remember authorized
//! devices (docs/security.md §2.1): at once by the gateway that executed the
//! removal and the one that forwarded it, within the device cache's TTL (plus
//! the recent-read staleness, zero on the memory store) everywhere else; and a
//! device found authorized costs no storage read while it is remembered.

mod support;

use rossby_gateway::config::{StorageConfig, read_topology};
use rossby_gateway::peer::PeerConfig;
use rossby_gateway::peer::ownership::Owner;
use rossby_gateway::peer::tls::DevCa;
use rossby_gateway::{Config, Gateway};
use rossby_keyspace::RegionId;
use rossby_protocol::pb::{self, Method, Status};
use rossby_storage::kv::BackendConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    RawConn, RawDevice, bounded, codes_file, link_raw, ok, open_credentials, register_raw,
};

const US_EAST: RegionId = RegionId(1);
const EU_WEST: RegionId = RegionId(2);

/// The device cache TTL of the gateway that only learns of the removal from
/// storage: long enough that the request right after the removal is a cache hit
/// even on a busy machine, short enough for a test.
const BYSTANDER_TTL: Duration = Duration::from_secs(3);

fn example_topology() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/three-regions.toml")
}

fn peer(ca: &DevCa) -> PeerConfig {
    let mut peer = PeerConfig::loopback(ca.issue("127.0.0.1").unwrap());
    peer.owner_lease = Duration::from_millis(800);
    peer.owner_renew = Duration::from_millis(200);
    peer
}

/// Storage transactions the gateway has run so far.
fn transactions(gateway: &Gateway) -> u64 {
    gateway
        .metrics()
        .storage_transaction_duration_seconds
        .get_sample_count()
}

/// A request by `device` that passes authentication and then fails on its body,
/// which touches no storage: what it costs is the authentication alone.
async fn auth_only(conn: &RawConn, device: &RawDevice) -> Status {
    let request = conn.signed(device, Method::ListDevices, vec![0xff]);
    let response = conn.send(&request).await;
    Status::try_from(response.status).expect("a known status")
}

async fn settled(gateways: &[&Gateway]) {
    bounded("ownership views settle", async {
        loop {
            let done = gateways.iter().all(|g| {
                let own = g.peers().and_then(|p| p.ownership()).expect("ownership on");
                own.live_in(US_EAST) == 1 && own.live_in(EU_WEST) == 2
            });
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_is_refused_at_once_where_removed_and_within_the_ttl_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let kv = rossby_storage::kv::open(&BackendConfig::Memory)
        .await
        .unwrap();
    let ca = DevCa::generate().unwrap();
    let topology = Arc::new(read_topology(&example_topology()).unwrap());
    let config = |name: &str, region: RegionId, base: Option<&Config>| {
        let mut c = Config::for_tests(dir.path().join(name));
        if let Some(base) = base {
            c = c.same_deployment_as(base);
        }
        c.storage = StorageConfig::Shared(kv.clone());
        c.api.region = region;
        c.api.topology = Some(topology.clone());
        c.peer = Some(peer(&ca));
        c
    };
    // The box's owner in us-east; the device's requests land on two eu-west
    // gateways: `forwarder` forwards the removal, `bystander` only reads storage.
    let c_owner = config("owner", US_EAST, None);
    let c_forwarder = config("forwarder", EU_WEST, Some(&c_owner));
    let mut c_bystander = config("bystander", EU_WEST, Some(&c_owner));
    c_bystander.api.device_cache_ttl = BYSTANDER_TTL;
    let owner = support::start_with(c_owner).await;
    let forwarder = support::start_with(c_forwarder).await;
    let bystander = support::start_with(c_bystander).await;
    settled(&[&owner, &forwarder, &bystander]).await;

    let on_owner = RawConn::connect(&owner).await;
    let phone = register_raw(
        &on_owner,
        &codes_file(&dir.path().join("owner")),
        "a@example.com",
    )
    .await;
    assert_eq!(
        forwarder.peers().unwrap().owner_of(phone.box_id),
        Owner::Remote(owner.peers().unwrap().advertised().to_string())
    );
    let on_forwarder = RawConn::connect(&forwarder).await;
    let on_bystander = RawConn::connect(&bystander).await;
    let laptop = link_raw(&on_forwarder, &phone).await;

    // The laptop works on every gateway; once checked, a gateway remembers it and
    // authenticates its requests without a storage transaction.
    for (gateway, conn) in [
        (&owner, &on_owner),
        (&forwarder, &on_forwarder),
        (&bystander, &on_bystander),
    ] {
        assert_eq!(auth_only(conn, &laptop).await, Status::BadRequest);
        // Background work (a maintenance round, lease renewals) may run a
        // transaction at the same moment: a device that is not remembered would
        // read storage every time, so one quiet attempt out of several proves it.
        let mut quiet = false;
        for _ in 0..5 {
            let before = transactions(gateway);
            assert_eq!(auth_only(conn, &laptop).await, Status::BadRequest);
            if transactions(gateway) == before {
                quiet = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(quiet, "a remembered device reads nothing");
    }

    // The phone removes the laptop through the eu-west forwarder; the owner
    // executes it.
    let remove = pb::RemoveDeviceRequest {
        device_id: laptop.device_id.as_bytes().to_vec(),
    };
    let _: pb::RemoveDeviceResponse = ok(&on_forwarder
        .call(&phone, Method::RemoveDevice, &remove)
        .await);
    let removed_at = Instant::now();
    assert_eq!(auth_only(&on_owner, &laptop).await, Status::Unauthenticated);
    assert_eq!(
        auth_only(&on_forwarder, &laptop).await,
        Status::Unauthenticated
    );
    // The phone, another device of the same box, still works everywhere.
    for conn in [&on_owner, &on_forwarder, &on_bystander] {
        assert_eq!(auth_only(conn, &phone).await, Status::BadRequest);
    }

    // The bystander remembers the laptop until its entry expires: refused within
    // the TTL (the memory store has no recent-read staleness).
    let refused_after = bounded("the bystander refuses the removed device", async {
        loop {
            if auth_only(&on_bystander, &laptop).await == Status::Unauthenticated {
                return removed_at.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        refused_after <= BYSTANDER_TTL + Duration::from_millis(500),
        "refused only after {refused_after:?}"
    );
    assert_eq!(
        auth_only(&on_bystander, &laptop).await,
        Status::Unauthenticated
    );

    // Linked again under the same id and keys, the laptop gets credentials of
    // a new key version: the old ones stay refused everywhere, and refusals are
    // not remembered, so the new ones are accepted at once everywhere.
    let relink = pb::LinkDeviceRequest {
        device_id: laptop.device_id.as_bytes().to_vec(),
        keys: Some(laptop.keys.bundle()),
        label: "laptop again".into(),
    };
    let relinked: pb::LinkDeviceResponse =
        ok(&on_owner.call(&phone, Method::LinkDevice, &relink).await);
    let laptop_again = RawDevice {
        creds: open_credentials(&laptop.keys, &relinked.sealed_credentials),
        ..laptop.clone()
    };
    assert_ne!(laptop_again.creds.id, laptop.creds.id);
    for conn in [&on_owner, &on_forwarder, &on_bystander] {
        assert_eq!(auth_only(conn, &laptop).await, Status::Unauthenticated);
        assert_eq!(auth_only(conn, &laptop_again).await, Status::BadRequest);
    }

    owner.shutdown().await;
    forwarder.shutdown().await;
    bystander.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_account_or_recovering_it_refuses_old_devices_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = support::start_with(Config::for_tests(dir.path()).in_memory()).await;
    let codes = codes_file(dir.path());
    let conn = RawConn::connect(&gateway).await;

    // Recovery replaces the box's devices.
    let old = register_raw(&conn, &codes, "r@example.com").await;
    assert_eq!(auth_only(&conn, &old).await, Status::BadRequest);
    let keys = rossby_protocol::crypto::DeviceKeys::generate();
    let device_id = rossby_keyspace::DeviceId::new();
    let mut register = support::register_request("r@example.com", &keys, device_id);
    register.recover = true;
    let _: pb::RegisterResponse = ok(&conn.call_anonymous(Method::Register, &register).await);
    let authorize = pb::AuthorizeRequest {
        identifier: "r@example.com".into(),
        device_id: device_id.as_bytes().to_vec(),
        code: support::last_code(&codes, "r@example.com"),
        registration_lock_pin: String::new(),
    };
    let _: pb::AuthorizeResponse = ok(&conn.call_anonymous(Method::Authorize, &authorize).await);
    assert_eq!(auth_only(&conn, &old).await, Status::Unauthenticated);

    // DeleteAccount ends every device of the box.
    let alice = register_raw(&conn, &codes, "d@example.com").await;
    assert_eq!(auth_only(&conn, &alice).await, Status::BadRequest);
    let _: pb::DeleteAccountResponse = ok(&conn
        .call(&alice, Method::DeleteAccount, &pb::DeleteAccountRequest {})
        .await);
    assert_eq!(auth_only(&conn, &alice).await, Status::Unauthenticated);

    gateway.shutdown().await;
}
