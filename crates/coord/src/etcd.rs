//! [`Kv`] on etcd, plus leases and elections.

use std::time::Duration;

use async_trait::async_trait;
use batchmill_core::metrics::{ETCD, Timed};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{CoordError, Kv, KvEvent, Result};

/// A connection to etcd; clones share it.
#[derive(Clone)]
pub struct Etcd {
    pub(crate) client: Client,
}

/// TLS to etcd for this process, set once by `main` ([`Etcd::use_tls`]).
static TLS: std::sync::OnceLock<etcd_client::TlsOptions> = std::sync::OnceLock::new();

impl Etcd {
    /// Makes every later [`Etcd::connect`] of this process speak TLS to
    /// etcd (its endpoints `https://`): trusting `tls.ca`, presenting
    /// `tls.identity` if given. Call it once, before connecting.
    pub fn use_tls(tls: &batchmill_core::client_tls::ClientTls) -> Result<()> {
        use batchmill_core::client_tls::ClientTls;
        let mut options = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(ClientTls::read(&tls.ca)?));
        if let Some((cert, key)) = &tls.identity {
            let (cert, key) = (ClientTls::read(cert)?, ClientTls::read(key)?);
            options = options.identity(etcd_client::Identity::from_pem(cert, key));
        }
        let _ = TLS.set(options);
        Ok(())
    }

    /// Connects to `endpoints`, retrying for up to `patience`.
    pub async fn connect(endpoints: &[String], patience: Duration) -> Result<Etcd> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let mut options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(10));
            if let Some(tls) = TLS.get() {
                options = options.with_tls(tls.clone());
            }
            match Client::connect(endpoints, Some(options)).await {
                Ok(mut client) => match client.status().await {
                    Ok(_) => return Ok(Etcd { client }),
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        warn!(error = %e, "etcd not ready; retrying");
                    }
                    Err(e) => return Err(e.into()),
                },
                Err(e) if tokio::time::Instant::now() < deadline => {
                    warn!(error = %e, "etcd unreachable; retrying");
                }
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Creates `key` with `value` under a lease of `ttl` unless the key
    /// exists, and keeps the lease alive until the claim is finished. None
    /// if someone else holds (or held) the key. If this process dies the
    /// claim lapses when the lease expires.
    pub async fn claim(&self, key: String, value: Vec<u8>, ttl: Duration) -> Result<Option<Claim>> {
        let mut client = self.client.clone();
        let lease = client.lease_grant(ttl.as_secs().max(1) as i64, None).timed(&ETCD, "lease_grant").await?.id();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, Some(PutOptions::new().with_lease(lease)))]);
        if !client.txn(txn).await?.succeeded() {
            let _ = client.lease_revoke(lease).await;
            return Ok(None);
        }
        let stop = CancellationToken::new();
        let keeper = tokio::spawn({
            let (mut client, stop, key) = (client.clone(), stop.clone(), key.clone());
            async move {
                if let Err(e) = keep_alive(&mut client, lease, ttl, &stop).await {
                    warn!(%key, error = %e, "claim's lease lost");
                }
            }
        });
        Ok(Some(Claim { client, key, lease, stop, keeper }))
    }

    /// Campaigns in election `name` with `value` (such as the leader's
    /// address) and returns once this process leads.
    ///
    /// Candidates are keys `<name>/<lease>` under their own leases, and lead
    /// in the order they were created (as etcd's election API orders them,
    /// so its `Leader` call agrees). It is built on transactions and watches
    /// rather than that API's `Campaign`: etcd resigns a `Campaign` call the
    /// client gave up on (a request timeout while another process leads),
    /// deleting the candidate's key, which a repeated call could already
    /// have taken as its own; that candidate then led with no key, where
    /// no worker found it and a second candidate could win too.
    pub async fn campaign(&self, name: &str, value: &str, ttl: Duration) -> Result<Leadership> {
        let mut client = self.client.clone();
        let lease = client.lease_grant(ttl.as_secs().max(1) as i64, None).timed(&ETCD, "lease_grant").await?.id();
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let keeper = {
            let (mut client, lost, stop) = (client.clone(), lost.clone(), stop.clone());
            tokio::spawn(async move {
                if let Err(e) = keep_alive(&mut client, lease, ttl, &stop).await {
                    warn!(error = %e, "leadership lease lost");
                }
                lost.cancel();
            })
        };
        let key = format!("{name}/{lease:x}");
        let leadership =
            Leadership { lost: lost.clone(), stop, keeper, client: client.clone(), lease, key: key.clone() };
        let wait = async {
            let revision = candidacy(&mut client, &key, value, lease).await?;
            wait_for_earlier(&mut client, name, revision).await?;
            // Still a candidate: the lease has not lapsed meanwhile.
            if client.get(key.as_str(), None).await?.kvs().is_empty() {
                return Err(CoordError::LeaseLost { key: key.clone() });
            }
            Ok(())
        };
        let result = tokio::select! {
            r = wait => r,
            () = lost.cancelled() => Err(CoordError::LeaseLost { key: key.clone() }),
        };
        match result {
            Ok(()) => {
                info!(election = name, %key, "won election");
                Ok(leadership)
            }
            Err(e) => {
                leadership.resign().await;
                Err(e)
            }
        }
    }

    /// Revokes `lease` (and deletes the keys under it); one that has
    /// expired already counts as revoked.
    pub async fn revoke(&self, lease: i64) -> Result<()> {
        match self.client.clone().lease_revoke(lease).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The value the current leader of election `name` campaigned with:
    /// the value of its oldest candidate key.
    pub async fn leader(&self, name: &str) -> Result<String> {
        let options = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
        let resp = self.client.clone().get(format!("{name}/"), Some(options)).await?;
        let kv = resp.kvs().first().ok_or_else(|| CoordError::NoLeader { name: name.to_owned() })?;
        Ok(String::from_utf8_lossy(kv.value()).into_owned())
    }
}

