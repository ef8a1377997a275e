//! The pipelines jobs may name: the built-in ones, and deployed ones kept in
//! etcd at `/batchmill/pipelines/<name>` (JSON, the latest version) and
//! `/batchmill/pipeline-versions/<name>/<version>` (every version, never
//! changed), with their files in S3 under `<artifacts root>/<name>/v<version>/`.
//! A version carries its config contract (see `pipeline_config`).
//!
//! A job pins the version it was submitted against: its record carries the
//! [`Deployed`] pipeline, so a later deploy changes only later jobs.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use batchmill_coord::Kv;
use batchmill_core::time::{now_ms, timestamp};
use batchmill_core::{Caller, Role, S3Uri};
use batchmill_proto::pipelines::v1 as pb;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::info;

use batchmill_blob::ObjectStore;
use batchmill_core::project::{CONDA_PACKAGES, DOTENV};

use crate::SchedulerError;
use crate::built_in::Template;
use crate::pipeline_config::ConfigContract;
use crate::run_policy::RunPolicy;

pub const PIPELINES_PREFIX: &str = "/batchmill/pipelines/";
/// Where every version of every deployed pipeline is kept.
pub const VERSIONS_PREFIX: &str = "/batchmill/pipeline-versions/";

fn version_key(name: &str, version: u32) -> String {
    format!("{VERSIONS_PREFIX}{name}/{version:010}")
}

/// The only kind of deployed pipeline, as cortex.yaml names it.
pub const KIND: &str = "BatchAPI";
/// Predictor types a deployed pipeline may have.
pub const PREDICTOR_TYPES: &[&str] = &["python"];

/// A deployed pipeline version, as persisted and as a job pins it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployed {
    pub name: String,
    pub version: u32,
    pub kind: String,
    pub predictor: PredictorSpec,
    #[serde(default)]
    pub compute: Map<String, Value>,
    /// `s3://bucket/prefix/<name>/v<version>/`.
    pub artifacts_uri: String,
    pub deploy_ms: u64,
    pub files: Vec<String>,
    /// The account that deployed it; only that account (or a cluster
    /// admin) deploys a new version. Empty for pipelines from before accounts.
    #[serde(default)]
    pub account: String,
    /// What a job's config may be; open for a cortex.yaml deploy.
    #[serde(default)]
    pub config: ConfigContract,
    /// Resources, queue, and a job's default timeout and retries.
    #[serde(default)]
    pub run: RunPolicy,
}

/// The code that runs a deployed pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictorSpec {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    #[serde(default)]
    pub config: Map<String, Value>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub python_path: String,
}

/// What every version shows, deployed or built in: its config contract and
/// run policy.
pub(crate) fn version_terms(config: &ConfigContract, run: &RunPolicy) -> pb::Pipeline {
    pb::Pipeline {
        config_schema: config.schema.as_ref().and_then(Value::as_object).map(batchmill_core::json::json_to_struct),
        overridable: config.overridable.clone(),
        defaults: (!config.defaults.is_empty()).then(|| batchmill_core::json::json_to_struct(&config.defaults)),
        resources: Some(run.resources_proto()),
        queue: run.queue().to_owned(),
        timeout: run.timeout_ms.map(batchmill_core::time::duration_ms),
        retry: run.retry_proto(),
        ..Default::default()
    }
}

impl Deployed {
    pub fn to_proto(&self) -> pb::Pipeline {
        pb::Pipeline {
            name: self.name.clone(),
            built_in: false,
            version: self.version,
            kind: self.kind.clone(),
            predictor: Some(pb::Predictor {
                r#type: self.predictor.kind.clone(),
                path: self.predictor.path.clone(),
                config: Some(batchmill_core::json::json_to_struct(&self.predictor.config)),
                env: self.predictor.env.clone().into_iter().collect(),
                python_path: self.predictor.python_path.clone(),
            }),
            compute: Some(batchmill_core::json::json_to_struct(&self.compute)),
            artifacts_uri: self.artifacts_uri.clone(),
            deploy_time: Some(timestamp(self.deploy_ms)),
            files: self.files.clone(),
            ..version_terms(&self.config, &self.run)
        }
    }

