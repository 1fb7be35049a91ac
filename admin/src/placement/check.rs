//! `rossby-admin placement check`: compares where PD put each TiKV Region's
//! leader and voters with where the placement plan wants them.
//!
//! # What PD reports
//!
//! `GET /pd/api/v1/regions` answers `{"count": N, "regions": [...]}`, each Region
//! as PD's `response.RegionInfo`: `id`, `start_key` and `end_key` in upper-case hex
//! (empty for the start and the end of the keyspace), `peers` (`id`, `store_id`,
//! `role_name` one of `Voter`, `Learner`, `IncomingVoter`, `DemotingVoter`; PDs
//! before 5.0 send `is_learner` instead) and `leader` (the same shape; all zero,
//! or absent, while no leader is known). `GET /pd/api/v1/stores` answers
//! `{"count": N, "stores": [{"store": {"id", "address", "labels": [{"key",
//! "value"}], "state_name"}, "status": {...}}]}`.
//!
//! The Region keys are the keys TiKV stores: with API v1 and the transactional
//! client, the memcomparable encoding of Rossby's raw keys (see
//! `rossby_replication::placement`). The encoding preserves order, so a Region is
//! compared with Rossby's ranges in encoded form, the form the rules carry too;
//! raw keys are decoded only to show them.
//!
//! # What is checked
//!
//! Each Rossby range (global data, then each home region) has a layout from the
//! plan: the region meant to hold the leader (and the zone its `leader` rule is
//! pinned to, when the region holds other voters too) and how many voters each
//! region holds. For every TiKV Region overlapping a range:
//!
//! * its leader sits in the leader's region (and pinned zone);
//! * each region holds exactly the planned number of voters, in distinct zones,
//!   one of them in the pinned zone; no other region holds any;
//! * it lies inside the range (PD splits Regions at rule boundaries; until it has,
//!   one Region cannot follow two ranges' rules);
//! * no membership change is half done, and every peer's store is listed and
//!   labelled.
//!
//! Learners are not counted: Rossby's rules place none, and learners of other
//! rule groups (TiFlash, for one) do not vote.

use crate::error::{Error, Result};
use rossby_replication::placement::{REGION_LABEL, ZONE_LABEL, key_range, ranges};
use rossby_replication::{Plan, Topology, encode_memcomparable};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// Go encodes a nil slice as `null`; read it as empty.
fn null_as_empty<'de, D, T>(deserializer: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// PD's answer to `GET /pd/api/v1/regions`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PdRegions {
    /// How many Regions PD says it lists.
    #[serde(default)]
    pub count: u64,
    /// The Regions.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub regions: Vec<PdRegion>,
}

/// One TiKV Region as PD describes it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PdRegion {
    /// The Region's id.
    pub id: u64,
    /// Hex of the first (encoded) key; empty for the start of the keyspace.
    #[serde(default)]
    pub start_key: String,
    /// Hex of the first (encoded) key after the Region; empty for the end.
    #[serde(default)]
    pub end_key: String,
    /// Every replica.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub peers: Vec<PdPeer>,
    /// The replica leading the Region, if PD knows one.
    #[serde(default)]
    pub leader: Option<PdPeer>,
}

/// One replica of a Region.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PdPeer {
    /// The peer's id (0 in an empty leader).
    #[serde(default)]
    pub id: u64,
    /// The store holding it (0 in an empty leader).
    #[serde(default)]
    pub store_id: u64,
    /// `Voter`, `Learner`, `IncomingVoter` or `DemotingVoter` (PD 5.0 and later).
    #[serde(default)]
    pub role_name: String,
    /// Set for learners by every PD version.
    #[serde(default)]
    pub is_learner: bool,
}

/// What a peer does in Raft.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Voter,
    Learner,
    /// A joint-consensus state: half of a membership change.
    Changing,
}

