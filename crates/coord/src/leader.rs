//! Finding the leader of an election and keeping a gRPC channel to it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};
use tracing::info;

use crate::{CoordError, Etcd, Result};

/// A channel to whoever leads election `name`, resolved through etcd and
/// re-resolved after [`LeaderChannel::invalidate`].
#[derive(Clone)]
pub struct LeaderChannel {
    etcd: Etcd,
    name: String,
    current: Arc<Mutex<Option<(String, Channel)>>>,
    dial: Dial,
}

/// Makes a lazy channel to a leader's URL (over TLS, say).
pub type Dial = fn(&str) -> std::result::Result<Channel, tonic::transport::Error>;

fn plain(url: &str) -> std::result::Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?.connect_timeout(Duration::from_secs(3)).tcp_nodelay(true).connect_lazy())
}

impl LeaderChannel {
    pub fn new(etcd: Etcd, name: impl Into<String>) -> LeaderChannel {
        LeaderChannel { etcd, name: name.into(), current: Arc::default(), dial: plain }
    }

    /// Dials leaders with `dial` (such as `batchmill_runtime::dial::channel`).
    #[must_use]
    pub fn dialing(mut self, dial: Dial) -> LeaderChannel {
        self.dial = dial;
        self
    }

    /// A channel to the current leader.
    pub async fn channel(&self) -> Result<Channel> {
        let mut current = self.current.lock().await;
        if let Some((_, channel)) = current.as_ref() {
            return Ok(channel.clone());
        }
        let url = self.etcd.leader(&self.name).await?;
        let channel = (self.dial)(&url)
            .map_err(|_| CoordError::NoLeader { name: format!("{} (bad address {url:?})", self.name) })?;
        info!(election = %self.name, %url, "leader resolved");
        *current = Some((url, channel.clone()));
        Ok(channel)
    }

    /// Forgets the leader, after a call to it failed as unavailable.
    pub async fn invalidate(&self) {
        *self.current.lock().await = None;
    }
}
