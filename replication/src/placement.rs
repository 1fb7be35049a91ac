//! TiKV placement: PD placement rules that pin each region's key range to its home
//! region, the voter layout they produce, and the check that the layout survives
//! the loss of any one zone (and, for the region goal, any one region).
//!
//! # Keys
//!
//! PD rules name key ranges by the hex of the keys TiKV stores. The transactional
//! client of tikv-client 0.4 (API v1, no keyspace) sends raw keys to TiKV, and TiKV's
//! MVCC layer stores them memcomparable-encoded (`EncodeBytes`, the codec in
//! `tikv-client/src/kv/codec.rs`); PD's Region boundaries are those encoded keys,
//! which is why the client encodes a key (`Key::to_encoded`) before asking PD for its
//! Region and decodes the Region bounds it gets back. PD itself rejects rule keys
//! that do not decode with this codec when its `key-type` is `table` or `txn`. Rules
//! therefore carry [`encode_memcomparable`] of the raw bounds from
//! `rossby_keyspace::keys`; the encoding preserves order, so the encoded range holds
//! exactly the encoded keys of the raw range.
//!
//! # Rules
//!
//! One bundle, group `rossby`, with a group index above PD's default group (`pd`,
//! index 0) and `group_override` set: for the key ranges it covers, PD's default
//! three-voter rule does not stack on top. Every rule is constrained with
//! `region in [<name>]`. For each range, the leader's region (the home region, or
//! the primary for global data) holding N voters gets:
//!
//! * one rule with role `leader`, count 1. With N >= 2 it is also pinned to the
//!   region's first zone, as listed in the topology (`zone in [<first zone>]`);
//! * with N >= 2, one rule with role `voter`, count N - 1, kept out of that zone
//!   (`zone notIn [<first zone>]`), with `location_labels = ["region", "zone"]` and
//!   `isolation_level = "zone"`, so PD puts these voters in distinct zones.
//!
//! Every other region holding voters gets one rule with role `follower`, isolated
//! by zone the same way. PD moves leadership to the `leader` rule's replica and
//! away from `follower` replicas, so the leader stays in its region while it is up.
//!
//! PD applies location labels and isolation within one rule only (its rule checker
//! scores a candidate store against the stores of the same rule), so two rules of
//! one region could stack replicas in one zone: a `leader` rule constrained to the
//! region alone could land next to a voter of the `voter` rule, and losing that zone
//! would take two of three voters. Pinning the leader to the first zone and keeping
//! the voters out of it, isolated from each other, leaves every zone of the region
//! with at most one voter. If the first zone is lost, Raft elects a leader among the
//! surviving voters (PD roles do not constrain elections), and when the zone comes
//! back PD places the `leader` rule's replica there again and moves leadership to
//! it. With N = 1 there is nothing to stack with, so the leader rule names the
//! region alone and PD may use any of its zones.
//!
//! # Survival goals
//!
//! * `zone`: a region's range has three voters, all in its home region, in three
//!   distinct zones (the home region needs at least three zones). Commits need no
//!   cross-region round trip. Global data has min(3, zones) voters in the primary
//!   and one follower in every other region.
//! * `region`: at most a minority of a range's voters in any one region, and no more
//!   than one per zone: two in the leader's region and the rest in the regions
//!   nearest to it (five voters, at most two per region), so a commit waits for one
//!   round trip to the nearest other region. Global data has voters in every region.
//!   Regions with too few zones get one voter each (three voters over three regions).
//!
//! [`check_survival`] reads the rules back, works out where their voters can land
//! in the worst case and fails with [`Error::CannotSurvive`] when losing one zone,
//! or one region under the region goal, can leave a range without a majority of its
//! voters. A rule's `zone in` and `zone notIn` constraints limit the zones of its
//! region it may use; within them, a rule isolated by zone puts its replicas in
//! distinct zones, a rule without isolation may put them all in one zone, and rules
//! whose allowed zones overlap may share a zone.

use crate::error::{Error, Result};
use crate::latency::{Home, LatencyModel};
use crate::topology::{Region, Survival, Topology};
use rossby_keyspace::{KeyRange, RegionId, keys};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The rule group of every Rossby rule.
pub const GROUP_ID: &str = "rossby";

/// The group index: above PD's default group `pd` (index 0), so with
/// `group_override` the default rule does not apply to Rossby's ranges.
pub const GROUP_INDEX: u32 = 10;

/// The store label naming a TiKV store's region (the topology's region name).
pub const REGION_LABEL: &str = "region";

/// The store label naming a TiKV store's availability zone.
pub const ZONE_LABEL: &str = "zone";

const GROUP_SIZE: usize = 8;
const MARKER: u8 = 0xff;

/// TiKV's memcomparable byte encoding (`EncodeBytes`, ascending): the key in groups
/// of 8 bytes, the last group padded with zeros, each group followed by
/// `0xFF - padding`. An empty key encodes to eight zeros and `0xF7`.
pub fn encode_memcomparable(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity((key.len() / GROUP_SIZE + 1) * (GROUP_SIZE + 1));
    let mut rest = key;
    loop {
        let take = rest.len().min(GROUP_SIZE);
        let pad = GROUP_SIZE - take;
        out.extend_from_slice(&rest[..take]);
        out.extend(std::iter::repeat_n(0u8, pad));
        // pad <= 8, so the marker never underflows.
        out.push(MARKER - pad as u8);
        if take < GROUP_SIZE {
            return out;
        }
        rest = &rest[take..];
    }
}

/// A PD rule group with all its rules, in the JSON shape of PD's `GroupBundle`
/// (`/pd/api/v1/config/placement-rule` and `/pd/api/v1/config/placement-rule/{group}`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RuleBundle {
    /// The group's id.
    pub group_id: String,
    /// The group's order among groups: groups with a higher index apply later.
    #[serde(default)]
    pub group_index: u32,
    /// When set, rules of groups with a lower index do not apply to the ranges this
    /// group's rules cover.
    #[serde(default)]
    pub group_override: bool,
    /// The group's rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// One PD placement rule, in the JSON shape of PD's `placement.Rule`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Rule {
    /// The rule's group.
    pub group_id: String,
    /// The rule's id, unique in its group.
    pub id: String,
    /// Order within the group.
    #[serde(default)]
    pub index: u32,
    /// When set, lower-index rules of the same group do not apply to this range.
    #[serde(default)]
    pub r#override: bool,
    /// Hex of the first (encoded) key of the range; empty for the start of the keyspace.
    pub start_key: String,
    /// Hex of the first (encoded) key after the range; empty for the end of the keyspace.
    pub end_key: String,
    /// `voter`, `leader`, `follower` or `learner`.
    pub role: String,
    /// How many replicas this rule places.
    pub count: u32,
    /// Store label constraints; a store must match all of them.
    #[serde(default)]
    pub label_constraints: Vec<LabelConstraint>,
    /// Store labels, outermost first, across which PD spreads the rule's replicas.
    #[serde(default)]
    pub location_labels: Vec<String>,
    /// The location label at which the rule's replicas must be isolated; PD does
    /// not place a replica that would break it.
    #[serde(default)]
    pub isolation_level: String,
}

/// A constraint on a store label.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LabelConstraint {
    /// The label's key.
    pub key: String,
    /// `in`, `notIn`, `exists` or `notExists`.
    pub op: String,
    /// The values for `in` and `notIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// One key range with its own placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RangeOf {
    /// The global data (the lookup table).
    Global,
    /// Everything homed in a region.
    Region(RegionId),
}

/// Voters of one range in one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoterGroup {
    /// The region holding these voters.
    pub region: RegionId,
    /// How many voters.
    pub count: u32,
    /// True for the leader's region (one `leader` rule and, for more than one
    /// voter, a `voter` rule), false elsewhere (one `follower` rule).
    pub leader_eligible: bool,
}

/// Where one range's voters go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The range.
    pub range: RangeOf,
    /// The region meant to hold the leader.
    pub leader_region: RegionId,
    /// One group per region holding voters; the leader's region first, then by
    /// round-trip time from it.
    pub voters: Vec<VoterGroup>,
}

impl Layout {
    /// Total number of voters.
    pub fn total(&self) -> u32 {
        self.voters.iter().map(|g| g.count).sum()
    }
}

/// Voters per range under the zone goal.
const ZONE_GOAL_VOTERS: u32 = 3;
/// Voters per range under the region goal.
const REGION_GOAL_VOTERS: u32 = 5;
/// Most voters of one range in one region under the region goal (a minority of five).
const REGION_GOAL_PER_REGION: u32 = 2;

