//! The scenario: who sends what to whom, how fast and for how long. Read from a
//! TOML file (`--scenario FILE`) and flags; a flag wins over the file, the file
//! over the defaults. [`Scenario::validate`] checks every bound, so a scenario
//! that passes cannot ask for unbounded work.
//!
//! ```toml
//! topology = "three-regions.toml"   # relative to this file
//! users_per_region = 10
//! devices_per_user = 2
//! contacts_per_user = 8             # half in the own region, half elsewhere
//! sizes = "64-512:80,1024-4096:18,16384:2"
//! rate = 200                        # sends per second, all regions together
//! duration = "20s"
//! warmup = "5s"
//! drain = "15s"
//! mix = "same=45,cross=45,group=10"
//! groups = 6
//! group_members = 4
//! fetch = "push"                    # or "poll:500ms"
//! fallback_poll = "2s"              # push mode: safety fetch interval, or "off"
//! seed = 1
//! max_in_flight = 2000
//! ```

use crate::error::{Error, Result};
use crate::units::{FetchMode, Mix, SizeDistribution, format_duration, parse_duration};
use rossby_replication::Topology;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Smallest message text: the accounting header (run, index, sender, checksum)
/// must fit.
pub const MIN_MESSAGE_BYTES: usize = 64;
/// Largest message text.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most sends one run may schedule (rate x (warm-up + duration)).
pub const MAX_SENDS: u64 = 10_000_000;
/// Most devices one run may drive.
pub const MAX_DEVICES: u64 = 20_000;
/// Most devices a box may have (the gateway's default `max_devices_per_box`).
pub const MAX_DEVICES_PER_USER: u32 = 16;
/// Most regions (region indices are kept in a byte).
pub const MAX_REGIONS: usize = 200;
/// Most group memberships of one user: each costs every device of the user one
/// published KeyPackage.
pub const MAX_GROUPS_PER_USER: usize = 25;

/// A validated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Where the topology was read from.
    pub topology_path: PathBuf,
    /// The regions and their gateways.
    pub topology: Topology,
    /// Users homed in each region.
    pub users_per_region: u32,
    /// Devices per user (the first registers, the others are linked).
    pub devices_per_user: u32,
    /// Contacts per user: who a user sends 1:1 messages to (half in its own
    /// region, half elsewhere, as far as the mix uses them).
    pub contacts_per_user: u32,
    /// Message text sizes.
    pub sizes: SizeDistribution,
    /// Sends per second, all regions together (open loop: a fixed schedule).
    pub rate: f64,
    /// Measured period.
    pub duration: Duration,
    /// Period before it: sends run but are not measured.
    pub warmup: Duration,
    /// Longest wait after the last send for outstanding deliveries.
    pub drain: Duration,
    /// Shares of same-region, cross-region and group sends.
    pub mix: Mix,
    /// Number of MLS groups.
    pub groups: u32,
    /// Members (users) per group.
    pub group_members: u32,
    /// How devices fetch.
    pub fetch: FetchMode,
    /// Seed of the send schedule (who sends what to whom, and the sizes).
    pub seed: u64,
    /// Most sends in flight at once; a send due while this many are waiting is
    /// skipped and counted (the run then misses its rate).
    pub max_in_flight: usize,
}

/// The scenario file (every key optional); [`Overrides`] carry the same keys
/// from the command line.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Topology file, relative to the scenario file.
    pub topology: Option<PathBuf>,
    /// See [`Scenario::users_per_region`].
    pub users_per_region: Option<u32>,
    /// See [`Scenario::devices_per_user`].
    pub devices_per_user: Option<u32>,
    /// See [`Scenario::contacts_per_user`].
    pub contacts_per_user: Option<u32>,
    /// See [`SizeDistribution::parse`].
    pub sizes: Option<String>,
    /// Sends per second.
    pub rate: Option<f64>,
    /// Measured period, e.g. `"20s"`.
    pub duration: Option<String>,
    /// Warm-up period.
    pub warmup: Option<String>,
    /// Drain period.
    pub drain: Option<String>,
    /// See [`Mix::parse`].
    pub mix: Option<String>,
    /// Number of groups.
    pub groups: Option<u32>,
    /// Members per group.
    pub group_members: Option<u32>,
    /// `push` or `poll:INTERVAL`.
    pub fetch: Option<String>,
    /// Push mode's safety fetch interval, or `off`.
    pub fallback_poll: Option<String>,
    /// Seed.
    pub seed: Option<u64>,
    /// Bound on sends in flight.
    pub max_in_flight: Option<usize>,
}

/// Values given on the command line; each wins over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Scenario file.
    pub scenario_file: Option<PathBuf>,
    /// The scenario file's keys, as flags.
    pub settings: ScenarioFile,
}

