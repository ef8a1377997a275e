//! The built-in pipelines, `echo` and `embed`, as versioned templates like
//! deployed ones: each has a version, a description, a config contract (a
//! JSON Schema of what its predictor reads, the fields a job may set, and
//! defaults) and a run policy. A job's config is checked against the
//! template at submission, so a mistake is a 400 naming the field rather
//! than a job failing on its workers. A template changes only with a
//! release of batchmill, and its version says so.

use batchmill_core::FieldViolation;
use batchmill_core::batch::MAX_LANES;
use batchmill_proto::pipelines::v1 as pb;
use serde_json::{Map, Value, json};

use crate::pipeline_config::{ConfigContract, EVERY_FIELD};
use crate::run_policy::RunPolicy;

/// The kind a built-in pipeline shows.
pub const KIND: &str = "BuiltIn";

/// One built-in pipeline's template.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub config: ConfigContract,
    pub run: RunPolicy,
}

/// Every built-in pipeline.
pub fn templates() -> Vec<Template> {
    vec![echo(), embed()]
}

/// `echo`: each item's result is the item. Its config serves tests and
/// overhead benchmarks; any other field is accepted and ignored, as
/// Cortex's clients send their own.
fn echo() -> Template {
    let schema = json!({
        "type": "object",
        "properties": {
            "delay_ms": {"type": "integer", "minimum": 0, "description": "Sleep per batch, in milliseconds."},
            "fail_batches": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "description": "Sequence numbers of batches that fail (retryably)."
            },
            "fail_until_ms": {
                "type": "integer",
                "minimum": 0,
                "description": "The batches in fail_batches fail only until this Unix time in milliseconds."
            },
            "lanes": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LANES,
                "description": "Batches a worker runs at once."
            }
        }
    });
    template("echo", "Writes each item back as its result.", schema, vec![EVERY_FIELD.to_owned()])
}

/// `embed`: sentence embeddings with the built-in encoder.
fn embed() -> Template {
    let schema = json!({
        "type": "object",
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "A model directory on the worker or an s3:// prefix; the worker's own model if unset."
            },
            "precision": {
                "enum": ["fp32", "fp16", "bf16"],
                "description": "The encoder's precision; the device's default if unset (fp16 on a GPU, fp32 on a CPU)."
            }
        },
        "additionalProperties": false
    });
    let description = "Embeds each item's text with a BERT sentence encoder (all-MiniLM-L6-v2 by default), \
                       on a GPU through CUDA or on the CPU; each result is the normalized vector.";
    template(batchmill_core::embed::PIPELINE, description, schema, vec!["model".into(), "precision".into()])
}

fn template(name: &str, description: &str, schema: Value, overridable: Vec<String>) -> Template {
    let config = ConfigContract { schema: Some(schema), overridable, defaults: Map::new() };
    Template {
        name: name.to_owned(),
        version: 1,
        description: description.to_owned(),
        config,
        run: RunPolicy::default(),
    }
}

impl Template {
    /// A job's config: the defaults with `overrides` merged over them,
    /// checked against the schema and then for what a schema cannot say
    /// (an `s3://` model of `embed` is a whole URI). Errors name the field.
    pub fn config_for(&self, overrides: &Map<String, Value>) -> Result<Map<String, Value>, FieldViolation> {
        let config = self.config.config_for(overrides)?;
        if self.name == batchmill_core::embed::PIPELINE {
            batchmill_core::embed::EmbedConfig::parse(&config)?;
        }
        Ok(config)
    }

    pub fn to_proto(&self) -> pb::Pipeline {
        pb::Pipeline {
            name: self.name.clone(),
            built_in: true,
            version: self.version,
            kind: KIND.to_owned(),
            config_schema: self
                .config
                .schema
                .as_ref()
                .and_then(Value::as_object)
                .map(batchmill_core::json::json_to_struct),
            overridable: self.config.overridable.clone(),
            defaults: (!self.config.defaults.is_empty())
                .then(|| batchmill_core::json::json_to_struct(&self.config.defaults)),
            resources: Some(self.run.resources_proto()),
            queue: self.run.queue().to_owned(),
            timeout: self.run.timeout_ms.map(batchmill_core::time::duration_ms),
            retry: self.run.retry_proto(),
            description: self.description.clone(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn every_template_is_a_valid_contract() {
        for t in templates() {
            let checked = ConfigContract::new(t.config.schema.clone(), t.config.overridable.clone(), Map::new());
            assert_eq!(checked.as_ref().err(), None, "{}", t.name);
            assert!(t.to_proto().config_schema.is_some(), "{}", t.name);
        }
    }

    #[test]
    fn echo_checks_what_it_reads_and_lets_anything_else_through() {
        let echo = echo();
        assert!(echo.config.config_for(&object(json!({"delay_ms": 5, "k": 1, "nested": {"x": 1}}))).is_ok());
        for (bad, field) in [
            (json!({"delay_ms": -1}), "config.delay_ms"),
            (json!({"lanes": 9}), "config.lanes"),
            (json!({"fail_batches": ["one"]}), "config.fail_batches[0]"),
        ] {
            let err = echo.config.config_for(&object(bad.clone())).expect_err("refused");
            assert_eq!(err.field, field, "{bad}");
        }
    }

    #[test]
    fn embed_config_is_checked_naming_the_field() {
        let embed = embed();
        assert!(embed.config_for(&Map::new()).is_ok());
        assert!(
            embed.config_for(&object(json!({"model": "s3://batchmill/models/minilm", "precision": "fp32"}))).is_ok()
        );
        assert!(embed.config_for(&object(json!({"model": "/models/minilm"}))).is_ok());
        for (bad, field, why) in [
            (json!({"model": 7}), "config.model", "is not of type"),
            (json!({"model": ""}), "config.model", "shorter than 1"),
            (json!({"model": "s3://"}), "config.model", "bucket"),
            (json!({"precision": "int8"}), "config.precision", "is not one of"),
            (json!({"batch": 8}), "config.batch", "is locked"),
        ] {
            let err = embed.config_for(&object(bad.clone())).expect_err("refused");
            assert_eq!(err.field, field, "{bad}");
            assert!(err.description.contains(why), "{bad}: {}", err.description);
        }
    }
}
