//! The built-in `embed` pipeline: sentence embeddings from
//! [`batchmill_embed`]. Items are strings or `{"id": ..., "text": "..."}`;
//! each result is `{"id": ..., "embedding": [...]}` (a string item's id is
//! its index in the job).
//!
//! Config: `model`, a local directory or an `s3://` prefix holding a
//! sentence-transformers model (default: the worker's `--embed-model`), and
//! `precision`, `fp16`, `bf16` or `fp32`: what a GPU stores GEMM inputs as
//! (default fp16; the CPU always computes in fp32). A model is loaded, and its weights uploaded to the
//! device, once per worker and kept across jobs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use batchmill_core::embed::Precision as Asked;
use batchmill_embed::{DeviceChoice, Embedder, Precision};
use serde_json::{Map, Value, json};

use crate::device::Device;
use crate::predictor::{BatchInput, PredictError, Predictor};

/// Models kept loaded, most recently used last; older ones are dropped
/// (freeing their device memory) beyond this many.
const KEPT_MODELS: usize = 2;

type Key = (String, Precision);

/// Loaded models, most recently used last.
type Loaded = Vec<(Key, Arc<Embedder>)>;

/// The embed models one worker has loaded.
#[derive(Clone)]
pub struct EmbedModels {
    device: Device,
    default_model: Option<String>,
    loaded: Arc<Mutex<Loaded>>,
}

/// What a job's config asks for.
pub struct ModelChoice {
    /// A local directory or an `s3://` prefix.
    pub model: String,
    pub precision: Precision,
}

impl EmbedModels {
    pub fn new(device: Device, default_model: Option<String>) -> EmbedModels {
        EmbedModels { device, default_model, loaded: Arc::default() }
    }

    /// Reads and checks the job's config.
    pub fn config(&self, config: &Map<String, Value>) -> Result<ModelChoice, String> {
        let c = batchmill_core::embed::EmbedConfig::parse(config).map_err(|v| v.to_string())?;
        let model = match c.model {
            Some(m) => m,
            None => self.default_model.clone().ok_or(
                "config.model is not set and this worker has no default embed model (--embed-model, BATCHMILL_EMBED_MODEL)",
            )?,
        };
        let precision = match (&self.device, c.precision) {
            (Device::Cpu { .. }, _) | (_, Some(Asked::Fp32)) => Precision::Fp32,
            (Device::Cuda { .. }, None | Some(Asked::Fp16)) => Precision::Fp16,
            (Device::Cuda { .. }, Some(Asked::Bf16)) => Precision::Bf16,
        };
        Ok(ModelChoice { model, precision })
    }

    /// The model at `dir` (already local), loaded once.
    pub fn load(&self, location: &str, dir: PathBuf, precision: Precision) -> Result<Arc<Embedder>, String> {
        let key = (location.to_owned(), precision);
        if let Some(e) = self.take(&key) {
            return Ok(e);
        }
        let choice = match self.device {
            Device::Cpu { .. } => DeviceChoice::Cpu,
            Device::Cuda { .. } => DeviceChoice::Cuda,
        };
        let embedder = Arc::new(Embedder::load(&dir, choice, precision).map_err(|e| e.to_string())?);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.push((key, embedder.clone()));
        while loaded.len() > KEPT_MODELS {
            loaded.remove(0);
        }
        Ok(embedder)
    }

    /// A loaded model, moved to most recently used.
    fn take(&self, key: &Key) -> Option<Arc<Embedder>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let at = loaded.iter().position(|(k, _)| k == key)?;
        let entry = loaded.remove(at);
        let embedder = entry.1.clone();
        loaded.push(entry);
        Some(embedder)
    }
}

/// The `embed` predictor of one job.
pub struct Embed {
    pub embedder: Arc<Embedder>,
}

impl Predictor for Embed {
    fn predict(&self, batch: &BatchInput<'_>) -> Result<Vec<Value>, PredictError> {
        let mut ids = Vec::with_capacity(batch.items.len());
        let mut texts = Vec::with_capacity(batch.items.len());
        for (i, item) in batch.items.iter().enumerate() {
            let index = batch.first_item + i as u64;
            let (id, text) = match item {
                Value::String(s) => (json!(index), s.as_str()),
                Value::Object(o) => match o.get("text") {
                    Some(Value::String(s)) => (o.get("id").cloned().unwrap_or(json!(index)), s.as_str()),
                    _ => return Err(bad_item(index, "an object item needs a string \"text\"")),
                },
                _ => return Err(bad_item(index, "expected a string or {\"id\": ..., \"text\": \"...\"}")),
            };
            ids.push(id);
            texts.push(text);
        }
        let vectors = self.embedder.embed(&texts).map_err(|e| PredictError::Retryable(e.to_string()))?;
        Ok(ids.into_iter().zip(vectors).map(|(id, v)| json!({"id": id, "embedding": compact(&v)})).collect())
    }
}

/// The vector as JSON numbers written the shortest way that reads back as
/// the same f32 (about 10 characters each, not the 19 of their f64 widening).
fn compact(v: &[f32]) -> Value {
    Value::Array(
        v.iter()
            .map(|x| {
                x.to_string()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            })
            .collect(),
    )
}

fn bad_item(index: u64, what: &str) -> PredictError {
    PredictError::Permanent(format!("item {index}: {what}"))
}

/// A cache directory name for a model location.
pub fn cache_name(location: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in location.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> EmbedModels {
        EmbedModels::new(Device::Cpu { threads: 1 }, None)
    }

    #[test]
    fn config_names_what_is_wrong() {
        let m = models();
        let err = m.config(&Map::new()).err().unwrap_or_default();
        assert!(err.contains("config.model is not set"), "{err}");
        let bad = json!({"model": "/m", "precision": "int8"});
        let err = m.config(bad.as_object().unwrap_or(&Map::new())).err().unwrap_or_default();
        assert!(err.contains("config.precision"), "{err}");
        let ok = json!({"model": "/m", "precision": "fp16"});
        let c = m.config(ok.as_object().unwrap_or(&Map::new())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.model.as_str(), c.precision), ("/m", Precision::Fp32), "the CPU computes in fp32");
    }

    #[test]
    fn a_gpu_defaults_to_fp16_and_runs_what_the_job_asks() {
        let gpu = EmbedModels::new(Device::Cuda { ordinal: 0, name: "test".into() }, Some("/default".into()));
        let precision = |config: Value| {
            gpu.config(config.as_object().unwrap_or(&Map::new()))
                .map(|c| (c.model, c.precision))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(precision(json!({})), ("/default".to_owned(), Precision::Fp16));
        assert_eq!(precision(json!({"precision": "bf16"})).1, Precision::Bf16);
        assert_eq!(precision(json!({"precision": "fp32"})).1, Precision::Fp32);
    }

    #[test]
    fn vectors_are_written_short_and_read_back_exactly() {
        let v = [0.006_903_058_f32, -0.063_023_4, 1.0, 0.0];
        let text = serde_json::to_string(&compact(&v)).unwrap_or_default();
        assert_eq!(text, "[0.006903058,-0.0630234,1.0,0.0]");
        let back: Vec<f32> = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back, v);
    }

    #[test]
    fn cache_names_are_stable_and_distinct() {
        assert_eq!(cache_name("s3://b/m"), cache_name("s3://b/m"));
        assert_ne!(cache_name("s3://b/m"), cache_name("s3://b/n"));
    }
}
