//! Coordination state in etcd: a small key-value trait (with an in-memory
//! implementation for unit tests), leased registrations that vanish when
//! their owner dies, and leader election.
//!
//! Every key batchmill writes lives under `/batchmill/`.

mod etcd;
mod leader;
mod mem;

pub use etcd::{Claim, Etcd, Leadership};
pub use leader::LeaderChannel;
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

/// The conformance suite every [`Kv`] implementation passes; `prefix` keeps
/// runs against a shared server apart.
pub async fn conformance(kv: &dyn Kv, prefix: &str) {
    use futures::StreamExt;
    let k = |s: &str| format!("{prefix}/{s}");
    assert_eq!(kv.get(&k("a")).await.expect("get"), None);
    kv.put(&k("a"), b"1".to_vec()).await.expect("put");
    kv.put_all(vec![(k("b"), b"2".to_vec()), (k("c/d"), b"3".to_vec())]).await.expect("put_all");
    assert_eq!(kv.get(&k("a")).await.expect("get"), Some(b"1".to_vec()));
    let listed = kv.list(&format!("{prefix}/")).await.expect("list");
    assert_eq!(listed, vec![(k("a"), b"1".to_vec()), (k("b"), b"2".to_vec()), (k("c/d"), b"3".to_vec())]);
    let mut watch = kv.watch(&format!("{prefix}/c/")).await.expect("watch");
    assert_eq!(
        watch.next().await.expect("snapshot").expect("event"),
        KvEvent::Put { key: k("c/d"), value: b"3".to_vec() }
    );
    kv.put(&k("c/e"), b"4".to_vec()).await.expect("put");
    kv.put(&k("other"), b"5".to_vec()).await.expect("put");
    kv.delete(&k("c/d")).await.expect("delete");
    assert_eq!(
        watch.next().await.expect("event").expect("event"),
        KvEvent::Put { key: k("c/e"), value: b"4".to_vec() }
    );
    assert_eq!(watch.next().await.expect("event").expect("event"), KvEvent::Delete { key: k("c/d") });
    assert_eq!(kv.get(&k("c/d")).await.expect("get"), None);
}
