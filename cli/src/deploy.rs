//! `batchmill deploy <dir>`: a Cortex project (a `cortex.yaml` and the files
//! beside it) deployed as pipelines, one per BatchAPI in the file.
//!
//! Beside Cortex's fields, an API may carry what a batchmill pipeline
//! version records: its config contract (`config_schema`, `overridable`,
//! `defaults`) and run policy (`resources`, `queue`, `timeout`, `retry`).
//! The scheduler checks them, naming the field.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use batchmill_proto::pipelines::v1 as pb;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The request limit the gateway enforces; the files must fit in it.
const MAX_PROJECT_BYTES: u64 = 10 * 1024 * 1024 - 64 * 1024;

/// One API of a cortex.yaml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    pub name: String,
    pub kind: String,
    pub predictor: Predictor,
    #[serde(default)]
    pub compute: Option<Map<String, Value>>,
    /// Accepted for compatibility; batchmill's gateway serves every pipeline.
    #[serde(default, rename = "networking")]
    _networking: Option<serde::de::IgnoredAny>,
    /// batchmill's: a JSON Schema of a job's config.
    #[serde(default)]
    pub config_schema: Option<Map<String, Value>>,
    /// batchmill's: the dotted config paths a job may set (`*` for any).
    #[serde(default)]
    pub overridable: Vec<String>,
    /// batchmill's: the config a job starts from.
    #[serde(default)]
    pub defaults: Option<Map<String, Value>>,
    /// batchmill's: what each worker needs.
    #[serde(default)]
    pub resources: Option<Resources>,
    /// batchmill's: the queue its jobs are admitted through.
    #[serde(default)]
    pub queue: Option<String>,
    /// batchmill's: a job's timeout unless it names one (`90s`, `10m`, `2h`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// batchmill's: deliveries of a batch and the backoff between them.
    #[serde(default)]
    pub retry: Option<Retry>,
}

/// What each worker of a pipeline needs, as Kubernetes writes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpu: Option<String>,
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub gpu_count: u32,
    #[serde(default)]
    pub gpu_type: Option<String>,
    #[serde(default)]
    pub gpu_memory: Option<String>,
}

/// A pipeline's retry policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    #[serde(default)]
    pub max_deliveries: i32,
    #[serde(default)]
    pub initial_backoff: Option<String>,
    #[serde(default)]
    pub max_backoff: Option<String>,
}

/// A cortex.yaml `predictor` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predictor {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    #[serde(default)]
    pub config: Option<Map<String, Value>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub python_path: Option<String>,
    /// Accepted for compatibility: workers run predictors with their own
    /// Python, and their own log level and shared memory.
    #[serde(default, rename = "image")]
    _image: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "log_level")]
    _log_level: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "shm_size")]
    _shm_size: Option<serde::de::IgnoredAny>,
}

/// The APIs of a cortex.yaml: a list of them, or a single one.
pub fn parse(text: &str) -> anyhow::Result<Vec<Api>> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).context("cortex.yaml is not YAML")?;
    let apis = if value.is_sequence() {
        serde_yaml::from_value::<Vec<Api>>(value)
    } else {
        serde_yaml::from_value::<Api>(value).map(|api| vec![api])
    }
    .map_err(|e| anyhow::anyhow!("cortex.yaml: {e}"))?;
    if apis.is_empty() {
        bail!("cortex.yaml defines no API");
    }
    Ok(apis)
}

/// Deploy requests for the project in `dir`: every file under it (but
/// hidden ones, `__pycache__` and what `.cortexignore` names) goes with each.
pub fn read_project(dir: &Path, config_file: &str) -> anyhow::Result<Vec<pb::DeployPipelineRequest>> {
    let yaml_path = dir.join(config_file);
    let text = std::fs::read_to_string(&yaml_path).with_context(|| format!("reading {}", yaml_path.display()))?;
    let apis = parse(&text)?;
    let files = collect(dir)?;
    let total: u64 = files.values().map(|b: &Vec<u8>| b.len() as u64).sum();
    if total > MAX_PROJECT_BYTES {
        let mut largest: Vec<(&String, usize)> = files.iter().map(|(k, v)| (k, v.len())).collect();
        largest.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let names: Vec<String> = largest.iter().take(3).map(|(k, n)| format!("{k} ({n} bytes)")).collect();
        bail!(
            "the project's files come to {total} bytes, over the 10 MiB request limit (largest: {}); \
             keep models in S3 and load them in __init__, or list large files in .cortexignore",
            names.join(", ")
        );
    }
    apis.into_iter().map(|api| request(api, &files)).collect()
}

