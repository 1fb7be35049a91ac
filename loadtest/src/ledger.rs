//! Exact delivery accounting. Every send is entered with the devices that must
//! decrypt it before it is sent; every decrypted message is checked against
//! that entry. At the end each expected (message, device) pair was delivered
//! once, or is lost; anything else is a duplicate or corrupt.
//!
//! | outcome | counted as |
//! |---|---|
//! | first decryption of an expected (message, device) | delivered |
//! | a further decryption of the same pair, or a replay the SDK refused | duplicated |
//! | bad checksum or header, a sender other than the one in the header, an index this run never sent, a device that is not a recipient, an envelope the SDK could not verify or decrypt | corrupted |
//! | an expected pair never decrypted | lost |
//! | a message of another run (left in a queue of a reused state directory) | stale (not a failure) |
//! | a message whose send reported an error (its outcome was unknown) | delivered after error (not a failure) |
//! | a repeat on a device whose last acknowledgement failed | redelivered (the gateway may resend what was not acknowledged; not a failure) |
//!
//! With several generators ([`crate::generator`]) each ledger sees only its own
//! devices. It enters its own sends with every expected device (so it knows how
//! many deliveries they owe, wherever they land) and the other generators'
//! sends with its own devices only (it cannot know whether those sends
//! succeeded). What it cannot judge alone it exports as an [`Exchange`];
//! [`merge_exchanges`] puts the generators' exchanges together into the totals
//! one ledger would have counted.

use crate::payload::{self, Invalid};
use std::time::{Duration, Instant};

/// Where a send stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendState {
    /// Issued, no answer yet.
    InFlight,
    /// The gateway confirmed it.
    Sent,
    /// It failed: no delivery is expected (one may still come if the outcome
    /// was unknown).
    Failed,
}

#[derive(Clone, Debug)]
struct Slot {
    device: u32,
    region: u8,
    count: u32,
    /// Driven by this generator (always, for a run that is not split).
    local: bool,
}

#[derive(Clone, Debug)]
struct Entry {
    scheduled: Instant,
    measured: bool,
    from: u8,
    sender: u32,
    state: SendState,
    /// Sent by this generator; otherwise another generator's send, entered with
    /// this generator's devices only.
    own: bool,
    slots: Vec<Slot>,
}

/// What a delivered text turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The first decryption of an expected (message, device) pair.
    First {
        /// From the send's scheduled time to the decryption.
        latency: Duration,
        /// Whether the send lies in the measured period.
        measured: bool,
        /// The sender's region.
        from: u8,
        /// The receiving device's region.
        to: u8,
    },
    /// A repeated decryption.
    Duplicate,
    /// A repeat after a failed acknowledgement.
    Redelivered,
    /// Not what was sent, or not for this device.
    Corrupted(&'static str),
    /// A message of another run.
    Stale,
    /// The first decryption of a message whose send reported an error.
    AfterFailure,
}

/// The counts of a ledger. For one generator of several, every field counts
/// what its own devices saw (`expected`, `delivered` and `lost` are the pairs on
/// its devices; a pair of another generator's failed send counts as lost here),
/// and the send counts are its own sends; the merge of all generators' reports
/// has the run's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Sends entered.
    pub sends: u64,
    /// Sends the gateway confirmed.
    pub sent: u64,
    /// Sends that reported an error.
    pub failed_sends: u64,
    /// Sends still without an answer.
    pub unconfirmed_sends: u64,
    /// Expected (message, device) deliveries of every send that did not fail.
    pub expected: u64,
    /// Of those, decrypted at least once.
    pub delivered: u64,
    /// Of those, never decrypted.
    pub lost: u64,
    /// Decryptions beyond the first, plus replays the SDK refused.
    pub duplicated: u64,
    /// Texts that were damaged, misattributed, unknown or for another device,
    /// plus envelopes the SDK refused as invalid.
    pub corrupted: u64,
    /// Messages of other runs.
    pub stale: u64,
    /// Deliveries of sends that reported an error.
    pub delivered_after_error: u64,
    /// Repeats on devices whose acknowledgement had failed.
    pub redelivered: u64,
}

