//! Files only the gateway's user may read: the data directory, generated
//! secrets, and files that must appear whole or not at all.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Reads a secret file, or creates it with 32 random bytes (hex, mode 0600) if it
/// does not exist. Two gateways starting at once over the same path agree on one
/// secret: the file appears atomically (written aside, then hard-linked into
/// place, which fails if the other won) and the loser reads the winner's.
///
/// The file holds hex (as generated, easy to copy to other gateways) or raw bytes;
/// whitespace around hex is ignored.
pub fn load_or_create_secret(path: &Path, min_len: usize, what: &str) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => return decode_secret(path, &bytes, min_len, what),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot read", path, e)),
    }
    let mut secret = [0u8; 32];
    rand::fill(&mut secret);
    let text = format!("{}\n", hex::encode(secret));
    write_private_file_once(path, text.as_bytes())?;
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    let secret = decode_secret(path, &bytes, min_len, what)?;
    tracing::info!(path = %path.display(), "generated the {what}");
    Ok(secret)
}

/// Decodes a secret file's content (hex, or raw bytes) and checks its length.
pub(crate) fn decode_secret(
    path: &Path,
    bytes: &[u8],
    min_len: usize,
    what: &str,
) -> Result<Vec<u8>> {
    warn_if_readable_by_others(path, what);
    let trimmed = std::str::from_utf8(bytes).map(str::trim).ok();
    let secret = match trimmed.and_then(|t| hex::decode(t).ok()) {
        Some(decoded) => decoded,
        None => bytes.to_vec(),
    };
    if secret.len() < min_len {
        return Err(Error::Config(format!(
            "the {what} in {} has {} bytes; at least {min_len} are required",
            path.display(),
            secret.len()
        )));
    }
    Ok(secret)
}

#[cfg(unix)]
pub(crate) fn warn_if_readable_by_others(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        let (noun, fix) = if meta.is_dir() {
            ("", "chmod 700")
        } else {
            (" file", "chmod 600")
        };
        tracing::warn!(path = %path.display(), "the {what}{noun} is accessible to other users; {fix} it");
    }
}

#[cfg(not(unix))]
pub(crate) fn warn_if_readable_by_others(_path: &Path, _what: &str) {}

/// Creates the directory `path` (and missing parents) accessible to the owner
/// only (mode 0700): it holds the store, secrets and, with the `file:` verifier,
/// codes. An existing directory is left as it is, with a warning when others can
/// enter it.
pub(crate) fn create_private_dir(path: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(path)
        .map_err(|e| Error::io("cannot create data directory", path, e))?;
    warn_if_readable_by_others(path, "data directory");
    Ok(())
}

/// Creates `path` with `contents` and mode 0600 unless it already exists. The file
/// appears complete or not at all. Returns whether this call created it.
pub(crate) fn write_private_file_once(path: &Path, contents: &[u8]) -> Result<bool> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let tmp = PathBuf::from(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options
            .open(&tmp)
            .map_err(|e| Error::io("cannot create", &tmp, e))?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("cannot create", path, e)),
        }
    })();
    // The temporary name is only a staging step; failing to remove it leaves a
    // harmless stray file.
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("secret");
        let a = load_or_create_secret(&path, 32, "server secret").unwrap();
        assert_eq!(a.len(), 32);
        let b = load_or_create_secret(&path, 32, "server secret").unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "abcd\n").unwrap();
        let message = load_or_create_secret(&path, 32, "server secret")
            .unwrap_err()
            .to_string();
        assert!(message.contains("at least 32"), "{message}");
        // Raw (non-hex) secrets are accepted as they are.
        std::fs::write(&path, [0xffu8; 40]).unwrap();
        assert_eq!(
            load_or_create_secret(&path, 32, "server secret").unwrap(),
            vec![0xff; 40]
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
