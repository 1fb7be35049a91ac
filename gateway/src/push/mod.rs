//! Wake-up pushes: a content-free "fetch now" through APNs, FCM or Web Push to
//! devices that hold no connection when a message is committed for them.

pub mod apns;
pub mod fcm;
pub mod http;
pub mod jwt;
pub mod provider;
pub mod webpush;
