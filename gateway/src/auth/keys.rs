//! Device Hawk keys, derived rather than stored.
//!
//! A device's key under server secret version 1 is `HMAC-SHA-256(secret,
//! "rossby/hawk-key/v1" || box id || device id || key version as u32 big-endian)`
//! (ids as their 16 raw bytes); under any other secret version `v` it is
//! `HMAC-SHA-256(secret_v, "rossby/hawk-key/v1" || box id || device id || key
//! version || v as u32 big-endian)`, so one secret value reused under two versions
//! still gives two keys. Any gateway holding the deployment's server secrets can
//! check a request without reading a key from storage, and bumping a device's
//! `credential_version` revokes its old key.
//!
//! The credential id is `<box uuid>.<device uuid>.<key version>` under secret
//! version 1 (the form credentials had before secrets were versioned) and
//! `<box uuid>.<device uuid>.<key version>.<secret version>` under any other.

use hmac::{Hmac, Mac};
use rossby_keyspace::{BoxId, DeviceId};
use rossby_protocol::hawk::{DeviceCredentials, KEY_LEN};
use sha2::Sha256;

/// Domain separation of the device-key derivation.
pub const HAWK_KEY_CONTEXT: &[u8] = b"rossby/hawk-key/v1";

/// Shortest server secret accepted.
pub const MIN_SERVER_SECRET: usize = 32;

/// The secret version whose credential ids have three parts and whose keys do not
/// include the version.
pub const FIRST_SECRET_VERSION: u32 = 1;

/// What a credential id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredentialId {
    /// The device's box.
    pub box_id: BoxId,
    /// The device.
    pub device: DeviceId,
    /// The device's key version (`credential_version` of its record).
    pub key_version: u32,
    /// The server secret version the key is derived from.
    pub secret_version: u32,
}

impl CredentialId {
    /// Parses a credential id; `None` unless it is exactly `<hyphenated box
    /// uuid>.<hyphenated device uuid>.<decimal u32>` (secret version 1) or that
    /// followed by `.<decimal u32 other than 1>`, in canonical spelling.
    pub fn parse(id: &str) -> Option<CredentialId> {
        let parts: Vec<&str> = id.split('.').collect();
        let (box_part, device_part, key_part, secret_part) = match parts.as_slice() {
            [b, d, k] => (*b, *d, *k, None),
            [b, d, k, s] => (*b, *d, *k, Some(*s)),
            _ => return None,
        };
        if box_part.len() != 36 || device_part.len() != 36 {
            return None;
        }
        let number = |s: &str| -> Option<u32> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        let parsed = CredentialId {
            box_id: box_part.parse().ok()?,
            device: device_part.parse().ok()?,
            key_version: number(key_part)?,
            secret_version: match secret_part {
                None => FIRST_SECRET_VERSION,
                Some(s) => number(s)?,
            },
        };
        // Only the canonical spelling is accepted, so one credential has one id
        // (a four-part id never names secret version 1).
        (parsed.to_string() == id).then_some(parsed)
    }
}

impl std::fmt::Display for CredentialId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.box_id, self.device, self.key_version)?;
        if self.secret_version != FIRST_SECRET_VERSION {
            write!(f, ".{}", self.secret_version)?;
        }
        Ok(())
    }
}

/// The Hawk key of the credential `id`, derived from `secret` (the secret of
/// `id.secret_version`).
pub fn device_key(secret: &[u8], id: &CredentialId) -> [u8; KEY_LEN] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return [0; KEY_LEN],
    };
    mac.update(HAWK_KEY_CONTEXT);
    mac.update(id.box_id.as_bytes());
    mac.update(id.device.as_bytes());
    mac.update(&id.key_version.to_be_bytes());
    if id.secret_version != FIRST_SECRET_VERSION {
        mac.update(&id.secret_version.to_be_bytes());
    }
    mac.finalize().into_bytes().into()
}

