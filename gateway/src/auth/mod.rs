//! Request authentication: Hawk verification with derived device keys, the nonce
//! replay cache, and verification codes.
//!
//! [`Authenticator::authenticate`] checks a request in this order:
//! 1. the `Authorization` value parses as Hawk with id, ts, nonce, hash and mac
//!    (else `malformed`), and the id is a canonical credential id (else
//!    `unknown_credential`) naming a configured server secret version (else
//!    `unknown_secret_version`);
//! 2. Hawk verification with the key derived from that version's secret
//!    ([`keys::device_key`]): timestamp
//!    within the skew window (`clock_skew`), `ext` equal to this connection's TLS
//!    exporter value (`wrong_connection`), payload hash over the body
//!    (`payload_mismatch`), MAC (`bad_mac`);
//! 3. the device record: it must exist, be authorized and carry the credential's key
//!    version (else `unknown_credential`: removed devices and revoked keys); a
//!    recent positive answer comes from [`device_cache`] instead of storage;
//! 4. the nonce: remembered per credential for twice the skew window; a nonce seen
//!    before is `replayed`.
//!
//! The MAC is checked before the device is read, so a forged request never costs a
//! storage read. The labels above are the `reason` values of
//! `rossby_auth_failures_total`.
//!
//! A request that authenticates with credentials of a server secret version other
//! than the current one succeeds, and [`Authenticated::credentials_outdated`] says
//! so (the reply's `credentials_outdated`; see [`secrets`]).

pub mod codes;
pub mod device_cache;
pub mod keys;
pub mod secrets;

use device_cache::DeviceCache;
pub use device_cache::IdentityKey;
use keys::CredentialId;
use rossby_keyspace::{BoxId, DeviceId};
use rossby_protocol::hawk::{Authorization, Rejection, ServiceName, SignedRequest};
use rossby_protocol::pb::{Method, Status};
use rossby_storage::tables::records::Device;
use rossby_storage::tables::{Store, Tx, devices};
use rossby_storage::transact;
use secrets::ServerSecrets;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};

/// Longest nonce accepted.
pub const MAX_NONCE_LEN: usize = 128;

/// Default number of nonces remembered. When more requests than this arrive within
/// the nonce lifetime, the least recently used nonces are forgotten early (a replay
/// would then still have to come over the same connection, because of the exporter
/// binding).
pub const DEFAULT_NONCE_CAPACITY: u64 = 2_000_000;

/// The nonces seen recently, per credential.
pub struct NonceCache {
    cache: moka::sync::Cache<[u8; 32], ()>,
}

impl NonceCache {
    /// A cache remembering each nonce for `ttl`, holding at most `capacity` nonces.
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        NonceCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl.max(Duration::from_secs(1)))
                .build(),
        }
    }

    /// Remembers the nonce of a credential; `false` if it was already remembered.
    /// Entries are a hash of (credential id, nonce), so each costs the same memory.
    pub fn remember(&self, credential_id: &str, nonce: &str) -> bool {
        let mut hasher = Sha256::new();
        hasher.update((credential_id.len() as u64).to_be_bytes());
        hasher.update(credential_id.as_bytes());
        hasher.update(nonce.as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        self.cache.entry(key).or_insert(()).is_fresh()
    }
}

/// Why a request was not authenticated.
#[derive(Debug)]
pub enum AuthFailure {
    /// The `Authorization` value is missing or malformed.
    Malformed,
    /// The credential does not name an authorized device at its current key version.
    UnknownCredential,
    /// The credential names a server secret version that is not configured (it was
    /// removed, or never existed).
    UnknownSecretVersion,
    /// The timestamp is outside the skew window.
    ClockSkew,
    /// `ext` carries another connection's binding.
    WrongConnection,
    /// The payload hash does not match the body.
    PayloadMismatch,
    /// The MAC is wrong.
    BadMac,
    /// The nonce was used before.
    Replayed,
    /// The device record could not be read.
    Storage(rossby_storage::Error),
}