/// The deploy request of one API, with the project's files.
fn request(api: Api, files: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<pb::DeployPipelineRequest> {
    let name = api.name.clone();
    let duration = |field: &str, text: &Option<String>| {
        text.as_deref().map(parse_duration).transpose().with_context(|| format!("cortex.yaml: API {name:?}: {field}"))
    };
    let retry = match &api.retry {
        None => None,
        Some(r) => Some(pb::RetryPolicy {
            max_deliveries: r.max_deliveries,
            initial_backoff: duration("retry.initial_backoff", &r.initial_backoff)?,
            max_backoff: duration("retry.max_backoff", &r.max_backoff)?,
        }),
    };
    let timeout = duration("timeout", &api.timeout)?;
    let resources = api.resources.map(|r| pb::Resources {
        cpu: r.cpu.unwrap_or_default(),
        memory: r.memory.unwrap_or_default(),
        gpu_count: r.gpu_count,
        gpu_type: r.gpu_type.unwrap_or_default(),
        gpu_memory: r.gpu_memory.unwrap_or_default(),
    });
    Ok(pb::DeployPipelineRequest {
        name: api.name,
        kind: api.kind,
        predictor: Some(pb::Predictor {
            r#type: api.predictor.kind,
            path: api.predictor.path.trim_start_matches("./").to_owned(),
            config: api.predictor.config.as_ref().map(batchmill_core::json::json_to_struct),
            env: api.predictor.env.into_iter().collect(),
            python_path: api.predictor.python_path.unwrap_or_default(),
        }),
        compute: api.compute.as_ref().map(batchmill_core::json::json_to_struct),
        files: files.clone().into_iter().collect(),
        // Without a config schema the pipeline is open, as Cortex's are.
        config_schema: api.config_schema.as_ref().map(batchmill_core::json::json_to_struct),
        overridable: api.overridable,
        defaults: api.defaults.as_ref().map(batchmill_core::json::json_to_struct),
        resources,
        queue: api.queue.unwrap_or_default(),
        timeout,
        retry,
    })
}

/// A duration as `500ms`, `90s`, `10m` or `2h`.
fn parse_duration(text: &str) -> anyhow::Result<prost_types::Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => bail!("{text:?} is not a duration such as \"500ms\", \"90s\", \"10m\" or \"2h\""),
    };
    let ms = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .with_context(|| format!("{text:?} is not a duration such as \"90s\""))?;
    Ok(batchmill_core::time::duration_ms(ms))
}

/// The project's files as Cortex sends them, by relative `/`-separated
/// path: every file under `dir` but hidden ones, Python bytecode
/// (`__pycache__/`, `*.pyc`, `*.pyo`, `*.pyd`) and what `.cortexignore`
/// files name (gitignore syntax, through the `ignore` crate); the `.env` at
/// the root goes too, unless `.cortexignore` names it.
fn collect(dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut walk = ignore::WalkBuilder::new(dir);
    walk.standard_filters(false).hidden(true).add_custom_ignore_filename(".cortexignore");
    let mut files = BTreeMap::new();
    for entry in walk.build() {
        let entry = entry.context("listing the project")?;
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let relative = relative(dir, entry.path());
        let bytecode = relative.split('/').any(|part| part == "__pycache__")
            || [".pyc", ".pyo", ".pyd"].iter().any(|ext| relative.ends_with(ext));
        if !bytecode {
            files.insert(relative, read(entry.path())?);
        }
    }
    let env = dir.join(".env");
    if env.is_file() {
        let (rules, _) = ignore::gitignore::Gitignore::new(dir.join(".cortexignore"));
        if !rules.matched(&env, false).is_ignore() {
            files.insert(".env".to_owned(), read(&env)?);
        }
    }
    Ok(files)
}

