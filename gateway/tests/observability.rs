//! The observability contract between the gateway and its operators' files:
//!
//! - every metric the alert rules (`deploy/prometheus/alerts.yml`) and the Grafana
//!   dashboard (`deploy/grafana/rossby.json`) query is exported by real gateways
//!   after ordinary traffic (two gateways in two regions with peer notifications,
//!   registrations, a send, a fetch and ack, a rejected authentication);
//! - `docs/operations/metrics.md` documents exactly the `rossby_*` metrics they
//!   export, and every alert's runbook section;
//! - every alert is complete (`for`, `severity`, summary, description, runbook)
//!   and has a case in `deploy/prometheus/alerts.test.yml` where it fires.
//!
//! With `promtool` on `PATH` (Debian's `prometheus` package), the scraped
//! `/metrics`, the rules, their unit tests and the dashboard's queries are also
//! checked by it.

mod support;

use rossby_gateway::config::StorageConfig;
use rossby_gateway::peer::PeerConfig;
use rossby_gateway::peer::tls::DevCa;
use rossby_gateway::{Config, Gateway};
use rossby_keyspace::RegionId;
use rossby_protocol::pb::{self, Method, Status};
use rossby_protocol::status::status_of;
use rossby_storage::Kv;
use rossby_storage::kv::memory::MemoryStore;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::{RawConn, bounded, client, codes_file, http_get, register, start_with};
use yaml_rust2::{Yaml, YamlLoader};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

/// Where the runbook URLs of the rules point: this repository's docs.
const RUNBOOK_BASE: &str = "https://github.com/rossby-im/rossby/blob/main/";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The metric families of a `/metrics` text: name → type.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').unwrap();
            (name.to_string(), kind.to_string())
        })
        .collect()
}

/// Every `rossby_*` name in a PromQL expression.
fn rossby_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("rossby_") {
        // Not a match inside a longer identifier.
        let preceded = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            names.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names
}

/// Whether `name`, as a query names it, is a series the families export: a
/// counter or gauge by its name, a histogram by `_bucket`, `_sum` or `_count`.
fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    if let Some(kind) = families.get(name) {
        return kind != "histogram";
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|base| families.get(base).is_some_and(|k| k == "histogram"))
    })
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of every heading of a Markdown file.
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// One alerting rule of alerts.yml.
#[derive(Debug)]
struct Alert {
    name: String,
    expr: String,
}

/// Reads and checks alerts.yml: every rule is an alert with an expression, a
/// `for` duration, a severity of `critical` or `warning`, a summary, a
/// description and a runbook URL naming an existing section of
/// docs/operations/.
fn alerts() -> Vec<Alert> {
    let docs = YamlLoader::load_from_str(&read("deploy/prometheus/alerts.yml")).unwrap();
    assert_eq!(docs.len(), 1);
    let groups = docs[0]["groups"].as_vec().expect("groups");
    assert!(!groups.is_empty());
    let mut alerts = Vec::new();
    for group in groups {
        let group_name = group["name"].as_str().expect("every group has a name");
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .unwrap_or_else(|| panic!("{group_name}: every rule is an alert: {rule:?}"));
            let field = |value: &Yaml, what: &str| -> String {
                value
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: no {what}"))
                    .to_string()
            };
            let expr = field(&rule["expr"], "expr");
            let duration = field(&rule["for"], "for");
            assert!(
                duration.ends_with(['s', 'm', 'h']) && duration.len() > 1,
                "{name}: for: {duration}"
            );
            let severity = field(&rule["labels"]["severity"], "severity");
            assert!(
                ["critical", "warning"].contains(&severity.as_str()),
                "{name}: severity {severity}"
            );
            for what in ["summary", "description"] {
                assert!(
                    field(&rule["annotations"][what], what).len() > 20,
                    "{name}: {what} too short"
                );
            }
            let url = field(&rule["annotations"]["runbook_url"], "runbook_url");
            let (file, section) = url
                .strip_prefix(RUNBOOK_BASE)
                .and_then(|rest| rest.split_once('#'))
                .unwrap_or_else(|| panic!("{name}: runbook_url {url}"));
            assert!(
                file.starts_with("docs/operations/") && file.ends_with(".md"),
                "{name}: {url}"
            );
            assert!(
                anchors(&read(file)).contains(section),
                "{name}: {file} has no section #{section}"
            );
            assert_eq!(
                section,
                anchor(name),
                "{name}: the runbook is its own section"
            );
            alerts.push(Alert {
                name: name.to_string(),
                expr,
            });
        }
    }
    alerts
}

