//! Attachments: encrypting a file and uploading it in parts, resuming uploads
//! (after a lost connection, or in a new process), and downloading and checking
//! one.
//!
//! A file is encrypted with a fresh random key in chunks
//! ([`rossby_protocol::crypto::attachment`]); the ciphertext is cut into the
//! parts the gateway asked for and uploaded with a few parts in flight. The
//! encryption is deterministic for a key and a file, so an interrupted upload is
//! resumed by encrypting the file again, hashing all of it and sending only the
//! parts UploadStatus lists as missing. The pending upload (blob id, key, file
//! path, size) is saved in the encrypted state before the first part leaves, and
//! removed once the blob is complete.
//!
//! Memory stays bounded either way: one chunk of plaintext, the parts in flight
//! ([`PARTS_IN_FLIGHT`]) and the part being filled; never the whole file.

use crate::error::{Error, Result};
use crate::sdk::Client;
use futures::StreamExt;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use rossby_protocol::crypto::attachment::{
    ChunkLayout, ChunkOpener, ChunkSealer, DEFAULT_CHUNK_SIZE,
};
use rossby_protocol::pb::{self, Method, Status};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Parts uploaded or downloaded at once.
pub const PARTS_IN_FLIGHT: usize = 4;

/// Rounds of UploadStatus and resending before an upload gives up (the
/// connection's own retries come first, inside every round).
const UPLOAD_ROUNDS: u32 = 5;

/// The uploads a device has not finished (kept in the state file).
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct PendingUploads {
    /// Oldest first.
    #[prost(message, repeated, tag = "1")]
    pub uploads: Vec<PendingUpload>,
}

/// One unfinished upload: enough to encrypt the file again identically and send
/// what is missing.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct PendingUpload {
    /// The blob id the gateway gave it (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub blob_id: Vec<u8>,
    /// The file's key (32 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// The file, as given to `upload_attachment`.
    #[prost(string, tag = "3")]
    pub path: String,
    /// Plaintext size when the upload began (a file that changed is not resumed).
    #[prost(uint64, tag = "4")]
    pub size: u64,
    /// Plaintext bytes per chunk.
    #[prost(uint32, tag = "5")]
    pub chunk_size: u32,
    /// The media type for the reference.
    #[prost(string, tag = "6")]
    pub media_type: String,
    /// The file's modification time when the upload began (ms since the epoch).
    #[prost(uint64, tag = "7")]
    pub modified_ms: u64,
}

impl std::fmt::Debug for PendingUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("PendingUpload")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PendingUploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.uploads).finish()
    }
}

/// The media type of a file name by its extension (`application/octet-stream`
/// when unknown).
pub fn guess_media_type(name: &str) -> &'static str {
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "svg" => "image/svg+xml",
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "txt" => "text/plain",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        "csv" => "text/csv",
        _ => "application/octet-stream",
    }
}

/// A file name safe to create in a directory: the last component only, no
/// `..`, no separators or control characters; `attachment` when nothing is
/// left.
pub fn sanitize_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && *c != ':')
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.').to_string();
    if trimmed.is_empty() || trimmed == ".." {
        "attachment".into()
    } else {
        trimmed.chars().take(200).collect()
    }
}

