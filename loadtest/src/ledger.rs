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
}

#[derive(Clone, Debug)]
struct Entry {
    scheduled: Instant,
    measured: bool,
    from: u8,
    sender: u32,
    state: SendState,
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

/// The counts of a ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
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

/// The accounting of one run.
#[derive(Debug)]
pub struct Ledger {
    run_id: u64,
    entries: Vec<Option<Entry>>,
    expected_open: u64,
    delivered_open: u64,
    duplicated: u64,
    corrupted: u64,
    stale: u64,
    after_error: u64,
    redelivered: u64,
}

impl Ledger {
    /// An empty ledger for run `run_id`, with room for `capacity` sends.
    pub fn new(run_id: u64, capacity: usize) -> Ledger {
        Ledger {
            run_id,
            entries: Vec::with_capacity(capacity),
            expected_open: 0,
            delivered_open: 0,
            duplicated: 0,
            corrupted: 0,
            stale: 0,
            after_error: 0,
            redelivered: 0,
        }
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
        self.expected_open += devices.len() as u64;
        self.entries[i] = Some(Entry {
            scheduled,
            measured,
            from,
            sender,
            state: SendState::InFlight,
            slots: devices
                .iter()
                .map(|(device, region)| Slot {
                    device: *device,
                    region: *region,
                    count: 0,
                })
                .collect(),
        });
    }

    /// Records the gateway's confirmation of send `index`.
    pub fn send_succeeded(&mut self, index: u64) {
        if let Some(e) = self.entry_mut(index)
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
        if e.state != SendState::InFlight {
            return;
        }
        e.state = SendState::Failed;
        let expected = e.slots.len() as u64;
        let delivered = e.slots.iter().filter(|s| s.count > 0).count() as u64;
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
        let state = entry.state;
        let (scheduled, measured, from) = (entry.scheduled, entry.measured, entry.from);
        let Some(slot) = entry.slots.iter_mut().find(|s| s.device == device) else {
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
        self.delivered_open += 1;
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

    /// Expected deliveries not yet made (the drain waits for zero).
    pub fn outstanding(&self) -> u64 {
        self.expected_open - self.delivered_open
    }

    /// The counts.
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            expected: self.expected_open,
            delivered: self.delivered_open,
            lost: self.expected_open - self.delivered_open,
            duplicated: self.duplicated,
            corrupted: self.corrupted,
            stale: self.stale,
            delivered_after_error: self.after_error,
            redelivered: self.redelivered,
            ..Totals::default()
        };
        for e in self.entries.iter().flatten() {
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
}
