//! One QUIC connection to a gateway, with request signing, reconnects and retries.
//!
//! Each request travels on its own bidirectional stream: the client writes one
//! `Request` frame and finishes its side, the gateway answers with one `Response`
//! frame. Authenticated requests carry a Hawk `Authorization` value bound to this
//! connection by a TLS exporter value, so a re-established connection re-signs.
//!
//! Retries: a broken connection is re-established and the request repeated;
//! `UNAVAILABLE`, `UNDETERMINED`, `RATE_LIMITED` (after `retry_after_ms`, if that is
//! short) and `DRAINING` (on a new connection) are retried with exponential backoff
//! and jitter. Every repetition sends the same body, so a Send keeps its message id
//! and the gateway's deduplication guarantees it is enqueued once. On
//! `CLOCK_SKEW` the local clock offset is corrected from the gateway's
//! `server_time_ms` and the request is retried once.
//!
//! A reply saying `credentials_outdated` (the request was signed with credentials
//! of a server secret version the gateway no longer issues) is remembered with the
//! credential id it concerns ([`Connection::outdated_credentials`]); the SDK then
//! fetches new credentials.

use crate::error::{Error, Result};
use rossby_protocol::framing;
use rossby_protocol::hawk::{
    DeviceCredentials, EXPORTER_LABEL, EXPORTER_LEN, ServiceName, SignedRequest,
};
use rossby_protocol::pb::{self, Method};
use rossby_protocol::status::status_of;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// How hard to try before giving up on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts of one request (including the first).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled after each.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Longest `retry_after_ms` of a `RATE_LIMITED` answer worth waiting for;
    /// longer ones are reported to the caller.
    pub max_rate_limit_wait: Duration,
    /// Time allowed for a QUIC handshake.
    pub connect_timeout: Duration,
    /// Failed handshakes (in one request) after which the gateway is reported
    /// unreachable.
    pub max_connect_attempts: u32,
    /// Time allowed for one request and its response (on top of any wait the
    /// request asks the gateway for).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_rate_limit_wait: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_connect_attempts: 3,
            request_timeout: Duration::from_secs(20),
        }
    }
}

/// Where and how to reach a gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// UDP address of the gateway (or its load balancer).
    pub addr: SocketAddr,
    /// Name the gateway's certificate must be valid for (ignored when the pinned
    /// certificate is presented exactly).
    pub server_name: String,
    /// A pinned certificate (DER): the gateway's self-signed certificate or a CA.
    /// `None`: the public web PKI roots.
    pub ca_cert_der: Option<Vec<u8>>,
    /// The deployment's service name requests are signed for.
    pub service: ServiceName,
    /// Retry behaviour.
    pub retry: RetryPolicy,
}

#[derive(Clone)]
struct Live {
    conn: quinn::Connection,
    exporter: [u8; EXPORTER_LEN],
}

/// A lazily established, automatically re-established connection to a gateway.
pub struct Connection {
    config: GatewayConfig,
    endpoint: quinn::Endpoint,
    live: Mutex<Option<Live>>,
    clock_offset_ms: AtomicI64,
    home: std::sync::Mutex<Option<HomeHint>>,
    outdated: std::sync::Mutex<Option<String>>,
}

/// What the last authenticated reply said about where the caller's box lives, when
/// that is another region than the gateway's (docs/geo.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeHint {
    /// The box's home region code.
    pub region: u32,
    /// QUIC addresses of that region's gateways, when the gateway knows them.
    pub gateways: Vec<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.config.addr)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed.
enum Attempt {
    /// The connection or stream broke: reconnect and retry.
    Transport(String),
    /// Anything else: give up.
    Fatal(Error),
}

