//! `rossby-loadtest merge`: the reports of the generators of one split run
//! ([`crate::generator`]) put together into the report one process would have
//! written: histograms merged bucket for bucket (exact, never averaged),
//! counters summed, and the delivery accounting matched across generators (a
//! message sent by one generator and decrypted on another's device counts as
//! delivered, see [`crate::ledger::merge_exchanges`]).
//!
//! The reports must be every generator of one run, each once: the same run id,
//! number of generators and scenario. Anything else is refused with the reason.

use crate::error::{Error, Result};
use crate::ledger::{Totals, merge_exchanges};
use crate::provision;
use crate::report::{
    self, ClientUse, FORMAT, Files, GeneratorReport, Machine, MergedFrom, Parts, PushReport, Raw,
    Report, Target,
};
use crate::stats::{Measurements, Op, from_buckets, histogram};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Failure examples kept in the merged report.
const EXAMPLES: usize = 10;

/// The fields of a generator's report the merge reads.
#[derive(Deserialize)]
struct Input {
    format: String,
    started_unix_ms: u64,
    machine: Machine,
    target: Target,
    scenario: serde_json::Value,
    provisioning: provision::Summary,
    timing: serde_json::Value,
    accounting: Totals,
    skipped_sends: u64,
    pairs: Vec<PairInput>,
    errors: Vec<ErrorInput>,
    push: PushReport,
    examples: Vec<String>,
    generator: Option<GeneratorReport>,
    merged: Option<MergedFrom>,
    raw: Option<Raw>,
}

#[derive(Deserialize)]
struct PairInput {
    op: String,
    from: String,
    to: String,
    send_bound_ms: Option<f64>,
}

#[derive(Deserialize)]
struct ErrorInput {
    op: String,
    kind: String,
    count: u64,
}

/// A merged run.
pub struct Merged {
    /// Its report (without files).
    pub report: Report,
    /// The merged histograms and errors.
    pub measurements: Measurements,
    /// Region names in topology order.
    pub regions: Vec<String>,
}

/// Reads and merges the reports at `paths`.
pub fn merge_files(paths: &[PathBuf]) -> Result<Merged> {
    let mut texts = Vec::with_capacity(paths.len());
    for path in paths {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("cannot read report", path, e))?;
        texts.push((path.display().to_string(), text));
    }
    merge_texts(&texts)
}

