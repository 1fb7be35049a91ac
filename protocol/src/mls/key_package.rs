//! A KeyPackage (RFC 9420 §10) parsed and checked by hand, so the gateway can
//! refuse at PublishKeyPackages what no member could use: a KeyPackage of
//! another ciphersuite, one whose credential names another device or is not
//! vouched for by the publishing device's identity key, or one whose
//! signatures do not verify. A KeyPackage is published inside an `MLSMessage`
//! (`wire_format` `mls_key_package`):
//!
//! ```text
//! struct {
//!     ProtocolVersion version = mls10 (1);   uint16
//!     CipherSuite cipher_suite;               uint16
//!     HPKEPublicKey init_key;                 opaque<V>
//!     LeafNode leaf_node;
//!     Extension extensions<V>;
//!     opaque signature<V>;  // SignWithLabel(leaf signature key, "KeyPackageTBS", everything above)
//! } KeyPackage;
//!
//! struct {
//!     HPKEPublicKey encryption_key;           opaque<V>
//!     SignaturePublicKey signature_key;       opaque<V>
//!     Credential credential;                  uint16 type; basic (1): opaque identity<V>; x509 (2): opaque certificates<V>
//!     Capabilities capabilities;              versions<V> cipher_suites<V> extensions<V> proposals<V> credentials<V>
//!     LeafNodeSource leaf_node_source = key_package (1);
//!     Lifetime lifetime;                      uint64 not_before; uint64 not_after (seconds)
//!     Extension extensions<V>;
//!     opaque signature<V>;  // SignWithLabel(signature_key, "LeafNodeTBS", everything above)
//! } LeafNode;
//! ```
//!
//! `SignWithLabel(key, label, content)` is an Ed25519 signature (the suite's)
//! over `opaque<V>("MLS 1.0 " + label) ‖ opaque<V>(content)` (RFC 9420 §5.1.2).
//! The Rossby credential is a basic credential whose identity is `box (16) ‖
//! device (16) ‖ signature (64)`, the signature by the device's identity key
//! over [`credential_message`] (docs/security.md §11).

use super::{MLS10, Reader, WireFormat, malformed, put_varint, wire_format};
use crate::crypto::{DeviceKeys, IdentityKey};
use crate::error::{Error, Result};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// The ciphersuite of every Rossby group and conversation:
/// `MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519` (draft-ietf-mls-pq-ciphersuites).
pub const CIPHERSUITE: u16 = 0x004F;

/// Domain label of the signature that binds an MLS leaf's signature key to a
/// device: the device's identity key signs `label ‖ box ‖ device ‖ leaf key`.
pub const CREDENTIAL_LABEL: &[u8] = b"rossby/mls-credential/v1";

/// Length of a Rossby credential's identity: box, device and signature.
pub const CREDENTIAL_IDENTITY_LEN: usize = 16 + 16 + 64;

const BASIC_CREDENTIAL: u16 = 1;
const X509_CREDENTIAL: u16 = 2;
const SOURCE_KEY_PACKAGE: u8 = 1;
const ED25519_KEY_LEN: usize = 32;
const ED25519_SIGNATURE_LEN: usize = 64;

/// What the device's identity key signs to vouch for an MLS leaf signature key.
pub fn credential_message(box_id: &[u8; 16], device_id: &[u8; 16], leaf_key: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CREDENTIAL_LABEL.len() + 32 + leaf_key.len());
    m.extend_from_slice(CREDENTIAL_LABEL);
    m.extend_from_slice(box_id);
    m.extend_from_slice(device_id);
    m.extend_from_slice(leaf_key);
    m
}

/// The parts of a KeyPackage the gateway checks, borrowed from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPackage<'a> {
    /// `cipher_suite`.
    pub cipher_suite: u16,
    /// The leaf's signature key.
    pub signature_key: &'a [u8],
    /// The credential type (1 basic, 2 x509).
    pub credential_type: u16,
    /// A basic credential's identity (empty for other types).
    pub identity: &'a [u8],
    /// The lifetime's `not_before`, seconds since the Unix epoch.
    pub not_before: u64,
    /// The lifetime's `not_after`.
    pub not_after: u64,
    leaf_tbs: &'a [u8],
    leaf_signature: &'a [u8],
    tbs: &'a [u8],
    signature: &'a [u8],
}

