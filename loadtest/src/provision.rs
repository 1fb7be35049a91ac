//! Provisioning: turning the population into accounts, devices, contacts and
//! groups on the gateways, with every device's state file in a state directory.
//!
//! It is a phase of its own and resumable: each step checks what the state files
//! already hold and does only what is missing, so an interrupted provisioning is
//! finished by running it again with the same `--state-dir`. The directory's
//! `manifest.json` names the scenario shape it was made for and the tag that makes
//! its identifiers unique; once complete, runs reuse it without touching the
//! accounts.
//!
//! Steps, per user (several users at a time): register the first device (its code
//! read from the gateways' `file:` verifier output), authorize it, link the other
//! devices (the grant is kept in a file until imported, so a crash between
//! linking and importing is recovered). Then every device refreshes its own device
//! list, publishes MLS KeyPackages (when the scenario has groups) and looks up its
//! contacts; each group's creator creates it and adds its members; every member
//! device fetches until it is in all its groups at the creator's epoch.

use crate::error::{Error, Result};
use crate::plan::{DevicePlan, Population};
use crate::progress::Progress;
use crate::scenario::Scenario;
use crate::stats::{Op, Stats};
use crate::target::Targets;
use rossby_client::Client;
use rossby_client::groups::state::Membership;
use rossby_gateway::verifier::CodeBook;
use rossby_keyspace::BoxId;
use rossby_protocol::pb;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

/// Name of the manifest in the state directory.
pub const MANIFEST: &str = "manifest.json";
/// Users (and devices) provisioned at once. Provisioning is latency-bound
/// (registration, code, authorization, lookups), so many run together.
const CONCURRENCY: usize = 32;
/// How long to wait for a verification code to appear in the codes file.
const CODE_WAIT: Duration = Duration::from_secs(15);
/// Fetch rounds a device may need to join its groups.
const JOIN_ROUNDS: usize = 60;

/// What the state directory was provisioned for.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Format of this file.
    pub format: u32,
    /// Makes the identifiers unique to this directory.
    pub tag: String,
    /// The scenario shape (see [`shape`]).
    pub shape: String,
    /// Every user's identifier and box, once known.
    pub users: Vec<ManifestUser>,
    /// All steps finished.
    pub complete: bool,
}

/// One user in the manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestUser {
    /// Identifier.
    pub identifier: String,
    /// Home region code.
    pub region: u16,
    /// Box id, once authorized.
    pub box_id: String,
    /// Its devices' ids (hex), in device order: what lets a generator of several
    /// tell which device of another generator sent a message.
    #[serde(default)]
    pub devices: Vec<String>,
}

/// What provisioning did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// The directory was complete already and reused as is.
    pub reused: bool,
    /// Accounts registered now.
    pub registered: u64,
    /// Devices linked now.
    pub linked: u64,
    /// Contact lookups made now.
    pub contacts_looked_up: u64,
    /// Groups created now.
    pub groups_created: u64,
    /// Group members added now.
    pub members_added: u64,
    /// Seconds it took.
    pub seconds: f64,
}

/// The opened devices of a provisioned population.
pub struct Fleet {
    /// One SDK client per device, by slot; `None` for a device another
    /// generator drives.
    pub clients: Vec<Option<Arc<Client>>>,
    /// Device ids to slots (every device, whoever drives it).
    pub slots_by_device: HashMap<[u8; 16], u32>,
    /// Box id (UUID text) per user.
    pub boxes: Vec<String>,
}

/// The scenario shape a state directory fits: everything the population depends
/// on. Rate, duration, sizes, the mix's weights and the seed are free to change.
pub fn shape(scenario: &Scenario) -> String {
    let codes: Vec<String> = scenario
        .topology
        .regions()
        .iter()
        .map(|r| r.code.0.to_string())
        .collect();
    let groups = if scenario.uses_groups() {
        format!("{}x{}", scenario.groups, scenario.group_members)
    } else {
        "none".into()
    };
    format!(
        "regions={};users_per_region={};devices_per_user={};contacts_per_user={};same={};cross={};groups={}",
        codes.join(","),
        scenario.users_per_region,
        scenario.devices_per_user,
        scenario.contacts_per_user,
        scenario.mix.same_region > 0.0,
        scenario.mix.cross_region > 0.0,
        groups
    )
}

