//! Online backup and offline restore of the embedded store.
//!
//! fjall allows one process per store, so a running gateway's store cannot be
//! copied by another program. Instead the gateway streams a consistent snapshot
//! through its admin port ([`BackupService`], `POST /backup`), and
//! `rossby-admin backup` ([`take_backup`]; also `rossby-gateway backup`) writes it
//! into a new directory:
//!
//! ```text
//! <out>/snapshot.rbk   the stream (format: [`format`]), verified while received
//! <out>/manifest.txt   what it holds, one `name value` per line
//! ```
//!
//! `rossby-admin restore` ([`restore`]; also `rossby-gateway restore`) writes a
//! backup into a new, empty fjall store while no gateway runs on it. A backup
//! holds identifiers only as peppered hashes and device keys are derived from the
//! server secret, so a restored store is served with the deployment's original
//! secret and pepper files.
//!
//! The admin port carries no other secret, so the route asks for a bearer token:
//! [`backup_token`], derived from the server secret, which only holders of the
//! secret can form.

pub mod format;

mod client;
mod restore;
mod serve;

pub use client::{BackupOptions, BackupReport, take_backup};
pub use format::Summary;
pub use restore::{RestoreOptions, restore, verify_backup};
pub use serve::BackupService;

use crate::config::{DEFAULT_ADMIN_LISTEN, DEFAULT_DATA_DIR, decode_secret};
use crate::error::{Error, Result};
use crate::gateway::MIN_SECRET_BYTES;
use clap::Parser;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// The snapshot's file name in a backup directory.
pub const SNAPSHOT_FILE: &str = "snapshot.rbk";
/// The manifest's file name in a backup directory.
pub const MANIFEST_FILE: &str = "manifest.txt";
/// Domain separation of the backup token: the secret's other uses (Hawk keys,
/// code hashes) never produce it.
const TOKEN_CONTEXT: &[u8] = b"rossby/admin/backup";

/// The bearer token of `POST /backup`: `hex(HMAC-SHA-256(secret, "rossby/admin/backup"))`.
pub fn backup_token(server_secret: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(server_secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(TOKEN_CONTEXT);
    hex::encode(mac.finalize().into_bytes())
}

/// Compares tokens in time independent of where they differ.
fn token_matches(given: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// `fsync`s a directory, so the entries just created in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("cannot sync directory", dir, e))
}

/// `rossby-gateway backup`: options.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "rossby-gateway backup",
    about = "Take a consistent backup of a running gateway's embedded store through its admin port",
    long_about = "Take a consistent backup of a running gateway's embedded store through its admin \
port. The gateway streams one read snapshot of every key while it keeps serving; the stream is \
verified (counts and SHA-256) and kept only if complete.\n\nExit codes: 0 done, 1 failed, 2 invalid options."
)]
pub struct BackupArgs {
    /// The gateway's admin address (its --admin-listen) [default: 127.0.0.1:7401].
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<String>,
    /// The gateway's server secret file; the backup token is derived from it
    /// [default: ./rossby-data/secret].
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// The backup directory to create; it must not exist.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

impl BackupArgs {
    /// The options, with the token formed from the secret file (which must exist:
    /// unlike the gateway, this never generates a secret).
    pub fn options(&self) -> Result<BackupOptions> {
        let secret_file = self
            .secret_file
            .clone()
            .unwrap_or_else(|| Path::new(DEFAULT_DATA_DIR).join("secret"));
        let bytes = std::fs::read(&secret_file)
            .map_err(|e| Error::io("cannot read the server secret", &secret_file, e))?;
        let secret = decode_secret(&secret_file, &bytes, MIN_SECRET_BYTES, "server secret")?;
        Ok(BackupOptions {
            admin: self
                .admin
                .clone()
                .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string()),
            token: backup_token(&secret),
            out: self.out.clone(),
        })
    }
}

