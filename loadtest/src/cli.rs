//! The command line of `rossby-loadtest`. Scenario flags override the scenario
//! file (`--scenario`), which overrides the defaults.

use crate::error::{Error, Result};
use crate::generator::GeneratorSpec;
use crate::local::LocalOptions;
use crate::progress::ProgressMode;
use crate::scenario::{Overrides, Scenario, ScenarioFile};
use crate::units::parse_duration;
use crate::{DEFAULT_OUTPUT_DIR, Mode, Options, Phase, RemoteOptions};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far ahead `--start-at` may lie.
const MAX_START_AHEAD: Duration = Duration::from_secs(24 * 3600);

/// Command-line flags.
#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "rossby-loadtest",
    version,
    about = "Open-loop load test of Rossby gateways across regions, with exact delivery accounting",
    long_about = "Drives one SDK client per device (real encryption and state files), sends on a fixed \
schedule, checks that every message is decrypted exactly once on every recipient device, and reports \
latency per operation and region pair. Exit code 0: passed; 1: failed (lost, duplicated or corrupted \
deliveries, a rate below 90 % of the asked one, or an error); 2: invalid options. docs/loadtest.md has the details.",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// A command other than running a load test.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Scenario file (TOML); flags override its keys.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Topology file (TOML or JSON): the regions and their gateways.
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,

    // ---- local mode ----
    /// Start one gateway per region of the topology in this process, on loopback
    /// (the topology's addresses are ignored), over a fresh store in a temporary
    /// directory, and stop them at the end.
    #[arg(long)]
    pub local: bool,
    /// Local mode: delay storage by the topology's simulated WAN round trips.
    #[arg(long, requires = "local")]
    pub wan_sim: bool,
    /// Local mode: the store.
    #[arg(long, value_enum, default_value_t = StoreArg::Fjall, requires = "local")]
    pub store: StoreArg,

    // ---- scenario ----
    /// Users homed in each region.
    #[arg(long, value_name = "N")]
    pub users_per_region: Option<u32>,
    /// Devices per user (the first registers, the others are linked).
    #[arg(long, value_name = "N")]
    pub devices_per_user: Option<u32>,
    /// Contacts per user (1:1 partners, half in the own region).
    #[arg(long, value_name = "N")]
    pub contacts_per_user: Option<u32>,
    /// Message sizes: weighted buckets, e.g. 64-512:80,1024-4096:18,16384:2.
    #[arg(long, value_name = "SPEC")]
    pub sizes: Option<String>,
    /// Sends per second, all regions together.
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// Measured period, e.g. 20s or 5m.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Period before it: sent and accounted, not measured.
    #[arg(long, value_name = "DURATION")]
    pub warmup: Option<String>,
    /// Longest wait for outstanding deliveries after the last send.
    #[arg(long, value_name = "DURATION")]
    pub drain: Option<String>,
    /// Shares of send kinds, e.g. same=45,cross=45,group=10.
    #[arg(long, value_name = "SPEC")]
    pub mix: Option<String>,
    /// Number of MLS groups.
    #[arg(long, value_name = "N")]
    pub groups: Option<u32>,
    /// Members (users) per group.
    #[arg(long, value_name = "N")]
    pub group_members: Option<u32>,
    /// push, or poll:INTERVAL (e.g. poll:500ms).
    #[arg(long, value_name = "MODE")]
    pub fetch: Option<String>,
    /// Push mode: also fetch this often (a duration), or off.
    #[arg(long, value_name = "DURATION")]
    pub fallback_poll: Option<String>,
    /// Seed of the send schedule.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Most sends pending at once; later ones are skipped and counted.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,

    // ---- remote gateways ----
    /// Directory of the devices' state files (remote mode) [default: rossby-loadtest-state].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The codes file the gateways' `file:` verifier appends to (to register users).
    #[arg(long, value_name = "FILE")]
    pub codes: Option<PathBuf>,
    /// The gateways' certificate or CA to pin (PEM or DER) [default: web PKI].
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The deployment's service name, host:port [default: rossby:7400].
    #[arg(long, value_name = "HOST:PORT")]
    pub service_name: Option<String>,
    /// Which phases to run.
    #[arg(long, value_enum, default_value_t = PhaseArg::All)]
    pub phase: PhaseArg,
    /// Bound on provisioning.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub provision_timeout: String,

    // ---- several generators ----
    /// Be generator I of N (e.g. 0/3): drive only this generator's share of the
    /// devices (with N generators for N regions, region I's) and send only
    /// their sends; needs --phase run and --start-at. Merge the N reports with
    /// `rossby-loadtest merge`.
    #[arg(long, value_name = "I/N")]
    pub generator: Option<GeneratorSpec>,
    /// When the schedule starts, in seconds since the Unix epoch (e.g. `date
    /// -d '+2 min' +%s`): the same for every generator of a run.
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub start_at: Option<String>,

    // ---- output ----
    /// Directory of the report and picture.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_OUTPUT_DIR)]
    pub out: PathBuf,
    /// The JSON report [default: <out>/report.json].
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// The SVG picture [default: <out>/latency.svg].
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Progress display on stderr.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
    /// Log filter for stderr (tracing syntax).
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    pub log_level: String,
}

