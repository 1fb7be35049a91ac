//! Sealed sender: envelopes whose sender only the recipient learns.
//!
//! The gateway issues an authenticated device a short-lived
//! [`pb::SenderCertificate`]: its statement, signed with a certificate key
//! derived from the server secret, that a key bundle belongs to a (box, device).
//! A sealed-sender envelope carries, encrypted to the recipient's devices, the
//! certificate and the sender's ordinary signed [`pb::Envelope`]; the gateway
//! sees only the recipient box, the message id and the ciphertext. The
//! recipient checks the certificate against the gateway's certificate keys
//! (learned from Ping over the pinned connection), that the inner envelope names
//! the certified device, and the inner envelope's signature under the certified
//! bundle (by [`open_envelope`]).
//!
//! A sealed send is authorized by an access key the sender derives
//! ([`access_key`]) from the recipient's access secret, which the recipient
//! shares only with its contacts (or by the recipient accepting sealed sends
//! from anyone). docs/security.md ("Sealed sender") specifies every byte.

use super::envelope::{ENVELOPE_VERSION, ID_LEN, RecipientDevice, open_envelope, wrap_for};
use super::keys::{DeviceKeys, PublicKeys, SIGNATURE_LEN};
use super::seal::{AEAD_KEY_LEN, aead_open, aead_seal, open, seal};
use crate::error::{Error, Result};
use crate::pb;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use prost::Message;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Domain label of a sender certificate's signature.
pub const CERTIFICATE_LABEL: &[u8] = b"rossby/sender-certificate/v1";
/// Domain label of the derivation of a certificate key from a server secret.
pub const CERTIFICATE_KEY_LABEL: &[u8] = b"rossby/sender-certificate-key/v1";
/// Domain label of the access key derivation.
pub const ACCESS_KEY_LABEL: &[u8] = b"rossby/access-key/v1";
/// Associated-data label of a sealed-sender ciphertext.
pub const SEALED_SENDER_AAD_LABEL: &[u8] = b"rossby/sealed-sender/v1";
/// Prefix of the seal context of a sealed-sender key wrap.
pub const CONTEXT_SEALED_SENDER_KEY: &[u8] = b"rossby/sealed-sender-key/v1";
/// Length of an access secret.
pub const ACCESS_SECRET_LEN: usize = 32;
/// Length of an access key.
pub const ACCESS_KEY_LEN: usize = 16;

/// The access key a sealed send to a box presents:
/// `SHA-256(ACCESS_KEY_LABEL || secret)[0..16]`, from the access secret the
/// box's owner shares with its contacts.
#[must_use]
pub fn access_key(secret: &[u8; ACCESS_SECRET_LEN]) -> [u8; ACCESS_KEY_LEN] {
    let digest = Sha256::new()
        .chain_update(ACCESS_KEY_LABEL)
        .chain_update(secret)
        .finalize();
    let mut key = [0u8; ACCESS_KEY_LEN];
    key.copy_from_slice(&digest[..ACCESS_KEY_LEN]);
    key
}

/// The certificate signing key of one server secret version: the Ed25519
/// secret key `HKDF-SHA-256(salt = none, ikm = server secret, info =
/// CERTIFICATE_KEY_LABEL, L = 32)`. Every gateway holding the secret derives the
/// same key, so certificates verify wherever the recipient fetches.
pub fn certificate_key(server_secret: &[u8]) -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(None, server_secret)
        .expand(CERTIFICATE_KEY_LABEL, &mut seed)
        .map_err(|_| Error::Crypto("HKDF output length".into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The bytes a certificate's signature covers:
/// `CERTIFICATE_LABEL || lp(box_id) || lp(device_id) || lp(key_bundle) ||
/// u64(expires_at_ms) || u32(key_version)`, big-endian, `lp(x) = u32(len) || x`.
#[must_use]
pub fn certificate_signed_bytes(cert: &pb::SenderCertificate) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        CERTIFICATE_LABEL.len() + 12 + cert.box_id.len() + cert.device_id.len() + 12,
    );
    out.extend_from_slice(CERTIFICATE_LABEL);
    for field in [&cert.box_id, &cert.device_id, &cert.key_bundle] {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&cert.expires_at_ms.to_be_bytes());
    out.extend_from_slice(&cert.key_version.to_be_bytes());
    out
}

/// Issues a certificate (the gateway's side).
#[must_use]
pub fn issue_certificate(
    key: &SigningKey,
    key_version: u32,
    box_id: &[u8; ID_LEN],
    device_id: &[u8; ID_LEN],
    key_bundle: Vec<u8>,
    expires_at_ms: u64,
) -> pb::SenderCertificate {
    let mut cert = pb::SenderCertificate {
        box_id: box_id.to_vec(),
        device_id: device_id.to_vec(),
        key_bundle,
        expires_at_ms,
        key_version,
        signature: Vec::new(),
    };
    cert.signature = key
        .sign(&certificate_signed_bytes(&cert))
        .to_bytes()
        .to_vec();
    cert
}

