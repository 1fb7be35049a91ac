//! `rossby-admin placement plan` and `apply`: planning from the example topology,
//! and applying rules to a PD HTTP endpoint played by a small HTTP/1.1 server on
//! loopback that stores rule bundles the way PD does (or fails the way PD fails).

use rossby_admin::Error;
use rossby_admin::pd::{DEFAULT_PD_TIMEOUT, PdClient};
use rossby_admin::placement::plan_file;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn example_topology() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/three-regions.toml")
}

/// One request as the server received it.
#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: String,
}

/// How the server answers.
#[derive(Clone, Debug)]
enum Behaviour {
    /// Like PD: stores posted bundles, serves them back per group.
    Pd,
    /// Like PD, but loses the last rule of every group it stores.
    LosesARule,
    /// Every request gets this status and body.
    Fails(u16, &'static str),
    /// Reads the request and never answers.
    Silent,
    /// Like PD with this cluster: the answers to `GET /pd/api/v1/regions` and
    /// `GET /pd/api/v1/stores`.
    Cluster { regions: String, stores: String },
}

struct FakePd {
    url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakePd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePd {
    async fn start(behaviour: Behaviour) -> FakePd {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let groups = Arc::new(Mutex::new(HashMap::<String, Value>::new()));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                let groups = groups.clone();
                let behaviour = behaviour.clone();
                tokio::spawn(async move {
                    serve(stream, behaviour, recorded, groups).await;
                });
            }
        });
        FakePd {
            url,
            requests,
            task,
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    behaviour: Behaviour,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    groups: Arc<Mutex<HashMap<String, Value>>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    recorded.lock().unwrap().push(request.clone());
    let (status, body) = match behaviour {
        Behaviour::Silent => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        Behaviour::Fails(status, body) => (status, body.to_string()),
        Behaviour::Cluster { regions, stores } => {
            match (request.method.as_str(), request.target.as_str()) {
                ("GET", "/pd/api/v1/regions") => (200, regions),
                ("GET", "/pd/api/v1/stores") => (200, stores),
                _ => (404, "404 page not found".into()),
            }
        }
        Behaviour::Pd | Behaviour::LosesARule => answer_like_pd(
            &request,
            matches!(behaviour, Behaviour::LosesARule),
            &groups,
        ),
    };
    let response = format!(
        "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// PD's placement-rule endpoints: `POST .../placement-rule?partial` replaces the
/// posted groups, `GET .../placement-rule/{group}` returns one group. Stored rules
/// look like PD's: zero values omitted, hex keys lower-cased, bookkeeping added.
fn answer_like_pd(
    request: &Recorded,
    lose_a_rule: bool,
    groups: &Mutex<HashMap<String, Value>>,
) -> (u16, String) {
    const BASE: &str = "/pd/api/v1/config/placement-rule";
    let json_string = |s: &str| Value::String(s.into()).to_string();
    if request.method == "POST" && request.target == format!("{BASE}?partial=true") {
        let Ok(Value::Array(bundles)) = serde_json::from_str::<Value>(&request.body) else {
            return (400, json_string("invalid character"));
        };
        let mut groups = groups.lock().unwrap();
        for mut bundle in bundles {
            let Some(id) = bundle["group_id"].as_str().map(str::to_string) else {
                return (400, json_string("missing group id"));
            };
            if let Some(rules) = bundle["rules"].as_array_mut() {
                for rule in rules.iter_mut() {
                    let rule = rule.as_object_mut().unwrap();
                    rule.retain(|_, v| !is_zero(v));
                    for k in ["start_key", "end_key"] {
                        if let Some(Value::String(hex)) = rule.get_mut(k) {
                            *hex = hex.to_ascii_lowercase();
                        }
                    }
                    rule.insert("version".into(), json!(1));
                    rule.insert("create_timestamp".into(), json!(1_700_000_000u64));
                }
                if lose_a_rule {
                    rules.pop();
                }
            }
            groups.insert(id, bundle);
        }
        return (200, json_string("Update rules and groups successfully."));
    }
    if request.method == "GET"
        && let Some(group) = request.target.strip_prefix(&format!("{BASE}/"))
    {
        let stored = groups.lock().unwrap().get(group).cloned();
        let bundle = stored.unwrap_or_else(
            || json!({"group_id": group, "group_index": 0, "group_override": false, "rules": null}),
        );
        return (200, bundle.to_string());
    }
    (404, "404 page not found".into())
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Recorded {
        method,
        target,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

#[test]
fn plan_prints_the_forwarded_send_latency_per_pair() {
    let plan = plan_file(&example_topology()).expect("the example topology plans");
    let send = |from: &str, to: &str| {
        plan.send_latency
            .iter()
            .find(|(a, b, _)| a == from && b == to)
            .map(|(_, _, d)| *d)
    };
    let ms = Duration::from_millis;
    // The peer round trip to the home region, then the owner's two timestamps from
    // us-east (zero quorums under the zone goal).
    assert_eq!(send("us-east", "us-east"), Some(ms(0)));
    assert_eq!(send("eu-west", "eu-west"), Some(ms(136)));
    assert_eq!(send("ap-southeast", "ap-southeast"), Some(ms(430)));
    assert_eq!(send("us-east", "ap-southeast"), Some(ms(215 + 430)));
    assert_eq!(send("ap-southeast", "us-east"), Some(ms(215)));
    assert_eq!(send("ap-southeast", "eu-west"), Some(ms(160 + 136)));

    let text = plan.to_string();
    let table = text
        .split("Expected send latency")
        .nth(1)
        .expect("a send latency table");
    assert!(
        table.starts_with(", forwarded home-region path (rows: gateway region;"),
        "{text}"
    );
    assert!(table.contains("owning gateway"), "{text}");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(name) && l.ends_with(" ms"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    // Columns in region order: us-east, eu-west, ap-southeast.
    assert_eq!(
        row("ap-southeast").as_deref(),
        Some("ap-southeast 215 ms 296 ms 430 ms"),
        "{text}"
    );
    assert_eq!(
        row("us-east").as_deref(),
        Some("us-east 0 ms 204 ms 645 ms"),
        "{text}"
    );
}

#[tokio::test]
async fn apply_sends_the_plans_json_and_verifies_it() {
    let plan = plan_file(&example_topology()).expect("the example topology plans");
    assert!(!plan.bundles.is_empty());
    let pd = FakePd::start(Behaviour::Pd).await;
    let client = PdClient::new(&pd.url, DEFAULT_PD_TIMEOUT).unwrap();
    let applied = client.apply(&plan).await.expect("apply");

    let requests = pd.requests();
    assert_eq!(requests.len(), 1 + plan.bundles.len(), "{requests:#?}");
    let post = &requests[0];
    assert_eq!(post.method, "POST");
    assert_eq!(post.target, "/pd/api/v1/config/placement-rule?partial=true");
    assert_eq!(post.body, plan.rules_json());
    assert_eq!(
        post.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(
        post.headers.get("host").map(String::as_str),
        pd.url.strip_prefix("http://")
    );
    for (get, bundle) in requests[1..].iter().zip(&plan.bundles) {
        assert_eq!(get.method, "GET");
        assert_eq!(
            get.target,
            format!("/pd/api/v1/config/placement-rule/{}", bundle.group_id)
        );
    }
    assert!(plan.bundles.iter().any(|b| b.group_id == "rossby"));

    assert_eq!(applied.url, pd.url);
    assert_eq!(applied.groups.len(), plan.bundles.len());
    for (group, bundle) in applied.groups.iter().zip(&plan.bundles) {
        assert_eq!(group.group_id, bundle.group_id);
        assert_eq!(group.rules, bundle.rules.len());
        assert_eq!(group.override_lower, bundle.group_override);
    }
    let summary = applied.to_string();
    assert!(summary.contains("group rossby"), "{summary}");
    assert!(summary.contains("read back unchanged"), "{summary}");
}

#[tokio::test]
async fn a_pd_that_does_not_keep_the_rules_is_reported() {
    let plan = plan_file(&example_topology()).unwrap();
    let pd = FakePd::start(Behaviour::LosesARule).await;
    let client = PdClient::new(&pd.url, DEFAULT_PD_TIMEOUT).unwrap();
    let err = client.apply(&plan).await.unwrap_err();
    assert!(matches!(err, Error::PdMismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&pd.url) && text.contains("missing"), "{text}");
}

#[tokio::test]
async fn pd_errors_carry_the_status_and_body() {
    let plan = plan_file(&example_topology()).unwrap();
    let pd = FakePd::start(Behaviour::Fails(
        500,
        "\"[PD:placement:ErrBuildRuleList]build rule list failed, no rule left\"",
    ))
    .await;
    let client = PdClient::new(&pd.url, DEFAULT_PD_TIMEOUT).unwrap();
    let err = client.apply(&plan).await.unwrap_err();
    match &err {
        Error::PdStatus { status, body, .. } => {
            assert_eq!(*status, 500);
            assert_eq!(
                body,
                "[PD:placement:ErrBuildRuleList]build rule list failed, no rule left"
            );
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("HTTP 500") && text.contains("no rule left"),
        "{text}"
    );
    assert!(
        text.contains("POST /pd/api/v1/config/placement-rule"),
        "{text}"
    );
    // Nothing was read back after a failed POST.
    assert_eq!(pd.requests().len(), 1);
}

#[tokio::test]
async fn disabled_placement_rules_say_how_to_enable_them() {
    let plan = plan_file(&example_topology()).unwrap();
    let pd = FakePd::start(Behaviour::Fails(
        412,
        "\"placement rules feature is disabled\"",
    ))
    .await;
    let client = PdClient::new(&pd.url, DEFAULT_PD_TIMEOUT).unwrap();
    let err = client.apply(&plan).await.unwrap_err();
    assert!(
        matches!(err, Error::PlacementRulesDisabled { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("config placement-rules enable"), "{text}");
    assert!(
        text.contains("replication.enable-placement-rules"),
        "{text}"
    );
}

#[tokio::test]
async fn unreachable_and_silent_pds_fail_within_bounds() {
    let plan = plan_file(&example_topology()).unwrap();
    // A port nothing listens on any more.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}");
    let err = PdClient::new(&url, DEFAULT_PD_TIMEOUT)
        .unwrap()
        .apply(&plan)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PdUnreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&url) && text.contains("connection refused"),
        "{text}"
    );

    let pd = FakePd::start(Behaviour::Silent).await;
    let started = std::time::Instant::now();
    let err = PdClient::new(&pd.url, Duration::from_millis(300))
        .unwrap()
        .apply(&plan)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = err.to_string();
    assert!(text.contains("no answer within 300 ms"), "{text}");
    assert!(text.contains(&pd.url), "{text}");
}

#[test]
fn bad_urls_are_refused_before_connecting() {
    for (url, why) in [
        ("https://pd:2379", "https is not supported"),
        ("not a url", "invalid PD URL"),
        ("", "empty"),
    ] {
        let err = PdClient::new(url, DEFAULT_PD_TIMEOUT).unwrap_err();
        assert!(err.to_string().contains(why), "{url:?}: {err}");
    }
}

#[test]
fn plan_prints_the_tables_and_the_rules() {
    let topology = example_topology();
    let plan = plan_file(&topology).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_rossby-admin"))
        .args(["placement", "plan", "--topology"])
        .arg(&topology)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.starts_with(plan.to_string().trim_end()), "{stdout}");
    let json_start = stdout.find("\n[").expect("the rules follow the tables");
    let printed: Value = serde_json::from_str(&stdout[json_start..]).unwrap();
    let planned: Value = serde_json::from_str(&plan.rules_json()).unwrap();
    assert_eq!(printed, planned);

    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    let output = Command::new(env!("CARGO_BIN_EXE_rossby-admin"))
        .args(["placement", "plan", "--topology"])
        .arg(&topology)
        .arg("--rules-out")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.starts_with(plan.to_string().trim_end()), "{stdout}");
    assert!(!stdout.contains("\n["), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&rules).unwrap().trim_end(),
        plan.rules_json()
    );
}

#[test]
fn an_invalid_topology_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(example_topology()).unwrap();
    let topology = rossby_replication::Topology::parse(&example).unwrap();
    let primary = topology.primary().name.clone();
    // Same file, but the primary names a region that does not exist.
    let broken = example.replacen(
        &format!("primary = \"{primary}\""),
        "primary = \"atlantis\"",
        1,
    );
    assert_ne!(broken, example, "the example sets primary = \"{primary}\"");
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, &broken).unwrap();
    let expected = rossby_replication::Topology::parse(&broken)
        .unwrap_err()
        .to_string();

    let err = plan_file(&path).unwrap_err();
    assert!(matches!(err, Error::Topology { .. }), "{err:?}");
    assert!(err.to_string().contains(&expected), "{err}");

    for sub in ["plan", "apply"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rossby-admin"));
        cmd.args(["placement", sub, "--topology"]).arg(&path);
        if sub == "apply" {
            cmd.args(["--pd", "http://127.0.0.1:9"]);
        }
        let output = cmd.output().unwrap();
        assert!(!output.status.success(), "{sub}: {output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.starts_with("rossby-admin: invalid topology"),
            "{stderr}"
        );
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(output.stdout.is_empty());
    }

    let missing = dir.path().join("missing.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_rossby-admin"))
        .args(["placement", "plan", "--topology"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("cannot read topology file"), "{stderr}");
}

#[tokio::test]
async fn the_cli_applies_to_pd() {
    let pd = FakePd::start(Behaviour::Pd).await;
    let url = pd.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_rossby-admin"))
            .args(["placement", "apply", "--topology"])
            .arg(example_topology())
            .args(["--pd", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("group rossby"), "{stdout}");
    let plan = plan_file(&example_topology()).unwrap();
    assert_eq!(pd.requests()[0].body, plan.rules_json());

    // A PD that refuses: non-zero exit, one line naming the status.
    let failing = FakePd::start(Behaviour::Fails(500, "\"boom\"")).await;
    let url = failing.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_rossby-admin"))
            .args(["placement", "apply", "--topology"])
            .arg(example_topology())
            .args(["--pd", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("HTTP 500: boom"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

// ---- placement check: PD's Regions and stores against the plan ----

/// The example topology's regions: code, name, zones.
const REGIONS: [(u8, &str, [&str; 3]); 3] = [
    (1, "us-east", ["us-east-1a", "us-east-1b", "us-east-1c"]),
    (2, "eu-west", ["eu-west-1a", "eu-west-1b", "eu-west-1c"]),
    (
        3,
        "ap-southeast",
        ["ap-southeast-1a", "ap-southeast-1b", "ap-southeast-1c"],
    ),
];

/// A second store in us-east-1a (unused by the compliant layout).
const EXTRA_US_EAST_1A: u64 = 10;
/// A TiFlash store: labelled by engine only, holding learners.
const TIFLASH: u64 = 100;

/// The TiKV store in zone `zone` (0..3) of region `code` (1..=3).
fn store(code: u8, zone: usize) -> u64 {
    u64::from(code - 1) * 3 + zone as u64 + 1
}

/// PD's store list in the shape `GET /pd/api/v1/stores` answers: ten labelled
/// TiKV stores and one TiFlash store.
fn stores_json() -> String {
    let tikv = |id: u64, region: &str, zone: &str| {
        json!({
            "store": {
                "id": id,
                "address": format!("tikv-{id}.{region}.internal:20160"),
                "labels": [{"key": "region", "value": region}, {"key": "zone", "value": zone}],
                "version": "8.5.1",
                "peer_address": format!("tikv-{id}.{region}.internal:20160"),
                "status_address": format!("tikv-{id}.{region}.internal:20180"),
                "git_hash": "0123456789abcdef",
                "start_timestamp": 1_700_000_000u64,
                "deploy_path": "/usr/local/bin",
                "last_heartbeat": 1_700_000_100_000_000_000u64,
                "state_name": "Up"
            },
            "status": {
                "capacity": "1TiB", "available": "900GiB", "used_size": "10GiB",
                "leader_count": 3, "leader_weight": 1, "leader_score": 3, "leader_size": 3,
                "region_count": 7, "region_weight": 1, "region_score": 7.5, "region_size": 7,
                "slow_score": 1, "start_ts": "2025-01-01T00:00:00Z",
                "last_heartbeat_ts": "2025-01-01T01:00:00Z", "uptime": "1h0m0s"
            }
        })
    };
    let mut stores = Vec::new();
    for (code, name, zones) in REGIONS {
        for (z, zone) in zones.iter().enumerate() {
            stores.push(tikv(store(code, z), name, zone));
        }
    }
    stores.push(tikv(EXTRA_US_EAST_1A, "us-east", "us-east-1a"));
    stores.push(json!({
        "store": {
            "id": TIFLASH, "address": "tiflash-1.us-east.internal:3930",
            "labels": [{"key": "engine", "value": "tiflash"}], "state_name": "Up"
        },
        "status": {"capacity": "1TiB", "available": "1TiB"}
    }));
    json!({"count": stores.len(), "stores": stores}).to_string()
}

/// PD's hex of the memcomparable encoding of a raw key (upper case, as PD sends).
fn enc(raw: &[u8]) -> String {
    hex::encode_upper(rossby_replication::encode_memcomparable(raw))
}

/// One TiKV Region of a fake cluster.
#[derive(Clone)]
struct Reg {
    id: u64,
    start: String,
    end: String,
    voters: Vec<u64>,
    learners: Vec<u64>,
    leader: u64,
}

fn reg(id: u64, start: String, end: String, voters: &[u64], leader: u64) -> Reg {
    Reg {
        id,
        start,
        end,
        voters: voters.to_vec(),
        learners: Vec::new(),
        leader,
    }
}

/// The Regions in the shape `GET /pd/api/v1/regions` answers.
fn regions_json(regions: &[Reg]) -> String {
    let regions: Vec<Value> = regions
        .iter()
        .map(|r| {
            let voters = r.voters.iter().map(|s| (s, json!({"role_name": "Voter"})));
            let learners = r.learners.iter().map(|s| {
                (
                    s,
                    json!({"role": 1, "role_name": "Learner", "is_learner": true}),
                )
            });
            let peers: Vec<Value> = voters
                .chain(learners)
                .enumerate()
                .map(|(i, (store, mut peer))| {
                    peer["id"] = json!(r.id * 100 + i as u64);
                    peer["store_id"] = json!(store);
                    peer
                })
                .collect();
            let leader = peers
                .iter()
                .find(|p| p["store_id"] == json!(r.leader))
                .cloned()
                .unwrap_or_else(|| json!({"role_name": ""}));
            json!({
                "id": r.id, "start_key": r.start, "end_key": r.end,
                "epoch": {"conf_ver": 5, "version": 3},
                "peers": peers, "leader": leader,
                "cpu_usage": 0, "written_bytes": 120, "read_bytes": 0, "written_keys": 2,
                "read_keys": 0, "approximate_size": 1, "approximate_keys": 10,
                "approximate_kv_size": 0, "approximate_columnar_kv_size": 0
            })
        })
        .collect();
    json!({"count": regions.len(), "regions": regions}).to_string()
}

/// Every Region where the example topology's rules (zone goal) want it: each home
/// region's range in two Regions with three voters there, the leader in the first
/// zone; global data led from us-east-1a with a follower in each other region;
/// keys outside Rossby's ranges held anywhere.
fn compliant() -> Vec<Reg> {
    let us = |z| store(1, z);
    let mut global = reg(
        20,
        enc(&[1]),
        enc(&[2]),
        &[us(0), us(1), us(2), store(2, 0), store(3, 1)],
        us(0),
    );
    global.learners.push(TIFLASH);
    let mut regions = vec![
        reg(
            10,
            String::new(),
            enc(&[1]),
            &[us(1), us(2), store(2, 2)],
            us(2),
        ),
        global,
        reg(
            30,
            enc(&[2]),
            enc(&[2, 0, 1]),
            &[us(0), us(1), us(2)],
            us(1),
        ),
    ];
    for (code, _, _) in REGIONS {
        let voters = [store(code, 0), store(code, 1), store(code, 2)];
        let id = 100 * u64::from(code);
        regions.push(reg(
            id,
            enc(&[2, 0, code]),
            enc(&[2, 0, code, 0x80]),
            &voters,
            voters[0],
        ));
        regions.push(reg(
            id + 1,
            enc(&[2, 0, code, 0x80]),
            enc(&[2, 0, code + 1]),
            &voters,
            voters[0],
        ));
    }
    regions.push(reg(
        40,
        enc(&[2, 0, 4]),
        String::new(),
        &[us(0), us(1), us(2)],
        us(0),
    ));
    regions
}

/// The compliant layout with four faults: global data has two voters in
/// us-east-1a; one Region straddles the us-east and eu-west ranges (PD has not
/// split it yet); eu-west's other Region is led from eu-west-1b; and one
/// ap-southeast Region has a voter in us-east instead of its third zone.
fn violating() -> Vec<Reg> {
    let mut regions = compliant();
    let global = regions.iter_mut().find(|r| r.id == 20).unwrap();
    global.voters[1] = EXTRA_US_EAST_1A;
    regions.retain(|r| r.id != 101 && r.id != 200);
    regions.push(reg(
        150,
        enc(&[2, 0, 1, 0x80]),
        enc(&[2, 0, 2, 0x80]),
        &[store(1, 0), store(1, 1), store(1, 2)],
        store(1, 0),
    ));
    regions.iter_mut().find(|r| r.id == 201).unwrap().leader = store(2, 1);
    let ap = regions.iter_mut().find(|r| r.id == 300).unwrap();
    ap.voters[2] = store(1, 2);
    regions
}

async fn fake_cluster(regions: &[Reg]) -> FakePd {
    FakePd::start(Behaviour::Cluster {
        regions: regions_json(regions),
        stores: stores_json(),
    })
    .await
}

fn rossby_admin(args: &[&str]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rossby-admin"));
    command.env_remove("ROSSBY_PD");
    command.args(args).output().unwrap()
}

async fn check_cli(pd: &FakePd, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = ["placement", "check", "--pd", &pd.url, "--topology"]
        .map(str::to_string)
        .to_vec();
    args.push(example_topology().display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rossby_admin(&args)
    })
    .await
    .unwrap()
}

async fn check_report(
    pd: &FakePd,
) -> rossby_admin::Result<rossby_admin::placement::check::CheckReport> {
    let topology = rossby_admin::placement::read_topology(&example_topology())?;
    let plan = plan_file(&example_topology())?;
    let client = PdClient::new(&pd.url, DEFAULT_PD_TIMEOUT)?;
    rossby_admin::placement::check_pd(&client, &topology, &plan).await
}

/// (range, Regions, leaders placed, voters placed, voters wanted) per range.
fn rows(
    report: &rossby_admin::placement::check::CheckReport,
) -> Vec<(String, usize, usize, u64, u64)> {
    report
        .ranges
        .iter()
        .map(|r| {
            (
                r.range.clone(),
                r.regions,
                r.leaders_placed,
                r.voters_placed,
                r.voters_wanted,
            )
        })
        .collect()
}

fn row(
    range: &str,
    regions: usize,
    leaders: usize,
    placed: u64,
    wanted: u64,
) -> (String, usize, usize, u64, u64) {
    (range.to_string(), regions, leaders, placed, wanted)
}

#[tokio::test]
async fn check_passes_a_layout_that_follows_the_rules() {
    let pd = fake_cluster(&compliant()).await;
    let report = check_report(&pd).await.expect("check");
    assert!(report.complies(), "{report}");
    assert_eq!(report.regions_listed, 10);
    assert_eq!(
        rows(&report),
        [
            row("global", 1, 1, 5, 5),
            row("region-us-east", 2, 2, 6, 6),
            row("region-eu-west", 2, 2, 6, 6),
            row("region-ap-southeast", 2, 2, 6, 6),
        ]
    );
    let requests = pd.requests();
    assert!(requests.iter().all(|r| r.method == "GET"), "{requests:?}");
    assert!(requests.iter().any(|r| r.target == "/pd/api/v1/regions"));
    assert!(requests.iter().any(|r| r.target == "/pd/api/v1/stores"));

    let output = check_cli(&pd, &[]).await;
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    println!("{stdout}");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(stdout.contains("region-eu-west"), "{stdout}");
    assert!(stdout.contains("eu-west (eu-west-1a)"), "{stdout}");
    assert!(stdout.contains("6/6 (100%)"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with(
            "OK: all 7 Regions of Rossby's ranges have their leader and voters where the rules want them"
        ),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_lists_every_region_that_breaks_its_rule_and_fails() {
    let pd = fake_cluster(&violating()).await;
    let report = check_report(&pd).await.expect("check");
    assert!(!report.complies());
    assert_eq!(
        rows(&report),
        [
            row("global", 1, 1, 4, 5),
            row("region-us-east", 2, 2, 6, 6),
            row("region-eu-west", 2, 0, 3, 6),
            row("region-ap-southeast", 2, 2, 5, 6),
        ]
    );
    let problems = |range: &str, id: u64| {
        report
            .violations
            .iter()
            .find(|v| v.range == range && v.region_id == Some(id))
            .map(|v| v.problems.join(" | "))
            .unwrap_or_else(|| panic!("no violation of Region {id} in {range}: {report}"))
    };
    let global = problems("global", 20);
    assert!(
        global.contains("2 voters share zone us-east/us-east-1a (stores 1, 10)"),
        "{global}"
    );
    let straddling = problems("region-us-east", 150);
    assert!(
        straddling.contains("outside region-us-east"),
        "{straddling}"
    );
    let straddling = problems("region-eu-west", 150);
    for expected in [
        "outside region-eu-west",
        "0 voters in eu-west, the rules want 3",
        "3 voters in us-east (stores 1, 2, 3), where the rules want none",
        "no voter in zone eu-west-1a of eu-west",
        "leader on store 1 (us-east, zone us-east-1a), the rules want it in eu-west, zone eu-west-1a",
    ] {
        assert!(
            straddling.contains(expected),
            "{expected:?} in {straddling}"
        );
    }
    let led_from_b = problems("region-eu-west", 201);
    assert_eq!(
        led_from_b,
        "leader on store 5 (eu-west, zone eu-west-1b), the rules want it in eu-west, zone eu-west-1a"
    );
    let ap = problems("region-ap-southeast", 300);
    assert!(
        ap.contains("2 voters in ap-southeast, the rules want 3"),
        "{ap}"
    );
    assert!(
        ap.contains("1 voter in us-east (stores 3), where the rules want none"),
        "{ap}"
    );
    assert_eq!(report.violations.len(), 5, "{report}");
    // Regions outside Rossby's ranges, and learners, are not judged.
    assert!(report.violations.iter().all(|v| v.region_id != Some(10)));
    assert!(!report.to_string().contains("store 100"));

    let output = check_cli(&pd, &[]).await;
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    println!("{stdout}");
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(output.stderr.is_empty(), "{output:?}");
    assert!(stdout.contains("3/6 (50%)"), "{stdout}");
    assert!(
        stdout.contains("Region 150 of region-eu-west [02000180, 02000280):"),
        "{stdout}"
    );
    assert!(
        stdout
            .trim_end()
            .ends_with("FAIL: 5 Region(s) in 4 of 4 ranges break their placement rules"),
        "{stdout}"
    );

    let output = check_cli(&pd, &["--json"]).await;
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let json: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(json["violations"].as_array().map(Vec::len), Some(5));
    assert_eq!(json["ranges"][2]["range"], "region-eu-west");
    assert_eq!(json["ranges"][2]["leaders_placed"], 0);
}

#[tokio::test]
async fn check_fails_on_an_empty_cluster_and_on_malformed_answers() {
    let pd = fake_cluster(&[]).await;
    let report = check_report(&pd).await.expect("check");
    assert_eq!(report.violations.len(), 4, "{report}");
    assert!(
        report
            .violations
            .iter()
            .all(|v| v.region_id.is_none() && v.problems[0].contains("PD lists no Region")),
        "{report}"
    );

    let mut bad_key = compliant();
    bad_key[1].start = "01zz".into();
    let pd = fake_cluster(&bad_key).await;
    let err = check_report(&pd).await.unwrap_err();
    assert!(matches!(err, Error::PdAnswer { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("Region 20 has a start_key that is not hex"),
        "{err}"
    );

    let pd = FakePd::start(Behaviour::Cluster {
        regions: "<html>proxy error</html>".into(),
        stores: stores_json(),
    })
    .await;
    let err = check_report(&pd).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("GET /pd/api/v1/regions: not the JSON PD's API documents"),
        "{err}"
    );
    let output = check_cli(&pd, &[]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("rossby-admin: unexpected answer from PD"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(output.stdout.is_empty());

    // A PD that is not there: exit 1, not the violation code.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let output = tokio::task::spawn_blocking(move || {
        rossby_admin(&[
            "placement",
            "check",
            "--pd",
            &addr,
            "--topology",
            &example_topology().display().to_string(),
        ])
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("connection refused"));
}
