//! `rossby-admin`: operator commands of a Rossby deployment.
//!
//! Output meant for people and scripts goes to stdout; every failure exits
//! non-zero with one line `rossby-admin: <reason>` on stderr. Exit codes: 0 done,
//! 1 failed, 2 invalid options, and 3 when `placement check` finds a Region
//! that breaks its placement rules or `fleet status` a gateway that is not
//! ready.

use clap::{Parser, Subcommand};
use rossby_admin::pd::{DEFAULT_PD_TIMEOUT, PdClient};
use rossby_admin::placement::{check_pd, plan_file, plan_topology, read_topology};
use rossby_admin::{Error, Result};
use rossby_gateway::backup::{self, BackupArgs, RestoreArgs};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code of `placement check` when the placement breaks its rules, and of
/// `fleet status` when a gateway is not ready.
const EXIT_VIOLATION: u8 = 3;

/// Rossby operator commands: TiKV placement through PD, backup and restore,
/// the cross-region prober and the fleet's status.
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
    /// Run the cross-region prober of one region until SIGTERM or Ctrl-C.
    ///
    /// Every --interval it sends a probe from this region's prober account to
    /// every region's prober account and fetches the probes sent to its own,
    /// exporting delivery latency, send latency, failures and missing probes
    /// per (from, to) region pair on --metrics-listen (/metrics). Run one per
    /// region. The first run registers the region's account (needs
    /// --codes-file); later runs reuse the state in --state-dir.
    Prober(ProberArgs),
    /// The state of every gateway of a deployment.
    #[command(subcommand)]
    Fleet(FleetCommand),
}

/// `rossby-admin fleet ...`.
#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Probe every gateway of a topology over its admin port, in parallel.
    ///
    /// Prints one row per gateway: readiness (and why not), version,
    /// certificate expiry, peer-link health, and the request and error rates
    /// measured between two scrapes of /metrics --sample seconds apart. Exit
    /// codes: 0 every gateway is ready, 3 one is not ready or down, 1 the
    /// status could not be taken, 2 invalid options.
    Status {
        /// The topology file (TOML, or JSON) naming the gateways' admin
        /// addresses.
        #[arg(long, value_name = "FILE")]
        topology: PathBuf,
        /// Seconds between the two scrapes the rates come from.
        #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
        sample: f64,
        /// Give up on a gateway's request after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
        timeout: f64,
        /// Print the status as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `rossby-admin prober`.
#[derive(Debug, clap::Args)]
struct ProberArgs {
    /// The topology file (TOML, or JSON): the regions probed.
    #[arg(long, value_name = "FILE")]
    topology: PathBuf,
    /// This prober's region (a region name of the topology).
    #[arg(long, value_name = "NAME", env = "ROSSBY_PROBER_REGION")]
    region: String,
    /// QUIC address (HOST:PORT) of the gateway to talk to; default: the
    /// region's first gateway in the topology.
    #[arg(long, value_name = "HOST:PORT")]
    gateway: Option<String>,
    /// The name the gateway's certificate is checked against; default: the
    /// gateway's host name.
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Gateway certificate to pin (PEM or DER); default: the web PKI roots.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Directory of the prober accounts' state files (and their key files).
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// Identifier of each region's prober accounts; {region} is replaced by
    /// the region's name, {role} by `send` (the account probes are sent from)
    /// or `recv` (the account they are sent to).
    #[arg(long, value_name = "TEMPLATE", default_value = rossby_admin::prober::DEFAULT_ACCOUNT_TEMPLATE)]
    account: String,
    /// File of `<identifier> <code>` lines to read the verification code from
    /// when the account must be registered (the gateways' `file:` verifier
    /// output, or a file the operator writes the webhook's code into).
    #[arg(long, value_name = "FILE")]
    codes_file: Option<PathBuf>,
    /// How long to wait for the code to appear in --codes-file.
    #[arg(long, value_name = "SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
    code_wait: u64,
    /// Register the region's two accounts if needed, then exit.
    #[arg(long)]
    provision_only: bool,
    /// Seconds between probes to each region.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    interval: f64,
    /// A probe not received this many seconds after its send counts as missing.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    deadline: f64,
    /// A send not confirmed within this many seconds counts as failed.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    timeout: f64,
    /// Where to serve /metrics (and /livez).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7410")]
    metrics_listen: SocketAddr,
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
        Command::Prober(args) => prober(args).await,
        Command::Fleet(FleetCommand::Status {
            topology,
            sample,
            timeout,
            json,
        }) => {
            let topology = read_topology(&topology)?;
            let options = rossby_admin::fleet::Options {
                sample: seconds("sample", sample)?,
                timeout: seconds("timeout", timeout)?,
            };
            let report = rossby_admin::fleet::status(&topology, options).await;
            if json {
                out(serde_json::to_string_pretty(&report).map_err(|e| {
                    Error::Invalid(format!("cannot render the status as JSON: {e}"))
                })?)?;
            } else {
                out(report.to_string())?;
            }
            Ok(if report.all_ready() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_VIOLATION)
            })
        }
    }
}

