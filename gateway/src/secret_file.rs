//! Secret files with one or several numbered versions: the lookup pepper file
//! and the server secret file.
//!
//! Two formats:
//! - **one value**: hex (whitespace around it ignored) or raw bytes. It is
//!   version 1. The gateway generates this form (32 random bytes, hex) when the
//!   file does not exist.
//! - **versioned**: one `<version> <hex>` line per version, e.g. `1 9f3c…` and
//!   `2 41d0…`; blank lines and lines starting with `#` are ignored.
//!
//! One version is current: the one given by the file's option (`pepper_version`,
//! `secret_version`), by default the highest in the file.
//!
//! - **Lookup pepper**: new lookup bindings are written under the current
//!   version; the others are still searched, and a binding found under one of
//!   them moves to the current version when it is looked up
//!   (`rossby_storage::tables::lookup`). So a pepper rotates lazily: add a
//!   version, make it current, and keep the old one while identifiers still use it.
//! - **Server secret**: new credentials and code hashes are derived from the
//!   current version; credentials of every configured version verify, and devices
//!   using another version are told to refresh theirs ([`crate::auth::secrets`]).

use crate::auth::keys::MIN_SERVER_SECRET;
use crate::auth::secrets::ServerSecrets;
use crate::error::{Error, Result};
use crate::private_file::{decode_secret, load_or_create_secret, warn_if_readable_by_others};
use rossby_keyspace::lookup::MIN_PEPPER_BYTES;
use rossby_keyspace::{LookupHasher, Pepper};
use std::path::{Path, PathBuf};

/// One kind of versioned secret file: how it is named in messages and how long
/// its secrets must be.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    /// What the secret is called in messages ("lookup pepper").
    pub what: &'static str,
    /// What one value is called in line errors ("pepper").
    pub noun: &'static str,
    /// The option naming the current version ("--pepper-version").
    pub option: &'static str,
    /// Shortest secret accepted, in bytes.
    pub min_len: usize,
}

/// The lookup pepper file.
pub const PEPPER: Kind = Kind {
    what: "lookup pepper",
    noun: "pepper",
    option: "--pepper-version",
    min_len: MIN_PEPPER_BYTES,
};

/// The server secret file.
pub const SERVER_SECRET: Kind = Kind {
    what: "server secret",
    noun: "secret",
    option: "--secret-version",
    min_len: MIN_SERVER_SECRET,
};

/// One version of a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The version (at least 1).
    pub version: u32,
    /// The secret bytes.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Versioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Versioned")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Loads the server secret file (generating a one-value file when it is missing)
/// with `current` (default: the highest version) as the current version.
pub fn load_server_secrets(path: &Path, current: Option<u32>) -> Result<ServerSecrets> {
    let versions = load_or_create(path, &SERVER_SECRET)?;
    let list: Vec<u32> = versions.iter().map(|v| v.version).collect();
    let current = current_version(path, &list, current, &SERVER_SECRET)?;
    let secrets = ServerSecrets::new(
        versions
            .into_iter()
            .map(|v| (v.version, v.secret))
            .collect(),
        current,
    )
    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    tracing::info!(
        path = %path.display(),
        current,
        versions = ?list,
        "server secret loaded"
    );
    Ok(secrets)
}

/// Loads the pepper file (generating a one-value file when it is missing) and
/// builds the hasher with `current` (default: the highest version) as the
/// current version.
pub fn load_hasher(path: &Path, current: Option<u32>) -> Result<LookupHasher> {
    let peppers = load_or_create(path, &PEPPER)?
        .into_iter()
        .map(|v| Pepper {
            version: v.version,
            secret: v.secret,
        })
        .collect();
    let hasher = hasher(path, peppers, current)?;
    tracing::info!(
        path = %path.display(),
        current = hasher.current_version(),
        "lookup pepper loaded"
    );
    Ok(hasher)
}

