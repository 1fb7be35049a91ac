//! Fixtures shared by the crate's unit tests: small topologies on loopback
//! and scenarios built on them.

use crate::error::Result;
use crate::scenario::{Overrides, Scenario, ScenarioFile};
use rossby_replication::Topology;

/// Region "a"'s one gateway in [`two_regions_text`] and [`one_region`].
pub(crate) const GATEWAY_A: &str = r#"{ quic = "127.0.0.1:7400", admin = "127.0.0.1:7401" }"#;

/// Region "b"'s one gateway in [`two_regions_text`].
pub(crate) const GATEWAY_B: &str = r#"{ quic = "127.0.0.1:7500", admin = "127.0.0.1:7501" }"#;

/// Topology file text: primary region "a" with the gateways `a` (a TOML
/// array's contents), and, given `b`, region "b" 80 ms away.
pub(crate) fn topology_text(a: &str, b: Option<&str>) -> String {
    let mut text = format!(
        r#"
primary = "a"
survival = "zone"
[[regions]]
code = 1
name = "a"
zones = ["a1"]
gateways = [{a}]
"#
    );
    if let Some(b) = b {
        text.push_str(&format!(
            r#"[[regions]]
code = 2
name = "b"
zones = ["b1"]
gateways = [{b}]
[rtt_ms]
"a:b" = 80
"#
        ));
    }
    text
}

/// Two regions, "a" and "b", one loopback gateway each.
pub(crate) fn two_regions_text() -> String {
    topology_text(GATEWAY_A, Some(GATEWAY_B))
}

/// [`two_regions_text`], parsed.
pub(crate) fn two_regions() -> Topology {
    Topology::parse(&two_regions_text()).unwrap()
}

/// Region "a" alone, one loopback gateway.
pub(crate) fn one_region() -> Topology {
    Topology::parse(&topology_text(GATEWAY_A, None)).unwrap()
}

/// A scenario on `topology` from a scenario file's text and overrides.
pub(crate) fn build(topology: Topology, file: &str, o: &Overrides) -> Result<Scenario> {
    let file: ScenarioFile = toml::from_str(file).unwrap();
    Scenario::from_parts("t.toml".into(), topology, &file, o)
}

/// Overrides that keep every send inside its region, as one-region
/// topologies need.
pub(crate) fn same_region_only() -> Overrides {
    Overrides::from(ScenarioFile {
        mix: Some("same=1".into()),
        ..ScenarioFile::default()
    })
}
