//! End-to-end envelopes: one `Content` encrypted under a random content key, the
//! key [`seal`]ed to every recipient device, the whole signed by the sender device.
//!
//! - `ciphertext = ChaCha20-Poly1305(content_key, nonce = 12 zero bytes,
//!   aad = ENVELOPE_AAD_LABEL || sender_box || sender_device || message_id,
//!   protobuf(Content))`;
//! - each `WrappedKey.sealed = seal(device, wrap_context(header, device_id),
//!   content_key)` with `wrap_context = CONTEXT_CONTENT_KEY || sender_box ||
//!   sender_device || message_id || device_id` (all ids 16 bytes), so a wrap does
//!   not open in another message, from another sender or for another device;
//! - `signature = Ed25519(sender identity key, envelope_signed_bytes(envelope))`,
//!   an explicit length-prefixed encoding described at [`envelope_signed_bytes`].

use super::keys::{DeviceKeys, IdentityKey, PublicKeys, SIGNATURE_LEN};
use super::seal::{AEAD_KEY_LEN, CONTEXT_CONTENT_KEY, aead_open, aead_seal, open, seal};
use crate::error::{Error, Result};
use crate::pb;
use prost::Message;
use rand::RngCore;
use std::collections::HashSet;

/// The envelope format version this module writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;
/// Prefix of the content ciphertext's associated data.
pub const ENVELOPE_AAD_LABEL: &[u8] = b"rossby/envelope/v1";
/// Domain label at the start of [`envelope_signed_bytes`].
pub const ENVELOPE_SIGNATURE_LABEL: &[u8] = b"rossby/envelope-signature/v1";
/// Length of box, device and message ids.
pub const ID_LEN: usize = 16;

/// One device an envelope is encrypted for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientDevice {
    /// The device id (UUID bytes).
    pub device_id: [u8; 16],
    /// Its public keys, checked by [`PublicKeys::from_bundle`].
    pub keys: PublicKeys,
}

/// The cleartext header of an envelope: who sent it, and its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnvelopeHeader {
    /// The sender's box id.
    pub sender_box: [u8; 16],
    /// The sending device's id.
    pub sender_device: [u8; 16],
    /// The message id (UUIDv7), unique per sender.
    pub message_id: [u8; 16],
}

impl EnvelopeHeader {
    /// Reads the header of an envelope, checking that each id is 16 bytes.
    /// Nothing is verified: use [`open_envelope`] for that.
    pub fn from_envelope(envelope: &pb::Envelope) -> Result<Self> {
        Ok(EnvelopeHeader {
            sender_box: id(&envelope.sender_box, "sender_box")?,
            sender_device: id(&envelope.sender_device, "sender_device")?,
            message_id: id(&envelope.message_id, "message_id")?,
        })
    }

    /// `ENVELOPE_AAD_LABEL || sender_box || sender_device || message_id`.
    fn aad(&self) -> Vec<u8> {
        let mut out = ENVELOPE_AAD_LABEL.to_vec();
        out.extend_from_slice(&self.sender_box);
        out.extend_from_slice(&self.sender_device);
        out.extend_from_slice(&self.message_id);
        out
    }
}

/// The one key wrap for `my_device` among `keys` (of a message `what`): none or
/// two are errors, as is a wrap without its sealed key.
pub(crate) fn wrap_for<'a>(
    keys: &'a [pb::WrappedKey],
    my_device: &[u8; 16],
    what: &'static str,
) -> Result<&'a pb::Sealed> {
    let mut mine = keys
        .iter()
        .filter(|w| w.device_id.as_slice() == my_device.as_slice());
    let wrap = mine
        .next()
        .ok_or_else(|| Error::Crypto("envelope holds no key for this device".into()))?;
    if mine.next().is_some() {
        return Err(Error::Malformed {
            what,
            detail: "two keys for one device".into(),
        });
    }
    wrap.sealed.as_ref().ok_or_else(|| Error::Malformed {
        what,
        detail: "wrapped key without sealed key".into(),
    })
}

/// The seal context of the content-key wrap for `device_id`:
/// `CONTEXT_CONTENT_KEY || sender_box || sender_device || message_id || device_id`.
#[must_use]
pub fn wrap_context(header: &EnvelopeHeader, device_id: &[u8; 16]) -> Vec<u8> {
    let mut out = CONTEXT_CONTENT_KEY.to_vec();
    out.extend_from_slice(&header.sender_box);
    out.extend_from_slice(&header.sender_device);
    out.extend_from_slice(&header.message_id);
    out.extend_from_slice(device_id);
    out
}

