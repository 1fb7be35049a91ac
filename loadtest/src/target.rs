//! Which gateways the load generator talks to, and how its clients reach them.
//!
//! The only addresses ever dialled are the ones the scenario's topology names
//! (resolved once, before anything is sent), or, in local mode, the loopback
//! addresses of the gateways this process started. Each device talks to a
//! gateway of its user's region; a region with several gateways spreads its
//! devices over them.

use crate::error::{Error, Result};
use crate::plan::DevicePlan;
use rossby_client::{ClientConfig, RetryPolicy, StateKey};
use rossby_protocol::hawk::ServiceName;
use rossby_replication::Topology;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// One gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// The name its certificate is checked against.
    pub server_name: String,
    /// The address as the topology writes it.
    pub written: String,
}

/// The gateways of every region and what clients need to trust them.
#[derive(Clone, Debug)]
pub struct Targets {
    /// Gateways by region index (topology order).
    pub regions: Vec<Vec<Gateway>>,
    /// The pinned certificate (DER); `None`: the web PKI roots.
    pub ca_cert_der: Option<Vec<u8>>,
    /// The service name requests are signed for.
    pub service: ServiceName,
}

/// How hard clients try before reporting an error. Bounded so a dead gateway
/// turns into counted errors within the run's deadlines.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        max_rate_limit_wait: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(5),
        max_connect_attempts: 3,
        request_timeout: Duration::from_secs(10),
    }
}

impl Targets {
    /// Resolves every region's gateway addresses (`host:port`) of `topology`.
    /// With `loopback_only`, an address that is not a loopback address is an
    /// error.
    pub async fn resolve(
        topology: &Topology,
        ca_cert_der: Option<Vec<u8>>,
        service: ServiceName,
        loopback_only: bool,
    ) -> Result<Targets> {
        let mut regions = Vec::new();
        for region in topology.regions() {
            let mut gateways = Vec::new();
            for g in &region.gateways {
                let bad = |reason: String| Error::Address {
                    region: region.name.clone(),
                    addr: g.quic.clone(),
                    reason,
                };
                let host = host_of(&g.quic).ok_or_else(|| bad("not host:port".into()))?;
                let addr = tokio::net::lookup_host(g.quic.as_str())
                    .await
                    .map_err(|e| bad(format!("cannot resolve: {e}")))?
                    .next()
                    .ok_or_else(|| bad("resolves to no address".into()))?;
                if loopback_only && !addr.ip().is_loopback() {
                    return Err(bad("local mode only talks to loopback addresses".into()));
                }
                gateways.push(Gateway {
                    addr,
                    server_name: host.to_string(),
                    written: g.quic.clone(),
                });
            }
            if gateways.is_empty() {
                return Err(Error::Address {
                    region: region.name.clone(),
                    addr: String::new(),
                    reason: "the region has no gateway".into(),
                });
            }
            regions.push(gateways);
        }
        Ok(Targets {
            regions,
            ca_cert_der,
            service,
        })
    }

    /// The gateway a device talks to.
    pub fn gateway_for(&self, device: &DevicePlan) -> Option<&Gateway> {
        let gateways = self.regions.get(usize::from(device.region))?;
        gateways.get(device.slot as usize % gateways.len())
    }

    /// The client configuration of a device whose state lives in `state_dir`.
    pub fn client_config(
        &self,
        state_dir: &Path,
        device: &DevicePlan,
        create: bool,
    ) -> Result<ClientConfig> {
        let gateway = self.gateway_for(device).ok_or_else(|| Error::Address {
            region: device.region.to_string(),
            addr: String::new(),
            reason: "no gateway for this region".into(),
        })?;
        Ok(ClientConfig {
            state_path: state_dir.join(device.state_file()),
            state_key: StateKey::KeyFile,
            kdf: rossby_client::KdfParams::default(),
            create,
            device_label: format!("loadtest-{}", device.index),
            gateway: Some(gateway.addr),
            server_name: Some(gateway.server_name.clone()),
            ca_cert_der: self.ca_cert_der.clone(),
            service_name: Some(self.service.clone()),
            retry: retry_policy(),
            state_compaction: Default::default(),
        })
    }
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> Option<&str> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    #[test]
    fn hosts_are_split_from_ports() {
        assert_eq!(host_of("gw1.example.net:7400"), Some("gw1.example.net"));
        assert_eq!(host_of("127.0.0.1:1"), Some("127.0.0.1"));
        assert_eq!(host_of("[::1]:7400"), Some("::1"));
        assert_eq!(host_of("gw1.example.net"), None);
        assert_eq!(host_of(":7400"), None);
        assert_eq!(host_of("host:port"), None);
    }

    #[tokio::test]
    async fn local_mode_refuses_addresses_off_loopback() {
        let a = format!(
            r#"{}, {{ quic = "127.0.0.2:7400", admin = "127.0.0.1:7402" }}"#,
            testkit::GATEWAY_A
        );
        let b = r#"{ quic = "10.1.2.3:7400", admin = "10.1.2.3:7401" }"#;
        let topology = Topology::parse(&testkit::topology_text(&a, Some(b))).unwrap();
        let err = Targets::resolve(&topology, None, ServiceName::default(), true)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        let t = Targets::resolve(&topology, None, ServiceName::default(), false)
            .await
            .unwrap();
        assert_eq!(t.regions[0].len(), 2);
        let device = DevicePlan {
            slot: 3,
            user: 1,
            index: 1,
            region: 0,
        };
        assert_eq!(t.gateway_for(&device).unwrap().written, "127.0.0.2:7400");
        let c = t.client_config(Path::new("/s"), &device, false).unwrap();
        assert_eq!(c.state_path, Path::new("/s/u1-d1.state"));
        assert_eq!(c.server_name.as_deref(), Some("127.0.0.2"));
    }
}
