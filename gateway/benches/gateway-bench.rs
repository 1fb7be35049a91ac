//! Gateway benchmark: `cargo bench -p rossby-gateway --bench gateway-bench`.
//!
//! The real `rossby-gateway` binary runs as a child process on loopback (durable
//! fjall store with group commit in a temporary directory, Hawk on, rate limits
//! raised), and this process is the client side, speaking the wire protocol over
//! QUIC exactly as the SDK does. Two processes, like production and like the
//! quinn numbers in the brief: the gateway's CPU time and memory are read from
//! `/proc/<pid>` without the client's share mixed in.
//!
//! Phases (see `docs/performance.md`, "Gateway benchmark"):
//! 1. setup (not timed): recipient boxes with 2 devices each and the sender
//!    devices, provisioned through the API (Register, the `file:` verifier's code,
//!    Authorize, LinkDevice, RequestKey), in parallel;
//! 2. client-side crypto: every envelope is sealed before the clock starts; the
//!    mean CPU µs per envelope is reported;
//! 3. peak rate: closed loop over N connections with a bounded number of requests
//!    in flight on each, for a fixed duration;
//! 4. latency at a fraction (default half) of that peak: open loop on a fixed
//!    schedule, latency measured from the scheduled time (no coordinated omission);
//! 5. fetch + ack of everything sent, by every recipient device, batches of 100;
//! 6. idle connections: a fresh gateway, N connections that each Ping once and
//!    stay open; the gateway's VmRSS before and after;
//! 7. instructions: CPU instructions per send of the gateway (all its threads)
//!    and of the client, counted by Valgrind's callgrind over a fixed workload, a
//!    figure that the load of the machine does not change. The benchmark runs
//!    itself again under callgrind with only this phase; that child starts a
//!    fresh gateway under callgrind, sets it up and warms it up with
//!    instrumentation off, then switches instrumentation on in both processes
//!    (`vgdb --pid=<gateway> instrumentation on` and a client request in itself)
//!    for exactly [`INSTR_SENDS`] sends, and reads the gateway's count from a
//!    `vgdb dump`.
//!
//! Configuration by environment variables (printed at start); everything stays on
//! 127.0.0.1 and the whole run is bounded by `ROSSBY_BENCH_TIMEOUT_SECS`.
//!
//! The last line of stdout is
//! `gateway-bench send_per_s=<peak> p50_ms=<A> p99_ms=<B> fetch_envelopes_per_s=<M>`;
//! with the instructions phase, the line before it is `gateway-bench
//! instructions_per_send=<G> client_instructions_per_send=<C> sends=<n> ...`.

use hdrhistogram::Histogram;
use prost::Message;
use rossby_keyspace::MessageId;
use rossby_protocol::crypto::{
    CONTEXT_CREDENTIALS, DeviceKeys, EnvelopeHeader, RecipientDevice, open, seal_envelope,
};
use rossby_protocol::framing;
use rossby_protocol::hawk::{DeviceCredentials, KEY_LEN, ServiceName, SignedRequest};
use rossby_protocol::hawk::{EXPORTER_LABEL, EXPORTER_LEN};
use rossby_protocol::pb::{self, Method, Status};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;

/// Largest response accepted.
const MAX_RESPONSE: usize = framing::DEFAULT_MAX_FRAME + framing::LENGTH_PREFIX;
/// Deadline of one request (a request still unanswered then counts as an error).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Length of the text of every message.
const TEXT_BYTES: usize = 1024;
/// The p99 goal at half peak: slower requests are located in time.
const SLOW: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Opts {
    secs: f64,
    warmup_secs: f64,
    conns: usize,
    in_flight: usize,
    boxes: usize,
    senders: usize,
    max_rate: f64,
    latency_fraction: f64,
    latency_in_flight: usize,
    fetch_batch: u32,
    fetch_in_flight: usize,
    idle_conns: usize,
    idle_endpoints: usize,
    idle_variants: Vec<String>,
    client_threads: usize,
    client_endpoints: usize,
    setup_conns: usize,
    setup_workers: usize,
    phases: Vec<String>,
    gateway_args: String,
    dir: Option<PathBuf>,
    keep_dir: bool,
    timeout_secs: u64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("gateway-bench: cannot parse {name}={v:?}");
            std::process::exit(2);
        }),
        _ => default,
    }
}

impl Opts {
    fn from_env() -> Opts {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let phases: String = env_or(
            "ROSSBY_BENCH_PHASES",
            "send,latency,fetch,idle,instructions".to_string(),
        );
        let variants: String = env_or("ROSSBY_BENCH_IDLE_VARIANTS", "default".to_string());
        Opts {
            secs: env_or("ROSSBY_BENCH_SECS", 10.0),
            warmup_secs: env_or("ROSSBY_BENCH_WARMUP_SECS", 1.0),
            conns: env_or("ROSSBY_BENCH_CONNS", 256usize).max(1),
            in_flight: env_or("ROSSBY_BENCH_IN_FLIGHT", 4usize).max(1),
            boxes: env_or("ROSSBY_BENCH_BOXES", 1000usize).max(1),
            senders: env_or("ROSSBY_BENCH_SENDERS", 256usize).max(1),
            max_rate: env_or("ROSSBY_BENCH_MAX_RATE", 12_000.0),
            latency_fraction: env_or("ROSSBY_BENCH_LATENCY_FRACTION", 0.5),
            latency_in_flight: env_or("ROSSBY_BENCH_LATENCY_IN_FLIGHT", 32usize).max(1),
            fetch_batch: env_or("ROSSBY_BENCH_FETCH_BATCH", 100u32).max(1),
            fetch_in_flight: env_or("ROSSBY_BENCH_FETCH_IN_FLIGHT", 4usize).max(1),
            idle_conns: env_or("ROSSBY_BENCH_IDLE_CONNS", 10_000usize),
            idle_endpoints: env_or("ROSSBY_BENCH_IDLE_ENDPOINTS", 8usize).max(1),
            idle_variants: variants
                .split(';')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            client_threads: env_or("ROSSBY_BENCH_CLIENT_THREADS", cores).max(1),
            client_endpoints: env_or("ROSSBY_BENCH_CLIENT_ENDPOINTS", 4usize).max(1),
            setup_conns: env_or("ROSSBY_BENCH_SETUP_CONNS", 32usize).max(1),
            setup_workers: env_or("ROSSBY_BENCH_SETUP_WORKERS", 128usize).max(1),
            phases: phases
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
            gateway_args: env_or("ROSSBY_BENCH_GATEWAY_ARGS", String::new()),
            dir: std::env::var_os("ROSSBY_BENCH_DIR").map(PathBuf::from),
            keep_dir: env_or("ROSSBY_BENCH_KEEP_DIR", 0u8) != 0,
            timeout_secs: env_or("ROSSBY_BENCH_TIMEOUT_SECS", 1200u64),
        }
    }

    fn has(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase || p == "all")
    }

    fn print(&self) {
        println!("gateway-bench configuration (environment variables):");
        let rows: Vec<(&str, String)> = vec![
            ("ROSSBY_BENCH_PHASES", self.phases.join(",")),
            ("ROSSBY_BENCH_SECS", format!("{}", self.secs)),
            ("ROSSBY_BENCH_WARMUP_SECS", format!("{}", self.warmup_secs)),
            ("ROSSBY_BENCH_CONNS", self.conns.to_string()),
            ("ROSSBY_BENCH_IN_FLIGHT", self.in_flight.to_string()),
            ("ROSSBY_BENCH_BOXES", self.boxes.to_string()),
            ("ROSSBY_BENCH_SENDERS", self.senders.to_string()),
            ("ROSSBY_BENCH_MAX_RATE", format!("{}", self.max_rate)),
            (
                "ROSSBY_BENCH_LATENCY_FRACTION",
                format!("{}", self.latency_fraction),
            ),
            (
                "ROSSBY_BENCH_LATENCY_IN_FLIGHT",
                self.latency_in_flight.to_string(),
            ),
            ("ROSSBY_BENCH_FETCH_BATCH", self.fetch_batch.to_string()),
            (
                "ROSSBY_BENCH_FETCH_IN_FLIGHT",
                self.fetch_in_flight.to_string(),
            ),
            ("ROSSBY_BENCH_IDLE_CONNS", self.idle_conns.to_string()),
            (
                "ROSSBY_BENCH_IDLE_ENDPOINTS",
                self.idle_endpoints.to_string(),
            ),
            ("ROSSBY_BENCH_IDLE_VARIANTS", self.idle_variants.join(";")),
            (
                "ROSSBY_BENCH_CLIENT_THREADS",
                self.client_threads.to_string(),
            ),
            (
                "ROSSBY_BENCH_CLIENT_ENDPOINTS",
                self.client_endpoints.to_string(),
            ),
            ("ROSSBY_BENCH_SETUP_CONNS", self.setup_conns.to_string()),
            ("ROSSBY_BENCH_SETUP_WORKERS", self.setup_workers.to_string()),
            ("ROSSBY_BENCH_GATEWAY_ARGS", self.gateway_args.clone()),
            (
                "ROSSBY_BENCH_DIR",
                self.dir
                    .as_ref()
                    .map_or("(system temp dir)".into(), |d| d.display().to_string()),
            ),
            ("ROSSBY_BENCH_KEEP_DIR", u8::from(self.keep_dir).to_string()),
            ("ROSSBY_BENCH_TIMEOUT_SECS", self.timeout_secs.to_string()),
            (
                "ROSSBY_BENCH_SYSCALLS",
                std::env::var("ROSSBY_BENCH_SYSCALLS").unwrap_or_else(|_| "0".into()),
            ),
            (
                "ROSSBY_BENCH_IDLE_HOLD_SECS",
                std::env::var("ROSSBY_BENCH_IDLE_HOLD_SECS").unwrap_or_else(|_| "0".into()),
            ),
            (
                "ROSSBY_BENCH_GATEWAY_WRAPPER",
                std::env::var("ROSSBY_BENCH_GATEWAY_WRAPPER").unwrap_or_default(),
            ),
            (
                "ROSSBY_BENCH_CALLGRIND_OUT",
                std::env::var("ROSSBY_BENCH_CALLGRIND_OUT").unwrap_or_default(),
            ),
        ];
        for (k, v) in rows {
            println!("  {k:<32} {v}");
        }
    }
}

// ---------------------------------------------------------------------------
// The gateway child process
// ---------------------------------------------------------------------------

/// Pids of running gateways, for the watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// When the run started (its watchdog counts from here).
static STARTED: OnceLock<Instant> = OnceLock::new();

struct GatewayProc {
    child: Child,
    pid: u32,
    quic: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
    client_config: quinn::ClientConfig,
}

