//! The canonical Hawk form of a Rossby request.
//!
//! Rossby has no HTTP, so each RPC is mapped onto the fields Hawk signs:
//! - method: always `POST`;
//! - host and port: the deployment's **service name** (for example
//!   `chat.example.net:7400`), a constant configured on every gateway and client,
//!   never the address a client happened to reach (clients come through load
//!   balancers and may reach any gateway);
//! - path: `/rossby/v1/<rpc>`, for example `/rossby/v1/send`;
//! - payload hash: Hawk's SHA-256 payload hash with content type
//!   `application/x-protobuf` over the request's `body` bytes exactly as sent;
//! - `ext`: the lower-case hex of 32 bytes exported from the connection's TLS
//!   session (RFC 5705/8446 exporter, label [`EXPORTER_LABEL`], empty context), so a
//!   captured request cannot be replayed on another connection or gateway.
//!
//! Credentials use SHA-256 and a 32-byte key; the credential id is
//! `<box uuid>.<device uuid>.<key version>`. Times are whole seconds.
//!
//! This module is pure: the caller supplies the time and nonce when signing and the
//! current time when verifying, and remembers nonces itself.

use crate::error::{Error, Result};
use crate::pb::Method;
use hawk::{Credentials, DigestAlgorithm, Header, Key, PayloadHasher, RequestBuilder};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// The HTTP method every Rossby request is signed as.
pub const HAWK_METHOD: &str = "POST";
/// The content type of the payload hash.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// TLS exporter label of the connection binding carried in `ext`.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-rossby-hawk-binding";
/// Length of the exported connection binding.
pub const EXPORTER_LEN: usize = 32;
/// Length of a Hawk key.
pub const KEY_LEN: usize = 32;

/// The deployment's service name: the host and port every request is signed for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceName {
    /// Host name, for example `chat.example.net`.
    pub host: String,
    /// Port, for example 7400.
    pub port: u16,
}

impl Default for ServiceName {
    fn default() -> Self {
        ServiceName {
            host: "rossby".into(),
            port: crate::DEFAULT_PORT,
        }
    }
}

impl std::fmt::Display for ServiceName {
    /// `host:port`, the form [`ServiceName::from_str`] parses.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for ServiceName {
    type Err = Error;

    /// Parses `host:port` (or `host`, with the default port).
    fn from_str(s: &str) -> Result<Self> {
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .map_err(|_| Error::Auth(format!("invalid service port in {s:?}")))?,
            ),
            None => (s, crate::DEFAULT_PORT),
        };
        if host.is_empty() || host.contains('"') || host.contains(char::is_whitespace) {
            return Err(Error::Auth(format!("invalid service host in {s:?}")));
        }
        Ok(ServiceName {
            host: host.to_string(),
            port,
        })
    }
}

/// The RPC's name in the signed path: the enum name without `METHOD_`, lower case.
pub fn rpc_name(method: Method) -> String {
    method
        .as_str_name()
        .trim_start_matches("METHOD_")
        .to_ascii_lowercase()
}

/// The signed path of an RPC, `/rossby/v1/<rpc>`.
pub fn path(method: Method) -> String {
    format!("/rossby/v1/{}", rpc_name(method))
}

/// Hawk's payload hash of a request body.
pub fn payload_hash(body: &[u8]) -> Result<Vec<u8>> {
    PayloadHasher::hash(CONTENT_TYPE, DigestAlgorithm::Sha256, body)
        .map_err(|e| Error::Auth(format!("payload hash: {e}")))
}

/// The `ext` value binding a request to a connection.
pub fn binding_ext(exporter: &[u8]) -> String {
    hex::encode(exporter)
}

/// A device's Hawk credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCredentials {
    /// Credential id, `<box>.<device>.<key version>`.
    pub id: String,
    /// The 32-byte key.
    pub key: [u8; KEY_LEN],
}

impl std::fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceCredentials({}, <key>)", self.id)
    }
}

fn hawk_credentials(id: &str, key: &[u8]) -> Result<Credentials> {
    Ok(Credentials {
        id: id.to_string(),
        key: Key::new(key, DigestAlgorithm::Sha256).map_err(|e| Error::Auth(e.to_string()))?,
    })
}

/// Everything a signature covers besides the credentials.
#[derive(Clone, Copy, Debug)]
pub struct SignedRequest<'a> {
    /// The service name of the deployment.
    pub service: &'a ServiceName,
    /// The RPC.
    pub method: Method,
    /// The request body exactly as sent.
    pub body: &'a [u8],
    /// The connection's exported binding.
    pub exporter: &'a [u8],
}

