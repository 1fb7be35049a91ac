//! The public header of an MLS message (RFC 9420 §6), parsed by hand so the
//! gateway can check what it can of a Commit without an MLS implementation.
//!
//! ```text
//! struct {
//!     uint16 version = mls10 (1);
//!     uint16 wire_format;            // 1 public, 2 private, 3 welcome, 4 group info, 5 key package
//!     select (wire_format) {
//!       case mls_private_message:    // everything after content_type is encrypted
//!         opaque group_id<V>; uint64 epoch; uint8 content_type;
//!         opaque authenticated_data<V>; opaque encrypted_sender_data<V>; opaque ciphertext<V>;
//!       case mls_public_message:     // FramedContent, then signature and tag
//!         opaque group_id<V>; uint64 epoch; Sender sender;
//!         opaque authenticated_data<V>; uint8 content_type; ...
//!       ...
//!     }
//! } MLSMessage;
//! ```
//!
//! `<V>` is a length in RFC 9420's variable-length integer (§2.1.2: the top two
//! bits of the first byte give a length of 1, 2 or 4 bytes, minimal encoding
//! required). A `PrivateMessage` is parsed to its end (trailing bytes are an
//! error); of a `PublicMessage` only up to the content type (its signature and
//! membership tag need the group's keys). The sender of a `PrivateMessage` is
//! encrypted, so nothing here proves who made it.

use crate::error::{Error, Result};

pub mod key_package;

/// RFC 9420's `mls10`.
pub const MLS10: u16 = 1;

/// How the message is framed (`WireFormat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    /// `mls_public_message` (1): signed, not encrypted.
    Public,
    /// `mls_private_message` (2): encrypted content and sender.
    Private,
    /// `mls_welcome` (3).
    Welcome,
    /// `mls_group_info` (4).
    GroupInfo,
    /// `mls_key_package` (5).
    KeyPackage,
}

/// What a framed message carries (`ContentType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    /// `application` (1).
    Application,
    /// `proposal` (2).
    Proposal,
    /// `commit` (3).
    Commit,
}

/// The public header of a framed (public or private) message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framed<'a> {
    /// Public or private.
    pub wire_format: WireFormat,
    /// The MLS group id.
    pub group_id: &'a [u8],
    /// The epoch the message was made in.
    pub epoch: u64,
    /// What it carries.
    pub content_type: ContentType,
}

