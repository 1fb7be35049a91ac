//! The MLS side of groups, without I/O: the openmls provider whose storage is
//! saved in the state file, the group configuration, and the credentials that
//! bind an MLS leaf to a Rossby device.
//!
//! # Credentials
//! A leaf's `BasicCredential` identity is `box (16) || device (16) || signature
//! (64)`, where the signature is the device's Ed25519 identity key (the one in
//! its key bundle) over `"rossby/mls-credential/v1" || box || device || MLS
//! signature public key`. A member checks it against the device lists it
//! fetches for 1:1 messages, so the MLS signature key of every sender is vouched
//! for by a device key the user can compare with safety numbers.

use super::state::{GroupMeta, GroupsState, StorageEntry};
use crate::error::{Error, Result};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use prost::Message as _;
use rossby_protocol::crypto::{DeviceKeys, IdentityKey};
use rossby_protocol::mls::key_package::{CREDENTIAL_IDENTITY_LEN, credential_message};
use std::collections::HashMap;
use std::sync::RwLock;

/// The ciphersuite of every Rossby group: hybrid post-quantum HPKE (X-Wing:
/// ML-KEM-768 + X25519), AES-128-GCM, SHA-256 and Ed25519
/// (draft-ietf-mls-pq-ciphersuites, provisional code point 0x004F).
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519;
/// The group-context extension holding [`GroupMeta`] (private-use range).
pub const EXTENSION_GROUP_META: u16 = 0xff52;
/// Past epochs whose keys are kept, so an application message sent just before
/// a Commit it raced with can still be read.
pub const MAX_PAST_EPOCHS: usize = 2;

/// openmls' crypto and storage. The storage is openmls' in-memory map, copied
/// into the state file ([`MlsProvider::entries`]) whenever the state is saved.
#[derive(Default)]
pub struct MlsProvider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl OpenMlsProvider for MlsProvider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

impl MlsProvider {
    /// A provider whose storage holds `entries`.
    pub fn from_entries(entries: &[StorageEntry]) -> Self {
        let map: HashMap<Vec<u8>, Vec<u8>> = entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        MlsProvider {
            crypto: RustCrypto::default(),
            storage: MemoryStorage {
                values: RwLock::new(map),
            },
        }
    }

