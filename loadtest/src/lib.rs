//! `rossby-loadtest`: Rossby's multi-region load generator.
//!
//! It drives one real SDK client ([`rossby_client::Client`], real encryption,
//! real state files) per device of a population of users spread over the
//! regions of a topology, sends on an open-loop schedule (send `i` is due at
//! `i / rate`, latency counts from the due time), and checks that every message
//! is decrypted exactly once by every device of every recipient.
//!
//! - [`scenario`]: the scenario from flags and a TOML file, validated;
//! - [`plan`]: the population (users, devices, contacts, groups) and the
//!   deterministic send schedule;
//! - [`provision`]: the resumable provisioning phase (register, authorize, link
//!   devices, look up contacts, create groups) into a state directory;
//! - [`runner`]: settle, listen (push or polling), send, drain;
//! - [`ledger`]: exact delivery accounting; [`payload`]: the checksummed text
//!   that makes it possible;
//! - [`stats`]: HdrHistograms per operation and region pair, errors by status;
//!   [`procstat`]: CPU and memory from `/proc/self`;
//! - [`report`]: verdict, JSON, summary table and final line; [`svg`]: the
//!   latency picture; [`progress`]: the live display;
//! - [`local`]: local mode (gateways of every region in this process);
//!   [`target`]: the gateways a run may talk to;
//! - [`generator`]: one generator of several (`--generator i/N`), each
//!   driving its share of the devices; [`merge`]: their reports put together;
//! - [`cli`]: the command line.
//!
//! [`execute`] runs everything; the binary is a thin wrapper around it.

pub mod cli;
pub mod error;
pub mod generator;
pub mod ledger;
pub mod local;
pub mod merge;
pub mod payload;
pub mod plan;
pub mod procstat;
pub mod progress;
pub mod provision;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod stats;
pub mod svg;
pub mod target;
#[cfg(test)]
pub(crate) mod testkit;
pub mod units;

pub use error::{Error, Result};
pub use report::Report;
pub use scenario::Scenario;

use generator::{GeneratorSpec, Split};
use plan::Population;
use progress::{Progress, ProgressMode};
use rossby_protocol::hawk::ServiceName;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the gateways come from.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Start them here, on loopback ([`local`]).
    Local(local::LocalOptions),
    /// Use the topology's gateways.
    Remote(RemoteOptions),
}

/// How to reach remote gateways and register users there.
#[derive(Clone, Debug, Default)]
pub struct RemoteOptions {
    /// The gateways' certificate or CA to pin (PEM or DER); `None`: web PKI.
    pub ca_cert: Option<PathBuf>,
    /// The deployment's service name (`host:port`); `None`: the default.
    pub service_name: Option<String>,
    /// The codes file the gateways' `file:` verifier writes (provisioning).
    pub codes: Option<PathBuf>,
}

/// Which phases to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Provision what is missing, then run.
    All,
    /// Only provision.
    Provision,
    /// Only run; the state directory must be provisioned.
    Run,
}

/// Everything [`execute`] needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The scenario.
    pub scenario: Scenario,
    /// Local or remote gateways.
    pub mode: Mode,
    /// Phases.
    pub phase: Phase,
    /// The devices' state files (remote mode; local mode uses a temporary one).
    pub state_dir: Option<PathBuf>,
    /// Directory of the report and picture.
    pub output_dir: PathBuf,
    /// The JSON report (default `<output_dir>/report.json`).
    pub report_path: Option<PathBuf>,
    /// The picture (default `<output_dir>/latency.svg`).
    pub svg_path: Option<PathBuf>,
    /// Bound on provisioning.
    pub provision_timeout: Duration,
    /// The live display.
    pub progress: ProgressMode,
    /// The command line, for the report.
    pub command: String,
    /// Which generator of how many this process is ([`GeneratorSpec::SOLE`]:
    /// the whole run).
    pub generator: GeneratorSpec,
    /// When the schedule starts (the same for every generator of a split run);
    /// `None`: as soon as every device listens.
    pub start_at: Option<SystemTime>,
}

/// Default state directory of remote runs.
pub const DEFAULT_STATE_DIR: &str = "rossby-loadtest-state";
/// Default output directory.
pub const DEFAULT_OUTPUT_DIR: &str = "loadtest-results";
/// Extra time the run's hard deadline allows beyond its phases' own bounds.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(30);

