//! A browser and its Web Push service in one: [`WebPushService::subscribe`]
//! makes a subscription as a browser's `pushManager.subscribe` does (a real
//! P-256 key pair and authentication secret), and the service checks every push
//! request exactly (RFC 8030 headers, RFC 8292 VAPID with the configured key and
//! subject), then decrypts the body with the subscription's private key as the
//! browser would (RFC 8291, RFC 8188) and keeps the plaintext.

use crate::{Answer, Recorded, Recorder};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::rand_core::OsRng;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The largest body a push service must accept (RFC 8291 §4); larger ones are
/// answered 413.
pub const MAX_BODY: usize = 4096;
/// The longest a VAPID JWT may be valid for (RFC 8292 §2).
const MAX_TOKEN_LIFETIME: u64 = 24 * 3600;

/// A push subscription, as a browser hands it to the web app (`endpoint` and
/// `keys` of `PushSubscription.toJSON()`).
#[derive(Clone, Debug)]
pub struct Subscription {
    /// `http://127.0.0.1:PORT/push/<random id>`.
    pub endpoint: String,
    /// The subscription's public key, uncompressed.
    pub p256dh: [u8; 65],
    /// The authentication secret.
    pub auth: [u8; 16],
    /// `p256dh`, base64url without padding (as in `toJSON()`).
    pub p256dh_b64: String,
    /// `auth`, base64url without padding.
    pub auth_b64: String,
    id: String,
}

struct Browser {
    secret: SecretKey,
    public: [u8; 65],
    auth: [u8; 16],
    expired: bool,
    messages: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Shared {
    /// `http://127.0.0.1:PORT`, the audience VAPID tokens must name.
    origin: String,
    subscriptions: HashMap<String, Browser>,
    script: VecDeque<Answer>,
}

/// What the service requires of VAPID tokens.
struct Vapid {
    key: VerifyingKey,
    raw: [u8; 65],
    subject: String,
}

/// A local push service with its browser. Dropping it stops it.
pub struct WebPushService {
    recorder: Recorder,
    shared: Arc<Mutex<Shared>>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl WebPushService {
    /// Starts a service that accepts pushes signed by the VAPID key
    /// `vapid_public_key` (uncompressed point) naming `subject`.
    pub async fn start(
        vapid_public_key: [u8; 65],
        subject: &str,
    ) -> std::io::Result<WebPushService> {
        let key = VerifyingKey::from_sec1_bytes(&vapid_public_key).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the VAPID public key is not a P-256 point",
            )
        })?;
        let vapid = Vapid {
            key,
            raw: vapid_public_key,
            subject: subject.to_string(),
        };
        let shared = Arc::new(Mutex::new(Shared::default()));
        let handler_shared = shared.clone();
        let recorder = Recorder::start(Arc::new(move |req: &Recorded| {
            handle(&handler_shared, &vapid, req)
        }))
        .await?;
        lock(&shared).origin = recorder.url();
        Ok(WebPushService { recorder, shared })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.recorder.url()
    }

    /// The bound address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.recorder.addr()
    }

    /// A new subscription, as `pushManager.subscribe` makes it.
    pub fn subscribe(&self) -> Subscription {
        let secret = SecretKey::random(&mut OsRng);
        let mut public = [0u8; 65];
        public.copy_from_slice(secret.public_key().to_encoded_point(false).as_bytes());
        let auth: [u8; 16] = rand::random();
        let id = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        lock(&self.shared).subscriptions.insert(
            id.clone(),
            Browser {
                secret,
                public,
                auth,
                expired: false,
                messages: Vec::new(),
            },
        );
        Subscription {
            endpoint: format!("{}/push/{id}", self.recorder.url()),
            p256dh: public,
            auth,
            p256dh_b64: URL_SAFE_NO_PAD.encode(public),
            auth_b64: URL_SAFE_NO_PAD.encode(auth),
            id,
        }
    }

    /// Ends `sub` as when the user revokes permission: pushes to it are
    /// answered 410 Gone.
    pub fn expire(&self, sub: &Subscription) {
        if let Some(browser) = lock(&self.shared).subscriptions.get_mut(&sub.id) {
            browser.expired = true;
        }
    }

    /// The plaintexts delivered to `sub` (pushes answered 2xx), in order.
    pub fn messages(&self, sub: &Subscription) -> Vec<Vec<u8>> {
        lock(&self.shared)
            .subscriptions
            .get(&sub.id)
            .map(|b| b.messages.clone())
            .unwrap_or_default()
    }

    /// Answers the next correct pushes to live subscriptions with these (in
    /// order) instead of 201 Created. A push failing its checks, or to an
    /// unknown or expired subscription, does not use one up.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        lock(&self.shared).script.extend(answers);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorder.requests()
    }

    /// Every check that failed so far (empty when every request was exactly
    /// right).
    pub fn problems(&self) -> Vec<String> {
        self.recorder.problems()
    }

    /// Waits until at least `n` requests arrived or `timeout` passed; returns
    /// how many arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        self.recorder.wait_for(n, timeout).await
    }
}