fn offset(all: &[u8], r: &Reader<'_>) -> usize {
    all.len() - r.rest.len()
}

/// Parses an `MLSMessage` holding a KeyPackage to its last byte (nothing may
/// follow). Only the structure is checked here; see [`KeyPackage::check`].
pub fn parse_key_package(bytes: &[u8]) -> Result<KeyPackage<'_>> {
    let mut r = Reader { rest: bytes };
    if r.u16()? != MLS10 {
        return Err(malformed("not MLS 1.0"));
    }
    if wire_format(r.u16()?)? != WireFormat::KeyPackage {
        return Err(malformed("not a KeyPackage"));
    }
    let tbs_start = offset(bytes, &r);
    if r.u16()? != MLS10 {
        return Err(malformed("KeyPackage version is not MLS 1.0"));
    }
    let cipher_suite = r.u16()?;
    r.vector()?; // init_key
    let leaf_start = offset(bytes, &r);
    r.vector()?; // encryption_key
    let signature_key = r.vector()?;
    let credential_type = r.u16()?;
    let identity = match credential_type {
        BASIC_CREDENTIAL => r.vector()?,
        X509_CREDENTIAL => {
            r.vector()?;
            &[][..]
        }
        _ => return Err(malformed("unknown credential type")),
    };
    for _ in 0..5 {
        r.vector()?; // capabilities: versions, suites, extensions, proposals, credentials
    }
    if r.u8()? != SOURCE_KEY_PACKAGE {
        return Err(malformed("the leaf node's source is not key_package"));
    }
    let not_before = r.u64()?;
    let not_after = r.u64()?;
    r.vector()?; // leaf extensions
    let leaf_tbs = &bytes[leaf_start..offset(bytes, &r)];
    let leaf_signature = r.vector()?;
    r.vector()?; // KeyPackage extensions
    let tbs = &bytes[tbs_start..offset(bytes, &r)];
    let signature = r.vector()?;
    if !r.rest.is_empty() {
        return Err(malformed("trailing bytes"));
    }
    Ok(KeyPackage {
        cipher_suite,
        signature_key,
        credential_type,
        identity,
        not_before,
        not_after,
        leaf_tbs,
        leaf_signature,
        tbs,
        signature,
    })
}

/// `SignContent` of RFC 9420 §5.1.2: `opaque<V>("MLS 1.0 " + label) ‖
/// opaque<V>(content)`; `None` when too long to encode.
fn sign_content(label: &str, content: &[u8]) -> Option<Vec<u8>> {
    let full = format!("MLS 1.0 {label}");
    let mut out = Vec::with_capacity(full.len() + content.len() + 8);
    put_varint(&mut out, full.len())?;
    out.extend_from_slice(full.as_bytes());
    put_varint(&mut out, content.len())?;
    out.extend_from_slice(content);
    Some(out)
}

fn refused(detail: impl Into<String>) -> Error {
    Error::Crypto(detail.into())
}