/// What one generator's ledger hands to the merge: the parts of the accounting
/// that depend on another generator's knowledge.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exchange {
    /// Deliveries this generator's sends that did not fail owe, on every
    /// generator's devices.
    pub own_expected: u64,
    /// Of those, the ones on this generator's devices that were decrypted.
    pub own_delivered_here: u64,
    /// First decryptions here of this generator's sends that reported an error.
    pub own_after_error_here: u64,
    /// Deliveries to this generator's devices the other generators' sends owe
    /// if none of them failed.
    pub foreign_expected_here: u64,
    /// Other generators' sends decrypted here: `[send index, devices of this
    /// generator that decrypted it]`, ascending by index.
    pub foreign_delivered: Vec<(u64, u32)>,
    /// This generator's sends that reported an error, ascending.
    pub failed_sends: Vec<u64>,
    /// This generator's sends skipped because too many were in flight,
    /// ascending.
    pub skipped_sends: Vec<u64>,
}

/// The accounting of one run.
#[derive(Debug)]
pub struct Ledger {
    run_id: u64,
    /// Per slot, whether this generator drives the device; empty: all do.
    local: Vec<bool>,
    entries: Vec<Option<Entry>>,
    /// Deliveries owed by own sends that did not fail, on every device.
    own_expected: u64,
    /// Of those, owed to local devices.
    expected_open: u64,
    delivered_open: u64,
    foreign_expected: u64,
    foreign_delivered: u64,
    duplicated: u64,
    corrupted: u64,
    stale: u64,
    after_error: u64,
    redelivered: u64,
    skipped: Vec<u64>,
}

impl Ledger {
    /// An empty ledger for run `run_id`, with room for `capacity` sends, that
    /// drives every device.
    pub fn new(run_id: u64, capacity: usize) -> Ledger {
        Ledger::for_generator(run_id, capacity, Vec::new())
    }

    /// An empty ledger for one generator of several: `local[slot]` tells
    /// whether it drives device `slot` (empty: every device).
    pub fn for_generator(run_id: u64, capacity: usize, local: Vec<bool>) -> Ledger {
        Ledger {
            run_id,
            local,
            entries: Vec::with_capacity(capacity),
            own_expected: 0,
            expected_open: 0,
            delivered_open: 0,
            foreign_expected: 0,
            foreign_delivered: 0,
            duplicated: 0,
            corrupted: 0,
            stale: 0,
            after_error: 0,
            redelivered: 0,
            skipped: Vec::new(),
        }
    }

    fn is_local(&self, slot: u32) -> bool {
        self.local.is_empty() || self.local.get(slot as usize).copied().unwrap_or(false)
    }

    /// The run id messages of this run carry.
    pub fn run_id(&self) -> u64 {
        self.run_id
    }

    /// Enters send `index` before it is issued: `devices` (slot, region) must
    /// each decrypt it once.
    pub fn expect(
        &mut self,
        index: u64,
        scheduled: Instant,
        measured: bool,
        from: u8,
        sender: u32,
        devices: &[(u32, u8)],
    ) {
        let Ok(i) = usize::try_from(index) else {
            return;
        };
        if self.entries.len() <= i {
            self.entries.resize(i + 1, None);
        }
        if self.entries[i].is_some() {
            return;
        }
        let slots: Vec<Slot> = devices
            .iter()
            .map(|(device, region)| Slot {
                device: *device,
                region: *region,
                count: 0,
                local: self.is_local(*device),
            })
            .collect();
        self.own_expected += slots.len() as u64;
        self.expected_open += slots.iter().filter(|s| s.local).count() as u64;
        self.entries[i] = Some(Entry {
            scheduled,
            measured,
            from,
            sender,
            state: SendState::InFlight,
            own: true,
            slots,
        });
    }

    /// Enters send `index` of another generator: `devices` (slot, region), this
    /// generator's devices among its recipients, must each decrypt it once if
    /// the send succeeds (only its generator knows).
    pub fn expect_foreign(
        &mut self,
        index: u64,
        scheduled: Instant,
        measured: bool,
        from: u8,
        sender: u32,
        devices: &[(u32, u8)],
    ) {
        let Ok(i) = usize::try_from(index) else {
            return;
        };
        if self.entries.len() <= i {
            self.entries.resize(i + 1, None);
        }
        if self.entries[i].is_some() {
            return;
        }
        self.foreign_expected += devices.len() as u64;
        self.entries[i] = Some(Entry {
            scheduled,
            measured,
            from,
            sender,
            state: SendState::Sent,
            own: false,
            slots: devices
                .iter()
                .map(|(device, region)| Slot {
                    device: *device,
                    region: *region,
                    count: 0,
                    local: true,
                })
                .collect(),
        });
    }

