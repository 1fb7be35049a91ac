//! The backup stream: what `POST /backup` sends and what a backup directory's
//! `snapshot.rbk` holds, byte for byte.
//!
//! ```text
//! magic       8 bytes   "RSBYBAK" 0x01
//! frame*      u32 big-endian length, then a protobuf `Frame` of that length
//! ```
//!
//! The first frame is a [`Header`], then one [`Record`] per key in ascending key
//! order, then a [`Trailer`] with the number of records, their key and value bytes,
//! and the SHA-256 of every byte before the trailer frame (magic included). Nothing
//! follows the trailer. A stream without its trailer is incomplete, whatever it
//! holds: the trailer is written only after the snapshot was read to its end.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};

/// First bytes of every backup; the last byte is the format version.
pub const MAGIC: &[u8; 8] = b"RSBYBAK\x01";
/// The format version written in the header (and the magic's last byte).
pub const FORMAT_VERSION: u32 = 1;
/// Largest frame accepted: a record holds at most one key and one value of at most
/// `rossby_storage::kv::MAX_VALUE_BYTES`, so anything larger is damage.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// What the backup is of.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Header {
    /// [`FORMAT_VERSION`].
    #[prost(uint32, tag = "1")]
    pub format_version: u32,
    /// The backend the snapshot was read from (`fjall`, `memory`).
    #[prost(string, tag = "2")]
    pub backend: String,
    /// When the snapshot's transaction began, in Unix milliseconds.
    #[prost(uint64, tag = "3")]
    pub snapshot_unix_ms: u64,
    /// The version of the gateway that wrote it.
    #[prost(string, tag = "4")]
    pub rossby_version: String,
}

/// One key and its value.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Record {
    /// The key (never empty).
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// The end of a complete backup.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Trailer {
    /// Records in the backup.
    #[prost(uint64, tag = "1")]
    pub records: u64,
    /// Sum of the records' key and value lengths.
    #[prost(uint64, tag = "2")]
    pub record_bytes: u64,
    /// SHA-256 of every byte before the trailer's frame.
    #[prost(bytes = "vec", tag = "3")]
    pub sha256: Vec<u8>,
}

/// One frame of the stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    /// What the frame carries.
    #[prost(oneof = "Item", tags = "1, 2, 3")]
    pub item: Option<Item>,
}

/// The content of a [`Frame`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Item {
    /// The first frame.
    #[prost(message, tag = "1")]
    Header(Header),
    /// A key and its value.
    #[prost(message, tag = "2")]
    Record(Record),
    /// The last frame.
    #[prost(message, tag = "3")]
    Trailer(Trailer),
}

/// What a complete, verified backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Its header.
    pub header: Header,
    /// Records in it.
    pub records: u64,
    /// Sum of the records' key and value lengths.
    pub record_bytes: u64,
    /// Its checksum (as in the trailer, and verified).
    pub sha256: [u8; 32],
    /// Length of the whole stream.
    pub total_bytes: u64,
}

impl Summary {
    /// The checksum in hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Appends one frame to `out`; returns where it starts.
fn write_frame(item: Item, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let frame = Frame { item: Some(item) };
    let len = prost::Message::encoded_len(&frame);
    // Frames are far below 4 GiB: records are bounded by the store's value limit.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    prost::Message::encode_raw(&frame, out);
    start
}

/// Writes a backup stream into caller-provided buffers, keeping the checksum.
pub struct Encoder {
    hasher: Sha256,
    records: u64,
    record_bytes: u64,
}

impl Encoder {
    /// Starts a stream: appends the magic and the header frame to `out`.
    pub fn start(header: Header, out: &mut Vec<u8>) -> Encoder {
        let start = out.len();
        out.extend_from_slice(MAGIC);
        write_frame(Item::Header(header), out);
        let mut hasher = Sha256::new();
        hasher.update(&out[start..]);
        Encoder {
            hasher,
            records: 0,
            record_bytes: 0,
        }
    }

