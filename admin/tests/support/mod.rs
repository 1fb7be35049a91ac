//! Three gateways of the example topology (us-east, eu-west, ap-southeast) in
//! this process over one in-memory store, as separate gateways so a test can
//! stop one region, and a topology file naming their loopback addresses.

#![allow(dead_code)]

use rossby_gateway::config::{StorageConfig, read_topology};
use rossby_gateway::peer::PeerConfig;
use rossby_gateway::peer::tls::DevCa;
use rossby_gateway::settings::VerifierSpec;
use rossby_gateway::{Config, Gateway};
use rossby_keyspace::RegionId;
use rossby_replication::Topology;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The example topology's regions, in order.
pub const REGIONS: [(&str, RegionId); 3] = [
    ("us-east", RegionId(1)),
    ("eu-west", RegionId(2)),
    ("ap-southeast", RegionId(3)),
];

pub fn example_topology() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/three-regions.toml")
}

/// The running gateways (`None` once stopped) and their files.
pub struct Local {
    pub dir: tempfile::TempDir,
    pub gateways: Vec<Option<Gateway>>,
    /// The codes file every gateway's `file:` verifier appends to.
    pub codes: PathBuf,
    /// The example topology with each region's gateway replaced by the
    /// loopback one.
    pub topology_path: PathBuf,
    pub topology: Topology,
    pub quic: Vec<SocketAddr>,
    pub admin: Vec<SocketAddr>,
}

impl Local {
    pub async fn start() -> Local {
        let dir = tempfile::tempdir().unwrap();
        let kv = rossby_storage::kv::open(&rossby_storage::kv::BackendConfig::Memory)
            .await
            .unwrap();
        let ca = DevCa::generate().unwrap();
        let example = Arc::new(read_topology(&example_topology()).unwrap());
        let codes = dir.path().join("codes.txt");
        let mut gateways = Vec::new();
        let mut base: Option<Config> = None;
        for (name, region) in REGIONS {
            let mut c = Config::for_tests(dir.path().join(name));
            if let Some(base) = &base {
                c = c.same_deployment_as(base);
            }
            c.storage = StorageConfig::Shared(kv.clone());
            c.api.region = region;
            c.api.topology = Some(example.clone());
            c.api.verifier = VerifierSpec::File(codes.clone());
            let mut peer = PeerConfig::loopback(ca.issue("127.0.0.1").unwrap());
            peer.owner_lease = Duration::from_millis(1500);
            peer.owner_renew = Duration::from_millis(300);
            c.peer = Some(peer);
            if base.is_none() {
                base = Some(c.clone());
            }
            gateways.push(Some(Gateway::start(c).await.unwrap()));
        }
        let quic: Vec<SocketAddr> = gateways.iter().flatten().map(|g| g.quic_addr()).collect();
        let admin: Vec<SocketAddr> = gateways.iter().flatten().map(|g| g.admin_addr()).collect();
        let mut text = String::from("primary = \"us-east\"\nsurvival = \"zone\"\n");
        for (i, (name, region)) in REGIONS.iter().enumerate() {
            text.push_str(&format!(
                "[[regions]]\ncode = {}\nname = \"{name}\"\nzones = [\"{name}-a\"]\ngateways = [{{ quic = \"{}\", admin = \"{}\" }}]\n",
                region.0, quic[i], admin[i]
            ));
        }
        text.push_str(
            "[rtt_ms]\n\"us-east:eu-west\" = 70\n\"us-east:ap-southeast\" = 200\n\"eu-west:ap-southeast\" = 160\n",
        );
        let topology_path = dir.path().join("local-topology.toml");
        std::fs::write(&topology_path, &text).unwrap();
        let topology = Topology::parse(&text).unwrap();
        Local {
            dir,
            gateways,
            codes,
            topology_path,
            topology,
            quic,
            admin,
        }
    }

    /// The certificate region `i`'s gateway serves (each generated its own).
    pub fn ca_der(&self, i: usize) -> Vec<u8> {
        self.gateways[i]
            .as_ref()
            .unwrap()
            .certificate_der()
            .to_vec()
    }

    /// Stops region `i`'s gateway.
    pub async fn stop(&mut self, i: usize) {
        if let Some(g) = self.gateways[i].take() {
            g.shutdown().await;
        }
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.gateways.len() {
            self.stop(i).await;
        }
    }
}

/// `GET path` on `addr`: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// The samples of a Prometheus text page: `name{labels}` -> value.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}
