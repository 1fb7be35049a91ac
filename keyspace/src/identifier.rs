//! Identifiers users are found by, and their normal forms.
//!
//! Two spellings of the same phone number or e-mail address must hash to the same
//! lookup key, so every identifier is normalised before hashing: phone numbers to
//! E.164 (`+` and 7 to 15 digits, no separators), e-mail addresses to lower case.

use crate::error::{Error, Result};
use std::fmt;

/// A normalised identifier. Construct it with [`Identifier::parse`],
/// [`Identifier::phone`] or [`Identifier::email`]; the inner string is always the
/// normal form.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Identifier {
    /// An E.164 phone number such as `+14155550123`.
    Phone(String),
    /// A lower-cased e-mail address.
    Email(String),
}

/// Longest e-mail address accepted (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;

impl Identifier {
    /// Parses an e-mail address if the input contains `@`, a phone number otherwise.
    pub fn parse(raw: &str) -> Result<Self> {
        if raw.contains('@') {
            Self::email(raw)
        } else {
            Self::phone(raw)
        }
    }

    /// Normalises a phone number: spaces, dashes, dots and parentheses are removed,
    /// a leading `00` is read as `+`; the result must be `+` followed by 7 to 15
    /// digits, the first of which is not `0`.
    pub fn phone(raw: &str) -> Result<Self> {
        let compact: String = raw
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '\u{a0}'))
            .collect();
        let digits = if let Some(rest) = compact.strip_prefix('+') {
            rest
        } else if let Some(rest) = compact.strip_prefix("00") {
            rest
        } else {
            return Err(Error::InvalidPhone("must start with + and a country code"));
        };
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(Error::InvalidPhone("only digits may follow the +"));
        }
        if !(7..=15).contains(&digits.len()) {
            return Err(Error::InvalidPhone("E.164 numbers have 7 to 15 digits"));
        }
        if digits.starts_with('0') {
            return Err(Error::InvalidPhone("country codes do not start with 0"));
        }
        Ok(Identifier::Phone(format!("+{digits}")))
    }

    /// Normalises an e-mail address: surrounding whitespace is removed and the whole
    /// address lower-cased; it must have one `@`, a non-empty local part of at most
    /// 64 bytes, and a domain with a dot and no empty labels.
    pub fn email(raw: &str) -> Result<Self> {
        let email = raw.trim().to_lowercase();
        if email.len() > MAX_EMAIL_LEN {
            return Err(Error::InvalidEmail("longer than 254 bytes"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::InvalidEmail(
                "contains whitespace or control characters",
            ));
        }
        let (local, domain) = email
            .split_once('@')
            .ok_or(Error::InvalidEmail("missing @"))?;
        if domain.contains('@') {
            return Err(Error::InvalidEmail("more than one @"));
        }
        if local.is_empty() || local.len() > 64 {
            return Err(Error::InvalidEmail("local part must have 1 to 64 bytes"));
        }
        if !domain.contains('.') || domain.split('.').any(str::is_empty) {
            return Err(Error::InvalidEmail(
                "domain must have non-empty dotted labels",
            ));
        }
        Ok(Identifier::Email(email))
    }

    /// The normal form.
    pub fn as_str(&self) -> &str {
        match self {
            Identifier::Phone(s) | Identifier::Email(s) => s,
        }
    }

    /// One byte naming the kind, hashed together with the normal form so a phone
    /// number and an e-mail address can never collide.
    pub fn kind_tag(&self) -> u8 {
        match self {
            Identifier::Phone(_) => b'p',
            Identifier::Email(_) => b'e',
        }
    }
}

/// Identifiers are personal data: `Debug` shows only the kind, never the value, so
/// they cannot leak into logs by accident.
impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identifier::Phone(_) => f.write_str("Phone(<redacted>)"),
            Identifier::Email(_) => f.write_str("Email(<redacted>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn phone_numbers_are_normalised_to_e164() {
        for raw in [
            "+1 (415) 555-0123",
            "+14155550123",
            "0014155550123",
            " +1.415.555.0123 ",
        ] {
            assert_eq!(
                Identifier::phone(raw).unwrap().as_str(),
                "+14155550123",
                "{raw}"
            );
        }
    }

    #[test]
    fn bad_phone_numbers_are_rejected() {
        for raw in [
            "4155550123",
            "+",
            "+0123456789",
            "+12345",
            "+1234567890123456",
            "+1415a550123",
            "",
        ] {
            assert!(Identifier::phone(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn emails_are_lower_cased() {
        assert_eq!(
            Identifier::email("  Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
        assert_eq!(
            Identifier::parse("Bob@Example.org").unwrap(),
            Identifier::Email("bob@example.org".into())
        );
        assert!(matches!(
            Identifier::parse("+4930123456").unwrap(),
            Identifier::Phone(_)
        ));
    }

    #[test]
    fn bad_emails_are_rejected() {
        for raw in [
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a@b@c.d",
            "a b@c.d",
            "alice@example..com",
        ] {
            assert!(Identifier::email(raw).is_err(), "{raw}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Identifier::email(&long).is_err());
    }

    #[test]
    fn debug_never_shows_the_value() {
        let id = Identifier::email("alice@example.com").unwrap();
        assert!(!format!("{id:?}").contains("alice"));
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent(digits in "[1-9][0-9]{6,14}") {
            let once = Identifier::phone(&format!("+{digits}")).unwrap();
            prop_assert_eq!(Identifier::phone(once.as_str()).unwrap(), once.clone());
            let email = Identifier::email(&format!("U{digits}@Example.com")).unwrap();
            prop_assert_eq!(Identifier::email(email.as_str()).unwrap(), email);
        }
    }
}
