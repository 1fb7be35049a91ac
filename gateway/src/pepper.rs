//! The lookup pepper file, with one or several pepper versions.
//!
//! Two formats:
//! - **one value**: hex (whitespace around it ignored) or raw bytes. It is
//!   version 1. The gateway generates this form (32 random bytes, hex) when the
//!   file does not exist.
//! - **versioned**: one `<version> <hex>` line per version, e.g. `1 9f3c…` and
//!   `2 41d0…`; blank lines and lines starting with `#` are ignored.
//!
//! The current version (`pepper_version`, by default the highest in the file) is
//! the one new lookup bindings are written under; the others are still searched,
//! and a binding found under one of them moves to the current version when it is
//! looked up (`rossby_storage::tables::lookup`). So a pepper rotates lazily: add a
//! version, make it current, and keep the old one while identifiers still use it.

use crate::config::{decode_secret, load_or_create_secret, warn_if_readable_by_others};
use crate::error::{Error, Result};
use rossby_keyspace::lookup::MIN_PEPPER_BYTES;
use rossby_keyspace::{LookupHasher, Pepper};
use std::path::Path;

/// What the pepper is called in messages.
const WHAT: &str = "lookup pepper";

/// Loads the pepper file (generating a one-value file when it is missing) and
/// builds the hasher with `current` (default: the highest version) as the
/// current version.
pub fn load_hasher(path: &Path, current: Option<u32>) -> Result<LookupHasher> {
    let peppers = load_or_create(path)?;
    let hasher = hasher(path, peppers, current)?;
    tracing::info!(
        path = %path.display(),
        current = hasher.current_version(),
        "lookup pepper loaded"
    );
    Ok(hasher)
}

/// Reads the pepper file, or creates it with one generated value (version 1).
pub fn load_or_create(path: &Path) -> Result<Vec<Pepper>> {
    match std::fs::read(path) {
        Ok(bytes) => parse(path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = load_or_create_secret(path, MIN_PEPPER_BYTES, WHAT)?;
            Ok(vec![Pepper { version: 1, secret }])
        }
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

/// Parses a pepper file's content (`path` only names it in messages). Errors
/// never contain pepper bytes.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Pepper>> {
    let Some(lines) = versioned_lines(bytes) else {
        let secret = decode_secret(path, bytes, MIN_PEPPER_BYTES, WHAT)?;
        return Ok(vec![Pepper { version: 1, secret }]);
    };
    warn_if_readable_by_others(path, WHAT);
    let mut peppers: Vec<Pepper> = Vec::new();
    for (number, line) in lines {
        let bad = |what: &str| {
            Error::Config(format!(
                "pepper file {} line {number}: {what}",
                path.display()
            ))
        };
        let mut tokens = line.split_whitespace();
        let (Some(version), Some(value), None) = (tokens.next(), tokens.next(), tokens.next())
        else {
            return Err(bad("expected `<version> <hex>`"));
        };
        let version: u32 = version
            .parse()
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| bad("the version must be a number from 1 to 4294967295"))?;
        let secret = hex::decode(value).map_err(|_| bad("the pepper is not hex"))?;
        if secret.len() < MIN_PEPPER_BYTES {
            return Err(bad(&format!(
                "the pepper has {} bytes; at least {MIN_PEPPER_BYTES} are required",
                secret.len()
            )));
        }
        if peppers.iter().any(|p| p.version == version) {
            return Err(bad(&format!("version {version} is given twice")));
        }
        peppers.push(Pepper { version, secret });
    }
    Ok(peppers)
}

/// The hasher over `peppers` with `current` (default: the highest version) as the
/// version new bindings are written under.
pub fn hasher(path: &Path, peppers: Vec<Pepper>, current: Option<u32>) -> Result<LookupHasher> {
    let mut versions: Vec<u32> = peppers.iter().map(|p| p.version).collect();
    versions.sort_unstable();
    let Some(highest) = versions.last().copied() else {
        return Err(Error::Config(format!(
            "pepper file {} holds no pepper",
            path.display()
        )));
    };
    let current = current.unwrap_or(highest);
    if !versions.contains(&current) {
        let list = versions
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::Config(format!(
            "--pepper-version {current} is not in the pepper file {} (its versions: {list})",
            path.display()
        )));
    }
    LookupHasher::new(peppers, current).map_err(|e| Error::Config(format!("{WHAT}: {e}")))
}