    /// What a worker needs to run it.
    pub fn to_assigned(&self) -> batchmill_proto::scheduler::v1::DeployedPredictor {
        batchmill_proto::scheduler::v1::DeployedPredictor {
            r#type: self.predictor.kind.clone(),
            path: self.predictor.path.clone(),
            artifacts_uri: self.artifacts_uri.clone(),
            version: self.version,
            env: self.predictor.env.clone().into_iter().collect(),
            python_path: self.predictor.python_path.clone(),
        }
    }
}

/// Built-in and deployed pipelines; clones share them.
#[derive(Clone)]
pub struct Pipelines {
    built_in: Arc<Vec<Template>>,
    deployed: Arc<RwLock<BTreeMap<String, Deployed>>>,
    kv: Arc<dyn Kv>,
    store: Arc<dyn ObjectStore>,
    /// Where deployed files go.
    root: S3Uri,
    /// Deploys of the same name one at a time, so versions do not collide.
    deploying: Arc<tokio::sync::Mutex<()>>,
}

impl Pipelines {
    /// The built-in pipelines and every deployed one in etcd.
    pub async fn load(
        built_in: Vec<Template>,
        kv: Arc<dyn Kv>,
        store: Arc<dyn ObjectStore>,
        root: S3Uri,
    ) -> Result<Pipelines, batchmill_coord::CoordError> {
        let mut deployed = BTreeMap::new();
        for (key, bytes) in kv.list(PIPELINES_PREFIX).await? {
            match serde_json::from_slice::<Deployed>(&bytes) {
                Ok(d) => {
                    deployed.insert(d.name.clone(), d);
                }
                Err(e) => tracing::warn!(%key, error = %e, "unreadable pipeline"),
            }
        }
        Ok(Pipelines {
            built_in: Arc::new(built_in),
            deployed: Arc::new(RwLock::new(deployed)),
            kv,
            store,
            root,
            deploying: Arc::default(),
        })
    }

    /// The template of built-in pipeline `name`.
    fn template(&self, name: &str) -> Option<&Template> {
        self.built_in.iter().find(|t| t.name == name)
    }

    /// A job's config: checked against the contract of the version it runs
    /// (`deployed`, resolved from `name`) or of its built-in template, with
    /// the defaults merged under it. Errors name the field.
    pub fn config_for(
        &self,
        name: &str,
        deployed: Option<&Deployed>,
        config: &Map<String, Value>,
    ) -> Result<Map<String, Value>, SchedulerError> {
        if let Some(deployed) = deployed {
            return Ok(deployed.config.config_for(config)?);
        }
        match self.template(name) {
            Some(template) => Ok(template.config_for(config)?),
            None => Ok(config.clone()),
        }
    }

