//! Where attachment ciphertext lives: an object store through the
//! `object_store` crate, a directory on local disk by default
//! (`<data-dir>/blobs`) or an S3-compatible bucket in deployments.
//!
//! Each part of a blob is its own object, written whole by one `put`: the same
//! on a local file system and on S3, with no multipart upload state to lose when
//! a gateway or a connection goes away. Objects are named by a hash of the blob
//! id, never the id itself, since the id is the capability to download the blob
//! and a bucket listing must not hand it out:
//!
//! ```text
//! <prefix>/<h[0..2]>/<h[2..64]>/<part index, 8 decimal digits>
//! h = hex(SHA-256("rossby/blob-object/v1" || blob id))
//! ```
//!
//! The two-character fan-out keeps directories small on a local file system.
//! A blob's objects are deleted by listing its directory, so the sweeper needs
//! nothing but the blob id (a purged account's records are gone by then).

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;

/// Domain label of the object-name hash.
const NAME_LABEL: &[u8] = b"rossby/blob-object/v1";

/// Where blobs are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobStoreConfig {
    /// A directory on local disk (created at start).
    Local(PathBuf),
    /// An S3-compatible bucket. Credentials come from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...) or
    /// the instance role, never from the configuration file.
    S3 {
        /// The bucket.
        bucket: String,
        /// A key prefix inside it ("" for none).
        prefix: String,
        /// Endpoint URL of an S3-compatible service; `None`: AWS.
        endpoint: Option<String>,
        /// Region; `None`: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
        region: Option<String>,
        /// Allow plain HTTP (tests against a local server).
        allow_http: bool,
    },
}

impl BlobStoreConfig {
    /// Parses `--blob-store`: `s3://bucket[/prefix]`, `file:///dir`, or a plain
    /// directory path.
    pub fn parse(
        url: &str,
        endpoint: Option<String>,
        region: Option<String>,
        allow_http: bool,
    ) -> std::result::Result<Self, String> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid =
                |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
            if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(valid) {
                return Err(format!(
                    "--blob-store {url:?}: the bucket must have 3 to 63 lower-case letters, digits, '-' or '.'"
                ));
            }
            let prefix = prefix.trim_matches('/').to_string();
            if ObjectPath::parse(&prefix).is_err() {
                return Err(format!(
                    "--blob-store {url:?}: the prefix is not a valid object path"
                ));
            }
            if let Some(endpoint) = &endpoint
                && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
            {
                return Err(format!(
                    "--blob-s3-endpoint {endpoint:?} must be an http:// or https:// URL"
                ));
            }
            return Ok(BlobStoreConfig::S3 {
                bucket: bucket.to_string(),
                prefix,
                endpoint,
                region,
                allow_http,
            });
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(format!(
                "--blob-store {url:?}: use a directory, file:///dir or s3://bucket/prefix"
            ));
        }
        let dir = url.strip_prefix("file://").unwrap_or(url);
        if dir.is_empty() {
            return Err("--blob-store must not be empty".into());
        }
        Ok(BlobStoreConfig::Local(PathBuf::from(dir)))
    }
}

crate::config::options! {
    /// Where attachment ciphertext is stored.
    #[derive(clap::Args, serde::Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "Attachments")]
    pub struct BlobStoreOptions {
        /// Where attachment ciphertext is stored: a directory, `file:///dir`, or
        /// `s3://bucket/prefix` [default: <data-dir>/blobs].
        #[arg(long, env = "ROSSBY_BLOB_STORE", value_name = "URL")]
        pub blob_store: Option<String>,
        /// S3 endpoint URL, for S3-compatible stores other than AWS [default: AWS].
        #[arg(long, env = "ROSSBY_BLOB_S3_ENDPOINT", value_name = "URL")]
        pub blob_s3_endpoint: Option<String>,
        /// S3 region [default: $AWS_REGION, else us-east-1].
        #[arg(long, env = "ROSSBY_BLOB_S3_REGION", value_name = "REGION")]
        pub blob_s3_region: Option<String>,
        /// Allow plain HTTP to the S3 endpoint (tests) [default: false].
        #[arg(long, env = "ROSSBY_BLOB_S3_ALLOW_HTTP", value_name = "BOOL")]
        pub blob_s3_allow_http: Option<bool>,
    }
}