/// The voter layout of one range. Always returns a layout; whether it meets the
/// survival goal is [`check_survival`]'s job, so an unsurvivable topology still has a
/// latency model.
pub fn layout(topology: &Topology, range: RangeOf) -> Layout {
    let leader_region = match range {
        RangeOf::Global => topology.primary().code,
        RangeOf::Region(r) => topology
            .region(r)
            .map_or(topology.primary().code, |r| r.code),
    };
    let by_distance = regions_by_distance(topology, leader_region);
    let zones = |r: &Region| u32::try_from(r.zones.len()).unwrap_or(u32::MAX);
    let counts: Vec<u32> = match (topology.survival(), range) {
        (Survival::Zone, RangeOf::Region(_)) => by_distance
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { ZONE_GOAL_VOTERS } else { 0 })
            .collect(),
        (Survival::Zone, RangeOf::Global) => by_distance
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if i == 0 {
                    zones(r).min(ZONE_GOAL_VOTERS)
                } else {
                    1
                }
            })
            .collect(),
        (Survival::Region, range) => {
            let every_region = range == RangeOf::Global;
            let caps: Vec<u32> = by_distance
                .iter()
                .map(|r| zones(r).min(REGION_GOAL_PER_REGION))
                .collect();
            region_goal_counts(&caps, every_region)
                .unwrap_or_else(|| by_distance.iter().map(|_| 1).collect())
        }
    };
    let voters = by_distance
        .iter()
        .zip(counts)
        .filter(|(_, count)| *count > 0)
        .map(|(r, count)| VoterGroup {
            region: r.code,
            count,
            leader_eligible: r.code == leader_region,
        })
        .collect();
    Layout {
        range,
        leader_region,
        voters,
    }
}

/// Voter counts per region (ordered by distance from the leader's region, which is
/// first) for the region goal: up to `REGION_GOAL_VOTERS` voters, nearest regions
/// first, each region below a majority. `None` when the caps do not allow it (then
/// the caller falls back to one voter per region).
fn region_goal_counts(caps: &[u32], every_region: bool) -> Option<Vec<u32>> {
    let mut counts = vec![0u32; caps.len()];
    if every_region {
        counts.iter_mut().for_each(|c| *c = 1);
    }
    if let (Some(first), Some(&cap)) = (counts.first_mut(), caps.first()) {
        *first = cap;
    }
    let survives = |counts: &[u32]| {
        let total: u32 = counts.iter().sum();
        let largest = counts.iter().copied().max().unwrap_or(0);
        total >= 3 && largest <= (total - 1) / 2
    };
    while !(survives(&counts)
        && counts.iter().sum::<u32>() >= REGION_GOAL_VOTERS.min(caps.iter().sum()))
    {
        let next = (1..caps.len()).find(|&i| counts[i] < caps[i])?;
        counts[next] += 1;
    }
    survives(&counts).then_some(counts)
}

/// Every region, the given one first, the others by round-trip time from it (ties
/// by code, so the order is deterministic).
fn regions_by_distance(topology: &Topology, from: RegionId) -> Vec<&Region> {
    let mut regions: Vec<&Region> = topology.regions().iter().collect();
    regions.sort_by_key(|r| {
        (
            r.code != from,
            topology.rtt(from, r.code).unwrap_or(Duration::MAX),
            r.code,
        )
    });
    regions
}

/// The raw key range of a [`RangeOf`].
pub fn key_range(range: RangeOf) -> KeyRange {
    match range {
        RangeOf::Global => keys::global_range(),
        RangeOf::Region(r) => keys::region_range(r),
    }
}

/// Every range the rules cover: global data first, then each region by code.
pub fn ranges(topology: &Topology) -> Vec<RangeOf> {
    std::iter::once(RangeOf::Global)
        .chain(topology.regions().iter().map(|r| RangeOf::Region(r.code)))
        .collect()
}

fn range_name(topology: &Topology, range: RangeOf) -> String {
    match range {
        RangeOf::Global => "global".to_string(),
        RangeOf::Region(code) => match topology.region(code) {
            Some(r) => format!("region-{}", r.name),
            None => format!("region-{code}"),
        },
    }
}

/// The zone the `leader` rule of a leader's region holding `count` voters is pinned
/// to: the region's first zone when other voters share the region (so they can be
/// kept out of it), none for a lone leader.
fn leader_zone(region: &Region, count: u32) -> Option<&str> {
    if count < 2 {
        return None;
    }
    region.zones.first().map(String::as_str)
}

fn constraint(key: &str, op: &str, value: &str) -> LabelConstraint {
    LabelConstraint {
        key: key.to_string(),
        op: op.to_string(),
        values: vec![value.to_string()],
    }
}

fn rules_for(topology: &Topology, range: RangeOf, first_index: u32) -> Vec<Rule> {
    let (start_key, end_key) = range_keys(range);
    let prefix = range_name(topology, range);
    let rule = |suffix: String, role: &str, count: u32, label_constraints, isolated: bool| Rule {
        group_id: GROUP_ID.to_string(),
        id: format!("{prefix}-{suffix}"),
        index: 0,
        r#override: false,
        start_key: start_key.clone(),
        end_key: end_key.clone(),
        role: role.to_string(),
        count,
        label_constraints,
        location_labels: if isolated {
            vec![REGION_LABEL.to_string(), ZONE_LABEL.to_string()]
        } else {
            Vec::new()
        },
        isolation_level: if isolated {
            ZONE_LABEL.to_string()
        } else {
            String::new()
        },
    };
    let mut rules = Vec::new();
    for group in layout(topology, range).voters {
        let Some(region) = topology.region(group.region) else {
            continue;
        };
        let in_region = constraint(REGION_LABEL, "in", &region.name);
        if !group.leader_eligible {
            rules.push(rule(
                format!("followers-{}", region.name),
                "follower",
                group.count,
                vec![in_region],
                true,
            ));
            continue;
        }
        match leader_zone(region, group.count) {
            // One replica needs no isolation: it cannot share a zone with itself.
            None => rules.push(rule(
                "leader".to_string(),
                "leader",
                1,
                vec![in_region],
                false,
            )),
            Some(zone) => {
                rules.push(rule(
                    "leader".to_string(),
                    "leader",
                    1,
                    vec![in_region.clone(), constraint(ZONE_LABEL, "in", zone)],
                    false,
                ));
                rules.push(rule(
                    "voters".to_string(),
                    "voter",
                    group.count - 1,
                    vec![in_region, constraint(ZONE_LABEL, "notIn", zone)],
                    true,
                ));
            }
        }
    }
    for (i, rule) in rules.iter_mut().enumerate() {
        rule.index = first_index.saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
    }
    rules
}

/// The placement rules of a topology: one bundle, group [`GROUP_ID`], index
/// [`GROUP_INDEX`], `group_override` set. Fails with [`Error::CannotSurvive`] when
/// the topology cannot meet its survival goal.
pub fn rule_bundles(topology: &Topology) -> Result<Vec<RuleBundle>> {
    let mut rules = Vec::new();
    for range in ranges(topology) {
        let first = u32::try_from(rules.len()).unwrap_or(u32::MAX);
        rules.extend(rules_for(topology, range, first));
    }
    let bundles = vec![RuleBundle {
        group_id: GROUP_ID.to_string(),
        group_index: GROUP_INDEX,
        group_override: true,
        rules,
    }];
    check_survival(topology, &bundles)?;
    Ok(bundles)
}

/// Where one rule may put its voters.
struct RulePlacement<'a> {
    id: &'a str,
    region: &'a Region,
    count: u64,
    isolated: bool,
    /// Whether the rule's zone constraints allow each zone of `region`, in the
    /// topology's order.
    zones: Vec<bool>,
}

impl RulePlacement<'_> {
    /// How many zones of its region the rule may use.
    fn room(&self) -> usize {
        self.zones.iter().filter(|&&allowed| allowed).count()
    }

    /// The most of this rule's voters that can sit in zone `zone` of its region:
    /// one if the rule is isolated by zone, all of them otherwise, none if its
    /// constraints keep it out of that zone.
    fn most_in(&self, zone: usize) -> u64 {
        match self.zones.get(zone) {
            Some(true) if self.isolated => self.count.min(1),
            Some(true) => self.count,
            _ => 0,
        }
    }
}

/// Hex of the encoded bounds of a range, as rules carry them.
fn range_keys(range: RangeOf) -> (String, String) {
    let keys = key_range(range);
    let start = hex::encode(encode_memcomparable(&keys.start));
    let end = keys
        .end
        .as_deref()
        .map(|end| hex::encode(encode_memcomparable(end)))
        .unwrap_or_default();
    (start, end)
}

