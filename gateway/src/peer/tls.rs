//! Mutual TLS of the gateway-to-gateway endpoint.
//!
//! Every gateway of a deployment holds a certificate signed by the deployment's
//! own CA (a PEM file, the same on every gateway) and the key of that
//! certificate. Both directions are authenticated: the accepting gateway requires
//! a client certificate chaining to the CA (rustls' `WebPkiClientVerifier`), and
//! the connecting gateway checks that the server's certificate chains to the CA and
//! names the host it dialled. Nothing else (clients, the public internet) can
//! speak on this endpoint. TLS 1.3 only, ALPN [`PEER_ALPN`], no 0-RTT.
//!
//! A gateway certificate therefore needs the host of its advertised peer address
//! among its names, and is used for both server and client authentication.
//! [`DevCa`] generates such a CA and certificates in memory, for tests and the
//! local multi-region mode; production CAs are made with the deployment's usual
//! tooling (see docs/configuration.md).

use crate::error::{Error, Result};
use quinn::{IdleTimeout, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// ALPN protocol of the gateway-to-gateway endpoint.
pub const PEER_ALPN: &[u8] = b"rossby-peer/1";

/// Idle timeout of a peer connection; the connecting side keeps it alive with
/// pings at a third of it while it is in use.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most notification streams a peer may have open on one connection at once.
pub const MAX_PEER_STREAMS: u32 = 256;

/// Names every certificate issued by [`DevCa::issue`] carries besides the one
/// asked for, so gateways on one machine can reach each other over loopback.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Where the peer endpoint's CA, certificate and key come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerTls {
    /// PEM files: the deployment CA, this gateway's certificate chain, its key.
    Files {
        /// The deployment CA certificate(s).
        ca: PathBuf,
        /// This gateway's certificate chain, leaf first.
        cert: PathBuf,
        /// The private key of the leaf.
        key: PathBuf,
    },
    /// PEM texts held in memory (tests and the local multi-region mode).
    Pem(PeerCredentials),
}

/// A CA certificate, a gateway certificate and its key, as PEM texts.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The deployment CA certificate.
    pub ca_pem: String,
    /// The gateway's certificate (chain), leaf first.
    pub cert_pem: String,
    /// The gateway's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for PeerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCredentials")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The loaded material of the peer endpoint.
pub struct PeerIdentity {
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(&format!("cannot read peer {what}"), path, e))
}

fn parse_certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{origin}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{origin}: no CERTIFICATE in the PEM")));
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| Error::Tls(format!("{origin}: {e}")))?
        .ok_or_else(|| Error::Tls(format!("{origin}: no private key in the PEM")))
}

impl PeerIdentity {
    /// Loads the CA, certificate chain and key. Fails with a message naming the
    /// file when one is missing or holds no usable PEM, or when the CA is not a
    /// usable trust anchor.
    pub fn load(tls: &PeerTls) -> Result<PeerIdentity> {
        let (ca, chain, key) = match tls {
            PeerTls::Files { ca, cert, key } => {
                let ca_origin = format!("peer CA {}", ca.display());
                let cert_origin = format!("peer certificate {}", cert.display());
                let key_origin = format!("peer key {}", key.display());
                (
                    parse_certs(&read(ca, "CA")?, &ca_origin)?,
                    parse_certs(&read(cert, "certificate")?, &cert_origin)?,
                    parse_key(&read(key, "key")?, &key_origin)?,
                )
            }
            PeerTls::Pem(c) => (
                parse_certs(c.ca_pem.as_bytes(), "peer CA")?,
                parse_certs(c.cert_pem.as_bytes(), "peer certificate")?,
                parse_key(c.key_pem.as_bytes(), "peer key")?,
            ),
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in ca {
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("peer CA is not a usable trust anchor: {e}")))?;
        }
        Ok(PeerIdentity {
            roots: Arc::new(roots),
            chain,
            key,
        })
    }

    /// The server side: TLS 1.3, ALPN [`PEER_ALPN`], a client certificate chaining
    /// to the CA required, and transport limits for a handful of peers that only
    /// open short unidirectional streams.
    pub fn server_config(&self) -> Result<quinn::ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .map_err(|e| Error::Tls(format!("peer client verifier: {e}")))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| {
                Error::Tls(format!("peer certificate and key do not fit together: {e}"))
            })?;
        tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
        tls.max_early_data_size = 0;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport(MAX_PEER_STREAMS, MAX_PEER_STREAMS)?));
        Ok(server)
    }

    /// The client side: presents this gateway's certificate and trusts exactly the
    /// deployment CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| {
                Error::Tls(format!("peer certificate and key do not fit together: {e}"))
            })?;
        tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut t = transport(0, 0)?;
        t.keep_alive_interval(Some(PEER_IDLE_TIMEOUT / 3));
        client.transport_config(Arc::new(t));
        Ok(client)
    }
}

