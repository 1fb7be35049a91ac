//! The registration lock: a PIN the account's recovery must present
//! (docs/protocol.md §3). The gateway keeps only a slow, salted hash of it, so
//! a forgotten PIN cannot be recovered: the account can then only be recovered
//! after the lock is removed from one of its devices.

use crate::error::{Error, Result};
use crate::sdk::Client;
use rossby_keyspace::BoxId;
use rossby_protocol::pb::{self, Method};

/// Shortest and longest PIN the gateway accepts, in characters.
pub const PIN_CHARS: std::ops::RangeInclusive<usize> = 4..=64;

impl Client {
    /// Sets the account's registration-lock PIN, or removes the lock (`None`).
    /// Returns whether a lock is now set.
    pub async fn set_registration_lock(&self, pin: Option<&str>) -> Result<bool> {
        if let Some(pin) = pin {
            let n = pin.chars().count();
            if !PIN_CHARS.contains(&n) || pin.chars().any(char::is_control) {
                return Err(Error::Invalid(format!(
                    "a registration-lock PIN must have {} to {} characters",
                    PIN_CHARS.start(),
                    PIN_CHARS.end()
                )));
            }
        }
        let request = pb::UpdateSettingsRequest {
            registration_lock_pin: Some(pin.unwrap_or_default().to_string()),
            ..pb::UpdateSettingsRequest::default()
        };
        let response: pb::UpdateSettingsResponse =
            self.rpc(Method::UpdateSettings, &request).await?;
        Ok(response.registration_lock)
    }

    /// Completes a pending recovery (a `register` with `recover`) with the code
    /// and, for an account with a registration lock, its PIN. Without the PIN,
    /// or with a wrong one, the gateway answers `STATUS_REGISTRATION_LOCKED`
    /// and the code stays valid: ask for the PIN and call this again.
    pub async fn recover(&self, code: &str, pin: Option<&str>) -> Result<BoxId> {
        self.authorize_with(code, pin).await
    }
}
