//! Device Hawk keys, derived rather than stored.
//!
//! A device's key is `HMAC-SHA-256(server_secret, "rossby/hawk-key/v1" || box id ||
//! device id || key version as u32 big-endian)` (ids as their 16 raw bytes), so any
//! gateway holding the deployment's server secret can check a request without
//! reading a key from storage, and bumping a device's `credential_version` revokes
//! its old key. The credential id is `<box uuid>.<device uuid>.<key version>`.

use hmac::{Hmac, Mac};
use rossby_keyspace::{BoxId, DeviceId};
use rossby_protocol::hawk::{DeviceCredentials, KEY_LEN};
use sha2::Sha256;

/// Domain separation of the device-key derivation.
pub const HAWK_KEY_CONTEXT: &[u8] = b"rossby/hawk-key/v1";

/// Shortest server secret accepted.
pub const MIN_SERVER_SECRET: usize = 32;

/// The Hawk key of one device at one key version.
pub fn device_key(secret: &[u8], box_id: BoxId, device: DeviceId, version: u32) -> [u8; KEY_LEN] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return [0; KEY_LEN],
    };
    mac.update(HAWK_KEY_CONTEXT);
    mac.update(box_id.as_bytes());
    mac.update(device.as_bytes());
    mac.update(&version.to_be_bytes());
    mac.finalize().into_bytes().into()
}

/// The credential id `<box uuid>.<device uuid>.<key version>`.
pub fn credential_id(box_id: BoxId, device: DeviceId, version: u32) -> String {
    format!("{box_id}.{device}.{version}")
}

/// Parses a credential id; `None` unless it is exactly
/// `<hyphenated box uuid>.<hyphenated device uuid>.<decimal u32>`.
pub fn parse_credential_id(id: &str) -> Option<(BoxId, DeviceId, u32)> {
    let mut parts = id.split('.');
    let (box_part, device_part, version_part) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || box_part.len() != 36 || device_part.len() != 36 {
        return None;
    }
    if version_part.is_empty() || !version_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let box_id: BoxId = box_part.parse().ok()?;
    let device: DeviceId = device_part.parse().ok()?;
    let version: u32 = version_part.parse().ok()?;
    // Only the canonical spelling is accepted, so one device has one id.
    (credential_id(box_id, device, version) == id).then_some((box_id, device, version))
}

/// A device's complete Hawk credentials.
pub fn credentials(
    secret: &[u8],
    box_id: BoxId,
    device: DeviceId,
    version: u32,
) -> DeviceCredentials {
    DeviceCredentials {
        id: credential_id(box_id, device, version),
        key: device_key(secret, box_id, device, version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_keyspace::RegionId;

    #[test]
    fn keys_depend_on_every_input() {
        let (b, d) = (BoxId::new(RegionId(1)), DeviceId::new());
        let secret = [7u8; 32];
        let k = device_key(&secret, b, d, 1);
        assert_eq!(k, device_key(&secret, b, d, 1));
        assert_ne!(k, device_key(&secret, b, d, 2));
        assert_ne!(k, device_key(&[8u8; 32], b, d, 1));
        assert_ne!(k, device_key(&secret, BoxId::new(RegionId(1)), d, 1));
        assert_ne!(k, device_key(&secret, b, DeviceId::new(), 1));
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA-256(key = 32 x 0x07, "rossby/hawk-key/v1" || 16 x 0x01 || 16 x 0x02
        // || 00 00 00 01), computed independently with Python's hmac module.
        let b = BoxId::from_bytes([1; 16]).unwrap();
        let d = DeviceId::from_bytes([2; 16]).unwrap();
        let key = device_key(&[7u8; 32], b, d, 1);
        assert_eq!(hex::encode(key), KNOWN_KEY_HEX);
    }

    const KNOWN_KEY_HEX: &str = "915ba80829d768a5c7a6971b2eaa1184dda93efbdd0dbd493d66a3dc0ca59789";

    #[test]
    fn credential_ids_round_trip_and_reject_variants() {
        let (b, d) = (BoxId::new(RegionId(3)), DeviceId::new());
        let id = credential_id(b, d, 42);
        assert_eq!(parse_credential_id(&id), Some((b, d, 42)));
        for bad in [
            String::new(),
            format!("{b}.{d}"),
            format!("{b}.{d}.42.1"),
            format!("{b}.{d}.+42"),
            format!("{b}.{d}.042"),
            format!("{b}.{d}."),
            format!("{b}.{d}.4294967296"),
            id.to_uppercase(),
            format!("{}.{d}.1", b.to_uuid().simple()),
        ] {
            assert_eq!(parse_credential_id(&bad), None, "{bad}");
        }
    }
}
