//! The keyed, versioned hash behind the inbox lookup.
//!
//! Identifiers are never stored in clear: the lookup key is
//! `HMAC-SHA-256(pepper, "rossby/lookup/v1" || 0x00 || kind || normal form)`. The
//! pepper is a deployment secret with a version number, stored in the key, so the
//! pepper can rotate lazily: lookups try the current version first and then the
//! older ones, and a hit under an old version is rewritten under the current one.

use crate::error::{Error, Result};
use crate::identifier::Identifier;
use crate::keys::Key;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;

/// Domain separation for the lookup MAC, so the pepper cannot be abused to compute
/// MACs used anywhere else.
const LOOKUP_CONTEXT: &[u8] = b"rossby/lookup/v1\0";

/// Domain separation for the key that seals the copy of an identifier kept
/// under its box ([`LookupHasher::sealing_key`]): distinct from the lookup MAC's,
/// so the sealing key reveals nothing about digests and the other way round.
const SEALING_CONTEXT: &[u8] = b"rossby/identifier-seal/v1\0";

/// Shortest pepper accepted.
pub const MIN_PEPPER_BYTES: usize = 16;

/// A digest under one pepper version.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupDigest {
    /// The pepper version that produced `digest`.
    pub version: u32,
    /// The MAC.
    pub digest: [u8; 32],
}

impl LookupDigest {
    /// The global lookup key for this digest.
    pub fn key(&self) -> Key {
        Key::Lookup {
            pepper_version: self.version,
            digest: self.digest,
        }
    }

    /// The key of the pending registration of the identifier with this digest
    /// that `device` asked for.
    pub fn registration_key(&self, device: crate::DeviceId) -> Key {
        Key::Registration {
            pepper_version: self.version,
            digest: self.digest,
            device,
        }
    }
}

impl fmt::Debug for LookupDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LookupDigest(v{}, ", self.version)?;
        for b in &self.digest[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("..)")
    }
}

/// One pepper: a secret and its version.
#[derive(Clone)]
pub struct Pepper {
    /// Version number stored in every lookup key made with this pepper.
    pub version: u32,
    /// The secret bytes (at least [`MIN_PEPPER_BYTES`]).
    pub secret: Vec<u8>,
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pepper(v{}, <redacted>)", self.version)
    }
}

/// Hashes identifiers under the current pepper and knows the older ones.
#[derive(Clone)]
pub struct LookupHasher {
    current: u32,
    peppers: BTreeMap<u32, Vec<u8>>,
}