/// Merges reports given as `(name, JSON text)`; the names appear in errors
/// and in the merged report.
pub fn merge_texts(texts: &[(String, String)]) -> Result<Merged> {
    let bad = |m: String| Error::Merge(m);
    if texts.is_empty() {
        return Err(bad("no reports to merge".into()));
    }
    let mut inputs: Vec<(String, Input, GeneratorReport, Raw)> = Vec::new();
    for (name, text) in texts {
        let input: Input = serde_json::from_str(text)
            .map_err(|e| bad(format!("{name} is not a rossby-loadtest report: {e}")))?;
        if input.format != FORMAT {
            return Err(bad(format!(
                "{name} has format {:?}; this rossby-loadtest reads {FORMAT:?}",
                input.format
            )));
        }
        if input.merged.is_some() {
            return Err(bad(format!(
                "{name} is already a merged report: merge the generators' own reports"
            )));
        }
        let (Some(g), Some(raw)) = (input.generator.clone(), input.raw.clone()) else {
            return Err(bad(format!(
                "{name} has no generator and histogram sections (written by an older rossby-loadtest?)"
            )));
        };
        inputs.push((name.clone(), input, g, raw));
    }
    let (first_name, first, g0, _) = &inputs[0];
    let count = g0.count;
    for (name, input, g, _) in &inputs[1..] {
        if g.run_id != g0.run_id || g.start_unix_ms != g0.start_unix_ms {
            return Err(bad(format!(
                "{name} and {first_name} are from different runs (run id {} started at {} ms vs {} started at {} ms)",
                g.run_id, g.start_unix_ms, g0.run_id, g0.start_unix_ms
            )));
        }
        if g.count != count {
            return Err(bad(format!(
                "{name} is generator {}/{} but {first_name} is {}/{}",
                g.index, g.count, g0.index, g0.count
            )));
        }
        if input.scenario != first.scenario {
            return Err(bad(format!(
                "{name} and {first_name} ran different scenarios"
            )));
        }
    }
    let mut by_index: Vec<Option<usize>> = vec![None; count as usize];
    for (i, (name, _, g, _)) in inputs.iter().enumerate() {
        let Some(seat) = by_index.get_mut(g.index as usize) else {
            return Err(bad(format!(
                "{name} claims generator {}/{}, out of range",
                g.index, g.count
            )));
        };
        if let Some(other) = seat {
            return Err(bad(format!(
                "generator {}/{count} appears twice: {} and {name}",
                g.index, inputs[*other].0
            )));
        }
        *seat = Some(i);
    }
    let missing: Vec<String> = by_index
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_none())
        .map(|(i, _)| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!(
            "the reports of generator {} are missing: merge every generator of the run",
            missing.join(", ")
        )));
    }
    let order: Vec<usize> = by_index.into_iter().flatten().collect();
    let inputs: Vec<_> = order.into_iter().map(|i| &inputs[i]).collect();

    let first = &inputs[0].1;
    let regions: Vec<String> = first.scenario["regions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    let index_of: HashMap<&str, u8> = regions
        .iter()
        .enumerate()
        .filter_map(|(i, r)| u8::try_from(i).ok().map(|i| (r.as_str(), i)))
        .collect();

    // Histograms, bucket for bucket; errors, summed.
    let mut m = Measurements::default();
    let mut raw = Raw::default();
    for (name, input, _, r) in &inputs {
        for h in &r.histograms {
            let op = Op::from_name(&h.op)
                .ok_or_else(|| bad(format!("{name}: unknown operation {:?}", h.op)))?;
            let part =
                from_buckets(&h.buckets).map_err(|e| bad(format!("{name}: {} {e}", h.op)))?;
            m.by_pair
                .entry((op, (h.from, h.to)))
                .or_insert_with(histogram)
                .add(&part)
                .map_err(|e| bad(format!("{name}: {} {e:?}", h.op)))?;
        }
        for e in &input.errors {
            let op = Op::from_name(&e.op)
                .ok_or_else(|| bad(format!("{name}: unknown operation {:?}", e.op)))?;
            *m.errors.entry((op, e.kind.clone())).or_insert(0) += e.count;
        }
        raw.confirmed_in_window += r.confirmed_in_window;
        raw.delivered_in_window += r.delivered_in_window;
        raw.bytes_in_window += r.bytes_in_window;
        raw.max_start_lag_us = raw.max_start_lag_us.max(r.max_start_lag_us);
    }

    // The model's bounds are the topology's: any report that has the pair has it.
    let mut bounds: HashMap<(u8, u8), f64> = HashMap::new();
    for (_, input, _, _) in &inputs {
        for p in input.pairs.iter().filter(|p| p.op == Op::Send.name()) {
            if let (Some(b), Some(from), Some(to)) = (
                p.send_bound_ms,
                index_of.get(p.from.as_str()),
                index_of.get(p.to.as_str()),
            ) {
                bounds.insert((*from, *to), b);
            }
        }
    }
    let bound = |from: u8, to: u8| bounds.get(&(from, to)).copied();

    let parts: Vec<_> = inputs
        .iter()
        .map(|(_, input, g, _)| (input.accounting, g.exchange.clone()))
        .collect();
    let totals = merge_exchanges(&parts).map_err(bad)?;
    let asked_rate = first.scenario["rate"].as_f64().unwrap_or(0.0);
    let measured_s = first.timing["measured_s"].as_f64().unwrap_or(0.0);
    let a = report::assemble(Parts {
        asked_rate,
        measured_s,
        m: &m,
        totals,
        judged_lost: totals.lost,
        raw,
        regions: &regions,
        bound: &bound,
        generator: None,
    });

    let mut timing = first.timing.clone();
    let drain_used = inputs
        .iter()
        .filter_map(|(_, i, _, _)| i.timing["drain_used_s"].as_f64())
        .fold(0.0, f64::max);
    timing["drain_used_s"] = serde_json::json!(drain_used);
    let mut examples = Vec::new();
    for (_, input, g, _) in &inputs {
        for e in &input.examples {
            if examples.len() < EXAMPLES {
                examples.push(format!("generator {}: {e}", g.index));
            }
        }
    }
    let names: Vec<String> = inputs.iter().map(|(n, _, _, _)| n.clone()).collect();
    let report = Report {
        format: FORMAT,
        passed: a.passed,
        failures: a.failures,
        command: format!("rossby-loadtest merge {}", names.join(" ")),
        started_unix_ms: inputs
            .iter()
            .map(|(_, i, _, _)| i.started_unix_ms)
            .min()
            .unwrap_or(0),
        machine: first.machine.clone(),
        target: Target {
            local: false,
            ..first.target.clone()
        },
        scenario: first.scenario.clone(),
        provisioning: first.provisioning.clone(),
        timing,
        accounting: totals,
        skipped_sends: inputs.iter().map(|(_, i, _, _)| i.skipped_sends).sum(),
        throughput: a.throughput,
        operations: a.operations,
        pairs: a.pairs,
        errors: a.errors,
        client: ClientUse {
            cpu: None,
            memory: None,
            note: format!(
                "merged from {count} generators: each generator's report has its own CPU and memory"
            ),
        },
        push: PushReport {
            subscriptions: inputs.iter().map(|(_, i, _, _)| i.push.subscriptions).sum(),
            notifications: inputs.iter().map(|(_, i, _, _)| i.push.notifications).sum(),
        },
        examples,
        files: Files::default(),
        generator: None,
        merged: Some(MergedFrom {
            generators: count,
            run_id: inputs[0].2.run_id.clone(),
            reports: names,
        }),
        raw: a.raw,
        final_line: a.final_line,
    };
    Ok(Merged {
        report,
        measurements: m,
        regions,
    })
}

