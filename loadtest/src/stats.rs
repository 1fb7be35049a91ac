//! Latency histograms per operation and region pair, errors by operation and
//! status, and the live counters the progress display reads.
//!
//! Latencies are recorded in microseconds in HdrHistograms with three
//! significant digits (0.1 % resolution) up to [`MAX_LATENCY_US`]; anything
//! longer is recorded as that maximum.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Longest latency a histogram tells apart (five minutes).
pub const MAX_LATENCY_US: u64 = 300_000_000;

/// A measured operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// Register (code sent).
    Register,
    /// Authorize with the code.
    Authorize,
    /// Linking a further device (request, grant, import).
    Link,
    /// A 1:1 send, from its scheduled time to the gateway's confirmation.
    Send,
    /// A group send, likewise.
    GroupSend,
    /// One Fetch (with decryption of what it returned).
    Fetch,
    /// One Ack.
    Ack,
    /// From a send's scheduled time to its decryption on a recipient device.
    Delivery,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 8] = [
        Op::Register,
        Op::Authorize,
        Op::Link,
        Op::Send,
        Op::GroupSend,
        Op::Fetch,
        Op::Ack,
        Op::Delivery,
    ];

    /// The operation a report names.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Register => "register",
            Op::Authorize => "authorize",
            Op::Link => "link",
            Op::Send => "send",
            Op::GroupSend => "group_send",
            Op::Fetch => "fetch",
            Op::Ack => "ack",
            Op::Delivery => "delivery",
        }
    }
}

/// A new, empty latency histogram.
pub fn histogram() -> Histogram<u64> {
    // Constant bounds that meet hdrhistogram's requirements (low >= 1,
    // high >= 2 * low, sigfig <= 5): no input reaches this.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// A histogram's recorded buckets as `(value, count)`, ascending: the value is
/// the highest one the bucket holds. Recording each count at its value into an
/// empty [`histogram`] rebuilds the same histogram bucket for bucket, so every
/// percentile, the count, minimum, maximum and mean come out as before.
pub fn buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Rebuilds a histogram from [`buckets`]; a value out of the histograms' range
/// is an error.
pub fn from_buckets(buckets: &[(u64, u64)]) -> Result<Histogram<u64>, String> {
    let mut h = histogram();
    for (value, count) in buckets {
        if *value == 0 || *value > h.highest_equivalent(MAX_LATENCY_US) {
            return Err(format!(
                "latency bucket {value} µs is outside 1..={MAX_LATENCY_US} µs"
            ));
        }
        h.record_n(*value, *count)
            .map_err(|e| format!("latency bucket {value} µs: {e:?}"))?;
    }
    Ok(h)
}

/// Microseconds of a duration, clamped to the histograms' range.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_LATENCY_US)
}

/// A region pair: sender (or device) region, destination region (or
/// [`crate::plan::GROUP_DESTINATION`]).
pub type Pair = (u8, u8);

/// Everything measured.
#[derive(Default)]
pub struct Measurements {
    /// Per operation and region pair.
    pub by_pair: BTreeMap<(Op, Pair), Histogram<u64>>,
    /// Errors per operation and kind (a status name such as `UNAVAILABLE`, or a
    /// client-side kind such as `unreachable`).
    pub errors: BTreeMap<(Op, String), u64>,
}

impl Measurements {
    /// The histogram of one operation over all pairs.
    pub fn overall(&self, op: Op) -> Histogram<u64> {
        let mut all = histogram();
        for ((o, _), h) in &self.by_pair {
            if *o == op {
                // Same bounds everywhere: adding cannot fail.
                let _ = all.add(h);
            }
        }
        all
    }