impl PdPeer {
    fn role(&self) -> Role {
        match self.role_name.as_str() {
            "Learner" => Role::Learner,
            "IncomingVoter" | "DemotingVoter" => Role::Changing,
            _ if self.is_learner => Role::Learner,
            _ => Role::Voter,
        }
    }
}

/// PD's answer to `GET /pd/api/v1/stores`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PdStores {
    /// How many stores PD says it lists.
    #[serde(default)]
    pub count: u64,
    /// The stores, each with its status (not read).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub stores: Vec<PdStoreEntry>,
}

/// One entry of PD's store list.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PdStoreEntry {
    /// The store's metadata.
    pub store: PdStore,
}

/// A TiKV store.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PdStore {
    /// The store's id.
    pub id: u64,
    /// Where it listens.
    #[serde(default)]
    pub address: String,
    /// Its labels; Rossby's rules read `region` and `zone`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub labels: Vec<PdLabel>,
    /// `Up`, `Offline`, `Down`, ...
    #[serde(default)]
    pub state_name: String,
}

/// A store label.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PdLabel {
    /// The label's key.
    pub key: String,
    /// Its value.
    pub value: String,
}

impl PdStore {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|l| l.key == key)
            .map(|l| l.value.as_str())
    }
}

/// The result of a check: per range the share placed as planned, and every
/// Region that is not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The PD that was asked.
    pub pd: String,
    /// The survival goal planned for.
    pub survival: String,
    /// How many Regions PD listed in all (Rossby's and others).
    pub regions_listed: usize,
    /// One entry per Rossby range: global data first, then each home region.
    pub ranges: Vec<RangeReport>,
    /// Every Region placed otherwise than planned, in key order per range.
    pub violations: Vec<Violation>,
}

/// How one Rossby range is placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RangeReport {
    /// `global` or `region-<name>`, as the rule ids name it.
    pub range: String,
    /// The region meant to lead it: the home region, or the primary for global data.
    pub home: String,
    /// The zone its leader is pinned to, when the home region holds other voters.
    pub leader_zone: Option<String>,
    /// TiKV Regions overlapping the range.
    pub regions: usize,
    /// Of those, how many have their leader where the rules want it.
    pub leaders_placed: usize,
    /// Voters sitting where the rules want them, over all its Regions.
    pub voters_placed: u64,
    /// Voters the rules want, or more where a Region has extra ones.
    pub voters_wanted: u64,
    /// Regions with at least one violation.
    pub regions_violating: usize,
}

/// A Region (or a range without any) that breaks its rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The Rossby range it belongs to.
    pub range: String,
    /// The TiKV Region's id; `None` when PD lists no Region for the range.
    pub region_id: Option<u64>,
    /// The Region's keys as PD gave them (hex of the encoded keys).
    pub start_key: String,
    /// See `start_key`.
    pub end_key: String,
    /// The keys decoded to Rossby's raw keys, for people.
    pub keys: String,
    /// What is wrong, one sentence each.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether every Region of every range is placed as the rules want.
    pub fn complies(&self) -> bool {
        self.violations.is_empty()
    }
}

/// What the plan wants for one range.
struct Wanted {
    range: String,
    home: String,
    leader_zone: Option<String>,
    /// Voters per region name.
    voters: BTreeMap<String, u32>,
    /// Encoded bounds.
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

/// Where a store is, by its labels.
#[derive(Clone, Debug)]
struct Location<'a> {
    store: u64,
    region: Option<&'a str>,
    zone: Option<&'a str>,
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "store {} ({}, zone {})",
            self.store,
            self.region.unwrap_or("no region label"),
            self.zone.unwrap_or("unlabelled")
        )
    }
}

/// A Region with its keys decoded from hex.
struct Parsed<'a> {
    region: &'a PdRegion,
    start: Vec<u8>,
    /// Empty for the end of the keyspace.
    end: Vec<u8>,
}