/// Checks that rules keep a majority of every range's voters after the loss of any
/// one zone, and under the region goal after the loss of any one region.
///
/// The worst case is assumed. A rule's replicas go to the zones of its region that
/// its `zone` constraints allow (`in` keeps it to the zones named, `notIn` out of
/// them, `exists` allows every zone and `notExists` none). Within those zones a rule
/// with zone isolation puts its replicas in distinct zones and a rule without it may
/// put them all in one zone; rules whose allowed zones overlap may share a zone.
/// Voters are replicas with role `voter`, `leader` or `follower`. Every rule must
/// constrain `region` to exactly one region of the topology, and every zone it names
/// must be a zone of that region; rules of other groups, and rules for key ranges
/// that are not Rossby's, are ignored.
pub fn check_survival(topology: &Topology, bundles: &[RuleBundle]) -> Result<()> {
    let ranges: Vec<(RangeOf, (String, String), String)> = ranges(topology)
        .into_iter()
        .map(|range| (range, range_keys(range), range_name(topology, range)))
        .collect();
    let mut by_range: BTreeMap<RangeOf, Vec<RulePlacement<'_>>> = BTreeMap::new();
    for rule in bundles
        .iter()
        .filter(|b| b.group_id == GROUP_ID)
        .flat_map(|b| &b.rules)
    {
        let Some((range, _, name)) = ranges
            .iter()
            .find(|(_, (start, end), _)| *start == rule.start_key && *end == rule.end_key)
        else {
            continue;
        };
        let entry = by_range.entry(*range).or_default();
        if let Some(placement) = rule_placement(topology, rule, name)? {
            entry.push(placement);
        }
    }
    for (range, _, name) in &ranges {
        let Some(rules) = by_range.get(range) else {
            return Err(Error::CannotSurvive {
                range: name.clone(),
                lost: "nothing".to_string(),
                detail: "no rule places voters for this range".to_string(),
            });
        };
        check_range(topology, name, rules)?;
    }
    Ok(())
}

fn rule_placement<'a>(
    topology: &'a Topology,
    rule: &'a Rule,
    range: &str,
) -> Result<Option<RulePlacement<'a>>> {
    if !matches!(rule.role.as_str(), "voter" | "leader" | "follower") {
        return Ok(None);
    }
    let mut regions = rule
        .label_constraints
        .iter()
        .filter(|c| c.key == REGION_LABEL && c.op == "in");
    let region = match (regions.next(), regions.next()) {
        (Some(c), None) if c.values.len() == 1 => {
            let name = &c.values[0];
            topology
                .region_named(name)
                .ok_or_else(|| Error::UnknownRegion {
                    region: name.clone(),
                    context: format!("placement rule {}", rule.id),
                })?
        }
        _ => {
            return Err(Error::CannotSurvive {
                range: range.to_string(),
                lost: "a region".to_string(),
                detail: format!(
                    "rule {} does not confine its voters to exactly one region (one \
                     `{REGION_LABEL} in [<name>]` constraint with one value)",
                    rule.id
                ),
            });
        }
    };
    Ok(Some(RulePlacement {
        id: &rule.id,
        region,
        count: u64::from(rule.count),
        isolated: rule.isolation_level == ZONE_LABEL
            && rule.location_labels.iter().any(|l| l == ZONE_LABEL),
        zones: allowed_zones(rule, region, range)?,
    }))
}

/// The zones of `region` that the `zone` constraints of `rule` allow.
fn allowed_zones(rule: &Rule, region: &Region, range: &str) -> Result<Vec<bool>> {
    let refuse = |detail: String| Error::CannotSurvive {
        range: range.to_string(),
        lost: "nothing".to_string(),
        detail,
    };
    let named = |c: &LabelConstraint| -> Result<Vec<bool>> {
        let mut named = vec![false; region.zones.len()];
        for value in &c.values {
            let Some(i) = region.zones.iter().position(|z| z == value) else {
                return Err(refuse(format!(
                    "rule {} names zone {value}, which region {} does not have (its zones: {})",
                    rule.id,
                    region.name,
                    region.zones.join(", ")
                )));
            };
            named[i] = true;
        }
        Ok(named)
    };
    let mut allowed = vec![true; region.zones.len()];
    for c in rule
        .label_constraints
        .iter()
        .filter(|c| c.key == ZONE_LABEL)
    {
        match c.op.as_str() {
            "in" => {
                let named = named(c)?;
                allowed.iter_mut().zip(named).for_each(|(a, n)| *a &= n);
            }
            "notIn" => {
                let named = named(c)?;
                allowed.iter_mut().zip(named).for_each(|(a, n)| *a &= !n);
            }
            // Every store of a region carries a zone label.
            "exists" => {}
            "notExists" => allowed.iter_mut().for_each(|a| *a = false),
            op => {
                return Err(refuse(format!(
                    "rule {} has a `{ZONE_LABEL}` constraint with op {op:?}; PD knows only \
                     in, notIn, exists and notExists",
                    rule.id
                )));
            }
        }
    }
    Ok(allowed)
}

fn check_range(topology: &Topology, range: &str, rules: &[RulePlacement<'_>]) -> Result<()> {
    let total: u64 = rules.iter().map(|r| r.count).sum();
    if total == 0 {
        return Err(Error::CannotSurvive {
            range: range.to_string(),
            lost: "nothing".to_string(),
            detail: "its rules place no voters".to_string(),
        });
    }
    let majority = total / 2 + 1;
    for r in rules {
        let room = r.room();
        if r.count > 0 && room == 0 {
            return Err(Error::CannotSurvive {
                range: range.to_string(),
                lost: "nothing".to_string(),
                detail: format!(
                    "the zone constraints of rule {} leave it no zone of {}",
                    r.id, r.region.name
                ),
            });
        }
        if r.isolated && r.count > u64::try_from(room).unwrap_or(u64::MAX) {
            return Err(Error::CannotSurvive {
                range: range.to_string(),
                lost: format!("a zone of {}", r.region.name),
                detail: format!(
                    "rule {} needs {} voters in distinct zones of {}, and its constraints \
                     allow {room} of the region's {} zone(s); add zones to the region or \
                     lower the survival goal",
                    r.id,
                    r.count,
                    r.region.name,
                    r.region.zones.len()
                ),
            });
        }
    }
    for region in topology.regions() {
        let here: Vec<&RulePlacement<'_>> = rules
            .iter()
            .filter(|r| r.region.code == region.code)
            .collect();
        for (z, zone) in region.zones.iter().enumerate() {
            // Each rule independently puts as many voters here as it can.
            let zone_loss: u64 = here.iter().map(|r| r.most_in(z)).sum();
            if zone_loss > 0 && total - zone_loss < majority {
                return Err(Error::CannotSurvive {
                    range: range.to_string(),
                    lost: format!("zone {}/{zone}", region.name),
                    detail: format!(
                        "{zone_loss} of {total} voters can sit in zone {zone}; {majority} are needed"
                    ),
                });
            }
        }
        if topology.survival() == Survival::Region {
            let region_loss: u64 = here.iter().map(|r| r.count).sum();
            if total - region_loss < majority {
                return Err(Error::CannotSurvive {
                    range: range.to_string(),
                    lost: format!("region {}", region.name),
                    detail: format!(
                        "{region_loss} of {total} voters are in {}; {majority} are needed",
                        region.name
                    ),
                });
            }
        }
    }
    Ok(())
}

/// One range of a [`Plan`], with region names resolved, for printing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSummary {
    /// `global` or `region-<name>`, the prefix of its rule ids.
    pub range: String,
    /// The region meant to hold the leader.
    pub leader_region: String,
    /// The zone the `leader` rule is pinned to; `None` when the leader is the only
    /// voter in its region and may use any of its zones.
    pub leader_zone: Option<String>,
    /// Region name, number of voters there, and whether it is the leader's region
    /// (one `leader` and the rest `voter`s) or not (`follower`s).
    pub voters: Vec<(String, u32, bool)>,
}

/// The output of `rossby-admin placement plan`: the rules and the latencies they imply.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The rule bundles to send to PD.
    pub bundles: Vec<RuleBundle>,
    /// Expected latency of committing a write to a box, per home region, from a
    /// gateway in that region (see [`LatencyModel::commit`]).
    pub commit_latency: Vec<(String, Duration)>,
    /// Expected latency of a send (see [`LatencyModel::send`]) from a gateway in the
    /// first region to a box homed in the second, for every ordered pair.
    pub send_latency: Vec<(String, String, Duration)>,
    /// Where each range's voters go.
    pub ranges: Vec<RangeSummary>,
    /// The survival goal planned for.
    pub survival: Survival,
}

