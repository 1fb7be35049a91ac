//! The measured run.
//!
//! 1. **Settle**: every device fetches and acknowledges what is queued (messages
//!    of earlier runs are counted as stale), so the run starts from empty queues.
//! 2. **Listen**: in push mode every device subscribes; each device has a fetch
//!    loop woken by pushes, by its fallback or poll timer, and after every
//!    (re)subscription.
//! 3. **Send** (open loop): send `i` is due at `start + i / rate`. The scheduler
//!    sleeps until then and spawns it; it never waits for earlier sends, and a
//!    send that starts late still measures from its due time, so a stalled
//!    gateway shows as latency instead of a lower offered rate. Sends due while
//!    `max_in_flight` are pending are skipped and counted. The first `warmup`
//!    seconds are sent and accounted but not measured.
//! 4. **Drain**: no new sends; wait until every expected delivery was made and
//!    every send answered, or the drain period ends.
//!
//! Every phase has its own bound, so the run ends by itself.
//!
//! One generator of several ([`crate::generator`]) settles, listens and fetches
//! on its own devices only and issues only the sends whose sender it drives, on
//! the schedule every generator shares from the agreed start time. Before
//! settling it enters the other generators' sends to its devices in its ledger,
//! so a message that arrives early is still this run's; its drain waits for
//! those deliveries too.

use crate::generator::Split;
use crate::ledger::{Exchange, Ledger, Outcome, Totals};
use crate::payload;
use crate::plan::{Destination, PlannedSend, Population};
use crate::procstat::{self, CpuUse, Memory};
use crate::progress::Progress;
use crate::provision::Fleet;
use crate::scenario::Scenario;
use crate::stats::{Op, Stats, error_kind};
use crate::units::FetchMode;
use rossby_client::{Batch, Body, Client};
use rossby_protocol::pb;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// Longest settle phase.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for every device's subscription.
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(15);
/// Lead time between the end of the set-up and the first send.
const LEAD: Duration = Duration::from_millis(200);
/// Fetch rounds per wake-up (each returns up to 100 envelopes).
const FETCH_ROUNDS: usize = 50;
/// Bound on everything but the schedule and the drain: settling, subscribing
/// and stopping.
pub const SETUP_LIMIT: Duration = Duration::from_secs(60 + 15 + 10);
/// Corruption reasons kept for the report.
const EXAMPLES: usize = 10;

/// What a run measured, besides the shared [`Stats`].
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The ledger's counts.
    pub totals: Totals,
    /// Sends skipped because too many were in flight.
    pub skipped: u64,
    /// Messages of earlier runs found while settling.
    pub settled_stale: u64,
    /// Seconds of the measured period as it ran.
    pub measured_s: f64,
    /// Seconds the drain took.
    pub drain_s: f64,
    /// CPU use over the measured period.
    pub cpu: Option<CpuUse>,
    /// Memory at the end of the measured period.
    pub memory: Option<Memory>,
    /// Some corruption reasons seen.
    pub corruption_examples: Vec<String>,
    /// The run id the message texts carried.
    pub run_id: u64,
    /// When the schedule started, ms since the epoch.
    pub start_unix_ms: u64,
    /// Share of the measured period's sends this process issued (1 unless split).
    pub own_share: f64,
    /// Deliveries of this process's own sends to its own devices never made.
    pub own_lost_here: u64,
    /// Devices this process drove.
    pub devices_driven: usize,
    /// What the merge of several generators needs.
    pub exchange: Exchange,
}

/// How this process takes part in the run.
#[derive(Clone, Debug, Default)]
pub struct Participation {
    /// The devices it drives (`None`: all).
    pub split: Option<Split>,
    /// When the schedule starts (`None`: as soon as every device listens).
    pub start_at: Option<SystemTime>,
    /// The run id (`None`: a random one).
    pub run_id: Option<u64>,
}

impl Participation {
    fn drives(&self, slot: u32) -> bool {
        self.split.as_ref().is_none_or(|s| s.drives(slot))
    }
}

