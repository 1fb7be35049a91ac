//! The rate-limit options. A rate is `N` or `N/s` (per second), `N/min`, `N/h`
//! or `N/day`; in the file also a bare number. A burst is a bucket size.

use crate::config::check::at_least;
use crate::error::Result;
use crate::settings::{ApiSettings, Rate};
use serde::{Deserialize, Deserializer};

crate::config::options! {
    /// The token buckets, and the deployment-wide code budgets kept in storage.
    #[derive(clap::Args, Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "Rate limits (RATE is N or N/s, N/min, N/h, N/day)")]
    pub struct RateLimitOptions {
        /// Authenticated requests per device [default: 50/s].
        #[arg(long, env = "ROSSBY_RATE_PER_DEVICE", value_name = "RATE", value_parser = parse_rate)]
        #[serde(default, deserialize_with = "rate_in_file")]
        pub rate_per_device: Option<f64>,
        /// Burst of requests per device [default: 200].
        #[arg(long, env = "ROSSBY_BURST_PER_DEVICE", value_name = "N", value_parser = parse_burst)]
        #[serde(default, deserialize_with = "burst_in_file")]
        pub burst_per_device: Option<f64>,
        /// Requests per source IP address [default: 200/s].
        #[arg(long, env = "ROSSBY_RATE_PER_IP", value_name = "RATE", value_parser = parse_rate)]
        #[serde(default, deserialize_with = "rate_in_file")]
        pub rate_per_ip: Option<f64>,
        /// Burst of requests per source IP address [default: 1000].
        #[arg(long, env = "ROSSBY_BURST_PER_IP", value_name = "N", value_parser = parse_burst)]
        #[serde(default, deserialize_with = "burst_in_file")]
        pub burst_per_ip: Option<f64>,
        /// Verification codes sent per identifier [default: 3/h].
        #[arg(long, env = "ROSSBY_RATE_PER_IDENTIFIER", value_name = "RATE", value_parser = parse_rate)]
        #[serde(default, deserialize_with = "rate_in_file")]
        pub rate_per_identifier: Option<f64>,
        /// Burst of codes per identifier [default: 3].
        #[arg(long, env = "ROSSBY_BURST_PER_IDENTIFIER", value_name = "N", value_parser = parse_burst)]
        #[serde(default, deserialize_with = "burst_in_file")]
        pub burst_per_identifier: Option<f64>,
        /// Contact lookups per device [default: 1/s].
        #[arg(long, env = "ROSSBY_DISCOVERY_RATE_PER_DEVICE", value_name = "RATE", value_parser = parse_rate)]
        #[serde(default, deserialize_with = "rate_in_file")]
        pub discovery_rate_per_device: Option<f64>,
        /// Burst of contact lookups per device [default: 100].
        #[arg(long, env = "ROSSBY_DISCOVERY_BURST_PER_DEVICE", value_name = "N", value_parser = parse_burst)]
        #[serde(default, deserialize_with = "burst_in_file")]
        pub discovery_burst_per_device: Option<f64>,
        /// Sealed (unauthenticated) sends per recipient box [default: 10/s].
        #[arg(long, env = "ROSSBY_SEALED_RATE_PER_RECIPIENT", value_name = "RATE", value_parser = parse_rate)]
        #[serde(default, deserialize_with = "rate_in_file")]
        pub sealed_rate_per_recipient: Option<f64>,
        /// Burst of sealed sends per recipient box [default: 100].
        #[arg(long, env = "ROSSBY_SEALED_BURST_PER_RECIPIENT", value_name = "N", value_parser = parse_burst)]
        #[serde(default, deserialize_with = "burst_in_file")]
        pub sealed_burst_per_recipient: Option<f64>,
        /// Bytes per second an account's devices together may make the gateway
        /// store, every recipient's copy counted [default: 4194304/s].
        #[arg(long, env = "ROSSBY_STORED_BYTES_RATE_PER_ACCOUNT", value_name = "RATE", value_parser = parse_rate)]
        #[serde(default, deserialize_with = "rate_in_file")]
        pub stored_bytes_rate_per_account: Option<f64>,
        /// Burst of the above, in bytes [default: 67108864].
        #[arg(long, env = "ROSSBY_STORED_BYTES_BURST_PER_ACCOUNT", value_name = "BYTES", value_parser = parse_burst)]
        #[serde(default, deserialize_with = "burst_in_file")]
        pub stored_bytes_burst_per_account: Option<f64>,
        /// Verification codes requested per source address [default: 10/h].
        #[arg(long, env = "ROSSBY_CODES_RATE_PER_ADDRESS", value_name = "RATE", value_parser = parse_rate)]
        #[serde(default, deserialize_with = "rate_in_file")]
        pub codes_rate_per_address: Option<f64>,
        /// Burst of codes per source address [default: 10].
        #[arg(long, env = "ROSSBY_CODES_BURST_PER_ADDRESS", value_name = "N", value_parser = parse_burst)]
        #[serde(default, deserialize_with = "burst_in_file")]
        pub codes_burst_per_address: Option<f64>,
        /// Verification codes the whole deployment sends per hour, kept in storage
        /// [default: 3600].
        #[arg(long, env = "ROSSBY_CODES_PER_HOUR", value_name = "N")]
        pub codes_per_hour: Option<u64>,
        /// Verification codes per hour to the phone numbers of one range (first five
        /// digits), kept in storage [default: 60].
        #[arg(long, env = "ROSSBY_CODES_PER_PREFIX_PER_HOUR", value_name = "N")]
        pub codes_per_prefix_per_hour: Option<u64>,
    }
}

