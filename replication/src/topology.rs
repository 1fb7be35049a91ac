//! The topology file: regions with their codes, zones and gateways, the round-trip
//! times between regions, the primary region of global data and the survival goal.
//!
//! The same structure is accepted as TOML and as JSON. Parsing validates everything
//! a later step relies on, so a [`Topology`] value is always consistent: every pair
//! of regions has a round-trip time, codes and names are unique, the primary exists.

use crate::error::{Error, Result};
use rossby_keyspace::RegionId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// How many failures each key range must outlive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Survival {
    /// Outlive the loss of any one availability zone. Regional data keeps all its
    /// voters in its home region, so commits pay no cross-region round trip.
    Zone,
    /// Outlive the loss of any one whole region. Every range has voters in several
    /// regions, so each commit waits for a cross-region quorum.
    Region,
}

impl Survival {
    /// The name used in the topology file.
    pub fn as_str(self) -> &'static str {
        match self {
            Survival::Zone => "zone",
            Survival::Region => "region",
        }
    }
}

/// The addresses of one gateway.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayAddrs {
    /// Client-facing QUIC address, `host:port`.
    pub quic: String,
    /// Admin and gateway-to-gateway address, `host:port`.
    pub admin: String,
}

/// One region of the deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// The code stored in the box ids homed here.
    pub code: RegionId,
    /// The name, also the value of the `region` store label of its TiKV stores.
    pub name: String,
    /// Availability zones, the values of the `zone` store label.
    pub zones: Vec<String>,
    /// Gateways serving this region.
    pub gateways: Vec<GatewayAddrs>,
}

/// A validated topology. Regions are kept sorted by code, round-trip times by
/// unordered pair of codes, so two files describing the same deployment compare
/// equal whatever their order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    regions: Vec<Region>,
    primary: usize,
    survival: Survival,
    /// Round-trip time in milliseconds, keyed by (lower code, higher code).
    rtt_ms: BTreeMap<(u16, u16), u32>,
}

/// The file's shape, before validation.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    primary: String,
    survival: Survival,
    regions: Vec<RawRegion>,
    #[serde(default)]
    rtt_ms: BTreeMap<String, u32>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    code: u16,
    name: String,
    zones: Vec<String>,
    gateways: Vec<GatewayAddrs>,
}

impl Topology {
    /// Parses and validates a topology written in TOML.
    pub fn from_toml_str(text: &str) -> Result<Topology> {
        let raw: RawTopology = toml::from_str(text).map_err(|e| Error::Parse {
            format: "TOML",
            message: e.to_string().trim_end().to_string(),
        })?;
        Self::validate(raw)
    }

    /// Parses and validates a topology written in JSON (the same structure as TOML).
    pub fn from_json_str(text: &str) -> Result<Topology> {
        let raw: RawTopology = serde_json::from_str(text).map_err(|e| Error::Parse {
            format: "JSON",
            message: e.to_string(),
        })?;
        Self::validate(raw)
    }

    /// Parses JSON when the first non-blank character is `{`, TOML otherwise.
    pub fn parse(text: &str) -> Result<Topology> {
        if text.trim_start().starts_with('{') {
            Self::from_json_str(text)
        } else {
            Self::from_toml_str(text)
        }
    }

    /// The topology as JSON, in the file structure (`regions` array, `rtt_ms`
    /// object of `"a:b"` keys), so [`Topology::from_json_str`] reads it back equal.
    pub fn to_json(&self) -> String {
        let raw = self.to_raw();
        // Serializing plain strings, integers and string-keyed maps cannot fail;
        // the fallback keeps this path free of panics all the same.
        serde_json::to_string_pretty(&raw).unwrap_or_default()
    }

