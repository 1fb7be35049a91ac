//! The report of a run: the verdict, a JSON document, a summary table for the
//! terminal, the SVG picture and the one-line result that ends stdout.
//!
//! The run fails when any delivery was lost, duplicated or corrupted, or when
//! the achieved rate (sends confirmed inside the measured period, per second)
//! is below 90 % of the asked rate.
//!
//! Each region pair of `send` also carries the latency model's lower bound of
//! such a send (`rossby_replication::latency::send_bound`: forwarded to the
//! recipient box's home region, one transaction there; with several devices per
//! user, no less than the sender's own copy in its home region) and whether the measured
//! p99 stayed within [`BOUND_FACTOR`] × bound + [`BOUND_SLACK_MS`]. That comparison
//! is informational and never changes the verdict.

use crate::generator::GeneratorSpec;
use crate::ledger::{Exchange, Totals};
use crate::plan::Population;
use crate::procstat::{CpuUse, Memory};
use crate::provision;
use crate::runner::RunOutcome;
use crate::scenario::Scenario;
use crate::stats::{Measurements, Op, Stats};
use crate::svg;
use hdrhistogram::Histogram;
use rossby_replication::latency::send_bound;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Format tag of the JSON report.
pub const FORMAT: &str = "rossby-loadtest/1";
/// Share of the asked rate a run must achieve.
pub const MIN_RATE_SHARE: f64 = 0.9;
/// How far above the model's bound a send pair's p99 may be and still count as
/// within it, as a factor of the bound: the model leaves out CPU, disk, queueing
/// at the owning gateway and retries, which grow with the round trips.
pub const BOUND_FACTOR: f64 = 1.25;
/// The fixed part of that allowance, ms: what the model leaves out whatever the
/// distances (the client's own round trip to its gateway, the hop between
/// gateways inside one region, scheduling).
pub const BOUND_SLACK_MS: f64 = 100.0;

/// Latency summary of one histogram, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| round3(us as f64 / 1000.0);
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: round3(h.mean() / 1000.0),
        }
    }
}

/// One operation over all region pairs.
#[derive(Clone, Debug, Serialize)]
pub struct OperationReport {
    /// Its name.
    pub op: &'static str,
    /// Errors of it.
    pub errors: u64,
    /// Its latency.
    #[serde(flatten)]
    pub latency: Latency,
}

/// One operation between two regions.
#[derive(Clone, Debug, Serialize)]
pub struct PairReport {
    /// The operation.
    pub op: &'static str,
    /// Sender's (or device's) region.
    pub from: String,
    /// Recipient's region, or `group`.
    pub to: String,
    /// Its latency.
    #[serde(flatten)]
    pub latency: Latency,
    /// `send` only: the latency model's lower bound of a send from `from` into a
    /// box homed in `to`, ms, from the scenario's topology.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_bound_ms: Option<f64>,
    /// `send` only: whether the p99 is within the bound ([`within_bound`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_bound: Option<bool>,
}

/// Whether a measured p99 is within the model's bound: at most
/// [`BOUND_FACTOR`] × bound + [`BOUND_SLACK_MS`].
pub fn within_bound(p99_ms: f64, bound_ms: f64) -> bool {
    p99_ms <= BOUND_FACTOR * bound_ms + BOUND_SLACK_MS
}

/// The model's bound of a send between two of the population's regions, ms;
/// `None` for a destination that is not a region (a group). A sender with other
/// devices also stores its sent copy in its own box in the same Send, so the
/// bound is the slower of the two writes: the recipient's (forwarded to its
/// home) and the sender's own (in the sender's home).
fn send_bound_ms(scenario: &Scenario, population: &Population, pair: (u8, u8)) -> Option<f64> {
    let code = |i: u8| population.regions.get(usize::from(i)).map(|r| r.code);
    let (from, to) = (code(pair.0)?, code(pair.1)?);
    let mut bound = send_bound(&scenario.topology, from, to).ok()?;
    if scenario.devices_per_user > 1 {
        bound = bound.max(send_bound(&scenario.topology, from, from).ok()?);
    }
    Some(round3(bound.as_secs_f64() * 1000.0))
}

/// Errors of one kind.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorReport {
    /// The operation.
    pub op: &'static str,
    /// A gateway status name or a client-side kind.
    pub kind: String,
    /// How often.
    pub count: u64,
}

