//! Message encryption for Web Push (RFC 8291) in the `aes128gcm` content coding
//! (RFC 8188): the push service relays the body but cannot read it, and only
//! the subscribing browser (holding the private half of `p256dh` and the
//! `auth` secret) can.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use p256::elliptic_curve::rand_core::OsRng;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

/// The record size announced in the header. A push message is one record
/// (RFC 8291 §4), shorter than this; 4096 is what the RFC's example and
/// browsers' senders use.
const RECORD_SIZE: u32 = 4096;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// The delimiter ending the last (here: only) record's plaintext (RFC 8188 §2).
const LAST_RECORD_DELIMITER: u8 = 0x02;
/// The header before the record: salt, record size, key id length, key id.
const HEADER_LEN: usize = 16 + 4 + 1 + 65;
/// The longest plaintext sent: push services need only accept 4096-byte
/// bodies (RFC 8291 §4), which leaves 3993 bytes after the header, the
/// delimiter and the tag.
pub(crate) const MAX_PLAINTEXT: usize = 4096 - HEADER_LEN - 1 - TAG_LEN;

/// Why a message could not be encrypted for a subscription.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EncryptError {
    /// `p256dh` is not a point on P-256: the subscription can never be used.
    #[error("the subscription's p256dh is not a P-256 public key")]
    BadSubscriptionKey,
    /// The plaintext does not fit one record.
    #[error("the message is longer than {MAX_PLAINTEXT} bytes")]
    TooLong,
    /// A primitive refused its input (does not happen with these sizes).
    #[error("the message could not be encrypted")]
    Crypto,
}

/// Checks that `p256dh` is a usable P-256 public key (uncompressed point), so a
/// subscription that could never be encrypted to is refused when registered.
pub fn check_subscription_key(p256dh: &[u8; 65]) -> Result<(), String> {
    PublicKey::from_sec1_bytes(p256dh)
        .map(|_| ())
        .map_err(|_| "p256dh is not an uncompressed P-256 public key".to_string())
}

/// Encrypts `plaintext` for the subscription (`ua_public` = its `p256dh`,
/// `auth` = its authentication secret) with a fresh ephemeral key and salt, as
/// RFC 8291 requires for every message.
pub(crate) fn encrypt(
    plaintext: &[u8],
    ua_public: &[u8; 65],
    auth: &[u8; 16],
) -> Result<Vec<u8>, EncryptError> {
    let as_secret = SecretKey::random(&mut OsRng);
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    encrypt_with(plaintext, ua_public, auth, &as_secret, &salt)
}

/// [`encrypt`] with the ephemeral key and salt given, so the RFC's example can
/// be reproduced exactly.
fn encrypt_with(
    plaintext: &[u8],
    ua_public: &[u8; 65],
    auth: &[u8; 16],
    as_secret: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, EncryptError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EncryptError::TooLong);
    }
    let ua_key =
        PublicKey::from_sec1_bytes(ua_public).map_err(|_| EncryptError::BadSubscriptionKey)?;
    let as_public = as_secret.public_key().to_encoded_point(false);
    let as_public = as_public.as_bytes();
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua_key.as_affine());

    // RFC 8291 §3.4: the auth secret and both public keys go into the IKM, so
    // the keys are bound to this subscription and this sender.
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| EncryptError::Crypto)?;

    let content = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    content
        .expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|_| EncryptError::Crypto)?;
    let mut nonce = [0u8; 12];
    content
        .expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|_| EncryptError::Crypto)?;

    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(LAST_RECORD_DELIMITER);
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|_| EncryptError::Crypto)?;
    // The first (and only) record's nonce is NONCE XOR 0, i.e. NONCE itself.
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), record.as_slice())
        .map_err(|_| EncryptError::Crypto)?;

    let mut body = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    // The key id is the sender's public key, which the browser needs for ECDH.
    body.push(as_public.len() as u8);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&ciphertext);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    // RFC 8291 Appendix A.
    const PLAINTEXT: &str = "When I grow up, I want to be a watermelon";
    const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    const AS_PUBLIC: &str =
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

    fn rfc_inputs() -> (SecretKey, [u8; 65], [u8; 16], [u8; 16]) {
        let as_secret = SecretKey::from_slice(&b64(AS_PRIVATE)).unwrap();
        (
            as_secret,
            b64(UA_PUBLIC).try_into().unwrap(),
            b64(AUTH).try_into().unwrap(),
            b64(SALT).try_into().unwrap(),
        )
    }

    #[test]
    fn rfc8291_appendix_a_ciphertext_is_reproduced_exactly() {
        let (as_secret, ua_public, auth, salt) = rfc_inputs();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(as_secret.public_key().to_encoded_point(false).as_bytes()),
            AS_PUBLIC
        );
        let body =
            encrypt_with(PLAINTEXT.as_bytes(), &ua_public, &auth, &as_secret, &salt).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.encode(&body), BODY);
    }

    #[test]
    fn fresh_messages_use_a_new_key_and_salt() {
        let (_, ua_public, auth, _) = rfc_inputs();
        let a = encrypt(b"x", &ua_public, &auth).unwrap();
        let b = encrypt(b"x", &ua_public, &auth).unwrap();
        assert_eq!(a.len(), b.len());
        assert_ne!(a[..16], b[..16], "salt");
        assert_ne!(a[21..86], b[21..86], "ephemeral key");
        assert_eq!(a[16..21], [0, 0, 0x10, 0, 65], "rs = 4096, idlen = 65");
    }

    #[test]
    fn bad_keys_and_oversized_messages_are_refused() {
        let (as_secret, ua_public, auth, salt) = rfc_inputs();
        let mut off_curve = ua_public;
        off_curve[64] ^= 1;
        assert_eq!(
            encrypt_with(b"x", &off_curve, &auth, &as_secret, &salt),
            Err(EncryptError::BadSubscriptionKey)
        );
        assert!(check_subscription_key(&off_curve).is_err());
        assert!(check_subscription_key(&ua_public).is_ok());
        assert_eq!(
            encrypt_with(
                &[0; MAX_PLAINTEXT + 1],
                &ua_public,
                &auth,
                &as_secret,
                &salt
            ),
            Err(EncryptError::TooLong)
        );
        let full = encrypt_with(&[0; MAX_PLAINTEXT], &ua_public, &auth, &as_secret, &salt).unwrap();
        assert_eq!(full.len(), 4096);
    }
}
