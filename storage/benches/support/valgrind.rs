//! Valgrind client requests, issued the way `valgrind.h` and `callgrind.h` issue
//! them on x86-64 Linux: a rotate sequence that leaves `rdi` unchanged, then
//! `xchg rbx, rbx`. Natively these are no-ops that return the default value;
//! under Valgrind they reach the tool. Shared by the storage and gateway
//! benchmarks (included with `#[path]`), with the callgrind command line they run
//! under and the reading of its result.

use std::path::Path;

/// `valgrind --tool=callgrind` with instrumentation off until switched on, all
/// threads in one count, the profile written to `out`.
pub fn callgrind_command(out: &Path, log: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--instr-atstart=no".into(),
        "--separate-threads=no".into(),
        format!("--callgrind-out-file={}", out.display()),
        format!("--log-file={}", log.display()),
    ]
}

/// The `totals:` (or `summary:`) line of a callgrind output file: instructions
/// executed (`Ir`) over all threads.
pub fn callgrind_total(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let total = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    total("totals:")
        .or_else(|| total("summary:"))
        .ok_or_else(|| format!("no totals in {}", path.display()))
}
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    /// `VG_USERREQ_TOOL_BASE('C', 'T')`: the first of callgrind's requests.
    const CALLGRIND_BASE: u64 = ((b'C' as u64) << 24) | ((b'T' as u64) << 16);
    const RUNNING_ON_VALGRIND: u64 = 0x1001;
    const START_INSTRUMENTATION: u64 = CALLGRIND_BASE + 4;
    const STOP_INSTRUMENTATION: u64 = CALLGRIND_BASE + 5;

    fn request(default: u64, code: u64) -> u64 {
        let args: [u64; 6] = [code, 0, 0, 0, 0, 0];
        let result: u64;
        // SAFETY: the sequence only rotates rdi by a total of 128 bits (leaving it
        // unchanged) and exchanges rbx with itself; Valgrind reads the argument
        // block through rax and writes the result to rdx.
        unsafe {
            std::arch::asm!(
                "rol rdi, 3",
                "rol rdi, 13",
                "rol rdi, 61",
                "rol rdi, 51",
                "xchg rbx, rbx",
                in("rax") args.as_ptr(),
                inout("rdx") default => result,
                options(nostack),
            );
        }
        result
    }

    /// How many Valgrinds this process runs under (0 natively).
    pub fn running_on_valgrind() -> u64 {
        request(0, RUNNING_ON_VALGRIND)
    }

    /// `CALLGRIND_START_INSTRUMENTATION`: count from here on, in every thread.
    pub fn start_instrumentation() {
        request(0, START_INSTRUMENTATION);
    }

    /// `CALLGRIND_STOP_INSTRUMENTATION`.
    pub fn stop_instrumentation() {
        request(0, STOP_INSTRUMENTATION);
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    pub fn running_on_valgrind() -> u64 {
        0
    }
    pub fn start_instrumentation() {}
    pub fn stop_instrumentation() {}
}

pub use imp::*;