/// Checks one request and picks its answer; `Err` is a problem (answered 400).
fn handle(shared: &Mutex<Shared>, vapid: &Vapid, req: &Recorded) -> Result<Answer, String> {
    if req.method != "POST" {
        return Err(format!("method {} (push requests are POST)", req.method));
    }
    check_headers(req)?;
    let origin = lock(shared).origin.clone();
    check_vapid(req.header("authorization"), vapid, &origin, unix_now())?;
    if req.body.len() > MAX_BODY {
        return Ok(Answer::status(413));
    }
    let mut state = lock(shared);
    let id = req.path.strip_prefix("/push/").unwrap_or_default();
    // As a push service does: a subscription it does not know is 404, one
    // that ended is 410.
    let Some(browser) = state.subscriptions.get(id) else {
        return Ok(Answer::status(404));
    };
    if browser.expired {
        return Ok(Answer::status(410));
    }
    let plaintext = decrypt(&req.body, &browser.secret, &browser.public, &browser.auth)?;
    let answer = state.script.pop_front().unwrap_or_else(|| {
        Answer::status(201).with_header(
            "location",
            &format!(
                "/message/{}",
                URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>())
            ),
        )
    });
    if (200..300).contains(&answer.status)
        && let Some(browser) = state.subscriptions.get_mut(id)
    {
        browser.messages.push(plaintext);
    }
    Ok(answer)
}

/// The RFC 8030 headers and the content coding.
fn check_headers(req: &Recorded) -> Result<(), String> {
    let ttl = req.header("ttl").ok_or("no TTL header")?;
    if ttl.is_empty() || !ttl.bytes().all(|b| b.is_ascii_digit()) || ttl.parse::<u64>().is_err() {
        return Err(format!("TTL {ttl:?} is not a number of seconds"));
    }
    let urgency = req.header("urgency").ok_or("no Urgency header")?;
    if !["very-low", "low", "normal", "high"].contains(&urgency) {
        return Err(format!(
            "Urgency {urgency:?} is not very-low, low, normal or high"
        ));
    }
    // RFC 8030 §5.4: at most 32 characters of the base64url alphabet.
    if let Some(topic) = req.header("topic")
        && (topic.is_empty()
            || topic.len() > 32
            || !topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(format!(
            "Topic {topic:?} is not 1 to 32 base64url characters"
        ));
    }
    match req.header("content-encoding") {
        Some("aes128gcm") => Ok(()),
        other => Err(format!("Content-Encoding {other:?} (must be aes128gcm)")),
    }
}

