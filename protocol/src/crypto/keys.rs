//! Device keys: an Ed25519 identity key that signs, plus an X25519 key and an
//! ML-KEM-768 key that together receive [`seal`](super::seal)ed messages.
//!
//! [`DeviceKeys`] holds the secrets and never prints them; [`PublicKeys`] is the
//! parsed and verified form of a [`pb::KeyBundle`] as published to the server.

use crate::error::{Error, Result};
use crate::pb;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ml_kem::{DecapsulationKey768, EncapsulationKey768, KeyExport, Seed};
use rand::RngCore;
use std::fmt;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};

/// Domain label of the key-bundle signature: the identity key signs
/// `KEYBUNDLE_LABEL || x25519_key || mlkem_key`.
pub const KEYBUNDLE_LABEL: &[u8] = b"rossby/keybundle/v1";
/// Length of an Ed25519 public (identity) key.
pub const IDENTITY_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of an X25519 public key (and of an X25519 secret and shared secret).
pub const X25519_KEY_LEN: usize = 32;
/// Length of an ML-KEM-768 encapsulation key.
pub const MLKEM_KEY_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext.
pub const MLKEM_CIPHERTEXT_LEN: usize = 1088;
/// Length of an ML-KEM seed (`d || z`, FIPS 203 section 6.1).
pub const MLKEM_SEED_LEN: usize = 64;
/// Format version byte of [`DeviceKeys::to_secret_bytes`].
pub const SECRET_KEYS_VERSION: u8 = 1;
/// Length of [`DeviceKeys::to_secret_bytes`]: version, Ed25519 seed, X25519
/// secret, ML-KEM seed.
pub const SECRET_KEYS_LEN: usize = 1 + 32 + X25519_KEY_LEN + MLKEM_SEED_LEN;

/// A device's secret keys: the Ed25519 identity key, the X25519 key and the
/// ML-KEM-768 decapsulation key.
///
/// The underlying key types wipe themselves on drop. `Debug` prints only the
/// public identity key.
#[derive(Clone)]
pub struct DeviceKeys {
    identity: SigningKey,
    x25519: StaticSecret,
    x25519_public: X25519Public,
    mlkem: DecapsulationKey768,
    mlkem_public: Vec<u8>,
}

