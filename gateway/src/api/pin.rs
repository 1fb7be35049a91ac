//! Registration-lock PINs: hashing and checking.
//!
//! A PIN is stored only as a salted Argon2id hash in a self-describing string,
//! `argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt hex>$<hash hex>`, so a
//! change of the parameters leaves existing locks checkable. The defaults
//! (19 MiB, 2 passes, 1 lane, 16-byte salt, 32-byte output) are OWASP's
//! recommendation for Argon2id. A PIN is short, so its hash is what resists an
//! offline guess if the store leaks; online guesses are bounded by the
//! account's attempt limit.
//!
//! Hashing is CPU and memory heavy: it runs on the blocking pool, at most
//! [`MAX_CONCURRENT_HASHES`] at once per gateway, so PIN checks can use at most
//! that many times the memory cost.

use super::Failure;
use argon2::{Algorithm, Argon2, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Most PIN hashes computed at once by one gateway.
pub const MAX_CONCURRENT_HASHES: usize = 4;

/// Default memory cost in KiB (19 MiB).
pub const DEFAULT_MEMORY_KIB: u32 = 19 * 1024;
/// Passes over the memory.
const PASSES: u32 = 2;
/// Lanes.
const LANES: u32 = 1;
const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;

/// Shortest and longest PIN accepted, in characters.
pub const PIN_CHARS: std::ops::RangeInclusive<usize> = 4..=64;

static HASHES: Semaphore = Semaphore::const_new(MAX_CONCURRENT_HASHES);

/// Checks that a PIN is acceptable as a new registration lock.
pub fn check_format(pin: &str) -> Result<(), Failure> {
    let n = pin.chars().count();
    if !PIN_CHARS.contains(&n) || pin.chars().any(char::is_control) {
        return Err(Failure::bad_request(format!(
            "a registration-lock PIN must have {} to {} characters and no control characters",
            PIN_CHARS.start(),
            PIN_CHARS.end()
        )));
    }
    Ok(())
}

fn derive(pin: &[u8], salt: &[u8], m: u32, t: u32, p: u32) -> Result<[u8; OUTPUT_LEN], Failure> {
    let params = Params::new(m, t, p, Some(OUTPUT_LEN)).map_err(|e| {
        tracing::error!(error = %e, "invalid Argon2 parameters");
        Failure::internal()
    })?;
    let mut out = [0u8; OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(pin, salt, &mut out)
        .map_err(|e| {
            tracing::error!(error = %e, "Argon2 failed");
            Failure::internal()
        })?;
    Ok(out)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    let _permit = HASHES.acquire().await.map_err(|_| Failure::internal())?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Failure::internal())?
}

/// Hashes a new PIN with a fresh salt and `memory_kib` of memory.
pub async fn hash(pin: &str, memory_kib: u32) -> Result<String, Failure> {
    let pin = pin.as_bytes().to_vec();
    let salt: [u8; SALT_LEN] = rand::random();
    blocking(move || {
        let out = derive(&pin, &salt, memory_kib, PASSES, LANES)?;
        Ok(format!(
            "argon2id$v=19$m={memory_kib},t={PASSES},p={LANES}${}${}",
            hex::encode(salt),
            hex::encode(out)
        ))
    })
    .await
}

/// A stored hash, parsed.
struct Stored {
    memory_kib: u32,
    passes: u32,
    lanes: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// The parameters, salt and hash of a stored string; `None` if malformed.
fn parse(stored: &str) -> Option<Stored> {
    let mut parts = stored.split('$');
    if parts.next()? != "argon2id" || parts.next()? != "v=19" {
        return None;
    }
    let mut params = parts.next()?.split(',');
    let mut num = |prefix: &str| params.next()?.strip_prefix(prefix)?.parse::<u32>().ok();
    let (m, t, p) = (num("m=")?, num("t=")?, num("p=")?);
    let salt = hex::decode(parts.next()?).ok()?;
    let hash = hex::decode(parts.next()?).ok()?;
    (parts.next().is_none() && hash.len() == OUTPUT_LEN).then_some(Stored {
        memory_kib: m,
        passes: t,
        lanes: p,
        salt,
        hash,
    })
}

/// Whether `pin` matches a stored hash (compared in constant time).
pub async fn verify(pin: &str, stored: &str) -> Result<bool, Failure> {
    let Some(s) = parse(stored) else {
        tracing::error!("a stored registration lock is malformed");
        return Err(Failure::internal());
    };
    let pin = pin.as_bytes().to_vec();
    blocking(move || {
        let out = derive(&pin, &s.salt, s.memory_kib, s.passes, s.lanes)?;
        Ok(bool::from(out.as_slice().ct_eq(&s.hash)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pin_verifies_against_its_hash_only() {
        let stored = hash("2468", 64).await.unwrap();
        assert!(
            stored.starts_with("argon2id$v=19$m=64,t=2,p=1$"),
            "{stored}"
        );
        assert!(verify("2468", &stored).await.unwrap());
        assert!(!verify("2469", &stored).await.unwrap());
        // Salted: the same PIN hashes differently.
        assert_ne!(hash("2468", 64).await.unwrap(), stored);
        assert!(verify("x", "argon2id$v=19$m=64").await.is_err());
    }

    #[test]
    fn pins_are_bounded() {
        assert!(check_format("1234").is_ok());
        assert!(check_format("123").is_err());
        assert!(check_format(&"1".repeat(65)).is_err());
        assert!(check_format("12\n34").is_err());
    }
}