    /// The topology as TOML, in the file structure.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.to_raw()).unwrap_or_default()
    }

    /// This topology with the gateways of each listed region replaced (other
    /// regions keep theirs), validated like a parsed file: the local multi-region
    /// mode runs a topology's regions on loopback addresses.
    pub fn with_gateways(&self, gateways: &[(RegionId, Vec<GatewayAddrs>)]) -> Result<Topology> {
        let mut raw = self.to_raw();
        for region in &mut raw.regions {
            if let Some((_, addrs)) = gateways.iter().find(|(code, _)| code.0 == region.code) {
                region.gateways = addrs.clone();
            }
        }
        Self::validate(raw)
    }

    fn to_raw(&self) -> RawTopology {
        let mut rtt_ms = BTreeMap::new();
        for (&(a, b), &ms) in &self.rtt_ms {
            if let (Some(ra), Some(rb)) = (self.region(RegionId(a)), self.region(RegionId(b))) {
                rtt_ms.insert(format!("{}:{}", ra.name, rb.name), ms);
            }
        }
        RawTopology {
            primary: self.primary().name.clone(),
            survival: self.survival,
            regions: self
                .regions
                .iter()
                .map(|r| RawRegion {
                    code: r.code.0,
                    name: r.name.clone(),
                    zones: r.zones.clone(),
                    gateways: r.gateways.clone(),
                })
                .collect(),
            rtt_ms,
        }
    }

    /// The region holding the leaders of global data (and PD's leader, which hands
    /// out timestamps).
    pub fn primary(&self) -> &Region {
        &self.regions[self.primary]
    }

    /// The survival goal.
    pub fn survival(&self) -> Survival {
        self.survival
    }

    /// Every region, sorted by code.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The region with this code.
    pub fn region(&self, code: RegionId) -> Option<&Region> {
        self.regions
            .binary_search_by_key(&code, |r| r.code)
            .ok()
            .map(|i| &self.regions[i])
    }

    /// The region with this name.
    pub fn region_named(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Round-trip time between two regions: zero from a region to itself, `None`
    /// when either region is not in the topology.
    pub fn rtt(&self, a: RegionId, b: RegionId) -> Option<Duration> {
        self.region(a)?;
        self.region(b)?;
        if a == b {
            return Some(Duration::ZERO);
        }
        let key = if a.0 < b.0 { (a.0, b.0) } else { (b.0, a.0) };
        self.rtt_ms
            .get(&key)
            .map(|&ms| Duration::from_millis(u64::from(ms)))
    }

    fn validate(raw: RawTopology) -> Result<Topology> {
        let mut regions = Vec::with_capacity(raw.regions.len());
        let mut names = HashSet::new();
        for r in raw.regions {
            validate_name(&r.name)?;
            if r.code == 0 {
                return Err(Error::ZeroCode { name: r.name });
            }
            if !names.insert(r.name.clone()) {
                return Err(Error::DuplicateName { name: r.name });
            }
            if let Some(other) = regions.iter().find(|o: &&Region| o.code.0 == r.code) {
                return Err(Error::DuplicateCode {
                    code: r.code,
                    first: other.name.clone(),
                    second: r.name,
                });
            }
            validate_zones(&r.name, &r.zones)?;
            validate_gateways(&r.name, &r.gateways)?;
            regions.push(Region {
                code: RegionId(r.code),
                name: r.name,
                zones: r.zones,
                gateways: r.gateways,
            });
        }
        regions.sort_by_key(|r| r.code);

        let primary =
            regions
                .iter()
                .position(|r| r.name == raw.primary)
                .ok_or(Error::PrimaryNotARegion {
                    primary: raw.primary,
                })?;
        if raw.survival == Survival::Region && regions.len() < 3 {
            return Err(Error::RegionSurvivalNeedsThreeRegions {
                found: regions.len(),
            });
        }

        let code_of = |name: &str, pair: &str| {
            regions
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.code.0)
                .ok_or_else(|| Error::UnknownRegion {
                    region: name.to_string(),
                    context: format!("rtt_ms entry \"{pair}\""),
                })
        };
        let mut rtt_ms = BTreeMap::new();
        for (pair, ms) in raw.rtt_ms {
            let Some((a, b)) = pair.split_once(':') else {
                return Err(Error::UnknownPairName { pair });
            };
            if a.is_empty() || b.is_empty() || b.contains(':') {
                return Err(Error::UnknownPairName { pair });
            }
            let (ca, cb) = (code_of(a, &pair)?, code_of(b, &pair)?);
            if ca == cb {
                return Err(Error::RttForSameRegion { pair });
            }
            let key = (ca.min(cb), ca.max(cb));
            if rtt_ms.insert(key, ms).is_some() {
                return Err(Error::DuplicateRtt { pair });
            }
        }
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                if !rtt_ms.contains_key(&(a.code.0, b.code.0)) {
                    return Err(Error::MissingRtt {
                        a: a.name.clone(),
                        b: b.name.clone(),
                    });
                }
            }
        }

        Ok(Topology {
            regions,
            primary,
            survival: raw.survival,
            rtt_ms,
        })
    }
}

/// Names end up in `rtt_ms` keys (split on `:`) and in PD label values, which PD
/// restricts to letters, digits, `-`, `_`, `.` and `/`.
fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::BadRegionName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return bad("use only ASCII letters, digits, '-', '_', '.' and '/'");
    }
    Ok(())
}

