//! The HTTPS client push providers share: rustls with ring and the Mozilla root
//! store (webpki-roots), no proxies from the environment, no redirects (a push
//! service answers, it does not send us elsewhere), bounded time per request.

use std::time::Duration;

/// Which HTTP versions a client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    /// HTTP/2 only (APNs): `h2` by ALPN over TLS, prior knowledge over plain
    /// HTTP (local test servers).
    Http2Only,
    /// HTTP/2 or HTTP/1.1, as the server prefers.
    Any,
}

/// A client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the push HTTP client failed: {0}")]
pub struct BuildError(String);

/// A client whose every request (connect, TLS, request and answer) must finish
/// within `timeout`. `resolver` replaces the system resolver (Web Push uses
/// one that refuses addresses it must not reach).
pub fn client(
    versions: Versions,
    timeout: Duration,
    resolver: Option<std::sync::Arc<dyn reqwest::dns::Resolve>>,
) -> Result<reqwest::Client, BuildError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = match versions {
        Versions::Http2Only => vec![b"h2".to_vec()],
        Versions::Any => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60));
    if versions == Versions::Http2Only {
        builder = builder.http2_prior_knowledge();
    }
    if let Some(resolver) = resolver {
        builder = builder.dns_resolver(resolver);
    }
    builder.build().map_err(|e| BuildError(e.to_string()))
}

/// The `Retry-After` of an answer, in seconds (the HTTP-date form is not used
/// by push services and is ignored), capped at `cap`.
pub fn retry_after(headers: &reqwest::header::HeaderMap, cap: Duration) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_caps_them() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers, Duration::from_secs(60)), None);
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            retry_after(&headers, Duration::from_secs(60)),
            Some(Duration::from_secs(7))
        );
        headers.insert(reqwest::header::RETRY_AFTER, "7000".parse().unwrap());
        assert_eq!(
            retry_after(&headers, Duration::from_secs(60)),
            Some(Duration::from_secs(60))
        );
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers, Duration::from_secs(60)), None);
    }

    #[test]
    fn clients_build() {
        client(Versions::Http2Only, Duration::from_secs(1), None).unwrap();
        client(Versions::Any, Duration::from_secs(1), None).unwrap();
    }
}