impl SignedRequest<'_> {
    /// The header signing this request with `hash`, its body's payload hash.
    fn header_for(
        &self,
        creds: &Credentials,
        ts: SystemTime,
        nonce: &str,
        hash: &[u8],
    ) -> Result<Header> {
        let ext = binding_ext(self.exporter);
        let path = path(self.method);
        RequestBuilder::new(HAWK_METHOD, &self.service.host, self.service.port, &path)
            .hash(hash)
            .ext(ext.as_str())
            .request()
            .make_header_full(creds, ts, nonce)
            .map_err(|e| Error::Auth(e.to_string()))
    }

    /// Signs with the given timestamp (whole seconds are used) and nonce, returning
    /// the `Authorization` value including the `Hawk ` prefix.
    pub fn sign(&self, creds: &DeviceCredentials, ts: SystemTime, nonce: &str) -> Result<String> {
        if nonce.is_empty() || nonce.contains('"') {
            return Err(Error::Auth(
                "nonce must be non-empty and free of quotes".into(),
            ));
        }
        let creds = hawk_credentials(&creds.id, &creds.key)?;
        let hash = payload_hash(self.body)?;
        Ok(format!(
            "Hawk {}",
            self.header_for(&creds, whole_seconds(ts), nonce, &hash)?
        ))
    }
}

fn whole_seconds(ts: SystemTime) -> SystemTime {
    let secs = ts.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The fields of a received `Authorization` value, before verification.
#[derive(Clone, Debug)]
pub struct Authorization {
    /// Credential id.
    pub id: String,
    /// Timestamp.
    pub ts: SystemTime,
    /// Nonce.
    pub nonce: String,
    header: Header,
}

/// Why a request failed verification.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The header is missing or unparsable, or lacks a required field.
    #[error("malformed authorization: {0}")]
    Malformed(String),
    /// The timestamp is outside the skew window.
    #[error("timestamp outside the allowed clock skew")]
    ClockSkew,
    /// `ext` does not carry this connection's binding.
    #[error("request is bound to another connection")]
    WrongConnection,
    /// The payload hash does not match the body.
    #[error("payload hash does not match the body")]
    PayloadMismatch,
    /// The MAC does not match.
    #[error("invalid MAC")]
    BadMac,
}

impl Authorization {
    /// Parses an `Authorization` value (`Hawk id="…", ts="…", …`).
    pub fn parse(value: &str) -> Result<Self, Rejection> {
        let rest = value
            .strip_prefix("Hawk ")
            .ok_or_else(|| Rejection::Malformed("scheme is not Hawk".into()))?;
        check_timestamps(rest)?;
        let header = Header::from_str(rest).map_err(|e| Rejection::Malformed(e.to_string()))?;
        let missing = |field: &str| Rejection::Malformed(format!("missing {field}"));
        Ok(Authorization {
            id: header.id.clone().ok_or_else(|| missing("id"))?,
            ts: header.ts.ok_or_else(|| missing("ts"))?,
            nonce: header.nonce.clone().ok_or_else(|| missing("nonce"))?,
            header,
        })
    }

    /// Verifies the request against the device key, the connection binding and the
    /// clock. Checks in this order: required fields, skew, binding, payload hash,
    /// MAC; every comparison of secret-derived values is constant-time. Remembering
    /// the nonce is the caller's job (after this succeeds).
    pub fn verify(
        &self,
        request: &SignedRequest<'_>,
        key: &[u8; KEY_LEN],
        now: SystemTime,
        skew: Duration,
    ) -> Result<(), Rejection> {
        let (Some(mac), Some(hash)) = (&self.header.mac, &self.header.hash) else {
            return Err(Rejection::Malformed("missing mac or hash".into()));
        };
        let drift = match now.duration_since(self.ts) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        if drift > skew {
            return Err(Rejection::ClockSkew);
        }
        let expected_ext = binding_ext(request.exporter);
        let ext = self.header.ext.as_deref().unwrap_or("");
        if !bool::from(ext.as_bytes().ct_eq(expected_ext.as_bytes())) {
            return Err(Rejection::WrongConnection);
        }
        let body_hash =
            payload_hash(request.body).map_err(|e| Rejection::Malformed(e.to_string()))?;
        if !bool::from(hash.as_slice().ct_eq(&body_hash)) {
            return Err(Rejection::PayloadMismatch);
        }
        let creds =
            hawk_credentials(&self.id, key).map_err(|e| Rejection::Malformed(e.to_string()))?;
        // The body's hash was just computed and found equal to the header's.
        let expected = request
            .header_for(&creds, self.ts, &self.nonce, &body_hash)
            .map_err(|e| Rejection::Malformed(e.to_string()))?;
        // `hawk::mac::Mac` compares in constant time.
        if expected.mac.as_ref() != Some(mac) {
            return Err(Rejection::BadMac);
        }
        Ok(())
    }
}

/// The largest `ts` accepted (9999-12-31T23:59:59Z). The `hawk` crate adds `ts`
/// seconds to the Unix epoch while parsing, which panics when the sum overflows
/// `SystemTime` (from 2^63 seconds on), so out-of-range values are refused
/// before it sees them.
pub const MAX_TIMESTAMP: u64 = 253_402_300_799;