/// Flags every gateway of the benchmark gets: loopback only, durable fjall with
/// group commit, `file:` verifier, every rate limit raised, long idle timeout.
fn base_args(dir: &Path) -> Vec<String> {
    let big = "1000000000";
    [
        "--data-dir",
        &dir.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--storage",
        "fjall",
        "--durability",
        "group-commit",
        "--verifier",
        &format!("file:{}", dir.join("codes.txt").display()),
        "--log-level",
        "warn",
        "--max-connections",
        "1000000",
        "--idle-timeout-secs",
        "600",
        "--drain-grace-secs",
        "0",
        "--drain-timeout-secs",
        "5",
        "--rate-per-device",
        big,
        "--burst-per-device",
        big,
        "--rate-per-ip",
        big,
        "--burst-per-ip",
        big,
        "--rate-per-identifier",
        big,
        "--burst-per-identifier",
        big,
        "--discovery-rate-per-device",
        big,
        "--discovery-burst-per-device",
        big,
        "--stored-bytes-rate-per-account",
        big,
        "--stored-bytes-burst-per-account",
        big,
        "--codes-rate-per-address",
        big,
        "--codes-burst-per-address",
        big,
        "--codes-per-hour",
        "1000000000",
        "--codes-per-prefix-per-hour",
        "1000000000",
        "--max-queue-envelopes",
        big,
        "--max-queue-bytes",
        "1000000000000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl GatewayProc {
    fn start(dir: &Path, extra: &str) -> GatewayProc {
        // A diagnostic wrapper (for example `heaptrack -o FILE`) may run the gateway.
        let wrapper: String = env_or("ROSSBY_BENCH_GATEWAY_WRAPPER", String::new());
        let wrapper: Vec<String> = wrapper.split_whitespace().map(str::to_string).collect();
        Self::start_wrapped(dir, extra, &wrapper)
    }

    /// Starts the gateway with `extra` flags, under `wrapper` (a program and its
    /// arguments, the gateway's command line appended) unless it is empty.
    fn start_wrapped(dir: &Path, extra: &str, wrapper: &[String]) -> GatewayProc {
        std::fs::create_dir_all(dir).expect("create the gateway directory");
        // Extra flags replace base flags of the same name (clap refuses repeats).
        let extra: Vec<String> = extra.split_whitespace().map(str::to_string).collect();
        let base = base_args(dir);
        let mut args = Vec::new();
        for pair in base.chunks(2) {
            if !extra.iter().any(|e| e == &pair[0]) {
                args.extend_from_slice(pair);
            }
        }
        args.extend(extra);
        let log = std::fs::File::create(dir.join("gateway.log")).expect("create gateway.log");
        let mut words = wrapper.iter();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(env!("CARGO_BIN_EXE_rossby-gateway"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_rossby-gateway")),
        };
        // Its own process group, so that signals reach a wrapped gateway too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // The flags above are the whole configuration: no ROSSBY_* variable of
        // this shell may change it.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ROSSBY_") {
                cmd.env_remove(&key);
            }
        }
        let mut child = cmd.spawn().expect("start rossby-gateway");
        let pid = child.id();
        CHILDREN.lock().unwrap().push(pid);
        let stdout = child.stdout.take().expect("gateway stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining.
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("rossby-gateway ") => break line,
                Ok(_) => {}
                Err(_) => {
                    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
                    panic!("the gateway did not start within 60 s; its log:\n{log}")
                }
            }
        };
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("unexpected gateway start line {line:?}"))
        };
        let quic = field("quic=");
        let admin = field("admin=");
        let pem = std::fs::read(dir.join("cert.pem")).expect("read the gateway certificate");
        let chain: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .expect("parse the gateway certificate");
        let client_config =
            rossby_gateway::tls::client_config(&chain).expect("client TLS configuration");
        GatewayProc {
            child,
            pid,
            quic,
            admin,
            dir: dir.to_path_buf(),
            client_config,
        }
    }

    /// SIGTERM (graceful drain), then SIGKILL if it does not exit in 20 s.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.pid)])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    eprintln!("gateway-bench: the gateway did not drain in 20 s; killing it");
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{}", self.pid)])
                        .status();
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        CHILDREN.lock().unwrap().retain(|p| *p != self.pid);
    }

    fn rss_kib(&self) -> Mem {
        Mem::of(self.pid)
    }

    fn metrics(&self) -> Metrics {
        Metrics::fetch(self.admin)
    }

    fn handle(&self) -> GwHandle {
        GwHandle {
            pid: self.pid,
            admin: self.admin,
        }
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.pid)])
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Memory figures of a process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss: u64,
    anon: u64,
}

impl Mem {
    fn of(pid: u32) -> Mem {
        Self::parse(&format!("/proc/{pid}/status"))
    }

    fn own() -> Mem {
        Self::parse("/proc/self/status")
    }

    fn parse(path: &str) -> Mem {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Mem {
            rss: field("VmRSS:"),
            anon: field("RssAnon:"),
        }
    }
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process (all threads), in seconds.
fn proc_cpu_secs(stat_path: &str) -> f64 {
    let text = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the command name (which may contain spaces) end with ')'.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let get = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    (get(14).unwrap_or(0.0) + get(15).unwrap_or(0.0)) / clock_ticks()
}

/// CPU seconds per thread name (digits stripped, so pools add up) of a process.
fn thread_cpu_by_name(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let path = t.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let name: String = comm
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
            .to_string();
        let cpu = proc_cpu_secs(&path.join("stat").display().to_string());
        *out.entry(name).or_insert(0.0) += cpu;
    }
    out
}

/// Counts syscalls of a process with `perf stat` while alive (optional).
struct SyscallCounter {
    child: Child,
}

const SYSCALLS: [&str; 8] = [
    "fdatasync",
    "fsync",
    "write",
    "pwrite64",
    "sendmsg",
    "sendmmsg",
    "recvmsg",
    "recvmmsg",
];

impl SyscallCounter {
    fn start(pid: u32) -> Option<SyscallCounter> {
        if std::env::var("ROSSBY_BENCH_SYSCALLS").map_or(true, |v| v != "1") {
            return None;
        }
        let events: Vec<String> = SYSCALLS
            .iter()
            .map(|s| format!("syscalls:sys_enter_{s}"))
            .collect();
        let child = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                &events.join(","),
                "-p",
                &pid.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        Some(SyscallCounter { child })
    }

    fn finish(mut self) -> BTreeMap<String, u64> {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let mut text = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        let _ = self.child.wait();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let n = f.first()?.trim().parse().ok()?;
                let name = f.get(2)?.trim().strip_prefix("syscalls:sys_enter_")?;
                Some((name.to_string(), n))
            })
            .collect()
    }
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// The gateway's Prometheus metrics, summed per metric name.
#[derive(Clone, Debug, Default)]
struct Metrics {
    lines: Vec<(String, f64)>,
}

impl Metrics {
    fn fetch(admin: SocketAddr) -> Metrics {
        let text = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
            let mut raw = String::new();
            s.read_to_string(&mut raw)?;
            Ok(raw)
        })()
        .unwrap_or_default();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let lines = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect();
        Metrics { lines }
    }

    /// Cumulative bucket counts `(le, count)` of a histogram's series matching
    /// `labels`, summed over the other labels.
    fn buckets(&self, name: &str, labels: &[&str]) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{");
        let mut out: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (series, value) in &self.lines {
            if !series.starts_with(&prefix) || !labels.iter().all(|l| series.contains(l)) {
                continue;
            }
            let Some(le) = series
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let e = out.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += value;
        }
        let mut v: Vec<(f64, f64)> = out.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }

    /// Sum of every series whose name (with labels) starts with `prefix` and
    /// contains every string of `labels`.
    fn sum(&self, prefix: &str, labels: &[&str]) -> f64 {
        self.lines
            .iter()
            .filter(|(n, _)| {
                (n == prefix || n.starts_with(&format!("{prefix}{{")))
                    && labels.iter().all(|l| n.contains(l))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

// ---------------------------------------------------------------------------
// The client side of the wire protocol
// ---------------------------------------------------------------------------

/// One QUIC connection and its TLS exporter value (what Hawk's `ext` binds to).
#[derive(Clone)]
struct Conn {
    conn: quinn::Connection,
    exporter: [u8; EXPORTER_LEN],
}

fn service() -> &'static ServiceName {
    static SERVICE: OnceLock<ServiceName> = OnceLock::new();
    SERVICE.get_or_init(ServiceName::default)
}

fn load_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(120)).unwrap(),
    ));
    t
}

fn client_endpoints(
    gw: &GatewayProc,
    n: usize,
    transport: quinn::TransportConfig,
) -> Vec<quinn::Endpoint> {
    let mut config = gw.client_config.clone();
    config.transport_config(Arc::new(transport));
    (0..n)
        .map(|_| {
            // Each client socket carries the traffic of many connections: give it
            // the receive buffer the gateway's socket has, so bursts of responses
            // are not dropped on the client side.
            let socket = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .expect("client UDP socket");
            socket2::SockRef::from(&socket)
                .set_recv_buffer_size(4 * 1024 * 1024)
                .expect("client UDP receive buffer");
            let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
            let mut e =
                quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
                    .expect("client endpoint");
            e.set_default_client_config(config.clone());
            e
        })
        .collect()
}

async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> Result<Conn, String> {
    let conn = endpoint
        .connect(addr, "localhost")
        .map_err(|e| format!("connect: {e}"))?
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut exporter = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| "TLS exporter unavailable".to_string())?;
    Ok(Conn { conn, exporter })
}

/// Opens `n` connections spread over `endpoints`, `parallel` handshakes at a time.
async fn connect_many(
    endpoints: &[quinn::Endpoint],
    addr: SocketAddr,
    n: usize,
    parallel: usize,
) -> Vec<Conn> {
    let slots: Arc<Vec<OnceLock<Conn>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());
    let endpoints = Arc::new(endpoints.to_vec());
    {
        let slots = slots.clone();
        parallel_for(n, parallel, move |_, i| {
            let slots = slots.clone();
            let endpoint = endpoints[i % endpoints.len()].clone();
            async move {
                let c = connect(&endpoint, addr)
                    .await
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                let _ = slots[i].set(c);
            }
        })
        .await;
    }
    Arc::try_unwrap(slots)
        .unwrap_or_else(|_| panic!("connections still shared"))
        .into_iter()
        .map(|s| s.into_inner().expect("connected"))
        .collect()
}

/// A request frame, Hawk-signed for `conn` when `creds` are given.
fn request_frame(
    conn: &Conn,
    method: Method,
    body: &[u8],
    creds: Option<&DeviceCredentials>,
) -> Vec<u8> {
    let authorization = match creds {
        Some(creds) => {
            let nonce = hex::encode(rand::random::<[u8; 12]>());
            SignedRequest {
                service: service(),
                method,
                body,
                exporter: &conn.exporter,
            }
            .sign(creds, SystemTime::now(), &nonce)
            .expect("Hawk signing")
        }
        None => String::new(),
    };
    framing::encode(&pb::Request {
        version: rossby_protocol::PROTOCOL_VERSION,
        method: method as i32,
        body: body.to_vec(),
        authorization,
    })
}

