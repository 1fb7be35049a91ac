//! `rossby-gateway restore`: writes a backup into a new, empty fjall store,
//! offline, after verifying the whole backup.

use super::format::{Decoder, Event, Summary};
use super::{SNAPSHOT_FILE, sync_dir};
use crate::error::{Error, Result};
use rossby_storage::kv::fjall::{FjallConfig, FjallStore};
use rossby_storage::{KeyRange, Kv, ScanOrder};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Records written per transaction of the restore.
const BATCH_RECORDS: usize = 1000;
/// Key and value bytes after which a restore transaction commits early.
const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Bytes read from the snapshot file at a time.
const READ_BYTES: usize = 1024 * 1024;
/// Keys read per scan when counting the restored store.
const COUNT_BATCH: usize = 4096;

/// What `rossby-gateway restore` needs.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The backup directory (as written by `rossby-gateway backup`).
    pub from: PathBuf,
    /// The fjall store directory to create; must not exist or be empty.
    pub store_dir: PathBuf,
}

/// Reads the backup in `dir` from end to end and checks it (format, order,
/// counts, checksum), without writing anything.
pub fn verify_backup(dir: &Path) -> Result<Summary> {
    read_backup(&snapshot_path(dir)?)
}

/// Restores the backup in `options.from` into a new fjall store at
/// `options.store_dir`: refuses a non-empty target, verifies the whole backup
/// first, writes it in batches of durable commits, checks that the store then
/// holds exactly the backup's keys, and syncs every file of the store.
///
/// Run it with the gateway stopped; start the gateway on the store with the
/// deployment's original secret and pepper files.
pub async fn restore(options: &RestoreOptions) -> Result<Summary> {
    let snapshot = snapshot_path(&options.from)?;
    let store_dir = options.store_dir.clone();
    check_empty(&store_dir)?;
    let verified = {
        let snapshot = snapshot.clone();
        tokio::task::spawn_blocking(move || read_backup(&snapshot))
            .await
            .map_err(|e| Error::Backup(format!("verification stopped: {e}")))??
    };
    write_store(&snapshot, &store_dir, &verified)
        .await
        .map_err(|err| {
            Error::Backup(format!(
                "restore failed, {} holds a partial store: delete it before trying again ({err})",
                store_dir.display()
            ))
        })?;
    Ok(verified)
}

async fn write_store(snapshot: &Path, store_dir: &Path, verified: &Summary) -> Result<()> {
    let kv = open_store(store_dir).await?;
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(BATCH_RECORDS);
    let mut batch_bytes = 0usize;
    let mut file =
        std::fs::File::open(snapshot).map_err(|e| Error::io("cannot open", snapshot, e))?;
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read", snapshot, e))?;
        if n == 0 {
            break;
        }
        decoder.push(&buf[..n])?;
        while let Some(event) = decoder.next_event()? {
            if let Event::Record(record) = event {
                batch_bytes += record.key.len() + record.value.len();
                batch.push((record.key, record.value));
                if batch.len() >= BATCH_RECORDS || batch_bytes >= BATCH_BYTES {
                    commit(&kv, &mut batch).await?;
                    batch_bytes = 0;
                }
            }
        }
    }
    commit(&kv, &mut batch).await?;
    let written = decoder.finish()?;
    if written.sha256 != verified.sha256 {
        return Err(Error::Backup(
            "the backup changed while it was being restored".into(),
        ));
    }
    let keys = count_keys(&kv).await?;
    close_store(kv).await;
    if keys != written.records {
        return Err(Error::Backup(format!(
            "the restored store holds {keys} keys, the backup {}",
            written.records
        )));
    }
    sync_tree(store_dir).map_err(|e| Error::io("cannot sync", store_dir, e))?;
    if let Some(parent) = store_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Writes `batch` in one transaction; `commit` returns once it is on disk.
async fn commit(kv: &Kv, batch: &mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut txn = kv.begin().await?;
    for (key, value) in batch.drain(..) {
        txn.put(key, value).await?;
    }
    txn.commit().await?;
    Ok(())
}

async fn count_keys(kv: &Kv) -> Result<u64> {
    let mut txn = kv.begin().await?;
    let mut range = KeyRange {
        start: Vec::new(),
        end: None,
    };
    let mut count = 0u64;
    loop {
        let batch = txn.scan(&range, COUNT_BATCH, ScanOrder::Forward).await?;
        count += batch.len() as u64;
        match batch.last() {
            Some((key, _)) if batch.len() == COUNT_BATCH => {
                let mut next = key.clone();
                next.push(0);
                range.start = next;
            }
            _ => break,
        }
    }
    txn.rollback().await?;
    Ok(count)
}

async fn open_store(dir: &Path) -> Result<Kv> {
    let config = FjallConfig::new(dir);
    let store = tokio::task::spawn_blocking(move || FjallStore::open(config))
        .await
        .map_err(|e| Error::Backup(format!("opening the store stopped: {e}")))??;
    Ok(Arc::new(store))
}

/// Closes the store off the async threads (closing joins fjall's commit pipeline threads).
async fn close_store(kv: Kv) {
    let _ = tokio::task::spawn_blocking(move || drop(kv)).await;
}

fn snapshot_path(dir: &Path) -> Result<PathBuf> {
    let path = dir.join(SNAPSHOT_FILE);
    if !path.is_file() {
        return Err(Error::Backup(format!(
            "{} is not a backup directory (it has no {SNAPSHOT_FILE})",
            dir.display()
        )));
    }
    Ok(path)
}

/// Restoring merges nothing: the target must be new or empty.
fn check_empty(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Backup(format!(
                    "{} is not empty: restore writes only into a new or empty store directory",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot use store directory", dir, e)),
    }
}

/// Decodes the snapshot file from end to end.
fn read_backup(path: &Path) -> Result<Summary> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        decoder.push(&buf[..n])?;
        while decoder.next_event()?.is_some() {}
    }
    decoder.finish()
}

/// `fsync`s every file and directory under `dir`, and `dir` itself.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}
