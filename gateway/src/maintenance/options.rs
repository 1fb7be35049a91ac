//! The maintenance options: how often a round runs and how long its leases last.

use super::{DEFAULT_INTERVAL, DEFAULT_LEASE};
use crate::config::check::millis;
use crate::error::{Error, Result};
use std::time::Duration;

crate::config::options! {
    /// How often the region's maintenance jobs run, and their leases.
    #[derive(clap::Args, serde::Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "Maintenance")]
    pub struct MaintenanceOptions {
        /// Removed: read only so that a configuration still setting it fails with
        /// the reason ([`SWEEP_INTERVAL_REMOVED`]) instead of being ignored.
        #[arg(
            long,
            env = "ROSSBY_SWEEP_INTERVAL_SECS",
            value_name = "SECS",
            hide = true
        )]
        #[serde(default, deserialize_with = "crate::config::removed")]
        pub sweep_interval_secs: Option<String>,
        /// Milliseconds between maintenance rounds (expiry sweeps and account
        /// purges of the region, each job run by one gateway under a lease)
        /// [default: 30000].
        #[arg(long, env = "ROSSBY_MAINTENANCE_INTERVAL_MS", value_name = "MS")]
        pub maintenance_interval_ms: Option<u64>,
        /// Lifetime of a maintenance lease in milliseconds: a dead gateway's jobs
        /// are taken over within twice this; at least twice
        /// --maintenance-interval-ms [default: 90000].
        #[arg(long, env = "ROSSBY_MAINTENANCE_LEASE_MS", value_name = "MS")]
        pub maintenance_lease_ms: Option<u64>,
    }
}

/// Why `--sweep-interval-secs` is gone, for configurations that still set it.
const SWEEP_INTERVAL_REMOVED: &str = "was removed: expired messages are swept by the \
region's maintenance jobs, one gateway per job under a lease, every \
--maintenance-interval-ms (milliseconds, default 30000); delete the setting or set that one";

impl MaintenanceOptions {
    /// Fails if the removed `--sweep-interval-secs` is set, naming where: by
    /// flag or variable in `self`, or in the configuration file (`file`).
    pub(crate) fn reject_removed(&self, file: &Self) -> Result<()> {
        crate::config::check::reject_removed(
            "sweep-interval-secs",
            self.sweep_interval_secs.is_some(),
            file.sweep_interval_secs.is_some(),
            SWEEP_INTERVAL_REMOVED,
        )
    }

    /// The interval and the lease, checked: a lease must outlast two rounds, so
    /// one slow round does not lose it.
    pub fn into_interval_and_lease(self) -> Result<(Duration, Duration)> {
        let interval_ms = self
            .maintenance_interval_ms
            .unwrap_or(millis(DEFAULT_INTERVAL));
        let lease_ms = self.maintenance_lease_ms.unwrap_or(millis(DEFAULT_LEASE));
        if !(10..=3_600_000).contains(&interval_ms) {
            return Err(Error::Config(format!(
                "--maintenance-interval-ms must be between 10 and 3600000 (got {interval_ms})"
            )));
        }
        if lease_ms < interval_ms.saturating_mul(2) || lease_ms > 86_400_000 {
            return Err(Error::Config(format!(
                "--maintenance-lease-ms must be at least twice --maintenance-interval-ms ({interval_ms}) and at most 86400000 (got {lease_ms})"
            )));
        }
        Ok((
            Duration::from_millis(interval_ms),
            Duration::from_millis(lease_ms),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;
    use crate::config::testing::{ENV_LOCK, err, parse};

    #[test]
    fn the_removed_sweep_interval_is_an_error_that_names_its_replacement() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let check = |message: &str, names: &str| {
            assert!(message.contains(names), "{message}");
            assert!(message.contains("was removed"), "{message}");
            assert!(message.contains("--maintenance-interval-ms"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        };
        check(
            &err(&["--sweep-interval-secs", "30"]),
            "--sweep-interval-secs",
        );
        // SAFETY: as above, the lock keeps other environment readers out.
        unsafe { std::env::set_var("ROSSBY_SWEEP_INTERVAL_SECS", "30") };
        let result = parse(&[]);
        unsafe { std::env::remove_var("ROSSBY_SWEEP_INTERVAL_SECS") };
        match result {
            Ok(_) => panic!("ROSSBY_SWEEP_INTERVAL_SECS should be refused"),
            Err(e) => check(&e.to_string(), "ROSSBY_SWEEP_INTERVAL_SECS"),
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rossby.toml");
        std::fs::write(&file, "sweep_interval_secs = 30\n").unwrap();
        check(
            &err(&["--config", file.to_str().unwrap()]),
            "sweep_interval_secs",
        );
        // The replacement, from a file.
        std::fs::write(
            &file,
            "maintenance_interval_ms = 2000\nmaintenance_lease_ms = 4000\n",
        )
        .unwrap();
        let c = parse(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(
            (c.maintenance_interval, c.maintenance_lease),
            (Duration::from_secs(2), Duration::from_secs(4))
        );
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        assert!(!help.contains("sweep-interval"), "{help}");
        assert!(help.contains("--maintenance-lease-ms"), "{help}");
    }
}
