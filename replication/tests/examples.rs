//! The example topologies shipped in docs/examples parse, agree, and plan.

use rossby_keyspace::RegionId;
use rossby_replication::{LabelConstraint, Survival, Topology, plan};
use std::time::Duration;

const TOML: &str = include_str!("../../docs/examples/three-regions.toml");
const JSON: &str = include_str!("../../docs/examples/three-regions.json");

#[test]
fn toml_and_json_examples_describe_the_same_topology() {
    let from_toml = Topology::from_toml_str(TOML).unwrap();
    let from_json = Topology::from_json_str(JSON).unwrap();
    assert_eq!(from_toml, from_json);
    assert_eq!(Topology::parse(TOML).unwrap(), from_json);
    assert_eq!(Topology::parse(JSON).unwrap(), from_toml);
    assert_eq!(
        Topology::from_json_str(&from_toml.to_json()).unwrap(),
        from_toml
    );
}

#[test]
fn example_has_three_real_regions_with_realistic_round_trips() {
    let t = Topology::from_toml_str(TOML).unwrap();
    assert_eq!(t.primary().name, "us-east");
    assert_eq!(t.survival(), Survival::Zone);
    let names: Vec<&str> = t.regions().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["us-east", "eu-west", "ap-southeast"]);
    for r in t.regions() {
        assert_eq!(r.zones.len(), 3, "{}", r.name);
        assert_eq!(r.gateways.len(), 2, "{}", r.name);
    }
    let rtt = |a, b| t.rtt(RegionId(a), RegionId(b)).unwrap();
    assert_eq!(rtt(1, 2), Duration::from_millis(68));
    assert_eq!(rtt(1, 3), Duration::from_millis(215));
    assert_eq!(rtt(3, 2), Duration::from_millis(160));
}

#[test]
fn example_plans_under_both_goals() {
    let zone = plan(&Topology::from_toml_str(TOML).unwrap()).unwrap();
    assert_eq!(zone.bundles[0].rules.len(), 10);
    let region_text = TOML.replacen("survival = \"zone\"", "survival = \"region\"", 1);
    let region = plan(&Topology::from_toml_str(&region_text).unwrap()).unwrap();
    assert_eq!(region.bundles[0].rules.len(), 16);
    println!("{zone}\n{region}\n{}", region.rules_json());
}

#[test]
fn example_pins_each_leader_to_the_first_zone_of_its_region() {
    let t = Topology::from_toml_str(TOML).unwrap();
    let plan = plan(&t).unwrap();
    let rules = &plan.bundles[0].rules;
    let constraint = |key: &str, op: &str, value: &str| LabelConstraint {
        key: key.into(),
        op: op.into(),
        values: vec![value.into()],
    };
    for region in t.regions() {
        let id = format!("region-{}-leader", region.name);
        let leader = rules.iter().find(|r| r.id == id).unwrap();
        let same_range = |r: &&rossby_replication::Rule| {
            r.start_key == leader.start_key && r.end_key == leader.end_key
        };
        assert_eq!(
            rules
                .iter()
                .filter(same_range)
                .filter(|r| r.role == "leader")
                .count(),
            1
        );
        assert_eq!(
            leader.label_constraints,
            vec![
                constraint("region", "in", &region.name),
                constraint("zone", "in", &region.zones[0])
            ]
        );
        let voters = rules
            .iter()
            .filter(same_range)
            .find(|r| r.role == "voter")
            .unwrap();
        assert_eq!(
            voters.label_constraints,
            vec![
                constraint("region", "in", &region.name),
                constraint("zone", "notIn", &region.zones[0])
            ]
        );
        assert_eq!(voters.isolation_level, "zone");
    }
    // The JSON carries the same constraints PD reads.
    let json: serde_json::Value = serde_json::from_str(&plan.rules_json()).unwrap();
    let leader = json[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "region-eu-west-leader")
        .unwrap();
    assert_eq!(leader["role"], "leader");
    assert_eq!(
        leader["label_constraints"][1],
        serde_json::json!({"key": "zone", "op": "in", "values": ["eu-west-1a"]})
    );
}