/// Compares PD's Regions and stores with the plan of `topology`. `pd` names the
/// PD in the report and in errors. Fails only when PD's answer is malformed (a key
/// that is not hex); placement problems are the report's violations.
pub fn check(
    topology: &Topology,
    plan: &Plan,
    pd: &str,
    regions: &PdRegions,
    stores: &PdStores,
) -> Result<CheckReport> {
    let wanted = wanted(topology, plan)?;
    let stores: HashMap<u64, &PdStore> = stores
        .stores
        .iter()
        .map(|s| (s.store.id, &s.store))
        .collect();
    let mut parsed = Vec::with_capacity(regions.regions.len());
    for region in &regions.regions {
        let key = |hex_key: &str, which: &str| {
            hex::decode(hex_key).map_err(|e| Error::PdAnswer {
                url: pd.to_string(),
                request: format!("GET {}", crate::pd::REGIONS_PATH),
                reason: format!(
                    "Region {} has a {which} that is not hex ({e}): {hex_key:?}",
                    region.id
                ),
            })
        };
        parsed.push(Parsed {
            region,
            start: key(&region.start_key, "start_key")?,
            end: key(&region.end_key, "end_key")?,
        });
    }
    parsed.sort_by(|a, b| a.start.cmp(&b.start));

    let mut report = CheckReport {
        pd: pd.to_string(),
        survival: topology.survival().as_str().to_string(),
        regions_listed: regions.regions.len(),
        ranges: Vec::with_capacity(wanted.len()),
        violations: Vec::new(),
    };
    for want in &wanted {
        let mut summary = RangeReport {
            range: want.range.clone(),
            home: want.home.clone(),
            leader_zone: want.leader_zone.clone(),
            regions: 0,
            leaders_placed: 0,
            voters_placed: 0,
            voters_wanted: 0,
            regions_violating: 0,
        };
        for region in parsed.iter().filter(|r| overlaps(r, want)) {
            summary.regions += 1;
            let verdict = judge(region, want, &stores);
            summary.leaders_placed += usize::from(verdict.leader_placed);
            summary.voters_placed += verdict.voters_placed;
            summary.voters_wanted += verdict.voters_wanted;
            if !verdict.problems.is_empty() {
                summary.regions_violating += 1;
                report.violations.push(Violation {
                    range: want.range.clone(),
                    region_id: Some(region.region.id),
                    start_key: region.region.start_key.clone(),
                    end_key: region.region.end_key.clone(),
                    keys: show_keys(&region.start, &region.end),
                    problems: verdict.problems,
                });
            }
        }
        if summary.regions == 0 {
            report.violations.push(Violation {
                range: want.range.clone(),
                region_id: None,
                start_key: hex::encode_upper(&want.start),
                end_key: want.end.as_deref().map(hex::encode_upper).unwrap_or_default(),
                keys: show_keys(&want.start, want.end.as_deref().unwrap_or_default()),
                problems: vec![
                    "PD lists no Region holding these keys (is the cluster bootstrapped, and is this its PD?)"
                        .to_string(),
                ],
            });
        }
        report.ranges.push(summary);
    }
    Ok(report)
}

/// The plan's wishes per range, with the encoded bounds of each.
fn wanted(topology: &Topology, plan: &Plan) -> Result<Vec<Wanted>> {
    let ranges = ranges(topology);
    if ranges.len() != plan.ranges.len() {
        return Err(Error::Invalid(format!(
            "the plan has {} ranges and the topology {}; plan the same topology that is checked",
            plan.ranges.len(),
            ranges.len()
        )));
    }
    Ok(ranges
        .into_iter()
        .zip(&plan.ranges)
        .map(|(range, summary)| {
            let keys = key_range(range);
            Wanted {
                range: summary.range.clone(),
                home: summary.leader_region.clone(),
                leader_zone: summary.leader_zone.clone(),
                voters: summary
                    .voters
                    .iter()
                    .map(|(region, count, _)| (region.clone(), *count))
                    .collect(),
                start: encode_memcomparable(&keys.start),
                end: keys.end.as_deref().map(encode_memcomparable),
            }
        })
        .collect())
}