/// What [`execute`] produced.
#[derive(Debug)]
pub struct Outcome {
    /// The run's report (`None` when only provisioning ran).
    pub report: Option<Report>,
    /// What provisioning did.
    pub provisioning: provision::Summary,
}

/// The hard deadline of the run phase: warm-up + duration + drain plus the
/// bounded set-up and shutdown steps and a margin.
pub fn run_deadline(scenario: &Scenario) -> Duration {
    scenario.warmup + scenario.duration + scenario.drain + runner::SETUP_LIMIT + DEADLINE_MARGIN
}

/// How long from now until an agreed start time (zero when none or past).
pub fn wait_for_start(start_at: Option<SystemTime>) -> Duration {
    start_at
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .unwrap_or_default()
}

/// Checks the options of one generator of several.
fn check_generator(options: &Options) -> Result<()> {
    let spec = options.generator;
    if !spec.is_split() {
        return Ok(());
    }
    if matches!(options.mode, Mode::Local(_)) {
        return Err(Error::Scenario(format!(
            "--generator {spec} splits a run over processes that share the gateways: it does not apply to --local (start the deployment separately)"
        )));
    }
    if options.phase != Phase::Run {
        return Err(Error::Scenario(format!(
            "--generator {spec} needs --phase run and a provisioned state directory: provision it once with --phase provision (without --generator), copy it to every generator host, then start every generator"
        )));
    }
    if options.start_at.is_none() {
        return Err(Error::Scenario(format!(
            "--generator {spec} needs --start-at, the same for every generator, so their schedules line up"
        )));
    }
    Ok(())
}