    /// Records that send `index` was skipped (too many in flight): it was
    /// never issued, so nothing is expected of it.
    pub fn skipped(&mut self, index: u64) {
        self.skipped.push(index);
    }

    /// Records the gateway's confirmation of send `index`.
    pub fn send_succeeded(&mut self, index: u64) {
        if let Some(e) = self.entry_mut(index)
            && e.own
            && e.state == SendState::InFlight
        {
            e.state = SendState::Sent;
        }
    }

    /// Records that send `index` failed: its deliveries are no longer expected.
    pub fn send_failed(&mut self, index: u64) {
        let Some(e) = self.entry_mut(index) else {
            return;
        };
        if !e.own || e.state != SendState::InFlight {
            return;
        }
        e.state = SendState::Failed;
        let all = e.slots.len() as u64;
        let expected = e.slots.iter().filter(|s| s.local).count() as u64;
        let delivered = e.slots.iter().filter(|s| s.local && s.count > 0).count() as u64;
        self.own_expected -= all;
        self.expected_open -= expected;
        self.delivered_open -= delivered;
        self.after_error += delivered;
    }

    /// Checks a text decrypted by `device` at `at`; `sender` is the slot of the
    /// device the SDK verified as its sender (`None`: not a device of this run).
    /// `unacked`: the device's last acknowledgement failed, so the gateway may
    /// legitimately deliver again what it had fetched.
    pub fn deliver(
        &mut self,
        device: u32,
        text: &str,
        sender: Option<u32>,
        at: Instant,
        unacked: bool,
    ) -> Outcome {
        let header = match payload::decode(text) {
            Ok(h) => h,
            Err(Invalid::Malformed) => return self.corrupt("malformed text"),
            Err(Invalid::Checksum) => return self.corrupt("checksum mismatch"),
        };
        if header.run_id != self.run_id {
            self.stale += 1;
            return Outcome::Stale;
        }
        if sender != Some(header.sender) {
            return self.corrupt("sender differs from the text's");
        }
        let run_index = header.index;
        let Some(entry) = self.entry_mut(run_index) else {
            return self.corrupt("index never sent");
        };
        if entry.sender != header.sender {
            return self.corrupt("sender differs from the schedule's");
        }
        let (state, own) = (entry.state, entry.own);
        let (scheduled, measured, from) = (entry.scheduled, entry.measured, entry.from);
        let Some(slot) = entry
            .slots
            .iter_mut()
            .find(|s| s.device == device && s.local)
        else {
            return self.corrupt("delivered to a device that is not a recipient");
        };
        slot.count += 1;
        if slot.count > 1 {
            if unacked {
                self.redelivered += 1;
                return Outcome::Redelivered;
            }
            self.duplicated += 1;
            return Outcome::Duplicate;
        }
        let to = slot.region;
        if state == SendState::Failed {
            self.after_error += 1;
            return Outcome::AfterFailure;
        }
        if own {
            self.delivered_open += 1;
        } else {
            self.foreign_delivered += 1;
        }
        Outcome::First {
            latency: at.saturating_duration_since(scheduled),
            measured,
            from,
            to,
        }
    }

    /// Records an envelope the SDK refused: a replay of one it accepted
    /// before (a duplicate, or a redelivery when `unacked`) or one that failed
    /// verification (corrupt).
    pub fn rejected(&mut self, replay: bool, unacked: bool) {
        if replay && unacked {
            self.redelivered += 1;
        } else if replay {
            self.duplicated += 1;
        } else {
            self.corrupted += 1;
        }
    }

    /// Expected deliveries to this generator's devices not yet made (the drain
    /// waits for zero). Those of another generator's send that failed never
    /// come: the drain then ends at its limit.
    pub fn outstanding(&self) -> u64 {
        (self.expected_open - self.delivered_open)
            + (self.foreign_expected - self.foreign_delivered)
    }

    /// Deliveries of this generator's own sends to its own devices not made.
    pub fn own_lost_here(&self) -> u64 {
        self.expected_open - self.delivered_open
    }