/// The numbered non-blank, non-comment lines when the content is the versioned
/// form (its first such line is `<digits> <something>`), else `None`.
fn versioned_lines(bytes: &[u8]) -> Option<Vec<(usize, &str)>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let (_, first) = lines.first()?;
    let mut tokens = first.split_whitespace();
    let version = tokens.next()?;
    tokens.next()?;
    version.bytes().all(|b| b.is_ascii_digit()).then_some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_keyspace::Identifier;

    fn parse_str(text: &str) -> Result<Vec<Pepper>> {
        parse(Path::new("/etc/rossby/pepper"), text.as_bytes())
    }

    fn versions(peppers: &[Pepper]) -> Vec<u32> {
        peppers.iter().map(|p| p.version).collect()
    }

    const HEX_A: &str = "00112233445566778899aabbccddeeff";
    const HEX_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn a_single_value_is_version_one() {
        let peppers = parse_str(&format!("{HEX_A}\n")).unwrap();
        assert_eq!(versions(&peppers), vec![1]);
        assert_eq!(peppers[0].secret, hex::decode(HEX_A).unwrap());
        // Raw bytes, as before versions existed.
        let raw = [0xfeu8; 20];
        let peppers = parse(Path::new("p"), &raw).unwrap();
        assert_eq!(versions(&peppers), vec![1]);
        assert_eq!(peppers[0].secret, raw.to_vec());
        assert!(parse_str("abcd").is_err());
    }

    #[test]
    fn versioned_lines_are_read_with_comments_and_blank_lines() {
        let text = format!("# rotated 2025-01\n1 {HEX_A}\n\n  2   {HEX_B}  \n");
        let peppers = parse_str(&text).unwrap();
        assert_eq!(versions(&peppers), vec![1, 2]);
        assert_eq!(peppers[1].secret, hex::decode(HEX_B).unwrap());
        let h = hasher(Path::new("p"), peppers.clone(), None).unwrap();
        assert_eq!(h.current_version(), 2, "the highest version by default");
        let h = hasher(Path::new("p"), peppers.clone(), Some(1)).unwrap();
        assert_eq!(h.current_version(), 1);
        let id = Identifier::email("a@example.com").unwrap();
        let only_one = hasher(Path::new("p"), parse_str(HEX_A).unwrap(), None).unwrap();
        assert_eq!(
            h.digest(1, &id),
            only_one.digest(1, &id),
            "a one-value file and line `1 <hex>` are the same pepper"
        );
        let message = hasher(Path::new("p"), peppers, Some(3))
            .unwrap_err()
            .to_string();
        assert!(message.contains("--pepper-version 3"), "{message}");
        assert!(message.contains("1, 2"), "{message}");
    }

    #[test]
    fn bad_versioned_files_name_the_line_and_never_the_pepper() {
        for (text, needle) in [
            (format!("1 {HEX_A}\n2\n"), "line 2: expected"),
            (format!("1 {HEX_A}\n2 {HEX_B} extra\n"), "line 2: expected"),
            (format!("0 {HEX_A}\n"), "line 1: the version"),
            (format!("1 {HEX_A}\nx {HEX_B}\n"), "line 2: the version"),
            (
                "1 zz00112233445566778899aabbccddee\n".to_string(),
                "not hex",
            ),
            ("1 0011\n".to_string(), "at least 16"),
            (format!("1 {HEX_A}\n1 {HEX_B}\n"), "given twice"),
        ] {
            let message = parse_str(&text).unwrap_err().to_string();
            assert!(message.contains(needle), "{text:?}: {message}");
            assert!(message.contains("/etc/rossby/pepper"), "{message}");
            assert!(
                !message.contains(HEX_A) && !message.contains(HEX_B),
                "{message}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_generated_as_version_one_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pepper");
        let first = load_or_create(&path).unwrap();
        assert_eq!(versions(&first), vec![1]);
        let again = load_or_create(&path).unwrap();
        assert_eq!(again[0].secret, first[0].secret);
        assert_eq!(load_hasher(&path, None).unwrap().current_version(), 1);
        assert!(load_hasher(&path, Some(2)).is_err());
    }
}
