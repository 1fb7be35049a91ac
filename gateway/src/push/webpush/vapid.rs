//! VAPID (RFC 8292): the gateway identifies itself to push services with a
//! P-256 key pair. A web app subscribes with the public key as its
//! `applicationServerKey`, and the push service then accepts messages for that
//! subscription only with a JWT signed by the private key.

use crate::config::{warn_if_readable_by_others, write_private_file_once};
use crate::error::{Error, Result};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use p256::SecretKey;
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::rand_core::OsRng;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use std::path::Path;
use std::time::Duration;

/// What the key is called in messages.
const WHAT: &str = "VAPID private key";

/// How long a VAPID JWT is valid. RFC 8292 §2 allows at most 24 hours; 12
/// leaves room for clock skew between the gateway and the push service.
pub(crate) const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A cached JWT is replaced this long before it expires, so none is sent that
/// could expire in flight or on a push service whose clock runs ahead.
pub(crate) const TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(3600);

/// The gateway's VAPID key pair.
#[derive(Clone)]
pub struct VapidKey {
    signing: SigningKey,
    public: [u8; 65],
}

// The private key never goes to logs.
impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VapidKey({})", self.public_key_base64url())
    }
}

impl VapidKey {
    /// Loads the key from `path`, or, when the file does not exist, generates
    /// one and writes it there (PKCS#8 PEM, mode 0600, appearing atomically so
    /// two gateways starting at once agree on one key).
    ///
    /// The file may hold a PEM private key (PKCS#8 `PRIVATE KEY` or SEC1
    /// `EC PRIVATE KEY`), the raw 32-byte private scalar, or that scalar as
    /// base64url (what most web-push tools print) or hex text.
    pub fn load_or_generate(path: &Path) -> Result<VapidKey> {
        match std::fs::read(path) {
            Ok(bytes) => return VapidKey::parse(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot read", path, e)),
        }
        let generated = SecretKey::random(&mut OsRng);
        let pem = generated
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| Error::Config(format!("cannot encode a new {WHAT}: {e}")))?;
        let created = write_private_file_once(path, pem.as_bytes())?;
        // Another gateway may have written the file first: use what is there.
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
        let key = VapidKey::parse(path, &bytes)?;
        if created {
            tracing::info!(
                path = %path.display(),
                public_key = %key.public_key_base64url(),
                "generated the {WHAT}"
            );
        }
        Ok(key)
    }

    /// Parses a key file's content (`path` only names it in messages, which
    /// never contain key material).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<VapidKey> {
        warn_if_readable_by_others(path, WHAT);
        let bad = |what: &str| Error::Config(format!("{WHAT} file {}: {what}", path.display()));
        let text = std::str::from_utf8(bytes).map(str::trim).ok();
        let secret = if let Some(pem) = text.filter(|t| t.starts_with("-----BEGIN ")) {
            if pem.starts_with("-----BEGIN PRIVATE KEY-----") {
                SecretKey::from_pkcs8_pem(pem)
                    .map_err(|_| bad("the PKCS#8 PEM is not a P-256 private key"))?
            } else if pem.starts_with("-----BEGIN EC PRIVATE KEY-----") {
                SecretKey::from_sec1_pem(pem)
                    .map_err(|_| bad("the EC PEM is not a P-256 private key"))?
            } else {
                return Err(bad(
                    "unsupported PEM block (expected PRIVATE KEY or EC PRIVATE KEY)",
                ));
            }
        } else {
            let scalar = text
                .and_then(decode_text_scalar)
                .or_else(|| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| {
                    bad(
                        "not a P-256 private key: expected a PEM private key, 32 raw bytes, \
                         or 32 bytes as base64url or hex",
                    )
                })?;
            SecretKey::from_bytes(&scalar.into())
                .map_err(|_| bad("the 32 bytes are not a valid P-256 private key"))?
        };
        Ok(VapidKey::from_secret(&secret))
    }

    fn from_secret(secret: &SecretKey) -> VapidKey {
        let mut public = [0u8; 65];
        public.copy_from_slice(secret.public_key().to_encoded_point(false).as_bytes());
        VapidKey {
            signing: SigningKey::from(secret),
            public,
        }
    }

    /// The public key as an uncompressed point (65 bytes).
    pub fn public_key(&self) -> [u8; 65] {
        self.public
    }

    /// The public key, base64url without padding: what a web app passes to
    /// `pushManager.subscribe` as `applicationServerKey`.
    pub fn public_key_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public)
    }

    /// The `Authorization` header value for a push service at `audience`
    /// (`scheme://host[:port]`), with a JWT valid until `exp` (Unix seconds).
    pub(crate) fn authorization(&self, audience: &str, subject: &str, exp: u64) -> String {
        let token = crate::push::jwt::es256(
            &serde_json::json!({"typ": "JWT", "alg": "ES256"}),
            &serde_json::json!({"aud": audience, "exp": exp, "sub": subject}),
            &self.signing,
        );
        format!("vapid t={token}, k={}", self.public_key_base64url())
    }
}

