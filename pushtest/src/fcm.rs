//! A local stand-in for Firebase Cloud Messaging's HTTP v1 API and for the
//! Google OAuth 2.0 token endpoint a service account signs in at (RFC 7523 JWT
//! bearer grant), on one server: `POST /token` and
//! `POST /v1/projects/<project>/messages:send`. Every request is checked as
//! Google documents it, plus the Rossby rule that a wake-up is a data-only
//! message carrying nothing but `"rossby":"fetch"`.

use crate::jwt;
use crate::{Answer, Recorded, Recorder};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The OAuth scope that allows sending FCM messages.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The RFC 7523 grant type.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The project of the test service account.
pub const TEST_PROJECT_ID: &str = "rossby-test";
/// The client e-mail of the test service account.
pub const TEST_CLIENT_EMAIL: &str = "rossby-push@rossby-test.iam.gserviceaccount.com";
/// The `private_key_id` of the test service account.
pub const TEST_PRIVATE_KEY_ID: &str = "0123456789abcdef0123456789abcdef01234567";
/// The collapse key every Rossby wake-up carries.
const COLLAPSE_KEY: &str = "rossby-wake";

/// A fixed RSA-2048 key, for tests only (see the note at the top of the file).
const TEST_KEY_PEM: &str = include_str!("fcm_test_key.pem");

/// How far an assertion's `iat` may be from the server's clock.
const IAT_WINDOW_SECS: i64 = 300;
/// Google's limit (and Rossby's choice) on an assertion's lifetime.
const ASSERTION_LIFETIME_SECS: i64 = 3600;

struct Expect {
    project_id: String,
    client_email: String,
    key_id: Option<String>,
    public_key: Vec<u8>,
    /// Filled in once the port is known: the assertion's `aud` must name it.
    token_url: String,
}

struct State {
    send_script: VecDeque<Answer>,
    token_script: VecDeque<Answer>,
    /// Access tokens issued and when they expire.
    issued: HashMap<String, Instant>,
    expires_in: u64,
    delivered: Vec<String>,
}

/// The local FCM and token endpoint. Dropping it stops the server.
pub struct FcmServer {
    recorder: Recorder,
    state: Arc<Mutex<State>>,
}

impl FcmServer {
    /// Starts a server for `project_id` that issues access tokens to
    /// `client_email` for assertions signed by the RSA key whose public key
    /// (PKCS#1 `RSAPublicKey` DER) is `public_key` and, when given, naming
    /// `key_id` as `kid`.
    pub async fn start(
        project_id: &str,
        client_email: &str,
        key_id: Option<&str>,
        public_key: Vec<u8>,
    ) -> std::io::Result<FcmServer> {
        let state = Arc::new(Mutex::new(State {
            send_script: VecDeque::new(),
            token_script: VecDeque::new(),
            issued: HashMap::new(),
            expires_in: 3600,
            delivered: Vec::new(),
        }));
        // The handler needs the server's own URL (the assertion's audience),
        // which exists only after binding.
        let expect: Arc<Mutex<Option<Expect>>> = Arc::new(Mutex::new(None));
        let handler_expect = expect.clone();
        let handler_state = state.clone();
        let recorder = Recorder::start(Arc::new(move |req: &Recorded| {
            let expect = handler_expect.lock().unwrap_or_else(|e| e.into_inner());
            let expect = expect
                .as_ref()
                .ok_or("request before the server was ready")?;
            handle(expect, &handler_state, req)
        }))
        .await?;
        *expect.lock().unwrap_or_else(|e| e.into_inner()) = Some(Expect {
            project_id: project_id.to_string(),
            client_email: client_email.to_string(),
            key_id: key_id.map(str::to_string),
            public_key,
            token_url: format!("{}/token", recorder.url()),
        });
        Ok(FcmServer { recorder, state })
    }