/// Encrypts `content` for `recipients` and signs the envelope with `sender`.
/// The wraps appear in the order of `recipients`; a device listed twice is an
/// error. An empty recipient list gives an envelope nobody can open.
pub fn seal_envelope(
    sender: &DeviceKeys,
    header: &EnvelopeHeader,
    content: &pb::Content,
    recipients: &[RecipientDevice],
) -> Result<pb::Envelope> {
    let mut seen = HashSet::with_capacity(recipients.len());
    if let Some(dup) = recipients.iter().find(|r| !seen.insert(r.device_id)) {
        return Err(Error::Malformed {
            what: "envelope recipients",
            detail: format!("device {} listed twice", hex::encode(dup.device_id)),
        });
    }
    let mut content_key = [0u8; AEAD_KEY_LEN];
    rand::rng().fill_bytes(&mut content_key);
    let ciphertext = aead_seal(&content_key, &header.aad(), &content.encode_to_vec())?;
    let keys = recipients
        .iter()
        .map(|r| {
            Ok(pb::WrappedKey {
                device_id: r.device_id.to_vec(),
                sealed: Some(seal(
                    &r.keys,
                    &wrap_context(header, &r.device_id),
                    &content_key,
                )?),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut envelope = pb::Envelope {
        version: ENVELOPE_VERSION,
        sender_box: header.sender_box.to_vec(),
        sender_device: header.sender_device.to_vec(),
        message_id: header.message_id.to_vec(),
        ciphertext,
        keys,
        signature: Vec::new(),
        group: None,
        sealed_sender: None,
    };
    envelope.signature = sender.sign(&envelope_signed_bytes(&envelope)).to_vec();
    Ok(envelope)
}

/// Verifies and decrypts an envelope addressed to `my_device`. `sender` is the
/// identity key (or the whole [`PublicKeys`]) of the device named by
/// `envelope.sender_box`/`sender_device`, as the caller knows it (the server's
/// device list, checked with safety numbers, or the key the gateway recorded
/// with a queued envelope).
///
/// Order: version, then the signature (before anything else is parsed or
/// decrypted), then the header ids, this device's wrap, the content key, the
/// content. Signature, key and decryption failures are [`Error::Crypto`]; wrong id
/// lengths, a duplicate or empty wrap and undecodable content are
/// [`Error::Malformed`].
pub fn open_envelope(
    keys: &DeviceKeys,
    my_device: &[u8; 16],
    envelope: &pb::Envelope,
    sender: &impl AsRef<IdentityKey>,
) -> Result<pb::Content> {
    if envelope.version != ENVELOPE_VERSION {
        return Err(Error::Crypto(format!(
            "unsupported envelope version {}",
            envelope.version
        )));
    }
    if envelope.sealed_sender.is_some() {
        return Err(Error::Crypto(
            "a sealed-sender envelope must be unsealed first".into(),
        ));
    }
    if envelope.signature.len() != SIGNATURE_LEN {
        return Err(Error::Crypto(format!(
            "envelope signature must be {SIGNATURE_LEN} bytes, got {}",
            envelope.signature.len()
        )));
    }
    sender
        .as_ref()
        .verify(&envelope_signed_bytes(envelope), &envelope.signature)
        .map_err(|_| Error::Crypto("envelope signature does not verify".into()))?;

    let header = EnvelopeHeader::from_envelope(envelope)?;
    let sealed = wrap_for(&envelope.keys, my_device, "Envelope")?;
    let content_key: [u8; AEAD_KEY_LEN] = open(keys, &wrap_context(&header, my_device), sealed)?
        .as_slice()
        .try_into()
        .map_err(|_| Error::Crypto("content key must be 32 bytes".into()))?;
    let plaintext = aead_open(&content_key, &header.aad(), &envelope.ciphertext)
        .map_err(|_| Error::Crypto("envelope content does not decrypt".into()))?;
    pb::Content::decode(plaintext.as_slice()).map_err(|e| Error::Malformed {
        what: "Content",
        detail: e.to_string(),
    })
}

/// Exactly the bytes the envelope signature covers (the `signature` field itself
/// is not included). With `u32(x)` a 4-byte big-endian integer and
/// `lp(x) = u32(len(x)) || x`:
///
/// ```text
/// ENVELOPE_SIGNATURE_LABEL            "rossby/envelope-signature/v1" (28 bytes)
/// u32(version)
/// lp(sender_box) lp(sender_device) lp(message_id) lp(ciphertext)
/// u32(number of keys)
/// for each WrappedKey, in order:
///     lp(device_id)
///     0x00                              if `sealed` is absent, else
///     0x01 lp(x25519_ephemeral) lp(mlkem_ciphertext) lp(ciphertext)
/// ```
///
/// Fields are taken as they are, without length checks (a field longer than
/// 2^32 - 1 bytes, which no frame can carry, has its length saturated). Unknown
/// protobuf fields are not covered: a format that needs more fields is a new
/// `version`.
#[must_use]
pub fn envelope_signed_bytes(envelope: &pb::Envelope) -> Vec<u8> {
    let wraps: usize = envelope
        .keys
        .iter()
        .map(|w| {
            13 + w.device_id.len()
                + w.sealed.as_ref().map_or(0, |s| {
                    s.x25519_ephemeral.len() + s.mlkem_ciphertext.len() + s.ciphertext.len()
                })
        })
        .sum();
    let mut out = Vec::with_capacity(
        ENVELOPE_SIGNATURE_LABEL.len()
            + 24
            + envelope.sender_box.len()
            + envelope.sender_device.len()
            + envelope.message_id.len()
            + envelope.ciphertext.len()
            + wraps,
    );
    out.extend_from_slice(ENVELOPE_SIGNATURE_LABEL);
    out.extend_from_slice(&envelope.version.to_be_bytes());
    put_lp(&mut out, &envelope.sender_box);
    put_lp(&mut out, &envelope.sender_device);
    put_lp(&mut out, &envelope.message_id);
    put_lp(&mut out, &envelope.ciphertext);
    put_u32(&mut out, envelope.keys.len());
    for wrap in &envelope.keys {
        put_lp(&mut out, &wrap.device_id);
        match &wrap.sealed {
            None => out.push(0),
            Some(sealed) => {
                out.push(1);
                put_lp(&mut out, &sealed.x25519_ephemeral);
                put_lp(&mut out, &sealed.mlkem_ciphertext);
                put_lp(&mut out, &sealed.ciphertext);
            }
        }
    }
    out
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_lp(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn id(bytes: &[u8], field: &str) -> Result<[u8; ID_LEN]> {
    bytes.try_into().map_err(|_| Error::Malformed {
        what: "Envelope",
        detail: format!("{field} must be {ID_LEN} bytes, got {}", bytes.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::content::Body;

    struct Fixture {
        sender: DeviceKeys,
        header: EnvelopeHeader,
        content: pb::Content,
        devices: Vec<([u8; 16], DeviceKeys)>,
        envelope: pb::Envelope,
    }

    fn header(message: u8) -> EnvelopeHeader {
        EnvelopeHeader {
            sender_box: [0xb0; 16],
            sender_device: [0xd0; 16],
            message_id: [message; 16],
        }
    }

    fn recipients(devices: &[([u8; 16], DeviceKeys)]) -> Vec<RecipientDevice> {
        devices
            .iter()
            .map(|(id, keys)| RecipientDevice {
                device_id: *id,
                keys: PublicKeys::from_bundle(&keys.bundle()).unwrap(),
            })
            .collect()
    }

    fn fixture() -> Fixture {
        let sender = DeviceKeys::generate();
        let header = header(0x77);
        let content = pb::Content {
            access_secret: Vec::new(),
            sent_at_ms: 1_700_000_000_000,
            body: Some(Body::Text("hello, three devices".into())),
        };
        let devices: Vec<_> = (1..=3u8)
            .map(|i| ([i; 16], DeviceKeys::generate()))
            .collect();
        let envelope = seal_envelope(&sender, &header, &content, &recipients(&devices)).unwrap();
        Fixture {
            sender,
            header,
            content,
            devices,
            envelope,
        }
    }

    type Mutation = fn(&mut pb::Envelope);

    #[test]
    fn the_identity_key_alone_opens_what_the_whole_keys_open() {
        let f = fixture();
        let (id, keys) = &f.devices[0];
        let recorded = f.sender.public_keys().identity();
        let identity = IdentityKey::from_bytes(&recorded).unwrap();
        assert_eq!(identity.to_bytes(), recorded);
        assert_eq!(
            open_envelope(keys, id, &f.envelope, &identity).unwrap(),
            f.content
        );
        // Another device's key does not verify it.
        let other = IdentityKey::from_bytes(&DeviceKeys::generate().identity_public()).unwrap();
        assert!(open_envelope(keys, id, &f.envelope, &other).is_err());
        // What is not a usable Ed25519 key is refused when parsed: a wrong
        // length, and a point of small order (the identity point).
        assert!(IdentityKey::from_bytes(&recorded[..31]).is_err());
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert!(IdentityKey::from_bytes(&identity_point).is_err());
    }

    fn open_as(f: &Fixture, device: usize, envelope: &pb::Envelope) -> Result<pb::Content> {
        let (id, keys) = &f.devices[device];
        open_envelope(keys, id, envelope, &f.sender.public_keys())
    }

    #[test]
    fn round_trip_three_devices() {
        let f = fixture();
        assert_eq!(f.envelope.version, ENVELOPE_VERSION);
        assert_eq!(f.envelope.keys.len(), 3);
        assert_eq!(
            EnvelopeHeader::from_envelope(&f.envelope).unwrap(),
            f.header
        );
        for device in 0..3 {
            assert_eq!(open_as(&f, device, &f.envelope).unwrap(), f.content);
        }
        // The envelope survives a protobuf round trip.
        let decoded = pb::Envelope::decode(f.envelope.encode_to_vec().as_slice()).unwrap();
        assert_eq!(open_as(&f, 1, &decoded).unwrap(), f.content);
    }

    #[test]
    fn each_device_opens_only_its_own_wrap() {
        let f = fixture();
        for (me, (my_id, my_keys)) in f.devices.iter().enumerate() {
            for (other, (other_id, _)) in f.devices.iter().enumerate() {
                if me == other {
                    continue;
                }
                // Claiming another device's id: its wrap is not sealed to my keys.
                let result = open_envelope(my_keys, other_id, &f.envelope, &f.sender.public_keys());
                assert!(matches!(result, Err(Error::Crypto(_))));
            }
            // My wrap's sealed key, moved under another device's id (and the
            // envelope re-signed by the sender), does not open: the context binds it.
            let mut e = f.envelope.clone();
            let mine = e.keys.iter().position(|w| w.device_id == my_id).unwrap();
            let target = (mine + 1) % 3;
            e.keys[target].sealed = e.keys[mine].sealed.clone();
            e.keys.remove(mine);
            e.signature = f.sender.sign(&envelope_signed_bytes(&e)).to_vec();
            let (target_id, _) = &f.devices[target];
            assert!(open_envelope(my_keys, target_id, &e, &f.sender.public_keys()).is_err());
        }
        // A device that is not a recipient.
        let stranger = DeviceKeys::generate();
        let err =
            open_envelope(&stranger, &[9; 16], &f.envelope, &f.sender.public_keys()).unwrap_err();
        assert!(err.to_string().contains("no key for this device"), "{err}");
    }

    #[test]
    fn tampering_with_any_field_fails() {
        let f = fixture();
        let mutations: Vec<(&str, Mutation)> = vec![
            ("version", |e| e.version = 2),
            ("sender_box", |e| e.sender_box[0] ^= 1),
            ("sender_device", |e| e.sender_device[15] ^= 1),
            ("message_id", |e| e.message_id[3] ^= 1),
            ("ciphertext", |e| e.ciphertext[0] ^= 1),
            ("ciphertext truncated", |e| {
                e.ciphertext.pop();
            }),
            ("wrap device id", |e| e.keys[0].device_id[0] ^= 1),
            ("wrap x25519", |e| {
                e.keys[1].sealed.as_mut().unwrap().x25519_ephemeral[0] ^= 1;
            }),
            ("wrap mlkem", |e| {
                e.keys[1].sealed.as_mut().unwrap().mlkem_ciphertext[7] ^= 1;
            }),
            ("wrap ciphertext", |e| {
                e.keys[1].sealed.as_mut().unwrap().ciphertext[0] ^= 1;
            }),
            ("wrap removed", |e| {
                e.keys.remove(2);
            }),
            ("wraps reordered", |e| e.keys.swap(0, 2)),
            ("sealed dropped", |e| e.keys[1].sealed = None),
            ("signature", |e| e.signature[0] ^= 1),
            ("signature truncated", |e| {
                e.signature.pop();
            }),
            ("signature empty", |e| e.signature.clear()),
        ];
        for (what, mutate) in mutations {
            let mut e = f.envelope.clone();
            mutate(&mut e);
            for device in 0..3 {
                assert!(open_as(&f, device, &e).is_err(), "{what}, device {device}");
            }
        }
        // Another sender's key does not verify.
        let (id, keys) = &f.devices[0];
        let impostor = DeviceKeys::generate().public_keys();
        let err = open_envelope(keys, id, &f.envelope, &impostor).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn tampering_with_a_resigned_envelope_still_fails() {
        // Even the sender (or anyone holding its key) cannot change the header
        // under existing ciphertext and wraps: AAD and wrap contexts bind it.
        let f = fixture();
        let mutations: Vec<Mutation> = vec![
            |e| e.message_id[0] ^= 1,
            |e| e.sender_box[0] ^= 1,
            |e| e.sender_device[0] ^= 1,
            |e| e.ciphertext[5] ^= 1,
            |e| e.keys[0].sealed.as_mut().unwrap().ciphertext[1] ^= 1,
        ];
        for mutate in mutations {
            let mut e = f.envelope.clone();
            mutate(&mut e);
            e.signature = f.sender.sign(&envelope_signed_bytes(&e)).to_vec();
            assert!(open_as(&f, 0, &e).is_err());
        }
    }

    #[test]
    fn wrap_copied_into_another_message_fails() {
        let f = fixture();
        // A second message from the same sender to the same devices.
        let header2 = header(0x78);
        let content2 = pb::Content {
            access_secret: Vec::new(),
            sent_at_ms: 1,
            body: Some(Body::Text("second".into())),
        };
        let second =
            seal_envelope(&f.sender, &header2, &content2, &recipients(&f.devices)).unwrap();
        assert_eq!(open_as(&f, 0, &second).unwrap(), content2);

        // Wraps of message 1 put into message 2 (re-signed, so only the binding
        // of the wrap context can catch it).
        let mut e = second.clone();
        e.keys = f.envelope.keys.clone();
        e.signature = f.sender.sign(&envelope_signed_bytes(&e)).to_vec();
        for device in 0..3 {
            assert!(open_as(&f, device, &e).is_err());
        }
        // Message 1 with the header of message 2.
        let mut e = f.envelope.clone();
        e.message_id = second.message_id.clone();
        e.signature = f.sender.sign(&envelope_signed_bytes(&e)).to_vec();
        assert!(open_as(&f, 0, &e).is_err());

        // A wrap from another sender's envelope with the same message id.
        let other_sender = DeviceKeys::generate();
        let mut other_header = f.header;
        other_header.sender_device = [0xd1; 16];
        let mut e = seal_envelope(
            &other_sender,
            &other_header,
            &f.content,
            &recipients(&f.devices),
        )
        .unwrap();
        e.keys = f.envelope.keys.clone();
        e.signature = other_sender.sign(&envelope_signed_bytes(&e)).to_vec();
        let (id, keys) = &f.devices[0];
        assert!(open_envelope(keys, id, &e, &other_sender.public_keys()).is_err());
    }

    #[test]
    fn malformed_envelopes_are_errors() {
        let f = fixture();
        // Wrong id lengths and duplicate wraps, correctly signed.
        let mutations: Vec<Mutation> = vec![
            |e| e.message_id.truncate(15),
            |e| e.sender_box.push(0),
            |e| e.sender_device.clear(),
            |e| {
                let dup = e.keys[0].clone();
                e.keys.push(dup);
            },
            |e| e.keys[0].sealed = None,
        ];
        for mutate in mutations {
            let mut e = f.envelope.clone();
            mutate(&mut e);
            e.signature = f.sender.sign(&envelope_signed_bytes(&e)).to_vec();
            assert!(matches!(open_as(&f, 0, &e), Err(Error::Malformed { .. })));
        }
        assert!(open_as(&f, 0, &pb::Envelope::default()).is_err());
        assert!(EnvelopeHeader::from_envelope(&pb::Envelope::default()).is_err());
    }

    #[test]
    fn duplicate_recipient_is_rejected() {
        let f = fixture();
        let mut r = recipients(&f.devices);
        r.push(r[0].clone());
        assert!(seal_envelope(&f.sender, &f.header, &f.content, &r).is_err());
    }

    #[test]
    fn empty_and_large_contents() {
        let f = fixture();
        for content in [
            pb::Content::default(),
            pb::Content {
                access_secret: Vec::new(),
                sent_at_ms: 5,
                body: Some(Body::Mls(vec![0xab; 100_000])),
            },
        ] {
            let e = seal_envelope(&f.sender, &f.header, &content, &recipients(&f.devices[..1]))
                .unwrap();
            assert_eq!(open_as(&f, 0, &e).unwrap(), content);
        }
        let e = seal_envelope(&f.sender, &f.header, &f.content, &[]).unwrap();
        assert!(e.keys.is_empty());
        assert!(open_as(&f, 0, &e).is_err());
    }

    /// The signed bytes of a small fixed envelope, byte by byte (a fixture for
    /// other-language clients).
    #[test]
    fn known_answer_signed_bytes() {
        let envelope = pb::Envelope {
            version: 1,
            sender_box: vec![0xaa; 2],
            sender_device: vec![0xbb],
            message_id: vec![],
            ciphertext: vec![0xcc; 3],
            keys: vec![
                pb::WrappedKey {
                    device_id: vec![0x01],
                    sealed: Some(pb::Sealed {
                        x25519_ephemeral: vec![0x02],
                        mlkem_ciphertext: vec![0x03, 0x03],
                        ciphertext: vec![],
                    }),
                },
                pb::WrappedKey {
                    device_id: vec![0x04],
                    sealed: None,
                },
            ],
            signature: vec![0xff; 64],
            group: None,
            sealed_sender: None,
        };
        let expected = [
            hex::encode(ENVELOPE_SIGNATURE_LABEL).as_str(),
            "00000001",
            "00000002aaaa",
            "00000001bb",
            "00000000",
            "00000003cccccc",
            "00000002",
            "0000000101",
            "01",
            "0000000102",
            "000000020303",
            "00000000",
            "0000000104",
            "00",
        ]
        .concat();
        assert_eq!(hex::encode(envelope_signed_bytes(&envelope)), expected);
        assert_eq!(
            &envelope_signed_bytes(&envelope)[..28],
            b"rossby/envelope-signature/v1"
        );
        // The signature field is not covered; `Some(empty)` differs from `None`.
        let mut e = envelope.clone();
        e.signature.clear();
        assert_eq!(envelope_signed_bytes(&e), envelope_signed_bytes(&envelope));
        e.keys[1].sealed = Some(pb::Sealed::default());
        assert_ne!(envelope_signed_bytes(&e), envelope_signed_bytes(&envelope));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Arbitrary bytes decoded as an envelope, or a valid envelope with
        /// arbitrary bytes flipped, are rejected without panicking.
        #[test]
        fn open_envelope_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1..=255u8), 1..4),
        ) {
            let f = fixture_cached();
            let (id, keys) = &f.devices[0];
            if let Ok(e) = pb::Envelope::decode(bytes.as_slice()) {
                proptest::prop_assert!(open_envelope(keys, id, &e, &f.sender.public_keys()).is_err());
            }
            let mut encoded = f.envelope.encode_to_vec();
            for (at, mask) in flips {
                let len = encoded.len();
                encoded[at % len] ^= mask;
            }
            if let Ok(e) = pb::Envelope::decode(encoded.as_slice()) {
                // A flip can only go unnoticed if the decoded envelope is unchanged
                // (say, bytes turned into an unknown field that decoding skips).
                let result = open_envelope(keys, id, &e, &f.sender.public_keys());
                proptest::prop_assert!(result.is_err() || e == f.envelope);
            }
        }
    }

    fn fixture_cached() -> &'static Fixture {
        static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
        FIXTURE.get_or_init(fixture)
    }

    #[test]
    fn wrap_context_layout() {
        let h = header(0x77);
        let context = wrap_context(&h, &[0x01; 16]);
        assert_eq!(context.len(), CONTEXT_CONTENT_KEY.len() + 64);
        assert!(context.starts_with(b"rossby/content-key/v1"));
        assert_eq!(&context[21..37], &[0xb0; 16]);
        assert_eq!(&context[37..53], &[0xd0; 16]);
        assert_eq!(&context[53..69], &[0x77; 16]);
        assert_eq!(&context[69..], &[0x01; 16]);
    }
}