impl KeyPackage<'_> {
    /// Checks that the KeyPackage is usable in a Rossby group and belongs to
    /// the device `device_id` of `box_id`, whose identity key is `device_key`:
    /// the deployment's [`CIPHERSUITE`]; a basic credential naming that box
    /// and device, vouched for by `device_key` over the leaf's signature key;
    /// the leaf node's and the KeyPackage's signatures under that key; a
    /// lifetime that has not ended at `now_secs`.
    pub fn check(
        &self,
        box_id: &[u8; 16],
        device_id: &[u8; 16],
        device_key: &IdentityKey,
        now_secs: u64,
    ) -> Result<()> {
        if self.cipher_suite != CIPHERSUITE {
            return Err(refused(format!(
                "ciphersuite 0x{:04X} is not the deployment's 0x{CIPHERSUITE:04X}",
                self.cipher_suite
            )));
        }
        if self.credential_type != BASIC_CREDENTIAL
            || self.identity.len() != CREDENTIAL_IDENTITY_LEN
        {
            return Err(refused("the credential is not a Rossby credential"));
        }
        if self.identity[..16] != box_id[..] || self.identity[16..32] != device_id[..] {
            return Err(refused("the credential names another device"));
        }
        device_key
            .verify(
                &credential_message(box_id, device_id, self.signature_key),
                &self.identity[32..],
            )
            .map_err(|_| refused("the credential is not signed by the device's identity key"))?;
        let leaf_key = <&[u8; ED25519_KEY_LEN]>::try_from(self.signature_key)
            .ok()
            .and_then(|k| VerifyingKey::from_bytes(k).ok())
            .ok_or_else(|| refused("the leaf's signature key is not an Ed25519 key"))?;
        let verify = |label: &str, content: &[u8], signature: &[u8], what: &str| {
            let signature = <[u8; ED25519_SIGNATURE_LEN]>::try_from(signature)
                .map_err(|_| refused(format!("the {what} signature is not 64 bytes")))?;
            let message =
                sign_content(label, content).ok_or_else(|| refused("too long to verify"))?;
            leaf_key
                .verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&signature))
                .map_err(|_| refused(format!("the {what} signature does not verify")))
        };
        verify(
            "LeafNodeTBS",
            self.leaf_tbs,
            self.leaf_signature,
            "leaf node",
        )?;
        verify("KeyPackageTBS", self.tbs, self.signature, "KeyPackage")?;
        if self.not_after <= now_secs || self.not_after <= self.not_before {
            return Err(refused("the KeyPackage's lifetime has ended"));
        }
        Ok(())
    }
}

/// What [`build_key_package`] puts into a KeyPackage.
pub struct KeyPackageParts<'a> {
    /// The publishing device's keys (they vouch for `leaf_signer`).
    pub device: &'a DeviceKeys,
    /// Its box.
    pub box_id: [u8; 16],
    /// Its id.
    pub device_id: [u8; 16],
    /// The leaf's signature key.
    pub leaf_signer: &'a SigningKey,
    /// The HPKE init key (opaque here).
    pub init_key: &'a [u8],
    /// The leaf's HPKE encryption key (opaque here).
    pub encryption_key: &'a [u8],
    /// The ciphersuite.
    pub cipher_suite: u16,
    /// `not_before` and `not_after`, seconds since the Unix epoch.
    pub lifetime: (u64, u64),
}

