//! A local stand-in for the Apple Push Notification service's provider API
//! (token-based authentication, HTTP/2), checking every request as Apple's
//! "Sending notification requests to APNs" documents it, and the Rossby rule
//! that a wake-up carries nothing but `"rossby":"fetch"` and generic text.

use crate::jwt;
use crate::{Answer, Recorded, Recorder};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How far a provider token's `iat` may be from the server's clock. Apple
/// refuses tokens older than an hour; a token from the future is a bug.
const IAT_WINDOW_SECS: i64 = 3600;

/// Apple's limit on a notification payload, in bytes.
const MAX_PAYLOAD: usize = 4096;

/// Apple's limit on `apns-collapse-id`, in bytes.
const MAX_COLLAPSE_ID: usize = 64;

/// The `apns-*` headers a provider may send; any other is a mistake.
const APNS_HEADERS: [&str; 6] = [
    "apns-topic",
    "apns-push-type",
    "apns-priority",
    "apns-expiration",
    "apns-collapse-id",
    "apns-id",
];

struct Expect {
    team_id: String,
    key_id: String,
    key: VerifyingKey,
    topic: String,
}

#[derive(Default)]
struct State {
    script: VecDeque<Answer>,
    delivered: Vec<String>,
    provider_tokens: Vec<String>,
}

/// The local APNs. Dropping it stops the server.
pub struct ApnsServer {
    recorder: Recorder,
    state: Arc<Mutex<State>>,
}

impl ApnsServer {
    /// Starts a server accepting provider tokens signed by `key` with key ID
    /// `key_id` for team `team_id`, and notifications for `topic` only.
    pub async fn start(
        team_id: &str,
        key_id: &str,
        key: VerifyingKey,
        topic: &str,
    ) -> std::io::Result<ApnsServer> {
        let expect = Expect {
            team_id: team_id.to_string(),
            key_id: key_id.to_string(),
            key,
            topic: topic.to_string(),
        };
        let state = Arc::new(Mutex::new(State::default()));
        let handler_state = state.clone();
        let recorder = Recorder::start(Arc::new(move |req: &Recorded| {
            let (device_token, provider_token) = check(&expect, req)?;
            let mut s = handler_state.lock().unwrap_or_else(|e| e.into_inner());
            if !s.provider_tokens.contains(&provider_token) {
                s.provider_tokens.push(provider_token);
            }
            let answer = s.script.pop_front().unwrap_or_else(accepted);
            if answer.status == 200 {
                s.delivered.push(device_token);
            }
            Ok(answer)
        }))
        .await?;
        Ok(ApnsServer { recorder, state })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `http://127.0.0.1:PORT`, the value for the client's APNs URL.
    pub fn url(&self) -> String {
        self.recorder.url()
    }

    /// The underlying recorder. Its own `script` is not consulted before this
    /// server's; use [`ApnsServer::script`].
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Answers the next correct requests with these, in order, instead of 200.
    /// A request failing its checks is answered 400 and uses up none.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.lock().script.extend(answers);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorder.requests()
    }

    /// Every failed check so far; empty when every request was exactly right.
    pub fn problems(&self) -> Vec<String> {
        self.recorder.problems()
    }

    /// Waits until `n` requests arrived or `timeout` passed; returns how many
    /// arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        self.recorder.wait_for(n, timeout).await
    }

    /// The device tokens of correct requests answered 200, in order.
    pub fn delivered(&self) -> Vec<String> {
        self.lock().delivered.clone()
    }

    /// The distinct provider tokens (JWTs) of correct requests, in the order
    /// first seen.
    pub fn provider_tokens(&self) -> Vec<String> {
        self.lock().provider_tokens.clone()
    }
}

/// The default answer: 200 with a fresh `apns-id`.
fn accepted() -> Answer {
    let b = jwt::random_bytes(16);
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    let id = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    Answer::status(200).with_header("apns-id", &id)
}

/// An error answer as APNs gives it: `status` with `{"reason": reason}`.
pub fn reason(status: u16, reason: &str) -> Answer {
    Answer::json(status, json!({ "reason": reason }))
}

/// 410 `Unregistered`: the app is no longer on the device.
pub fn unregistered() -> Answer {
    Answer::json(
        410,
        json!({ "reason": "Unregistered", "timestamp": jwt::now_secs() * 1000 }),
    )
}