/// One request on its own bidirectional stream; errors are short labels.
async fn exchange(conn: &Conn, frame: &[u8]) -> Result<pb::Response, String> {
    let fut = async {
        let (mut send, mut recv) = conn
            .conn
            .open_bi()
            .await
            .map_err(|e| format!("transport: open_bi: {e}"))?;
        send.write_all(frame)
            .await
            .map_err(|e| format!("transport: write: {e}"))?;
        let _ = send.finish();
        let raw = recv
            .read_to_end(MAX_RESPONSE)
            .await
            .map_err(|e| format!("transport: read: {e}"))?;
        framing::decode_one::<pb::Response>(&raw, MAX_RESPONSE, "response")
            .map_err(|e| format!("bad response: {e}"))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err("timeout".to_string()),
    }
}

fn status_name(status: i32) -> String {
    Status::try_from(status).map_or_else(
        |_| format!("STATUS_{status}"),
        |s| s.as_str_name().to_string(),
    )
}

/// A setup request: retried on retryable statuses, fatal otherwise.
async fn call_ok<Resp: Message + Default>(
    conn: &Conn,
    method: Method,
    request: &impl Message,
    creds: Option<&DeviceCredentials>,
) -> Resp {
    let body = request.encode_to_vec();
    let mut last = String::new();
    for attempt in 0..8u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
        }
        let frame = request_frame(conn, method, &body, creds);
        match exchange(conn, &frame).await {
            Ok(r) if r.status == Status::Ok as i32 => {
                return Resp::decode(r.body.as_slice()).expect("decodable response");
            }
            Ok(r) => {
                last = format!("{}: {}", status_name(r.status), r.message);
                if !Status::try_from(r.status).is_ok_and(Status::is_retryable) {
                    break;
                }
            }
            Err(e) => last = e,
        }
    }
    panic!("setup request {method:?} failed: {last}");
}

/// Runs `f(worker, index)` for every index below `n`, `workers` at a time.
async fn parallel_for<F, Fut>(n: usize, workers: usize, f: F)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let mut tasks = Vec::new();
    for w in 0..workers.min(n.max(1)) {
        let next = next.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(w, i).await;
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

// ---------------------------------------------------------------------------
// Setup: accounts and devices
// ---------------------------------------------------------------------------

/// One authorized device.
struct Device {
    id: [u8; 16],
    keys: DeviceKeys,
    creds: DeviceCredentials,
}

/// A recipient box with its two devices and its device list as senders see it.
struct RecipientBox {
    box_id: [u8; 16],
    devices: [Device; 2],
    list_version: u64,
    recipients: Vec<RecipientDevice>,
}

struct Sender {
    box_id: [u8; 16],
    device: Device,
}

struct Registration {
    identifier: String,
    device_id: [u8; 16],
    keys: DeviceKeys,
}

fn open_credentials(keys: &DeviceKeys, sealed: &[u8]) -> DeviceCredentials {
    let sealed = pb::Sealed::decode(sealed).expect("sealed credentials");
    let plain = open(keys, CONTEXT_CREDENTIALS, &sealed).expect("open the credentials");
    let creds = pb::Credentials::decode(plain.as_slice()).expect("credentials");
    let key: [u8; KEY_LEN] = creds.key.as_slice().try_into().expect("32-byte Hawk key");
    DeviceCredentials { id: creds.id, key }
}

fn read_codes(path: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).expect("read the verifier's code file");
    let mut codes = HashMap::new();
    for line in text.lines() {
        if let Some((id, code)) = line.rsplit_once(' ') {
            codes.insert(id.to_string(), code.to_string());
        }
    }
    codes
}

async fn setup(opts: &Opts, gw: &GatewayProc) -> (Vec<RecipientBox>, Vec<Sender>) {
    let started = Instant::now();
    let endpoints = client_endpoints(gw, opts.client_endpoints, load_transport());
    let conns = Arc::new(connect_many(&endpoints, gw.quic, opts.setup_conns, 32).await);
    let workers = opts.setup_workers;

    // Keys for every device (recipient boxes: 2 each; senders: 1 each).
    let n_reg = opts.boxes + opts.senders;
    let regs: Vec<Registration> = (0..n_reg)
        .map(|i| Registration {
            identifier: if i < opts.boxes {
                format!("bench-r{i}@example.com")
            } else {
                format!("bench-s{}@example.com", i - opts.boxes)
            },
            device_id: *rossby_keyspace::DeviceId::new().as_bytes(),
            keys: DeviceKeys::generate(),
        })
        .collect();
    let linked: Vec<([u8; 16], DeviceKeys)> = (0..opts.boxes)
        .map(|_| {
            (
                *rossby_keyspace::DeviceId::new().as_bytes(),
                DeviceKeys::generate(),
            )
        })
        .collect();
    let regs = Arc::new(regs);
    let linked = Arc::new(linked);

    // 1. Register: a code for each identifier goes to the code file.
    {
        let (regs, conns) = (regs.clone(), conns.clone());
        parallel_for(n_reg, workers, move |w, i| {
            let (regs, conns) = (regs.clone(), conns.clone());
            async move {
                let r = &regs[i];
                let req = pb::RegisterRequest {
                    identifier: r.identifier.clone(),
                    device_id: r.device_id.to_vec(),
                    keys: Some(r.keys.bundle()),
                    device_label: "bench".into(),
                    recover: false,
                    region: 0,
                };
                let _: pb::RegisterResponse =
                    call_ok(&conns[w % conns.len()], Method::Register, &req, None).await;
            }
        })
        .await;
    }
    let codes = Arc::new(read_codes(&gw.dir.join("codes.txt")));

    // 2. Authorize with the code: box id and sealed Hawk credentials.
    let authorized: Arc<Vec<Authorized>> = Arc::new((0..n_reg).map(|_| OnceLock::new()).collect());
    {
        let (regs, conns, codes, authorized) = (
            regs.clone(),
            conns.clone(),
            codes.clone(),
            authorized.clone(),
        );
        parallel_for(n_reg, workers, move |w, i| {
            let (regs, conns, codes, authorized) = (
                regs.clone(),
                conns.clone(),
                codes.clone(),
                authorized.clone(),
            );
            async move {
                let r = &regs[i];
                let code = codes
                    .get(&r.identifier)
                    .unwrap_or_else(|| panic!("no code for {}", r.identifier))
                    .clone();
                let req = pb::AuthorizeRequest {
                    identifier: r.identifier.clone(),
                    device_id: r.device_id.to_vec(),
                    code,
                    registration_lock_pin: String::new(),
                };
                let resp: pb::AuthorizeResponse =
                    call_ok(&conns[w % conns.len()], Method::Authorize, &req, None).await;
                let box_id: [u8; 16] = resp.box_id.as_slice().try_into().expect("box id");
                let creds = open_credentials(&r.keys, &resp.sealed_credentials);
                let _ = authorized[i].set((box_id, creds));
            }
        })
        .await;
    }

    // 3. LinkDevice: each recipient box's first device links the second.
    let linked_creds: Arc<Vec<OnceLock<DeviceCredentials>>> =
        Arc::new((0..opts.boxes).map(|_| OnceLock::new()).collect());
    {
        let (linked, conns, authorized, linked_creds) = (
            linked.clone(),
            conns.clone(),
            authorized.clone(),
            linked_creds.clone(),
        );
        parallel_for(opts.boxes, workers, move |w, i| {
            let (linked, conns, authorized, linked_creds) = (
                linked.clone(),
                conns.clone(),
                authorized.clone(),
                linked_creds.clone(),
            );
            async move {
                let (device_id, keys) = &linked[i];
                let req = pb::LinkDeviceRequest {
                    device_id: device_id.to_vec(),
                    keys: Some(keys.bundle()),
                    label: "bench-2".into(),
                };
                let creds = &authorized[i].get().expect("authorized").1;
                let resp: pb::LinkDeviceResponse = call_ok(
                    &conns[w % conns.len()],
                    Method::LinkDevice,
                    &req,
                    Some(creds),
                )
                .await;
                let _ = linked_creds[i].set(open_credentials(keys, &resp.sealed_credentials));
            }
        })
        .await;
    }

    // 4. RequestKey: a sender looks each recipient up by identifier, as a client
    //    does before its first message; the device list is what envelopes are
    //    sealed for (its version goes into every Recipient).
    let lists: Arc<Vec<OnceLock<pb::DeviceList>>> =
        Arc::new((0..opts.boxes).map(|_| OnceLock::new()).collect());
    {
        let (regs, conns, authorized, lists) = (
            regs.clone(),
            conns.clone(),
            authorized.clone(),
            lists.clone(),
        );
        let (boxes, senders) = (opts.boxes, opts.senders);
        parallel_for(boxes, workers, move |w, i| {
            let (regs, conns, authorized, lists) = (
                regs.clone(),
                conns.clone(),
                authorized.clone(),
                lists.clone(),
            );
            async move {
                let creds = &authorized[boxes + i % senders].get().expect("sender").1;
                let req = pb::RequestKeyRequest {
                    identifier: regs[i].identifier.clone(),
                    add_contact: false,
                    box_id: Vec::new(),
                };
                let resp: pb::RequestKeyResponse = call_ok(
                    &conns[w % conns.len()],
                    Method::RequestKey,
                    &req,
                    Some(creds),
                )
                .await;
                let _ = lists[i].set(resp.devices.expect("device list"));
            }
        })
        .await;
    }
    for c in conns.iter() {
        c.conn.close(0u32.into(), b"setup done");
    }

    let regs = Arc::try_unwrap(regs).unwrap_or_else(|_| panic!("registrations shared"));
    let mut linked = Arc::try_unwrap(linked)
        .unwrap_or_else(|_| panic!("linked shared"))
        .into_iter();
    let authorized = Arc::try_unwrap(authorized).unwrap_or_else(|_| panic!("authorized shared"));
    let linked_creds = Arc::try_unwrap(linked_creds).unwrap_or_else(|_| panic!("creds shared"));
    let lists = Arc::try_unwrap(lists).unwrap_or_else(|_| panic!("lists shared"));
    let mut authorized = authorized
        .into_iter()
        .map(|a| a.into_inner().expect("authorized"));
    let mut linked_creds = linked_creds
        .into_iter()
        .map(|c| c.into_inner().expect("linked"));
    let mut lists = lists.into_iter().map(|l| l.into_inner().expect("list"));
    let mut boxes = Vec::with_capacity(opts.boxes);
    let mut senders = Vec::with_capacity(opts.senders);
    for (i, r) in regs.into_iter().enumerate() {
        let (box_id, creds) = authorized.next().unwrap();
        let first = Device {
            id: r.device_id,
            keys: r.keys,
            creds,
        };
        if i < opts.boxes {
            let (id2, keys2) = linked.next().unwrap();
            let second = Device {
                id: id2,
                keys: keys2,
                creds: linked_creds.next().unwrap(),
            };
            let list = lists.next().unwrap();
            assert_eq!(list.box_id, box_id, "device list of another box");
            let (recipients, bad) = rossby_client::envelopes::recipient_devices(&list, None);
            assert!(
                bad.is_empty() && recipients.len() == 2,
                "expected 2 valid devices"
            );
            boxes.push(RecipientBox {
                box_id,
                devices: [first, second],
                list_version: list.version,
                recipients,
            });
        } else {
            senders.push(Sender {
                box_id,
                device: first,
            });
        }
    }
    for e in &endpoints {
        e.wait_idle().await;
    }
    println!(
        "setup: {} recipient boxes x 2 devices, {} sender devices, {} API calls in {:.1} s",
        opts.boxes,
        opts.senders,
        2 * n_reg + 2 * opts.boxes,
        started.elapsed().as_secs_f64()
    );
    (boxes, senders)
}

