//! The gateway's certificate and its QUIC server configuration.
//!
//! In production the certificate chain and key come from PEM files. Without them,
//! the first start generates a self-signed certificate (names `localhost`,
//! `127.0.0.1`, `::1` and every `--tls-name`) at `<data-dir>/cert.pem` with its key
//! at `<data-dir>/key.pem` (mode 0600), and later starts reuse them, so clients can
//! pin the certificate once. The SHA-256 fingerprint of the certificate is logged
//! either way.
//!
//! The QUIC side speaks TLS 1.3 only (rustls with ring), ALPN `rossby/1`, no 0-RTT
//! (early data could be replayed), and uses small stream limits and windows so a
//! gateway can hold many idle connections.

use crate::error::{Error, Result};
use crate::server::config::QuicConfig;
use quinn::{IdleTimeout, VarInt};
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Names every generated certificate carries: loopback, and the host of the
/// default service name (`rossby`), so a client that dials the default service
/// name verifies the certificate by name as well as by pinning it.
pub const DEFAULT_NAMES: [&str; 4] = ["localhost", "127.0.0.1", "::1", "rossby"];

/// A loaded certificate chain and key.
pub struct Identity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Whether this start generated them.
    pub generated: bool,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The leaf certificate in DER.
    pub fn leaf(&self) -> &[u8] {
        self.chain.first().map_or(&[][..], |c| c.as_ref())
    }

    /// SHA-256 fingerprint of the leaf certificate (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(self.leaf())
    }
}

/// The SHA-256 fingerprint of a DER certificate as upper-case hex pairs separated
/// by colons, the form `openssl x509 -noout -fingerprint -sha256` prints.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, byte) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{byte:02X}"));
    }
    out
}

/// Checks that `name` can be put in a certificate: an IP address or a DNS name.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    DnsName::try_from(name)
        .map(|_| ())
        .map_err(|_| "not a DNS name or IP address".to_string())
}

/// The gateway's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate chain PEM file.
    pub cert: PathBuf,
    /// Private key PEM file.
    pub key: PathBuf,
    /// Generate a self-signed certificate and key at these paths if the
    /// certificate file does not exist yet (off when `--cert`/`--key` were given:
    /// a missing production certificate is an error, not a reason to improvise).
    pub generate: bool,
    /// Names of a generated certificate besides `localhost`, `127.0.0.1` and `::1`.
    pub extra_names: Vec<String>,
}

impl TlsConfig {
    /// A certificate and key generated in `data_dir`.
    pub fn generated_in(data_dir: &Path) -> TlsConfig {
        TlsConfig {
            cert: data_dir.join("cert.pem"),
            key: data_dir.join("key.pem"),
            generate: true,
            extra_names: Vec::new(),
        }
    }
}

crate::config::options! {
    /// The certificate clients see.
    #[derive(clap::Args, serde::Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "TLS and secrets")]
    pub struct TlsOptions {
        /// Certificate chain PEM file (with `--key`) [default: `cert.pem` in --data-dir, generated].
        #[arg(long, env = "ROSSBY_CERT", value_name = "FILE")]
        pub cert: Option<PathBuf>,
        /// Private key PEM file (with `--cert`) [default: `key.pem` in --data-dir, generated].
        #[arg(long, env = "ROSSBY_KEY", value_name = "FILE")]
        pub key: Option<PathBuf>,
        /// Extra name (DNS name or IP) of the generated certificate; repeatable, or
        /// comma-separated in the variable.
        #[arg(
            long,
            env = "ROSSBY_TLS_NAME",
            value_name = "NAME",
            value_delimiter = ','
        )]
        pub tls_name: Option<Vec<String>>,
    }
}

impl TlsOptions {
    /// The certificate to load, checked: given files, or one generated in
    /// `data_dir`.
    pub fn into_config(self, data_dir: &Path) -> Result<TlsConfig> {
        let mut tls = match (self.cert, self.key) {
            (Some(cert), Some(key)) => TlsConfig {
                cert,
                key,
                generate: false,
                extra_names: Vec::new(),
            },
            (None, None) => TlsConfig::generated_in(data_dir),
            (Some(_), None) => return Err(Error::Config("--cert needs --key".into())),
            (None, Some(_)) => return Err(Error::Config("--key needs --cert".into())),
        };
        tls.extra_names = self
            .tls_name
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for name in &tls.extra_names {
            check_name(name).map_err(|e| Error::Config(format!("--tls-name {name:?}: {e}")))?;
        }
        Ok(tls)
    }
}

/// Loads the configured certificate and key, generating a self-signed pair first
/// when allowed and the certificate file does not exist.
pub fn load_or_generate(config: &TlsConfig) -> Result<Identity> {
    let mut generated = false;
    if config.generate && !config.cert.exists() {
        generate(config)?;
        generated = true;
    }
    let chain = read_certs(&config.cert)?;
    let key = read_key(&config.key)?;
    Ok(Identity {
        chain,
        key,
        generated,
    })
}

/// Generates a self-signed certificate and writes it. The key is written first and
/// the certificate last, each atomically, because the certificate's existence is
/// what later starts take to mean "already generated".
fn generate(config: &TlsConfig) -> Result<()> {
    let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|s| s.to_string()).collect();
    for name in &config.extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut params = rcgen::CertificateParams::new(names)
        .map_err(|e| Error::Tls(format!("certificate names: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Rossby gateway (self-signed)");
    let key_pair =
        rcgen::KeyPair::generate().map_err(|e| Error::Tls(format!("key generation: {e}")))?;
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| Error::Tls(format!("certificate generation: {e}")))?;
    write_atomic(&config.key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&config.cert, cert.pem().as_bytes(), 0o644)?;
    tracing::info!(
        cert = %config.cert.display(),
        key = %config.key.display(),
        "generated a self-signed certificate"
    );
    Ok(())
}