/// Commands besides running a load test.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Merge the JSON reports of every generator of one run (`--generator
    /// I/N`) into one report, summary table, final line and picture.
    Merge(MergeArgs),
}

/// `rossby-loadtest merge`.
#[derive(clap::Args, Debug, Clone)]
pub struct MergeArgs {
    /// The generators' JSON reports, one per generator, in any order.
    #[arg(required = true, value_name = "REPORT")]
    pub reports: Vec<PathBuf>,
    /// Directory of the merged report and picture.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_OUTPUT_DIR)]
    pub out: PathBuf,
    /// The merged JSON report [default: <out>/merged-report.json].
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// The merged SVG picture [default: <out>/merged-latency.svg].
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// Parses `--start-at`: seconds since the Unix epoch, not in the past (one
/// second of slack) and at most a day ahead.
pub fn parse_start_at(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds since the Unix epoch"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e11 {
        return Err(format!(
            "{text:?} is not a time since the Unix epoch in seconds"
        ));
    }
    let at = UNIX_EPOCH + Duration::from_secs_f64(secs);
    if at + Duration::from_secs(1) < now {
        return Err(format!(
            "{text} is already past: pick a time a little after every generator will have started"
        ));
    }
    if at.duration_since(now).unwrap_or_default() > MAX_START_AHEAD {
        return Err(format!("{text} is more than a day ahead"));
    }
    Ok(at)
}

/// `--store`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum StoreArg {
    /// The durable embedded store (group commit), as a gateway runs by default.
    #[default]
    Fjall,
    /// The in-memory store.
    Memory,
}

/// `--phase`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    /// Provision what is missing, then run.
    #[default]
    All,
    /// Only provision the state directory.
    Provision,
    /// Only run (the state directory must be provisioned).
    Run,
}

/// `--progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    /// A live line on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Plain lines.
    Plain,
    /// None.
    Quiet,
}

