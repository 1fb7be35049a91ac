//! How an area of the configuration declares its options: once, as a struct of
//! `Option` fields that is both a set of flags (each `#[arg]` names its
//! `ROSSBY_*` variable) and a set of TOML keys (the field names), so that
//! flags, variables and file keys cannot drift apart.

use serde::{Deserialize, Deserializer};

/// Fills the options still unset from a source of lower precedence: the
/// configuration file under the flags and variables.
pub trait Merge {
    /// Keeps what `self` sets and takes the rest from `lower`.
    fn merge(&mut self, lower: Self);
}

impl<T> Merge for Option<T> {
    fn merge(&mut self, lower: Self) {
        if self.is_none() {
            *self = lower;
        }
    }
}

/// Declares an options struct and its [`Merge`]: every field is merged, an
/// `Option` by taking the lower source's value when unset, a flattened options
/// struct field by field.
macro_rules! options {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $field_vis:vis $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $(
                $(#[$field_meta])*
                $field_vis $field: $ty,
            )*
        }

        impl $crate::config::Merge for $name {
            fn merge(&mut self, lower: Self) {
                $( $crate::config::Merge::merge(&mut self.$field, lower.$field); )*
            }
        }
    };
}
pub(crate) use options;

/// Accepts any value of a removed option: it is kept only so that setting it
/// fails with the reason instead of as an unknown key.
pub(crate) fn removed<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    serde::de::IgnoredAny::deserialize(deserializer)?;
    Ok(Some(String::new()))
}