/// Merges the reports at `paths` and writes the merged JSON report and
/// picture.
pub fn merge_and_write(paths: &[PathBuf], json_path: &Path, svg_path: &Path) -> Result<Report> {
    let merged = merge_files(paths)?;
    let mut report = merged.report;
    report.files = Files {
        json: json_path.display().to_string(),
        svg: svg_path.display().to_string(),
    };
    let picture = report::picture(&report, &merged.measurements, &merged.regions);
    crate::write_file(svg_path, picture.as_bytes())?;
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Scenario(format!("cannot encode the report: {e}")))?;
    crate::write_file(json_path, json.as_bytes())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::GeneratorSpec;
    use crate::ledger::Exchange;
    use crate::plan::Population;
    use crate::runner::RunOutcome;
    use crate::scenario::{Overrides, Scenario, ScenarioFile};
    use crate::stats::Stats;
    use crate::testkit;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn scenario(rate: f64) -> Scenario {
        let o = Overrides::from(ScenarioFile {
            rate: Some(rate),
            duration: Some("10s".into()),
            users_per_region: Some(3),
            ..ScenarioFile::default()
        });
        testkit::build(testkit::two_regions(), "", &o).unwrap()
    }

    struct Part {
        index: u32,
        count: u32,
        run_id: u64,
        totals: Totals,
        exchange: Exchange,
    }

    fn report_json(s: &Scenario, stats: &Stats, part: Part) -> String {
        let p = Population::build(s, "x").unwrap();
        let outcome = RunOutcome {
            totals: part.totals,
            skipped: 0,
            settled_stale: 0,
            measured_s: 10.0,
            drain_s: 0.5,
            cpu: None,
            memory: None,
            corruption_examples: vec![format!("example of {}", part.index)],
            run_id: part.run_id,
            start_unix_ms: 1_000,
            own_share: 0.5,
            own_lost_here: 0,
            devices_driven: 3,
            exchange: part.exchange,
        };
        let r = report::build(report::Inputs {
            scenario: s,
            population: &p,
            outcome: &outcome,
            stats,
            target: Target::default(),
            provisioning: provision::Summary::default(),
            command: "rossby-loadtest --generator".into(),
            started_unix_ms: 5,
            generator: GeneratorSpec::new(part.index, part.count).unwrap(),
        });
        serde_json::to_string(&r).unwrap()
    }

    fn record(stats: &Stats, values: impl Iterator<Item = u64>) {
        for us in values {
            let pair = (u8::from(us % 3 == 0), u8::from(us % 2 == 0));
            stats.record(Op::Send, pair, Duration::from_micros(us));
            stats.record(Op::Delivery, pair, Duration::from_micros(us * 3));
        }
    }

    /// Generator 0 sent 2 messages owing 10 deliveries (6 on its devices, 4
    /// on generator 1's); generator 1 sent 1 owing 4 (2 and 2).
    fn two_generators(run_ids: (u64, u64)) -> (Vec<(String, String)>, Stats) {
        let s = scenario(10.0);
        let (a, b, union) = (Stats::default(), Stats::default(), Stats::default());
        let xs = (0..500u64).map(|i| 800 + i * i * 37 % 90_000);
        let ys = (0..300u64).map(|i| 20_000 + i * 1_013 % 400_000);
        record(&a, xs.clone());
        record(&b, ys.clone());
        record(&union, xs.chain(ys));
        a.confirmed_in_window.store(60, Ordering::Relaxed);
        b.confirmed_in_window.store(40, Ordering::Relaxed);
        a.error(Op::Send, "UNAVAILABLE");
        b.error(Op::Send, "UNAVAILABLE");
        b.error(Op::Ack, "unreachable");
        let ga = report_json(
            &s,
            &a,
            Part {
                index: 0,
                count: 2,
                run_id: run_ids.0,
                totals: Totals {
                    sends: 2,
                    sent: 2,
                    expected: 8,
                    delivered: 8,
                    ..Totals::default()
                },
                exchange: Exchange {
                    own_expected: 10,
                    own_delivered_here: 6,
                    foreign_expected_here: 2,
                    foreign_delivered: vec![(1, 2)],
                    ..Exchange::default()
                },
            },
        );
        let gb = report_json(
            &s,
            &b,
            Part {
                index: 1,
                count: 2,
                run_id: run_ids.1,
                totals: Totals {
                    sends: 1,
                    sent: 1,
                    expected: 6,
                    delivered: 6,
                    ..Totals::default()
                },
                exchange: Exchange {
                    own_expected: 4,
                    own_delivered_here: 2,
                    foreign_expected_here: 4,
                    foreign_delivered: vec![(0, 2), (2, 2)],
                    ..Exchange::default()
                },
            },
        );
        (vec![("g1.json".into(), gb), ("g0.json".into(), ga)], union)
    }

    #[test]
    fn histograms_merge_exactly_and_accounting_matches_across_generators() {
        let (texts, union) = two_generators((9, 9));
        let merged = merge_texts(&texts).unwrap();
        let m = &merged.measurements;
        let u = union.snapshot();
        // Bucket for bucket: every percentile is the union's.
        assert!(m.by_pair == u.by_pair, "the merged histograms differ");
        for op in [Op::Send, Op::Delivery] {
            let (got, want) = (m.overall(op), u.overall(op));
            assert_eq!(got.len(), 800);
            for q in [0.0, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
                assert_eq!(got.value_at_quantile(q), want.value_at_quantile(q), "{q}");
            }
            assert_eq!(got.mean(), want.mean());
        }
        let r = &merged.report;
        let send = r.operations.iter().find(|o| o.op == "send").unwrap();
        assert_eq!(send.latency, report::Latency::of(&u.overall(Op::Send)));
        assert_eq!(send.errors, 2);
        // Sent by one, decrypted on the other: matched.
        let a = r.accounting;
        assert_eq!((a.sends, a.sent, a.expected, a.delivered), (3, 3, 14, 14));
        assert_eq!((a.lost, a.duplicated, a.corrupted), (0, 0, 0));
        assert_eq!(r.throughput.achieved_rate, 10.0);
        assert_eq!(r.throughput.asked_rate, 10.0);
        assert!(r.passed, "{:?}", r.failures);
        assert!(
            r.final_line.starts_with(
                "loadtest sent=3 expected=14 delivered=14 lost=0 duplicated=0 corrupted=0 send_p99_ms="
            ),
            "{}",
            r.final_line
        );
        let from = r.merged.as_ref().unwrap();
        assert_eq!(from.reports, ["g0.json", "g1.json"], "in generator order");
        assert_eq!(
            r.examples,
            ["generator 0: example of 0", "generator 1: example of 1"]
        );
        // The picture and the merged JSON are well formed.
        let svg = report::picture(r, m, &merged.regions);
        crate::svg::tests::well_formed(&svg).unwrap();
        assert!(svg.contains("2 generators merged"));
        let json = serde_json::to_value(r).unwrap();
        assert_eq!(json["merged"]["generators"], 2);
        assert!(json.get("generator").is_none());
    }

    #[test]
    fn a_sole_generators_report_merges_into_itself() {
        let s = scenario(10.0);
        let stats = Stats::default();
        record(&stats, (1..200u64).map(|i| i * 997));
        stats.confirmed_in_window.store(100, Ordering::Relaxed);
        let text = report_json(
            &s,
            &stats,
            Part {
                index: 0,
                count: 1,
                run_id: 3,
                totals: Totals {
                    sends: 5,
                    sent: 5,
                    expected: 9,
                    delivered: 9,
                    ..Totals::default()
                },
                exchange: Exchange {
                    own_expected: 9,
                    own_delivered_here: 9,
                    ..Exchange::default()
                },
            },
        );
        let original: serde_json::Value = serde_json::from_str(&text).unwrap();
        let merged = merge_texts(&[("r.json".into(), text)]).unwrap();
        let again = serde_json::to_value(&merged.report).unwrap();
        for key in ["accounting", "operations", "pairs", "errors", "final_line"] {
            assert_eq!(again[key], original[key], "{key}");
        }
    }

    #[test]
    fn reports_that_do_not_belong_together_are_refused() {
        let err = |texts: &[(String, String)]| match merge_texts(texts) {
            Ok(_) => panic!("merged"),
            Err(e) => e.to_string(),
        };
        let (texts, _) = two_generators((9, 9));
        assert!(err(&[]).contains("no reports"));
        // Another run.
        let (other, _) = two_generators((9, 10));
        let e = err(&other);
        assert!(e.contains("different runs"), "{e}");
        // A generator twice, or missing.
        let e = err(&[texts[0].clone(), texts[0].clone()]);
        assert!(e.contains("appears twice"), "{e}");
        let e = err(&texts[..1]);
        assert!(e.contains("generator 0/2 are missing"), "{e}");
        // Another number of generators.
        let s = scenario(10.0);
        let third = report_json(
            &s,
            &Stats::default(),
            Part {
                index: 2,
                count: 3,
                run_id: 9,
                totals: Totals::default(),
                exchange: Exchange::default(),
            },
        );
        let e = err(&[texts[0].clone(), ("g2.json".into(), third)]);
        assert!(e.contains("generator 2/3"), "{e}");
        // Another scenario.
        let mut changed: serde_json::Value = serde_json::from_str(&texts[1].1).unwrap();
        changed["scenario"]["rate"] = serde_json::json!(11.0);
        let e = err(&[texts[0].clone(), ("g0.json".into(), changed.to_string())]);
        assert!(e.contains("different scenarios"), "{e}");
        // Not a report, an older report, a merged report.
        let e = err(&[("x.json".into(), "{\"a\": 1}".into())]);
        assert!(e.contains("x.json is not a rossby-loadtest report"), "{e}");
        let mut old: serde_json::Value = serde_json::from_str(&texts[1].1).unwrap();
        old.as_object_mut().unwrap().remove("raw");
        let e = err(&[("old.json".into(), old.to_string())]);
        assert!(e.contains("older rossby-loadtest"), "{e}");
        let merged = merge_texts(&texts).unwrap();
        let json = serde_json::to_string(&merged.report).unwrap();
        let e = err(&[("m.json".into(), json)]);
        assert!(e.contains("already a merged report"), "{e}");
        // Numbers that cannot come from one run.
        let mut wrong: serde_json::Value = serde_json::from_str(&texts[0].1).unwrap();
        wrong["generator"]["exchange"]["foreign_delivered"] = serde_json::json!([[0, 50]]);
        let e = err(&[("g1.json".into(), wrong.to_string()), texts[1].clone()]);
        assert!(e.contains("do not add up"), "{e}");
    }
}
