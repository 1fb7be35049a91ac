//! `rossby-admin fleet status`: every gateway of a topology in one look.
//!
//! Every gateway's admin port is probed in parallel: `/livez`, `/readyz` (with
//! its reason when not ready) and `/metrics` twice, `sample` apart. From the
//! metrics come the version (`rossby_build_info`), the certificate's expiry
//! (`rossby_tls_certificate_expiry_timestamp_seconds`), the health of the peer
//! links (forwards and notifications that failed during the sample, from
//! `rossby_peer_forwards_total` and `rossby_peer_notifications_total`), and
//! the request and error rates: the increase of `rossby_requests_total`
//! between the two scrapes divided by the time between them, so they show the
//! traffic of the last few seconds, not an average since the gateway started.
//! Errors are the answers the gateway is responsible for (`internal`,
//! `unavailable`, `undetermined`: the statuses the error-rate alert counts).
//! The region is the topology's; the gateway reports the code of the region it
//! serves (`rossby_region_code`), and a gateway serving another region than
//! the topology puts it in is shown as such. Box ownership comes from the
//! gateway's ownership view: whether its lease is held
//! (`rossby_ownership_lease_held`) and how many live gateways its region has
//! (`rossby_ownership_live_gateways`), so that it owns about 1/N of the
//! region's boxes (boxes are spread by a rendezvous hash, docs/geo.md).

use crate::http;
use rossby_replication::Topology;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Statuses counted as errors in the error rate.
pub const ERROR_STATUSES: [&str; 3] = ["internal", "unavailable", "undetermined"];

/// Largest `/metrics` page read.
const MAX_METRICS_BYTES: usize = 8 << 20;

/// Largest `/livez` or `/readyz` answer read.
const MAX_HEALTH_BYTES: usize = 4096;

/// How a fleet is probed.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Time between the two scrapes of `/metrics`.
    pub sample: Duration,
    /// Time each request may take.
    pub timeout: Duration,
}

/// Whether a gateway should receive clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// `/readyz` answered 200.
    Ready,
    /// `/readyz` answered, but not 200 (draining, storage failing, ...).
    NotReady,
    /// The admin port did not answer.
    Down,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Ready => "ready",
            State::NotReady => "not ready",
            State::Down => "down",
        })
    }
}

/// Health of a gateway's links to the other gateways during the sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerLinks {
    /// No forward or notification failed.
    Ok,
    /// Some failed: an owning gateway or a peer endpoint is unreachable.
    Failing,
    /// The gateway has no peer links configured (or exports no peer metrics).
    None,
}

/// One gateway's status.
#[derive(Clone, Debug, Serialize)]
pub struct GatewayStatus {
    /// The region the topology puts it in.
    pub region: String,
    /// Its QUIC address, as the topology writes it.
    pub quic: String,
    /// Its admin address, as the topology writes it.
    pub admin: String,
    /// Ready, not ready or down.
    pub state: State,
    /// Why it is not ready or down (the `/readyz` reason or the connection
    /// error).
    pub reason: Option<String>,
    /// `/livez` answered 200.
    pub live: bool,
    /// The gateway's version.
    pub version: Option<String>,
    /// The served certificate's not-after time (Unix seconds); `None` when
    /// unknown or unreadable.
    pub certificate_not_after: Option<i64>,
    /// Days until then (negative: expired).
    pub certificate_days_left: Option<f64>,
    /// Peer-link health during the sample.
    pub peer_links: PeerLinks,
    /// Forwards and notifications to peers that failed during the sample.
    pub peer_failures: Option<f64>,
    /// Requests answered per second during the sample.
    pub requests_per_second: Option<f64>,
    /// Of those, answered with an error status, per second.
    pub errors_per_second: Option<f64>,
    /// Requests answered since the gateway started.
    pub requests_total: Option<f64>,
    /// The region code the gateway says it serves.
    pub region_code: Option<u16>,
    /// The region code the topology gives the gateway's region.
    pub expected_region_code: u16,
    /// Box ownership: whether its lease is held and the live gateways of its
    /// region; `None` when ownership is off (no peers) or unknown.
    pub ownership: Option<Ownership>,
}

