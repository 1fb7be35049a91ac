//! The population (users, their devices, contacts and groups) and the send
//! schedule, both derived deterministically: the population from the scenario's
//! shape alone (so a provisioned state directory serves runs with any seed), the
//! schedule from the seed. Send `i` is due at `i / rate` seconds after the start
//! and is computed on its own, so the schedule never has to be held in memory.

use crate::error::{Error, Result};
use crate::scenario::{MAX_GROUPS_PER_USER, Scenario};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rossby_keyspace::RegionId;
use std::time::Duration;

/// Seed of the population: fixed, so the same shape always gives the same
/// contacts and groups.
const POPULATION_SEED: u64 = 0x524f_5353_4259_4c54;

/// Marks a region pair whose destination is a whole group.
pub const GROUP_DESTINATION: u8 = u8::MAX;

/// One region of the scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionPlan {
    /// The region's code.
    pub code: RegionId,
    /// Its name.
    pub name: String,
}

/// One user: a box homed in `region` with `devices`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPlan {
    /// Index in [`Population::users`].
    pub index: u32,
    /// Index of its region in [`Population::regions`].
    pub region: u8,
    /// The identifier it registers (an e-mail address under `loadtest.example`).
    pub identifier: String,
    /// Its devices' slots in [`Population::devices`]; the first registers.
    pub devices: Vec<u32>,
    /// Users of its region it sends 1:1 messages to.
    pub same_region_contacts: Vec<u32>,
    /// Users of other regions it sends 1:1 messages to.
    pub cross_region_contacts: Vec<u32>,
    /// Groups it is a member of.
    pub groups: Vec<u32>,
}

impl UserPlan {
    /// Every user this one may exchange 1:1 messages with.
    pub fn contacts(&self) -> impl Iterator<Item = u32> + '_ {
        self.same_region_contacts
            .iter()
            .chain(&self.cross_region_contacts)
            .copied()
    }
}

/// One device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePlan {
    /// Index in [`Population::devices`].
    pub slot: u32,
    /// Its user.
    pub user: u32,
    /// Its index among the user's devices (0 registers, the others are linked).
    pub index: u32,
    /// Its user's region.
    pub region: u8,
}

impl DevicePlan {
    /// File name of its state in the state directory.
    pub fn state_file(&self) -> String {
        format!("u{}-d{}.state", self.user, self.index)
    }
}

/// One MLS group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPlan {
    /// Index in [`Population::groups`].
    pub index: u32,
    /// Its name (unique per creator).
    pub name: String,
    /// The user that creates it.
    pub creator: u32,
    /// Member users, the creator first.
    pub members: Vec<u32>,
}

/// Everything the scenario's users are.
#[derive(Clone, Debug)]
pub struct Population {
    /// The regions, in topology order.
    pub regions: Vec<RegionPlan>,
    /// The users, region by region.
    pub users: Vec<UserPlan>,
    /// The devices, user by user.
    pub devices: Vec<DevicePlan>,
    /// The groups (empty when the mix has no group sends).
    pub groups: Vec<GroupPlan>,
    same_region_senders: Vec<u32>,
    cross_region_senders: Vec<u32>,
}

/// What a send goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A user in the sender's region.
    SameRegion(u32),
    /// A user in another region.
    CrossRegion(u32),
    /// A group.
    Group(u32),
}

/// One send of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedSend {
    /// Its index (also in the message text).
    pub index: u64,
    /// When it is due, from the start of the run.
    pub offset: Duration,
    /// The sending device's slot.
    pub sender: u32,
    /// Where it goes.
    pub destination: Destination,
    /// Bytes of message text.
    pub size: usize,
}