/// Refuses a header whose `ts` attribute is not a decimal number up to
/// [`MAX_TIMESTAMP`]. Tokenizes as the `hawk` crate does (attributes
/// `name="value"` separated by commas and white space, no escapes); whatever it
/// cannot tokenize is left for the crate to refuse.
fn check_timestamps(header: &str) -> Result<(), Rejection> {
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some((name, after)) = rest.split_once('=') else {
            return Ok(());
        };
        let Some(after) = after.trim_start().strip_prefix('"') else {
            return Ok(());
        };
        let Some((value, after)) = after.split_once('"') else {
            return Ok(());
        };
        if name.trim() == "ts" {
            match value.parse::<u64>() {
                Ok(ts) if ts <= MAX_TIMESTAMP => {}
                _ => return Err(Rejection::Malformed("ts out of range".into())),
            }
        }
        rest = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> (ServiceName, DeviceCredentials, Vec<u8>, [u8; 32]) {
        (
            "chat.example.net:7400".parse().unwrap(),
            DeviceCredentials {
                id: "0001a1b2-c3d4-4e5f-8a6b-7c8d9e0f1a2b.5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5.1"
                    .into(),
                key: [0x42; 32],
            },
            vec![0x08, 0x2a],
            [0x11; 32],
        )
    }

    #[test]
    fn timestamps_beyond_the_representable_are_refused_before_parsing() {
        // 2^63 and u64::MAX made the `hawk` crate panic while parsing.
        for ts in [
            "9223372036854775808",
            "18446744073709551615",
            "253402300800",
            "99999999999999999999999",
            "-1",
            "",
        ] {
            let value = format!(r#"Hawk id="x", ts="{ts}", nonce="n", hash="AA==", mac="AA==""#);
            assert_eq!(
                Authorization::parse(&value).unwrap_err(),
                Rejection::Malformed("ts out of range".into()),
                "{ts}"
            );
        }
        // A second ts attribute is checked too.
        let value = r#"Hawk ts="1", id="x", ts="9223372036854775808", nonce="n""#;
        assert!(Authorization::parse(value).is_err());
        // The largest accepted value parses.
        let value =
            format!(r#"Hawk id="x", ts="{MAX_TIMESTAMP}", nonce="n", hash="AA==", mac="AA==""#);
        let auth = Authorization::parse(&value).unwrap();
        assert_eq!(
            auth.ts,
            UNIX_EPOCH + Duration::from_secs(MAX_TIMESTAMP),
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn rpc_paths_are_canonical() {
        assert_eq!(path(Method::Send), "/rossby/v1/send");
        assert_eq!(
            path(Method::PublishKeyPackages),
            "/rossby/v1/publish_key_packages"
        );
        assert_eq!(ServiceName::default().port, 7400);
        assert!("".parse::<ServiceName>().is_err());
        assert!("host:notaport".parse::<ServiceName>().is_err());
        assert_eq!("h".parse::<ServiceName>().unwrap().port, 7400);
    }

    #[test]
    fn a_signed_request_verifies_and_every_tampering_is_caught() {
        let (service, creds, body, exporter) = example();
        let ts = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let req = SignedRequest {
            service: &service,
            method: Method::Send,
            body: &body,
            exporter: &exporter,
        };
        let value = req.sign(&creds, ts, "n0nce").unwrap();
        let auth = Authorization::parse(&value).unwrap();
        assert_eq!(auth.id, creds.id);
        let skew = Duration::from_secs(60);
        assert_eq!(
            auth.verify(&req, &creds.key, ts + Duration::from_secs(5), skew),
            Ok(())
        );
        // Clock skew.
        assert_eq!(
            auth.verify(&req, &creds.key, ts + Duration::from_secs(61), skew),
            Err(Rejection::ClockSkew)
        );
        // Another connection.
        let other = SignedRequest {
            exporter: &[0x12; 32],
            ..req
        };
        assert_eq!(
            auth.verify(&other, &creds.key, ts, skew),
            Err(Rejection::WrongConnection)
        );
        // Tampered body.
        let tampered = SignedRequest {
            body: &[0x08, 0x2b],
            ..req
        };
        assert_eq!(
            auth.verify(&tampered, &creds.key, ts, skew),
            Err(Rejection::PayloadMismatch)
        );
        // Another RPC, another service name, another key.
        let ack = SignedRequest {
            method: Method::Ack,
            ..req
        };
        assert_eq!(
            auth.verify(&ack, &creds.key, ts, skew),
            Err(Rejection::BadMac)
        );
        let other_service: ServiceName = "evil.example.net:7400".parse().unwrap();
        let moved = SignedRequest {
            service: &other_service,
            ..req
        };
        assert_eq!(
            auth.verify(&moved, &creds.key, ts, skew),
            Err(Rejection::BadMac)
        );
        assert_eq!(
            auth.verify(&req, &[0x43; 32], ts, skew),
            Err(Rejection::BadMac)
        );
    }

    #[test]
    fn malformed_headers_are_rejected() {
        assert!(matches!(
            Authorization::parse(""),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            Authorization::parse("Basic abc"),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            Authorization::parse("Hawk id=\"x\""),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            Authorization::parse("Hawk garbage"),
            Err(Rejection::Malformed(_))
        ));
    }
}
