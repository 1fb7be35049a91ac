//! `POST /backup` on the admin listener: streams one read snapshot of the whole
//! store in the backup format, to a caller holding the backup token.
//!
//! The snapshot is a single read-only transaction scanning the key space in
//! batches: every batch reads the same snapshot (fjall and the memory store keep a
//! transaction's snapshot until it ends), so the stream is consistent however long
//! it takes, while clients keep writing. The transaction ends with a rollback,
//! which returns only once everything it read is durable; the trailer is sent
//! after that, so a backup with a trailer holds only data that survives a crash.

use super::format::{Encoder, FORMAT_VERSION, Header};
use super::token_matches;
use crate::server::{Lifecycle, now_ms};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Bytes, Frame};
use rossby_storage::{KeyRange, Kv, ScanOrder, Transaction};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::mpsc;

/// Most keys read per scan of the snapshot.
const MAX_SCAN_BATCH: usize = 1000;
/// Bytes of keys and values one scan may hold: a scan reads at most
/// `SCAN_BUDGET_BYTES / (largest value + RECORD_OVERHEAD)` keys, so a store of
/// large envelopes does not pull a thousand of them into memory at once.
const SCAN_BUDGET_BYTES: usize = 8 * 1024 * 1024;
/// What a stored record may carry beyond the largest payload: its key, the
/// record's own fields and protobuf framing (generous).
const RECORD_OVERHEAD: usize = 64 * 1024;
/// Bytes gathered before a piece of the stream is handed to the connection.
const CHUNK_BYTES: usize = 256 * 1024;
/// Pieces buffered between the snapshot reader and the connection; a slow reader
/// slows the scan down rather than filling memory.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The backup endpoint of one gateway: the token it accepts and whether a backup
/// is running (one at a time).
pub struct BackupService {
    token: String,
    running: AtomicBool,
    /// Keys read per scan ([`SCAN_BUDGET_BYTES`]).
    scan_batch: usize,
}

impl std::fmt::Debug for BackupService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupService")
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Why a snapshot stream stopped early.
enum Stop {
    /// The caller closed the connection.
    CallerGone,
    /// Reading failed; the caller gets a broken stream without a trailer.
    Failed(String),
}

