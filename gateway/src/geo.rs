//! Where the gateway sits in the deployment: its region, the topology of every
//! region (docs/geo.md), and the two ways of playing a multi-region deployment
//! on one machine (`--wan-sim`, `--local`).

use crate::config::check::at_least;
use crate::error::{Error, Result};
use rossby_keyspace::RegionId;
use rossby_replication::Topology;
use std::path::{Path, PathBuf};
use std::sync::Arc;

crate::config::options! {
    /// The gateway's region and the deployment's topology.
    #[derive(clap::Args, serde::Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "Deployment")]
    pub struct GeoOptions {
        /// This gateway's region code (1..65535) [default: 1].
        #[arg(long, env = "ROSSBY_REGION", value_name = "CODE")]
        pub region: Option<u16>,
        /// The deployment's topology (TOML or JSON, docs/geo.md): `--region` must be
        /// one of its regions; new boxes may only be homed in its regions, and replies
        /// name the gateways of a box's home region.
        #[arg(long, env = "ROSSBY_TOPOLOGY", value_name = "FILE")]
        pub topology: Option<PathBuf>,
        /// SIMULATION: delay every storage transaction by the round trips a TiKV
        /// deployment of the topology would pay from this gateway's region (needs
        /// `--topology`; for load tests on one machine, never for real traffic).
        #[arg(long, env = "ROSSBY_WAN_SIM", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        pub wan_sim: Option<bool>,
        /// Local multi-region mode: one gateway per region of `--topology` in this
        /// process, over one store, each on a free loopback port (the topology's
        /// addresses are ignored; the chosen ones are printed). For demos and load
        /// tests.
        #[arg(long, env = "ROSSBY_LOCAL", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        pub local: Option<bool>,
    }
}

/// The gateway's place in the deployment, checked.
#[derive(Clone, Debug)]
pub struct Geo {
    /// This gateway's region.
    pub region: RegionId,
    /// The topology, when one is configured.
    pub topology: Option<Arc<Topology>>,
    /// The file the topology was read from.
    pub topology_file: Option<PathBuf>,
    /// Whether storage transactions are delayed by the simulated WAN round trips.
    pub wan_sim: bool,
    /// Whether every region of the topology runs in this process.
    pub local: bool,
}

impl GeoOptions {
    /// Reads the topology and checks that the region is one of it (unless every
    /// region runs locally) and that the simulations have a topology.
    pub fn into_geo(self) -> Result<Geo> {
        let region = RegionId(at_least("region", self.region.unwrap_or(1), 1)?);
        let local = self.local.unwrap_or(false);
        let wan_sim = self.wan_sim.unwrap_or(false);
        let mut geo = Geo {
            region,
            topology: None,
            topology_file: None,
            wan_sim,
            local,
        };
        let Some(path) = self.topology else {
            if wan_sim {
                return Err(Error::Config(
                    "--wan-sim needs --topology (the simulated round trips come from its rtt_ms)"
                        .into(),
                ));
            }
            if local {
                return Err(Error::Config(
                    "--local needs --topology (one gateway is started per region)".into(),
                ));
            }
            return Ok(geo);
        };
        let topology = read_topology(&path)?;
        // In local mode every region gets its own gateway, so --region is not used.
        if !local && topology.region(region).is_none() {
            return Err(Error::Config(format!(
                "--region {region} is not a region of the topology {} (its regions: {})",
                path.display(),
                region_list(&topology)
            )));
        }
        geo.topology = Some(Arc::new(topology));
        geo.topology_file = Some(path);
        Ok(geo)
    }
}

/// Reads and validates a topology file (TOML, or JSON when it starts with `{`).
pub fn read_topology(path: &Path) -> Result<Topology> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read topology file {}: {e}", path.display())))?;
    Topology::parse(&text)
        .map_err(|e| Error::Config(format!("topology file {}: {e}", path.display())))
}

/// `name=code` of every region, for error messages.
fn region_list(topology: &Topology) -> String {
    topology
        .regions()
        .iter()
        .map(|r| format!("{}={}", r.name, r.code))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{ENV_LOCK, err, example_topology, parse};

    #[test]
    fn a_topology_must_name_the_gateways_region() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let topology = example_topology();
        let c = parse(&["--topology", &topology, "--region", "2"]).unwrap();
        let loaded = c.api.topology.as_deref().unwrap();
        assert_eq!(loaded.regions().len(), 3);
        assert_eq!(c.topology_file.as_deref(), Some(Path::new(&topology)));
        assert!(!c.wan_sim && !c.local);
        let message = err(&["--topology", &topology, "--region", "9"]);
        assert!(message.contains("--region 9 is not a region"), "{message}");
        assert!(message.contains("us-east=1"), "{message}");
        // In local mode every region runs, so --region does not matter.
        let c = parse(&["--topology", &topology, "--region", "9", "--local"]).unwrap();
        assert!(c.local);
        let c = parse(&["--topology", &topology, "--wan-sim"]).unwrap();
        assert!(c.wan_sim);
        let c = parse(&["--topology", &topology, "--wan-sim", "false"]).unwrap();
        assert!(!c.wan_sim);
    }

    #[test]
    fn geography_options_are_checked() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "primary = \"nowhere\"\n").unwrap();
        let bad = bad.to_str().unwrap().to_string();
        let missing = dir.path().join("missing.toml");
        let missing = missing.to_str().unwrap().to_string();
        for (argv, needle) in [
            (vec!["--wan-sim"], "--wan-sim needs --topology"),
            (vec!["--local"], "--local needs --topology"),
            (vec!["--topology", &bad], "topology file"),
            (vec!["--topology", &missing], "cannot read topology file"),
        ] {
            let message = err(&argv);
            assert!(message.contains(needle), "{argv:?}: {message}");
        }
        // The same options from a file.
        let file = dir.path().join("gw.toml");
        std::fs::write(
            &file,
            format!(
                "topology = {:?}\nregion = 3\nwan_sim = true\n",
                example_topology()
            ),
        )
        .unwrap();
        let c = parse(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.region(), RegionId(3));
        assert!(c.wan_sim);
    }
}
