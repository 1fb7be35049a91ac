//! Wake-up pushes: a content-free "fetch now" through APNs, FCM or Web Push to
//! devices that hold no connection when a message is committed for them.
//!
//! - [`provider`]: what every push service client offers the scheduler;
//! - [`apns`], [`fcm`], [`webpush`]: the clients of the three services;
//! - [`scheduler`]: from a commit to deliveries, off the send path, coalesced
//!   and bounded;
//! - [`jwt`], [`http`]: the signing and HTTPS plumbing the clients share.

pub mod apns;
pub mod config;
pub mod fcm;
pub mod http;
pub mod jwt;
pub mod provider;
pub mod scheduler;
pub mod webpush;

pub use config::{PushConfig, PushOptions};
pub use provider::{Provider, ProviderKind};
pub use scheduler::{Providers, PushSettings, Pusher};
