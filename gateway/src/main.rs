//! `rossby-gateway`: the Rossby server process.
//!
//! Reads its configuration (TOML file, flags, `ROSSBY_*` variables; see
//! `docs/configuration.md`), starts a [`Gateway`], prints where it listens and the
//! certificate clients should pin, and drains gracefully on SIGTERM or Ctrl-C. A
//! second signal during the drain exits at once.
//!
//! Exit codes: 0 after a clean shutdown, 2 for invalid options, 1 when the gateway
//! cannot start, 130 when a second signal interrupts the drain.

use clap::Parser;
use clap::error::ErrorKind;
use rossby_gateway::Gateway;
use rossby_gateway::config::{Args, Config, LogConfig, LogFormat};
use std::process::ExitCode;

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
                    eprintln!("rossby-gateway: {}", one_line(&err.render().to_string()));
                    ExitCode::from(2)
                }
            };
        }
    };
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("rossby-gateway: error: {err}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rossby-gateway: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
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
    shutdown_signal().await;
    tracing::info!("shutdown requested; draining (signal again to exit at once)");
    tokio::select! {
        () = gateway.shutdown() => ExitCode::SUCCESS,
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
