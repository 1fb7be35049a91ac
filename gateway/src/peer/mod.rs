//! Cross-region (and cross-gateway) push: gateways notify each other of commits
//! into boxes whose devices wait elsewhere.
//!
//! Without this, a device subscribed to gateway G1 hears of a message committed
//! through G2 only when it, or a waiting fetch on G1, polls storage. With it:
//! 1. a Subscribe or a waiting Fetch on G1 records a presence lease in storage
//!    (`box/{box}/presence/{device}`: G1's peer address, G1's run id, an expiry),
//!    renewed while it lives and released after it ends ([`leases`]);
//! 2. after a commit, G2 reads the live leases of the box, off the reply path,
//!    and notifies every other gateway named there ([`fanout`], [`notifier`]);
//! 3. G1 receives the notification on its peer endpoint and wakes its waiters and
//!    pushes `MessagesAvailable` exactly as a local commit does ([`server`]).
//!
//! The peer endpoint is its own QUIC endpoint with mutual TLS under the
//! deployment's CA ([`tls`]); clients cannot reach it. Every step may lose a
//! notification (full queues, a dead peer, a lapsed lease): devices then learn of
//! the message at their next fetch, and waiting fetches re-read storage every
//! `fetch_poll_interval` unless that fallback is switched off.
//!
//! With no [`PeerConfig`] none of this runs and the gateway behaves as a
//! single-gateway deployment needs.

pub mod fanout;
pub mod forward;
pub mod leases;
pub mod notifier;
mod options;
pub mod ownership;
pub mod server;
pub mod tls;

pub use options::{PeerOptions, PeerSettings};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::presence::Presence;
use fanout::Fanout;
use forward::{Forwarded, Forwarder, WanDelay};
use leases::{LeaseGuard, Leases};
use notifier::Notifier;
use ownership::{Owner, Ownership};
use rossby_keyspace::{BoxId, DeviceId, RegionId};
use rossby_protocol::pb;
use rossby_storage::tables::Store;
use rossby_storage::tables::presence::Holder;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tls::{PeerIdentity, PeerTls};
use tokio::task::JoinHandle;

/// Default lifetime of a presence lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Default interval between lease renewals.
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// Longest wait for this gateway's leases to be released at shutdown.
const RELEASE_WAIT: Duration = Duration::from_secs(3);

/// The gateway-to-gateway endpoint's settings. Without them (`Config::peer` is
/// `None`) peer notifications are off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// UDP address the peer endpoint listens on.
    pub listen: SocketAddr,
    /// `host:port` other gateways dial to reach this one, recorded in leases.
    /// `None`: the bound listen address (which must then be a specific IP, such
    /// as loopback in tests).
    pub advertise: Option<String>,
    /// The deployment CA and this gateway's certificate and key.
    pub tls: PeerTls,
    /// How long a lease lasts unless renewed.
    pub lease: Duration,
    /// How often leases are renewed; shorter than `lease`.
    pub renew_interval: Duration,
    /// How long an ownership lease lasts unless renewed (a dead owner's boxes
    /// move within `owner_lease + owner_renew`).
    pub owner_lease: Duration,
    /// How often the ownership lease is renewed and the view refreshed; shorter
    /// than `owner_lease`.
    pub owner_renew: Duration,
}

/// Where this gateway sits: what box ownership and the peer link's WAN
/// simulation need.
#[derive(Clone, Debug)]
pub struct PeerGeo {
    /// This gateway's region.
    pub region: RegionId,
    /// Every region of the deployment (whose owners this gateway must know);
    /// empty: no box ownership (every gateway writes every box, the path of a
    /// deployment without a topology).
    pub regions: Vec<RegionId>,
    /// The peer link's simulated round trips (`--wan-sim`).
    pub wan: Option<WanDelay>,
}

