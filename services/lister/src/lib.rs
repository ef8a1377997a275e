//! The lister expands a job's input into a stream of items.
//!
//! RPCs: `batchmill.lister.v1.ListerService/ListItems` (server streaming).
//! Depends on: S3 (reads input objects). Items are streamed in chunks;
//! objects are read line by line and never held whole.

mod grpc;
mod items;
pub mod lines;
pub mod sql;

pub use grpc::ListerGrpc;

use std::sync::Arc;

use batchmill_blob::ObjectStore;
use batchmill_core::access::S3Access;
use batchmill_core::{ErrorCode, ServiceError};
use futures::stream::BoxStream;

/// How a lister runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub s3: batchmill_blob::S3Config,
}

/// Serves on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), batchmill_runtime::RuntimeError> {
    let blob = batchmill_blob::Blob::new(&config.s3).await;
    tracing::info!(addr = %listener.local_addr()?, "lister serving");
    batchmill_runtime::ServerBuilder::new()?
        .add_service(ListerGrpc::new(Lister::with_s3(Arc::new(blob), config.s3.clone())).into_service())
        .serve(listener, shutdown)
        .await?;
    tracing::info!("lister stopped");
    Ok(())
}

/// Most items in one streamed chunk.
pub const CHUNK_ITEMS: usize = 512;
/// Most bytes of items in one streamed chunk.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Errors from listing.
#[derive(Debug, thiserror::Error)]
pub enum ListerError {
    #[error("source: {0}")]
    BadSource(String),
    #[error("{uri} {source}")]
    BadLine { uri: String, source: lines::LineError },
    #[error("{0}")]
    Blob(#[from] batchmill_blob::BlobError),
    #[error("reading {uri}: {message}")]
    Read { uri: String, message: String },
    #[error("listing {uri}: {source}")]
    List { uri: String, source: batchmill_blob::BlobError },
    #[error("no S3 object matches the selection under {paths}")]
    NoMatch { paths: String },
    #[error("{0}")]
    Sql(#[from] sql::SqlError),
}

impl ServiceError for ListerError {
    fn code(&self) -> ErrorCode {
        match self {
            ListerError::BadSource(_) | ListerError::BadLine { .. } | ListerError::NoMatch { .. } => {
                ErrorCode::InvalidArgument
            }
            ListerError::List { source: e, .. } | ListerError::Blob(e) => blob_code(e),
            ListerError::Read { .. } | ListerError::Sql(sql::SqlError::Unreachable(_)) => ErrorCode::Unavailable,
            ListerError::Sql(_) => ErrorCode::InvalidArgument,
        }
    }
}

/// What a caller should make of an S3 failure: a missing object or
/// bucket is the caller's to fix; anything else is S3's trouble.
fn blob_code(e: &batchmill_blob::BlobError) -> ErrorCode {
    match e {
        batchmill_blob::BlobError::NotFound { .. } | batchmill_blob::BlobError::NoSuchBucket { .. } => {
            ErrorCode::NotFound
        }
        batchmill_blob::BlobError::S3 { transient: true, .. } => ErrorCode::Unavailable,
        batchmill_blob::BlobError::S3 { transient: false, .. } => ErrorCode::PermissionDenied,
    }
}

/// A source of items, as the lister reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// NDJSON objects, read in order; each non-blank line is one item.
    NdjsonObjects(Vec<batchmill_core::S3Uri>),
    /// The path of each selected object is one item.
    FilePaths(batchmill_core::S3Selection),
    /// Each line of each selected object is one item.
    DelimitedFiles(batchmill_core::S3Selection),
    /// Each object under each folder is one named item.
    Folders(Vec<batchmill_core::job::Folder>),
    /// Each row of a query is one named item.
    Sql(sql::Query),
}

/// The lister's domain: sources in, chunks of items (JSON texts) out.
#[derive(Clone)]
pub struct Lister {
    blob: Arc<dyn ObjectStore>,
    db: Arc<dyn sql::Database>,
    /// The cluster's S3 settings, from which a job's own access is built;
    /// None (unit tests) reads every source through `blob`.
    s3: Option<batchmill_blob::S3Config>,
}

impl Lister {
    pub fn new(blob: Arc<dyn ObjectStore>) -> Lister {
        Lister { blob, db: Arc::new(sql::Postgres), s3: None }
    }

    /// This lister, reading SQL sources from `db`.
    #[must_use]
    pub fn with_database(mut self, db: Arc<dyn sql::Database>) -> Lister {
        self.db = db;
        self
    }

    /// A lister over the cluster's S3, which reads sources that bring their
    /// own access with it.
    pub fn with_s3(blob: Arc<dyn ObjectStore>, s3: batchmill_blob::S3Config) -> Lister {
        Lister { blob, db: Arc::new(sql::Postgres), s3: Some(s3) }
    }

    /// The store to read a source with: the job's own access over the
    /// cluster's endpoint and region where it names none.
    async fn store(&self, access: Option<&S3Access>) -> Arc<dyn ObjectStore> {
        match (access, &self.s3) {
            (Some(a), Some(base)) => {
                let own = base.with_credentials(&a.access_key_id, &a.secret_access_key, &a.region, &a.endpoint);
                Arc::new(batchmill_blob::Blob::new(&own).await)
            }
            _ => self.blob.clone(),
        }
    }

    /// The items of `source` (read with `access` if given) after the first
    /// `skip`, in chunks.
    pub async fn list(
        &self,
        source: Source,
        access: Option<&S3Access>,
        skip: u64,
    ) -> BoxStream<'static, Result<Vec<String>, ListerError>> {
        items::stream(self.store(access).await, self.db.clone(), source, skip)
    }
}
