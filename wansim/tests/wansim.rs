//! The WAN simulation over the memory store: exact simulated latencies under a
//! paused tokio clock, and the backend conformance suite through the wrapper.

#[path = "../../kv/tests/conformance/mod.rs"]
mod conformance;
#[path = "../../storage/tests/support/mod.rs"]
mod support;

use rossby_keyspace::{BoxId, DeviceId, Key, MessageId, RegionId};
use rossby_replication::{Home, LatencyModel, Topology};
use rossby_storage::kv::KeyRange;
use rossby_storage::kv::memory::MemoryStore;
use rossby_storage::tables::queue::NewEnvelope;
use rossby_storage::tables::{Store, accounts, devices, records::Device};
use rossby_storage::{Kv, ScanOrder, transact};
use rossby_wansim::WanSimulation;
use std::sync::Arc;
use std::time::Duration;
use support::hasher;
use tokio::time::Instant;

const US_EAST: RegionId = RegionId(1);
const EU_WEST: RegionId = RegionId(2);
const AP_SOUTH: RegionId = RegionId(3);
const T0: u64 = 1_700_000_000_000;

/// Three regions, `us-east` primary; round trips 75 ms (us-east/eu-west), 190 ms
/// (us-east/ap-south), 120 ms (eu-west/ap-south), unless `rtt_ms` overrides all.
fn topology(survival: &str, uniform_rtt_ms: Option<u32>) -> Topology {
    let rtt = |ms: u32| uniform_rtt_ms.unwrap_or(ms);
    let text = format!(
        r#"
primary = "us-east"
survival = "{survival}"

[[regions]]
code = 1
name = "us-east"
zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
gateways = [{{ quic = "gw1.us-east.example.net:7400", admin = "10.0.1.10:7401" }}]

[[regions]]
code = 2
name = "eu-west"
zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
gateways = [{{ quic = "gw1.eu-west.example.net:7400", admin = "10.0.2.10:7401" }}]

[[regions]]
code = 3
name = "ap-south"
zones = ["ap-south-1a", "ap-south-1b", "ap-south-1c"]
gateways = [{{ quic = "gw1.ap-south.example.net:7400", admin = "10.0.3.10:7401" }}]

[rtt_ms]
"us-east:eu-west" = {}
"us-east:ap-south" = {}
"eu-west:ap-south" = {}
"#,
        rtt(75),
        rtt(190),
        rtt(120)
    );
    Topology::parse(&text).expect("test topology")
}

fn model(survival: &str, gateway: RegionId) -> LatencyModel {
    LatencyModel::new(topology(survival, None), gateway).unwrap()
}

