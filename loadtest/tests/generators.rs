//! Three load generators, one per region, against one local three-region
//! deployment, as an operator runs them against a real one: the deployment runs
//! in this process; provisioning, the generators and the merge are the
//! `rossby-loadtest` binary, each a child process. The merged accounting must
//! be exact (every message sent by one generator and decrypted on another's
//! device matched) and the same as one process running the same schedule.

use rossby_loadtest::Scenario;
use rossby_loadtest::local::{self, LocalOptions};
use rossby_loadtest::scenario::{Overrides, ScenarioFile};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TOPOLOGY: &str = r#"
primary = "east"
survival = "zone"

[[regions]]
code = 1
name = "east"
zones = ["east-a"]
gateways = [{ quic = "gw.east.example.net:7400", admin = "10.1.0.1:7401" }]

[[regions]]
code = 2
name = "west"
zones = ["west-a"]
gateways = [{ quic = "gw.west.example.net:7400", admin = "10.2.0.1:7401" }]

[[regions]]
code = 3
name = "north"
zones = ["north-a"]
gateways = [{ quic = "gw.north.example.net:7400", admin = "10.3.0.1:7401" }]

[rtt_ms]
"east:west" = 70
"east:north" = 90
"north:west" = 110
"#;

/// The scenario, as flags: 3 regions x 2 users x 2 devices, 1:1 sends within
/// and across regions and group sends, 10 sends/s for 3 s, all measured.
const SCENARIO: &[&str] = &[
    "--users-per-region",
    "2",
    "--devices-per-user",
    "2",
    "--contacts-per-user",
    "2",
    "--rate",
    "10",
    "--duration",
    "3s",
    "--warmup",
    "0s",
    "--drain",
    "30s",
    "--mix",
    "same=40,cross=40,group=20",
    "--groups",
    "2",
    "--group-members",
    "3",
    "--sizes",
    "64-256:3,2048:1",
    "--progress",
    "plain",
];

fn loadtest(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rossby-loadtest"));
    c.args(args);
    c
}

fn check(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Checks a run or merge that wrote `report`: passed, or failed only on the
/// achieved rate (a shared machine may be too slow for the asked rate; the
/// accounting is what this test is about).
fn check_run(what: &str, out: &Output, report: &Path) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(1) if report.exists() => {
            let r = json(report);
            let failures = r["failures"].as_array().unwrap();
            assert!(
                failures
                    .iter()
                    .all(|f| f.as_str().unwrap().starts_with("achieved ")),
                "{what} failed: {failures:?}\n{stdout}\n{stderr}"
            );
            eprintln!("{what}: {failures:?} (a busy machine)");
        }
        _ => panic!("{what} failed ({}):\n{stdout}\n{stderr}", out.status),
    }
    stdout
}

