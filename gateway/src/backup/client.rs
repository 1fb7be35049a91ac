//! `rossby-gateway backup`: asks a running gateway for a snapshot through its
//! admin port and writes it, verified, into a new backup directory.

use super::format::{Decoder, Summary};
use super::{MANIFEST_FILE, SNAPSHOT_FILE, sync_dir};
use crate::error::{Error, Result};
use hyper::body::Body as _;
use hyper::header;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Longest wait for the admin port to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the answer's head, and for each further piece of the stream.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of a refusal's text shown.
const MAX_REFUSAL_BYTES: usize = 2048;
/// The snapshot's name while it is being written.
const PARTIAL_FILE: &str = "snapshot.rbk.partial";

/// What `rossby-gateway backup` needs.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// The gateway's admin address, `host:port`.
    pub admin: String,
    /// The backup token (see [`super::backup_token`]).
    pub token: String,
    /// The backup directory to create.
    pub out: PathBuf,
}

/// What a finished backup wrote.
#[derive(Clone, Debug)]
pub struct BackupReport {
    /// The verified content.
    pub summary: Summary,
    /// The snapshot file.
    pub snapshot: PathBuf,
    /// SHA-256 of the whole snapshot file (what `sha256sum` prints).
    pub file_sha256: String,
}

/// Takes a backup: creates `out` (which must not exist), streams the gateway's
/// snapshot into it while checking the format, and keeps it only if the stream
/// ended with a valid trailer. On failure `out` is removed again.
pub async fn take_backup(options: &BackupOptions) -> Result<BackupReport> {
    let out = &options.out;
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(Error::Backup(format!(
            "{} already exists; a backup is written only into a new directory",
            out.display()
        )));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io("cannot create directory", parent, e))?;
    }
    private_dir_builder()
        .create(out)
        .map_err(|e| Error::io("cannot create directory", out, e))?;
    match download(options).await {
        Ok(report) => Ok(report),
        Err(err) => {
            if let Err(cleanup) = std::fs::remove_dir_all(out) {
                tracing::warn!(dir = %out.display(), error = %cleanup, "cannot remove the failed backup");
            }
            Err(err)
        }
    }
}

async fn download(options: &BackupOptions) -> Result<BackupReport> {
    let admin = options.admin.as_str();
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(admin))
        .await
        .map_err(|_| Error::Backup(format!("cannot connect to {admin}: timed out")))?
        .map_err(|e| Error::Backup(format!("cannot connect to {admin}: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Error::Backup(format!("{admin}: {e}")))?;
    let driver = AbortOnDrop(tokio::spawn(connection));
    let request = hyper::Request::post("/backup")
        .header(header::HOST, admin)
        .header(header::AUTHORIZATION, format!("Bearer {}", options.token))
        .body(String::new())
        .map_err(|e| Error::Backup(format!("cannot build the request: {e}")))?;
    let response = tokio::time::timeout(STALL_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| Error::Backup(format!("{admin} did not answer within {STALL_TIMEOUT:?}")))?
        .map_err(|e| Error::Backup(format!("{admin}: {e}")))?;
    let status = response.status();
    let mut body = response.into_body();
    if status != hyper::StatusCode::OK {
        let text = refusal_text(&mut body).await;
        return Err(Error::Backup(format!(
            "the gateway refused the backup: {status}: {text}"
        )));
    }

    let partial = options.out.join(PARTIAL_FILE);
    let mut file = tokio::fs::OpenOptions::from(private_file_options())
        .open(&partial)
        .await
        .map_err(|e| Error::io("cannot create", &partial, e))?;
    let mut decoder = Decoder::new();
    let mut file_hash = Sha256::new();
    while let Some(data) = next_data(&mut body).await? {
        decoder.push(&data)?;
        while decoder.next_event()?.is_some() {}
        file_hash.update(&data);
        file.write_all(&data)
            .await
            .map_err(|e| Error::io("cannot write", &partial, e))?;
    }
    drop(driver);
    let summary = decoder.finish()?;
    file.sync_all()
        .await
        .map_err(|e| Error::io("cannot sync", &partial, e))?;
    drop(file);

    let snapshot = options.out.join(SNAPSHOT_FILE);
    std::fs::rename(&partial, &snapshot).map_err(|e| Error::io("cannot rename", &partial, e))?;
    let file_sha256 = hex::encode(file_hash.finalize());
    write_manifest(&options.out, &summary, &file_sha256)?;
    sync_dir(&options.out)?;
    Ok(BackupReport {
        summary,
        snapshot,
        file_sha256,
    })
}

/// The next piece of the body, `None` at its end.
async fn next_data(body: &mut hyper::body::Incoming) -> Result<Option<hyper::body::Bytes>> {
    loop {
        let frame = tokio::time::timeout(
            STALL_TIMEOUT,
            std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)),
        )
        .await
        .map_err(|_| {
            Error::Backup(format!(
                "the stream stalled: nothing arrived for {STALL_TIMEOUT:?}"
            ))
        })?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => {
                return Err(Error::Backup(format!(
                    "the stream broke off (the gateway failed or stopped): {e}"
                )));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// The start of a refusal's body, on one line.
async fn refusal_text(body: &mut hyper::body::Incoming) -> String {
    let mut text = Vec::new();
    while text.len() < MAX_REFUSAL_BYTES {
        match next_data(body).await {
            Ok(Some(data)) => text.extend_from_slice(&data),
            _ => break,
        }
    }
    text.truncate(MAX_REFUSAL_BYTES);
    String::from_utf8_lossy(&text).trim().replace('\n', " ")
}

/// `manifest.txt`: what the backup holds, for people and scripts.
fn write_manifest(dir: &Path, summary: &Summary, file_sha256: &str) -> Result<()> {
    let header = &summary.header;
    let text = format!(
        "format {}\nbackend {}\nsnapshot_unix_ms {}\nrossby_version {}\nrecords {}\nrecord_bytes {}\nfile {SNAPSHOT_FILE}\nfile_bytes {}\nfile_sha256 {file_sha256}\ncontent_sha256 {}\n",
        header.format_version,
        header.backend,
        header.snapshot_unix_ms,
        header.rossby_version,
        summary.records,
        summary.record_bytes,
        summary.total_bytes,
        summary.sha256_hex(),
    );
    let path = dir.join(MANIFEST_FILE);
    private_file_options()
        .open(&path)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()
        })
        .map_err(|e| Error::io("cannot write", &path, e))
}

/// Backups are as sensitive as the store: directories only for their owner.
fn private_dir_builder() -> std::fs::DirBuilder {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
}

/// A new file (never an existing one) readable only by its owner.
fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Stops the connection task when the download ends, however it ends.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