    fn deployed(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Deployed>> {
        self.deployed.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every pipeline, by name.
    pub fn list(&self) -> Vec<pb::Pipeline> {
        let mut all: Vec<pb::Pipeline> = self.built_in.iter().map(Template::to_proto).collect();
        all.extend(self.deployed().values().map(Deployed::to_proto));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn get(&self, name: &str) -> Option<pb::Pipeline> {
        self.list().into_iter().find(|p| p.name == name)
    }

    /// Version `version` of deployed pipeline `name`, as it was deployed.
    /// Versions from before every version was kept are found only while
    /// they are the latest.
    pub async fn version(&self, name: &str, version: u32) -> Result<Option<pb::Pipeline>, SchedulerError> {
        if let Some(template) = self.template(name) {
            return Ok((template.version == version).then(|| template.to_proto()));
        }
        let latest = self.deployed().get(name).filter(|d| d.version == version).map(Deployed::to_proto);
        if latest.is_some() {
            return Ok(latest);
        }
        let key = version_key(name, version);
        let Some(bytes) = self.kv.get(&key).await.map_err(SchedulerError::PipelineRecord)? else { return Ok(None) };
        let deployed: Deployed = serde_json::from_slice(&bytes).map_err(|e| {
            SchedulerError::PipelineRecord(batchmill_coord::CoordError::Encode { key, message: e.to_string() })
        })?;
        Ok(Some(deployed.to_proto()))
    }

    /// What a job naming `name` runs: None for a built-in pipeline, the
    /// latest version of a deployed one, or an error listing what exists.
    pub fn resolve(&self, name: &str) -> Result<Option<Deployed>, SchedulerError> {
        if self.template(name).is_some() {
            return Ok(None);
        }
        if let Some(d) = self.deployed().get(name) {
            return Ok(Some(d.clone()));
        }
        let known: Vec<String> = self.list().into_iter().map(|p| p.name).collect();
        Err(SchedulerError::UnknownPipeline { name: name.to_owned(), known: known.join(", ") })
    }

    /// Deploys a pipeline: checks it, stores its files, then records the
    /// new version in etcd. Jobs see it only once both are durable.
    /// Deploys a new version of a pipeline for `caller`, an admin of its
    /// account. A name another account deployed is refused.
    pub async fn deploy(
        &self,
        request: pb::DeployPipelineRequest,
        caller: &Caller,
    ) -> Result<pb::Pipeline, SchedulerError> {
        if self.template(&request.name).is_some() {
            let message = format!("{:?} is a built-in pipeline and cannot be replaced", request.name);
            return Err(bad("name", message));
        }
        if caller.role == Role::Member {
            return Err(SchedulerError::NotAllowed("deploying a pipeline takes an admin key of the account".into()));
        }
        let predictor = check(&request)?.clone();
        let config = ConfigContract::new(
            request.config_schema.as_ref().map(|s| Value::Object(batchmill_core::json::struct_to_json(s))),
            request.overridable.clone(),
            request.defaults.as_ref().map(batchmill_core::json::struct_to_json).unwrap_or_default(),
        )
        .map_err(|v| bad(&v.field, v.description))?;
        let run = RunPolicy::from_request(&request).map_err(|v| bad(&v.field, v.description))?;
        let _one_at_a_time = self.deploying.lock().await;
        let previous = self.deployed().get(&request.name).cloned();
        if let Some(previous) = &previous
            && !caller.administers(&previous.account)
        {
            let message = format!("{:?} is deployed by another account; choose another name", request.name);
            return Err(SchedulerError::NotAllowed(message));
        }
        let version = previous.map_or(1, |d| d.version + 1);
        let artifacts = self.root.join(&request.name).join(&format!("v{version}"));
        let mut files: Vec<String> = request.files.keys().cloned().collect();
        files.sort();
        for (path, body) in request.files {
            let uri = artifacts.join(&path);
            let stored = self.store.put(&uri.bucket, &uri.key, Bytes::from(body), "application/octet-stream").await;
            stored.map_err(|source| SchedulerError::PipelineFile { path, source })?;
        }
        let deployed = Deployed {
            name: request.name.clone(),
            version,
            kind: request.kind,
            predictor: PredictorSpec {
                kind: predictor.r#type,
                path: predictor.path,
                config: predictor.config.as_ref().map(batchmill_core::json::struct_to_json).unwrap_or_default(),
                env: predictor.env.into_iter().collect(),
                python_path: predictor.python_path,
            },
            compute: request.compute.as_ref().map(batchmill_core::json::struct_to_json).unwrap_or_default(),
            artifacts_uri: format!("{artifacts}/"),
            deploy_ms: now_ms(),
            files,
            account: caller.account.clone(),
            config,
            run,
        };
        let key = format!("{PIPELINES_PREFIX}{}", deployed.name);
        let bytes = serde_json::to_vec(&deployed).map_err(|e| {
            SchedulerError::PipelineRecord(batchmill_coord::CoordError::Encode {
                key: key.clone(),
                message: e.to_string(),
            })
        })?;
        // The latest version and the immutable record of this one, at once.
        let pairs = vec![(key, bytes.clone()), (version_key(&deployed.name, version), bytes)];
        self.kv.put_all(pairs).await.map_err(SchedulerError::PipelineRecord)?;
        info!(pipeline = %deployed.name, version, files = deployed.files.len(), "pipeline deployed");
        let answer = deployed.to_proto();
        self.deployed.write().unwrap_or_else(|e| e.into_inner()).insert(deployed.name.clone(), deployed);
        Ok(answer)
    }
}

fn bad(field: &str, message: String) -> SchedulerError {
    SchedulerError::BadPipeline { field: field.to_owned(), message }
}

/// Checks a deploy request, naming the field at fault; its predictor.
fn check(request: &pb::DeployPipelineRequest) -> Result<&pb::Predictor, SchedulerError> {
    check_name(&request.name)?;
    if request.kind != KIND {
        return Err(bad("kind", format!("{:?} is not supported; batchmill deploys kind {KIND}", request.kind)));
    }
    let predictor = request.predictor.as_ref().ok_or_else(|| bad("predictor", "is required".into()))?;
    if !PREDICTOR_TYPES.contains(&predictor.r#type.as_str()) {
        let types = PREDICTOR_TYPES.join(", ");
        return Err(bad(
            "predictor.type",
            format!("{:?} is not supported; expected one of: {types}", predictor.r#type),
        ));
    }
    if request.files.is_empty() {
        return Err(bad("files", "the project has no files".into()));
    }
    for path in request.files.keys() {
        check_path(path)?;
    }
    if let Some(env) = request.files.get(DOTENV) {
        let text = String::from_utf8_lossy(env);
        batchmill_core::project::parse_dotenv(&text).map_err(|e| bad("files", e.to_string()))?;
    }
    if request.files.contains_key(CONDA_PACKAGES) {
        return Err(bad(
            "files",
            format!(
                "{CONDA_PACKAGES}: conda packages are not supported; list Python packages in requirements.txt \
                 (installed with pip) and system packages in dependencies.sh"
            ),
        ));
    }
    if !predictor.path.ends_with(".py") {
        return Err(bad("predictor.path", format!("{:?} is not a Python file", predictor.path)));
    }
    if !request.files.contains_key(&predictor.path) {
        return Err(bad("predictor.path", format!("{:?} is not among the project's files", predictor.path)));
    }
    Ok(predictor)
}

/// A pipeline name as Cortex allows API names: lower-case letters, digits
/// and dashes, starting with a letter and ending with a letter or digit.
fn check_name(name: &str) -> Result<(), SchedulerError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        return Ok(());
    }
    let message = format!(
        "{name:?} is not a valid name: use lower-case letters, digits and dashes, starting with a letter, \
         at most 63 characters"
    );
    Err(bad("name", message))
}

/// A file's path within a project: relative, `/`-separated, no `..`.
fn check_path(path: &str) -> Result<(), SchedulerError> {
    let wrong = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path.split('/').any(|part| part.is_empty() || part == "." || part == "..");
    if wrong { Err(bad("files", format!("{path:?} is not a relative path inside the project"))) } else { Ok(()) }
}

/// `over` merged into `base`, objects key by key at every depth, as Cortex
/// merges a job's config over its API's.
pub fn merge_config(base: &Map<String, Value>, over: &Map<String, Value>) -> Map<String, Value> {
    let mut merged = base.clone();
    for (key, value) in over {
        let next = match (merged.get(key), value) {
            (Some(Value::Object(b)), Value::Object(o)) => Value::Object(merge_config(b, o)),
            _ => value.clone(),
        };
        merged.insert(key.clone(), next);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_paths_are_checked() {
        assert!(check_name("image-classifier").is_ok());
        for bad in ["", "Image", "1st", "end-", "under_score", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_path("predictor.py").is_ok());
        assert!(check_path("lib/util.py").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a//b", "a/./b", "a\\b"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn job_config_merges_over_the_pipeline_config() {
        let base = json!({"a": 1, "nested": {"x": 1, "y": 2}, "keep": true});
        let over = json!({"a": 2, "nested": {"y": 3, "z": 4}, "new": "n"});
        let merged = merge_config(base.as_object().unwrap(), over.as_object().unwrap());
        assert_eq!(
            Value::Object(merged),
            json!({"a": 2, "nested": {"x": 1, "y": 3, "z": 4}, "keep": true, "new": "n"})
        );
    }
}
