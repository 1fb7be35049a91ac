//! The pure part of sending and receiving: which devices an envelope is sealed
//! for, and the checks a received envelope must pass before its content is
//! trusted. No I/O, so both directions can be tested with keys in memory.

use crate::error::{Error, Result};
use prost::Message;
use rossby_protocol::crypto::{
    DeviceKeys, EnvelopeHeader, IdentityKey, PublicKeys, RecipientDevice, open_envelope,
    seal_envelope,
};
use rossby_protocol::pb;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Public keys whose bundles verified, by device, so a contact's bundle is
/// checked once per bundle content rather than on every send and delivery
/// (a check is an Ed25519 verification and an ML-KEM key validation, more
/// than the rest of sealing a small message). A device that publishes a new
/// bundle misses the cache and is verified again; bundles that fail are never
/// cached.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<[u8; 16], (pb::KeyBundle, PublicKeys)>>,
}

/// Beyond this many devices the cache starts over: it only saves work, and a
/// bound keeps a long-lived client's memory flat.
const KEY_CACHE_LIMIT: usize = 4096;

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").finish_non_exhaustive()
    }
}

impl KeyCache {
    /// The checked keys of `bundle` (see [`PublicKeys::from_bundle`]).
    pub fn verified(
        &self,
        device_id: &[u8; 16],
        bundle: &pb::KeyBundle,
    ) -> rossby_protocol::Result<PublicKeys> {
        {
            let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((known, keys)) = entries.get(device_id)
                && known == bundle
            {
                return Ok(keys.clone());
            }
        }
        let keys = PublicKeys::from_bundle(bundle)?;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= KEY_CACHE_LIMIT {
            entries.clear();
        }
        entries.insert(*device_id, (bundle.clone(), keys.clone()));
        Ok(keys)
    }
}

fn checked_keys(
    cache: Option<&KeyCache>,
    device_id: &[u8; 16],
    bundle: &pb::KeyBundle,
) -> Option<PublicKeys> {
    match cache {
        Some(cache) => cache.verified(device_id, bundle).ok(),
        None => PublicKeys::from_bundle(bundle).ok(),
    }
}

/// The devices of a list whose key bundles verify, minus `exclude` (the sending
/// device when sealing a copy for the own box). Returns the devices and the ids
/// of devices skipped because their bundle is invalid.
pub fn recipient_devices(
    list: &pb::DeviceList,
    exclude: Option<&[u8; 16]>,
) -> (Vec<RecipientDevice>, Vec<Vec<u8>>) {
    recipient_devices_with(None, list, exclude)
}

/// [`recipient_devices`] through a cache of verified bundles.
pub fn recipient_devices_cached(
    cache: &KeyCache,
    list: &pb::DeviceList,
    exclude: Option<&[u8; 16]>,
) -> (Vec<RecipientDevice>, Vec<Vec<u8>>) {
    recipient_devices_with(Some(cache), list, exclude)
}

fn recipient_devices_with(
    cache: Option<&KeyCache>,
    list: &pb::DeviceList,
    exclude: Option<&[u8; 16]>,
) -> (Vec<RecipientDevice>, Vec<Vec<u8>>) {
    let mut good = Vec::with_capacity(list.devices.len());
    let mut bad = Vec::new();
    for info in &list.devices {
        let Ok(device_id) = <[u8; 16]>::try_from(info.device_id.as_slice()) else {
            bad.push(info.device_id.clone());
            continue;
        };
        if exclude == Some(&device_id) {
            continue;
        }
        match info
            .keys
            .as_ref()
            .and_then(|k| checked_keys(cache, &device_id, k))
        {
            Some(keys) => good.push(RecipientDevice { device_id, keys }),
            None => bad.push(info.device_id.clone()),
        }
    }
    (good, bad)
}

/// The verified public keys of one device in a list.
pub fn device_keys(list: &pb::DeviceList, device_id: &[u8]) -> Option<PublicKeys> {
    device_keys_with(None, list, device_id)
}

/// [`device_keys`] through a cache of verified bundles.
pub fn device_keys_cached(
    cache: &KeyCache,
    list: &pb::DeviceList,
    device_id: &[u8],
) -> Option<PublicKeys> {
    device_keys_with(Some(cache), list, device_id)
}

fn device_keys_with(
    cache: Option<&KeyCache>,
    list: &pb::DeviceList,
    device_id: &[u8],
) -> Option<PublicKeys> {
    let info = list.devices.iter().find(|d| d.device_id == device_id)?;
    let bundle = info.keys.as_ref()?;
    match (cache, <[u8; 16]>::try_from(device_id)) {
        (Some(cache), Ok(id)) => cache.verified(&id, bundle).ok(),
        _ => PublicKeys::from_bundle(bundle).ok(),
    }
}

/// Seals `content` for every valid device of `list` except `exclude` and
/// returns the protobuf-encoded `Envelope` for a `Recipient`.
pub fn seal_for_list(
    keys: &DeviceKeys,
    header: &EnvelopeHeader,
    content: &pb::Content,
    list: &pb::DeviceList,
    exclude: Option<&[u8; 16]>,
) -> Result<Vec<u8>> {
    seal_for_list_with(None, keys, header, content, list, exclude)
}

