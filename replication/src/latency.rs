//! The WAN latency model: the round trips a TiKV deployment pays for Rossby's
//! transactions, seen from a gateway in one region, and what a send costs on the
//! home-region-writer path. `placement plan` prints it, the storage WAN simulation
//! sleeps it and the load test report compares measured sends with it, so all three
//! always agree.
//!
//! What is counted (round-trip times come from the topology's matrix; everything
//! inside one region counts as zero):
//!
//! * **timestamp**: the gateway asks PD's leader, in the primary region, for a
//!   timestamp: one round trip gateway -> primary. PD has no timestamp service
//!   local to other regions, so every region but the primary pays it. A transaction
//!   takes one at start and one at commit.
//! * **read**: one round trip gateway -> the leader of the data (its home region;
//!   the primary for global data).
//! * **quorum**: the leader replicates a write through Raft and waits for a
//!   majority of voters; it waits for the slowest of the nearest majority. Under the
//!   zone goal a region's voters are all local (zero); under the region goal it is
//!   the round trip to the nearest other region holding voters. Global data is led
//!   from the primary with voters everywhere.
//! * **commit** (Percolator two-phase commit as tikv-client 0.4 does it by default,
//!   without async commit or one-phase commit): prewrite all written keys (in
//!   parallel per home: the slowest of read + quorum), then a commit timestamp, then
//!   commit the primary key (the first written home: read + quorum). Secondary keys
//!   are committed after the client returns and are not counted.
//!
//! # The send path: home-region writers
//!
//! A transaction issued from outside a box's home region would pay every read, the
//! prewrite and the commit across the WAN. So every write to a box runs in its
//! home region, through the one gateway there that owns the box; a gateway in
//! another region forwards the request over the peer link. A send from a gateway in
//! region F into a box homed in region H ([`LatencyModel::send`], [`send_bound`])
//! costs:
//!
//! * **forward** ([`LatencyModel::forward`]): rtt(F, H), the forwarded request and
//!   its answer; zero when F is H;
//! * **the owner's transaction** ([`LatencyModel::owner_send`]), seen from H: the
//!   start timestamp, rtt(H, primary); the reads of the box, local (zero); the
//!   prewrite, the box's quorum; the commit timestamp, rtt(H, primary); the commit
//!   of the primary key, the box's quorum again.
//!
//! That is rtt(F, H) + 2 × rtt(H, primary) + 2 × quorum(H). The two timestamp round
//! trips are what remains of the WAN inside the transaction: they are zero only in
//! the primary region, and stay two because Rossby keeps two-phase commit. The
//! quorums are zero under the zone goal.
//!
//! Not counted: CPU and disk time, the hop between gateways inside one region,
//! queueing at the owning gateway, PD region-cache misses,
//! lock conflicts and retries, bandwidth. So a send's figure is a lower bound of what
//! a deployment (or the WAN simulation) measures. The model is deterministic;
//! callers that want jitter add it themselves.

use crate::error::{Error, Result};
use crate::placement::{RangeOf, layout};
use crate::topology::Topology;
use rossby_keyspace::RegionId;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where the leader of some data lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Home {
    /// Global data (the lookup table), led from the primary region.
    Global,
    /// Data homed in one region (boxes and their indexes).
    Region(RegionId),
}

/// The home of a stored key, from its prefix (see `rossby_keyspace::keys`: `0x01`
/// starts global data, `0x02 <region u16>` regional data); `None` for any other key.
pub fn home_of_key(key: &[u8]) -> Option<Home> {
    match key {
        [0x01, ..] => Some(Home::Global),
        [0x02, hi, lo, ..] => Some(Home::Region(RegionId(u16::from_be_bytes([*hi, *lo])))),
        _ => None,
    }
}

/// The round trips of Rossby's transactions on TiKV, seen from a gateway in one
/// region of a topology.
#[derive(Clone, Debug)]
pub struct LatencyModel {
    topology: Topology,
    gateway_region: RegionId,
    /// Raft quorum round trip of each region's range, by code.
    region_quorum: BTreeMap<u16, Duration>,
    /// Raft quorum round trip of the global range.
    global_quorum: Duration,
}

