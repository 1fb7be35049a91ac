//! Device keys: an Ed25519 identity key that signs, plus an X-Wing key
//! (draft-connolly-cfrg-xwing-kem: ML-KEM-768 and X25519, both derived from one
//! 32-byte seed) that receives [`seal`](super::seal)ed messages.
//!
//! [`DeviceKeys`] holds the secrets and never prints them; [`PublicKeys`] is the
//! parsed and verified form of a [`pb::KeyBundle`] as published to the server.
//! The bundle carries the X-Wing encapsulation key `pk_M || pk_X` as its two
//! halves, `mlkem_key` and `x25519_key`.

use crate::error::{Error, Result};
use crate::pb;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use std::fmt;
use x_wing::{DecapsulationKeyRejectNonContrib, Decapsulator, EncapsulationKey, KeyExport};
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
/// Length of an X-Wing decapsulation key (the seed both halves are expanded
/// from with SHAKE-256).
pub const XWING_SEED_LEN: usize = x_wing::DECAPSULATION_KEY_SIZE;
/// Format version byte of [`DeviceKeys::to_secret_bytes`].
pub const SECRET_KEYS_VERSION: u8 = 2;
/// Length of [`DeviceKeys::to_secret_bytes`]: version, Ed25519 seed, X-Wing seed.
pub const SECRET_KEYS_LEN: usize = 1 + 32 + XWING_SEED_LEN;

/// The earlier secret-key format (separate X25519 and ML-KEM seeds), which cannot
/// be expressed as an X-Wing key.
const LEGACY_SECRET_KEYS_VERSION: u8 = 1;

/// A device's secret keys: the Ed25519 identity key and the X-Wing
/// decapsulation key.
///
/// The underlying key types wipe themselves on drop. `Debug` prints only the
/// public identity key.
#[derive(Clone)]
pub struct DeviceKeys {
    identity: SigningKey,
    kem: DecapsulationKeyRejectNonContrib,
    x25519_public: [u8; X25519_KEY_LEN],
    mlkem_public: Vec<u8>,
}

impl DeviceKeys {
    /// Generates fresh keys from the operating system's randomness.
    #[must_use]
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut identity = [0u8; 32];
        let mut xwing = [0u8; XWING_SEED_LEN];
        rng.fill_bytes(&mut identity);
        rng.fill_bytes(&mut xwing);
        Self::from_seeds(identity, xwing)
    }

    /// Builds the keys from their seeds: the Ed25519 secret key (RFC 8032 seed)
    /// and the X-Wing decapsulation key (expanded to an ML-KEM-768 seed and an
    /// X25519 scalar by SHAKE-256, draft-connolly-cfrg-xwing-kem section 5.2).
    /// Every byte string is valid.
    pub(crate) fn from_seeds(identity: [u8; 32], xwing: [u8; XWING_SEED_LEN]) -> Self {
        let identity = SigningKey::from_bytes(&identity);
        let kem = DecapsulationKeyRejectNonContrib::from(xwing);
        let (mlkem_public, x25519_public) = split_encapsulation_key(kem.encapsulation_key());
        DeviceKeys {
            identity,
            kem,
            x25519_public,
            mlkem_public,
        }
    }

    /// Serializes the secret keys for the client's state file:
    /// `0x02 || ed25519 seed (32) || X-Wing seed (32)`, [`SECRET_KEYS_LEN`] = 65
    /// bytes. The result is secret: store it encrypted or with owner-only
    /// permissions, and wipe it after use.
    #[must_use]
    pub fn to_secret_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SECRET_KEYS_LEN);
        out.push(SECRET_KEYS_VERSION);
        out.extend_from_slice(self.identity.as_bytes());
        out.extend_from_slice(&self.kem.to_bytes());
        out
    }

    /// Parses [`DeviceKeys::to_secret_bytes`]. Fails on a wrong length or an
    /// unknown version byte, and with a dedicated message on the earlier format
    /// (version 1), whose keys a device cannot keep: it has to be linked again.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.first() == Some(&LEGACY_SECRET_KEYS_VERSION) {
            return Err(Error::Crypto(
                "device secret keys of format 1 (separate X25519 and ML-KEM keys) are no \
                 longer supported; register or link this device again"
                    .into(),
            ));
        }
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
        let mut xwing = [0u8; XWING_SEED_LEN];
        identity.copy_from_slice(&bytes[1..33]);
        xwing.copy_from_slice(&bytes[33..SECRET_KEYS_LEN]);
        Ok(Self::from_seeds(identity, xwing))
    }

    /// The device's public key bundle, signed by its identity key over
    /// `KEYBUNDLE_LABEL || x25519_key || mlkem_key`.
    #[must_use]
    pub fn bundle(&self) -> pb::KeyBundle {
        let x25519_key = self.x25519_public.to_vec();
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
        let x25519 = self.x25519_public;
        let signature = self.sign(&bundle_signed_bytes(&x25519, &self.mlkem_public));
        PublicKeys {
            identity: IdentityKey(self.identity.verifying_key()),
            x25519,
            kem: self.kem.encapsulation_key().clone(),
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

    pub(crate) fn kem(&self) -> &DecapsulationKeyRejectNonContrib {
        &self.kem
    }

    #[cfg(test)]
    pub(crate) fn x25519_public(&self) -> &[u8; X25519_KEY_LEN] {
        &self.x25519_public
    }

    #[cfg(test)]
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
    identity: IdentityKey,
    x25519: [u8; X25519_KEY_LEN],
    kem: EncapsulationKey,
    mlkem_bytes: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
}

impl PublicKeys {
    /// Parses and checks a bundle: every field has its exact length, the identity
    /// key is a valid Ed25519 point of large order, the ML-KEM key passes the
    /// FIPS 203 encapsulation-key check, the X25519 key is not a low-order point,
    /// and the identity key's signature over
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
        if is_low_order(&x25519) {
            return Err(Error::Crypto("X25519 key is a low-order point".into()));
        }
        // The X-Wing encapsulation key is `pk_M || pk_X`; X25519 keys are never
        // refused, so a failure here is the ML-KEM check.
        let mut encoded = Vec::with_capacity(MLKEM_KEY_LEN + X25519_KEY_LEN);
        encoded.extend_from_slice(&bundle.mlkem_key);
        encoded.extend_from_slice(&x25519);
        let kem = EncapsulationKey::try_from(encoded.as_slice())
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
            identity: IdentityKey(identity),
            x25519,
            kem,
            mlkem_bytes: bundle.mlkem_key.clone(),
            signature,
        })
    }

    /// The Ed25519 identity public key.
    #[must_use]
    pub fn identity(&self) -> [u8; 32] {
        self.identity.to_bytes()
    }

    /// The identity key alone: what verifies the device's signatures.
    #[must_use]
    pub fn identity_key(&self) -> &IdentityKey {
        &self.identity
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
        self.identity.verify(message, signature)
    }

    pub(crate) fn kem(&self) -> &EncapsulationKey {
        &self.kem
    }
}