    /// Appends one record (keys must come in ascending order).
    pub fn record(&mut self, key: Vec<u8>, value: Vec<u8>, out: &mut Vec<u8>) {
        self.records += 1;
        self.record_bytes += (key.len() + value.len()) as u64;
        let start = write_frame(Item::Record(Record { key, value }), out);
        self.hasher.update(&out[start..]);
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Ends the stream: appends the trailer and returns it.
    pub fn finish(self, out: &mut Vec<u8>) -> Trailer {
        let trailer = Trailer {
            records: self.records,
            record_bytes: self.record_bytes,
            sha256: self.hasher.finalize().to_vec(),
        };
        write_frame(Item::Trailer(trailer.clone()), out);
        trailer
    }
}

/// What [`Decoder::next_event`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The header (always first).
    Header(Header),
    /// A record, checked to be in ascending key order.
    Record(Record),
    /// The trailer, checked against everything before it.
    End(Summary),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Magic,
    Header,
    Records,
    Done,
}

/// Reads a backup stream given in pieces of any size, checking it as it goes:
/// magic, header, key order, frame sizes, and at the end the trailer's counts and
/// checksum. Feed bytes with [`Decoder::push`], take events with
/// [`Decoder::next_event`] until it returns `None`, and call [`Decoder::finish`]
/// at the end of the input.
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already decoded.
    pos: usize,
    /// Stream bytes decoded before `buf[0]`.
    offset: u64,
    stage: Stage,
    hasher: Sha256,
    header: Option<Header>,
    records: u64,
    record_bytes: u64,
    last_key: Option<Vec<u8>>,
    summary: Option<Summary>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Decoder {
        Decoder {
            buf: Vec::new(),
            pos: 0,
            offset: 0,
            stage: Stage::Magic,
            hasher: Sha256::new(),
            header: None,
            records: 0,
            record_bytes: 0,
            last_key: None,
            summary: None,
        }
    }

    /// Appends input. Bytes after the trailer are an error.
    pub fn push(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.stage == Stage::Done {
            return Err(damaged(format!(
                "unexpected data after the trailer at byte {}",
                self.position()
            )));
        }
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.offset += self.pos as u64;
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete item of the input so far; `None` when more input is
    /// needed (or the stream has ended).
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        match self.stage {
            Stage::Done => Ok(None),
            Stage::Magic => {
                if self.available() < MAGIC.len() {
                    return Ok(None);
                }
                let magic = &self.buf[self.pos..self.pos + MAGIC.len()];
                if magic[..7] != MAGIC[..7] {
                    return Err(damaged("not a Rossby backup (bad magic bytes)".into()));
                }
                if magic[7] != MAGIC[7] {
                    return Err(damaged(format!(
                        "unsupported backup format version {} (this version reads {FORMAT_VERSION})",
                        magic[7]
                    )));
                }
                self.hasher.update(magic);
                self.pos += MAGIC.len();
                self.stage = Stage::Header;
                self.next_event()
            }
            Stage::Header | Stage::Records => self.next_frame(),
        }
    }

    /// Checks that the input ended exactly after the trailer; returns what the
    /// stream held.
    pub fn finish(&self) -> Result<Summary> {
        match &self.summary {
            Some(summary) if self.available() == 0 => Ok(summary.clone()),
            Some(_) => Err(damaged(format!(
                "unexpected data after the trailer at byte {}",
                self.position()
            ))),
            None => Err(damaged(format!(
                "incomplete: the stream ends at byte {} after {} records, before its trailer",
                self.offset + self.buf.len() as u64,
                self.records
            ))),
        }
    }

    fn available(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn position(&self) -> u64 {
        self.offset + self.pos as u64
    }

    fn next_frame(&mut self) -> Result<Option<Event>> {
        if self.available() < 4 {
            return Ok(None);
        }
        let at = self.position();
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&self.buf[self.pos..self.pos + 4]);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(damaged(format!(
                "frame at byte {at} claims {len} bytes (at most {MAX_FRAME_BYTES})"
            )));
        }
        if self.available() < 4 + len {
            return Ok(None);
        }
        let raw = &self.buf[self.pos..self.pos + 4 + len];
        let frame: Frame = prost::Message::decode(&raw[4..])
            .map_err(|e| damaged(format!("frame at byte {at} does not decode: {e}")))?;
        let item = frame
            .item
            .ok_or_else(|| damaged(format!("frame at byte {at} is empty")))?;
        let event = match (self.stage, item) {
            (Stage::Header, Item::Header(header)) => {
                if header.format_version != FORMAT_VERSION {
                    return Err(damaged(format!(
                        "unsupported backup format version {} (this version reads {FORMAT_VERSION})",
                        header.format_version
                    )));
                }
                self.hasher.update(raw);
                self.header = Some(header.clone());
                self.stage = Stage::Records;
                Event::Header(header)
            }
            (Stage::Records, Item::Record(record)) => {
                if record.key.is_empty() {
                    return Err(damaged(format!("record at byte {at} has an empty key")));
                }
                if self
                    .last_key
                    .as_ref()
                    .is_some_and(|last| *last >= record.key)
                {
                    return Err(damaged(format!("record at byte {at} is out of key order")));
                }
                self.hasher.update(raw);
                self.records += 1;
                self.record_bytes += (record.key.len() + record.value.len()) as u64;
                self.last_key = Some(record.key.clone());
                Event::Record(record)
            }
            (Stage::Records, Item::Trailer(trailer)) => {
                let sha256: [u8; 32] = self.hasher.clone().finalize().into();
                if trailer.sha256 != sha256 {
                    return Err(damaged(
                        "checksum mismatch: the content differs from what was written".into(),
                    ));
                }
                if trailer.records != self.records || trailer.record_bytes != self.record_bytes {
                    return Err(damaged(format!(
                        "the trailer counts {} records of {} bytes, the stream holds {} of {}",
                        trailer.records, trailer.record_bytes, self.records, self.record_bytes
                    )));
                }
                let header = self
                    .header
                    .clone()
                    .ok_or_else(|| damaged("trailer before the header".into()))?;
                let summary = Summary {
                    header,
                    records: self.records,
                    record_bytes: self.record_bytes,
                    sha256,
                    total_bytes: at + 4 + len as u64,
                };
                self.summary = Some(summary.clone());
                self.stage = Stage::Done;
                Event::End(summary)
            }
            (Stage::Header, _) => {
                return Err(damaged("the stream does not start with a header".into()));
            }
            (_, _) => {
                return Err(damaged(format!("unexpected frame at byte {at}")));
            }
        };
        self.pos += 4 + len;
        Ok(Some(event))
    }
}

