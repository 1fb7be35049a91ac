//! Verification codes: six random digits, stored only as a keyed hash.
//!
//! The stored value is `HMAC-SHA-256(server_secret, "rossby/code/v1" || lookup
//! digest || code)` where the lookup digest is the identifier's 32-byte peppered
//! hash, so a leaked registration record reveals neither the code nor the
//! identifier, and a code for one identifier is worthless for another. Checking a
//! code compares the hashes in constant time.
//!
//! New codes are hashed with the current server secret version. The version is not
//! stored with the hash: a code is checked against every configured version
//! ([`matches_any`]), so codes sent before a rotation made another version current
//! still verify, as long as the version they were hashed with is configured.

use super::secrets::ServerSecrets;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Domain separation of the code hash.
pub const CODE_CONTEXT: &[u8] = b"rossby/code/v1";

/// Number of digits of a code.
pub const CODE_DIGITS: usize = 6;

/// A fresh uniformly random code of [`CODE_DIGITS`] decimal digits (leading zeros
/// kept), from the thread-local CSPRNG.
pub fn generate() -> String {
    let n: u32 = rand::rng().random_range(0..1_000_000);
    format!("{n:06}")
}

/// The keyed hash of `code` for the identifier with lookup digest `digest`.
pub fn code_mac(secret: &[u8], digest: &[u8; 32], code: &str) -> [u8; 32] {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(CODE_CONTEXT);
    mac.update(digest);
    mac.update(code.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Whether `code` matches the stored hash. Whitespace around the code is ignored;
/// anything but [`CODE_DIGITS`] ASCII digits never matches. The comparison of the
/// hashes is constant-time.
pub fn matches(secret: &[u8], digest: &[u8; 32], code: &str, stored: &[u8]) -> bool {
    let code = code.trim();
    let well_formed = code.len() == CODE_DIGITS && code.bytes().all(|b| b.is_ascii_digit());
    let computed = code_mac(secret, digest, code);
    let equal: bool = computed.as_slice().ct_eq(stored).into();
    well_formed && equal
}

/// Whether `code` matches the stored hash under any configured server secret
/// version (see [`matches()`]). Every version is tried, so the time taken does not
/// say which one matched.
pub fn matches_any(secrets: &ServerSecrets, digest: &[u8; 32], code: &str, stored: &[u8]) -> bool {
    secrets.all().fold(false, |found, (_, secret)| {
        matches(secret, digest, code, stored) | found
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_six_digits() {
        for _ in 0..1000 {
            let code = generate();
            assert_eq!(code.len(), 6);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA-256(key = 32 x 0x07, "rossby/code/v1" || 32 x 0x03 || "123456"),
        // computed independently with Python's hmac module.
        let mac = code_mac(&[7; 32], &[3; 32], "123456");
        assert_eq!(
            hex::encode(mac),
            "3f67cee0becf4f1d29fa5b4e7227d415382d0ddf86493895124af5afe5753989"
        );
    }

    #[test]
    fn only_the_right_code_for_the_right_identifier_matches() {
        let secret = [7u8; 32];
        let stored = code_mac(&secret, &[3; 32], "012345");
        assert!(matches(&secret, &[3; 32], "012345", &stored));
        assert!(matches(&secret, &[3; 32], " 012345\n", &stored));
        assert!(!matches(&secret, &[3; 32], "012346", &stored));
        assert!(!matches(&secret, &[4; 32], "012345", &stored));
        assert!(!matches(&[8u8; 32], &[3; 32], "012345", &stored));
        assert!(!matches(&secret, &[3; 32], "12345", &stored));
        assert!(!matches(&secret, &[3; 32], "", &stored));
        assert!(!matches(&secret, &[3; 32], "012345", &[]));
    }

    #[test]
    fn codes_hashed_under_any_configured_version_match() {
        let secrets = ServerSecrets::new(vec![(1, vec![1; 32]), (2, vec![2; 32])], 2).unwrap();
        let under_one = code_mac(&[1; 32], &[3; 32], "012345");
        let under_two = code_mac(&[2; 32], &[3; 32], "012345");
        assert!(matches_any(&secrets, &[3; 32], "012345", &under_one));
        assert!(matches_any(&secrets, &[3; 32], "012345", &under_two));
        assert!(!matches_any(&secrets, &[3; 32], "012346", &under_one));
        let removed = ServerSecrets::new(vec![(2, vec![2; 32])], 2).unwrap();
        assert!(!matches_any(&removed, &[3; 32], "012345", &under_one));
    }
}