impl fmt::Debug for LookupHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LookupHasher")
            .field("current", &self.current)
            .field("versions", &self.peppers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LookupHasher {
    /// Builds a hasher; `current` must be one of the peppers' versions and every
    /// pepper must be long enough and have a distinct version.
    pub fn new(peppers: Vec<Pepper>, current: u32) -> Result<Self> {
        let mut map = BTreeMap::new();
        for pepper in peppers {
            if pepper.secret.len() < MIN_PEPPER_BYTES {
                return Err(Error::InvalidPepper(format!(
                    "pepper v{} has {} bytes, at least {MIN_PEPPER_BYTES} are required",
                    pepper.version,
                    pepper.secret.len()
                )));
            }
            if map.insert(pepper.version, pepper.secret).is_some() {
                return Err(Error::InvalidPepper(format!(
                    "pepper version {} given twice",
                    pepper.version
                )));
            }
        }
        if !map.contains_key(&current) {
            return Err(Error::InvalidPepper(format!(
                "current pepper version {current} is not configured"
            )));
        }
        Ok(LookupHasher {
            current,
            peppers: map,
        })
    }

    /// The version new bindings are written under.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// The digest under the current pepper.
    pub fn current(&self, id: &Identifier) -> LookupDigest {
        // The current version is always present (checked in `new`).
        self.digest(self.current, id).unwrap_or(LookupDigest {
            version: self.current,
            digest: [0; 32],
        })
    }

    /// The digest under a given pepper version, if that version is known.
    pub fn digest(&self, version: u32, id: &Identifier) -> Option<LookupDigest> {
        let secret = self.peppers.get(&version)?;
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
        mac.update(LOOKUP_CONTEXT);
        mac.update(&[id.kind_tag()]);
        mac.update(id.as_str().as_bytes());
        Some(LookupDigest {
            version,
            digest: mac.finalize().into_bytes().into(),
        })
    }

    /// The 32-byte key that seals the copies of identifiers bound under pepper
    /// `version` (`HMAC-SHA-256(pepper, "rossby/identifier-seal/v1\0")`), if that
    /// version is known. Each pepper version has its own key, so retiring a
    /// pepper also retires what was sealed under it.
    pub fn sealing_key(&self, version: u32) -> Option<[u8; 32]> {
        let secret = self.peppers.get(&version)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
        mac.update(SEALING_CONTEXT);
        Some(mac.finalize().into_bytes().into())
    }

    /// Digests to try for a lookup: the current version first, then older versions
    /// from newest to oldest.
    pub fn candidates(&self, id: &Identifier) -> Vec<LookupDigest> {
        let mut out = vec![self.current(id)];
        out.extend(
            self.peppers
                .keys()
                .rev()
                .filter(|v| **v != self.current)
                .filter_map(|v| self.digest(*v, id)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pepper(version: u32, byte: u8) -> Pepper {
        Pepper {
            version,
            secret: vec![byte; 32],
        }
    }

    #[test]
    fn spellings_of_one_identifier_share_a_digest() {
        let h = LookupHasher::new(vec![pepper(1, 7)], 1).unwrap();
        let a = h.current(&Identifier::phone("+1 415 555 0123").unwrap());
        let b = h.current(&Identifier::phone("0014155550123").unwrap());
        assert_eq!(a, b);
        let c = h.current(&Identifier::email("x@example.com").unwrap());
        assert_ne!(a, c);
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA-256(key = 32 x 0x07, "rossby/lookup/v1\0" || "e" || "alice@example.com"),
        // computed independently with Python's hmac module.
        let h = LookupHasher::new(vec![pepper(1, 7)], 1).unwrap();
        let d = h.current(&Identifier::email("alice@example.com").unwrap());
        let hex: String = d.digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, KNOWN_DIGEST_HEX);
    }

    const KNOWN_DIGEST_HEX: &str =
        "218cedf68ceb9b8fd152fcd1e9bbc879430c58ee1730ac49f0b834391486b8a9";

    #[test]
    fn candidates_try_current_then_older_versions() {
        let h = LookupHasher::new(vec![pepper(1, 1), pepper(3, 3), pepper(2, 2)], 2).unwrap();
        let id = Identifier::email("a@b.cd").unwrap();
        let versions: Vec<u32> = h.candidates(&id).iter().map(|d| d.version).collect();
        assert_eq!(versions, vec![2, 3, 1]);
        assert_ne!(h.digest(1, &id), h.digest(2, &id));
        assert!(h.digest(9, &id).is_none());
    }

    #[test]
    fn sealing_keys_are_per_version_and_differ_from_digests() {
        let h = LookupHasher::new(vec![pepper(1, 1), pepper(2, 2)], 2).unwrap();
        let (k1, k2) = (h.sealing_key(1).unwrap(), h.sealing_key(2).unwrap());
        assert_ne!(k1, k2);
        assert!(h.sealing_key(3).is_none());
        let id = Identifier::email("a@b.cd").unwrap();
        assert_ne!(h.digest(1, &id).unwrap().digest, k1);
    }

    #[test]
    fn bad_pepper_sets_are_rejected() {
        assert!(LookupHasher::new(vec![pepper(1, 1)], 2).is_err());
        assert!(LookupHasher::new(vec![pepper(1, 1), pepper(1, 2)], 1).is_err());
        let short = Pepper {
            version: 1,
            secret: vec![1; 8],
        };
        assert!(LookupHasher::new(vec![short], 1).is_err());
        let dbg = format!("{:?}", pepper(1, 0x41));
        assert!(!dbg.contains("65") && !dbg.contains("AAAA"));
    }
}