/// A gateway's share of its region's boxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ownership {
    /// Its ownership lease was renewed at its last refresh.
    pub lease_held: bool,
    /// Live gateways of its region in its view, itself included: it owns
    /// about 1/`live_gateways` of the region's boxes.
    pub live_gateways: u32,
}

impl GatewayStatus {
    /// The gateway serves another region than the topology puts it in.
    pub fn region_mismatch(&self) -> bool {
        self.region_code
            .is_some_and(|code| code != self.expected_region_code)
    }
}

/// The status of every gateway of a topology.
#[derive(Clone, Debug, Serialize)]
pub struct FleetReport {
    /// The time between the two scrapes the rates come from, in seconds.
    pub sample_seconds: f64,
    /// Every gateway, in the topology's order.
    pub gateways: Vec<GatewayStatus>,
}

impl FleetReport {
    /// Every gateway is ready.
    pub fn all_ready(&self) -> bool {
        self.gateways.iter().all(|g| g.state == State::Ready)
    }
}

/// One sample of a Prometheus text page.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Parses the samples of a Prometheus text page, skipping lines it cannot read.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.trim_start_matches([',', ' ']);
            if let Some(after) = body.strip_prefix('}') {
                break after;
            }
            let (key, after) = body.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.insert(key.trim().to_string(), value);
            body = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// What the status needs from one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
struct Scrape {
    version: Option<String>,
    certificate_not_after: Option<i64>,
    requests: f64,
    errors: f64,
    peer_failures: f64,
    has_peers: bool,
    region_code: Option<u16>,
    lease_held: Option<bool>,
    live_gateways: Option<u32>,
}

fn summarize(samples: &[Sample]) -> Scrape {
    let mut s = Scrape::default();
    let label = |x: &Sample, k: &str| x.labels.get(k).cloned().unwrap_or_default();
    for x in samples {
        match x.name.as_str() {
            "rossby_build_info" => s.version = Some(label(x, "version")),
            "rossby_tls_certificate_expiry_timestamp_seconds" if x.value > 0.0 => {
                s.certificate_not_after = Some(x.value as i64);
            }
            "rossby_requests_total" => {
                s.requests += x.value;
                if ERROR_STATUSES.contains(&label(x, "status").as_str()) {
                    s.errors += x.value;
                }
            }
            "rossby_region_code" => s.region_code = u16::try_from(x.value as i64).ok(),
            "rossby_ownership_lease_held" => s.lease_held = Some(x.value > 0.0),
            "rossby_ownership_live_gateways" => {
                s.live_gateways = u32::try_from(x.value as i64).ok();
            }
            "rossby_peer_forwards_total" | "rossby_peer_notifications_total" => {
                s.has_peers = true;
                if label(x, "result") == "failed" {
                    s.peer_failures += x.value;
                }
            }
            _ => {}
        }
    }
    s
}

async fn scrape(admin: &str, timeout: Duration) -> Result<(Scrape, Instant), String> {
    let (status, body) = http::get(admin, "/metrics", timeout, MAX_METRICS_BYTES).await?;
    if status != 200 {
        return Err(format!("/metrics answered HTTP {status}"));
    }
    Ok((summarize(&parse_metrics(&body)), Instant::now()))
}