impl AuthFailure {
    /// The `reason` label of `rossby_auth_failures_total` (`None` for storage
    /// failures, which are not authentication failures).
    pub fn reason(&self) -> Option<&'static str> {
        Some(match self {
            AuthFailure::Malformed => "malformed",
            AuthFailure::UnknownCredential => "unknown_credential",
            AuthFailure::UnknownSecretVersion => "unknown_secret_version",
            AuthFailure::ClockSkew => "clock_skew",
            AuthFailure::WrongConnection => "wrong_connection",
            AuthFailure::PayloadMismatch => "payload_mismatch",
            AuthFailure::BadMac => "bad_mac",
            AuthFailure::Replayed => "replayed",
            AuthFailure::Storage(_) => return None,
        })
    }

    /// The status answered (for storage failures, see the API's storage mapping).
    pub fn status(&self) -> Status {
        match self {
            AuthFailure::ClockSkew => Status::ClockSkew,
            AuthFailure::Replayed => Status::Replayed,
            _ => Status::Unauthenticated,
        }
    }

    /// A human-readable explanation that reveals nothing about keys or devices.
    pub fn message(&self) -> &'static str {
        match self {
            AuthFailure::Malformed => "missing or malformed Hawk authorization",
            AuthFailure::UnknownCredential | AuthFailure::UnknownSecretVersion => {
                "unknown or revoked credentials"
            }
            AuthFailure::ClockSkew => {
                "request timestamp is outside the allowed clock skew; see server_time_ms"
            }
            AuthFailure::WrongConnection => "request is bound to another connection",
            AuthFailure::PayloadMismatch => "payload hash does not match the request body",
            AuthFailure::BadMac => "invalid request signature",
            AuthFailure::Replayed => "request nonce was already used",
            AuthFailure::Storage(_) => "storage unavailable",
        }
    }
}

impl From<Rejection> for AuthFailure {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Malformed(_) => AuthFailure::Malformed,
            Rejection::ClockSkew => AuthFailure::ClockSkew,
            Rejection::WrongConnection => AuthFailure::WrongConnection,
            Rejection::PayloadMismatch => AuthFailure::PayloadMismatch,
            Rejection::BadMac => AuthFailure::BadMac,
        }
    }
}

/// An authenticated device.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// The device's box.
    pub box_id: BoxId,
    /// The device.
    pub device_id: DeviceId,
    /// The device's key version (its record's `credential_version`).
    pub key_version: u32,
    /// The server secret version of the credentials used.
    pub secret_version: u32,
    /// Whether that version is not the current one: the device should fetch new
    /// credentials (RefreshCredentials).
    pub credentials_outdated: bool,
    /// The device's Ed25519 identity key as its record holds it, stored with
    /// every envelope it sends (so recipients can verify them after the sender
    /// can no longer be looked up).
    pub identity_key: Option<IdentityKey>,
}

/// What one request presents for authentication.
#[derive(Clone, Copy, Debug)]
pub struct Presented<'a> {
    /// The RPC.
    pub method: Method,
    /// The request body exactly as received.
    pub body: &'a [u8],
    /// The `Authorization` value.
    pub authorization: &'a str,
    /// The connection's TLS exporter value.
    pub exporter: &'a [u8],
}

/// Verifies Hawk-signed requests.
pub struct Authenticator {
    secrets: ServerSecrets,
    service: ServiceName,
    skew: Duration,
    nonces: NonceCache,
    devices: DeviceCache,
}

impl Authenticator {
    /// An authenticator for a deployment's server secrets and service name; nonces
    /// live for twice the skew window, and `devices` remembers authorized devices.
    pub fn new(
        secrets: ServerSecrets,
        service: ServiceName,
        skew: Duration,
        nonce_capacity: u64,
        devices: DeviceCache,
    ) -> Self {
        Authenticator {
            secrets,
            service,
            skew,
            nonces: NonceCache::new(skew.saturating_mul(2), nonce_capacity),
            devices,
        }
    }

    /// The server secrets credentials are derived from.
    pub fn secrets(&self) -> &ServerSecrets {
        &self.secrets
    }

    /// The authorized devices checked recently; revocations go through it.
    pub fn devices(&self) -> &DeviceCache {
        &self.devices
    }

