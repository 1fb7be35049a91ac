//! The commit log in front of fjall: the file whose `fdatasync` makes a group of
//! commits durable.
//!
//! fjall's own journal cannot be synced without holding its writer lock for the
//! whole `fdatasync`, which stops every commit for the duration. So commits are
//! made durable here first, in segment files Rossby owns, and applied to fjall
//! afterwards; fjall's journal is synced in the background only to let old segments
//! go (a checkpoint).
//!
//! # Format
//! A segment is `commit-log/<seq>.log` (`seq` zero-padded, increasing). It holds
//! records back to back:
//!
//! ```text
//! record  = len:u32le crc:u32le payload[len]      crc = CRC-32 (IEEE) of payload
//! payload = group:u64le count:u32le entry*count
//! entry   = 0x01 klen:u32le key vlen:u32le value  (put)
//!         | 0x00 klen:u32le key                   (delete)
//! ```
//!
//! Group numbers increase by one from record to record, across segments. Recovery
//! replays records in order and stops at the first one that is short, fails its
//! checksum or breaks the numbering: a group is acknowledged only after every
//! earlier byte of the log was synced, so whatever follows a damaged record was
//! never acknowledged.

use crate::{Error, Key, Result, Value};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One write of a group: `Some` is a put, `None` a delete.
pub(super) type GroupWrite = (Key, Option<Value>);

/// Name of the log's directory inside the store's directory.
pub(super) const DIR: &str = "commit-log";

const HEADER: usize = 8;
const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 0;
/// Records larger than this are treated as damage (no group comes near it: values
/// are capped at [`crate::MAX_VALUE_BYTES`] and groups are bounded by the pipeline).
const MAX_RECORD: usize = 1 << 30;

/// A segment that no longer takes records, waiting for a checkpoint to delete it.
#[derive(Debug)]
pub(super) struct Sealed {
    pub path: PathBuf,
    /// The last group it holds.
    pub last_group: u64,
}

/// Segments sealed by the appender, shared with the checkpointer that deletes them.
pub(super) type SealedQueue = Arc<Mutex<VecDeque<Sealed>>>;

/// The appending end of the log, owned by the commit thread.
pub(super) struct CommitLog {
    dir: PathBuf,
    seq: u64,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    segment_bytes: u64,
    sealed: SealedQueue,
}

impl CommitLog {
    /// Starts a new, empty segment numbered `seq` in `dir`.
    pub fn create(dir: &Path, seq: u64, segment_bytes: u64, sealed: SealedQueue) -> Result<Self> {
        let (path, file) = new_segment(dir, seq)?;
        Ok(CommitLog {
            dir: dir.to_path_buf(),
            seq,
            path,
            file: Arc::new(file),
            len: 0,
            segment_bytes,
            sealed,
        })
    }

    /// Appends one encoded record (from [`encode`]) holding `group`, moving to a new
    /// segment first when the current one is full. Returns the file the record went
    /// to, which must be synced before the group is acknowledged.
    pub fn append(&mut self, group: u64, record: &[u8]) -> Result<Arc<File>> {
        if self.len >= self.segment_bytes {
            let (path, file) = new_segment(&self.dir, self.seq + 1)?;
            let sealed = Sealed {
                path: std::mem::replace(&mut self.path, path),
                last_group: group - 1,
            };
            crate::fjall::lock(&self.sealed).push_back(sealed);
            self.seq += 1;
            self.file = Arc::new(file);
            self.len = 0;
        }
        (&*self.file)
            .write_all(record)
            .map_err(|e| io_error("cannot append to the commit log", &self.path, e))?;
        self.len += record.len() as u64;
        Ok(Arc::clone(&self.file))
    }
}

fn new_segment(dir: &Path, seq: u64) -> Result<(PathBuf, File)> {
    let path = dir.join(segment_name(seq));
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_error("cannot create a commit log segment", &path, e))?;
    // The segment's name must be durable before a group synced inside it is
    // acknowledged: `fdatasync` of the file does not cover its directory entry.
    sync_dir(dir)?;
    Ok((path, file))
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

