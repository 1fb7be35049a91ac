//! Rossby's geography, pure (no I/O, no clock): callers read files and pass text.
//!
//! * [`topology`]: the topology file (TOML or JSON): regions with their 16-bit
//!   codes, zones and gateways, the round-trip times between regions, the primary
//!   region of global data and the survival goal (`zone` or `region`).
//! * [`placement`]: PD placement rules that keep each region's key range led from
//!   that region, with voters placed to meet the survival goal, the check that they
//!   do, and the `placement plan` report.
//! * [`latency`]: the one latency function shared by `placement plan` and the
//!   storage layer's WAN simulation.
//! * [`routing`]: which gateways are closest to a box's data and where new boxes live.
//!
//! # What TiKV does and what this crate computes
//!
//! TiKV splits the keyspace into Raft groups (TiKV "Regions") and PD schedules their
//! replicas onto stores according to placement rules, using the stores' `region` and
//! `zone` labels. Rossby's keys start with their home: `0x01` for global data (the
//! inbox lookup), `0x02 <region code>` for everything of a box homed in that region
//! (`rossby_keyspace::keys`), so each region's data is one contiguous key range. This
//! crate writes the rules that pin each range's leader (and, under the zone goal, all
//! its voters) to its home region and give global data voters in every region with
//! its leader in the primary. PD enforces them; TiKV replicates, elects leaders and
//! commits. Nothing here talks to PD or TiKV: `rossby-admin placement apply` posts the
//! rules, and the latency model only predicts what the deployment will pay, from the
//! same voter layout the rules describe and the topology's round-trip matrix.

pub mod error;
pub mod latency;
pub mod ownership;
pub mod placement;
pub mod routing;
pub mod topology;

pub use error::{Error, Result};
pub use latency::{Home, LatencyModel, home_of_key};
pub use placement::{
    LabelConstraint, Plan, Rule, RuleBundle, encode_memcomparable, plan, rule_bundles,
};
pub use topology::{GatewayAddrs, Region, Survival, Topology};
