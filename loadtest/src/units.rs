//! Parsing and printing of the small value formats the scenario uses: durations
//! (`20s`, `500ms`, `1.5m`), message size distributions (`64-512:80,4096:20`) and
//! the send mix (`same=45,cross=45,group=10`).

use rand::Rng;
use std::fmt;
use std::time::Duration;

/// Parses a duration: a non-negative decimal number followed by `ms`, `s`, `m` or
/// `h` (`250ms`, `20s`, `1.5m`, `1h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {text:?} needs a unit: ms, s, m or h (e.g. 20s)"))?;
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} does not start with a number"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "duration {text:?} has unknown unit {other:?}: use ms, s, m or h"
            ));
        }
    };
    if !seconds.is_finite() || !(0.0..=7.0 * 24.0 * 3600.0).contains(&seconds) {
        return Err(format!("duration {text:?} is out of range (0 to 7 days)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Prints a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) || ms == 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

/// One bucket of a size distribution: sizes drawn uniformly from `min..=max`
/// with relative weight `weight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SizeBucket {
    /// Smallest size, in bytes of message text.
    pub min: usize,
    /// Largest size.
    pub max: usize,
    /// Relative weight.
    pub weight: u32,
}

/// The distribution of message text sizes: weighted buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeDistribution {
    buckets: Vec<SizeBucket>,
    total_weight: u64,
}

impl SizeDistribution {
    /// Parses `SIZE[:WEIGHT]` or `MIN-MAX[:WEIGHT]` items separated by commas,
    /// e.g. `64-512:80,1024-4096:18,16384:2`. Sizes may end in `k` (1024 bytes).
    /// Every size must lie in `min_bytes..=max_bytes`.
    pub fn parse(text: &str, min_bytes: usize, max_bytes: usize) -> Result<Self, String> {
        let mut buckets = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (range, weight) = match item.split_once(':') {
                Some((r, w)) => (
                    r.trim(),
                    w.trim().parse::<u32>().map_err(|_| {
                        format!("size item {item:?}: weight must be a whole number")
                    })?,
                ),
                None => (item, 1),
            };
            let (min, max) = match range.split_once('-') {
                Some((a, b)) => (parse_size(a, item)?, parse_size(b, item)?),
                None => {
                    let s = parse_size(range, item)?;
                    (s, s)
                }
            };
            if min > max {
                return Err(format!("size item {item:?}: minimum above maximum"));
            }
            if min < min_bytes || max > max_bytes {
                return Err(format!(
                    "size item {item:?}: sizes must be between {min_bytes} and {max_bytes} bytes"
                ));
            }
            if weight == 0 {
                return Err(format!("size item {item:?}: weight must be positive"));
            }
            buckets.push(SizeBucket { min, max, weight });
        }
        if buckets.is_empty() {
            return Err("the size distribution is empty (e.g. 64-512:80,4096:20)".into());
        }
        let total_weight = buckets.iter().map(|b| u64::from(b.weight)).sum();
        Ok(SizeDistribution {
            buckets,
            total_weight,
        })
    }

    /// The buckets.
    pub fn buckets(&self) -> &[SizeBucket] {
        &self.buckets
    }

    /// Draws a size.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let mut pick = rng.random_range(0..self.total_weight);
        for b in &self.buckets {
            let w = u64::from(b.weight);
            if pick < w {
                return rng.random_range(b.min..=b.max);
            }
            pick -= w;
        }
        // Unreachable while the weights sum to total_weight; the last bucket is a
        // safe answer all the same.
        self.buckets.last().map_or(0, |b| b.max)
    }

    /// The mean size.
    pub fn mean(&self) -> f64 {
        let sum: f64 = self
            .buckets
            .iter()
            .map(|b| f64::from(b.weight) * (b.min + b.max) as f64 / 2.0)
            .sum();
        sum / self.total_weight as f64
    }
}

impl fmt::Display for SizeDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.buckets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if b.min == b.max {
                write!(f, "{}:{}", b.min, b.weight)?;
            } else {
                write!(f, "{}-{}:{}", b.min, b.max, b.weight)?;
            }
        }
        Ok(())
    }
}

fn parse_size(text: &str, item: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, factor) = match t.strip_suffix(['k', 'K']) {
        Some(d) => (d, 1024),
        None => (t, 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("size item {item:?}: {t:?} is not a size in bytes"))
}

/// The shares of each kind of send.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Mix {
    /// 1:1 sends to a user of the sender's region.
    pub same_region: f64,
    /// 1:1 sends to a user of another region.
    pub cross_region: f64,
    /// Sends to an MLS group (one GroupSend fanned out to every member box).
    pub group: f64,
}

