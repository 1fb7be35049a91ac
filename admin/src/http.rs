//! A minimal plain-HTTP/1.1 GET for the gateways' admin ports: one connection
//! per request, bounded in time and size.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, header};
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
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            _ => e.to_string(),
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    // The connection task ends with the sender; aborting it also covers the
    // timeout dropping this future.
    let driver = AbortOnDrop(tokio::spawn(connection));
    let request = Request::get(path)
        .header(header::HOST, authority)
        .header(
            header::USER_AGENT,
            concat!("rossby-admin/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build a request for {path}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {path} failed: {e}"))?;
    let status = response.status().as_u16();
    let bytes = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| format!("reading the answer to GET {path} failed: {e}"))?
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
