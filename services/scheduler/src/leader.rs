//! Running a scheduler: [`run`] serves gRPC for the life of the process and
//! campaigns for leadership; while it leads (a *term*), an actor owns the
//! jobs and the services answer from it. A term ends when the process stops
//! (the actor's last flush is awaited, then leadership is resigned so a
//! standby takes over at once) or when the leadership lease is lost (etcd
//! unreachable for longer than the lease's TTL): the scheduler then steps
//! down (its workers' sessions close, so they look for the leader again)
//! and campaigns again. It never exits for that.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use batchmill_blob::{Blob, ObjectStore, S3Config};
use batchmill_coord::{CoordError, Etcd, Kv, Leadership, SCHEDULER_ELECTION};
use batchmill_core::{Clock, S3Uri};
use batchmill_proto::enqueuer::v1::enqueuer_service_client::EnqueuerServiceClient;
use batchmill_proto::lister::v1::lister_service_client::ListerServiceClient;
use batchmill_queue::{DeliveryPolicy, JetStreamQueue, Queue, QueueError};
use batchmill_runtime::RuntimeError;
use batchmill_runtime::health::Health;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::actor::Scheduler;
use crate::grpc::{JobsGrpc, PipelinesGrpc, SessionGrpc};
use crate::pipelines::Pipelines;
use crate::ports::{Ports, SourceProbe};
use crate::state::{Settings, State};

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub etcd_endpoints: Vec<String>,
    pub nats_url: String,
    pub s3: S3Config,
    /// gRPC URL of the enqueuer.
    pub enqueuer_url: String,
    /// gRPC URL of the lister, which checks S3 inputs at submission.
    pub lister_url: String,
    /// URL other services reach this scheduler at; None: http://<listen address>.
    pub advertise_url: Option<String>,
    /// Results location of jobs that name none.
    pub output_uri: S3Uri,
    /// Where inline inputs are staged.
    pub staging_uri: S3Uri,
    /// Where deployed pipelines' files are kept.
    pub pipelines_uri: S3Uri,
    /// How batches are delivered by default.
    pub policy: DeliveryPolicy,
    /// TTL of the leadership lease: how long a dead leader keeps a standby waiting.
    pub lease_ttl: Duration,
    /// The cluster's secret key, which seals jobs' own credentials; None
    /// refuses jobs that bring any.
    pub secret_key: Option<batchmill_core::sealed::ClusterKey>,
    /// The admission queues.
    pub queues: batchmill_core::queues::Queues,
    /// The most items one job may have (0: no limit).
    pub max_job_items: u64,
}

