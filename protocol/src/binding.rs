//! The connection binding from a TLS 1.3 exporter secret (RFC 8446 §7.5), for
//! QUIC stacks that do not export keying material but can hand out the
//! connection's exporter master secret (for example through a key log: the
//! `EXPORTER_SECRET` line of the NSS key log format).

use crate::hawk::{EXPORTER_LABEL, EXPORTER_LEN};
use crate::{Error, Result};
use hkdf::Hkdf;
use sha2::{Digest, Sha256, Sha384};

/// The hash of the connection's TLS 1.3 cipher suite, which the exporter uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuiteHash {
    /// `TLS_AES_128_GCM_SHA256`, `TLS_CHACHA20_POLY1305_SHA256`.
    Sha256,
    /// `TLS_AES_256_GCM_SHA384`.
    Sha384,
}

/// The 32-byte connection binding (`TLS-Exporter("EXPORTER-rossby-hawk-binding",
/// "", 32)`) from the connection's exporter master secret, whose length is the
/// suite hash's.
pub fn binding_from_exporter_secret(
    hash: SuiteHash,
    exporter_master_secret: &[u8],
) -> Result<[u8; EXPORTER_LEN]> {
    match hash {
        SuiteHash::Sha256 => exporter!(Sha256, exporter_master_secret),
        SuiteHash::Sha384 => exporter!(Sha384, exporter_master_secret),
    }
}

/// `HKDF-Expand-Label(Derive-Secret(secret, label, ""), "exporter", Hash(""),
/// 32)` for one hash: a macro, as the HKDF types differ per hash.
macro_rules! exporter {
    ($hash:ty, $secret:expr) => {{
        let secret: &[u8] = $secret;
        let size = <$hash as Digest>::output_size();
        if secret.len() != size {
            return Err(Error::Crypto(format!(
                "an exporter secret of this suite has {size} bytes, not {}",
                secret.len()
            )));
        }
        let empty_hash = <$hash>::digest([]);
        let derived_prk = Hkdf::<$hash>::from_prk(secret)
            .map_err(|_| Error::Crypto("invalid exporter secret".into()))?;
        let mut derived = vec![0u8; size];
        derived_prk
            .expand_multi_info(
                &hkdf_label(EXPORTER_LABEL, &empty_hash, derived.len())?.parts(),
                &mut derived,
            )
            .map_err(|_| Error::Crypto("HKDF output too long".into()))?;
        let prk = Hkdf::<$hash>::from_prk(&derived)
            .map_err(|_| Error::Crypto("invalid derived secret".into()))?;
        let mut out = [0u8; EXPORTER_LEN];
        prk.expand_multi_info(
            &hkdf_label(b"exporter", &empty_hash, out.len())?.parts(),
            &mut out,
        )
        .map_err(|_| Error::Crypto("HKDF output too long".into()))?;
        Ok(out)
    }};
}
use exporter;

/// RFC 8446 §7.1's `HkdfLabel`: the info of HKDF-Expand-Label.
struct HkdfLabel<'a> {
    length: [u8; 2],
    label_len: [u8; 1],
    label: &'a [u8],
    context_len: [u8; 1],
    context: &'a [u8],
}

impl<'a> HkdfLabel<'a> {
    fn parts(&self) -> [&[u8]; 6] {
        [
            &self.length,
            &self.label_len,
            b"tls13 ",
            self.label,
            &self.context_len,
            self.context,
        ]
    }
}

fn hkdf_label<'a>(label: &'a [u8], context: &'a [u8], length: usize) -> Result<HkdfLabel<'a>> {
    let too_long = |what: &str| Error::Crypto(format!("{what} too long"));
    Ok(HkdfLabel {
        length: u16::try_from(length)
            .map_err(|_| too_long("output"))?
            .to_be_bytes(),
        label_len: [u8::try_from(6 + label.len()).map_err(|_| too_long("label"))?],
        label,
        context_len: [u8::try_from(context.len()).map_err(|_| too_long("context"))?],
        context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/protocol.md §1's vector, computed independently (Python's hmac
    /// and hashlib) from RFC 8446's definitions.
    #[test]
    fn known_answer_bindings() {
        let secret: Vec<u8> = (0u8..32).collect();
        let binding = binding_from_exporter_secret(SuiteHash::Sha256, &secret).unwrap();
        assert_eq!(
            hex::encode(binding),
            "161e0d21b771d924064caacb02c5ca90bf2e29e25e11ba140e1302938f8e8b7f"
        );
        let secret: Vec<u8> = (0u8..48).collect();
        let binding = binding_from_exporter_secret(SuiteHash::Sha384, &secret).unwrap();
        assert_eq!(
            hex::encode(binding),
            "4c3fffd8f8ba166b9bb0a78b9c4f7e0528a90b386b99e3a0386daf1da84cfcf2"
        );
        assert!(binding_from_exporter_secret(SuiteHash::Sha256, &[0; 48]).is_err());
    }
}