impl From<ScenarioFile> for Overrides {
    fn from(settings: ScenarioFile) -> Overrides {
        Overrides {
            scenario_file: None,
            settings,
        }
    }
}

/// Defaults of everything but the topology.
pub mod defaults {
    /// Users per region.
    pub const USERS_PER_REGION: u32 = 10;
    /// Devices per user.
    pub const DEVICES_PER_USER: u32 = 2;
    /// Contacts per user.
    pub const CONTACTS_PER_USER: u32 = 8;
    /// Sizes.
    pub const SIZES: &str = "64-512:80,1024-4096:18,16384:2";
    /// Rate.
    pub const RATE: f64 = 100.0;
    /// Duration.
    pub const DURATION: &str = "30s";
    /// Warm-up.
    pub const WARMUP: &str = "5s";
    /// Drain.
    pub const DRAIN: &str = "15s";
    /// Mix.
    pub const MIX: &str = "same=45,cross=45,group=10";
    /// Members per group.
    pub const GROUP_MEMBERS: u32 = 4;
    /// Fetch mode.
    pub const FETCH: &str = "push";
    /// Push mode's safety fetch.
    pub const FALLBACK_POLL: &str = "2s";
    /// Seed.
    pub const SEED: u64 = 1;
}

impl Scenario {
    /// Builds the scenario from the file named in `overrides` (if any), the
    /// overrides and the defaults, reads the topology and validates everything.
    pub fn load(overrides: &Overrides) -> Result<Scenario> {
        let (file, base_dir) = match &overrides.scenario_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io("cannot read scenario file", path, e))?;
                let file: ScenarioFile = toml::from_str(&text).map_err(|e| {
                    Error::Scenario(format!("{}: {}", path.display(), one_line(&e.to_string())))
                })?;
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (file, dir)
            }
            None => (ScenarioFile::default(), PathBuf::new()),
        };
        let topology_path = match (&overrides.settings.topology, &file.topology) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) if p.is_relative() => base_dir.join(p),
            (None, Some(p)) => p.clone(),
            (None, None) => {
                return Err(Error::Scenario(
                    "no topology: pass --topology FILE (e.g. docs/examples/three-regions.toml) or set `topology` in the scenario file".into(),
                ));
            }
        };
        let text = std::fs::read_to_string(&topology_path)
            .map_err(|e| Error::io("cannot read topology file", &topology_path, e))?;
        let topology = Topology::parse(&text).map_err(|source| Error::Topology {
            path: topology_path.clone(),
            source: Box::new(source),
        })?;
        Scenario::from_parts(topology_path, topology, &file, overrides)
    }

    /// Merges file and overrides over the defaults for an already parsed
    /// topology, and validates.
    pub fn from_parts(
        topology_path: PathBuf,
        topology: Topology,
        file: &ScenarioFile,
        o: &Overrides,
    ) -> Result<Scenario> {
        let o = &o.settings;
        let bad = Error::Scenario;
        let text = |flag: &Option<String>, key: &Option<String>, default: &str| {
            flag.clone()
                .or_else(|| key.clone())
                .unwrap_or_else(|| default.to_string())
        };
        let duration = |name: &str, value: String| {
            parse_duration(&value).map_err(|e| bad(format!("{name}: {e}")))
        };
        let fallback_text = text(
            &o.fallback_poll,
            &file.fallback_poll,
            defaults::FALLBACK_POLL,
        );
        let fallback = match fallback_text.trim() {
            "off" | "none" | "0" => None,
            t => Some(duration("fallback_poll", t.to_string())?),
        };
        let regions = topology.regions().len();
        let groups = o
            .groups
            .or(file.groups)
            .unwrap_or(u32::try_from(regions * 2).unwrap_or(u32::MAX));
        let scenario = Scenario {
            users_per_region: o
                .users_per_region
                .or(file.users_per_region)
                .unwrap_or(defaults::USERS_PER_REGION),
            devices_per_user: o
                .devices_per_user
                .or(file.devices_per_user)
                .unwrap_or(defaults::DEVICES_PER_USER),
            contacts_per_user: o
                .contacts_per_user
                .or(file.contacts_per_user)
                .unwrap_or(defaults::CONTACTS_PER_USER),
            sizes: SizeDistribution::parse(
                &text(&o.sizes, &file.sizes, defaults::SIZES),
                MIN_MESSAGE_BYTES,
                MAX_MESSAGE_BYTES,
            )
            .map_err(bad)?,
            rate: o.rate.or(file.rate).unwrap_or(defaults::RATE),
            duration: duration(
                "duration",
                text(&o.duration, &file.duration, defaults::DURATION),
            )?,
            warmup: duration("warmup", text(&o.warmup, &file.warmup, defaults::WARMUP))?,
            drain: duration("drain", text(&o.drain, &file.drain, defaults::DRAIN))?,
            mix: Mix::parse(&text(&o.mix, &file.mix, defaults::MIX)).map_err(bad)?,
            groups,
            group_members: o
                .group_members
                .or(file.group_members)
                .unwrap_or(defaults::GROUP_MEMBERS),
            fetch: FetchMode::parse(&text(&o.fetch, &file.fetch, defaults::FETCH), fallback)
                .map_err(bad)?,
            seed: o.seed.or(file.seed).unwrap_or(defaults::SEED),
            max_in_flight: 0,
            topology_path,
            topology,
        };
        let mut scenario = scenario;
        scenario.max_in_flight = o
            .max_in_flight
            .or(file.max_in_flight)
            .unwrap_or_else(|| default_in_flight(scenario.rate));
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks every value and bound; the error names the offending setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Scenario(m));
        let regions = self.topology.regions().len();
        if regions > MAX_REGIONS {
            return bad(format!("at most {MAX_REGIONS} regions are supported"));
        }
        if self.users_per_region == 0 {
            return bad("users_per_region must be at least 1".into());
        }
        if !(1..=MAX_DEVICES_PER_USER).contains(&self.devices_per_user) {
            return bad(format!(
                "devices_per_user must be between 1 and {MAX_DEVICES_PER_USER}"
            ));
        }
        let devices =
            u64::from(self.users_per_region) * regions as u64 * u64::from(self.devices_per_user);
        if devices > MAX_DEVICES {
            return bad(format!(
                "{devices} devices (users_per_region x regions x devices_per_user) exceed the limit of {MAX_DEVICES}"
            ));
        }
        if !self.rate.is_finite() || self.rate <= 0.0 || self.rate > 100_000.0 {
            return bad("rate must be above 0 and at most 100000 sends per second".into());
        }
        if self.duration.is_zero() {
            return bad("duration must be positive".into());
        }
        let day = Duration::from_secs(24 * 3600);
        if self.duration > day || self.warmup > day || self.drain > day {
            return bad("duration, warmup and drain are each at most 24h".into());
        }
        if self.total_sends() > MAX_SENDS {
            return bad(format!(
                "rate x (warmup + duration) = {} sends exceeds the limit of {MAX_SENDS}",
                self.total_sends()
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1_000_000 {
            return bad("max_in_flight must be between 1 and 1000000".into());
        }
        let users = u64::from(self.users_per_region) * regions as u64;
        if self.mix.same_region > 0.0 && self.users_per_region < 2 {
            return bad(
                "same-region sends need at least 2 users per region (set mix same=0 or raise users_per_region)"
                    .into(),
            );
        }
        if self.mix.cross_region > 0.0 && regions < 2 {
            return bad(
                "cross-region sends need a topology with at least 2 regions (set mix cross=0)"
                    .into(),
            );
        }
        if (self.mix.same_region > 0.0 || self.mix.cross_region > 0.0)
            && self.contacts_per_user == 0
        {
            return bad("1:1 sends need contacts_per_user of at least 1".into());
        }
        if self.contacts_per_user > 200 {
            return bad("contacts_per_user is at most 200".into());
        }
        if self.mix.group > 0.0 {
            if self.groups == 0 {
                return bad("group sends need groups of at least 1 (or set mix group=0)".into());
            }
            if self.group_members < 2 || u64::from(self.group_members) > users.min(64) {
                return bad(format!(
                    "group_members must be between 2 and {} (the users in the scenario, at most 64)",
                    users.min(64)
                ));
            }
            if self.groups > 1000 {
                return bad("groups is at most 1000".into());
            }
            let memberships = u64::from(self.groups) * u64::from(self.group_members);
            if memberships > users * MAX_GROUPS_PER_USER as u64 {
                return bad(format!(
                    "{memberships} group memberships for {users} users: at most {MAX_GROUPS_PER_USER} per user"
                ));
            }
        }
        Ok(())
    }

    /// Sends the schedule holds: `rate x (warmup + duration)`, rounded up.
    pub fn total_sends(&self) -> u64 {
        let secs = (self.warmup + self.duration).as_secs_f64();
        (self.rate * secs).ceil() as u64
    }

    /// Sends scheduled during the warm-up.
    pub fn warmup_sends(&self) -> u64 {
        (self.rate * self.warmup.as_secs_f64()).ceil() as u64
    }

    /// Whether the scenario uses groups at all.
    pub fn uses_groups(&self) -> bool {
        self.mix.group > 0.0 && self.groups > 0
    }

    /// The number of users.
    pub fn users(&self) -> usize {
        self.users_per_region as usize * self.topology.regions().len()
    }

    /// The scenario as the report shows it.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "topology": self.topology_path.display().to_string(),
            "regions": self.topology.regions().iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            "users_per_region": self.users_per_region,
            "devices_per_user": self.devices_per_user,
            "contacts_per_user": self.contacts_per_user,
            "sizes": self.sizes.to_string(),
            "mean_size_bytes": self.sizes.mean(),
            "rate": self.rate,
            "duration": format_duration(self.duration),
            "warmup": format_duration(self.warmup),
            "drain": format_duration(self.drain),
            "mix": self.mix,
            "groups": if self.uses_groups() { self.groups } else { 0 },
            "group_members": self.group_members,
            "fetch": self.fetch.to_string(),
            "seed": self.seed,
            "max_in_flight": self.max_in_flight,
            "total_sends": self.total_sends(),
        })
    }
}

