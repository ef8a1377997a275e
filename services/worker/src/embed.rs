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
    pub fn config(&self, config: &Map<String, Value>) -> Result<ModelChoice, crate::LoadError> {
        let c = batchmill_core::embed::EmbedConfig::parse(config)?;
        let model = c.model.or_else(|| self.default_model.clone()).ok_or(crate::LoadError::NoModel)?;
        let precision = match (&self.device, c.precision) {
            (Device::Cpu { .. }, _) | (_, Some(Asked::Fp32)) => Precision::Fp32,
            (Device::Cuda { .. }, None | Some(Asked::Fp16)) => Precision::Fp16,
            (Device::Cuda { .. }, Some(Asked::Bf16)) => Precision::Bf16,
        };
        Ok(ModelChoice { model, precision })
    }

    /// Batches a job runs at once. A GPU takes two, so that one batch is
    /// parsed, tokenized and written while the other's encoder runs; the
    /// CPU backend already keeps every core busy with one.
    pub fn lanes(&self) -> usize {
        match self.device {
            Device::Cpu { .. } => 1,
            Device::Cuda { .. } => 2,
        }
    }

    /// The model at `dir` (already local), loaded once.
    pub fn load(
        &self,
        location: &str,
        dir: PathBuf,
        precision: Precision,
    ) -> Result<Arc<Embedder>, batchmill_embed::EmbedError> {
        let key = (location.to_owned(), precision);
        if let Some(e) = self.take(&key) {
            return Ok(e);
        }
        let choice = match self.device {
            Device::Cpu { .. } => DeviceChoice::Cpu,
            Device::Cuda { .. } => DeviceChoice::Cuda,
        };
        let embedder = Arc::new(Embedder::load(&dir, choice, precision)?);
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
    /// Batches in flight at once: see [`Predictor::lanes`].
    pub lanes: usize,
}

impl Embed {
    /// Each item's id and text. A string item's id is its index in the job;
    /// a named input's ([`batchmill_core::named`]) is its name, and its text
    /// its one input.
    pub fn items<'a>(batch: &BatchInput<'a>) -> Result<(Vec<Value>, Vec<&'a str>), PredictError> {
        let mut ids = Vec::with_capacity(batch.items.len());
        let mut texts = Vec::with_capacity(batch.items.len());
        for (i, item) in batch.items.iter().enumerate() {
            let index = batch.first_item + i as u64;
            if let Some(name) = batchmill_core::named::name_of(item) {
                let inputs = batchmill_core::named::inputs_of(item).into_iter().flat_map(|i| i.values());
                let strings: Vec<&str> = inputs.filter_map(Value::as_str).collect();
                let [text] = strings[..] else {
                    return Err(bad_item(index, "a named input for embed needs exactly one text input"));
                };
                ids.push(json!(name));
                texts.push(text);
                continue;
            }
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
        Ok((ids, texts))
    }
}

impl Predictor for Embed {
    fn lanes(&self) -> usize {
        self.lanes
    }

    /// The lines [`predict_ndjson`](Self::predict_ndjson) writes, read
    /// back (the worker itself calls that instead).
    fn predict(&self, batch: &BatchInput<'_>) -> Result<Vec<Value>, PredictError> {
        let body = self.predict_ndjson(batch)?;
        body.split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).map_err(|e| PredictError::Permanent(e.to_string())))
            .collect()
    }

    /// Writes each line straight from its vector: building 384 numbers an
    /// item as [`Value`]s first took four times as long as writing them.
    fn predict_ndjson(&self, batch: &BatchInput<'_>) -> Result<Vec<u8>, PredictError> {
        let (ids, texts) = Embed::items(batch)?;
        let vectors = self.embedder.embed(&texts).map_err(|e| PredictError::Retryable(e.to_string()))?;
        Ok(result_lines(&ids, &vectors))
    }
}