/// Whether the Region holds any key of the range.
fn overlaps(region: &Parsed<'_>, want: &Wanted) -> bool {
    let starts_before_end = want.end.as_ref().is_none_or(|end| region.start < *end);
    let ends_after_start = region.end.is_empty() || region.end > want.start;
    starts_before_end && ends_after_start
}

/// Whether the Region holds keys of the range only.
fn inside(region: &Parsed<'_>, want: &Wanted) -> bool {
    region.start >= want.start
        && want
            .end
            .as_ref()
            .is_none_or(|end| !region.end.is_empty() && region.end <= *end)
}

/// What one Region contributes to its range's report.
struct Verdict {
    leader_placed: bool,
    voters_placed: u64,
    voters_wanted: u64,
    problems: Vec<String>,
}

fn judge(region: &Parsed<'_>, want: &Wanted, stores: &HashMap<u64, &PdStore>) -> Verdict {
    let mut problems = Vec::new();
    if !inside(region, want) {
        problems.push(format!(
            "it also holds keys outside {} (PD has not split it at the rule's boundary yet)",
            want.range
        ));
    }
    let mut voters: Vec<Location<'_>> = Vec::new();
    for peer in &region.region.peers {
        match peer.role() {
            Role::Learner => {}
            Role::Changing => {
                problems.push(format!(
                    "peer {} on store {} is {} (a membership change is half done)",
                    peer.id, peer.store_id, peer.role_name
                ));
                voters.push(locate(stores, peer.store_id, &mut problems));
            }
            Role::Voter => voters.push(locate(stores, peer.store_id, &mut problems)),
        }
    }

    // Voters, per region they sit in.
    let mut by_region: BTreeMap<&str, Vec<&Location<'_>>> = BTreeMap::new();
    for voter in &voters {
        if let Some(name) = voter.region {
            by_region.entry(name).or_default().push(voter);
        }
    }
    let wanted_total: u32 = want.voters.values().sum();
    let mut placed: u64 = 0;
    for (name, &count) in &want.voters {
        let here = by_region
            .get(name.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut zones: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for voter in here {
            if let Some(zone) = voter.zone {
                zones.entry(zone).or_default().push(voter.store);
            }
        }
        let mut good = u64::from(count).min(zones.len() as u64);
        let pinned = want.leader_zone.as_deref().filter(|_| *name == want.home);
        if let Some(zone) = pinned
            && !zones.contains_key(zone)
        {
            good = good.saturating_sub(1);
            problems.push(format!(
                "no voter in zone {zone} of {name}, where the leader rule keeps one"
            ));
        }
        placed += good;
        if here.len() != count as usize {
            problems.push(format!(
                "{} in {name}, the rules want {count}",
                voters_phrase(here.len())
            ));
        }
        for (zone, stores) in zones.iter().filter(|(_, s)| s.len() > 1) {
            problems.push(format!(
                "{} share zone {name}/{zone} (stores {}), so losing that zone takes them all",
                voters_phrase(stores.len()),
                list(stores)
            ));
        }
    }
    for (name, here) in &by_region {
        if !want.voters.contains_key(*name) {
            let stores: Vec<u64> = here.iter().map(|l| l.store).collect();
            problems.push(format!(
                "{} in {name} (stores {}), where the rules want none",
                voters_phrase(here.len()),
                list(&stores)
            ));
        }
    }

    let leader = region.region.leader.as_ref().filter(|l| l.store_id != 0);
    let leader_placed = match leader {
        None => {
            problems.push("no leader is known to PD".to_string());
            false
        }
        Some(leader) => {
            let at = locate(stores, leader.store_id, &mut problems);
            let in_region = at.region == Some(want.home.as_str());
            let in_zone = want
                .leader_zone
                .as_deref()
                .is_none_or(|zone| at.zone == Some(zone));
            if !(in_region && in_zone) {
                problems.push(format!(
                    "leader on {at}, the rules want it in {}{}",
                    want.home,
                    want.leader_zone
                        .as_deref()
                        .map(|z| format!(", zone {z}"))
                        .unwrap_or_default()
                ));
            }
            in_region && in_zone
        }
    };
    // A store missing from PD's list is reported once, however many peers it holds.
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    Verdict {
        leader_placed,
        voters_placed: placed,
        voters_wanted: u64::from(wanted_total).max(voters.len() as u64),
        problems,
    }
}

/// Where a store is, by its labels; a missing store or label is a problem.
fn locate<'a>(
    stores: &HashMap<u64, &'a PdStore>,
    store_id: u64,
    problems: &mut Vec<String>,
) -> Location<'a> {
    let Some(store) = stores.get(&store_id) else {
        problems.push(format!("store {store_id} is not in PD's store list"));
        return Location {
            store: store_id,
            region: None,
            zone: None,
        };
    };
    let location = Location {
        store: store_id,
        region: store.label(REGION_LABEL),
        zone: store.label(ZONE_LABEL),
    };
    if location.region.is_none() || location.zone.is_none() {
        problems.push(format!(
            "store {store_id} ({}) lacks the `{REGION_LABEL}` or `{ZONE_LABEL}` label the rules select stores by",
            store.address
        ));
    }
    location
}