fn malformed(detail: &str) -> Error {
    Error::Malformed {
        what: "MLS message",
        detail: detail.to_string(),
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(malformed("truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A variable-length integer (RFC 9420 §2.1.2).
    fn varint(&mut self) -> Result<usize> {
        let first = self.u8()?;
        let (len, value) = match first >> 6 {
            0 => return Ok(usize::from(first & 0x3f)),
            1 => (2, u32::from(first & 0x3f)),
            2 => (4, u32::from(first & 0x3f)),
            _ => return Err(malformed("invalid variable-length integer")),
        };
        let mut value = value;
        for b in self.take(len - 1)? {
            value = (value << 8) | u32::from(*b);
        }
        let minimal = if len == 2 {
            value >= 64
        } else {
            value >= 16_384
        };
        if !minimal {
            return Err(malformed("variable-length integer not minimally encoded"));
        }
        usize::try_from(value).map_err(|_| malformed("length too large"))
    }

    fn vector(&mut self) -> Result<&'a [u8]> {
        let len = self.varint()?;
        self.take(len)
    }
}

fn wire_format(value: u16) -> Result<WireFormat> {
    Ok(match value {
        1 => WireFormat::Public,
        2 => WireFormat::Private,
        3 => WireFormat::Welcome,
        4 => WireFormat::GroupInfo,
        5 => WireFormat::KeyPackage,
        _ => return Err(malformed("unknown wire format")),
    })
}

fn content_type(value: u8) -> Result<ContentType> {
    Ok(match value {
        1 => ContentType::Application,
        2 => ContentType::Proposal,
        3 => ContentType::Commit,
        _ => return Err(malformed("unknown content type")),
    })
}

/// The version and wire format of any MLS message.
pub fn wire_format_of(bytes: &[u8]) -> Result<WireFormat> {
    let mut r = Reader { rest: bytes };
    if r.u16()? != MLS10 {
        return Err(malformed("not MLS 1.0"));
    }
    wire_format(r.u16()?)
}

/// Parses the header of a public or private framed message (see the module
/// documentation for how much of it is read).
pub fn parse_framed(bytes: &[u8]) -> Result<Framed<'_>> {
    let mut r = Reader { rest: bytes };
    if r.u16()? != MLS10 {
        return Err(malformed("not MLS 1.0"));
    }
    let format = wire_format(r.u16()?)?;
    let group_id = r.vector()?;
    let epoch = r.u64()?;
    let content = match format {
        WireFormat::Private => {
            let content = content_type(r.u8()?)?;
            r.vector()?; // authenticated_data
            r.vector()?; // encrypted_sender_data
            r.vector()?; // ciphertext
            if !r.rest.is_empty() {
                return Err(malformed("trailing bytes"));
            }
            content
        }
        WireFormat::Public => {
            match r.u8()? {
                // member (leaf index), external (sender index)
                1 | 2 => {
                    r.u32()?;
                }
                // new_member_proposal, new_member_commit
                3 | 4 => {}
                _ => return Err(malformed("unknown sender type")),
            }
            r.vector()?; // authenticated_data
            content_type(r.u8()?)?
        }
        _ => return Err(malformed("not a framed message")),
    };
    Ok(Framed {
        wire_format: format,
        group_id,
        epoch,
        content_type: content,
    })
}

/// Appends a variable-length integer (RFC 9420 §2.1.2) to `out`; `None` for
/// lengths of 2³⁰ and more, which have no encoding.
fn put_varint(out: &mut Vec<u8>, n: usize) -> Option<()> {
    if n < 64 {
        out.push(u8::try_from(n).ok()?);
    } else if n < 16_384 {
        out.extend((u16::try_from(n).ok()? | 0x4000).to_be_bytes());
    } else if n < (1 << 30) {
        out.extend((u32::try_from(n).ok()? | 0x8000_0000).to_be_bytes());
    } else {
        return None;
    }
    Some(())
}

/// Frames `ciphertext` as an MLS 1.0 `PrivateMessage` with empty
/// authenticated data and sender data: the form [`parse_framed`] reads, for
/// tools and tests that exercise a gateway without an MLS group. `None` when a
/// part is too long to encode.
pub fn frame_private(
    group_id: &[u8],
    epoch: u64,
    content_type: ContentType,
    ciphertext: &[u8],
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(24 + group_id.len() + ciphertext.len());
    out.extend(MLS10.to_be_bytes());
    out.extend(2u16.to_be_bytes());
    put_varint(&mut out, group_id.len())?;
    out.extend_from_slice(group_id);
    out.extend(epoch.to_be_bytes());
    out.push(match content_type {
        ContentType::Application => 1,
        ContentType::Proposal => 2,
        ContentType::Commit => 3,
    });
    put_varint(&mut out, 0)?;
    put_varint(&mut out, 0)?;
    put_varint(&mut out, ciphertext.len())?;
    out.extend_from_slice(ciphertext);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(n: usize) -> Vec<u8> {
        if n < 64 {
            vec![n as u8]
        } else if n < 16_384 {
            ((n as u16) | 0x4000).to_be_bytes().to_vec()
        } else {
            ((n as u32) | 0x8000_0000).to_be_bytes().to_vec()
        }
    }

    fn vector(bytes: &[u8]) -> Vec<u8> {
        let mut out = varint(bytes.len());
        out.extend_from_slice(bytes);
        out
    }

    fn private(group_id: &[u8], epoch: u64, content: u8, ciphertext: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 1, 0, 2];
        out.extend(vector(group_id));
        out.extend(epoch.to_be_bytes());
        out.push(content);
        out.extend(vector(b""));
        out.extend(vector(&[9; 40]));
        out.extend(vector(ciphertext));
        out
    }

    #[test]
    fn a_private_commit_header_is_read() {
        let gid = [7u8; 32];
        let bytes = private(&gid, 5, 3, &[1; 300]);
        let framed = parse_framed(&bytes).unwrap();
        assert_eq!(framed.wire_format, WireFormat::Private);
        assert_eq!(framed.group_id, gid);
        assert_eq!(framed.epoch, 5);
        assert_eq!(framed.content_type, ContentType::Commit);
        assert_eq!(wire_format_of(&bytes).unwrap(), WireFormat::Private);
    }

    #[test]
    fn a_public_commit_header_is_read() {
        let mut bytes = vec![0, 1, 0, 1];
        bytes.extend(vector(b"group"));
        bytes.extend(9u64.to_be_bytes());
        bytes.push(1);
        bytes.extend(3u32.to_be_bytes());
        bytes.extend(vector(b"ad"));
        bytes.push(3);
        bytes.extend([0xaa; 64]);
        let framed = parse_framed(&bytes).unwrap();
        assert_eq!(framed.wire_format, WireFormat::Public);
        assert_eq!(framed.group_id, b"group");
        assert_eq!(framed.epoch, 9);
        assert_eq!(framed.content_type, ContentType::Commit);
    }

    #[test]
    fn garbage_is_refused() {
        let good = private(&[1; 32], 0, 3, &[2; 20]);
        for bad in [
            b"".to_vec(),
            b"c1".to_vec(),
            vec![0, 2, 0, 2],
            vec![0, 1, 0, 9],
            good[..good.len() - 1].to_vec(),
            [good.clone(), vec![0]].concat(),
            private(&[1; 32], 0, 7, &[2; 20]),
            // A Welcome is no framed message.
            vec![0, 1, 0, 3, 0],
        ] {
            assert!(parse_framed(&bad).is_err(), "{bad:?}");
        }
        // Lengths must be minimally encoded, and 0b11 is no length.
        let mut long = vec![0, 1, 0, 2, 0x40, 0x01, 0];
        long.extend(0u64.to_be_bytes());
        assert!(parse_framed(&long).is_err());
        assert!(parse_framed(&[0, 1, 0, 2, 0xc0]).is_err());
    }

    #[test]
    fn framed_messages_parse_back() {
        let bytes = frame_private(b"gid", 4, ContentType::Proposal, &[1; 100]).unwrap();
        let framed = parse_framed(&bytes).unwrap();
        assert_eq!(
            (framed.group_id, framed.epoch, framed.content_type),
            (&b"gid"[..], 4, ContentType::Proposal)
        );
    }

    #[test]
    fn lengths_of_every_size_are_read() {
        for len in [0usize, 63, 64, 16_383, 16_384, 70_000] {
            let bytes = private(&[3; 16], 1, 1, &vec![5; len]);
            let framed = parse_framed(&bytes).unwrap();
            assert_eq!(framed.content_type, ContentType::Application);
        }
    }
}