/// 400 `BadDeviceToken`.
pub fn bad_device_token() -> Answer {
    reason(400, "BadDeviceToken")
}

/// 403 `ExpiredProviderToken`: the provider token must be replaced.
pub fn expired_provider_token() -> Answer {
    reason(403, "ExpiredProviderToken")
}

/// 429 `TooManyRequests`, with `Retry-After: retry_after` when given.
pub fn too_many_requests(retry_after: Option<u64>) -> Answer {
    let answer = reason(429, "TooManyRequests");
    match retry_after {
        Some(secs) => answer.with_header("retry-after", &secs.to_string()),
        None => answer,
    }
}

/// 503 `ServiceUnavailable`.
pub fn unavailable() -> Answer {
    reason(503, "ServiceUnavailable")
}

/// Writes a new P-256 key as an Apple `.p8` file (PKCS#8 PEM) into `dir` and
/// returns its path and public key.
pub fn test_key(dir: &Path) -> std::io::Result<(PathBuf, VerifyingKey)> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .map_err(|e| std::io::Error::other(format!("generating a P-256 key: {e}")))?;
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .map_err(|e| std::io::Error::other(format!("reading the P-256 key: {e}")))?;
    let public = ring::signature::KeyPair::public_key(&pair);
    let public = VerifyingKey::from_sec1_bytes(public.as_ref())
        .map_err(|e| std::io::Error::other(format!("P-256 public key: {e}")))?;
    let path = dir.join("AuthKey_TESTKEY001.p8");
    std::fs::write(&path, jwt::to_pem(pkcs8.as_ref(), "PRIVATE KEY"))?;
    Ok((path, public))
}

/// Checks one request; returns its device token and provider token.
fn check(expect: &Expect, req: &Recorded) -> Result<(String, String), String> {
    if req.version != hyper::Version::HTTP_2 {
        return Err(format!("APNs only speaks HTTP/2, got {:?}", req.version));
    }
    if req.method != "POST" {
        return Err(format!("method {} instead of POST", req.method));
    }
    let device_token = req
        .path
        .strip_prefix("/3/device/")
        .ok_or_else(|| format!("path {} is not /3/device/<token>", req.path))?;
    if device_token.is_empty() || !device_token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("device token {device_token:?} is not hex"));
    }
    let provider_token = check_authorization(expect, req)?;
    check_headers(expect, req)?;
    check_body(req)?;
    Ok((device_token.to_string(), provider_token))
}

fn check_authorization(expect: &Expect, req: &Recorded) -> Result<String, String> {
    let authorization = req
        .header("authorization")
        .ok_or("no authorization header")?;
    let token = authorization
        .strip_prefix("bearer ")
        .ok_or("authorization is not \"bearer <provider token>\"")?;
    let parsed = jwt::parse(token)?;
    jwt::exact_keys(&parsed.header, &["alg", "kid"], "provider token header")?;
    if parsed.header.get("alg") != Some(&json!("ES256")) {
        return Err(format!("provider token alg {:?}", parsed.header.get("alg")));
    }
    if parsed.header.get("kid") != Some(&json!(expect.key_id)) {
        return Err(format!("provider token kid {:?}", parsed.header.get("kid")));
    }
    jwt::exact_keys(&parsed.claims, &["iss", "iat"], "provider token claims")?;
    if parsed.claims.get("iss") != Some(&json!(expect.team_id)) {
        return Err(format!("provider token iss {:?}", parsed.claims.get("iss")));
    }
    let iat = jwt::int(&parsed.claims, "iat", "provider token")?;
    if (iat - jwt::now_secs()).abs() > IAT_WINDOW_SECS {
        return Err(format!("provider token iat {iat} is more than an hour off"));
    }
    let signature = Signature::from_slice(&parsed.signature)
        .map_err(|e| format!("provider token signature is not 64-byte r||s: {e}"))?;
    expect
        .key
        .verify(parsed.signing_input.as_bytes(), &signature)
        .map_err(|_| "provider token signature does not verify with the team's key".to_string())?;
    Ok(token.to_string())
}