impl BlobStoreOptions {
    /// The store, checked; by default the directory `blobs` in `data_dir`.
    pub fn into_config(self, data_dir: &std::path::Path) -> Result<BlobStoreConfig> {
        let endpoint = self.blob_s3_endpoint;
        let region = self.blob_s3_region;
        let allow_http = self.blob_s3_allow_http.unwrap_or(false);
        let store = match self.blob_store {
            None => BlobStoreConfig::Local(data_dir.join("blobs")),
            Some(url) => BlobStoreConfig::parse(&url, endpoint.clone(), region.clone(), allow_http)
                .map_err(Error::Config)?,
        };
        if !matches!(store, BlobStoreConfig::S3 { .. })
            && (endpoint.is_some() || region.is_some() || allow_http)
        {
            return Err(Error::Config(
                "--blob-s3-endpoint, --blob-s3-region and --blob-s3-allow-http need an s3:// --blob-store"
                    .into(),
            ));
        }
        Ok(store)
    }
}

/// Why an object-store call failed (logged; clients see `UNAVAILABLE`).
#[derive(Debug, thiserror::Error)]
#[error("object store {operation} failed: {detail}")]
pub struct BlobStoreError {
    /// The operation (`put`, `get`, `delete`, `list`).
    pub operation: &'static str,
    /// The store's complaint.
    pub detail: String,
}

/// The object store of attachment parts, with metrics.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobStore({})", self.store)
    }
}

