//! Ids drawn from the seeded generator (never from the system's randomness or
//! clock, which `BoxId::new`, `DeviceId::new` and `MessageId::new` use).

use rand::Rng;
use rand::rngs::StdRng;
use rossby_keyspace::{BoxId, DeviceId, MessageId, RegionId};

fn bytes(rng: &mut StdRng) -> [u8; 16] {
    let mut raw = [0u8; 16];
    rng.fill(&mut raw);
    raw
}

/// A box homed in `region`.
pub fn box_id(rng: &mut StdRng, region: RegionId) -> BoxId {
    BoxId::with_random(region, bytes(rng))
}

/// A device id.
pub fn device_id(rng: &mut StdRng) -> DeviceId {
    // Any 16 bytes are a device id; the error arm cannot happen.
    DeviceId::from_bytes(bytes(rng)).unwrap_or_default()
}

/// A message id: a UUIDv7 (which the keyspace insists on) whose time field is
/// the simulated clock and whose random bits come from the generator.
pub fn message_id(rng: &mut StdRng, now_ms: u64) -> MessageId {
    let mut raw = bytes(rng);
    raw[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    raw[6] = (raw[6] & 0x0f) | 0x70;
    raw[8] = (raw[8] & 0x3f) | 0x80;
    // The version and variant bits were just set: the error arm cannot happen.
    MessageId::from_bytes(raw).unwrap_or_default()
}

/// A group id.
pub fn group_id(rng: &mut StdRng) -> [u8; 16] {
    bytes(rng)
}

/// Opaque bytes standing for a KeyPackage: distinct per draw, so a package
/// handed out twice is recognisable.
pub fn key_package(rng: &mut StdRng) -> Vec<u8> {
    let mut data = b"kp:".to_vec();
    data.extend_from_slice(&bytes(rng));
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn message_ids_are_valid_v7_and_carry_the_clock() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let id = message_id(&mut rng, 1_700_000_000_123);
            assert!(MessageId::from_bytes(*id.as_bytes()).is_ok());
            assert_eq!(id.unix_millis(), 1_700_000_000_123);
        }
    }

    #[test]
    fn ids_depend_only_on_the_seed() {
        let mut a = StdRng::seed_from_u64(9);
        let mut b = StdRng::seed_from_u64(9);
        assert_eq!(box_id(&mut a, RegionId(2)), box_id(&mut b, RegionId(2)));
        assert_eq!(device_id(&mut a), device_id(&mut b));
        assert_eq!(box_id(&mut a, RegionId(2)).home_region(), RegionId(2));
    }
}
