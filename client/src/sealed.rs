//! Sealed sender on the client: sends whose sender the gateway cannot name.
//!
//! - **Receiving.** [`Client::set_sealed_sender`] chooses who may send this
//!   account sealed messages: its contacts (an access secret, 32 random bytes,
//!   whose derived access key the gateway checks) or anyone. The secret travels
//!   in `Content.access_secret` of this account's 1:1 messages to contacts that
//!   are not blocked, and of the copies for its own devices, which adopt it.
//!   Blocking someone rotates the secret (the blocked sender's copy stops
//!   working at once), and every sealed message is still checked against the
//!   block list after it is opened.
//! - **Sending.** A 1:1 message to a contact whose access secret is known goes
//!   as a SealedSend on a connection of its own, which never carries Hawk
//!   credentials, wrapped around the ordinary signed envelope and a sender
//!   certificate from the gateway (cached until an hour before it expires). The
//!   copy for this account's other devices goes as an ordinary Send to the own
//!   box. When the gateway refuses the access key (rotated, or sealed sender
//!   turned off), the secret is forgotten and the message goes identified.
//! - **Opening.** An envelope the gateway stored without a sender is unsealed,
//!   its certificate checked against the certificate keys the gateway publishes
//!   in Ping (fetched again when a certificate names an unknown version), and
//!   the inner envelope verified under the certified keys; a forged or expired
//!   certificate is reported as such.
//!
//! Ephemeral messages (typing) stay identified: they are never stored, and a
//! sealed path would need the recipient's devices online anyway.

use crate::connection::Connection;
use crate::envelopes::{id16, recipient_devices_cached};
use crate::error::{Error, Result};
use crate::sdk::{Client, Delivery, Received, Target, box_id, decode, device_id};
use prost::Message;
use rossby_protocol::crypto::EnvelopeHeader;
use rossby_protocol::crypto::seal_envelope;
use rossby_protocol::crypto::sealed_sender::{
    ACCESS_SECRET_LEN, access_key, open_unsealed, seal_sender, unseal_sender,
};
use rossby_protocol::pb::{self, Method};
use std::time::Duration;

/// A certificate is renewed when it has less than this left.
const CERTIFICATE_RENEW_MS: u64 = 3600 * 1000;

/// Stale device-list rounds of one sealed send before giving up.
const MAX_STALE_ROUNDS: usize = 4;

/// Sealed-sender settings and caches in the client state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SealedSenderState {
    /// This account's access secret (32 bytes); empty: no sealed mail from
    /// contacts.
    #[prost(bytes = "vec", tag = "1")]
    pub access_secret: Vec<u8>,
    /// Sealed mail is accepted from anyone.
    #[prost(bool, tag = "2")]
    pub anyone: bool,
    /// The last sender certificate the gateway issued to this device.
    #[prost(message, optional, tag = "3")]
    pub certificate: Option<pb::SenderCertificate>,
    /// The gateway's certificate keys, as Ping last listed them.
    #[prost(message, repeated, tag = "4")]
    pub certificate_keys: Vec<pb::SenderCertificateKey>,
}

/// Who may send this account sealed-sender messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedSenderMode {
    /// Nobody: every message arrives identified.
    Off,
    /// Contacts this account shared its access secret with.
    Contacts,
    /// Anyone, without an access key.
    Anyone,
}

/// The outcome of trying the sealed path.
pub(crate) enum SealedOutcome {
    /// Stored: the sequence number in the recipient box.
    Sent(u64),
    /// The gateway refused the access key; send identified.
    Refused,
    /// The recipient's device list changed under an MLS message: bring the
    /// conversation in line and encrypt again.
    Stale,
}

impl Client {
    /// Sets who may send this account sealed-sender messages (see the module
    /// documentation) and tells the gateway. Turning it on keeps an existing
    /// access secret, so contacts who have it keep sending sealed.
    pub async fn set_sealed_sender(&self, mode: SealedSenderMode) -> Result<()> {
        let secret = match mode {
            SealedSenderMode::Off => Vec::new(),
            _ => {
                let current = self.own_access_secret().await;
                if current.len() == ACCESS_SECRET_LEN {
                    current
                } else {
                    fresh_secret()
                }
            }
        };
        self.publish_access(secret, mode == SealedSenderMode::Anyone)
            .await
    }

