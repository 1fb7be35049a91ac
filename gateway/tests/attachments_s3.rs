//! Attachments through a real gateway on loopback whose object store is a real
//! S3 API server on loopback: moto's `moto_server` (`pip install 'moto[server]'`),
//! started by the test on a free port, with its bucket created first. The
//! executable is `$ROSSBY_MOTO_SERVER`, else `moto_server` on `PATH`; without
//! either the test prints `skipped: moto_server not found (pip install
//! 'moto[server]')` and passes (CI installs moto, so there it runs).

mod attachment_flow;
mod support;

use rossby_gateway::blobstore::{BlobStore, BlobStoreConfig};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "rossby-blobs";

/// The moto server executable, if there is one.
fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ROSSBY_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("moto_server"))
        .find(|candidate| candidate.is_file())
}

/// The server process, stopped when dropped (a failing test included).
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto(executable: &PathBuf) -> Moto {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(executable)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", executable.display()));
    let moto = Moto {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(moto.addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not start listening"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    moto
}

/// Creates the bucket with a plain `PUT /<bucket>` (moto does not check
/// signatures).
fn create_bucket(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).expect("connect to moto");
    write!(
        stream,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the reply");
    assert!(
        reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_on_s3_via_moto() {
    let Some(executable) = moto_server() else {
        println!("skipped: moto_server not found (pip install 'moto[server]')");
        return;
    };
    let moto = start_moto(&executable);
    create_bucket(moto.addr);
    // moto accepts any credentials; these keep the S3 client from asking an
    // instance metadata service. This binary has one test, so no other test
    // reads the environment meanwhile.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "rossby-test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "rossby-test");
    }
    let config = BlobStoreConfig::S3 {
        bucket: BUCKET.into(),
        prefix: "attachments".into(),
        endpoint: Some(format!("http://{}", moto.addr)),
        region: Some("us-east-1".into()),
        allow_http: true,
    };
    let tamper: attachment_flow::Tamper =
        Box::new(|objects: &BlobStore, blob_id: &[u8], index: u32| {
            // Rewrite the object in the bucket with one byte changed.
            let objects = objects.clone();
            let blob_id = blob_id.to_vec();
            Box::pin(async move {
                let part = objects
                    .get_part(&blob_id, index)
                    .await
                    .expect("get")
                    .expect("the part is stored");
                let mut bytes = part.to_vec();
                bytes[100] ^= 0x01;
                objects
                    .put_part(&blob_id, index, bytes.into())
                    .await
                    .expect("put");
            })
        });
    let dir = tempfile::tempdir().unwrap();
    attachment_flow::run(dir.path(), config, tamper).await;
    drop(moto);
}
