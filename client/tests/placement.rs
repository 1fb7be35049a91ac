//! `rossby placement`: planning from the example topology, and applying rules to a
//! PD HTTP endpoint played by a small HTTP/1.1 server on loopback that stores
//! rule bundles the way PD does (or fails the way PD fails).

use rossby_client::Error;
use rossby_client::placement::{DEFAULT_PD_TIMEOUT, PdClient, plan_file};
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
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Like PD: stores posted bundles, serves them back per group.
    Pd,
    /// Like PD, but loses the last rule of every group it stores.
    LosesARule,
    /// Every request gets this status and body.
    Fails(u16, &'static str),
    /// Reads the request and never answers.
    Silent,
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
    let output = Command::new(env!("CARGO_BIN_EXE_rossby"))
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
    let output = Command::new(env!("CARGO_BIN_EXE_rossby"))
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rossby"));
        cmd.args(["placement", sub, "--topology"]).arg(&path);
        if sub == "apply" {
            cmd.args(["--pd", "http://127.0.0.1:9"]);
        }
        let output = cmd.output().unwrap();
        assert!(!output.status.success(), "{sub}: {output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.starts_with("rossby: invalid topology"), "{stderr}");
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(output.stdout.is_empty());
    }

    let missing = dir.path().join("missing.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_rossby"))
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
        Command::new(env!("CARGO_BIN_EXE_rossby"))
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
        Command::new(env!("CARGO_BIN_EXE_rossby"))
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
