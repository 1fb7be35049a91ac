//! A short local run through the library API: two regions with three users of
//! two devices each, 1:1 sends within and across regions and group sends, at 20
//! sends/s for 3 s (no warm-up, so every send is measured). Every message must be decrypted exactly once on every
//! device that should get it, and the report and picture must be written.

use rossby_loadtest::local::LocalOptions;
use rossby_loadtest::progress::ProgressMode;
use rossby_loadtest::scenario::{Overrides, ScenarioFile};
use rossby_loadtest::{Mode, Options, Phase, Scenario, execute};
use std::time::{Duration, Instant};

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

[rtt_ms]
"east:west" = 70
"#;

#[test]
fn a_short_local_run_delivers_every_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("two-regions.toml");
    std::fs::write(&topology, TOPOLOGY).unwrap();
    let scenario = Scenario::load(&Overrides::from(ScenarioFile {
        topology: Some(topology),
        users_per_region: Some(3),
        devices_per_user: Some(2),
        contacts_per_user: Some(2),
        rate: Some(20.0),
        duration: Some("3s".into()),
        warmup: Some("0s".into()),
        drain: Some("30s".into()),
        mix: Some("same=40,cross=40,group=20".into()),
        groups: Some(2),
        group_members: Some(3),
        sizes: Some("64-256:3,2048:1".into()),
        ..ScenarioFile::default()
    }))
    .unwrap();
    let out = dir.path().join("out");
    let started = Instant::now();
    let outcome = execute(Options {
        scenario,
        mode: Mode::Local(LocalOptions {
            wan_sim: false,
            memory_store: true,
        }),
        phase: Phase::All,
        state_dir: None,
        output_dir: out.clone(),
        report_path: None,
        svg_path: None,
        provision_timeout: Duration::from_secs(120),
        progress: ProgressMode::Quiet,
        command: "tests/local.rs".into(),
        generator: Default::default(),
        start_at: None,
    })
    .unwrap();
    eprintln!("local run took {:?}", started.elapsed());
    let report = outcome.report.expect("a run report");
    let a = report.accounting;
    eprintln!("{}", rossby_loadtest::report::table(&report));
    assert_eq!(a.sends, 60, "20/s for 3 s");
    assert_eq!(a.sent, 60, "every send confirmed: {:?}", report.examples);
    assert!(
        a.expected >= 60 * 3,
        "at least the recipient's two devices and the sender's other one"
    );
    assert_eq!(a.lost, 0, "{:?}", report.examples);
    assert_eq!(a.duplicated, 0, "{:?}", report.examples);
    assert_eq!(a.corrupted, 0, "{:?}", report.examples);
    assert_eq!(a.delivered, a.expected);
    assert!(report.target.local);

    // The JSON report on disk says the same.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["format"], "rossby-loadtest/1");
    assert_eq!(json["accounting"]["lost"], 0);
    assert_eq!(json["accounting"]["expected"], a.expected);
    let ops: Vec<&str> = json["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["op"].as_str().unwrap())
        .collect();
    for op in [
        "register",
        "authorize",
        "link",
        "send",
        "group_send",
        "fetch",
        "ack",
        "delivery",
    ] {
        assert!(ops.contains(&op), "{op} missing from {ops:?}");
    }
    let pairs = json["pairs"].as_array().unwrap();
    assert!(
        pairs
            .iter()
            .any(|p| p["op"] == "delivery" && p["from"] == "east" && p["to"] == "west")
    );
    let line = json["final_line"].as_str().unwrap();
    assert!(line.starts_with(&format!(
        "loadtest sent=60 expected={} delivered={} lost=0 duplicated=0 corrupted=0 send_p99_ms=",
        a.expected, a.delivered
    )));
    assert!(line.contains(" delivery_p99_ms=") && line.contains(" achieved_rate="));

    let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<?xml"));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("east -&gt; west"));
}