impl Population {
    /// Builds the population of `scenario`; `tag` makes the identifiers unique
    /// to one provisioning.
    pub fn build(scenario: &Scenario, tag: &str) -> Result<Population> {
        let regions: Vec<RegionPlan> = scenario
            .topology
            .regions()
            .iter()
            .map(|r| RegionPlan {
                code: r.code,
                name: r.name.clone(),
            })
            .collect();
        let per_region = scenario.users_per_region;
        let mut users = Vec::new();
        let mut devices = Vec::new();
        for (r, _) in regions.iter().enumerate() {
            let region = u8::try_from(r).map_err(|_| Error::Scenario("too many regions".into()))?;
            for _ in 0..per_region {
                let index = u32::try_from(users.len())
                    .map_err(|_| Error::Scenario("too many users".into()))?;
                let mut slots = Vec::new();
                for d in 0..scenario.devices_per_user {
                    let slot = u32::try_from(devices.len())
                        .map_err(|_| Error::Scenario("too many devices".into()))?;
                    devices.push(DevicePlan {
                        slot,
                        user: index,
                        index: d,
                        region,
                    });
                    slots.push(slot);
                }
                users.push(UserPlan {
                    index,
                    region,
                    identifier: format!("lt-{tag}-u{index}@loadtest.example"),
                    devices: slots,
                    same_region_contacts: Vec::new(),
                    cross_region_contacts: Vec::new(),
                    groups: Vec::new(),
                });
            }
        }
        let mut rng = StdRng::seed_from_u64(POPULATION_SEED);
        assign_contacts(scenario, &mut users, &mut rng);
        let groups = if scenario.uses_groups() {
            assign_groups(scenario, &mut users, &mut rng)?
        } else {
            Vec::new()
        };
        let same_region_senders: Vec<u32> = users
            .iter()
            .filter(|u| !u.same_region_contacts.is_empty())
            .map(|u| u.index)
            .collect();
        let cross_region_senders: Vec<u32> = users
            .iter()
            .filter(|u| !u.cross_region_contacts.is_empty())
            .map(|u| u.index)
            .collect();
        if scenario.mix.same_region > 0.0 && same_region_senders.is_empty() {
            return Err(Error::Scenario(
                "no user has a same-region contact: raise contacts_per_user".into(),
            ));
        }
        if scenario.mix.cross_region > 0.0 && cross_region_senders.is_empty() {
            return Err(Error::Scenario(
                "no user has a cross-region contact: raise contacts_per_user".into(),
            ));
        }
        Ok(Population {
            regions,
            users,
            devices,
            groups,
            same_region_senders,
            cross_region_senders,
        })
    }

    /// Send `index` of the schedule.
    pub fn planned_send(&self, scenario: &Scenario, index: u64) -> PlannedSend {
        let mut rng = StdRng::seed_from_u64(mix64(scenario.seed ^ mix64(index)));
        let offset = Duration::from_secs_f64(index as f64 / scenario.rate);
        let size = scenario.sizes.sample(&mut rng);
        let mix = scenario.mix;
        let roll: f64 = rng.random();
        let mut kind = if roll < mix.same_region {
            Kind::Same
        } else if roll < mix.same_region + mix.cross_region {
            Kind::Cross
        } else {
            Kind::Group
        };
        // Rounding can land on a kind with no weight; fall back to one that has
        // senders (validation guarantees at least one).
        if kind == Kind::Group && self.groups.is_empty() {
            kind = Kind::Cross;
        }
        if kind == Kind::Cross && self.cross_region_senders.is_empty() {
            kind = Kind::Same;
        }
        if kind == Kind::Same && self.same_region_senders.is_empty() {
            kind = if self.cross_region_senders.is_empty() {
                Kind::Group
            } else {
                Kind::Cross
            };
        }
        let want_group = kind == Kind::Group;
        let want_cross = kind == Kind::Cross;
        let (sender_user, destination) = if want_group {
            let g = &self.groups[rng.random_range(0..self.groups.len())];
            let member = g.members[rng.random_range(0..g.members.len())];
            (member, Destination::Group(g.index))
        } else if want_cross {
            let u = self.cross_region_senders[rng.random_range(0..self.cross_region_senders.len())];
            let list = &self.users[u as usize].cross_region_contacts;
            (
                u,
                Destination::CrossRegion(list[rng.random_range(0..list.len())]),
            )
        } else {
            let u = self.same_region_senders[rng.random_range(0..self.same_region_senders.len())];
            let list = &self.users[u as usize].same_region_contacts;
            (
                u,
                Destination::SameRegion(list[rng.random_range(0..list.len())]),
            )
        };
        let devices = &self.users[sender_user as usize].devices;
        let sender = devices[rng.random_range(0..devices.len())];
        PlannedSend {
            index,
            offset,
            sender,
            destination,
            size,
        }
    }

