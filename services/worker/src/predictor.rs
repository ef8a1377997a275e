//! Predictors: what a worker runs over a batch. Built in: `echo` and
//! `embed` ([`crate::embed`], loaded by [`crate::Loader`]); deployed
//! pipelines run Cortex Python predictors ([`crate::python`]).

use std::time::Duration;

use batchmill_core::FieldViolation;
use serde_json::{Map, Value};

/// A batch as a predictor sees it.
pub struct BatchInput<'a> {
    /// `<job_id>-<seq>`.
    pub batch_id: &'a str,
    pub seq: u64,
    /// Index of the first item within the job.
    pub first_item: u64,
    pub items: &'a [Value],
}

/// Why a batch failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PredictError {
    /// Worth another delivery.
    #[error("{0}")]
    Retryable(String),
    /// Will fail again; no more deliveries.
    #[error("{0}")]
    Permanent(String),
}

/// Why a completion hook failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The hook raised; its traceback.
    #[error("on_job_complete raised: {0}")]
    Raised(String),
    /// The process running it died.
    #[error("{0}")]
    Died(String),
}

/// Runs a pipeline over batches. Called on a blocking thread.
pub trait Predictor: Send + Sync {
    /// One output per item, in order; each becomes one result line.
    fn predict(&self, batch: &BatchInput<'_>) -> Result<Vec<Value>, PredictError>;

    /// The batch's result object: one JSON line per item, in order. By
    /// default [`predict`](Self::predict)'s outputs, written on every core;
    /// a predictor with large outputs writes its lines itself rather than
    /// build them as [`Value`]s first.
    fn predict_ndjson(&self, batch: &BatchInput<'_>) -> Result<Vec<u8>, PredictError> {
        let outputs = self.predict(batch)?;
        if outputs.len() != batch.items.len() {
            return Err(PredictError::Permanent(format!(
                "predictor returned {} results for {} items",
                outputs.len(),
                batch.items.len()
            )));
        }
        Ok(ndjson(&outputs))
    }

    /// How many batches a worker runs through it at once, each in its own
    /// lane: one by default. A predictor whose device another thread feeds
    /// (the GPU `embed`) asks for more, so that one batch's parsing,
    /// tokenizing and writing on the host overlap another's device time.
    fn lanes(&self) -> usize {
        1
    }

    /// Runs the job's completion hook with its final counts, once every
    /// batch is final; Ok(false) when the predictor has none.
    fn on_job_complete(&self, _metrics: &Value) -> Result<bool, HookError> {
        Ok(false)
    }
}

/// One JSON line per output. Large outputs are written on every core, in
/// slices of 32, then joined in order.
pub fn ndjson<T: serde::Serialize + Sync>(outputs: &[T]) -> Vec<u8> {
    use rayon::prelude::*;
    let lines = |slice: &[T]| {
        let mut buf = Vec::with_capacity(slice.len() * 64);
        for out in slice {
            // Writing to a Vec cannot fail, nor can serializing a Value.
            let _ = serde_json::to_writer(&mut buf, out);
            buf.push(b'\n');
        }
        buf
    };
    if outputs.len() < 64 {
        return lines(outputs);
    }
    outputs.par_chunks(32).map(lines).collect::<Vec<_>>().concat()
}

pub use batchmill_core::batch::MAX_LANES;

/// The built-in sentence-embedding pipeline.
pub const EMBED: &str = batchmill_core::embed::PIPELINE;

/// Names of the built-in pipelines this worker can run.
pub const BUILT_IN: &[&str] = &["echo", EMBED];

/// The predictor of `pipeline` with the job's `config`.
pub fn load(pipeline: &str, config: &Map<String, Value>) -> Result<Box<dyn Predictor>, crate::LoadError> {
    match pipeline {
        "echo" => Ok(Box::new(Echo::from_config(config)?)),
        other => Err(crate::LoadError::UnknownPipeline(other.to_owned())),
    }
}

/// `echo`: each result is `{"index": <item index in the job>, "result": <item>}`
/// (with the item's `"name"` too, for a named input).
///
/// Config, for tests and overhead benchmarks: `delay_ms` (sleep per batch),
/// `fail_batches` (sequence numbers of batches that fail), `fail_items`
/// (indexes in the job of poison items: a call holding one fails whole),
/// `fail_until_ms` (they fail only until this Unix time in milliseconds),
/// and `lanes` (batches run at once, as a GPU `embed` runs two).
pub struct Echo {
    delay: Duration,
    lanes: usize,
    fail_batches: Vec<u64>,
    fail_items: Vec<u64>,
    fail_until_ms: Option<u64>,
}

impl Echo {
    pub fn from_config(config: &Map<String, Value>) -> Result<Echo, FieldViolation> {
        let bad = |field: &str, why: String| FieldViolation::new(format!("config.{field}"), why);
        let delay_ms = match config.get("delay_ms") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| bad("delay_ms", "must be a non-negative integer".into()))?,
        };
        let numbers = |field: &str, what: &str| match config.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().ok_or_else(|| bad(field, format!("must hold {what}"))))
                .collect::<Result<Vec<u64>, _>>(),
            Some(_) => Err(bad(field, "must be an array".into())),
        };
        let fail_batches = numbers("fail_batches", "batch sequence numbers")?;
        let fail_items = numbers("fail_items", "item indexes")?;
        let fail_until_ms = match config.get("fail_until_ms") {
            None => None,
            Some(v) => {
                Some(v.as_u64().ok_or_else(|| bad("fail_until_ms", "must be a Unix time in milliseconds".into()))?)
            }
        };
        let lanes = match config.get("lanes") {
            None => 1,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=MAX_LANES as u64).contains(n))
                .ok_or_else(|| bad("lanes", format!("must be an integer from 1 to {MAX_LANES}")))?
                as usize,
        };
        Ok(Echo { delay: Duration::from_millis(delay_ms), lanes, fail_batches, fail_items, fail_until_ms })
    }
}