/// Rates.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Throughput {
    /// Sends per second asked for.
    pub asked_rate: f64,
    /// Sends confirmed inside the measured period, per second.
    pub achieved_rate: f64,
    /// First decryptions of measured sends, per second of the measured period.
    pub deliveries_per_s: f64,
    /// Message text bytes confirmed per second.
    pub send_bytes_per_s: f64,
    /// Latest start of a send after its due time (load generator lag), ms.
    pub max_start_lag_ms: f64,
}

/// Where the run went and how.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Target {
    /// Local mode (gateways started by this process).
    pub local: bool,
    /// The WAN simulation was on (local mode).
    pub wan_sim: bool,
    /// The store (local mode): `fjall` or `memory`.
    pub store: String,
    /// Gateways notified each other of commits (local mode; `None`: unknown).
    pub cross_gateway_push: Option<bool>,
    /// The gateways per region.
    pub regions: Vec<TargetRegion>,
    /// Rate limits given to local gateways (requests/s per device and per IP).
    pub rate_limits: Option<serde_json::Value>,
}

/// A region's gateways.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetRegion {
    /// Name.
    pub name: String,
    /// Code.
    pub code: u16,
    /// QUIC addresses.
    pub gateways: Vec<String>,
}

/// The machine.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    /// Cores the OS offers.
    pub nproc: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
}

impl Machine {
    /// This machine.
    pub fn this() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
        }
    }
}

/// The load generator's resource use.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientUse {
    /// CPU over the measured period.
    pub cpu: Option<CpuUse>,
    /// Memory at its end.
    pub memory: Option<Memory>,
    /// What the numbers include.
    pub note: String,
}

/// Push statistics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PushReport {
    /// Subscriptions made (a reconnect makes another).
    pub subscriptions: u64,
    /// `MessagesAvailable` pushes received.
    pub notifications: u64,
}

/// Files written.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Files {
    /// The JSON report.
    pub json: String,
    /// The SVG picture.
    pub svg: String,
}

/// Everything a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// [`FORMAT`].
    pub format: &'static str,
    /// Whether the run passed.
    pub passed: bool,
    /// Why it failed.
    pub failures: Vec<String>,
    /// The command line.
    pub command: String,
    /// Start, ms since the epoch.
    pub started_unix_ms: u64,
    /// The machine.
    pub machine: Machine,
    /// Where it ran.
    pub target: Target,
    /// The scenario.
    pub scenario: serde_json::Value,
    /// Provisioning.
    pub provisioning: provision::Summary,
    /// Timing in seconds: warm-up, measured period, drain used.
    pub timing: serde_json::Value,
    /// Exact accounting.
    pub accounting: Totals,
    /// Sends skipped because `max_in_flight` were pending.
    pub skipped_sends: u64,
    /// Rates.
    pub throughput: Throughput,
    /// Latency per operation.
    pub operations: Vec<OperationReport>,
    /// Latency per operation and region pair.
    pub pairs: Vec<PairReport>,
    /// Errors by operation and kind.
    pub errors: Vec<ErrorReport>,
    /// Resource use of this process.
    pub client: ClientUse,
    /// Push.
    pub push: PushReport,
    /// Examples of failures (first few).
    pub examples: Vec<String>,
    /// Output files.
    pub files: Files,
    /// This process's part of a run split over generators (`0/1` for a whole
    /// run; absent in a merged report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorReport>,
    /// The reports a merged report was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged: Option<MergedFrom>,
    /// Exact counts and histograms, for `rossby-loadtest merge`.
    pub raw: Raw,
    /// The last line of stdout.
    pub final_line: String,
}

/// One generator's part of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GeneratorReport {
    /// This generator's index.
    pub index: u32,
    /// How many generators shared the run.
    pub count: u32,
    /// The run id the message texts carried (16 hex digits); the same for
    /// every generator of one run.
    pub run_id: String,
    /// When the schedule started, ms since the epoch.
    pub start_unix_ms: u64,
    /// Devices it drove.
    pub devices: usize,
    /// Deliveries of its own sends to its own devices that were lost.
    pub own_lost_here: u64,
    /// What the merge needs from its ledger.
    pub exchange: Exchange,
}

/// Where a merged report came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MergedFrom {
    /// Generators merged.
    pub generators: u32,
    /// Their run id.
    pub run_id: String,
    /// The reports, in generator order.
    pub reports: Vec<String>,
}

