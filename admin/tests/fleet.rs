//! `rossby-admin fleet status` against three real gateways in this process,
//! one of them stopped: the binary's table and JSON show two ready gateways
//! with their version, certificate and rates, and the stopped one down.

mod support;

use rossby_admin::fleet::{self, Options};
use std::process::Command;
use std::time::Duration;
use support::{Local, REGIONS};

fn admin_binary(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rossby-admin"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_status_shows_ready_gateways_and_a_stopped_one() {
    let mut local = Local::start().await;
    let options = Options {
        sample: Duration::from_millis(300),
        timeout: Duration::from_secs(5),
    };
    let report = fleet::status(&local.topology, options).await;
    assert!(report.all_ready(), "{report}");
    for (g, (name, code)) in report.gateways.iter().zip(REGIONS) {
        assert_eq!(g.region, name);
        // It serves the region the topology puts it in, holds its ownership
        // lease and, alone in its region, owns all of the region's boxes.
        assert_eq!(g.region_code, Some(code.0), "{report}");
        assert!(!g.region_mismatch());
        assert_eq!(
            g.ownership,
            Some(fleet::Ownership {
                lease_held: true,
                live_gateways: 1
            }),
            "{report}"
        );
        assert!(g.live);
        assert_eq!(g.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        let days = g.certificate_days_left.unwrap();
        assert!(days > 1.0, "a fresh self-signed certificate: {days}");
        assert!(g.requests_per_second.is_some() && g.errors_per_second == Some(0.0));
        assert_eq!(g.peer_links, fleet::PeerLinks::Ok, "{report}");
    }

    local.stop(2).await;
    let topology = local.topology_path.to_str().unwrap().to_string();
    let (code, table, stderr) = tokio::task::spawn_blocking({
        let topology = topology.clone();
        move || {
            admin_binary(&[
                "fleet",
                "status",
                "--topology",
                &topology,
                "--sample",
                "0.3",
            ])
        }
    })
    .await
    .unwrap();
    eprintln!("{table}{stderr}");
    assert_eq!(code, 3, "a gateway is down");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[1].starts_with("us-east") && lines[1].contains("ready"));
    assert!(lines[1].contains(" 1/1 "), "{table}");
    assert!(lines[3].starts_with("ap-southeast") && lines[3].contains("down"));
    assert!(lines[3].contains("connection refused"), "{table}");
    assert_eq!(lines[4], "2 of 3 gateways ready; rates over 0.3 s");

    let (code, json, _) = tokio::task::spawn_blocking(move || {
        admin_binary(&[
            "fleet",
            "status",
            "--topology",
            &topology,
            "--json",
            "--sample",
            "0.3",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 3);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let states: Vec<&str> = json["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ready", "ready", "down"]);
    assert_eq!(json["gateways"][0]["version"], env!("CARGO_PKG_VERSION"));
    assert!(json["gateways"][2]["version"].is_null());
    local.shutdown().await;
}