impl DeviceKeys {
    /// Generates fresh keys from the operating system's randomness.
    #[must_use]
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut identity = [0u8; 32];
        let mut x25519 = [0u8; X25519_KEY_LEN];
        let mut mlkem = [0u8; MLKEM_SEED_LEN];
        rng.fill_bytes(&mut identity);
        rng.fill_bytes(&mut x25519);
        rng.fill_bytes(&mut mlkem);
        Self::from_seeds(identity, x25519, mlkem)
    }

    /// Builds the keys from their seeds: the Ed25519 secret key (RFC 8032 seed),
    /// the X25519 secret scalar (clamped when used, RFC 7748) and the ML-KEM seed
    /// `d || z` (FIPS 203 `ML-KEM.KeyGen_internal`). Every byte string is valid.
    pub(crate) fn from_seeds(
        identity: [u8; 32],
        x25519: [u8; X25519_KEY_LEN],
        mlkem: [u8; MLKEM_SEED_LEN],
    ) -> Self {
        let identity = SigningKey::from_bytes(&identity);
        let x25519 = StaticSecret::from(x25519);
        let x25519_public = X25519Public::from(&x25519);
        let mlkem = DecapsulationKey768::from_seed(Seed::from(mlkem));
        let mlkem_public = mlkem.encapsulation_key().to_bytes().to_vec();
        DeviceKeys {
            identity,
            x25519,
            x25519_public,
            mlkem,
            mlkem_public,
        }
    }

    /// Serializes the secret keys for the client's state file:
    /// `0x01 || ed25519 seed (32) || x25519 secret (32) || ML-KEM seed d||z (64)`,
    /// [`SECRET_KEYS_LEN`] = 129 bytes. The result is secret: store it encrypted
    /// or with owner-only permissions, and wipe it after use.
    #[must_use]
    pub fn to_secret_bytes(&self) -> Vec<u8> {
        // Invariant: the decapsulation key is always built from a seed here, so
        // `to_seed` is `Some`.
        let seed = self
            .mlkem
            .to_seed()
            .expect("DeviceKeys always hold a seeded ML-KEM key");
        let mut out = Vec::with_capacity(SECRET_KEYS_LEN);
        out.push(SECRET_KEYS_VERSION);
        out.extend_from_slice(self.identity.as_bytes());
        out.extend_from_slice(self.x25519.as_bytes());
        out.extend_from_slice(seed.as_slice());
        out
    }

    /// Parses [`DeviceKeys::to_secret_bytes`]. Fails on a wrong length or an
    /// unknown version byte.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != SECRET_KEYS_LEN {
            return Err(Error::Crypto(format!(
                "device secret keys must be {SECRET_KEYS_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        if bytes[0] != SECRET_KEYS_VERSION {
            return Err(Error::Crypto(format!(
                "unknown device secret keys version {}",
                bytes[0]
            )));
        }
        let mut identity = [0u8; 32];
        let mut x25519 = [0u8; X25519_KEY_LEN];
        let mut mlkem = [0u8; MLKEM_SEED_LEN];
        identity.copy_from_slice(&bytes[1..33]);
        x25519.copy_from_slice(&bytes[33..65]);
        mlkem.copy_from_slice(&bytes[65..SECRET_KEYS_LEN]);
        Ok(Self::from_seeds(identity, x25519, mlkem))
    }

    /// The device's public key bundle, signed by its identity key over
    /// `KEYBUNDLE_LABEL || x25519_key || mlkem_key`.
    #[must_use]
    pub fn bundle(&self) -> pb::KeyBundle {
        let x25519_key = self.x25519_public.as_bytes().to_vec();
        let mlkem_key = self.mlkem_public.clone();
        let signature = self.sign(&bundle_signed_bytes(&x25519_key, &mlkem_key));
        pb::KeyBundle {
            identity_key: self.identity_public().to_vec(),
            x25519_key,
            mlkem_key,
            signature: signature.to_vec(),
        }
    }

    /// The public keys of this device (what [`PublicKeys::from_bundle`] returns
    /// for [`DeviceKeys::bundle`]).
    #[must_use]
    pub fn public_keys(&self) -> PublicKeys {
        let x25519 = *self.x25519_public.as_bytes();
        let signature = self.sign(&bundle_signed_bytes(&x25519, &self.mlkem_public));
        PublicKeys {
            identity: self.identity.verifying_key(),
            x25519,
            mlkem: self.mlkem.encapsulation_key().clone(),
            mlkem_bytes: self.mlkem_public.clone(),
            signature,
        }
    }

    /// The Ed25519 identity public key.
    #[must_use]
    pub fn identity_public(&self) -> [u8; 32] {
        self.identity.verifying_key().to_bytes()
    }

    /// Signs `message` with the identity key (Ed25519, RFC 8032, deterministic).
    #[must_use]
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.identity.sign(message).to_bytes()
    }

    pub(crate) fn x25519_secret(&self) -> &StaticSecret {
        &self.x25519
    }

    pub(crate) fn x25519_public(&self) -> &[u8; X25519_KEY_LEN] {
        self.x25519_public.as_bytes()
    }

    pub(crate) fn mlkem(&self) -> &DecapsulationKey768 {
        &self.mlkem
    }

    pub(crate) fn mlkem_public(&self) -> &[u8] {
        &self.mlkem_public
    }
}

impl fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("identity", &hex::encode(self.identity_public()))
            .finish_non_exhaustive()
    }
}

/// A device's public keys, parsed from a [`pb::KeyBundle`] whose lengths,
/// encodings and signature were checked.
#[derive(Clone)]
pub struct PublicKeys {
    identity: VerifyingKey,
    x25519: [u8; X25519_KEY_LEN],
    mlkem: EncapsulationKey768,
    mlkem_bytes: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
}

