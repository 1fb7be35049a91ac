//! Length-prefixed framing.
//!
//! A frame is a 4-byte big-endian unsigned length `n` followed by `n` bytes of a
//! protobuf message. A zero-length frame is valid (an all-default message). The
//! receiver rejects a declared length above its limit before reading the body, so
//! a peer cannot make it buffer more than the limit.

use crate::error::{Error, Result};
use prost::Message;

/// Size of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Default largest frame body accepted (1 MiB plus room for the request fields
/// around a 1 MiB payload limit).
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024 + 64 * 1024;

/// Encodes `message` as one frame.
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(LENGTH_PREFIX + len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    // Encoding into a Vec cannot run out of space.
    message.encode(&mut out).ok();
    out
}

/// Reads the declared body length from a 4-byte prefix and checks it against `max`.
pub fn body_len(prefix: [u8; LENGTH_PREFIX], max: usize) -> Result<usize> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(Error::FrameTooLarge { len, max });
    }
    Ok(len)
}

/// Splits one complete frame off the front of `buf`: returns the body and the
/// rest. `Ok(None)` means more bytes are needed.
pub fn split(buf: &[u8], max: usize) -> Result<Option<(&[u8], &[u8])>> {
    let Some(prefix) = buf.get(..LENGTH_PREFIX) else {
        return Ok(None);
    };
    let mut raw = [0u8; LENGTH_PREFIX];
    raw.copy_from_slice(prefix);
    let len = body_len(raw, max)?;
    let rest = &buf[LENGTH_PREFIX..];
    if rest.len() < len {
        return Ok(None);
    }
    Ok(Some(rest.split_at(len)))
}

/// Decodes exactly one frame holding a `M` from `buf` (which must contain nothing
/// else).
pub fn decode_one<M: Message + Default>(buf: &[u8], max: usize, what: &'static str) -> Result<M> {
    match split(buf, max)? {
        Some((body, [])) => decode_body(body, what),
        Some(_) => Err(Error::Malformed {
            what,
            detail: "trailing bytes after the frame".into(),
        }),
        None => Err(Error::Truncated),
    }
}

/// Decodes a frame body.
pub fn decode_body<M: Message + Default>(body: &[u8], what: &'static str) -> Result<M> {
    M::decode(body).map_err(|e| Error::Malformed {
        what,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use proptest::prelude::*;

    #[test]
    fn frames_carry_a_big_endian_length() {
        let req = pb::Request {
            version: 1,
            method: pb::Method::Ping as i32,
            ..pb::Request::default()
        };
        let frame = encode(&req);
        assert_eq!(&frame[..4], &[0, 0, 0, 4]);
        assert_eq!(&frame[4..], &[0x08, 0x01, 0x10, 0x01]);
        let back: pb::Request = decode_one(&frame, 100, "request").unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn oversize_and_truncated_frames_are_rejected() {
        assert_eq!(
            body_len([0, 0, 1, 0], 255),
            Err(Error::FrameTooLarge { len: 256, max: 255 })
        );
        assert_eq!(split(&[0, 0, 0, 3, 1, 2], 10), Ok(None));
        assert_eq!(split(&[0, 0], 10), Ok(None));
        assert!(matches!(
            decode_one::<pb::Request>(&[0, 0, 0, 1, 0xff], 10, "request"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            decode_one::<pb::Request>(&[0, 0, 0, 0, 9], 10, "request"),
            Err(Error::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn split_round_trips_any_sequence_of_frames(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut stream = Vec::new();
            for body in &bodies {
                stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
                stream.extend_from_slice(body);
            }
            let mut rest = stream.as_slice();
            for body in &bodies {
                let (got, tail) = split(rest, 64).unwrap().unwrap();
                prop_assert_eq!(got, body.as_slice());
                rest = tail;
            }
            prop_assert!(rest.is_empty());
        }
    }
}