    /// What the merge of several generators needs from this one.
    pub fn exchange(&self) -> Exchange {
        let mut x = Exchange {
            own_expected: self.own_expected,
            own_delivered_here: self.delivered_open,
            own_after_error_here: 0,
            foreign_expected_here: self.foreign_expected,
            ..Exchange::default()
        };
        for (i, e) in self.entries.iter().enumerate() {
            let Some(e) = e else { continue };
            let decrypted = e.slots.iter().filter(|s| s.local && s.count > 0).count() as u32;
            if !e.own {
                if decrypted > 0 {
                    x.foreign_delivered.push((i as u64, decrypted));
                }
            } else if e.state == SendState::Failed {
                x.failed_sends.push(i as u64);
                x.own_after_error_here += u64::from(decrypted);
            }
        }
        x.skipped_sends = self.skipped.clone();
        x.skipped_sends.sort_unstable();
        x
    }

    /// The counts, as this generator's devices saw them.
    pub fn totals(&self) -> Totals {
        let expected = self.expected_open + self.foreign_expected;
        let delivered = self.delivered_open + self.foreign_delivered;
        let mut t = Totals {
            expected,
            delivered,
            lost: expected - delivered,
            duplicated: self.duplicated,
            corrupted: self.corrupted,
            stale: self.stale,
            delivered_after_error: self.after_error,
            redelivered: self.redelivered,
            ..Totals::default()
        };
        for e in self.entries.iter().flatten().filter(|e| e.own) {
            t.sends += 1;
            match e.state {
                SendState::InFlight => t.unconfirmed_sends += 1,
                SendState::Sent => t.sent += 1,
                SendState::Failed => t.failed_sends += 1,
            }
        }
        t
    }

    fn entry_mut(&mut self, index: u64) -> Option<&mut Entry> {
        let i = usize::try_from(index).ok()?;
        self.entries.get_mut(i)?.as_mut()
    }

    fn corrupt(&mut self, why: &'static str) -> Outcome {
        self.corrupted += 1;
        Outcome::Corrupted(why)
    }
}

