//! `rossby-admin placement`: planning TiKV placement from a topology file,
//! sending the rules to PD, and checking where PD actually put the replicas.
//!
//! The policy itself (which rules, what a commit costs) lives in
//! `rossby-replication`; this module reads the file, [`crate::pd`] speaks PD's
//! HTTP API, and [`check`] compares PD's Regions with what the plan wants.

pub mod check;

use crate::error::{Error, Result};
use rossby_replication::{Plan, Topology};
use std::path::Path;

/// Reads and validates a topology file (TOML, or JSON when it starts with `{`).
pub fn read_topology(path: &Path) -> Result<Topology> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io("cannot read topology file", path, e))?;
    Topology::parse(&text).map_err(|source| Error::Topology {
        path: path.to_path_buf(),
        source,
    })
}

/// Plans the placement of a topology: the rule bundles for PD and the expected
/// latencies. Fails when the topology cannot meet its survival goal; `path` only
/// names the file in the error.
pub fn plan_topology(topology: &Topology, path: &Path) -> Result<Plan> {
    rossby_replication::plan(topology).map_err(|source| Error::Topology {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a topology file and plans its placement. Fails when the file is invalid
/// or the topology cannot meet its survival goal.
pub fn plan_file(path: &Path) -> Result<Plan> {
    plan_topology(&read_topology(path)?, path)
}

/// Reads PD's stores and Regions and checks them against the plan of `topology`
/// (see [`check::check`]).
pub async fn check_pd(
    pd: &crate::pd::PdClient,
    topology: &Topology,
    plan: &Plan,
) -> Result<check::CheckReport> {
    // Regions first: a store holds no replica before PD lists it, so every store
    // the Regions name is in a store list read afterwards.
    let regions = pd.regions().await?;
    let stores = pd.stores().await?;
    check::check(topology, plan, pd.url(), &regions, &stores)
}