/// The alerts that some case of alerts.test.yml expects to fire.
fn tested_alerts() -> BTreeSet<String> {
    let docs = YamlLoader::load_from_str(&read("deploy/prometheus/alerts.test.yml")).unwrap();
    assert_eq!(docs[0]["rule_files"][0].as_str(), Some("alerts.yml"));
    let mut fired = BTreeSet::new();
    for case in docs[0]["tests"].as_vec().expect("tests") {
        for check in case["alert_rule_test"].as_vec().expect("alert_rule_test") {
            if check["exp_alerts"].as_vec().is_some_and(|a| !a.is_empty()) {
                fired.insert(check["alertname"].as_str().expect("alertname").to_string());
            }
        }
    }
    fired
}

/// Every PromQL expression of the dashboard: its panels' targets (rows
/// included) and its template variables' queries.
fn dashboard_queries() -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        ("query", serde_json::Value::Object(q)) => {
                            if let Some(serde_json::Value::String(e)) = q.get("query") {
                                out.push(e.clone());
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/rossby.json")).unwrap();
    assert_eq!(dashboard["uid"], "rossby-gateways");
    let panels = dashboard["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        assert_eq!(panel["datasource"]["uid"], "${datasource}");
    }
    let mut queries = Vec::new();
    walk(&dashboard, &mut queries);
    queries
}

/// The metric names metrics.md documents in its tables of `rossby_*` metrics.
fn documented() -> BTreeSet<String> {
    read("docs/operations/metrics.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `rossby_"))
        .map(|rest| format!("rossby_{}", rest.split('`').next().unwrap()))
        .collect()
}

/// Two gateways, regions 1 and 2, one store, peer notifications on.
async fn deployment(dir: &Path) -> (Gateway, Gateway) {
    let kv: Kv = Arc::new(MemoryStore::new());
    let ca = DevCa::generate().unwrap();
    let peer = || PeerConfig::loopback(ca.issue("127.0.0.1").unwrap());
    let mut c1 = Config::for_tests(dir.join("g1"));
    c1.storage = StorageConfig::Shared(kv);
    c1.api.region = RegionId(1);
    c1.peer = Some(peer());
    let mut c2 = Config::for_tests(dir.join("g2")).same_deployment_as(&c1);
    c2.api.region = RegionId(2);
    c2.peer = Some(peer());
    (start_with(c1).await, start_with(c2).await)
}

/// Traffic that touches every metric: registrations (codes, storage), a send
/// from region 1 to a subscriber in region 2 (envelopes, a peer notification,
/// a push), a fetch and an ack, and a rejected authentication.
async fn traffic(dir: &Path, g1: &Gateway, g2: &Gateway) {
    let alice = client(g1, dir.join("alice.state")).await;
    register(&alice, ALICE, &codes_file(&dir.join("g1"))).await;
    let bob = client(g2, dir.join("bob.state")).await;
    register(&bob, BOB, &codes_file(&dir.join("g2"))).await;

    let mut pushes = bounded("subscribe", bob.subscribe()).await.unwrap();
    bounded("first push", pushes.next()).await.unwrap();
    bounded("send", alice.send_text(BOB, "observed"))
        .await
        .unwrap();
    bounded("the push through the peer notification", pushes.next())
        .await
        .unwrap();
    let batch = bounded("fetch", bob.fetch(Duration::ZERO)).await.unwrap();
    assert_eq!(batch.messages.len(), 1);

    let raw = RawConn::connect(g1).await;
    let response = raw
        .send(&pb::Request {
            version: rossby_protocol::PROTOCOL_VERSION,
            method: Method::Fetch as i32,
            body: Vec::new(),
            authorization: "Hawk not-a-header".into(),
        })
        .await;
    assert_eq!(status_of(&response), Status::Unauthenticated);
    raw.close().await;
    alice.close().await;
    bob.close().await;
}

/// Runs promtool with `args` (and `stdin`), if it is installed; `None` if not.
fn promtool(args: &[&str], stdin: Option<&str>) -> Option<std::process::Output> {
    let mut child = match Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("promtool: {e}"),
    };
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    Some(child.wait_with_output().unwrap())
}

