//! Rossby's wire protocol (pure, no I/O): the protobuf schema of every request,
//! response and push ([`pb`]), length-prefixed framing ([`framing`]), stable status
//! codes ([`status`]), the canonical Hawk form of a request ([`hawk`]), and the
//! cryptographic formats shared by clients and gateways ([`crypto`]). Both the
//! gateway and the client SDK build on this crate; it never touches the network,
//! the disk or the clock (callers pass times and randomness in).

pub mod binding;
pub mod crypto;
pub mod error;
pub mod framing;
pub mod hawk;
pub mod link;
pub mod mls;
pub mod status;

pub use error::{Error, Result};

/// The generated protobuf types of `proto/rossby.proto`.
#[allow(
    missing_docs,
    clippy::doc_markdown,
    clippy::derive_partial_eq_without_eq,
    clippy::large_enum_variant
)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/rossby.v1.rs"));
}

/// ALPN protocol id of Rossby over QUIC.
pub const ALPN: &[u8] = b"rossby/1";

/// The protocol version carried in every request.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default UDP port of the gateway's QUIC endpoint.
pub const DEFAULT_PORT: u16 = 7400;