impl AsRef<IdentityKey> for PublicKeys {
    fn as_ref(&self) -> &IdentityKey {
        &self.identity
    }
}

/// A device's Ed25519 identity public key on its own: enough to verify what
/// the device signed (envelopes, MLS credentials), for example with the key a
/// gateway recorded when it accepted an envelope (security.md §8.3).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdentityKey(VerifyingKey);

impl IdentityKey {
    /// Parses 32 bytes as an Ed25519 point of large order (the checks of a
    /// bundle's identity key).
    pub fn from_bytes(bytes: &[u8]) -> Result<IdentityKey> {
        parse_identity(bytes).map(IdentityKey)
    }

    /// The 32 bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; IDENTITY_KEY_LEN] {
        self.0.to_bytes()
    }

    /// Verifies an Ed25519 signature over `message` (`verify_strict`:
    /// non-canonical and small-order components are rejected).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        let signature: &[u8; SIGNATURE_LEN] = signature
            .try_into()
            .map_err(|_| Error::Crypto(len_error("signature", SIGNATURE_LEN, signature)))?;
        verify_with(&self.0, message, signature)
    }
}

impl AsRef<IdentityKey> for IdentityKey {
    fn as_ref(&self) -> &IdentityKey {
        self
    }
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityKey({})", hex::encode(self.to_bytes()))
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

/// Splits an X-Wing encapsulation key into its ML-KEM-768 and X25519 halves.
fn split_encapsulation_key(key: &EncapsulationKey) -> (Vec<u8>, [u8; X25519_KEY_LEN]) {
    let bytes = key.to_bytes();
    let (mlkem, x25519) = bytes.split_at(MLKEM_KEY_LEN);
    let mut x25519_key = [0u8; X25519_KEY_LEN];
    x25519_key.copy_from_slice(x25519);
    (mlkem.to_vec(), x25519_key)
}

/// Whether an X25519 public key lies in the small subgroup: a clamped scalar is
/// a multiple of the cofactor, so its product with such a point is all zero.
fn is_low_order(key: &[u8; X25519_KEY_LEN]) -> bool {
    !StaticSecret::from([0x5a; X25519_KEY_LEN])
        .diffie_hellman(&X25519Public::from(*key))
        .was_contributory()
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
        wrong_version[0] = 3;
        assert!(DeviceKeys::from_secret_bytes(&wrong_version).is_err());
        // The pre-X-Wing format (version 1, 129 bytes) is named in the error.
        let mut legacy = vec![1u8];
        legacy.extend_from_slice(&[0x11; 128]);
        let err = DeviceKeys::from_secret_bytes(&legacy).unwrap_err();
        assert!(err.to_string().contains("format 1"), "{err}");
        assert!(DeviceKeys::from_secret_bytes(&[0xa5; 1000]).is_err());
    }