/// `dir/name`, or `dir/stem (n).ext` for the first `n` that does not exist.
fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let as_path = Path::new(name);
    let stem = as_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name)
        .to_string();
    let ext = as_path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    (1u32..)
        .map(|n| dir.join(format!("{stem} ({n}){ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

fn modified_ms(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether an upload round's failure may pass with time (the connection, the
/// gateway or storage), so another round is worth it.
fn transient(err: &Error) -> bool {
    match err {
        Error::Unreachable { .. } => true,
        Error::Status { status, .. } => matches!(
            status,
            Status::Unavailable | Status::Undetermined | Status::Draining | Status::RateLimited
        ),
        _ => false,
    }
}

impl Client {
    /// Encrypts the file at `path` with a fresh key, uploads it and returns the
    /// reference to put in a message (`pb::RichMessage.attachments`); send it
    /// with the blob id in `SendRequest.attachments`. `media_type` defaults to a
    /// guess from the file's extension. The upload survives a lost connection
    /// (it reconnects, asks what is missing and sends only that) and, if the
    /// process ends, [`Client::resume_uploads`] finishes it.
    pub async fn upload_attachment(
        &self,
        path: &Path,
        media_type: Option<&str>,
    ) -> Result<pb::Attachment> {
        // Absolute, so a run started elsewhere can resume it.
        let path = &tokio::fs::canonicalize(path)
            .await
            .map_err(io("cannot read attachment", path))?;
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(io("cannot read attachment", path))?;
        if !meta.is_file() {
            return Err(Error::Invalid(format!("{} is not a file", path.display())));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(sanitize_file_name)
            .unwrap_or_else(|| "attachment".into());
        let media_type = media_type
            .map(str::to_string)
            .unwrap_or_else(|| guess_media_type(&name).to_string());
        // The same unchanged file left pending by an interrupted run continues
        // where it stopped.
        let unfinished = self.pending_uploads().await.into_iter().find(|u| {
            Path::new(&u.path) == path
                && u.size == meta.len()
                && u.modified_ms == modified_ms(&meta)
                && u.media_type == media_type
        });
        if let Some(pending) = unfinished {
            return self.settle_upload(&pending).await;
        }
        let layout = ChunkLayout::new(meta.len(), DEFAULT_CHUNK_SIZE)?;
        let created: pb::CreateUploadResponse = self
            .rpc(
                Method::CreateUpload,
                &pb::CreateUploadRequest {
                    size: layout.ciphertext_len(),
                },
            )
            .await?;
        let key: [u8; 32] = rand::random();
        let pending = PendingUpload {
            blob_id: created.blob_id,
            key: key.to_vec(),
            path: path.to_string_lossy().into_owned(),
            size: meta.len(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            media_type,
            modified_ms: modified_ms(&meta),
        };
        // Saved before the first part leaves, so another process can resume.
        {
            let mut store = self.store.lock().await;
            store
                .state
                .uploads
                .get_or_insert_with(PendingUploads::default)
                .uploads
                .push(pending.clone());
            store.save()?;
        }
        self.settle_upload(&pending).await
    }

    /// Finishes a pending upload. One that can never finish (its file changed,
    /// its blob expired) is forgotten; one that failed for the time being stays
    /// for `resume_uploads` or another `upload_attachment` of the same file.
    async fn settle_upload(&self, pending: &PendingUpload) -> Result<pb::Attachment> {
        let result = self.finish_upload(pending).await;
        if let Err(err) = &result
            && !transient(err)
        {
            self.forget_upload(&pending.blob_id).await?;
        }
        result
    }

    /// Finishes every upload a previous run (or a failed call) left pending and
    /// returns each file with its reference or why it failed. An upload whose
    /// file changed or whose blob expired is dropped with an error.
    pub async fn resume_uploads(&self) -> Result<Vec<(PathBuf, Result<pb::Attachment>)>> {
        let pending = {
            let store = self.store.lock().await;
            store
                .state
                .uploads
                .as_ref()
                .map(|u| u.uploads.clone())
                .unwrap_or_default()
        };
        let mut results = Vec::with_capacity(pending.len());
        for upload in pending {
            let result = self.settle_upload(&upload).await;
            results.push((PathBuf::from(&upload.path), result));
        }
        Ok(results)
    }

    /// The uploads not finished yet.
    pub async fn pending_uploads(&self) -> Vec<PendingUpload> {
        let store = self.store.lock().await;
        store
            .state
            .uploads
            .as_ref()
            .map(|u| u.uploads.clone())
            .unwrap_or_default()
    }

    async fn forget_upload(&self, blob_id: &[u8]) -> Result<()> {
        let mut store = self.store.lock().await;
        if let Some(uploads) = store.state.uploads.as_mut() {
            uploads.uploads.retain(|u| u.blob_id != blob_id);
            if uploads.uploads.is_empty() {
                store.state.uploads = None;
            }
        }
        store.save()
    }

    /// Sends what the gateway is missing of `upload`, completes it, forgets it
    /// and returns its reference.
    async fn finish_upload(&self, upload: &PendingUpload) -> Result<pb::Attachment> {
        let path = PathBuf::from(&upload.path);
        let mut round = 0;
        let sha256 = loop {
            round += 1;
            match self.upload_round(upload, &path).await {
                Ok(digest) => break digest,
                Err(err) if transient(&err) && round < UPLOAD_ROUNDS => {
                    pause_before_round(round).await;
                }
                Err(err) => return Err(err),
            }
        };
        let done: Result<pb::CompleteUploadResponse> = self
            .rpc(
                Method::CompleteUpload,
                &pb::CompleteUploadRequest {
                    blob_id: upload.blob_id.clone(),
                },
            )
            .await;
        done?;
        self.forget_upload(&upload.blob_id).await?;
        Ok(pb::Attachment {
            blob_id: upload.blob_id.clone(),
            key: upload.key.clone(),
            sha256: sha256.to_vec(),
            size: upload.size,
            chunk_size: upload.chunk_size,
            media_type: upload.media_type.clone(),
            file_name: sanitize_file_name(
                path.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("attachment"),
            ),
        })
    }

    /// One pass: asks which parts are missing, encrypts the whole file (to hash
    /// it) and uploads the missing parts with [`PARTS_IN_FLIGHT`] in flight.
    /// Returns the ciphertext's SHA-256.
    async fn upload_round(&self, upload: &PendingUpload, path: &Path) -> Result<[u8; 32]> {
        let status: pb::UploadStatusResponse = self
            .rpc(
                Method::UploadStatus,
                &pb::UploadStatusRequest {
                    blob_id: upload.blob_id.clone(),
                },
            )
            .await?;
        let layout = ChunkLayout::new(upload.size, upload.chunk_size)?;
        if status.size != layout.ciphertext_len() || status.part_size == 0 {
            return Err(Error::BadReply(
                "the upload's size does not match the file".into(),
            ));
        }
        let missing: BTreeSet<u32> = status.missing.iter().copied().collect();
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(io("cannot open attachment", path))?;
        let meta = file
            .metadata()
            .await
            .map_err(io("cannot read attachment", path))?;
        if meta.len() != upload.size || modified_ms(&meta) != upload.modified_ms {
            return Err(Error::Invalid(format!(
                "{} changed since its upload began; upload it again",
                path.display()
            )));
        }
        let part_size = usize::try_from(status.part_size)
            .map_err(|_| Error::BadReply("part size out of range".into()))?;
        let mut sealer = ChunkSealer::new(&upload.key, layout)?;
        let mut hasher = Sha256::new();
        let mut part = Vec::with_capacity(part_size);
        let mut index = 0u32;
        let mut in_flight = FuturesUnordered::new();
        let mut plain = Vec::new();
        while let Some(len) = sealer.next_len() {
            plain.resize(len, 0);
            file.read_exact(&mut plain)
                .await
                .map_err(io("cannot read attachment", path))?;
            let sealed = sealer.seal_next(&plain)?;
            hasher.update(&sealed);
            let mut rest = sealed.as_slice();
            while !rest.is_empty() {
                let take = (part_size - part.len()).min(rest.len());
                part.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if part.len() == part_size {
                    let full = std::mem::replace(&mut part, Vec::with_capacity(part_size));
                    if missing.contains(&index) {
                        in_flight.push(self.send_part(&upload.blob_id, index, full));
                        while in_flight.len() >= PARTS_IN_FLIGHT {
                            if let Some(result) = in_flight.next().await {
                                result?;
                            }
                        }
                    }
                    index += 1;
                }
            }
        }
        if !part.is_empty() && missing.contains(&index) {
            in_flight.push(self.send_part(&upload.blob_id, index, part));
        }
        while let Some(result) = in_flight.next().await {
            result?;
        }
        Ok(hasher.finalize().into())
    }

    async fn send_part(&self, blob_id: &[u8], index: u32, data: Vec<u8>) -> Result<()> {
        let _: pb::UploadPartResponse = self
            .rpc(
                Method::UploadPart,
                &pb::UploadPartRequest {
                    blob_id: blob_id.to_vec(),
                    index,
                    data,
                },
            )
            .await?;
        Ok(())
    }

    /// Downloads the attachment into `dir`: decrypts and checks chunk by chunk
    /// into a temporary file, checks the digest of the whole ciphertext, then
    /// renames the file to the attachment's (sanitised) file name, made unique
    /// with ` (1)`, ` (2)`, ... when it exists. A chunk that does not
    /// authenticate fails with an error naming it, and no file is left behind.
    pub async fn download_attachment(
        &self,
        attachment: &pb::Attachment,
        dir: &Path,
    ) -> Result<PathBuf> {
        if attachment.blob_id.len() != 32
            || attachment.key.len() != 32
            || attachment.sha256.len() != 32
        {
            return Err(Error::Invalid(
                "the attachment reference is malformed (blob id, key and digest have 32 bytes)"
                    .into(),
            ));
        }
        let layout = ChunkLayout::new(attachment.size, attachment.chunk_size)?;
        let temp = dir.join(format!(
            ".rossby-download-{}.part",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .map_err(io("cannot create download", &temp))?;
        let result = self.download_into(attachment, layout, file, &temp).await;
        if let Err(err) = result {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(err);
        }
        let target = unique_path(dir, &sanitize_file_name(&attachment.file_name));
        if let Err(err) = tokio::fs::rename(&temp, &target).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(io("cannot move download to", &target)(err));
        }
        Ok(target)
    }

    async fn download_into(
        &self,
        attachment: &pb::Attachment,
        layout: ChunkLayout,
        mut file: tokio::fs::File,
        temp: &Path,
    ) -> Result<()> {
        let first = self.fetch_part(&attachment.blob_id, 0).await?;
        if first.size != layout.ciphertext_len() {
            return Err(Error::Crypto(format!(
                "the stored attachment has {} bytes, the reference says {}: not this file",
                first.size,
                layout.ciphertext_len()
            )));
        }
        let part_count = first.part_count;
        let mut opener = ChunkOpener::new(&attachment.key, layout)?;
        let mut hasher = Sha256::new();
        let mut buffer: Vec<u8> = Vec::new();
        let mut next_fetch = 1u32;
        let mut fetching = FuturesOrdered::new();
        let mut ready = Some(first.data);
        loop {
            while fetching.len() < PARTS_IN_FLIGHT && next_fetch < part_count {
                fetching.push_back(self.fetch_part(&attachment.blob_id, next_fetch));
                next_fetch += 1;
            }
            let data = match ready.take() {
                Some(data) => data,
                None => match fetching.next().await {
                    Some(part) => part?.data,
                    None => break,
                },
            };
            hasher.update(&data);
            buffer.extend_from_slice(&data);
            let mut used = 0;
            while let Some(len) = opener.next_len() {
                if buffer.len() - used < len {
                    break;
                }
                let plain = opener.open_next(&buffer[used..used + len])?;
                used += len;
                file.write_all(&plain)
                    .await
                    .map_err(io("cannot write download", temp))?;
            }
            buffer.drain(..used);
        }
        opener.finish()?;
        if !buffer.is_empty() {
            return Err(Error::Crypto(
                "the download has bytes after the last chunk".into(),
            ));
        }
        let digest: [u8; 32] = hasher.finalize().into();
        if digest.as_slice() != attachment.sha256.as_slice() {
            return Err(Error::Crypto(
                "the downloaded ciphertext does not match the attachment's SHA-256".into(),
            ));
        }
        file.sync_all()
            .await
            .map_err(io("cannot sync download", temp))?;
        Ok(())
    }

    async fn fetch_part(&self, blob_id: &[u8], index: u32) -> Result<pb::DownloadPartResponse> {
        self.rpc(
            Method::DownloadPart,
            &pb::DownloadPartRequest {
                blob_id: blob_id.to_vec(),
                index,
            },
        )
        .await
    }
}

/// Waits before another upload round, longer each time.
async fn pause_before_round(round: u32) {
    tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(round))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_sanitised() {
        assert_eq!(sanitize_file_name("photo.jpg"), "photo.jpg");
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name("..\\..\\x.exe"), "x.exe");
        assert_eq!(sanitize_file_name(".."), "attachment");
        assert_eq!(sanitize_file_name(""), "attachment");
        assert_eq!(sanitize_file_name("/"), "attachment");
        assert_eq!(sanitize_file_name(".hidden"), "hidden");
        assert_eq!(sanitize_file_name("a\u{0}b\nc"), "abc");
    }

    #[test]
    fn existing_names_get_a_number() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unique_path(dir.path(), "a.txt"), dir.path().join("a.txt"));
        std::fs::write(dir.path().join("a.txt"), b"x").unwrap();
        assert_eq!(
            unique_path(dir.path(), "a.txt"),
            dir.path().join("a (1).txt")
        );
        std::fs::write(dir.path().join("a (1).txt"), b"x").unwrap();
        assert_eq!(
            unique_path(dir.path(), "a.txt"),
            dir.path().join("a (2).txt")
        );
        std::fs::write(dir.path().join("noext"), b"x").unwrap();
        assert_eq!(
            unique_path(dir.path(), "noext"),
            dir.path().join("noext (1)")
        );
    }

    #[test]
    fn media_types_are_guessed_from_the_extension() {
        assert_eq!(guess_media_type("a.JPG"), "image/jpeg");
        assert_eq!(guess_media_type("voice.ogg"), "audio/ogg");
        assert_eq!(guess_media_type("x.unknown"), "application/octet-stream");
        assert_eq!(guess_media_type("noext"), "application/octet-stream");
    }
}