impl PeerConfig {
    /// A peer endpoint on `127.0.0.1` (a free port), advertised as its bound
    /// address, with the default lease and renewal interval: what tests and the
    /// local multi-region mode use, with credentials from [`tls::DevCa::issue`].
    pub fn loopback(credentials: tls::PeerCredentials) -> PeerConfig {
        PeerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            tls: PeerTls::Pem(credentials),
            lease: DEFAULT_LEASE,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            owner_lease: ownership::DEFAULT_OWNER_LEASE,
            owner_renew: ownership::DEFAULT_OWNER_RENEW,
        }
    }

    /// Checks the durations and the advertised address.
    pub fn check(&self) -> Result<()> {
        if self.renew_interval.is_zero() || self.renew_interval >= self.lease {
            return Err(Error::Config(format!(
                "--peer-renew-secs ({:?}) must be positive and shorter than --peer-lease-secs ({:?})",
                self.renew_interval, self.lease
            )));
        }
        if self.owner_renew.is_zero() || self.owner_renew >= self.owner_lease {
            return Err(Error::Config(format!(
                "--owner-renew-ms ({:?}) must be positive and shorter than --owner-lease-ms ({:?})",
                self.owner_renew, self.owner_lease
            )));
        }
        if let Some(addr) = &self.advertise {
            check_address(addr)?;
        }
        Ok(())
    }
}

fn check_address(addr: &str) -> Result<()> {
    if notifier::split_host_port(addr).is_none()
        || addr.len() > rossby_storage::tables::presence::MAX_PEER_ADDRESS_BYTES
    {
        return Err(Error::Config(format!(
            "--peer-advertise {addr:?} is not host:port"
        )));
    }
    Ok(())
}

