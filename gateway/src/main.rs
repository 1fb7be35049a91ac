//! `rossby-gateway`: the Rossby server process.
//!
//! Reads its configuration (TOML file, flags, `ROSSBY_*` variables; see
//! `docs/configuration.md`), starts a [`Gateway`], prints where it listens and the
//! certificate clients should pin, and drains gracefully on SIGTERM or Ctrl-C. A
//! second signal during the drain exits at once.
//!
//! Exit codes: 0 after a clean shutdown, 2 for invalid options, 1 when the gateway
//! cannot start, 130 when a second signal interrupts the drain.
//!
//! `rossby-gateway backup ...` and `rossby-gateway restore ...` (first argument)
//! are tools with their own options instead ([`rossby_gateway::backup`]): 0 done,
//! 1 failed, 2 invalid options. They are the same commands as `rossby-admin
//! backup` and `restore`, kept here for hosts that carry only the gateway.

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser};
use rossby_gateway::backup::{self, BackupArgs, RestoreArgs};
use rossby_gateway::config::{Args, Config, LogConfig, LogFormat};
use rossby_gateway::{Gateway, LocalDeployment};
use std::ffi::OsString;
use std::process::ExitCode;

/// glibc's malloc and free were 13.5 % of the gateway's CPU samples under load
/// (docs/performance.md); mimalloc's thread-local free lists suit its many small,
/// short-lived allocations across tokio workers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Shown at the end of the gateway's `--help`.
const SUBCOMMANDS_HELP: &str = "Tools (first argument; each has its own --help):
  rossby-gateway backup --out DIR       back up a running gateway's embedded store
  rossby-gateway restore --from DIR --store-dir DIR
                                        restore a backup into a new store (gateway stopped)";

fn main() -> ExitCode {
    private_file_modes();
    if let Some(code) = run_tool_command() {
        return code;
    }
    let parsed = Args::command()
        .after_help(SUBCOMMANDS_HELP)
        .try_get_matches()
        .and_then(|matches| Args::from_arg_matches(&matches));
    let args = match parsed {
        Ok(args) => args,
        Err(err) => return usage_exit(&err),
    };
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("rossby-gateway: error: {err}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config.log);
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    if config.local {
        runtime.block_on(run_local(config))
    } else {
        runtime.block_on(run(config))
    }
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

/// Everything the gateway writes (the store's files, secrets, codes, backups) is
/// for its own user only: files are created 0600 and directories 0700, whatever
/// the umask it was started with.
fn private_file_modes() {
    #[cfg(unix)]
    // SAFETY: umask(2) only sets the process's file-mode creation mask and cannot
    // fail; no other thread exists yet to race with.
    unsafe {
        libc::umask(0o077);
    }
}

/// Logs go to stderr (text or JSON lines); stdout carries only the start-up lines
/// below, so scripts can read the addresses and the fingerprint.
fn init_tracing(log: &LogConfig) {
    // The filter was validated with the configuration; "info" is a safe fallback.
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: Config) -> ExitCode {
    let gateway = match Gateway::start(config).await {
        Ok(gateway) => gateway,
        Err(err) => {
            tracing::error!(error = %err, "gateway failed to start");
            eprintln!("rossby-gateway: error: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "rossby-gateway quic={} admin={}",
        gateway.quic_addr(),
        gateway.admin_addr()
    );
    print_certificate(&gateway);
    drain_on_signal(gateway.shutdown()).await
}

/// Local multi-region mode: prints one line per region with its chosen addresses
/// and writes the topology naming them next to the store, for clients and load
/// tests.
async fn run_local(config: Config) -> ExitCode {
    let data_dir = config.data_dir.clone();
    let deployment = match LocalDeployment::start(config).await {
        Ok(deployment) => deployment,
        Err(err) => {
            tracing::error!(error = %err, "local deployment failed to start");
            eprintln!("rossby-gateway: error: {err}");
            return ExitCode::FAILURE;
        }
    };
    for local in deployment.gateways() {
        println!(
            "rossby-gateway region={} code={} quic={} admin={}",
            local.name,
            local.code,
            local.gateway.quic_addr(),
            local.gateway.admin_addr()
        );
    }
    // Every local gateway serves the same certificate.
    if let Some(first) = deployment.gateways().first() {
        print_certificate(&first.gateway);
    }
    let topology_path = data_dir.join("local-topology.json");
    match std::fs::write(&topology_path, deployment.topology().to_json()) {
        Ok(()) => println!("topology {}", topology_path.display()),
        Err(err) => {
            eprintln!(
                "rossby-gateway: warning: cannot write {}: {err}",
                topology_path.display()
            );
        }
    }
    drain_on_signal(deployment.shutdown()).await
}

/// The pinned-certificate line scripts read from stdout.
fn print_certificate(gateway: &Gateway) {
    println!(
        "certificate {} sha256={}{}",
        gateway.certificate_path().display(),
        gateway.certificate_fingerprint(),
        if gateway.certificate_generated() {
            " (generated)"
        } else {
            ""
        }
    );
}

/// Waits for SIGTERM or Ctrl-C, then runs `drain`; a second signal during the
/// drain exits at once (130).
async fn drain_on_signal(drain: impl std::future::Future<Output = ()>) -> ExitCode {
    shutdown_signal().await;
    tracing::info!("shutdown requested; draining (signal again to exit at once)");
    tokio::select! {
        () = drain => ExitCode::SUCCESS,
        () = shutdown_signal() => {
            tracing::warn!("second signal: exiting without finishing the drain");
            ExitCode::from(130)
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Help and version requests exit 0 after printing; usage errors print one line
/// and exit 2.
fn usage_exit(err: &clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("rossby-gateway: {}", one_line(&err.render().to_string()));
            ExitCode::from(2)
        }
    }
}

/// Runs `backup` or `restore` when the first argument names one (each with its
/// own parser, so the gateway's flat options stay as they are); `None` otherwise.
fn run_tool_command() -> Option<ExitCode> {
    let mut argv = std::env::args_os().skip(1);
    let first = argv.next()?;
    let name = match first.to_str() {
        Some(name @ ("backup" | "restore")) => name.to_string(),
        _ => return None,
    };
    let argv = std::iter::once(OsString::from(format!("rossby-gateway {name}"))).chain(argv);
    let code = if name == "backup" {
        match BackupArgs::try_parse_from(argv) {
            Ok(args) => run_tool(backup::run_backup(&args)),
            Err(err) => usage_exit(&err),
        }
    } else {
        match RestoreArgs::try_parse_from(argv) {
            Ok(args) => run_tool(backup::run_restore(&args)),
            Err(err) => usage_exit(&err),
        }
    };
    Some(code)
}

/// The multi-threaded tokio runtime, or the exit code after saying why it could
/// not start.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            eprintln!("rossby-gateway: error: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        })
}

/// Runs a tool: its one-line result on stdout (exit 0), or its error on stderr
/// (exit 1). Logs (warnings only) go to stderr.
fn run_tool(
    tool: impl std::future::Future<Output = rossby_gateway::error::Result<String>>,
) -> ExitCode {
    init_tracing(&LogConfig {
        format: LogFormat::Text,
        level: "warn".into(),
    });
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(tool) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("rossby-gateway: error: {}", one_line(&err.to_string()));
            ExitCode::FAILURE
        }
    }
}
