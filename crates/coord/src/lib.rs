//! Coordination state in etcd: a small key-value trait (with an in-memory
//! implementation for unit tests, feature `testing`, and one [`conformance`]
//! suite both pass), claims that lapse when their owner dies, and leader
//! election.
//!
//! Leases ride out short etcd outages: a renewal that fails is retried until
//! the lease's TTL has passed since the last renewal etcd confirmed, and only
//! then is the lease (and what it holds) counted as lost.
//!
//! Every key batchmill writes lives under `/batchmill/`.

mod etcd;
mod fenced;
mod leader;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
mod mem;

pub use etcd::{Claim, Etcd, Leadership};
pub use fenced::FencedKv;
pub use leader::LeaderChannel;
#[cfg(any(test, feature = "testing"))]
pub use mem::MemKv;

use async_trait::async_trait;
use futures::stream::BoxStream;

/// Errors from the coordination store.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("watch on {prefix} ended")]
    WatchEnded { prefix: String },
    #[error("election {name} has no leader")]
    NoLeader { name: String },
    #[error("lease of {key} was lost")]
    LeaseLost { key: String },
    #[error("etcd did not answer within {seconds} s")]
    TimedOut { seconds: u64 },
    #[error("encoding the value of {key}: {message}")]
    Encode { key: String, message: String },
    #[error("TLS to etcd: {0}")]
    Tls(#[from] batchmill_core::client_tls::Unreadable),
}

impl CoordError {
    /// Whether the same call may succeed later: etcd was unreachable, slow
    /// or electing a leader.
    pub fn is_transient(&self) -> bool {
        match self {
            CoordError::Etcd(e) => match e {
                etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
                etcd_client::Error::GRpcStatus(status) => batchmill_core::RemoteError::from(status).is_retryable(),
                _ => false,
            },
            CoordError::WatchEnded { .. } | CoordError::NoLeader { .. } | CoordError::TimedOut { .. } => true,
            CoordError::LeaseLost { .. } | CoordError::Encode { .. } | CoordError::Tls(_) => false,
        }
    }
}

pub type Result<T, E = CoordError> = std::result::Result<T, E>;

/// The election the scheduler leader wins, with its gRPC URL as the value:
/// workers and gateways find the leader there ([`LeaderChannel`]).
pub const SCHEDULER_ELECTION: &str = "/batchmill/scheduler/leader";

/// A change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// The key-value operations services use.
#[async_trait]
pub trait Kv: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()>;
    /// Writes every pair atomically, in one transaction.
    async fn put_all(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<()>;
    async fn delete(&self, key: &str) -> Result<()>;
    /// Every pair under `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// The pairs under `prefix` as `Put` events, then every later change,
    /// with nothing missed between the two.
    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, Result<KvEvent>>>;
}