impl RateLimitOptions {
    /// Sets `api.rate_limits` and the code budgets; unset options keep `api`'s
    /// values.
    pub fn apply(self, api: &mut ApiSettings) -> Result<()> {
        let r = &mut api.rate_limits;
        let set = |rate: &mut Rate, per_second: Option<f64>, burst: Option<f64>| {
            if let Some(v) = per_second {
                rate.per_second = v;
            }
            if let Some(v) = burst {
                rate.burst = v;
            }
        };
        set(
            &mut r.per_device,
            self.rate_per_device,
            self.burst_per_device,
        );
        set(&mut r.per_ip, self.rate_per_ip, self.burst_per_ip);
        set(
            &mut r.registrations_per_identifier,
            self.rate_per_identifier,
            self.burst_per_identifier,
        );
        set(
            &mut r.discovery_per_device,
            self.discovery_rate_per_device,
            self.discovery_burst_per_device,
        );
        set(
            &mut r.sealed_per_recipient,
            self.sealed_rate_per_recipient,
            self.sealed_burst_per_recipient,
        );
        set(
            &mut r.stored_bytes_per_account,
            self.stored_bytes_rate_per_account,
            self.stored_bytes_burst_per_account,
        );
        set(
            &mut r.codes_per_address,
            self.codes_rate_per_address,
            self.codes_burst_per_address,
        );
        api.codes_per_hour = at_least(
            "codes-per-hour",
            self.codes_per_hour.unwrap_or(api.codes_per_hour),
            1,
        )?;
        api.codes_per_prefix_per_hour = at_least(
            "codes-per-prefix-per-hour",
            self.codes_per_prefix_per_hour
                .unwrap_or(api.codes_per_prefix_per_hour),
            1,
        )?;
        Ok(())
    }
}

/// Parses a rate: `N`, `N/s`, `N/sec`, `N/m`, `N/min`, `N/h`, `N/hour`, as tokens
/// per second. Must be positive and finite.
pub fn parse_rate(s: &str) -> std::result::Result<f64, String> {
    let s = s.trim();
    let (number, per) = match s.split_once('/') {
        Some((n, unit)) => {
            let secs = match unit.trim() {
                "s" | "sec" | "second" => 1.0,
                "m" | "min" | "minute" => 60.0,
                "h" | "hour" => 3600.0,
                "d" | "day" => 86400.0,
                other => {
                    return Err(format!(
                        "unknown rate unit {other:?} in {s:?} (use /s, /min, /h or /day)"
                    ));
                }
            };
            (n.trim(), secs)
        }
        None => (s, 1.0),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (examples: 50, 50/s, 3/h)"))?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("rate {s:?} must be positive"));
    }
    Ok(n / per)
}

/// Parses a burst size: a finite number of at least 1.
pub fn parse_burst(s: &str) -> std::result::Result<f64, String> {
    let n: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    check_burst(n)
}

fn check_burst(n: f64) -> std::result::Result<f64, String> {
    if !n.is_finite() || n < 1.0 {
        return Err(format!("burst {n} must be at least 1"));
    }
    Ok(n)
}

/// A rate in the file: a number (per second) or a string such as `"3/h"`.
fn rate_in_file<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum RateValue {
        Number(f64),
        Text(String),
    }
    let text = match RateValue::deserialize(d)? {
        RateValue::Number(n) => n.to_string(),
        RateValue::Text(s) => s,
    };
    parse_rate(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A burst in the file: a number.
fn burst_in_file<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    check_burst(f64::deserialize(d)?)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_accept_units() {
        assert_eq!(parse_rate("50"), Ok(50.0));
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert_eq!(parse_rate("120/min"), Ok(2.0));
        assert_eq!(parse_rate("3600/h"), Ok(1.0));
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_rate("x/s").is_err());
    }

    #[test]
    fn file_rates_are_numbers_or_strings_with_a_unit() {
        let o: RateLimitOptions =
            toml::from_str("rate_per_ip = 5\nrate_per_identifier = \"6/h\"\nburst_per_ip = 7")
                .unwrap();
        assert_eq!(o.rate_per_ip, Some(5.0));
        assert!((o.rate_per_identifier.unwrap() - 6.0 / 3600.0).abs() < 1e-12);
        assert_eq!(o.burst_per_ip, Some(7.0));
        for bad in [
            "rate_per_ip = 0",
            "rate_per_ip = \"5/week\"",
            "burst_per_ip = 0.5",
        ] {
            assert!(toml::from_str::<RateLimitOptions>(bad).is_err(), "{bad}");
        }
    }
}
