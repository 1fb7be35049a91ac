//! Sealed sender: GetSenderCertificate, SealedSend, and the certificate keys
//! Ping publishes.
//!
//! # Certificates
//! A sender certificate names an authenticated device and carries its key
//! bundle as stored; it is signed with the certificate key of the current
//! server secret version ([`certificate_key`]), so every gateway of the
//! deployment issues and every recipient verifies the same way, and rotating
//! the server secret rotates the certificate key. Ping lists the public keys of
//! every version the gateway holds. Certificates last
//! [`CERTIFICATE_LIFETIME`]; a client fetches a new one before it runs out.
//!
//! # SealedSend
//! Unauthenticated: the request carries no Hawk header, so nothing links it to a
//! device (clients send it on a connection of its own). After the per-address
//! limit every request passes, each recipient box has its own budget of sealed
//! sends; then the envelope is enqueued as a [`Sender::Sealed`] one, which the
//! store accepts only under the box's sealed-sender setting. A wrong access key,
//! a box that takes no sealed sends and an unknown box give the same
//! `NOT_FOUND`. Nothing about the sender is logged, counted or stored.

use super::{Failure, Shared, decode, now_ms, parse_box_id};
use crate::auth::Authenticated;
use crate::auth::secrets::ServerSecrets;
use ed25519_dalek::SigningKey;
use rossby_keyspace::MessageId;
use rossby_protocol::crypto::sealed_sender::{self, ACCESS_KEY_LEN, certificate_key};
use rossby_protocol::pb::{self, Status};
use rossby_storage::tables::devices;
use rossby_storage::tables::queue::{ANY_DEVICE_LIST, NewEnvelope, Sender};
use rossby_storage::transact;
use std::time::Duration;

/// How long a sender certificate is valid.
pub const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The certificate keys of a gateway's server secrets, derived once when the
/// API is built (the secrets do not change while it runs).
pub(crate) struct CertificateKeys {
    /// The current version and its signing key.
    current: (u32, SigningKey),
    /// Every version's public key, as Ping lists them.
    public: Vec<pb::SenderCertificateKey>,
}

impl CertificateKeys {
    /// Derives the key of every version in `secrets`.
    pub(crate) fn derive(secrets: &ServerSecrets) -> Result<Self, String> {
        let derive = |secret: &[u8]| {
            certificate_key(secret).map_err(|e| format!("sender certificate key: {e}"))
        };
        let public = secrets
            .all()
            .map(|(version, secret)| {
                Ok(pb::SenderCertificateKey {
                    version,
                    public_key: derive(secret)?.verifying_key().to_bytes().to_vec(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(CertificateKeys {
            current: (secrets.current_version(), derive(secrets.current())?),
            public,
        })
    }

    /// The public key of every server secret version this gateway holds.
    pub(crate) fn public(&self) -> &[pb::SenderCertificateKey] {
        &self.public
    }
}

/// GetSenderCertificate: a certificate for the calling device, signed with the
/// current version's key.
pub(crate) async fn get_certificate(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::GetSenderCertificateResponse, Failure> {
    let _: pb::GetSenderCertificateRequest = decode(body, "GetSenderCertificateRequest")?;
    let store = &shared.store;
    let (box_id, device_id) = (caller.box_id, caller.device_id);
    let device = transact!(store, |txn| devices::get_device(txn, box_id, device_id)
        .await)?
    .ok_or_else(Failure::not_found)?;
    let (version, key) = &shared.certificate_keys.current;
    let lifetime = u64::try_from(CERTIFICATE_LIFETIME.as_millis()).unwrap_or(u64::MAX);
    let certificate = sealed_sender::issue_certificate(
        key,
        *version,
        box_id.as_bytes(),
        device_id.as_bytes(),
        device.encryption_key,
        now_ms().saturating_add(lifetime),
    );
    Ok(pb::GetSenderCertificateResponse {
        certificate: Some(certificate),
    })
}

/// SealedSend: enqueues one envelope whose sender the gateway cannot name.
pub(crate) async fn sealed_send(
    shared: &Shared,
    body: &[u8],
) -> Result<pb::SealedSendResponse, Failure> {
    let req: pb::SealedSendRequest = decode(body, "SealedSendRequest")?;
    let box_id = parse_box_id(&req.box_id)?;
    let access_key: [u8; ACCESS_KEY_LEN] =
        req.access_key.as_slice().try_into().map_err(|_| {
            Failure::bad_request(format!("access_key must be {ACCESS_KEY_LEN} bytes"))
        })?;
    let message_id = MessageId::try_from_slice(&req.message_id)
        .map_err(|_| Failure::bad_request("message_id must be a UUIDv7 (16 bytes)"))?;
    let wake = pb::Wake::try_from(req.wake)
        .map_err(|_| Failure::bad_request(format!("unknown wake value {}", req.wake)))?;
    if req.envelope.is_empty() {
        return Err(Failure::bad_request("envelopes must not be empty"));
    }
    let max_payload = shared.store.limits.max_payload_bytes;
    if req.envelope.len() > max_payload {
        return Err(Failure::new(
            Status::TooLarge,
            format!("an envelope may have at most {max_payload} bytes"),
        ));
    }
    if req.device_list_version == ANY_DEVICE_LIST {
        return Err(Failure::bad_request(
            "device_list_version must be the version the envelope was sealed for",
        ));
    }
    let wrapped_for =
        super::messaging::wrapped_devices(&req.envelope).map_err(Failure::bad_request)?;
    if let Err(limited) = shared.limits.sealed(box_id) {
        return Err(Failure::rate_limited(
            limited,
            "too many sealed sends to this recipient",
        ));
    }
    let envelope = NewEnvelope {
        sender: Sender::Sealed { access_key },
        message_id,
        device_list_version: req.device_list_version,
        payload: req.envelope,
        wrapped_for: Some(wrapped_for),
    };
    let outcome = shared
        .enqueuer
        .submit(box_id, envelope, wake)
        .await
        .unwrap_or_else(|_| Err(Failure::unavailable("the enqueue did not complete; retry")));
    let result = match outcome {
        Ok(enqueued) => pb::SendResult {
            box_id: box_id.as_bytes().to_vec(),
            status: Status::Ok as i32,
            seq: enqueued.seq,
            ..pb::SendResult::default()
        },
        Err(failure) => {
            let mut list_budget = shared.settings.max_stale_list_bytes;
            super::messaging::failed_result(shared, box_id, failure, &mut list_budget).await
        }
    };
    Ok(pb::SealedSendResponse {
        result: Some(result),
    })
}

#[cfg(test)]
mod tests;