/// Probes one gateway of the region `region` (code `code`).
pub async fn probe_gateway(
    (region, code): (&str, u16),
    quic: &str,
    admin: &str,
    options: Options,
) -> GatewayStatus {
    let (live, ready, first) = tokio::join!(
        http::get(admin, "/livez", options.timeout, MAX_HEALTH_BYTES),
        http::get(admin, "/readyz", options.timeout, MAX_HEALTH_BYTES),
        scrape(admin, options.timeout),
    );
    let (state, reason) = match &ready {
        Ok((200, _)) => (State::Ready, None),
        Ok((status, body)) => {
            let reason = body.trim();
            (
                State::NotReady,
                Some(if reason.is_empty() {
                    format!("HTTP {status}")
                } else {
                    reason.replace('\n', " ")
                }),
            )
        }
        Err(e) => (State::Down, Some(e.clone())),
    };
    let mut status = GatewayStatus {
        region: region.into(),
        quic: quic.into(),
        admin: admin.into(),
        state,
        reason,
        live: matches!(live, Ok((200, _))),
        version: None,
        certificate_not_after: None,
        certificate_days_left: None,
        peer_links: PeerLinks::None,
        peer_failures: None,
        requests_per_second: None,
        errors_per_second: None,
        requests_total: None,
        region_code: None,
        expected_region_code: code,
        ownership: None,
    };
    let Ok((first, at)) = first else {
        return status;
    };
    tokio::time::sleep(options.sample).await;
    let second = scrape(admin, options.timeout).await;
    let latest = match &second {
        Ok((s, _)) => s,
        Err(_) => &first,
    };
    status.version = latest.version.clone();
    status.certificate_not_after = latest.certificate_not_after;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    status.certificate_days_left = latest
        .certificate_not_after
        .map(|t| (t - now) as f64 / 86_400.0);
    status.requests_total = Some(latest.requests);
    status.region_code = latest.region_code.filter(|c| *c != 0);
    status.ownership = match (latest.lease_held, latest.live_gateways) {
        (Some(lease_held), Some(live)) if live > 0 => Some(Ownership {
            lease_held,
            live_gateways: live,
        }),
        _ => None,
    };
    if let Ok((second, then)) = &second {
        let seconds = then.duration_since(at).as_secs_f64().max(1e-3);
        // A counter that went down means the gateway restarted in between:
        // its new count is the increase.
        let increase = |a: f64, b: f64| if b >= a { b - a } else { b };
        status.requests_per_second = Some(increase(first.requests, second.requests) / seconds);
        status.errors_per_second = Some(increase(first.errors, second.errors) / seconds);
        if second.has_peers {
            let failed = increase(first.peer_failures, second.peer_failures);
            status.peer_failures = Some(failed);
            status.peer_links = if failed > 0.0 {
                PeerLinks::Failing
            } else {
                PeerLinks::Ok
            };
        }
    }
    status
}