/// The exact numbers behind the report's rates and latencies, so reports can
/// be merged without rounding.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Raw {
    /// Sends confirmed inside the measured period.
    pub confirmed_in_window: u64,
    /// First decryptions of measured sends.
    pub delivered_in_window: u64,
    /// Message text bytes confirmed inside the measured period.
    pub bytes_in_window: u64,
    /// Latest start of a send after its due time, µs.
    pub max_start_lag_us: u64,
    /// Every histogram of [`Report::pairs`].
    pub histograms: Vec<HistogramRecord>,
}

/// One histogram, exactly: its recorded buckets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramRecord {
    /// The operation's name.
    pub op: String,
    /// Sender's (or device's) region index in topology order.
    pub from: u8,
    /// Destination's region index, or 255 for a group.
    pub to: u8,
    /// `[value µs, count]` per recorded bucket ([`crate::stats::buckets`]).
    pub buckets: Vec<(u64, u64)>,
}

/// What the report is built from.
pub struct Inputs<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// The population.
    pub population: &'a Population,
    /// The run's outcome.
    pub outcome: &'a RunOutcome,
    /// The recorder.
    pub stats: &'a Stats,
    /// Where it ran.
    pub target: Target,
    /// Provisioning.
    pub provisioning: provision::Summary,
    /// The command line.
    pub command: String,
    /// Start time.
    pub started_unix_ms: u64,
    /// Which generator this process is (`0/1` unless split).
    pub generator: GeneratorSpec,
}

/// What a report is assembled from, measured here or merged from several.
pub(crate) struct Parts<'a> {
    /// The sends per second asked of this process (or of the merged run).
    pub asked_rate: f64,
    /// Seconds of the measured period.
    pub measured_s: f64,
    /// The histograms and errors.
    pub m: &'a Measurements,
    /// The accounting.
    pub totals: Totals,
    /// Of `totals.lost`, the losses this report can judge (one generator of
    /// several cannot tell a loss of another's send from a failure).
    pub judged_lost: u64,
    /// Exact counters (histograms are filled in here).
    pub raw: Raw,
    /// Region names in topology order.
    pub regions: &'a [String],
    /// The model's bound of a send pair, ms.
    pub bound: &'a dyn Fn(u8, u8) -> Option<f64>,
    /// The generator, when this is one of several.
    pub generator: Option<GeneratorSpec>,
}

/// The assembled parts of a report.
pub(crate) struct Assembled {
    pub passed: bool,
    pub failures: Vec<String>,
    pub throughput: Throughput,
    pub operations: Vec<OperationReport>,
    pub pairs: Vec<PairReport>,
    pub errors: Vec<ErrorReport>,
    pub raw: Raw,
    pub final_line: String,
}

/// A region's name for reports, or `group` for [`crate::plan::GROUP_DESTINATION`].
pub fn region_label(regions: &[String], index: u8) -> &str {
    if index == crate::plan::GROUP_DESTINATION {
        return "group";
    }
    regions.get(usize::from(index)).map_or("?", String::as_str)
}