/// Reads a secret file, or creates it with one generated value (version 1).
pub fn load_or_create(path: &Path, kind: &Kind) -> Result<Vec<Versioned>> {
    match std::fs::read(path) {
        Ok(bytes) => parse(path, &bytes, kind),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = load_or_create_secret(path, kind.min_len, kind.what)?;
            Ok(vec![Versioned { version: 1, secret }])
        }
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

/// Parses a secret file's content (`path` only names it in messages). Errors
/// never contain secret bytes.
pub fn parse(path: &Path, bytes: &[u8], kind: &Kind) -> Result<Vec<Versioned>> {
    let Some(lines) = versioned_lines(bytes) else {
        let secret = decode_secret(path, bytes, kind.min_len, kind.what)?;
        return Ok(vec![Versioned { version: 1, secret }]);
    };
    warn_if_readable_by_others(path, kind.what);
    let noun = kind.noun;
    let min_len = kind.min_len;
    let mut versions: Vec<Versioned> = Vec::new();
    for (number, line) in lines {
        let bad = |what: &str| {
            Error::Config(format!(
                "{noun} file {} line {number}: {what}",
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
        let secret = hex::decode(value).map_err(|_| bad(&format!("the {noun} is not hex")))?;
        if secret.len() < min_len {
            return Err(bad(&format!(
                "the {noun} has {} bytes; at least {min_len} are required",
                secret.len()
            )));
        }
        if versions.iter().any(|p| p.version == version) {
            return Err(bad(&format!("version {version} is given twice")));
        }
        versions.push(Versioned { version, secret });
    }
    Ok(versions)
}

/// The current version: `current` if the file holds it, else the highest of
/// `versions` when `current` is `None`.
pub fn current_version(
    path: &Path,
    versions: &[u32],
    current: Option<u32>,
    kind: &Kind,
) -> Result<u32> {
    let mut sorted = versions.to_vec();
    sorted.sort_unstable();
    let Some(highest) = sorted.last().copied() else {
        return Err(Error::Config(format!(
            "{} file {} holds no {}",
            kind.noun,
            path.display(),
            kind.noun
        )));
    };
    let current = current.unwrap_or(highest);
    if !sorted.contains(&current) {
        let list = sorted
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::Config(format!(
            "{} {current} is not in the {} file {} (its versions: {list})",
            kind.option,
            kind.noun,
            path.display()
        )));
    }
    Ok(current)
}

/// The hasher over `peppers` with `current` (default: the highest version) as the
/// version new bindings are written under.
pub fn hasher(path: &Path, peppers: Vec<Pepper>, current: Option<u32>) -> Result<LookupHasher> {
    let versions: Vec<u32> = peppers.iter().map(|p| p.version).collect();
    let current = current_version(path, &versions, current, &PEPPER)?;
    LookupHasher::new(peppers, current).map_err(|e| Error::Config(format!("{}: {e}", PEPPER.what)))
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

crate::config::options! {
    /// The server secret and lookup pepper files, and their current versions.
    #[derive(clap::Args, serde::Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "TLS and secrets")]
    pub struct SecretOptions {
        /// Server secret file (Hawk keys, code hashes); the same on every gateway
        /// [default: `secret` in --data-dir, generated].
        #[arg(long, env = "ROSSBY_SECRET_FILE", value_name = "FILE")]
        pub secret_file: Option<PathBuf>,
        /// Current server secret version, from which new credentials and code hashes
        /// are derived; credentials of the file's other versions still verify
        /// [default: the highest version in the secret file].
        #[arg(long, env = "ROSSBY_SECRET_VERSION", value_name = "N")]
        pub secret_version: Option<u32>,
        /// Identifier lookup pepper file; the same on every gateway
        /// [default: `pepper` in --data-dir, generated].
        #[arg(long, env = "ROSSBY_PEPPER_FILE", value_name = "FILE")]
        pub pepper_file: Option<PathBuf>,
        /// Current lookup pepper version, under which new identifier bindings are
        /// written; the file's other versions are still found
        /// [default: the highest version in the pepper file].
        #[arg(long, env = "ROSSBY_PEPPER_VERSION", value_name = "N")]
        pub pepper_version: Option<u32>,
    }
}

/// Where the server secret and the lookup pepper are read from, and which of
/// their versions is current (`None`: the highest in the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretFiles {
    /// Server secret file.
    pub secret_file: PathBuf,
    /// Current server secret version.
    pub secret_version: Option<u32>,
    /// Lookup pepper file.
    pub pepper_file: PathBuf,
    /// Current lookup pepper version.
    pub pepper_version: Option<u32>,
}

impl SecretOptions {
    /// The files (by default `secret` and `pepper` in `data_dir`) and versions,
    /// checked.
    pub fn into_files(self, data_dir: &Path) -> Result<SecretFiles> {
        if self.secret_version == Some(0) {
            return Err(Error::Config("--secret-version must be at least 1".into()));
        }
        if self.pepper_version == Some(0) {
            return Err(Error::Config("--pepper-version must be at least 1".into()));
        }
        Ok(SecretFiles {
            secret_file: self.secret_file.unwrap_or_else(|| data_dir.join("secret")),
            secret_version: self.secret_version,
            pepper_file: self.pepper_file.unwrap_or_else(|| data_dir.join("pepper")),
            pepper_version: self.pepper_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_keyspace::Identifier;

    fn parse_str(text: &str) -> Result<Vec<Pepper>> {
        parse(Path::new("/etc/rossby/pepper"), text.as_bytes(), &PEPPER).map(as_peppers)
    }

    fn as_peppers(versions: Vec<Versioned>) -> Vec<Pepper> {
        versions
            .into_iter()
            .map(|v| Pepper {
                version: v.version,
                secret: v.secret,
            })
            .collect()
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
        let peppers = as_peppers(parse(Path::new("p"), &raw, &PEPPER).unwrap());
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
        let first = as_peppers(load_or_create(&path, &PEPPER).unwrap());
        assert_eq!(versions(&first), vec![1]);
        let again = as_peppers(load_or_create(&path, &PEPPER).unwrap());
        assert_eq!(again[0].secret, first[0].secret);
        assert_eq!(load_hasher(&path, None).unwrap().current_version(), 1);
        assert!(load_hasher(&path, Some(2)).is_err());
    }

    const SECRET_A: &str = "0101010101010101010101010101010101010101010101010101010101010101";

    #[test]
    fn server_secret_files_use_the_same_formats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        // Generated on first use as one value: version 1, current.
        let generated = load_server_secrets(&path, None).unwrap();
        assert_eq!(generated.versions().collect::<Vec<_>>(), vec![1]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(generated.current(), hex::decode(text.trim()).unwrap());
        // Versioned: the highest is current unless pinned.
        std::fs::write(&path, format!("# rotation\n1 {}\n2 {HEX_B}\n", text.trim())).unwrap();
        let both = load_server_secrets(&path, None).unwrap();
        assert_eq!(both.current_version(), 2);
        assert_eq!(both.get(1), Some(generated.current()));
        assert_eq!(
            load_server_secrets(&path, Some(1))
                .unwrap()
                .current_version(),
            1
        );
        let message = load_server_secrets(&path, Some(3)).unwrap_err().to_string();
        assert!(message.contains("--secret-version 3"), "{message}");
        assert!(message.contains("secret file"), "{message}");
        // Server secrets need 32 bytes, where a pepper needs 16.
        std::fs::write(&path, format!("1 {SECRET_A}\n2 {HEX_A}\n")).unwrap();
        let message = load_server_secrets(&path, None).unwrap_err().to_string();
        assert!(message.contains("secret file"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("at least 32"), "{message}");
        assert!(
            !message.contains(HEX_A) && !message.contains(SECRET_A),
            "{message}"
        );
        // A raw (non-hex) single value stays version 1, as before versions existed.
        std::fs::write(&path, [0xfeu8; 40]).unwrap();
        let raw = load_server_secrets(&path, None).unwrap();
        assert_eq!(raw.current_version(), 1);
        assert_eq!(raw.current(), &[0xfe; 40]);
    }
}
