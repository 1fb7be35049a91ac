//! Pieces the services' checks share: taking a compact JWT apart, exact key
//! sets of JSON objects, the clock and random identifiers.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// A compact JWT taken apart (not yet verified).
pub(crate) struct Jwt {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    /// `header.claims` as sent: what the signature covers.
    pub signing_input: String,
    pub signature: Vec<u8>,
}

fn object(part: &str, what: &str) -> Result<Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| format!("JWT {what} is not unpadded base64url: {e}"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("JWT {what} is not a JSON object: {other}")),
        Err(e) => Err(format!("JWT {what} is not JSON: {e}")),
    }
}

/// Splits `token` into its three parts and decodes them.
pub(crate) fn parse(token: &str) -> Result<Jwt, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err(format!("JWT has {} parts, not 3", parts.len()));
    };
    Ok(Jwt {
        header: object(header, "header")?,
        claims: object(claims, "claims")?,
        signing_input: format!("{header}.{claims}"),
        signature: URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|e| format!("JWT signature is not unpadded base64url: {e}"))?,
    })
}

/// Fails unless `map` has exactly the keys `keys`.
pub(crate) fn exact_keys(
    map: &Map<String, Value>,
    keys: &[&str],
    what: &str,
) -> Result<(), String> {
    let mut got: Vec<&str> = map.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = keys.to_vec();
    want.sort_unstable();
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{what} has keys {got:?}, expected exactly {want:?}"
        ))
    }
}

/// The integer `key` of `map`.
pub(crate) fn int(map: &Map<String, Value>, key: &str, what: &str) -> Result<i64, String> {
    map.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("{what} {key:?} is not an integer: {:?}", map.get(key)))
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `n` random bytes.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    // The system generator failing leaves zeros: identifiers then repeat,
    // which the tests would notice, and nothing here is a real secret.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes
}

/// The DER inside the first PEM block labelled `label`.
pub(crate) fn pem_der(pem: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem
        .find(&begin)
        .ok_or_else(|| format!("no {begin} block"))?
        + begin.len();
    let stop = pem[start..]
        .find(&end)
        .ok_or_else(|| format!("no {end} line"))?
        + start;
    let b64: String = pem[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("PEM body is not base64: {e}"))
}

/// `der` as a PEM block labelled `label`, 64 characters a line.
pub(crate) fn to_pem(der: &[u8], label: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}
