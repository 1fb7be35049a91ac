//! Compact JSON Web Tokens (RFC 7519) signed with ES256 (APNs provider tokens,
//! VAPID) or RS256 (the FCM service account's OAuth2 assertion). Only signing:
//! the gateway never verifies a JWT.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer;

/// A JWT could not be made (the key refused to sign).
#[derive(Debug, thiserror::Error)]
#[error("signing a JWT failed: {0}")]
pub struct SignError(String);

fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// `header.claims.signature` with an ES256 signature (P-256, SHA-256, the
/// 64-byte `r || s` form RFC 7518 §3.4 asks for). `header` must name
/// `"alg": "ES256"`.
pub fn es256(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    key: &p256::ecdsa::SigningKey,
) -> String {
    let input = signing_input(header, claims);
    let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// `header.claims.signature` with an RS256 signature (RSASSA-PKCS1-v1_5 with
/// SHA-256). `header` must name `"alg": "RS256"`.
pub fn rs256(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    key: &ring::signature::RsaKeyPair,
) -> Result<String, SignError> {
    let input = signing_input(header, claims);
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .map_err(|e| SignError(e.to_string()))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    #[test]
    fn es256_verifies_with_the_public_key() {
        let key = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let token = es256(
            &serde_json::json!({"alg": "ES256", "typ": "JWT"}),
            &serde_json::json!({"aud": "x", "exp": 1}),
            &key,
        );
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig =
            p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
        key.verifying_key().verify(input.as_bytes(), &sig).unwrap();
        let mut tampered = input.to_string();
        tampered.push('x');
        assert!(
            key.verifying_key()
                .verify(tampered.as_bytes(), &sig)
                .is_err()
        );
    }
}
