//! The registration options: verification codes and registration-lock PINs.

use super::ApiSettings;
use crate::config::check::{at_least, secs};
use crate::error::Result;

crate::config::options! {
    /// How long verification codes live and how many wrong codes and PINs are
    /// allowed.
    #[derive(clap::Args, serde::Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "Registration")]
    pub struct RegistrationOptions {
        /// Lifetime of a verification code in seconds [default: 600].
        #[arg(long, env = "ROSSBY_CODE_TTL_SECS", value_name = "SECS")]
        pub code_ttl_secs: Option<u64>,
        /// Wrong codes allowed per registration [default: 5].
        #[arg(long, env = "ROSSBY_CODE_MAX_ATTEMPTS", value_name = "N")]
        pub code_max_attempts: Option<u32>,
        /// Wrong codes allowed per identifier and day, over all its registrations [default: 20].
        #[arg(
            long,
            env = "ROSSBY_WRONG_CODES_PER_IDENTIFIER_PER_DAY",
            value_name = "N"
        )]
        pub wrong_codes_per_identifier_per_day: Option<u32>,
        /// Wrong registration-lock PINs allowed before a lockout [default: 10].
        #[arg(long, env = "ROSSBY_REGISTRATION_LOCK_MAX_ATTEMPTS", value_name = "N")]
        pub registration_lock_max_attempts: Option<u32>,
        /// Lockout after too many wrong registration-lock PINs, in seconds [default: 86400].
        #[arg(
            long,
            env = "ROSSBY_REGISTRATION_LOCK_LOCKOUT_SECS",
            value_name = "SECS"
        )]
        pub registration_lock_lockout_secs: Option<u64>,
    }
}

impl RegistrationOptions {
    /// Sets what these options set in `api`, checked; unset ones keep `api`'s
    /// values.
    pub fn apply(self, api: &mut ApiSettings) -> Result<()> {
        api.code_ttl = secs(
            "code-ttl-secs",
            self.code_ttl_secs.unwrap_or(api.code_ttl.as_secs()),
            1,
            7 * 86_400,
        )?;
        api.code_max_attempts = at_least(
            "code-max-attempts",
            self.code_max_attempts.unwrap_or(api.code_max_attempts),
            1,
        )?;
        api.wrong_codes_per_identifier_per_day = at_least(
            "wrong-codes-per-identifier-per-day",
            self.wrong_codes_per_identifier_per_day
                .unwrap_or(api.wrong_codes_per_identifier_per_day),
            1,
        )?;
        api.registration_lock_max_attempts = at_least(
            "registration-lock-max-attempts",
            self.registration_lock_max_attempts
                .unwrap_or(api.registration_lock_max_attempts),
            1,
        )?;
        api.registration_lock_lockout = secs(
            "registration-lock-lockout-secs",
            self.registration_lock_lockout_secs
                .unwrap_or(api.registration_lock_lockout.as_secs()),
            1,
            365 * 86_400,
        )?;
        Ok(())
    }
}