/// Plans placement: the rules (or [`Error::CannotSurvive`]) and the expected
/// latencies from the shared [`LatencyModel`].
pub fn plan(topology: &Topology) -> Result<Plan> {
    let bundles = rule_bundles(topology)?;
    let mut commit_latency = Vec::new();
    let mut send_latency = Vec::new();
    for from in topology.regions() {
        let model = LatencyModel::new(topology.clone(), from.code)?;
        commit_latency.push((from.name.clone(), model.commit(&[Home::Region(from.code)])));
        for to in topology.regions() {
            send_latency.push((from.name.clone(), to.name.clone(), model.send(to.code)));
        }
    }
    let name = |code: RegionId| {
        topology
            .region(code)
            .map_or_else(|| code.to_string(), |r| r.name.clone())
    };
    let summaries = ranges(topology)
        .into_iter()
        .map(|range| {
            let layout = layout(topology, range);
            let leader_zone = layout
                .voters
                .iter()
                .find(|g| g.leader_eligible)
                .and_then(|g| leader_zone(topology.region(g.region)?, g.count))
                .map(str::to_string);
            RangeSummary {
                range: range_name(topology, range),
                leader_region: name(layout.leader_region),
                leader_zone,
                voters: layout
                    .voters
                    .iter()
                    .map(|g| (name(g.region), g.count, g.leader_eligible))
                    .collect(),
            }
        })
        .collect();
    Ok(Plan {
        bundles,
        commit_latency,
        send_latency,
        ranges: summaries,
        survival: topology.survival(),
    })
}

impl Plan {
    /// The rules as a pretty JSON array of bundles: the body PD's
    /// `POST /pd/api/v1/config/placement-rule` accepts. Post it with `?partial`
    /// (or post the one bundle to `/pd/api/v1/config/placement-rule/rossby`):
    /// without `partial`, PD drops every other group, including its default rule.
    pub fn rules_json(&self) -> String {
        serde_json::to_string_pretty(&self.bundles).unwrap_or_default()
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms.fract() == 0.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Placement (survival goal: {}; PD rule group {GROUP_ID}, index {GROUP_INDEX}, override)",
            self.survival.as_str()
        )?;
        let width = self.ranges.iter().map(|r| r.range.len()).max().unwrap_or(0);
        for summary in &self.ranges {
            let total: u32 = summary.voters.iter().map(|(_, n, _)| n).sum();
            let voters: Vec<String> = summary
                .voters
                .iter()
                .map(|(region, count, leads)| {
                    let plural = |n: u32| if n == 1 { "" } else { "s" };
                    match (*leads, count.saturating_sub(1)) {
                        (true, 0) => format!("{region}: 1 leader"),
                        (true, rest) => {
                            format!("{region}: 1 leader + {rest} voter{}", plural(rest))
                        }
                        (false, _) => format!("{region}: {count} follower{}", plural(*count)),
                    }
                })
                .collect();
            let leader = match &summary.leader_zone {
                Some(zone) => format!("{} (zone {zone})", summary.leader_region),
                None => summary.leader_region.clone(),
            };
            writeln!(
                f,
                "  {:width$}  leader in {leader}; {total} voters: {}",
                summary.range,
                voters.join(", ")
            )?;
        }
        let rules: usize = self.bundles.iter().map(|b| b.rules.len()).sum();
        writeln!(f, "  {rules} rules")?;

        writeln!(f)?;
        writeln!(
            f,
            "Expected commit latency (gateway in the home region, one write to a box homed there)"
        )?;
        let width = self
            .commit_latency
            .iter()
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(0);
        for (region, latency) in &self.commit_latency {
            writeln!(f, "  {region:width$}  {}", ms(*latency))?;
        }