impl Connection {
    /// Creates the client endpoint (no network traffic until the first request).
    /// Must be called inside a tokio runtime.
    pub fn new(config: GatewayConfig) -> Result<Self> {
        let tls = tls_config(config.ca_cert_der.as_deref())?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| Error::Config(format!("TLS configuration: {e}")))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(5)));
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30))
                .map_err(|e| Error::Config(e.to_string()))?,
        ));
        client_config.transport_config(Arc::new(transport));
        let bind: SocketAddr = if config.addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| Error::Config(format!("cannot open a UDP socket: {e}")))?;
        endpoint.set_default_client_config(client_config);
        Ok(Connection {
            config,
            endpoint,
            live: Mutex::new(None),
            clock_offset_ms: AtomicI64::new(0),
            home: std::sync::Mutex::new(None),
            outdated: std::sync::Mutex::new(None),
        })
    }

    /// The gateway configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The current correction applied to the local clock when signing, in ms.
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::Relaxed)
    }

    /// The local clock corrected by the offset learned from the gateway.
    pub fn now(&self) -> SystemTime {
        let offset = self.clock_offset_ms();
        let now = SystemTime::now();
        if offset >= 0 {
            now + Duration::from_millis(offset.unsigned_abs())
        } else {
            now.checked_sub(Duration::from_millis(offset.unsigned_abs()))
                .unwrap_or(UNIX_EPOCH)
        }
    }

    /// Abandons the current connection at once, without waiting for it to
    /// drain (for example after the network changed); requests in flight on it
    /// fail over to a new connection, which the next request opens.
    pub async fn reset(&self) {
        if let Some(live) = self.live.lock().await.take() {
            live.conn.close(0u32.into(), b"reset");
        }
    }

    /// Closes the connection (pending pushes are lost).
    pub async fn close(&self) {
        if let Some(live) = self.live.lock().await.take() {
            live.conn.close(0u32.into(), b"bye");
        }
        self.endpoint.wait_idle().await;
    }

    fn unreachable(&self, reason: impl Into<String>) -> Error {
        Error::Unreachable {
            addr: self.config.addr.to_string(),
            reason: reason.into(),
        }
    }

    async fn live(&self) -> Result<Live, Attempt> {
        let mut guard = self.live.lock().await;
        if let Some(live) = guard.as_ref()
            && live.conn.close_reason().is_none()
        {
            return Ok(live.clone());
        }
        *guard = None;
        let connecting = self
            .endpoint
            .connect(self.config.addr, &self.config.server_name)
            .map_err(|e| Attempt::Fatal(Error::Config(format!("cannot connect: {e}"))))?;
        let conn = match tokio::time::timeout(self.config.retry.connect_timeout, connecting).await {
            Err(_) => return Err(Attempt::Transport("handshake timed out".into())),
            Ok(Err(e)) => {
                return Err(match classify_connection_error(e) {
                    Attempt::Fatal(Error::Config(reason)) if reason.starts_with("TLS") => {
                        let hint = if self.config.ca_cert_der.is_some() {
                            "is the pinned certificate (--ca-cert) this gateway's?"
                        } else {
                            "pin the gateway's certificate with --ca-cert (e.g. <data-dir>/cert.pem)"
                        };
                        Attempt::Fatal(Error::Config(format!("{reason}; {hint}")))
                    }
                    other => other,
                });
            }
            Ok(Ok(c)) => c,
        };
        let mut exporter = [0u8; EXPORTER_LEN];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .map_err(|_| Attempt::Fatal(Error::Config("TLS exporter unavailable".into())))?;
        let live = Live { conn, exporter };
        *guard = Some(live.clone());
        Ok(live)
    }

    async fn drop_live(&self, conn: &quinn::Connection) {
        let mut guard = self.live.lock().await;
        if guard
            .as_ref()
            .is_some_and(|l| l.conn.stable_id() == conn.stable_id())
        {
            *guard = None;
        }
    }

    /// Sends one request and returns the gateway's response, retrying as the
    /// module documentation describes. Non-retryable statuses are returned as
    /// responses for the caller to interpret; retryable ones become
    /// [`Error::Status`] once attempts run out. `extra_wait` is how long the
    /// gateway may legitimately hold the request (a Fetch's wait).
    pub async fn call(
        &self,
        method: Method,
        body: &[u8],
        credentials: Option<&DeviceCredentials>,
        extra_wait: Duration,
    ) -> Result<pb::Response> {
        let policy = self.config.retry;
        let mut backoff = policy.initial_backoff;
        let mut skew_retried = false;
        let mut last_failure = String::from("no attempt made");
        let mut attempt = 0u32;
        let mut connect_failures = 0u32;
        loop {
            attempt += 1;
            if attempt > policy.max_attempts.max(1) {
                return Err(self.unreachable(last_failure));
            }
            if attempt > 1 {
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(policy.max_backoff);
            }
            let live = match self.live().await {
                Ok(l) => l,
                Err(Attempt::Transport(reason)) => {
                    last_failure = reason;
                    connect_failures += 1;
                    if connect_failures >= policy.max_connect_attempts.max(1) {
                        return Err(self.unreachable(last_failure));
                    }
                    continue;
                }
                Err(Attempt::Fatal(e)) => return Err(e),
            };
            let authorization = match credentials {
                Some(creds) => {
                    let nonce = hex::encode(rand::random::<[u8; 12]>());
                    SignedRequest {
                        service: &self.config.service,
                        method,
                        body,
                        exporter: &live.exporter,
                    }
                    .sign(creds, self.now(), &nonce)?
                }
                None => String::new(),
            };
            let request = pb::Request {
                version: rossby_protocol::PROTOCOL_VERSION,
                method: method as i32,
                body: body.to_vec(),
                authorization,
            };
            let timeout = policy.request_timeout + extra_wait;
            let response = match exchange(&live.conn, &framing::encode(&request), timeout).await {
                Ok(r) => r,
                Err(Attempt::Transport(reason)) => {
                    self.drop_live(&live.conn).await;
                    last_failure = reason;
                    continue;
                }
                Err(Attempt::Fatal(e)) => return Err(e),
            };
            if let Some(creds) = credentials {
                self.note_home(&response);
                if response.credentials_outdated {
                    self.note_outdated(creds.id.clone());
                }
            }
            let status = status_of(&response);
            match status {
                pb::Status::ClockSkew if !skew_retried && credentials.is_some() => {
                    skew_retried = true;
                    let local = unix_ms(SystemTime::now());
                    let server = i64::try_from(response.server_time_ms).unwrap_or(i64::MAX);
                    self.clock_offset_ms
                        .store(server.saturating_sub(local), Ordering::Relaxed);
                    attempt -= 1;
                    backoff = policy.initial_backoff;
                    continue;
                }
                pb::Status::RateLimited => {
                    let wait = Duration::from_millis(response.retry_after_ms);
                    if wait > policy.max_rate_limit_wait || attempt >= policy.max_attempts {
                        return Ok(response);
                    }
                    last_failure = format!("rate limited: {}", response.message);
                    backoff = backoff.max(wait);
                }
                pb::Status::Draining => {
                    self.drop_live(&live.conn).await;
                    last_failure = "gateway is draining".into();
                    if attempt >= policy.max_attempts {
                        return Ok(response);
                    }
                }
                s if s.is_retryable() => {
                    last_failure =
                        format!("{}: {}", crate::error::status_name(s), response.message);
                    if attempt >= policy.max_attempts {
                        return Ok(response);
                    }
                }
                _ => return Ok(response),
            }
        }
    }

    /// Where the caller's box lives when the last authenticated reply said it is
    /// homed in another region than the gateway's; `None` when it is local.
    pub fn home_hint(&self) -> Option<HomeHint> {
        self.home.lock().map(|h| h.clone()).unwrap_or(None)
    }

    /// The credential id of the last authenticated reply that said
    /// `credentials_outdated`, until [`Connection::clear_outdated`] forgets it.
    pub fn outdated_credentials(&self) -> Option<String> {
        self.outdated.lock().map(|o| o.clone()).unwrap_or(None)
    }

    /// Forgets that the credentials `id` were said to be outdated (once replaced).
    pub fn clear_outdated(&self, id: &str) {
        if let Ok(mut outdated) = self.outdated.lock()
            && outdated.as_deref() == Some(id)
        {
            *outdated = None;
        }
    }

    fn note_outdated(&self, id: String) {
        if let Ok(mut outdated) = self.outdated.lock() {
            *outdated = Some(id);
        }
    }

    fn note_home(&self, response: &pb::Response) {
        let hint = (response.home_region != 0).then(|| HomeHint {
            region: response.home_region,
            gateways: response.home_gateways.clone(),
        });
        if let Ok(mut home) = self.home.lock() {
            *home = hint;
        }
    }

    /// Like [`Connection::call`], but turns every non-OK status into
    /// [`Error::Status`] and returns the OK response's body.
    pub async fn call_ok(
        &self,
        method: Method,
        body: &[u8],
        credentials: Option<&DeviceCredentials>,
        extra_wait: Duration,
    ) -> Result<Vec<u8>> {
        let response = self.call(method, body, credentials, extra_wait).await?;
        ok_body(response)
    }

    /// Sends Subscribe and returns the push stream of the connection it was sent
    /// on. The subscription ends when that connection does; subscribe again then.
    pub async fn subscribe(&self, credentials: &DeviceCredentials) -> Result<Subscription> {
        let body = prost::Message::encode_to_vec(&pb::SubscribeRequest {});
        // The subscription lives on whichever connection answered OK.
        let response = self
            .call(Method::Subscribe, &body, Some(credentials), Duration::ZERO)
            .await?;
        ok_body(response)?;
        let guard = self.live.lock().await;
        let Some(live) = guard.as_ref() else {
            return Err(self.unreachable("connection closed right after subscribing"));
        };
        Ok(Subscription {
            conn: live.conn.clone(),
            stream: None,
        })
    }
}

