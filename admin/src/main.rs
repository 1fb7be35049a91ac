//! `rossby-admin`: operator commands of a Rossby deployment.
//!
//! Output meant for people and scripts goes to stdout; every failure exits
//! non-zero with one line `rossby-admin: <reason>` on stderr. Exit codes: 0 done,
//! 1 failed, 2 invalid options, and for `placement check` 3 when a Region breaks
//! its placement rules.

use clap::{Parser, Subcommand};
use rossby_admin::pd::{DEFAULT_PD_TIMEOUT, PdClient};
use rossby_admin::placement::{check_pd, plan_file, plan_topology, read_topology};
use rossby_admin::{Error, Result};
use rossby_gateway::backup::{self, BackupArgs, RestoreArgs};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code of `placement check` when the placement breaks its rules.
const EXIT_VIOLATION: u8 = 3;

/// Rossby operator commands: TiKV placement through PD, backup and restore.
#[derive(Debug, Parser)]
#[command(name = "rossby-admin", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Plan TiKV placement from a topology file, send it to PD, or check PD's
    /// layout against it.
    #[command(subcommand)]
    Placement(PlacementCommand),
    /// Take a consistent backup of a running gateway's embedded store through its
    /// admin port.
    Backup(BackupArgs),
    /// Restore a backup into a new, empty embedded store (with the gateway
    /// stopped), or only verify it with --check.
    Restore(RestoreArgs),
}

/// `rossby-admin placement ...`.
#[derive(Debug, Subcommand)]
enum PlacementCommand {
    /// Print the placement rules and the expected latencies of a topology.
    ///
    /// Prints the rules summary, the expected commit latency per home region and
    /// the latency of a cross-region send per region pair, then the rules as the
    /// JSON PD accepts (written to --rules-out instead, when given).
    Plan {
        /// The topology file (TOML, or JSON).
        #[arg(long, value_name = "FILE")]
        topology: PathBuf,
        /// Write the rules JSON to this file instead of printing it.
        #[arg(long, value_name = "FILE")]
        rules_out: Option<PathBuf>,
    },
    /// Send the placement rules of a topology to PD and check that PD holds them.
    Apply {
        /// The topology file (TOML, or JSON).
        #[arg(long, value_name = "FILE")]
        topology: PathBuf,
        /// PD's client URL, e.g. http://10.0.1.20:2379 (plain http only).
        #[arg(long, value_name = "URL", env = "ROSSBY_PD")]
        pd: String,
        /// Give up on a request to PD after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_PD_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
    },
    /// Check that PD placed every Region's leader and voters where the rules of a
    /// topology want them.
    ///
    /// Reads PD's Regions and stores, maps the Regions to Rossby's key ranges and
    /// prints, per range, the share of leaders and voters placed as planned, then
    /// every Region that is not. Exit codes: 0 every Region complies, 3 a Region
    /// breaks its rules, 1 the check could not run, 2 invalid options.
    Check {
        /// PD's client URL or HOST:PORT (plain http only).
        #[arg(long, value_name = "URL", env = "ROSSBY_PD")]
        pd: String,
        /// The topology file (TOML, or JSON) whose rules were applied.
        #[arg(long, value_name = "FILE")]
        topology: PathBuf,
        /// Give up on a request to PD after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(2)
                }
                _ => {
                    eprintln!("rossby-admin: {}", one_line(&e.render().to_string()));
                    ExitCode::from(2)
                }
            };
        }
    };
    init_logs();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rossby-admin: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rossby-admin: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// Warnings of the library code (e.g. a failed backup that could not be removed)