/// Creates candidate `key` under `lease` unless it exists (a retried
/// request that had already succeeded) and returns its create revision.
async fn candidacy(client: &mut Client, key: &str, value: &str, lease: i64) -> Result<i64> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))])
        .or_else([TxnOp::get(key, None)]);
    loop {
        match client.txn(txn.clone()).await {
            Ok(resp) if resp.succeeded() => return Ok(resp.header().map_or(0, |h| h.revision())),
            Ok(resp) => {
                let existing = resp.op_responses().into_iter().find_map(|op| match op {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.create_revision()),
                    _ => None,
                });
                if let Some(revision) = existing {
                    return Ok(revision);
                }
            }
            Err(e) => warn!(%key, error = %e, "campaign request failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Returns once no key under `<name>/` was created before `revision`.
async fn wait_for_earlier(client: &mut Client, name: &str, revision: i64) -> Result<()> {
    let prefix = format!("{name}/");
    loop {
        let options = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(revision - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1);
        let resp = match client.get(prefix.as_str(), Some(options)).await {
            Ok(resp) => resp,
            Err(e) => {
                warn!(election = name, error = %e, "campaign request failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let Some(earlier) = resp.kvs().first() else { return Ok(()) };
        // Wait for that key's deletion, from just after the read.
        let after = resp.header().map_or(0, |h| h.revision()) + 1;
        let options = WatchOptions::new().with_start_revision(after);
        let mut stream = match client.watch(earlier.key(), Some(options)).await {
            Ok(stream) => stream,
            Err(e) => {
                warn!(election = name, error = %e, "campaign watch failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut deleted = false;
        while let Ok(Some(resp)) = stream.message().await {
            if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                deleted = true;
                break;
            }
        }
        if !deleted {
            // The watch ended (etcd restarted, say): look again shortly.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A key held under a kept-alive lease (see [`Etcd::claim`]).
pub struct Claim {
    client: Client,
    key: String,
    lease: i64,
    stop: CancellationToken,
    keeper: tokio::task::JoinHandle<()>,
}

impl Claim {
    /// Replaces the claimed value with `value`, kept without a lease, and
    /// lets the lease go.
    pub async fn finish(mut self, value: Vec<u8>) -> Result<()> {
        self.stop.cancel();
        let _ = (&mut self.keeper).await;
        self.client.put(self.key.as_str(), value, None).await?;
        let _ = self.client.lease_revoke(self.lease).await;
        Ok(())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // An unfinished claim lapses with its lease.
        self.stop.cancel();
    }
}

/// Keeps `lease` (of `ttl`, just granted or renewed) alive until `cancel`
/// (Ok), renewing it every third of `ttl`. A renewal that fails (etcd down
/// or restarting, the stream broken, no answer in time) is retried; the
/// lease counts as lost (Err) only once etcd says it is gone, or once `ttl`
/// has passed since the last renewal etcd confirmed was sent, when it has
/// expired (etcd renews a lease from when a renewal arrives, which is never
/// before it was sent).
async fn keep_alive(client: &mut Client, lease: i64, ttl: Duration, cancel: &CancellationToken) -> Result<()> {
    let mut confirmed = tokio::time::Instant::now();
    let lost = || CoordError::LeaseLost { key: format!("lease {lease:x}") };
    loop {
        match renew(client, lease, ttl, cancel, &mut confirmed).await {
            Ok(()) => return Ok(()),
            Err(e @ CoordError::LeaseLost { .. }) => return Err(e),
            Err(e) => {
                let left = ttl.saturating_sub(confirmed.elapsed());
                if left.is_zero() {
                    warn!(lease = %format!("{lease:x}"), error = %e, "lease expired while etcd was unreachable");
                    return Err(lost());
                }
                warn!(lease = %format!("{lease:x}"), error = %e, left_ms = left.as_millis() as u64, "lease renewal failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(left.min(Duration::from_millis(250))) => {}
                }
            }
        }
    }
}

/// Renews `lease` on one keep-alive stream until `cancel` (Ok) or the stream
/// fails (Err); `confirmed` is when the last confirmed renewal was sent.
async fn renew(
    client: &mut Client,
    lease: i64,
    ttl: Duration,
    cancel: &CancellationToken,
    confirmed: &mut tokio::time::Instant,
) -> Result<()> {
    let period = ttl / 3;
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let sent = tokio::time::Instant::now();
        let round_trip = async {
            keeper.keep_alive().await?;
            let answer = tokio::time::timeout(period, responses.message()).await;
            answer.map_err(|_| CoordError::TimedOut { seconds: period.as_secs() })?.map_err(CoordError::from)
        };
        match round_trip.timed(&ETCD, "lease_keep_alive").await? {
            Some(r) if r.ttl() > 0 => *confirmed = sent,
            Some(_) => return Err(CoordError::LeaseLost { key: format!("lease {lease:x}") }),
            None => return Err(CoordError::WatchEnded { prefix: format!("keep-alive of lease {lease:x}") }),
        }
    }
}

/// This process's leadership of an election.
pub struct Leadership {
    lost: CancellationToken,
    stop: CancellationToken,
    keeper: tokio::task::JoinHandle<()>,
    client: Client,
    pub(crate) lease: i64,
    /// The candidate key, held under `lease` while this leadership lasts.
    pub(crate) key: String,
}

impl Leadership {
    /// The lease the leadership lasts as long as.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Cancelled if leadership is lost (the lease could not be renewed).
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Gives leadership up so a standby takes over at once. Returns the
    /// lease if it could not be revoked (etcd unreachable): etcd may keep it
    /// (and the candidate key under it) for up to its TTL after it is back,
    /// unless [`Etcd::revoke`] revokes it then.
    pub async fn resign(mut self) -> Option<i64> {
        self.stop.cancel();
        let _ = (&mut self.keeper).await;
        self.client.lease_revoke(self.lease).await.err().map(|_| self.lease)
    }
}

#[async_trait]
impl Kv for Etcd {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let resp = self.client.clone().get(key, None).timed(&ETCD, "get").await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.client.clone().put(key, value, None).timed(&ETCD, "put").await?;
        Ok(())
    }

    async fn put_all(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        let ops: Vec<TxnOp> = pairs.into_iter().map(|(k, v)| TxnOp::put(k, v, None)).collect();
        self.client.clone().txn(Txn::new().and_then(ops)).timed(&ETCD, "txn").await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client.clone().delete(key, None).timed(&ETCD, "delete").await?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let resp = self.client.clone().get(prefix, Some(GetOptions::new().with_prefix())).timed(&ETCD, "list").await?;
        Ok(resp.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec())).collect())
    }

    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, Result<KvEvent>>> {
        let mut client = self.client.clone();
        let snapshot = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
        let revision = snapshot.header().map_or(0, |h| h.revision());
        let initial: Vec<Result<KvEvent>> = snapshot
            .kvs()
            .iter()
            .map(|kv| {
                Ok(KvEvent::Put { key: String::from_utf8_lossy(kv.key()).into_owned(), value: kv.value().to_vec() })
            })
            .collect();
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let stream = client.watch(prefix, Some(options)).await?;
        let prefix = prefix.to_owned();
        let changes = futures::stream::unfold(Some((stream, prefix)), |state| async move {
            let (mut stream, prefix) = state?;
            match stream.message().await {
                Ok(Some(resp)) => {
                    let events: Vec<Result<KvEvent>> = resp
                        .events()
                        .iter()
                        .filter_map(|e| {
                            let kv = e.kv()?;
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            Some(Ok(match e.event_type() {
                                EventType::Put => KvEvent::Put { key, value: kv.value().to_vec() },
                                EventType::Delete => KvEvent::Delete { key },
                            }))
                        })
                        .collect();
                    Some((futures::stream::iter(events), Some((stream, prefix))))
                }
                // The stream ends after reporting why.
                Ok(None) => Some((futures::stream::iter(vec![Err(CoordError::WatchEnded { prefix })]), None)),
                Err(e) => Some((futures::stream::iter(vec![Err(e.into())]), None)),
            }
        })
        .flatten();
        Ok(futures::stream::iter(initial).chain(changes).boxed())
    }
}