    /// Errors of one operation.
    pub fn error_count(&self, op: Op) -> u64 {
        self.errors
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The shared recorder: measured histograms behind a lock, live counters and
/// whole-run histograms for the progress display.
pub struct Stats {
    measured: Mutex<Measurements>,
    live_send: Mutex<Histogram<u64>>,
    live_delivery: Mutex<Histogram<u64>>,
    /// Sends issued (warm-up included).
    pub issued: AtomicU64,
    /// Sends the gateway confirmed.
    pub confirmed: AtomicU64,
    /// Sends confirmed inside the measured period.
    pub confirmed_in_window: AtomicU64,
    /// Sends skipped because too many were in flight.
    pub skipped: AtomicU64,
    /// Sends in flight now.
    pub in_flight: AtomicU64,
    /// Message text bytes confirmed inside the measured period.
    pub bytes_in_window: AtomicU64,
    /// Deliveries (first decryptions).
    pub delivered: AtomicU64,
    /// Deliveries inside the measured period.
    pub delivered_in_window: AtomicU64,
    /// Errors of any operation.
    pub errors: AtomicU64,
    /// Largest delay between a send's scheduled time and its start, in µs.
    pub max_start_lag_us: AtomicU64,
    /// Subscriptions (re)established.
    pub subscriptions: AtomicU64,
    /// Push notifications received.
    pub pushes: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            measured: Mutex::new(Measurements::default()),
            live_send: Mutex::new(histogram()),
            live_delivery: Mutex::new(histogram()),
            issued: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            confirmed_in_window: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            bytes_in_window: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_in_window: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            max_start_lag_us: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain counters behind: still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Stats {
    /// Records a measured latency.
    pub fn record(&self, op: Op, pair: Pair, latency: Duration) {
        let mut m = lock(&self.measured);
        m.by_pair
            .entry((op, pair))
            .or_insert_with(histogram)
            .saturating_record(micros(latency));
    }

    /// Records a latency for the live display only (warm-up included).
    pub fn record_live(&self, op: Op, latency: Duration) {
        let h = match op {
            Op::Send | Op::GroupSend => &self.live_send,
            Op::Delivery => &self.live_delivery,
            _ => return,
        };
        lock(h).saturating_record(micros(latency));
    }

    /// Counts an error.
    pub fn error(&self, op: Op, kind: impl Into<String>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut m = lock(&self.measured);
        *m.errors.entry((op, kind.into())).or_insert(0) += 1;
    }

    /// Live send and delivery p50 and p99 in ms (send first).
    pub fn live_percentiles(&self) -> [(f64, f64); 2] {
        let p = |h: &Mutex<Histogram<u64>>| {
            let h = lock(h);
            if h.is_empty() {
                return (0.0, 0.0);
            }
            (
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
            )
        };
        [p(&self.live_send), p(&self.live_delivery)]
    }

    /// Notes how late a send started.
    pub fn start_lag(&self, lag: Duration) {
        self.max_start_lag_us
            .fetch_max(micros(lag), Ordering::Relaxed);
    }

    /// A copy of everything measured.
    pub fn snapshot(&self) -> Measurements {
        let m = lock(&self.measured);
        Measurements {
            by_pair: m.by_pair.clone(),
            errors: m.errors.clone(),
        }
    }
}

/// The name of an SDK error for the error table: the status name for gateway
/// answers, else a short kind.
pub fn error_kind(e: &rossby_client::Error) -> String {
    use rossby_client::Error as E;
    match e {
        E::Status { status, .. } => rossby_client::error::status_name(*status).to_string(),
        E::Unreachable { .. } => "unreachable".into(),
        E::UnknownRecipient(_) => "NOT_FOUND".into(),
        E::BadReply(_) => "bad_reply".into(),
        E::Crypto(_) => "crypto".into(),
        E::Group(_) => "group".into(),
        E::Io { .. } => "state_io".into(),
        E::Protocol(_) => "protocol".into(),
        E::NotAuthorized => "not_authorized".into(),
        _ => "client".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_merge_by_operation() {
        let s = Stats::default();
        s.record(Op::Send, (0, 1), Duration::from_millis(10));
        s.record(Op::Send, (1, 0), Duration::from_millis(30));
        s.record(Op::Fetch, (0, 0), Duration::from_millis(1));
        s.record(Op::Send, (0, 1), Duration::from_secs(100_000));
        s.error(Op::Send, "UNAVAILABLE");
        s.error(Op::Send, "UNAVAILABLE");
        s.error(Op::Ack, "unreachable");
        let m = s.snapshot();
        let send = m.overall(Op::Send);
        assert_eq!(send.len(), 3);
        assert_eq!(send.max(), send.highest_equivalent(MAX_LATENCY_US));
        assert_eq!(m.by_pair.len(), 3);
        assert_eq!(m.error_count(Op::Send), 2);
        assert_eq!(s.errors.load(Ordering::Relaxed), 3);
        assert_eq!(micros(Duration::ZERO), 1);
    }

    #[test]
    fn buckets_rebuild_the_same_histogram() {
        let mut h = histogram();
        for v in [1, 2, 999, 1000, 1001, 123_456, 5_000_000, MAX_LATENCY_US] {
            h.record_n(v, v % 7 + 1).unwrap();
        }
        let again = from_buckets(&buckets(&h)).unwrap();
        assert_eq!(again, h);
        assert_eq!(
            (again.min(), again.max(), again.len()),
            (h.min(), h.max(), h.len())
        );
        assert_eq!(again.mean(), h.mean());
        assert!(from_buckets(&[(0, 1)]).is_err());
        assert!(from_buckets(&[(u64::MAX, 1)]).is_err());
    }

    #[test]
    fn live_percentiles_start_at_zero() {
        let s = Stats::default();
        assert_eq!(s.live_percentiles(), [(0.0, 0.0), (0.0, 0.0)]);
        for ms in 1..=100 {
            s.record_live(Op::Delivery, Duration::from_millis(ms));
        }
        let [(send50, _), (p50, p99)] = s.live_percentiles();
        assert_eq!(send50, 0.0);
        assert!((p50 - 50.0).abs() < 0.1, "{p50}");
        assert!((p99 - 99.0).abs() < 0.1, "{p99}");
    }
}
