//! Writes fenced by a leadership: each is one transaction that first checks
//! that the leader's candidate key is still held under its lease, so a
//! leader that lost its lease can write nothing more, even before it
//! notices (a process paused past its lease, then resumed, still has
//! writes and confirmations in flight). A standby leads only once that key
//! is gone, so nothing the old leader does lands after the new one loaded.
//! Reads and watches are plain.

use async_trait::async_trait;
use batchmill_core::metrics::{ETCD, Timed};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use futures::stream::BoxStream;

use crate::{CoordError, Etcd, Kv, KvEvent, Leadership, Result};

/// etcd, written to only while a leadership lasts.
#[derive(Clone)]
pub struct FencedKv {
    etcd: Etcd,
    key: String,
    lease: i64,
}

impl FencedKv {
    /// `etcd`, fenced by `leadership`.
    pub fn new(etcd: Etcd, leadership: &Leadership) -> FencedKv {
        FencedKv { etcd, key: leadership.key.clone(), lease: leadership.lease }
    }

    /// Runs `ops` if the leadership still holds; [`CoordError::LeaseLost`]
    /// if it does not.
    async fn guarded(&self, ops: Vec<TxnOp>) -> Result<()> {
        let still_leading = Compare::lease(self.key.as_str(), CompareOp::Equal, self.lease);
        let txn = Txn::new().when([still_leading]).and_then(ops);
        let response = self.etcd.client.clone().txn(txn).timed(&ETCD, "txn").await?;
        if !response.succeeded() {
            return Err(CoordError::LeaseLost { key: self.key.clone() });
        }
        Ok(())
    }
}

#[async_trait]
impl Kv for FencedKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.etcd.get(key).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.guarded(vec![TxnOp::put(key, value, None)]).await
    }

    async fn put_all(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        self.guarded(pairs.into_iter().map(|(k, v)| TxnOp::put(k, v, None)).collect()).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.guarded(vec![TxnOp::delete(key, None)]).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.etcd.list(prefix).await
    }

    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, Result<KvEvent>>> {
        self.etcd.watch(prefix).await
    }
}