/// Reads the manifest of `dir`, or makes a new one (with a fresh tag) when there
/// is none. A manifest for another shape is an error.
pub fn load_manifest(dir: &Path, scenario: &Scenario) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let want = shape(scenario);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::StateDir {
                path: dir.to_path_buf(),
                reason: format!("{MANIFEST} is not valid: {e}"),
            })?;
            if m.shape != want {
                return Err(Error::StateDir {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "it was provisioned for another scenario shape ({}); this scenario needs ({want}): use another --state-dir",
                        m.shape
                    ),
                });
            }
            Ok(m)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest {
            format: 1,
            tag: hex::encode(rand::random::<[u8; 4]>()),
            shape: want,
            users: Vec::new(),
            complete: false,
        }),
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

fn save_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST);
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let text = serde_json::to_string_pretty(m).map_err(|e| Error::StateDir {
        path: dir.to_path_buf(),
        reason: format!("cannot encode the manifest: {e}"),
    })?;
    std::fs::write(&tmp, text).map_err(|e| Error::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("cannot replace", &path, e))
}

/// Provisioning counters, shared by the tasks.
#[derive(Default)]
struct Counters {
    users_done: AtomicU64,
    registered: AtomicU64,
    linked: AtomicU64,
    lookups: AtomicU64,
    groups_created: AtomicU64,
    members_added: AtomicU64,
}

struct Context {
    population: Population,
    targets: Targets,
    dir: PathBuf,
    codes: Option<Mutex<CodeBook>>,
    stats: Arc<Stats>,
    counters: Counters,
}

/// Opens the devices of a complete state directory.
pub async fn open_fleet(population: &Population, targets: &Targets, dir: &Path) -> Result<Fleet> {
    let mut clients = Vec::with_capacity(population.devices.len());
    let mut slots_by_device = HashMap::new();
    for device in &population.devices {
        let client = open_device(targets, dir, device, false).await?;
        if !client.is_authorized().await {
            return Err(Error::StateDir {
                path: dir.to_path_buf(),
                reason: format!("{} is not authorized: provision again", device.state_file()),
            });
        }
        slots_by_device.insert(*client.device_id().as_bytes(), device.slot);
        clients.push(Some(Arc::new(client)));
    }
    let mut boxes = Vec::with_capacity(population.users.len());
    for user in &population.users {
        let first = user
            .devices
            .first()
            .and_then(|d| clients.get(*d as usize))
            .and_then(Option::as_ref);
        let b = match first {
            Some(c) => c.box_id().await,
            None => None,
        };
        let b = b.ok_or_else(|| Error::StateDir {
            path: dir.to_path_buf(),
            reason: format!("user {} has no box", user.identifier),
        })?;
        boxes.push(uuid_text(&b));
    }
    Ok(Fleet {
        clients,
        slots_by_device,
        boxes,
    })
}

/// Opens the devices one generator drives (`drives(slot)`) from a complete
/// state directory; the other generators' boxes and device ids come from the
/// manifest, so only the driven devices' state files need to be present.
pub async fn open_fleet_part(
    population: &Population,
    targets: &Targets,
    dir: &Path,
    manifest: &Manifest,
    drives: impl Fn(u32) -> bool,
) -> Result<Fleet> {
    let bad = |reason: String| Error::StateDir {
        path: dir.to_path_buf(),
        reason,
    };
    if !manifest.complete {
        return Err(bad(
            "it is not provisioned: provision it once for every generator with --phase provision (without --generator), then copy it to every generator host".into(),
        ));
    }
    if manifest.users.len() != population.users.len() {
        return Err(bad(format!(
            "{MANIFEST} lists {} users; the scenario has {}",
            manifest.users.len(),
            population.users.len()
        )));
    }
    let mut boxes = Vec::with_capacity(population.users.len());
    let mut slots_by_device = HashMap::new();
    for (user, entry) in population.users.iter().zip(&manifest.users) {
        if entry.identifier != user.identifier {
            return Err(bad(format!(
                "{MANIFEST} names user {} {}; the scenario expects {}",
                user.index, entry.identifier, user.identifier
            )));
        }
        if entry.devices.len() != user.devices.len() {
            return Err(bad(format!(
                "{MANIFEST} has no device ids for {} (written by an older rossby-loadtest?): provision a new state directory to run several generators",
                user.identifier
            )));
        }
        for (slot, id) in user.devices.iter().zip(&entry.devices) {
            let raw: [u8; 16] = hex::decode(id)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad(format!("{MANIFEST}: device id {id:?} is not 32 hex digits")))?;
            slots_by_device.insert(raw, *slot);
        }
        boxes.push(entry.box_id.clone());
    }
    let mut clients = Vec::with_capacity(population.devices.len());
    for device in &population.devices {
        if !drives(device.slot) {
            clients.push(None);
            continue;
        }
        let client = open_device(targets, dir, device, false).await?;
        if !client.is_authorized().await {
            return Err(bad(format!(
                "{} is not authorized: provision again",
                device.state_file()
            )));
        }
        if slots_by_device.get(client.device_id().as_bytes()) != Some(&device.slot) {
            return Err(bad(format!(
                "{} is not the device {MANIFEST} names for it",
                device.state_file()
            )));
        }
        clients.push(Some(Arc::new(client)));
    }
    Ok(Fleet {
        clients,
        slots_by_device,
        boxes,
    })
}

