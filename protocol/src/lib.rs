//! Rossby's wire protocol (pure, no I/O): the protobuf schema of every request,
//! response and push, length-prefixed framing, stable status codes, size limits
//! and the canonical form of a request for Hawk signing. Shared by the gateway and
//! the client SDK. Filled by the gateway and protocol work; a placeholder until then.