    /// The current mode, as this device knows it.
    pub async fn sealed_sender_mode(&self) -> SealedSenderMode {
        let store = self.store.lock().await;
        match &store.state.sealed_sender {
            Some(s) if s.anyone => SealedSenderMode::Anyone,
            Some(s) if !s.access_secret.is_empty() => SealedSenderMode::Contacts,
            _ => SealedSenderMode::Off,
        }
    }

    /// Replaces the access secret (after a block): contacts learn the new one
    /// with this account's next message to them.
    pub(crate) async fn rotate_access_secret(&self) -> Result<()> {
        let (on, anyone) = {
            let store = self.store.lock().await;
            match &store.state.sealed_sender {
                Some(s) => (!s.access_secret.is_empty(), s.anyone),
                None => (false, false),
            }
        };
        if on {
            self.publish_access(fresh_secret(), anyone).await?;
        }
        Ok(())
    }

    /// Sets the gateway's access key for `secret` (none when empty), then
    /// remembers the secret.
    async fn publish_access(&self, secret: Vec<u8>, anyone: bool) -> Result<()> {
        let key = match <[u8; ACCESS_SECRET_LEN]>::try_from(secret.as_slice()) {
            Ok(s) => access_key(&s).to_vec(),
            Err(_) => Vec::new(),
        };
        let request = pb::UpdateSettingsRequest {
            sealed_sender_key: Some(key),
            sealed_sender_anyone: Some(anyone),
            ..pb::UpdateSettingsRequest::default()
        };
        let _: pb::UpdateSettingsResponse = self.rpc(Method::UpdateSettings, &request).await?;
        let mut store = self.store.lock().await;
        let state = store.state.sealed_sender.get_or_insert_default();
        state.access_secret = secret;
        state.anyone = anyone;
        store.save()
    }

    async fn own_access_secret(&self) -> Vec<u8> {
        let store = self.store.lock().await;
        store
            .state
            .sealed_sender
            .as_ref()
            .map(|s| s.access_secret.clone())
            .unwrap_or_default()
    }

    /// The access secret to put into a message for `to_box`: this account's,
    /// for its own devices and for contacts that are not blocked.
    pub(crate) async fn secret_to_share(&self, to_box: &[u8; 16]) -> Vec<u8> {
        let store = self.store.lock().await;
        let secret = match &store.state.sealed_sender {
            Some(s) if !s.access_secret.is_empty() => s.access_secret.clone(),
            _ => return Vec::new(),
        };
        let own = store.state.box_id.as_slice() == to_box;
        let contact = store
            .state
            .contacts
            .iter()
            .any(|c| c.box_id.as_slice() == to_box && !c.blocked);
        if own || contact { secret } else { Vec::new() }
    }

    /// Remembers an access secret that came with a verified message from
    /// `sender_box`: a contact's, or this account's own from another device.
    pub(crate) async fn learn_access_secret(
        &self,
        sender_box: &[u8; 16],
        secret: &[u8],
    ) -> Result<()> {
        if secret.len() != ACCESS_SECRET_LEN {
            return Ok(());
        }
        let mut store = self.store.lock().await;
        if store.state.box_id.as_slice() == sender_box {
            let state = store.state.sealed_sender.get_or_insert_default();
            if state.access_secret == secret {
                return Ok(());
            }
            state.access_secret = secret.to_vec();
            return store.save();
        }
        let Some(contact) = store
            .state
            .contacts
            .iter_mut()
            .find(|c| c.box_id.as_slice() == sender_box)
        else {
            return Ok(());
        };
        if contact.access_secret == secret {
            return Ok(());
        }
        contact.access_secret = secret.to_vec();
        store.save()
    }