impl Predictor for Echo {
    fn lanes(&self) -> usize {
        self.lanes
    }

    fn predict(&self, batch: &BatchInput<'_>) -> Result<Vec<Value>, PredictError> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let failing = self.fail_until_ms.is_none_or(|until| batchmill_core::time::now_ms() < until);
        if failing && self.fail_batches.contains(&batch.seq) {
            return Err(PredictError::Retryable(format!("echo: batch {} fails as configured", batch.batch_id)));
        }
        let indexes = batch.first_item..batch.first_item + batch.items.len() as u64;
        if failing && let Some(poison) = indexes.into_iter().find(|i| self.fail_items.contains(i)) {
            return Err(PredictError::Retryable(format!("echo: item {poison} fails as configured")));
        }
        Ok(batch
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| batchmill_core::named::result_line(batch.first_item + i as u64, item, item.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn echo_returns_each_item_with_its_index() {
        let echo = load("echo", &Map::new()).expect("echo");
        let items = [json!("a"), json!({"b": 1})];
        let out = echo.predict(&BatchInput { batch_id: "j-2", seq: 2, first_item: 20, items: &items }).unwrap();
        assert_eq!(out, vec![json!({"index": 20, "result": "a"}), json!({"index": 21, "result": {"b": 1}})]);
    }

    #[test]
    fn echo_fails_configured_batches_and_checks_config() {
        let config = json!({"fail_batches": [1]}).as_object().cloned().unwrap();
        let echo = load("echo", &config).expect("echo");
        let items = [json!(1)];
        assert!(echo.predict(&BatchInput { batch_id: "j-1", seq: 1, first_item: 0, items: &items }).is_err());
        let bad = json!({"delay_ms": "soon"}).as_object().cloned().unwrap();
        assert!(load("echo", &bad).err().is_some_and(|e| e.to_string().contains("delay_ms")));
        let bad = json!({"lanes": 9}).as_object().cloned().unwrap();
        assert!(load("echo", &bad).err().is_some_and(|e| e.to_string().contains("config.lanes")));
        let two = json!({"lanes": 2}).as_object().cloned().unwrap();
        assert_eq!(load("echo", &two).map(|e| e.lanes()).ok(), Some(2));
        assert!(load("nope", &Map::new()).err().is_some_and(|e| e.to_string().contains("nope")));
    }
}
