//! Rossby's operator commands (the `rossby-admin` binary), kept out of the
//! end-user client SDK and CLI:
//!
//! - [`placement`]: TiKV placement from a topology file: `plan` prints the rules
//!   and the latencies they imply, `apply` sends them to PD and reads them back,
//!   `check` compares where PD put each Region's leader and voters with the plan;
//! - [`pd`]: the client of PD's HTTP API those commands use;
//! - [`prober`]: the long-running cross-region prober (one per region), which
//!   sends probes between every pair of regions through the client SDK and
//!   exports their delivery as Prometheus metrics;
//! - [`fleet`]: the status of every gateway of a topology from their admin
//!   ports ([`http`] is the plain HTTP client it uses);
//! - `backup` and `restore` of the embedded store, which are the gateway
//!   library's ([`rossby_gateway::backup`]) so the store format has one owner;
//! - [`error::Error`]: the one error type.
//!
//! Operators need PD's API and the store format; app developers need neither, so
//! none of this is in `rossby-client`, and the client never depends on this crate.

pub mod error;
pub mod fleet;
pub mod http;
pub mod pd;
pub mod placement;
pub mod prober;

pub use error::{Error, Result};
