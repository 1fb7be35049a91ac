use super::*;
use crate::crypto::{EnvelopeHeader, seal_envelope};

const BOX_A: [u8; 16] = [0xa1; 16];
const DEV_A: [u8; 16] = [0xa2; 16];
const BOX_B: [u8; 16] = [0xb1; 16];
const DEV_B: [u8; 16] = [0xb2; 16];
const T: u64 = 1_800_000_000_000;

struct World {
    server: SigningKey,
    server_keys: Vec<(u32, [u8; 32])>,
    alice: DeviceKeys,
    bob: DeviceKeys,
}

fn world() -> World {
    let server = certificate_key(b"a server secret of enough length").unwrap();
    let server_keys = vec![(3, server.verifying_key().to_bytes())];
    World {
        server,
        server_keys,
        alice: DeviceKeys::generate(),
        bob: DeviceKeys::generate(),
    }
}

fn certificate(w: &World, expires: u64) -> pb::SenderCertificate {
    issue_certificate(
        &w.server,
        3,
        &BOX_A,
        &DEV_A,
        w.alice.bundle().encode_to_vec(),
        expires,
    )
}

fn content(text: &str) -> pb::Content {
    pb::Content {
        access_secret: Vec::new(),
        sent_at_ms: T,
        body: Some(pb::content::Body::Text(text.into())),
    }
}

/// Alice's signed envelope to Bob's device, sealed with `cert`.
fn sealed(w: &World, cert: &pb::SenderCertificate, message_id: [u8; 16]) -> pb::Envelope {
    let header = EnvelopeHeader {
        sender_box: BOX_A,
        sender_device: DEV_A,
        message_id,
    };
    let devices = [RecipientDevice {
        device_id: DEV_B,
        keys: w.bob.public_keys(),
    }];
    let inner = seal_envelope(&w.alice, &header, &content("hi bob"), &devices).unwrap();
    seal_sender(cert, &inner, &BOX_B, &devices).unwrap()
}

#[test]
fn a_sealed_envelope_names_nobody_and_opens_to_the_certified_sender() {
    let w = world();
    let outer = sealed(&w, &certificate(&w, T + 60_000), [7; 16]);
    assert!(outer.sender_box.is_empty() && outer.sender_device.is_empty());
    assert!(outer.signature.is_empty() && outer.keys.is_empty());
    // Neither id appears anywhere in what the gateway stores.
    let bytes = outer.encode_to_vec();
    for id in [BOX_A, DEV_A] {
        assert!(!bytes.windows(16).any(|w| w == id));
    }
    let opened = open_sealed_envelope(&w.bob, &BOX_B, &DEV_B, &outer, &w.server_keys, T).unwrap();
    assert_eq!(opened.sender.box_id, BOX_A);
    assert_eq!(opened.sender.device_id, DEV_A);
    assert_eq!(opened.sender.keys, w.alice.public_keys());
    assert_eq!(
        opened.content.body,
        Some(pb::content::Body::Text("hi bob".into()))
    );
    // An ordinary open refuses the outer layer.
    assert!(open_envelope(&w.bob, &DEV_B, &outer, &w.alice.public_keys()).is_err());
}

#[test]
fn forged_expired_and_unknown_certificates_are_named_as_such() {
    let w = world();
    let at = |cert: &pb::SenderCertificate| {
        open_sealed_envelope(
            &w.bob,
            &BOX_B,
            &DEV_B,
            &sealed(&w, cert, [7; 16]),
            &w.server_keys,
            T,
        )
    };
    // Expired before the message was stored.
    let expired = certificate(&w, T);
    assert!(matches!(
        at(&expired),
        Err(SealedError::Certificate(CertificateError::Expired))
    ));
    // Claims another box: the signature no longer covers it.
    let mut forged = certificate(&w, T + 60_000);
    forged.box_id = [0xcc; 16].to_vec();
    assert!(matches!(
        at(&forged),
        Err(SealedError::Certificate(CertificateError::Forged))
    ));
    // Signed by a key that is not the gateway's.
    let rogue = issue_certificate(
        &SigningKey::from_bytes(&[9; 32]),
        3,
        &BOX_A,
        &DEV_A,
        w.alice.bundle().encode_to_vec(),
        T + 60_000,
    );
    assert!(matches!(
        at(&rogue),
        Err(SealedError::Certificate(CertificateError::Forged))
    ));
    // A version the recipient does not know.
    let mut unknown = certificate(&w, T + 60_000);
    unknown.key_version = 4;
    assert!(matches!(
        at(&unknown),
        Err(SealedError::Certificate(CertificateError::UnknownKey(4)))
    ));
    // A valid certificate for another device than the envelope's sender.
    let other = DeviceKeys::generate();
    let stolen = issue_certificate(
        &w.server,
        3,
        &BOX_A,
        &[0xdd; 16],
        other.bundle().encode_to_vec(),
        T + 60_000,
    );
    assert!(matches!(at(&stolen), Err(SealedError::SenderMismatch)));
}

#[test]
fn the_outer_layer_is_bound_to_recipient_message_and_device() {
    let w = world();
    let outer = sealed(&w, &certificate(&w, T + 60_000), [7; 16]);
    let open = |outer: &pb::Envelope, to_box: &[u8; 16], device: &[u8; 16]| {
        open_sealed_envelope(&w.bob, to_box, device, outer, &w.server_keys, T)
    };
    assert!(open(&outer, &[0xee; 16], &DEV_B).is_err(), "another box");
    assert!(open(&outer, &BOX_B, &[0xee; 16]).is_err(), "another device");
    let mut renumbered = outer.clone();
    renumbered.message_id = vec![8; 16];
    assert!(
        open(&renumbered, &BOX_B, &DEV_B).is_err(),
        "another message id"
    );
    let mut tampered = outer.clone();
    if let Some(s) = tampered.sealed_sender.as_mut() {
        s.ciphertext[10] ^= 1;
    }
    assert!(
        open(&tampered, &BOX_B, &DEV_B).is_err(),
        "tampered ciphertext"
    );
    assert!(open(&pb::Envelope::default(), &BOX_B, &DEV_B).is_err());
}

#[test]
fn certificate_keys_and_access_keys_are_fixed_functions_of_their_secrets() {
    let a = certificate_key(b"secret one").unwrap();
    assert_eq!(
        a.to_bytes(),
        certificate_key(b"secret one").unwrap().to_bytes()
    );
    assert_ne!(
        a.to_bytes(),
        certificate_key(b"secret two").unwrap().to_bytes()
    );
    let k = access_key(&[1; 32]);
    assert_eq!(k, access_key(&[1; 32]));
    assert_ne!(k, access_key(&[2; 32]));
    // SHA-256("rossby/access-key/v1" || 01×32), first 16 bytes.
    let mut input = ACCESS_KEY_LABEL.to_vec();
    input.extend_from_slice(&[1; 32]);
    assert_eq!(k[..], Sha256::digest(&input)[..16]);
}