/// [`seal_for_list`] through a cache of verified bundles.
pub fn seal_for_list_cached(
    cache: &KeyCache,
    keys: &DeviceKeys,
    header: &EnvelopeHeader,
    content: &pb::Content,
    list: &pb::DeviceList,
    exclude: Option<&[u8; 16]>,
) -> Result<Vec<u8>> {
    seal_for_list_with(Some(cache), keys, header, content, list, exclude)
}

fn seal_for_list_with(
    cache: Option<&KeyCache>,
    keys: &DeviceKeys,
    header: &EnvelopeHeader,
    content: &pb::Content,
    list: &pb::DeviceList,
    exclude: Option<&[u8; 16]>,
) -> Result<Vec<u8>> {
    let (devices, _) = recipient_devices_with(cache, list, exclude);
    let envelope = seal_envelope(keys, header, content, &devices)?;
    Ok(envelope.encode_to_vec())
}

/// Why a received envelope was not accepted (shown to the user, then
/// acknowledged so it does not block the queue).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection(pub String);

/// Checks and decrypts a queued envelope: it must decode, name the same sender
/// box, device and message id as the gateway recorded, be signed by that device's
/// identity key (from `sender_devices`, the sender box's verified device list)
/// and hold a key for this device.
pub fn open_queued(
    keys: &DeviceKeys,
    my_device: &[u8; 16],
    queued: &pb::QueuedEnvelope,
    sender_devices: &pb::DeviceList,
) -> Result<pb::Content, Rejection> {
    if sender_devices.box_id != queued.sender_box {
        return Err(Rejection("device list of another box".into()));
    }
    let sender = device_keys(sender_devices, &queued.sender_device)
        .ok_or_else(|| Rejection("the sending device is not among the sender's devices".into()))?;
    open_queued_by(keys, my_device, queued, sender.identity_key())
}

/// Checks and decrypts a queued envelope signed by the device whose identity
/// key is `sender` (from its device list, or the key the gateway recorded
/// with the envelope when the sender can no longer be looked up, security.md
/// §8.3): it must decode, name the same sender box, device and message id as
/// the gateway recorded, verify under `sender` and hold a key for this device.
pub fn open_queued_by(
    keys: &DeviceKeys,
    my_device: &[u8; 16],
    queued: &pb::QueuedEnvelope,
    sender: &IdentityKey,
) -> Result<pb::Content, Rejection> {
    let envelope = pb::Envelope::decode(queued.envelope.as_slice())
        .map_err(|e| Rejection(format!("undecodable envelope: {e}")))?;
    if envelope.sender_box != queued.sender_box
        || envelope.sender_device != queued.sender_device
        || envelope.message_id != queued.message_id
    {
        return Err(Rejection(
            "the envelope's sender or message id differs from the gateway's record".into(),
        ));
    }
    open_envelope(keys, my_device, &envelope, sender).map_err(|e| Rejection(e.to_string()))
}