    /// Starts a server for the test service account ([`test_service_account`]).
    pub async fn start_for_test_account() -> std::io::Result<FcmServer> {
        let public_key = test_public_key().map_err(std::io::Error::other)?;
        FcmServer::start(
            TEST_PROJECT_ID,
            TEST_CLIENT_EMAIL,
            Some(TEST_PRIVATE_KEY_ID),
            public_key,
        )
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `http://127.0.0.1:PORT`, the value for the client's FCM URL.
    pub fn url(&self) -> String {
        self.recorder.url()
    }

    /// `http://127.0.0.1:PORT/token`, the token endpoint (the service
    /// account's `token_uri`).
    pub fn token_url(&self) -> String {
        format!("{}/token", self.recorder.url())
    }

    /// The underlying recorder. Its own `script` would answer requests to
    /// both endpoints; use [`FcmServer::script_send`] and
    /// [`FcmServer::script_token`].
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Answers the next correct `messages:send` requests with these, in order,
    /// instead of 200. Token requests are not affected.
    pub fn script_send(&self, answers: impl IntoIterator<Item = Answer>) {
        self.lock().send_script.extend(answers);
    }

    /// Answers the next correct token requests with these, in order, instead
    /// of issuing a token.
    pub fn script_token(&self, answers: impl IntoIterator<Item = Answer>) {
        self.lock().token_script.extend(answers);
    }

    /// The `expires_in` of access tokens issued from now on (default 3600).
    pub fn set_expires_in(&self, secs: u64) {
        self.lock().expires_in = secs;
    }

    /// Every request so far, to both endpoints.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorder.requests()
    }

    /// The `messages:send` requests so far.
    pub fn sends(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path != "/token")
            .collect()
    }

    /// How many token requests arrived (correct or not, answered or
    /// scripted).
    pub fn token_exchanges(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path == "/token")
            .count()
    }

    /// Every failed check so far; empty when every request was exactly right.
    pub fn problems(&self) -> Vec<String> {
        self.recorder.problems()
    }

    /// Waits until `n` requests (to either endpoint) arrived or `timeout`
    /// passed; returns how many arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        self.recorder.wait_for(n, timeout).await
    }

    /// The registration tokens of correct sends answered 200, in order.
    pub fn delivered(&self) -> Vec<String> {
        self.lock().delivered.clone()
    }
}

/// An FCM v1 error answer: `status` with a `google.rpc.Status` body naming
/// `rpc_status` and, when given, an `FcmError` detail with `error_code`.
pub fn error(status: u16, rpc_status: &str, message: &str, error_code: Option<&str>) -> Answer {
    let mut details = Vec::new();
    if let Some(code) = error_code {
        details.push(json!({
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }));
    }
    Answer::json(
        status,
        json!({"error": {
            "code": status,
            "message": message,
            "status": rpc_status,
            "details": details,
        }}),
    )
}

/// 404 `UNREGISTERED`: the app instance is gone.
pub fn unregistered() -> Answer {
    error(
        404,
        "NOT_FOUND",
        "Requested entity was not found.",
        Some("UNREGISTERED"),
    )
}

/// 400 `INVALID_ARGUMENT` naming the registration token, as FCM answers a
/// token that is not one.
pub fn invalid_token() -> Answer {
    Answer::json(
        400,
        json!({"error": {
            "code": 400,
            "message": "The registration token is not a valid FCM registration token",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": "INVALID_ARGUMENT",
                },
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{
                        "field": "message.token",
                        "description": "The registration token is not a valid FCM registration token",
                    }],
                },
            ],
        }}),
    )
}

/// 400 `INVALID_ARGUMENT` about something other than the token.
pub fn invalid_argument() -> Answer {
    error(
        400,
        "INVALID_ARGUMENT",
        "Request contains an invalid argument.",
        Some("INVALID_ARGUMENT"),
    )
}

/// 429 `QUOTA_EXCEEDED`, with `Retry-After: retry_after` when given.
pub fn quota_exceeded(retry_after: Option<u64>) -> Answer {
    let answer = error(
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded.",
        Some("QUOTA_EXCEEDED"),
    );
    match retry_after {
        Some(secs) => answer.with_header("retry-after", &secs.to_string()),
        None => answer,
    }
}

/// 503 `UNAVAILABLE`.
pub fn unavailable() -> Answer {
    error(
        503,
        "UNAVAILABLE",
        "The service is currently unavailable.",
        Some("UNAVAILABLE"),
    )
}

/// 401 `UNAUTHENTICATED`: the access token is no longer accepted.
pub fn unauthenticated() -> Answer {
    error(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials.",
        None,
    )
}

/// 403 `SENDER_ID_MISMATCH`.
pub fn sender_id_mismatch() -> Answer {
    error(
        403,
        "PERMISSION_DENIED",
        "SenderId mismatch",
        Some("SENDER_ID_MISMATCH"),
    )
}

/// The test service account's public key (PKCS#1 `RSAPublicKey` DER).
pub fn test_public_key() -> Result<Vec<u8>, String> {
    let der = jwt::pem_der(TEST_KEY_PEM, "PRIVATE KEY")?;
    let pair =
        ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| format!("test RSA key: {e}"))?;
    Ok(ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec())
}

