//! A client of PD's HTTP API: what `rossby-admin placement apply` and
//! `placement check` send and read.
//!
//! - rules are set with `POST /pd/api/v1/config/placement-rule?partial=true`
//!   whose body is the array of rule bundles the plan produced. `partial` makes PD
//!   replace only the groups in the body (and every rule in them), leaving PD's
//!   own default group and any other group alone; without it PD would drop every
//!   group it is not sent;
//! - each group is then read back with `GET
//!   /pd/api/v1/config/placement-rule/{group}` and compared with what was sent,
//!   so a PD that silently kept something else is reported;
//! - `GET /pd/api/v1/regions` lists every TiKV Region with its peers and leader,
//!   and `GET /pd/api/v1/stores` every store with its labels (see
//!   [`crate::placement::check`] for their shapes).
//!
//! PD must have placement rules enabled (the default since PD 5.0); a PD that has
//! them disabled answers 412 and the error says how to enable them. Only plain
//! `http://` URLs are supported (no TLS towards PD). Every request is bounded by
//! a timeout ([`DEFAULT_PD_TIMEOUT`] unless the caller picks another one).

use crate::error::{Error, Result};
use crate::http;
use crate::placement::check::{PdRegions, PdStores};
use hyper::{Method, StatusCode, Uri};
use rossby_replication::Plan;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// How long one request to PD may take, from connecting to the last byte of the
/// answer.
pub const DEFAULT_PD_TIMEOUT: Duration = Duration::from_secs(10);

/// PD's HTTP path for placement rule bundles (all groups; append `/{group}` for one).
pub const PLACEMENT_RULE_PATH: &str = "/pd/api/v1/config/placement-rule";

/// PD's client port, used when the URL names none.
pub const DEFAULT_PD_PORT: u16 = 2379;

/// PD's HTTP path listing every TiKV Region with its peers and leader.
pub const REGIONS_PATH: &str = "/pd/api/v1/regions";

/// PD's HTTP path listing the stores with their labels.
pub const STORES_PATH: &str = "/pd/api/v1/stores";

/// Largest answer accepted from PD for rules and stores: a few kilobytes each.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Largest Region list accepted: PD describes a Region in about half a kilobyte,
/// so this holds some hundreds of thousands of them.
const MAX_REGIONS_BYTES: usize = 256 * 1024 * 1024;

/// How much of an error answer's body an error message quotes.
const MAX_QUOTED_BODY: usize = 500;

/// A connection-less client of PD's HTTP API (one TCP connection per request).
#[derive(Clone, Debug)]
pub struct PdClient {
    /// The URL as shown in messages: `http://host:port[/prefix]`.
    url: String,
    /// `host:port`, what is dialled and sent as `Host`.
    authority: String,
    /// A path prefix (for PD behind a proxy), without a trailing slash.
    prefix: String,
    timeout: Duration,
}

