//! `rossby-loadtest`: see the crate documentation and docs/loadtest.md.
//!
//! Stdout: the summary table, then as the very last line
//! `loadtest sent=... achieved_rate=...`. Stderr: progress and logs.
//! Exit codes: 0 passed, 1 failed (or could not run), 2 invalid options.

use clap::Parser;
use clap::error::ErrorKind;
use rossby_loadtest::cli::{Args, Command, MergeArgs};
use rossby_loadtest::{Error, Phase, execute, run_deadline, wait_for_start};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            return match err.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = err.print();
                    ExitCode::SUCCESS
                }
                _ => {
                    let _ = err.print();
                    ExitCode::from(2)
                }
            };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(Command::Merge(merge)) = args.command {
        return merge_reports(&merge);
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let options = match args.into_options(command) {
        Ok(o) => o,
        Err(err) => {
            eprintln!("rossby-loadtest: {err}");
            return ExitCode::from(2);
        }
    };
    // Whatever happens inside, the process ends by itself: provisioning and the
    // run have their own deadlines, and this watchdog backs them up.
    let run = if options.phase == Phase::Provision {
        Duration::ZERO
    } else {
        run_deadline(&options.scenario)
    };
    let limit = options.provision_timeout
        + run
        + wait_for_start(options.start_at)
        + Duration::from_secs(60);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "rossby-loadtest: hard deadline of {} s exceeded; exiting",
            limit.as_secs()
        );
        std::process::exit(1);
    });
    match execute(options) {
        Ok(outcome) => match outcome.report {
            Some(report) => {
                print!("{}", rossby_loadtest::report::table(&report));
                println!("{}", report.final_line);
                if report.passed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            None => {
                println!(
                    "provisioned: {} registered, {} linked, {} contact lookups, {} groups created{}",
                    outcome.provisioning.registered,
                    outcome.provisioning.linked,
                    outcome.provisioning.contacts_looked_up,
                    outcome.provisioning.groups_created,
                    if outcome.provisioning.reused {
                        " (already complete)"
                    } else {
                        ""
                    }
                );
                ExitCode::SUCCESS
            }
        },
        Err(err) => {
            eprintln!("rossby-loadtest: {err}");
            match err {
                Error::Scenario(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// `rossby-loadtest merge`: the merged table and final line on stdout; exit
/// code 0 passed, 1 failed or could not write, 2 reports that cannot be merged.
fn merge_reports(merge: &MergeArgs) -> ExitCode {
    let json = merge
        .report
        .clone()
        .unwrap_or_else(|| merge.out.join("merged-report.json"));
    let svg = merge
        .svg
        .clone()
        .unwrap_or_else(|| merge.out.join("merged-latency.svg"));
    match rossby_loadtest::merge::merge_and_write(&merge.reports, &json, &svg) {
        Ok(report) => {
            print!("{}", rossby_loadtest::report::table(&report));
            println!("{}", report.final_line);
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("rossby-loadtest: {err}");
            match err {
                Error::Merge(_) | Error::Io { .. } => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
