//! Pluggable delivery of verification codes.
//!
//! - `log`: the code is written to the gateway's log (development only; a warning
//!   says so at start-up). The log line names the identifier's kind, never the
//!   identifier itself.
//! - `file:PATH`: one line `<identifier> <code>\n` is appended per code (the file
//!   is created if needed; writes are serialised), for tests and demos.
//! - `webhook:URL`: `POST URL` with the JSON body
//!   `{"identifier": "...", "code": "...", "expires_at_ms": ...}`; any 2xx answer
//!   is success. Plain `http://` only (terminate TLS in a local proxy or sidecar);
//!   each delivery has a 10-second deadline.

use crate::settings::VerifierSpec;
use rossby_keyspace::Identifier;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deadline of one webhook delivery.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest webhook response head read.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// A boxed future returned by [`Verifier::send`].
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), VerifierError>> + Send + 'a>>;

/// Why a code could not be delivered (or a verifier not configured).
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// The configuration is unusable.
    #[error("verifier configuration: {0}")]
    Config(String),
    /// Delivery failed.
    #[error("verification code delivery failed: {0}")]
    Delivery(String),
}

/// A verification code to deliver.
#[derive(Clone)]
pub struct CodeMessage {
    /// The normalised identifier the code goes to.
    pub identifier: Identifier,
    /// The code.
    pub code: String,
    /// When it expires (milliseconds since the Unix epoch).
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for CodeMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeMessage")
            .field("identifier", &self.identifier)
            .field("code", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// Something that delivers verification codes out of band.
pub trait Verifier: Send + Sync {
    /// Delivers one code.
    fn send<'a>(&'a self, message: &'a CodeMessage) -> SendFuture<'a>;
}

/// Builds the configured verifier.
pub fn from_spec(spec: &VerifierSpec) -> Result<Box<dyn Verifier>, VerifierError> {
    Ok(match spec {
        VerifierSpec::Log => {
            tracing::warn!(
                "verification codes are written to the log: the `log` verifier is for development only"
            );
            Box::new(LogVerifier)
        }
        VerifierSpec::File(path) => Box::new(FileVerifier::new(path.clone())),
        VerifierSpec::Webhook(url) => Box::new(WebhookVerifier::new(url)?),
    })
}

fn kind(id: &Identifier) -> &'static str {
    match id {
        Identifier::Phone(_) => "phone",
        Identifier::Email(_) => "email",
    }
}

/// Logs codes (development).
#[derive(Debug, Default)]
pub struct LogVerifier;

impl Verifier for LogVerifier {
    fn send<'a>(&'a self, message: &'a CodeMessage) -> SendFuture<'a> {
        Box::pin(async move {
            tracing::info!(
                identifier_kind = kind(&message.identifier),
                code = %message.code,
                "verification code (development verifier)"
            );
            Ok(())
        })
    }
}

/// Appends `<identifier> <code>` lines to a file.
#[derive(Debug)]
pub struct FileVerifier {
    path: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl FileVerifier {
    /// A verifier appending to `path`.
    pub fn new(path: PathBuf) -> Self {
        FileVerifier {
            path,
            lock: tokio::sync::Mutex::new(()),
        }
    }
}

impl Verifier for FileVerifier {
    fn send<'a>(&'a self, message: &'a CodeMessage) -> SendFuture<'a> {
        Box::pin(async move {
            let _guard = self.lock.lock().await;
            let line = format!("{} {}\n", message.identifier.as_str(), message.code);
            let mut options = tokio::fs::OpenOptions::new();
            options.create(true).append(true);
            // Codes are secrets until used: owner-only, like the other secrets.
            #[cfg(unix)]
            options.mode(0o600);
            let mut file = options
                .open(&self.path)
                .await
                .map_err(|e| VerifierError::Delivery(format!("cannot open the code file: {e}")))?;
            file.write_all(line.as_bytes())
                .await
                .map_err(|e| VerifierError::Delivery(format!("cannot write the code file: {e}")))?;
            file.flush()
                .await
                .map_err(|e| VerifierError::Delivery(format!("cannot write the code file: {e}")))
        })
    }
}

/// POSTs codes as JSON to an `http://` URL.
#[derive(Debug, Clone)]
pub struct WebhookVerifier {
    host: String,
    port: u16,
    path: String,
}

impl WebhookVerifier {
    /// Parses `http://host[:port][/path]`.
    pub fn new(url: &str) -> Result<Self, VerifierError> {
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(VerifierError::Config(
                "webhook URLs must use http:// (this gateway has no HTTPS client); \
                 point it at a local TLS-terminating proxy"
                    .into(),
            ));
        } else {
            return Err(VerifierError::Config(format!(
                "webhook URL must start with http://, got {url:?}"
            )));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(VerifierError::Config(
                "webhook URLs with user information are not supported".into(),
            ));
        }
        let invalid_port = || VerifierError::Config(format!("invalid port in webhook URL {url:?}"));
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| VerifierError::Config(format!("invalid webhook URL {url:?}")))?;
            match after {
                "" => (host, 80),
                _ => (
                    host,
                    after
                        .strip_prefix(':')
                        .and_then(|p| p.parse::<u16>().ok())
                        .ok_or_else(invalid_port)?,
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, port.parse::<u16>().map_err(|_| invalid_port())?),
                None => (authority, 80),
            }
        };
        let bad = |c: char| c.is_whitespace() || c.is_control();
        if host.is_empty() || host.contains(bad) || path.contains(bad) {
            return Err(VerifierError::Config(format!(
                "invalid webhook URL {url:?}"
            )));
        }
        Ok(WebhookVerifier {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    async fn deliver(&self, message: &CodeMessage) -> Result<(), VerifierError> {
        let body = serde_json::json!({
            "identifier": message.identifier.as_str(),
            "code": message.code,
            "expires_at_ms": message.expires_at_ms,
        })
        .to_string();
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rossby-gateway/{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.path,
            self.host_header(),
            env!("CARGO_PKG_VERSION"),
            body.len(),
            body
        );
        let fail =
            |what: &str, e: std::io::Error| VerifierError::Delivery(format!("webhook {what}: {e}"));
        let mut stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| fail("connect", e))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| fail("write", e))?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_RESPONSE_HEAD {
            let n = stream.read(&mut buf).await.map_err(|e| fail("read", e))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let status_line = head
            .split(|b| *b == b'\n')
            .next()
            .map(|l| String::from_utf8_lossy(l).trim().to_string())
            .unwrap_or_default();
        let mut parts = status_line.split_whitespace();
        let version_ok = parts.next().is_some_and(|v| v.starts_with("HTTP/1."));
        let code = parts.next().and_then(|c| c.parse::<u16>().ok());
        match code {
            Some(code) if version_ok && (200..300).contains(&code) => Ok(()),
            Some(code) if version_ok => Err(VerifierError::Delivery(format!(
                "webhook answered HTTP {code}"
            ))),
            _ => Err(VerifierError::Delivery(
                "webhook sent no valid HTTP status line".into(),
            )),
        }
    }
}

impl Verifier for WebhookVerifier {
    fn send<'a>(&'a self, message: &'a CodeMessage) -> SendFuture<'a> {
        Box::pin(async move {
            tokio::time::timeout(WEBHOOK_TIMEOUT, self.deliver(message))
                .await
                .map_err(|_| VerifierError::Delivery("webhook timed out".into()))?
        })
    }
}

/// The codes a `file:` verifier wrote (`<identifier> <code>` lines), read
/// incrementally as the file grows: how tools on the gateway's host (the load
/// generator, the prober) pick up the codes sent to their test accounts.
#[derive(Debug)]
pub struct CodeBook {
    path: PathBuf,
    offset: u64,
    partial: String,
    codes: std::collections::HashMap<String, Vec<String>>,
}

impl CodeBook {
    /// A book of the file at `path` (which may not exist yet).
    pub fn new(path: PathBuf) -> CodeBook {
        CodeBook {
            path,
            offset: 0,
            partial: String::new(),
            codes: std::collections::HashMap::new(),
        }
    }

