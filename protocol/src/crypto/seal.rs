//! Hybrid public-key encryption to one device: the X-Wing KEM
//! (draft-connolly-cfrg-xwing-kem-06: ML-KEM-768 and X25519 under a SHA3-256
//! combiner), a key schedule over HKDF-SHA-256 that binds a context, then
//! ChaCha20-Poly1305.
//!
//! To seal `plaintext` to a recipient with X-Wing encapsulation key
//! `pk = pk_M || pk_X` under a `context`:
//!
//! 1. `(ct, ss) = X-Wing.Encapsulate(pk)` with 64 fresh random bytes;
//!    `ct = ct_M || ct_X` (1088 + 32 bytes).
//! 2. `key = HKDF-SHA-256(salt = SEAL_LABEL, ikm = ss, info = SEAL_LABEL || context,
//!    L = 32)`.
//! 3. `ciphertext = ChaCha20-Poly1305(key, nonce = 12 zero bytes, aad = context,
//!    plaintext)`.
//!
//! X-Wing's shared secret stays secret while either ML-KEM-768 or X25519 holds
//! (the draft's combiner hashes `ct_X` and `pk_X`, and relies on ML-KEM's
//! ciphertext binding for `ct_M` and `pk_M`). The context enters both the key
//! derivation and the AEAD associated data, so a message sealed for one use does
//! not open as another. Each key encrypts one message, so the all-zero nonce is
//! safe. docs/security.md §7 has the rationale.

use super::keys::{DeviceKeys, MLKEM_CIPHERTEXT_LEN, PublicKeys, X25519_KEY_LEN};
use crate::error::{Error, Result};
use crate::pb;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use x_wing::TryDecapsulate;

/// Seal context of a device's Hawk credentials (`AuthorizeResponse` and
/// `LinkDeviceResponse`).
pub const CONTEXT_CREDENTIALS: &[u8] = b"rossby/credentials/v1";
/// Prefix of the seal context of an envelope's content-key wraps; see
/// [`wrap_context`](super::envelope::wrap_context).
pub const CONTEXT_CONTENT_KEY: &[u8] = b"rossby/content-key/v1";
/// Domain label of the seal key derivation (HKDF salt and `info` prefix).
pub const SEAL_LABEL: &[u8] = b"rossby/seal/v2";
/// Length of a ChaCha20-Poly1305 key.
pub const AEAD_KEY_LEN: usize = 32;
/// Length of a Poly1305 tag.
pub const AEAD_TAG_LEN: usize = 16;
/// Length of an X-Wing ciphertext (`ct_M || ct_X`).
const XWING_CIPHERTEXT_LEN: usize = x_wing::CIPHERTEXT_SIZE;
/// Length of X-Wing's encapsulation randomness (`eseed`: ML-KEM's `m`, then the
/// X25519 ephemeral secret).
const XWING_ESEED_LEN: usize = x_wing::ENCAPSULATION_RANDOMNESS_SIZE;

/// Seals `plaintext` to `recipient` under `context` (domain separation: a message
/// sealed under one context does not open under another).
pub fn seal(recipient: &PublicKeys, context: &[u8], plaintext: &[u8]) -> Result<pb::Sealed> {
    let mut eseed = [0u8; XWING_ESEED_LEN];
    rand::rng().fill_bytes(&mut eseed);
    seal_with(recipient, context, plaintext, eseed)
}

/// [`seal`] with X-Wing's encapsulation randomness supplied. Only for
/// known-answer tests.
pub(crate) fn seal_with(
    recipient: &PublicKeys,
    context: &[u8],
    plaintext: &[u8],
    eseed: [u8; XWING_ESEED_LEN],
) -> Result<pb::Sealed> {
    let (ct, ss) = recipient.kem().encapsulate_deterministic(&eseed.into());
    let (ct_m, ct_x) = ct.split_at(MLKEM_CIPHERTEXT_LEN);
    let key = derive_seal_key(&ss.into(), context)?;
    let ciphertext = aead_seal(&key, context, plaintext)?;
    Ok(pb::Sealed {
        x25519_ephemeral: ct_x.to_vec(),
        mlkem_ciphertext: ct_m.to_vec(),
        ciphertext,
    })
}