/// Room for ten seconds of sends, at least 1000.
fn default_in_flight(rate: f64) -> usize {
    if !rate.is_finite() || rate <= 0.0 {
        return 1000;
    }
    ((rate * 10.0).ceil() as usize).clamp(1000, 1_000_000)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    fn build(file: &str, o: &Overrides) -> Result<Scenario> {
        testkit::build(testkit::two_regions(), file, o)
    }

    #[test]
    fn defaults_make_a_valid_scenario() {
        let s = build("", &Overrides::default()).unwrap();
        assert_eq!(s.users_per_region, defaults::USERS_PER_REGION);
        assert_eq!(s.rate, defaults::RATE);
        assert_eq!(s.duration, Duration::from_secs(30));
        assert_eq!(s.groups, 4, "two groups per region by default");
        assert_eq!(
            s.fetch,
            FetchMode::Push {
                fallback: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(s.total_sends(), 3500);
        assert_eq!(s.warmup_sends(), 500);
        assert_eq!(s.max_in_flight, 1000);
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = r#"
rate = 50
duration = "10s"
users_per_region = 3
fetch = "poll:250ms"
mix = "same=1,cross=1"
fallback_poll = "off"
"#;
        let o = Overrides::from(ScenarioFile {
            rate: Some(20.0),
            warmup: Some("0s".into()),
            ..ScenarioFile::default()
        });
        let s = build(file, &o).unwrap();
        assert_eq!(s.rate, 20.0);
        assert_eq!(s.duration, Duration::from_secs(10));
        assert_eq!(s.warmup, Duration::ZERO);
        assert_eq!(s.users_per_region, 3);
        assert_eq!(
            s.fetch,
            FetchMode::Poll {
                interval: Duration::from_millis(250)
            }
        );
        assert_eq!(s.mix.group, 0.0);
        assert!(!s.uses_groups());
        assert_eq!(s.total_sends(), 200);
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<ScenarioFile>("rate = 1\nspeed = 2").is_err());
    }

    #[test]
    fn invalid_scenarios_name_the_setting() {
        let cases: &[(&str, &str)] = &[
            ("rate = 0", "rate"),
            ("rate = -5.0", "rate"),
            ("duration = \"0s\"", "duration"),
            ("duration = \"20\"", "unit"),
            ("users_per_region = 0", "users_per_region"),
            ("devices_per_user = 17", "devices_per_user"),
            ("users_per_region = 1", "same-region"),
            ("mix = \"group=1\"\ngroups = 0", "groups"),
            ("mix = \"group=1\"\ngroup_members = 1", "group_members"),
            ("mix = \"group=1\"\ngroup_members = 30", "group_members"),
            ("mix = \"group=1\"\ngroups = 200", "memberships"),
            ("rate = 100000\nduration = \"24h\"", "exceeds"),
            ("users_per_region = 5000\ndevices_per_user = 4", "devices"),
            ("contacts_per_user = 0", "contacts_per_user"),
            ("sizes = \"8\"", "size"),
            ("max_in_flight = 0", "max_in_flight"),
            ("fetch = \"pull\"", "fetch"),
        ];
        for (file, word) in cases {
            let err = build(file, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains(word), "{file}: {err}");
        }
    }

    #[test]
    fn one_region_topologies_need_no_cross_region_sends() {
        let err = testkit::build(testkit::one_region(), "", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("cross-region"), "{err}");
        assert!(testkit::build(testkit::one_region(), "", &testkit::same_region_only()).is_ok());
    }

    #[test]
    fn scenario_files_resolve_the_topology_beside_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("topo.toml"), testkit::two_regions_text()).unwrap();
        let scenario = dir.path().join("s.toml");
        std::fs::write(&scenario, "topology = \"topo.toml\"\nrate = 7\n").unwrap();
        let s = Scenario::load(&Overrides {
            scenario_file: Some(scenario),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(s.rate, 7.0);
        assert_eq!(s.topology.regions().len(), 2);
        let missing = Scenario::load(&Overrides::default()).unwrap_err();
        assert!(missing.to_string().contains("--topology"));
    }
}