// ---------------------------------------------------------------------------
// Envelopes, sealed before the clock starts
// ---------------------------------------------------------------------------

/// A ready-to-sign Send body.
struct Prepared {
    body: Vec<u8>,
    to_box: u32,
}

struct CryptoStats {
    envelopes: u64,
    cpu_ns: u64,
    wall: Duration,
    envelope_bytes: u64,
    body_bytes: u64,
}

impl CryptoStats {
    fn us_per_envelope(&self) -> f64 {
        self.cpu_ns as f64 / 1000.0 / self.envelopes.max(1) as f64
    }
}

fn text_of(len: usize, seed: u64) -> String {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// Seals `counts[c]` envelopes for connection `c` (sender `c % senders`), each to
/// a uniformly random recipient box, on every core.
fn build_envelopes(
    counts: &[usize],
    boxes: &[RecipientBox],
    senders: &[Sender],
) -> (Vec<Vec<Prepared>>, CryptoStats) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let cpu = AtomicU64::new(0);
    let env_bytes = AtomicU64::new(0);
    let body_bytes = AtomicU64::new(0);
    let out: Vec<Mutex<Vec<Prepared>>> = counts.iter().map(|_| Mutex::new(Vec::new())).collect();
    let texts: Vec<String> = (0..64).map(|i| text_of(TEXT_BYTES, i)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut rng_state = rand::random::<u64>() | 1;
                loop {
                    let c = next.fetch_add(1, Ordering::Relaxed);
                    if c >= counts.len() {
                        break;
                    }
                    let sender = &senders[c % senders.len()];
                    let mut list = Vec::with_capacity(counts[c]);
                    let t0 = thread_cpu_ns();
                    for k in 0..counts[c] {
                        rng_state ^= rng_state << 13;
                        rng_state ^= rng_state >> 7;
                        rng_state ^= rng_state << 17;
                        let b = (rng_state % boxes.len() as u64) as usize;
                        let to = &boxes[b];
                        let message_id = MessageId::new();
                        let header = EnvelopeHeader {
                            sender_box: sender.box_id,
                            sender_device: sender.device.id,
                            message_id: *message_id.as_bytes(),
                        };
                        let content = pb::Content {
                            access_secret: Vec::new(),
                            sent_at_ms: u64::try_from(rossby_client::connection::unix_ms(
                                SystemTime::now(),
                            ))
                            .unwrap_or(0),
                            body: Some(pb::content::Body::Text(
                                texts[(c + k) % texts.len()].clone(),
                            )),
                        };
                        let envelope =
                            seal_envelope(&sender.device.keys, &header, &content, &to.recipients)
                                .expect("seal the envelope")
                                .encode_to_vec();
                        env_bytes.fetch_add(envelope.len() as u64, Ordering::Relaxed);
                        let body = pb::SendRequest {
                            message_id: message_id.as_bytes().to_vec(),
                            recipients: vec![pb::Recipient {
                                box_id: to.box_id.to_vec(),
                                device_list_version: to.list_version,
                                envelope,
                            }],
                            ephemeral: false,
                            attachments: Vec::new(),
                            wake: pb::Wake::High as i32,
                        }
                        .encode_to_vec();
                        body_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        list.push(Prepared {
                            body,
                            to_box: b as u32,
                        });
                    }
                    cpu.fetch_add(thread_cpu_ns().saturating_sub(t0), Ordering::Relaxed);
                    *out[c].lock().unwrap() = list;
                }
            });
        }
    });
    let total: usize = counts.iter().sum();
    let stats = CryptoStats {
        envelopes: total as u64,
        cpu_ns: cpu.load(Ordering::Relaxed),
        wall: started.elapsed(),
        envelope_bytes: env_bytes.load(Ordering::Relaxed),
        body_bytes: body_bytes.load(Ordering::Relaxed),
    };
    (
        out.into_iter().map(|m| m.into_inner().unwrap()).collect(),
        stats,
    )
}

fn print_crypto(label: &str, s: &CryptoStats) {
    println!(
        "{label}: {} envelopes sealed in {:.1} s wall; client crypto {:.1} us CPU per envelope \
         (seal to 2 devices: X25519 + ML-KEM-768 each, ChaCha20-Poly1305, Ed25519 signature); \
         envelope {} B, Send body {} B on average",
        s.envelopes,
        s.wall.as_secs_f64(),
        s.us_per_envelope(),
        s.envelope_bytes / s.envelopes.max(1),
        s.body_bytes / s.envelopes.max(1),
    );
}

/// Per-request client costs outside the timed phases: the SDK's `seal_for_list`
/// (which also verifies both key bundles on every send) and Hawk signing.
fn client_cost_samples(boxes: &[RecipientBox], senders: &[Sender]) -> (f64, f64) {
    let n = 300usize;
    let sender = &senders[0];
    let content = pb::Content {
        access_secret: Vec::new(),
        sent_at_ms: 1,
        body: Some(pb::content::Body::Text(text_of(TEXT_BYTES, 7))),
    };
    let lists: Vec<pb::DeviceList> = boxes
        .iter()
        .take(16)
        .map(|b| pb::DeviceList {
            box_id: b.box_id.to_vec(),
            version: b.list_version,
            devices: b
                .recipients
                .iter()
                .map(|r| pb::DeviceInfo {
                    device_id: r.device_id.to_vec(),
                    keys: Some(r.keys.to_bundle()),
                    label: String::new(),
                })
                .collect(),
        })
        .collect();
    let t0 = thread_cpu_ns();
    for i in 0..n {
        let header = EnvelopeHeader {
            sender_box: sender.box_id,
            sender_device: sender.device.id,
            message_id: *MessageId::new().as_bytes(),
        };
        let _ = rossby_client::envelopes::seal_for_list(
            &sender.device.keys,
            &header,
            &content,
            &lists[i % lists.len()],
            None,
        )
        .expect("seal_for_list");
    }
    let sdk_us = (thread_cpu_ns() - t0) as f64 / 1000.0 / n as f64;
    let body = vec![0x5a; 3800];
    let exporter = [7u8; EXPORTER_LEN];
    let m = 5000usize;
    let t0 = thread_cpu_ns();
    for _ in 0..m {
        let nonce = hex::encode(rand::random::<[u8; 12]>());
        let _ = SignedRequest {
            service: service(),
            method: Method::Send,
            body: &body,
            exporter: &exporter,
        }
        .sign(&sender.device.creds, SystemTime::now(), &nonce)
        .expect("sign");
    }
    let hawk_us = (thread_cpu_ns() - t0) as f64 / 1000.0 / m as f64;
    (sdk_us, hawk_us)
}

// ---------------------------------------------------------------------------
// Outcomes of timed sends
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    fn errors_line(&self) -> String {
        if self.errors.is_empty() {
            "none".into()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Classifies the outcome of a Send; `None` means OK.
fn send_outcome(result: Result<pb::Response, String>) -> Option<String> {
    match result {
        Err(e) => Some(e.split(':').take(2).collect::<Vec<_>>().join(":")),
        Ok(r) if r.status != Status::Ok as i32 => Some(status_name(r.status)),
        Ok(r) => match pb::SendResponse::decode(r.body.as_slice()) {
            Err(_) => Some("bad SendResponse".into()),
            Ok(s) => match s.results.first() {
                Some(res) if res.status == Status::Ok as i32 => None,
                Some(res) => Some(format!("recipient {}", status_name(res.status))),
                None => Some("no result".into()),
            },
        },
    }
}

struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// Busy CPU seconds of the machine's processes (user, nice, system, irq,
/// softirq) and CPU seconds stolen by the hypervisor, from `/proc/stat`.
fn machine_busy_secs() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 7)
        .map(|(_, x)| x)
        .sum();
    let steal = v.get(7).copied().unwrap_or(0.0);
    (busy / clock_ticks(), steal / clock_ticks())
}

/// Client and gateway CPU and the gateway's counters around a timed window.
struct Probe {
    /// (processes, hypervisor steal), CPU seconds.
    machine_cpu: (f64, f64),
    at: Instant,
    client_cpu: f64,
    gateway_cpu: f64,
    threads: BTreeMap<String, f64>,
    metrics: Metrics,
    syscalls: Option<SyscallCounter>,
}

/// What a probe needs of a gateway (copied into blocking tasks).
#[derive(Clone, Copy)]
struct GwHandle {
    pid: u32,
    admin: SocketAddr,
}

impl Probe {
    /// The start of a window (starts the optional syscall counter). Reads files
    /// and does a blocking HTTP request: run it with [`Probe::at_start`] /
    /// [`Probe::at_end`], off the async workers, so the load is not held up.
    fn take(gw: GwHandle, count_syscalls: bool) -> Probe {
        Probe {
            machine_cpu: machine_busy_secs(),
            at: Instant::now(),
            client_cpu: proc_cpu_secs("/proc/self/stat"),
            gateway_cpu: proc_cpu_secs(&format!("/proc/{}/stat", gw.pid)),
            threads: thread_cpu_by_name(gw.pid),
            metrics: Metrics::fetch(gw.admin),
            syscalls: if count_syscalls {
                SyscallCounter::start(gw.pid)
            } else {
                None
            },
        }
    }

    async fn at_start(gw: GwHandle) -> Probe {
        tokio::task::spawn_blocking(move || Probe::take(gw, true))
            .await
            .expect("probe")
    }

    async fn at_end(gw: GwHandle) -> Probe {
        tokio::task::spawn_blocking(move || Probe::take(gw, false))
            .await
            .expect("probe")
    }