/// Runs the phases `options` asks for: starts the local deployment (local
/// mode), provisions, runs, shuts down, and writes the report and picture.
/// Builds its own runtimes: call it from outside any async runtime.
pub fn execute(options: Options) -> Result<Outcome> {
    check_generator(&options)?;
    let local_mode = matches!(options.mode, Mode::Local(_));
    if local_mode && (options.state_dir.is_some() || options.phase != Phase::All) {
        return Err(Error::Scenario(
            "--local starts a fresh deployment each time: --state-dir and --phase do not apply"
                .into(),
        ));
    }
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(procstat::CLIENT_THREAD_PREFIX)
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let progress = Progress::new(options.progress);
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));

    // The gateways: started here, or the topology's.
    let mut gateway_rt = None;
    let mut local = None;
    let (targets, codes, target_report) = match &options.mode {
        Mode::Local(local_options) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("lt-gateway")
                .enable_all()
                .build()
                .map_err(Error::Runtime)?;
            let started = rt.block_on(local::start(&options.scenario, *local_options))?;
            let report = target_report(
                &options.scenario,
                &started.targets,
                true,
                local_options.wan_sim,
                Some(&started),
            );
            progress.note(&format!(
                "local deployment: {} (cross-gateway push {}, {} store in {})",
                report
                    .regions
                    .iter()
                    .map(|r| format!("{} {}", r.name, r.gateways.join(",")))
                    .collect::<Vec<_>>()
                    .join(", "),
                if started.peer_push { "on" } else { "off" },
                report.store,
                started.dir.path().display()
            ));
            let out = (started.targets.clone(), Some(started.codes.clone()), report);
            local = Some(started);
            gateway_rt = Some(rt);
            out
        }
        Mode::Remote(remote) => {
            let ca = match &remote.ca_cert {
                Some(path) => {
                    let bytes = std::fs::read(path)
                        .map_err(|e| Error::io("cannot read certificate", path, e))?;
                    Some(
                        rossby_client::connection::parse_certificate(&bytes).map_err(|e| {
                            Error::client(format!("certificate {}", path.display()), e)
                        })?,
                    )
                }
                None => None,
            };
            let service = match &remote.service_name {
                Some(s) => s
                    .parse::<ServiceName>()
                    .map_err(|e| Error::Scenario(format!("--service-name: {e}")))?,
                None => ServiceName::default(),
            };
            let targets = client_rt.block_on(target::Targets::resolve(
                &options.scenario.topology,
                ca,
                service,
                false,
            ))?;
            let report = target_report(&options.scenario, &targets, false, false, None);
            (targets, remote.codes.clone(), report)
        }
    };

    // Client states: a memory-backed temporary directory in local mode, so the
    // clients' state writes do not compete with the gateways' durable commits.
    let mut temp_state = None;
    let state_dir = match (&options.state_dir, local_mode) {
        (Some(dir), _) => dir.clone(),
        (None, true) => {
            let base = Path::new("/dev/shm");
            let builder_dir = if base.is_dir() {
                base.to_path_buf()
            } else {
                std::env::temp_dir()
            };
            let dir = tempfile::Builder::new()
                .prefix("rossby-loadtest-clients-")
                .tempdir_in(&builder_dir)
                .or_else(|_| {
                    tempfile::Builder::new()
                        .prefix("rossby-loadtest-clients-")
                        .tempdir()
                })
                .map_err(|e| Error::io("cannot create a temporary directory in", builder_dir, e))?;
            let path = dir.path().to_path_buf();
            temp_state = Some(dir);
            path
        }
        (None, false) => PathBuf::from(DEFAULT_STATE_DIR),
    };

    let stats = Arc::new(stats::Stats::default());
    let result = client_rt.block_on(phases(
        &options,
        &targets,
        &state_dir,
        codes,
        stats.clone(),
        &progress,
    ));

    // Shut down whatever was started, whatever happened.
    if let (Some(rt), Some(l)) = (gateway_rt.as_ref(), local.take()) {
        progress.note("stopping the local deployment...");
        let local::Local {
            deployment, dir, ..
        } = l;
        rt.block_on(deployment.shutdown());
        drop(dir);
    }
    if let Some(rt) = gateway_rt {
        rt.shutdown_timeout(Duration::from_secs(2));
    }
    client_rt.shutdown_timeout(Duration::from_secs(2));
    drop(temp_state);

    let (population, provisioning, outcome) = result?;
    let Some(outcome) = outcome else {
        return Ok(Outcome {
            report: None,
            provisioning,
        });
    };
    let mut report = report::build(report::Inputs {
        scenario: &options.scenario,
        population: &population,
        outcome: &outcome,
        stats: &stats,
        target: target_report,
        provisioning: provisioning.clone(),
        command: options.command.clone(),
        started_unix_ms,
        generator: options.generator,
    });
    let json_path = options
        .report_path
        .clone()
        .unwrap_or_else(|| options.output_dir.join("report.json"));
    let svg_path = options
        .svg_path
        .clone()
        .unwrap_or_else(|| options.output_dir.join("latency.svg"));
    report.files = report::Files {
        json: json_path.display().to_string(),
        svg: svg_path.display().to_string(),
    };
    let regions: Vec<String> = population.regions.iter().map(|r| r.name.clone()).collect();
    let picture = report::picture(&report, &stats.snapshot(), &regions);
    write_file(&svg_path, picture.as_bytes())?;
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Scenario(format!("cannot encode the report: {e}")))?;
    write_file(&json_path, json.as_bytes())?;
    Ok(Outcome {
        report: Some(report),
        provisioning,
    })
}

type PhasesResult = (Population, provision::Summary, Option<runner::RunOutcome>);