/// Checks `Authorization: vapid t=<JWT>, k=<key>` (RFC 8292 §3).
fn check_vapid(header: Option<&str>, vapid: &Vapid, origin: &str, now: u64) -> Result<(), String> {
    let header = header.ok_or("no Authorization header")?;
    let (scheme, params) = header
        .split_once(' ')
        .ok_or("Authorization is not `vapid t=..., k=...`")?;
    if !scheme.eq_ignore_ascii_case("vapid") {
        return Err(format!("Authorization scheme {scheme:?} (must be vapid)"));
    }
    let (mut token, mut key) = (None, None);
    for param in params.split(',') {
        let (name, value) = param
            .trim()
            .split_once('=')
            .ok_or("Authorization parameters are not name=value")?;
        let slot = match name.trim() {
            "t" => &mut token,
            "k" => &mut key,
            other => return Err(format!("unknown Authorization parameter {other:?}")),
        };
        if slot.replace(value.trim()).is_some() {
            return Err(format!("Authorization parameter {name} given twice"));
        }
    }
    let key = key.ok_or("no k= in Authorization")?;
    let token = token.ok_or("no t= in Authorization")?;
    if URL_SAFE_NO_PAD.decode(key).ok().as_deref() != Some(&vapid.raw[..]) {
        return Err("k= is not the application server key (base64url, no padding)".into());
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts[..] else {
        return Err("the VAPID token is not a compact JWT".into());
    };
    let json = |part: &str, what: &str| -> Result<serde_json::Value, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| format!("the JWT {what} is not base64url"))?;
        serde_json::from_slice(&bytes).map_err(|_| format!("the JWT {what} is not JSON"))
    };
    let jwt_header = json(header_b64, "header")?;
    if jwt_header["alg"] != "ES256" {
        return Err(format!("JWT alg {} (must be ES256)", jwt_header["alg"]));
    }
    if !jwt_header["typ"].is_null() && jwt_header["typ"] != "JWT" {
        return Err(format!("JWT typ {} (must be JWT)", jwt_header["typ"]));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .ok()
        .and_then(|s| Signature::from_slice(&s).ok())
        .ok_or("the JWT signature is not 64 bytes of base64url")?;
    vapid
        .key
        .verify(format!("{header_b64}.{claims_b64}").as_bytes(), &signature)
        .map_err(|_| "the JWT signature does not verify with the VAPID key")?;
    let claims = json(claims_b64, "claims")?;
    if claims["aud"] != origin {
        return Err(format!("JWT aud {} (must be {origin:?})", claims["aud"]));
    }
    let exp = claims["exp"].as_u64().ok_or("JWT exp is not a number")?;
    if exp <= now {
        return Err(format!("JWT exp {exp} has passed (now {now})"));
    }
    if exp > now + MAX_TOKEN_LIFETIME {
        return Err(format!(
            "JWT exp {exp} is more than 24 hours ahead (now {now})"
        ));
    }
    if claims["sub"] != vapid.subject.as_str() {
        return Err(format!(
            "JWT sub {} (must be {:?})",
            claims["sub"], vapid.subject
        ));
    }
    Ok(())
}