impl PublicKeys {
    /// Parses and checks a bundle: every field has its exact length, the identity
    /// key is a valid Ed25519 point of large order, the ML-KEM key passes the
    /// FIPS 203 encapsulation-key check, and the identity key's signature over
    /// `KEYBUNDLE_LABEL || x25519_key || mlkem_key` verifies (strictly).
    pub fn from_bundle(bundle: &pb::KeyBundle) -> Result<Self> {
        let identity = parse_identity(&bundle.identity_key)?;
        let x25519: [u8; X25519_KEY_LEN] =
            bundle.x25519_key.as_slice().try_into().map_err(|_| {
                Error::Crypto(len_error("X25519 key", X25519_KEY_LEN, &bundle.x25519_key))
            })?;
        if bundle.mlkem_key.len() != MLKEM_KEY_LEN {
            return Err(Error::Crypto(len_error(
                "ML-KEM-768 key",
                MLKEM_KEY_LEN,
                &bundle.mlkem_key,
            )));
        }
        let encoded = ml_kem::Key::<EncapsulationKey768>::try_from(bundle.mlkem_key.as_slice())
            .map_err(|_| Error::Crypto("invalid ML-KEM-768 key".into()))?;
        let mlkem = EncapsulationKey768::new(&encoded)
            .map_err(|_| Error::Crypto("invalid ML-KEM-768 key".into()))?;
        let signature: [u8; SIGNATURE_LEN] =
            bundle.signature.as_slice().try_into().map_err(|_| {
                Error::Crypto(len_error(
                    "key bundle signature",
                    SIGNATURE_LEN,
                    &bundle.signature,
                ))
            })?;
        verify_with(
            &identity,
            &bundle_signed_bytes(&x25519, &bundle.mlkem_key),
            &signature,
        )
        .map_err(|_| Error::Crypto("key bundle signature does not verify".into()))?;
        Ok(PublicKeys {
            identity,
            x25519,
            mlkem,
            mlkem_bytes: bundle.mlkem_key.clone(),
            signature,
        })
    }

    /// The Ed25519 identity public key.
    #[must_use]
    pub fn identity(&self) -> [u8; 32] {
        self.identity.to_bytes()
    }

    /// The X25519 public key.
    #[must_use]
    pub fn x25519(&self) -> [u8; X25519_KEY_LEN] {
        self.x25519
    }

    /// The ML-KEM-768 encapsulation key (1184 bytes).
    #[must_use]
    pub fn mlkem_key(&self) -> &[u8] {
        &self.mlkem_bytes
    }

    /// The bundle these keys came from (with its signature).
    #[must_use]
    pub fn to_bundle(&self) -> pb::KeyBundle {
        pb::KeyBundle {
            identity_key: self.identity().to_vec(),
            x25519_key: self.x25519.to_vec(),
            mlkem_key: self.mlkem_bytes.clone(),
            signature: self.signature.to_vec(),
        }
    }

    /// Verifies an Ed25519 signature by the identity key over `message`
    /// (`verify_strict`: non-canonical and small-order components are rejected).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        let signature: &[u8; SIGNATURE_LEN] = signature
            .try_into()
            .map_err(|_| Error::Crypto(len_error("signature", SIGNATURE_LEN, signature)))?;
        verify_with(&self.identity, message, signature)
    }

    pub(crate) fn x25519_bytes(&self) -> &[u8; X25519_KEY_LEN] {
        &self.x25519
    }

    pub(crate) fn mlkem(&self) -> &EncapsulationKey768 {
        &self.mlkem
    }
}

impl PartialEq for PublicKeys {
    /// Keys are equal when all three public keys are (the signature is not
    /// compared: Ed25519 is deterministic anyway).
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
            && self.x25519 == other.x25519
            && self.mlkem_bytes == other.mlkem_bytes
    }
}

impl Eq for PublicKeys {}

impl fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKeys")
            .field("identity", &hex::encode(self.identity()))
            .field("x25519", &hex::encode(self.x25519))
            .finish_non_exhaustive()
    }
}

/// `KEYBUNDLE_LABEL || x25519_key || mlkem_key`: what a bundle signature covers.
fn bundle_signed_bytes(x25519_key: &[u8], mlkem_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(KEYBUNDLE_LABEL.len() + x25519_key.len() + mlkem_key.len());
    out.extend_from_slice(KEYBUNDLE_LABEL);
    out.extend_from_slice(x25519_key);
    out.extend_from_slice(mlkem_key);
    out
}