impl LatencyModel {
    /// The model for a gateway in `gateway_region`; [`Error::UnknownRegion`] when
    /// that region is not in the topology.
    pub fn new(topology: Topology, gateway_region: RegionId) -> Result<LatencyModel> {
        if topology.region(gateway_region).is_none() {
            return Err(Error::UnknownRegion {
                region: gateway_region.to_string(),
                context: "the gateway's region".to_string(),
            });
        }
        let region_quorum = topology
            .regions()
            .iter()
            .map(|r| (r.code.0, quorum_of(&topology, RangeOf::Region(r.code))))
            .collect();
        let global_quorum = quorum_of(&topology, RangeOf::Global);
        Ok(LatencyModel {
            topology,
            gateway_region,
            region_quorum,
            global_quorum,
        })
    }

    /// The topology the model reads round trips from.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The region of the gateway issuing the transactions.
    pub fn gateway_region(&self) -> RegionId {
        self.gateway_region
    }

    /// One round trip to PD's leader (in the primary region) for a timestamp.
    pub fn timestamp(&self) -> Duration {
        self.timestamp_from(self.gateway_region)
    }

    /// One round trip from the gateway to the leader of data homed at `home`. A
    /// region that is not in the topology has no Rossby placement rule (PD's default
    /// rule applies), so it is charged like global data.
    pub fn read(&self, home: Home) -> Duration {
        self.read_from(self.gateway_region, home)
    }

    /// The leader's Raft replication round trip for data homed at `home`: zero for a
    /// region's data under the zone goal, the nearest majority's round trip otherwise.
    pub fn quorum(&self, home: Home) -> Duration {
        match home {
            Home::Region(r) => self
                .region_quorum
                .get(&r.0)
                .copied()
                .unwrap_or(self.global_quorum),
            Home::Global => self.global_quorum,
        }
    }

    /// Two-phase commit of writes to keys homed at `written` (the first is the home
    /// of the primary key): prewrite (slowest of read + quorum over the homes), commit
    /// timestamp, commit of the primary key (read + quorum). Zero when nothing is
    /// written: tikv-client commits a read-only transaction without a round trip.
    pub fn commit(&self, written: &[Home]) -> Duration {
        self.commit_from(self.gateway_region, written)
    }

    /// A whole transaction issued by the gateway itself: start timestamp, the reads
    /// one after another, then [`LatencyModel::commit`] of the writes.
    pub fn transaction(&self, reads: &[Home], written: &[Home]) -> Duration {
        self.transaction_from(self.gateway_region, reads, written)
    }

    /// The round trip of forwarding a write to the gateway owning a box homed at
    /// `home`, over the peer link: the request and its answer, zero when the box is
    /// homed in the gateway's own region. A region that is not in the topology has
    /// no gateway; its boxes are charged as if owned in the primary region, like
    /// their data.
    pub fn forward(&self, home: RegionId) -> Duration {
        self.rtt(self.gateway_region, self.owner_region(home))
    }

    /// The owning gateway's send transaction on a box homed at `home`, issued in
    /// that region whichever gateway received the send: start timestamp, one round
    /// of reads of the box's state (next sequence number, dedup record, block list;
    /// local to the owner), and the commit of the queued envelope, dedup record and
    /// next sequence number there.
    pub fn owner_send(&self, home: RegionId) -> Duration {
        let data = Home::Region(home);
        self.transaction_from(self.owner_region(home), &[data], &[data])
    }

    /// The modelled send from this gateway into a box homed at `home` on the
    /// home-region-writer path: [`LatencyModel::forward`] to the owning gateway plus
    /// its [`LatencyModel::owner_send`]. See the module documentation.
    pub fn send(&self, recipient_home: RegionId) -> Duration {
        self.forward(recipient_home) + self.owner_send(recipient_home)
    }

    fn timestamp_from(&self, from: RegionId) -> Duration {
        self.rtt(from, self.topology.primary().code)
    }

    fn read_from(&self, from: RegionId, home: Home) -> Duration {
        self.rtt(from, self.leader_region(home))
    }

