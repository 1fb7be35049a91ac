//! Attachment throughput: `cargo bench -p rossby-gateway --bench attachments`.
//!
//! One gateway is started in this process on loopback (durable fjall store and
//! the default object store, a directory next to it, both in a temporary
//! directory under the build's `target/tmp`, so on the same disk as the file),
//! and one SDK client uploads a large file as an attachment (encrypting it in
//! chunks, parts in flight over QUIC), then downloads it (checking every chunk
//! and the digest). Beside them, a plain copy of the same file on the same disk
//! (read and write in 1 MiB blocks) is the physical bound. Client and gateway
//! share the process and its cores.
//!
//! Size: `ROSSBY_BENCH_ATTACHMENT_MIB` (default 256). The last line of stdout is
//! `attachments-bench size_mib=<n> upload_mib_s=<u> download_mib_s=<d> copy_mib_s=<c>`.

use rossby_client::{Client, ClientConfig};
use rossby_gateway::{Config, Gateway};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

/// Writes `size` pseudo-random bytes (xorshift: incompressible, cheap).
fn write_file(path: &Path, size: u64) {
    let mut file = std::fs::File::create(path).expect("create the file");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut block = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        file.write_all(&block[..n]).expect("write the file");
        left -= n as u64;
    }
    file.sync_all().expect("sync the file");
}

/// Copies `from` to `to` in 1 MiB blocks and syncs it; returns the time taken.
fn plain_copy(from: &Path, to: &Path) -> Duration {
    let start = Instant::now();
    let mut input = std::fs::File::open(from).expect("open");
    let mut output = std::fs::File::create(to).expect("create");
    let mut block = vec![0u8; MIB as usize];
    loop {
        let n = input.read(&mut block).expect("read");
        if n == 0 {
            break;
        }
        output.write_all(&block[..n]).expect("write");
    }
    output.sync_all().expect("sync");
    start.elapsed()
}

async fn register(client: &Client, identifier: &str, codes: &Path) {
    client.register(identifier, false).await.expect("register");
    let text = std::fs::read_to_string(codes).expect("the code file");
    let code = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{identifier} ")))
        .next_back()
        .expect("a code")
        .to_string();
    client.authorize(&code).await.expect("authorize");
}

fn main() {
    let size_mib: u64 = std::env::var("ROSSBY_BENCH_ATTACHMENT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let size = size_mib * MIB;
    println!("attachment size: {size_mib} MiB (ROSSBY_BENCH_ATTACHMENT_MIB)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let file = dir.path().join("large.bin");
    write_file(&file, size);
    let copy = plain_copy(&file, &dir.path().join("copy.bin"));
    std::fs::remove_file(dir.path().join("copy.bin")).ok();

    let (upload, download) = runtime.block_on(async {
        let gw_dir = dir.path().join("gw");
        let mut config = Config::for_tests(&gw_dir);
        let limits = &mut config.api.attachments;
        limits.max_size = size + size / 64 + MIB;
        limits.quota_bytes = 4 * limits.max_size;
        limits.max_parts =
            u32::try_from(limits.max_size / u64::from(limits.part_size) + 1).unwrap_or(u32::MAX);
        let gateway = Gateway::start(config).await.expect("gateway starts");
        let mut client_config =
            ClientConfig::new(dir.path().join("client.state"), gateway.quic_addr());
        client_config.ca_cert_der = Some(gateway.certificate_der().to_vec());
        let client = Client::open(client_config).await.expect("client opens");
        register(&client, "bench@example.com", &gw_dir.join("codes.txt")).await;

        let start = Instant::now();
        let attachment = client.upload_attachment(&file, None).await.expect("upload");
        let upload = start.elapsed();
        let out = dir.path().join("downloads");
        std::fs::create_dir_all(&out).expect("download directory");
        let start = Instant::now();
        let got = client
            .download_attachment(&attachment, &out)
            .await
            .expect("download");
        let download = start.elapsed();
        assert_eq!(std::fs::metadata(&got).expect("downloaded").len(), size);
        client.close().await;
        gateway.shutdown().await;
        (upload, download)
    });
    println!(
        "upload {:.2} s, download {:.2} s, plain copy {:.2} s",
        upload.as_secs_f64(),
        download.as_secs_f64(),
        copy.as_secs_f64()
    );
    println!(
        "attachments-bench size_mib={size_mib} upload_mib_s={:.1} download_mib_s={:.1} copy_mib_s={:.1}",
        mib_per_s(size, upload),
        mib_per_s(size, download),
        mib_per_s(size, copy)
    );
}