    /// Brings `entries` (sorted by key) to the storage's content, copying only
    /// the keys that changed: between two saves openmls rewrites a few keys,
    /// and copying all of them would cost as much as the whole group state.
    pub fn export_into(&self, entries: &mut Vec<StorageEntry>) {
        let values = match self.storage.values.read() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries.retain_mut(|e| match values.get(&e.key) {
            Some(v) => {
                if *v != e.value {
                    e.value.clone_from(v);
                }
                true
            }
            None => false,
        });
        let sorted = entries.is_sorted_by(|a, b| a.key < b.key);
        if entries.len() == values.len() && sorted {
            return;
        }
        if !sorted {
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            entries.dedup_by(|a, b| a.key == b.key);
        }
        let added: Vec<StorageEntry> = values
            .iter()
            .filter(|(k, _)| {
                entries
                    .binary_search_by(|e| e.key.as_slice().cmp(k.as_slice()))
                    .is_err()
            })
            .map(|(k, v)| StorageEntry {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        if !added.is_empty() {
            entries.extend(added);
            entries.sort_by(|a, b| a.key.cmp(&b.key));
        }
    }

    /// The storage's content, sorted by key.
    pub fn entries(&self) -> Vec<StorageEntry> {
        let values = match self.storage.values.read() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut out: Vec<StorageEntry> = values
            .iter()
            .map(|(k, v)| StorageEntry {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

/// An MLS failure as the client's error.
pub fn mls_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Group(format!("{what}: {e}"))
}

/// The device's MLS signature key pair, read from the provider's storage by the
/// public key the state names, or a new one (stored in the provider).
pub fn signer_from(state: &GroupsState, provider: &MlsProvider) -> Result<SignatureKeyPair> {
    let scheme = CIPHERSUITE.signature_algorithm();
    if !state.signature_public.is_empty() {
        return SignatureKeyPair::read(provider.storage(), &state.signature_public, scheme)
            .ok_or_else(|| Error::Group("the MLS signature key is missing from the state".into()));
    }
    let signer = SignatureKeyPair::new(scheme)
        .map_err(|e| mls_error("cannot create the MLS signature key", e))?;
    signer
        .store(provider.storage())
        .map_err(|e| mls_error("cannot store the MLS signature key", e))?;
    Ok(signer)
}

/// The leaf capabilities of every Rossby device: the group metadata extension,
/// last-resort KeyPackages and basic credentials on top of the defaults.
pub fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        None,
        Some(&[
            ExtensionType::Unknown(EXTENSION_GROUP_META),
            ExtensionType::LastResort,
        ]),
        None,
        Some(&[CredentialType::Basic]),
    )
}

/// How this device joins groups.
pub fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(20, 1000))
        .build()
}

/// The group-context extensions naming a group (or marking a 1:1
/// conversation: `direct`, with an empty name).
pub fn meta_extensions(name: &str, direct: bool) -> Result<Extensions<GroupContext>> {
    let meta = GroupMeta {
        name: name.into(),
        direct,
    }
    .encode_to_vec();
    Extensions::single(Extension::Unknown(
        EXTENSION_GROUP_META,
        UnknownExtension(meta),
    ))
    .map_err(|e| mls_error("invalid group extension", e))
}

/// The metadata in a group's context (default if it has none).
pub fn group_meta(group: &MlsGroup) -> GroupMeta {
    group
        .extensions()
        .unknown(EXTENSION_GROUP_META)
        .and_then(|ext| GroupMeta::decode(ext.0.as_slice()).ok())
        .unwrap_or_default()
}

/// The MLS group id of a Rossby group: `creator box || group id`.
pub fn mls_group_id(creator: &[u8; 16], group_id: &[u8; 16]) -> GroupId {
    let mut id = creator.to_vec();
    id.extend_from_slice(group_id);
    GroupId::from_slice(&id)
}

/// The credential of this device, vouched for by its identity key.
pub fn own_credential(
    keys: &DeviceKeys,
    box_id: &[u8; 16],
    device_id: &[u8; 16],
    signer: &SignatureKeyPair,
) -> CredentialWithKey {
    let public = signer.to_public_vec();
    let signature = keys.sign(&credential_message(box_id, device_id, &public));
    let mut identity = Vec::with_capacity(CREDENTIAL_IDENTITY_LEN);
    identity.extend_from_slice(box_id);
    identity.extend_from_slice(device_id);
    identity.extend_from_slice(&signature);
    CredentialWithKey {
        credential: BasicCredential::new(identity).into(),
        signature_key: public.into(),
    }
}

/// The device a credential names, and its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialClaim {
    /// The box.
    pub box_id: [u8; 16],
    /// The device.
    pub device_id: [u8; 16],
    signature: [u8; 64],
}

impl CredentialClaim {
    /// Parses a credential's identity (no verification).
    pub fn parse(credential: &Credential) -> Option<Self> {
        if credential.credential_type() != CredentialType::Basic {
            return None;
        }
        let identity = credential.serialized_content();
        if identity.len() != CREDENTIAL_IDENTITY_LEN {
            return None;
        }
        Some(CredentialClaim {
            box_id: identity[..16].try_into().ok()?,
            device_id: identity[16..32].try_into().ok()?,
            signature: identity[32..].try_into().ok()?,
        })
    }

    /// Checks the claim against the device's identity key and the leaf's
    /// signature key.
    pub fn verify(&self, device: &impl AsRef<IdentityKey>, signature_key: &[u8]) -> bool {
        device
            .as_ref()
            .verify(
                &credential_message(&self.box_id, &self.device_id, signature_key),
                &self.signature,
            )
            .is_ok()
    }
}

/// Serialises an MLS message for the wire.
pub fn to_bytes(message: &MlsMessageOut) -> Result<Vec<u8>> {
    message
        .tls_serialize_detached()
        .map_err(|e| mls_error("cannot encode an MLS message", e))
}

/// Parses an MLS message from the wire.
pub fn from_bytes(bytes: &[u8]) -> std::result::Result<MlsMessageIn, String> {
    MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| format!("undecodable MLS message: {e}"))
}