/// `rossby-gateway restore`: options.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "rossby-gateway restore",
    about = "Restore a backup into a new, empty embedded store (with the gateway stopped)",
    long_about = "Restore a backup into a new, empty embedded store, with no gateway running on it. \
The whole backup is verified first; it is then written in durable batches, the restored keys are \
counted, and every file is synced. Start the gateway on the store with the deployment's original \
secret and pepper files.\n\nExit codes: 0 done, 1 failed, 2 invalid options."
)]
pub struct RestoreArgs {
    /// The backup directory (written by `backup`).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The fjall store directory to create (the gateway's --store-dir); it must
    /// not exist or be empty.
    #[arg(long, value_name = "DIR", required_unless_present = "check")]
    pub store_dir: Option<PathBuf>,
    /// Only verify the backup (format, counts, checksum); write nothing.
    #[arg(long, conflicts_with = "store_dir")]
    pub check: bool,
}

/// Runs `backup`: takes the backup and returns the one line that reports it.
pub async fn run_backup(args: &BackupArgs) -> Result<String> {
    let options = args.options()?;
    let report = take_backup(&options).await?;
    let s = &report.summary;
    Ok(format!(
        "backup {}: {} records ({} bytes) of the {} store, snapshot at unix ms {}, sha256 {}",
        options.out.display(),
        s.records,
        s.record_bytes,
        s.header.backend,
        s.header.snapshot_unix_ms,
        report.file_sha256
    ))
}

/// Runs `restore` (or, with `--check`, only verifies the backup) and returns the
/// one line that reports it.
pub async fn run_restore(args: &RestoreArgs) -> Result<String> {
    let describe = |s: &Summary| {
        format!(
            "{} records ({} bytes) of the {} store, snapshot at unix ms {}",
            s.records, s.record_bytes, s.header.backend, s.header.snapshot_unix_ms
        )
    };
    match &args.store_dir {
        Some(store_dir) => {
            let options = RestoreOptions {
                from: args.from.clone(),
                store_dir: store_dir.clone(),
            };
            let summary = restore(&options).await?;
            Ok(format!(
                "restored {} from {} into {}",
                describe(&summary),
                options.from.display(),
                options.store_dir.display()
            ))
        }
        None => {
            let summary = verify_backup(&args.from)?;
            Ok(format!(
                "backup {} is complete: {}",
                args.from.display(),
                describe(&summary)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_a_keyed_hash_of_the_secret() {
        let a = backup_token(&[1; 32]);
        assert_eq!(a.len(), 64);
        assert_eq!(a, backup_token(&[1; 32]));
        assert_ne!(a, backup_token(&[2; 32]));
        // HMAC-SHA-256(key = 32 x 0x01, "rossby/admin/backup"), computed with
        // Python's hmac module.
        assert_eq!(a, KNOWN_TOKEN);
        assert!(token_matches(&a, &a));
        assert!(!token_matches(&a[..63], &a));
        assert!(!token_matches("", ""));
    }

    const KNOWN_TOKEN: &str = "828a4be98c75e2aba3d0d78c07ae0932b2a5effc075cb2f46debe976026a2cf5";

    #[test]
    fn the_subcommands_parse_their_options() {
        let args = BackupArgs::try_parse_from(["b", "--out", "/tmp/x"]).unwrap();
        assert_eq!(args.out, PathBuf::from("/tmp/x"));
        assert!(args.admin.is_none());
        assert!(BackupArgs::try_parse_from(["b"]).is_err());
        let args = RestoreArgs::try_parse_from(["r", "--from", "/b", "--check"]).unwrap();
        assert!(args.check && args.store_dir.is_none());
        assert!(RestoreArgs::try_parse_from(["r", "--from", "/b"]).is_err());
        assert!(
            RestoreArgs::try_parse_from(["r", "--from", "/b", "--check", "--store-dir", "/s"])
                .is_err()
        );
    }
}
