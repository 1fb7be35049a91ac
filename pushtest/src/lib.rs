//! Local stand-ins for the push services Rossby wakes devices through, for
//! tests: each listens on loopback, speaks the service's HTTP API, checks every
//! request exactly as the service documents it, records what it got, and
//! answers from a script so tests can drive the error cases.
//!
//! [`Recorder`] is the shared HTTP part: a plain-TCP server speaking HTTP/1.1
//! and HTTP/2 (prior knowledge), which hands every request to a handler and
//! keeps it, with the HTTP version it came in, for the test to inspect.
//!
//! [`webpush::WebPushService`] plays a browser and its push service together.

pub mod apns;
pub mod fcm;
mod jwt;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub mod webpush;

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// HTTP version it arrived in.
    pub version: Version,
    /// Headers, names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Hold the answer this long first (a hanging service).
    pub delay: Duration,
}

impl Answer {
    /// `status` with an empty body.
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, body: serde_json::Value) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            delay: Duration::ZERO,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Holds the answer for `delay`.
    pub fn delayed(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

/// What a service does with one request: check it (a violation is recorded as
/// a problem and answered 400) and pick the default answer.
pub type Handler = Arc<dyn Fn(&Recorded) -> Result<Answer, String> + Send + Sync>;

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    problems: Vec<String>,
    script: VecDeque<Answer>,
}

/// A recording HTTP server on loopback. Dropping it stops accepting.
pub struct Recorder {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Starts a server on `127.0.0.1` whose requests go through `handler`.
    pub async fn start(handler: Handler) -> std::io::Result<Recorder> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let arrived = Arc::new(Notify::new());
        let task = tokio::spawn(serve(listener, handler, state.clone(), arrived.clone()));
        Ok(Recorder {
            addr,
            state,
            arrived,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers the next requests with these (in order) instead of the
    /// handler's default answer. A request that fails its checks is answered
    /// 400 and does not use up a scripted answer.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.lock().script.extend(answers);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Every check that failed so far (empty when every request was exactly
    /// right).
    pub fn problems(&self) -> Vec<String> {
        self.lock().problems.clone()
    }

    /// Waits until at least `n` requests arrived or `timeout` passed; returns
    /// how many arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            let count = self.lock().requests.len();
            if count >= n {
                return count;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.lock().requests.len();
            }
        }
    }
}

async fn serve(
    listener: TcpListener,
    handler: Handler,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        let state = state.clone();
        let arrived = arrived.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                let state = state.clone();
                let arrived = arrived.clone();
                async move { handle(req, handler, state, arrived).await }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    handler: Handler,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let version = req.version();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let recorded = Recorded {
        method,
        path,
        version,
        headers,
        body,
    };
    let checked = handler(&recorded);
    let answer = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        let answer = match checked {
            Ok(default) => s.script.pop_front().unwrap_or(default),
            Err(problem) => {
                s.problems.push(problem.clone());
                Answer::json(400, serde_json::json!({ "problem": problem }))
            }
        };
        s.requests.push(recorded);
        answer
    };
    arrived.notify_waiters();
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    for (name, value) in answer.headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    Ok(response)
}

/// A client builder for this crate's own tests, with ring installed as the
/// process's TLS crypto provider (reqwest needs one when the workspace builds
/// it without a provider of its own).
#[cfg(test)]
pub(crate) fn test_client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