fn last_line(stdout: &str) -> &str {
    stdout.lines().last().unwrap_or_default()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn three_generators_merge_into_the_accounting_of_one_process() {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let planned = dir.path().join("three-regions.toml");
    std::fs::write(&planned, TOPOLOGY).unwrap();
    // The deployment's rate limits are fitted to this scenario.
    let scenario = Scenario::load(&Overrides::from(ScenarioFile {
        topology: Some(planned),
        users_per_region: Some(2),
        devices_per_user: Some(2),
        contacts_per_user: Some(2),
        rate: Some(10.0),
        mix: Some("same=40,cross=40,group=20".into()),
        groups: Some(2),
        group_members: Some(3),
        ..ScenarioFile::default()
    }))
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let deployment = rt
        .block_on(local::start(
            &scenario,
            LocalOptions {
                wan_sim: false,
                memory_store: true,
            },
        ))
        .unwrap();

    // What an operator has of a deployment: its topology with the gateways'
    // addresses, their certificate, and the verifier's codes file.
    let topology = dir.path().join("deployed.toml");
    std::fs::write(&topology, deployment.deployment.topology().to_toml()).unwrap();
    let ca = dir.path().join("ca.der");
    let cert = deployment.deployment.gateways()[0]
        .gateway
        .certificate_der()
        .to_vec();
    std::fs::write(&ca, cert).unwrap();
    let state = dir.path().join("state");
    let out = dir.path().join("out");
    let mut common: Vec<&str> = vec![
        "--topology",
        path(&topology),
        "--ca-cert",
        path(&ca),
        "--state-dir",
        path(&state),
    ];
    common.extend_from_slice(SCENARIO);

    // 1. Provision once, for every generator.
    let mut args = common.clone();
    args.extend(["--phase", "provision", "--codes", path(&deployment.codes)]);
    let t = Instant::now();
    check("provisioning", &loadtest(&args).output().unwrap());
    eprintln!("provisioned in {:?}", t.elapsed());

    // 2. Three generators, one per region, on one agreed start.
    let start_at = SystemTime::now() + Duration::from_secs(8);
    let start_at = format!(
        "{:.3}",
        start_at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
    );
    let reports: Vec<PathBuf> = (0..3).map(|i| out.join(format!("g{i}.json"))).collect();
    let t = Instant::now();
    let children: Vec<_> = (0..3)
        .map(|i| {
            let generator = format!("{i}/3");
            let svg = out.join(format!("g{i}.svg"));
            let mut args = common.clone();
            args.extend([
                "--phase",
                "run",
                "--generator",
                generator.as_str(),
                "--start-at",
                start_at.as_str(),
                "--report",
                path(&reports[i]),
                "--svg",
                path(&svg),
            ]);
            loadtest(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let finished: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    eprintln!("generators ran in {:?}", t.elapsed());
    let mut own_expected = 0;
    let mut sends = 0;
    for (i, f) in finished.iter().enumerate() {
        let stdout = check_run(&format!("generator {i}/3"), f, &reports[i]);
        assert!(
            last_line(&stdout).starts_with(&format!("loadtest generator={i}/3 sent=")),
            "{stdout}"
        );
        let r = json(&reports[i]);
        assert_eq!(r["generator"]["index"], i);
        assert_eq!(
            r["generator"]["devices"], 4,
            "region {i}'s two users' devices"
        );
        own_expected += r["generator"]["exchange"]["own_expected"].as_u64().unwrap();
        sends += r["accounting"]["sends"].as_u64().unwrap();
        assert!(r["accounting"]["sends"].as_u64().unwrap() > 0, "{r}");
    }

    // 3. The merge.
    let mut args = vec!["merge", "--out", path(&out)];
    args.extend(reports.iter().map(|r| path(r)));
    let merged_path = out.join("merged-report.json");
    let stdout = check_run("merge", &loadtest(&args).output().unwrap(), &merged_path);
    let line = last_line(&stdout).to_string();
    let merged = json(&merged_path);
    let a = &merged["accounting"];
    eprintln!("{stdout}");
    assert_eq!(a["sends"], 30, "10/s for 3 s");
    assert_eq!(a["sends"], sends, "the generators' sends add up");
    assert_eq!(
        a["sent"], 30,
        "every send confirmed: {}",
        merged["examples"]
    );
    assert_eq!(a["expected"], own_expected);
    assert_eq!(a["delivered"], a["expected"], "{}", merged["examples"]);
    for key in ["lost", "duplicated", "corrupted", "failed_sends"] {
        assert_eq!(a[key], 0, "{key}: {}", merged["examples"]);
    }
    assert_eq!(merged["merged"]["generators"], 3);
    assert!(line.starts_with(&format!(
        "loadtest sent=30 expected={} delivered={} lost=0 duplicated=0 corrupted=0 send_p99_ms=",
        a["expected"], a["expected"]
    )));
    // Deliveries across every pair of regions, sent by one generator and
    // decrypted on another's devices.
    let pairs = merged["pairs"].as_array().unwrap();
    for (from, to) in [("east", "west"), ("west", "north"), ("north", "east")] {
        assert!(
            pairs
                .iter()
                .any(|p| p["op"] == "delivery" && p["from"] == from && p["to"] == to),
            "no {from} -> {to} delivery"
        );
    }
    let delivery = merged["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == "delivery")
        .unwrap();
    assert_eq!(delivery["count"], a["delivered"]);
    let svg = std::fs::read_to_string(out.join("merged-latency.svg")).unwrap();
    assert!(svg.contains("3 generators merged") && svg.trim_end().ends_with("</svg>"));

    // 4. One process, the same schedule: the same accounting.
    let single = out.join("single.json");
    let mut args = common.clone();
    args.extend([
        "--phase",
        "run",
        "--out",
        path(&out),
        "--report",
        path(&single),
    ]);
    let t = Instant::now();
    check_run(
        "the single process",
        &loadtest(&args).output().unwrap(),
        &single,
    );
    eprintln!("one process ran in {:?}", t.elapsed());
    let one = json(&single);
    for key in [
        "sends",
        "sent",
        "expected",
        "delivered",
        "lost",
        "duplicated",
        "corrupted",
    ] {
        assert_eq!(one["accounting"][key], a[key], "{key}");
    }

    rt.block_on(deployment.deployment.shutdown());
    eprintln!("the whole test took {:?}", began.elapsed());
}
