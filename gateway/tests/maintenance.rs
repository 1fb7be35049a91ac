//! Region maintenance on real gateways: DeleteAccount answers once the account
//! is invisible and the maintenance loop purges the rest, a purge interrupted
//! before this gateway started is finished without a restart, expired messages
//! are swept by the loop, and the gateways of one region share the jobs with
//! exactly one holder each, handing them over when one drains.

mod support;

use rossby_gateway::config::{StorageConfig, read_topology};
use rossby_gateway::peer::PeerConfig;
use rossby_gateway::peer::tls::DevCa;
use rossby_gateway::{Config, Gateway};
use rossby_keyspace::{BoxId, MaintenanceJob, RegionId};
use rossby_protocol::pb::{self, Method};
use rossby_replication::ownership::choose;
use rossby_storage::kv::memory::MemoryStore;
use rossby_storage::tables::{Store, lifecycle};
use rossby_storage::{Kv, transact};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{
    RawConn, RawDevice, bounded, codes_file, device_list, fetch_raw, ok, register_raw,
    send_request, start_with,
};

const US_EAST: RegionId = RegionId(1);

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn all_jobs() -> BTreeSet<MaintenanceJob> {
    MaintenanceJob::all().collect()
}

/// Polls `done` every 20 ms until it holds, failing the test after the bound.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut done: F) {
    bounded(what, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn has_keys(store: &Store, b: BoxId) -> bool {
    transact!(store, |txn| lifecycle::box_has_keys(txn, b).await).unwrap()
}

async fn pending(store: &Store) -> Vec<BoxId> {
    store.pending_purges(US_EAST, 100).await.unwrap()
}

fn work(gateway: &Gateway, job: &str, kind: &str) -> u64 {
    gateway
        .metrics()
        .maintenance_work_total
        .with_label_values(&[job, kind])
        .get()
}

/// A gateway over the in-memory store with the given maintenance timing.
async fn gateway(dir: &Path, interval: Duration, lease: Duration) -> Gateway {
    let mut config = Config::for_tests(dir).in_memory();
    config.maintenance_interval = interval;
    config.maintenance_lease = lease;
    start_with(config).await
}

/// `to` receives `n` messages from `from`.
async fn send_messages(conn: &RawConn, from: &RawDevice, to: &str, n: usize) -> BoxId {
    let list = device_list(conn, from, to).await;
    let box_id = BoxId::try_from_slice(&list.box_id).unwrap();
    for i in 0..n {
        let request = send_request(&list, from, format!("m{i}").as_bytes());
        let _: pb::SendResponse = ok(&conn.call(from, Method::Send, &request).await);
    }
    box_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_account_answers_before_the_purge_and_maintenance_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    // One round at start, then none for an hour: nothing purges behind the test.
    let gw = gateway(
        dir.path(),
        Duration::from_secs(3600),
        Duration::from_secs(7200),
    )
    .await;
    eventually("the first round takes every job", async || {
        gw.maintenance().held() == all_jobs()
    })
    .await;
    let codes = codes_file(dir.path());
    let conn = RawConn::connect(&gw).await;
    let alice = register_raw(&conn, &codes, "alice@example.com").await;
    let bob = register_raw(&conn, &codes, "bob@example.com").await;
    send_messages(&conn, &bob, "alice@example.com", 5).await;

    let reply = conn
        .call(&alice, Method::DeleteAccount, &pb::DeleteAccountRequest {})
        .await;
    let _: pb::DeleteAccountResponse = ok(&reply);
    // Gone for everyone at once ...
    let lookup = pb::RequestKeyRequest {
        identifier: "alice@example.com".into(),
        ..pb::RequestKeyRequest::default()
    };
    support::expect_status(
        &conn.call(&bob, Method::RequestKey, &lookup).await,
        pb::Status::NotFound,
    );
    // ... but the reply did not wait for the purge: its keys and its purge entry
    // are still there.
    let store = gw.store();
    assert!(has_keys(store, alice.box_id).await);
    assert_eq!(pending(store).await, vec![alice.box_id]);

    // The next maintenance round removes the rest.
    gw.maintenance().round(now_ms()).await;
    assert!(!has_keys(store, alice.box_id).await);
    assert!(pending(store).await.is_empty());
    assert_eq!(work(&gw, "purge", "boxes"), 1);
    assert!(work(&gw, "purge", "steps") >= 1);
    assert_eq!(gw.metrics().maintenance_pending_purges.get(), 0);
    // Bob is untouched.
    assert!(has_keys(store, bob.box_id).await);
    conn.close().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_gateway_purges_deletions_and_sweeps_expired_messages_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    // Shared, so the test can read it after the gateway stopped.
    config.storage = StorageConfig::Shared(Arc::new(MemoryStore::new()));
    config.maintenance_interval = Duration::from_millis(100);
    config.maintenance_lease = Duration::from_millis(1000);
    // Messages expire quickly, so the loop's sweeps have work.
    config.api.limits.retention_ms = 1_500;
    config.api.limits.dedup_window_ms = 1_500;
    let gw = start_with(config).await;
    let codes = codes_file(dir.path());
    let conn = RawConn::connect(&gw).await;
    let alice = register_raw(&conn, &codes, "alice@example.com").await;
    let carol = register_raw(&conn, &codes, "carol@example.com").await;
    let dave = register_raw(&conn, &codes, "dave@example.com").await;
    let bob = register_raw(&conn, &codes, "bob@example.com").await;
    for who in ["alice@example.com", "carol@example.com", "dave@example.com"] {
        send_messages(&conn, &bob, who, 4).await;
    }
    let store = &gw.store().clone();

    // Carol's deletion committed, and her purge was interrupted after its first
    // step (as if a gateway died): only the purge entry says what is left.
    let mut small = store.clone();
    small.limits.max_deletes_per_txn = 2;
    transact!(store, |txn| lifecycle::delete_account(
        txn,
        &store.limits,
        carol.box_id,
        now_ms()
    )
    .await)
    .unwrap();
    assert!(!small.purge_step(carol.box_id).await.unwrap());
    // Alice deletes her account through the API.
    let _: pb::DeleteAccountResponse = ok(&conn
        .call(&alice, Method::DeleteAccount, &pb::DeleteAccountRequest {})
        .await);

    eventually("both accounts are purged", async || {
        !has_keys(store, alice.box_id).await
            && !has_keys(store, carol.box_id).await
            && pending(store).await.is_empty()
    })
    .await;
    assert!(work(&gw, "purge", "boxes") >= 2);

    // Dave never fetches: his messages expire and the loop deletes them.
    eventually("expired messages are swept", async || {
        work(&gw, "expiry", "envelopes") >= 4
    })
    .await;
    let fetched = fetch_raw(&conn, &dave).await;
    assert!(fetched.envelopes.is_empty(), "{fetched:?}");
    assert!(work(&gw, "expiry", "entries") >= 4);
    assert_eq!(gw.maintenance().held(), all_jobs());
    let metrics = gw.metrics();
    assert_eq!(
        metrics
            .maintenance_leases_held
            .with_label_values(&["expiry"])
            .get(),
        16
    );
    assert_eq!(
        metrics
            .maintenance_leases_held
            .with_label_values(&["purge"])
            .get(),
        1
    );
    conn.close().await;
    gw.shutdown().await;
    // The draining gateway released its leases.
    assert!(store.maintenance_leases(US_EAST).await.unwrap().is_empty());
}

/// The live holders of region 1's jobs, from storage: job -> gateway id (hex).
async fn holders(store: &Store) -> BTreeMap<MaintenanceJob, String> {
    store
        .maintenance_holders(US_EAST, now_ms())
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.job, l.holder.gateway_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_of_a_region_split_the_jobs_with_one_holder_each() {
    let dir = tempfile::tempdir().unwrap();
    let kv: Kv = Arc::new(MemoryStore::new());
    let ca = DevCa::generate().unwrap();
    let topology =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/three-regions.toml");
    let configure = |config: &mut Config| {
        config.api.topology = Some(Arc::new(read_topology(&topology).unwrap()));
        config.topology_file = Some(topology.clone());
        config.peer = Some(PeerConfig::loopback(ca.issue("127.0.0.1").unwrap()));
        config.maintenance_interval = Duration::from_millis(100);
        config.maintenance_lease = Duration::from_millis(1000);
    };
    let mut c1 = Config::for_tests(dir.path().join("g1"));
    c1.storage = StorageConfig::Shared(kv);
    c1.api.region = US_EAST;
    configure(&mut c1);
    let mut c2 = Config::for_tests(dir.path().join("g2")).same_deployment_as(&c1);
    configure(&mut c2);
    let g1 = start_with(c1).await;
    let g2 = start_with(c2).await;
    let store = g1.store().clone();
    let ids = |g: &Gateway| {
        let id = g.peers().unwrap().id();
        assert_eq!(hex::encode(id), g.maintenance().gateway_id());
        id
    };
    let (id1, id2) = (ids(&g1), ids(&g2));
    let name = |id: [u8; 16]| hex::encode(id);
    // The spread the gateways converge to: each job at its rendezvous choice.
    let both = [id1, id2];
    let preferred: BTreeMap<MaintenanceJob, String> = MaintenanceJob::all()
        .map(|job| {
            let chosen = choose(&job.to_bytes(), &both, |id| id.as_slice()).unwrap();
            (job, name(*chosen))
        })
        .collect();

    eventually("the jobs spread over both gateways", async || {
        let (held1, held2) = (g1.maintenance().held(), g2.maintenance().held());
        let stored = holders(&store).await;
        stored == preferred
            && held1.iter().all(|j| stored.get(j) == Some(&name(id1)))
            && held2.iter().all(|j| stored.get(j) == Some(&name(id2)))
            && held1.len() + held2.len() == MaintenanceJob::COUNT
    })
    .await;
    // Exactly one holder per job: the two gateways' own views are disjoint and
    // together cover every job, and they agree with the stored leases.
    let (held1, held2) = (g1.maintenance().held(), g2.maintenance().held());
    assert!(held1.is_disjoint(&held2), "{held1:?} {held2:?}");
    assert_eq!(
        held1.union(&held2).copied().collect::<BTreeSet<_>>(),
        all_jobs()
    );
    let gauge = |g: &Gateway, job: &str| {
        g.metrics()
            .maintenance_leases_held
            .with_label_values(&[job])
            .get()
    };
    assert_eq!(gauge(&g1, "expiry") + gauge(&g2, "expiry"), 16);
    assert_eq!(gauge(&g1, "purge") + gauge(&g2, "purge"), 1);
    // The status read names the same holders.
    let listed = g2.maintenance().holders(now_ms()).await.unwrap();
    assert_eq!(listed.len(), MaintenanceJob::COUNT);

    // g1 drains: it releases its leases, and g2 takes every job.
    g1.shutdown().await;
    eventually("the survivor holds every job", async || {
        g2.maintenance().held() == all_jobs()
            && holders(&store).await.values().all(|id| *id == name(id2))
            && holders(&store).await.len() == MaintenanceJob::COUNT
    })
    .await;
    g2.shutdown().await;
}
