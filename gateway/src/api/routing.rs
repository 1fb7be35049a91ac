//! Region routing: where new boxes are homed and which gateways a reply points a
//! client to when its box lives in another region. The policy is
//! `rossby_replication::routing`; this module applies it to the gateway's settings.

use super::Failure;
use crate::settings::ApiSettings;
use rossby_keyspace::{BoxId, RegionId};

/// The home region of a new box: the requested one (`0` means none) or the
/// gateway's own. With a topology the region must be one of its regions; without
/// one any non-zero 16-bit code is accepted (a single-region deployment).
pub(crate) fn region_for_new_box(
    settings: &ApiSettings,
    requested: u32,
) -> Result<RegionId, Failure> {
    let requested = match requested {
        0 => None,
        r => Some(RegionId(u16::try_from(r).map_err(|_| {
            Failure::bad_request("a region code must fit in 16 bits")
        })?)),
    };
    match &settings.topology {
        Some(topology) => {
            rossby_replication::routing::region_for_new_box(topology, settings.region, requested)
                .map_err(|e| Failure::bad_request(format!("region: {e}")))
        }
        // Without a topology this gateway knows only its own region, and only
        // its own region's maintenance runs here: a box homed elsewhere would
        // never be swept.
        None => match requested {
            None => Ok(settings.region),
            Some(r) if r == settings.region => Ok(r),
            Some(r) => Err(Failure::bad_request(format!(
                "region {} is not served here: this gateway has no topology and serves \
                 region {} only",
                r.0, settings.region.0
            ))),
        },
    }
}

/// The `home_region` and `home_gateways` fields of a reply to `caller`'s box: zero
/// and empty when the box is homed in this gateway's region.
pub(crate) fn home_hint(settings: &ApiSettings, caller: BoxId) -> (u32, Vec<String>) {
    let home = caller.home_region();
    if home == settings.region {
        return (0, Vec::new());
    }
    let gateways = settings
        .topology
        .as_ref()
        .map(|topology| {
            rossby_replication::routing::home_gateways(topology, home)
                .iter()
                .map(|g| g.quic.clone())
                .collect()
        })
        .unwrap_or_default();
    (u32::from(home.0), gateways)
}