/// Checks the scraped metrics, the rules and the dashboard's queries (as
/// recording rules, Grafana's variables replaced) with promtool.
fn check_with_promtool(metrics: &str, queries: &[String]) {
    let Some(output) = promtool(&["check", "metrics"], Some(metrics)) else {
        eprintln!("promtool is not installed: skipping its checks of /metrics and the rules");
        return;
    };
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for (command, file) in [
        ("check", "deploy/prometheus/alerts.yml"),
        ("test", "deploy/prometheus/alerts.test.yml"),
    ] {
        let path = repo().join(file);
        let output = promtool(&[command, "rules", path.to_str().unwrap()], None).unwrap();
        assert!(
            output.status.success(),
            "promtool {command} rules {file}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        let expr = query
            .replace("$__rate_interval", "5m")
            .replace("$region", ".*")
            .replace("$instance", ".*");
        // Template variable queries (label_values) are Grafana's, not PromQL.
        if expr.starts_with("label_values(") {
            continue;
        }
        file.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let path = dir.path().join("dashboard.yml");
    std::fs::write(&path, file).unwrap();
    let output = promtool(&["check", "rules", path.to_str().unwrap()], None).unwrap();
    assert!(
        output.status.success(),
        "the dashboard's queries do not parse:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_dashboard_and_docs_match_the_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (g1, g2) = deployment(dir.path()).await;
    traffic(dir.path(), &g1, &g2).await;

    let mut scraped = String::new();
    let mut exported_families = BTreeMap::new();
    for gateway in [&g1, &g2] {
        let (status, text) = http_get(gateway.admin_addr(), "/metrics").await.unwrap();
        assert_eq!(status, 200);
        exported_families.extend(families(&text));
        if scraped.is_empty() {
            scraped = text;
        }
    }
    // The certificate's expiry, read at start: rcgen's self-signed certificates
    // are valid until 4096.
    let expiry = g1.metrics().tls_certificate_expiry_timestamp_seconds.get();
    assert!(expiry > 4_000_000_000, "{expiry}");
    assert!(
        scraped.contains(&format!(
            "rossby_tls_certificate_expiry_timestamp_seconds {expiry}"
        )),
        "{scraped}"
    );
    g1.shutdown().await;
    g2.shutdown().await;

    // Every metric a rule or a panel queries is exported.
    let alerts = alerts();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let queries = dashboard_queries();
    let mut referenced = BTreeMap::<String, String>::new();
    for alert in &alerts {
        for name in rossby_names(&alert.expr) {
            referenced.insert(name, format!("alert {}", alert.name));
        }
    }
    for query in &queries {
        for name in rossby_names(query) {
            referenced.insert(name, format!("dashboard query {query}"));
        }
    }
    for (name, by) in &referenced {
        assert!(
            exported(name, &exported_families),
            "{by} queries {name}, which the gateway does not export; it exports {:?}",
            exported_families.keys().collect::<Vec<_>>()
        );
    }
    // The rules cover what they must.
    for name in [
        "rossby_requests_total",
        "rossby_request_duration_seconds_bucket",
        "rossby_storage_conflicts_total",
        "rossby_storage_retries_total",
        "rossby_envelopes_enqueued_total",
        "rossby_auth_failures_total",
        "rossby_tls_certificate_expiry_timestamp_seconds",
    ] {
        assert!(
            alerts.iter().any(|a| rossby_names(&a.expr).contains(name)),
            "no alert uses {name}"
        );
    }
    assert!(
        alerts
            .iter()
            .any(|a| a.expr.contains("up{job=\"rossby-gateway\"}"))
    );
    let tested = tested_alerts();
    for alert in &alerts {
        assert!(
            tested.contains(&alert.name),
            "deploy/prometheus/alerts.test.yml has no case where {} fires",
            alert.name
        );
    }

    // metrics.md documents exactly the gateway's own metrics.
    let own: BTreeSet<String> = exported_families
        .keys()
        .filter(|name| name.starts_with("rossby_"))
        .cloned()
        .collect();
    let documented = documented();
    let undocumented: Vec<_> = own.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "docs/operations/metrics.md does not document {undocumented:?}"
    );
    let stale: Vec<_> = documented.difference(&own).collect();
    assert!(
        stale.is_empty(),
        "docs/operations/metrics.md documents {stale:?}, which the gateway does not export"
    );

    check_with_promtool(&scraped, &queries);
}

#[test]
fn metric_names_are_extracted_from_promql() {
    let names = rossby_names(
        "histogram_quantile(0.99, sum by (le) (rate(rossby_request_duration_seconds_bucket{rpc!=\"x\"}[5m]))) / x_rossby_not_this + rossby_up",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["rossby_request_duration_seconds_bucket", "rossby_up"]
    );
    let families: BTreeMap<String, String> = [
        ("rossby_a_seconds", "histogram"),
        ("rossby_b_total", "counter"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert!(exported("rossby_a_seconds_bucket", &families));
    assert!(exported("rossby_a_seconds_count", &families));
    assert!(!exported("rossby_a_seconds", &families));
    assert!(exported("rossby_b_total", &families));
    assert!(!exported("rossby_b_total_count", &families));
    assert!(!exported("rossby_c", &families));
    assert_eq!(anchor(" RossbyGatewayDown"), "rossbygatewaydown");
    assert_eq!(anchor("Health checks"), "health-checks");
    assert_eq!(
        anchor("From outside: `rossby health`"),
        "from-outside-rossby-health"
    );
}