/// Writes the test service account's JSON key file into `dir`, with
/// `token_uri` set to `token_url`, and returns its path.
pub fn test_service_account(dir: &Path, token_url: &str) -> std::io::Result<PathBuf> {
    let pem_start = TEST_KEY_PEM.find("-----BEGIN").unwrap_or(0);
    let account = json!({
        "type": "service_account",
        "project_id": TEST_PROJECT_ID,
        "private_key_id": TEST_PRIVATE_KEY_ID,
        "private_key": &TEST_KEY_PEM[pem_start..],
        "client_email": TEST_CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_url,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/rossby-push%40rossby-test.iam.gserviceaccount.com",
        "universe_domain": "googleapis.com",
    });
    let path = dir.join("service-account.json");
    std::fs::write(&path, account.to_string())?;
    Ok(path)
}

fn handle(expect: &Expect, state: &Mutex<State>, req: &Recorded) -> Result<Answer, String> {
    if req.method != "POST" {
        return Err(format!("method {} instead of POST", req.method));
    }
    if req.path == "/token" {
        check_token_request(expect, req)?;
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(answer) = s.token_script.pop_front() {
            return Ok(answer);
        }
        let token = format!(
            "ya29.{}",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                jwt::random_bytes(32)
            )
        );
        let expires_in = s.expires_in;
        s.issued.insert(
            token.clone(),
            Instant::now() + Duration::from_secs(expires_in),
        );
        return Ok(Answer::json(
            200,
            json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}),
        ));
    }
    let send_path = format!("/v1/projects/{}/messages:send", expect.project_id);
    if req.path != send_path {
        return Err(format!(
            "path {} is neither /token nor {send_path}",
            req.path
        ));
    }
    let registration_token = {
        let s = state.lock().unwrap_or_else(|e| e.into_inner());
        check_send(&s, req)?
    };
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let answer = s.send_script.pop_front().unwrap_or_else(|| {
        let id: String = jwt::random_bytes(8)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Answer::json(
            200,
            json!({"name": format!("projects/{}/messages/0:{id}", expect.project_id)}),
        )
    });
    if answer.status == 200 {
        s.delivered.push(registration_token);
    }
    Ok(answer)
}

/// `application/x-www-form-urlencoded` decoding of one name or value.
fn form_decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

fn check_token_request(expect: &Expect, req: &Recorded) -> Result<(), String> {
    let content_type = req.header("content-type").unwrap_or_default();
    if content_type != "application/x-www-form-urlencoded" {
        return Err(format!("token request content-type {content_type:?}"));
    }
    let body = std::str::from_utf8(&req.body).map_err(|_| "token request body is not UTF-8")?;
    let mut fields = HashMap::new();
    for pair in body.split('&') {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("form field {pair:?} has no ="))?;
        if fields
            .insert(form_decode(name)?, form_decode(value)?)
            .is_some()
        {
            return Err(format!("form field {name} twice"));
        }
    }
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort_unstable();
    if names != ["assertion", "grant_type"] {
        return Err(format!(
            "token request fields {names:?}, expected exactly assertion and grant_type"
        ));
    }
    if fields.get("grant_type").map(String::as_str) != Some(GRANT_TYPE) {
        return Err(format!("grant_type {:?}", fields.get("grant_type")));
    }
    let assertion = fields
        .get("assertion")
        .map(String::as_str)
        .unwrap_or_default();
    let parsed = jwt::parse(assertion)?;
    match &expect.key_id {
        Some(kid) => {
            jwt::exact_keys(&parsed.header, &["alg", "typ", "kid"], "assertion header")?;
            if parsed.header.get("kid") != Some(&json!(kid)) {
                return Err(format!("assertion kid {:?}", parsed.header.get("kid")));
            }
        }
        None => jwt::exact_keys(&parsed.header, &["alg", "typ"], "assertion header")?,
    }
    if parsed.header.get("alg") != Some(&json!("RS256"))
        || parsed.header.get("typ") != Some(&json!("JWT"))
    {
        return Err(format!("assertion header {:?}", parsed.header));
    }
    jwt::exact_keys(
        &parsed.claims,
        &["iss", "scope", "aud", "iat", "exp"],
        "assertion claims",
    )?;
    if parsed.claims.get("iss") != Some(&json!(expect.client_email)) {
        return Err(format!("assertion iss {:?}", parsed.claims.get("iss")));
    }
    if parsed.claims.get("scope") != Some(&json!(SCOPE)) {
        return Err(format!("assertion scope {:?}", parsed.claims.get("scope")));
    }
    if parsed.claims.get("aud") != Some(&json!(expect.token_url)) {
        return Err(format!(
            "assertion aud {:?}, expected {}",
            parsed.claims.get("aud"),
            expect.token_url
        ));
    }
    let iat = jwt::int(&parsed.claims, "iat", "assertion")?;
    let exp = jwt::int(&parsed.claims, "exp", "assertion")?;
    if (iat - jwt::now_secs()).abs() > IAT_WINDOW_SECS {
        return Err(format!("assertion iat {iat} is not now"));
    }
    if exp != iat + ASSERTION_LIFETIME_SECS {
        return Err(format!("assertion exp {exp} is not iat + 3600"));
    }
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &expect.public_key,
    )
    .verify(parsed.signing_input.as_bytes(), &parsed.signature)
    .map_err(|_| "assertion signature does not verify with the service account's key".to_string())
}

