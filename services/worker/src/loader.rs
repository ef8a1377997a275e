//! Loads a job's predictor: a built-in one, or a deployed pipeline's files
//! fetched from S3 and run by [`crate::python`]. The last predictor loaded
//! is kept, so that a job's completion hook runs in the process (and on the
//! instance) that ran its batches on this worker.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchmill_blob::{BlobError, ObjectStore};
use batchmill_core::{FieldViolation, S3Uri, UriError};
use batchmill_proto::scheduler::v1::{Assign, DeployedPredictor};
use batchmill_queue::Queue;
use serde_json::Value;
use tracing::{info, warn};

use crate::embed::EmbedModels;
use crate::joblog::JobLog;
use crate::predictor::{self, Predictor};
use crate::python::{HARNESS, HARNESS_FILE, Launch, PythonPredictor, StartError};
use crate::requirements::SetupError;

/// How long fetching a pipeline's files rides out an S3 outage.
const FETCH_PATIENCE: Duration = Duration::from_secs(120);

/// Why a job's predictor could not be loaded or started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this worker cannot run pipeline {0:?}")]
    UnknownPipeline(String),
    #[error("{0}")]
    Config(#[from] FieldViolation),
    #[error(
        "config.model is not set and this worker has no default embed model (--embed-model, BATCHMILL_EMBED_MODEL)"
    )]
    NoModel,
    #[error("this worker has no Python interpreter")]
    NoPython,
    #[error("this worker cannot run {0:?} predictors")]
    PredictorType(String),
    #[error("{what}: {source}")]
    Fetch { what: String, source: BlobError },
    #[error("{what}: {source}")]
    Uri { what: String, source: UriError },
    #[error("{what}: no objects under {uri}")]
    Empty { what: String, uri: String },
    #[error("{what}: object {key:?} has a bad path")]
    BadPath { what: String, key: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("loading the embed model: {0}")]
    Embed(#[from] batchmill_embed::EmbedError),
    #[error("{0} panicked")]
    Panicked(&'static str),
}

impl LoadError {
    /// Whether the predictor ran out of memory while starting.
    pub fn out_of_memory(&self) -> bool {
        matches!(self, LoadError::Start(e) if e.out_of_memory())
    }
}

type Kept = Option<(String, Arc<dyn Predictor>)>;

/// Loads predictors for one worker; clones share the kept predictor.
#[derive(Clone)]
pub struct Loader {
    /// The interpreter for Python predictors; None where there is none.
    python: Option<PathBuf>,
    /// Where deployed pipelines' files are unpacked.
    work_dir: PathBuf,
    blob: Arc<dyn ObjectStore>,
    queue: Arc<dyn Queue>,
    worker_id: String,
    /// The cluster's S3 endpoint and region for the predictor's boto3.
    s3_env: Vec<(String, String)>,
    kept: Arc<Mutex<Kept>>,
    /// The embed models loaded, kept across jobs.
    embed: EmbedModels,
    /// Held while a pipeline's environment is set up.
    installing: Arc<tokio::sync::Mutex<()>>,
}

impl Loader {
    pub fn new(
        python: Option<PathBuf>,
        work_dir: PathBuf,
        blob: Arc<dyn ObjectStore>,
        queue: Arc<dyn Queue>,
        worker_id: String,
    ) -> Loader {
        let cpu = crate::device::Device::Cpu { threads: 1 };
        Loader {
            python,
            work_dir,
            blob,
            queue,
            worker_id,
            s3_env: Vec::new(),
            kept: Arc::default(),
            embed: EmbedModels::new(cpu, None),
            installing: Arc::default(),
        }
    }

    /// Runs the `embed` pipeline with these models (on their device).
    pub fn with_embed(mut self, embed: EmbedModels) -> Loader {
        self.embed = embed;
        self
    }

    /// Gives Python predictors the cluster's S3: `boto3.client("s3")` then
    /// reaches `endpoint` (path-style, as S3-compatible servers expect) in
    /// `region`, with the credentials in this process's environment.
    pub fn with_s3(mut self, endpoint: Option<&str>, region: &str) -> std::io::Result<Loader> {
        self.s3_env = vec![("AWS_REGION".into(), region.into()), ("AWS_DEFAULT_REGION".into(), region.into())];
        if let Some(endpoint) = endpoint {
            self.s3_env.push(("AWS_ENDPOINT_URL".into(), endpoint.into()));
            self.s3_env.push(("AWS_ENDPOINT_URL_S3".into(), endpoint.into()));
            if std::env::var_os("AWS_CONFIG_FILE").is_none() {
                let config = self.work_dir.join("aws-config");
                std::fs::create_dir_all(&self.work_dir)?;
                std::fs::write(&config, "[default]\ns3 =\n    addressing_style = path\n")?;
                self.s3_env.push(("AWS_CONFIG_FILE".into(), config.to_string_lossy().into_owned()));
            }
        }
        Ok(self)
    }

    /// Predictor types of deployed pipelines this worker runs.
    pub fn predictor_types(&self) -> Vec<String> {
        self.python.iter().map(|_| "python".to_owned()).collect()
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The predictor of `assign`'s job: the kept one if it is that job's,
    /// otherwise loaded (for Python, `__init__` runs here) and kept.
    pub async fn load(&self, assign: &Assign) -> Result<Arc<dyn Predictor>, LoadError> {
        if let Some((job, p)) = self.kept().as_ref()
            && *job == assign.job_id
        {
            return Ok(p.clone());
        }
        let config = assign.config.as_ref().map(batchmill_core::json::struct_to_json).unwrap_or_default();
        let predictor: Arc<dyn Predictor> = match &assign.predictor {
            None if assign.pipeline == predictor::EMBED => self.load_embed(&config).await?,
            None => Arc::from(predictor::load(&assign.pipeline, &config)?),
            Some(d) if d.r#type == "python" => self.load_python(assign, d, config).await?,
            Some(d) => return Err(LoadError::PredictorType(d.r#type.clone())),
        };
        // The previous job's predictor (its process) goes once unused.
        *self.kept() = Some((assign.job_id.clone(), predictor.clone()));
        Ok(predictor)
    }

    /// A deployed Python predictor: its files fetched once per version, its
    /// environment set up (`dependencies.sh`, then `requirements.txt`), then
    /// its process started and `__init__` run.
    async fn load_python(
        &self,
        assign: &Assign,
        deployed: &DeployedPredictor,
        config: serde_json::Map<String, Value>,
    ) -> Result<Arc<dyn Predictor>, LoadError> {
        let python = self.python.clone().ok_or(LoadError::NoPython)?;
        let dir = self.fetch(&assign.pipeline, deployed).await?;
        // The pipeline's own variables win: cortex.yaml's, then its .env.
        let mut env = self.s3_env.clone();
        env.extend(deployed.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(crate::requirements::dotenv(&dir).await?);
        let python = {
            let _one_at_a_time = self.installing.lock().await;
            crate::requirements::prepare(&python, &dir, &env).await?
        };
        let job_spec = serde_json::json!({
            "job_id": assign.job_id,
            "api_name": assign.pipeline,
            "pipeline_version": deployed.version,
            "workers": assign.workers,
            "config": config,
            "total_batch_count": assign.total_batch_count,
        });
        let launch = Launch {
            python,
            dir,
            path: deployed.path.clone(),
            python_path: deployed.python_path.clone(),
            env,
            config: Value::Object(config),
            job_spec,
            log: JobLog::new(self.queue.clone(), &assign.job_id, &self.worker_id).sink(),
        };
        let started = tokio::task::spawn_blocking(move || PythonPredictor::start(launch))
            .await
            .map_err(|_| LoadError::Panicked("starting the Python predictor"))??;
        Ok(Arc::new(started))
    }

    /// Lets the kept predictor of `job_id` go.
    pub fn forget(&self, job_id: &str) {
        let mut kept = self.kept();
        if kept.as_ref().is_some_and(|(job, _)| job == job_id) {
            *kept = None;
        }
    }

    /// The pipeline's files in a local directory, downloaded once per version.
    async fn fetch(&self, name: &str, deployed: &DeployedPredictor) -> Result<PathBuf, LoadError> {
        let dir = self.work_dir.join("pipelines").join(name).join(format!("v{}", deployed.version));
        let what = format!("pipeline {name} v{}", deployed.version);
        if let Some(files) = self.download(&what, &deployed.artifacts_uri, &dir).await? {
            info!(pipeline = name, version = deployed.version, files, "pipeline files fetched");
        }
        write(&dir.join(HARNESS_FILE), HARNESS.as_bytes()).await?;
        Ok(dir)
    }

    /// Copies every object under the `s3://` prefix `uri` into `dir`, unless
    /// an earlier call did; Some(number of files) when this one did. S3
    /// being unreachable for a while is waited out.
    async fn download(&self, what: &str, uri: &str, dir: &Path) -> Result<Option<usize>, LoadError> {
        if dir.join(".complete").exists() {
            return Ok(None);
        }
        let uri = S3Uri::parse(uri.trim_end_matches('/'))
            .map_err(|source| LoadError::Uri { what: what.to_owned(), source })?;
        let prefix = format!("{}/", uri.key);
        let fetch_err = |source| LoadError::Fetch { what: what.to_owned(), source };
        let keys = patiently(what, || self.blob.list(&uri.bucket, &prefix)).await.map_err(fetch_err)?;
        if keys.is_empty() {
            return Err(LoadError::Empty { what: what.to_owned(), uri: format!("{uri}/") });
        }
        let parent = dir.parent().unwrap_or(dir);
        let base = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = parent.join(format!(".{base}-{}", fastrand::u64(..)));
        for key in &keys {
            let relative = key.strip_prefix(&prefix).unwrap_or(key);
            let bad = || LoadError::BadPath { what: what.to_owned(), key: key.clone() };
            let path = inside(&tmp, relative).ok_or_else(bad)?;
            let body = patiently(what, || self.blob.get(&uri.bucket, key)).await.map_err(fetch_err)?;
            write(&path, &body).await?;
        }
        write(&tmp.join(".complete"), b"").await?;
        if tokio::fs::rename(&tmp, dir).await.is_err() {
            // Another load unpacked it first.
            let _ = tokio::fs::remove_dir_all(&tmp).await;
        }
        Ok(Some(keys.len()))
    }

    /// The `embed` predictor for a job's config; the model is fetched from
    /// S3 once and loaded once per worker.
    async fn load_embed(&self, config: &serde_json::Map<String, Value>) -> Result<Arc<dyn Predictor>, LoadError> {
        let c = self.embed.config(config)?;
        let dir = if c.model.starts_with("s3://") {
            let dir = self.work_dir.join("models").join(crate::embed::cache_name(&c.model));
            if let Some(files) = self.download("config.model", &c.model, &dir).await? {
                info!(model = %c.model, files, "embed model fetched");
            }
            dir
        } else {
            PathBuf::from(&c.model)
        };
        let models = self.embed.clone();
        let embedder = tokio::task::spawn_blocking(move || models.load(&c.model, dir, c.precision))
            .await
            .map_err(|_| LoadError::Panicked("loading the embed model"))??;
        Ok(Arc::new(crate::embed::Embed { embedder, lanes: self.embed.lanes() }))
    }
}

/// Runs an S3 call, retrying transient failures with backoff for up to
/// [`FETCH_PATIENCE`].
async fn patiently<T, F, Fut>(what: &str, call: F) -> Result<T, BlobError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, BlobError>>,
{
    let deadline = tokio::time::Instant::now() + FETCH_PATIENCE;
    let mut delay = Duration::from_millis(200);
    loop {
        match call().await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() + delay < deadline => {
                warn!(what, error = %e, "fetching failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            done => return done,
        }
    }
}

/// `relative` under `root`, or None if it would leave it.
fn inside(root: &Path, relative: &str) -> Option<PathBuf> {
    let ok = !relative.is_empty()
        && !relative.starts_with('/')
        && relative.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
    ok.then(|| root.join(relative))
}

async fn write(path: &Path, body: &[u8]) -> Result<(), LoadError> {
    let io = |path: &Path, source| LoadError::Io { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(|e| io(parent, e))?;
    }
    tokio::fs::write(path, body).await.map_err(|e| io(path, e))
}