/// Verdict, tables and final line from measurements and counts.
pub(crate) fn assemble(parts: Parts<'_>) -> Assembled {
    let Parts {
        asked_rate,
        measured_s,
        m,
        totals,
        judged_lost,
        mut raw,
        regions,
        bound,
        generator,
    } = parts;
    let measured_s = measured_s.max(1e-9);
    let achieved = raw.confirmed_in_window as f64 / measured_s;
    let throughput = Throughput {
        asked_rate: round3(asked_rate),
        achieved_rate: round3(achieved),
        deliveries_per_s: round3(raw.delivered_in_window as f64 / measured_s),
        send_bytes_per_s: round3(raw.bytes_in_window as f64 / measured_s),
        max_start_lag_ms: round3(raw.max_start_lag_us as f64 / 1000.0),
    };
    let operations: Vec<OperationReport> = Op::ALL
        .iter()
        .map(|op| OperationReport {
            op: op.name(),
            errors: m.error_count(*op),
            latency: Latency::of(&m.overall(*op)),
        })
        .filter(|o| o.latency.count > 0 || o.errors > 0)
        .collect();
    let pairs = m
        .by_pair
        .iter()
        .map(|((op, (from, to)), h)| {
            let latency = Latency::of(h);
            let send_bound_ms = match op {
                Op::Send => bound(*from, *to),
                _ => None,
            };
            PairReport {
                op: op.name(),
                from: region_label(regions, *from).to_string(),
                to: region_label(regions, *to).to_string(),
                within_bound: send_bound_ms.map(|b| within_bound(latency.p99_ms, b)),
                send_bound_ms,
                latency,
            }
        })
        .collect();
    raw.histograms = m
        .by_pair
        .iter()
        .map(|((op, (from, to)), h)| HistogramRecord {
            op: op.name().to_string(),
            from: *from,
            to: *to,
            buckets: crate::stats::buckets(h),
        })
        .collect();
    let errors = m
        .errors
        .iter()
        .map(|((op, kind), count)| ErrorReport {
            op: op.name(),
            kind: kind.clone(),
            count: *count,
        })
        .collect();
    let mut failures = Vec::new();
    if judged_lost > 0 {
        if generator.is_some() {
            failures.push(format!(
                "{judged_lost} expected deliveries of this generator's sends to its own devices were lost"
            ));
        } else {
            failures.push(format!("{judged_lost} expected deliveries were lost"));
        }
    }
    if totals.duplicated > 0 {
        failures.push(format!("{} deliveries were duplicated", totals.duplicated));
    }
    if totals.corrupted > 0 {
        failures.push(format!("{} deliveries were corrupted", totals.corrupted));
    }
    if achieved < MIN_RATE_SHARE * asked_rate {
        failures.push(format!(
            "achieved {achieved:.1} sends/s, below {:.0} % of the asked {}",
            MIN_RATE_SHARE * 100.0,
            round3(asked_rate)
        ));
    }
    let mut sends_all = m.overall(Op::Send);
    let _ = sends_all.add(m.overall(Op::GroupSend));
    let delivery = m.overall(Op::Delivery);
    let who = generator.map_or_else(String::new, |g| format!(" generator={g}"));
    let final_line = format!(
        "loadtest{who} sent={} expected={} delivered={} lost={} duplicated={} corrupted={} send_p99_ms={:.2} delivery_p99_ms={:.2} achieved_rate={:.1}",
        totals.sent,
        totals.expected,
        totals.delivered,
        totals.lost,
        totals.duplicated,
        totals.corrupted,
        Latency::of(&sends_all).p99_ms,
        Latency::of(&delivery).p99_ms,
        achieved
    );
    Assembled {
        passed: failures.is_empty(),
        failures,
        throughput,
        operations,
        pairs,
        errors,
        raw,
        final_line,
    }
}

/// Builds the report (without files).
pub fn build(inputs: Inputs<'_>) -> Report {
    let Inputs {
        scenario,
        population,
        outcome,
        stats,
        target,
        provisioning,
        command,
        started_unix_ms,
        generator,
    } = inputs;
    let m = stats.snapshot();
    let totals = outcome.totals;
    let regions: Vec<String> = population.regions.iter().map(|r| r.name.clone()).collect();
    let bound = |from: u8, to: u8| send_bound_ms(scenario, population, (from, to));
    let split = generator.is_split().then_some(generator);
    let a = assemble(Parts {
        asked_rate: scenario.rate * outcome.own_share,
        measured_s: outcome.measured_s,
        m: &m,
        totals,
        judged_lost: if split.is_some() {
            outcome.own_lost_here
        } else {
            totals.lost
        },
        raw: Raw {
            confirmed_in_window: stats.confirmed_in_window.load(Ordering::Relaxed),
            delivered_in_window: stats.delivered_in_window.load(Ordering::Relaxed),
            bytes_in_window: stats.bytes_in_window.load(Ordering::Relaxed),
            max_start_lag_us: stats.max_start_lag_us.load(Ordering::Relaxed),
            histograms: Vec::new(),
        },
        regions: &regions,
        bound: &bound,
        generator: split,
    });
    let note = if target.local {
        "local mode: memory and the process CPU include the gateways and the store; client_pct is the load generator's own threads".into()
    } else {
        "the load generator alone".into()
    };
    Report {
        format: FORMAT,
        passed: a.passed,
        failures: a.failures,
        command,
        started_unix_ms,
        machine: Machine::this(),
        target,
        scenario: scenario.describe(),
        provisioning,
        timing: serde_json::json!({
            "warmup_s": scenario.warmup.as_secs_f64(),
            "measured_s": outcome.measured_s,
            "drain_limit_s": scenario.drain.as_secs_f64(),
            "drain_used_s": round3(outcome.drain_s),
            "settled_stale_messages": outcome.settled_stale,
        }),
        accounting: totals,
        skipped_sends: outcome.skipped,
        throughput: a.throughput,
        operations: a.operations,
        pairs: a.pairs,
        errors: a.errors,
        client: ClientUse {
            cpu: outcome.cpu,
            memory: outcome.memory,
            note,
        },
        push: PushReport {
            subscriptions: stats.subscriptions.load(Ordering::Relaxed),
            notifications: stats.pushes.load(Ordering::Relaxed),
        },
        examples: outcome.corruption_examples.clone(),
        files: Files::default(),
        generator: Some(GeneratorReport {
            index: generator.index,
            count: generator.count,
            run_id: format!("{:016x}", outcome.run_id),
            start_unix_ms: outcome.start_unix_ms,
            devices: outcome.devices_driven,
            own_lost_here: outcome.own_lost_here,
            exchange: outcome.exchange.clone(),
        }),
        merged: None,
        raw: a.raw,
        final_line: a.final_line,
    }
}