    /// The devices that must decrypt a send exactly once: every device of every
    /// recipient box, and the sender's other devices (they get a copy), never
    /// the sending device.
    pub fn expected_devices(&self, send: &PlannedSend) -> Vec<u32> {
        let sender_user = self.devices[send.sender as usize].user;
        let mut users: Vec<u32> = match send.destination {
            Destination::SameRegion(u) | Destination::CrossRegion(u) => vec![u, sender_user],
            Destination::Group(g) => self.groups[g as usize].members.clone(),
        };
        users.sort_unstable();
        users.dedup();
        users
            .iter()
            .flat_map(|u| self.users[*u as usize].devices.iter().copied())
            .filter(|d| *d != send.sender)
            .collect()
    }

    /// The region pair of a send: the sender's region and the recipient's (or
    /// [`GROUP_DESTINATION`]).
    pub fn send_pair(&self, send: &PlannedSend) -> (u8, u8) {
        let from = self.devices[send.sender as usize].region;
        let to = match send.destination {
            Destination::SameRegion(u) | Destination::CrossRegion(u) => {
                self.users[u as usize].region
            }
            Destination::Group(_) => GROUP_DESTINATION,
        };
        (from, to)
    }

    /// A region's name, or `group` for [`GROUP_DESTINATION`].
    pub fn region_name(&self, region: u8) -> &str {
        if region == GROUP_DESTINATION {
            return "group";
        }
        self.regions
            .get(usize::from(region))
            .map_or("?", |r| r.name.as_str())
    }
}

/// Gives each user its same- and cross-region contacts, then makes the relation
/// symmetric (a recipient must know its sender's keys as well).
fn assign_contacts(scenario: &Scenario, users: &mut [UserPlan], rng: &mut StdRng) {
    let k = scenario.contacts_per_user as usize;
    let (mut k_same, mut k_cross) = match (
        scenario.mix.same_region > 0.0,
        scenario.mix.cross_region > 0.0,
    ) {
        (true, true) => (k.div_ceil(2), k / 2),
        (true, false) => (k, 0),
        (false, true) => (0, k),
        (false, false) => (0, 0),
    };
    if scenario.mix.same_region > 0.0 {
        k_same = k_same.max(1);
    }
    if scenario.mix.cross_region > 0.0 {
        k_cross = k_cross.max(1);
    }
    let count = users.len();
    let mut same: Vec<Vec<u32>> = vec![Vec::new(); count];
    let mut cross: Vec<Vec<u32>> = vec![Vec::new(); count];
    for u in 0..count {
        let region = users[u].region;
        let mut same_pool: Vec<u32> = users
            .iter()
            .filter(|v| v.region == region && v.index as usize != u)
            .map(|v| v.index)
            .collect();
        let mut cross_pool: Vec<u32> = users
            .iter()
            .filter(|v| v.region != region)
            .map(|v| v.index)
            .collect();
        same_pool.shuffle(rng);
        cross_pool.shuffle(rng);
        for v in same_pool.into_iter().take(k_same) {
            same[u].push(v);
            same[v as usize].push(u as u32);
        }
        for v in cross_pool.into_iter().take(k_cross) {
            cross[u].push(v);
            cross[v as usize].push(u as u32);
        }
    }
    for (u, user) in users.iter_mut().enumerate() {
        let mut s = std::mem::take(&mut same[u]);
        s.sort_unstable();
        s.dedup();
        let mut c = std::mem::take(&mut cross[u]);
        c.sort_unstable();
        c.dedup();
        user.same_region_contacts = s;
        user.cross_region_contacts = c;
    }
}

/// Creates the groups: creators spread over the users, members chosen among the
/// users with the fewest memberships so far (any region).
fn assign_groups(
    scenario: &Scenario,
    users: &mut [UserPlan],
    rng: &mut StdRng,
) -> Result<Vec<GroupPlan>> {
    let count = users.len();
    let mut memberships = vec![0usize; count];
    let mut groups = Vec::new();
    let g_total = scenario.groups as usize;
    for g in 0..g_total {
        let creator = g * count / g_total;
        memberships[creator] += 1;
        let mut members = vec![creator as u32];
        let mut candidates: Vec<(usize, u64, u32)> = (0..count)
            .filter(|u| *u != creator)
            .map(|u| (memberships[u], rng.random::<u64>(), u as u32))
            .collect();
        candidates.sort_unstable();
        for (_, _, u) in candidates
            .into_iter()
            .take(scenario.group_members as usize - 1)
        {
            memberships[u as usize] += 1;
            members.push(u);
        }
        let index = u32::try_from(g).map_err(|_| Error::Scenario("too many groups".into()))?;
        for m in &members {
            users[*m as usize].groups.push(index);
        }
        groups.push(GroupPlan {
            index,
            name: format!("lt-g{g}"),
            creator: creator as u32,
            members,
        });
    }
    if let Some(max) = memberships.iter().max()
        && *max > MAX_GROUPS_PER_USER
    {
        return Err(Error::Scenario(format!(
            "a user would be in {max} groups: at most {MAX_GROUPS_PER_USER} (fewer groups or members)"
        )));
    }
    Ok(groups)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Same,
    Cross,
    Group,
}

