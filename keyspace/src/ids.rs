//! Identifiers of regions, boxes, devices and messages.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// The 16-bit code of a region, stored in the first two bytes of every box id homed
/// there. Codes are assigned in the topology file and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(pub u16);

impl RegionId {
    /// Big-endian bytes, the form used in keys (so byte order equals numeric order).
    pub fn to_bytes(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Implements the shared parts of a 16-byte UUID-shaped id.
macro_rules! uuid_id {
    ($name:ident, $kind:literal) => {
        impl $name {
            /// The raw 16 bytes, as stored in keys.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// The id as a UUID.
            pub fn to_uuid(self) -> Uuid {
                Uuid::from_bytes(self.0)
            }

            /// Parses the raw 16-byte form, rejecting any other length.
            pub fn try_from_slice(bytes: &[u8]) -> Result<Self> {
                let raw: [u8; 16] = bytes.try_into().map_err(|_| Error::InvalidId {
                    kind: $kind,
                    reason: format!("expected 16 bytes, got {}", bytes.len()),
                })?;
                Self::from_bytes(raw)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&Uuid::from_bytes(self.0).hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self> {
                let uuid = Uuid::parse_str(s).map_err(|e| Error::InvalidId {
                    kind: $kind,
                    reason: e.to_string(),
                })?;
                Self::from_bytes(uuid.into_bytes())
            }
        }
    };
}

/// A box: one user's inbox and account. A UUID whose first two bytes are the
/// big-endian code of the box's home region, so every key of the box sorts inside
/// that region's key range. The remaining 14 bytes are random.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BoxId([u8; 16]);

impl BoxId {
    /// A fresh random box id homed in `region`.
    pub fn new(region: RegionId) -> Self {
        Self::with_random(region, *Uuid::new_v4().as_bytes())
    }

    /// A box id homed in `region` whose other bytes come from `random` (the first two
    /// bytes of `random` are replaced by the region code). For deterministic tests.
    pub fn with_random(region: RegionId, random: [u8; 16]) -> Self {
        let mut raw = random;
        raw[..2].copy_from_slice(&region.to_bytes());
        BoxId(raw)
    }

    /// Accepts any 16 bytes: the home region is whatever the first two bytes say.
    pub fn from_bytes(raw: [u8; 16]) -> Result<Self> {
        Ok(BoxId(raw))
    }

    /// The region this box is homed in.
    pub fn home_region(&self) -> RegionId {
        RegionId(u16::from_be_bytes([self.0[0], self.0[1]]))
    }
}

uuid_id!(BoxId, "box id");

/// A device of a box. Random (UUIDv4 shape); unique within the box it belongs to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId([u8; 16]);

impl DeviceId {
    /// The nil id, never a real device's: the dedup scope of sealed-sender
    /// envelopes, whose sending device the gateway does not know.
    pub const UNIDENTIFIED: DeviceId = DeviceId([0; 16]);

    /// A fresh random device id.
    pub fn new() -> Self {
        DeviceId(*Uuid::new_v4().as_bytes())
    }

    /// Accepts any 16 bytes.
    pub fn from_bytes(raw: [u8; 16]) -> Result<Self> {
        Ok(DeviceId(raw))
    }
}

impl Default for DeviceId {
    fn default() -> Self {
        Self::new()
    }
}

uuid_id!(DeviceId, "device id");

/// A client-chosen message id: a UUIDv7, so ids sort roughly by creation time and a
/// retried send can be recognised.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId([u8; 16]);

impl MessageId {
    /// A fresh UUIDv7 from the system clock.
    pub fn new() -> Self {
        MessageId(*Uuid::now_v7().as_bytes())
    }

    /// Accepts 16 bytes only if they are a version-7, RFC 9562 variant UUID.
    pub fn from_bytes(raw: [u8; 16]) -> Result<Self> {
        let uuid = Uuid::from_bytes(raw);
        if uuid.get_version_num() != 7 || uuid.get_variant() != uuid::Variant::RFC4122 {
            return Err(Error::InvalidId {
                kind: "message id",
                reason: "not a UUIDv7".into(),
            });
        }
        Ok(MessageId(raw))
    }

    /// Milliseconds since the Unix epoch encoded in the id by its creator.
    pub fn unix_millis(&self) -> u64 {
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(ms)
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

uuid_id!(MessageId, "message id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_id_carries_its_home_region() {
        let b = BoxId::new(RegionId(0x0102));
        assert_eq!(b.home_region(), RegionId(0x0102));
        assert_eq!(&b.as_bytes()[..2], &[1, 2]);
        let parsed: BoxId = b.to_string().parse().unwrap();
        assert_eq!(parsed, b);
    }

    #[test]
    fn message_ids_must_be_v7() {
        let v4 = *Uuid::new_v4().as_bytes();
        assert!(MessageId::from_bytes(v4).is_err());
        let id = MessageId::new();
        assert_eq!(MessageId::from_bytes(*id.as_bytes()).unwrap(), id);
        assert!(id.unix_millis() > 1_700_000_000_000);
        assert!(MessageId::try_from_slice(&[7; 3]).is_err());
    }

    #[test]
    fn ids_reject_garbage_text() {
        assert!("not-a-uuid".parse::<DeviceId>().is_err());
        assert!("".parse::<BoxId>().is_err());
    }
}
