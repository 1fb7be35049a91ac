//! Token-bucket rate limits per device, per source address and per account for
//! contact discovery, kept in this gateway's memory. (Codes per identifier are
//! limited in storage, see `rossby_storage::tables::identifier_limits`.)
//!
//! Buckets live in moka caches that forget a bucket once it has been idle long
//! enough to be full again (a forgotten bucket and a full one behave the same) and
//! hold a bounded number of buckets, so memory stays bounded however many keys an
//! attacker invents. A rate whose `per_second` or `burst` is infinite disables that
//! limit (for benchmarks).

mod options;

pub use options::{RateLimitOptions, parse_burst, parse_rate};

use crate::settings::{Rate, RateLimits};
use rossby_keyspace::{BoxId, DeviceId};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most buckets each limiter keeps.
pub const DEFAULT_CAPACITY: u64 = 500_000;

/// Longest time a bucket is remembered while idle.
const MAX_IDLE: Duration = Duration::from_secs(24 * 3600);

/// Most a caller is told to wait.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A refused request: try again after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// When one token will be available again.
    pub retry_after: Duration,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// One family of token buckets keyed by `K`.
pub struct Limiter<K> {
    rate: Rate,
    buckets: Option<moka::sync::Cache<K, Arc<Mutex<Bucket>>>>,
}

impl<K: Hash + Eq + Send + Sync + Clone + 'static> Limiter<K> {
    /// Buckets of `rate`, at most `capacity` of them.
    pub fn new(rate: Rate, capacity: u64) -> Self {
        let unlimited = !rate.per_second.is_finite() || !rate.burst.is_finite();
        let buckets = (!unlimited).then(|| {
            let refill = if rate.per_second > 0.0 {
                Duration::try_from_secs_f64(rate.burst.max(1.0) / rate.per_second)
                    .unwrap_or(MAX_IDLE)
            } else {
                MAX_IDLE
            };
            // Twice the refill time: a bucket charged into debt (at most one
            // burst deep, see `charge`) is not forgotten before it is full.
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(
                    refill
                        .saturating_mul(2)
                        .clamp(Duration::from_secs(1), MAX_IDLE),
                )
                .build()
        });
        Limiter { rate, buckets }
    }

    /// Takes one token from `key`'s bucket, or says how long to wait.
    pub fn check(&self, key: K, now: Instant) -> Result<(), Limited> {
        self.with_bucket(key, now, |b, rate| {
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                Ok(())
            } else {
                Err(wait_for(1.0 - b.tokens, rate))
            }
        })
    }

    /// Whether `key`'s bucket holds anything (not in debt from [`Self::charge`]).
    pub fn in_credit(&self, key: K, now: Instant) -> Result<(), Limited> {
        self.with_bucket(key, now, |b, rate| {
            if b.tokens > 0.0 {
                Ok(())
            } else {
                Err(wait_for(f64::EPSILON - b.tokens, rate))
            }
        })
    }

    /// Takes `cost` tokens whatever the bucket holds: work whose size is known
    /// only once it is done is paid afterwards, and the debt (at most one burst
    /// deep) refuses `key`'s next requests until it is paid off.
    pub fn charge(&self, key: K, now: Instant, cost: f64) {
        let _ = self.with_bucket(key, now, |b, rate| {
            b.tokens = (b.tokens - cost.max(0.0)).max(-rate.burst.max(0.0));
            Ok(())
        });
    }

    fn with_bucket(
        &self,
        key: K,
        now: Instant,
        f: impl FnOnce(&mut Bucket, Rate) -> Result<(), Limited>,
    ) -> Result<(), Limited> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        let burst = self.rate.burst.max(0.0);
        let bucket = buckets.get_with(key, || {
            Arc::new(Mutex::new(Bucket {
                tokens: burst,
                updated: now,
            }))
        });
        let mut b = bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate.per_second.max(0.0)).min(burst);
        b.updated = now.max(b.updated);
        f(&mut b, self.rate)
    }
}

/// How long until `missing` tokens have refilled at `rate`.
fn wait_for(missing: f64, rate: Rate) -> Limited {
    let retry_after = if rate.per_second > 0.0 {
        Duration::try_from_secs_f64(missing / rate.per_second)
            .unwrap_or(MAX_RETRY_AFTER)
            .min(MAX_RETRY_AFTER)
    } else {
        MAX_RETRY_AFTER
    };
    Limited {
        retry_after: retry_after.max(Duration::from_millis(1)),
    }
}

/// The key of a source address: IPv4 addresses (also IPv4-mapped IPv6 ones) as
/// they are, IPv6 addresses by their /64 prefix, which is what one subscriber
/// usually gets.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// Every rate limit of the API.
pub struct RateLimiter {
    per_device: Limiter<(BoxId, DeviceId)>,
    per_ip: Limiter<IpAddr>,
    discovery: Limiter<BoxId>,
    sealed: Limiter<BoxId>,
    stored_bytes: Limiter<BoxId>,
    codes_per_address: Limiter<IpAddr>,
}