/// Transport parameters: the peer may open `uni` unidirectional streams
/// (notifications) and `bidi` bidirectional ones (forwarded writes).
fn transport(uni: u32, bidi: u32) -> Result<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(uni))
        .datagram_receive_buffer_size(None)
        .max_idle_timeout(Some(
            IdleTimeout::try_from(PEER_IDLE_TIMEOUT)
                .map_err(|_| Error::Config("peer idle timeout too long".into()))?,
        ));
    Ok(t)
}

/// An ephemeral deployment CA held in memory, for tests and the local
/// multi-region mode: [`DevCa::issue`] signs gateway certificates with it.
pub struct DevCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa")
    }
}

impl DevCa {
    /// Generates a fresh CA key and self-signed CA certificate.
    pub fn generate() -> Result<DevCa> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| Error::Tls(format!("CA parameters: {e}")))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Rossby development peer CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate()
            .map_err(|e| Error::Tls(format!("CA key generation: {e}")))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::Tls(format!("CA certificate generation: {e}")))?;
        Ok(DevCa { cert, key })
    }

    /// The CA certificate in PEM (what every gateway trusts).
    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// Issues a gateway certificate for `name` (a DNS name or IP address: the host
    /// of the gateway's advertised peer address), also valid for `localhost`,
    /// `127.0.0.1` and `::1`, usable for server and client authentication.
    pub fn issue(&self, name: &str) -> Result<PeerCredentials> {
        crate::tls::check_name(name)
            .map_err(|e| Error::Tls(format!("peer certificate name {name:?}: {e}")))?;
        let mut names = vec![name.to_string()];
        for n in LOOPBACK_NAMES {
            if n != name {
                names.push(n.to_string());
            }
        }
        let mut params = rcgen::CertificateParams::new(names)
            .map_err(|e| Error::Tls(format!("peer certificate names: {e}")))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("Rossby gateway {name}"));
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate()
            .map_err(|e| Error::Tls(format!("peer key generation: {e}")))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| Error::Tls(format!("peer certificate generation: {e}")))?;
        Ok(PeerCredentials {
            ca_pem: self.ca_pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    fn verifier(ca_pem: &str) -> Arc<rustls::client::WebPkiServerVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        for c in parse_certs(ca_pem.as_bytes(), "ca").unwrap() {
            roots.add(c).unwrap();
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap()
    }

    #[test]
    fn issued_certificates_chain_to_their_ca_only() {
        let ca = DevCa::generate().unwrap();
        let creds = ca.issue("gw1.example.net").unwrap();
        let leaf = parse_certs(creds.cert_pem.as_bytes(), "leaf").unwrap();
        let ours = verifier(&ca.ca_pem());
        for name in ["gw1.example.net", "localhost", "127.0.0.1", "::1"] {
            ours.verify_server_cert(
                &leaf[0],
                &[],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(
            ours.verify_server_cert(
                &leaf[0],
                &[],
                &ServerName::try_from("gw2.example.net").unwrap(),
                &[],
                UnixTime::now()
            )
            .is_err()
        );
        let other = DevCa::generate().unwrap();
        assert!(
            verifier(&other.ca_pem())
                .verify_server_cert(
                    &leaf[0],
                    &[],
                    &ServerName::try_from("localhost").unwrap(),
                    &[],
                    UnixTime::now()
                )
                .is_err()
        );
        // Both configurations build from the issued material.
        let identity = PeerIdentity::load(&PeerTls::Pem(creds)).unwrap();
        identity.server_config().unwrap();
        identity.client_config().unwrap();
    }

    #[test]
    fn bad_material_is_reported_with_its_origin() {
        let ca = DevCa::generate().unwrap();
        let creds = ca.issue("127.0.0.1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = PeerTls::Files {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        let message = PeerIdentity::load(&files).unwrap_err().to_string();
        assert!(message.contains("cannot read peer CA"), "{message}");
        std::fs::write(dir.path().join("ca.pem"), &creds.ca_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), "junk").unwrap();
        std::fs::write(dir.path().join("key.pem"), &creds.key_pem).unwrap();
        let message = PeerIdentity::load(&files).unwrap_err().to_string();
        assert!(message.contains("peer certificate"), "{message}");
        assert!(message.contains("no CERTIFICATE"), "{message}");
        std::fs::write(dir.path().join("cert.pem"), &creds.cert_pem).unwrap();
        PeerIdentity::load(&files).unwrap().client_config().unwrap();

        // A certificate with another certificate's key is refused.
        let mixed = PeerCredentials {
            key_pem: ca.issue("localhost").unwrap().key_pem,
            ..creds
        };
        let message = PeerIdentity::load(&PeerTls::Pem(mixed))
            .unwrap()
            .server_config()
            .unwrap_err()
            .to_string();
        assert!(message.contains("do not fit"), "{message}");
        assert!(ca.issue("bad name").is_err());
        assert!(!format!("{:?}", ca.issue("localhost").unwrap()).contains("PRIVATE"));
    }
}
