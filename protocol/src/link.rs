//! The link texts: a new device's link request and the grant the linking device
//! answers with travel between the two devices out of band (a QR code, a copy)
//! as one line each: a prefix, then base64url (RFC 4648 §5, no padding) of a
//! protobuf message (`LinkDeviceRequest`, `LinkGrant`). Neither holds a secret:
//! the grant's credentials open only with the new device's private key.

use crate::pb;
use crate::{Error, Result};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;

/// Prefix of a link request.
pub const LINK_REQUEST_PREFIX: &str = "rossby-link-request:";
/// Prefix of a link grant.
pub const LINK_GRANT_PREFIX: &str = "rossby-link-grant:";

/// The one-line text of a link request.
pub fn encode_link_request(request: &pb::LinkDeviceRequest) -> String {
    format!(
        "{LINK_REQUEST_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(request.encode_to_vec())
    )
}

/// The one-line text of a link grant.
pub fn encode_link_grant(grant: &pb::LinkGrant) -> String {
    format!(
        "{LINK_GRANT_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(grant.encode_to_vec())
    )
}

/// Parses a link request text (surrounding white space is ignored). Only the
/// encoding is checked here; the linking device checks the ids and keys.
pub fn decode_link_request(text: &str) -> Result<pb::LinkDeviceRequest> {
    decode(text, LINK_REQUEST_PREFIX, "link request")
}

/// Parses a link grant text (surrounding white space is ignored).
pub fn decode_link_grant(text: &str) -> Result<pb::LinkGrant> {
    decode(text, LINK_GRANT_PREFIX, "link grant")
}

fn decode<M: Message + Default>(text: &str, prefix: &str, what: &'static str) -> Result<M> {
    let malformed = |detail: String| Error::Malformed { what, detail };
    let encoded = text
        .trim()
        .strip_prefix(prefix)
        .ok_or_else(|| malformed(format!("a {what} starts with {prefix}")))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| malformed("not valid base64url without padding".into()))?;
    M::decode(bytes.as_slice()).map_err(|e| malformed(format!("does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of docs/protocol.md ("Linking a device"): the request
    /// of a device with a (shortened, encoding-only) key bundle, and a grant.
    fn vector_request() -> pb::LinkDeviceRequest {
        pb::LinkDeviceRequest {
            device_id: vec![0x11; 16],
            keys: Some(pb::KeyBundle {
                identity_key: vec![0x22; 32],
                x25519_key: vec![0x33; 32],
                mlkem_key: vec![0x44; 4],
                signature: vec![0x55; 4],
            }),
            label: "laptop".into(),
        }
    }

    fn vector_grant() -> pb::LinkGrant {
        pb::LinkGrant {
            device_id: vec![0x11; 16],
            box_id: vec![
                0x00, 0x01, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
                0x66, 0x66,
            ],
            identifier: "alice@example.com".into(),
            sealed_credentials: vec![0x77; 8],
            device_list_version: 2,
        }
    }

    const REQUEST_TEXT: &str = "rossby-link-request:ChARERERERERERERERERERERElAKICIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiEiAzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMxoERERERCIEVVVVVRoGbGFwdG9w";
    const GRANT_TEXT: &str = "rossby-link-grant:ChAREREREREREREREREREREREhAAAWZmZmZmZmZmZmZmZmZmGhFhbGljZUBleGFtcGxlLmNvbSIId3d3d3d3d3coAg";

    #[test]
    fn known_answer_texts() {
        assert_eq!(encode_link_request(&vector_request()), REQUEST_TEXT);
        assert_eq!(encode_link_grant(&vector_grant()), GRANT_TEXT);
        assert_eq!(decode_link_request(REQUEST_TEXT).unwrap(), vector_request());
        assert_eq!(decode_link_grant(GRANT_TEXT).unwrap(), vector_grant());
    }

    #[test]
    fn white_space_around_is_ignored_and_bad_texts_are_refused() {
        let padded = format!("  {GRANT_TEXT}\n");
        assert_eq!(decode_link_grant(&padded).unwrap(), vector_grant());
        // A grant is not a request, and the other way round.
        assert!(decode_link_request(GRANT_TEXT).is_err());
        assert!(decode_link_grant(REQUEST_TEXT).is_err());
        for bad in [
            "",
            "rossby-link-grant:",
            "rossby-link-grant:***",
            "rossby-link-grant:ChAREREREREREREREREREREREQ==",
            "rossby-link-grant:/w",
        ] {
            let e = decode_link_grant(bad);
            // The empty payload decodes to an empty grant: the importing device
            // refuses it for its device id.
            if bad == "rossby-link-grant:" {
                assert_eq!(e.unwrap(), pb::LinkGrant::default());
            } else {
                assert!(e.is_err(), "{bad:?} accepted");
            }
        }
    }
}
