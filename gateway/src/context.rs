//! What a request handler knows about the connection a request arrived on.

use std::net::SocketAddr;

/// One QUIC connection, as seen by the API layer.
#[derive(Clone)]
pub struct ConnContext {
    /// Process-unique id of the connection (for presence and logs).
    pub id: u64,
    /// The peer's address (rate limits per source address use its IP).
    pub remote: SocketAddr,
    /// The connection's TLS exporter value ([`rossby_protocol::hawk::EXPORTER_LABEL`],
    /// empty context, [`rossby_protocol::hawk::EXPORTER_LEN`] bytes): what Hawk's
    /// `ext` must carry.
    pub exporter: [u8; rossby_protocol::hawk::EXPORTER_LEN],
    /// The connection itself, for opening push streams.
    pub connection: quinn::Connection,
}