impl Args {
    /// The scenario overrides these flags carry.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            scenario_file: self.scenario.clone(),
            settings: ScenarioFile {
                topology: self.topology.clone(),
                users_per_region: self.users_per_region,
                devices_per_user: self.devices_per_user,
                contacts_per_user: self.contacts_per_user,
                sizes: self.sizes.clone(),
                rate: self.rate,
                duration: self.duration.clone(),
                warmup: self.warmup.clone(),
                drain: self.drain.clone(),
                mix: self.mix.clone(),
                groups: self.groups,
                group_members: self.group_members,
                fetch: self.fetch.clone(),
                fallback_poll: self.fallback_poll.clone(),
                seed: self.seed,
                max_in_flight: self.max_in_flight,
            },
        }
    }

    /// Builds the options (reading the scenario and topology files).
    pub fn into_options(self, command: String) -> Result<Options> {
        let scenario = Scenario::load(&self.overrides())?;
        let provision_timeout = parse_duration(&self.provision_timeout)
            .map_err(|e| Error::Scenario(format!("--provision-timeout: {e}")))?;
        let start_at = match &self.start_at {
            Some(t) => Some(
                parse_start_at(t, SystemTime::now())
                    .map_err(|e| Error::Scenario(format!("--start-at: {e}")))?,
            ),
            None => None,
        };
        let mode = if self.local {
            if self.codes.is_some() || self.ca_cert.is_some() || self.service_name.is_some() {
                return Err(Error::Scenario(
                    "--codes, --ca-cert and --service-name are for remote gateways, not --local"
                        .into(),
                ));
            }
            Mode::Local(LocalOptions {
                wan_sim: self.wan_sim,
                memory_store: self.store == StoreArg::Memory,
            })
        } else {
            Mode::Remote(RemoteOptions {
                ca_cert: self.ca_cert,
                service_name: self.service_name,
                codes: self.codes,
            })
        };
        Ok(Options {
            scenario,
            mode,
            phase: match self.phase {
                PhaseArg::All => Phase::All,
                PhaseArg::Provision => Phase::Provision,
                PhaseArg::Run => Phase::Run,
            },
            state_dir: self.state_dir,
            output_dir: self.out,
            report_path: self.report,
            svg_path: self.svg,
            provision_timeout,
            progress: match self.progress {
                ProgressArg::Auto => ProgressMode::Auto,
                ProgressArg::Plain => ProgressMode::Plain,
                ProgressArg::Quiet => ProgressMode::Quiet,
            },
            command,
            generator: self.generator.unwrap_or_default(),
            start_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_command_line_parses() {
        let args = Args::try_parse_from([
            "rossby-loadtest",
            "--local",
            "--topology",
            "../docs/examples/three-regions.toml",
            "--rate",
            "200",
            "--duration",
            "20s",
        ])
        .unwrap();
        assert!(args.local);
        let options = args.into_options("x".into()).unwrap();
        assert_eq!(options.scenario.rate, 200.0);
        assert_eq!(options.scenario.topology.regions().len(), 3);
        assert!(matches!(
            options.mode,
            Mode::Local(LocalOptions { wan_sim: false, .. })
        ));
        assert_eq!(options.phase, Phase::All);
    }

    #[test]
    fn generator_flags_and_merge_parse() {
        let args = Args::try_parse_from([
            "rossby-loadtest",
            "--topology",
            "../docs/examples/three-regions.toml",
            "--phase",
            "run",
            "--generator",
            "2/3",
        ])
        .unwrap();
        assert_eq!(args.generator, Some(GeneratorSpec { index: 2, count: 3 }));
        for bad in ["3/3", "1/0", "x"] {
            assert!(
                Args::try_parse_from(["rossby-loadtest", "--generator", bad]).is_err(),
                "{bad}"
            );
        }
        let merge = Args::try_parse_from(["rossby-loadtest", "merge", "a.json", "b.json"]).unwrap();
        let Some(Command::Merge(m)) = merge.command else {
            panic!("not a merge");
        };
        assert_eq!(m.reports.len(), 2);
        assert!(Args::try_parse_from(["rossby-loadtest", "merge"]).is_err());
    }

    #[test]
    fn start_times_are_checked() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = parse_start_at("1700000030", now).unwrap();
        assert_eq!(at, now + Duration::from_secs(30));
        assert!(parse_start_at("1700000000.5", now).is_ok());
        for (bad, word) in [
            ("1699999990", "past"),
            ("1800000000", "day ahead"),
            ("soon", "not a number"),
            ("-5", "not a time"),
            ("NaN", "not a time"),
        ] {
            let err = parse_start_at(bad, now).unwrap_err();
            assert!(err.contains(word), "{bad}: {err}");
        }
    }

    #[test]
    fn wan_sim_needs_local_and_remote_flags_need_remote() {
        assert!(Args::try_parse_from(["rossby-loadtest", "--wan-sim"]).is_err());
        let args = Args::try_parse_from([
            "rossby-loadtest",
            "--local",
            "--codes",
            "c.txt",
            "--topology",
            "../docs/examples/three-regions.toml",
        ])
        .unwrap();
        let err = args.into_options(String::new()).unwrap_err();
        assert!(err.to_string().contains("remote"), "{err}");
    }
}