/// A device's complete Hawk credentials for `id`, derived from `secret` (the
/// secret of `id.secret_version`).
pub fn credentials(secret: &[u8], id: CredentialId) -> DeviceCredentials {
    DeviceCredentials {
        id: id.to_string(),
        key: device_key(secret, &id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_keyspace::RegionId;

    fn cid(box_id: BoxId, device: DeviceId, key_version: u32, secret_version: u32) -> CredentialId {
        CredentialId {
            box_id,
            device,
            key_version,
            secret_version,
        }
    }

    #[test]
    fn keys_depend_on_every_input() {
        let (b, d) = (BoxId::new(RegionId(1)), DeviceId::new());
        let secret = [7u8; 32];
        let k = device_key(&secret, &cid(b, d, 1, 1));
        assert_eq!(k, device_key(&secret, &cid(b, d, 1, 1)));
        assert_ne!(k, device_key(&secret, &cid(b, d, 2, 1)));
        assert_ne!(k, device_key(&[8u8; 32], &cid(b, d, 1, 1)));
        assert_ne!(
            k,
            device_key(&secret, &cid(BoxId::new(RegionId(1)), d, 1, 1))
        );
        assert_ne!(k, device_key(&secret, &cid(b, DeviceId::new(), 1, 1)));
        // The same secret under another version gives another key.
        let k2 = device_key(&secret, &cid(b, d, 1, 2));
        assert_ne!(k, k2);
        assert_ne!(k2, device_key(&secret, &cid(b, d, 1, 3)));
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA-256(key = 32 x 0x07, "rossby/hawk-key/v1" || 16 x 0x01 || 16 x 0x02
        // || 00 00 00 01), computed independently with Python's hmac module: the
        // key of secret version 1 is the one derived before secrets had versions.
        let b = BoxId::from_bytes([1; 16]).unwrap();
        let d = DeviceId::from_bytes([2; 16]).unwrap();
        let key = device_key(&[7u8; 32], &cid(b, d, 1, 1));
        assert_eq!(hex::encode(key), KNOWN_KEY_HEX);
        // The same with 00 00 00 02 (secret version 2) appended.
        let key = device_key(&[7u8; 32], &cid(b, d, 1, 2));
        assert_eq!(hex::encode(key), KNOWN_KEY_V2_HEX);
    }

    const KNOWN_KEY_HEX: &str = "915ba80829d768a5c7a6971b2eaa1184dda93efbdd0dbd493d66a3dc0ca59789";
    const KNOWN_KEY_V2_HEX: &str =
        "f44c72cda13621e5f05b19f2ccee9b53141452321cbaf422cee5fbc362cba66d";

    #[test]
    fn credential_ids_round_trip_and_reject_variants() {
        let (b, d) = (BoxId::new(RegionId(3)), DeviceId::new());
        let id = cid(b, d, 42, 1);
        assert_eq!(id.to_string(), format!("{b}.{d}.42"), "three parts");
        assert_eq!(CredentialId::parse(&id.to_string()), Some(id));
        let v2 = cid(b, d, 42, 2);
        assert_eq!(v2.to_string(), format!("{b}.{d}.42.2"), "four parts");
        assert_eq!(CredentialId::parse(&v2.to_string()), Some(v2));
        let creds = credentials(&[7u8; 32], v2);
        assert_eq!(creds.id, v2.to_string());
        assert_eq!(creds.key, device_key(&[7u8; 32], &v2));
        for bad in [
            String::new(),
            format!("{b}.{d}"),
            format!("{b}.{d}.42.1"),
            format!("{b}.{d}.42.02"),
            format!("{b}.{d}.42.2.1"),
            format!("{b}.{d}.42."),
            format!("{b}.{d}.42.4294967296"),
            format!("{b}.{d}.+42"),
            format!("{b}.{d}.042"),
            format!("{b}.{d}."),
            format!("{b}.{d}.4294967296"),
            id.to_string().to_uppercase(),
            format!("{}.{d}.1", b.to_uuid().simple()),
        ] {
            assert_eq!(CredentialId::parse(&bad), None, "{bad}");
        }
    }
}
