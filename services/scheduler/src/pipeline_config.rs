//! A pipeline version's config contract, as Archetype's JOS has it: a JSON
//! Schema of the config, the fields a job may override, and defaults. A
//! job's config is the defaults with its overrides merged over them
//! (objects key by key), then validated against the schema:
//!
//! - an override outside the overridable fields is refused, naming it as
//!   locked (`config.batch.size is locked`);
//! - a schema violation is refused, naming the JSON path (`config.threshold`).
//!
//! Overridable fields are dotted paths (`threshold`, `model.precision`); a
//! path covers everything under it, and `*` covers every field. A pipeline
//! with no schema (a `cortex.yaml` deploy) is open: every field may be set,
//! none is checked.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use batchmill_core::FieldViolation;

use crate::pipelines::merge_config;

/// The overridable path that lets a job set any field (the schema still
/// checks it).
pub const EVERY_FIELD: &str = "*";

/// Most overridable paths a pipeline names.
const MOST_PATHS: usize = 256;

/// The config contract of one pipeline version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigContract {
    /// The JSON Schema of the whole config; None for an open pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// The dotted paths a job may set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overridable: Vec<String>,
    /// The config a job starts from.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub defaults: Map<String, Value>,
}

impl ConfigContract {
    /// Checks a contract given at deploy: the schema compiles, the
    /// overridable paths are well formed, and the defaults satisfy the
    /// schema. Errors name the request field.
    pub fn new(
        schema: Option<Value>,
        overridable: Vec<String>,
        defaults: Map<String, Value>,
    ) -> Result<ConfigContract, FieldViolation> {
        if schema.is_none() && !(overridable.is_empty() && defaults.is_empty()) {
            return Err(FieldViolation::new(
                "config_schema",
                "must be set when overridable fields or defaults are: they are checked against it",
            ));
        }
        if overridable.len() > MOST_PATHS {
            return Err(FieldViolation::new("overridable", format!("names more than {MOST_PATHS} paths")));
        }
        for (i, path) in overridable.iter().enumerate() {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(FieldViolation::new(
                    format!("overridable[{i}]"),
                    format!("{path:?} is not a dotted path such as \"threshold\" or \"model.precision\""),
                ));
            }
        }
        let contract = ConfigContract { schema, overridable, defaults };
        if let Some(schema) = &contract.schema {
            let validator = jsonschema::validator_for(schema)
                .map_err(|e| FieldViolation::new("config_schema", format!("is not a valid JSON Schema: {e}")))?;
            // A required field may have no default: each job then sets it.
            let defaults = Value::Object(contract.defaults.clone());
            let wrong = validator
                .iter_errors(&defaults)
                .find(|e| !matches!(e.kind(), jsonschema::error::ValidationErrorKind::Required { .. }));
            if let Some(error) = wrong {
                let (field, why) = violation("defaults", &error);
                return Err(FieldViolation::new(field, format!("does not satisfy the config schema: {why}")));
            }
        }
        Ok(contract)
    }

    /// Whether jobs may set anything (no schema).
    pub fn is_open(&self) -> bool {
        self.schema.is_none()
    }

    /// A job's config: the defaults with `overrides` merged over them,
    /// checked. Errors name the field under `config`.
    pub fn config_for(&self, overrides: &Map<String, Value>) -> Result<Map<String, Value>, FieldViolation> {
        let Some(schema) = &self.schema else {
            return Ok(merge_config(&self.defaults, overrides));
        };
        let mut leaves = Vec::new();
        leaf_paths(overrides, "", &mut leaves);
        if let Some(locked) = leaves.iter().find(|leaf| !self.covers(leaf)) {
            let allowed = if self.overridable.is_empty() { "none".to_owned() } else { self.overridable.join(", ") };
            return Err(FieldViolation::new(
                format!("config.{locked}"),
                format!("is locked: this pipeline lets a job set only: {allowed}"),
            ));
        }
        let merged = merge_config(&self.defaults, overrides);
        // The schema compiled at deploy; a record from elsewhere that does
        // not is the pipeline's fault, named as such.
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| FieldViolation::new("pipeline", format!("its config schema does not compile: {e}")))?;
        if let Some(error) = validator.iter_errors(&Value::Object(merged.clone())).next() {
            let (field, why) = violation("config", &error);
            return Err(FieldViolation::new(field, why));
        }
        Ok(merged)
    }

    /// Whether an overridable path is `leaf` or lies above it.
    fn covers(&self, leaf: &str) -> bool {
        self.overridable.iter().any(|path| {
            path == EVERY_FIELD || leaf == path || leaf.strip_prefix(path.as_str()).is_some_and(|r| r.starts_with('.'))
        })
    }
}

/// A schema violation as the field it names, under `root`, and why: a
/// missing or unknown field is named itself, not its parent.
fn violation(root: &str, error: &jsonschema::ValidationError<'_>) -> (String, String) {
    use jsonschema::error::ValidationErrorKind as Kind;
    let at = format!("{root}{}", dotted(error.instance_path().as_str()));
    match error.kind() {
        Kind::Required { property } => {
            let name = property.as_str().map_or_else(|| property.to_string(), str::to_owned);
            (format!("{at}.{name}"), "is required".to_owned())
        }
        Kind::AdditionalProperties { unexpected } if !unexpected.is_empty() => {
            (format!("{at}.{}", unexpected[0]), "is not a field of this pipeline's config".to_owned())
        }
        _ => (at, error.to_string()),
    }
}

