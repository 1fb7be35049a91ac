//! The attachment limits: sizes, quota, parts and lifetimes.

use super::FRAME_OVERHEAD;
use crate::config::check::{at_least, secs};
use crate::error::{Error, Result};
use rossby_storage::tables::blobs::BlobLimits;

/// Smallest attachment part size accepted.
pub const MIN_PART_BYTES: u32 = 64 * 1024;

crate::config::options! {
    /// What one attachment, upload and account may hold, and for how long.
    #[derive(clap::Args, serde::Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "Attachments")]
    pub struct AttachmentOptions {
        /// Largest attachment, in ciphertext bytes [default: 104857600].
        #[arg(long, env = "ROSSBY_MAX_ATTACHMENT_BYTES", value_name = "BYTES")]
        pub max_attachment_bytes: Option<u64>,
        /// Most attachment bytes one account may store [default: 1073741824].
        #[arg(long, env = "ROSSBY_ATTACHMENT_QUOTA_BYTES", value_name = "BYTES")]
        pub attachment_quota_bytes: Option<u64>,
        /// Bytes per upload part [default: 1048576].
        #[arg(long, env = "ROSSBY_ATTACHMENT_PART_BYTES", value_name = "BYTES")]
        pub attachment_part_bytes: Option<u32>,
        /// Most parts per attachment [default: 1024].
        #[arg(long, env = "ROSSBY_MAX_ATTACHMENT_PARTS", value_name = "N")]
        pub max_attachment_parts: Option<u32>,
        /// Most uploads in progress per account [default: 16].
        #[arg(long, env = "ROSSBY_MAX_UPLOADS_IN_PROGRESS", value_name = "N")]
        pub max_uploads_in_progress: Option<u32>,
        /// Seconds to complete an upload before it is deleted [default: 86400].
        #[arg(long, env = "ROSSBY_UPLOAD_TTL_SECS", value_name = "SECS")]
        pub upload_ttl_secs: Option<u64>,
        /// Seconds a completed attachment no send referenced is kept [default: 86400].
        #[arg(long, env = "ROSSBY_UNSENT_ATTACHMENT_TTL_SECS", value_name = "SECS")]
        pub unsent_attachment_ttl_secs: Option<u64>,
        /// Longest an attachment lives after its upload, however often it is sent,
        /// in days; 0: no limit [default: 0].
        #[arg(long, env = "ROSSBY_MAX_ATTACHMENT_AGE_DAYS", value_name = "DAYS")]
        pub max_attachment_age_days: Option<u64>,
    }
}

