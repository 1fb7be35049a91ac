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

/// A service's error word for a log line, or a placeholder when it is not a
/// short identifier (the text is the service's, not ours).
pub(crate) fn loggable(reason: Option<&str>) -> &str {
    match reason {
        Some(r)
            if !r.is_empty()
                && r.len() <= 64
                && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            r
        }
        Some(_) => "<unrecognised>",
        None => "<none>",
    }
}

/// The outcome of a request that got no answer. The error is logged without
/// its URL, which can hold a device token.
pub(crate) fn transport_failure(
    kind: super::ProviderKind,
    e: reqwest::Error,
) -> super::provider::Outcome {
    let reason = if e.is_timeout() { "timeout" } else { "connect" };
    tracing::debug!(provider = kind.name(), error = %e.without_url(), reason, "push request got no answer");
    super::provider::Outcome::Retry {
        reason,
        after: None,
    }
}

/// Up to `limit` bytes of the answer's body; the rest is not read.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a push service URL given as `option`: `https://`, or `http://` to a
/// loopback host (how tests reach a local stand-in), without credentials,
/// query or fragment, and (unless `with_path`) without a path. Returns it
/// without a trailing `/`.
pub(crate) fn service_url(
    value: &str,
    option: &str,
    with_path: bool,
) -> crate::error::Result<String> {
    let bad = |why: &str| crate::error::Error::Config(format!("{option}: {value:?} {why}"));
    let url = reqwest::Url::parse(value).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    let host = url.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err(bad("names no host"));
    }
    match url.scheme() {
        "https" => {}
        "http" => {
            let ip = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>();
            let loopback =
                host.eq_ignore_ascii_case("localhost") || ip.is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(bad(
                    "uses plain http://, which is only allowed to a loopback host \
                     (127.0.0.0/8, ::1, localhost) for local testing; use https://",
                ));
            }
        }
        _ => return Err(bad("is not an https:// URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    if !with_path && url.path() != "/" {
        return Err(bad("must name only the scheme, host and port"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Asserts that `send`, to a service that holds its answer for 30 s, gives up
/// at the client's deadline (set to 500 ms by the caller) as a retryable
/// timeout.
#[cfg(test)]
pub(crate) async fn assert_times_out(
    send: impl std::future::Future<Output = super::provider::Outcome>,
) {
    let started = std::time::Instant::now();
    assert_eq!(
        send.await,
        super::provider::Outcome::Retry {
            reason: "timeout",
            after: None
        }
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(took >= Duration::from_millis(400), "took {took:?}");
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
