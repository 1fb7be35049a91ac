//! A minimal plain-HTTP/1.1 client: one connection per request, bounded in
//! size ([`request`], what the PD client uses too) and, for the gateways' admin
//! ports, in time ([`get`]).

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// `GET path` on `authority` (`host:port`): the status and the body (lossy
/// UTF-8). The error is a one-line reason (connection refused, timed out, ...).
pub async fn get(
    authority: &str,
    path: &str,
    timeout: Duration,
    limit: usize,
) -> Result<(u16, String), String> {
    tokio::time::timeout(timeout, exchange(authority, path, limit))
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}

async fn exchange(authority: &str, path: &str, limit: usize) -> Result<(u16, String), String> {
    let (status, body) = request(authority, (Method::GET, path), None, false, limit)
        .await
        .map_err(|e| match e {
            Failure::Refused => "connection refused".to_string(),
            Failure::Connect(reason) => reason,
            Failure::Handshake(e) => format!("HTTP handshake failed: {e}"),
            Failure::Build(e) => format!("cannot build a request for {path}: {e}"),
            Failure::Send(e) => format!("GET {path} failed: {e}"),
            Failure::TooLarge | Failure::Read(_) => {
                format!("reading the answer to GET {path} failed: {e}")
            }
        })?;
    Ok((status.as_u16(), body))
}

/// Why one HTTP exchange failed, for the caller to word.
#[derive(Debug)]
pub enum Failure {
    /// Nothing listens at the address.
    Refused,
    /// Another connection error.
    Connect(String),
    /// The HTTP/1.1 handshake failed.
    Handshake(String),
    /// The request could not be built (a bad target).
    Build(String),
    /// Sending it or receiving the answer's head failed.
    Send(String),
    /// The answer's body was larger than the limit.
    TooLarge,
    /// Reading the answer's body failed otherwise.
    Read(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused => f.write_str("connection refused"),
            Failure::TooLarge => f.write_str("length limit exceeded"),
            Failure::Connect(e)
            | Failure::Handshake(e)
            | Failure::Build(e)
            | Failure::Send(e)
            | Failure::Read(e) => f.write_str(e),
        }
    }
}

/// One request on a fresh plain-HTTP/1.1 connection to `authority`
/// (`host:port`): `method target`, with `json` as an `application/json` body
/// when given, asking for a JSON answer when `accept_json`. The answer's status
/// and body (lossy UTF-8, at most `limit` bytes). Bounding its time is the
/// caller's.
pub async fn request(
    authority: &str,
    (method, target): (Method, &str),
    json: Option<String>,
    accept_json: bool,
    limit: usize,
) -> Result<(StatusCode, String), Failure> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Failure::Refused,
            _ => Failure::Connect(e.to_string()),
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Handshake(e.to_string()))?;
    // The connection task ends with the sender; aborting it also covers the
    // caller's timeout dropping this future.
    let driver = AbortOnDrop(tokio::spawn(connection));
    let mut builder = Request::builder()
        .method(method)
        .uri(target)
        .header(header::HOST, authority)
        .header(
            header::USER_AGENT,
            concat!("rossby-admin/", env!("CARGO_PKG_VERSION")),
        );
    if accept_json {
        builder = builder.header(header::ACCEPT, "application/json");
    }
    if json.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .map_err(|e| Failure::Build(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::Send(e.to_string()))?;
    let status = response.status();
    let bytes = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Failure::TooLarge
            } else {
                Failure::Read(e.to_string())
            }
        })?
        .to_bytes();
    drop(sender);
    drop(driver);
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