fn damaged(message: String) -> Error {
    Error::Backup(format!("damaged backup: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format_version: FORMAT_VERSION,
            backend: "memory".into(),
            snapshot_unix_ms: 1_700_000_000_000,
            rossby_version: "test".into(),
        }
    }

    fn stream(records: &[(&[u8], &[u8])]) -> (Vec<u8>, Trailer) {
        let mut out = Vec::new();
        let mut encoder = Encoder::start(header(), &mut out);
        for (k, v) in records {
            encoder.record(k.to_vec(), v.to_vec(), &mut out);
        }
        let trailer = encoder.finish(&mut out);
        (out, trailer)
    }

    /// Decodes `bytes` fed in pieces of `piece` bytes.
    fn decode(bytes: &[u8], piece: usize) -> Result<(Vec<Record>, Summary)> {
        let mut decoder = Decoder::new();
        let mut records = Vec::new();
        let mut seen_header = false;
        for chunk in bytes.chunks(piece.max(1)) {
            decoder.push(chunk)?;
            while let Some(event) = decoder.next_event()? {
                match event {
                    Event::Header(_) => seen_header = true,
                    Event::Record(r) => records.push(r),
                    Event::End(_) => {}
                }
            }
        }
        let summary = decoder.finish()?;
        assert!(seen_header);
        Ok((records, summary))
    }

    const RECORDS: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"b", b""), (b"c\x00", b"value")];

    #[test]
    fn a_stream_round_trips_in_pieces_of_any_size() {
        let (bytes, trailer) = stream(&RECORDS);
        assert_eq!(trailer.records, 3);
        assert_eq!(trailer.record_bytes, 1 + 1 + 1 + 2 + 5);
        for piece in [1, 3, 7, 64, bytes.len()] {
            let (records, summary) = decode(&bytes, piece).unwrap();
            let pairs: Vec<(&[u8], &[u8])> = records
                .iter()
                .map(|r| (r.key.as_slice(), r.value.as_slice()))
                .collect();
            assert_eq!(pairs, RECORDS);
            assert_eq!(summary.records, 3);
            assert_eq!(summary.header, header());
            assert_eq!(summary.total_bytes, bytes.len() as u64);
            assert_eq!(summary.sha256.to_vec(), trailer.sha256);
        }
        let (empty, _) = stream(&[]);
        assert_eq!(decode(&empty, 5).unwrap().1.records, 0);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let (bytes, _) = stream(&RECORDS);
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut damaged = bytes.clone();
                damaged[i] ^= bit;
                let result = decode(&damaged, 4);
                assert!(
                    result.is_err(),
                    "flip of byte {i} bit {bit:#x} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn truncation_and_trailing_data_are_detected() {
        let (bytes, _) = stream(&RECORDS);
        for cut in 0..bytes.len() {
            let message = decode(&bytes[..cut], 16).unwrap_err().to_string();
            assert!(
                message.contains("incomplete") || message.contains("bad magic"),
                "cut at {cut}: {message}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let message = decode(&longer, 1000).unwrap_err().to_string();
        assert!(message.contains("after the trailer"), "{message}");
    }

    #[test]
    fn out_of_order_records_and_foreign_files_are_refused() {
        let mut out = Vec::new();
        let mut encoder = Encoder::start(header(), &mut out);
        encoder.record(b"b".to_vec(), vec![], &mut out);
        encoder.record(b"a".to_vec(), vec![], &mut out);
        encoder.finish(&mut out);
        let message = decode(&out, 100).unwrap_err().to_string();
        assert!(message.contains("out of key order"), "{message}");

        let message = decode(b"PK\x03\x04 a zip file", 100)
            .unwrap_err()
            .to_string();
        assert!(message.contains("not a Rossby backup"), "{message}");
        let mut future = stream(&RECORDS).0;
        future[7] = 2;
        let message = decode(&future, 100).unwrap_err().to_string();
        assert!(message.contains("format version 2"), "{message}");
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let message = decode(&bytes, 100).unwrap_err().to_string();
        assert!(message.contains("claims"), "{message}");
    }
}