fn voters_phrase(n: usize) -> String {
    if n == 1 {
        "1 voter".to_string()
    } else {
        format!("{n} voters")
    }
}

fn list(ids: &[u64]) -> String {
    ids.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// TiKV's memcomparable decoding (the inverse of `encode_memcomparable`): `None`
/// when `encoded` is not a complete encoding. Bytes after the last group (a
/// timestamp TiKV kept in a split key) are ignored.
fn decode_memcomparable(encoded: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut groups = encoded.chunks(9);
    loop {
        let group = groups.next()?;
        let (data, marker) = group.split_at_checked(8)?;
        let pad = usize::from(0xff - *marker.first()?);
        if pad > 8 {
            return None;
        }
        let (keep, padding) = data.split_at(8 - pad);
        if padding.iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(keep);
        if pad > 0 {
            return Some(out);
        }
    }
}

/// `[start, end)` in Rossby's raw keys (hex), or in the encoded form PD gave
/// where a key does not decode.
fn show_keys(start: &[u8], end: &[u8]) -> String {
    let show = |key: &[u8], empty: &str| {
        if key.is_empty() {
            return empty.to_string();
        }
        match decode_memcomparable(key) {
            Some(raw) if raw.is_empty() => "(empty key)".to_string(),
            Some(raw) => hex::encode(raw),
            None => format!("encoded {}", hex::encode_upper(key)),
        }
    };
    format!("[{}, {})", show(start, "start"), show(end, "end"))
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_string();
    }
    let percent = part as f64 * 100.0 / whole as f64;
    // Never round a miss up to 100 %.
    let shown = if part < whole && percent > 99.9 {
        "99.9".to_string()
    } else {
        format!("{percent:.1}").trim_end_matches(".0").to_string()
    };
    format!("{part}/{whole} ({shown}%)")
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Placement check against PD at {} (survival goal: {}; {} Regions listed)",
            self.pd, self.survival, self.regions_listed
        )?;
        let rows: Vec<[String; 5]> = self
            .ranges
            .iter()
            .map(|r| {
                [
                    r.range.clone(),
                    match &r.leader_zone {
                        Some(zone) => format!("{} ({zone})", r.home),
                        None => r.home.clone(),
                    },
                    r.regions.to_string(),
                    share(r.leaders_placed as u64, r.regions as u64),
                    share(r.voters_placed, r.voters_wanted),
                ]
            })
            .collect();
        let header = [
            "range".to_string(),
            "leader wanted in".to_string(),
            "Regions".to_string(),
            "leaders placed".to_string(),
            "voters placed".to_string(),
        ];
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            writeln!(
                f,
                "  {:<w0$}  {:<w1$}  {:>w2$}  {:<w3$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
            )?;
        }
        if self.complies() {
            let regions: usize = self.ranges.iter().map(|r| r.regions).sum();
            return write!(
                f,
                "OK: all {regions} Regions of Rossby's ranges have their leader and voters where the rules want them"
            );
        }
        writeln!(f, "Violations:")?;
        for v in &self.violations {
            let what = match v.region_id {
                Some(id) => format!("Region {id}"),
                None => "no Region".to_string(),
            };
            writeln!(f, "  {what} of {} {}:", v.range, v.keys)?;
            for problem in &v.problems {
                writeln!(f, "    - {problem}")?;
            }
        }
        let violating: usize = self.ranges.iter().map(|r| r.regions_violating).sum();
        let bad_ranges = self
            .violations
            .iter()
            .map(|v| v.range.as_str())
            .collect::<BTreeSet<_>>();
        write!(
            f,
            "FAIL: {violating} Region(s) in {} of {} ranges break their placement rules{}",
            bad_ranges.len(),
            self.ranges.len(),
            if self.violations.iter().any(|v| v.region_id.is_none()) {
                " (and some ranges have no Region at all)"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memcomparable_keys_decode_back() {
        for raw in [
            &b""[..],
            &[0x01],
            &[0x02, 0x00, 0x03],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0],
        ] {
            let encoded = encode_memcomparable(raw);
            assert_eq!(decode_memcomparable(&encoded).as_deref(), Some(raw));
            // A timestamp suffix is ignored.
            let mut with_ts = encoded.clone();
            with_ts.extend_from_slice(&[0xff; 8]);
            assert_eq!(decode_memcomparable(&with_ts).as_deref(), Some(raw));
        }
        assert_eq!(decode_memcomparable(&[0x02, 0x00]), None);
        // Padding must be zeros, the marker at most eight bytes of it.
        assert_eq!(decode_memcomparable(&[1, 0, 0, 0, 0, 0, 0, 9, 0xf8]), None);
        assert_eq!(decode_memcomparable(&[0; 9]), None);
        assert_eq!(show_keys(&[], &[]), "[start, end)");
        assert_eq!(
            show_keys(&encode_memcomparable(&[2, 0, 1]), &[0xab]),
            "[020001, encoded AB)"
        );
    }

    #[test]
    fn shares_never_round_a_miss_up() {
        assert_eq!(share(3, 3), "3/3 (100%)");
        assert_eq!(share(2, 3), "2/3 (66.7%)");
        assert_eq!(share(9999, 10000), "9999/10000 (99.9%)");
        assert_eq!(share(0, 0), "-");
    }

    #[test]
    fn peers_of_every_pd_version_have_a_role() {
        let peers: Vec<PdPeer> = serde_json::from_str(
            r#"[{"id":1,"store_id":1},{"id":2,"store_id":2,"role_name":"Voter"},
                {"id":3,"store_id":3,"role":1,"role_name":"Learner","is_learner":true},
                {"id":4,"store_id":4,"is_learner":true},
                {"id":5,"store_id":5,"role":2,"role_name":"IncomingVoter"}]"#,
        )
        .unwrap();
        let roles: Vec<Role> = peers.iter().map(PdPeer::role).collect();
        assert_eq!(
            roles,
            [
                Role::Voter,
                Role::Voter,
                Role::Learner,
                Role::Learner,
                Role::Changing
            ]
        );
        // An unknown leader: PD sends an empty peer.
        let region: PdRegion = serde_json::from_str(
            r#"{"id":9,"start_key":"","end_key":"","peers":null,"leader":{"role_name":""}}"#,
        )
        .unwrap();
        assert!(region.peers.is_empty());
        assert_eq!(region.leader.map(|l| l.store_id), Some(0));
    }
}
