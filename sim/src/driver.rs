//! The concurrent phase of a run: the initial population, then operations
//! started on random gateways and polled in seeded order, with crashes and
//! stalls of gateways.

use crate::ops::{self, Op};
use crate::scheduler::Scheduler;
use crate::workload::Workload;
use crate::world::World;
use crate::{Config, invariants};
use std::rc::Rc;
use std::time::Duration;

/// Four accounts (two per region) with two devices each, without faults.
pub async fn populate(world: &Rc<World>, workload: &mut Workload) {
    for _ in 0..4 {
        let op = {
            let mut m = world.model.borrow_mut();
            world
                .control
                .with_rng(|rng| workload.register(&mut m, world, rng))
        };
        let box_id = match &op {
            Op::Register { box_id, .. } => *box_id,
            _ => continue,
        };
        ops::run(Rc::clone(world), 0, 0, op).await;
        let op = {
            let mut m = world.model.borrow_mut();
            world
                .control
                .with_rng(|rng| workload.add_device(&mut m, rng, box_id, true))
        };
        ops::run(Rc::clone(world), 0, 0, op).await;
    }
}

/// Starts operations on random gateways, polls ready ones in seeded order and
/// crashes gateways now and then, until `config.ops` operations finished.
pub async fn drive(world: &Rc<World>, workload: &mut Workload, config: &Config) -> u64 {
    let control = &world.control;
    let gateways = config.gateways.max(1);
    let max_in_flight = 1 + control.below(config.max_in_flight.max(1));
    let mut sched = Scheduler::new();
    let mut started = 0u64;
    let total = config.ops as u64;
    let check_every = config.check_every.max(1) as u64;
    let mut stalled_until = vec![0u64; gateways];
    let mut step = 0u64;
    loop {
        if world.failed() {
            break;
        }
        let ready = sched.ready();
        let can_start = started < total && sched.in_flight() < max_in_flight;
        if !can_start && sched.in_flight() == 0 {
            break;
        }
        if can_start && (ready.is_empty() || control.chance(0.1)) {
            let gateway = control.below(gateways);
            let op = workload.next(world);
            started += 1;
            let slow = control.chance(config.slow_share);
            let run = ops::run(Rc::clone(world), started, gateway, op);
            sched.start(gateway, slow, Box::pin(run));
            if started.is_multiple_of(check_every) {
                invariants::structure(world).await;
            }
            continue;
        }
        if control.chance(config.crash_rate) {
            let gateway = control.below(gateways);
            let dropped = sched.crash(gateway);
            world.note(format!("crash g{gateway}: {dropped} operations dropped"));
            started += 1;
            let run = ops::run(Rc::clone(world), started, gateway, Op::Restart);
            sched.start(gateway, false, Box::pin(run));
            continue;
        }
        if ready.is_empty() {
            // Everything waits on a back-off timer: the paused clock jumps to it.
            // Nothing legitimately waits a day.
            let waited =
                tokio::time::timeout(Duration::from_secs(24 * 3600), sched.wait_ready()).await;
            if waited.is_err() {
                world.fail("operations make progress", "every operation is stuck");
                break;
            }
            continue;
        }
        if control.chance(config.stall_rate) {
            let gateway = control.below(gateways);
            let steps = 20 + control.below(400) as u64;
            stalled_until[gateway] = step + steps;
            world.note(format!("stall g{gateway} for {steps} steps"));
        }
        // A stalled gateway's operations wait, unless nothing else can run.
        let running: Vec<u64> = ready
            .iter()
            .copied()
            .filter(|id| {
                sched
                    .gateway_of(*id)
                    .is_none_or(|g| stalled_until[g] <= step)
            })
            .collect();
        let pool = if running.is_empty() { ready } else { running };
        // Slow operations are mostly passed over while others can run.
        let brisk: Vec<u64> = pool
            .iter()
            .copied()
            .filter(|id| !sched.is_slow(*id))
            .collect();
        let pool = if !brisk.is_empty() && control.chance(0.95) {
            brisk
        } else {
            pool
        };
        let id = pool[control.below(pool.len())];
        sched.poll(id);
        step += 1;
    }
    started
}
