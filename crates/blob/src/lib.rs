//! Objects in S3 (any S3-compatible endpoint), behind the small
//! [`ObjectStore`] trait so that services run against [`mem::MemBlob`] in
//! unit tests (feature `testing`); both pass the same [`conformance`] suite.
//!
//! Results, inputs, manifests and pipeline files are kept here. The
//! endpoint and credentials come from the standard `AWS_*` environment
//! variables; a custom endpoint (such as a local server) uses path-style
//! addressing. Errors say whether trying again can help
//! ([`BlobError::is_transient`]): S3 unreachable, a timeout, a 5xx or a
//! throttle is transient; a missing object or bucket, or refused
//! credentials, is not.

mod s3;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
pub mod mem;

pub use s3::{Blob, S3Config};

use async_trait::async_trait;
use bytes::Bytes;

/// Errors from object storage.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("s3 {op} s3://{bucket}/{key}: {message}")]
    S3 { op: &'static str, bucket: String, key: String, message: String, transient: bool },
    #[error("s3://{bucket}/{key} not found")]
    NotFound { bucket: String, key: String },
    #[error("bucket {bucket:?} does not exist")]
    NoSuchBucket { bucket: String },
}

impl BlobError {
    /// Whether the same call may succeed later, unchanged.
    pub fn is_transient(&self) -> bool {
        match self {
            BlobError::S3 { transient, .. } => *transient,
            BlobError::NotFound { .. } | BlobError::NoSuchBucket { .. } => false,
        }
    }
}

pub type Result<T, E = BlobError> = std::result::Result<T, E>;

/// A streaming reader of one object.
pub type Reader = Box<dyn tokio::io::AsyncBufRead + Send + Unpin>;

/// The smallest part of a multipart upload but the last (S3's limit).
pub const MIN_PART: usize = 5 * 1024 * 1024;

/// One page of a listing: keys in order, each one's size, and where the
/// next page starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub keys: Vec<String>,
    /// Bytes of each object, in the order of `keys`.
    pub sizes: Vec<u64>,
    /// Pass it back to get the next page; None after the last.
    pub next: Option<String>,
}

/// The object operations services use.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Writes an object, replacing any at the same key.
    async fn put(&self, bucket: &str, key: &str, body: Bytes, content_type: &str) -> Result<()>;
    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes>;
    /// A streaming reader of an object, for reading it line by line.
    async fn reader(&self, bucket: &str, key: &str) -> Result<Reader>;
    /// One page (up to 1,000 keys) of the keys under `prefix`, in key order,
    /// from where `page` (a previous page's `next`) says.
    async fn list_page(&self, bucket: &str, prefix: &str, page: Option<String>) -> Result<Page>;
    /// Creates `bucket` unless it exists.
    async fn ensure_bucket(&self, bucket: &str) -> Result<()>;
    /// A URL that GETs the object without credentials until `expires`
    /// from now (S3's presigned URL). Signing needs no call to the store.
    async fn presign_get(&self, bucket: &str, key: &str, expires: std::time::Duration) -> Result<String>;
    /// Deletes an object; deleting one that is not there succeeds (as in S3).
    async fn delete(&self, bucket: &str, key: &str) -> Result<()>;
    /// Starts a multipart upload of an object; returns its upload id.
    async fn start_upload(&self, bucket: &str, key: &str, content_type: &str) -> Result<String>;
    /// Uploads part `number` (from 1; every part but the last at least
    /// [`MIN_PART`]); returns its ETag.
    async fn upload_part(&self, bucket: &str, key: &str, upload: &str, number: i32, body: Bytes) -> Result<String>;
    /// Completes an upload from its parts, (number, ETag) in order: the
    /// object appears whole.
    async fn complete_upload(&self, bucket: &str, key: &str, upload: &str, parts: Vec<(i32, String)>) -> Result<()>;
    /// Abandons an upload; its parts are dropped.
    async fn abort_upload(&self, bucket: &str, key: &str, upload: &str) -> Result<()>;

    /// Every key under `prefix`, following pages.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut page = None;
        loop {
            let listed = self.list_page(bucket, prefix, page).await?;
            keys.extend(listed.keys);
            match listed.next {
                Some(next) => page = Some(next),
                None => return Ok(keys),
            }
        }
    }
}