/// Returns the body of an OK response, or the status as an error.
pub fn ok_body(response: pb::Response) -> Result<Vec<u8>> {
    match status_of(&response) {
        pb::Status::Ok => Ok(response.body),
        status => Err(Error::Status {
            status,
            message: one_line(&response.message),
        }),
    }
}

/// True if the response carries `status`.
pub(crate) fn status_is(response: &pb::Response, status: pb::Status) -> bool {
    status_of(response) == status
}

/// Flattens a peer-supplied message to one printable line.
pub(crate) fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect()
}

/// A subscription's push stream (server-initiated unidirectional stream).
pub struct Subscription {
    conn: quinn::Connection,
    stream: Option<quinn::RecvStream>,
}

impl Subscription {
    /// The next push; `Ok(None)` when the gateway ended the subscription or the
    /// connection closed (subscribe again to resume).
    pub async fn next(&mut self) -> Result<Option<pb::Push>> {
        loop {
            let stream = match &mut self.stream {
                Some(s) => s,
                None => match self.conn.accept_uni().await {
                    Ok(s) => self.stream.insert(s),
                    Err(_) => return Ok(None),
                },
            };
            let mut prefix = [0u8; framing::LENGTH_PREFIX];
            match stream.read_exact(&mut prefix).await {
                Ok(()) => {}
                Err(quinn::ReadExactError::FinishedEarly(0)) => {
                    // This push stream ended; the gateway may open another.
                    self.stream = None;
                    continue;
                }
                Err(_) => return Ok(None),
            }
            let len = framing::body_len(prefix, framing::DEFAULT_MAX_FRAME)?;
            let mut body = vec![0u8; len];
            if stream.read_exact(&mut body).await.is_err() {
                return Ok(None);
            }
            return framing::decode_body(&body, "push")
                .map(Some)
                .map_err(Error::from);
        }
    }
}

