//! The end of a run, without faults: every "maybe" is resolved, the
//! deployment recovers as after a restart, every device is drained, and the
//! store is checked before and after everything expired.

use crate::invariants;
use crate::model::Life;
use crate::ops::{self, Op};
use crate::world::{self, World};
use std::rc::Rc;

/// The end of a run, without faults: resolve every maybe, recover like a
/// restarted deployment, drain every device, check deliveries, let everything
/// expire and check what is left.
pub async fn finish(world: &Rc<World>) {
    let w = &**world;
    invariants::structure(w).await;
    let (boxes, devices) = {
        let m = w.model.borrow();
        let boxes: Vec<_> = m
            .boxes
            .iter()
            .filter(|(_, b)| matches!(b.life, Life::Creating | Life::Deleting))
            .map(|(id, _)| *id)
            .collect();
        let devices: Vec<_> = m
            .devices
            .iter()
            .filter(|(_, d)| matches!(d.life, Life::Creating | Life::Deleting))
            .map(|(k, _)| *k)
            .collect();
        (boxes, devices)
    };
    for box_id in boxes {
        let result = ops::resolve_box(w, box_id).await;
        w.note(format!(
            "final: box {} {result}",
            world::short(box_id.as_bytes())
        ));
    }
    for (box_id, device) in devices {
        if w.model.borrow().box_life(box_id) == Life::Alive {
            let result = ops::resolve_device(w, box_id, device).await;
            w.note(format!(
                "final: device {} {result}",
                world::short(device.as_bytes())
            ));
        }
    }
    for region in w.regions.clone() {
        ops::run(Rc::clone(world), 0, 0, Op::ResumePurges { region }).await;
        // Several passes: a box that missed one entry gets later ones next time.
        for _ in 0..4 {
            ops::resume_outbox(w, region, u64::MAX).await;
        }
    }
    let live: Vec<_> = {
        let m = w.model.borrow();
        m.devices
            .iter()
            .filter(|((b, _), d)| d.life == Life::Alive && m.box_life(*b) == Life::Alive)
            .map(|(k, _)| *k)
            .collect()
    };
    for (box_id, device) in live {
        if !ops::drain(w, box_id, device).await {
            return;
        }
    }
    invariants::deliveries(w);
    // Every device acknowledged everything: with unbounded deletes, the
    // structural check now demands that nothing after any device's start is left.
    invariants::structure(w).await;
    if w.failed() {
        return;
    }
    // Everything expires.
    let far = {
        let mut m = w.model.borrow_mut();
        m.now += 10 * m.limits.retention_ms;
        m.max_sweep_now = m.now;
        m.now
    };
    for region in w.regions.clone() {
        ops::expire_everything(w, region, far).await;
    }
    invariants::final_state(w).await;
}