/// SplitMix64's finaliser: spreads neighbouring indices over the seed space.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Overrides;
    use crate::testkit;

    fn scenario(extra: &str) -> Scenario {
        testkit::build(testkit::two_regions(), extra, &Overrides::default()).unwrap()
    }

    #[test]
    fn the_population_has_the_scenarios_shape() {
        let s =
            scenario("users_per_region = 3\ndevices_per_user = 2\ngroups = 2\ngroup_members = 3");
        let p = Population::build(&s, "t1").unwrap();
        assert_eq!(p.users.len(), 6);
        assert_eq!(p.devices.len(), 12);
        assert_eq!(p.users[4].region, 1);
        assert_eq!(p.users[4].devices, vec![8, 9]);
        assert_eq!(p.users[0].identifier, "lt-t1-u0@loadtest.example");
        assert_eq!(p.devices[9].state_file(), "u4-d1.state");
        assert_eq!(p.groups.len(), 2);
        for g in &p.groups {
            assert_eq!(g.members.len(), 3);
            assert_eq!(g.members[0], g.creator);
            let mut m = g.members.clone();
            m.sort_unstable();
            m.dedup();
            assert_eq!(m.len(), 3, "members are distinct");
        }
        for u in &p.users {
            for c in &u.same_region_contacts {
                assert_eq!(p.users[*c as usize].region, u.region);
                assert!(p.users[*c as usize].same_region_contacts.contains(&u.index));
            }
            for c in &u.cross_region_contacts {
                assert_ne!(p.users[*c as usize].region, u.region);
                assert!(
                    p.users[*c as usize]
                        .cross_region_contacts
                        .contains(&u.index)
                );
            }
        }
        // The same shape gives the same population.
        let again = Population::build(&s, "t1").unwrap();
        assert_eq!(again.users, p.users);
        assert_eq!(again.groups, p.groups);
    }

    #[test]
    fn the_schedule_is_deterministic_and_follows_the_mix() {
        let s = scenario("users_per_region = 4\nrate = 10\nmix = \"same=2,cross=1,group=1\"");
        let p = Population::build(&s, "x").unwrap();
        let a: Vec<_> = (0..400).map(|i| p.planned_send(&s, i)).collect();
        let b: Vec<_> = (0..400).map(|i| p.planned_send(&s, i)).collect();
        assert_eq!(a, b);
        assert_eq!(a[25].offset, Duration::from_millis(2500));
        let (mut same, mut cross, mut group) = (0, 0, 0);
        for send in &a {
            let from = p.devices[send.sender as usize].region;
            match send.destination {
                Destination::SameRegion(u) => {
                    same += 1;
                    assert_eq!(p.users[u as usize].region, from);
                }
                Destination::CrossRegion(u) => {
                    cross += 1;
                    assert_ne!(p.users[u as usize].region, from);
                }
                Destination::Group(g) => {
                    group += 1;
                    let sender_user = p.devices[send.sender as usize].user;
                    assert!(p.groups[g as usize].members.contains(&sender_user));
                }
            }
        }
        assert!((150..250).contains(&same), "{same}");
        assert!((60..140).contains(&cross), "{cross}");
        assert!((60..140).contains(&group), "{group}");
        // Another seed, another schedule.
        let mut other = s.clone();
        other.seed = 2;
        let c: Vec<_> = (0..400).map(|i| p.planned_send(&other, i)).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn expected_devices_cover_recipients_and_the_senders_other_devices() {
        let s = scenario("users_per_region = 2\ndevices_per_user = 3\nmix = \"same=1\"");
        let p = Population::build(&s, "x").unwrap();
        let send = PlannedSend {
            index: 0,
            offset: Duration::ZERO,
            sender: 1,
            destination: Destination::SameRegion(1),
            size: 64,
        };
        assert_eq!(p.expected_devices(&send), vec![0, 2, 3, 4, 5]);
        assert_eq!(p.send_pair(&send), (0, 0));
    }
}