    #[test]
    fn debug_prints_no_secret() {
        let keys = DeviceKeys::generate();
        let secret = keys.to_secret_bytes();
        let debug = format!("{keys:?} {:?}", keys.public_keys());
        assert!(debug.contains(&hex::encode(keys.identity_public())));
        for part in [&secret[1..33], &secret[33..]] {
            assert!(!debug.contains(&hex::encode(part)));
            assert!(!debug.contains(&format!("{part:?}")[1..20]));
        }
    }

    #[test]
    fn low_order_x25519_key_is_rejected() {
        let keys = DeviceKeys::generate();
        // The all-zero point and the point of order 8 from RFC 7748's list.
        let order_eight =
            hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap();
        for point in [vec![0u8; 32], order_eight] {
            let mut bundle = keys.bundle();
            bundle.x25519_key = point;
            bundle.signature = keys
                .sign(&bundle_signed_bytes(&bundle.x25519_key, &bundle.mlkem_key))
                .to_vec();
            let err = PublicKeys::from_bundle(&bundle).unwrap_err();
            assert!(err.to_string().contains("low-order"), "{err}");
        }
    }

    /// The X-Wing key generation of draft-connolly-cfrg-xwing-kem-06, on the
    /// draft's own test vectors: the seed gives the published encapsulation key,
    /// which a bundle carries as `mlkem_key || x25519_key`.
    #[test]
    fn xwing_keys_match_the_draft_vectors() {
        for vector in xwing_vectors() {
            let keys = DeviceKeys::from_seeds([0x11; 32], vector.seed);
            let bundle = keys.bundle();
            let mut pk = bundle.mlkem_key.clone();
            pk.extend_from_slice(&bundle.x25519_key);
            assert_eq!(hex::encode(pk), hex::encode(&vector.pk));
            assert_eq!(&keys.to_secret_bytes()[33..], &vector.seed[..]);
            PublicKeys::from_bundle(&bundle).unwrap();
        }
    }

    /// One vector of draft-connolly-cfrg-xwing-kem-06 (the file holds the
    /// draft's three, one a line: seed, eseed, pk, ct, ss in hex).
    pub(crate) struct XWingVector {
        pub seed: [u8; XWING_SEED_LEN],
        pub eseed: [u8; 64],
        pub pk: Vec<u8>,
        pub ct: Vec<u8>,
        pub ss: [u8; 32],
    }

    pub(crate) fn xwing_vectors() -> Vec<XWingVector> {
        let vectors: Vec<XWingVector> = include_str!("xwing-test-vectors.txt")
            .lines()
            .map(|line| {
                let fields: Vec<Vec<u8>> = line
                    .split_whitespace()
                    .map(|f| hex::decode(f).unwrap())
                    .collect();
                XWingVector {
                    seed: fields[0].as_slice().try_into().unwrap(),
                    eseed: fields[1].as_slice().try_into().unwrap(),
                    pk: fields[2].clone(),
                    ct: fields[3].clone(),
                    ss: fields[4].as_slice().try_into().unwrap(),
                }
            })
            .collect();
        assert_eq!(vectors.len(), 3);
        vectors
    }

    /// Known answer: keys derived from fixed seeds (checked independently with
    /// Python's `cryptography` and `hashlib`, see docs/security.md appendix).
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
        "44e9d7d146647281fbba7b3c56cafd5833b7a930ec4206e7c3a6d7764fe81d7a";
    pub(crate) const KAT_MLKEM_PUBLIC_SHA256: &str =
        "2134d30754443a17662d99e129ba3edd208591847cca6ade83717500b9e9c9ed";

    /// The fixed recipient of the known-answer tests: Ed25519 seed `11 × 32`,
    /// X-Wing seed `00 01 … 1f`.
    pub(crate) fn kat_recipient() -> DeviceKeys {
        let mut xwing = [0u8; XWING_SEED_LEN];
        for (i, b) in xwing.iter_mut().enumerate() {
            *b = i as u8;
        }
        DeviceKeys::from_seeds([0x11; 32], xwing)
    }
}