fn validate_zones(region: &str, zones: &[String]) -> Result<()> {
    if zones.is_empty() {
        return Err(Error::NoZones {
            region: region.to_string(),
        });
    }
    let mut seen = HashSet::new();
    for zone in zones {
        if zone.is_empty() {
            return Err(Error::EmptyZone {
                region: region.to_string(),
            });
        }
        if !seen.insert(zone.as_str()) {
            return Err(Error::DuplicateZone {
                region: region.to_string(),
                zone: zone.clone(),
            });
        }
    }
    Ok(())
}

fn validate_gateways(region: &str, gateways: &[GatewayAddrs]) -> Result<()> {
    if gateways.is_empty() {
        return Err(Error::NoGateways {
            region: region.to_string(),
        });
    }
    for g in gateways {
        for (field, addr) in [("quic", &g.quic), ("admin", &g.admin)] {
            if let Err(reason) = check_host_port(addr) {
                return Err(Error::BadGateway {
                    region: region.to_string(),
                    field,
                    addr: addr.clone(),
                    reason,
                });
            }
        }
    }
    Ok(())
}

/// Accepts `host:port` and `[v6]:port` with a non-zero port; names are resolved by
/// whoever connects, so only the shape is checked here.
fn check_host_port(addr: &str) -> std::result::Result<(), &'static str> {
    if addr.is_empty() {
        return Err("it is empty");
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("expected host:port");
    };
    if host.is_empty() || host == "[]" {
        return Err("the host is empty");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err("write IPv6 addresses as [address]:port");
    }
    if host.chars().any(char::is_whitespace) {
        return Err("the host contains whitespace");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("the port must be a number from 1 to 65535"),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
primary = "a"
survival = "zone"

[[regions]]
code = 1
name = "a"
zones = ["a1", "a2", "a3"]
gateways = [{ quic = "gw.a.example:7400", admin = "10.0.0.1:7401" }]

[[regions]]
code = 2
name = "b"
zones = ["b1", "b2", "b3"]
gateways = [{ quic = "gw.b.example:7400", admin = "10.0.0.2:7401" }]

[[regions]]
code = 3
name = "c"
zones = ["c1", "c2", "c3"]
gateways = [{ quic = "gw.c.example:7400", admin = "10.0.0.3:7401" }]

[rtt_ms]
"a:b" = 10
"c:a" = 30
"b:c" = 20
"#;

    fn with(from: &str, to: &str) -> Result<Topology> {
        assert!(BASE.contains(from), "test edit does not apply: {from}");
        Topology::from_toml_str(&BASE.replacen(from, to, 1))
    }

    #[test]
    fn base_parses_with_pairs_in_either_order() {
        let t = Topology::from_toml_str(BASE).unwrap();
        assert_eq!(t.primary().name, "a");
        assert_eq!(t.survival(), Survival::Zone);
        assert_eq!(t.regions().len(), 3);
        let (a, b, c) = (RegionId(1), RegionId(2), RegionId(3));
        assert_eq!(t.rtt(a, b), Some(Duration::from_millis(10)));
        assert_eq!(t.rtt(b, a), Some(Duration::from_millis(10)));
        assert_eq!(t.rtt(a, c), Some(Duration::from_millis(30)));
        assert_eq!(t.rtt(c, b), Some(Duration::from_millis(20)));
        assert_eq!(t.rtt(b, b), Some(Duration::ZERO));
        assert_eq!(t.rtt(a, RegionId(9)), None);
        assert_eq!(t.rtt(RegionId(9), RegionId(9)), None);
        assert_eq!(t.region_named("c").map(|r| r.code), Some(c));
        assert!(t.region(RegionId(4)).is_none());
        assert!(t.region_named("d").is_none());
    }

    #[test]
    fn gateways_can_be_replaced_and_are_validated() {
        let t = Topology::from_toml_str(BASE).unwrap();
        let local = vec![GatewayAddrs {
            quic: "127.0.0.1:5000".into(),
            admin: "127.0.0.1:5001".into(),
        }];
        let replaced = t.with_gateways(&[(RegionId(2), local.clone())]).unwrap();
        assert_eq!(replaced.region(RegionId(2)).unwrap().gateways, local);
        assert_eq!(
            replaced.region(RegionId(1)).unwrap().gateways,
            t.region(RegionId(1)).unwrap().gateways
        );
        assert_eq!(
            replaced.rtt(RegionId(1), RegionId(3)),
            t.rtt(RegionId(1), RegionId(3))
        );
        let bad = vec![GatewayAddrs {
            quic: "no-port".into(),
            admin: "127.0.0.1:5001".into(),
        }];
        assert!(matches!(
            t.with_gateways(&[(RegionId(1), bad)]),
            Err(Error::BadGateway { .. })
        ));
    }

    #[test]
    fn regions_are_sorted_by_code_whatever_the_file_order() {
        let reordered = BASE.replacen("code = 1\nname = \"a\"", "code = 7\nname = \"a\"", 1);
        let t = Topology::from_toml_str(&reordered).unwrap();
        let codes: Vec<u16> = t.regions().iter().map(|r| r.code.0).collect();
        assert_eq!(codes, vec![2, 3, 7]);
        assert_eq!(t.primary().code, RegionId(7));
        assert_eq!(
            t.rtt(RegionId(7), RegionId(3)),
            Some(Duration::from_millis(30))
        );
    }

    #[test]
    fn json_and_toml_round_trips_are_equal() {
        let t = Topology::from_toml_str(BASE).unwrap();
        let json = t.to_json();
        assert_eq!(Topology::from_json_str(&json).unwrap(), t);
        assert_eq!(Topology::parse(&json).unwrap(), t);
        let toml = t.to_toml();
        assert_eq!(Topology::from_toml_str(&toml).unwrap(), t);
        assert_eq!(Topology::parse(&toml).unwrap(), t);
        // The JSON has the file's structure.
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["primary"], "a");
        assert_eq!(v["survival"], "zone");
        assert_eq!(v["regions"][0]["gateways"][0]["quic"], "gw.a.example:7400");
        assert_eq!(v["rtt_ms"]["a:c"], 30);
    }

    #[test]
    fn parse_picks_the_format_from_the_first_character() {
        assert!(matches!(
            Topology::parse("  \n { \"primary\": 1 }"),
            Err(Error::Parse { format: "JSON", .. })
        ));
        assert!(matches!(
            Topology::parse("primary = 1"),
            Err(Error::Parse { format: "TOML", .. })
        ));
    }

    #[test]
    fn unknown_and_missing_fields_are_rejected() {
        for (from, to, needle) in [
            (
                "survival = \"zone\"",
                "survival = \"zone\"\ncolour = 1",
                "colour",
            ),
            ("code = 2\n", "code = 2\nleader = true\n", "leader"),
            (
                "admin = \"10.0.0.2:7401\"",
                "admin = \"10.0.0.2:7401\", http = \"x:1\"",
                "http",
            ),
            ("survival = \"zone\"", "survival = \"rack\"", "rack"),
            ("survival = \"zone\"\n", "", "survival"),
            ("code = 3\n", "code = 70000\n", "70000"),
            ("\"a:b\" = 10", "\"a:b\" = -10", "a:b"),
        ] {
            match with(from, to) {
                Err(Error::Parse {
                    format: "TOML",
                    message,
                }) => {
                    assert!(message.contains(needle), "{message:?} should name {needle}")
                }
                other => panic!("{to:?}: expected a parse error, got {other:?}"),
            }
        }
        assert!(matches!(
            Topology::from_json_str(
                "{\"primary\": \"a\", \"survival\": \"zone\", \"regions\": [], \"x\": 1}"
            ),
            Err(Error::Parse { format: "JSON", .. })
        ));
    }

    #[test]
    fn every_validation_error_names_the_offending_item() {
        let cases: Vec<(&str, &str, Error)> = vec![
            (
                "\"b:c\" = 20",
                "\"b:d\" = 20",
                Error::UnknownRegion {
                    region: "d".into(),
                    context: "rtt_ms entry \"b:d\"".into(),
                },
            ),
            (
                "\"b:c\" = 20",
                "",
                Error::MissingRtt {
                    a: "b".into(),
                    b: "c".into(),
                },
            ),
            (
                "\"b:c\" = 20",
                "\"b:c\" = 20\n\"c:b\" = 21",
                Error::DuplicateRtt { pair: "c:b".into() },
            ),
            (
                "code = 3\n",
                "code = 1\n",
                Error::DuplicateCode {
                    code: 1,
                    first: "a".into(),
                    second: "c".into(),
                },
            ),
            (
                "name = \"c\"",
                "name = \"b\"",
                Error::DuplicateName { name: "b".into() },
            ),
            (
                "code = 2\n",
                "code = 0\n",
                Error::ZeroCode { name: "b".into() },
            ),
            (
                "primary = \"a\"",
                "primary = \"z\"",
                Error::PrimaryNotARegion {
                    primary: "z".into(),
                },
            ),
            (
                "zones = [\"b1\", \"b2\", \"b3\"]",
                "zones = []",
                Error::NoZones { region: "b".into() },
            ),
            (
                "zones = [\"b1\", \"b2\", \"b3\"]",
                "zones = [\"b1\", \"\"]",
                Error::EmptyZone { region: "b".into() },
            ),
            (
                "zones = [\"b1\", \"b2\", \"b3\"]",
                "zones = [\"b1\", \"b2\", \"b1\"]",
                Error::DuplicateZone {
                    region: "b".into(),
                    zone: "b1".into(),
                },
            ),
            (
                "gateways = [{ quic = \"gw.b.example:7400\", admin = \"10.0.0.2:7401\" }]",
                "gateways = []",
                Error::NoGateways { region: "b".into() },
            ),
            (
                "\"a:b\" = 10",
                "\"a:b\" = 10\n\"a:a\" = 0",
                Error::RttForSameRegion { pair: "a:a".into() },
            ),
            (
                "\"a:b\" = 10",
                "\"a-b\" = 10",
                Error::UnknownPairName { pair: "a-b".into() },
            ),
            (
                "\"a:b\" = 10",
                "\"a:b:c\" = 10",
                Error::UnknownPairName {
                    pair: "a:b:c".into(),
                },
            ),
            (
                "\"a:b\" = 10",
                "\":b\" = 10",
                Error::UnknownPairName { pair: ":b".into() },
            ),
        ];
        for (from, to, expected) in cases {
            let err = with(from, to).unwrap_err();
            assert_eq!(err, expected, "editing {from:?} into {to:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn region_survival_needs_three_regions() {
        let two = BASE
            .replacen("survival = \"zone\"", "survival = \"region\"", 1)
            .replacen(
                "[[regions]]\ncode = 3\nname = \"c\"\nzones = [\"c1\", \"c2\", \"c3\"]\ngateways = [{ quic = \"gw.c.example:7400\", admin = \"10.0.0.3:7401\" }]\n",
                "",
                1,
            )
            .replacen("\"c:a\" = 30\n\"b:c\" = 20\n", "", 1);
        assert_eq!(
            Topology::from_toml_str(&two),
            Err(Error::RegionSurvivalNeedsThreeRegions { found: 2 })
        );
        let three = BASE.replacen("survival = \"zone\"", "survival = \"region\"", 1);
        assert_eq!(
            Topology::from_toml_str(&three).unwrap().survival(),
            Survival::Region
        );
    }

    #[test]
    fn region_names_must_fit_pair_keys_and_labels() {
        for bad in ["", "us east", "a:b", "é"] {
            let err = with("name = \"c\"", &format!("name = {bad:?}")).unwrap_err();
            assert!(
                matches!(err, Error::BadRegionName { ref name, .. } if name == bad),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn gateway_addresses_must_be_host_and_port() {
        for (addr, ok) in [
            ("", false),
            ("gw.example", false),
            (":7400", false),
            ("gw.example:0", false),
            ("gw.example:99999", false),
            ("gw.example:port", false),
            ("::1:7400", false),
            ("gw example:7400", false),
            ("[]:7400", false),
            ("[::1]:7400", true),
            ("127.0.0.1:7400", true),
            ("gw-1.example.net:443", true),
        ] {
            let result = with("10.0.0.2:7401", addr);
            match (ok, result) {
                (true, Ok(_)) => {}
                (
                    false,
                    Err(Error::BadGateway {
                        region,
                        field,
                        addr: got,
                        ..
                    }),
                ) => {
                    assert_eq!((region.as_str(), field, got.as_str()), ("b", "admin", addr));
                }
                (_, other) => panic!("{addr:?}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_single_region_needs_no_rtt_table() {
        let one = r#"
primary = "solo"
survival = "zone"
[[regions]]
code = 9
name = "solo"
zones = ["z1"]
gateways = [{ quic = "127.0.0.1:7400", admin = "127.0.0.1:7401" }]
"#;
        let t = Topology::from_toml_str(one).unwrap();
        assert_eq!(t.rtt(RegionId(9), RegionId(9)), Some(Duration::ZERO));
        assert_eq!(Topology::from_json_str(&t.to_json()).unwrap(), t);
    }
}