impl PdClient {
    /// A client of the PD at `url`: `http://host[:port][/prefix]`, or `host[:port]`
    /// (the port defaults to [`DEFAULT_PD_PORT`]). Every request gives up after
    /// `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<PdClient> {
        let bad = |reason: &str| Error::Invalid(format!("invalid PD URL {url:?}: {reason}"));
        let trimmed = url.trim();
        if trimmed.is_empty() {
            return Err(bad("it is empty"));
        }
        let uri: Uri = trimmed.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            None | Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported; use PD's plain http:// client URL",
                ));
            }
            Some(other) => return Err(bad(&format!("unsupported scheme {other}; use http://"))),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad("no host; expected http://host:port"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        if authority.host().is_empty() {
            return Err(bad("no host; expected http://host:port"));
        }
        if uri.query().is_some() {
            return Err(bad("a query string is not allowed"));
        }
        // The URI parser accepts any text after the host's colon; only a number
        // in 1..=65535 is a port.
        let port = match authority.as_str().rsplit_once(':') {
            Some((_, port)) if !port.contains(']') => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("invalid port {port:?}")))?,
            _ => DEFAULT_PD_PORT,
        };
        let authority = format!("{}:{port}", authority.host());
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(PdClient {
            url: format!("http://{authority}{prefix}"),
            authority,
            prefix,
            timeout,
        })
    }

    /// The URL requests go to, as shown in messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sets the rule bundles of `rules_json` (a JSON array of PD rule bundles, as
    /// [`Plan::rules_json`] renders them), replacing those groups and only them.
    pub async fn set_rule_bundles(&self, rules_json: &str) -> Result<()> {
        let path = format!("{PLACEMENT_RULE_PATH}?partial=true");
        self.call(Method::POST, &path, Some(rules_json.to_string()))
            .await
            .map(drop)
    }

    /// The rule bundle PD holds for `group` (a bundle with no rules when the group
    /// does not exist).
    pub async fn rule_bundle(&self, group: &str) -> Result<Value> {
        let path = format!("{PLACEMENT_RULE_PATH}/{}", percent_encode(group));
        let body = self.call(Method::GET, &path, None).await?;
        serde_json::from_str(&body).map_err(|e| Error::PdMismatch {
            url: self.url.clone(),
            reason: format!("the rule bundle of group {group} is not JSON: {e}"),
        })
    }

    /// Sends the plan's rules to PD, reads every group back and checks that PD
    /// holds exactly what was sent.
    pub async fn apply(&self, plan: &Plan) -> Result<Applied> {
        self.apply_rules(&plan.rules_json()).await
    }

    /// [`PdClient::apply`] for rules already rendered as PD's JSON array of rule
    /// bundles.
    pub async fn apply_rules(&self, rules_json: &str) -> Result<Applied> {
        let sent: Vec<Value> = serde_json::from_str(rules_json).map_err(|e| {
            Error::Invalid(format!(
                "the rules are not a JSON array of rule bundles: {e}"
            ))
        })?;
        let mut groups = Vec::with_capacity(sent.len());
        for bundle in &sent {
            let group_id = bundle
                .get("group_id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| Error::Invalid("a rule bundle has no group_id".into()))?;
            groups.push(group_id.to_string());
        }
        self.set_rule_bundles(rules_json).await?;
        let mut applied = Applied {
            url: self.url.clone(),
            groups: Vec::with_capacity(groups.len()),
        };
        for (group_id, bundle) in groups.iter().zip(&sent) {
            let stored = self.rule_bundle(group_id).await?;
            compare_bundles(bundle, &stored).map_err(|reason| Error::PdMismatch {
                url: self.url.clone(),
                reason: format!("group {group_id}: {reason}"),
            })?;
            applied.groups.push(AppliedGroup {
                group_id: group_id.clone(),
                index: bundle
                    .get("group_index")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                override_lower: bundle
                    .get("group_override")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                rules: bundle
                    .get("rules")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len),
            });
        }
        Ok(applied)
    }

    /// Every TiKV Region PD knows, with its peers and leader
    /// (`GET /pd/api/v1/regions`).
    pub async fn regions(&self) -> Result<PdRegions> {
        let body = self
            .call_limited(Method::GET, REGIONS_PATH, None, MAX_REGIONS_BYTES)
            .await?;
        self.parse(REGIONS_PATH, &body)
    }

    /// Every store PD lists, with its labels (`GET /pd/api/v1/stores`).
    pub async fn stores(&self) -> Result<PdStores> {
        let body = self.call(Method::GET, STORES_PATH, None).await?;
        self.parse(STORES_PATH, &body)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, path: &str, body: &str) -> Result<T> {
        serde_json::from_str(body).map_err(|e| Error::PdAnswer {
            url: self.url.clone(),
            request: format!("GET {}{path}", self.prefix),
            reason: format!("not the JSON PD's API documents: {e}"),
        })
    }

    /// One request; `Ok` carries the body of a 2xx answer.
    async fn call(&self, method: Method, path: &str, body: Option<String>) -> Result<String> {
        self.call_limited(method, path, body, MAX_ANSWER_BYTES)
            .await
    }

    /// [`PdClient::call`] accepting an answer of up to `limit` bytes.
    async fn call_limited(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        limit: usize,
    ) -> Result<String> {
        let target = format!("{}{path}", self.prefix);
        let exchange = self.exchange(method.clone(), &target, body, limit);
        let (status, text) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::PdUnreachable {
                url: self.url.clone(),
                reason: format!(
                    "{method} {target} got no answer within {}",
                    describe_duration(self.timeout)
                ),
            })??;
        if status.is_success() {
            return Ok(text);
        }
        let message = answer_message(&text);
        if status == StatusCode::PRECONDITION_FAILED
            || message
                .to_ascii_lowercase()
                .contains("placement rules feature is disabled")
        {
            return Err(Error::PlacementRulesDisabled {
                url: self.url.clone(),
            });
        }
        Err(Error::PdStatus {
            url: self.url.clone(),
            request: format!("{method} {target}"),
            status: status.as_u16(),
            body: message,
        })
    }

    async fn exchange(
        &self,
        method: Method,
        target: &str,
        body: Option<String>,
        limit: usize,
    ) -> Result<(StatusCode, String)> {
        let unreachable = |reason: String| Error::PdUnreachable {
            url: self.url.clone(),
            reason,
        };
        http::request(&self.authority, (method, target), body, true, limit)
            .await
            .map_err(|e| match e {
                http::Failure::Refused => unreachable(
                    "connection refused (is PD running, and is this its client URL?)".into(),
                ),
                http::Failure::Build(e) => {
                    Error::Invalid(format!("cannot build a request to {target}: {e}"))
                }
                http::Failure::Connect(e) => unreachable(e),
                http::Failure::Handshake(e) => unreachable(format!("HTTP handshake failed: {e}")),
                http::Failure::Send(e) => unreachable(format!("request {target} failed: {e}")),
                http::Failure::TooLarge => unreachable(format!(
                    "the answer to {target} is larger than {limit} bytes"
                )),
                http::Failure::Read(e) => {
                    unreachable(format!("reading the answer to {target} failed: {e}"))
                }
            })
    }
}

