//! Box ownership: which gateway of a box's home region executes its writes.
//!
//! Every write to a box runs in its home region through one owning gateway, so
//! writes to one box never conflict between gateways and can be coalesced into
//! one transaction. The owner is chosen by rendezvous (highest random weight)
//! hashing over the region's live gateways: every gateway that sees the same set
//! of live gateways picks the same owner, and when a gateway joins or leaves only
//! the boxes it wins or held move. Liveness comes from leases in storage (the
//! gateway side); this module is the pure choice.
//!
//! Ownership is a performance device, not a correctness one: two gateways that
//! briefly disagree (one has not yet seen a lease lapse) both write the box, and
//! the store's write-write conflict on the box's `next` key plus the per-sender
//! dedup records keep the queue exact.

use rossby_keyspace::BoxId;

/// The weight of `gateway` for `box_id`: a stable 64-bit hash of both (FNV-1a,
/// then the SplitMix64 finaliser to spread nearby inputs). Stable across builds
/// and platforms, so gateways of different versions agree during an upgrade.
pub fn weight(gateway: &[u8], box_id: BoxId) -> u64 {
    weight_of(gateway, box_id.as_bytes())
}

/// The weight of `gateway` for any `item` named by bytes (a box id, a background
/// job): the hash of [`weight`].
pub fn weight_of(gateway: &[u8], item: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in gateway.iter().chain(item) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The owner of `box_id` among `candidates` (live gateways of the box's home
/// region, named by `id`): the one with the highest [`weight`], ties broken by
/// the larger id. `None` when there is no candidate.
pub fn owner<T>(box_id: BoxId, candidates: &[T], id: impl Fn(&T) -> &[u8]) -> Option<&T> {
    choose(box_id.as_bytes(), candidates, id)
}

/// The candidate chosen for `item` (named by bytes, such as a background job):
/// the one with the highest [`weight_of`], ties broken by the larger id, exactly
/// as [`owner`] chooses for a box. `None` when there is no candidate.
pub fn choose<'a, T>(item: &[u8], candidates: &'a [T], id: impl Fn(&T) -> &[u8]) -> Option<&'a T> {
    candidates.iter().max_by(|a, b| {
        let (ia, ib) = (id(a), id(b));
        (weight_of(ia, item), ia).cmp(&(weight_of(ib, item), ib))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_keyspace::RegionId;

    fn gateways(n: u8) -> Vec<[u8; 16]> {
        (0..n).map(|i| [i; 16]).collect()
    }

    #[test]
    fn the_choice_is_deterministic_and_independent_of_order() {
        let gws = gateways(5);
        let mut reversed = gws.clone();
        reversed.reverse();
        for _ in 0..200 {
            let b = BoxId::new(RegionId(1));
            let a = owner(b, &gws, |g| g.as_slice());
            let r = owner(b, &reversed, |g| g.as_slice());
            assert_eq!(a, r);
        }
        assert_eq!(
            owner(BoxId::new(RegionId(1)), &[] as &[[u8; 16]], |g| g),
            None
        );
    }

    #[test]
    fn boxes_spread_evenly_and_only_a_leavers_boxes_move() {
        let gws = gateways(4);
        let boxes: Vec<BoxId> = (0..4000).map(|_| BoxId::new(RegionId(2))).collect();
        let mut counts = [0usize; 4];
        let before: Vec<[u8; 16]> = boxes
            .iter()
            .map(|b| *owner(*b, &gws, |g| g.as_slice()).unwrap())
            .collect();
        for o in &before {
            counts[o[0] as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread: {counts:?}");
        }
        // Gateway 2 leaves: only its boxes move, and they spread over the rest.
        let rest: Vec<[u8; 16]> = gws.iter().copied().filter(|g| g[0] != 2).collect();
        for (b, o) in boxes.iter().zip(&before) {
            let now = *owner(*b, &rest, |g| g.as_slice()).unwrap();
            if o[0] != 2 {
                assert_eq!(now, *o, "a box of a staying gateway moved");
            }
        }
    }

    #[test]
    fn weights_are_stable() {
        // Pinned: every gateway of a deployment, whatever its build, must agree.
        let b = BoxId::from_bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]).unwrap();
        assert_eq!(weight(b"gw", b), 0x9018_4e2a_5fa5_c231);
        assert_eq!(weight(&[], b), 0x4de8_e30e_abd4_a6be);
        assert_ne!(weight(b"gw1", b), weight(b"gw2", b));
        assert_eq!(weight_of(b"gw", b.as_bytes()), weight(b"gw", b));
    }

    #[test]
    fn items_other_than_boxes_are_chosen_the_same_way() {
        let gws = gateways(3);
        let b = BoxId::new(RegionId(4));
        assert_eq!(
            choose(b.as_bytes(), &gws, |g| g.as_slice()),
            owner(b, &gws, |g| g.as_slice())
        );
        // Seventeen jobs over three gateways: each gets some.
        let mut counts = [0usize; 3];
        for job in 0u8..17 {
            let g = choose(&[1, job], &gws, |g| g.as_slice()).unwrap();
            counts[g[0] as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c > 0), "{counts:?}");
        assert_eq!(choose(&[2], &[] as &[[u8; 16]], |g| g), None);
    }
}
