//! `POST /api/jobs`: Modzy's job submission, as a native job over named
//! inputs. Each input source (`sources`' key) is one item, named so; its
//! model inputs (`input.txt`, ...) are the item's inputs.
//!
//! - `text`: each value is the input's text.
//! - `embedded`: each value is a `data:<type>;base64,<data>` URI. Data that
//!   is UTF-8 reaches the predictor as its text; other data as the URI.
//!
//! Besides Modzy's fields, `workers` (default 1) and `batchSize` (default
//! 10) may be given.

use base64::Engine;
use batchmill_core::FieldViolation;
use batchmill_proto::jobs::v1 as pb;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Items per batch when the body names none.
const DEFAULT_BATCH_SIZE: i32 = 10;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    model: Option<ModelRef>,
    #[serde(default)]
    explain: bool,
    /// Milliseconds.
    timeout: Option<i64>,
    input: Option<Input>,
    workers: Option<i32>,
    batch_size: Option<i32>,
}

#[derive(Debug, Deserialize)]
struct ModelRef {
    identifier: Option<String>,
    version: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Input {
    #[serde(rename = "type")]
    kind: Option<String>,
    sources: Option<Map<String, Value>>,
}

/// A submission, checked.
#[derive(Debug)]
pub struct Submission {
    pub model: String,
    pub version: String,
    timeout_ms: Option<i64>,
    workers: i32,
    batch_size: i32,
    inputs: Vec<pb::NamedInput>,
}

/// Reads and checks a submission; errors name the field.
pub fn parse(body: &[u8]) -> Result<Submission, FieldViolation> {
    let body: Body =
        serde_json::from_slice(body).map_err(|e| FieldViolation::new("body", format!("is not a Modzy job: {e}")))?;
    let model = body.model.ok_or_else(|| FieldViolation::new("model", "must be set: {\"identifier\", \"version\"}"))?;
    let identifier = model
        .identifier
        .filter(|i| !i.is_empty())
        .ok_or_else(|| FieldViolation::new("model.identifier", "must be set"))?;
    let version = match model.version {
        Some(Value::String(v)) if !v.is_empty() => v,
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(FieldViolation::new("model.version", "must be set, such as \"1\"")),
    };
    let input = body.input.ok_or_else(|| {
        FieldViolation::new("input", "must be set; jobs whose files are uploaded in chunks are not supported yet")
    })?;
    let kind = input.kind.unwrap_or_default();
    let sources = input
        .sources
        .filter(|s| !s.is_empty())
        .ok_or_else(|| FieldViolation::new("input.sources", "must hold at least one input item"))?;
    let inputs = match kind.as_str() {
        "text" => named(&sources, |field, v| match v {
            Value::String(s) => Ok(Value::String(s.clone())),
            _ => Err(FieldViolation::new(field, "must be a string")),
        })?,
        "embedded" => named(&sources, embedded)?,
        "aws-s3" | "aws-s3-folder" | "jdbc" => {
            return Err(FieldViolation::new(
                "input.type",
                format!("{kind:?} is not supported yet; use \"text\" or \"embedded\""),
            ));
        }
        other => {
            return Err(FieldViolation::new(
                "input.type",
                format!("{other:?} is not an input type; use \"text\" or \"embedded\""),
            ));
        }
    };
    if body.explain {
        return Err(FieldViolation::new("explain", "batchmill's pipelines give no explanations; send false"));
    }
    if let Some(t) = body.timeout
        && t <= 0
    {
        return Err(FieldViolation::new("timeout", "must be a positive number of milliseconds"));
    }
    Ok(Submission {
        model: identifier,
        version,
        timeout_ms: body.timeout,
        workers: body.workers.unwrap_or(1),
        batch_size: body.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
        inputs,
    })
}

/// Each source as a named input, its values converted by `value`.
fn named(
    sources: &Map<String, Value>,
    value: impl Fn(&str, &Value) -> Result<Value, FieldViolation>,
) -> Result<Vec<pb::NamedInput>, FieldViolation> {
    let mut out = Vec::with_capacity(sources.len());
    for (name, files) in sources {
        let field = format!("input.sources.{name}");
        let files = files
            .as_object()
            .ok_or_else(|| FieldViolation::new(&field, "must map the model's input names to values"))?;
        let mut inputs = std::collections::HashMap::with_capacity(files.len());
        for (input, v) in files {
            let v = value(&format!("{field}.{input}"), v)?;
            inputs.insert(input.clone(), batchmill_core::json::json_to_value(&v));
        }
        out.push(pb::NamedInput { name: name.clone(), inputs });
    }
    Ok(out)
}

/// An embedded value: a base64 data URI. UTF-8 data becomes its text.
fn embedded(field: &str, v: &Value) -> Result<Value, FieldViolation> {
    let bad = |why: &str| {
        FieldViolation::new(field, format!("is not a data URI ({why}); expected data:<media type>;base64,<data>"))
    };
    let text = v.as_str().ok_or_else(|| bad("not a string"))?;
    let rest = text.strip_prefix("data:").ok_or_else(|| bad("no data: prefix"))?;
    let (meta, data) = rest.split_once(',').ok_or_else(|| bad("no ','"))?;
    if !meta.ends_with(";base64") {
        return Err(bad("not ;base64"));
    }
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(data.trim()).map_err(|_| bad("its data is not base64"))?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => Value::String(s),
        Err(_) => Value::String(text.to_owned()),
    })
}

