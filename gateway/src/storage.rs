//! Where the gateway's store lives and how its transactions are retried: the
//! `--storage`, `--store-dir`, `--durability`, `--cache-mb`, `--pd`, `--tikv-*`
//! and `--retry-*` options.

use crate::config::check::{at_least, host_port};
use crate::error::{Error, Result};
use clap::ValueEnum;
use rossby_storage::kv::fjall::{Durability, FjallConfig};
use rossby_storage::kv::tikv::TikvConfig;
use rossby_storage::{BackendConfig, Kv, RetryPolicy};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which storage backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Embedded durable store in `--store-dir`.
    #[default]
    Fjall,
    /// In-memory store; nothing survives the process (tests and benchmarks).
    Memory,
    /// A TiKV cluster reached through `--pd`.
    Tikv,
}

/// Commit durability of the fjall store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityArg {
    /// Acknowledge commits only after a shared `fdatasync` (deployments).
    #[default]
    GroupCommit,
    /// Acknowledge commits once handed to the OS (benchmarks only).
    NoSync,
}

/// Where the store lives.
#[derive(Clone)]
pub enum StorageConfig {
    /// Open this backend at start (and close it at shutdown).
    Backend(BackendConfig),
    /// Use an already opened store. Several gateways in one process can share one
    /// store this way (tests); the gateway never closes it.
    Shared(Kv),
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageConfig::Backend(b) => f.debug_tuple("Backend").field(b).finish(),
            StorageConfig::Shared(kv) => write!(f, "Shared({})", kv.backend()),
        }
    }
}

crate::config::options! {
    /// The storage backend and its tuning.
    #[derive(clap::Args, Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "Storage")]
    pub struct StorageOptions {
        /// Storage backend [default: fjall].
        #[arg(long, env = "ROSSBY_STORAGE", value_name = "BACKEND")]
        pub storage: Option<StorageKind>,
        /// Directory of the fjall store [default: `store` in --data-dir].
        #[arg(long, env = "ROSSBY_STORE_DIR", value_name = "DIR")]
        pub store_dir: Option<PathBuf>,
        /// fjall commit durability [default: group-commit].
        #[arg(long, env = "ROSSBY_DURABILITY", value_name = "MODE")]
        pub durability: Option<DurabilityArg>,
        /// fjall block cache in MiB [default: 64].
        #[arg(long, env = "ROSSBY_CACHE_MB", value_name = "MIB")]
        pub cache_mb: Option<u64>,
        /// TiKV placement drivers, `host:port[,host:port..]` (with `--storage tikv`).
        #[arg(
            long,
            env = "ROSSBY_PD",
            value_name = "HOST:PORT",
            value_delimiter = ','
        )]
        pub pd: Option<Vec<String>>,
        /// Removed: read only so that a configuration still setting it fails with
        /// the reason ([`TIKV_MODE_REMOVED`]) instead of being ignored.
        #[arg(long, env = "ROSSBY_TIKV_MODE", value_name = "MODE", hide = true)]
        #[serde(default, deserialize_with = "crate::config::removed")]
        pub tikv_mode: Option<String>,
        /// Deadline of each TiKV RPC in milliseconds [default: 2000].
        #[arg(long, env = "ROSSBY_TIKV_TIMEOUT_MS", value_name = "MS")]
        pub tikv_timeout_ms: Option<u64>,
    }
}

/// Why `--tikv-mode` is gone, for configurations that still set it.
const TIKV_MODE_REMOVED: &str = "was removed: TiKV transactions are always optimistic. \
Pessimistic mode read a box's `next` key without locking it, so two gateways could give \
two messages the same sequence number and one would be lost; delete the setting";

impl StorageOptions {
    /// Fails if the removed `--tikv-mode` is set, naming where: by flag or
    /// variable in `self`, or in the configuration file (`file`).
    pub(crate) fn reject_removed(&self, file: &Self) -> Result<()> {
        crate::config::check::reject_removed(
            "tikv-mode",
            self.tikv_mode.is_some(),
            file.tikv_mode.is_some(),
            TIKV_MODE_REMOVED,
        )
    }

    /// The backend to open, checked; the fjall store defaults to `store` in
    /// `data_dir`.
    pub fn into_config(self, data_dir: &Path) -> Result<StorageConfig> {
        let kind = self.storage.unwrap_or_default();
        let pd: Vec<String> = self
            .pd
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let store_dir = self.store_dir.unwrap_or_else(|| data_dir.join("store"));
        let durability = self.durability.unwrap_or_default();
        let cache_mb = at_least("cache-mb", self.cache_mb.unwrap_or(64), 1)?;
        let tikv_timeout_ms = at_least("tikv-timeout-ms", self.tikv_timeout_ms.unwrap_or(2000), 1)?;
        let backend = match kind {
            StorageKind::Memory => BackendConfig::Memory,
            StorageKind::Fjall => BackendConfig::Fjall(FjallConfig {
                path: store_dir,
                durability: match durability {
                    DurabilityArg::GroupCommit => Durability::GroupCommit,
                    DurabilityArg::NoSync => Durability::NoSync,
                },
                cache_bytes: cache_mb.saturating_mul(1024 * 1024),
            }),
            StorageKind::Tikv => {
                if pd.is_empty() {
                    return Err(Error::Config(
                        "--storage tikv needs --pd host:port[,host:port..]".into(),
                    ));
                }
                for endpoint in &pd {
                    host_port("pd", endpoint)?;
                }
                BackendConfig::Tikv(
                    TikvConfig::new(pd.clone())
                        .with_request_timeout(Duration::from_millis(tikv_timeout_ms)),
                )
            }
        };
        if !pd.is_empty() && kind != StorageKind::Tikv {
            return Err(Error::Config(format!(
                "--pd is only used with --storage tikv (storage is {})",
                match kind {
                    StorageKind::Fjall => "fjall",
                    StorageKind::Memory => "memory",
                    StorageKind::Tikv => "tikv",
                }
            )));
        }
        Ok(StorageConfig::Backend(backend))
    }
}