/// Every leaf's dotted path in `object` (an empty object is a leaf).
fn leaf_paths(object: &Map<String, Value>, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in object {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            Value::Object(inner) if !inner.is_empty() => leaf_paths(inner, &path, out),
            _ => out.push(path),
        }
    }
}

/// A JSON pointer (`/a/0/b`) as a dotted suffix (`.a[0].b`); `""` for the root.
fn dotted(pointer: &str) -> String {
    pointer
        .split('/')
        .skip(1)
        .map(|part| {
            let part = part.replace("~1", "/").replace("~0", "~");
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                format!("[{part}]")
            } else {
                format!(".{part}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn contract() -> ConfigContract {
        let schema = json!({
            "type": "object",
            "properties": {
                "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                "model": {"type": "object", "properties": {
                    "name": {"type": "string"},
                    "precision": {"enum": ["fp32", "fp16"]}
                }, "required": ["name"], "additionalProperties": false},
                "labels": {"type": "array", "items": {"type": "string"}},
                "batch": {"type": "integer"}
            },
            "required": ["threshold", "model"],
            "additionalProperties": false
        });
        let defaults = object(json!({"threshold": 0.5, "model": {"name": "resnet", "precision": "fp32"}, "batch": 8}));
        ConfigContract::new(Some(schema), vec!["threshold".into(), "model.precision".into(), "labels".into()], defaults)
            .expect("a valid contract")
    }

    #[test]
    fn overrides_merge_over_the_defaults() {
        let config = contract().config_for(&object(json!({"threshold": 0.9, "model": {"precision": "fp16"}})));
        assert_eq!(
            config.map(Value::Object),
            Ok(json!({"threshold": 0.9, "model": {"name": "resnet", "precision": "fp16"}, "batch": 8}))
        );
        assert_eq!(contract().config_for(&Map::new()).map(|c| c["batch"].clone()), Ok(json!(8)));
    }

    #[test]
    fn a_locked_field_is_refused_naming_it() {
        for (overrides, field) in [
            (json!({"batch": 4}), "config.batch"),
            (json!({"model": {"name": "vgg"}}), "config.model.name"),
            (json!({"model": "x"}), "config.model"),
        ] {
            let error = contract().config_for(&object(overrides.clone())).expect_err("locked");
            assert_eq!(error.field, field, "{overrides}");
            assert!(
                error.description.contains("is locked") && error.description.contains("model.precision"),
                "{error}"
            );
        }
    }

    #[test]
    fn schema_violations_name_the_json_path() {
        let cases = [
            (json!({"threshold": "high"}), "config.threshold"),
            (json!({"threshold": 2}), "config.threshold"),
            (json!({"model": {"precision": "int8"}}), "config.model.precision"),
            (json!({"labels": ["a", 3]}), "config.labels[1]"),
        ];
        for (overrides, field) in cases {
            let error = contract().config_for(&object(overrides.clone())).expect_err("invalid");
            assert_eq!(error.field, field, "{overrides}: {error}");
        }
        // Unknown and missing fields: against a contract whose defaults lack
        // a required field, and one that lets a job set anything at the top.
        let open_top = ConfigContract { overridable: vec!["extra".into(), "threshold".into()], ..contract() };
        let unknown = open_top.config_for(&object(json!({"extra": 1}))).expect_err("unknown field");
        assert_eq!(
            (unknown.field.as_str(), unknown.description.as_str()),
            ("config.extra", "is not a field of this pipeline's config")
        );
        let no_default = ConfigContract { defaults: object(json!({"model": {"name": "m"}})), ..open_top };
        let missing = no_default.config_for(&Map::new()).expect_err("missing field");
        assert_eq!((missing.field.as_str(), missing.description.as_str()), ("config.threshold", "is required"));
        assert!(no_default.config_for(&object(json!({"threshold": 0.1}))).is_ok(), "a job sets what has no default");
    }

    #[test]
    fn an_open_pipeline_takes_any_config() {
        let open = ConfigContract::default();
        assert!(open.is_open());
        let anything = object(json!({"a": {"b": [1, 2]}, "c": null}));
        assert_eq!(open.config_for(&anything), Ok(anything.clone()));
    }

    #[test]
    fn a_contract_is_checked_at_deploy_naming_the_field() {
        let bad_schema = ConfigContract::new(Some(json!({"type": "no-such-type"})), vec![], Map::new());
        assert_eq!(bad_schema.map_err(|e| e.field), Err("config_schema".into()));
        let bad_path = ConfigContract::new(Some(json!({})), vec!["a..b".into()], Map::new());
        assert_eq!(bad_path.map_err(|e| e.field), Err("overridable[0]".into()));
        let bad_default = ConfigContract::new(
            Some(json!({"properties": {"n": {"type": "integer"}}})),
            vec![],
            object(json!({"n": "x"})),
        );
        assert_eq!(bad_default.map_err(|e| e.field), Err("defaults.n".into()));
        let no_schema = ConfigContract::new(None, vec!["a".into()], Map::new());
        assert_eq!(no_schema.map_err(|e| e.field), Err("config_schema".into()));
        let required = json!({"properties": {"n": {"type": "integer"}}, "required": ["n"]});
        assert!(
            ConfigContract::new(Some(required), vec!["n".into()], Map::new()).is_ok(),
            "a required field needs no default"
        );
    }
}
