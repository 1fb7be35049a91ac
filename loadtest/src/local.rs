//! Local mode: one gateway per region of the scenario's topology, in this
//! process, on loopback, over one store in a temporary directory
//! ([`rossby_gateway::LocalDeployment`]), with verification codes written to a
//! file the provisioning reads and rate limits raised to fit the scenario.

use crate::error::{Error, Result};
use crate::scenario::Scenario;
use crate::target::Targets;
use rossby_gateway::settings::{Rate, RateLimits};
use rossby_gateway::{Config, LocalDeployment};
use std::path::PathBuf;
use std::sync::Arc;

/// Options of local mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalOptions {
    /// Delay storage by the topology's simulated WAN round trips.
    pub wan_sim: bool,
    /// Use the in-memory store instead of the durable embedded one.
    pub memory_store: bool,
}

/// A running local deployment and what clients need to reach it.
pub struct Local {
    /// The gateways.
    pub deployment: LocalDeployment,
    /// Their addresses and certificate.
    pub targets: Targets,
    /// The file the gateways' `file:` verifier appends codes to.
    pub codes: PathBuf,
    /// The rate limits the gateways were given.
    pub rate_limits: RateLimits,
    /// Whether the gateways notify each other of commits (cross-region push).
    pub peer_push: bool,
    /// Whether the store is the in-memory one.
    pub memory_store: bool,
    /// The store, secrets and certificate (removed when dropped).
    pub dir: tempfile::TempDir,
}

/// Rate limits that the scenario stays well below: per device ten times its
/// share of the expected requests, per address (every client is on loopback)
/// ten times the total.
pub fn fitted_rate_limits(scenario: &Scenario) -> RateLimits {
    let defaults = RateLimits::default();
    let devices = (scenario.users() as f64 * f64::from(scenario.devices_per_user)).max(1.0);
    let group_size = if scenario.uses_groups() {
        f64::from(scenario.group_members)
    } else {
        2.0
    };
    // Devices that decrypt one send, at most.
    let fanout = group_size * f64::from(scenario.devices_per_user);
    // A send, then a fetch and an ack on every receiving device, plus
    // lookups and polling.
    let per_send = 1.0 + 2.0 * fanout;
    let polls = match scenario.fetch {
        crate::units::FetchMode::Poll { interval } => devices / interval.as_secs_f64(),
        crate::units::FetchMode::Push { fallback } => {
            fallback.map_or(0.0, |f| devices / f.as_secs_f64())
        }
    };
    let total = scenario.rate * per_send + polls;
    let per_device = (total / devices * 10.0).max(defaults.per_device.per_second);
    let per_ip = (total * 10.0).max(defaults.per_ip.per_second);
    let lookups = f64::from(scenario.contacts_per_user) * 4.0 + 100.0;
    RateLimits {
        per_device: Rate {
            per_second: per_device,
            burst: (per_device * 5.0).max(defaults.per_device.burst),
        },
        per_ip: Rate {
            per_second: per_ip,
            burst: (per_ip * 5.0).max(defaults.per_ip.burst),
        },
        registrations_per_identifier: Rate {
            per_second: 1.0,
            burst: 20.0,
        },
        discovery_per_device: Rate {
            per_second: lookups,
            burst: lookups * 4.0,
        },
        // The load test sends as identified devices only.
        sealed_per_recipient: defaults.sealed_per_recipient,
        // The load test measures throughput: its senders are not abusers.
        stored_bytes_per_account: Rate {
            per_second: f64::INFINITY,
            burst: f64::INFINITY,
        },
        // It registers every user from one address.
        codes_per_address: Rate {
            per_second: f64::INFINITY,
            burst: f64::INFINITY,
        },
    }
}

/// Starts the local deployment of `scenario` (on the current runtime).
pub async fn start(scenario: &Scenario, options: LocalOptions) -> Result<Local> {
    let dir = tempfile::Builder::new()
        .prefix("rossby-loadtest-")
        .tempdir()
        .map_err(|e| {
            Error::io(
                "cannot create a temporary directory in",
                std::env::temp_dir(),
                e,
            )
        })?;
    let mut config = Config::for_tests(dir.path());
    if options.memory_store {
        config = config.in_memory();
    }
    let codes = dir.path().join("codes.txt");
    config.api.verifier = rossby_gateway::settings::VerifierSpec::File(codes.clone());
    config.api.topology = Some(Arc::new(scenario.topology.clone()));
    config.topology_file = Some(scenario.topology_path.clone());
    config.wan_sim = options.wan_sim;
    config.local = true;
    let rate_limits = fitted_rate_limits(scenario);
    config.api.rate_limits = rate_limits.clone();
    // Every simulated user registers at once, from one address and domain.
    config.api.codes_per_hour = u64::MAX;
    config.api.codes_per_prefix_per_hour = u64::MAX;
    let deployment = LocalDeployment::start(config)
        .await
        .map_err(|e| Error::Local(e.to_string()))?;
    let ca = deployment
        .gateways()
        .first()
        .map(|g| g.gateway.certificate_der().to_vec());
    let peer_push = deployment
        .gateways()
        .iter()
        .all(|g| g.gateway.peers().is_some());
    let targets = match Targets::resolve(
        deployment.topology(),
        ca,
        rossby_protocol::hawk::ServiceName::default(),
        true,
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            deployment.shutdown().await;
            return Err(e);
        }
    };
    Ok(Local {
        deployment,
        targets,
        codes,
        rate_limits,
        peer_push,
        memory_store: options.memory_store,
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    #[test]
    fn rate_limits_grow_with_the_scenario() {
        let o = |rate: f64| {
            let mut o = testkit::same_region_only();
            o.settings.rate = Some(rate);
            o
        };
        let small = testkit::build(testkit::one_region(), "", &o(1.0)).unwrap();
        let big = testkit::build(testkit::one_region(), "", &o(5000.0)).unwrap();
        let defaults = RateLimits::default();
        let s = fitted_rate_limits(&small);
        let b = fitted_rate_limits(&big);
        assert!(s.per_device.per_second >= defaults.per_device.per_second);
        assert!(s.per_ip.per_second >= defaults.per_ip.per_second);
        // 5000 sends/s with up to 4 devices each decrypting: far above 10x.
        assert!(b.per_ip.per_second >= 5000.0 * 9.0 * 10.0);
        assert!(b.per_device.per_second > s.per_device.per_second);
    }
}
