//! Hybrid public-key encryption to one device (X25519 + ML-KEM-768, an
//! X-Wing-style combiner over HKDF-SHA-256, then ChaCha20-Poly1305).
//!
//! To seal `plaintext` to a recipient with X25519 key `pk_X` and ML-KEM-768
//! encapsulation key `pk_M` under a `context`:
//!
//! 1. `sk_E` = 32 random bytes; `ct_X = X25519(sk_E, 9)`; `ss_X = X25519(sk_E, pk_X)`,
//!    rejected when all zero (low-order `pk_X`).
//! 2. `(ct_M, ss_M) = ML-KEM-768.Encaps(pk_M)` (FIPS 203, 32 random bytes `m`).
//! 3. `key = HKDF-SHA-256(salt = SEAL_LABEL,
//!    ikm = ss_M || ss_X || ct_X || pk_X || ct_M || pk_M,
//!    info = SEAL_LABEL || context, L = 32)`.
//! 4. `ciphertext = ChaCha20-Poly1305(key, nonce = 12 zero bytes, aad = context,
//!    plaintext)`.
//!
//! Every IKM component has a fixed length and `SEAL_LABEL` is a fixed prefix of
//! `info`, so the encoding is injective. Both shared secrets go through one
//! HKDF-Extract, as in the TLS 1.3 hybrid key-exchange design
//! (draft-ietf-tls-hybrid-design): with HMAC-SHA-256 modelled as a random oracle
//! (or a computational extractor) the key stays secret while either X25519 or
//! ML-KEM holds. Both ciphertexts and public keys are hashed too, so a sealed
//! message cannot be re-targeted or mixed with another one. Each key encrypts one
//! message, so the all-zero nonce is safe. docs/security.md §7 has the rationale.

use super::keys::{DeviceKeys, MLKEM_CIPHERTEXT_LEN, PublicKeys, X25519_KEY_LEN};
use crate::error::{Error, Result};
use crate::pb;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::HkdfExtract;
use ml_kem::Decapsulate;
use ml_kem::ml_kem_768::Ciphertext as MlKemCiphertext;
use rand::RngCore;
use sha2::Sha256;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};

/// Seal context of a device's Hawk credentials (`AuthorizeResponse` and
/// `LinkDeviceResponse`).
pub const CONTEXT_CREDENTIALS: &[u8] = b"rossby/credentials/v1";
/// Prefix of the seal context of an envelope's content-key wraps; see
/// [`wrap_context`](super::envelope::wrap_context).
pub const CONTEXT_CONTENT_KEY: &[u8] = b"rossby/content-key/v1";
/// Domain label of the seal key derivation (HKDF salt and `info` prefix).
pub const SEAL_LABEL: &[u8] = b"rossby/seal/v1";
/// Length of a ChaCha20-Poly1305 key.
pub const AEAD_KEY_LEN: usize = 32;
/// Length of a Poly1305 tag.
pub const AEAD_TAG_LEN: usize = 16;

/// Seals `plaintext` to `recipient` under `context` (domain separation: a message
/// sealed under one context does not open under another).
pub fn seal(recipient: &PublicKeys, context: &[u8], plaintext: &[u8]) -> Result<pb::Sealed> {
    let mut rng = rand::rng();
    let mut ephemeral = [0u8; X25519_KEY_LEN];
    let mut m = [0u8; 32];
    rng.fill_bytes(&mut ephemeral);
    rng.fill_bytes(&mut m);
    seal_with(recipient, context, plaintext, ephemeral, m)
}

