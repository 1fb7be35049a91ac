//! Range checks shared by every area's options; the errors name the flag, which
//! is also how the variable and the file key are named.

use crate::error::{Error, Result};
use std::time::Duration;

/// Fails unless `value >= min`, naming the flag.
pub(crate) fn at_least<T: PartialOrd + std::fmt::Display>(
    flag: &str,
    value: T,
    min: T,
) -> Result<T> {
    if value < min {
        return Err(Error::Config(format!(
            "--{flag} must be at least {min} (got {value})"
        )));
    }
    Ok(value)
}

/// Fails unless `min <= value <= max`, naming the flag.
pub(crate) fn between(flag: &str, value: usize, min: usize, max: usize) -> Result<usize> {
    if value < min || value > max {
        return Err(Error::Config(format!(
            "--{flag} must be between {min} and {max} (got {value})"
        )));
    }
    Ok(value)
}

/// A number of seconds between `min` and `max`, as a duration.
pub(crate) fn secs(flag: &str, value: u64, min: u64, max: u64) -> Result<Duration> {
    if value < min || value > max {
        return Err(Error::Config(format!(
            "--{flag} must be between {min} and {max} seconds (got {value})"
        )));
    }
    Ok(Duration::from_secs(value))
}

/// Fails if the removed option `flag` is still set, naming where: by flag or
/// variable (`by_flag`), or in the configuration file (`in_file`); `why` says
/// what replaced it.
pub(crate) fn reject_removed(flag: &str, by_flag: bool, in_file: bool, why: &str) -> Result<()> {
    if by_flag {
        let env = format!("ROSSBY_{}", flag.replace('-', "_").to_uppercase());
        return Err(Error::Config(format!("--{flag} ({env}) {why}")));
    }
    if in_file {
        let key = flag.replace('-', "_");
        return Err(Error::Config(format!("config key {key} {why}")));
    }
    Ok(())
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Fails unless `s` is `host:port` with a port other than 0.
pub(crate) fn host_port(flag: &str, s: &str) -> Result<()> {
    let ok = match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!("--{flag} {s:?} is not host:port")))
    }
}