/// What [`PdClient::apply`] set and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The PD the rules went to.
    pub url: String,
    /// One entry per rule group, in the order sent.
    pub groups: Vec<AppliedGroup>,
}

/// One rule group that PD now holds as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedGroup {
    /// The group's id.
    pub group_id: String,
    /// The group's index (higher groups are applied later).
    pub index: i64,
    /// Whether the group overrides the groups with lower indexes.
    pub override_lower: bool,
    /// How many rules the group has.
    pub rules: usize,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "placement rules applied to PD at {}:", self.url)?;
        for g in &self.groups {
            writeln!(
                f,
                "  group {}: {} rules, index {}{}, read back unchanged",
                g.group_id,
                g.rules,
                g.index,
                if g.override_lower {
                    ", overrides lower groups"
                } else {
                    ""
                }
            )?;
        }
        write!(
            f,
            "PD now moves leaders and voters to match; watch progress with `pd-ctl -u {} region check miss-peer` and `... operator show`",
            self.url
        )
    }
}

/// The message of an error answer: PD sends a JSON string, shown unquoted;
/// anything else is quoted as is, shortened.
fn answer_message(body: &str) -> String {
    let text = match serde_json::from_str::<Value>(body) {
        Ok(Value::String(s)) => s,
        _ => body.trim().to_string(),
    };
    if text.is_empty() {
        return "(empty body)".into();
    }
    match text.char_indices().nth(MAX_QUOTED_BODY) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

fn describe_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Percent-encodes a path segment (group ids are plain words, but a stray `/`
/// or space must not change the path).
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks that the bundle PD returned holds what was sent: the group's index and
/// override flag, and exactly the sent rules (matched by id) with every field sent.
/// Fields PD adds (versions, timestamps) are ignored, a field PD omits counts as
/// its zero value (Go's `omitempty`), and hex keys compare case-insensitively.
fn compare_bundles(sent: &Value, stored: &Value) -> std::result::Result<(), String> {
    for field in ["group_id", "group_index", "group_override"] {
        if let Some(value) = sent.get(field)
            && !same(field, value, stored.get(field))
        {
            return Err(format!(
                "{field} is {} instead of {value}",
                shown(stored.get(field))
            ));
        }
    }
    let empty = Vec::new();
    let sent_rules = sent
        .get("rules")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let stored_rules = match stored.get("rules") {
        None | Some(Value::Null) => &empty,
        Some(Value::Array(rules)) => rules,
        Some(other) => return Err(format!("rules is {other} instead of an array")),
    };
    let id = |rule: &Value| rule.get("id").and_then(Value::as_str).map(str::to_string);
    for rule in sent_rules {
        let rule_id = id(rule).unwrap_or_default();
        let Some(found) = stored_rules.iter().find(|r| id(r) == Some(rule_id.clone())) else {
            return Err(format!("rule {rule_id:?} is missing"));
        };
        if !same("", rule, Some(found)) {
            return Err(format!(
                "rule {rule_id:?} is stored as {found} instead of {rule}"
            ));
        }
    }
    for rule in stored_rules {
        let rule_id = id(rule).unwrap_or_default();
        if !sent_rules.iter().any(|r| id(r) == Some(rule_id.clone())) {
            return Err(format!("PD holds rule {rule_id:?}, which was not sent"));
        }
    }
    Ok(())
}

/// Whether `got` holds `sent` (see [`compare_bundles`]); `field` is the name the
/// value sits under.
fn same(field: &str, sent: &Value, got: Option<&Value>) -> bool {
    let Some(got) = got else {
        return is_zero(sent);
    };
    match (sent, got) {
        (Value::String(a), Value::String(b)) if field == "start_key" || field == "end_key" => {
            a.eq_ignore_ascii_case(b)
        }
        (Value::Object(a), Value::Object(_)) => a.iter().all(|(k, v)| same(k, v, got.get(k))),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(field, x, Some(y)))
        }
        (Value::Number(a), Value::Number(b)) => a == b || a.as_f64() == b.as_f64(),
        _ => sent == got || (is_zero(sent) && got.is_null()),
    }
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "absent".into(), Value::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_are_parsed_or_rejected_clearly() {
        let pd = PdClient::new("http://10.0.0.5:2379", DEFAULT_PD_TIMEOUT).unwrap();
        assert_eq!(pd.url(), "http://10.0.0.5:2379");
        assert_eq!(pd.authority, "10.0.0.5:2379");
        assert_eq!(pd.prefix, "");
        let pd = PdClient::new("pd.example.net", DEFAULT_PD_TIMEOUT).unwrap();
        assert_eq!(pd.url(), "http://pd.example.net:2379");
        let pd = PdClient::new("http://[::1]:2380/proxy/", DEFAULT_PD_TIMEOUT).unwrap();
        assert_eq!(pd.authority, "[::1]:2380");
        assert_eq!(pd.prefix, "/proxy");
        for (bad, why) in [
            ("", "empty"),
            ("https://pd:2379", "https is not supported"),
            ("ftp://pd:2379", "unsupported scheme"),
            ("http://", "invalid PD URL"),
            ("http://pd:notaport", "invalid port"),
            ("http://pd:0", "invalid port"),
            ("http://pd:2379/?x=1", "query"),
            ("http://user:pw@pd:2379", "credentials"),
        ] {
            let err = PdClient::new(bad, DEFAULT_PD_TIMEOUT)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn bundles_compare_like_pd_stores_them() {
        let sent = json!({
            "group_id": "rossby", "group_index": 8, "group_override": true,
            "rules": [{
                "group_id": "rossby", "id": "r1", "index": 0, "override": false,
                "start_key": "7A00", "end_key": "7b00", "role": "leader", "count": 1,
                "label_constraints": [{"key": "region", "op": "in", "values": ["us-east"]}]
            }]
        });
        // PD omits zero values, lowers hex and adds bookkeeping fields.
        let stored = json!({
            "group_id": "rossby", "group_index": 8, "group_override": true,
            "rules": [{
                "group_id": "rossby", "id": "r1", "start_key": "7a00", "end_key": "7B00",
                "role": "leader", "is_witness": false, "count": 1, "version": 1,
                "create_timestamp": 1700000000u64,
                "label_constraints": [{"key": "region", "op": "in", "values": ["us-east"]}]
            }]
        });
        compare_bundles(&sent, &stored).unwrap();

        let mut changed = stored.clone();
        changed["rules"][0]["label_constraints"][0]["values"] = json!(["eu-west"]);
        assert!(compare_bundles(&sent, &changed).unwrap_err().contains("r1"));
        let mut changed = stored.clone();
        changed["group_override"] = json!(false);
        assert!(
            compare_bundles(&sent, &changed)
                .unwrap_err()
                .contains("group_override")
        );
        let mut changed = stored.clone();
        changed["rules"] = json!([]);
        assert!(
            compare_bundles(&sent, &changed)
                .unwrap_err()
                .contains("missing")
        );
        let mut changed = stored.clone();
        changed["rules"][0]["count"] = json!(3);
        assert!(compare_bundles(&sent, &changed).is_err());
        let mut extra = stored.clone();
        let mut other = stored["rules"][0].clone();
        other["id"] = json!("stale");
        extra["rules"].as_array_mut().unwrap().push(other);
        assert!(
            compare_bundles(&sent, &extra)
                .unwrap_err()
                .contains("stale")
        );
        // A group PD does not know comes back without rules.
        let unknown = json!({"group_id": "rossby", "group_index": 0, "group_override": false});
        assert!(compare_bundles(&sent, &unknown).is_err());
    }

    #[test]
    fn error_answers_are_quoted_on_one_line_and_shortened() {
        assert_eq!(answer_message("\"no rule left\""), "no rule left");
        assert_eq!(answer_message("  plain text \n"), "plain text");
        assert_eq!(answer_message(""), "(empty body)");
        let long = "x".repeat(2 * MAX_QUOTED_BODY);
        assert_eq!(answer_message(&long).len(), MAX_QUOTED_BODY + 3);
        assert_eq!(percent_encode("rossby"), "rossby");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }
}