/// A certificate that verified: the device it names and that device's keys.
#[derive(Clone, Debug)]
pub struct CertifiedSender {
    /// The sending box.
    pub box_id: [u8; ID_LEN],
    /// The sending device.
    pub device_id: [u8; ID_LEN],
    /// The device's verified public keys.
    pub keys: PublicKeys,
    /// When the certificate expires.
    pub expires_at_ms: u64,
}

/// Why a certificate is not accepted. Recipients show a sealed message with a
/// bad certificate as such instead of attributing it to anyone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// No certificate key of that version is known.
    #[error("sender certificate signed with unknown key version {0}")]
    UnknownKey(u32),
    /// The signature does not verify: forged or altered.
    #[error("sender certificate signature does not verify (forged or altered)")]
    Forged,
    /// It had expired when the gateway stored the message.
    #[error("sender certificate expired")]
    Expired,
    /// A field is malformed (lengths, the key bundle).
    #[error("malformed sender certificate: {0}")]
    Malformed(String),
}

/// Verifies `cert` against the gateway's certificate keys (`(version, Ed25519
/// public key)`), as of `at_ms` (when the gateway stored the message).
pub fn verify_certificate(
    cert: &pb::SenderCertificate,
    keys: &[(u32, [u8; 32])],
    at_ms: u64,
) -> std::result::Result<CertifiedSender, CertificateError> {
    let malformed = |what: &str| CertificateError::Malformed(what.to_string());
    let box_id: [u8; ID_LEN] = cert
        .box_id
        .as_slice()
        .try_into()
        .map_err(|_| malformed("box id"))?;
    let device_id: [u8; ID_LEN] = cert
        .device_id
        .as_slice()
        .try_into()
        .map_err(|_| malformed("device id"))?;
    let signature: [u8; SIGNATURE_LEN] = cert
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| malformed("signature length"))?;
    let (_, public) = keys
        .iter()
        .find(|(v, _)| *v == cert.key_version)
        .ok_or(CertificateError::UnknownKey(cert.key_version))?;
    let verifying = VerifyingKey::from_bytes(public).map_err(|_| malformed("certificate key"))?;
    verifying
        .verify_strict(
            &certificate_signed_bytes(cert),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| CertificateError::Forged)?;
    if cert.expires_at_ms <= at_ms {
        return Err(CertificateError::Expired);
    }
    let bundle =
        pb::KeyBundle::decode(cert.key_bundle.as_slice()).map_err(|_| malformed("key bundle"))?;
    let keys = PublicKeys::from_bundle(&bundle).map_err(|e| malformed(&e.to_string()))?;
    Ok(CertifiedSender {
        box_id,
        device_id,
        keys,
        expires_at_ms: cert.expires_at_ms,
    })
}

/// The seal context of the outer key's wrap for one device:
/// `CONTEXT_SEALED_SENDER_KEY || recipient_box || message_id || device_id`.
fn wrap_context(recipient_box: &[u8; ID_LEN], message_id: &[u8], device_id: &[u8]) -> Vec<u8> {
    let mut out = CONTEXT_SEALED_SENDER_KEY.to_vec();
    out.extend_from_slice(recipient_box);
    out.extend_from_slice(message_id);
    out.extend_from_slice(device_id);
    out
}

/// `SEALED_SENDER_AAD_LABEL || recipient_box || message_id`.
fn aad(recipient_box: &[u8; ID_LEN], message_id: &[u8]) -> Vec<u8> {
    let mut out = SEALED_SENDER_AAD_LABEL.to_vec();
    out.extend_from_slice(recipient_box);
    out.extend_from_slice(message_id);
    out
}