    /// Whether the device is authorized with credentials of `key_version`: from
    /// the cache, else from storage (and then cached).
    pub async fn device_authorized(
        &self,
        store: &Store,
        box_id: BoxId,
        device_id: DeviceId,
        key_version: u32,
    ) -> rossby_storage::Result<Option<Option<IdentityKey>>> {
        if let Some(key) = self.devices.get(box_id, device_id, key_version) {
            return Ok(Some(key));
        }
        let read = self.devices.begin_read(box_id);
        let Some(device) =
            current_device(store, box_id, device_id, key_version, read.fresh).await?
        else {
            return Ok(None);
        };
        let key = IdentityKey::try_from(device.identity_key.as_slice()).ok();
        self.devices
            .insert(box_id, device_id, key_version, key, read);
        Ok(Some(key))
    }

    /// Authenticates one request (see the module documentation for the order of
    /// checks).
    pub async fn authenticate(
        &self,
        store: &Store,
        presented: Presented<'_>,
        now: SystemTime,
    ) -> Result<Authenticated, AuthFailure> {
        if presented.authorization.is_empty() {
            return Err(AuthFailure::Malformed);
        }
        let auth = Authorization::parse(presented.authorization)?;
        if auth.nonce.is_empty() || auth.nonce.len() > MAX_NONCE_LEN {
            return Err(AuthFailure::Malformed);
        }
        let id = CredentialId::parse(&auth.id).ok_or(AuthFailure::UnknownCredential)?;
        let secret = self
            .secrets
            .get(id.secret_version)
            .ok_or(AuthFailure::UnknownSecretVersion)?;
        let key = keys::device_key(secret, &id);
        let (box_id, device_id) = (id.box_id, id.device);
        let signed = SignedRequest {
            service: &self.service,
            method: presented.method,
            body: presented.body,
            exporter: presented.exporter,
        };
        auth.verify(&signed, &key, now, self.skew)?;
        let identity_key = self
            .device_authorized(store, box_id, device_id, id.key_version)
            .await
            .map_err(AuthFailure::Storage)?
            .ok_or(AuthFailure::UnknownCredential)?;
        if !self.nonces.remember(&auth.id, &auth.nonce) {
            return Err(AuthFailure::Replayed);
        }
        Ok(Authenticated {
            box_id,
            device_id,
            key_version: id.key_version,
            secret_version: id.secret_version,
            credentials_outdated: id.secret_version != self.secrets.current_version(),
            identity_key,
        })
    }
}

/// The device record if the device is authorized with credentials of
/// `key_version`. Unless `fresh`, read first from a recent snapshot (no timestamp
/// round trip to the primary region on the request path), so a device removed or
/// re-keyed in the last
/// [`RECENT_READ_STALENESS`](rossby_storage::kv::RECENT_READ_STALENESS) may still
/// pass; a refusal is confirmed with a fresh read, so a device authorized a moment
/// ago is never refused.
pub(crate) async fn current_device(
    store: &Store,
    box_id: BoxId,
    device_id: DeviceId,
    key_version: u32,
    fresh: bool,
) -> rossby_storage::Result<Option<Device>> {
    let usable =
        |d: Option<Device>| d.filter(|d| d.authorized && d.credential_version == key_version);
    if !fresh {
        let mut txn = store.kv.begin_recent_read().await?;
        let read = devices::get_device(&mut Tx::new(&mut *txn), box_id, device_id).await;
        // Nothing read leaves the transaction before it ended (durability on fjall).
        txn.rollback().await?;
        if let Some(device) = usable(read?) {
            return Ok(Some(device));
        }
    }
    let fresh = transact!(store, |txn| devices::get_device(txn, box_id, device_id)
        .await)?;
    Ok(usable(fresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_remembered_per_credential() {
        let cache = NonceCache::new(Duration::from_secs(60), 100);
        assert!(cache.remember("a", "n1"));
        assert!(!cache.remember("a", "n1"));
        assert!(cache.remember("b", "n1"));
        assert!(cache.remember("a", "n2"));
        // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
        assert!(cache.remember("ab", "c"));
        assert!(cache.remember("a", "bc"));
    }
}
