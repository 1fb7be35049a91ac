//! The connection layer against a tiny in-test QUIC server (no gateway): TLS
//! pinning, framing, Hawk signatures bound to the connection's exporter,
//! retries with identical bodies, reconnects, clock-skew correction and pushes.

use prost::Message;
use rossby_client::Error;
use rossby_client::connection::{Connection, GatewayConfig, RetryPolicy};
use rossby_protocol::framing;
use rossby_protocol::hawk::{
    Authorization, DeviceCredentials, EXPORTER_LABEL, Rejection, ServiceName, SignedRequest,
};
use rossby_protocol::pb::{self, Method};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const KEY: [u8; 32] = [0x42; 32];

fn creds() -> DeviceCredentials {
    DeviceCredentials {
        id: "box.device.1".into(),
        key: KEY,
    }
}

/// What the server does with the next authenticated request.
#[derive(Clone, Copy, Debug)]
enum Action {
    Answer(pb::Status),
    RateLimited(u64),
    CloseConnection,
}

#[derive(Default)]
struct Log {
    /// (body, nonce, connection id) of every verified request.
    requests: Vec<(Vec<u8>, String, usize)>,
    script: VecDeque<Action>,
}

struct Server {
    addr: SocketAddr,
    cert: Vec<u8>,
    log: Arc<Mutex<Log>>,
}

fn service() -> ServiceName {
    "chat.test:7400".parse().unwrap()
}

fn start(clock_ahead: Duration, script: Vec<Action>) -> Server {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert_der.clone().into()], key.into())
    .unwrap();
    tls.alpn_protocols = vec![rossby_protocol::ALPN.to_vec()];
    let config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap(),
    ));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Log {
        requests: Vec::new(),
        script: script.into(),
    }));
    let server_log = log.clone();
    tokio::spawn(async move {
        let mut conn_id = 0usize;
        while let Some(incoming) = endpoint.accept().await {
            conn_id += 1;
            let log = server_log.clone();
            let id = conn_id;
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let mut exporter = [0u8; 32];
                conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
                    .unwrap();
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let conn = conn.clone();
                    let log = log.clone();
                    tokio::spawn(handle(conn, send, recv, exporter, id, log, clock_ahead));
                }
            });
        }
    });
    Server {
        addr,
        cert: cert_der,
        log,
    }
}

async fn handle(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    exporter: [u8; 32],
    conn_id: usize,
    log: Arc<Mutex<Log>>,
    clock_ahead: Duration,
) {
    let bytes = recv.read_to_end(1 << 20).await.unwrap();
    let request: pb::Request = framing::decode_one(&bytes, 1 << 20, "request").unwrap();
    let method = Method::try_from(request.method).unwrap();
    let now = SystemTime::now() + clock_ahead;
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let reply = |status: pb::Status, body: Vec<u8>| pb::Response {
        status: status as i32,
        body,
        server_time_ms: now_ms,
        ..pb::Response::default()
    };
    let response = if method == Method::Ping {
        reply(
            pb::Status::Ok,
            pb::PingResponse {
                server_time_ms: now_ms,
                region: 3,
                sender_certificate_keys: Vec::new(),
                service_name: service().to_string(),
            }
            .encode_to_vec(),
        )
    } else {
        let auth = Authorization::parse(&request.authorization).unwrap();
        let signed = SignedRequest {
            service: &service(),
            method,
            body: &request.body,
            exporter: &exporter,
        };
        match auth.verify(&signed, &KEY, now, Duration::from_secs(60)) {
            Err(Rejection::ClockSkew) => reply(pb::Status::ClockSkew, Vec::new()),
            Err(other) => {
                let mut r = reply(pb::Status::Unauthenticated, Vec::new());
                r.message = other.to_string();
                r
            }
            Ok(()) => {
                let action = {
                    let mut log = log.lock().unwrap();
                    log.requests
                        .push((request.body.clone(), auth.nonce.clone(), conn_id));
                    log.script.pop_front()
                };
                match action {
                    Some(Action::CloseConnection) => {
                        conn.close(0u32.into(), b"test drop");
                        return;
                    }
                    Some(Action::RateLimited(ms)) => {
                        let mut r = reply(pb::Status::RateLimited, Vec::new());
                        r.retry_after_ms = ms;
                        r
                    }
                    Some(Action::Answer(status)) => reply(status, Vec::new()),
                    None if method == Method::Subscribe => {
                        let mut push = conn.open_uni().await.unwrap();
                        for last_seq in [5u64, 6] {
                            let p = pb::Push {
                                event: Some(pb::push::Event::Messages(pb::MessagesAvailable {
                                    last_seq,
                                })),
                            };
                            push.write_all(&framing::encode(&p)).await.unwrap();
                        }
                        reply(pb::Status::Ok, pb::SubscribeResponse {}.encode_to_vec())
                    }
                    None => {
                        let ack = pb::AckRequest::decode(request.body.as_slice()).unwrap();
                        reply(
                            pb::Status::Ok,
                            pb::AckResponse { acked: ack.up_to }.encode_to_vec(),
                        )
                    }
                }
            }
        }
    };
    let _ = send.write_all(&framing::encode(&response)).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

fn connect(server: &Server, cert: Option<Vec<u8>>) -> Connection {
    Connection::new(GatewayConfig {
        addr: server.addr,
        // The self-signed certificate names only localhost: the exact pin is
        // accepted whatever name is dialled.
        server_name: "127.0.0.1".into(),
        ca_cert_der: cert,
        service: service(),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(2),
            ..RetryPolicy::default()
        },
    })
    .unwrap()
}

