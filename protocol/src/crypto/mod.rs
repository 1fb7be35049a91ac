//! Shared cryptographic formats of Rossby clients (docs/security.md is the
//! specification, byte by byte):
//!
//! - [`DeviceKeys`] / [`PublicKeys`]: a device's Ed25519 identity key and X-Wing
//!   (ML-KEM-768 + X25519) key, and the signed
//!   [`pb::KeyBundle`](crate::pb::KeyBundle) that publishes them;
//! - [`seal`] / [`open`]: hybrid public-key encryption to one device (X-Wing, then
//!   ChaCha20-Poly1305), used for credentials and for envelope key wraps;
//! - [`seal_envelope`] / [`open_envelope`]: end-to-end message envelopes, signed by
//!   the sender device, with the content key wrapped for each recipient device;
//! - [`sealed_sender`]: sender certificates and envelopes whose sender only the
//!   recipient learns;
//! - [`attachment`]: chunked encryption of files (STREAM-like ChaCha20-Poly1305);
//! - [`safety_number`]: the numbers users compare to detect substituted keys.
//!
//! Everything is pure apart from drawing randomness; every failure is an
//! [`Error`](crate::Error), never a panic.

pub mod attachment;
mod envelope;
mod keys;
mod safety;
mod seal;
pub mod sealed_sender;

pub use envelope::{
    ENVELOPE_AAD_LABEL, ENVELOPE_SIGNATURE_LABEL, ENVELOPE_VERSION, EnvelopeHeader, ID_LEN,
    RecipientDevice, envelope_signed_bytes, open_envelope, seal_envelope, wrap_context,
};
pub use keys::{
    DeviceKeys, IDENTITY_KEY_LEN, IdentityKey, KEYBUNDLE_LABEL, MLKEM_CIPHERTEXT_LEN,
    MLKEM_KEY_LEN, PublicKeys, SECRET_KEYS_LEN, SECRET_KEYS_VERSION, SIGNATURE_LEN, X25519_KEY_LEN,
    XWING_SEED_LEN,
};
pub use safety::{SAFETY_NUMBER_ITERATIONS, SAFETY_NUMBER_LABEL, safety_number};
pub use seal::{
    AEAD_KEY_LEN, AEAD_TAG_LEN, CONTEXT_CONTENT_KEY, CONTEXT_CREDENTIALS, SEAL_LABEL, open, seal,
};