/// Parses a 16-byte id.
pub fn id16(bytes: &[u8], what: &str) -> Result<[u8; 16]> {
    bytes
        .try_into()
        .map_err(|_| Error::BadReply(format!("{what} must be 16 bytes, got {}", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Device {
        id: [u8; 16],
        keys: DeviceKeys,
    }

    fn device(n: u8) -> Device {
        Device {
            id: [n; 16],
            keys: DeviceKeys::generate(),
        }
    }

    fn list(box_id: [u8; 16], version: u64, devices: &[&Device]) -> pb::DeviceList {
        pb::DeviceList {
            box_id: box_id.to_vec(),
            version,
            devices: devices
                .iter()
                .map(|d| pb::DeviceInfo {
                    device_id: d.id.to_vec(),
                    keys: Some(d.keys.bundle()),
                    label: String::new(),
                })
                .collect(),
        }
    }

    fn queued(header: &EnvelopeHeader, envelope: Vec<u8>) -> pb::QueuedEnvelope {
        pb::QueuedEnvelope {
            seq: 1,
            sender_box: header.sender_box.to_vec(),
            sender_device: header.sender_device.to_vec(),
            message_id: header.message_id.to_vec(),
            enqueued_at_ms: 0,
            envelope,
            sender_identity_key: Vec::new(),
        }
    }

    fn text(t: &str) -> pb::Content {
        pb::Content {
            access_secret: Vec::new(),
            sent_at_ms: 1,
            body: Some(pb::content::Body::Text(t.into())),
        }
    }

    #[test]
    fn alice_to_bob_and_to_her_other_device() {
        let alice_box = [0xa0; 16];
        let bob_box = [0xb0; 16];
        let alice1 = device(1);
        let alice2 = device(2);
        let bob1 = device(3);
        let bob2 = device(4);
        let alice_list = list(alice_box, 2, &[&alice1, &alice2]);
        let bob_list = list(bob_box, 7, &[&bob1, &bob2]);
        let header = EnvelopeHeader {
            sender_box: alice_box,
            sender_device: alice1.id,
            message_id: *uuid::Uuid::now_v7().as_bytes(),
        };
        // To Bob: both of his devices can read it.
        let env = seal_for_list(&alice1.keys, &header, &text("hi bob"), &bob_list, None).unwrap();
        let q = queued(&header, env);
        for bob in [&bob1, &bob2] {
            let content = open_queued(&bob.keys, &bob.id, &q, &alice_list).unwrap();
            assert_eq!(content, text("hi bob"));
        }
        // Alice's own copy: not sealed for the sending device.
        let copy = pb::Content {
            access_secret: Vec::new(),
            sent_at_ms: 1,
            body: Some(pb::content::Body::Sent(pb::SentCopy {
                to_box: bob_box.to_vec(),
                to_identifier: "bob@example.com".into(),
                text: "hi bob".into(),
                message: None,
                mls: Vec::new(),
            })),
        };
        let env =
            seal_for_list(&alice1.keys, &header, &copy, &alice_list, Some(&alice1.id)).unwrap();
        let decoded = pb::Envelope::decode(env.as_slice()).unwrap();
        assert_eq!(decoded.keys.len(), 1);
        let q = queued(&header, env);
        assert_eq!(
            open_queued(&alice2.keys, &alice2.id, &q, &alice_list).unwrap(),
            copy
        );
        assert!(open_queued(&alice1.keys, &alice1.id, &q, &alice_list).is_err());
    }

    #[test]
    fn forgeries_and_mismatches_are_rejected() {
        let alice_box = [0xa0; 16];
        let bob_box = [0xb0; 16];
        let alice = device(1);
        let mallory = device(9);
        let bob = device(3);
        let alice_list = list(alice_box, 1, &[&alice]);
        let bob_list = list(bob_box, 1, &[&bob]);
        let header = EnvelopeHeader {
            sender_box: alice_box,
            sender_device: alice.id,
            message_id: [5; 16],
        };
        // Mallory signs an envelope claiming to be Alice's device.
        let forged =
            seal_for_list(&mallory.keys, &header, &text("pay me"), &bob_list, None).unwrap();
        let err =
            open_queued(&bob.keys, &bob.id, &queued(&header, forged), &alice_list).unwrap_err();
        assert!(err.0.contains("signature"), "{err:?}");

        let good = seal_for_list(&alice.keys, &header, &text("hi"), &bob_list, None).unwrap();
        // The gateway's record says another sender device.
        let mut q = queued(&header, good.clone());
        q.sender_device = vec![8; 16];
        assert!(open_queued(&bob.keys, &bob.id, &q, &alice_list).is_err());
        // A device list of another box.
        let q = queued(&header, good.clone());
        let wrong = list(bob_box, 1, &[&alice]);
        assert!(open_queued(&bob.keys, &bob.id, &q, &wrong).is_err());
        // Tampered ciphertext breaks the signature.
        let mut env = pb::Envelope::decode(good.as_slice()).unwrap();
        env.ciphertext[0] ^= 1;
        let q = queued(&header, env.encode_to_vec());
        assert!(open_queued(&bob.keys, &bob.id, &q, &alice_list).is_err());
        // Garbage.
        let q = queued(&header, vec![0xff, 0xff]);
        assert!(open_queued(&bob.keys, &bob.id, &q, &alice_list).is_err());
        // A device that was not a recipient.
        let q = queued(&header, good);
        assert!(open_queued(&mallory.keys, &mallory.id, &q, &alice_list).is_err());
    }

    #[test]
    fn invalid_bundles_are_skipped() {
        let a = device(1);
        let mut l = list([1; 16], 1, &[&a, &device(2)]);
        l.devices[1].keys.as_mut().unwrap().signature[0] ^= 1;
        let (good, bad) = recipient_devices(&l, None);
        assert_eq!(good.len(), 1);
        assert_eq!(bad, vec![vec![2u8; 16]]);
        let (good, _) = recipient_devices(&l, Some(&a.id));
        assert!(good.is_empty());
    }

    #[test]
    fn the_key_cache_checks_every_new_bundle() {
        let cache = KeyCache::default();
        let a = device(1);
        let good = list([1; 16], 1, &[&a]);
        assert!(device_keys_cached(&cache, &good, &a.id).is_some());
        assert!(device_keys_cached(&cache, &good, &a.id).is_some());
        // The same device id with a tampered bundle is verified again and refused.
        let mut bad = good.clone();
        bad.devices[0].keys.as_mut().unwrap().signature[0] ^= 1;
        assert!(device_keys_cached(&cache, &bad, &a.id).is_none());
        let (ok, rejected) = recipient_devices_with(Some(&cache), &bad, None);
        assert!(ok.is_empty());
        assert_eq!(rejected, vec![a.id.to_vec()]);
        // Another device's keys under this id are not taken from the cache.
        let b = device(2);
        let mut swapped = good.clone();
        swapped.devices[0].keys = Some(b.keys.bundle());
        let keys = device_keys_cached(&cache, &swapped, &a.id).unwrap();
        assert_eq!(keys.identity(), b.keys.identity_public());
    }
}