async fn exchange(
    conn: &quinn::Connection,
    frame: &[u8],
    timeout: Duration,
) -> Result<pb::Response, Attempt> {
    let fut = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(classify_connection_error)?;
        send.write_all(frame)
            .await
            .map_err(|e| Attempt::Transport(format!("sending the request: {e}")))?;
        send.finish()
            .map_err(|e| Attempt::Transport(format!("sending the request: {e}")))?;
        let limit = framing::DEFAULT_MAX_FRAME + framing::LENGTH_PREFIX;
        let bytes = recv.read_to_end(limit).await.map_err(|e| match e {
            quinn::ReadToEndError::TooLong => {
                Attempt::Fatal(Error::BadReply("response exceeds the frame limit".into()))
            }
            other => Attempt::Transport(format!("reading the response: {other}")),
        })?;
        if bytes.is_empty() {
            return Err(Attempt::Transport(
                "the gateway closed the stream without answering".into(),
            ));
        }
        framing::decode_one::<pb::Response>(&bytes, framing::DEFAULT_MAX_FRAME, "response")
            .map_err(|e| Attempt::Fatal(Error::BadReply(e.to_string())))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Attempt::Transport("request timed out".into())),
    }
}

fn classify_connection_error(e: quinn::ConnectionError) -> Attempt {
    use quinn::ConnectionError as E;
    match e {
        E::TransportError(t) if t.code == quinn::TransportErrorCode::crypto(0x78) => {
            // no_application_protocol: the peer does not speak rossby/1.
            Attempt::Fatal(Error::Config(format!(
                "the server does not speak rossby/1: {t}"
            )))
        }
        // TLS alerts are carried as CRYPTO_ERROR (0x100 + alert): certificate
        // problems are not fixed by retrying.
        E::TransportError(t) if (0x100..0x200).contains(&u64::from(t.code)) => {
            Attempt::Fatal(Error::Config(format!("TLS handshake failed: {t}")))
        }
        E::VersionMismatch => Attempt::Fatal(Error::Config("QUIC version mismatch".into())),
        other => Attempt::Transport(other.to_string()),
    }
}