/// The monotonic instant of a wall-clock time (in the past too).
fn instant_of(at: SystemTime) -> Instant {
    let (now, wall) = (Instant::now(), SystemTime::now());
    match at.duration_since(wall) {
        Ok(ahead) => now + ahead,
        Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When the schedule starts and the measured period lies; fixed once every
/// device listens.
#[derive(Clone, Copy, Debug)]
struct Timing {
    start: Instant,
    measure_start: Instant,
    measure_end: Instant,
}

struct Shared {
    scenario: Scenario,
    population: Arc<Population>,
    clients: Vec<Option<Arc<Client>>>,
    slots_by_device: std::collections::HashMap<[u8; 16], u32>,
    boxes: Vec<String>,
    ledger: Mutex<Ledger>,
    stats: Arc<Stats>,
    timing: OnceLock<Timing>,
    examples: Mutex<Vec<String>>,
    /// Per device: its last acknowledgement failed, so repeats are expected.
    unacked: Vec<AtomicBool>,
}

impl Shared {
    /// Whether something that happened at `at` lies in or after the measured
    /// period (never before the timing is fixed).
    fn measuring(&self, at: Instant) -> bool {
        self.timing.get().is_some_and(|t| at >= t.measure_start)
    }

    fn client(&self, slot: u32) -> Option<&Arc<Client>> {
        self.clients.get(slot as usize).and_then(Option::as_ref)
    }

    fn example(&self, text: String) {
        let mut ex = lock(&self.examples);
        if ex.len() < EXAMPLES {
            tracing::warn!("{text}");
            ex.push(text);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the scenario with the provisioned `fleet`.
pub async fn run(
    scenario: &Scenario,
    population: Arc<Population>,
    fleet: &Fleet,
    stats: Arc<Stats>,
    progress: &Progress,
    part: &Participation,
) -> RunOutcome {
    let run_id = part.run_id.unwrap_or_else(rand::random::<u64>);
    let capacity = usize::try_from(scenario.total_sends()).unwrap_or(0);
    let ledger = match &part.split {
        Some(split) => Ledger::for_generator(run_id, capacity, split.local_mask()),
        None => Ledger::new(run_id, capacity),
    };
    let shared = Arc::new(Shared {
        scenario: scenario.clone(),
        population,
        clients: fleet.clients.clone(),
        slots_by_device: fleet.slots_by_device.clone(),
        boxes: fleet.boxes.clone(),
        ledger: Mutex::new(ledger),
        stats: stats.clone(),
        timing: OnceLock::new(),
        examples: Mutex::new(Vec::new()),
        unacked: (0..fleet.clients.len())
            .map(|_| AtomicBool::new(false))
            .collect(),
    });
    let local: Vec<u32> = (0..shared.clients.len() as u32)
        .filter(|s| part.drives(*s) && shared.client(*s).is_some())
        .collect();
    let devices = local.len();
    let total = scenario.total_sends();

    // An agreed start fixes the timing now, so the other generators' sends can
    // be entered before any of them arrives.
    let timing_of = |start: Instant| Timing {
        start,
        measure_start: start + scenario.warmup,
        measure_end: start + scenario.warmup + scenario.duration,
    };
    let mut own_measured = 0u64;
    if let Some(at) = part.start_at {
        let _ = shared.timing.set(timing_of(instant_of(at)));
    }
    if let (Some(split), Some(t)) = (&part.split, shared.timing.get().copied()) {
        let warmup = scenario.warmup_sends();
        let pop = &shared.population;
        let mut ledger = lock(&shared.ledger);
        for index in 0..total {
            let planned = pop.planned_send(scenario, index);
            if split.drives(planned.sender) {
                own_measured += u64::from(index >= warmup);
                continue;
            }
            let mine: Vec<(u32, u8)> = pop
                .expected_devices(&planned)
                .into_iter()
                .filter(|d| split.drives(*d))
                .map(|d| (d, pop.devices[d as usize].region))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let due = t.start + planned.offset;
            ledger.expect_foreign(
                index,
                due,
                due >= t.measure_start,
                pop.send_pair(&planned).0,
                planned.sender,
                &mine,
            );
        }
    } else {
        own_measured = total - scenario.warmup_sends();
    }

    // 1. Settle.
    progress.update("settling: fetching what earlier runs left queued...");
    {
        let mut set = JoinSet::new();
        for slot in local.iter().copied() {
            let s = shared.clone();
            set.spawn(async move { drain_queue(&s, slot).await });
        }
        let _ = tokio::time::timeout(SETTLE_LIMIT, async {
            while set.join_next().await.is_some() {}
        })
        .await;
        set.abort_all();
    }
    let settled_stale = lock(&shared.ledger).totals().stale;

    // 2. Listen.
    let (stop_tx, stop_rx) = watch::channel(false);
    let subscribed = Arc::new(AtomicU64::new(0));
    let push = matches!(scenario.fetch, FetchMode::Push { .. });
    let mut listeners = JoinSet::new();
    for slot in local.iter().copied() {
        let notify = Arc::new(Notify::new());
        listeners.spawn(fetch_loop(
            shared.clone(),
            slot,
            notify.clone(),
            stop_rx.clone(),
        ));
        if push {
            listeners.spawn(push_loop(
                shared.clone(),
                slot,
                notify,
                stop_rx.clone(),
                subscribed.clone(),
            ));
        }
    }
    if push {
        progress.update("subscribing...");
        let deadline = Instant::now() + SUBSCRIBE_LIMIT;
        while subscribed.load(Ordering::Relaxed) < devices as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = subscribed.load(Ordering::Relaxed);
        if got < devices as u64 {
            progress.note(&format!(
                "warning: only {got} of {devices} devices subscribed within {} s; the others rely on their fallback fetch",
                SUBSCRIBE_LIMIT.as_secs()
            ));
        }
    }
    // Unless agreed, the schedule starts now, whatever the set-up took.
    let timing = *shared
        .timing
        .get_or_init(|| timing_of(Instant::now() + LEAD));
    let start = timing.start;
    let late = Instant::now().saturating_duration_since(start);
    if !late.is_zero() {
        progress.note(&format!(
            "warning: set-up ended {:.1} s after the agreed start: the sends due until now go out at once and count their lag",
            late.as_secs_f64()
        ));
    }
    let start_unix_ms =
        unix_ms(part.start_at.unwrap_or_else(|| {
            SystemTime::now() + start.saturating_duration_since(Instant::now())
        }));

    // CPU over the measured period.
    let cpu_task = tokio::spawn(async move {
        tokio::time::sleep_until(timing.measure_start.into()).await;
        let a = procstat::cpu();
        tokio::time::sleep_until(timing.measure_end.into()).await;
        let b = procstat::cpu();
        let memory = procstat::memory();
        (a.zip(b).map(|(a, b)| procstat::usage(&a, &b)), memory)
    });
    let progress_task = spawn_progress(shared.clone(), timing, progress.clone());

    // 3. Send.
    let mut sends = JoinSet::new();
    for index in 0..total {
        let planned = shared.population.planned_send(scenario, index);
        if !part.drives(planned.sender) {
            continue;
        }
        let due = start + planned.offset;
        tokio::time::sleep_until(due.into()).await;
        while sends.try_join_next().is_some() {}
        if shared.stats.in_flight.load(Ordering::Relaxed) >= scenario.max_in_flight as u64 {
            shared.stats.skipped.fetch_add(1, Ordering::Relaxed);
            lock(&shared.ledger).skipped(index);
            continue;
        }
        shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        shared.stats.issued.fetch_add(1, Ordering::Relaxed);
        sends.spawn(send_one(shared.clone(), planned, due));
    }

    // 4. Drain.
    let drain_start = Instant::now().max(timing.measure_end);
    tokio::time::sleep_until(drain_start.into()).await;
    let drain_deadline = drain_start + scenario.drain;
    loop {
        while sends.try_join_next().is_some() {}
        let pending = shared.stats.in_flight.load(Ordering::Relaxed);
        let outstanding = lock(&shared.ledger).outstanding();
        if (pending == 0 && outstanding == 0) || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    sends.abort_all();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while listeners.join_next().await.is_some() {}
    })
    .await;
    listeners.abort_all();
    progress_task.abort();
    progress.finish();
    let (cpu, memory) = match tokio::time::timeout(Duration::from_secs(1), cpu_task).await {
        Ok(Ok(v)) => v,
        _ => (None, procstat::memory()),
    };
    let (totals, exchange, own_lost_here) = {
        let l = lock(&shared.ledger);
        (l.totals(), l.exchange(), l.own_lost_here())
    };
    let window = (total - scenario.warmup_sends()).max(1);
    RunOutcome {
        totals,
        skipped: shared.stats.skipped.load(Ordering::Relaxed),
        settled_stale,
        measured_s: scenario.duration.as_secs_f64(),
        drain_s,
        cpu,
        memory,
        corruption_examples: lock(&shared.examples).clone(),
        run_id,
        start_unix_ms,
        own_share: own_measured as f64 / window as f64,
        own_lost_here,
        devices_driven: devices,
        exchange,
    }
}

fn spawn_progress(
    shared: Arc<Shared>,
    timing: Timing,
    progress: Progress,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = (Instant::now(), 0u64);
        loop {
            tokio::time::sleep(progress.interval()).await;
            let now = Instant::now();
            let s = &shared.stats;
            let confirmed = s.confirmed.load(Ordering::Relaxed);
            let rate = (confirmed - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, confirmed);
            let phase = if now < timing.measure_start {
                "warm-up"
            } else if now < timing.measure_end {
                "measure"
            } else {
                "drain"
            };
            let t = now.saturating_duration_since(timing.start).as_secs_f64();
            let [(s50, s99), (d50, d99)] = s.live_percentiles();
            let outstanding = lock(&shared.ledger).outstanding();
            progress.update(&format!(
                "{phase} t={t:.1}s sent={confirmed} ({rate:.0}/s) delivered={} outstanding={outstanding} in-flight={} errors={} skipped={} send p50/p99={s50:.1}/{s99:.1}ms delivery p50/p99={d50:.1}/{d99:.1}ms",
                s.delivered.load(Ordering::Relaxed),
                s.in_flight.load(Ordering::Relaxed),
                s.errors.load(Ordering::Relaxed),
                s.skipped.load(Ordering::Relaxed),
            ));
        }
    })
}

async fn send_one(shared: Arc<Shared>, planned: PlannedSend, due: Instant) {
    let pop = &shared.population;
    let (from, to) = pop.send_pair(&planned);
    let expected: Vec<(u32, u8)> = pop
        .expected_devices(&planned)
        .into_iter()
        .map(|d| (d, pop.devices[d as usize].region))
        .collect();
    let run_id = lock(&shared.ledger).run_id();
    let text = payload::encode(run_id, planned.index, planned.sender, planned.size);
    let measured = shared.measuring(due);
    lock(&shared.ledger).expect(
        planned.index,
        due,
        measured,
        from,
        planned.sender,
        &expected,
    );
    let started = Instant::now();
    shared
        .stats
        .start_lag(started.saturating_duration_since(due));
    let Some(client) = shared.client(planned.sender) else {
        // The scheduler only issues sends of driven devices.
        lock(&shared.ledger).send_failed(planned.index);
        shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        return;
    };
    let (op, result) = match planned.destination {
        Destination::SameRegion(u) | Destination::CrossRegion(u) => (
            Op::Send,
            client
                .send_text(&shared.boxes[u as usize], &text)
                .await
                .map(|_| 0usize),
        ),
        Destination::Group(g) => (
            Op::GroupSend,
            client
                .send_to_group(&pop.groups[g as usize].name, &text)
                .await
                .map(|r| r.failed),
        ),
    };
    let done = Instant::now();
    let latency = done.saturating_duration_since(due);
    match result {
        Ok(refused) => {
            lock(&shared.ledger).send_succeeded(planned.index);
            let s = &shared.stats;
            s.confirmed.fetch_add(1, Ordering::Relaxed);
            let in_window = shared
                .timing
                .get()
                .is_some_and(|t| done >= t.measure_start && done < t.measure_end);
            if in_window {
                s.confirmed_in_window.fetch_add(1, Ordering::Relaxed);
                s.bytes_in_window
                    .fetch_add(text.len() as u64, Ordering::Relaxed);
            }
            if measured {
                s.record(op, (from, to), latency);
            }
            s.record_live(op, latency);
            if refused > 0 {
                s.error(op, "MEMBER_REFUSED");
            }
        }
        Err(e) => {
            lock(&shared.ledger).send_failed(planned.index);
            shared.stats.error(op, error_kind(&e));
            shared.example(format!("{} {}: {e}", op.name(), planned.index));
        }
    }
    shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// A device's fetch loop: waits for a push, its timer or a stop, then fetches
/// until its queue is empty.
async fn fetch_loop(
    shared: Arc<Shared>,
    slot: u32,
    notify: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let every = match shared.scenario.fetch {
        FetchMode::Poll { interval } => Some(interval),
        FetchMode::Push { fallback } => fallback,
    };
    // Spread the devices' timers over the interval.
    let phase = every.map(|e| e.mul_f64(f64::from(slot % 997) / 997.0));
    let mut next = every.map(|_| Instant::now() + phase.unwrap_or_default());
    loop {
        let timer = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = notify.notified() => {}
            () = timer => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if let Some(e) = every {
            next = Some(Instant::now() + e);
        }
        drain_queue(&shared, slot).await;
    }
}

/// Keeps a device subscribed and turns `MessagesAvailable` pushes into fetches.
async fn push_loop(
    shared: Arc<Shared>,
    slot: u32,
    notify: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    subscribed: Arc<AtomicU64>,
) {
    let Some(client) = shared.client(slot).cloned() else {
        return;
    };
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        match client.subscribe().await {
            Ok(mut sub) => {
                shared.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                if first {
                    subscribed.fetch_add(1, Ordering::Relaxed);
                    first = false;
                }
                // Anything committed while not subscribed is fetched now.
                notify.notify_one();
                loop {
                    tokio::select! {
                        push = sub.next() => match push {
                            Ok(Some(pb::Push { event: Some(pb::push::Event::Messages(_)) })) => {
                                shared.stats.pushes.fetch_add(1, Ordering::Relaxed);
                                notify.notify_one();
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => break,
                        },
                        _ = stop.changed() => return,
                    }
                }
                // The subscription ended (a reconnect, a draining gateway):
                // subscribe again, without spinning on a gateway that keeps
                // ending it.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => return,
                }
            }
            Err(e) => {
                shared
                    .stats
                    .error(Op::Fetch, format!("subscribe {}", error_kind(&e)));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// Fetches, checks and acknowledges until the device's queue is empty.
async fn drain_queue(shared: &Shared, slot: u32) {
    let Some(client) = shared.client(slot) else {
        return;
    };
    let region = shared.population.devices[slot as usize].region;
    for _ in 0..FETCH_ROUNDS {
        let started = Instant::now();
        let batch = match client.fetch_batch(Duration::ZERO).await {
            Ok(b) => b,
            Err(e) => {
                shared.stats.error(Op::Fetch, error_kind(&e));
                break;
            }
        };
        let done = Instant::now();
        if shared.measuring(started) {
            shared
                .stats
                .record(Op::Fetch, (region, region), done - started);
        }
        account(shared, slot, &batch, done);
        let Some(up_to) = batch.ack_up_to else {
            break;
        };
        let started = Instant::now();
        match client.ack(up_to).await {
            Ok(()) => {
                shared.unacked[slot as usize].store(false, Ordering::Relaxed);
                if shared.measuring(started) {
                    shared
                        .stats
                        .record(Op::Ack, (region, region), started.elapsed());
                }
            }
            Err(e) => {
                shared.unacked[slot as usize].store(true, Ordering::Relaxed);
                shared.stats.error(Op::Ack, error_kind(&e));
                break;
            }
        }
        if up_to >= batch.last_seq {
            break;
        }
    }
}

/// Enters every message of a batch in the ledger and the histograms.
fn account(shared: &Shared, slot: u32, batch: &Batch, at: Instant) {
    if let Some((first, last)) = batch.gap {
        shared.stats.error(Op::Fetch, "GAP");
        shared.example(format!(
            "device {slot}: messages {first}..={last} expired unread"
        ));
    }
    let mut notes = Vec::new();
    let unacked = shared.unacked[slot as usize].load(Ordering::Relaxed);
    let mut ledger = lock(&shared.ledger);
    for r in &batch.rejected {
        // The SDK refuses an envelope it accepted before as a replay: from the
        // gateway's side that is a duplicate delivery.
        let replay = r.reason.contains("replay");
        ledger.rejected(replay, unacked);
        notes.push(format!("device {slot} refused seq {}: {}", r.seq, r.reason));
    }
    for m in &batch.messages {
        let text = match &m.body {
            Body::Text(t) => t,
            Body::SentCopy { text, .. } => text,
            Body::Group { text, .. } => text,
            // Group joins and other control messages carry no load-test text.
            _ => continue,
        };
        let sender = shared
            .slots_by_device
            .get(m.sender_device.as_bytes())
            .copied();
        match ledger.deliver(slot, text, sender, at, unacked) {
            Outcome::First {
                latency,
                measured,
                from,
                to,
            } => {
                let s = &shared.stats;
                s.delivered.fetch_add(1, Ordering::Relaxed);
                if measured {
                    s.delivered_in_window.fetch_add(1, Ordering::Relaxed);
                    s.record(Op::Delivery, (from, to), latency);
                }
                s.record_live(Op::Delivery, latency);
            }
            Outcome::Corrupted(why) => notes.push(format!("device {slot} seq {}: {why}", m.seq)),
            Outcome::Duplicate => notes.push(format!("device {slot} seq {}: duplicate", m.seq)),
            Outcome::Stale | Outcome::AfterFailure | Outcome::Redelivered => {}
        }
    }
    drop(ledger);
    for note in notes {
        shared.example(note);
    }
}
