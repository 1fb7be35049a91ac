//! Local multi-region mode: one gateway per region of a topology, all in this
//! process over one store, each on a free loopback port. For demos and load tests
//! on one machine (`rossby-gateway --local --topology FILE`).
//!
//! The topology's own gateway addresses are ignored; the deployment's
//! [`LocalDeployment::topology`] is the same topology with each region's gateways
//! replaced by the local ones, and every gateway is configured with it, so replies
//! that point a client to its box's home region name reachable loopback addresses.
//! With `--wan-sim` each gateway delays storage by the round trips of its own
//! region, so cross-region traffic shows the latencies of a real deployment.
//!
//! The gateways notify each other of new messages over the peer transport, as in
//! a real deployment, with certificates of a development CA generated for this run
//! (any peer options of the base configuration are replaced: one listen address
//! cannot serve several gateways).

use crate::config::{Config, StorageConfig};
use crate::error::{Error, Result};
use crate::gateway::{Gateway, release_store};
use crate::peer::PeerConfig;
use crate::peer::tls::DevCa;
use rossby_keyspace::RegionId;
use rossby_replication::{GatewayAddrs, Topology};
use rossby_storage::Kv;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;

/// Attempts at starting a region's gateway when a port picked for it was taken by
/// someone else in the meantime.
const PORT_ATTEMPTS: usize = 5;

/// One region's gateway of a [`LocalDeployment`].
pub struct LocalGateway {
    /// The region's code.
    pub code: RegionId,
    /// The region's name.
    pub name: String,
    /// The running gateway.
    pub gateway: Gateway,
}

/// A running local multi-region deployment. Stop it with
/// [`LocalDeployment::shutdown`].
pub struct LocalDeployment {
    gateways: Vec<LocalGateway>,
    topology: Topology,
    /// The store, when this deployment opened it (closed at shutdown).
    owned_kv: Option<Kv>,
}

impl LocalDeployment {
    /// Starts one gateway per region of `base.api.topology`. Every gateway gets
    /// `base` with its own region and loopback addresses; they share one store
    /// (opened here unless `base.storage` is already shared) and `base`'s data
    /// directory, secrets and certificate.
    pub async fn start(base: Config) -> Result<LocalDeployment> {
        let Some(topology) = base.api.topology.clone() else {
            return Err(Error::Config(
                "local mode needs a topology (--topology FILE)".into(),
            ));
        };
        crate::config::create_private_dir(&base.data_dir)?;
        let (kv, owned) = match &base.storage {
            StorageConfig::Backend(backend) => (rossby_storage::kv::open(backend).await?, true),
            StorageConfig::Shared(kv) => (kv.clone(), false),
        };
        let mut started = Vec::new();
        let mut local_topology = None;
        for attempt in 1..=PORT_ATTEMPTS {
            match start_all(&base, &topology, &kv).await {
                Ok((gateways, topology)) => {
                    started = gateways;
                    local_topology = Some(topology);
                    break;
                }
                Err(err) if attempt < PORT_ATTEMPTS && is_addr_in_use(&err) => {
                    tracing::debug!(error = %err, "a picked port was taken; picking again");
                }
                Err(err) => {
                    if owned {
                        release_store(kv).await;
                    }
                    return Err(err);
                }
            }
        }
        let Some(topology) = local_topology else {
            return Err(Error::Config(
                "local mode could not find free loopback ports".into(),
            ));
        };
        Ok(LocalDeployment {
            gateways: started,
            topology,
            owned_kv: owned.then_some(kv),
        })
    }

    /// The gateways, in the topology's region order.
    pub fn gateways(&self) -> &[LocalGateway] {
        &self.gateways
    }

    /// The gateway of a region.
    pub fn gateway(&self, code: RegionId) -> Option<&Gateway> {
        self.gateways
            .iter()
            .find(|g| g.code == code)
            .map(|g| &g.gateway)
    }

    /// The topology with every region's gateways replaced by the local ones.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Drains and stops every gateway (concurrently), then closes the store.
    pub async fn shutdown(self) {
        let LocalDeployment {
            gateways, owned_kv, ..
        } = self;
        let stops: Vec<_> = gateways
            .into_iter()
            .map(|g| tokio::spawn(g.gateway.shutdown()))
            .collect();
        for stop in stops {
            let _ = stop.await;
        }
        if let Some(kv) = owned_kv {
            release_store(kv).await;
        }
    }
}

/// Picks ports, starts every region's gateway on them and returns the gateways
/// with the topology naming them. On failure the gateways already started are
/// stopped again.
async fn start_all(
    base: &Config,
    topology: &Topology,
    kv: &Kv,
) -> Result<(Vec<LocalGateway>, Topology)> {
    let mut addrs = Vec::new();
    for region in topology.regions() {
        addrs.push((region.code, free_udp_port()?, free_tcp_port()?));
    }
    let local = with_gateways(topology, &addrs)?;
    let local_arc = Arc::new(local.clone());
    let ca = DevCa::generate()?;
    let mut gateways: Vec<LocalGateway> = Vec::new();
    for (region, (code, quic, admin)) in topology.regions().iter().zip(&addrs) {
        let mut config = base.clone();
        config.api.region = *code;
        config.api.topology = Some(local_arc.clone());
        config.listen = *quic;
        config.admin_listen = *admin;
        config.storage = StorageConfig::Shared(kv.clone());
        let mut peer = PeerConfig::loopback(ca.issue("127.0.0.1")?);
        (peer.owner_lease, peer.owner_renew) = base.owner_lease;
        if let Some(base_peer) = &base.peer {
            peer.lease = base_peer.lease;
            peer.renew_interval = base_peer.renew_interval;
        }
        config.peer = Some(peer);
        match Gateway::start(config).await {
            Ok(gateway) => gateways.push(LocalGateway {
                code: *code,
                name: region.name.clone(),
                gateway,
            }),
            Err(err) => {
                for started in gateways {
                    started.gateway.shutdown().await;
                }
                return Err(err);
            }
        }
    }
    Ok((gateways, local))
}

/// `topology` with each region's gateways replaced by one at the given addresses.
fn with_gateways(
    topology: &Topology,
    addrs: &[(RegionId, SocketAddr, SocketAddr)],
) -> Result<Topology> {
    let gateways: Vec<(RegionId, Vec<GatewayAddrs>)> = addrs
        .iter()
        .map(|(code, quic, admin)| {
            let gateway = GatewayAddrs {
                quic: quic.to_string(),
                admin: admin.to_string(),
            };
            (*code, vec![gateway])
        })
        .collect();
    topology
        .with_gateways(&gateways)
        .map_err(|e| Error::Config(format!("local topology: {e}")))
}

fn free_udp_port() -> Result<SocketAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| Error::Io {
        context: "cannot pick a free loopback UDP port".into(),
        source: e,
    })?;
    socket.local_addr().map_err(|e| Error::Io {
        context: "loopback UDP port".into(),
        source: e,
    })
}

fn free_tcp_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| Error::Io {
        context: "cannot pick a free loopback TCP port".into(),
        source: e,
    })?;
    listener.local_addr().map_err(|e| Error::Io {
        context: "loopback TCP port".into(),
        source: e,
    })
}

fn is_addr_in_use(err: &Error) -> bool {
    matches!(err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
}
