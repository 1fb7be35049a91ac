//! The trace of a run: the last operations, kept for the report of a failing
//! seed, and folded into the run's digest so two runs of a seed can be compared.

use std::collections::VecDeque;

/// How many trace lines a failure report shows.
pub const KEPT: usize = 60;

/// The most recent trace lines.
#[derive(Debug)]
pub struct Trace {
    lines: VecDeque<String>,
    keep: usize,
    total: u64,
}

impl Default for Trace {
    fn default() -> Self {
        Trace::keeping(KEPT)
    }
}

impl Trace {
    /// A trace that keeps the last `keep` lines.
    pub fn keeping(keep: usize) -> Self {
        Trace {
            lines: VecDeque::new(),
            keep: keep.max(1),
            total: 0,
        }
    }

    /// Appends a line (the oldest is dropped beyond the kept number).
    pub fn push(&mut self, line: String) {
        if self.lines.len() == self.keep {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
        self.total += 1;
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }

    /// Lines pushed in all.
    pub fn total(&self) -> u64 {
        self.total
    }
}