fn parse_identity(bytes: &[u8]) -> Result<VerifyingKey> {
    let bytes: &[u8; IDENTITY_KEY_LEN] = bytes
        .try_into()
        .map_err(|_| Error::Crypto(len_error("identity key", IDENTITY_KEY_LEN, bytes)))?;
    let key = VerifyingKey::from_bytes(bytes)
        .map_err(|_| Error::Crypto("invalid Ed25519 identity key".into()))?;
    if key.is_weak() {
        return Err(Error::Crypto("Ed25519 identity key has small order".into()));
    }
    Ok(key)
}

fn verify_with(key: &VerifyingKey, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> Result<()> {
    key.verify_strict(message, &Signature::from_bytes(signature))
        .map_err(|_| Error::Crypto("signature does not verify".into()))
}

fn len_error(what: &str, expected: usize, got: &[u8]) -> String {
    format!("{what} must be {expected} bytes, got {}", got.len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn bundle_verifies_and_matches_public_keys() {
        let keys = DeviceKeys::generate();
        let bundle = keys.bundle();
        assert_eq!(bundle.identity_key.len(), IDENTITY_KEY_LEN);
        assert_eq!(bundle.x25519_key.len(), X25519_KEY_LEN);
        assert_eq!(bundle.mlkem_key.len(), MLKEM_KEY_LEN);
        assert_eq!(bundle.signature.len(), SIGNATURE_LEN);
        let public = PublicKeys::from_bundle(&bundle).unwrap();
        assert_eq!(public, keys.public_keys());
        assert_eq!(public.identity(), keys.identity_public());
        assert_eq!(public.to_bundle(), bundle);
        assert_eq!(keys.public_keys().to_bundle(), bundle);
    }

    #[test]
    fn tampered_bundle_is_rejected() {
        let keys = DeviceKeys::generate();
        let bundle = keys.bundle();
        let other = DeviceKeys::generate().bundle();

        let mut b = bundle.clone();
        b.x25519_key[0] ^= 1;
        assert!(PublicKeys::from_bundle(&b).is_err(), "x25519 key flipped");

        let mut b = bundle.clone();
        b.mlkem_key[100] ^= 1;
        assert!(PublicKeys::from_bundle(&b).is_err(), "ML-KEM key flipped");

        let mut b = bundle.clone();
        b.signature[10] ^= 1;
        assert!(PublicKeys::from_bundle(&b).is_err(), "signature flipped");

        let mut b = bundle.clone();
        b.identity_key = other.identity_key.clone();
        assert!(PublicKeys::from_bundle(&b).is_err(), "identity swapped");

        let mut b = bundle.clone();
        b.x25519_key = other.x25519_key.clone();
        assert!(PublicKeys::from_bundle(&b).is_err(), "x25519 swapped");

        // Wrong lengths, empty fields, a small-order identity key.
        for mutate in [
            (|b: &mut pb::KeyBundle| b.identity_key.truncate(31)) as fn(&mut pb::KeyBundle),
            |b| b.x25519_key.push(0),
            |b| b.mlkem_key.truncate(1183),
            |b| {
                b.signature.pop();
            },
            |b| b.identity_key.clear(),
            |b| *b = pb::KeyBundle::default(),
            |b| {
                b.identity_key = vec![0; 32];
                b.identity_key[0] = 1; // the identity point: small order
            },
        ] {
            let mut b = bundle.clone();
            mutate(&mut b);
            assert!(matches!(PublicKeys::from_bundle(&b), Err(Error::Crypto(_))));
        }
    }

    #[test]
    fn mlkem_key_out_of_range_is_rejected() {
        let keys = DeviceKeys::generate();
        let mut bundle = keys.bundle();
        // Coefficients are 12-bit values below q = 3329; 0xfff is out of range.
        bundle.mlkem_key[0] = 0xff;
        bundle.mlkem_key[1] |= 0x0f;
        let signature = keys.sign(&bundle_signed_bytes(&bundle.x25519_key, &bundle.mlkem_key));
        bundle.signature = signature.to_vec();
        let err = PublicKeys::from_bundle(&bundle).unwrap_err();
        assert!(err.to_string().contains("ML-KEM"), "{err}");
    }

    #[test]
    fn small_order_identity_key_is_rejected() {
        // The identity point with the signature (R = identity, s = 0) "verifies"
        // any message under cofactored, non-strict verification.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        let mut signature = identity_point.to_vec();
        signature.extend_from_slice(&[0; 32]);
        let keys = DeviceKeys::generate();
        let mut bundle = keys.bundle();
        bundle.identity_key = identity_point.to_vec();
        bundle.signature = signature;
        let err = PublicKeys::from_bundle(&bundle).unwrap_err();
        assert!(err.to_string().contains("small order"), "{err}");
    }

    #[test]
    fn sign_and_verify() {
        let keys = DeviceKeys::generate();
        let public = keys.public_keys();
        let signature = keys.sign(b"hello");
        public.verify(b"hello", &signature).unwrap();
        assert!(public.verify(b"hellO", &signature).is_err());
        assert!(public.verify(b"hello", &signature[..63]).is_err());
        assert!(
            DeviceKeys::generate()
                .public_keys()
                .verify(b"hello", &signature)
                .is_err()
        );
    }

    #[test]
    fn secret_bytes_round_trip() {
        let keys = DeviceKeys::generate();
        let bytes = keys.to_secret_bytes();
        assert_eq!(bytes.len(), SECRET_KEYS_LEN);
        assert_eq!(bytes[0], SECRET_KEYS_VERSION);
        let back = DeviceKeys::from_secret_bytes(&bytes).unwrap();
        assert_eq!(back.to_secret_bytes(), bytes);
        assert_eq!(back.bundle(), keys.bundle());
        assert_eq!(back.public_keys(), keys.public_keys());
    }

    #[test]
    fn secret_bytes_garbage_is_rejected() {
        let bytes = DeviceKeys::generate().to_secret_bytes();
        assert!(DeviceKeys::from_secret_bytes(&[]).is_err());
        assert!(DeviceKeys::from_secret_bytes(&bytes[..SECRET_KEYS_LEN - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(DeviceKeys::from_secret_bytes(&longer).is_err());
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert!(DeviceKeys::from_secret_bytes(&wrong_version).is_err());
        assert!(DeviceKeys::from_secret_bytes(&[0xa5; 1000]).is_err());
    }

    #[test]
    fn debug_prints_no_secret() {
        let keys = DeviceKeys::generate();
        let secret = keys.to_secret_bytes();
        let debug = format!("{keys:?} {:?}", keys.public_keys());
        assert!(debug.contains(&hex::encode(keys.identity_public())));
        for part in [
            &secret[1..33],
            &secret[33..65],
            &secret[65..97],
            &secret[97..],
        ] {
            assert!(!debug.contains(&hex::encode(part)));
            assert!(!debug.contains(&format!("{part:?}")[1..20]));
        }
    }

    /// Known answer: keys derived from fixed seeds (checked independently with
    /// Python's `cryptography`, see docs/security.md appendix).
    #[test]
    fn known_answer_public_keys() {
        let keys = kat_recipient();
        assert_eq!(hex::encode(keys.identity_public()), KAT_IDENTITY_PUBLIC,);
        assert_eq!(hex::encode(keys.x25519_public()), KAT_X25519_PUBLIC);
        assert_eq!(
            hex::encode(sha2::Sha256::digest(keys.mlkem_public())),
            KAT_MLKEM_PUBLIC_SHA256,
        );
    }

    pub(crate) const KAT_IDENTITY_PUBLIC: &str =
        "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737";
    pub(crate) const KAT_X25519_PUBLIC: &str =
        "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20";
    pub(crate) const KAT_MLKEM_PUBLIC_SHA256: &str =
        "0b7934c83125c788995e2ba6bd761e33046b3e40571be53e023309a29f398cc9";

    /// The fixed recipient of the known-answer tests: Ed25519 seed `11 × 32`,
    /// X25519 secret `22 × 32`, ML-KEM seed `00 01 … 3f`.
    pub(crate) fn kat_recipient() -> DeviceKeys {
        let mut mlkem = [0u8; MLKEM_SEED_LEN];
        for (i, b) in mlkem.iter_mut().enumerate() {
            *b = i as u8;
        }
        DeviceKeys::from_seeds([0x11; 32], [0x22; 32], mlkem)
    }
}