/// [`seal`] with the randomness supplied: the X25519 ephemeral secret and the
/// ML-KEM encapsulation randomness `m`. Only for known-answer tests.
pub(crate) fn seal_with(
    recipient: &PublicKeys,
    context: &[u8],
    plaintext: &[u8],
    ephemeral: [u8; X25519_KEY_LEN],
    m: [u8; 32],
) -> Result<pb::Sealed> {
    let ephemeral = StaticSecret::from(ephemeral);
    let ct_x = X25519Public::from(&ephemeral);
    let pk_x = recipient.x25519_bytes();
    let ss_x = ephemeral.diffie_hellman(&X25519Public::from(*pk_x));
    if !ss_x.was_contributory() {
        return Err(Error::Crypto(
            "recipient X25519 key is a low-order point".into(),
        ));
    }
    let (ct_m, ss_m) = recipient.mlkem().encapsulate_deterministic(&m.into());
    let key = derive_seal_key(
        &ss_m.into(),
        ss_x.as_bytes(),
        ct_x.as_bytes(),
        pk_x,
        ct_m.as_slice(),
        recipient.mlkem_key(),
        context,
    )?;
    let ciphertext = aead_seal(&key, context, plaintext)?;
    Ok(pb::Sealed {
        x25519_ephemeral: ct_x.as_bytes().to_vec(),
        mlkem_ciphertext: ct_m.to_vec(),
        ciphertext,
    })
}

/// Opens a message [`seal`]ed to `keys` under `context`. Fails with
/// [`Error::Crypto`] on a wrong field length, an all-zero X25519 shared secret, or
/// when the ciphertext does not authenticate (wrong key, context or any tampering).
pub fn open(keys: &DeviceKeys, context: &[u8], sealed: &pb::Sealed) -> Result<Vec<u8>> {
    let ct_x: [u8; X25519_KEY_LEN] =
        sealed.x25519_ephemeral.as_slice().try_into().map_err(|_| {
            Error::Crypto(format!(
                "sealed x25519_ephemeral must be {X25519_KEY_LEN} bytes, got {}",
                sealed.x25519_ephemeral.len()
            ))
        })?;
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
    let ct_m = MlKemCiphertext::try_from(sealed.mlkem_ciphertext.as_slice())
        .map_err(|_| Error::Crypto("invalid ML-KEM-768 ciphertext".into()))?;

    let ss_x = keys
        .x25519_secret()
        .diffie_hellman(&X25519Public::from(ct_x));
    if !ss_x.was_contributory() {
        return Err(Error::Crypto(
            "sealed X25519 ephemeral key is a low-order point".into(),
        ));
    }
    // Implicit rejection: a modified ciphertext yields an unrelated key, so the
    // AEAD below fails.
    let ss_m = keys.mlkem().decapsulate(&ct_m);
    let key = derive_seal_key(
        &ss_m.into(),
        ss_x.as_bytes(),
        &ct_x,
        keys.x25519_public(),
        &sealed.mlkem_ciphertext,
        keys.mlkem_public(),
        context,
    )?;
    aead_open(&key, context, &sealed.ciphertext)
        .map_err(|_| Error::Crypto("sealed message does not open".into()))
}