    /// The access key for a sealed send to `to_box`, when its secret is known
    /// and the box is not blocked.
    async fn access_key_for(&self, to_box: &[u8; 16]) -> Option<[u8; 16]> {
        let store = self.store.lock().await;
        let contact = store
            .state
            .contacts
            .iter()
            .find(|c| c.box_id.as_slice() == to_box && !c.blocked)?;
        let secret = <[u8; ACCESS_SECRET_LEN]>::try_from(contact.access_secret.as_slice()).ok()?;
        Some(access_key(&secret))
    }

    async fn forget_access_secret(&self, to_box: &[u8; 16]) -> Result<()> {
        let mut store = self.store.lock().await;
        if let Some(c) = store
            .state
            .contacts
            .iter_mut()
            .find(|c| c.box_id.as_slice() == to_box)
        {
            c.access_secret.clear();
        }
        store.save()
    }

    /// A sender certificate valid for at least another hour, from the cache or
    /// the gateway.
    pub async fn sender_certificate(&self) -> Result<pb::SenderCertificate> {
        let now = self.now_ms();
        {
            let store = self.store.lock().await;
            if let Some(cert) = store
                .state
                .sealed_sender
                .as_ref()
                .and_then(|s| s.certificate.as_ref())
                && cert.expires_at_ms > now.saturating_add(CERTIFICATE_RENEW_MS)
            {
                return Ok(cert.clone());
            }
        }
        let reply: pb::GetSenderCertificateResponse = self
            .rpc(
                Method::GetSenderCertificate,
                &pb::GetSenderCertificateRequest {},
            )
            .await?;
        let cert = reply
            .certificate
            .ok_or_else(|| Error::BadReply("no sender certificate".into()))?;
        let mut store = self.store.lock().await;
        store
            .state
            .sealed_sender
            .get_or_insert_default()
            .certificate = Some(cert.clone());
        store.save()?;
        Ok(cert)
    }

    /// The gateway's certificate keys; asks Ping again when `want` (a version a
    /// certificate names) is not among the remembered ones.
    async fn certificate_keys(&self, want: u32) -> Result<Vec<(u32, [u8; 32])>> {
        let known = {
            let store = self.store.lock().await;
            store
                .state
                .sealed_sender
                .as_ref()
                .map(|s| s.certificate_keys.clone())
                .unwrap_or_default()
        };
        let keys = if known.iter().any(|k| k.version == want) {
            known
        } else {
            let pong = crate::sdk::ping_response(&self.conn).await?;
            let mut store = self.store.lock().await;
            store
                .state
                .sealed_sender
                .get_or_insert_default()
                .certificate_keys
                .clone_from(&pong.sender_certificate_keys);
            store.save()?;
            pong.sender_certificate_keys
        };
        Ok(keys
            .iter()
            .filter_map(|k| Some((k.version, k.public_key.as_slice().try_into().ok()?)))
            .collect())
    }

    /// Sends `delivery.content` to `target` as a sealed sender, when its access
    /// secret is known; `None` when the sealed path does not apply.
    pub(crate) async fn try_deliver_sealed(
        &self,
        delivery: &Delivery<'_>,
        target: &Target,
        own: &[u8; 16],
    ) -> Result<Option<SealedOutcome>> {
        if delivery.ephemeral || target.box_id == *own {
            return Ok(None);
        }
        let Some(key) = self.access_key_for(&target.box_id).await else {
            return Ok(None);
        };
        let certificate = self.sender_certificate().await?;
        let header = EnvelopeHeader {
            sender_box: *own,
            sender_device: self.device_id,
            message_id: delivery.message_id,
        };
        let mut list = self.devices_for(&target.box_id).await?;
        for _round in 0..MAX_STALE_ROUNDS {
            let (devices, _) = recipient_devices_cached(&self.key_cache, &list, None);
            let inner = seal_envelope(&self.keys, &header, delivery.content, &devices)?;
            let outer = seal_sender(&certificate, &inner, &target.box_id, &devices)?;
            let request = pb::SealedSendRequest {
                box_id: target.box_id.to_vec(),
                access_key: key.to_vec(),
                message_id: delivery.message_id.to_vec(),
                device_list_version: list.version,
                envelope: outer.encode_to_vec(),
                wake: delivery.wake as i32,
            };
            let body = self
                .anonymous()
                .await?
                .call_ok(
                    Method::SealedSend,
                    &request.encode_to_vec(),
                    None,
                    Duration::ZERO,
                )
                .await?;
            let reply: pb::SealedSendResponse = decode(&body, "sealed send response")?;
            let result = reply
                .result
                .ok_or_else(|| Error::BadReply("no sealed send result".into()))?;
            match pb::Status::try_from(result.status).unwrap_or(pb::Status::Internal) {
                pb::Status::Ok => return Ok(Some(SealedOutcome::Sent(result.seq))),
                pb::Status::StaleDevices => {
                    list = self.adopt_list(&target.box_id, result.current).await?;
                    if delivery.mls {
                        return Ok(Some(SealedOutcome::Stale));
                    }
                }
                pb::Status::NotFound => {
                    self.forget_access_secret(&target.box_id).await?;
                    return Ok(Some(SealedOutcome::Refused));
                }
                other => {
                    return Err(Error::Status {
                        status: other,
                        message: "sealed send".into(),
                    });
                }
            }
        }
        Err(Error::Status {
            status: pb::Status::StaleDevices,
            message: "the recipient's devices kept changing; try again".into(),
        })
    }