fn relative(root: &Path, path: &Path) -> String {
    let inner = path.strip_prefix(root).unwrap_or(path);
    inner.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TUTORIAL: &str = "# cortex.yaml\n\n- name: image-classifier\n  kind: BatchAPI\n  predictor:\n    type: python\n    path: predictor.py\n  compute:\n    cpu: 1\n";

    #[test]
    fn an_api_may_carry_a_config_contract_and_run_policy() {
        let yaml = r#"
- name: scored
  kind: BatchAPI
  predictor: {type: python, path: predictor.py}
  config_schema:
    type: object
    properties: {threshold: {type: number}}
  overridable: [threshold]
  defaults: {threshold: 0.5}
  resources: {cpu: "1", gpu_count: 1, gpu_type: h100}
  queue: gpu
  timeout: 10m
  retry: {max_deliveries: 4, initial_backoff: 500ms, max_backoff: 1m}
"#;
        let api = parse(yaml).unwrap().remove(0);
        let r = request(api, &BTreeMap::new()).unwrap();
        let defaults = r.defaults.as_ref().map(batchmill_core::json::struct_to_json);
        assert_eq!(defaults.and_then(|d| d.get("threshold").cloned()), Some(serde_json::json!(0.5)));
        assert!(r.config_schema.is_some());
        assert_eq!((r.overridable.as_slice(), r.queue.as_str()), (&["threshold".to_owned()][..], "gpu"));
        let resources = r.resources.unwrap_or_default();
        assert_eq!((resources.gpu_count, resources.gpu_type.as_str(), resources.cpu.as_str()), (1, "h100", "1"));
        assert_eq!(r.timeout.map(|t| t.seconds), Some(600));
        let retry = r.retry.unwrap_or_default();
        assert_eq!(retry.max_deliveries, 4);
        assert_eq!(retry.initial_backoff.map(|d| (d.seconds, d.nanos)), Some((0, 500_000_000)));
        assert_eq!(retry.max_backoff.map(|d| d.seconds), Some(60));

        let bad = yaml.replace("timeout: 10m", "timeout: ten minutes");
        let err = request(parse(&bad).unwrap().remove(0), &BTreeMap::new()).expect_err("refused");
        assert!(format!("{err:#}").contains("timeout"), "{err:#}");
        let unknown = yaml.replace("queue: gpu", "queue: gpu\n  priority: 3");
        assert!(parse(&unknown).is_err(), "an unknown field is still refused");
    }

    #[test]
    fn reads_the_tutorial_project() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cortex.yaml"), TUTORIAL).unwrap();
        std::fs::write(dir.path().join("predictor.py"), "class PythonPredictor: pass\n").unwrap();
        std::fs::write(dir.path().join("requirements.txt"), "boto3\n").unwrap();
        std::fs::create_dir_all(dir.path().join("__pycache__")).unwrap();
        std::fs::write(dir.path().join("__pycache__/predictor.cpython-311.pyc"), "x").unwrap();
        std::fs::create_dir_all(dir.path().join("samples")).unwrap();
        std::fs::write(dir.path().join("samples/big.bin"), "x").unwrap();
        std::fs::write(dir.path().join(".cortexignore"), "samples/\n").unwrap();
        let requests = read_project(dir.path(), "cortex.yaml").unwrap();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!((r.name.as_str(), r.kind.as_str()), ("image-classifier", "BatchAPI"));
        assert_eq!(r.predictor.as_ref().map(|p| p.path.as_str()), Some("predictor.py"));
        let mut files: Vec<&String> = r.files.keys().collect();
        files.sort();
        assert_eq!(files, ["cortex.yaml", "predictor.py", "requirements.txt"]);
    }

    #[test]
    fn cortexignore_follows_gitignore_syntax_and_dot_env_goes_along() {
        let dir = tempfile::tempdir().unwrap();
        let write = |path: &str, body: &str| {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        };
        write("cortex.yaml", TUTORIAL);
        write("predictor.py", "class PythonPredictor: pass\n");
        write(".env", "MODEL=small\n");
        write(".secret", "x");
        write("weights/a.bin", "x");
        write("weights/keep.bin", "x");
        write("notes.md", "x");
        write("docs/notes.md", "x");
        write("lib/util.pyo", "x");
        write("lib/util.py", "x");
        write("lib/.cortexignore", "local.txt\n");
        write("lib/local.txt", "x");
        write(".cortexignore", "# big files stay in S3\n*.bin\n!keep.bin\n/notes.md\n");
        let requests = read_project(dir.path(), "cortex.yaml").unwrap();
        let mut files: Vec<&String> = requests[0].files.keys().collect();
        files.sort();
        let expected = [".env", "cortex.yaml", "docs/notes.md", "lib/util.py", "predictor.py", "weights/keep.bin"];
        assert_eq!(files, expected);

        write(".cortexignore", ".env\n");
        let requests = read_project(dir.path(), "cortex.yaml").unwrap();
        assert!(!requests[0].files.contains_key(".env"), "a .env that .cortexignore names stays");
    }

    #[test]
    fn unknown_fields_are_named() {
        let bad = TUTORIAL.replace("    path: predictor.py", "    path: predictor.py\n    processes: 2");
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.contains("unknown field `processes`"), "{err}");
        let single = "name: a\nkind: BatchAPI\npredictor: {type: python, path: p.py}\n";
        assert_eq!(parse(single).unwrap()[0].name, "a");
        assert!(parse("[]").unwrap_err().to_string().contains("no API"));
    }
}