/// Puts together the counts and exchanges of every generator of one run into
/// the totals a single ledger would have counted: a delivery made on one
/// generator's device of a send issued by another counts as delivered when
/// that send did not fail, as delivered after an error when it failed, and as
/// corrupt when it was never issued.
pub fn merge_exchanges(parts: &[(Totals, Exchange)]) -> Result<Totals, String> {
    use std::collections::HashSet;
    let failed: HashSet<u64> = parts
        .iter()
        .flat_map(|(_, x)| x.failed_sends.iter().copied())
        .collect();
    let skipped: HashSet<u64> = parts
        .iter()
        .flat_map(|(_, x)| x.skipped_sends.iter().copied())
        .collect();
    let mut t = Totals::default();
    for (own, x) in parts {
        t.sends += own.sends;
        t.sent += own.sent;
        t.failed_sends += own.failed_sends;
        t.unconfirmed_sends += own.unconfirmed_sends;
        t.duplicated += own.duplicated;
        t.corrupted += own.corrupted;
        t.stale += own.stale;
        t.redelivered += own.redelivered;
        t.expected += x.own_expected;
        t.delivered += x.own_delivered_here;
        t.delivered_after_error += x.own_after_error_here;
        for (index, count) in &x.foreign_delivered {
            let count = u64::from(*count);
            if skipped.contains(index) {
                t.corrupted += count;
            } else if failed.contains(index) {
                t.delivered_after_error += count;
            } else {
                t.delivered += count;
            }
        }
    }
    if t.delivered > t.expected {
        return Err(format!(
            "the reports do not add up: {} deliveries for {} expected (are they all from the same run?)",
            t.delivered, t.expected
        ));
    }
    t.lost = t.expected - t.delivered;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::encode;

    const RUN: u64 = 0xabc;

    /// Send 0 from device 0 (region 0) to devices 1 (region 0) and 2 (region 1);
    /// send 1 from device 1 to device 0.
    fn ledger(start: Instant) -> Ledger {
        let mut l = Ledger::new(RUN, 4);
        l.expect(0, start, true, 0, 0, &[(1, 0), (2, 1)]);
        l.expect(1, start, false, 0, 1, &[(0, 0)]);
        l.send_succeeded(0);
        l.send_succeeded(1);
        l
    }

    #[test]
    fn exact_delivery_balances() {
        let start = Instant::now();
        let mut l = ledger(start);
        assert_eq!(l.outstanding(), 3);
        let later = start + Duration::from_millis(30);
        let out = l.deliver(2, &encode(RUN, 0, 0, 100), Some(0), later, false);
        assert_eq!(
            out,
            Outcome::First {
                latency: Duration::from_millis(30),
                measured: true,
                from: 0,
                to: 1
            }
        );
        l.deliver(1, &encode(RUN, 0, 0, 100), Some(0), later, false);
        l.deliver(0, &encode(RUN, 1, 1, 64), Some(1), later, false);
        assert_eq!(l.outstanding(), 0);
        let t = l.totals();
        assert_eq!((t.sends, t.sent, t.expected, t.delivered), (2, 2, 3, 3));
        assert_eq!((t.lost, t.duplicated, t.corrupted), (0, 0, 0));
    }

    #[test]
    fn losses_duplicates_and_corruption_are_counted() {
        let start = Instant::now();
        let mut l = ledger(start);
        let text = encode(RUN, 0, 0, 100);
        // Device 1 gets send 0 twice; device 2 never gets it.
        assert!(matches!(
            l.deliver(1, &text, Some(0), start, false),
            Outcome::First { .. }
        ));
        assert_eq!(
            l.deliver(1, &text, Some(0), start, false),
            Outcome::Duplicate
        );
        // A damaged copy of send 1 for device 0, then the right one.
        let mut damaged = encode(RUN, 1, 1, 64).into_bytes();
        damaged[63] = if damaged[63] == b'a' { b'b' } else { b'a' };
        let damaged = String::from_utf8(damaged).unwrap();
        assert_eq!(
            l.deliver(0, &damaged, Some(1), start, false),
            Outcome::Corrupted("checksum mismatch")
        );
        assert!(matches!(
            l.deliver(0, &encode(RUN, 1, 1, 64), Some(1), start, false),
            Outcome::First { .. }
        ));
        // Misattributed, misdirected, unknown and garbage texts.
        assert!(matches!(
            l.deliver(2, &text, Some(1), start, false),
            Outcome::Corrupted(_)
        ));
        assert!(matches!(
            l.deliver(3, &text, Some(0), start, false),
            Outcome::Corrupted(_)
        ));
        assert!(matches!(
            l.deliver(1, &encode(RUN, 9, 0, 64), Some(0), start, false),
            Outcome::Corrupted(_)
        ));
        assert!(matches!(
            l.deliver(1, "hello", Some(0), start, false),
            Outcome::Corrupted(_)
        ));
        // A text claiming a sender the schedule does not have for that index.
        assert!(matches!(
            l.deliver(2, &encode(RUN, 0, 1, 100), Some(1), start, false),
            Outcome::Corrupted(_)
        ));
        // Another run's message is stale, not corrupt.
        assert_eq!(
            l.deliver(1, &encode(RUN + 1, 0, 0, 100), Some(0), start, false),
            Outcome::Stale
        );
        // The SDK refused a replay and a forgery.
        l.rejected(true, false);
        l.rejected(false, false);
        // After a failed ack, repeats are redeliveries.
        l.rejected(true, true);
        assert_eq!(
            l.deliver(1, &text, Some(0), start, true),
            Outcome::Redelivered
        );
        let t = l.totals();
        assert_eq!(t.expected, 3);
        assert_eq!(t.delivered, 2);
        assert_eq!(t.lost, 1);
        assert_eq!(t.duplicated, 2);
        assert_eq!(t.corrupted, 7);
        assert_eq!(t.stale, 1);
        assert_eq!(t.redelivered, 2);
    }

    #[test]
    fn failed_sends_are_not_expected() {
        let start = Instant::now();
        let mut l = Ledger::new(RUN, 2);
        l.expect(0, start, true, 0, 0, &[(1, 0), (2, 0)]);
        // One device got it before the send reported its error.
        l.deliver(1, &encode(RUN, 0, 0, 80), Some(0), start, false);
        l.send_failed(0);
        assert_eq!(
            l.deliver(2, &encode(RUN, 0, 0, 80), Some(0), start, false),
            Outcome::AfterFailure
        );
        assert_eq!(
            l.deliver(2, &encode(RUN, 0, 0, 80), Some(0), start, false),
            Outcome::Duplicate
        );
        let t = l.totals();
        assert_eq!((t.expected, t.delivered, t.lost), (0, 0, 0));
        assert_eq!(
            (t.failed_sends, t.delivered_after_error, t.duplicated),
            (1, 2, 1)
        );
        // An unanswered send still expects its deliveries.
        l.expect(1, start, true, 0, 0, &[(1, 0)]);
        let t = l.totals();
        assert_eq!((t.unconfirmed_sends, t.expected, t.lost), (1, 1, 1));
    }

    /// Two generators: A drives devices 0 and 1 (region 0), B devices 2 and 3
    /// (region 1). The same sends as one ledger sees them.
    #[test]
    fn generators_merge_into_the_single_ledger_totals() {
        let start = Instant::now();
        // (index, sending device, recipients)
        type Send = (u64, u32, &'static [(u32, u8)]);
        let sends: [Send; 4] = [
            (0, 0, &[(1, 0), (2, 1), (3, 1)]),
            (1, 2, &[(3, 1), (0, 0)]),
            (2, 3, &[(2, 1)]),
            (3, 1, &[(0, 0), (2, 1)]),
        ];
        let mut single = Ledger::new(RUN, 4);
        let mut a = Ledger::for_generator(RUN, 4, vec![true, true, false, false]);
        let mut b = Ledger::for_generator(RUN, 4, vec![false, false, true, true]);
        for (index, sender, devices) in sends {
            single.expect(index, start, true, 0, sender, devices);
            let (own, other) = if sender < 2 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            own.expect(index, start, true, 0, sender, devices);
            let theirs: Vec<(u32, u8)> = devices
                .iter()
                .copied()
                .filter(|(d, _)| other.is_local(*d))
                .collect();
            other.expect_foreign(index, start, true, 0, sender, &theirs);
        }
        // Send 3 fails after device 2 got it; send 2 is never answered.
        for l in [&mut single, &mut a, &mut b] {
            for i in [0, 1] {
                l.send_succeeded(i);
            }
        }
        single.send_failed(3);
        a.send_failed(3);
        let deliveries: [(u32, u64, u32); 7] = [
            (1, 0, 0),
            (2, 0, 0),
            (3, 0, 0),
            (3, 1, 2),
            (0, 1, 2),
            (2, 3, 1),
            (3, 0, 0), // a duplicate
        ];
        for (device, index, sender) in deliveries {
            let text = encode(RUN, index, sender, 80);
            single.deliver(device, &text, Some(sender), start, false);
            let l = if device < 2 { &mut a } else { &mut b };
            l.deliver(device, &text, Some(sender), start, false);
        }
        let want = single.totals();
        let got =
            merge_exchanges(&[(a.totals(), a.exchange()), (b.totals(), b.exchange())]).unwrap();
        assert_eq!(got, want);
        // Send 2's delivery to device 2 (its own sender's generator) is lost.
        assert_eq!(
            (want.lost, want.duplicated, want.delivered_after_error),
            (1, 1, 1)
        );
        assert_eq!((want.sends, want.sent, want.unconfirmed_sends), (4, 2, 1));
        // Every pair of A's own sends on its own devices arrived.
        assert_eq!(a.own_lost_here(), 0);
        assert_eq!(b.own_lost_here(), 1);
        assert_eq!(a.exchange().failed_sends, vec![3]);
        assert_eq!(b.exchange().foreign_delivered, vec![(0, 2), (3, 1)]);
    }

    #[test]
    fn merged_deliveries_of_skipped_sends_are_corrupt() {
        let start = Instant::now();
        let mut a = Ledger::for_generator(RUN, 2, vec![true, false]);
        let mut b = Ledger::for_generator(RUN, 2, vec![false, true]);
        a.skipped(0);
        b.expect_foreign(0, start, true, 0, 0, &[(1, 0)]);
        assert_eq!(b.outstanding(), 1);
        b.deliver(1, &encode(RUN, 0, 0, 80), Some(0), start, false);
        let t = merge_exchanges(&[(a.totals(), a.exchange()), (b.totals(), b.exchange())]).unwrap();
        assert_eq!((t.expected, t.delivered, t.corrupted), (0, 0, 1));
        // More deliveries than expected: not one run.
        let mut x = b.exchange();
        x.foreign_delivered = vec![(5, 3)];
        assert!(merge_exchanges(&[(b.totals(), x)]).is_err());
    }
}