/// Parses and validates a KeyPackage published as an MLS message.
pub fn key_package(bytes: &[u8], crypto: &RustCrypto) -> std::result::Result<KeyPackage, String> {
    match from_bytes(bytes)?.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => kp
            .validate(crypto, ProtocolVersion::Mls10)
            .map_err(|e| format!("invalid KeyPackage: {e}")),
        _ => Err("not a KeyPackage".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_bind_the_leaf_key_to_the_device_key() {
        let keys = DeviceKeys::generate();
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
        let cwk = own_credential(&keys, &[1; 16], &[2; 16], &signer);
        let claim = CredentialClaim::parse(&cwk.credential).unwrap();
        assert_eq!(claim.box_id, [1; 16]);
        assert_eq!(claim.device_id, [2; 16]);
        assert!(claim.verify(&keys.public_keys(), cwk.signature_key.as_slice()));
        // Another leaf key, or another device's key, does not verify.
        let other = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
        assert!(!claim.verify(&keys.public_keys(), &other.to_public_vec()));
        assert!(!claim.verify(
            &DeviceKeys::generate().public_keys(),
            cwk.signature_key.as_slice()
        ));
        let short = BasicCredential::new(vec![0; 10]).into();
        assert!(CredentialClaim::parse(&short).is_none());
    }

    #[test]
    fn published_key_packages_validate_also_last_resort_ones() {
        let keys = DeviceKeys::generate();
        let provider = MlsProvider::default();
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
        let cwk = own_credential(&keys, &[1; 16], &[2; 16], &signer);
        for last_resort in [false, true] {
            let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities());
            if last_resort {
                builder = builder.mark_as_last_resort();
            }
            let bundle = builder
                .build(CIPHERSUITE, &provider, &signer, cwk.clone())
                .unwrap();
            let bytes = to_bytes(&MlsMessageOut::from(bundle.key_package().clone())).unwrap();
            let kp = key_package(&bytes, provider.crypto()).unwrap();
            assert_eq!(kp.last_resort(), last_resort);
            // The gateway's own parser and checks (written from RFC 9420, not
            // from openmls) accept what openmls makes, for this device only.
            let device_key = keys.public_keys().identity_key().to_owned();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let checked = rossby_protocol::mls::key_package::parse_key_package(&bytes).unwrap();
            assert_eq!(
                checked.cipher_suite,
                rossby_protocol::mls::key_package::CIPHERSUITE
            );
            assert_eq!(u16::from(CIPHERSUITE), checked.cipher_suite);
            checked.check(&[1; 16], &[2; 16], &device_key, now).unwrap();
            assert!(checked.check(&[1; 16], &[3; 16], &device_key, now).is_err());
        }
    }

    #[test]
    fn storage_survives_a_round_trip_through_the_state() {
        let keys = DeviceKeys::generate();
        let provider = MlsProvider::default();
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
        let cwk = own_credential(&keys, &[1; 16], &[2; 16], &signer);
        let group = MlsGroup::builder()
            .with_group_id(mls_group_id(&[1; 16], &[3; 16]))
            .ciphersuite(CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .with_capabilities(capabilities())
            .with_group_context_extensions(meta_extensions("friends", false).unwrap())
            .build(&provider, &signer, cwk)
            .unwrap();
        let restored = MlsProvider::from_entries(&provider.entries());
        let loaded = MlsGroup::load(restored.storage(), group.group_id())
            .unwrap()
            .unwrap();
        assert_eq!(loaded.epoch(), group.epoch());
        assert_eq!(group_meta(&loaded).name, "friends");
        assert!(!group_meta(&loaded).direct);
        assert!(!restored.entries().is_empty());
        // Bad bytes are errors, not panics.
        assert!(from_bytes(&[0xff; 7]).is_err());
        assert!(key_package(&[], &RustCrypto::default()).is_err());
    }

    #[test]
    fn an_export_into_an_older_copy_equals_a_fresh_one() {
        let provider = MlsProvider::default();
        let set = |k: &[u8], v: &[u8]| {
            provider
                .storage
                .values
                .write()
                .unwrap()
                .insert(k.to_vec(), v.to_vec());
        };
        for i in 0..20u8 {
            set(&[i, 1], &[i; 40]);
        }
        let mut copy = Vec::new();
        provider.export_into(&mut copy);
        assert_eq!(copy, provider.entries());
        // Changed, removed and added keys.
        set(&[3, 1], b"changed");
        provider
            .storage
            .values
            .write()
            .unwrap()
            .remove([7u8, 1].as_slice());
        set(&[0], b"first");
        set(&[9, 9], b"new");
        provider.export_into(&mut copy);
        assert_eq!(copy, provider.entries());
        // A copy out of order (not one this code made) is put right too.
        copy.reverse();
        copy.push(copy[0].clone());
        provider.export_into(&mut copy);
        assert_eq!(copy, provider.entries());
    }
}