/// Makes the creation or removal of files in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot sync directory", dir, e))
}

pub(super) fn io_error(what: &str, path: &Path, err: std::io::Error) -> Error {
    Error::Unavailable(format!("{what} {}: {err}", path.display()))
}

/// Encodes one group as a record into `buf` (cleared first).
pub(super) fn encode<'a>(
    buf: &mut Vec<u8>,
    group: u64,
    writes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) {
    buf.clear();
    buf.extend_from_slice(&[0; HEADER]);
    buf.extend_from_slice(&group.to_le_bytes());
    let count_at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let mut count = 0u32;
    for (key, value) in writes {
        count += 1;
        match value {
            Some(value) => {
                buf.push(TAG_PUT);
                put_bytes(buf, key);
                put_bytes(buf, value);
            }
            None => {
                buf.push(TAG_DELETE);
                put_bytes(buf, key);
            }
        }
    }
    buf[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    let payload_len = (buf.len() - HEADER) as u32;
    let crc = crc32fast::hash(&buf[HEADER..]);
    buf[0..4].copy_from_slice(&payload_len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are far below 4 GiB (values are capped by the KV layer).
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// What recovery found in the log.
#[derive(Debug, Default)]
pub(super) struct Replayed {
    /// Every segment file, oldest first (to delete once their groups are safe).
    pub segments: Vec<PathBuf>,
    /// Number for the next segment.
    pub next_seq: u64,
    /// Groups handed to `apply`.
    pub groups: u64,
    /// Bytes after the last valid record (a torn write, never acknowledged).
    pub discarded_bytes: u64,
}

/// Reads every segment in `dir` in order and hands each valid group to `apply`,
/// stopping at the first damaged record.
pub(super) fn replay(
    dir: &Path,
    mut apply: impl FnMut(u64, Vec<GroupWrite>) -> Result<()>,
) -> Result<Replayed> {
    let mut numbered = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_error("cannot list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("cannot list", dir, e))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        numbered.push((seq, entry.path()));
    }
    numbered.sort();
    let mut out = Replayed {
        next_seq: numbered.last().map_or(0, |(seq, _)| seq + 1),
        ..Replayed::default()
    };
    let mut expected: Option<u64> = None;
    let mut stopped = false;
    for (_, path) in &numbered {
        out.segments.push(path.clone());
        let bytes = std::fs::read(path).map_err(|e| io_error("cannot read", path, e))?;
        if stopped {
            out.discarded_bytes += bytes.len() as u64;
            continue;
        }
        let mut at = 0;
        while at < bytes.len() {
            match decode(&bytes[at..]) {
                Some((group, writes, used)) if expected.is_none_or(|e| e == group) => {
                    apply(group, writes)?;
                    out.groups += 1;
                    expected = Some(group + 1);
                    at += used;
                }
                _ => {
                    stopped = true;
                    out.discarded_bytes += (bytes.len() - at) as u64;
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Decodes the record at the start of `bytes`: its group, its writes and its length.
fn decode(bytes: &[u8]) -> Option<(u64, Vec<GroupWrite>, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(HEADER..HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let mut reader = Reader(payload);
    let group = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
    let count = reader.u32()?;
    let mut writes = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        let tag = *reader.take(1)?.first()?;
        let key = reader.bytes()?.to_vec();
        let value = match tag {
            TAG_PUT => Some(reader.bytes()?.to_vec()),
            TAG_DELETE => None,
            _ => return None,
        };
        writes.push((key, value));
    }
    reader.0.is_empty().then_some((group, writes, HEADER + len))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn record(group: u64, writes: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, group, writes.iter().copied());
        buf
    }

    fn replay_all(dir: &Path) -> (Vec<(u64, Vec<GroupWrite>)>, Replayed) {
        let mut groups = Vec::new();
        let replayed = replay(dir, |g, w| {
            groups.push((g, w));
            Ok(())
        })
        .unwrap();
        (groups, replayed)
    }

    fn log(dir: &Path, segment_bytes: u64) -> (CommitLog, SealedQueue) {
        let sealed = SealedQueue::default();
        let log = CommitLog::create(dir, 0, segment_bytes, Arc::clone(&sealed)).unwrap();
        (log, sealed)
    }

    #[test]
    fn records_round_trip_in_order_across_segments() {
        let dir = TempDir::new().unwrap();
        let (mut log, sealed) = log(dir.path(), 40);
        for group in 1..=5u64 {
            let key = group.to_be_bytes();
            let rec = record(group, &[(&key, Some(b"value")), (b"gone", None)]);
            log.append(group, &rec).unwrap();
        }
        let sealed: Vec<u64> = lock_sealed(&sealed).iter().map(|s| s.last_group).collect();
        assert_eq!(sealed, [1, 2, 3, 4], "each record fills a 40-byte segment");

        let (groups, replayed) = replay_all(dir.path());
        assert_eq!(replayed.groups, 5);
        assert_eq!(replayed.segments.len(), 5);
        assert_eq!(replayed.next_seq, 5);
        assert_eq!(replayed.discarded_bytes, 0);
        for (i, (group, writes)) in groups.iter().enumerate() {
            assert_eq!(*group, i as u64 + 1);
            assert_eq!(
                writes[0],
                (group.to_be_bytes().to_vec(), Some(b"value".to_vec()))
            );
            assert_eq!(writes[1], (b"gone".to_vec(), None));
        }
    }

    fn lock_sealed(q: &SealedQueue) -> std::sync::MutexGuard<'_, VecDeque<Sealed>> {
        q.lock().unwrap()
    }

    #[test]
    fn a_torn_tail_ends_replay_and_is_counted() {
        let dir = TempDir::new().unwrap();
        let (mut log, _) = log(dir.path(), 1 << 20);
        log.append(1, &record(1, &[(b"a", Some(b"1"))])).unwrap();
        let second = record(2, &[(b"b", Some(b"2"))]);
        log.append(2, &second[..second.len() - 3]).unwrap();
        let (groups, replayed) = replay_all(dir.path());
        assert_eq!(groups.len(), 1);
        assert_eq!(replayed.discarded_bytes, second.len() as u64 - 3);
    }

    #[test]
    fn a_damaged_record_hides_everything_after_it() {
        let dir = TempDir::new().unwrap();
        let (mut log, _) = log(dir.path(), 60);
        let mut bad = record(2, &[(b"b", Some(b"2"))]);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        log.append(1, &record(1, &[(b"a", Some(b"1"))])).unwrap();
        log.append(2, &bad).unwrap();
        log.append(3, &record(3, &[(b"c", Some(b"3"))])).unwrap();
        log.append(4, &record(4, &[(b"d", Some(b"4"))])).unwrap();
        let (groups, replayed) = replay_all(dir.path());
        assert_eq!(groups.iter().map(|g| g.0).collect::<Vec<_>>(), [1]);
        assert!(replayed.discarded_bytes > bad.len() as u64);
    }

    #[test]
    fn a_gap_in_the_numbering_ends_replay() {
        let dir = TempDir::new().unwrap();
        let (mut log, _) = log(dir.path(), 1 << 20);
        log.append(7, &record(7, &[(b"a", Some(b"1"))])).unwrap();
        log.append(9, &record(9, &[(b"b", Some(b"2"))])).unwrap();
        let (groups, _) = replay_all(dir.path());
        assert_eq!(groups.iter().map(|g| g.0).collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn other_files_in_the_directory_are_ignored() {
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let (groups, replayed) = replay_all(dir.path());
        assert!(groups.is_empty());
        assert_eq!(replayed.next_seq, 0);
    }
}
