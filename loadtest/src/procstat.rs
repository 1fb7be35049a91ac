//! CPU time and memory of this process, from `/proc/self` (Linux). CPU is split
//! between the load generator's threads (named with [`CLIENT_THREAD_PREFIX`])
//! and the rest (in local mode: the gateways and the store), so that a local
//! run shows what the generator itself cost. Elsewhere the values are absent.

use std::time::Instant;

/// Name prefix of the load generator's runtime threads.
pub const CLIENT_THREAD_PREFIX: &str = "lt-client";
/// `/proc` reports CPU time in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time used so far.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    /// When it was taken.
    pub at: Instant,
    /// User time of the whole process, in ticks.
    pub user: u64,
    /// System time of the whole process, in ticks.
    pub system: u64,
    /// User + system time of the load generator's live threads, in ticks.
    pub client: u64,
    /// User + system time of the other live threads, in ticks.
    pub other: u64,
}

/// CPU use between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct CpuUse {
    /// Wall-clock seconds between the samples.
    pub wall_s: f64,
    /// User CPU seconds of the process.
    pub user_s: f64,
    /// System CPU seconds of the process.
    pub system_s: f64,
    /// Process CPU as a share of one core, in percent (200 = two cores busy).
    pub process_pct: f64,
    /// The load generator's threads, percent of one core.
    pub client_pct: f64,
    /// The other threads (local gateways and store), percent of one core.
    pub other_pct: f64,
}

/// Memory of the process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// Resident set now, KiB.
    pub rss_kib: u64,
    /// Peak resident set, KiB.
    pub peak_rss_kib: u64,
}

/// Takes a CPU sample, if `/proc/self` is readable.
pub fn cpu() -> Option<CpuSample> {
    let at = Instant::now();
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, user, system) = parse_stat(&stat)?;
    let mut client = 0;
    let mut other = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if let Some((name, u, s)) = parse_stat(&text) {
                if name.starts_with(CLIENT_THREAD_PREFIX) {
                    client += u + s;
                } else {
                    other += u + s;
                }
            }
        }
    }
    Some(CpuSample {
        at,
        user,
        system,
        client,
        other,
    })
}

/// CPU use between `a` and a later `b`.
pub fn usage(a: &CpuSample, b: &CpuSample) -> CpuUse {
    let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
    let secs = |t: u64| t as f64 / TICKS_PER_SECOND;
    let pct = |t: u64| {
        if wall > 0.0 {
            secs(t) / wall * 100.0
        } else {
            0.0
        }
    };
    let user = b.user.saturating_sub(a.user);
    let system = b.system.saturating_sub(a.system);
    CpuUse {
        wall_s: wall,
        user_s: secs(user),
        system_s: secs(system),
        process_pct: pct(user + system),
        client_pct: pct(b.client.saturating_sub(a.client)),
        other_pct: pct(b.other.saturating_sub(a.other)),
    }
}

/// Reads the resident set sizes, if `/proc/self/status` is readable.
pub fn memory() -> Option<Memory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(parse_status(&status))
}

/// The name, user ticks and system ticks of a `stat` line. The name is in
/// parentheses and may itself contain spaces and parentheses.
fn parse_stat(text: &str) -> Option<(&str, u64, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?;
    let mut fields = text.get(close + 1..)?.split_whitespace();
    // After the name: state (field 3) ... utime is field 14, stime field 15.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((name, utime, stime))
}

fn parse_status(text: &str) -> Memory {
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stat_lines_parse_with_awkward_names() {
        let line =
            "1234 (lt-client (1) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0";
        assert_eq!(parse_stat(line), Some(("lt-client (1) x", 250, 75)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn status_gives_resident_sizes() {
        let m = parse_status("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n");
        assert_eq!(
            m,
            Memory {
                rss_kib: 1024,
                peak_rss_kib: 2048
            }
        );
    }

    #[test]
    fn usage_is_relative_to_wall_time() {
        let a = CpuSample {
            at: Instant::now(),
            user: 100,
            system: 10,
            client: 50,
            other: 60,
        };
        let b = CpuSample {
            at: a.at + Duration::from_secs(2),
            user: 250,
            system: 20,
            client: 150,
            other: 120,
        };
        let u = usage(&a, &b);
        assert!((u.process_pct - 80.0).abs() < 1e-9);
        assert!((u.client_pct - 50.0).abs() < 1e-9);
        assert!((u.other_pct - 30.0).abs() < 1e-9);
        assert!((u.user_s - 1.5).abs() < 1e-9);
    }

    #[test]
    fn this_process_can_be_sampled_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu().is_some());
            assert!(memory().unwrap().rss_kib > 0);
        }
    }
}