/// Marks the service idle again when a backup ends, however it ends.
struct Running(Arc<BackupService>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

impl BackupService {
    /// The endpoint of a gateway with this server secret: it accepts
    /// [`super::backup_token`] of the secret. `max_payload_bytes` is the store's
    /// largest payload (`Limits::max_payload_bytes`), which bounds a record.
    pub fn new(server_secret: &[u8], max_payload_bytes: usize) -> BackupService {
        BackupService {
            token: super::backup_token(server_secret),
            running: AtomicBool::new(false),
            scan_batch: scan_batch(max_payload_bytes),
        }
    }

    /// Keys read per scan of the snapshot.
    pub fn scan_batch(&self) -> usize {
        self.scan_batch
    }

    /// Answers one `POST /backup`: `401` without the right bearer token, `501` for a
    /// TiKV store (backed up with BR), `503` while draining or when the store cannot
    /// begin a transaction, `409` while another backup runs, else `200` and the
    /// stream.
    pub(crate) async fn respond(
        self: Arc<Self>,
        kv: Kv,
        lifecycle: Arc<Lifecycle>,
        headers: &HeaderMap,
    ) -> Response {
        if let Err(reason) = self.authorize(headers) {
            tracing::warn!(reason, "backup request refused");
            let mut response = (StatusCode::UNAUTHORIZED, format!("{reason}\n")).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        if kv.backend() == "tikv" {
            return (
                StatusCode::NOT_IMPLEMENTED,
                "a TiKV store is backed up with BR (docs/operations/backup-restore.md)\n",
            )
                .into_response();
        }
        if lifecycle.draining.load(Ordering::Acquire) {
            return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
        }
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return (StatusCode::CONFLICT, "a backup is already running\n").into_response();
        }
        let running = Running(self.clone());
        let snapshot_unix_ms = now_ms();
        let txn = match kv.begin().await {
            Ok(txn) => txn,
            Err(err) => {
                let message = format!("storage: {err}").replace('\n', " ");
                return (StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n")).into_response();
            }
        };
        let header = Header {
            format_version: FORMAT_VERSION,
            backend: kv.backend().to_string(),
            snapshot_unix_ms,
            rossby_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        tracing::info!(backend = kv.backend(), snapshot_unix_ms, "backup started");
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        tokio::spawn(produce(
            txn,
            header,
            tx,
            lifecycle,
            running,
            self.scan_batch,
        ));
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            Body::new(ChannelBody { rx }),
        )
            .into_response()
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or("missing bearer token (Authorization: Bearer <token>)")?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("the Authorization header is not a bearer token")?;
        if token_matches(token.trim(), &self.token) {
            Ok(())
        } else {
            Err("wrong backup token")
        }
    }
}

/// Streams the snapshot into `tx`; on failure the stream breaks off without a
/// trailer, which every reader of the format treats as an incomplete backup.
async fn produce(
    txn: Box<dyn Transaction>,
    header: Header,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    lifecycle: Arc<Lifecycle>,
    running: Running,
    scan_batch: usize,
) {
    let started = Instant::now();
    match stream_snapshot(txn, header, &tx, &lifecycle, scan_batch).await {
        Ok((records, bytes)) => tracing::info!(
            records,
            bytes,
            elapsed = ?started.elapsed(),
            "backup streamed"
        ),
        Err(Stop::CallerGone) => {
            tracing::warn!(elapsed = ?started.elapsed(), "backup cut off: the caller went away");
        }
        Err(Stop::Failed(reason)) => {
            tracing::warn!(reason, elapsed = ?started.elapsed(), "backup failed");
            let _ = tx.send(Err(std::io::Error::other(reason))).await;
        }
    }
    drop(running);
}

/// Returns the records and bytes sent.
async fn stream_snapshot(
    mut txn: Box<dyn Transaction>,
    header: Header,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    lifecycle: &Lifecycle,
    scan_batch: usize,
) -> Result<(u64, u64), Stop> {
    let mut sent = 0u64;
    let mut out = Vec::with_capacity(CHUNK_BYTES * 2);
    let mut encoder = Encoder::start(header, &mut out);
    let mut range = KeyRange {
        start: Vec::new(),
        end: None,
    };
    loop {
        if lifecycle.draining.load(Ordering::Acquire) {
            return Err(Stop::Failed("the gateway began draining".into()));
        }
        let batch = txn
            .scan(&range, scan_batch, ScanOrder::Forward)
            .await
            .map_err(|e| Stop::Failed(format!("storage: {e}")))?;
        let more = batch.len() == scan_batch;
        // The next batch starts at the smallest key after this batch's last one.
        let next_start = batch.last().map(|(key, _)| {
            let mut next = key.clone();
            next.push(0);
            next
        });
        for (key, value) in batch {
            encoder.record(key, value, &mut out);
            if out.len() >= CHUNK_BYTES {
                sent += send(tx, &mut out).await?;
            }
        }
        match next_start {
            Some(start) if more => range.start = start,
            _ => break,
        }
    }
    // Only once the rollback returned is everything the snapshot holds durable.
    txn.rollback()
        .await
        .map_err(|e| Stop::Failed(format!("storage: {e}")))?;
    let records = encoder.records();
    encoder.finish(&mut out);
    sent += send(tx, &mut out).await?;
    Ok((records, sent))
}

/// Keys per scan so that one scan holds at most [`SCAN_BUDGET_BYTES`] however
/// large the records are.
fn scan_batch(max_payload_bytes: usize) -> usize {
    (SCAN_BUDGET_BYTES / max_payload_bytes.saturating_add(RECORD_OVERHEAD)).clamp(1, MAX_SCAN_BATCH)
}

async fn send(
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    out: &mut Vec<u8>,
) -> Result<u64, Stop> {
    let chunk = std::mem::replace(out, Vec::with_capacity(CHUNK_BYTES * 2));
    let len = chunk.len() as u64;
    tx.send(Ok(Bytes::from(chunk)))
        .await
        .map_err(|_| Stop::CallerGone)?;
    Ok(len)
}

/// A response body fed by the snapshot task.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|result| result.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::format::{Decoder, Event};
    use rossby_storage::kv::fjall::{FjallConfig, FjallStore};
    use rossby_storage::kv::memory::MemoryStore;

    fn key(i: usize) -> Vec<u8> {
        format!("k{i:06}").into_bytes()
    }

    async fn put(kv: &Kv, writes: &[(Vec<u8>, Option<Vec<u8>>)]) {
        let mut txn = kv.begin().await.unwrap();
        for (k, v) in writes {
            match v {
                Some(v) => txn.put(k.clone(), v.clone()).await.unwrap(),
                None => txn.delete(k.clone()).await.unwrap(),
            }
        }
        txn.commit().await.unwrap();
    }

    /// Streams a snapshot taken before later writes; returns the decoded records.
    async fn snapshot_of(kv: Kv) -> Vec<(Vec<u8>, Vec<u8>)> {
        const KEYS: usize = 2500;
        // Several scan batches and several chunks.
        let original: Vec<_> = (0..KEYS)
            .map(|i| (key(i), Some(vec![i as u8; 300])))
            .collect();
        for part in original.chunks(500) {
            put(&kv, part).await;
        }
        let txn = kv.begin().await.unwrap();
        // Written after the snapshot began: none of it may appear.
        put(
            &kv,
            &[
                (key(0), None),
                (key(1999), Some(b"changed".to_vec())),
                (b"zzz".to_vec(), Some(b"new".to_vec())),
            ],
        )
        .await;
        let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
        let header = Header {
            format_version: FORMAT_VERSION,
            backend: kv.backend().into(),
            snapshot_unix_ms: 1,
            rossby_version: "test".into(),
        };
        let lifecycle = Lifecycle::default();
        let reader = tokio::spawn(async move {
            let mut decoder = Decoder::new();
            let mut records = Vec::new();
            let mut chunks = 0;
            while let Some(chunk) = rx.recv().await {
                chunks += 1;
                decoder.push(&chunk.unwrap()).unwrap();
                while let Some(event) = decoder.next_event().unwrap() {
                    if let Event::Record(r) = event {
                        records.push((r.key, r.value));
                    }
                }
            }
            let summary = decoder.finish().unwrap();
            assert_eq!(summary.records, records.len() as u64);
            assert!(chunks > 1, "{chunks} chunks");
            records
        });
        // Small batches (as for large records), so the snapshot spans many scans.
        let sent = stream_snapshot(txn, header, &tx, &lifecycle, 64).await;
        assert!(matches!(sent, Ok((2500, _))));
        drop(tx);
        let records = reader.await.unwrap();
        let expected: Vec<_> = (0..KEYS).map(|i| (key(i), vec![i as u8; 300])).collect();
        assert_eq!(records, expected);
        records
    }

    #[tokio::test]
    async fn the_stream_is_one_snapshot_across_batches_on_memory() {
        snapshot_of(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stream_is_one_snapshot_across_batches_on_fjall() {
        let dir = tempfile::tempdir().unwrap();
        let kv: Kv = Arc::new(FjallStore::open(FjallConfig::new(dir.path())).unwrap());
        snapshot_of(kv).await;
    }

    #[tokio::test]
    async fn a_draining_gateway_breaks_the_stream_off() {
        let kv: Kv = Arc::new(MemoryStore::new());
        put(&kv, &[(key(1), Some(vec![1]))]).await;
        let lifecycle = Lifecycle::default();
        lifecycle.draining.store(true, Ordering::Release);
        let (tx, _rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let header = Header::default();
        let txn = kv.begin().await.unwrap();
        let result = stream_snapshot(txn, header, &tx, &lifecycle, MAX_SCAN_BATCH).await;
        assert!(matches!(result, Err(Stop::Failed(reason)) if reason.contains("draining")));
    }

    #[test]
    fn a_scan_holds_at_most_its_byte_budget() {
        for payload in [
            1,
            1024,
            64 * 1024,
            256 * 1024,
            1024 * 1024,
            64 * 1024 * 1024,
        ] {
            let batch = scan_batch(payload);
            assert!((1..=MAX_SCAN_BATCH).contains(&batch));
            // Only a record larger than the whole budget is read alone.
            if payload + RECORD_OVERHEAD <= SCAN_BUDGET_BYTES {
                assert!(
                    batch * (payload + RECORD_OVERHEAD) <= SCAN_BUDGET_BYTES,
                    "{payload}"
                );
            } else {
                assert_eq!(batch, 1);
            }
        }
        // The default payload limit (256 KiB): 25 keys per scan, not 1000.
        assert_eq!(scan_batch(256 * 1024), 25);
    }
}