/// Decrypts a push message as the browser does (RFC 8291 §3.4, RFC 8188 §2).
fn decrypt(
    body: &[u8],
    ua_secret: &SecretKey,
    ua_public: &[u8; 65],
    auth: &[u8; 16],
) -> Result<Vec<u8>, String> {
    if body.len() < 21 {
        return Err(format!(
            "the body ({} bytes) has no aes128gcm header",
            body.len()
        ));
    }
    let salt = &body[..16];
    let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
    let idlen = body[20] as usize;
    if idlen != 65 {
        return Err(format!(
            "keyid is {idlen} bytes (must be the 65-byte sender key)"
        ));
    }
    if rs < 18 {
        return Err(format!("record size {rs} is below the minimum 18"));
    }
    let Some(as_public) = body.get(21..86) else {
        return Err("the body ends inside the keyid".into());
    };
    let ciphertext = &body[86..];
    if ciphertext.len() > rs {
        return Err(format!(
            "the content ({} bytes) is more than one {rs}-byte record",
            ciphertext.len()
        ));
    }
    let as_key = PublicKey::from_sec1_bytes(as_public)
        .map_err(|_| "the keyid is not a P-256 public key".to_string())?;
    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), as_key.as_affine());
    let mut key_info = Vec::with_capacity(144);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    let content = Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map(|()| Hkdf::<Sha256>::new(Some(salt), &ikm))
        .map_err(|_| "HKDF failed".to_string())?;
    content
        .expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .and_then(|()| content.expand(b"Content-Encoding: nonce\0", &mut nonce))
        .map_err(|_| "HKDF failed".to_string())?;
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|_| "bad key length".to_string())?;
    let mut record = cipher
        .decrypt(Nonce::from_slice(&nonce), ciphertext)
        .map_err(|_| "the record does not decrypt (wrong keys, or tampered)".to_string())?;
    // Padding is zeros after the delimiter; the last record's delimiter is 2.
    let Some(end) = record.iter().rposition(|&b| b != 0) else {
        return Err("the record has no padding delimiter".into());
    };
    if record[end] != 2 {
        return Err(format!(
            "padding delimiter {} (the last record's must be 2)",
            record[end]
        ));
    }
    record.truncate(end);
    Ok(record)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    #[test]
    fn the_rfc8291_example_decrypts_as_a_browser_would() {
        // RFC 8291 Appendix A.
        let ua_secret =
            SecretKey::from_slice(&b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")).unwrap();
        let ua_public: [u8; 65] = ua_secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .try_into()
            .unwrap();
        let auth: [u8; 16] = b64("BTBZMqHH6r4Tts7J_aSIgg").try_into().unwrap();
        let body = b64(
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
        );
        assert_eq!(
            decrypt(&body, &ua_secret, &ua_public, &auth).unwrap(),
            b"When I grow up, I want to be a watermelon"
        );
        let mut tampered = body.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(decrypt(&tampered, &ua_secret, &ua_public, &auth).is_err());
        let mut wrong_auth = auth;
        wrong_auth[0] ^= 1;
        assert!(decrypt(&body, &ua_secret, &ua_public, &wrong_auth).is_err());
        let mut small_rs = body.clone();
        small_rs[16..20].copy_from_slice(&40u32.to_be_bytes());
        assert!(
            decrypt(&small_rs, &ua_secret, &ua_public, &auth)
                .unwrap_err()
                .contains("more than one")
        );
        assert!(decrypt(&body[..50], &ua_secret, &ua_public, &auth).is_err());
    }

    fn token(key: &SigningKey, header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    #[test]
    fn vapid_tokens_are_checked_exactly() {
        let signing = SigningKey::random(&mut OsRng);
        let raw: [u8; 65] = signing
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .try_into()
            .unwrap();
        let vapid = Vapid {
            key: *signing.verifying_key(),
            raw,
            subject: "mailto:ops@example.com".into(),
        };
        let origin = "http://127.0.0.1:1";
        let now = 1_700_000_000;
        let k = URL_SAFE_NO_PAD.encode(raw);
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256"});
        let claims = |aud: &str, exp: u64, sub: &str| serde_json::json!({"aud": aud, "exp": exp, "sub": sub});
        let good = token(
            &signing,
            header.clone(),
            claims(origin, now + 3600, "mailto:ops@example.com"),
        );
        let check = |value: String| check_vapid(Some(&value), &vapid, origin, now);
        assert_eq!(check(format!("vapid t={good}, k={k}")), Ok(()));
        assert_eq!(check(format!("vapid k={k},t={good}")), Ok(()));

        let other = SigningKey::random(&mut OsRng);
        let forged = token(
            &other,
            header.clone(),
            claims(origin, now + 3600, "mailto:ops@example.com"),
        );
        for (value, needle) in [
            (format!("WebPush {good}"), "scheme"),
            (format!("vapid t={good}"), "no k="),
            (
                format!(
                    "vapid t={good}, k={}",
                    URL_SAFE_NO_PAD
                        .encode(other.verifying_key().to_encoded_point(false).as_bytes())
                ),
                "application server key",
            ),
            (format!("vapid t={forged}, k={k}"), "does not verify"),
            (
                format!(
                    "vapid t={}, k={k}",
                    token(
                        &signing,
                        serde_json::json!({"alg": "HS256"}),
                        claims(origin, now + 60, "mailto:ops@example.com")
                    )
                ),
                "alg",
            ),
            (
                format!(
                    "vapid t={}, k={k}",
                    token(
                        &signing,
                        header.clone(),
                        claims("http://127.0.0.1:2", now + 60, "mailto:ops@example.com")
                    )
                ),
                "aud",
            ),
            (
                format!(
                    "vapid t={}, k={k}",
                    token(
                        &signing,
                        header.clone(),
                        claims(origin, now, "mailto:ops@example.com")
                    )
                ),
                "passed",
            ),
            (
                format!(
                    "vapid t={}, k={k}",
                    token(
                        &signing,
                        header.clone(),
                        claims(origin, now + 24 * 3600 + 1, "mailto:ops@example.com")
                    )
                ),
                "24 hours",
            ),
            (
                format!(
                    "vapid t={}, k={k}",
                    token(
                        &signing,
                        header.clone(),
                        claims(origin, now + 60, "mailto:x@example.com")
                    )
                ),
                "sub",
            ),
        ] {
            let problem = check(value.clone()).unwrap_err();
            assert!(problem.contains(needle), "{value}: {problem}");
        }
        assert!(check_vapid(None, &vapid, origin, now).is_err());
    }

    #[tokio::test]
    async fn unknown_and_expired_subscriptions_and_bad_requests() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let signing = SigningKey::random(&mut OsRng);
        let raw: [u8; 65] = signing
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .try_into()
            .unwrap();
        let service = WebPushService::start(raw, "mailto:ops@example.com")
            .await
            .unwrap();
        let sub = service.subscribe();
        assert!(
            sub.endpoint
                .starts_with(&format!("{}/push/", service.url()))
        );
        assert_eq!(b64(&sub.p256dh_b64), sub.p256dh);
        assert_eq!(b64(&sub.auth_b64), sub.auth);
        assert!(PublicKey::from_sec1_bytes(&sub.p256dh).is_ok());

        let k = URL_SAFE_NO_PAD.encode(raw);
        let jwt = token(
            &signing,
            serde_json::json!({"typ": "JWT", "alg": "ES256"}),
            serde_json::json!({"aud": service.url(), "exp": unix_now() + 600, "sub": "mailto:ops@example.com"}),
        );
        let post = |path: String, auth: bool| {
            let addr = service.recorder.addr();
            let headers = if auth {
                format!(
                    "TTL: 60\r\nUrgency: high\r\nContent-Encoding: aes128gcm\r\nAuthorization: vapid t={jwt}, k={k}\r\n"
                )
            } else {
                "TTL: 60\r\n".to_string()
            };
            async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let request = format!(
                    "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut answer = String::new();
                stream.read_to_string(&mut answer).await.unwrap();
                answer.split(' ').nth(1).unwrap().parse::<u16>().unwrap()
            }
        };
        assert_eq!(post("/push/nobody".into(), true).await, 404);
        assert!(service.problems().is_empty(), "{:?}", service.problems());
        service.expire(&sub);
        assert_eq!(post(format!("/push/{}", sub.id), true).await, 410);
        assert!(service.problems().is_empty(), "{:?}", service.problems());
        assert_eq!(post(format!("/push/{}", sub.id), false).await, 400);
        assert_eq!(service.problems().len(), 1);
        assert!(
            service.problems()[0].contains("Urgency"),
            "{:?}",
            service.problems()
        );
        assert_eq!(service.wait_for(3, Duration::from_secs(1)).await, 3);
        assert!(service.messages(&sub).is_empty());
    }
}