/// Probes every gateway of `topology` in parallel.
pub async fn status(topology: &Topology, options: Options) -> FleetReport {
    let mut tasks = tokio::task::JoinSet::new();
    let mut index = 0usize;
    for region in topology.regions() {
        for g in &region.gateways {
            let (name, quic, admin) = (region.name.clone(), g.quic.clone(), g.admin.clone());
            let code = region.code.0;
            let i = index;
            index += 1;
            tasks.spawn(async move {
                (
                    i,
                    probe_gateway((&name, code), &quic, &admin, options).await,
                )
            });
        }
    }
    let mut gateways: Vec<(usize, GatewayStatus)> = Vec::with_capacity(index);
    while let Some(done) = tasks.join_next().await {
        if let Ok(done) = done {
            gateways.push(done);
        }
    }
    gateways.sort_by_key(|(i, _)| *i);
    FleetReport {
        sample_seconds: options.sample.as_secs_f64(),
        gateways: gateways.into_iter().map(|(_, g)| g).collect(),
    }
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

impl fmt::Display for FleetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = [
            "REGION", "ADMIN", "STATE", "VERSION", "CERT", "PEERS", "OWNS", "REQ/S", "ERR/S",
            "REASON",
        ];
        let rows: Vec<[String; 10]> = self
            .gateways
            .iter()
            .map(|g| {
                [
                    match g.region_code {
                        Some(code) if g.region_mismatch() => {
                            format!("{} (serves {code}!)", g.region)
                        }
                        _ => g.region.clone(),
                    },
                    g.admin.clone(),
                    if g.state != State::Down && !g.live {
                        format!("{} (not live)", g.state)
                    } else {
                        g.state.to_string()
                    },
                    or_dash(g.version.clone()),
                    or_dash(g.certificate_days_left.map(|d| format!("{d:.0}d"))),
                    match (g.peer_links, g.peer_failures) {
                        (PeerLinks::Failing, Some(n)) => format!("failing ({n:.0})"),
                        (PeerLinks::Failing, None) => "failing".into(),
                        (PeerLinks::Ok, _) => "ok".into(),
                        (PeerLinks::None, _) => "-".into(),
                    },
                    match g.ownership {
                        Some(o) if o.lease_held => format!("1/{}", o.live_gateways),
                        Some(_) => "no lease".into(),
                        None => "-".into(),
                    },
                    or_dash(g.requests_per_second.map(|r| format!("{r:.1}"))),
                    or_dash(g.errors_per_second.map(|r| format!("{r:.1}"))),
                    or_dash(g.reason.clone()),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[&str]| -> fmt::Result {
            let mut text = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    text.push_str(cell);
                } else {
                    text.push_str(&format!("{cell:<w$}  "));
                }
            }
            writeln!(f, "{}", text.trim_end())
        };
        line(f, &header)?;
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            line(f, &cells)?;
        }
        let ready = self
            .gateways
            .iter()
            .filter(|g| g.state == State::Ready)
            .count();
        write!(
            f,
            "{ready} of {} gateways ready; rates over {:.1} s",
            self.gateways.len(),
            self.sample_seconds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP rossby_build_info Build.
# TYPE rossby_build_info gauge
rossby_build_info{version="0.1.0"} 1
rossby_requests_total{rpc="send",status="ok"} 90
rossby_requests_total{rpc="send",status="internal"} 4
rossby_requests_total{rpc="fetch",status="unavailable"} 1
rossby_requests_total{rpc="fetch",status="not_found"} 5
rossby_peer_forwards_total{result="answered"} 10
rossby_peer_forwards_total{result="failed"} 2
rossby_peer_notifications_total{result="failed"} 1
rossby_tls_certificate_expiry_timestamp_seconds 1.9e9
rossby_region_code 2
rossby_ownership_lease_held 1
rossby_ownership_live_gateways 3
weird{a="x\"y",b="\\"} 3
"#;

    #[test]
    fn samples_are_parsed_with_their_labels() {
        let samples = parse_metrics(PAGE);
        assert_eq!(samples.len(), 13);
        let weird = samples.last().unwrap();
        assert_eq!(weird.labels["a"], "x\"y");
        assert_eq!(weird.labels["b"], "\\");
        assert_eq!(weird.value, 3.0);
        assert!(parse_metrics("garbage{\nno_value\nx{a=\"1\"} nan?").is_empty());
    }

    #[test]
    fn a_scrape_is_summarized() {
        let s = summarize(&parse_metrics(PAGE));
        assert_eq!(s.version.as_deref(), Some("0.1.0"));
        assert_eq!(s.requests, 100.0);
        assert_eq!(s.errors, 5.0);
        assert_eq!(s.peer_failures, 3.0);
        assert!(s.has_peers);
        assert_eq!(s.certificate_not_after, Some(1_900_000_000));
        assert_eq!(s.region_code, Some(2));
        assert_eq!((s.lease_held, s.live_gateways), (Some(true), Some(3)));
        let unreadable = summarize(&parse_metrics(
            "rossby_tls_certificate_expiry_timestamp_seconds 0\n",
        ));
        assert_eq!(unreadable.certificate_not_after, None);
        assert!(!unreadable.has_peers);
    }

    #[test]
    fn the_table_has_a_row_per_gateway_and_a_summary() {
        let g = |state, reason: Option<&str>| GatewayStatus {
            region: "eu-west".into(),
            quic: "gw:7400".into(),
            admin: "10.2.0.1:7401".into(),
            state,
            reason: reason.map(str::to_string),
            live: state != State::Down,
            version: Some("0.1.0".into()),
            certificate_not_after: None,
            certificate_days_left: Some(89.6),
            peer_links: PeerLinks::Ok,
            peer_failures: Some(0.0),
            requests_per_second: Some(12.25),
            errors_per_second: Some(0.0),
            requests_total: Some(1000.0),
            region_code: Some(2),
            expected_region_code: 2,
            ownership: Some(Ownership {
                lease_held: true,
                live_gateways: 3,
            }),
        };
        let mut elsewhere = g(State::Ready, None);
        elsewhere.region_code = Some(3);
        elsewhere.ownership = None;
        let report = FleetReport {
            sample_seconds: 2.0,
            gateways: vec![
                g(State::Ready, None),
                g(State::Down, Some("connection refused")),
                elsewhere,
            ],
        };
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("REGION"));
        assert!(
            lines[1].contains("ready")
                && lines[1].contains("90d")
                && lines[1].contains("12.2")
                && lines[1].contains("1/3"),
            "{text}"
        );
        assert!(lines[2].contains("down") && lines[2].ends_with("connection refused"));
        assert!(lines[3].starts_with("eu-west (serves 3!)"), "{text}");
        assert_eq!(lines[4], "2 of 3 gateways ready; rates over 2.0 s");
        assert!(!report.all_ready());
    }
}