fn check_headers(expect: &Expect, req: &Recorded) -> Result<(), String> {
    for (name, _) in &req.headers {
        if name.starts_with("apns-") && !APNS_HEADERS.contains(&name.as_str()) {
            return Err(format!("unknown header {name}"));
        }
    }
    if req.header("apns-topic") != Some(expect.topic.as_str()) {
        return Err(format!("apns-topic {:?}", req.header("apns-topic")));
    }
    match (req.header("apns-push-type"), req.header("apns-priority")) {
        (Some("alert"), Some("10")) | (Some("background"), Some("5")) => {}
        (push_type, priority) => {
            return Err(format!(
                "apns-push-type {push_type:?} with apns-priority {priority:?} \
                 (alert goes with 10, background must be 5)"
            ));
        }
    }
    match req.header("apns-collapse-id") {
        Some(id) if !id.is_empty() && id.len() <= MAX_COLLAPSE_ID => {}
        other => return Err(format!("apns-collapse-id {other:?}")),
    }
    let expiration = req.header("apns-expiration").ok_or("no apns-expiration")?;
    let expiration: i64 = expiration
        .parse()
        .map_err(|_| format!("apns-expiration {expiration:?} is not a number"))?;
    // 0 means "now or never"; anything else is a time, and one already past
    // would make every wake-up undeliverable to a briefly offline device.
    if expiration != 0 && expiration < jwt::now_secs() - 60 {
        return Err(format!("apns-expiration {expiration} is in the past"));
    }
    Ok(())
}

