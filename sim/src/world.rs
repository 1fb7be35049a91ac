//! The state one run shares between its operations: the store under test (through
//! [`SimKv`](crate::simkv::SimKv)), a raw handle on the same data for invariant
//! checks, the seeded control, the model and the trace.

use crate::control::Control;
use crate::model::Model;
use crate::trace::Trace;
use rossby_keyspace::RegionId;
use rossby_storage::Kv;
use rossby_storage::tables::Store;
use std::cell::RefCell;
use std::sync::Arc;

/// Everything an operation of a run can reach.
pub struct World {
    /// The domain store, over the fault-injecting KV wrapper.
    pub store: Store,
    /// The same data without yields or faults: for invariant checks only (raw
    /// reads in read-only transactions), never for domain operations.
    pub raw: Kv,
    /// The seeded generator and fault rates.
    pub control: Arc<Control>,
    /// What the clients know.
    pub model: RefCell<Model>,
    /// Recent operations.
    pub trace: RefCell<Trace>,
    /// The regions boxes are homed in.
    pub regions: Vec<RegionId>,
}

impl World {
    /// The simulated clock.
    pub fn now(&self) -> u64 {
        self.model.borrow().now
    }

    /// Records a trace line (and folds it into the digest).
    pub fn note(&self, line: String) {
        self.control.record(line.as_bytes());
        self.trace.borrow_mut().push(line);
    }

    /// Records a broken invariant.
    pub fn fail(&self, invariant: &'static str, detail: impl Into<String>) {
        self.model.borrow_mut().fail(invariant, detail);
    }

    /// True once an invariant broke.
    pub fn failed(&self) -> bool {
        self.model.borrow().failure().is_some()
    }
}

/// A short, stable name for an id in trace lines: its last four bytes.
pub fn short(b: &[u8; 16]) -> String {
    format!("{:02x}{:02x}{:02x}{:02x}", b[12], b[13], b[14], b[15])
}
