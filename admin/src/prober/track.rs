//! What a receiving prober knows about the probes addressed to it: which
//! sequence numbers of each sending region arrived, and which are overdue.
//!
//! Pure bookkeeping (no clock, no I/O) so the accounting is tested on its own.
//! Times are the senders' wall clocks in milliseconds since the epoch: the
//! payload carries its send time, and probers are expected to run with
//! synchronized clocks (NTP), as the delivery latency already assumes.

use std::collections::{BTreeSet, HashMap};

/// The text of one probe message. Sent as a plain text message, so the prober
/// exercises the path every user message takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// The sending prober's region (name).
    pub from: String,
    /// The region whose prober account it is addressed to (name).
    pub to: String,
    /// A random number of the sending prober's run: sequences restart with a
    /// new run, and must not look like a gap.
    pub run: u64,
    /// Sequence of this probe within (run, from, to), from 0.
    pub seq: u64,
    /// The sender's wall clock when sending, in ms since the epoch.
    pub sent_ms: u64,
    /// The sender's probe interval, in ms: when the next probe is due.
    pub interval_ms: u64,
}

/// The first word of every probe message.
const MAGIC: &str = "rossby-probe/1";

/// Overdue probes counted per pair and call at most, so a long-silent sender
/// cannot make one [`Tracker::expire`] loop for long.
const MAX_EXPIRED_PER_CALL: u64 = 10_000;

impl Payload {
    /// The message text.
    pub fn to_text(&self) -> String {
        format!(
            "{MAGIC} from={} to={} run={:016x} seq={} sent_ms={} interval_ms={}",
            self.from, self.to, self.run, self.seq, self.sent_ms, self.interval_ms
        )
    }

    /// Parses a message text; `None` when it is not a probe (other messages
    /// to a prober account are ignored, not counted).
    pub fn parse(text: &str) -> Option<Payload> {
        let mut words = text.split_ascii_whitespace();
        if words.next()? != MAGIC {
            return None;
        }
        let mut field = |name: &str| {
            words
                .next()
                .and_then(|w| w.strip_prefix(name))
                .and_then(|w| w.strip_prefix('='))
                .map(str::to_string)
        };
        let from = field("from")?;
        let to = field("to")?;
        let run = u64::from_str_radix(&field("run")?, 16).ok()?;
        let seq = field("seq")?.parse().ok()?;
        let sent_ms = field("sent_ms")?.parse().ok()?;
        let interval_ms: u64 = field("interval_ms")?.parse().ok()?;
        if words.next().is_some() || interval_ms == 0 || from.is_empty() || to.is_empty() {
            return None;
        }
        Some(Payload {
            from,
            to,
            run,
            seq,
            sent_ms,
            interval_ms,
        })
    }
}

/// What a received probe means for the accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receipt {
    /// Counted as delivered.
    Delivered,
    /// Already counted: a duplicate, or one that arrived after it was counted
    /// missing.
    Late,
}

/// The sequence numbers of one sending region's current run.
#[derive(Debug)]
struct Pair {
    run: u64,
    /// The lowest sequence neither received nor counted missing yet.
    next: u64,
    /// The highest sequence received, and its send time.
    highest: u64,
    highest_sent_ms: u64,
    interval_ms: u64,
    /// Received sequences at or above `next`.
    received: BTreeSet<u64>,
}

/// Probes received per sending region.
#[derive(Debug, Default)]
pub struct Tracker {
    pairs: HashMap<String, Pair>,
}

impl Tracker {
    /// Records a received probe.
    ///
    /// The first probe of a sender's run starts its accounting: probes sent
    /// before this prober (or the sender's run) started are not expected.
    pub fn receive(&mut self, p: &Payload) -> Receipt {
        let fresh = || Pair {
            run: p.run,
            next: p.seq,
            highest: p.seq,
            highest_sent_ms: p.sent_ms,
            interval_ms: p.interval_ms,
            received: BTreeSet::from([p.seq]),
        };
        let pair = match self.pairs.get_mut(&p.from) {
            Some(pair) if pair.run == p.run => pair,
            _ => {
                self.pairs.insert(p.from.clone(), fresh());
                return Receipt::Delivered;
            }
        };
        if p.seq < pair.next || !pair.received.insert(p.seq) {
            return Receipt::Late;
        }
        if p.seq > pair.highest {
            pair.highest = p.seq;
            pair.highest_sent_ms = p.sent_ms;
            pair.interval_ms = p.interval_ms;
        }
        Receipt::Delivered
    }

