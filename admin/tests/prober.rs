//! The cross-region prober against three real gateways in this process: a
//! prober per region probes every region pair for a while and every pair
//! delivers; then one region's gateway stops and the pairs into and out of it
//! show failures and missing probes while the others keep delivering.

mod support;

use rossby_admin::prober::{DEFAULT_ACCOUNT_TEMPLATE, Prober, ProberConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{Local, REGIONS, http_get, samples};

/// Time the probers run with every region up.
const HEALTHY: Duration = Duration::from_secs(30);
/// Time they run with one region's gateway stopped.
const BROKEN: Duration = Duration::from_secs(20);
/// Generous: a debug build on a busy machine delivers in seconds, not
/// milliseconds.
const DEADLINE: Duration = Duration::from_secs(8);

async fn scrape(probers: &[SocketAddr]) -> Vec<BTreeMap<String, f64>> {
    let mut pages = Vec::new();
    for addr in probers {
        let (status, body) = http_get(*addr, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        pages.push(samples(&body));
    }
    pages
}

fn value(page: &BTreeMap<String, f64>, metric: &str, from: &str, to: &str) -> f64 {
    page.get(&format!("{metric}{{from=\"{from}\",to=\"{to}\"}}"))
        .copied()
        .unwrap_or(0.0)
}

/// Send failures of a pair, whatever their status.
fn failures(page: &BTreeMap<String, f64>, from: &str, to: &str) -> f64 {
    let prefix = format!("rossby_probe_send_failures_total{{from=\"{from}\",");
    let to = format!("to=\"{to}\"");
    page.iter()
        .filter(|(k, _)| k.starts_with(&prefix) && k.contains(&to))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probers_measure_every_pair_and_notice_a_dead_region() {
    let started = Instant::now();
    let mut local = Local::start().await;
    let ca: Vec<Vec<u8>> = (0..REGIONS.len()).map(|i| local.ca_der(i)).collect();
    let state = local.dir.path().join("probers");
    let config = |i: usize| ProberConfig {
        topology: local.topology.clone(),
        region: REGIONS[i].0.into(),
        gateway: local.quic[i],
        server_name: Some("127.0.0.1".into()),
        ca_cert_der: Some(ca[i].clone()),
        state_dir: state.clone(),
        account_template: DEFAULT_ACCOUNT_TEMPLATE.into(),
        codes_file: Some(local.codes.clone()),
        code_wait: Duration::from_secs(30),
        interval: Duration::from_secs(1),
        deadline: DEADLINE,
        timeout: Duration::from_secs(5),
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (a, b, c) = tokio::join!(
        Prober::start(config(0), any),
        Prober::start(config(1), any),
        Prober::start(config(2), any),
    );
    let probers = vec![a.unwrap(), b.unwrap(), c.unwrap()];
    let addrs: Vec<SocketAddr> = probers.iter().map(Prober::metrics_addr).collect();
    eprintln!("probers provisioned after {:?}", started.elapsed());

    tokio::time::sleep(HEALTHY).await;
    let healthy = scrape(&addrs).await;
    for (i, (from, _)) in REGIONS.iter().enumerate() {
        for (j, (to, _)) in REGIONS.iter().enumerate() {
            let sent = value(&healthy[i], "rossby_probe_sent_total", from, to);
            let delivered = value(&healthy[j], "rossby_probe_delivered_total", from, to);
            let missing = value(&healthy[j], "rossby_probe_missing_total", from, to);
            let latency = value(
                &healthy[j],
                "rossby_probe_delivery_duration_seconds_count",
                from,
                to,
            );
            eprintln!(
                "{from} -> {to}: sent {sent}, delivered {delivered}, missing {missing}, failed {}",
                failures(&healthy[i], from, to)
            );
            // Loose bounds: a debug build on a loaded machine sends less than
            // once a second, and a send that times out leaves a gap.
            assert!(sent >= 5.0, "{from} -> {to} sent {sent}");
            assert!(delivered >= 5.0, "{from} -> {to} delivered {delivered}");
            assert!(latency >= delivered, "a latency per delivered probe");
            assert!(missing < delivered, "{from} -> {to} mostly delivers");
        }
    }

    // ap-southeast's gateway stops; its prober keeps running.
    let dead = 2;
    local.stop(dead).await;
    tokio::time::sleep(BROKEN).await;
    let broken = scrape(&addrs).await;
    let grew = |page: usize, metric: &str, from: &str, to: &str| {
        value(&broken[page], metric, from, to) - value(&healthy[page], metric, from, to)
    };
    let (dead_name, _) = REGIONS[dead];
    for (i, (other, _)) in REGIONS.iter().enumerate() {
        let out_failed =
            failures(&broken[dead], dead_name, other) - failures(&healthy[dead], dead_name, other);
        let into_missing = grew(dead, "rossby_probe_missing_total", other, dead_name);
        eprintln!(
            "{dead_name} -> {other}: {out_failed} new send failures; {other} -> {dead_name}: {into_missing} newly missing"
        );
        assert!(out_failed >= 3.0, "{dead_name} -> {other} fails to send");
        assert!(into_missing >= 3.0, "{other} -> {dead_name} goes missing");
        if i != dead {
            let out_missing = grew(i, "rossby_probe_missing_total", dead_name, other);
            assert!(
                out_missing >= 3.0,
                "{dead_name} -> {other} goes missing at {other}"
            );
        }
    }
    let fetch_failed: f64 = broken[dead]
        .iter()
        .filter(|(k, _)| k.starts_with("rossby_probe_fetch_failures_total"))
        .map(|(_, v)| v)
        .sum();
    assert!(fetch_failed >= 1.0, "the dead region's prober cannot fetch");
    // The pairs between the live regions keep delivering.
    for (from, _) in REGIONS.iter().take(2) {
        for (j, (to, _)) in REGIONS.iter().enumerate().take(2) {
            let delivered = grew(j, "rossby_probe_delivered_total", from, to);
            let missing = grew(j, "rossby_probe_missing_total", from, to);
            assert!(
                delivered >= 5.0,
                "{from} -> {to} still delivers: {delivered}"
            );
            assert!(missing < delivered, "{from} -> {to} mostly delivers");
        }
    }

    for p in probers {
        p.stop().await;
    }
    local.shutdown().await;
    eprintln!("took {:?}", started.elapsed());
}

fn admin_binary(args: &[String]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rossby-admin"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The binary provisions a region's accounts once from the codes file; later
/// runs need no code, and an unprovisioned region without one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_provisions_a_regions_accounts_once() {
    let local = Local::start().await;
    let state = local.dir.path().join("prober-state");
    let cert = local.gateways[1]
        .as_ref()
        .unwrap()
        .certificate_path()
        .to_path_buf();
    let args = |region: &str, codes: bool| {
        let mut a: Vec<String> = [
            "prober",
            "--provision-only",
            "--topology",
            local.topology_path.to_str().unwrap(),
            "--region",
            region,
            "--state-dir",
            state.to_str().unwrap(),
            "--ca-cert",
            cert.to_str().unwrap(),
            "--code-wait",
            "30",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if codes {
            a.extend(["--codes-file".into(), local.codes.display().to_string()]);
        }
        a
    };
    let run = |a: Vec<String>| tokio::task::spawn_blocking(move || admin_binary(&a));

    let (code, out, err) = run(args("eu-west", true)).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("rossby-prober-eu-west-send@prober.rossby.invalid")
            && out.contains("rossby-prober-eu-west-recv@prober.rossby.invalid"),
        "{out}"
    );
    assert!(state.join("prober-eu-west-recv.state").exists());

    let (code, out, err) = run(args("eu-west", false)).await.unwrap();
    assert_eq!(code, 0, "provisioned once is enough: {out}{err}");

    let (code, _, err) = run(args("us-east", false)).await.unwrap();
    assert_eq!(code, 1);
    assert!(
        err.starts_with("rossby-admin: prober of region us-east: the account")
            && err.contains("--codes-file"),
        "{err}"
    );
    let (code, _, err) = run(args("mars", false)).await.unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("region \"mars\" is not in") && err.contains("us-east, eu-west, ap-southeast"),
        "{err}"
    );
    local.shutdown().await;
}