/// What each panel of the picture measures.
fn subtitle(op: Op) -> &'static str {
    match op {
        Op::Register => "Register request to reply (provisioning)",
        Op::Authorize => "Authorize request to reply (provisioning)",
        Op::Link => "linking a device: request, grant, import (provisioning)",
        Op::Send => "1:1 send: due time to the gateway's confirmation",
        Op::GroupSend => "group send: due time to the gateway's confirmation",
        Op::Fetch => "one Fetch, with verification and decryption",
        Op::Ack => "one Ack",
        Op::Delivery => "due time of the send to decryption on each recipient device",
    }
}

/// The SVG picture of the measured latencies.
/// `regions`: the region names in topology order.
pub fn picture(report: &Report, m: &Measurements, regions: &[String]) -> String {
    let quantiles = svg::quantiles();
    let curve = |h: &Histogram<u64>| -> Vec<(f64, f64)> {
        quantiles
            .iter()
            .map(|q| (*q, h.value_at_quantile(*q) as f64 / 1000.0))
            .collect()
    };
    let mut panels = Vec::new();
    for op in Op::ALL {
        let overall = m.overall(op);
        if overall.is_empty() {
            continue;
        }
        let mut series = Vec::new();
        let pairs: Vec<_> = m.by_pair.iter().filter(|((o, _), _)| *o == op).collect();
        if pairs.len() > 1 {
            let l = Latency::of(&overall);
            series.push(svg::Series {
                label: format!(
                    "all: n={} p50 {} p99 {} ms",
                    l.count,
                    short(l.p50_ms),
                    short(l.p99_ms)
                ),
                points: curve(&overall),
                emphasis: true,
            });
        }
        for ((_, (from, to)), h) in pairs {
            let l = Latency::of(h);
            let name = if from == to && !matches!(op, Op::Send | Op::Delivery) {
                region_label(regions, *from).to_string()
            } else {
                format!(
                    "{} -> {}",
                    region_label(regions, *from),
                    region_label(regions, *to)
                )
            };
            series.push(svg::Series {
                label: format!(
                    "{name}: n={} p50 {} p99 {} ms",
                    l.count,
                    short(l.p50_ms),
                    short(l.p99_ms)
                ),
                points: curve(h),
                emphasis: false,
            });
        }
        panels.push(svg::Panel {
            title: op.name().to_string(),
            subtitle: subtitle(op).to_string(),
            series,
        });
    }
    let mode = if report.target.local {
        if report.target.wan_sim {
            "local, WAN simulation"
        } else {
            "local"
        }
    } else if let Some(m) = &report.merged {
        &format!("remote, {} generators merged", m.generators)
    } else {
        "remote"
    };
    let s = &report.scenario;
    let title = format!(
        "Rossby load test ({mode}): {} sends/s asked, {:.1} achieved",
        report.throughput.asked_rate, report.throughput.achieved_rate
    );
    let subtitle = format!(
        "{} regions x {} users x {} devices, {} measured after {} warm-up, mix {}, fetch {}; {}",
        regions.len(),
        s["users_per_region"],
        s["devices_per_user"],
        s["duration"].as_str().unwrap_or("?"),
        s["warmup"].as_str().unwrap_or("?"),
        s["mix"]["same_region"]
            .as_f64()
            .map(|same| format!(
                "same {:.0}% / cross {:.0}% / group {:.0}%",
                same * 100.0,
                s["mix"]["cross_region"].as_f64().unwrap_or(0.0) * 100.0,
                s["mix"]["group"].as_f64().unwrap_or(0.0) * 100.0
            ))
            .unwrap_or_default(),
        s["fetch"].as_str().unwrap_or("?"),
        if report.passed { "PASS" } else { "FAIL" }
    );
    svg::render(&title, &subtitle, &panels)
}