async fn open_device(
    targets: &Targets,
    dir: &Path,
    device: &DevicePlan,
    create: bool,
) -> Result<Client> {
    let config = targets.client_config(dir, device, create)?;
    Client::open(config)
        .await
        .map_err(|e| Error::client(format!("opening {}", device.state_file()), e))
}

fn uuid_text(b: &BoxId) -> String {
    uuid::Uuid::from_bytes(*b.as_bytes())
        .hyphenated()
        .to_string()
}

/// Provisions whatever `dir` still lacks for `population` (registering through
/// the codes in `codes`), within `timeout`, and returns the opened fleet.
#[allow(clippy::too_many_arguments)]
pub async fn provision(
    population: Population,
    targets: &Targets,
    dir: &Path,
    manifest: Manifest,
    codes: Option<PathBuf>,
    stats: Arc<Stats>,
    progress: &Progress,
    timeout: Duration,
) -> Result<(Fleet, Summary)> {
    let started = Instant::now();
    if manifest.complete {
        let fleet = open_fleet(&population, targets, dir).await?;
        return Ok((
            fleet,
            Summary {
                reused: true,
                seconds: started.elapsed().as_secs_f64(),
                ..Summary::default()
            },
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create state directory", dir, e))?;
    let mut manifest = manifest;
    save_manifest(dir, &manifest)?;
    let ctx = Arc::new(Context {
        population,
        targets: targets.clone(),
        dir: dir.to_path_buf(),
        codes: codes.map(|p| Mutex::new(CodeBook::new(p))),
        stats,
        counters: Counters::default(),
    });
    let work = run_steps(ctx.clone(), progress);
    let fleet = match tokio::time::timeout(timeout, work).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(Error::Deadline {
                phase: "provisioning",
                seconds: timeout.as_secs(),
            });
        }
    };
    manifest.users = ctx
        .population
        .users
        .iter()
        .zip(&fleet.boxes)
        .map(|(u, b)| ManifestUser {
            identifier: u.identifier.clone(),
            region: ctx.population.regions[usize::from(u.region)].code.0,
            box_id: b.clone(),
            devices: u
                .devices
                .iter()
                .filter_map(|d| fleet.clients.get(*d as usize).and_then(Option::as_ref))
                .map(|c| hex::encode(c.device_id().as_bytes()))
                .collect(),
        })
        .collect();
    manifest.complete = true;
    save_manifest(dir, &manifest)?;
    let c = &ctx.counters;
    Ok((
        fleet,
        Summary {
            reused: false,
            registered: c.registered.load(Ordering::Relaxed),
            linked: c.linked.load(Ordering::Relaxed),
            contacts_looked_up: c.lookups.load(Ordering::Relaxed),
            groups_created: c.groups_created.load(Ordering::Relaxed),
            members_added: c.members_added.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}

async fn run_steps(ctx: Arc<Context>, progress: &Progress) -> Result<Fleet> {
    let users = ctx.population.users.len();
    // 1. Accounts and devices.
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut set = JoinSet::new();
    for u in 0..users {
        let ctx = ctx.clone();
        let limit = limit.clone();
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let r = ensure_user(&ctx, u).await;
            ctx.counters.users_done.fetch_add(1, Ordering::Relaxed);
            (u, r)
        });
    }
    let mut by_user: Vec<Option<Vec<Arc<Client>>>> = vec![None; users];
    let mut last_note = Instant::now();
    while let Some(joined) = set.join_next().await {
        let (u, result) = joined.map_err(|e| Error::Provision {
            who: "a user".into(),
            reason: format!("task failed: {e}"),
        })?;
        by_user[u] = Some(result?);
        if last_note.elapsed() >= progress.interval() {
            last_note = Instant::now();
            progress.update(&format!(
                "provisioning: accounts {}/{users}",
                ctx.counters.users_done.load(Ordering::Relaxed)
            ));
        }
    }
    let mut clients: Vec<Arc<Client>> = Vec::with_capacity(ctx.population.devices.len());
    for user in by_user.into_iter() {
        let user = user.ok_or_else(|| Error::Provision {
            who: "a user".into(),
            reason: "not provisioned".into(),
        })?;
        clients.extend(user);
    }
    let mut slots_by_device = HashMap::new();
    for (slot, c) in clients.iter().enumerate() {
        slots_by_device.insert(*c.device_id().as_bytes(), slot as u32);
    }
    let mut boxes = Vec::with_capacity(users);
    for user in &ctx.population.users {
        let first = &clients[user.devices[0] as usize];
        let b = first.box_id().await.ok_or_else(|| Error::Provision {
            who: user.identifier.clone(),
            reason: "authorized without a box".into(),
        })?;
        boxes.push(uuid_text(&b));
    }
    progress.update(&format!(
        "provisioning: accounts {users}/{users}, contacts..."
    ));

    // 2. Own devices, KeyPackages and contacts, per device.
    let mut set = JoinSet::new();
    for device in &ctx.population.devices {
        let ctx = ctx.clone();
        let client = clients[device.slot as usize].clone();
        let limit = limit.clone();
        let slot = device.slot;
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            prepare_device(&ctx, slot, &client).await
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| Error::Provision {
            who: "a device".into(),
            reason: format!("task failed: {e}"),
        })??;
    }

    // 3. Groups.
    if !ctx.population.groups.is_empty() {
        progress.update("provisioning: groups...");
        ensure_groups(&ctx, &clients, &boxes).await?;
    }
    Ok(Fleet {
        clients: clients.into_iter().map(Some).collect(),
        slots_by_device,
        boxes,
    })
}

/// Registers and authorizes the user's first device and links the others.
async fn ensure_user(ctx: &Context, u: usize) -> Result<Vec<Arc<Client>>> {
    let user = &ctx.population.users[u];
    let devices: Vec<&DevicePlan> = user
        .devices
        .iter()
        .map(|d| &ctx.population.devices[*d as usize])
        .collect();
    let region = usize::from(user.region);
    let pair = (user.region, user.region);
    let first = open_device(&ctx.targets, &ctx.dir, devices[0], true).await?;
    if !first.is_authorized().await {
        register(
            ctx,
            &first,
            &user.identifier,
            ctx.population.regions[region].code,
            pair,
        )
        .await?;
        // A fresh account: any other device state left from an earlier attempt
        // belongs to a box that no longer has it.
        for d in &devices[1..] {
            let _ = std::fs::remove_file(ctx.dir.join(d.state_file()));
            let _ = std::fs::remove_file(ctx.dir.join(format!("{}.key", d.state_file())));
        }
    }
    let mut clients = vec![Arc::new(first)];
    for d in &devices[1..] {
        let client = open_device(&ctx.targets, &ctx.dir, d, true).await?;
        if !client.is_authorized().await {
            link(ctx, &clients[0], &client, d, pair).await?;
        }
        clients.push(Arc::new(client));
    }
    Ok(clients)
}

async fn register(
    ctx: &Context,
    client: &Client,
    identifier: &str,
    region: rossby_keyspace::RegionId,
    pair: (u8, u8),
) -> Result<()> {
    let book = ctx.codes.as_ref().ok_or_else(|| Error::Provision {
        who: identifier.into(),
        reason: "the state directory is not provisioned: pass --codes FILE (the codes file of the gateways' file: verifier) to register users".into(),
    })?;
    let fail = |reason: String| Error::Provision {
        who: identifier.into(),
        reason,
    };
    // A registration left pending by an interrupted run: try its latest code.
    let state = client.state().await;
    if state.registration_pending && state.identifier == identifier {
        let code = {
            let mut b = book.lock().await;
            b.refresh()
                .map_err(|e| Error::io("cannot read codes file", b.path(), e))?;
            b.latest(identifier)
        };
        if let Some(code) = code
            && client.authorize(&code).await.is_ok()
        {
            return Ok(());
        }
    }
    // The gateway answers a bound identifier like a free one; only Authorize
    // says it is bound (to a box whose devices this directory lost): then
    // take it over with a recovery.
    let mut recover = false;
    let started = loop {
        let before = {
            let mut b = book.lock().await;
            b.refresh()
                .map_err(|e| Error::io("cannot read codes file", b.path(), e))?;
            b.count(identifier)
        };
        let started = Instant::now();
        if let Err(e) = client
            .register_homed(identifier, recover, Some(region))
            .await
        {
            ctx.stats.error(Op::Register, crate::stats::error_kind(&e));
            return Err(fail(format!("register: {e}")));
        }
        ctx.stats.record(Op::Register, pair, started.elapsed());
        let deadline = Instant::now() + CODE_WAIT;
        let code = loop {
            {
                let mut b = book.lock().await;
                b.refresh()
                    .map_err(|e| Error::io("cannot read codes file", b.path(), e))?;
                if b.count(identifier) > before
                    && let Some(code) = b.latest(identifier)
                {
                    break code;
                }
            }
            if Instant::now() >= deadline {
                return Err(fail(format!(
                    "no code appeared in {} within {} s: is it the file the gateways' `file:` verifier writes?",
                    book.lock().await.path().display(),
                    CODE_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let started = Instant::now();
        match client.authorize(&code).await {
            Ok(_) => break started,
            Err(e) if !recover && e.status() == Some(pb::Status::AlreadyRegistered) => {
                recover = true;
            }
            Err(e) => {
                ctx.stats.error(Op::Authorize, crate::stats::error_kind(&e));
                return Err(fail(format!("authorize: {e}")));
            }
        }
    };
    ctx.stats.record(Op::Authorize, pair, started.elapsed());
    ctx.counters.registered.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Links `new` to `primary`'s box. The grant is written to a file before it is
/// imported, so a crash in between is finished by the next attempt.
async fn link(
    ctx: &Context,
    primary: &Client,
    new: &Client,
    device: &DevicePlan,
    pair: (u8, u8),
) -> Result<()> {
    let who = device.state_file();
    let fail = |reason: String| Error::Provision {
        who: who.clone(),
        reason,
    };
    let grant_path = ctx.dir.join(format!("{}.grant", device.state_file()));
    if let Ok(grant) = std::fs::read_to_string(&grant_path)
        && new.finish_link(&grant).await.is_ok()
    {
        let _ = std::fs::remove_file(&grant_path);
        ctx.counters.linked.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let started = Instant::now();
    let request = new
        .link_request()
        .await
        .map_err(|e| fail(format!("link request: {e}")))?;
    let grant = primary.link_device(&request).await.map_err(|e| {
        ctx.stats.error(Op::Link, crate::stats::error_kind(&e));
        fail(format!("link: {e}"))
    })?;
    std::fs::write(&grant_path, &grant).map_err(|e| Error::io("cannot write", &grant_path, e))?;
    new.finish_link(&grant)
        .await
        .map_err(|e| fail(format!("importing the grant: {e}")))?;
    let _ = std::fs::remove_file(&grant_path);
    ctx.stats.record(Op::Link, pair, started.elapsed());
    ctx.counters.linked.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Refreshes the device's view of its own devices, publishes KeyPackages when
/// groups are used, and looks up the contacts it does not know yet.
async fn prepare_device(ctx: &Context, slot: u32, client: &Client) -> Result<()> {
    let device = &ctx.population.devices[slot as usize];
    let user = &ctx.population.users[device.user as usize];
    let fail = |what: &str, e: rossby_client::Error| Error::Provision {
        who: device.state_file(),
        reason: format!("{what}: {e}"),
    };
    client
        .devices()
        .await
        .map_err(|e| fail("listing own devices", e))?;
    if !user.groups.is_empty() {
        client
            .publish_key_packages()
            .await
            .map_err(|e| fail("publishing KeyPackages", e))?;
    }
    let known: HashSet<String> = client
        .contacts()
        .await
        .into_iter()
        .filter(|c| !c.devices.is_empty())
        .map(|c| c.identifier)
        .collect();
    for contact in user.contacts() {
        let identifier = &ctx.population.users[contact as usize].identifier;
        if known.contains(identifier) {
            continue;
        }
        client
            .contact(identifier)
            .await
            .map_err(|e| fail("looking up a contact", e))?;
        ctx.counters.lookups.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Creates the groups and adds their members, then lets every member device
/// fetch until it has joined each of its groups at the creator's epoch.
async fn ensure_groups(ctx: &Context, clients: &[Arc<Client>], boxes: &[String]) -> Result<()> {
    let pop = &ctx.population;
    for group in &pop.groups {
        let creator = &clients[pop.users[group.creator as usize].devices[0] as usize];
        let who = || format!("group {}", group.name);
        let fail = |what: &str, e: rossby_client::Error| Error::Provision {
            who: who(),
            reason: format!("{what}: {e}"),
        };
        let existing = creator
            .groups()
            .await
            .into_iter()
            .find(|g| g.name == group.name);
        let summary = match existing {
            Some(s) if s.membership == Membership::Active => s,
            Some(_) => {
                return Err(Error::Provision {
                    who: who(),
                    reason: "its creator is no longer a member: use a new --state-dir".into(),
                });
            }
            None => {
                let s = creator
                    .create_group(&group.name)
                    .await
                    .map_err(|e| fail("create", e))?;
                ctx.counters.groups_created.fetch_add(1, Ordering::Relaxed);
                s
            }
        };
        for member in group.members.iter().skip(1) {
            let identifier = &pop.users[*member as usize].identifier;
            let box_text = &boxes[*member as usize];
            if summary
                .members
                .iter()
                .any(|m| m == identifier || m == box_text)
            {
                continue;
            }
            creator
                .add_to_group(&group.name, identifier)
                .await
                .map_err(|e| fail("add a member", e))?;
            ctx.counters.members_added.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Epochs as the creators see them now that every Commit is made.
    let mut epochs = HashMap::new();
    for group in &pop.groups {
        let creator = &clients[pop.users[group.creator as usize].devices[0] as usize];
        let epoch = creator
            .groups()
            .await
            .into_iter()
            .find(|g| g.name == group.name)
            .map_or(0, |g| g.epoch);
        epochs.insert(group.name.clone(), epoch);
    }
    let epochs = Arc::new(epochs);
    let mut set = JoinSet::new();
    for device in &pop.devices {
        let user = &pop.users[device.user as usize];
        if user.groups.is_empty() {
            continue;
        }
        let names: Vec<String> = user
            .groups
            .iter()
            .map(|g| pop.groups[*g as usize].name.clone())
            .collect();
        let client = clients[device.slot as usize].clone();
        let epochs = epochs.clone();
        let who = device.state_file();
        set.spawn(async move { join_groups(&client, &names, &epochs, who).await });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| Error::Provision {
            who: "a device".into(),
            reason: format!("task failed: {e}"),
        })??;
    }
    Ok(())
}

async fn join_groups(
    client: &Client,
    names: &[String],
    epochs: &HashMap<String, u64>,
    who: String,
) -> Result<()> {
    for _ in 0..JOIN_ROUNDS {
        let groups = client.groups().await;
        let ready = names.iter().all(|n| {
            groups.iter().any(|g| {
                &g.name == n
                    && g.membership == Membership::Active
                    && epochs.get(n).is_none_or(|e| g.epoch >= *e)
            })
        });
        if ready {
            return Ok(());
        }
        let batch = client
            .fetch(Duration::from_millis(500))
            .await
            .map_err(|e| Error::Provision {
                who: who.clone(),
                reason: format!("fetching group invitations: {e}"),
            })?;
        if let Some(r) = batch.rejected.first() {
            return Err(Error::Provision {
                who,
                reason: format!("a group message was refused: {}", r.reason),
            });
        }
    }
    Err(Error::Provision {
        who,
        reason: "did not join its groups".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    fn scenario(extra: &str) -> Scenario {
        testkit::build(testkit::one_region(), extra, &testkit::same_region_only()).unwrap()
    }

    #[test]
    fn manifests_refuse_another_shape() {
        let dir = tempfile::tempdir().unwrap();
        let s = scenario("users_per_region = 3");
        let m = load_manifest(dir.path(), &s).unwrap();
        assert!(!m.complete);
        assert_eq!(m.tag.len(), 8);
        save_manifest(dir.path(), &m).unwrap();
        // Rate and seed do not matter; users per region do.
        let again = load_manifest(
            dir.path(),
            &scenario("users_per_region = 3\nrate = 9\nseed = 4"),
        )
        .unwrap();
        assert_eq!(again.tag, m.tag);
        let err = load_manifest(dir.path(), &scenario("users_per_region = 4")).unwrap_err();
        assert!(err.to_string().contains("another scenario shape"), "{err}");
    }
}
