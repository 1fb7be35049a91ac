//! Setup shared by the integration tests that build a `Store`.
//!
//! Declared as `mod support;` at the root of each test crate that needs it.

use rossby_keyspace::{LookupHasher, Pepper};

/// A lookup hasher with one fixed pepper, so identifier lookups are reproducible
/// from run to run.
pub fn hasher() -> LookupHasher {
    LookupHasher::new(
        vec![Pepper {
            version: 1,
            secret: vec![7; 32],
        }],
        1,
    )
    .unwrap()
}