/// Opens a message [`seal`]ed to `keys` under `context`. Fails with
/// [`Error::Crypto`] on a wrong field length, a low-order X25519 ephemeral key
/// (an all-zero X25519 shared secret), or when the ciphertext does not
/// authenticate (wrong key, context or any tampering).
pub fn open(keys: &DeviceKeys, context: &[u8], sealed: &pb::Sealed) -> Result<Vec<u8>> {
    if sealed.x25519_ephemeral.len() != X25519_KEY_LEN {
        return Err(Error::Crypto(format!(
            "sealed x25519_ephemeral must be {X25519_KEY_LEN} bytes, got {}",
            sealed.x25519_ephemeral.len()
        )));
    }
    if sealed.mlkem_ciphertext.len() != MLKEM_CIPHERTEXT_LEN {
        return Err(Error::Crypto(format!(
            "sealed mlkem_ciphertext must be {MLKEM_CIPHERTEXT_LEN} bytes, got {}",
            sealed.mlkem_ciphertext.len()
        )));
    }
    if sealed.ciphertext.len() < AEAD_TAG_LEN {
        return Err(Error::Crypto(format!(
            "sealed ciphertext must be at least {AEAD_TAG_LEN} bytes, got {}",
            sealed.ciphertext.len()
        )));
    }
    let mut ct = [0u8; XWING_CIPHERTEXT_LEN];
    ct[..MLKEM_CIPHERTEXT_LEN].copy_from_slice(&sealed.mlkem_ciphertext);
    ct[MLKEM_CIPHERTEXT_LEN..].copy_from_slice(&sealed.x25519_ephemeral);
    // Implicit rejection: a modified `ct_M` yields an unrelated secret, so the
    // AEAD below fails.
    let ss = keys
        .kem()
        .try_decapsulate(&ct.into())
        .map_err(|_| Error::Crypto("sealed X25519 ephemeral key is a low-order point".into()))?;
    let key = derive_seal_key(&ss.into(), context)?;
    aead_open(&key, context, &sealed.ciphertext)
        .map_err(|_| Error::Crypto("sealed message does not open".into()))
}

/// The seal key derivation (see the module documentation):
/// `HKDF-SHA-256(salt = SEAL_LABEL, ikm = ss, info = SEAL_LABEL || context)`,
/// 32 bytes, from the X-Wing shared secret `ss`.
pub(crate) fn derive_seal_key(ss: &[u8; 32], context: &[u8]) -> Result<[u8; AEAD_KEY_LEN]> {
    let hkdf = Hkdf::<Sha256>::new(Some(SEAL_LABEL), ss);
    let mut key = [0u8; AEAD_KEY_LEN];
    // Cannot fail: 32 bytes is far below HKDF-SHA-256's output limit.
    hkdf.expand_multi_info(&[SEAL_LABEL, context], &mut key)
        .map_err(|_| Error::Crypto("HKDF output length".into()))?;
    Ok(key)
}

/// ChaCha20-Poly1305 with the all-zero nonce: only for single-use keys.
pub(crate) fn aead_seal(key: &[u8; AEAD_KEY_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    ChaCha20Poly1305::new(key.into())
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Error::Crypto("plaintext too long".into()))
}

