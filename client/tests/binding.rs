//! The connection binding computed from a key log's exporter secret
//! (`rossby_protocol::binding`) equals what the QUIC stack exports, on a real
//! QUIC connection: the note in docs/protocol.md §1 for stacks that do not
//! export keying material holds.

use rossby_protocol::binding::{SuiteHash, binding_from_exporter_secret};
use rossby_protocol::hawk::EXPORTER_LABEL;
use std::sync::{Arc, Mutex};

/// Collects the exporter secrets rustls logs (NSS key log `EXPORTER_SECRET`).
#[derive(Debug, Default)]
struct ExporterSecrets(Mutex<Vec<Vec<u8>>>);

impl rustls::KeyLog for ExporterSecrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == "EXPORTER_SECRET"
            && let Ok(mut secrets) = self.0.lock()
        {
            secrets.push(secret.to_vec());
        }
    }

    fn will_log(&self, label: &str) -> bool {
        label == "EXPORTER_SECRET"
    }
}

#[tokio::test]
async fn a_key_logged_exporter_secret_gives_the_exported_binding() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone().into()], key.into())
        .unwrap();
    tls.alpn_protocols = vec![rossby_protocol::ALPN.to_vec()];
    let secrets = Arc::new(ExporterSecrets::default());
    tls.key_log = secrets.clone();
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap(),
        )),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();

    for suite in [
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
    ] {
        // The client offers one suite, so each hash is exercised.
        let mut client_provider = rustls::crypto::ring::default_provider();
        client_provider.cipher_suites.retain(|s| s.suite() == suite);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der.clone().into()).unwrap();
        let mut client_tls = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_tls.alpn_protocols = vec![rossby_protocol::ALPN.to_vec()];
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        // QUIC protects its Initial packets with AES-128-GCM-SHA256 whatever
        // suite the handshake then agrees on.
        let initial = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
            .tls13()
            .and_then(|s| s.quic_suite())
            .unwrap();
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::with_initial(Arc::new(client_tls), initial)
                .unwrap(),
        )));
        let connecting = client.connect(addr, "localhost").unwrap();
        let incoming = server.accept().await.unwrap();
        let (server_conn, client_conn) = tokio::join!(incoming, connecting);
        let (server_conn, client_conn) = (server_conn.unwrap(), client_conn.unwrap());
        let mut exported = [0u8; 32];
        client_conn
            .export_keying_material(&mut exported, EXPORTER_LABEL, b"")
            .unwrap();
        let secret = secrets.0.lock().unwrap().pop().expect("an exporter secret");
        let hash = match suite {
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => SuiteHash::Sha384,
            _ => SuiteHash::Sha256,
        };
        assert_eq!(
            binding_from_exporter_secret(hash, &secret).unwrap(),
            exported,
            "{suite:?}"
        );
        client_conn.close(0u32.into(), b"");
        server_conn.close(0u32.into(), b"");
        client.wait_idle().await;
    }
}
