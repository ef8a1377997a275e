//! An in-memory [`Kv`] for unit tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use crate::{Kv, KvEvent, Result};

/// A [`Kv`] held in memory; clones share the same map.
#[derive(Clone)]
pub struct MemKv {
    inner: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    events: broadcast::Sender<KvEvent>,
}

impl Default for MemKv {
    fn default() -> Self {
        MemKv { inner: Arc::default(), events: broadcast::channel(4096).0 }
    }
}

impl MemKv {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Kv for MemKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.map().get(key).cloned())
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.put_all(vec![(key.to_owned(), value)]).await
    }

    async fn put_all(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        let mut map = self.map();
        for (key, value) in pairs {
            map.insert(key.clone(), value.clone());
            let _ = self.events.send(KvEvent::Put { key, value });
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        if self.map().remove(key).is_some() {
            let _ = self.events.send(KvEvent::Delete { key: key.to_owned() });
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .map()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, Result<KvEvent>>> {
        // Subscribe before the snapshot (both under the lock) so nothing is missed.
        let (snapshot, rx) = {
            let map = self.map();
            let rx = self.events.subscribe();
            let snapshot: Vec<_> = map
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| Ok(KvEvent::Put { key: k.clone(), value: v.clone() }))
                .collect();
            (snapshot, rx)
        };
        let prefix = prefix.to_owned();
        let changes = tokio_stream_from(rx).filter(move |e| {
            let key = match e {
                KvEvent::Put { key, .. } | KvEvent::Delete { key } => key,
            };
            std::future::ready(key.starts_with(&prefix))
        });
        Ok(futures::stream::iter(snapshot).chain(changes.map(Ok)).boxed())
    }
}

fn tokio_stream_from(rx: broadcast::Receiver<KvEvent>) -> BoxStream<'static, KvEvent> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn mem_kv_conforms() {
        crate::conformance::run(&super::MemKv::default(), "/batchmill/test").await;
    }
}
