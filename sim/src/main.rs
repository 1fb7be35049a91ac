//! `rossby-sim`: runs seeds of the deterministic simulation and reports the
//! failing ones with the command that replays them.

use clap::Parser;
use rossby_sim::{Config, DEFAULT_OPS, SeedReport, run_seed};
use std::process::ExitCode;
use std::time::Instant;

/// Deterministic simulation test of Rossby's domain layer.
#[derive(Debug, Parser)]
#[command(name = "rossby-sim", version)]
struct Args {
    /// Run seeds 0..N.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Run only this seed (replays a failure exactly).
    #[arg(long)]
    seed: Option<u64>,
    /// Operations per seed.
    #[arg(long, default_value_t = DEFAULT_OPS)]
    ops: usize,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// With --seed: print the whole trace of the run.
    #[arg(long)]
    trace: bool,
}

fn report_failure(report: &SeedReport, args: &Args) {
    let Some(failure) = &report.failure else {
        return;
    };
    eprintln!("seed {} FAILED: {}", report.seed, failure.violation);
    eprintln!("last operations:");
    for line in &failure.trace {
        eprintln!("  {line}");
    }
    let mut flags = String::new();
    if args.ops != DEFAULT_OPS {
        flags.push_str(&format!(" --ops {}", args.ops));
    }
    eprintln!(
        "replay: cargo run --release --bin rossby-sim -- --seed {}{flags}",
        report.seed
    );
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = Config {
        ops: args.ops,
        ..Config::default()
    };
    if args.trace && args.seed.is_some() {
        config.trace_lines = usize::MAX;
    }
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (0..args.seeds).collect(),
    };
    let started = Instant::now();
    let mut failures = 0u64;
    let mut operations = 0u64;
    for &seed in &seeds {
        let report = run_seed(seed, &config);
        operations += report.operations;
        if report.failure.is_some() {
            failures += 1;
            report_failure(&report, &args);
            if args.fail_fast {
                break;
            }
        } else if args.seed.is_some() {
            eprintln!("seed {seed} passed (digest {:016x})", report.digest);
        }
        if args.trace && args.seed.is_some() {
            for line in &report.trace {
                eprintln!("  {line}");
            }
        }
    }
    eprintln!("elapsed {:.1}s", started.elapsed().as_secs_f64());
    println!(
        "sim seeds={} failures={failures} operations={operations}",
        seeds.len()
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
