//! Rossby's keyspace: identifiers, the order-preserving key encoding of every table,
//! the key ranges of regions and of global data, identifier normalisation and the
//! keyed hash used by the inbox lookup.
//!
//! This crate is pure: no I/O, no clocks, no randomness except where a caller asks
//! for a fresh identifier. Everything here is deterministic and can be tested
//! exhaustively, like a protocol core.

pub mod error;
pub mod identifier;
pub mod ids;
pub mod keys;
pub mod lookup;
pub mod range;

pub use error::{Error, Result};
pub use identifier::Identifier;
pub use ids::{BoxId, DeviceId, MessageId, RegionId};
pub use keys::{ExpiryEntry, Key, MaintenanceJob, Table};
pub use lookup::{LookupDigest, LookupHasher, Pepper};
pub use range::KeyRange;
