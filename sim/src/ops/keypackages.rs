//! MLS KeyPackages: publish and claim.

use super::{Answer, REISSUES, answer};
use crate::model::Life;
use crate::world::World;
use rossby_keyspace::{BoxId, DeviceId};
use rossby_storage::tables::keypackages;
use rossby_storage::{Error, transact};

/// Publishes packages (and maybe a last-resort one) for an authorized device.
/// Publishing is idempotent (a package is stored under a hash of its bytes), so
/// an unknown outcome is re-issued.
pub(super) async fn publish(
    w: &World,
    box_id: BoxId,
    device: DeviceId,
    packages: &[Vec<u8>],
    last_resort: Option<&[u8]>,
) -> String {
    let limits = &w.store.limits;
    w.model
        .borrow_mut()
        .publishing(box_id, device, packages, last_resort);
    for _ in 0..=REISSUES {
        let now = w.now();
        let result = transact!(w.store, |txn| keypackages::publish(
            txn,
            limits,
            box_id,
            device,
            packages,
            last_resort,
            now
        )
        .await);
        match answer(w, "publish", result) {
            Answer::Done(count) => {
                if count > limits.max_key_packages_per_device {
                    w.fail(
                        "a device holds at most its quota of KeyPackages",
                        format!("box {box_id} device {device}: {count} stored"),
                    );
                }
                return format!("ok, {count} stored");
            }
            Answer::Refused(err @ Error::QuotaExceeded(_)) => return format!("refused: {err}"),
            Answer::Refused(err) => {
                let mut m = w.model.borrow_mut();
                if m.surely_present(box_id, device) {
                    m.fail(
                        "an authorized device can publish",
                        format!("box {box_id} device {device}: {err}"),
                    );
                }
                return format!("refused: {err}");
            }
            Answer::Unknown | Answer::GaveUp => continue,
        }
    }
    "unknown".into()
}

/// Claims a package of one device, or one of every authorized device of a box.
/// A claim with an unknown outcome is not re-issued: a second claim is a new
/// claim.
pub(super) async fn claim(w: &World, box_id: BoxId, device: Option<DeviceId>) -> String {
    let now = w.now();
    let result = match device {
        Some(device) => transact!(w.store, |txn| keypackages::claim(txn, box_id, device, now)
            .await
            .map(|c| c.into_iter().collect::<Vec<_>>())),
        None => transact!(w.store, |txn| keypackages::claim_for_box(txn, box_id, now)
            .await),
    };
    match answer(w, "claim", result) {
        Answer::Done(claimed) => {
            let mut m = w.model.borrow_mut();
            for c in &claimed {
                m.claimed(box_id, c);
            }
            let last_resort = claimed.iter().filter(|c| c.last_resort).count();
            format!("{} claimed ({last_resort} last resort)", claimed.len())
        }
        Answer::Refused(err) => {
            let mut m = w.model.borrow_mut();
            let present = match device {
                Some(device) => m.surely_present(box_id, device),
                None => m.box_life(box_id) == Life::Alive,
            };
            if present {
                m.fail(
                    "KeyPackages of a present device can be claimed",
                    format!("box {box_id}: {err}"),
                );
            }
            format!("refused: {err}")
        }
        Answer::Unknown | Answer::GaveUp => "unknown".into(),
    }
}
