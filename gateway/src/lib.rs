//! The Rossby gateway: a QUIC server (one bidirectional stream per request, pushes
//! on server-initiated unidirectional streams) that authenticates requests with
//! Hawk and turns them into transactions on the storage layer, plus an HTTP admin
//! port with health checks and Prometheus metrics.
//!
//! The library form lets tests and benchmarks start real gateways in-process.

pub mod context;
pub mod settings;