/// The summary table printed on stdout before the final line.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let t = &report.target;
    let _ = writeln!(
        out,
        "Rossby load test: {} | {} | {}",
        if t.local {
            if t.wan_sim {
                "local deployment, WAN simulation"
            } else {
                "local deployment"
            }
        } else {
            "remote gateways"
        },
        report.scenario["fetch"].as_str().unwrap_or(""),
        if report.passed { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(
        out,
        "\n{:<11} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "operation", "count", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for o in &report.operations {
        let l = &o.latency;
        let _ = writeln!(
            out,
            "{:<11} {:>8} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            o.op, l.count, o.errors, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
    }
    let interesting: Vec<&PairReport> = report
        .pairs
        .iter()
        .filter(|p| matches!(p.op, "send" | "group_send" | "delivery"))
        .collect();
    if !interesting.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<11} {:<28} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "by region", "from -> to", "count", "p50 ms", "p99 ms", "max ms", "bound ms"
        );
        for p in interesting {
            let bound = p
                .send_bound_ms
                .map_or_else(String::new, |b| format!("{b:.2}"));
            let row = format!(
                "{:<11} {:<28} {:>8} {:>9.2} {:>9.2} {:>9.2} {bound:>9}",
                p.op,
                format!("{} -> {}", p.from, p.to),
                p.latency.count,
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.latency.max_ms
            );
            // Rows without a bound end at their last number.
            let _ = writeln!(out, "{}", row.trim_end());
        }
    }
    let a = &report.accounting;
    let _ = writeln!(
        out,
        "\naccounting  sends={} confirmed={} failed={} unconfirmed={} skipped={}",
        a.sends, a.sent, a.failed_sends, a.unconfirmed_sends, report.skipped_sends
    );
    let _ = writeln!(
        out,
        "            expected={} delivered={} lost={} duplicated={} corrupted={} (stale={}, after-error={}, redelivered={})",
        a.expected,
        a.delivered,
        a.lost,
        a.duplicated,
        a.corrupted,
        a.stale,
        a.delivered_after_error,
        a.redelivered
    );
    let th = &report.throughput;
    let _ = writeln!(
        out,
        "throughput  asked {:.1}/s, achieved {:.1}/s, {:.1} deliveries/s, {:.1} KiB/s of text, generator lag max {:.1} ms",
        th.asked_rate,
        th.achieved_rate,
        th.deliveries_per_s,
        th.send_bytes_per_s / 1024.0,
        th.max_start_lag_ms
    );
    if let Some(cpu) = &report.client.cpu {
        let _ = writeln!(
            out,
            "cpu         process {:.0}% of one core (load generator {:.0}%, other threads {:.0}%) over {:.1} s",
            cpu.process_pct, cpu.client_pct, cpu.other_pct, cpu.wall_s
        );
    }
    if let Some(mem) = &report.client.memory {
        let _ = writeln!(
            out,
            "memory      RSS {:.1} MiB, peak {:.1} MiB{}",
            mem.rss_kib as f64 / 1024.0,
            mem.peak_rss_kib as f64 / 1024.0,
            if report.target.local {
                " (gateways and store included)"
            } else {
                ""
            }
        );
    }
    if report.errors.is_empty() {
        let _ = writeln!(out, "errors      none");
    } else {
        let list: Vec<String> = report
            .errors
            .iter()
            .map(|e| format!("{} {}={}", e.op, e.kind, e.count))
            .collect();
        let _ = writeln!(out, "errors      {}", list.join(", "));
    }
    for f in &report.failures {
        let _ = writeln!(out, "FAIL        {f}");
    }
    if !report.files.json.is_empty() {
        let _ = writeln!(out, "report      {}", report.files.json);
        let _ = writeln!(out, "picture     {}", report.files.svg);
    }
    out
}