crate::config::options! {
    /// How a storage transaction that conflicts is retried.
    #[derive(clap::Args, Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "Storage")]
    pub struct RetryOptions {
        /// Most runs of a storage transaction that keeps conflicting [default: 16;
        /// setting any --retry-* option turns off the --wan-sim scaling].
        #[arg(long, env = "ROSSBY_RETRY_ATTEMPTS", value_name = "N")]
        pub retry_attempts: Option<u32>,
        /// No retry of a conflicting transaction starts later than this many
        /// milliseconds after its first run [default: 5000].
        #[arg(long, env = "ROSSBY_RETRY_DEADLINE_MS", value_name = "MS")]
        pub retry_deadline_ms: Option<u64>,
        /// Ceiling of the random back-off before the first retry, in milliseconds;
        /// it doubles with each further retry [default: 1].
        #[arg(long, env = "ROSSBY_RETRY_INITIAL_BACKOFF_MS", value_name = "MS")]
        pub retry_initial_backoff_ms: Option<u64>,
        /// Ceiling of any back-off between retries, in milliseconds [default: 100].
        #[arg(long, env = "ROSSBY_RETRY_MAX_BACKOFF_MS", value_name = "MS")]
        pub retry_max_backoff_ms: Option<u64>,
    }
}

/// Longest retry deadline or back-off accepted, in milliseconds: a request waits
/// for its retries, and an hour is already far beyond any client's patience.
const MAX_RETRY_MS: u64 = 3_600_000;