impl Mix {
    /// Parses `same=W,cross=W,group=W` (any subset; missing kinds weigh 0). The
    /// weights are normalised to shares.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            same_region: 0.0,
            cross_region: 0.0,
            group: 0.0,
        };
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, weight) = item
                .split_once('=')
                .ok_or_else(|| format!("mix item {item:?} must be NAME=WEIGHT"))?;
            let weight: f64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("mix item {item:?}: weight is not a number"))?;
            let slot = match name.trim() {
                "same" | "same_region" | "same-region" => &mut mix.same_region,
                "cross" | "cross_region" | "cross-region" => &mut mix.cross_region,
                "group" | "groups" => &mut mix.group,
                other => {
                    return Err(format!(
                        "mix item {item:?}: unknown kind {other:?} (same, cross, group)"
                    ));
                }
            };
            *slot = weight;
        }
        mix.normalised()
    }

    /// The same mix with shares summing to 1; weights must be finite and not
    /// negative, and not all zero.
    pub fn normalised(self) -> Result<Mix, String> {
        let parts = [self.same_region, self.cross_region, self.group];
        if parts.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err("mix weights must be non-negative numbers".into());
        }
        let sum: f64 = parts.iter().sum();
        if sum <= 0.0 {
            return Err("the mix gives no kind of send a positive weight".into());
        }
        Ok(Mix {
            same_region: self.same_region / sum,
            cross_region: self.cross_region / sum,
            group: self.group / sum,
        })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "same={:.0}%,cross={:.0}%,group={:.0}%",
            self.same_region * 100.0,
            self.cross_region * 100.0,
            self.group * 100.0
        )
    }
}

/// How devices learn of new messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchMode {
    /// Subscribe to pushes and fetch when told; also fetch every `fallback`
    /// (`None`: never), as an app does to cover lost notifications.
    Push {
        /// Interval of the safety fetch.
        fallback: Option<Duration>,
    },
    /// Fetch every `interval`, no subscription.
    Poll {
        /// Interval between fetches of one device.
        interval: Duration,
    },
}

impl FetchMode {
    /// Parses `push` or `poll:INTERVAL` (e.g. `poll:500ms`).
    pub fn parse(text: &str, fallback: Option<Duration>) -> Result<FetchMode, String> {
        let t = text.trim();
        if t == "push" {
            return Ok(FetchMode::Push { fallback });
        }
        if let Some(interval) = t.strip_prefix("poll:") {
            let interval = parse_duration(interval)?;
            if interval < Duration::from_millis(10) {
                return Err("the poll interval must be at least 10ms".into());
            }
            return Ok(FetchMode::Poll { interval });
        }
        Err(format!(
            "fetch mode {text:?}: use push or poll:INTERVAL (e.g. poll:500ms)"
        ))
    }
}

impl fmt::Display for FetchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchMode::Push { fallback: None } => f.write_str("push"),
            FetchMode::Push {
                fallback: Some(every),
            } => write!(f, "push (fallback fetch every {})", format_duration(*every)),
            FetchMode::Poll { interval } => write!(f, "poll:{}", format_duration(*interval)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration(" 2h ").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("20").unwrap_err().contains("unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("1000h").unwrap_err().contains("range"));
        assert_eq!(format_duration(Duration::from_secs(20)), "20s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn size_distributions_parse_and_sample_inside_their_buckets() {
        let d = SizeDistribution::parse("64-128:3, 1k:1", 64, 65536).unwrap();
        assert_eq!(d.buckets().len(), 2);
        assert_eq!(d.buckets()[1].min, 1024);
        assert_eq!(d.to_string(), "64-128:3,1024:1");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut big = 0;
        for _ in 0..4000 {
            let s = d.sample(&mut rng);
            assert!((64..=128).contains(&s) || s == 1024, "{s}");
            big += usize::from(s == 1024);
        }
        // A quarter of the weight: far from 0 and from 4000.
        assert!((800..1200).contains(&big), "{big}");
        assert!((d.mean() - (96.0 * 3.0 + 1024.0) / 4.0).abs() < 1e-9);
    }

    #[test]
    fn bad_size_distributions_are_refused() {
        for bad in ["", "10", "64-32", "64:0", "64:x", "1M", "100000", "64-"] {
            assert!(SizeDistribution::parse(bad, 64, 65536).is_err(), "{bad}");
        }
    }

    #[test]
    fn mixes_are_normalised() {
        let m = Mix::parse("same=1,cross=1,group=2").unwrap();
        assert!((m.same_region - 0.25).abs() < 1e-12);
        assert!((m.group - 0.5).abs() < 1e-12);
        let m = Mix::parse("cross=3").unwrap();
        assert_eq!(m.same_region, 0.0);
        assert_eq!(m.cross_region, 1.0);
        assert!(Mix::parse("same=0").is_err());
        assert!(Mix::parse("same=-1,cross=2").is_err());
        assert!(Mix::parse("sideways=1").is_err());
        assert!(Mix::parse("same").is_err());
    }

    #[test]
    fn fetch_modes_parse() {
        assert_eq!(
            FetchMode::parse("push", None).unwrap(),
            FetchMode::Push { fallback: None }
        );
        assert_eq!(
            FetchMode::parse("poll:250ms", None).unwrap(),
            FetchMode::Poll {
                interval: Duration::from_millis(250)
            }
        );
        assert!(FetchMode::parse("poll:1ms", None).is_err());
        assert!(FetchMode::parse("pull", None).is_err());
    }
}