/// Writes `contents` to `path` through a temporary file and a rename, so readers
/// never see a half-written file.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(&tmp)
        .map_err(|e| Error::io("cannot create", &tmp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("cannot create", path, e))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|e| Error::io("cannot read certificate", path, e))?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no CERTIFICATE in the PEM file",
            path.display()
        )));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).map_err(|e| Error::io("cannot read key", path, e))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?
        .ok_or_else(|| {
            Error::Tls(format!(
                "{}: no private key in the PEM file",
                path.display()
            ))
        })
}

/// The rustls provider of every gateway connection.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the QUIC server configuration: TLS 1.3, ALPN `rossby/1`, no client
/// certificates, and the transport limits of `quic`.
pub fn server_config(identity: &Identity, quic: &QuicConfig) -> Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| Error::Tls(format!("certificate and key do not fit together: {e}")))?;
    tls.alpn_protocols = vec![rossby_protocol::ALPN.to_vec()];
    // 0-RTT stays off (rustls's default): early data can be replayed by anyone who
    // captured it, and requests are only bound to a connection after the handshake.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(quic)?));
    Ok(server)
}

/// Transport parameters tuned for many mostly idle connections: quinn's memory per
/// connection grows with the concurrent streams it allows, and the peer may only
/// open request (bidirectional) streams.
pub fn transport(quic: &QuicConfig) -> Result<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(quic.max_streams_per_connection))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(quic.stream_receive_window))
        .receive_window(VarInt::from_u32(quic.receive_window))
        .send_window(quic.send_window)
        // Rossby does not use datagrams; refusing them saves a buffer per connection.
        .datagram_receive_buffer_size(None)
        .max_idle_timeout(Some(IdleTimeout::try_from(quic.idle_timeout).map_err(
            |_| {
                Error::Config(format!(
                    "idle timeout {:?} is too long for QUIC",
                    quic.idle_timeout
                ))
            },
        )?));
    Ok(t)
}

/// A client configuration that trusts exactly `ca` (a pinned self-signed
/// certificate or a private CA) and speaks ALPN `rossby/1`: what tests, the load
/// generator and tools in this crate use to reach a gateway.
pub fn client_config(ca: &[CertificateDer<'static>]) -> Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| Error::Tls(format!("untrusted certificate: {e}")))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![rossby_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_in(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            generate: true,
            extra_names: vec!["chat.example.net".into(), "10.1.2.3".into()],
        }
    }

    #[test]
    fn a_self_signed_certificate_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let config = tls_in(dir.path());
        let first = load_or_generate(&config).unwrap();
        assert!(first.generated);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&config.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = load_or_generate(&config).unwrap();
        assert!(!second.generated);
        assert_eq!(first.leaf(), second.leaf());
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(first.fingerprint().len(), 32 * 3 - 1);
        server_config(&second, &QuicConfig::default()).unwrap();
        // No stray temporary files.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["cert.pem", "key.pem"]);
    }

    #[test]
    fn the_generated_certificate_is_valid_for_every_name() {
        use rustls::client::danger::ServerCertVerifier;
        let dir = tempfile::tempdir().unwrap();
        let identity = load_or_generate(&tls_in(dir.path())).unwrap();
        let client = client_config(&identity.chain);
        assert!(client.is_ok());
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(identity.chain[0].clone()).unwrap();
            Arc::new(r)
        };
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .unwrap();
        for name in [
            "localhost",
            "127.0.0.1",
            "::1",
            "rossby",
            "chat.example.net",
            "10.1.2.3",
        ] {
            let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(
                    &identity.chain[0],
                    &[],
                    &server_name,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &identity.chain[0],
                    &[],
                    &other,
                    &[],
                    rustls::pki_types::UnixTime::now()
                )
                .is_err()
        );
    }

    #[test]
    fn configured_files_must_exist_and_match() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = tls_in(dir.path());
        config.generate = false;
        let message = load_or_generate(&config).unwrap_err().to_string();
        assert!(message.contains("cannot read certificate"), "{message}");

        // A certificate with another certificate's key is refused.
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        load_or_generate(&tls_in(a.path())).unwrap();
        load_or_generate(&tls_in(b.path())).unwrap();
        let mixed = TlsConfig {
            cert: a.path().join("cert.pem"),
            key: b.path().join("key.pem"),
            generate: false,
            extra_names: Vec::new(),
        };
        let identity = load_or_generate(&mixed).unwrap();
        let message = server_config(&identity, &QuicConfig::default())
            .unwrap_err()
            .to_string();
        assert!(message.contains("do not fit"), "{message}");

        std::fs::write(dir.path().join("cert.pem"), "not pem").unwrap();
        std::fs::write(dir.path().join("key.pem"), "not pem").unwrap();
        let message = load_or_generate(&config).unwrap_err().to_string();
        assert!(message.contains("no CERTIFICATE"), "{message}");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("chat.example.net").is_ok());
        assert!(check_name("::1").is_ok());
        assert!(check_name("bad name").is_err());
        assert!(check_name("").is_err());
    }
}