impl RateLimiter {
    /// Limiters for the configured rates.
    pub fn new(limits: &RateLimits) -> Self {
        RateLimiter {
            per_device: Limiter::new(limits.per_device, DEFAULT_CAPACITY),
            per_ip: Limiter::new(limits.per_ip, DEFAULT_CAPACITY),
            discovery: Limiter::new(limits.discovery_per_device, DEFAULT_CAPACITY),
            sealed: Limiter::new(limits.sealed_per_recipient, DEFAULT_CAPACITY),
            stored_bytes: Limiter::new(limits.stored_bytes_per_account, DEFAULT_CAPACITY),
            codes_per_address: Limiter::new(limits.codes_per_address, DEFAULT_CAPACITY),
        }
    }

    /// One request from a source address.
    pub fn ip(&self, ip: IpAddr) -> Result<(), Limited> {
        self.per_ip.check(ip_key(ip), Instant::now())
    }

    /// One authenticated request of a device.
    pub fn device(&self, box_id: BoxId, device: DeviceId) -> Result<(), Limited> {
        self.per_device.check((box_id, device), Instant::now())
    }

    /// Whether an account may store more: refused while it is in debt for
    /// bytes its devices made the gateway store (every recipient's copy
    /// counts). Keyed by box, so linking more devices buys no more.
    pub fn may_store(&self, box_id: BoxId) -> Result<(), Limited> {
        self.stored_bytes.in_credit(box_id, Instant::now())
    }

    /// Charges an account for `bytes` stored on its behalf (an envelope times
    /// the boxes it went into).
    pub fn stored(&self, box_id: BoxId, bytes: u64) {
        self.stored_bytes
            .charge(box_id, Instant::now(), bytes as f64);
    }

    /// One verification code requested from a source address.
    pub fn code_from(&self, ip: IpAddr) -> Result<(), Limited> {
        self.codes_per_address.check(ip_key(ip), Instant::now())
    }

    /// One sealed (unauthenticated) send to a recipient box.
    pub fn sealed(&self, recipient: BoxId) -> Result<(), Limited> {
        self.sealed.check(recipient, Instant::now())
    }

    /// One lookup by identifier (RequestKey, Block, Unblock) of an account:
    /// keyed by box, so linking more devices does not buy more lookups.
    pub fn discovery(&self, box_id: BoxId) -> Result<(), Limited> {
        self.discovery.check(box_id, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn rate(per_second: f64, burst: f64) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills() {
        let limiter = Limiter::new(rate(2.0, 3.0), 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("k", t0), Ok(()));
        }
        let refused = limiter.check("k", t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        // Other keys have their own bucket.
        assert_eq!(limiter.check("other", t0), Ok(()));
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(limiter.check("k", t1), Ok(()));
        assert!(limiter.check("k", t1).is_err());
        // Long idle: the bucket is full again but never above its burst.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(limiter.check("k", t2), Ok(()));
        }
        assert!(limiter.check("k", t2).is_err());
    }

    #[test]
    fn a_charge_beyond_the_balance_is_debt_that_refuses_until_paid() {
        let limiter = Limiter::new(rate(100.0, 1000.0), 10);
        let t0 = Instant::now();
        assert_eq!(limiter.in_credit("k", t0), Ok(()));
        // 1500 from a full bucket of 1000: 500 in debt.
        limiter.charge("k", t0, 1500.0);
        let refused = limiter.in_credit("k", t0).unwrap_err();
        assert!(refused.retry_after >= Duration::from_secs(5), "{refused:?}");
        // 5 s later the debt is paid (100 per second), and the key may store.
        assert!(
            limiter
                .in_credit("k", t0 + Duration::from_millis(4_900))
                .is_err()
        );
        assert_eq!(
            limiter.in_credit("k", t0 + Duration::from_millis(5_100)),
            Ok(())
        );
        // Debt goes at most one burst deep: paid off within 10 s (a burst at
        // 100 per second) whatever was charged.
        limiter.charge("other", t0, 1e12);
        assert!(
            limiter
                .in_credit("other", t0 + Duration::from_millis(9_900))
                .is_err()
        );
        assert_eq!(
            limiter.in_credit("other", t0 + Duration::from_millis(10_100)),
            Ok(())
        );
    }

    #[test]
    fn infinite_rates_disable_the_limit_and_zero_rates_never_refill() {
        let unlimited = Limiter::new(rate(f64::INFINITY, 1.0), 10);
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(unlimited.check(1u8, now), Ok(()));
        }
        let fixed = Limiter::new(rate(0.0, 1.0), 10);
        assert_eq!(fixed.check(1u8, now), Ok(()));
        assert_eq!(
            fixed
                .check(1u8, now + Duration::from_secs(60))
                .unwrap_err()
                .retry_after,
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn ipv6_addresses_share_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(ip_key(mapped), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(
            ip_key(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        );
    }
}