fn jittered(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let jitter = if ms > 1 {
        rand::random::<u64>() % (ms / 2 + 1)
    } else {
        0
    };
    Duration::from_millis(ms / 2 + ms / 2 + jitter)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Parses a certificate file: PEM (first certificate) or DER.
pub fn parse_certificate(bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.starts_with(b"-----BEGIN") || bytes.windows(10).any(|w| w == b"-----BEGIN") {
        let mut reader = bytes;
        return match rustls_pemfile::certs(&mut reader).next() {
            Some(Ok(cert)) => Ok(cert.to_vec()),
            Some(Err(e)) => Err(Error::Config(format!("invalid PEM certificate: {e}"))),
            None => Err(Error::Config("the PEM file holds no certificate".into())),
        };
    }
    if bytes.first() == Some(&0x30) {
        return Ok(bytes.to_vec());
    }
    Err(Error::Config(
        "the certificate is neither PEM nor DER".into(),
    ))
}

fn tls_config(ca_cert_der: Option<&[u8]>) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let pinned = ca_cert_der.map(|der| CertificateDer::from(der.to_vec()));
    match &pinned {
        // A pinned certificate that is not a usable trust anchor still works when
        // the gateway presents exactly it.
        Some(cert) => {
            let _ = roots.add(cert.clone());
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let webpki = if roots.is_empty() {
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| Error::Config(format!("certificate roots: {e}")))?,
        )
    };
    let verifier = Arc::new(PinnedVerifier {
        pinned,
        webpki,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("TLS configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![rossby_protocol::ALPN.to_vec()];
    Ok(config)
}

/// Accepts the pinned certificate when the server presents exactly it (whatever
/// name was dialled, since self-signed gateway certificates name only a few
/// hosts); otherwise verifies the chain against the roots (the pinned certificate
/// as a CA, or the web PKI) including the server name.
#[derive(Debug)]
struct PinnedVerifier {
    pinned: Option<CertificateDer<'static>>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .as_ref()
            .is_some_and(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_parse_from_pem_and_der() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        assert_eq!(parse_certificate(&der).unwrap(), der);
        assert!(parse_certificate(b"garbage").is_err());
        assert!(
            parse_certificate(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }

    #[test]
    fn jitter_stays_within_bounds() {
        for _ in 0..100 {
            let j = jittered(Duration::from_millis(100));
            assert!(
                j >= Duration::from_millis(100) && j <= Duration::from_millis(151),
                "{j:?}"
            );
        }
    }

    #[test]
    fn peer_messages_are_flattened() {
        assert_eq!(one_line("a\nb\tc"), "a b c");
    }
}