/// Milliseconds for a legend: three significant digits at most.
fn short(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn round3(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Totals;
    use crate::plan::Population;
    use crate::scenario::{Overrides, ScenarioFile};
    use crate::testkit;
    use std::time::Duration;

    fn fixture(lost: u64, achieved_sends: u64) -> (Scenario, Population, Stats, RunOutcome) {
        let o = Overrides::from(ScenarioFile {
            rate: Some(10.0),
            duration: Some("10s".into()),
            users_per_region: Some(3),
            ..ScenarioFile::default()
        });
        let s = testkit::build(testkit::two_regions(), "", &o).unwrap();
        let p = Population::build(&s, "x").unwrap();
        let stats = Stats::default();
        for i in 0..50u64 {
            stats.record(Op::Send, (0, 1), Duration::from_micros(1000 + i * 10));
            stats.record(Op::Delivery, (0, 1), Duration::from_millis(5 + i));
            stats.record(Op::Delivery, (0, 0), Duration::from_millis(2));
        }
        // b's own boxes at 500 ms: well above their bound (b's two timestamps from
        // the primary a, 2 x 80 ms, with the allowance: 300 ms).
        for _ in 0..10 {
            stats.record(Op::Send, (1, 1), Duration::from_millis(500));
        }
        stats.record(
            Op::GroupSend,
            (1, crate::plan::GROUP_DESTINATION),
            Duration::from_millis(9),
        );
        stats.error(Op::Send, "UNAVAILABLE");
        stats
            .confirmed_in_window
            .store(achieved_sends, Ordering::Relaxed);
        let outcome = RunOutcome {
            totals: Totals {
                sends: 100,
                sent: 100,
                expected: 300,
                delivered: 300 - lost,
                lost,
                ..Totals::default()
            },
            skipped: 0,
            settled_stale: 0,
            measured_s: 10.0,
            drain_s: 0.5,
            cpu: None,
            memory: None,
            corruption_examples: Vec::new(),
            run_id: 7,
            start_unix_ms: 1,
            own_share: 1.0,
            own_lost_here: lost,
            devices_driven: p.devices.len(),
            exchange: Default::default(),
        };
        (s, p, stats, outcome)
    }

    fn report(lost: u64, achieved_sends: u64) -> (Report, Population, Stats) {
        let (s, p, stats, outcome) = fixture(lost, achieved_sends);
        let r = build(Inputs {
            scenario: &s,
            population: &p,
            outcome: &outcome,
            stats: &stats,
            target: Target::default(),
            provisioning: provision::Summary::default(),
            command: "rossby-loadtest --rate 10".into(),
            started_unix_ms: 1,
            generator: GeneratorSpec::SOLE,
        });
        (r, p, stats)
    }

    #[test]
    fn the_json_report_has_its_documented_shape() {
        let (r, _, _) = report(0, 100);
        assert!(r.passed, "{:?}", r.failures);
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "format",
            "passed",
            "failures",
            "command",
            "machine",
            "target",
            "scenario",
            "provisioning",
            "timing",
            "accounting",
            "throughput",
            "operations",
            "pairs",
            "errors",
            "client",
            "push",
            "files",
            "final_line",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["format"], FORMAT);
        for key in ["expected", "delivered", "lost", "duplicated", "corrupted"] {
            assert!(v["accounting"][key].is_u64(), "accounting.{key}");
        }
        let send = v["operations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["op"] == "send")
            .unwrap();
        assert_eq!(send["count"], 60);
        assert_eq!(send["errors"], 1);
        assert!(send["p99_ms"].as_f64().unwrap() > 1.0);
        let pairs = v["pairs"].as_array().unwrap();
        assert!(
            pairs
                .iter()
                .any(|p| p["op"] == "delivery" && p["from"] == "a" && p["to"] == "b")
        );
        assert!(
            pairs
                .iter()
                .any(|p| p["op"] == "group_send" && p["to"] == "group")
        );
        assert_eq!(v["errors"][0]["kind"], "UNAVAILABLE");
        assert_eq!(v["throughput"]["achieved_rate"], 10.0);
    }

    #[test]
    fn send_pairs_carry_the_models_bound() {
        let (r, _, _) = report(0, 100);
        let v = serde_json::to_value(&r).unwrap();
        let pair = |op: &str, from: &str, to: &str| {
            v["pairs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["op"] == op && p["from"] == from && p["to"] == to)
                .unwrap()
                .clone()
        };
        // a -> b: the forwarded hop (80) and b's two timestamps from a (2 x 80).
        let ab = pair("send", "a", "b");
        assert_eq!(ab["send_bound_ms"], 240.0);
        assert_eq!(ab["within_bound"], true);
        let bb = pair("send", "b", "b");
        assert_eq!(bb["send_bound_ms"], 160.0);
        assert_eq!(bb["within_bound"], false);
        // Other operations have neither field.
        for other in [pair("delivery", "a", "b"), pair("group_send", "b", "group")] {
            let fields = other.as_object().unwrap();
            assert!(!fields.contains_key("send_bound_ms"), "{other}");
            assert!(!fields.contains_key("within_bound"), "{other}");
        }
        // Informational: a pair outside its bound does not fail the run.
        assert!(r.passed, "{:?}", r.failures);
    }

    #[test]
    fn within_bound_allows_a_quarter_and_100_ms() {
        assert!(within_bound(400.0, 240.0));
        assert!(!within_bound(400.001, 240.0));
        assert!(within_bound(100.0, 0.0));
        assert!(!within_bound(100.5, 0.0));
    }

    #[test]
    fn the_final_line_has_the_exact_format() {
        let (r, _, _) = report(0, 100);
        let line = &r.final_line;
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[0], "loadtest");
        let keys: Vec<&str> = fields[1..]
            .iter()
            .map(|f| f.split_once('=').unwrap().0)
            .collect();
        assert_eq!(
            keys,
            [
                "sent",
                "expected",
                "delivered",
                "lost",
                "duplicated",
                "corrupted",
                "send_p99_ms",
                "delivery_p99_ms",
                "achieved_rate"
            ]
        );
        assert!(line.starts_with("loadtest sent=100 expected=300 delivered=300 lost=0 duplicated=0 corrupted=0 send_p99_ms="));
        assert!(line.ends_with(" achieved_rate=10.0"), "{line}");
    }

    #[test]
    fn losses_and_a_low_rate_fail_the_run() {
        let (r, _, _) = report(3, 100);
        assert!(!r.passed);
        assert!(r.failures[0].contains("lost"));
        let (r, _, _) = report(0, 89);
        assert!(!r.passed);
        assert!(r.failures[0].contains("below 90 %"));
        let (r, _, _) = report(0, 90);
        assert!(r.passed);
    }

    #[test]
    fn the_picture_and_table_show_every_operation() {
        let (r, p, stats) = report(0, 100);
        let names: Vec<String> = p.regions.iter().map(|r| r.name.clone()).collect();
        let svg = picture(&r, &stats.snapshot(), &names);
        crate::svg::tests::well_formed(&svg).unwrap();
        assert!(svg.contains("delivery") && svg.contains("a -&gt; b"));
        assert!(svg.contains("group_send"));
        let table = table(&r);
        assert!(table.contains("delivery"));
        assert!(table.contains("a -> b"));
        assert!(table.contains("UNAVAILABLE=1"));
        let header = table.lines().find(|l| l.starts_with("by region")).unwrap();
        assert!(header.ends_with(" max ms  bound ms"), "{table}");
        let row = |op: &str, pair: &str| {
            table
                .lines()
                .find(|l| l.starts_with(&format!("{op:<11} {pair} ")))
                .unwrap_or_else(|| panic!("no {op} {pair} row in\n{table}"))
        };
        // The bound sits under its header, right-aligned; other operations leave
        // it blank.
        let send = row("send", "a -> b");
        assert!(send.ends_with("   240.00"), "{table}");
        assert_eq!(send.len(), header.len(), "{table}");
        assert!(row("send", "b -> b").ends_with("   160.00"), "{table}");
        let delivery = row("delivery", "a -> b");
        assert!(delivery.len() < header.len() - 8, "{table}");
        let delivery_max = r
            .pairs
            .iter()
            .find(|p| p.op == "delivery" && p.from == "a" && p.to == "b")
            .map(|p| p.latency.max_ms)
            .unwrap();
        assert!(
            delivery.ends_with(&format!(" {delivery_max:.2}")),
            "{table}"
        );
    }
}
