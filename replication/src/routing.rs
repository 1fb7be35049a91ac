//! Routing: which gateways are closest to a box's data, and where new boxes live.

use crate::error::{Error, Result};
use crate::topology::{GatewayAddrs, Topology};
use rossby_keyspace::RegionId;

/// The gateways closest to a box's data: those of its home region. Empty when the
/// home region is not in the topology.
pub fn home_gateways(topology: &Topology, home: RegionId) -> &[GatewayAddrs] {
    topology
        .region(home)
        .map(|r| r.gateways.as_slice())
        .unwrap_or(&[])
}

/// The home region of a new box: the one the client asked for, or else the region
/// of the gateway registering it. Either must be a region of the topology.
pub fn region_for_new_box(
    topology: &Topology,
    gateway_region: RegionId,
    requested: Option<RegionId>,
) -> Result<RegionId> {
    let (region, context) = match requested {
        Some(r) => (r, "the requested home region"),
        None => (gateway_region, "the gateway's region"),
    };
    match topology.region(region) {
        Some(r) => Ok(r.code),
        None => Err(Error::UnknownRegion {
            region: region.to_string(),
            context: context.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::from_toml_str(include_str!("../../docs/examples/three-regions.toml")).unwrap()
    }

    #[test]
    fn home_gateways_are_those_of_the_home_region() {
        let t = topology();
        let eu = home_gateways(&t, RegionId(2));
        assert_eq!(eu.len(), 2);
        assert!(eu.iter().all(|g| g.quic.contains(".eu-west.")));
        assert!(home_gateways(&t, RegionId(42)).is_empty());
    }

    #[test]
    fn new_boxes_live_in_the_gateway_region_unless_asked_otherwise() {
        let t = topology();
        assert_eq!(region_for_new_box(&t, RegionId(1), None), Ok(RegionId(1)));
        assert_eq!(
            region_for_new_box(&t, RegionId(1), Some(RegionId(3))),
            Ok(RegionId(3))
        );
        assert_eq!(
            region_for_new_box(&t, RegionId(1), Some(RegionId(0))),
            Err(Error::UnknownRegion {
                region: "0".into(),
                context: "the requested home region".into()
            })
        );
        assert!(matches!(
            region_for_new_box(&t, RegionId(8), None),
            Err(Error::UnknownRegion { .. })
        ));
    }
}