/// The result object of items `ids` with their embeddings: one line
/// `{"id": ..., "embedding": [...]}` each.
pub fn result_lines(ids: &[Value], vectors: &[Vec<f32>]) -> Vec<u8> {
    let lines: Vec<Line<'_>> = ids.iter().zip(vectors).map(|(id, v)| Line { id, embedding: v }).collect();
    crate::predictor::ndjson(&lines)
}

/// One result line. Each number of the embedding is written the shortest way
/// that reads back as the same f32 (about 10 characters, not the 19 of its
/// f64 widening).
#[derive(serde::Serialize)]
struct Line<'a> {
    id: &'a Value,
    embedding: &'a [f32],
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
        let err = m.config(&Map::new()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("config.model is not set"), "{err}");
        let bad = json!({"model": "/m", "precision": "int8"});
        let err = m.config(bad.as_object().unwrap_or(&Map::new())).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("config.precision"), "{err}");
        let ok = json!({"model": "/m", "precision": "fp16"});
        let c = m.config(ok.as_object().unwrap_or(&Map::new())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.model.as_str(), c.precision), ("/m", Precision::Fp32), "the CPU computes in fp32");
    }

    #[test]
    fn a_gpu_defaults_to_fp16_and_runs_what_the_job_asks() {
        let gpu = EmbedModels::new(
            Device::Cuda { ordinal: 0, name: "test".into(), memory_bytes: 0 },
            Some("/default".into()),
        );
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
    fn lines_carry_each_id_and_vector_written_short_and_read_back_exactly() {
        let v = [0.006_903_058_f32, -0.063_023_4, 1.0, 0.0, 1e-8, f32::NAN];
        let ids = [json!("a"), json!(7)];
        let vectors = [v.to_vec(), vec![0.5]];
        let body = result_lines(&ids, &vectors);
        let text = String::from_utf8(body).unwrap_or_default();
        assert_eq!(
            text,
            "{\"id\":\"a\",\"embedding\":[0.006903058,-0.0630234,1.0,0.0,1e-8,null]}\n{\"id\":7,\"embedding\":[0.5]}\n"
        );
        let first: Value = serde_json::from_str(text.lines().next().unwrap_or_default()).unwrap_or_default();
        let back: Vec<f32> =
            first["embedding"].as_array().into_iter().flatten().filter_map(Value::as_f64).map(|x| x as f32).collect();
        assert_eq!(back, v[..5]);
    }

    #[test]
    fn items_name_the_one_that_is_wrong() {
        let items = [json!("plain"), json!({"id": "x", "text": "t"}), json!({"text": "no id"})];
        let batch = BatchInput { batch_id: "j-1", seq: 1, first_item: 10, items: &items };
        let (ids, texts) = Embed::items(&batch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids, [json!(10), json!("x"), json!(12)]);
        assert_eq!(texts, ["plain", "t", "no id"]);
        let named = [json!({"name": "item-1", "inputs": {"input.txt": "hello"}})];
        let batch = BatchInput { batch_id: "j-1", seq: 1, first_item: 0, items: &named };
        assert_eq!(Embed::items(&batch).ok(), Some((vec![json!("item-1")], vec!["hello"])));
        let two = [json!({"name": "item-1", "inputs": {"a": "x", "b": "y"}})];
        let batch = BatchInput { batch_id: "j-1", seq: 1, first_item: 0, items: &two };
        assert!(Embed::items(&batch).is_err());
        let bad = [json!("ok"), json!({"id": 1})];
        let batch = BatchInput { batch_id: "j-1", seq: 1, first_item: 10, items: &bad };
        let err = Embed::items(&batch).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("item 11") && err.contains("\"text\""), "{err}");
    }

    #[test]
    fn cache_names_are_stable_and_distinct() {
        assert_eq!(cache_name("s3://b/m"), cache_name("s3://b/m"));
        assert_ne!(cache_name("s3://b/m"), cache_name("s3://b/n"));
    }
}