    /// Counts the probes that are `deadline_ms` past their (estimated) send
    /// time at `now_ms` without having arrived, per sending region. Each is
    /// counted once.
    ///
    /// A gap's send time is estimated back from the highest probe received;
    /// probes after it are expected every interval, so a sender that falls
    /// silent (its region's gateway down, its prober stopped) shows as missing
    /// too.
    pub fn expire(&mut self, now_ms: u64, deadline_ms: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (from, pair) in &mut self.pairs {
            let mut missing = 0;
            while missing < MAX_EXPIRED_PER_CALL {
                if pair.received.remove(&pair.next) {
                    pair.next += 1;
                    continue;
                }
                let due = if pair.next <= pair.highest {
                    pair.highest_sent_ms
                        .saturating_sub((pair.highest - pair.next).saturating_mul(pair.interval_ms))
                } else {
                    pair.highest_sent_ms
                        .saturating_add((pair.next - pair.highest).saturating_mul(pair.interval_ms))
                };
                if now_ms < due.saturating_add(deadline_ms) {
                    break;
                }
                missing += 1;
                pair.next += 1;
            }
            if missing > 0 {
                out.push((from.clone(), missing));
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(from: &str, run: u64, seq: u64) -> Payload {
        Payload {
            from: from.into(),
            to: "b".into(),
            run,
            seq,
            sent_ms: 1_000_000 + seq * 1000,
            interval_ms: 1000,
        }
    }

    #[test]
    fn payloads_round_trip_and_other_texts_are_ignored() {
        let p = probe("eu-west", 0xdead_beef, 42);
        assert_eq!(Payload::parse(&p.to_text()), Some(p.clone()));
        for text in [
            "",
            "hello",
            "rossby-probe/1",
            "rossby-probe/2 from=a to=b run=1 seq=1 sent_ms=1 interval_ms=1",
            "rossby-probe/1 from=a to=b run=zz seq=1 sent_ms=1 interval_ms=1",
            "rossby-probe/1 from=a to=b run=1 seq=1 sent_ms=1 interval_ms=0",
            "rossby-probe/1 from=a to=b run=1 seq=1 sent_ms=1 interval_ms=1 extra",
            "rossby-probe/1 to=b from=a run=1 seq=1 sent_ms=1 interval_ms=1",
        ] {
            assert_eq!(Payload::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn in_order_probes_are_never_missing() {
        let mut t = Tracker::default();
        for seq in 5..10 {
            assert_eq!(t.receive(&probe("a", 1, seq)), Receipt::Delivered);
        }
        // Probe 10 is due at 1_010_000: not missing before the deadline.
        assert!(t.expire(1_010_000 + 4_999, 5_000).is_empty());
        assert_eq!(t.expire(1_010_000 + 5_000, 5_000), vec![("a".into(), 1)]);
    }

    #[test]
    fn a_gap_is_missing_once_and_a_late_arrival_is_not_counted_again() {
        let mut t = Tracker::default();
        t.receive(&probe("a", 1, 0));
        t.receive(&probe("a", 1, 2));
        // Probe 1 was due at 1_001_000.
        assert!(t.expire(1_005_000, 5_000).is_empty());
        assert_eq!(t.expire(1_006_000, 5_000), vec![("a".into(), 1)]);
        assert!(t.expire(1_006_500, 5_000).is_empty());
        assert_eq!(t.receive(&probe("a", 1, 1)), Receipt::Late);
        assert_eq!(t.receive(&probe("a", 1, 2)), Receipt::Late, "duplicate");
    }

    #[test]
    fn a_silent_sender_accrues_one_missing_probe_per_interval() {
        let mut t = Tracker::default();
        t.receive(&probe("a", 1, 0));
        t.receive(&probe("c", 7, 0));
        t.receive(&probe("c", 7, 30));
        // 30 s after probe 0 with a 5 s deadline: probes 1..=25 of "a" are due.
        let got = t.expire(1_030_000, 5_000);
        assert_eq!(got, vec![("a".into(), 25), ("c".into(), 25)]);
    }

    #[test]
    fn a_new_run_restarts_the_accounting() {
        let mut t = Tracker::default();
        t.receive(&probe("a", 1, 100));
        assert_eq!(t.receive(&probe("a", 2, 0)), Receipt::Delivered);
        assert_eq!(t.receive(&probe("a", 2, 1)), Receipt::Delivered);
        assert!(t.expire(1_002_000 + 4_000, 5_000).is_empty());
    }
}