    fn commit_from(&self, from: RegionId, written: &[Home]) -> Duration {
        let Some(&primary) = written.first() else {
            return Duration::ZERO;
        };
        let write = |home: Home| self.read_from(from, home) + self.quorum(home);
        let prewrite = written.iter().map(|&h| write(h)).max().unwrap_or_default();
        prewrite + self.timestamp_from(from) + write(primary)
    }

    fn transaction_from(&self, from: RegionId, reads: &[Home], written: &[Home]) -> Duration {
        let reads: Duration = reads.iter().map(|&h| self.read_from(from, h)).sum();
        self.timestamp_from(from) + reads + self.commit_from(from, written)
    }

    /// The region whose gateway writes to boxes homed at `home`: where their data
    /// is led from.
    fn owner_region(&self, home: RegionId) -> RegionId {
        self.leader_region(Home::Region(home))
    }

    fn leader_region(&self, home: Home) -> RegionId {
        match home {
            Home::Region(r) if self.topology.region(r).is_some() => r,
            _ => self.topology.primary().code,
        }
    }

    fn rtt(&self, from: RegionId, to: RegionId) -> Duration {
        // Both regions are validated members of the topology (the gateway's region
        // by `new`, the others by `leader_region`), so the matrix has the pair; zero
        // is only a fallback for an impossible miss.
        self.topology.rtt(from, to).unwrap_or_default()
    }
}

/// The model's lower bound of a send from a gateway in `from` into a box homed in
/// `home`: [`LatencyModel::send`] of the model seen from `from`.
/// [`Error::UnknownRegion`] when either region is not in the topology.
pub fn send_bound(topology: &Topology, from: RegionId, home: RegionId) -> Result<Duration> {
    let model = LatencyModel::new(topology.clone(), from)?;
    if topology.region(home).is_none() {
        return Err(Error::UnknownRegion {
            region: home.to_string(),
            context: "the box's home region".to_string(),
        });
    }
    Ok(model.send(home))
}