/// A 32-byte scalar written as text: base64url (padded or not; standard base64
/// too, as some tools print) or hex.
fn decode_text_scalar(text: &str) -> Option<[u8; 32]> {
    let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).ok()?
    } else {
        [URL_SAFE_NO_PAD, URL_SAFE, STANDARD_NO_PAD, STANDARD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())?
    };
    decoded.try_into().ok()
}

/// Checks `--webpush-subject`: the contact RFC 8292 §2.1 asks for, a `mailto:`
/// or `https:` URI the push service's operator can reach the gateway's at.
pub fn check_subject(subject: &str) -> Result<()> {
    let rest = subject
        .strip_prefix("mailto:")
        .or_else(|| subject.strip_prefix("https://"));
    let ok = rest
        .is_some_and(|r| !r.is_empty() && !r.chars().any(|c| c.is_whitespace() || c.is_control()));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "--webpush-subject {subject:?} must be a mailto: or https:// URI \
             (a contact for the push services, e.g. mailto:ops@example.com)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::der::zeroize::Zeroizing;

    fn write(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_missing_key_is_generated_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("vapid.pem");
        let generated = VapidKey::load_or_generate(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = VapidKey::load_or_generate(&path).unwrap();
        assert_eq!(again.public_key(), generated.public_key());
        let public = URL_SAFE_NO_PAD
            .decode(generated.public_key_base64url())
            .unwrap();
        assert_eq!(public.len(), 65);
        assert_eq!(public[0], 4, "uncompressed point");
        assert!(!text.contains(&generated.public_key_base64url()));
        // No staging file is left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn every_supported_format_loads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let secret = SecretKey::random(&mut OsRng);
        let expected = VapidKey::from_secret(&secret).public_key();
        let scalar: [u8; 32] = secret.to_bytes().into();
        let pkcs8: Zeroizing<String> = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap();
        for (name, contents) in [
            ("pkcs8.pem", pkcs8.as_bytes().to_vec()),
            ("sec1.pem", sec1.as_bytes().to_vec()),
            ("raw", scalar.to_vec()),
            (
                "b64url",
                format!("{}\n", URL_SAFE_NO_PAD.encode(scalar)).into_bytes(),
            ),
            ("b64", STANDARD.encode(scalar).into_bytes()),
            ("hex", format!("  {}\n", hex::encode(scalar)).into_bytes()),
        ] {
            let path = write(&dir, name, &contents);
            let key = VapidKey::load_or_generate(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(key.public_key(), expected, "{name}");
        }
    }

    #[test]
    fn garbage_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for (name, contents, needle) in [
            (
                "text",
                b"hello, world".to_vec(),
                "expected a PEM private key",
            ),
            ("short", vec![7u8; 31], "expected a PEM private key"),
            ("zero", vec![0u8; 32], "not a valid P-256 private key"),
            (
                "cert",
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
                "unsupported PEM block",
            ),
            (
                "badpem",
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
                "PKCS#8",
            ),
        ] {
            let path = write(&dir, name, &contents);
            let message = VapidKey::load_or_generate(&path).unwrap_err().to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("VAPID private key"), "{message}");
            assert!(message.contains(needle), "{name}: {message}");
        }
        // An unreadable path (a directory) is an I/O error naming it.
        let message = VapidKey::load_or_generate(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn subjects_must_be_mailto_or_https() {
        assert!(check_subject("mailto:ops@example.com").is_ok());
        assert!(check_subject("https://example.com/contact").is_ok());
        for bad in [
            "",
            "ops@example.com",
            "mailto:",
            "http://example.com",
            "https://a b",
        ] {
            let message = check_subject(bad).unwrap_err().to_string();
            assert!(message.contains("--webpush-subject"), "{bad}: {message}");
        }
    }
}
