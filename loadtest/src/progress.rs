//! The live progress display on stderr: on a terminal one line redrawn in place
//! (ANSI erase-line), otherwise plain lines at a slower pace, so logs stay short.
//! Stdout is left to the summary and the final result line.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A redrawn line on a terminal, plain lines otherwise.
    Auto,
    /// Plain lines.
    Plain,
    /// Nothing.
    Quiet,
}

/// Writes progress lines to stderr. Clones share one display.
#[derive(Clone)]
pub struct Progress {
    live: bool,
    quiet: bool,
    interval: Duration,
    drawn: Arc<Mutex<bool>>,
}

impl Progress {
    /// A display in `mode`.
    pub fn new(mode: ProgressMode) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let live = mode == ProgressMode::Auto && terminal;
        Progress {
            live,
            quiet: mode == ProgressMode::Quiet,
            interval: if live {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(5)
            },
            drawn: Arc::new(Mutex::new(false)),
        }
    }

    /// How often [`Progress::update`] should be called.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Shows the current state (replacing the previous line on a terminal).
    pub fn update(&self, line: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        let mut drawn = self
            .drawn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.live {
            let _ = write!(err, "\r\x1b[2K{line}");
            *drawn = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Prints a line that stays (ending a redrawn line first).
    pub fn note(&self, line: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        let mut drawn = self
            .drawn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *drawn {
            let _ = write!(err, "\r\x1b[2K");
            *drawn = false;
        }
        let _ = writeln!(err, "{line}");
    }

    /// Ends a redrawn line so later output starts on a fresh line.
    pub fn finish(&self) {
        let mut drawn = self
            .drawn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *drawn {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err);
            *drawn = false;
        }
    }
}