impl AttachmentOptions {
    /// The limits, checked; a part must fit in a frame of `max_frame_bytes`
    /// (unchecked: the frame limit's own checks come later).
    pub fn into_limits(self, max_frame_bytes: usize) -> Result<BlobLimits> {
        let mut b = BlobLimits::default();
        // A part travels in one frame with its request around it. Without an
        // explicit part size, a smaller frame limit shrinks the default to fit.
        let most = max_frame_bytes.saturating_sub(FRAME_OVERHEAD);
        match self.attachment_part_bytes {
            Some(part) => {
                if part < MIN_PART_BYTES || usize::try_from(part).map_or(true, |p| p > most) {
                    return Err(Error::Config(format!(
                        "--attachment-part-bytes must be between {MIN_PART_BYTES} and {most} (the frame limit less {FRAME_OVERHEAD} bytes); got {part}"
                    )));
                }
                b.part_size = part;
            }
            None => {
                let fits = u32::try_from(most).unwrap_or(u32::MAX);
                b.part_size = b.part_size.min(fits).max(MIN_PART_BYTES);
            }
        }
        b.max_size = at_least(
            "max-attachment-bytes",
            self.max_attachment_bytes.unwrap_or(b.max_size),
            1,
        )?;
        b.quota_bytes = at_least(
            "attachment-quota-bytes",
            self.attachment_quota_bytes.unwrap_or(b.quota_bytes),
            1,
        )?;
        b.max_parts = at_least(
            "max-attachment-parts",
            self.max_attachment_parts.unwrap_or(b.max_parts),
            1,
        )?;
        let explicit = self.max_attachment_bytes.is_some()
            || self.max_attachment_parts.is_some()
            || self.attachment_part_bytes.is_some();
        let fits = u64::from(b.max_parts) * u64::from(b.part_size);
        if !explicit {
            // Only a small frame limit shrank the default part: the default size
            // shrinks with it rather than contradict options nobody set.
            b.max_size = b.max_size.min(fits);
        } else if b.max_size.div_ceil(u64::from(b.part_size)) > u64::from(b.max_parts) {
            return Err(Error::Config(format!(
                "--max-attachment-bytes {} needs more than --max-attachment-parts {} parts of {} bytes",
                b.max_size, b.max_parts, b.part_size
            )));
        }
        b.max_uploads_in_progress = at_least(
            "max-uploads-in-progress",
            self.max_uploads_in_progress
                .unwrap_or(b.max_uploads_in_progress),
            1,
        )?;
        b.upload_ttl_ms = secs(
            "upload-ttl-secs",
            self.upload_ttl_secs.unwrap_or(b.upload_ttl_ms / 1000),
            60,
            30 * 86_400,
        )?
        .as_secs()
            * 1000;
        b.unsent_ttl_ms = secs(
            "unsent-attachment-ttl-secs",
            self.unsent_attachment_ttl_secs
                .unwrap_or(b.unsent_ttl_ms / 1000),
            60,
            365 * 86_400,
        )?
        .as_secs()
            * 1000;
        let age_days = self.max_attachment_age_days.unwrap_or(0);
        if age_days > 36_500 {
            return Err(Error::Config(format!(
                "--max-attachment-age-days must be between 0 (no limit) and 36500 (got {age_days})"
            )));
        }
        b.max_age_ms = age_days * 86_400_000;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{err, parse};

    #[test]
    fn attachment_options_have_documented_defaults_and_are_checked() {
        use crate::blobstore::BlobStoreConfig;
        let c = parse(&["--data-dir", "/srv/r"]).unwrap();
        assert_eq!(c.blob_store, BlobStoreConfig::Local("/srv/r/blobs".into()));
        let a = &c.api.attachments;
        assert_eq!(a.max_size, 100 * 1024 * 1024);
        assert_eq!(a.quota_bytes, 1024 * 1024 * 1024);
        assert_eq!(a.part_size, 1024 * 1024);
        assert_eq!(a.max_parts, 1024);
        assert_eq!(a.max_uploads_in_progress, 16);
        assert_eq!(a.upload_ttl_ms, 86_400_000);
        assert_eq!(a.unsent_ttl_ms, 86_400_000);
        assert_eq!(a.max_age_ms, 0, "no limit by default");
        // The default part fits the default frame with its request around it.
        assert!(
            a.part_size as usize + crate::api::attachments::FRAME_OVERHEAD <= c.api.max_frame_bytes
        );
        let c = parse(&[
            "--blob-store",
            "s3://rossby-blobs/eu",
            "--blob-s3-endpoint",
            "http://127.0.0.1:9000",
            "--blob-s3-allow-http",
            "true",
            "--max-attachment-bytes",
            "1000",
            "--attachment-part-bytes",
            "65536",
            "--upload-ttl-secs",
            "600",
            "--max-attachment-age-days",
            "36",
        ])
        .unwrap();
        assert_eq!(
            c.blob_store,
            BlobStoreConfig::S3 {
                bucket: "rossby-blobs".into(),
                prefix: "eu".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: None,
                allow_http: true,
            }
        );
        assert_eq!(c.api.attachments.max_size, 1000);
        assert_eq!(c.api.attachments.part_size, 65536);
        assert_eq!(c.api.attachments.upload_ttl_ms, 600_000);
        assert_eq!(c.api.attachments.max_age_ms, 36 * 86_400_000);
        for (argv, flag) in [
            (
                &["--attachment-part-bytes", "2000000"][..],
                "--attachment-part-bytes",
            ),
            (
                &["--attachment-part-bytes", "1000"][..],
                "--attachment-part-bytes",
            ),
            (
                &["--max-attachment-bytes", "2000000000"][..],
                "--max-attachment-parts",
            ),
            (
                &["--blob-s3-endpoint", "http://x:1"][..],
                "--blob-s3-endpoint",
            ),
            (&["--blob-store", "gs://bucket"][..], "--blob-store"),
            (&["--upload-ttl-secs", "5"][..], "--upload-ttl-secs"),
        ] {
            let message = err(argv);
            assert!(message.contains(flag), "{argv:?}: {message}");
        }
    }
}