    /// The file it reads.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Reads what was appended since the last call; a line without its
    /// newline yet waits for it. A missing file is empty.
    pub fn refresh(&mut self) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut text = String::new();
        let read = file.read_to_string(&mut text)?;
        self.offset += read as u64;
        self.partial.push_str(&text);
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            if let Some((identifier, code)) = line.trim().split_once(' ') {
                self.codes
                    .entry(identifier.to_lowercase())
                    .or_default()
                    .push(code.trim().to_string());
            }
        }
        Ok(())
    }

    /// How many codes were sent to `identifier` (in its normal form).
    pub fn count(&self, identifier: &str) -> usize {
        self.codes.get(identifier).map_or(0, Vec::len)
    }

    /// The last code sent to `identifier`.
    pub fn latest(&self, identifier: &str) -> Option<String> {
        self.codes.get(identifier).and_then(|c| c.last().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_book_reads_appended_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codes.txt");
        let mut book = CodeBook::new(path.clone());
        book.refresh().unwrap();
        assert_eq!(book.count("a@b.c"), 0);
        std::fs::write(&path, "a@b.c 123456\nx@y.z 1").unwrap();
        book.refresh().unwrap();
        assert_eq!(book.latest("a@b.c").as_deref(), Some("123456"));
        // The unfinished line is kept until its newline arrives.
        assert_eq!(book.count("x@y.z"), 0);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"11111\nA@B.C 654321\n").unwrap();
        book.refresh().unwrap();
        assert_eq!(book.latest("x@y.z").as_deref(), Some("111111"));
        assert_eq!(book.count("a@b.c"), 2);
        assert_eq!(book.latest("a@b.c").as_deref(), Some("654321"));
    }
    use tokio::net::TcpListener;

    fn message() -> CodeMessage {
        CodeMessage {
            identifier: Identifier::parse("alice@example.com").unwrap(),
            code: "012345".into(),
            expires_at_ms: 1_700_000_600_000,
        }
    }

    #[tokio::test]
    async fn file_verifier_appends_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codes.txt");
        let v = from_spec(&VerifierSpec::File(path.clone())).unwrap();
        v.send(&message()).await.unwrap();
        let mut second = message();
        second.identifier = Identifier::parse("+1 415 555 0123").unwrap();
        second.code = "999999".into();
        v.send(&second).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "alice@example.com 012345\n+14155550123 999999\n");
        assert!(!format!("{second:?}").contains("999999"));
    }

    #[test]
    fn webhook_urls_are_checked() {
        let v = WebhookVerifier::new("http://sms.internal:8080/rossby/codes").unwrap();
        assert_eq!(
            (v.host.as_str(), v.port, v.path.as_str()),
            ("sms.internal", 8080, "/rossby/codes")
        );
        assert_eq!(v.host_header(), "sms.internal:8080");
        let v = WebhookVerifier::new("http://[::1]:9/x").unwrap();
        assert_eq!((v.host.as_str(), v.port), ("::1", 9));
        assert_eq!(v.host_header(), "[::1]:9");
        let v = WebhookVerifier::new("http://example.net").unwrap();
        assert_eq!(
            (v.port, v.path.as_str(), v.host_header().as_str()),
            (80, "/", "example.net")
        );
        let v = WebhookVerifier::new("http://[::1]/").unwrap();
        assert_eq!((v.host.as_str(), v.port), ("::1", 80));
        for bad in [
            "https://example.net/",
            "ftp://x",
            "http://",
            "http://a:b/",
            "http://u@h/",
            "http://h/a b",
            "http://[::1/",
            "http://[::1]x/",
        ] {
            assert!(WebhookVerifier::new(bad).is_err(), "{bad}");
        }
    }

    async fn one_shot_server(answer: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                let n = sock.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if got.len() >= i + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            sock.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8(got).unwrap()
        });
        (port, task)
    }

    #[tokio::test]
    async fn webhook_posts_json() {
        let (port, server) = one_shot_server("HTTP/1.1 204 No Content\r\n\r\n").await;
        let v = from_spec(&VerifierSpec::Webhook(format!(
            "http://127.0.0.1:{port}/codes"
        )))
        .unwrap();
        v.send(&message()).await.unwrap();
        let request = server.await.unwrap();
        assert!(request.starts_with("POST /codes HTTP/1.1\r\n"), "{request}");
        assert!(request.contains(&format!("Host: 127.0.0.1:{port}\r\n")));
        let body = request.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["identifier"], "alice@example.com");
        assert_eq!(json["code"], "012345");
        assert_eq!(json["expires_at_ms"], 1_700_000_600_000u64);
    }

    #[tokio::test]
    async fn webhook_errors_are_reported() {
        let (port, server) = one_shot_server("HTTP/1.1 500 Oops\r\n\r\n").await;
        let v = WebhookVerifier::new(&format!("http://127.0.0.1:{port}/")).unwrap();
        assert!(matches!(
            v.send(&message()).await,
            Err(VerifierError::Delivery(_))
        ));
        server.await.unwrap();
        // Nothing listening.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let v = WebhookVerifier::new(&format!("http://127.0.0.1:{port}/")).unwrap();
        assert!(v.send(&message()).await.is_err());
    }
}