/// Checks a send; returns its registration token.
fn check_send(state: &State, req: &Recorded) -> Result<String, String> {
    let authorization = req
        .header("authorization")
        .ok_or("no authorization header")?;
    let token = authorization
        .strip_prefix("Bearer ")
        .ok_or("authorization is not \"Bearer <access token>\"")?;
    match state.issued.get(token) {
        Some(expiry) if Instant::now() < *expiry => {}
        Some(_) => return Err("access token expired".into()),
        None => return Err("access token was never issued".into()),
    }
    let content_type = req.header("content-type").unwrap_or_default();
    if content_type != "application/json" {
        return Err(format!("send content-type {content_type:?}"));
    }
    let body: Value =
        serde_json::from_slice(&req.body).map_err(|e| format!("body is not JSON: {e}"))?;
    let registration_token = body
        .pointer("/message/token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("message.token is not a non-empty string")?;
    let ttl = body
        .pointer("/message/android/ttl")
        .and_then(Value::as_str)
        .ok_or("message.android.ttl is not a string")?;
    let ttl_ok = ttl
        .strip_suffix('s')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !ttl_ok {
        return Err(format!(
            "message.android.ttl {ttl:?} is not whole seconds like \"3600s\""
        ));
    }
    let expected = json!({"message": {
        "token": registration_token,
        "data": {"rossby": "fetch"},
        "android": {"priority": "HIGH", "ttl": ttl, "collapse_key": COLLAPSE_KEY},
        "apns": {
            "headers": {"apns-priority": "5", "apns-push-type": "background"},
            "payload": {"aps": {"content-available": 1}},
        },
    }});
    if body != expected {
        return Err(format!(
            "message {body} is not exactly the data-only wake-up {expected}"
        ));
    }
    Ok(registration_token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn key() -> ring::signature::RsaKeyPair {
        let der = jwt::pem_der(TEST_KEY_PEM, "PRIVATE KEY").unwrap();
        ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap()
    }

    fn assertion(header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let key = key();
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn good_claims(server: &FcmServer) -> (Value, Value) {
        let now = jwt::now_secs();
        (
            json!({"alg": "RS256", "typ": "JWT", "kid": TEST_PRIVATE_KEY_ID}),
            json!({"iss": TEST_CLIENT_EMAIL, "scope": SCOPE, "aud": server.token_url(),
                   "iat": now, "exp": now + 3600}),
        )
    }

    async fn exchange(server: &FcmServer, body: String) -> (u16, Value) {
        let answer = crate::test_client()
            .build()
            .unwrap()
            .post(server.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        (
            status,
            serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap_or_default(),
        )
    }

    fn form(assertion: &str) -> String {
        format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        )
    }

    fn message() -> Value {
        json!({"message": {
            "token": "reg-token",
            "data": {"rossby": "fetch"},
            "android": {"priority": "HIGH", "ttl": "60s", "collapse_key": "rossby-wake"},
            "apns": {
                "headers": {"apns-priority": "5", "apns-push-type": "background"},
                "payload": {"aps": {"content-available": 1}},
            },
        }})
    }

    async fn send(server: &FcmServer, access: &str, body: &Value) -> u16 {
        crate::test_client()
            .build()
            .unwrap()
            .post(format!(
                "{}/v1/projects/{TEST_PROJECT_ID}/messages:send",
                server.url()
            ))
            .header("authorization", format!("Bearer {access}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn token(server: &FcmServer) -> String {
        let (header, claims) = good_claims(server);
        let (status, answer) = exchange(server, form(&assertion(&header, &claims))).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["token_type"], "Bearer");
        answer["access_token"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn accepts_a_correct_exchange_and_send() {
        let server = FcmServer::start_for_test_account().await.unwrap();
        let access = token(&server).await;
        assert_eq!(send(&server, &access, &message()).await, 200);
        assert_eq!(server.problems(), Vec::<String>::new());
        assert_eq!(server.token_exchanges(), 1);
        assert_eq!(server.delivered(), vec!["reg-token".to_string()]);
    }

    #[tokio::test]
    async fn flags_every_deviating_exchange() {
        let server = FcmServer::start_for_test_account().await.unwrap();
        let (header, claims) = good_claims(&server);
        let mut cases: Vec<(&str, String)> = Vec::new();
        let spoil = |key: &str, value: Value| {
            let mut c = claims.clone();
            c[key] = value;
            form(&assertion(&header, &c))
        };
        cases.push((
            "scope",
            spoil(
                "scope",
                json!("https://www.googleapis.com/auth/cloud-platform"),
            ),
        ));
        cases.push((
            "aud",
            spoil("aud", json!("https://oauth2.googleapis.com/token")),
        ));
        cases.push(("iss", spoil("iss", json!("x@example.com"))));
        cases.push(("exp", spoil("exp", json!(jwt::now_secs() + 7200))));
        cases.push(("iat", spoil("iat", json!(jwt::now_secs() - 3600))));
        let mut h = header.clone();
        h["alg"] = json!("HS256");
        cases.push(("alg", form(&assertion(&h, &claims))));
        cases.push((
            "grant_type",
            format!(
                "grant_type=client_credentials&assertion={}",
                assertion(&header, &claims)
            ),
        ));
        let mut sig = assertion(&header, &claims);
        sig.truncate(sig.len() - 4);
        sig.push_str("AAAA");
        cases.push(("signature", form(&sig)));
        for (i, (what, body)) in cases.into_iter().enumerate() {
            let (status, _) = exchange(&server, body).await;
            assert_eq!(status, 400, "{what}");
            let problems = server.problems();
            assert_eq!(problems.len(), i + 1, "{what}");
            assert!(problems[i].contains(what), "{what}: {}", problems[i]);
        }
    }

    #[tokio::test]
    async fn flags_every_deviating_send() {
        let server = FcmServer::start_for_test_account().await.unwrap();
        let access = token(&server).await;
        let mut cases: Vec<(&str, String, Value)> =
            vec![("unknown bearer", "ya29.made-up".into(), message())];
        let mut m = message();
        m["message"]["data"]["from"] = json!("alice");
        cases.push(("extra data", access.clone(), m));
        let mut m = message();
        m["message"]["notification"] = json!({"title": "hi"});
        cases.push(("notification", access.clone(), m));
        let mut m = message();
        m["message"]["android"]["priority"] = json!("NORMAL");
        cases.push(("normal priority", access.clone(), m));
        let mut m = message();
        m["message"]["android"]["ttl"] = json!("1.5s");
        cases.push(("fractional ttl", access.clone(), m));
        for (i, (what, bearer, body)) in cases.into_iter().enumerate() {
            assert_eq!(send(&server, &bearer, &body).await, 400, "{what}");
            assert_eq!(server.problems().len(), i + 1, "{what}");
        }
        assert!(server.delivered().is_empty());

        server.set_expires_in(0);
        let expired = token(&server).await;
        assert_eq!(send(&server, &expired, &message()).await, 400);
        assert!(server.problems().last().unwrap().contains("expired"));
    }

    #[tokio::test]
    async fn scripts_answer_their_own_endpoint() {
        let server = FcmServer::start_for_test_account().await.unwrap();
        server.script_send([unregistered()]);
        // The scripted send error does not answer the token request.
        let access = token(&server).await;
        assert_eq!(send(&server, &access, &message()).await, 404);
        assert_eq!(send(&server, &access, &message()).await, 200);
        server.script_token([Answer::status(503)]);
        let (header, claims) = good_claims(&server);
        let (status, _) = exchange(&server, form(&assertion(&header, &claims))).await;
        assert_eq!(status, 503);
        assert_eq!(server.token_exchanges(), 2);
        assert_eq!(server.sends().len(), 2);
        assert_eq!(server.delivered().len(), 1);
        assert_eq!(server.problems(), Vec::<String>::new());
    }
}
