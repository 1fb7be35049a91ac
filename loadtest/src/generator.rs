//! Several load generators, one per region: `--generator i/N` splits the
//! scenario so that N processes together drive the whole population, each
//! sending from and receiving on its own devices only.
//!
//! **The split.** Users are numbered region by region (see [`crate::plan`]);
//! generator `g` of `N` drives the users `u` with `u * N / users == g`, that
//! is N contiguous blocks of near-equal size, and every device of those users.
//! When N equals the number of regions the blocks are exactly the regions:
//! generator `i` drives region `i`'s devices (in topology order). For any other
//! N the blocks still cover every user once; a block may then span two regions.
//! N may not exceed the number of users (a generator would have nothing to do).
//!
//! **The schedule.** Every generator computes the same schedule (same seed,
//! same start time): generator `g` issues the sends whose sending device it
//! drives and expects, from the others' sends, the deliveries to its devices.
//! So the union of the generators' sends is the single-process schedule.
//!
//! **Agreement.** The generators share a provisioned state directory (made once
//! by `--phase provision`, copied to every generator host), whose manifest names
//! every user's box and devices; a start time (`--start-at`) from which the run
//! id of the message texts is derived, so each generator recognises the others'
//! messages as this run's and knows when each send was due.

use crate::error::{Error, Result};
use crate::plan::Population;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// Which of how many generators this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GeneratorSpec {
    /// This generator's index, `0..count`.
    pub index: u32,
    /// How many generators share the scenario.
    pub count: u32,
}

impl Default for GeneratorSpec {
    fn default() -> Self {
        GeneratorSpec::SOLE
    }
}

impl GeneratorSpec {
    /// The single generator of a run that is not split.
    pub const SOLE: GeneratorSpec = GeneratorSpec { index: 0, count: 1 };

    /// A checked `index/count`.
    pub fn new(index: u32, count: u32) -> Result<GeneratorSpec, String> {
        if count == 0 {
            return Err("the number of generators N in i/N must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "generator index {index} is out of range for {count} generators: use 0 to {}",
                count - 1
            ));
        }
        Ok(GeneratorSpec { index, count })
    }

    /// Whether the scenario is split over several generators.
    pub fn is_split(&self) -> bool {
        self.count > 1
    }

    /// The generator that drives user `user` of `users`.
    pub fn generator_of_user(user: u32, users: u32, count: u32) -> u32 {
        if users == 0 || count == 0 {
            return 0;
        }
        // u64: users * count may exceed u32.
        let g = u64::from(user) * u64::from(count) / u64::from(users);
        u32::try_from(g).unwrap_or(count - 1)
    }
}

impl fmt::Display for GeneratorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for GeneratorSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (i, n) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not i/N (e.g. 0/3)"))?;
        let number = |what: &str, s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("{what} {s:?} of {text:?} is not a whole number"))
        };
        GeneratorSpec::new(number("index", i)?, number("count", n)?)
    }
}

/// Which devices each generator drives, for one population.
#[derive(Clone, Debug)]
pub struct Split {
    spec: GeneratorSpec,
    /// The generator of each device, by slot.
    by_device: Vec<u32>,
}

impl Split {
    /// Splits `population` for `spec`. More generators than users is an error.
    pub fn new(population: &Population, spec: GeneratorSpec) -> Result<Split> {
        let users = u32::try_from(population.users.len())
            .map_err(|_| Error::Scenario("too many users".into()))?;
        if spec.count > users.max(1) {
            return Err(Error::Scenario(format!(
                "--generator {spec}: {} generators for {users} users; at most one generator per user",
                spec.count
            )));
        }
        let by_device = population
            .devices
            .iter()
            .map(|d| GeneratorSpec::generator_of_user(d.user, users, spec.count))
            .collect();
        Ok(Split { spec, by_device })
    }

    /// The generator this split is for.
    pub fn spec(&self) -> GeneratorSpec {
        self.spec
    }

    /// The generator that drives device `slot`.
    pub fn generator_of(&self, slot: u32) -> u32 {
        self.by_device.get(slot as usize).copied().unwrap_or(0)
    }

    /// Whether this generator drives device `slot`.
    pub fn drives(&self, slot: u32) -> bool {
        self.by_device
            .get(slot as usize)
            .is_some_and(|g| *g == self.spec.index)
    }

    /// Per slot, whether this generator drives it.
    pub fn local_mask(&self) -> Vec<bool> {
        self.by_device
            .iter()
            .map(|g| *g == self.spec.index)
            .collect()
    }

    /// The slots this generator drives, ascending.
    pub fn local_slots(&self) -> Vec<u32> {
        (0..self.by_device.len() as u32)
            .filter(|s| self.drives(*s))
            .collect()
    }
}

