//! Rossby's client SDK and the `rossby` CLI: device keys, end-to-end encryption,
//! an encrypted local state file, and every API call of a Rossby gateway.
//!
//! - [`sdk::Client`]: the API (register, authorize, link devices, contacts,
//!   send, fetch/ack, subscribe, block, settings, devices, safety numbers...);
//! - [`state`]: the state file and its encryption at rest;
//! - [`connection`]: QUIC, TLS pinning, Hawk signing, reconnects and retries;
//! - [`envelopes`]: the pure sealing and checking of envelopes;
//! - [`groups`]: MLS groups (create, add, remove, leave, send) over the gateway's
//!   epoch records;
//! - [`error::Error`]: the one error type.
//!
//! The client never depends on a storage backend: it speaks only the wire
//! protocol of `rossby-protocol`. Operator commands (placement through PD,
//! backup and restore) are `rossby-admin`'s, not the SDK's.

pub mod attachments;
pub mod connection;
pub mod envelopes;
pub mod error;
pub mod groups;
pub mod identifiers;
pub mod messages;
pub mod push;
pub mod registration_lock;
pub mod sdk;
pub mod sealed;
pub mod state;

pub use connection::{HomeHint, RetryPolicy, Subscription};
pub use error::{Error, Result};
pub use identifiers::IdentifierInfo;
pub use push::{PushInfo, PushTarget};
pub use sdk::{Batch, Body, Client, ClientConfig, Received};
pub use state::{KdfParams, StateKey};