    /// The connection sealed sends use: the same gateway, but a QUIC connection
    /// that never carries this device's credentials, so nothing links the two.
    async fn anonymous(&self) -> Result<&Connection> {
        self.anonymous
            .get_or_try_init(|| async { Connection::new(self.conn.config().clone()) })
            .await
    }

    /// Opens an envelope the gateway stored without a sender. The outer error
    /// is for failures worth retrying later; the inner one rejects it.
    pub(crate) async fn process_sealed(
        &self,
        queued: &pb::QueuedEnvelope,
    ) -> Result<std::result::Result<Received, String>> {
        let own = self.own_box().await?;
        let Ok(outer) = pb::Envelope::decode(queued.envelope.as_slice()) else {
            return Ok(Err("undecodable sealed envelope".into()));
        };
        if outer.message_id != queued.message_id {
            return Ok(Err(
                "the envelope's message id differs from the gateway's record".into(),
            ));
        }
        let unsealed = match unseal_sender(&self.keys, &own, &self.device_id, &outer) {
            Ok(u) => u,
            Err(e) => return Ok(Err(format!("sealed sender: {e}"))),
        };
        let keys = self
            .certificate_keys(unsealed.certificate.key_version)
            .await?;
        let opened = match open_unsealed(
            &self.keys,
            &self.device_id,
            unsealed,
            &keys,
            queued.enqueued_at_ms,
        ) {
            Ok(o) => o,
            Err(e) => return Ok(Err(format!("sealed sender: {e}"))),
        };
        let sender_box = opened.sender.box_id;
        let blocked = {
            let store = self.store.lock().await;
            store
                .state
                .contacts
                .iter()
                .any(|c| c.box_id.as_slice() == sender_box && c.blocked)
        };
        if blocked {
            return Ok(Err("sealed sender: from a blocked sender".into()));
        }
        let message_id = id16(&queued.message_id, "message id")?;
        let sender = &opened.sender;
        let content = match self
            .direct_unwrap(
                queued.seq,
                &queued.message_id,
                (
                    &sender.box_id,
                    &sender.device_id,
                    sender.keys.identity_key(),
                ),
                opened.content,
            )
            .await?
        {
            Ok(c) => c,
            Err(reason) => return Ok(Err(format!("sealed sender: {reason}"))),
        };
        self.after_open(&sender_box, &content).await?;
        Ok(Ok(Received {
            seq: queued.seq,
            message_id,
            sender_box: box_id(sender_box),
            sender_device: device_id(opened.sender.device_id),
            sender: self.display_name(&sender_box).await,
            sent_at_ms: content.sent_at_ms,
            enqueued_at_ms: queued.enqueued_at_ms,
            body: self.with_previews(crate::sdk::body_of(content)).await,
        }))
    }
}

fn fresh_secret() -> Vec<u8> {
    let mut secret = vec![0u8; ACCESS_SECRET_LEN];
    rand::fill(secret.as_mut_slice());
    secret
}