fn seconds(name: &str, value: f64) -> Result<Duration> {
    if !(value.is_finite() && value > 0.0 && value <= 86400.0) {
        return Err(Error::Invalid(format!(
            "--{name} must be a number of seconds between 0 and 86400, not {value}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

async fn prober(args: ProberArgs) -> Result<ExitCode> {
    use rossby_admin::prober::{Prober, ProberConfig, Role, open_account};
    let topology = read_topology(&args.topology)?;
    let Some(region) = topology.region_named(&args.region) else {
        let names: Vec<&str> = topology.regions().iter().map(|r| r.name.as_str()).collect();
        return Err(Error::Invalid(format!(
            "region {:?} is not in {} (it names {})",
            args.region,
            args.topology.display(),
            names.join(", ")
        )));
    };
    let written = match &args.gateway {
        Some(g) => g.clone(),
        None => region
            .gateways
            .first()
            .map(|g| g.quic.clone())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "region {:?} has no gateway in {}: pass --gateway",
                    args.region,
                    args.topology.display()
                ))
            })?,
    };
    let gateway = tokio::net::lookup_host(written.as_str())
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Invalid(format!("cannot resolve the gateway {written:?}")))?;
    let host = written
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string());
    let server_name = args.server_name.clone().or(host);
    let ca_cert_der = match &args.ca_cert {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| Error::Io {
                what: "cannot read certificate",
                path: path.clone(),
                source: e,
            })?;
            Some(
                rossby_client::connection::parse_certificate(&bytes)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?,
            )
        }
        None => None,
    };
    let config = ProberConfig {
        topology,
        region: args.region.clone(),
        gateway,
        server_name,
        ca_cert_der,
        state_dir: args.state_dir.clone(),
        account_template: args.account.clone(),
        codes_file: args.codes_file.clone(),
        code_wait: Duration::from_secs(args.code_wait),
        interval: seconds("interval", args.interval)?,
        deadline: seconds("deadline", args.deadline)?,
        timeout: seconds("timeout", args.timeout)?,
    };
    if args.provision_only {
        for role in [Role::Send, Role::Recv] {
            let client = open_account(&config, role).await?;
            client.close().await;
            out(format!(
                "prober account {} of region {} is provisioned in {}",
                config.account(&config.region, role),
                config.region,
                config.state_dir.display()
            ))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let prober = Prober::start(config, args.metrics_listen).await?;
    out(format!(
        "prober of region {} running; metrics on http://{}/metrics",
        args.region,
        prober.metrics_addr()
    ))?;
    stopped().await;
    prober.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
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
            &[
                "prober",
                "--topology",
                "t.toml",
                "--region",
                "eu-west",
                "--state-dir",
                "/var/lib/rossby-prober",
            ],
            &[
                "prober",
                "--topology",
                "t.toml",
                "--region",
                "eu-west",
                "--state-dir",
                "d",
                "--codes-file",
                "codes.txt",
                "--provision-only",
                "--interval",
                "0.5",
                "--metrics-listen",
                "0.0.0.0:7410",
            ],
            &["fleet", "status", "--topology", "t.toml"],
            &[
                "fleet",
                "status",
                "--topology",
                "t.toml",
                "--json",
                "--sample",
                "0.5",
                "--timeout",
                "2",
            ],
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
            &["prober", "--topology", "t.toml", "--state-dir", "d"],
            &["fleet", "status"],
            &["fleet", "status", "--topology", "t", "--sample", "soon"],
            &[
                "prober",
                "--topology",
                "t.toml",
                "--region",
                "r",
                "--state-dir",
                "d",
                "--metrics-listen",
                "nowhere",
            ],
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