impl BlobStore {
    /// Opens the configured store (creating a local directory).
    pub fn open(config: &BlobStoreConfig, metrics: Arc<Metrics>) -> Result<Self> {
        match config {
            BlobStoreConfig::Local(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io("cannot create the blob directory", dir, e))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| Error::Config(format!("blob store {}: {e}", dir.display())))?
                    // Deleting a blob's last part removes its emptied directories.
                    .with_automatic_cleanup(true);
                Ok(Self::with_store(Arc::new(local), "", metrics))
            }
            BlobStoreConfig::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                allow_http,
            } => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(*allow_http);
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                let region = region
                    .clone()
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                    .unwrap_or_else(|| "us-east-1".into());
                builder = builder.with_region(region);
                // The HTTP client's TLS needs a process-wide crypto provider; the
                // gateway's TLS is ring, so is this one. Already installed is fine.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let s3 = builder
                    .build()
                    .map_err(|e| Error::Config(format!("blob store s3://{bucket}: {e}")))?;
                Ok(Self::with_store(Arc::new(s3), prefix, metrics))
            }
        }
    }

    /// A blob store over any object store, under `prefix` (tests).
    pub fn with_store(store: Arc<dyn ObjectStore>, prefix: &str, metrics: Arc<Metrics>) -> Self {
        BlobStore {
            store,
            prefix: ObjectPath::from(prefix),
            metrics,
        }
    }

    /// The directory of a blob's objects: a hash of its id.
    pub fn blob_dir(&self, blob_id: &[u8]) -> ObjectPath {
        let digest = Sha256::new()
            .chain_update(NAME_LABEL)
            .chain_update(blob_id)
            .finalize();
        let name = hex::encode(digest);
        let (fan, rest) = name.split_at(2);
        self.prefix.clone().join(fan).join(rest)
    }

    /// The object of part `index` of a blob.
    pub fn part_path(&self, blob_id: &[u8], index: u32) -> ObjectPath {
        self.blob_dir(blob_id).join(format!("{index:08}"))
    }

    fn outcome<T>(
        &self,
        operation: &'static str,
        result: object_store::Result<T>,
    ) -> std::result::Result<Option<T>, BlobStoreError> {
        match result {
            Ok(value) => {
                self.metrics.blob_store_operation(operation, false);
                Ok(Some(value))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.metrics.blob_store_operation(operation, false);
                Ok(None)
            }
            Err(err) => {
                self.metrics.blob_store_operation(operation, true);
                Err(BlobStoreError {
                    operation,
                    detail: err.to_string(),
                })
            }
        }
    }

    /// Stores part `index` of a blob (replacing it if present).
    pub async fn put_part(
        &self,
        blob_id: &[u8],
        index: u32,
        data: Bytes,
    ) -> std::result::Result<(), BlobStoreError> {
        let len = data.len() as u64;
        let result = self
            .store
            .put(
                &self.part_path(blob_id, index),
                PutPayload::from_bytes(data),
            )
            .await;
        self.outcome("put", result)?;
        self.metrics.blob_bytes("uploaded", len);
        Ok(())
    }

    /// Part `index` of a blob; `None` when it is not stored.
    pub async fn get_part(
        &self,
        blob_id: &[u8],
        index: u32,
    ) -> std::result::Result<Option<Bytes>, BlobStoreError> {
        let path = self.part_path(blob_id, index);
        let Some(found) = self.outcome("get", self.store.get(&path).await)? else {
            return Ok(None);
        };
        let Some(bytes) = self.outcome("get", found.bytes().await)? else {
            return Ok(None);
        };
        self.metrics.blob_bytes("downloaded", bytes.len() as u64);
        Ok(Some(bytes))
    }

    /// Deletes every object of a blob; returns how many bytes were deleted.
    /// Objects already gone are fine (another gateway may be deleting the same
    /// blob).
    pub async fn delete_blob(&self, blob_id: &[u8]) -> std::result::Result<u64, BlobStoreError> {
        let dir = self.blob_dir(blob_id);
        let mut listing = self.store.list(Some(&dir));
        let mut objects = Vec::new();
        let mut failure = None;
        while let Some(item) = listing.next().await {
            match self.outcome("list", item) {
                Ok(Some(meta)) => objects.push(meta),
                Ok(None) => {}
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        if let Some(err) = failure {
            return Err(err);
        }
        if objects.is_empty() {
            // A listing that yields nothing counts as one list call.
            self.metrics.blob_store_operation("list", false);
        }
        let mut deleted = 0;
        for meta in objects {
            if self
                .outcome("delete", self.store.delete(&meta.location).await)?
                .is_some()
            {
                deleted += meta.size;
            }
        }
        self.metrics.blob_bytes("deleted", deleted);
        Ok(deleted)
    }

    /// How many objects a blob has (tests and operations).
    pub async fn count_objects(
        &self,
        blob_id: &[u8],
    ) -> std::result::Result<usize, BlobStoreError> {
        let dir = self.blob_dir(blob_id);
        let mut listing = self.store.list(Some(&dir));
        let mut count = 0;
        while let Some(item) = listing.next().await {
            if self.outcome("list", item)?.is_some() {
                count += 1;
            }
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_local_or_s3_stores() {
        assert_eq!(
            BlobStoreConfig::parse("/var/lib/rossby/blobs", None, None, false),
            Ok(BlobStoreConfig::Local("/var/lib/rossby/blobs".into()))
        );
        assert_eq!(
            BlobStoreConfig::parse("file:///tmp/b", None, None, false),
            Ok(BlobStoreConfig::Local("/tmp/b".into()))
        );
        assert_eq!(
            BlobStoreConfig::parse(
                "s3://my-bucket/a/b/",
                Some("http://127.0.0.1:9".into()),
                None,
                true
            ),
            Ok(BlobStoreConfig::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into(),
                endpoint: Some("http://127.0.0.1:9".into()),
                region: None,
                allow_http: true,
            })
        );
        for bad in ["s3://", "s3://UPPER", "gs://bucket", ""] {
            assert!(
                BlobStoreConfig::parse(bad, None, None, false).is_err(),
                "{bad}"
            );
        }
        assert!(
            BlobStoreConfig::parse("s3://bucket", Some("ftp://x".into()), None, false).is_err()
        );
    }

    #[tokio::test]
    async fn objects_are_named_by_a_hash_and_deleted_by_blob() {
        let store = BlobStore::with_store(
            Arc::new(object_store::memory::InMemory::new()),
            "p",
            Arc::new(Metrics::new()),
        );
        let id = [7u8; 32];
        let path = store.part_path(&id, 3).to_string();
        assert!(path.starts_with("p/"), "{path}");
        assert!(path.ends_with("/00000003"), "{path}");
        assert!(
            !path.contains(&hex::encode(id)),
            "the id must not show: {path}"
        );
        store
            .put_part(&id, 0, Bytes::from_static(b"abc"))
            .await
            .unwrap();
        store
            .put_part(&id, 1, Bytes::from_static(b"de"))
            .await
            .unwrap();
        store
            .put_part(&[8; 32], 0, Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(store.get_part(&id, 1).await.unwrap().unwrap(), "de");
        assert!(store.get_part(&id, 2).await.unwrap().is_none());
        assert_eq!(store.delete_blob(&id).await.unwrap(), 5);
        assert_eq!(store.count_objects(&id).await.unwrap(), 0);
        assert_eq!(store.count_objects(&[8; 32]).await.unwrap(), 1);
        // Deleting again finds nothing and is no error.
        assert_eq!(store.delete_blob(&id).await.unwrap(), 0);
        let m = &store.metrics;
        assert_eq!(
            m.blob_store_errors_total.with_label_values(&["put"]).get(),
            0
        );
        assert_eq!(
            m.blob_store_operations_total
                .with_label_values(&["put"])
                .get(),
            3
        );
        assert_eq!(m.blob_bytes_total.with_label_values(&["deleted"]).get(), 5);
    }
}