async fn ack(conn: &Connection, up_to: u64) -> Result<pb::AckResponse, Error> {
    let body = conn
        .call_ok(
            Method::Ack,
            &pb::AckRequest { up_to }.encode_to_vec(),
            Some(&creds()),
            Duration::ZERO,
        )
        .await?;
    Ok(pb::AckResponse::decode(body.as_slice()).unwrap())
}

#[tokio::test]
async fn ping_and_signed_requests_over_a_pinned_certificate() {
    let server = start(Duration::ZERO, vec![]);
    let conn = connect(&server, Some(server.cert.clone()));
    let pong = conn
        .call_ok(Method::Ping, &[], None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(pb::PingResponse::decode(pong.as_slice()).unwrap().region, 3);
    assert_eq!(ack(&conn, 7).await.unwrap().acked, 7);
    assert_eq!(ack(&conn, 8).await.unwrap().acked, 8);
    let log = server.log.lock().unwrap();
    assert_eq!(log.requests.len(), 2);
    assert_ne!(log.requests[0].1, log.requests[1].1, "nonces are fresh");
    assert_eq!(
        log.requests[0].2, log.requests[1].2,
        "one connection is reused"
    );
}

#[tokio::test]
async fn retryable_failures_are_retried_with_the_same_body_on_new_connections() {
    let server = start(
        Duration::ZERO,
        vec![
            Action::Answer(pb::Status::Unavailable),
            Action::CloseConnection,
            Action::Answer(pb::Status::Draining),
            Action::RateLimited(20),
            Action::Answer(pb::Status::Undetermined),
        ],
    );
    let conn = connect(&server, Some(server.cert.clone()));
    assert_eq!(ack(&conn, 42).await.unwrap().acked, 42);
    let log = server.log.lock().unwrap();
    assert_eq!(log.requests.len(), 6);
    let body = &log.requests[0].0;
    assert!(
        log.requests.iter().all(|(b, _, _)| b == body),
        "every retry sends the same body"
    );
    let nonces: std::collections::HashSet<_> = log.requests.iter().map(|r| &r.1).collect();
    assert_eq!(nonces.len(), 6, "every attempt is signed afresh");
    // The dropped connection and the draining answer each led to a new connection,
    // and the signatures verified against each new connection's exporter.
    let connections: std::collections::HashSet<_> = log.requests.iter().map(|r| r.2).collect();
    assert_eq!(connections.len(), 3, "{connections:?}");
}

#[tokio::test]
async fn attempts_run_out_and_long_rate_limits_are_reported() {
    let server = start(Duration::ZERO, vec![Action::RateLimited(3_600_000)]);
    let conn = connect(&server, Some(server.cert.clone()));
    let err = ack(&conn, 1).await.unwrap_err();
    assert_eq!(err.status(), Some(pb::Status::RateLimited), "{err}");

    let server = start(
        Duration::ZERO,
        vec![Action::Answer(pb::Status::Unavailable); 10],
    );
    let conn = connect(&server, Some(server.cert.clone()));
    let err = ack(&conn, 1).await.unwrap_err();
    assert_eq!(err.status(), Some(pb::Status::Unavailable), "{err}");
    assert_eq!(
        server.log.lock().unwrap().requests.len(),
        RetryPolicy::default().max_attempts as usize
    );

    // Non-retryable statuses are not retried.
    let server = start(Duration::ZERO, vec![Action::Answer(pb::Status::Forbidden)]);
    let conn = connect(&server, Some(server.cert.clone()));
    assert_eq!(
        ack(&conn, 1).await.unwrap_err().status(),
        Some(pb::Status::Forbidden)
    );
    assert_eq!(server.log.lock().unwrap().requests.len(), 1);
}

#[tokio::test]
async fn clock_skew_is_corrected_from_the_server_time() {
    let server = start(Duration::from_secs(3600), vec![]);
    let conn = connect(&server, Some(server.cert.clone()));
    assert_eq!(ack(&conn, 3).await.unwrap().acked, 3);
    let offset = conn.clock_offset_ms();
    assert!((3_590_000..=3_610_000).contains(&offset), "{offset}");
    assert_eq!(server.log.lock().unwrap().requests.len(), 1);
}

#[tokio::test]
async fn a_different_certificate_is_refused_without_retrying() {
    let server = start(Duration::ZERO, vec![]);
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let conn = connect(&server, Some(other.cert.der().to_vec()));
    let started = std::time::Instant::now();
    let err = conn
        .call_ok(Method::Ping, &[], None, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // No pin and no public root for a self-signed certificate: refused too.
    let conn = connect(&server, None);
    assert!(
        conn.call_ok(Method::Ping, &[], None, Duration::ZERO)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_unreachable_gateway_fails_with_one_line() {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let conn = Connection::new(GatewayConfig {
        addr,
        server_name: "localhost".into(),
        ca_cert_der: None,
        service: service(),
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            connect_timeout: Duration::from_millis(300),
            ..RetryPolicy::default()
        },
    })
    .unwrap();
    let err = conn
        .call_ok(Method::Ping, &[], None, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(!err.to_string().contains('\n'));
}

#[tokio::test]
async fn pushes_arrive_on_the_subscription() {
    let server = start(Duration::ZERO, vec![]);
    let conn = connect(&server, Some(server.cert.clone()));
    let mut sub = conn.subscribe(&creds()).await.unwrap();
    for expected in [5u64, 6] {
        let push = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match push.event {
            Some(pb::push::Event::Messages(m)) => assert_eq!(m.last_seq, expected),
            other => panic!("{other:?}"),
        }
    }
}
