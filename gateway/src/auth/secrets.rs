//! The deployment's server secrets: one or several numbered versions, one of them
//! current.
//!
//! New credentials and new verification-code hashes are derived from the current
//! version; requests signed with credentials of any configured version verify, so
//! the secret rotates without signing devices out: a reply to a request that
//! authenticated with another version carries `credentials_outdated`, and the
//! device fetches credentials of the current version (RefreshCredentials). The
//! file format is the one of [`crate::secret_file`].

use super::keys::MIN_SERVER_SECRET;

/// The configured server secret versions and the current one.
#[derive(Clone)]
pub struct ServerSecrets {
    /// Sorted by version, versions unique.
    versions: Vec<(u32, Vec<u8>)>,
    current: u32,
}

impl std::fmt::Debug for ServerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Versions only: the secrets never reach a log.
        f.debug_struct("ServerSecrets")
            .field("versions", &self.versions().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

impl ServerSecrets {
    /// The secrets `(version, secret)` with `current` as the current version.
    /// Fails (with a message that never contains secret bytes) when there is none,
    /// a version is 0 or repeated, a secret is shorter than [`MIN_SERVER_SECRET`]
    /// bytes, or `current` is not among the versions.
    pub fn new(mut versions: Vec<(u32, Vec<u8>)>, current: u32) -> Result<Self, String> {
        versions.sort_by_key(|(v, _)| *v);
        if versions.is_empty() {
            return Err("no server secret is configured".into());
        }
        for (i, (version, secret)) in versions.iter().enumerate() {
            if *version == 0 {
                return Err("server secret versions start at 1".into());
            }
            if i > 0 && versions[i - 1].0 == *version {
                return Err(format!("server secret version {version} is given twice"));
            }
            if secret.len() < MIN_SERVER_SECRET {
                return Err(format!(
                    "server secret version {version} has {} bytes; at least {MIN_SERVER_SECRET} are required",
                    secret.len()
                ));
            }
        }
        if !versions.iter().any(|(v, _)| *v == current) {
            return Err(format!(
                "the current server secret version {current} is not configured"
            ));
        }
        Ok(ServerSecrets { versions, current })
    }

    /// One secret, as version 1 (and current).
    pub fn single(secret: Vec<u8>) -> Result<Self, String> {
        ServerSecrets::new(vec![(1, secret)], 1)
    }

    /// The current version.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// The current version's secret.
    pub fn current(&self) -> &[u8] {
        self.get(self.current).unwrap_or_default()
    }

    /// The secret of `version`, if configured.
    pub fn get(&self, version: u32) -> Option<&[u8]> {
        self.versions
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, s)| s.as_slice())
    }

    /// The configured versions, ascending.
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.versions.iter().map(|(v, _)| *v)
    }

    /// Every configured `(version, secret)`, ascending by version.
    pub fn all(&self) -> impl Iterator<Item = (u32, &[u8])> + '_ {
        self.versions.iter().map(|(v, s)| (*v, s.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked_and_looked_up() {
        let s = ServerSecrets::new(vec![(2, vec![2; 32]), (1, vec![1; 32])], 2).unwrap();
        assert_eq!(s.versions().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(s.current_version(), 2);
        assert_eq!(s.current(), &[2; 32]);
        assert_eq!(s.get(1), Some(&[1u8; 32][..]));
        assert_eq!(s.get(3), None);
        let single = ServerSecrets::single(vec![7; 40]).unwrap();
        assert_eq!(single.current_version(), 1);
        assert_eq!(single.current(), &[7; 40]);
        for (versions, current, needle) in [
            (vec![], 1, "no server secret"),
            (vec![(0, vec![1; 32])], 0, "start at 1"),
            (vec![(1, vec![1; 32]), (1, vec![2; 32])], 1, "twice"),
            (vec![(1, vec![1; 31])], 1, "at least 32"),
            (vec![(1, vec![1; 32])], 2, "version 2 is not configured"),
        ] {
            let message = ServerSecrets::new(versions, current).unwrap_err();
            assert!(message.contains(needle), "{message}");
        }
        let debug = format!("{s:?}");
        assert!(!debug.contains("[2, 2"), "{debug}");
    }
}