        writeln!(f)?;
        writeln!(
            f,
            "Expected send latency, forwarded home-region path (rows: gateway region; \
             columns: recipient's home region)"
        )?;
        writeln!(
            f,
            "  peer round trip to the home region's owning gateway + its transaction there \
             (2 timestamps from the primary + quorums)"
        )?;
        let names: Vec<&String> = self.commit_latency.iter().map(|(n, _)| n).collect();
        let col = names.iter().map(|n| n.len()).max().unwrap_or(0).max(9);
        write!(f, "  {:col$}", "")?;
        for n in &names {
            write!(f, "  {n:>col$}")?;
        }
        writeln!(f)?;
        for from in &names {
            write!(f, "  {from:col$}")?;
            for to in &names {
                let latency = self
                    .send_latency
                    .iter()
                    .find(|(a, b, _)| a == *from && b == *to)
                    .map_or_else(|| "-".to_string(), |(_, _, d)| ms(*d));
                write!(f, "  {latency:>col$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const EXAMPLE: &str = include_str!("../../docs/examples/three-regions.toml");

    fn example(survival: Survival) -> Topology {
        Topology::from_toml_str(&EXAMPLE.replacen(
            "survival = \"zone\"",
            &format!("survival = \"{}\"", survival.as_str()),
            1,
        ))
        .unwrap()
    }

    /// A topology with `zones[i]` zones in region i + 1 and made-up round trips that
    /// differ per pair, so "nearest" is well defined.
    fn generated(zones: &[usize], survival: Survival, primary: usize) -> Result<Topology> {
        let mut text = format!(
            "primary = \"r{}\"\nsurvival = \"{}\"\n",
            primary + 1,
            survival.as_str()
        );
        for (i, &z) in zones.iter().enumerate() {
            let list: Vec<String> = (0..z).map(|k| format!("\"r{}-z{k}\"", i + 1)).collect();
            text += &format!(
                "[[regions]]\ncode = {code}\nname = \"r{code}\"\nzones = [{}]\n\
                 gateways = [{{ quic = \"gw.r{code}.example:7400\", admin = \"10.0.0.{code}:7401\" }}]\n",
                list.join(", "),
                code = i + 1
            );
        }
        text += "[rtt_ms]\n";
        for i in 0..zones.len() {
            for j in i + 1..zones.len() {
                text += &format!(
                    "\"r{}:r{}\" = {}\n",
                    i + 1,
                    j + 1,
                    10 * (i + 1) + 7 * (j + 1)
                );
            }
        }
        Topology::from_toml_str(&text)
    }

    #[test]
    fn memcomparable_known_answers() {
        let cases: [(&[u8], &[u8]); 8] = [
            (&[], &[0, 0, 0, 0, 0, 0, 0, 0, 0xf7]),
            (&[0], &[0, 0, 0, 0, 0, 0, 0, 0, 0xf8]),
            (&[1, 2, 3], &[1, 2, 3, 0, 0, 0, 0, 0, 0xfa]),
            (&[1, 2, 3, 0], &[1, 2, 3, 0, 0, 0, 0, 0, 0xfb]),
            (&[1, 2, 3, 4, 5, 6, 7], &[1, 2, 3, 4, 5, 6, 7, 0, 0xfe]),
            (
                &[0; 8],
                &[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0xf7],
            ),
            (
                &[1, 2, 3, 4, 5, 6, 7, 8],
                &[1, 2, 3, 4, 5, 6, 7, 8, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0xf7],
            ),
            (
                &[1, 2, 3, 4, 5, 6, 7, 8, 9],
                &[1, 2, 3, 4, 5, 6, 7, 8, 0xff, 9, 0, 0, 0, 0, 0, 0, 0, 0xf8],
            ),
        ];
        for (raw, encoded) in cases {
            assert_eq!(encode_memcomparable(raw), encoded, "{raw:?}");
        }
    }

    #[test]
    fn memcomparable_preserves_order() {
        let alphabet = [0u8, 1, 0xf7, 0xff];
        let mut keys: Vec<Vec<u8>> = vec![vec![]];
        for len in 1..=9 {
            // Every key of this length over a small alphabet, and a few long ones.
            let count = if len <= 4 {
                alphabet.len().pow(len as u32)
            } else {
                16
            };
            for n in 0..count {
                keys.push(
                    (0..len)
                        .map(|i| alphabet[(n >> (2 * (i % 4))) % alphabet.len()])
                        .collect(),
                );
            }
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(
                    encode_memcomparable(a).cmp(&encode_memcomparable(b)),
                    a.cmp(b),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

    fn all_rules(t: &Topology) -> Vec<Rule> {
        rule_bundles(t)
            .unwrap()
            .into_iter()
            .flat_map(|b| b.rules)
            .collect()
    }

    /// The rules of a topology as `rule_bundles` builds them, before the survival
    /// check, so the checker and the brute force can be compared on refused ones too.
    fn unchecked_bundles(t: &Topology) -> Vec<RuleBundle> {
        let mut rules = Vec::new();
        for range in ranges(t) {
            let first = u32::try_from(rules.len()).unwrap();
            rules.extend(rules_for(t, range, first));
        }
        vec![RuleBundle {
            group_id: GROUP_ID.to_string(),
            group_index: GROUP_INDEX,
            group_override: true,
            rules,
        }]
    }

    fn c(key: &str, op: &str, value: &str) -> LabelConstraint {
        LabelConstraint {
            key: key.into(),
            op: op.into(),
            values: vec![value.into()],
        }
    }

    fn rule_mut<'a>(bundles: &'a mut [RuleBundle], id: &str) -> &'a mut Rule {
        bundles[0].rules.iter_mut().find(|r| r.id == id).unwrap()
    }

    #[test]
    fn one_bundle_overrides_the_default_group() {
        for survival in [Survival::Zone, Survival::Region] {
            let bundles = rule_bundles(&example(survival)).unwrap();
            assert_eq!(bundles.len(), 1);
            let b = &bundles[0];
            assert_eq!(b.group_id, "rossby");
            assert!(b.group_index > 0);
            assert!(b.group_override);
            assert!(
                b.rules
                    .iter()
                    .all(|r| r.group_id == "rossby" && !r.r#override)
            );
            let mut ids: Vec<&str> = b.rules.iter().map(|r| r.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), b.rules.len(), "rule ids are unique");
            let indexes: Vec<u32> = b.rules.iter().map(|r| r.index).collect();
            assert!(
                indexes.windows(2).all(|w| w[0] < w[1]),
                "indexes are unique and ordered: {indexes:?}"
            );
        }
    }

    #[test]
    fn rule_keys_are_hex_of_encoded_range_bounds() {
        let rules = all_rules(&example(Survival::Zone));
        let find = |id: &str| rules.iter().find(|r| r.id == id).unwrap();
        let us = find("region-us-east-leader");
        assert_eq!(us.start_key, "0200010000000000fa");
        assert_eq!(us.end_key, "0200020000000000fa");
        let us_voters = find("region-us-east-voters");
        assert_eq!(
            (&us_voters.start_key, &us_voters.end_key),
            (&us.start_key, &us.end_key)
        );
        assert_eq!(find("region-eu-west-leader").start_key, us.end_key);
        let global = find("global-leader");
        assert_eq!(global.start_key, "0100000000000000f8");
        assert_eq!(global.end_key, "0200000000000000f8");
        // A box key lies inside its region's encoded range.
        let key = rossby_keyspace::Key::Profile(rossby_keyspace::BoxId::new(RegionId(1))).encode();
        let encoded = hex::encode(encode_memcomparable(&key));
        assert!(encoded >= us.start_key && encoded < us.end_key);
    }

    #[test]
    fn zone_goal_keeps_every_voter_of_a_region_at_home() {
        let t = example(Survival::Zone);
        let rules = all_rules(&t);
        for region in t.regions() {
            let prefix = format!("region-{}-", region.name);
            let mine: Vec<&Rule> = rules.iter().filter(|r| r.id.starts_with(&prefix)).collect();
            assert_eq!(mine.len(), 2);
            let (leader, voters) = (mine[0], mine[1]);
            let first = &region.zones[0];
            assert_eq!(leader.id, format!("region-{}-leader", region.name));
            assert_eq!(leader.role, "leader");
            assert_eq!(leader.count, 1);
            assert_eq!(
                leader.label_constraints,
                vec![c("region", "in", &region.name), c("zone", "in", first)]
            );
            assert_eq!(voters.id, format!("region-{}-voters", region.name));
            assert_eq!(voters.role, "voter");
            assert_eq!(voters.count, 2);
            assert_eq!(
                voters.label_constraints,
                vec![c("region", "in", &region.name), c("zone", "notIn", first)]
            );
            assert_eq!(voters.location_labels, vec!["region", "zone"]);
            assert_eq!(voters.isolation_level, "zone");
        }
        // Global: the leader and voters only in the primary, a follower everywhere else.
        let global: Vec<(&str, &str, u32)> = rules
            .iter()
            .filter(|r| r.id.starts_with("global-"))
            .map(|r| {
                (
                    r.label_constraints[0].values[0].as_str(),
                    r.role.as_str(),
                    r.count,
                )
            })
            .collect();
        assert_eq!(
            global,
            vec![
                ("us-east", "leader", 1),
                ("us-east", "voter", 2),
                ("eu-west", "follower", 1),
                ("ap-southeast", "follower", 1)
            ]
        );
        for r in rules.iter().filter(|r| r.role == "follower") {
            assert_eq!(r.label_constraints.len(), 1, "{}", r.id);
            assert_eq!(r.location_labels, vec!["region", "zone"]);
            assert_eq!(r.isolation_level, "zone");
        }
    }

    #[test]
    fn region_goal_spreads_a_minority_per_region_nearest_first() {
        let t = example(Survival::Region);
        let rules = all_rules(&t);
        let of = |prefix: &str| -> Vec<(String, String, u32)> {
            rules
                .iter()
                .filter(|r| r.id.starts_with(prefix))
                .map(|r| {
                    (
                        r.label_constraints[0].values[0].clone(),
                        r.role.clone(),
                        r.count,
                    )
                })
                .collect()
        };
        let s = |a: &str, b: &str, n| (a.to_string(), b.to_string(), n);
        assert_eq!(
            of("region-ap-southeast-"),
            vec![
                s("ap-southeast", "leader", 1),
                s("ap-southeast", "voter", 1),
                s("eu-west", "follower", 2),
                s("us-east", "follower", 1)
            ]
        );
        assert_eq!(
            of("global-"),
            vec![
                s("us-east", "leader", 1),
                s("us-east", "voter", 1),
                s("eu-west", "follower", 2),
                s("ap-southeast", "follower", 1)
            ]
        );
    }

    /// The leader rules of a range's rules, and the number of voters the layout puts
    /// in the leader's region.
    fn leader_rules<'a>(t: &Topology, rules: &'a [Rule], range: RangeOf) -> (Vec<&'a Rule>, u32) {
        let (start, end) = range_keys(range);
        let leaders = rules
            .iter()
            .filter(|r| r.start_key == start && r.end_key == end && r.role == "leader")
            .collect();
        let l = layout(t, range);
        let home = l.voters.iter().find(|g| g.leader_eligible).unwrap();
        assert_eq!(home.region, l.leader_region);
        (leaders, home.count)
    }

    #[test]
    fn each_range_has_one_leader_rule_pinned_to_the_first_zone_of_its_region() {
        for survival in [Survival::Zone, Survival::Region] {
            let t = example(survival);
            let rules = all_rules(&t);
            for range in ranges(&t) {
                let (leaders, _) = leader_rules(&t, &rules, range);
                assert_eq!(leaders.len(), 1, "{range:?} {survival:?}");
                let leader = leaders[0];
                let region = match range {
                    RangeOf::Global => t.primary(),
                    RangeOf::Region(code) => t.region(code).unwrap(),
                };
                assert_eq!(leader.id, format!("{}-leader", range_name(&t, range)));
                assert_eq!(leader.count, 1);
                assert_eq!(
                    leader.label_constraints,
                    vec![
                        c("region", "in", &region.name),
                        c("zone", "in", &region.zones[0])
                    ],
                    "{range:?} {survival:?}"
                );
            }
        }
    }

    #[test]
    fn a_lone_leader_is_constrained_to_its_region_alone() {
        // One zone per region: the region goal puts one voter in each region.
        let t = generated(&[1, 1, 1], Survival::Region, 0).unwrap();
        let rules = all_rules(&t);
        for range in ranges(&t) {
            let (leaders, count) = leader_rules(&t, &rules, range);
            assert_eq!(count, 1);
            assert_eq!(leaders.len(), 1);
            assert_eq!(leaders[0].label_constraints.len(), 1);
            assert_eq!(leaders[0].label_constraints[0].key, "region");
        }
        assert!(rules.iter().all(|r| r.role != "voter"));
        let plan = plan(&t).unwrap();
        assert!(plan.ranges.iter().all(|r| r.leader_zone.is_none()));
        let text = plan.to_string();
        assert!(
            text.contains("leader in r1; 3 voters: r1: 1 leader, "),
            "{text}"
        );
    }

    #[test]
    fn generated_topologies_have_one_leader_rule_per_range() {
        for zones in [&[3, 3, 3][..], &[2, 1, 3], &[1, 3], &[4, 1, 2, 3, 1, 2]] {
            for survival in [Survival::Zone, Survival::Region] {
                let Ok(t) = generated(zones, survival, 0) else {
                    continue;
                };
                let rules: Vec<Rule> = unchecked_bundles(&t).remove(0).rules;
                for range in ranges(&t) {
                    let (leaders, count) = leader_rules(&t, &rules, range);
                    assert_eq!(leaders.len(), 1, "{zones:?} {survival:?} {range:?}");
                    let zone_pins = leaders[0]
                        .label_constraints
                        .iter()
                        .filter(|c| c.key == "zone")
                        .count();
                    assert_eq!(zone_pins, usize::from(count >= 2), "{zones:?} {range:?}");
                }
            }
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Failure {
        /// Region code and zone index.
        Zone(u16, usize),
        Region(u16),
    }

    impl Failure {
        fn hits(self, (region, zone): (u16, usize)) -> bool {
            match self {
                Failure::Zone(r, z) => (r, z) == (region, zone),
                Failure::Region(r) => r == region,
            }
        }
    }

    fn failures(t: &Topology) -> Vec<Failure> {
        let mut out: Vec<Failure> = t
            .regions()
            .iter()
            .flat_map(|r| (0..r.zones.len()).map(|z| Failure::Zone(r.code.0, z)))
            .collect();
        if t.survival() == Survival::Region {
            out.extend(t.regions().iter().map(|r| Failure::Region(r.code.0)));
        }
        out
    }

    /// The zones (region code, zone index) a rule's constraints allow, read
    /// independently of the checker.
    fn domain(t: &Topology, rule: &Rule) -> Vec<(u16, usize)> {
        let region = rule
            .label_constraints
            .iter()
            .find(|c| c.key == "region")
            .and_then(|c| t.region_named(&c.values[0]))
            .unwrap();
        (0..region.zones.len())
            .filter(|&z| {
                rule.label_constraints
                    .iter()
                    .filter(|c| c.key == "zone")
                    .all(|c| {
                        let named = c.values.contains(&region.zones[z]);
                        match c.op.as_str() {
                            "in" => named,
                            "notIn" => !named,
                            "exists" => true,
                            "notExists" => false,
                            op => panic!("op {op}"),
                        }
                    })
            })
            .map(|z| (region.code.0, z))
            .collect()
    }

    /// Every way one range's voters can land: each rule in its allowed zones,
    /// distinct zones for a rule isolated by zone, any zones (repeats allowed) for
    /// one without. `None` when some rule cannot be placed.
    fn placements(t: &Topology, rules: &[&Rule]) -> Option<Vec<Vec<(u16, usize)>>> {
        let mut choices: Vec<Vec<(u16, usize)>> = vec![vec![]];
        for rule in rules
            .iter()
            .filter(|r| ["voter", "leader", "follower"].contains(&r.role.as_str()))
        {
            let zones = domain(t, rule);
            let isolated =
                rule.isolation_level == "zone" && rule.location_labels.iter().any(|l| l == "zone");
            let picks = if isolated {
                combinations(&zones, rule.count as usize)
            } else {
                multisets(&zones, rule.count as usize)
            };
            if picks.is_empty() {
                return None;
            }
            choices = choices
                .iter()
                .flat_map(|c| {
                    picks.iter().map(move |p| {
                        let mut c = c.clone();
                        c.extend(p);
                        c
                    })
                })
                .collect();
        }
        Some(choices)
    }

    fn rules_by_range<'a>(t: &Topology, bundles: &'a [RuleBundle]) -> Vec<(String, Vec<&'a Rule>)> {
        ranges(t)
            .into_iter()
            .map(|range| {
                let (start, end) = range_keys(range);
                let rules = bundles
                    .iter()
                    .flat_map(|b| &b.rules)
                    .filter(|r| r.start_key == start && r.end_key == end)
                    .collect();
                (range_name(t, range), rules)
            })
            .collect()
    }

    /// An independent check of the survival property: enumerate every way the rules'
    /// replicas can land and every single failure, and count the voters left.
    fn brute_force_survives(t: &Topology, bundles: &[RuleBundle]) -> bool {
        rules_by_range(t, bundles).iter().all(|(_, rules)| {
            let Some(choices) = placements(t, rules) else {
                return false;
            };
            choices.iter().all(|voters| {
                let majority = voters.len() / 2 + 1;
                !voters.is_empty()
                    && failures(t)
                        .iter()
                        .all(|f| voters.iter().filter(|&&v| !f.hits(v)).count() >= majority)
            })
        })
    }

    fn combinations<T: Copy>(items: &[T], k: usize) -> Vec<Vec<T>> {
        if k == 0 {
            return vec![vec![]];
        }
        if items.len() < k {
            return vec![];
        }
        let mut with_first: Vec<Vec<T>> = combinations(&items[1..], k - 1)
            .into_iter()
            .map(|mut c| {
                c.insert(0, items[0]);
                c
            })
            .collect();
        with_first.extend(combinations(&items[1..], k));
        with_first
    }

    /// Choices of k items with repetition.
    fn multisets<T: Copy>(items: &[T], k: usize) -> Vec<Vec<T>> {
        if k == 0 {
            return vec![vec![]];
        }
        let Some((&first, rest)) = items.split_first() else {
            return vec![];
        };
        let mut with_first: Vec<Vec<T>> = multisets(items, k - 1)
            .into_iter()
            .map(|mut c| {
                c.insert(0, first);
                c
            })
            .collect();
        with_first.extend(multisets(rest, k));
        with_first
    }

    #[test]
    fn brute_force_helpers_enumerate_what_they_claim() {
        assert_eq!(combinations(&[1, 2, 3], 2).len(), 3);
        assert_eq!(multisets(&[1, 2, 3], 2).len(), 6);
        assert!(multisets(&[1, 2, 3], 2).contains(&vec![2, 2]));
        assert!(multisets::<u8>(&[], 1).is_empty());
    }

    #[test]
    fn the_example_survives_its_goal_both_ways() {
        for survival in [Survival::Zone, Survival::Region] {
            let t = example(survival);
            let bundles = rule_bundles(&t).unwrap();
            assert!(brute_force_survives(&t, &bundles), "{survival:?}");
            assert_eq!(check_survival(&t, &bundles), Ok(()));
        }
    }

    /// Checks every single failure of `t` against every placement of `bundles`,
    /// naming the failure and range that would lose their majority.
    fn assert_survives_every_failure(t: &Topology, bundles: &[RuleBundle]) {
        for (range, rules) in rules_by_range(t, bundles) {
            let choices = placements(t, &rules).unwrap();
            let total = choices[0].len();
            for failure in failures(t) {
                let left = choices
                    .iter()
                    .map(|p| p.iter().filter(|&&v| !failure.hits(v)).count())
                    .min()
                    .unwrap();
                assert!(
                    left > total / 2,
                    "{range}: losing {failure:?} can leave {left} of {total} voters"
                );
            }
        }
    }

    #[test]
    fn zone_goal_example_survives_every_single_zone_loss() {
        let t = example(Survival::Zone);
        let bundles = rule_bundles(&t).unwrap();
        assert_eq!(failures(&t).len(), 9);
        assert_survives_every_failure(&t, &bundles);
        // Every zone holds at most one voter of a region's range, whatever PD picks.
        for (range, rules) in rules_by_range(&t, &bundles) {
            if range == "global" {
                continue;
            }
            for voters in placements(&t, &rules).unwrap() {
                let mut zones = voters.clone();
                zones.sort_unstable();
                zones.dedup();
                assert_eq!(zones.len(), voters.len(), "{range}: {voters:?}");
            }
        }
    }

    #[test]
    fn region_goal_topology_survives_every_single_region_loss() {
        let t = example(Survival::Region);
        let bundles = rule_bundles(&t).unwrap();
        assert!(failures(&t).iter().any(|f| matches!(f, Failure::Region(_))));
        assert_survives_every_failure(&t, &bundles);
        for zones in [&[2, 2, 2][..], &[3, 1, 2, 3], &[1, 1, 1]] {
            let t = generated(zones, Survival::Region, 1).unwrap();
            assert_survives_every_failure(&t, &rule_bundles(&t).unwrap());
        }
    }

    #[test]
    fn generated_topologies_survive_or_are_refused() {
        let shapes: &[&[usize]] = &[
            &[3],
            &[2],
            &[1],
            &[4],
            &[3, 3],
            &[3, 2],
            &[1, 3],
            &[3, 3, 3],
            &[1, 1, 1],
            &[2, 1, 3],
            &[1, 3, 1],
            &[3, 3, 3, 3],
            &[2, 2, 2, 2, 2],
            &[1, 2, 1, 2, 1],
            &[4, 1, 2, 3, 1, 2],
        ];
        let mut planned = 0;
        let mut refused = 0;
        for zones in shapes {
            for survival in [Survival::Zone, Survival::Region] {
                for primary in 0..zones.len() {
                    let t = match generated(zones, survival, primary) {
                        Ok(t) => t,
                        Err(Error::RegionSurvivalNeedsThreeRegions { .. }) => {
                            assert!(zones.len() < 3);
                            continue;
                        }
                        Err(e) => panic!("{zones:?}: {e}"),
                    };
                    let expect_ok = match survival {
                        Survival::Zone => zones.iter().all(|&z| z >= 3),
                        Survival::Region => true,
                    };
                    // The checker and the brute force agree on the rules either way.
                    let unchecked = unchecked_bundles(&t);
                    assert_eq!(
                        check_survival(&t, &unchecked).is_ok(),
                        brute_force_survives(&t, &unchecked),
                        "{zones:?} {survival:?} primary {primary}"
                    );
                    match rule_bundles(&t) {
                        Ok(bundles) => {
                            assert!(expect_ok, "{zones:?} {survival:?} should be refused");
                            assert_eq!(bundles, unchecked);
                            assert!(
                                brute_force_survives(&t, &bundles),
                                "{zones:?} {survival:?} primary {primary}"
                            );
                            planned += 1;
                        }
                        Err(Error::CannotSurvive { .. }) => {
                            assert!(!expect_ok, "{zones:?} {survival:?} should be planned");
                            refused += 1;
                        }
                        Err(e) => panic!("{zones:?}: unexpected {e}"),
                    }
                }
            }
        }
        assert!(planned > 20);
        assert!(refused > 5);
    }

    #[test]
    fn two_zones_cannot_survive_a_zone_loss() {
        let t = Topology::from_toml_str(&EXAMPLE.replacen(
            "zones = [\"eu-west-1a\", \"eu-west-1b\", \"eu-west-1c\"]",
            "zones = [\"eu-west-1a\", \"eu-west-1b\"]",
            1,
        ))
        .unwrap();
        match plan(&t) {
            Err(Error::CannotSurvive {
                range,
                lost,
                detail,
            }) => {
                assert_eq!(range, "region-eu-west");
                assert_eq!(lost, "a zone of eu-west");
                assert!(
                    detail.contains("region-eu-west-voters needs 2 voters")
                        && detail.contains("allow 1 of the region's 2 zone(s)"),
                    "{detail}"
                );
            }
            other => panic!("expected CannotSurvive, got {other:?}"),
        }
        // The latency model still works for such a topology.
        assert!(LatencyModel::new(t, RegionId(2)).is_ok());
    }

    #[test]
    fn check_survival_refuses_a_region_only_leader_stacked_on_voters() {
        let t = example(Survival::Zone);
        let mut bundles = rule_bundles(&t).unwrap();
        // A leader rule and a voter rule constrained to the region alone: PD
        // isolates zones per rule, so the leader may share a zone with a voter.
        rule_mut(&mut bundles, "region-us-east-leader")
            .label_constraints
            .truncate(1);
        rule_mut(&mut bundles, "region-us-east-voters")
            .label_constraints
            .truncate(1);
        assert!(!brute_force_survives(&t, &bundles));
        assert_eq!(
            check_survival(&t, &bundles),
            Err(Error::CannotSurvive {
                range: "region-us-east".into(),
                lost: "zone us-east/us-east-1a".into(),
                detail: "2 of 3 voters can sit in zone us-east-1a; 2 are needed".into(),
            })
        );
        // Pinning only the leader is not enough: a voter may still join it.
        let mut bundles = rule_bundles(&t).unwrap();
        rule_mut(&mut bundles, "region-us-east-voters")
            .label_constraints
            .truncate(1);
        assert!(!brute_force_survives(&t, &bundles));
        assert!(matches!(
            check_survival(&t, &bundles),
            Err(Error::CannotSurvive { ref lost, .. }) if lost == "zone us-east/us-east-1a"
        ));
        // Keeping the voters out of the wrong zone is not enough either.
        let mut bundles = rule_bundles(&t).unwrap();
        rule_mut(&mut bundles, "region-us-east-voters").label_constraints[1] =
            c("zone", "notIn", "us-east-1b");
        assert!(!brute_force_survives(&t, &bundles));
        assert!(matches!(
            check_survival(&t, &bundles),
            Err(Error::CannotSurvive { ref lost, .. }) if lost == "zone us-east/us-east-1a"
        ));
    }

    #[test]
    fn check_survival_reads_zone_constraints() {
        let t = example(Survival::Zone);
        // `in` the other two zones is the same as `notIn` the first.
        let mut bundles = rule_bundles(&t).unwrap();
        rule_mut(&mut bundles, "region-us-east-voters").label_constraints[1] = LabelConstraint {
            key: "zone".into(),
            op: "in".into(),
            values: vec!["us-east-1b".into(), "us-east-1c".into()],
        };
        assert!(brute_force_survives(&t, &bundles));
        assert_eq!(check_survival(&t, &bundles), Ok(()));
        // Two voters pinned to one zone by `in` cannot be isolated.
        rule_mut(&mut bundles, "region-us-east-voters").label_constraints[1] =
            c("zone", "in", "us-east-1b");
        assert!(matches!(
            check_survival(&t, &bundles),
            Err(Error::CannotSurvive { ref lost, ref detail, .. })
                if lost == "a zone of us-east" && detail.contains("allow 1 of the region's 3")
        ));
        // Without isolation they may both sit there.
        let voters = rule_mut(&mut bundles, "region-us-east-voters");
        voters.isolation_level.clear();
        assert!(!brute_force_survives(&t, &bundles));
        assert!(matches!(
            check_survival(&t, &bundles),
            Err(Error::CannotSurvive { ref lost, .. }) if lost == "zone us-east/us-east-1b"
        ));
        // Three isolated voters outside the leader's zone need four zones.
        let mut bundles = rule_bundles(&t).unwrap();
        rule_mut(&mut bundles, "region-us-east-voters").count = 3;
        assert!(matches!(
            check_survival(&t, &bundles),
            Err(Error::CannotSurvive { ref lost, .. }) if lost == "a zone of us-east"
        ));
        // A constraint that matches no zone leaves the leader nowhere to go.
        let mut bundles = rule_bundles(&t).unwrap();
        rule_mut(&mut bundles, "region-us-east-leader")
            .label_constraints
            .push(c("zone", "notIn", "us-east-1a"));
        assert!(!brute_force_survives(&t, &bundles));
        assert!(matches!(
            check_survival(&t, &bundles),
            Err(Error::CannotSurvive { ref detail, .. })
                if detail.contains("leave it no zone of us-east")
        ));
        let mut bundles = rule_bundles(&t).unwrap();
        rule_mut(&mut bundles, "region-us-east-leader").label_constraints[1] = LabelConstraint {
            key: "zone".into(),
            op: "notExists".into(),
            values: vec![],
        };
        assert!(check_survival(&t, &bundles).is_err());
        // `exists` holds for every store.
        let mut bundles = rule_bundles(&t).unwrap();
        rule_mut(&mut bundles, "global-followers-eu-west")
            .label_constraints
            .push(LabelConstraint {
                key: "zone".into(),
                op: "exists".into(),
                values: vec![],
            });
        assert_eq!(check_survival(&t, &bundles), Ok(()));
    }

    #[test]
    fn zones_a_region_does_not_have_are_refused() {
        let t = example(Survival::Zone);
        for (id, constraint) in [
            ("region-us-east-leader", c("zone", "in", "us-east-1z")),
            ("region-us-east-voters", c("zone", "notIn", "us-east-1z")),
            // A real zone, but of another region.
            ("region-us-east-voters", c("zone", "notIn", "eu-west-1a")),
        ] {
            let mut bundles = rule_bundles(&t).unwrap();
            let value = constraint.values[0].clone();
            rule_mut(&mut bundles, id).label_constraints[1] = constraint;
            match check_survival(&t, &bundles) {
                Err(Error::CannotSurvive { range, detail, .. }) => {
                    assert_eq!(range, "region-us-east");
                    assert!(
                        detail.contains(&format!(
                            "rule {id} names zone {value}, which region us-east does not have"
                        )),
                        "{detail}"
                    );
                }
                other => panic!("{id} {value}: expected CannotSurvive, got {other:?}"),
            }
        }
        let mut bundles = rule_bundles(&t).unwrap();
        rule_mut(&mut bundles, "region-us-east-leader").label_constraints[1].op =
            "startsWith".into();
        assert!(matches!(
            check_survival(&t, &bundles),
            Err(Error::CannotSurvive { ref detail, .. }) if detail.contains("\"startsWith\"")
        ));
    }

    /// Variations of a rule, each a possible operator edit.
    fn mutations(t: &Topology, rule: &Rule) -> Vec<Rule> {
        let region = t
            .region_named(&rule.label_constraints[0].values[0])
            .unwrap();
        let mut out = Vec::new();
        let mut push = |f: &dyn Fn(&mut Rule)| {
            let mut r = rule.clone();
            f(&mut r);
            out.push(r);
        };
        push(&|r| r.label_constraints.truncate(1));
        push(&|r| {
            r.isolation_level.clear();
        });
        push(&|r| r.count += 1);
        if rule.count > 1 {
            push(&|r| r.count -= 1);
        }
        for zone in &region.zones {
            for op in ["in", "notIn"] {
                push(&|r| {
                    r.label_constraints.truncate(1);
                    r.label_constraints.push(c("zone", op, zone));
                });
            }
        }
        out
    }

    #[test]
    fn check_survival_agrees_with_the_brute_force_on_edited_rules() {
        let mut topologies = vec![example(Survival::Zone), example(Survival::Region)];
        for (zones, survival) in [
            (&[3, 3][..], Survival::Zone),
            (&[2, 3, 1], Survival::Region),
            (&[4, 2, 2], Survival::Region),
        ] {
            topologies.push(generated(zones, survival, 0).unwrap());
        }
        let (mut kept, mut refused) = (0, 0);
        for t in &topologies {
            let bundles = unchecked_bundles(t);
            for (i, rule) in bundles[0].rules.iter().enumerate() {
                for edited in mutations(t, rule) {
                    let mut b = bundles.clone();
                    b[0].rules[i] = edited.clone();
                    let ok = check_survival(t, &b).is_ok();
                    assert_eq!(
                        ok,
                        brute_force_survives(t, &b),
                        "{:?}: {edited:?}",
                        t.survival()
                    );
                    if ok { kept += 1 } else { refused += 1 }
                }
            }
        }
        assert!(kept > 20 && refused > 20, "kept {kept}, refused {refused}");
    }

    #[test]
    fn check_survival_assumes_the_worst_of_unisolated_and_missing_rules() {
        let t = example(Survival::Zone);
        // A rule without zone isolation may put every replica in one zone.
        let mut bundles = rule_bundles(&t).unwrap();
        bundles[0]
            .rules
            .iter_mut()
            .for_each(|r| r.isolation_level.clear());
        assert!(matches!(
            check_survival(&t, &bundles),
            Err(Error::CannotSurvive { .. })
        ));
        // A range whose rules place only learners has no voters.
        let mut bundles = rule_bundles(&t).unwrap();
        bundles[0]
            .rules
            .iter_mut()
            .filter(|r| r.id.starts_with("global-"))
            .for_each(|r| r.role = "learner".into());
        assert!(matches!(
            check_survival(&t, &bundles),
            Err(Error::CannotSurvive { ref range, ref lost, .. }) if range == "global" && lost == "nothing"
        ));
        // A range without rules is reported.
        let mut bundles = rule_bundles(&t).unwrap();
        bundles[0].rules.retain(|r| !r.id.starts_with("global-"));
        assert!(matches!(
            check_survival(&t, &bundles),
            Err(Error::CannotSurvive { ref range, .. }) if range == "global"
        ));
        // A rule for a key range that is not Rossby's is none of the check's business.
        let mut bundles = rule_bundles(&t).unwrap();
        let mut stray = bundles[0].rules[0].clone();
        stray.id = "stray".into();
        stray.start_key = "ff".into();
        stray.count = 7;
        stray.label_constraints.truncate(1);
        bundles[0].rules.push(stray);
        assert_eq!(check_survival(&t, &bundles), Ok(()));
        // Under the region goal, a range with a majority in one region is refused.
        let t = example(Survival::Region);
        let mut bundles = rule_bundles(&t).unwrap();
        rule_mut(&mut bundles, "region-eu-west-voters").count = 2;
        rule_mut(&mut bundles, "region-eu-west-voters")
            .label_constraints
            .truncate(1);
        assert!(!brute_force_survives(&t, &bundles));
        assert!(matches!(
            check_survival(&t, &bundles),
            Err(Error::CannotSurvive { ref lost, .. }) if lost == "region eu-west"
        ));
    }

    /// PD's documented rule-bundle format (the output of `pd-ctl config
    /// placement-rules rule-bundle get pd`, and a rule from the placement rules
    /// guide with constraints and location labels).
    fn pd_documented_bundle() -> Value {
        json!({
            "group_id": "pd",
            "group_index": 0,
            "group_override": false,
            "rules": [
                {
                    "group_id": "pd",
                    "id": "default",
                    "start_key": "",
                    "end_key": "",
                    "role": "voter",
                    "count": 3
                },
                {
                    "group_id": "pd",
                    "id": "zone3",
                    "start_key": "",
                    "end_key": "",
                    "role": "follower",
                    "count": 1,
                    "label_constraints": [
                        {"key": "zone", "op": "in", "values": ["zone3"]}
                    ],
                    "location_labels": ["rack", "host"],
                    "isolation_level": "rack"
                }
            ]
        })
    }

    /// Field names and JSON types of PD's `placement.Rule` and `GroupBundle`.
    fn pd_rule_fields() -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([
            ("group_id", "string"),
            ("id", "string"),
            ("index", "number"),
            ("override", "bool"),
            ("start_key", "string"),
            ("end_key", "string"),
            ("role", "string"),
            ("count", "number"),
            ("label_constraints", "array"),
            ("location_labels", "array"),
            ("isolation_level", "string"),
        ])
    }

    fn json_type(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    #[test]
    fn rule_json_matches_pd_documented_format() {
        // PD's documented bundle reads into these types and writes back the same
        // values (plus the defaults PD also assumes).
        let bundle: RuleBundle = serde_json::from_value(pd_documented_bundle()).unwrap();
        assert_eq!(bundle.rules[1].label_constraints[0].values, vec!["zone3"]);
        let back = serde_json::to_value(&bundle).unwrap();
        for (i, rule) in pd_documented_bundle()["rules"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            for (k, v) in rule.as_object().unwrap() {
                assert_eq!(&back["rules"][i][k], v, "field {k}");
            }
        }

        // Ours use exactly PD's field names and JSON types.
        let plan = plan(&example(Survival::Region)).unwrap();
        let ours: Value = serde_json::from_str(&plan.rules_json()).unwrap();
        let bundles = ours.as_array().unwrap();
        assert_eq!(bundles.len(), 1);
        let bundle = bundles[0].as_object().unwrap();
        let keys: Vec<&str> = bundle.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec!["group_id", "group_index", "group_override", "rules"]
        );
        assert_eq!(json_type(&bundle["group_index"]), "number");
        assert_eq!(json_type(&bundle["group_override"]), "bool");
        let fields = pd_rule_fields();
        for rule in bundle["rules"].as_array().unwrap() {
            let rule = rule.as_object().unwrap();
            for (k, v) in rule {
                assert_eq!(fields.get(k.as_str()), Some(&json_type(v)), "field {k}");
            }
            assert!(
                ["voter", "leader", "follower", "learner"]
                    .contains(&rule["role"].as_str().unwrap())
            );
            assert!(rule["count"].as_u64().unwrap() > 0);
            for c in rule["label_constraints"].as_array().unwrap() {
                let c = c.as_object().unwrap();
                let keys: Vec<&str> = c.keys().map(String::as_str).collect();
                assert_eq!(keys, vec!["key", "op", "values"]);
                assert!(["in", "notIn"].contains(&c["op"].as_str().unwrap()));
            }
            for key in ["start_key", "end_key"] {
                let hex_key = rule[key].as_str().unwrap();
                let raw = hex::decode(hex_key).unwrap();
                // PD (key-type table/txn) requires keys that decode as EncodeBytes.
                assert_eq!(raw.len() % 9, 0);
                assert!(raw.chunks(9).all(|g| g[8] >= 0xf7));
            }
        }
        // And it reads back into the same bundles.
        let parsed: Vec<RuleBundle> = serde_json::from_str(&plan.rules_json()).unwrap();
        assert_eq!(parsed, plan.bundles);
    }

    #[test]
    fn plan_reports_latency_per_home_and_pair() {
        let zone = plan(&example(Survival::Zone)).unwrap();
        let commit: BTreeMap<&str, Duration> = zone
            .commit_latency
            .iter()
            .map(|(r, d)| (r.as_str(), *d))
            .collect();
        assert_eq!(commit["us-east"], Duration::ZERO);
        // eu-west pays the commit timestamp from the primary in us-east.
        assert_eq!(commit["eu-west"], Duration::from_millis(68));
        assert_eq!(zone.send_latency.len(), 9);
        let send = |a: &str, b: &str| {
            zone.send_latency
                .iter()
                .find(|(x, y, _)| x == a && y == b)
                .map(|(_, _, d)| *d)
                .unwrap()
        };
        assert_eq!(send("us-east", "eu-west"), Duration::from_millis(3 * 68));
        assert_eq!(send("us-east", "us-east"), Duration::ZERO);

        let region = plan(&example(Survival::Region)).unwrap();
        assert_eq!(
            region.commit_latency[0],
            ("us-east".to_string(), Duration::from_millis(136))
        );

        let text = region.to_string();
        for needle in [
            "survival goal: region",
            "region-ap-southeast",
            "region-ap-southeast  leader in ap-southeast (zone ap-southeast-1a); 5 voters: \
             ap-southeast: 1 leader + 1 voter, eu-west: 2 followers, us-east: 1 follower",
            "global               leader in us-east (zone us-east-1a); 5 voters: \
             us-east: 1 leader + 1 voter, eu-west: 2 followers, ap-southeast: 1 follower",
            "16 rules",
            "us-east",
            "136 ms",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }
}