/// Wraps a signed `inner` envelope and the sender's certificate for the devices
/// of `recipient_box`: a fresh key encrypts a [`pb::SealedSenderContent`] and is
/// sealed to each device. The result names nobody; its `message_id` is the
/// inner one.
pub fn seal_sender(
    certificate: &pb::SenderCertificate,
    inner: &pb::Envelope,
    recipient_box: &[u8; ID_LEN],
    devices: &[RecipientDevice],
) -> Result<pb::Envelope> {
    let message_id = inner.message_id.clone();
    let content = pb::SealedSenderContent {
        certificate: Some(certificate.clone()),
        envelope: inner.encode_to_vec(),
    };
    let mut key = [0u8; AEAD_KEY_LEN];
    rand::rng().fill_bytes(&mut key);
    let ciphertext = aead_seal(
        &key,
        &aad(recipient_box, &message_id),
        &content.encode_to_vec(),
    )?;
    let keys = devices
        .iter()
        .map(|d| {
            Ok(pb::WrappedKey {
                device_id: d.device_id.to_vec(),
                sealed: Some(seal(
                    &d.keys,
                    &wrap_context(recipient_box, &message_id, &d.device_id),
                    &key,
                )?),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(pb::Envelope {
        version: ENVELOPE_VERSION,
        message_id,
        sealed_sender: Some(pb::SealedSender { keys, ciphertext }),
        ..pb::Envelope::default()
    })
}

/// An opened sealed-sender envelope: the certificate and the inner envelope,
/// neither checked yet ([`open_sealed_envelope`] does both).
#[derive(Clone, Debug)]
pub struct Unsealed {
    /// The sender's certificate as it came.
    pub certificate: pb::SenderCertificate,
    /// The sender's signed envelope.
    pub envelope: pb::Envelope,
}

/// Removes the outer layer of a sealed-sender envelope addressed to
/// `my_device` of `recipient_box`. Fails unless it decrypts and the inner
/// envelope carries the same message id.
pub fn unseal_sender(
    keys: &DeviceKeys,
    recipient_box: &[u8; ID_LEN],
    my_device: &[u8; ID_LEN],
    outer: &pb::Envelope,
) -> Result<Unsealed> {
    let sealed = outer
        .sealed_sender
        .as_ref()
        .ok_or_else(|| Error::Crypto("not a sealed-sender envelope".into()))?;
    let wrapped = wrap_for(&sealed.keys, my_device, "SealedSender")?;
    let key: [u8; AEAD_KEY_LEN] = open(
        keys,
        &wrap_context(recipient_box, &outer.message_id, my_device),
        wrapped,
    )?
    .try_into()
    .map_err(|_| Error::Crypto("sealed-sender key must be 32 bytes".into()))?;
    let plaintext = aead_open(
        &key,
        &aad(recipient_box, &outer.message_id),
        &sealed.ciphertext,
    )
    .map_err(|_| Error::Crypto("sealed-sender ciphertext does not open".into()))?;
    let content =
        pb::SealedSenderContent::decode(plaintext.as_slice()).map_err(|e| Error::Malformed {
            what: "SealedSenderContent",
            detail: e.to_string(),
        })?;
    let certificate = content.certificate.ok_or_else(|| Error::Malformed {
        what: "SealedSenderContent",
        detail: "no certificate".into(),
    })?;
    let envelope =
        pb::Envelope::decode(content.envelope.as_slice()).map_err(|e| Error::Malformed {
            what: "Envelope",
            detail: e.to_string(),
        })?;
    if envelope.message_id != outer.message_id {
        return Err(Error::Crypto(
            "the sealed envelope carries another message id".into(),
        ));
    }
    Ok(Unsealed {
        certificate,
        envelope,
    })
}

/// What a recipient learns from a sealed-sender envelope that checks out.
#[derive(Clone, Debug)]
pub struct OpenedSealed {
    /// The certified sender.
    pub sender: CertifiedSender,
    /// The sender's signed envelope (its sender fields are the certified ones).
    pub envelope: pb::Envelope,
    /// Its decrypted content.
    pub content: pb::Content,
}

/// Why a sealed-sender envelope was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    /// The outer layer or the inner envelope does not open or verify.
    #[error(transparent)]
    Crypto(#[from] Error),
    /// The certificate is forged, expired, unknown or malformed.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The inner envelope names another device than the certificate.
    #[error("the sealed envelope's sender is not the certified device")]
    SenderMismatch,
}

/// Unseals, verifies the certificate as of `at_ms` (when the gateway stored
/// it), checks that the inner envelope names the certified device, and opens
/// the inner envelope with the certified keys (its signature included).
pub fn open_sealed_envelope(
    keys: &DeviceKeys,
    recipient_box: &[u8; ID_LEN],
    my_device: &[u8; ID_LEN],
    outer: &pb::Envelope,
    certificate_keys: &[(u32, [u8; 32])],
    at_ms: u64,
) -> std::result::Result<OpenedSealed, SealedError> {
    let unsealed = unseal_sender(keys, recipient_box, my_device, outer)?;
    open_unsealed(keys, my_device, unsealed, certificate_keys, at_ms)
}

/// The checks of [`open_sealed_envelope`] after [`unseal_sender`], for callers
/// that look the certificate keys up by the version the certificate names.
pub fn open_unsealed(
    keys: &DeviceKeys,
    my_device: &[u8; ID_LEN],
    unsealed: Unsealed,
    certificate_keys: &[(u32, [u8; 32])],
    at_ms: u64,
) -> std::result::Result<OpenedSealed, SealedError> {
    let sender = verify_certificate(&unsealed.certificate, certificate_keys, at_ms)?;
    if unsealed.envelope.sender_box != sender.box_id
        || unsealed.envelope.sender_device != sender.device_id
    {
        return Err(SealedError::SenderMismatch);
    }
    let content = open_envelope(keys, my_device, &unsealed.envelope, &sender.keys)?;
    Ok(OpenedSealed {
        sender,
        envelope: unsealed.envelope,
        content,
    })
}

#[cfg(test)]
mod tests;
