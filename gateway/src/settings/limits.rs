//! The storage limits of the API: envelope and KeyPackage sizes, per-box
//! quotas, retention and deduplication.

use super::ApiSettings;
use crate::config::check::{at_least, between, secs};
use crate::error::{Error, Result};

crate::config::options! {
    /// What one box, device or transaction may hold, and for how long.
    #[derive(clap::Args, serde::Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "API limits")]
    pub struct LimitOptions {
        /// Largest envelope payload in bytes [default: 262144].
        #[arg(long, env = "ROSSBY_MAX_PAYLOAD_BYTES", value_name = "BYTES")]
        pub max_payload_bytes: Option<usize>,
        /// Most devices per box [default: 16].
        #[arg(long, env = "ROSSBY_MAX_DEVICES_PER_BOX", value_name = "N")]
        pub max_devices_per_box: Option<usize>,
        /// Most unclaimed KeyPackages per device [default: 200].
        #[arg(long, env = "ROSSBY_MAX_KEY_PACKAGES_PER_DEVICE", value_name = "N")]
        pub max_key_packages_per_device: Option<usize>,
        /// Largest KeyPackage in bytes [default: 16384].
        #[arg(long, env = "ROSSBY_MAX_KEY_PACKAGE_BYTES", value_name = "BYTES")]
        pub max_key_package_bytes: Option<usize>,
        /// Most bytes of envelopes one box's queue holds [default: 67108864].
        #[arg(long, env = "ROSSBY_MAX_QUEUE_BYTES", value_name = "BYTES")]
        pub max_queue_bytes: Option<u64>,
        /// Most envelopes one box's queue holds [default: 50000].
        #[arg(long, env = "ROSSBY_MAX_QUEUE_ENVELOPES", value_name = "N")]
        pub max_queue_envelopes: Option<u64>,
        /// Most contacts, and separately most blocked boxes, per box [default: 10000].
        #[arg(long, env = "ROSSBY_MAX_RELATIONS_PER_BOX", value_name = "N")]
        pub max_relations_per_box: Option<usize>,
        /// Most identifiers (phone numbers, e-mail addresses) bound to one box, at
        /// most 1024 [default: 16].
        #[arg(long, env = "ROSSBY_MAX_IDENTIFIERS_PER_BOX", value_name = "N")]
        pub max_identifiers_per_box: Option<usize>,
        /// Most identifiers one box may be adding at once (codes sent, not yet
        /// confirmed), at most 256 [default: 4].
        #[arg(long, env = "ROSSBY_MAX_PENDING_IDENTIFIERS_PER_BOX", value_name = "N")]
        pub max_pending_identifiers_per_box: Option<usize>,
        /// Most queue entries deleted per transaction [default: 1024].
        #[arg(long, env = "ROSSBY_MAX_DELETES_PER_TXN", value_name = "N")]
        pub max_deletes_per_txn: Option<usize>,
        /// Days an unacknowledged envelope is kept [default: 30].
        #[arg(long, env = "ROSSBY_RETENTION_DAYS", value_name = "DAYS")]
        pub retention_days: Option<u64>,
        /// Seconds a send stays idempotent by message id [default: 86400].
        #[arg(long, env = "ROSSBY_DEDUP_WINDOW_SECS", value_name = "SECS")]
        pub dedup_window_secs: Option<u64>,
    }
}

impl LimitOptions {
    /// Sets `api.limits`, checked, also against `api.max_frame_bytes` (so
    /// [`super::ApiOptions::apply`] comes first); unset options keep the
    /// current limits.
    pub fn apply(self, api: &mut ApiSettings) -> Result<()> {
        let l = &mut api.limits;
        l.max_payload_bytes = at_least(
            "max-payload-bytes",
            self.max_payload_bytes.unwrap_or(l.max_payload_bytes),
            1,
        )?;
        l.max_devices_per_box = at_least(
            "max-devices-per-box",
            self.max_devices_per_box.unwrap_or(l.max_devices_per_box),
            1,
        )?;
        l.max_key_packages_per_device = at_least(
            "max-key-packages-per-device",
            self.max_key_packages_per_device
                .unwrap_or(l.max_key_packages_per_device),
            1,
        )?;
        l.max_key_package_bytes = at_least(
            "max-key-package-bytes",
            self.max_key_package_bytes
                .unwrap_or(l.max_key_package_bytes),
            1,
        )?;
        l.max_queue_envelopes = at_least(
            "max-queue-envelopes",
            self.max_queue_envelopes.unwrap_or(l.max_queue_envelopes),
            1,
        )?;
        l.max_relations_per_box = at_least(
            "max-relations-per-box",
            self.max_relations_per_box
                .unwrap_or(l.max_relations_per_box),
            1,
        )?;
        l.max_identifiers_per_box = between(
            "max-identifiers-per-box",
            self.max_identifiers_per_box
                .unwrap_or(l.max_identifiers_per_box),
            1,
            rossby_storage::tables::lookup::MAX_IDENTIFIERS_LIMIT,
        )?;
        l.max_pending_identifiers_per_box = between(
            "max-pending-identifiers-per-box",
            self.max_pending_identifiers_per_box
                .unwrap_or(l.max_pending_identifiers_per_box),
            1,
            rossby_storage::tables::identifiers::MAX_PENDING_LIMIT,
        )?;
        l.max_deletes_per_txn = at_least(
            "max-deletes-per-txn",
            self.max_deletes_per_txn.unwrap_or(l.max_deletes_per_txn),
            1,
        )?;
        let days = self.retention_days.unwrap_or(30);
        if !(1..=3650).contains(&days) {
            return Err(Error::Config(format!(
                "--retention-days must be between 1 and 3650 (got {days})"
            )));
        }
        l.retention_ms = days * 86_400_000;
        let dedup = secs(
            "dedup-window-secs",
            self.dedup_window_secs.unwrap_or(86_400),
            1,
            days * 86_400,
        )?;
        l.dedup_window_ms = dedup.as_secs() * 1000;
        l.max_queue_bytes = self.max_queue_bytes.unwrap_or(l.max_queue_bytes);
        // A queue must be able to hold at least one envelope of the largest size.
        if l.max_queue_bytes < l.max_payload_bytes as u64 + 1024 {
            return Err(Error::Config(format!(
                "--max-queue-bytes ({}) must exceed --max-payload-bytes ({}) by at least 1024",
                l.max_queue_bytes, l.max_payload_bytes
            )));
        }
        // A payload, KeyPackage or profile that cannot fit in a frame could never be
        // sent: catch the contradiction at start rather than at the first request.
        for (flag, value) in [
            ("max-payload-bytes", l.max_payload_bytes),
            ("max-key-package-bytes", l.max_key_package_bytes),
        ] {
            if value >= api.max_frame_bytes {
                return Err(Error::Config(format!(
                    "--{flag} ({value}) must be below --max-frame-bytes ({})",
                    api.max_frame_bytes
                )));
            }
        }
        Ok(())
    }
}