/// The seal key derivation (see the module documentation):
/// `HKDF-SHA-256(salt = SEAL_LABEL, ikm = ss_M || ss_X || ct_X || pk_X || ct_M ||
/// pk_M, info = SEAL_LABEL || context)`, 32 bytes.
pub(crate) fn derive_seal_key(
    ss_m: &[u8; 32],
    ss_x: &[u8; X25519_KEY_LEN],
    ct_x: &[u8; X25519_KEY_LEN],
    pk_x: &[u8; X25519_KEY_LEN],
    ct_m: &[u8],
    pk_m: &[u8],
    context: &[u8],
) -> Result<[u8; AEAD_KEY_LEN]> {
    let mut extract = HkdfExtract::<Sha256>::new(Some(SEAL_LABEL));
    for part in [&ss_m[..], ss_x, ct_x, pk_x, ct_m, pk_m] {
        extract.input_ikm(part);
    }
    let (_, hkdf) = extract.finalize();
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
    use crate::crypto::keys::tests::kat_recipient;
    use crate::crypto::keys::{MLKEM_KEY_LEN, SIGNATURE_LEN};
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
    fn low_order_x25519_points_are_rejected() {
        // The all-zero point gives an all-zero shared secret for every scalar.
        let keys = DeviceKeys::generate();
        let mut sealed = seal(&keys.public_keys(), CONTEXT_CREDENTIALS, b"secret").unwrap();
        sealed.x25519_ephemeral = vec![0; 32];
        let err = open(&keys, CONTEXT_CREDENTIALS, &sealed).unwrap_err();
        assert!(err.to_string().contains("low-order"), "{err}");

        let mut bundle = keys.bundle();
        bundle.x25519_key = vec![0; 32];
        let mut signed = b"rossby/keybundle/v1".to_vec();
        signed.extend_from_slice(&bundle.x25519_key);
        signed.extend_from_slice(&bundle.mlkem_key);
        bundle.signature = keys.sign(&signed).to_vec();
        assert_eq!(bundle.signature.len(), SIGNATURE_LEN);
        let public = PublicKeys::from_bundle(&bundle).unwrap();
        let err = seal(&public, CONTEXT_CREDENTIALS, b"secret").unwrap_err();
        assert!(err.to_string().contains("low-order"), "{err}");
    }

    /// The seal KDF on fixed inputs. The expected key was computed by this code
    /// and independently with Python's `hmac`/`hashlib` (docs/security.md,
    /// appendix A):
    /// `ss_M = 01×32, ss_X = 02×32, ct_X = 03×32, pk_X = 04×32, ct_M = 05×1088,
    /// pk_M = 06×1184, context = "rossby/credentials/v1"`.
    #[test]
    fn known_answer_kdf() {
        let key = derive_seal_key(
            &[1; 32],
            &[2; 32],
            &[3; 32],
            &[4; 32],
            &[5; MLKEM_CIPHERTEXT_LEN],
            &[6; MLKEM_KEY_LEN],
            CONTEXT_CREDENTIALS,
        )
        .unwrap();
        assert_eq!(hex::encode(key), KAT_KDF_KEY);
        // One step spelled out: HKDF-Expand with a single block is
        // HMAC-SHA-256(PRK, info || 0x01).
        let mut ikm = Vec::new();
        for (byte, len) in [(1u8, 32), (2, 32), (3, 32), (4, 32), (5, 1088), (6, 1184)] {
            ikm.extend(std::iter::repeat_n(byte, len));
        }
        let (prk, _) = hkdf::Hkdf::<Sha256>::extract(Some(SEAL_LABEL), &ikm);
        assert_eq!(hex::encode(prk), KAT_KDF_PRK);
        let mut info = SEAL_LABEL.to_vec();
        info.extend_from_slice(CONTEXT_CREDENTIALS);
        assert_eq!(hex::encode(hmac_sha256(&prk, &[&info, &[1]])), KAT_KDF_KEY);
        // The context matters.
        let other = derive_seal_key(
            &[1; 32],
            &[2; 32],
            &[3; 32],
            &[4; 32],
            &[5; MLKEM_CIPHERTEXT_LEN],
            &[6; MLKEM_KEY_LEN],
            CONTEXT_CONTENT_KEY,
        )
        .unwrap();
        assert_ne!(other, key);
    }

    /// A whole sealed message from fixed randomness to the fixed recipient of
    /// `keys::tests::kat_recipient`. Opened independently with Python's
    /// `cryptography` (ML-KEM-768, X25519, ChaCha20-Poly1305; docs/security.md,
    /// appendix A).
    #[test]
    fn known_answer_seal() {
        let keys = kat_recipient();
        let sealed = seal_with(
            &keys.public_keys(),
            CONTEXT_CREDENTIALS,
            KAT_SEAL_PLAINTEXT,
            [0x33; 32],
            [0x44; 32],
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

    const KAT_KDF_PRK: &str = "3fcb01b875dd73dd8cd3a0d047fc598ad516b676cb500b0aecabd86059461e03";
    const KAT_KDF_KEY: &str = "dd52308b72eb3ac6b9f1377b711c412a1a2b0a5575cc659eb1d6a6714b016c36";
    const KAT_SEAL_PLAINTEXT: &[u8] = b"rossby seal test vector";
    const KAT_SEAL_EPHEMERAL: &str =
        "7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14";
    const KAT_SEAL_MLKEM_CT_SHA256: &str =
        "050836d2ffdf77c4ec118003bce619a2810be9a3c62c1b150b058962b37d1621";
    const KAT_SEAL_CIPHERTEXT: &str =
        "17cd1f6e47c96d72d9b4994a46d29ce278a34802e9c38af1f45cfe6ec5a50e26c231478378f93b";

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