/// go to stderr; stdout carries only the commands' output.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Clap's multi-line usage error as one line (without the `--help` hint).
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn out(text: impl AsRef<str>) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", text.as_ref())
        .and_then(|()| stdout.flush())
        .map_err(|source| Error::Io {
            what: "cannot write to",
            path: PathBuf::from("stdout"),
            source,
        })
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Placement(command) => placement(command).await,
        Command::Backup(args) => {
            out(backup::run_backup(&args).await?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore(args) => {
            out(backup::run_restore(&args).await?)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn placement(command: PlacementCommand) -> Result<ExitCode> {
    match command {
        PlacementCommand::Plan {
            topology,
            rules_out,
        } => {
            let plan = plan_file(&topology)?;
            out(plan.to_string().trim_end())?;
            let rules = plan.rules_json();
            match rules_out {
                Some(path) => {
                    std::fs::write(&path, format!("{rules}\n")).map_err(|e| Error::Io {
                        what: "cannot write rules file",
                        path: path.clone(),
                        source: e,
                    })?;
                    out(format!("\nrules written to {}", path.display()))?;
                }
                None => {
                    out(
                        "\nPD placement rules (POST /pd/api/v1/config/placement-rule?partial=true):",
                    )?;
                    out(rules)?;
                }
            }
        }
        PlacementCommand::Apply {
            topology,
            pd,
            timeout,
        } => {
            let plan = plan_file(&topology)?;
            let client = PdClient::new(&pd, Duration::from_secs(timeout))?;
            out(client.apply(&plan).await?.to_string())?;
        }
        PlacementCommand::Check {
            pd,
            topology: path,
            timeout,
            json,
        } => {
            let topology = read_topology(&path)?;
            let plan = plan_topology(&topology, &path)?;
            let client = PdClient::new(&pd, Duration::from_secs(timeout))?;
            let report = check_pd(&client, &topology, &plan).await?;
            if json {
                let text = serde_json::to_string_pretty(&report).map_err(|e| {
                    Error::Invalid(format!("cannot render the report as JSON: {e}"))
                })?;
                out(text)?;
            } else {
                out(report.to_string())?;
            }
            if !report.complies() {
                return Ok(ExitCode::from(EXIT_VIOLATION));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rossby-admin").chain(args.iter().copied()))
    }

    #[test]
    fn every_documented_subcommand_parses() {
        let ok: &[&[&str]] = &[
            &["placement", "plan", "--topology", "t.toml"],
            &[
                "placement",
                "plan",
                "--topology",
                "t.toml",
                "--rules-out",
                "r.json",
            ],
            &[
                "placement",
                "apply",
                "--topology",
                "t.toml",
                "--pd",
                "http://pd:2379",
            ],
            &[
                "placement",
                "apply",
                "--topology",
                "t.json",
                "--pd",
                "pd:2379",
                "--timeout",
                "3",
            ],
            &[
                "placement",
                "check",
                "--pd",
                "pd:2379",
                "--topology",
                "t.toml",
            ],
            &[
                "placement",
                "check",
                "--pd",
                "http://pd:2379",
                "--topology",
                "t.toml",
                "--json",
                "--timeout",
                "5",
            ],
            &["backup", "--out", "/backups/x"],
            &[
                "backup",
                "--admin",
                "10.0.0.1:7401",
                "--secret-file",
                "s",
                "--out",
                "o",
            ],
            &["restore", "--from", "b", "--check"],
            &["restore", "--from", "b", "--store-dir", "s"],
        ];
        for args in ok {
            parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        let bad: &[&[&str]] = &[
            &[],
            &["placement"],
            &["placement", "plan"],
            &["placement", "check", "--topology", "t.toml", "--pd"],
            &[
                "placement",
                "apply",
                "--topology",
                "t.toml",
                "--pd",
                "pd",
                "--timeout",
                "0",
            ],
            &[
                "placement",
                "apply",
                "--topology",
                "t.toml",
                "--timeout",
                "soon",
            ],
            &["backup"],
            &["restore", "--from", "b"],
            &["restore", "--from", "b", "--check", "--store-dir", "s"],
            &["frobnicate"],
        ];
        for args in bad {
            assert!(parse(args).is_err(), "{args:?} should not parse");
        }
    }

    #[test]
    fn clap_errors_become_one_line() {
        let e = parse(&["placement", "plan"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(
            !line.contains('\n') && line.contains("--topology"),
            "{line}"
        );
    }
}