/// Encodes a minimal KeyPackage (empty capabilities and extensions) signed as
/// RFC 9420 says, with a Rossby credential: what [`parse_key_package`] and
/// [`KeyPackage::check`] accept, for tools and tests that exercise a gateway
/// without an MLS implementation. `None` when a part is too long to encode.
pub fn build_key_package(p: &KeyPackageParts<'_>) -> Option<Vec<u8>> {
    let leaf_key = p.leaf_signer.verifying_key().to_bytes();
    let vouch = p
        .device
        .sign(&credential_message(&p.box_id, &p.device_id, &leaf_key));
    let mut identity = Vec::with_capacity(CREDENTIAL_IDENTITY_LEN);
    identity.extend_from_slice(&p.box_id);
    identity.extend_from_slice(&p.device_id);
    identity.extend_from_slice(&vouch);
    let vector = |out: &mut Vec<u8>, bytes: &[u8]| -> Option<()> {
        put_varint(out, bytes.len())?;
        out.extend_from_slice(bytes);
        Some(())
    };
    let mut leaf = Vec::new();
    vector(&mut leaf, p.encryption_key)?;
    vector(&mut leaf, &leaf_key)?;
    leaf.extend(BASIC_CREDENTIAL.to_be_bytes());
    vector(&mut leaf, &identity)?;
    for _ in 0..5 {
        vector(&mut leaf, &[])?;
    }
    leaf.push(SOURCE_KEY_PACKAGE);
    leaf.extend(p.lifetime.0.to_be_bytes());
    leaf.extend(p.lifetime.1.to_be_bytes());
    vector(&mut leaf, &[])?;
    let leaf_signature = p
        .leaf_signer
        .sign(&sign_content("LeafNodeTBS", &leaf)?)
        .to_bytes();
    vector(&mut leaf, &leaf_signature)?;
    let mut tbs = Vec::new();
    tbs.extend(MLS10.to_be_bytes());
    tbs.extend(p.cipher_suite.to_be_bytes());
    vector(&mut tbs, p.init_key)?;
    tbs.extend_from_slice(&leaf);
    vector(&mut tbs, &[])?;
    let signature = p
        .leaf_signer
        .sign(&sign_content("KeyPackageTBS", &tbs)?)
        .to_bytes();
    let mut out = Vec::with_capacity(tbs.len() + 72);
    out.extend(MLS10.to_be_bytes());
    out.extend(5u16.to_be_bytes());
    out.extend_from_slice(&tbs);
    vector(&mut out, &signature)?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        device: DeviceKeys,
        leaf: SigningKey,
        box_id: [u8; 16],
        device_id: [u8; 16],
    }

    const NOW: u64 = 1_800_000_000;

    fn fixture() -> Fixture {
        Fixture {
            device: DeviceKeys::generate(),
            leaf: SigningKey::from_bytes(&[7; 32]),
            box_id: [1; 16],
            device_id: [2; 16],
        }
    }

    fn build(f: &Fixture, suite: u16, lifetime: (u64, u64)) -> Vec<u8> {
        build_key_package(&KeyPackageParts {
            device: &f.device,
            box_id: f.box_id,
            device_id: f.device_id,
            leaf_signer: &f.leaf,
            init_key: &[3; 1216],
            encryption_key: &[4; 1216],
            cipher_suite: suite,
            lifetime,
        })
        .unwrap()
    }

    fn check(f: &Fixture, bytes: &[u8]) -> Result<()> {
        let key = IdentityKey::from_bytes(&f.device.identity_public()).unwrap();
        parse_key_package(bytes)?.check(&f.box_id, &f.device_id, &key, NOW)
    }

    #[test]
    fn a_well_formed_key_package_passes() {
        let f = fixture();
        let bytes = build(&f, CIPHERSUITE, (NOW - 3600, NOW + 86_400));
        let kp = parse_key_package(&bytes).unwrap();
        assert_eq!(kp.cipher_suite, CIPHERSUITE);
        assert_eq!(kp.signature_key, f.leaf.verifying_key().as_bytes());
        check(&f, &bytes).unwrap();
    }

    #[test]
    fn every_refusal_names_its_reason() {
        let f = fixture();
        let good = build(&f, CIPHERSUITE, (NOW - 3600, NOW + 86_400));
        let reason = |bytes: &[u8]| check(&f, bytes).unwrap_err().to_string();
        assert!(reason(&build(&f, 1, (0, NOW + 1))).contains("ciphersuite 0x0001"));
        assert!(reason(&build(&f, CIPHERSUITE, (0, NOW))).contains("lifetime"));
        // Another device's credential, and a device key that did not vouch.
        let key = IdentityKey::from_bytes(&f.device.identity_public()).unwrap();
        let kp = parse_key_package(&good).unwrap();
        assert!(
            kp.check(&f.box_id, &[9; 16], &key, NOW)
                .unwrap_err()
                .to_string()
                .contains("another device")
        );
        let stranger = IdentityKey::from_bytes(&DeviceKeys::generate().identity_public()).unwrap();
        assert!(
            kp.check(&f.box_id, &f.device_id, &stranger, NOW)
                .unwrap_err()
                .to_string()
                .contains("identity key")
        );
        // A flipped byte in the init key breaks the KeyPackage signature; in
        // the leaf's encryption key, the leaf's signature.
        let mut bad = good.clone();
        bad[10] ^= 1;
        assert!(reason(&bad).contains("KeyPackage signature"));
        let mut bad = good.clone();
        bad[6 + 2 + 1216 + 10] ^= 1;
        assert!(reason(&bad).contains("leaf node signature"));
        // Structure: truncated, trailing bytes, another wire format.
        assert!(parse_key_package(&good[..good.len() - 1]).is_err());
        let mut longer = good.clone();
        longer.push(0);
        assert!(
            parse_key_package(&longer)
                .unwrap_err()
                .to_string()
                .contains("trailing")
        );
        let mut welcome = good.clone();
        welcome[3] = 3;
        assert!(parse_key_package(&welcome).is_err());
        assert!(parse_key_package(&[1; 40]).is_err());
    }
}