fn simulated(model: &LatencyModel) -> (Kv, Kv) {
    let memory: Kv = Arc::new(MemoryStore::new());
    let sim = WanSimulation::wrap(memory.clone(), model.clone());
    (memory, sim)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The shape of a send as the model counts it: one round of reads on the
/// recipient's box (next sequence number and dedup record, in one batch), then
/// the queued envelope and the new head written there.
async fn send_shaped(kv: &Kv, recipient: BoxId) -> Duration {
    let started = Instant::now();
    let device = DeviceId::new();
    let message = MessageId::new();
    let mut txn = kv.begin().await.unwrap();
    txn.batch_get(&[
        Key::Next(recipient).encode(),
        Key::Dedup(recipient, device, message).encode(),
    ])
    .await
    .unwrap();
    txn.put(Key::Queue(recipient, 1).encode(), b"envelope".to_vec())
        .await
        .unwrap();
    txn.put(Key::Next(recipient).encode(), b"2".to_vec())
        .await
        .unwrap();
    txn.commit().await.unwrap();
    started.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_cross_region_send_is_charged_the_matrix_round_trips() {
    let model = model("zone", US_EAST);
    let (_, sim) = simulated(&model);
    let elapsed = send_shaped(&sim, BoxId::new(EU_WEST)).await;
    assert_eq!(elapsed, model.send(EU_WEST));
    // Timestamps are local (us-east is primary); read 75, prewrite 75, commit of
    // the primary key 75; eu-west's voters are local under zone survival.
    assert_eq!(elapsed, ms(225));
    let rtt = model.topology().rtt(US_EAST, EU_WEST).unwrap();
    assert!(elapsed >= rtt);

    // Farther away costs more, by the matrix.
    let elapsed = send_shaped(&sim, BoxId::new(AP_SOUTH)).await;
    assert_eq!(elapsed, model.send(AP_SOUTH));
    assert_eq!(elapsed, ms(3 * 190));
}

#[tokio::test(start_paused = true)]
async fn a_same_region_send_with_a_local_primary_is_free() {
    let model = model("zone", US_EAST);
    let (_, sim) = simulated(&model);
    let elapsed = send_shaped(&sim, BoxId::new(US_EAST)).await;
    assert_eq!(elapsed, Duration::ZERO);
    assert_eq!(model.send(US_EAST), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_remote_primary_costs_the_timestamp_round_trips() {
    // The gateway and the box are in eu-west, PD's timestamps come from us-east:
    // one at begin, one at commit.
    let model = model("zone", EU_WEST);
    let (_, sim) = simulated(&model);
    let elapsed = send_shaped(&sim, BoxId::new(EU_WEST)).await;
    assert_eq!(elapsed, model.send(EU_WEST));
    assert_eq!(elapsed, 2 * model.timestamp());
    assert_eq!(elapsed, ms(150));
}

#[tokio::test(start_paused = true)]
async fn a_begin_after_a_commit_overlaps_its_timestamp_and_sees_the_commit() {
    // eu-west gateway, eu-west box, us-east primary: 75 ms per timestamp.
    let model = model("zone", EU_WEST);
    let (_, sim) = simulated(&model);
    let b = BoxId::new(EU_WEST);
    let key = Key::Next(b).encode();
    let started = Instant::now();
    let mut first = sim.begin().await.unwrap();
    first.put(key.clone(), b"1".to_vec()).await.unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let committing = tokio::spawn(async move {
        first.commit().await.unwrap();
        let _ = done_tx.send(());
    });
    // Begun while the first commits: one timestamp round trip for both, and the
    // snapshot is taken after the commit returned.
    let prior = Box::pin(async move {
        let _ = done_rx.await;
    });
    let mut second = sim.begin_after(prior).await.unwrap();
    assert_eq!(
        started.elapsed(),
        ms(150),
        "begin 75 + overlapped commit 75"
    );
    assert_eq!(second.get(&key).await.unwrap(), Some(b"1".to_vec()));
    second.put(key.clone(), b"2".to_vec()).await.unwrap();
    second
        .commit()
        .await
        .expect("no conflict with the commit it followed");
    committing.await.unwrap();
    assert_eq!(started.elapsed(), ms(225));
}

#[tokio::test(start_paused = true)]
async fn a_recent_read_pays_no_timestamp_and_refuses_writes() {
    let model = model("zone", AP_SOUTH);
    let (memory, sim) = simulated(&model);
    let b = BoxId::new(AP_SOUTH);
    let key = Key::Profile(b).encode();
    let mut txn = memory.begin().await.unwrap();
    txn.put(key.clone(), b"p".to_vec()).await.unwrap();
    txn.commit().await.unwrap();
    let started = Instant::now();
    let mut read = sim.begin_recent_read().await.unwrap();
    assert_eq!(read.get(&key).await.unwrap(), Some(b"p".to_vec()));
    // Only the read of the home region's leader (local): no timestamp.
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(read.put(key.clone(), b"x".to_vec()).await.is_err());
    assert!(read.get_for_update(&key).await.is_err());
    assert!(read.delete(key.clone()).await.is_err());
    read.rollback().await.unwrap();
    // A read of another region's data pays that round trip only.
    let started = Instant::now();
    let mut read = sim.begin_recent_read().await.unwrap();
    read.get(&Key::Profile(BoxId::new(US_EAST)).encode())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), model.read(Home::Region(US_EAST)));
    read.rollback().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn region_survival_adds_the_quorum() {
    let zone = model("zone", US_EAST);
    let region = model("region", US_EAST);
    let home = Home::Region(US_EAST);
    let (_, sim) = simulated(&region);
    let elapsed = send_shaped(&sim, BoxId::new(US_EAST)).await;
    assert_eq!(elapsed, region.send(US_EAST));
    // Prewrite and the primary key's commit each wait for a cross-region quorum.
    let quorum = region.quorum(home);
    assert_eq!(zone.quorum(home), Duration::ZERO);
    assert_eq!(elapsed, zone.send(US_EAST) + 2 * quorum);
    // A majority outside the home region is at least the nearest region away.
    assert!(quorum >= ms(75), "{quorum:?}");
}

#[tokio::test(start_paused = true)]
async fn reads_are_charged_by_the_home_of_their_keys() {
    let model = model("zone", US_EAST);
    let (_, sim) = simulated(&model);
    let eu = Key::Next(BoxId::new(EU_WEST)).encode();
    let ap = Key::Next(BoxId::new(AP_SOUTH)).encode();
    let local = Key::Next(BoxId::new(US_EAST)).encode();
    let mut txn = sim.begin().await.unwrap();

    let timed = Instant::now();
    txn.get(&eu).await.unwrap();
    assert_eq!(timed.elapsed(), ms(75));

    let timed = Instant::now();
    txn.get(&local).await.unwrap();
    assert_eq!(timed.elapsed(), Duration::ZERO);

    // A batch goes out in parallel: its slowest key.
    let timed = Instant::now();
    txn.batch_get(&[eu.clone(), ap.clone(), local.clone()])
        .await
        .unwrap();
    assert_eq!(timed.elapsed(), ms(190));

    // A scan is charged by the home of its start key.
    let timed = Instant::now();
    let range = KeyRange::prefix(&ap[..4]);
    txn.scan(&range, 10, ScanOrder::Forward).await.unwrap();
    txn.scan(&range, 10, ScanOrder::Reverse).await.unwrap();
    assert_eq!(timed.elapsed(), ms(2 * 190));

    // Keys outside Rossby's layout are global: led from the primary, here local.
    let timed = Instant::now();
    txn.get(b"elsewhere").await.unwrap();
    assert_eq!(timed.elapsed(), Duration::ZERO);

    // Nothing written: the commit costs nothing.
    let timed = Instant::now();
    txn.commit().await.unwrap();
    assert_eq!(timed.elapsed(), Duration::ZERO);

    // Seen from eu-west, global data is one round trip away.
    let from_eu = self::model("zone", EU_WEST);
    let (_, sim) = simulated(&from_eu);
    let mut txn = sim.begin().await.unwrap();
    let timed = Instant::now();
    txn.get(b"elsewhere").await.unwrap();
    txn.scan(&KeyRange::prefix(b""), 1, ScanOrder::Forward)
        .await
        .unwrap();
    assert_eq!(timed.elapsed(), 2 * from_eu.read(Home::Global));
    assert_eq!(from_eu.read(Home::Global), ms(75));
    txn.rollback().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn commits_charge_the_written_homes_with_the_first_as_primary() {
    let model = model("zone", US_EAST);
    let (memory, sim) = simulated(&model);
    let eu = Key::Next(BoxId::new(EU_WEST)).encode();
    let local = Key::Next(BoxId::new(US_EAST)).encode();
    let eu_first = model.commit(&[Home::Region(EU_WEST), Home::Region(US_EAST)]);
    let local_first = model.commit(&[Home::Region(US_EAST), Home::Region(EU_WEST)]);
    // Prewrite waits for eu-west either way; the primary's commit only when it is there.
    assert_eq!(eu_first, ms(150));
    assert_eq!(local_first, ms(75));

    for (first, second, expected) in [(&eu, &local, eu_first), (&local, &eu, local_first)] {
        let mut txn = sim.begin().await.unwrap();
        txn.put(first.clone(), b"1".to_vec()).await.unwrap();
        txn.put(second.clone(), b"2".to_vec()).await.unwrap();
        // A second write to a home already written adds nothing.
        txn.delete(first.clone()).await.unwrap();
        let timed = Instant::now();
        txn.commit().await.unwrap();
        assert_eq!(timed.elapsed(), expected);
    }

    // A lock taken by get_for_update is committed like a write.
    let mut txn = sim.begin().await.unwrap();
    let timed = Instant::now();
    txn.get_for_update(&eu).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(
        timed.elapsed(),
        ms(75) + model.commit(&[Home::Region(EU_WEST)])
    );

    // A rollback sends nothing, and leaves nothing behind.
    let mut txn = sim.begin().await.unwrap();
    txn.put(eu.clone(), b"discarded".to_vec()).await.unwrap();
    let timed = Instant::now();
    txn.rollback().await.unwrap();
    assert_eq!(timed.elapsed(), Duration::ZERO);

    // The data went to the wrapped store, unchanged: the last loop round wrote
    // eu-west's key and deleted the local one.
    let mut check = memory.begin().await.unwrap();
    assert_eq!(check.get(&eu).await.unwrap(), Some(b"2".to_vec()));
    assert_eq!(check.get(&local).await.unwrap(), None);
    check.rollback().await.unwrap();
    assert_eq!(sim.backend(), "memory");
}

/// A real enqueue through the domain tables: a recipient homed elsewhere costs at
/// least the modelled send (the tables read in several rounds), one homed in the
/// gateway's region costs nothing.
#[tokio::test(start_paused = true)]
async fn real_sends_are_slow_only_across_regions() {
    let model = model("zone", US_EAST);
    let (memory, sim) = simulated(&model);
    let setup = Store::new(memory, hasher());
    let store = Store::new(sim, hasher());
    let sender = (BoxId::new(US_EAST), DeviceId::new());

    let mut costs = Vec::new();
    for region in [EU_WEST, US_EAST] {
        let recipient = BoxId::new(region);
        let device = DeviceId::new();
        let record = Device {
            identity_key: vec![1; 32],
            encryption_key: vec![2; 64],
            label: "test".into(),
            ..Device::default()
        };
        transact!(setup, |txn| {
            accounts::create_box(txn, recipient, T0).await?;
            devices::add(txn, &setup.limits, recipient, device, &record, T0).await?;
            devices::authorize(txn, recipient, device, T0).await?;
            Ok(())
        })
        .unwrap();
        let version = transact!(setup, |txn| Ok(devices::recipients(txn, recipient)
            .await?
            .0))
        .unwrap();
        let envelope = NewEnvelope {
            sender: rossby_storage::tables::queue::Sender::Device {
                box_id: sender.0,
                device_id: sender.1,
                identity_key: Some([7; 32]),
            },
            message_id: MessageId::new(),
            device_list_version: version,
            payload: b"ciphertext".to_vec(),
            wrapped_for: None,
        };
        let timed = Instant::now();
        let outcome = store.enqueue(recipient, &[envelope], T0).await.unwrap();
        costs.push(timed.elapsed());
        assert!(matches!(outcome[..], [Ok(_)]), "{outcome:?}");
    }
    assert!(costs[0] >= model.send(EU_WEST), "{costs:?}");
    assert_eq!(costs[1], Duration::ZERO);
}

#[test]
fn an_unknown_gateway_region_is_refused_by_the_model() {
    assert!(LatencyModel::new(topology("zone", None), RegionId(9)).is_err());
}

/// The conformance suite through the simulation: every operation pays 1 ms round
/// trips (the gateway sits outside the primary region, where the suite's keys are
/// led from), so delays are interleaved with every step without slowing the suite.
async fn make_store() -> Option<Kv> {
    let model = LatencyModel::new(topology("zone", Some(1)), EU_WEST).unwrap();
    assert_eq!(model.read(Home::Global), ms(1));
    Some(WanSimulation::wrap(Arc::new(MemoryStore::new()), model))
}

conformance::conformance_suite!(make_store, write_skew = conformance::WriteSkew::Allowed);