/// The running peer machinery of one gateway.
pub struct Peers {
    id: [u8; 16],
    holder: Holder,
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    leases: Arc<Leases>,
    fanout: Fanout,
    notifier: Notifier,
    forwarder: Forwarder,
    ownership: Option<Arc<Ownership>>,
    handler: server::Handler,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("holder", &self.holder)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// Loads the peer certificates, binds the peer endpoint and starts its accept
    /// loop, the fan-out worker and the lease renewer.
    pub fn start(
        config: &PeerConfig,
        geo: PeerGeo,
        store: Store,
        presence: Presence,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Peers>> {
        config.check()?;
        let identity = PeerIdentity::load(&config.tls)?;
        let endpoint =
            quinn::Endpoint::server(identity.server_config()?, config.listen).map_err(|e| {
                Error::Io {
                    context: format!("cannot listen on {} (peer endpoint)", config.listen),
                    source: e,
                }
            })?;
        let local_addr = endpoint.local_addr().map_err(|e| Error::Io {
            context: "peer endpoint address".into(),
            source: e,
        })?;
        let advertise = match &config.advertise {
            Some(a) => a.clone(),
            None if local_addr.ip().is_unspecified() => {
                return Err(Error::Config(format!(
                    "--peer-advertise is needed: the peer endpoint listens on {local_addr}, which other gateways cannot dial"
                )));
            }
            None => local_addr.to_string(),
        };
        check_address(&advertise)?;
        let mut id = [0u8; 16];
        rand::fill(&mut id);
        let holder = Holder {
            peer_address: advertise,
            gateway_id: hex::encode(id),
        };
        let notifier = Notifier::new(
            endpoint.clone(),
            identity.client_config()?,
            holder.gateway_id.clone(),
            metrics.clone(),
        );
        let forwarder = Forwarder::new(
            endpoint.clone(),
            identity.client_config()?,
            holder.gateway_id.clone(),
            metrics.clone(),
            geo.wan.clone(),
        );
        let ownership = (!geo.regions.is_empty()).then(|| {
            Arc::new(Ownership::new(
                store.clone(),
                geo.region,
                geo.regions.clone(),
                id,
                holder.peer_address.clone(),
                config.owner_lease,
            ))
        });
        let handler = server::Handler::default();
        let (fanout, fanout_worker) = Fanout::new(
            store.clone(),
            holder.clone(),
            notifier.clone(),
            metrics.clone(),
        );
        let leases = Arc::new(Leases::new(
            store,
            holder.clone(),
            presence.clone(),
            config.lease,
            config.renew_interval,
        ));
        let mut tasks = vec![
            tokio::spawn(server::accept_loop(
                endpoint.clone(),
                presence,
                metrics.clone(),
                handler.clone(),
            )),
            tokio::spawn(fanout_worker),
            tokio::spawn(renewer(leases.clone(), config.renew_interval)),
        ];
        if let Some(ownership) = &ownership {
            tasks.push(tokio::spawn(ownership::run(
                ownership.clone(),
                config.owner_renew,
                metrics.clone(),
            )));
        }
        tracing::info!(peer = %local_addr, advertised = %holder.peer_address, "peer endpoint started");
        Ok(Arc::new(Peers {
            id,
            holder,
            local_addr,
            endpoint,
            leases,
            fanout,
            notifier,
            forwarder,
            ownership,
            handler,
            tasks: Mutex::new(tasks),
        }))
    }

    /// Who executes writes to `box_id`: this gateway when there is no box
    /// ownership (no topology).
    pub fn owner_of(&self, box_id: BoxId) -> Owner {
        self.ownership
            .as_ref()
            .map_or(Owner::Local, |o| o.owner_of(box_id))
    }

    /// The ownership view, when box ownership is on.
    pub fn ownership(&self) -> Option<&Arc<Ownership>> {
        self.ownership.as_ref()
    }

    /// Sets the executor of writes other gateways forward here (once).
    pub fn serve_forwarded(&self, handler: std::sync::Weak<dyn server::OwnedWrites>) {
        let _ = self.handler.set(handler);
    }

    /// Forwards one request of a caller to the owner of its box at `address`.
    pub async fn call(
        &self,
        address: &str,
        call: pb::PeerCall,
        home: RegionId,
    ) -> std::result::Result<pb::Response, String> {
        self.forwarder.call(address, home, call).await
    }

    /// Forwards one envelope to the owner of its recipient box at `address`.
    pub async fn forward(
        &self,
        address: &str,
        enqueue: pb::PeerEnqueue,
        home: RegionId,
    ) -> Forwarded {
        self.forwarder.enqueue(address, home, enqueue).await
    }

    /// The bound address of the peer endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address recorded in this gateway's leases.
    pub fn advertised(&self) -> &str {
        &self.holder.peer_address
    }

    /// This gateway run's id, recorded in its leases.
    pub fn gateway_id(&self) -> &str {
        &self.holder.gateway_id
    }

    /// This gateway run's id as raw bytes (`gateway_id` is its hex form).
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// Holds the presence lease of a device while the guard lives (see
    /// [`leases::Leases::hold`]).
    pub async fn hold(&self, box_id: BoxId, device: DeviceId, always_claim: bool) -> LeaseGuard {
        self.leases
            .hold(box_id, device, always_claim, crate::server::now_ms())
            .await
    }

    /// Announces a local commit into `box_id` up to `last_seq` to the other
    /// gateways with devices of the box. Never waits.
    pub fn committed(&self, box_id: BoxId, last_seq: u64) {
        self.fanout.committed(box_id, last_seq);
    }

    /// Hands an ephemeral message to the other gateways with subscribed devices
    /// of `box_id` (except `skip`). Never waits.
    pub fn ephemeral(&self, box_id: BoxId, skip: Option<DeviceId>, push: &pb::Ephemeral) {
        self.fanout.ephemeral(box_id, skip, push);
    }

    /// The lease table (tests and debugging).
    pub fn leases(&self) -> &Arc<Leases> {
        &self.leases
    }

    /// Stops the tasks without releasing anything (a gateway dropped without
    /// shutdown): the leases lapse by themselves.
    pub fn abort(&self) {
        self.notifier.close();
        self.forwarder.close();
        for task in self.take_tasks() {
            task.abort();
        }
        self.endpoint.close(0u32.into(), b"gateway stopped");
    }

    fn take_tasks(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Stops notifying and being notified, and releases this gateway's leases (so
    /// other gateways stop notifying an address that is going away) within a
    /// bounded time.
    pub async fn shutdown(&self) {
        self.notifier.close();
        self.forwarder.close();
        for task in self.take_tasks() {
            task.abort();
            let _ = task.await;
        }
        if let Some(ownership) = &self.ownership
            && tokio::time::timeout(RELEASE_WAIT, ownership.release())
                .await
                .is_err()
        {
            tracing::debug!("releasing the ownership lease timed out; it lapses");
        }
        if tokio::time::timeout(RELEASE_WAIT, self.leases.release_all())
            .await
            .is_err()
        {
            tracing::debug!("releasing presence leases timed out; they lapse");
        }
        self.endpoint.close(0u32.into(), b"gateway shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Renews and releases leases every `interval`.
async fn renewer(leases: Arc<Leases>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; nothing is held yet.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        leases.tick(crate::server::now_ms()).await;
    }
}
