//! The built-in `embed` pipeline's job config, read one way where jobs are
//! accepted (the scheduler refuses a bad one, naming the field) and where
//! they run (the worker).

use serde_json::{Map, Value};

use crate::{FieldViolation, S3Uri};

/// The pipeline's name.
pub const PIPELINE: &str = "embed";

/// How a GPU stores GEMM inputs; the CPU always computes in fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fp16,
    Bf16,
    Fp32,
}

/// What a job's `config` asks of `embed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbedConfig {
    /// `config.model`: a model directory or an `s3://` prefix; None for the
    /// worker's default.
    pub model: Option<String>,
    /// `config.precision`; None for the device's default.
    pub precision: Option<Precision>,
}

impl EmbedConfig {
    pub fn parse(config: &Map<String, Value>) -> Result<EmbedConfig, FieldViolation> {
        let model = match config.get("model") {
            None => None,
            Some(Value::String(m)) if m.starts_with("s3://") => {
                S3Uri::parse(m).map_err(|e| FieldViolation::new("config.model", e.to_string()))?;
                Some(m.clone())
            }
            Some(Value::String(m)) if !m.is_empty() => Some(m.clone()),
            Some(other) => {
                return Err(FieldViolation::new(
                    "config.model",
                    format!("{other} is not a directory or an s3:// prefix"),
                ));
            }
        };
        let precision = match config.get("precision").map(Value::as_str) {
            None => None,
            Some(Some("fp16")) => Some(Precision::Fp16),
            Some(Some("bf16")) => Some(Precision::Bf16),
            Some(Some("fp32")) => Some(Precision::Fp32),
            Some(_) => {
                return Err(FieldViolation::new("config.precision", "must be \"fp16\", \"bf16\" or \"fp32\""));
            }
        };
        Ok(EmbedConfig { model, precision })
    }
}