impl RetryOptions {
    /// The retry policy; `None` when no option is set, so the gateway keeps its
    /// default (scaled under the WAN simulation). Unset options take
    /// [`RetryPolicy::default`]'s values.
    pub fn into_policy(self) -> Result<Option<RetryPolicy>> {
        let RetryOptions {
            retry_attempts,
            retry_deadline_ms,
            retry_initial_backoff_ms,
            retry_max_backoff_ms,
        } = self;
        if retry_attempts.is_none()
            && retry_deadline_ms.is_none()
            && retry_initial_backoff_ms.is_none()
            && retry_max_backoff_ms.is_none()
        {
            return Ok(None);
        }
        let default = RetryPolicy::default();
        let default_ms = crate::config::check::millis;
        let max_attempts = at_least(
            "retry-attempts",
            retry_attempts.unwrap_or(default.max_attempts),
            1,
        )?;
        let deadline = retry_deadline_ms.unwrap_or(default_ms(default.deadline));
        if deadline == 0 || deadline > MAX_RETRY_MS {
            return Err(Error::Config(format!(
                "--retry-deadline-ms must be between 1 and {MAX_RETRY_MS} (got {deadline})"
            )));
        }
        let initial = retry_initial_backoff_ms.unwrap_or(default_ms(default.base_backoff));
        let max = retry_max_backoff_ms.unwrap_or(default_ms(default.max_backoff));
        if max > MAX_RETRY_MS {
            return Err(Error::Config(format!(
                "--retry-max-backoff-ms must be at most {MAX_RETRY_MS} (got {max})"
            )));
        }
        if initial > max {
            let which = if retry_max_backoff_ms.is_some() {
                "--retry-max-backoff-ms"
            } else {
                "the default --retry-max-backoff-ms"
            };
            return Err(Error::Config(format!(
                "--retry-initial-backoff-ms ({initial}) must not exceed {which} ({max})"
            )));
        }
        Ok(Some(RetryPolicy {
            max_attempts,
            base_backoff: Duration::from_millis(initial),
            max_backoff: Duration::from_millis(max),
            deadline: Duration::from_millis(deadline),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;
    use crate::config::testing::{ENV_LOCK, err, example_topology, parse};

    #[test]
    fn no_retry_option_keeps_the_gateway_default() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(parse(&[]).unwrap().retry, None);
        let topology = example_topology();
        let c = parse(&["--topology", &topology, "--wan-sim"]).unwrap();
        assert_eq!(c.retry, None, "the WAN scaling is the gateway's to apply");
    }

    #[test]
    fn retry_options_follow_flag_env_file_precedence() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rossby.toml");
        std::fs::write(
            &file,
            "retry_attempts = 3\nretry_deadline_ms = 700\nretry_initial_backoff_ms = 5\nretry_max_backoff_ms = 40\n",
        )
        .unwrap();
        let file_arg = file.to_str().unwrap();
        let from_file = parse(&["--config", file_arg]).unwrap().retry.unwrap();
        assert_eq!(
            from_file,
            RetryPolicy {
                max_attempts: 3,
                base_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(40),
                deadline: Duration::from_millis(700),
            }
        );
        // SAFETY (edition 2024 marks these unsafe): the lock above keeps every
        // other test that reads the environment out while these are set.
        unsafe {
            std::env::set_var("ROSSBY_RETRY_ATTEMPTS", "6");
            std::env::set_var("ROSSBY_RETRY_MAX_BACKOFF_MS", "80");
        }
        let result = parse(&["--config", file_arg, "--retry-attempts", "9"]);
        unsafe {
            std::env::remove_var("ROSSBY_RETRY_ATTEMPTS");
            std::env::remove_var("ROSSBY_RETRY_MAX_BACKOFF_MS");
        }
        let policy = result.unwrap().retry.unwrap();
        assert_eq!(policy.max_attempts, 9, "flag wins");
        assert_eq!(
            policy.max_backoff,
            Duration::from_millis(80),
            "env beats the file"
        );
        assert_eq!(policy.deadline, Duration::from_millis(700), "file");
        assert_eq!(policy.base_backoff, Duration::from_millis(5), "file");
        // One option alone: the others keep the default policy's values.
        let one = parse(&["--retry-deadline-ms", "250"])
            .unwrap()
            .retry
            .unwrap();
        assert_eq!(
            one,
            RetryPolicy {
                deadline: Duration::from_millis(250),
                ..RetryPolicy::default()
            }
        );
    }

    #[test]
    fn retry_options_are_validated() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for (argv, needle) in [
            (
                &["--retry-attempts", "0"][..],
                "--retry-attempts must be at least 1",
            ),
            (
                &["--retry-deadline-ms", "0"][..],
                "--retry-deadline-ms must be between 1",
            ),
            (
                &["--retry-deadline-ms", "3600001"][..],
                "--retry-deadline-ms must be between 1",
            ),
            (
                &["--retry-max-backoff-ms", "3600001"][..],
                "--retry-max-backoff-ms must be at most",
            ),
            (
                &[
                    "--retry-initial-backoff-ms",
                    "20",
                    "--retry-max-backoff-ms",
                    "10",
                ][..],
                "--retry-initial-backoff-ms (20) must not exceed --retry-max-backoff-ms (10)",
            ),
            (
                &["--retry-initial-backoff-ms", "500"][..],
                "must not exceed the default --retry-max-backoff-ms (100)",
            ),
            (&["--retry-attempts", "many"][..], "--retry-attempts"),
        ] {
            let message = err(argv);
            assert!(message.contains(needle), "{argv:?}: {message}");
        }
        // Equal back-offs and no back-off at all are fine.
        let flat = parse(&[
            "--retry-initial-backoff-ms",
            "7",
            "--retry-max-backoff-ms",
            "7",
        ])
        .unwrap()
        .retry
        .unwrap();
        assert_eq!(flat.backoff_ceiling(5), Duration::from_millis(7));
        let none = parse(&[
            "--retry-initial-backoff-ms",
            "0",
            "--retry-max-backoff-ms",
            "0",
        ])
        .unwrap()
        .retry
        .unwrap();
        assert_eq!(none.backoff_ceiling(1), Duration::ZERO);
        // The same checks apply to the file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rossby.toml");
        std::fs::write(&file, "retry_attempts = 0\n").unwrap();
        let message = err(&["--config", file.to_str().unwrap()]);
        assert!(message.contains("--retry-attempts"), "{message}");
    }

    #[test]
    fn the_removed_tikv_mode_is_an_error_that_says_why() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let check = |message: &str, names: &str| {
            assert!(message.contains(names), "{message}");
            assert!(message.contains("was removed"), "{message}");
            assert!(message.contains("same sequence number"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        };
        for mode in ["pessimistic", "optimistic"] {
            check(&err(&["--tikv-mode", mode]), "--tikv-mode");
        }
        // SAFETY: as above, the lock keeps other environment readers out.
        unsafe { std::env::set_var("ROSSBY_TIKV_MODE", "pessimistic") };
        let result = parse(&[]);
        unsafe { std::env::remove_var("ROSSBY_TIKV_MODE") };
        match result {
            Ok(_) => panic!("ROSSBY_TIKV_MODE should be refused"),
            Err(e) => check(&e.to_string(), "ROSSBY_TIKV_MODE"),
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rossby.toml");
        std::fs::write(
            &file,
            "storage = \"tikv\"\npd = [\"pd:2379\"]\ntikv_mode = \"pessimistic\"\n",
        )
        .unwrap();
        check(&err(&["--config", file.to_str().unwrap()]), "tikv_mode");
        // The flag is gone from the help.
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        assert!(!help.contains("tikv-mode"), "{help}");
    }
}