async fn phases(
    options: &Options,
    targets: &target::Targets,
    state_dir: &Path,
    codes: Option<PathBuf>,
    stats: Arc<stats::Stats>,
    progress: &Progress,
) -> Result<PhasesResult> {
    let scenario = &options.scenario;
    let manifest = provision::load_manifest(state_dir, scenario)?;
    if options.phase == Phase::Run && !manifest.complete {
        return Err(Error::StateDir {
            path: state_dir.to_path_buf(),
            reason: "it is not provisioned: run with --phase provision (or all) first".into(),
        });
    }
    let population = Population::build(scenario, &manifest.tag)?;
    let split = if options.generator.is_split() {
        Some(Split::new(&population, options.generator)?)
    } else {
        None
    };
    let run_id = options.start_at.map(|at| {
        generator::shared_run_id(
            &manifest.tag,
            scenario.seed,
            at.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            options.generator.count,
        )
    });
    let participation = runner::Participation {
        split: split.clone(),
        start_at: options.start_at,
        run_id,
    };
    if let Some(split) = &split {
        let started = std::time::Instant::now();
        let fleet =
            provision::open_fleet_part(&population, targets, state_dir, &manifest, |slot| {
                split.drives(slot)
            })
            .await?;
        progress.note(&format!(
            "generator {}: driving {} of {} devices from {}",
            options.generator,
            split.local_slots().len(),
            population.devices.len(),
            state_dir.display()
        ));
        let summary = provision::Summary {
            reused: true,
            seconds: started.elapsed().as_secs_f64(),
            ..provision::Summary::default()
        };
        return run_phase(
            options,
            population,
            fleet,
            summary,
            stats,
            progress,
            &participation,
        )
        .await;
    }
    progress.update(&format!(
        "provisioning {} users with {} devices each in {}...",
        population.users.len(),
        scenario.devices_per_user,
        state_dir.display()
    ));
    let (fleet, summary) = provision::provision(
        population.clone(),
        targets,
        state_dir,
        manifest,
        codes,
        stats.clone(),
        progress,
        options.provision_timeout,
    )
    .await?;
    progress.note(&format!(
        "provisioned: {} users, {} devices ({}; {:.1} s)",
        population.users.len(),
        population.devices.len(),
        if summary.reused {
            "reused".to_string()
        } else {
            format!(
                "{} registered, {} linked, {} contact lookups, {} groups",
                summary.registered,
                summary.linked,
                summary.contacts_looked_up,
                summary.groups_created
            )
        },
        summary.seconds
    ));
    if options.phase == Phase::Provision {
        close_all(&fleet).await;
        return Ok((population, summary, None));
    }
    run_phase(
        options,
        population,
        fleet,
        summary,
        stats,
        progress,
        &participation,
    )
    .await
}

/// Runs the scenario with an opened fleet, within the run's hard deadline.
async fn run_phase(
    options: &Options,
    population: Population,
    fleet: provision::Fleet,
    summary: provision::Summary,
    stats: Arc<stats::Stats>,
    progress: &Progress,
    participation: &runner::Participation,
) -> Result<PhasesResult> {
    let scenario = &options.scenario;
    let population = Arc::new(population);
    let deadline = run_deadline(scenario) + wait_for_start(participation.start_at);
    let run = runner::run(
        scenario,
        population.clone(),
        &fleet,
        stats,
        progress,
        participation,
    );
    let outcome = tokio::time::timeout(deadline, run).await;
    close_all(&fleet).await;
    let outcome = outcome.map_err(|_| Error::Deadline {
        phase: "the run",
        seconds: deadline.as_secs(),
    })?;
    let population = Arc::try_unwrap(population).unwrap_or_else(|p| (*p).clone());
    Ok((population, summary, Some(outcome)))
}

/// Closes every client's connection (bounded).
async fn close_all(fleet: &provision::Fleet) {
    let mut set = tokio::task::JoinSet::new();
    for c in fleet.clients.iter().flatten() {
        let c = c.clone();
        set.spawn(async move { c.close().await });
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    set.abort_all();
}

fn target_report(
    scenario: &Scenario,
    targets: &target::Targets,
    local_mode: bool,
    wan_sim: bool,
    local: Option<&local::Local>,
) -> report::Target {
    let regions = scenario
        .topology
        .regions()
        .iter()
        .zip(&targets.regions)
        .map(|(r, g)| report::TargetRegion {
            name: r.name.clone(),
            code: r.code.0,
            gateways: g.iter().map(|g| g.addr.to_string()).collect(),
        })
        .collect();
    report::Target {
        local: local_mode,
        wan_sim,
        store: match local {
            Some(_) if scenario_memory(local) => "memory".into(),
            Some(_) => "fjall".into(),
            None => String::new(),
        },
        cross_gateway_push: local.map(|l| l.peer_push),
        regions,
        rate_limits: local.map(|l| {
            serde_json::json!({
                "per_device_per_s": l.rate_limits.per_device.per_second,
                "per_ip_per_s": l.rate_limits.per_ip.per_second,
            })
        }),
    }
}

fn scenario_memory(local: Option<&local::Local>) -> bool {
    local.is_some_and(|l| l.memory_store)
}

/// Writes a file, creating its directory.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("cannot create", parent, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::io("cannot write", path, e))
}
