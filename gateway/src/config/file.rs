//! The TOML configuration file: flat keys named like the flags with `_` for `-`,
//! read into the same [`Args`] as the flags so that it can fill what they leave
//! unset.

use super::{Args, Merge};
use crate::error::{Error, Result};
use clap::CommandFactory;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

/// Reads and parses the file; errors name the file and the line.
///
/// Each key is read on its own: serde cannot refuse unknown keys of flattened
/// structs, and reading key by key is what lets an error name its line.
pub(super) fn read(path: &Path) -> Result<Args> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
    let error = |span: Option<Range<usize>>, message: &str| {
        let message = message.replace('\n', " ");
        match span.and_then(|span| text.get(..span.start)) {
            Some(before) => Error::Config(format!(
                "config file {} line {}: {message}",
                path.display(),
                before.matches('\n').count() + 1
            )),
            None => Error::Config(format!("config file {}: {message}", path.display())),
        }
    };
    let table: BTreeMap<Spanned<String>, toml::Value> =
        toml::from_str(&text).map_err(|e| error(e.span(), e.message()))?;
    let mut entries: Vec<_> = table.into_iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    let known = keys();
    let mut file = Args::default();
    for (key, value) in entries {
        let span = key.span();
        let key = key.into_inner();
        if !known.contains(&key) {
            return Err(error(
                Some(span),
                &format!("unknown field `{key}` (the keys are listed in docs/configuration.md)"),
            ));
        }
        let one = toml::Table::from_iter([(key.clone(), value)]);
        let one: Args = toml::Value::Table(one)
            .try_into()
            .map_err(|e| error(Some(span), &format!("{key}: {}", e.message())))?;
        file.merge(one);
    }
    Ok(file)
}

/// The file's keys: the ids of the flags, which are their fields' names. The
/// file cannot name another file.
pub(super) fn keys() -> BTreeSet<String> {
    Args::command()
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .filter(|id| !matches!(id.as_str(), "config" | "help" | "version"))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{ENV_LOCK, err};

    #[test]
    fn bad_files_are_reported_with_their_line() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:1\"\nmax_recipeints = 3\n").unwrap();
        let message = err(&["--config", file.to_str().unwrap()]);
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("max_recipeints"), "{message}");
        assert!(!message.contains('\n'), "{message}");
        std::fs::write(&file, "max_recipients = \"many\"\n").unwrap();
        let message = err(&["--config", file.to_str().unwrap()]);
        assert!(message.contains("line 1"), "{message}");
        let message = err(&[
            "--config",
            dir.path().join("missing.toml").to_str().unwrap(),
        ]);
        assert!(message.contains("cannot read config file"), "{message}");
    }

    #[test]
    fn the_keys_are_the_flags_and_nothing_else() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let known = super::keys();
        for key in [
            "max_frame_bytes",
            "retry_above_handshakes",
            "peer_listen",
            "tikv_mode",
        ] {
            assert!(known.contains(key), "{key}");
        }
        assert!(!known.contains("config"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.toml");
        for (text, needle) in [
            (
                "config = \"/etc/other.toml\"\n",
                "line 1: unknown field `config`",
            ),
            (
                "region = 1\n[quic]\nmax_connections = 3\n",
                "line 2: unknown field `quic`",
            ),
            ("store = \"memory\"\n", "unknown field `store`"),
        ] {
            std::fs::write(&file, text).unwrap();
            let message = err(&["--config", file.to_str().unwrap()]);
            assert!(message.contains(needle), "{text:?}: {message}");
            assert!(message.contains(file.to_str().unwrap()), "{message}");
        }
    }
}
