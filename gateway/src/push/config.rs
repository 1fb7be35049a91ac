//! The push options of a gateway and the clients they make.

use super::apns::{Apns, ApnsConfig};
use super::fcm::{Fcm, FcmConfig};
use super::scheduler::{Providers, PushSettings};
use super::webpush::{WebPush, WebPushConfig};
use crate::error::Result;
use std::sync::Arc;

/// Which push services a gateway wakes devices through, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushConfig {
    /// Scheduling, queues and retries.
    pub settings: PushSettings,
    /// Web Push (on by default: its VAPID key is generated when absent).
    pub webpush: Option<WebPushConfig>,
    /// APNs, when its key is configured.
    pub apns: Option<ApnsConfig>,
    /// FCM, when a service account is configured.
    pub fcm: Option<FcmConfig>,
}

impl PushConfig {
    /// Loads the credentials and builds one client per configured service.
    pub fn providers(&self) -> Result<Providers> {
        let mut providers = Providers::default();
        if let Some(config) = &self.webpush {
            let client = WebPush::new(config)?;
            let public = client.vapid_key().public_key_base64url();
            tracing::info!(vapid_public_key = %public, "Web Push on");
            providers.vapid_public_key = Some(public);
            providers.allow_insecure_endpoints = config.allow_insecure;
            providers.clients.push(Arc::new(client));
        }
        if let Some(config) = &self.apns {
            providers.clients.push(Arc::new(Apns::new(config)?));
            tracing::info!("APNs on");
        }
        if let Some(config) = &self.fcm {
            providers.clients.push(Arc::new(Fcm::new(config)?));
            tracing::info!("FCM on");
        }
        Ok(providers)
    }
}