impl Submission {
    /// The native submission.
    pub fn into_request(self) -> pb::SubmitJobRequest {
        pb::SubmitJobRequest {
            pipeline: self.model,
            workers: self.workers,
            source: Some(pb::submit_job_request::Source::NamedInputs(pb::NamedInputs {
                inputs: self.inputs,
                batch_size: self.batch_size,
            })),
            timeout: self.timeout_ms.map(|t| batchmill_core::time::duration_ms(t.unsigned_abs())),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(body: Value) -> String {
        parse(body.to_string().as_bytes()).err().map(|e| e.field).unwrap_or_default()
    }

    #[test]
    fn text_and_embedded_sources_become_named_inputs() {
        let body = json!({"model": {"identifier": "echo", "version": "1"}, "explain": false,
            "input": {"type": "text", "sources": {"a": {"input.txt": "hi"}, "b": {"input.txt": "yo"}}}});
        let s = parse(body.to_string().as_bytes()).expect("valid");
        assert_eq!((s.model.as_str(), s.version.as_str(), s.inputs.len()), ("echo", "1", 2));
        let embedded = json!({"model": {"identifier": "echo", "version": 1},
            "input": {"type": "embedded", "sources": {"a": {"input.txt": "data:text/plain;base64,aGVsbG8="}, "b": {"x": "data:application/octet-stream;base64,/w=="}}}});
        let s = parse(embedded.to_string().as_bytes()).expect("valid");
        let value = |i: usize, k: &str| s.inputs[i].inputs.get(k).map(batchmill_core::json::value_to_json);
        assert_eq!(value(0, "input.txt"), Some(json!("hello")));
        assert_eq!(value(1, "x"), Some(json!("data:application/octet-stream;base64,/w==")), "binary stays a data URI");
    }

    #[test]
    fn bad_submissions_name_the_field() {
        let model = json!({"identifier": "echo", "version": "1"});
        assert_eq!(field(json!({"input": {"type": "text", "sources": {"a": {"x": "y"}}}})), "model");
        assert_eq!(
            field(json!({"model": {"identifier": "echo"}, "input": {"type": "text", "sources": {"a": {"x": "y"}}}})),
            "model.version"
        );
        assert_eq!(field(json!({"model": model, "input": {"type": "text", "sources": {}}})), "input.sources");
        assert_eq!(
            field(json!({"model": model, "input": {"type": "text", "sources": {"a": {"x": 1}}}})),
            "input.sources.a.x"
        );
        assert_eq!(
            field(
                json!({"model": model, "input": {"type": "embedded", "sources": {"a": {"x": "data:text/plain;base64,!!"}}}})
            ),
            "input.sources.a.x"
        );
        assert_eq!(
            field(json!({"model": model, "input": {"type": "embedded", "sources": {"a": {"x": "hello"}}}})),
            "input.sources.a.x"
        );
        assert_eq!(
            field(json!({"model": model, "input": {"type": "ftp", "sources": {"a": {"x": "y"}}}})),
            "input.type"
        );
        assert_eq!(
            field(json!({"model": model, "timeout": 0, "input": {"type": "text", "sources": {"a": {"x": "y"}}}})),
            "timeout"
        );
    }
}
