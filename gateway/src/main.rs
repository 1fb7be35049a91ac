//! `rossby-gateway`: the Rossby server process.
//!
//! Until the QUIC API lands, the binary runs the storage side of a single-region
//! gateway with no configuration at all: it opens (or creates) the durable embedded
//! store in `./rossby-data` (or `ROSSBY_DATA_DIR`), runs the retention sweeper and
//! the purge of deleted accounts for its region, and stops cleanly on Ctrl-C or
//! SIGTERM.

use rossby_keyspace::{LookupHasher, Pepper, RegionId};
use rossby_storage::kv::fjall::{FjallConfig, FjallStore};
use rossby_storage::tables::Store;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Region code of a single-region deployment.
const DEFAULT_REGION: RegionId = RegionId(1);
/// How often expired messages are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROSSBY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "gateway stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), rossby_storage::Error> {
    let data_dir = std::env::var_os("ROSSBY_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("rossby-data"));
    let kv = Arc::new(FjallStore::open(FjallConfig::new(&data_dir))?);
    // The lookup pepper only matters once identifiers are bound through the API;
    // the sweeper never hashes identifiers.
    let hasher = LookupHasher::new(
        vec![Pepper {
            version: 1,
            secret: b"rossby-development-pepper".to_vec(),
        }],
        1,
    )
    .map_err(|e| rossby_storage::Error::Invalid(e.to_string()))?;
    let store = Store::new(kv, hasher);
    tracing::info!(data_dir = %data_dir.display(), region = %DEFAULT_REGION, "embedded store open (durable, group commit)");
    let purged = store.resume_purges(DEFAULT_REGION).await?;
    if purged > 0 {
        tracing::info!(purged, "finished interrupted account purges");
    }
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let swept = store.sweep(DEFAULT_REGION, now_ms(), 1024).await?;
                if swept.entries > 0 {
                    tracing::info!(envelopes = swept.envelopes, dedups = swept.dedups, "expired entries swept");
                }
            }
            () = shutdown_signal() => {
                tracing::info!("shutting down");
                return Ok(());
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

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
