//! The gateway as a separate process: started from the built binary with flags
//! only (every `ROSSBY_*` variable of the test's environment removed), waited
//! for through `/readyz`, measured through `/proc`, killed when dropped.

use super::{WAIT, http_get};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `rossby-gateway` process, killed when dropped.
pub struct GatewayProcess {
    child: Child,
    log: PathBuf,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// Its admin (HTTP) address.
    pub admin: SocketAddr,
    /// Its data directory (certificate, `codes.txt` of the `file:` verifier).
    pub data_dir: PathBuf,
}

impl GatewayProcess {
    /// Starts the gateway on `data_dir` with loopback listeners, the `file:`
    /// verifier writing `<data_dir>/codes.txt`, warnings logged to `log`, the
    /// per-device and per-address request limits raised out of the way, no
    /// drain grace, and `extra` flags after those (a later flag wins).
    pub fn spawn(
        data_dir: &Path,
        quic: SocketAddr,
        admin: SocketAddr,
        log: PathBuf,
        extra: &[&str],
    ) -> GatewayProcess {
        let codes = data_dir.join("codes.txt");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rossby-gateway"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ROSSBY_") {
                command.env_remove(name);
            }
        }
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &quic.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .arg("--verifier")
            .arg(format!("file:{}", codes.display()))
            .args(["--log-level", "warn"])
            .args([
                "--rate-per-device",
                "100000",
                "--burst-per-device",
                "100000",
            ])
            .args(["--rate-per-ip", "100000", "--burst-per-ip", "100000"])
            .args(["--drain-grace-secs", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the gateway binary starts");
        GatewayProcess {
            child,
            log,
            quic,
            admin,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Starts the gateway on free loopback ports ([`GatewayProcess::spawn`]).
    pub fn spawn_on_free_ports(data_dir: &Path, log: PathBuf, extra: &[&str]) -> GatewayProcess {
        GatewayProcess::spawn(data_dir, free_udp_port(), free_tcp_port(), log, extra)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/readyz` until it answers 200 (bounded).
    pub async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!("the gateway exited with {status}:\n{}", self.log());
            }
            if let Ok((200, _)) = http_get(self.admin, "/readyz").await {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("the gateway was not ready within {WAIT:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The DER of the certificate it generated in its data directory.
    pub fn certificate(&self) -> Vec<u8> {
        let pem = std::fs::read(self.data_dir.join("cert.pem")).expect("the generated certificate");
        rossby_client::connection::parse_certificate(&pem).expect("a PEM certificate")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory in KiB (`VmRSS` of `/proc/<pid>/status`, Linux).
    pub fn rss_kib(&self) -> u64 {
        status_kib(self.child.id(), "VmRSS:")
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `/proc/<pid>/status` in KiB; panics where it cannot be read (the
/// tests that measure memory run on Linux).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A loopback UDP address that was free a moment ago.
pub fn free_udp_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A loopback TCP address that was free a moment ago.
pub fn free_tcp_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