    fn report(&mut self, later: &Probe, rpc: &str, requests: u64) {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let client = (later.client_cpu - self.client_cpu) / secs;
        let gateway = (later.gateway_cpu - self.gateway_cpu) / secs;
        let d = |name: &str, labels: &[&str]| {
            later.metrics.sum(name, labels) - self.metrics.sum(name, labels)
        };
        let per_req = |cpu_cores: f64| cpu_cores * secs * 1e6 / requests.max(1) as f64;
        let machine = (later.machine_cpu.0 - self.machine_cpu.0) / secs;
        let steal = (later.machine_cpu.1 - self.machine_cpu.1) / secs;
        println!(
            "  cpu: gateway {:.2} cores ({:.0} us/request), client {:.2} cores ({:.0} us/request), \
             other processes {:.2} cores, stolen by the hypervisor {:.2} \
             cores, machine {} cores",
            gateway,
            per_req(gateway),
            client,
            per_req(client),
            (machine - gateway - client).max(0.0),
            steal,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let label = format!("rpc=\"{rpc}\"");
        let served = d(
            "rossby_request_duration_seconds_count",
            &[&label, "status=\"ok\""],
        );
        let served_sum = d(
            "rossby_request_duration_seconds_sum",
            &[&label, "status=\"ok\""],
        );
        let txns = d("rossby_storage_transaction_duration_seconds_count", &[]);
        let txn_sum = d("rossby_storage_transaction_duration_seconds_sum", &[]);
        println!(
            "  gateway: {} {rpc} ok, mean {:.2} ms inside the gateway (stream accepted to \
             response written); {} storage transactions ({:.2} per request, mean {:.2} ms), \
             {} conflicts, {} retries",
            served as u64,
            served_sum * 1000.0 / served.max(1.0),
            txns as u64,
            txns / requests.max(1) as f64,
            txn_sum * 1000.0 / txns.max(1.0),
            d("rossby_storage_conflicts_total", &[]) as u64,
            d("rossby_storage_retries_total", &[]) as u64,
        );
        let quantiles = |name: &str, labels: &[&str]| -> String {
            let a = self.metrics.buckets(name, labels);
            let b = later.metrics.buckets(name, labels);
            let deltas: Vec<(f64, f64)> = b
                .iter()
                .map(|(le, n)| {
                    let before = a
                        .iter()
                        .find(|(l, _)| l.to_bits() == le.to_bits())
                        .map_or(0.0, |x| x.1);
                    (*le, n - before)
                })
                .collect();
            let total = deltas.last().map_or(0.0, |x| x.1);
            if total <= 0.0 {
                return "no samples".into();
            }
            let q = |q: f64| {
                deltas
                    .iter()
                    .find(|(_, n)| *n >= q * total)
                    .map_or(f64::INFINITY, |x| x.0)
            };
            let f = |s: f64| {
                if s.is_finite() {
                    format!("<= {:.1} ms", s * 1000.0)
                } else {
                    "above the last bucket".into()
                }
            };
            format!("p50 {}, p99 {}", f(q(0.5)), f(q(0.99)))
        };
        println!(
            "  gateway histograms (bucket bounds): {rpc} {}; storage transactions {}",
            quantiles(
                "rossby_request_duration_seconds",
                &[&label, "status=\"ok\""]
            ),
            quantiles("rossby_storage_transaction_duration_seconds", &[])
        );
        let threads: Vec<String> = later
            .threads
            .iter()
            .map(|(name, cpu)| {
                (
                    name,
                    (cpu - self.threads.get(name).copied().unwrap_or(0.0)) / secs,
                )
            })
            .filter(|(_, cores)| *cores >= 0.005)
            .map(|(name, cores)| format!("{name} {cores:.2}"))
            .collect();
        println!("  gateway threads (cores): {}", threads.join(", "));
        if let Some(counter) = self.syscalls.take() {
            let counts = counter.finish();
            let line: Vec<String> = counts
                .iter()
                .map(|(k, v)| format!("{k} {:.2}", *v as f64 / requests.max(1) as f64))
                .collect();
            println!(
                "  gateway syscalls per request: {} ({} fdatasync/s)",
                line.join(", "),
                (counts.get("fdatasync").copied().unwrap_or(0) as f64 / secs) as u64
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Phase 3: peak send rate (closed loop)
// ---------------------------------------------------------------------------

struct PeakResult {
    rate: f64,
    tally: Tally,
    latency: Histogram<u64>,
    exhausted: bool,
}

async fn peak_phase(
    opts: &Opts,
    gw: &GatewayProc,
    conns: &[Conn],
    senders: &Arc<Vec<Sender>>,
    pools: Vec<Vec<Prepared>>,
    ok_per_box: &Arc<Vec<AtomicU64>>,
) -> PeakResult {
    let warm = Duration::from_secs_f64(opts.warmup_secs);
    let dur = Duration::from_secs_f64(opts.secs);
    let t0 = Instant::now() + Duration::from_millis(50);
    let window = Arc::new(Window {
        start: t0 + warm,
        end: t0 + warm + dur,
    });
    let exhausted = Arc::new(AtomicUsize::new(0));
    let probe_at_start = Arc::new(Mutex::new(None::<Probe>));
    let mut tasks = Vec::new();
    for (c, pool) in pools.into_iter().enumerate() {
        let pool = Arc::new(pool);
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..opts.in_flight {
            let (pool, next, conn) = (pool.clone(), next.clone(), conns[c].clone());
            let (senders, window, exhausted) = (senders.clone(), window.clone(), exhausted.clone());
            let ok_per_box = ok_per_box.clone();
            tasks.push(tokio::spawn(async move {
                let creds = &senders[c % senders.len()].device.creds;
                let mut tally = Tally::default();
                let mut outside = Tally::default();
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                tokio::time::sleep_until(t0.into()).await;
                loop {
                    if Instant::now() >= window.end {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = pool.get(i) else {
                        if i == pool.len() {
                            exhausted.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    };
                    let started = Instant::now();
                    let frame = request_frame(&conn, Method::Send, &p.body, Some(creds));
                    let outcome = send_outcome(exchange(&conn, &frame).await);
                    let done = Instant::now();
                    if outcome.is_none() {
                        ok_per_box[p.to_box as usize].fetch_add(1, Ordering::Relaxed);
                    }
                    if !window.contains(done) {
                        // Warm-up, or requests still in flight when the window
                        // closed: not counted, but their errors are reported.
                        match outcome {
                            None => outside.ok += 1,
                            Some(e) => *outside.errors.entry(e).or_default() += 1,
                        }
                        continue;
                    }
                    match outcome {
                        None => {
                            tally.ok += 1;
                            hist.saturating_record(done.duration_since(started).as_micros() as u64);
                        }
                        Some(e) => *tally.errors.entry(e).or_default() += 1,
                    }
                }
                (tally, hist, outside)
            }));
        }
    }
    // CPU and counters over the measured window.
    tokio::time::sleep_until(window.start.into()).await;
    *probe_at_start.lock().unwrap() = Some(Probe::at_start(gw.handle()).await);
    tokio::time::sleep_until(window.end.into()).await;
    let probe_end = Probe::at_end(gw.handle()).await;
    let mut tally = Tally::default();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut outside = Tally::default();
    for t in tasks {
        let (t, h, o) = t.await.expect("sender task");
        tally.merge(t);
        outside.merge(o);
        latency.add(&h).unwrap();
    }
    let rate = tally.ok as f64 / dur.as_secs_f64();
    println!(
        "peak (closed loop, {} connections x {} in flight, {:.0} s after {:.0} s warm-up): \
         {:.0} sends/s ok; errors: {}",
        conns.len(),
        opts.in_flight,
        opts.secs,
        opts.warmup_secs,
        rate,
        tally.errors_line()
    );
    println!(
        "  outside the window (warm-up and requests in flight at its end, not counted): {} ok; \
         errors: {}",
        outside.ok,
        outside.errors_line()
    );
    println!(
        "  closed-loop latency (send to response): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ms(latency.value_at_quantile(0.5)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.value_at_quantile(0.999)),
        ms(latency.max()),
    );
    if let Some(p) = probe_at_start.lock().unwrap().as_mut() {
        p.report(&probe_end, "send", tally.ok);
    }
    let n_exhausted = exhausted.load(Ordering::Relaxed);
    let exhausted = n_exhausted > 0;
    if exhausted {
        println!(
            "  WARNING: {n_exhausted} connections used up their pre-built envelopes before the \
             window ended; the peak is understated: raise ROSSBY_BENCH_MAX_RATE"
        );
    }
    PeakResult {
        rate,
        tally,
        latency,
        exhausted,
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

// ---------------------------------------------------------------------------
// Phase 4: latency at a fixed offered rate (open loop)
// ---------------------------------------------------------------------------

struct LatencyResult {
    offered: f64,
    achieved: f64,
    hist: Histogram<u64>,
    tally: Tally,
}

async fn latency_phase(
    opts: &Opts,
    gw: &GatewayProc,
    conns: &[Conn],
    senders: &Arc<Vec<Sender>>,
    pools: Vec<Vec<Prepared>>,
    rate: f64,
    ok_per_box: &Arc<Vec<AtomicU64>>,
) -> LatencyResult {
    let n_conns = conns.len();
    let total: usize = pools.iter().map(Vec::len).sum();
    let pools: Vec<Arc<Vec<Prepared>>> = pools.into_iter().map(Arc::new).collect();
    let cursors: Vec<usize> = vec![0; n_conns];
    let limits: Vec<Arc<Semaphore>> = (0..n_conns)
        .map(|_| Arc::new(Semaphore::new(opts.latency_in_flight)))
        .collect();
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap(),
    ));
    let tally = Arc::new(Mutex::new(Tally::default()));
    // Requests slower than the goal, by 100-ms slot of their scheduled time: shows
    // whether the tail is spread out or comes from stalls.
    let slow: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let interval = 1.0 / rate;
    let warm = Duration::from_secs_f64(opts.warmup_secs);
    let t0 = Instant::now() + Duration::from_millis(50);
    let measured_from = t0 + warm;
    let mut cursors = cursors;
    let mut tasks = Vec::with_capacity(total);
    let probe_start = {
        let h = gw.handle();
        tokio::spawn(async move {
            tokio::time::sleep_until(measured_from.into()).await;
            Probe::at_start(h).await
        })
    };
    let mut i = 0usize;
    while i < total {
        let now = Instant::now();
        loop {
            let scheduled = t0 + Duration::from_secs_f64(i as f64 * interval);
            if i >= total || scheduled > now {
                break;
            }
            let c = i % n_conns;
            let k = cursors[c];
            cursors[c] += 1;
            let (pool, conn, limit) = (pools[c].clone(), conns[c].clone(), limits[c].clone());
            let (senders, hist, tally) = (senders.clone(), hist.clone(), tally.clone());
            let ok_per_box = ok_per_box.clone();
            let measured = scheduled >= measured_from;
            let slow = slow.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire().await.expect("semaphore");
                let p = &pool[k];
                let creds = &senders[c % senders.len()].device.creds;
                let frame = request_frame(&conn, Method::Send, &p.body, Some(creds));
                let outcome = send_outcome(exchange(&conn, &frame).await);
                let latency = scheduled.elapsed();
                if outcome.is_none() {
                    ok_per_box[p.to_box as usize].fetch_add(1, Ordering::Relaxed);
                }
                if !measured {
                    return;
                }
                match outcome {
                    None => {
                        hist.lock()
                            .unwrap()
                            .saturating_record(latency.as_micros() as u64);
                        tally.lock().unwrap().ok += 1;
                        if latency > SLOW {
                            let slot = scheduled.duration_since(t0).as_millis() as u64 / 100;
                            *slow.lock().unwrap().entry(slot).or_default() += 1;
                        }
                    }
                    Some(e) => *tally.lock().unwrap().errors.entry(e).or_default() += 1,
                }
            }));
            i += 1;
        }
        if i < total {
            let next = t0 + Duration::from_secs_f64(i as f64 * interval);
            tokio::time::sleep_until(next.into()).await;
        }
    }
    let last_scheduled = t0 + Duration::from_secs_f64(total as f64 * interval);
    for t in tasks {
        t.await.expect("latency task");
    }
    let probe_end = Probe::at_end(gw.handle()).await;
    let hist = Arc::try_unwrap(hist).ok().unwrap().into_inner().unwrap();
    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    let measured_secs = last_scheduled.duration_since(measured_from).as_secs_f64();
    let achieved = tally.ok as f64 / measured_secs.max(1e-9);
    println!(
        "latency (open loop, offered {:.0} sends/s = {:.0}% of peak over {} connections, \
         at most {} in flight each, {:.0} s after {:.0} s warm-up): {:.0} sends/s ok; errors: {}",
        rate,
        opts.latency_fraction * 100.0,
        n_conns,
        opts.latency_in_flight,
        measured_secs,
        opts.warmup_secs,
        achieved,
        tally.errors_line()
    );
    println!(
        "  latency from the scheduled time: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, \
         p99.9 {:.2} ms, max {:.2} ms ({} samples)",
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.9)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.value_at_quantile(0.999)),
        ms(hist.max()),
        hist.len()
    );
    let slow = Arc::try_unwrap(slow).ok().unwrap().into_inner().unwrap();
    let n_slow: u64 = slow.values().sum();
    let mut worst: Vec<(u64, u64)> = slow.into_iter().collect();
    worst.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!(
        "  {} requests over {} ms, in {} of the {} 100-ms slots; worst slots (scheduled second: \
         count): {}",
        n_slow,
        SLOW.as_millis(),
        worst.len(),
        (measured_secs * 10.0).round() as u64,
        if worst.is_empty() {
            "none".to_string()
        } else {
            worst
                .iter()
                .take(8)
                .map(|(slot, n)| format!("{:.1}s: {n}", *slot as f64 / 10.0))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    probe_start
        .await
        .expect("probe")
        .report(&probe_end, "send", tally.ok);
    LatencyResult {
        offered: rate,
        achieved,
        hist,
        tally,
    }
}

// ---------------------------------------------------------------------------
// Phase 5: fetch + ack
// ---------------------------------------------------------------------------

struct FetchResult {
    rate: f64,
    envelopes: u64,
    mismatched_devices: usize,
    errors: Tally,
}

async fn fetch_phase(
    opts: &Opts,
    gw: &GatewayProc,
    conns: &[Conn],
    boxes: &Arc<Vec<RecipientBox>>,
    ok_per_box: &Arc<Vec<AtomicU64>>,
) -> FetchResult {
    let n_devices = boxes.len() * 2;
    let fetched: Arc<Vec<AtomicU64>> =
        Arc::new((0..n_devices).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(Mutex::new(Tally::default()));
    let requests = Arc::new(AtomicU64::new(0));
    let mut probe_start = Probe::at_start(gw.handle()).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    // Devices are spread over the connections; each connection serves
    // `fetch_in_flight` devices at a time, each device fetching and acking in turn.
    let n_conns = conns.len();
    for (c, conn) in conns.iter().enumerate() {
        let devices: Vec<usize> = (c..n_devices).step_by(n_conns).collect();
        let devices = Arc::new(devices);
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..opts.fetch_in_flight {
            let (devices, next, conn) = (devices.clone(), next.clone(), conn.clone());
            let (boxes, fetched, errors, requests) = (
                boxes.clone(),
                fetched.clone(),
                errors.clone(),
                requests.clone(),
            );
            let batch = opts.fetch_batch;
            tasks.push(tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&d) = devices.get(k) else { break };
                    let creds = &boxes[d / 2].devices[d % 2].creds;
                    let fetch_body = pb::FetchRequest {
                        max_count: batch,
                        max_bytes: 0,
                        wait_ms: 0,
                    }
                    .encode_to_vec();
                    loop {
                        let frame = request_frame(&conn, Method::Fetch, &fetch_body, Some(creds));
                        requests.fetch_add(1, Ordering::Relaxed);
                        let resp = match exchange(&conn, &frame).await {
                            Ok(r) if r.status == Status::Ok as i32 => r,
                            Ok(r) => {
                                *errors
                                    .lock()
                                    .unwrap()
                                    .errors
                                    .entry(format!("fetch {}", status_name(r.status)))
                                    .or_default() += 1;
                                break;
                            }
                            Err(e) => {
                                *errors
                                    .lock()
                                    .unwrap()
                                    .errors
                                    .entry(format!("fetch {e}"))
                                    .or_default() += 1;
                                break;
                            }
                        };
                        let f =
                            pb::FetchResponse::decode(resp.body.as_slice()).expect("FetchResponse");
                        let Some(last) = f.envelopes.last().map(|e| e.seq) else {
                            break;
                        };
                        fetched[d].fetch_add(f.envelopes.len() as u64, Ordering::Relaxed);
                        let ack = pb::AckRequest { up_to: last }.encode_to_vec();
                        let frame = request_frame(&conn, Method::Ack, &ack, Some(creds));
                        requests.fetch_add(1, Ordering::Relaxed);
                        match exchange(&conn, &frame).await {
                            Ok(r) if r.status == Status::Ok as i32 => {}
                            Ok(r) => {
                                *errors
                                    .lock()
                                    .unwrap()
                                    .errors
                                    .entry(format!("ack {}", status_name(r.status)))
                                    .or_default() += 1;
                                break;
                            }
                            Err(e) => {
                                *errors
                                    .lock()
                                    .unwrap()
                                    .errors
                                    .entry(format!("ack {e}"))
                                    .or_default() += 1;
                                break;
                            }
                        }
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("fetch task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let probe_end = Probe::at_end(gw.handle()).await;
    let envelopes: u64 = fetched.iter().map(|f| f.load(Ordering::Relaxed)).sum();
    let mut mismatched = 0usize;
    let mut extra = 0u64;
    let mut missing = 0u64;
    for d in 0..n_devices {
        let expected = ok_per_box[d / 2].load(Ordering::Relaxed);
        let got = fetched[d].load(Ordering::Relaxed);
        if got != expected {
            mismatched += 1;
            if got > expected {
                extra += got - expected;
            } else {
                missing += expected - got;
            }
        }
    }
    let rate = envelopes as f64 / elapsed;
    let errors = Arc::try_unwrap(errors).ok().unwrap().into_inner().unwrap();
    let expected_total: u64 = ok_per_box
        .iter()
        .map(|c| 2 * c.load(Ordering::Relaxed))
        .sum();
    println!(
        "fetch+ack ({} devices over {} connections, {} devices at a time per connection, \
         batches of {}): {} envelopes in {:.2} s = {:.0} envelopes/s ({} requests); \
         expected {} (2 devices x sends answered OK); devices off: {} ({} missing, {} extra: \
         sends that timed out or failed client-side but were stored); errors: {}",
        n_devices,
        n_conns,
        opts.fetch_in_flight,
        opts.fetch_batch,
        envelopes,
        elapsed,
        rate,
        requests.load(Ordering::Relaxed),
        expected_total,
        mismatched,
        missing,
        extra,
        errors.errors_line()
    );
    probe_start.report(&probe_end, "fetch", requests.load(Ordering::Relaxed));
    FetchResult {
        rate,
        envelopes,
        mismatched_devices: mismatched,
        errors,
    }
}

// ---------------------------------------------------------------------------
// Phase 6: idle connections
// ---------------------------------------------------------------------------

struct IdleResult {
    variant: String,
    conns: usize,
    kib_per_conn: f64,
    anon_kib_per_conn: f64,
    before: Mem,
    after: Mem,
    closed: Mem,
    client_kib_per_conn: f64,
}

fn idle_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(None)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(600)).unwrap(),
        ))
        // The client accepts no streams from the gateway and needs small windows:
        // this keeps the client's own memory down (it is not what is measured).
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(16_384u32.into())
        .receive_window(32_768u32.into())
        .send_window(32_768)
        .datagram_receive_buffer_size(None);
    t
}

async fn ping(conn: &Conn) -> Result<(), String> {
    let body = pb::PingRequest {}.encode_to_vec();
    let frame = request_frame(conn, Method::Ping, &body, None);
    let r = exchange(conn, &frame).await?;
    if r.status == Status::Ok as i32 {
        Ok(())
    } else {
        Err(status_name(r.status))
    }
}

async fn idle_phase(opts: &Opts, base: &Path, n: usize, variant: &str) -> IdleResult {
    let extra = if variant == "default" { "" } else { variant };
    let dir = base.join(format!("idle-{}", rand::random::<u32>()));
    let gw = GatewayProc::start(&dir, extra);
    let endpoints = client_endpoints(&gw, opts.idle_endpoints, idle_transport());
    // One connection and Ping first, so one-time allocations are in the baseline.
    {
        let c = connect(&endpoints[0], gw.quic)
            .await
            .expect("first connection");
        ping(&c).await.expect("first ping");
        c.conn.close(0u32.into(), b"warm");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let before = gw.rss_kib();
    let client_before = Mem::own();
    let started = Instant::now();
    let slots: Arc<Vec<OnceLock<Conn>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());
    let failures = Arc::new(AtomicU64::new(0));
    {
        let (slots, failures) = (slots.clone(), failures.clone());
        let endpoints = Arc::new(endpoints.clone());
        let addr = gw.quic;
        parallel_for(n, 128, move |_, i| {
            let (slots, failures) = (slots.clone(), failures.clone());
            let endpoint = endpoints[i % endpoints.len()].clone();
            async move {
                match connect(&endpoint, addr).await {
                    Ok(c) => match ping(&c).await {
                        Ok(()) => {
                            let _ = slots[i].set(c);
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    }
    let opened = slots.iter().filter(|s| s.get().is_some()).count();
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = gw.rss_kib();
    let client_after = Mem::own();
    let open_metric = gw.metrics().sum("rossby_open_connections", &[]);
    let hold: u64 = env_or("ROSSBY_BENCH_IDLE_HOLD_SECS", 0u64);
    if hold > 0 {
        println!(
            "holding {opened} idle connections to gateway pid {} for {hold} s (VmRSS {} KiB)",
            gw.pid, after.rss
        );
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    // Closed in small batches: 10,000 CONNECTION_CLOSE packets at once would
    // overflow the gateway's UDP receive buffer.
    for (i, s) in slots.iter().enumerate() {
        if let Some(c) = s.get() {
            c.conn.close(0u32.into(), b"done");
        }
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for e in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(10), e.wait_idle()).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed = gw.rss_kib();
    let open_after_close = gw.metrics().sum("rossby_open_connections", &[]);
    drop(slots);
    gw.stop();
    let per = |a: u64, b: u64| (a as f64 - b as f64) / opened.max(1) as f64;
    let r = IdleResult {
        variant: variant.to_string(),
        conns: opened,
        kib_per_conn: per(after.rss, before.rss),
        anon_kib_per_conn: per(after.anon, before.anon),
        before,
        after,
        closed,
        client_kib_per_conn: per(client_after.rss, client_before.rss),
    };
    println!(
        "idle connections [gateway flags: {}]: {} of {} open in {:.1} s ({} failed; gateway \
         reports {} open); gateway VmRSS {} -> {} KiB = {:.1} KiB per connection (RssAnon \
         {:.1} KiB); {} KiB after closing them all ({} still open; freed heap is not returned \
         to the OS); client side {:.1} KiB per connection",
        if extra.is_empty() { "defaults" } else { extra },
        opened,
        n,
        open_secs,
        failures.load(Ordering::Relaxed),
        open_metric as u64,
        r.before.rss,
        r.after.rss,
        r.kib_per_conn,
        r.anon_kib_per_conn,
        r.closed.rss,
        open_after_close as u64,
        r.client_kib_per_conn
    );
    if !opts.keep_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    r
}

// ---------------------------------------------------------------------------
// Phase 7: instructions per send (callgrind)
// ---------------------------------------------------------------------------

/// Instruction count: recipient boxes and sender devices set up (not counted).
const INSTR_BOXES: usize = 100;
const INSTR_SENDERS: usize = 16;
/// Instruction count: load connections and requests in flight on each.
const INSTR_CONNS: usize = 16;
const INSTR_IN_FLIGHT: usize = 4;
/// Instruction count: sends before counting starts (not counted), sends counted.
const INSTR_WARMUP_SENDS: usize = 200;
const INSTR_SENDS: usize = 1_000;
/// Set in the environment of the benchmark's own child run under callgrind.
const INSTR_CHILD_ENV: &str = "ROSSBY_BENCH_INSTRUCTIONS_CHILD";
/// Flags of the counted gateway: timer-driven jobs (maintenance rounds, ownership
/// lease renewals) are moved out of the counted window, so the count depends on
/// the sends and not on how long they took under Valgrind.
const INSTR_GATEWAY_ARGS: &str = "--maintenance-interval-ms 3600000 --maintenance-lease-ms \
    7200000 --owner-lease-ms 600000 --owner-renew-ms 300000";

#[path = "../../storage/benches/support/valgrind.rs"]
mod valgrind;

/// A callgrind monitor command (`instrumentation on`, `dump`, ...) sent to the
/// Valgrind process `pid` through `vgdb`; returns once the command has run.
fn vgdb(pid: u32, command: &str) -> Result<(), String> {
    let out = Command::new("vgdb")
        .arg(format!("--pid={pid}"))
        .args(command.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run vgdb: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "vgdb {command} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `defaults` flags, except those that `user` sets too, followed by `user`.
fn merge_flags(defaults: &str, user: &str) -> String {
    let user_words: Vec<&str> = user.split_whitespace().collect();
    let mut out: Vec<&str> = Vec::new();
    let words: Vec<&str> = defaults.split_whitespace().collect();
    for pair in words.chunks(2) {
        if !user_words.contains(&pair[0]) {
            out.extend_from_slice(pair);
        }
    }
    out.extend(user_words);
    out.join(" ")
}

/// Sends every prepared body once, closed loop: `in_flight` tasks per connection.
async fn fixed_sends(
    conns: &[Conn],
    senders: &Arc<Vec<Sender>>,
    pools: Vec<Vec<Prepared>>,
) -> Tally {
    let mut tasks = Vec::new();
    for (c, pool) in pools.into_iter().enumerate() {
        let pool = Arc::new(pool);
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..INSTR_IN_FLIGHT {
            let (pool, next, conn, senders) = (
                pool.clone(),
                next.clone(),
                conns[c].clone(),
                senders.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let creds = &senders[c % senders.len()].device.creds;
                let mut tally = Tally::default();
                while let Some(p) = pool.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let frame = request_frame(&conn, Method::Send, &p.body, Some(creds));
                    match send_outcome(exchange(&conn, &frame).await) {
                        None => tally.ok += 1,
                        Some(e) => *tally.errors.entry(e).or_default() += 1,
                    }
                }
                tally
            }));
        }
    }
    let mut tally = Tally::default();
    for t in tasks {
        tally.merge(t.await.expect("send task"));
    }
    tally
}

/// Instruction counts of one run: the gateway's and the client's (this process,
/// when it runs under callgrind), over `sends` OK sends.
struct InstrResult {
    sends: u64,
    errors: u64,
    gateway: u64,
    client: Option<u64>,
}

/// Splits `n` envelopes over the instruction phase's connections.
fn instr_counts(n: usize) -> Vec<usize> {
    (0..INSTR_CONNS)
        .map(|c| n / INSTR_CONNS + usize::from(c < n % INSTR_CONNS))
        .collect()
}

/// The measurement, in the child run under callgrind: a fresh gateway under
/// callgrind too, set up and warmed up uninstrumented; then both processes count
/// exactly [`INSTR_SENDS`] sends. The gateway's count comes from a `vgdb dump`
/// right after the last answer; the client's count is written when this process
/// exits, so the parent reads it.
async fn instructions_child(opts: &Opts, base: &Path) -> InstrResult {
    let dir = base.join("instructions");
    std::fs::create_dir_all(&dir).expect("create the instruction directory");
    let out = dir.join("gateway.callgrind.out");
    let wrapper = valgrind::callgrind_command(&out, &dir.join("gateway.valgrind.log"));
    let extra = merge_flags(INSTR_GATEWAY_ARGS, &opts.gateway_args);
    let gw = GatewayProc::start_wrapped(&dir.join("gateway"), &extra, &wrapper);
    println!(
        "instructions: gateway under callgrind (pid {}, flags {extra})",
        gw.pid
    );
    let setup_opts = Opts {
        boxes: INSTR_BOXES,
        senders: INSTR_SENDERS,
        setup_conns: 8,
        setup_workers: 32,
        ..opts.clone()
    };
    let (boxes, senders) = setup(&setup_opts, &gw).await;
    let senders = Arc::new(senders);
    let (warm_pools, _) = build_envelopes(&instr_counts(INSTR_WARMUP_SENDS), &boxes, &senders);
    let (pools, _) = build_envelopes(&instr_counts(INSTR_SENDS), &boxes, &senders);
    let endpoints = client_endpoints(&gw, opts.client_endpoints, load_transport());
    let conns = connect_many(&endpoints, gw.quic, INSTR_CONNS, INSTR_CONNS).await;
    let warm = fixed_sends(&conns, &senders, warm_pools).await;
    // Let the warm-up's trailing work (acknowledgements, the last sync) finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = gw.pid;
    tokio::task::spawn_blocking(move || vgdb(pid, "instrumentation on"))
        .await
        .expect("vgdb task")
        .unwrap_or_else(|e| panic!("{e}"));
    valgrind::start_instrumentation();
    let tally = fixed_sends(&conns, &senders, pools).await;
    valgrind::stop_instrumentation();
    tokio::task::spawn_blocking(move || {
        vgdb(pid, "dump")?;
        vgdb(pid, "instrumentation off")
    })
    .await
    .expect("vgdb task")
    .unwrap_or_else(|e| panic!("{e}"));
    let gateway = valgrind::callgrind_total(&dir.join("gateway.callgrind.out.1"))
        .unwrap_or_else(|e| panic!("gateway count: {e}"));
    if let Some(keep) = std::env::var_os("ROSSBY_BENCH_CALLGRIND_OUT") {
        let mut keep = keep;
        keep.push(".gateway");
        let keep = PathBuf::from(keep);
        std::fs::copy(dir.join("gateway.callgrind.out.1"), &keep).expect("copy the profile");
        println!(
            "instructions: the gateway's profile is in {}",
            keep.display()
        );
    }
    if warm.error_count() + tally.error_count() > 0 {
        println!(
            "instructions: errors in the warm-up: {}; while counting: {}",
            warm.errors_line(),
            tally.errors_line()
        );
    }
    for c in &conns {
        c.conn.close(0u32.into(), b"done");
    }
    for e in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(5), e.wait_idle()).await;
    }
    gw.stop();
    InstrResult {
        sends: tally.ok,
        errors: tally.error_count(),
        gateway,
        client: None,
    }
}

/// The result line of the child run, read back by the parent.
const INSTR_CHILD_LINE: &str = "gateway-bench-instructions-child";

/// Runs this benchmark again under callgrind with only the measurement (see
/// [`instructions_child`]); relays its output, indented, and adds the client's
/// count from its callgrind output.
fn instructions_phase(opts: &Opts, base: &Path) -> Result<InstrResult, String> {
    let dir = base.join("instructions-client");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let out = dir.join("client.callgrind.out");
    let log = dir.join("client.valgrind.log");
    let words = valgrind::callgrind_command(&out, &log);
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    // The child's watchdog fires before this process's, so that the child stops
    // its own gateway (which runs in a process group of its own).
    let elapsed = STARTED.get().map_or(0, |t| t.elapsed().as_secs());
    let timeout = opts.timeout_secs.saturating_sub(elapsed + 30).max(1);
    let started = Instant::now();
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..])
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .env(INSTR_CHILD_ENV, "1")
        .env("ROSSBY_BENCH_PHASES", "instructions")
        .env("ROSSBY_BENCH_DIR", &dir)
        .env("ROSSBY_BENCH_TIMEOUT_SECS", timeout.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run valgrind (is it installed?): {e}"))?;
    CHILDREN.lock().unwrap().push(child.id());
    let mut result = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix(INSTR_CHILD_LINE) {
                let field = |name: &str| {
                    rest.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                if let (Some(sends), Some(errors), Some(gateway)) =
                    (field("sends="), field("errors="), field("gateway="))
                {
                    result = Some(InstrResult {
                        sends,
                        errors,
                        gateway,
                        client: None,
                    });
                }
            } else {
                println!("  | {line}");
            }
        }
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    CHILDREN.lock().unwrap().retain(|p| *p != child.id());
    let Some(mut result) = result.filter(|_| status.success()) else {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(format!(
            "the callgrind run failed ({status}); valgrind's log:\n{log}"
        ));
    };
    result.client = Some(valgrind::callgrind_total(&out)?);
    if let Some(keep) = std::env::var_os("ROSSBY_BENCH_CALLGRIND_OUT") {
        let mut keep = keep;
        keep.push(".client");
        let keep = PathBuf::from(keep);
        std::fs::copy(&out, &keep).map_err(|e| format!("copy the profile: {e}"))?;
        println!(
            "instructions: the client's profile is in {}",
            keep.display()
        );
    }
    println!(
        "instructions (callgrind, {INSTR_SENDS} sends after {INSTR_WARMUP_SENDS} uncounted, \
         {INSTR_CONNS} connections x {INSTR_IN_FLIGHT} in flight, {INSTR_BOXES} recipient boxes, \
         all threads): gateway {} instructions, client {} instructions, {} sends ok, {} errors, \
         in {:.0} s",
        result.gateway,
        result.client.unwrap_or(0),
        result.sends,
        result.errors,
        started.elapsed().as_secs_f64()
    );
    Ok(result)
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

/// A provisioned device once authorized: its box and Hawk credentials.
type Authorized = OnceLock<([u8; 16], DeviceCredentials)>;

fn main() {
    let opts = Opts::from_env();
    if std::env::var_os(INSTR_CHILD_ENV).is_some() {
        child_main(&opts);
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is accepted.
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!(
            "gateway-bench: configure with the ROSSBY_BENCH_* variables of docs/performance.md"
        );
        return;
    }
    opts.print();
    println!(
        "machine: {} cores; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    STARTED.get_or_init(Instant::now);
    // Watchdog: the run is bounded whatever happens.
    {
        let limit = Duration::from_secs(opts.timeout_secs);
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            eprintln!("gateway-bench: still running after {limit:?}; giving up");
            for pid in CHILDREN.lock().unwrap().iter() {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
            std::process::exit(3);
        });
    }

    let tmp = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).expect("create ROSSBY_BENCH_DIR");
            tempfile::Builder::new()
                .prefix("gateway-bench-")
                .tempdir_in(d)
        }
        None => tempfile::Builder::new().prefix("gateway-bench-").tempdir(),
    }
    .expect("temporary directory");
    println!("data directory: {}", tmp.path().display());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.client_threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (send_rate, p50, p99, fetch_rate, instructions) = runtime.block_on(run(&opts, tmp.path()));
    drop(runtime);
    if opts.keep_dir {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    if opts.has("instructions") {
        let r = instructions.unwrap_or(InstrResult {
            sends: 0,
            errors: 0,
            gateway: 0,
            client: None,
        });
        let client = r.client.unwrap_or(0);
        println!(
            "gateway-bench instructions_per_send={} client_instructions_per_send={} sends={} \
             gateway_instructions={} client_instructions={client}",
            r.gateway / r.sends.max(1),
            client / r.sends.max(1),
            r.sends,
            r.gateway,
        );
    }
    println!(
        "gateway-bench send_per_s={:.0} p50_ms={:.2} p99_ms={:.2} fetch_envelopes_per_s={:.0}",
        send_rate, p50, p99, fetch_rate
    );
}

/// The child run under callgrind (phase `instructions`): only the measurement;
/// its result line is read by the parent.
fn child_main(opts: &Opts) {
    if valgrind::running_on_valgrind() == 0 {
        eprintln!(
            "gateway-bench: {INSTR_CHILD_ENV} is set but this process does not run under \
             Valgrind (instruction counts need x86-64 Linux and valgrind --tool=callgrind)"
        );
        std::process::exit(2);
    }
    {
        let limit = Duration::from_secs(opts.timeout_secs);
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            eprintln!("gateway-bench: the instruction count still runs after {limit:?}");
            for pid in CHILDREN.lock().unwrap().iter() {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
            std::process::exit(3);
        });
    }
    let base = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.client_threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = runtime.block_on(instructions_child(opts, &base));
    drop(runtime);
    println!(
        "{INSTR_CHILD_LINE} sends={} errors={} gateway={}",
        r.sends, r.errors, r.gateway
    );
}

async fn run(opts: &Opts, base: &Path) -> (f64, f64, f64, f64, Option<InstrResult>) {
    let mut send_rate = 0.0;
    let (mut p50, mut p99) = (0.0, 0.0);
    let mut fetch_rate = 0.0;
    let mut crypto = None;
    let mut peak: Option<PeakResult> = None;
    let mut latency = None;
    let mut fetched = None;
    let wants_load = opts.has("send") || opts.has("latency") || opts.has("fetch");
    if wants_load {
        let gw = GatewayProc::start(&base.join("gateway"), &opts.gateway_args);
        println!(
            "gateway: pid {}, quic {}, admin {}, VmRSS {} KiB",
            gw.pid,
            gw.quic,
            gw.admin,
            gw.rss_kib().rss
        );
        let (boxes, senders) = setup(opts, &gw).await;
        let (sdk_us, hawk_us) = client_cost_samples(&boxes, &senders);
        println!(
            "client per-send costs outside the crypto above: the SDK's seal_for_list (verifies \
             both key bundles, then seals) {sdk_us:.1} us; Hawk signing of a ~3.8 KB body \
             {hawk_us:.1} us"
        );
        let boxes = Arc::new(boxes);
        let senders = Arc::new(senders);
        let ok_per_box: Arc<Vec<AtomicU64>> =
            Arc::new((0..boxes.len()).map(|_| AtomicU64::new(0)).collect());

        let endpoints = client_endpoints(&gw, opts.client_endpoints, load_transport());
        let conns = connect_many(&endpoints, gw.quic, opts.conns, 64).await;
        println!(
            "{} load connections open from {} client endpoints; gateway VmRSS {} KiB",
            conns.len(),
            endpoints.len(),
            gw.rss_kib().rss
        );

        if opts.has("send") {
            let per_conn = ((opts.max_rate * (opts.secs + opts.warmup_secs)) / opts.conns as f64)
                .ceil() as usize;
            let counts = vec![per_conn.max(1); opts.conns];
            let (pools, stats) = build_envelopes(&counts, &boxes, &senders);
            print_crypto("envelopes for the peak phase", &stats);
            crypto = Some(stats);
            let r = peak_phase(opts, &gw, &conns, &senders, pools, &ok_per_box).await;
            send_rate = r.rate;
            peak = Some(r);
        }
        if opts.has("latency") {
            let peak_rate = peak.as_ref().map_or(opts.max_rate, |p| p.rate);
            let rate = (peak_rate * opts.latency_fraction).max(1.0);
            let total = (rate * (opts.secs + opts.warmup_secs)).ceil() as usize;
            let counts: Vec<usize> = (0..opts.conns)
                .map(|c| total / opts.conns + usize::from(c < total % opts.conns))
                .collect();
            let (pools, stats) = build_envelopes(&counts, &boxes, &senders);
            print_crypto("envelopes for the latency phase", &stats);
            let r = latency_phase(opts, &gw, &conns, &senders, pools, rate, &ok_per_box).await;
            p50 = ms(r.hist.value_at_quantile(0.5));
            p99 = ms(r.hist.value_at_quantile(0.99));
            latency = Some(r);
        }
        if opts.has("fetch") {
            let r = fetch_phase(opts, &gw, &conns, &boxes, &ok_per_box).await;
            fetch_rate = r.rate;
            fetched = Some(r);
        }
        for c in &conns {
            c.conn.close(0u32.into(), b"done");
        }
        for e in &endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(5), e.wait_idle()).await;
        }
        let store_bytes = dir_size(&base.join("gateway").join("store"));
        println!(
            "gateway after the load phases: VmRSS {} KiB, store {:.1} MiB on disk",
            gw.rss_kib().rss,
            store_bytes as f64 / (1024.0 * 1024.0)
        );
        gw.stop();
    }
    let mut idle = Vec::new();
    if opts.has("idle") && opts.idle_conns > 0 {
        for variant in &opts.idle_variants {
            idle.push(idle_phase(opts, base, opts.idle_conns, variant).await);
        }
    }

    let mut instructions = None;
    if opts.has("instructions") {
        let (o, b) = (opts.clone(), base.to_path_buf());
        match tokio::task::spawn_blocking(move || instructions_phase(&o, &b))
            .await
            .expect("instruction phase")
        {
            Ok(r) => instructions = Some(r),
            Err(e) => eprintln!("gateway-bench: instruction count failed: {e}"),
        }
    }

    println!("summary:");
    if let Some(c) = &crypto {
        println!(
            "  client crypto: {:.0} us CPU per envelope (1 KiB text sealed to 2 devices), \
             {} B per envelope",
            c.us_per_envelope(),
            c.envelope_bytes / c.envelopes.max(1)
        );
    }
    if let Some(p) = &peak {
        println!(
            "  peak: {:.0} sends/s ok, {} errors{}; closed-loop p50 {:.2} ms, p99 {:.2} ms",
            p.rate,
            p.tally.error_count(),
            if p.exhausted {
                " (pre-built envelopes ran out: understated)"
            } else {
                ""
            },
            ms(p.latency.value_at_quantile(0.5)),
            ms(p.latency.value_at_quantile(0.99)),
        );
    }
    if let Some(l) = &latency {
        println!(
            "  latency at {:.0} sends/s offered ({:.0} achieved, {} errors): p50 {:.2} ms, \
             p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            l.offered,
            l.achieved,
            l.tally.error_count(),
            ms(l.hist.value_at_quantile(0.5)),
            ms(l.hist.value_at_quantile(0.99)),
            ms(l.hist.value_at_quantile(0.999)),
            ms(l.hist.max()),
        );
    }
    if let Some(f) = &fetched {
        println!(
            "  fetch+ack: {:.0} envelopes/s, {} envelopes, {} devices off their expected \
             count, {} errors",
            f.rate,
            f.envelopes,
            f.mismatched_devices,
            f.errors.error_count()
        );
    }
    for r in &idle {
        println!(
            "  idle [{}]: {} connections, {:.1} KiB per connection (VmRSS {} -> {} KiB, \
             RssAnon {:.1} KiB per connection, {} KiB after closing)",
            r.variant,
            r.conns,
            r.kib_per_conn,
            r.before.rss,
            r.after.rss,
            r.anon_kib_per_conn,
            r.closed.rss
        );
    }
    if let Some(r) = &instructions {
        println!(
            "  instructions per send ({} sends): gateway {}, client {}",
            r.sends,
            r.gateway / r.sends.max(1),
            r.client.unwrap_or(0) / r.sends.max(1)
        );
    }
    (send_rate, p50, p99, fetch_rate, instructions)
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