/// Errors that stop a scheduler.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("connecting to etcd: {0}")]
    Etcd(#[from] CoordError),
    #[error("connecting to NATS: {0}")]
    Nats(#[from] QueueError),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("{name} URL {url:?}: {message}")]
    Url { name: &'static str, url: String, message: String },
}

/// This process's current term, while it leads.
#[derive(Clone)]
pub struct Term {
    pub scheduler: Scheduler,
    /// Cancelled when the term ends.
    pub ended: CancellationToken,
}

/// Whether (and in which term) this process leads; the gRPC adapters ask
/// it on every call. Clones share it.
#[derive(Clone, Default)]
pub struct Leading(Arc<RwLock<Option<Term>>>);

impl Leading {
    /// The current term, or UNAVAILABLE when this process does not lead.
    #[allow(clippy::result_large_err)]
    pub fn current(&self) -> Result<Term, tonic::Status> {
        let term = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        term.ok_or_else(|| tonic::Status::unavailable(crate::SchedulerError::Stopped.to_string()))
    }

    /// Starts (`Some`) or ends (`None`) a term.
    pub fn set(&self, term: Option<Term>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = term;
    }
}

/// What a term is built from: connections made once per process.
struct Deps {
    etcd: Etcd,
    queue: Arc<dyn Queue>,
    store: Arc<dyn ObjectStore>,
    enqueuer: EnqueuerServiceClient<tonic::transport::Channel>,
    probe: Arc<dyn SourceProbe>,
    settings: Arc<Settings>,
    pipelines_uri: S3Uri,
}

/// How long to wait for a dependency at start.
const PATIENCE: Duration = Duration::from_secs(30);

fn channel(name: &'static str, url: &str) -> Result<tonic::transport::Channel, RunError> {
    batchmill_runtime::dial::channel(url).map_err(|e| RunError::Url {
        name,
        url: url.to_owned(),
        message: e.to_string(),
    })
}

impl Deps {
    async fn connect(config: &Config) -> Result<(Deps, JetStreamQueue), RunError> {
        let etcd = Etcd::connect(&config.etcd_endpoints, PATIENCE).await?;
        let queue = JetStreamQueue::connect(&config.nats_url, PATIENCE).await?;
        let blob = Blob::new(&config.s3).await;
        for uri in [&config.output_uri, &config.staging_uri, &config.pipelines_uri] {
            if let Err(e) = blob.ensure_bucket(&uri.bucket).await {
                warn!(bucket = %uri.bucket, error = %e, "could not ensure bucket");
            }
        }
        let settings = Arc::new(Settings {
            policy: config.policy,
            default_output: config.output_uri.clone(),
            staging: config.staging_uri.clone(),
            secret_key: config.secret_key.clone(),
            fence: batchmill_core::fence::Fence::new(
                config.output_uri.clone(),
                config.staging_uri.clone(),
                config.pipelines_uri.clone(),
            ),
            queues: config.queues.clone(),
            max_job_items: config.max_job_items,
        });
        let deps = Deps {
            etcd,
            queue: Arc::new(queue.clone()),
            store: Arc::new(blob),
            enqueuer: EnqueuerServiceClient::new(channel("enqueuer", &config.enqueuer_url)?),
            probe: Arc::new(ListerServiceClient::new(channel("lister", &config.lister_url)?)),
            settings,
            pipelines_uri: config.pipelines_uri.clone(),
        };
        Ok((deps, queue))
    }
}

/// Serves on `listener` until `shutdown`, leading whenever it can.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), RunError> {
    let (deps, queue) = Deps::connect(&config).await?;
    let url = config.advertise_url.clone().unwrap_or(format!(
        "{}://{}",
        batchmill_runtime::tls::scheme(),
        listener.local_addr().map_err(RuntimeError::Io)?
    ));
    let leading = Leading::default();
    // Its metrics are served from the start: no jobs until it leads.
    std::sync::LazyLock::force(&crate::metrics::METRICS);
    // SERVING only while leading.
    let server = batchmill_runtime::ServerBuilder::new()?
        .not_ready()
        .add_service(JobsGrpc::new(leading.clone(), Arc::new(queue)).into_service())
        .add_service(PipelinesGrpc::new(leading.clone()).into_service())
        .add_service(SessionGrpc::new(leading.clone()).into_service());
    let health = server.health();
    let serving = server.serve(listener, shutdown.clone());
    let campaigning = campaign(&deps, &url, &leading, &health, config.lease_ttl, &shutdown);
    let (served, ()) = tokio::join!(serving, campaigning);
    served?;
    info!("scheduler stopped");
    Ok(())
}

/// Campaigns, leads one term, and campaigns again, until `shutdown`.
async fn campaign(
    deps: &Deps,
    url: &str,
    leading: &Leading,
    health: &Health,
    ttl: Duration,
    shutdown: &CancellationToken,
) {
    // The lease of a term that ended while etcd was unreachable: etcd may
    // keep it (and this scheduler's old candidacy, ahead of the new one)
    // for its TTL once back, unless it is revoked first.
    let mut stale: Option<i64> = None;
    while !shutdown.is_cancelled() {
        if let Some(lease) = stale
            && deps.etcd.revoke(lease).await.is_ok()
        {
            stale = None;
        }
        info!(%url, "campaigning for leadership");
        let won = tokio::select! {
            won = deps.etcd.campaign(SCHEDULER_ELECTION, url, ttl) => won,
            () = shutdown.cancelled() => return,
        };
        match won {
            Ok(leadership) => stale = lead(deps, url, leadership, leading, health, shutdown).await,
            Err(e) => {
                warn!(error = %e, "campaign failed; trying again");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// One term: loads the jobs, serves them until leadership is lost or the
/// process stops, then hands over; the lease, if it could not be revoked.
async fn lead(
    deps: &Deps,
    url: &str,
    leadership: Leadership,
    leading: &Leading,
    health: &Health,
    shutdown: &CancellationToken,
) -> Option<i64> {
    let lost = leadership.lost();
    // Every write of the term is fenced by its leadership: once the lease
    // is lost (this process paused past it, say), nothing more is written,
    // and so nothing more confirmed, though the actor has not noticed yet.
    let kv: Arc<dyn Kv> = Arc::new(batchmill_coord::FencedKv::new(deps.etcd.clone(), &leadership));
    let ports = Ports {
        kv: kv.clone(),
        queue: deps.queue.clone(),
        enqueuer: Arc::new(deps.enqueuer.clone()),
        store: deps.store.clone(),
    };
    let mut state = State::new(ports, deps.settings.clone(), Clock::new());
    let built_in = crate::built_in::templates();
    let loaded = async {
        let jobs = state.load().await?;
        let pipelines = Pipelines::load(built_in, kv.clone(), deps.store.clone(), deps.pipelines_uri.clone()).await?;
        Ok::<_, CoordError>((jobs, pipelines))
    };
    let (jobs, pipelines) = match loaded.await {
        Ok(loaded) => loaded,
        Err(e) => {
            warn!(error = %e, "loading jobs failed; stepping down");
            return leadership.resign().await;
        }
    };
    let ended = CancellationToken::new();
    let (scheduler, actor) = Scheduler::start(state, deps.probe.clone(), pipelines, ended.clone());
    crate::follow::follow_etcd(kv, scheduler.clone(), ended.clone());
    crate::exhausted::follow_exhausted(deps.queue.clone(), scheduler.clone(), ended.clone());
    leading.set(Some(Term { scheduler, ended: ended.clone() }));
    health.set_serving(true).await;
    info!(%url, jobs, "leading; serving");
    tokio::select! {
        () = lost.cancelled() => warn!("leadership lost; stepping down to campaign again"),
        () = shutdown.cancelled() => info!("stopping; handing leadership over"),
    }
    health.set_serving(false).await;
    leading.set(None);
    ended.cancel();
    // The actor's last flush, before a standby can lead.
    if let Err(e) = actor.await {
        warn!(error = %e, "the scheduler task failed");
    }
    crate::metrics::METRICS.set(crate::metrics::Snapshot::default());
    leadership.resign().await
}