fn check_body(req: &Recorded) -> Result<(), String> {
    if req.body.len() > MAX_PAYLOAD {
        return Err(format!("payload of {} bytes", req.body.len()));
    }
    let body: Value =
        serde_json::from_slice(&req.body).map_err(|e| format!("body is not JSON: {e}"))?;
    let object = body.as_object().ok_or("body is not a JSON object")?;
    jwt::exact_keys(object, &["aps", "rossby"], "payload")?;
    if object.get("rossby") != Some(&json!("fetch")) {
        return Err(format!("payload rossby {:?}", object.get("rossby")));
    }
    let aps = object
        .get("aps")
        .and_then(Value::as_object)
        .ok_or("aps is not an object")?;
    if req.header("apns-push-type") == Some("background") {
        if object.get("aps") != Some(&json!({"content-available": 1})) {
            return Err(format!(
                "background aps {aps:?} is not exactly content-available 1"
            ));
        }
        return Ok(());
    }
    jwt::exact_keys(aps, &["alert", "mutable-content"], "alert aps")?;
    if aps.get("mutable-content") != Some(&json!(1)) {
        return Err("alert aps without mutable-content 1: the app cannot replace the text".into());
    }
    let alert = aps
        .get("alert")
        .and_then(Value::as_object)
        .ok_or("aps alert is not an object")?;
    jwt::exact_keys(alert, &["title", "body"], "aps alert")?;
    if !alert.values().all(Value::is_string) {
        return Err("aps alert title and body must be strings".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

    const TEAM: &str = "TEAM012345";
    const KID: &str = "ABCDE12345";
    const TOPIC: &str = "im.rossby.app";
    const DEVICE: &str = "00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff";

    /// A request as a correct provider sends it, open to spoiling.
    #[derive(Clone)]
    struct Req {
        header: Value,
        claims: Value,
        headers: Vec<(&'static str, String)>,
        body: Value,
        http1: bool,
    }

    impl Req {
        fn good() -> Req {
            Req {
                header: json!({"alg": "ES256", "kid": KID}),
                claims: json!({"iss": TEAM, "iat": jwt::now_secs()}),
                headers: vec![
                    ("apns-topic", TOPIC.into()),
                    ("apns-push-type", "alert".into()),
                    ("apns-priority", "10".into()),
                    ("apns-expiration", (jwt::now_secs() + 60).to_string()),
                    ("apns-collapse-id", "rossby-wake".into()),
                ],
                body: json!({
                    "aps": {"alert": {"title": "Rossby", "body": "New message"}, "mutable-content": 1},
                    "rossby": "fetch",
                }),
                http1: false,
            }
        }

        fn set(mut self, name: &'static str, value: &str) -> Req {
            self.headers.retain(|(n, _)| *n != name);
            if !value.is_empty() {
                self.headers.push((name, value.into()));
            }
            self
        }

        async fn send(&self, key: &EcdsaKeyPair, url: &str) -> reqwest::Response {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(self.header.to_string()),
                URL_SAFE_NO_PAD.encode(self.claims.to_string())
            );
            let sig = key
                .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
                .unwrap();
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
            let mut client = crate::test_client();
            if !self.http1 {
                client = client.http2_prior_knowledge();
            }
            let mut request = client
                .build()
                .unwrap()
                .post(format!("{url}/3/device/{DEVICE}"))
                .header("authorization", format!("bearer {token}"))
                .body(self.body.to_string());
            for (name, value) in &self.headers {
                request = request.header(*name, value);
            }
            request.send().await.unwrap()
        }
    }

    async fn start() -> (tempfile::TempDir, ApnsServer, EcdsaKeyPair) {
        let dir = tempfile::tempdir().unwrap();
        let (path, public) = test_key(dir.path()).unwrap();
        let pem = std::fs::read_to_string(path).unwrap();
        let der = jwt::pem_der(&pem, "PRIVATE KEY").unwrap();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let server = ApnsServer::start(TEAM, KID, public, TOPIC).await.unwrap();
        (dir, server, key)
    }

    #[tokio::test]
    async fn accepts_a_correct_request() {
        let (_dir, server, key) = start().await;
        let answer = Req::good().send(&key, &server.url()).await;
        assert_eq!(answer.status(), 200);
        assert!(answer.headers().contains_key("apns-id"));
        assert_eq!(server.problems(), Vec::<String>::new());
        assert_eq!(server.delivered(), vec![DEVICE.to_string()]);
        assert_eq!(server.provider_tokens().len(), 1);

        let mut background = Req::good()
            .set("apns-push-type", "background")
            .set("apns-priority", "5");
        background.body = json!({"aps": {"content-available": 1}, "rossby": "fetch"});
        assert_eq!(background.send(&key, &server.url()).await.status(), 200);
        assert_eq!(server.problems(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn flags_every_deviation() {
        let (_dir, server, key) = start().await;
        let other = start().await.2;
        let mut spoiled: Vec<(&str, Req)> = vec![
            ("wrong topic", Req::good().set("apns-topic", "im.other.app")),
            (
                "background at priority 10",
                Req::good().set("apns-push-type", "background"),
            ),
            ("no collapse id", Req::good().set("apns-collapse-id", "")),
            (
                "expiration not a number",
                Req::good().set("apns-expiration", "tomorrow"),
            ),
            ("unknown apns header", Req::good().set("apns-foo", "1")),
        ];
        let mut r = Req::good();
        r.http1 = true;
        spoiled.push(("HTTP/1.1", r));
        let mut r = Req::good();
        r.body["sender"] = json!("alice");
        spoiled.push(("identifying body field", r));
        let mut r = Req::good();
        r.body["aps"]["alert"]["subtitle"] = json!("from alice");
        spoiled.push(("extra alert field", r));
        let mut r = Req::good();
        r.header["kid"] = json!("ZZZZZ99999");
        spoiled.push(("wrong kid", r));
        let mut r = Req::good();
        r.claims["iat"] = json!(jwt::now_secs() - 7200);
        spoiled.push(("old iat", r));
        let mut r = Req::good();
        r.claims["exp"] = json!(jwt::now_secs());
        spoiled.push(("extra claim", r));
        for (i, (what, req)) in spoiled.iter().enumerate() {
            let answer = req.send(&key, &server.url()).await;
            assert_eq!(answer.status(), 400, "{what}");
            assert_eq!(server.problems().len(), i + 1, "{what}");
        }
        let before = server.problems().len();
        assert_eq!(Req::good().send(&other, &server.url()).await.status(), 400);
        assert!(server.problems()[before].contains("signature"));
        assert!(server.delivered().is_empty());
    }

    #[tokio::test]
    async fn scripted_answers_go_to_correct_requests_only() {
        let (_dir, server, key) = start().await;
        server.script([unregistered(), too_many_requests(Some(7))]);
        let spoiled = Req::good().set("apns-topic", "x");
        assert_eq!(spoiled.send(&key, &server.url()).await.status(), 400);
        let answer = Req::good().send(&key, &server.url()).await;
        assert_eq!(answer.status(), 410);
        let body: Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
        assert_eq!(body["reason"], "Unregistered");
        let answer = Req::good().send(&key, &server.url()).await;
        assert_eq!(answer.status(), 429);
        assert_eq!(answer.headers()["retry-after"], "7");
        assert_eq!(Req::good().send(&key, &server.url()).await.status(), 200);
        assert_eq!(server.delivered().len(), 1);
        assert_eq!(server.wait_for(4, Duration::from_secs(1)).await, 4);
    }
}