/// The round trip after which the leader of `range` has heard from a majority of
/// its voters (itself included, at zero).
fn quorum_of(topology: &Topology, range: RangeOf) -> Duration {
    let layout = layout(topology, range);
    let mut rtts: Vec<Duration> = layout
        .voters
        .iter()
        .flat_map(|g| {
            let rtt = topology
                .rtt(layout.leader_region, g.region)
                .unwrap_or_default();
            std::iter::repeat_n(rtt, g.count as usize)
        })
        .collect();
    rtts.sort();
    let majority = rtts.len() / 2 + 1;
    rtts.get(majority - 1).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Survival;
    use rossby_keyspace::{BoxId, DeviceId, Key};

    const EXAMPLE: &str = include_str!("../../docs/examples/three-regions.toml");
    const US: RegionId = RegionId(1);
    const EU: RegionId = RegionId(2);
    const AP: RegionId = RegionId(3);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn model(survival: Survival, gateway: RegionId) -> LatencyModel {
        let text = EXAMPLE.replacen(
            "survival = \"zone\"",
            &format!("survival = \"{}\"", survival.as_str()),
            1,
        );
        LatencyModel::new(Topology::from_toml_str(&text).unwrap(), gateway).unwrap()
    }

    #[test]
    fn home_of_key_reads_the_prefix() {
        let b = BoxId::new(EU);
        assert_eq!(
            home_of_key(&Key::Profile(b).encode()),
            Some(Home::Region(EU))
        );
        assert_eq!(
            home_of_key(&Key::Device(b, DeviceId::new()).encode()),
            Some(Home::Region(EU))
        );
        assert_eq!(home_of_key(&Key::Purge(b).encode()), Some(Home::Region(EU)));
        let lookup = Key::Lookup {
            pepper_version: 1,
            digest: [7; 32],
        };
        assert_eq!(home_of_key(&lookup.encode()), Some(Home::Global));
        assert_eq!(
            home_of_key(&[0x02, 0x01, 0x02]),
            Some(Home::Region(RegionId(0x0102)))
        );
        assert_eq!(home_of_key(&[]), None);
        assert_eq!(home_of_key(&[0x02, 0x00]), None);
        assert_eq!(home_of_key(&[0x03, 0, 1]), None);
    }

    #[test]
    fn unknown_gateway_region_is_rejected() {
        let t = Topology::from_toml_str(EXAMPLE).unwrap();
        assert_eq!(
            LatencyModel::new(t, RegionId(9)).unwrap_err(),
            Error::UnknownRegion {
                region: "9".into(),
                context: "the gateway's region".into()
            }
        );
    }

    #[test]
    fn same_region_commit_with_local_primary_costs_nothing_under_zone_survival() {
        let m = model(Survival::Zone, US);
        assert_eq!(m.timestamp(), Duration::ZERO);
        assert_eq!(m.quorum(Home::Region(US)), Duration::ZERO);
        assert_eq!(m.commit(&[Home::Region(US)]), Duration::ZERO);
        assert_eq!(m.send(US), Duration::ZERO);
        // Global data: three voters in the primary out of five, so no remote quorum.
        assert_eq!(m.quorum(Home::Global), Duration::ZERO);
        assert_eq!(m.commit(&[]), Duration::ZERO);
        assert_eq!(m.transaction(&[], &[]), Duration::ZERO);
    }

    #[test]
    fn cross_region_send_is_charged_the_matrix_round_trip() {
        let m = model(Survival::Zone, US);
        assert_eq!(m.read(Home::Region(EU)), ms(68));
        assert_eq!(m.read(Home::Region(AP)), ms(215));
        // Forward + the owner's start ts + prewrite (local) + commit ts.
        assert_eq!(m.forward(EU), ms(68));
        assert_eq!(m.owner_send(EU), ms(2 * 68));
        assert_eq!(m.send(EU), ms(68 + 2 * 68));
        assert_eq!(m.send(AP), ms(215 + 2 * 215));
        // Far from the primary: both timestamps cross the ocean too.
        let ap = model(Survival::Zone, AP);
        assert_eq!(ap.timestamp(), ms(215));
        assert_eq!(ap.forward(AP), Duration::ZERO);
        assert_eq!(ap.send(AP), ms(2 * 215));
        assert_eq!(ap.read(Home::Global), ms(215));
    }

    #[test]
    fn forwarding_to_the_home_region_beats_a_transaction_across_the_wan() {
        let ap = model(Survival::Zone, AP);
        let eu = Home::Region(EU);
        // Issued from ap-southeast: its two timestamps (215 each) plus the read,
        // prewrite and commit of the primary key in eu-west (160 each).
        assert_eq!(ap.transaction(&[eu], &[eu]), ms(2 * 215 + 3 * 160));
        // Forwarded: one peer round trip, then eu-west's own timestamps (68 each).
        assert_eq!(ap.send(EU), ms(160 + 2 * 68));
        // The owner's transaction does not depend on who forwarded it.
        for gateway in [US, EU, AP] {
            let m = model(Survival::Zone, gateway);
            for home in [US, EU, AP] {
                assert_eq!(m.owner_send(home), ap.owner_send(home), "{gateway} {home}");
                assert_eq!(m.forward(home), m.topology().rtt(gateway, home).unwrap());
            }
        }
    }

    #[test]
    fn send_bound_under_zone_survival() {
        let t = Topology::from_toml_str(EXAMPLE).unwrap();
        let bound = |from, home| send_bound(&t, from, home).unwrap();
        // Inside the primary region nothing crosses the WAN.
        assert_eq!(bound(US, US), Duration::ZERO);
        // At home elsewhere: the two timestamp round trips to us-east.
        assert_eq!(bound(EU, EU), ms(136));
        assert_eq!(bound(AP, AP), ms(430));
        // Into a box homed in the primary: the forwarded hop only.
        assert_eq!(bound(EU, US), ms(68));
        assert_eq!(bound(AP, US), ms(215));
        // Otherwise the hop plus the home region's timestamps.
        assert_eq!(bound(US, EU), ms(68 + 136));
        assert_eq!(bound(US, AP), ms(215 + 430));
        assert_eq!(bound(AP, EU), ms(160 + 136));
        assert_eq!(bound(EU, AP), ms(160 + 430));
        for from in [US, EU, AP] {
            for home in [US, EU, AP] {
                assert_eq!(bound(from, home), model(Survival::Zone, from).send(home));
            }
        }
    }

    #[test]
    fn send_bound_under_region_survival_adds_two_quorums() {
        let region = model(Survival::Region, US);
        let t = region.topology().clone();
        let bound = |from, home| send_bound(&t, from, home).unwrap();
        // Prewrite and the commit of the primary key each wait for the nearest
        // other region holding voters: eu-west for us-east and the reverse (68),
        // eu-west for ap-southeast (160).
        assert_eq!(bound(US, US), ms(2 * 68));
        assert_eq!(bound(EU, EU), ms(136 + 2 * 68));
        assert_eq!(bound(AP, AP), ms(430 + 2 * 160));
        assert_eq!(bound(AP, US), ms(215 + 2 * 68));
        assert_eq!(bound(EU, AP), ms(160 + 430 + 2 * 160));
    }

    #[test]
    fn send_bound_rejects_unknown_regions() {
        let t = Topology::from_toml_str(EXAMPLE).unwrap();
        assert_eq!(
            send_bound(&t, RegionId(9), US).unwrap_err(),
            Error::UnknownRegion {
                region: "9".into(),
                context: "the gateway's region".into()
            }
        );
        assert_eq!(
            send_bound(&t, US, RegionId(9)).unwrap_err(),
            Error::UnknownRegion {
                region: "9".into(),
                context: "the box's home region".into()
            }
        );
    }

    #[test]
    fn a_send_into_a_region_outside_the_topology_is_owned_in_the_primary() {
        let eu = model(Survival::Zone, EU);
        let unknown = RegionId(77);
        assert_eq!(eu.forward(unknown), eu.forward(US));
        assert_eq!(eu.owner_send(unknown), eu.owner_send(US));
        assert_eq!(eu.send(unknown), ms(68));
    }

    #[test]
    fn region_survival_adds_the_quorum_round_trip() {
        let zone = model(Survival::Zone, US);
        let region = model(Survival::Region, US);
        // us-east's range: 2 voters at home, 2 in eu-west (nearest), 1 in ap-southeast.
        assert_eq!(region.quorum(Home::Region(US)), ms(68));
        // ap-southeast's nearest other region is eu-west.
        assert_eq!(region.quorum(Home::Region(AP)), ms(160));
        assert_eq!(region.quorum(Home::Region(EU)), ms(68));
        assert_eq!(region.quorum(Home::Global), ms(68));
        for home in [US, EU, AP] {
            let extra = region.quorum(Home::Region(home)) * 2;
            assert_eq!(
                region.commit(&[Home::Region(home)]),
                zone.commit(&[Home::Region(home)]) + extra,
                "home {home}"
            );
            assert_eq!(region.send(home), zone.send(home) + extra);
        }
    }

    #[test]
    fn commit_prewrites_in_parallel_and_commits_the_primary_key() {
        let m = model(Survival::Zone, EU);
        // Prewrite: slowest of us-east (68) and ap-southeast (160); commit ts: 68
        // (primary us-east); commit of the primary key in us-east: 68.
        assert_eq!(
            m.commit(&[Home::Region(US), Home::Region(AP)]),
            ms(160 + 68 + 68)
        );
        // Same homes, primary key in ap-southeast.
        assert_eq!(
            m.commit(&[Home::Region(AP), Home::Region(US)]),
            ms(160 + 68 + 160)
        );
        // Start ts + sequential reads + commit.
        assert_eq!(
            m.transaction(&[Home::Global, Home::Region(AP)], &[Home::Region(EU)]),
            ms(68 + 68 + 160 + 68)
        );
    }

    #[test]
    fn data_outside_the_topology_is_charged_like_global_data() {
        let m = model(Survival::Region, AP);
        assert_eq!(m.read(Home::Region(RegionId(77))), m.read(Home::Global));
        assert_eq!(m.quorum(Home::Region(RegionId(77))), m.quorum(Home::Global));
    }
}