/// The run id every generator of one split run derives alike: from the
/// provisioning's tag, the schedule's seed, the agreed start time and the
/// number of generators. Another start time gives another run id, so messages
/// left over from an earlier run are recognised as stale.
pub fn shared_run_id(tag: &str, seed: u64, start_unix_ms: u64, count: u32) -> u64 {
    let mut h = Sha256::new();
    h.update(b"rossby-loadtest run id\0");
    h.update(tag.as_bytes());
    h.update([0u8]);
    h.update(seed.to_be_bytes());
    h.update(start_unix_ms.to_be_bytes());
    h.update(count.to_be_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Overrides, ScenarioFile};
    use crate::testkit;
    use rossby_replication::Topology;

    fn three_regions() -> Topology {
        let gateway = |port: u16| {
            format!(
                r#"{{ quic = "127.0.0.1:{port}", admin = "127.0.0.1:{}" }}"#,
                port + 1
            )
        };
        let mut text = String::from("primary = \"a\"\nsurvival = \"zone\"\n");
        for (code, name) in [(1, "a"), (2, "b"), (3, "c")] {
            text.push_str(&format!(
                "[[regions]]\ncode = {code}\nname = \"{name}\"\nzones = [\"{name}1\"]\ngateways = [{}]\n",
                gateway(7300 + code * 100)
            ));
        }
        text.push_str("[rtt_ms]\n\"a:b\" = 80\n\"a:c\" = 90\n\"b:c\" = 60\n");
        Topology::parse(&text).unwrap()
    }

    fn population(users_per_region: u32, devices: u32) -> Population {
        let o = Overrides::from(ScenarioFile {
            users_per_region: Some(users_per_region),
            devices_per_user: Some(devices),
            ..ScenarioFile::default()
        });
        let s = testkit::build(three_regions(), "", &o).unwrap();
        Population::build(&s, "t").unwrap()
    }

    #[test]
    fn specs_parse_and_refuse_bad_input() {
        assert_eq!("0/3".parse(), Ok(GeneratorSpec { index: 0, count: 3 }));
        assert_eq!(" 2 / 3 ".parse(), Ok(GeneratorSpec { index: 2, count: 3 }));
        assert_eq!("0/1".parse(), Ok(GeneratorSpec::SOLE));
        for (bad, word) in [
            ("3/3", "out of range"),
            ("5/3", "out of range"),
            ("0/0", "at least 1"),
            ("1/0", "at least 1"),
            ("-1/3", "whole number"),
            ("a/3", "whole number"),
            ("1/", "whole number"),
            ("13", "i/N"),
            ("", "i/N"),
        ] {
            let err = bad.parse::<GeneratorSpec>().unwrap_err();
            assert!(err.contains(word), "{bad}: {err}");
        }
        assert_eq!(GeneratorSpec { index: 1, count: 3 }.to_string(), "1/3");
    }

    #[test]
    fn one_generator_per_region_drives_that_region() {
        let p = population(4, 2);
        for i in 0..3 {
            let split = Split::new(&p, GeneratorSpec::new(i, 3).unwrap()).unwrap();
            for d in &p.devices {
                assert_eq!(split.drives(d.slot), u32::from(d.region) == i, "{d:?}");
            }
        }
    }

    #[test]
    fn every_device_is_driven_by_exactly_one_generator() {
        let p = population(5, 3);
        let users = p.users.len() as u32;
        for count in 1..=users {
            let splits: Vec<Split> = (0..count)
                .map(|i| Split::new(&p, GeneratorSpec::new(i, count).unwrap()).unwrap())
                .collect();
            let mut sizes = Vec::new();
            for s in &splits {
                sizes.push(s.local_slots().len());
            }
            for d in &p.devices {
                let drivers = splits.iter().filter(|s| s.drives(d.slot)).count();
                assert_eq!(drivers, 1, "device {} with {count} generators", d.slot);
                // A user's devices stay together.
                let first = p.users[d.user as usize].devices[0];
                assert_eq!(
                    splits[0].generator_of(d.slot),
                    splits[0].generator_of(first)
                );
            }
            // Blocks of near-equal size: at most one user apart.
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 3, "{count} generators: {sizes:?}");
        }
        let err = Split::new(&p, GeneratorSpec::new(0, users + 1).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("at most one generator per user"),
            "{err}"
        );
    }

    #[test]
    fn run_ids_follow_the_start_time() {
        let a = shared_run_id("tag", 1, 1_000, 3);
        assert_eq!(a, shared_run_id("tag", 1, 1_000, 3));
        assert_ne!(a, shared_run_id("tag", 1, 1_001, 3));
        assert_ne!(a, shared_run_id("tag", 2, 1_000, 3));
        assert_ne!(a, shared_run_id("tag", 1, 1_000, 2));
        assert_ne!(a, shared_run_id("gat", 1, 1_000, 3));
    }
}
