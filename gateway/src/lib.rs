//! The Rossby gateway: a QUIC server (one bidirectional stream per request, pushes
//! on server-initiated unidirectional streams) that authenticates requests with
//! Hawk and turns them into transactions on the storage layer, plus an HTTP admin
//! port with health checks and Prometheus metrics.
//!
//! The library form lets tests and benchmarks start real gateways in-process.

pub mod admin;
pub mod backup;
pub mod blobstore;
pub mod budget;
pub mod config;
pub mod context;
pub mod error;
pub mod gateway;
pub mod geo;
pub mod local;
pub mod maintenance;
pub mod metrics;
pub mod peer;
pub mod private_file;
pub mod secret_file;
pub mod server;
pub mod settings;
pub mod storage;
pub mod tls;

pub use config::Config;
pub use error::Error;
pub use gateway::{Gateway, GatewayError};
pub use local::LocalDeployment;
pub use metrics::Metrics;
pub mod api;
pub mod auth;
pub mod presence;
pub mod push;
pub mod ratelimit;
pub mod verifier;