/// Opens [`aead_seal`]; fails unless the ciphertext authenticates.
pub(crate) fn aead_open(
    key: &[u8; AEAD_KEY_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>> {
    ChaCha20Poly1305::new(key.into())
        .decrypt(
            &Nonce::default(),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| Error::Crypto("ciphertext does not authenticate".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::tests::{kat_recipient, xwing_vectors};
    use sha2::Digest;

    #[test]
    fn round_trip() {
        let keys = DeviceKeys::generate();
        let public = PublicKeys::from_bundle(&keys.bundle()).unwrap();
        for plaintext in [&b""[..], b"x", &[7u8; 5000]] {
            let sealed = seal(&public, CONTEXT_CREDENTIALS, plaintext).unwrap();
            assert_eq!(sealed.x25519_ephemeral.len(), X25519_KEY_LEN);
            assert_eq!(sealed.mlkem_ciphertext.len(), MLKEM_CIPHERTEXT_LEN);
            assert_eq!(sealed.ciphertext.len(), plaintext.len() + AEAD_TAG_LEN);
            assert_eq!(
                open(&keys, CONTEXT_CREDENTIALS, &sealed).unwrap(),
                plaintext
            );
        }
    }

    #[test]
    fn seals_are_randomized() {
        let keys = DeviceKeys::generate();
        let a = seal(&keys.public_keys(), b"ctx", b"same").unwrap();
        let b = seal(&keys.public_keys(), b"ctx", b"same").unwrap();
        assert_ne!(a.x25519_ephemeral, b.x25519_ephemeral);
        assert_ne!(a.mlkem_ciphertext, b.mlkem_ciphertext);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn wrong_context_fails() {
        let keys = DeviceKeys::generate();
        let sealed = seal(&keys.public_keys(), CONTEXT_CREDENTIALS, b"secret").unwrap();
        for context in [
            CONTEXT_CONTENT_KEY,
            b"",
            b"rossby/credentials/v",
            b"rossby/credentials/v1\0",
        ] {
            assert!(matches!(
                open(&keys, context, &sealed),
                Err(Error::Crypto(_))
            ));
        }
    }

    #[test]
    fn wrong_recipient_fails() {
        let keys = DeviceKeys::generate();
        let other = DeviceKeys::generate();
        let sealed = seal(&keys.public_keys(), CONTEXT_CREDENTIALS, b"secret").unwrap();
        assert!(open(&other, CONTEXT_CREDENTIALS, &sealed).is_err());
    }

    #[test]
    fn tampering_fails() {
        let keys = DeviceKeys::generate();
        let sealed = seal(&keys.public_keys(), CONTEXT_CREDENTIALS, b"secret").unwrap();
        let fields: [fn(&mut pb::Sealed) -> &mut Vec<u8>; 3] = [
            |s| &mut s.x25519_ephemeral,
            |s| &mut s.mlkem_ciphertext,
            |s| &mut s.ciphertext,
        ];
        for field in fields {
            let len = field(&mut sealed.clone()).len();
            for index in [0, 5, len / 2] {
                let mut s = sealed.clone();
                field(&mut s)[index] ^= 0x01;
                assert!(matches!(
                    open(&keys, CONTEXT_CREDENTIALS, &s),
                    Err(Error::Crypto(_))
                ));
            }
            let mut s = sealed.clone();
            let f = field(&mut s);
            let last = f.len() - 1;
            f[last] ^= 0x80;
            assert!(open(&keys, CONTEXT_CREDENTIALS, &s).is_err());
            // Wrong lengths.
            let mut s = sealed.clone();
            field(&mut s).push(0);
            assert!(open(&keys, CONTEXT_CREDENTIALS, &s).is_err());
            let mut s = sealed.clone();
            field(&mut s).pop();
            assert!(open(&keys, CONTEXT_CREDENTIALS, &s).is_err());
            let mut s = sealed.clone();
            field(&mut s).clear();
            assert!(open(&keys, CONTEXT_CREDENTIALS, &s).is_err());
        }
        // Fields of one sealed message mixed into another.
        let other = seal(&keys.public_keys(), CONTEXT_CREDENTIALS, b"secret").unwrap();
        let mut s = sealed.clone();
        s.x25519_ephemeral = other.x25519_ephemeral.clone();
        assert!(open(&keys, CONTEXT_CREDENTIALS, &s).is_err());
        let mut s = sealed.clone();
        s.mlkem_ciphertext = other.mlkem_ciphertext.clone();
        assert!(open(&keys, CONTEXT_CREDENTIALS, &s).is_err());
        assert!(open(&keys, CONTEXT_CREDENTIALS, &pb::Sealed::default()).is_err());
    }

    #[test]
    fn low_order_x25519_ephemeral_is_rejected() {
        // The all-zero point gives an all-zero shared secret for every scalar.
        let keys = DeviceKeys::generate();
        let mut sealed = seal(&keys.public_keys(), CONTEXT_CREDENTIALS, b"secret").unwrap();
        sealed.x25519_ephemeral = vec![0; 32];
        let err = open(&keys, CONTEXT_CREDENTIALS, &sealed).unwrap_err();
        assert!(err.to_string().contains("low-order"), "{err}");
    }

    /// X-Wing encapsulation and decapsulation on the draft's own test vectors:
    /// the eseed gives the published ciphertext, and decapsulating it gives the
    /// published shared secret.
    #[test]
    fn xwing_matches_the_draft_vectors() {
        for vector in xwing_vectors() {
            let keys = DeviceKeys::from_seeds([0x11; 32], vector.seed);
            let public = PublicKeys::from_bundle(&keys.bundle()).unwrap();
            let (ct, ss) = public.kem().encapsulate_deterministic(&vector.eseed.into());
            assert_eq!(hex::encode(ct.as_slice()), hex::encode(&vector.ct));
            assert_eq!(ss.as_slice(), vector.ss);
            let decapsulated = keys.kem().try_decapsulate(&ct).unwrap();
            assert_eq!(decapsulated.as_slice(), vector.ss);
            // A whole seal uses the same ciphertext and the key derived from ss.
            let sealed = seal_with(&public, CONTEXT_CREDENTIALS, b"x", vector.eseed).unwrap();
            let mut wire = sealed.mlkem_ciphertext.clone();
            wire.extend_from_slice(&sealed.x25519_ephemeral);
            assert_eq!(wire, vector.ct);
            let key = derive_seal_key(&vector.ss, CONTEXT_CREDENTIALS).unwrap();
            assert_eq!(
                aead_open(&key, CONTEXT_CREDENTIALS, &sealed.ciphertext).unwrap(),
                b"x"
            );
        }
    }

    /// The seal KDF on a fixed input. The expected key was computed by this code
    /// and independently with Python's `hmac`/`hashlib` (docs/security.md,
    /// appendix A): `ss = 01×32, context = "rossby/credentials/v1"`.
    #[test]
    fn known_answer_kdf() {
        let key = derive_seal_key(&[1; 32], CONTEXT_CREDENTIALS).unwrap();
        assert_eq!(hex::encode(key), KAT_KDF_KEY);
        // One step spelled out: HKDF-Expand with a single block is
        // HMAC-SHA-256(PRK, info || 0x01), and PRK = HMAC-SHA-256(salt, ikm).
        let prk = hmac_sha256(SEAL_LABEL, &[&[1; 32]]);
        assert_eq!(hex::encode(prk), KAT_KDF_PRK);
        let mut info = SEAL_LABEL.to_vec();
        info.extend_from_slice(CONTEXT_CREDENTIALS);
        assert_eq!(hex::encode(hmac_sha256(&prk, &[&info, &[1]])), KAT_KDF_KEY);
        // The context matters.
        assert_ne!(derive_seal_key(&[1; 32], CONTEXT_CONTENT_KEY).unwrap(), key);
    }

    /// A whole sealed message from fixed randomness to the fixed recipient of
    /// `keys::tests::kat_recipient`. Opened independently with Python's
    /// `cryptography` and `hashlib` (ML-KEM-768, X25519, SHA-3,
    /// ChaCha20-Poly1305; docs/security.md, appendix A).
    #[test]
    fn known_answer_seal() {
        let keys = kat_recipient();
        let sealed = seal_with(
            &keys.public_keys(),
            CONTEXT_CREDENTIALS,
            KAT_SEAL_PLAINTEXT,
            kat_eseed(),
        )
        .unwrap();
        assert_eq!(hex::encode(&sealed.x25519_ephemeral), KAT_SEAL_EPHEMERAL);
        assert_eq!(
            hex::encode(Sha256::digest(&sealed.mlkem_ciphertext)),
            KAT_SEAL_MLKEM_CT_SHA256
        );
        assert_eq!(hex::encode(&sealed.ciphertext), KAT_SEAL_CIPHERTEXT);
        assert_eq!(
            open(&keys, CONTEXT_CREDENTIALS, &sealed).unwrap(),
            KAT_SEAL_PLAINTEXT
        );
    }

    /// `eseed = 33×32 || 44×32`: ML-KEM's `m`, then the X25519 ephemeral secret.
    fn kat_eseed() -> [u8; XWING_ESEED_LEN] {
        let mut eseed = [0x33; XWING_ESEED_LEN];
        eseed[32..].fill(0x44);
        eseed
    }

    const KAT_KDF_PRK: &str = "d7c0e107adea6416d7dbb12b6bc494e35bbcebe545f023013fe1cd3f2a11a9fc";
    const KAT_KDF_KEY: &str = "834bafd2e216be0738d95bc92cfe29cd65122f4cdfc3ace906db19db88a303fc";
    const KAT_SEAL_PLAINTEXT: &[u8] = b"rossby seal test vector";
    const KAT_SEAL_EPHEMERAL: &str =
        "ff2ee45601ec1b67310c7790404585ae697331eee1c1f8cf2419731c1fff3e6b";
    const KAT_SEAL_MLKEM_CT_SHA256: &str =
        "25f4a5bfbd1fbeb97b1e81d03e2046bb58ea1ca58f78e132c73bf7fe7a6e0cc8";
    const KAT_SEAL_CIPHERTEXT: &str =
        "a34e427a0f897742fa196bafdcc6bcd2a18213c7016cb9fc8ab9498092c8ba19b1f22075d7a84d";

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Arbitrary field contents (including every wrong length) are errors,
        /// never panics.
        #[test]
        fn open_never_panics(
            x25519_ephemeral in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            mlkem_len in proptest::prop_oneof![0..2000usize, proptest::strategy::Just(MLKEM_CIPHERTEXT_LEN)],
            ciphertext in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let keys = kat_recipient();
            let sealed = pb::Sealed {
                x25519_ephemeral,
                mlkem_ciphertext: vec![0x5a; mlkem_len],
                ciphertext,
            };
            proptest::prop_assert!(open(&keys, CONTEXT_CREDENTIALS, &sealed).is_err());
        }
    }

    /// HMAC-SHA-256 from its definition (RFC 2104), independent of the `hkdf` crate.
    fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut block = [0u8; 64];
        block[..key.len()].copy_from_slice(key);
        let mut inner = Sha256::new();
        inner.update(block.map(|b| b ^ 0x36));
        for part in parts {
            inner.update(part);
        }
        let mut outer = Sha256::new();
        outer.update(block.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        outer.finalize().into()
    }
}
