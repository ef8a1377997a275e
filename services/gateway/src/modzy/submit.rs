//! `POST /api/jobs`: Modzy's job submission, as a native job over named
//! inputs. Each input source (`sources`' key) is one item, named so; its
//! model inputs (`input.txt`, ...) are the item's inputs.
//!
//! - `text`: each value is the input's text.
//! - `embedded`: each value is a `data:<type>;base64,<data>` URI. Data that
//!   is UTF-8 reaches the predictor as its text; other data as the URI.
//! - `aws-s3`: each value is `{"bucket", "key"}`, an object the worker reads
//!   when the item runs.
//! - `aws-s3-folder`: each source has one input, `{"bucket", "path"}` (or
//!   `"prefix"`/`"key"`), and every object under it is an item, named
//!   `<source>/<key after the prefix>`.
//!
//! Both S3 types are read with the job's own `accessKeyID`,
//! `secretAccessKey` and `region`, and `endpoint` (not in Modzy's SDK) for
//! an S3-compatible store; without it, the cluster's S3 endpoint. The
//! credentials go to the scheduler, which seals them before storing them;
//! they are never returned or logged.
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
    input: Option<InputBody>,
    workers: Option<i32>,
    batch_size: Option<i32>,
}

#[derive(Debug, Deserialize)]
struct ModelRef {
    identifier: Option<String>,
    version: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InputBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    sources: Option<Map<String, Value>>,
    #[serde(rename = "accessKeyID")]
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    driver: Option<String>,
    query: Option<String>,
}

impl std::fmt::Debug for InputBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("kind", &self.kind)
            .field("sources", &self.sources)
            .field("url", &self.url)
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

/// What a job reads.
enum Source {
    Named(Vec<pb::NamedInput>),
    Folders(Vec<pb::S3Folder>),
    Sql(pb::SqlQuery),
}

/// What every submission says besides its input.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct Head {
    pub model: String,
    pub version: String,
    pub timeout_ms: Option<i64>,
    pub workers: i32,
    pub batch_size: i32,
}

/// A submission, checked. Its Debug leaves the credentials out.
pub struct Submission {
    pub head: Head,
    source: Source,
    credentials: Option<pb::S3Credentials>,
}

/// A `POST /api/jobs`: a job to submit, or, with no input, a job to open
/// for uploads (see `upload`).
#[derive(Debug)]
pub enum Parsed {
    Submit(Submission),
    Open(Head),
}

/// Reads and checks a submission; errors name the field.
pub fn parse(body: &[u8]) -> Result<Parsed, FieldViolation> {
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
    if body.explain {
        return Err(FieldViolation::new("explain", "batchmill's pipelines give no explanations; send false"));
    }
    if let Some(t) = body.timeout
        && t <= 0
    {
        return Err(FieldViolation::new("timeout", "must be a positive number of milliseconds"));
    }
    let head = Head {
        model: identifier,
        version,
        timeout_ms: body.timeout,
        workers: body.workers.unwrap_or(1),
        batch_size: body.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
    };
    let Some(input) = body.input else { return Ok(Parsed::Open(head)) };
    let kind = input.kind.clone().unwrap_or_default();
    if kind == "jdbc" {
        return jdbc(&input).map(|q| Parsed::Submit(Submission { head, source: Source::Sql(q), credentials: None }));
    }
    let sources = input
        .sources
        .as_ref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| FieldViolation::new("input.sources", "must hold at least one input item"))?;
    let (source, credentials) = match kind.as_str() {
        "text" => (
            Source::Named(named(sources, |field, v| match v {
                Value::String(s) => Ok(Given::Inline(Value::String(s.clone()))),
                _ => Err(FieldViolation::new(field, "must be a string")),
            })?),
            None,
        ),
        "embedded" => (Source::Named(named(sources, |f, v| embedded(f, v).map(Given::Inline))?), None),
        "aws-s3" => (
            Source::Named(named(sources, |f, v| object(f, v, &["key"]).map(Given::Object))?),
            Some(credentials(&input)?),
        ),
        "aws-s3-folder" => (Source::Folders(folders(sources)?), Some(credentials(&input)?)),
        other => {
            return Err(FieldViolation::new(
                "input.type",
                format!("{other:?} is not an input type; use text, embedded, aws-s3, aws-s3-folder or jdbc"),
            ));
        }
    };
    Ok(Parsed::Submit(Submission { head, source, credentials }))
}

/// One model input of a source: a value, or an S3 object read later.
enum Given {
    Inline(Value),
    Object(String),
}

/// Each source as a named input, its values converted by `value`.
impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("head", &self.head)
            .field(
                "source",
                &match &self.source {
                    Source::Named(inputs) => format!("{} named inputs", inputs.len()),
                    Source::Folders(folders) => format!("{} folders", folders.len()),
                    Source::Sql(q) => format!("query over {}", q.url),
                },
            )
            .field("credentials", &self.credentials.as_ref().map(|c| &c.access_key_id))
            .finish_non_exhaustive()
    }
}

fn named(
    sources: &Map<String, Value>,
    value: impl Fn(&str, &Value) -> Result<Given, FieldViolation>,
) -> Result<Vec<pb::NamedInput>, FieldViolation> {
    let mut out = Vec::with_capacity(sources.len());
    for (name, files) in sources {
        let field = format!("input.sources.{name}");
        let files = files
            .as_object()
            .ok_or_else(|| FieldViolation::new(&field, "must map the model's input names to values"))?;
        let mut item = pb::NamedInput { name: name.clone(), ..Default::default() };
        for (input, v) in files {
            match value(&format!("{field}.{input}"), v)? {
                Given::Inline(v) => drop(item.inputs.insert(input.clone(), batchmill_core::json::json_to_value(&v))),
                Given::Object(uri) => drop(item.objects.insert(input.clone(), uri)),
            }
        }
        out.push(item);
    }
    Ok(out)
}

/// `{"bucket", <the first of keys>}` as s3://bucket/key.
fn object(field: &str, v: &Value, keys: &[&str]) -> Result<String, FieldViolation> {
    let bucket = v.get("bucket").and_then(Value::as_str).filter(|b| !b.is_empty());
    let bucket = bucket.ok_or_else(|| FieldViolation::new(format!("{field}.bucket"), "must be set"))?;
    let key = keys.iter().find_map(|k| v.get(*k).and_then(Value::as_str));
    let key = key.ok_or_else(|| FieldViolation::new(format!("{field}.{}", keys[0]), "must be set"))?;
    Ok(format!("s3://{bucket}/{}", key.trim_start_matches('/')))
}

/// Each `aws-s3-folder` source: one input, a bucket and a prefix.
fn folders(sources: &Map<String, Value>) -> Result<Vec<pb::S3Folder>, FieldViolation> {
    let mut out = Vec::with_capacity(sources.len());
    for (name, files) in sources {
        let field = format!("input.sources.{name}");
        let one = files.as_object().filter(|f| f.len() == 1).and_then(|f| f.iter().next());
        let (input, v) = one.ok_or_else(|| {
            FieldViolation::new(&field, "must map exactly one model input to a folder {\"bucket\", \"path\"}")
        })?;
        let s3_path = object(&format!("{field}.{input}"), v, &["path", "prefix", "key"])?;
        out.push(pb::S3Folder { name: name.clone(), input: input.clone(), s3_path });
    }
    Ok(out)
}

/// A `jdbc` input: PostgreSQL only (`jdbc:postgresql://`, driver
/// `org.postgresql.Driver`); the URL is checked again, natively.
fn jdbc(input: &InputBody) -> Result<pb::SqlQuery, FieldViolation> {
    let need = |field: &str, v: &Option<String>| {
        v.clone().filter(|s| !s.is_empty()).ok_or_else(|| FieldViolation::new(format!("input.{field}"), "must be set"))
    };
    let url = need("url", &input.url)?;
    if !url.starts_with("jdbc:postgresql://") {
        return Err(FieldViolation::new(
            "input.url",
            format!("{url:?} is not a jdbc:postgresql:// URL; batchmill reads PostgreSQL"),
        ));
    }
    if let Some(driver) = input.driver.as_deref().filter(|d| !d.is_empty() && *d != "org.postgresql.Driver") {
        return Err(FieldViolation::new("input.driver", format!("{driver:?}: only org.postgresql.Driver is served")));
    }
    Ok(pb::SqlQuery {
        url,
        username: need("username", &input.username)?,
        password: input.password.clone().unwrap_or_default(),
        query: need("query", &input.query)?,
        batch_size: 0,
    })
}

/// The job's own S3 credentials, for the S3 input types.
fn credentials(input: &InputBody) -> Result<pb::S3Credentials, FieldViolation> {
    let need = |field: &str, v: &Option<String>| {
        v.clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| FieldViolation::new(format!("input.{field}"), "must be set for S3 inputs"))
    };
    Ok(pb::S3Credentials {
        access_key_id: need("accessKeyID", &input.access_key_id)?,
        secret_access_key: need("secretAccessKey", &input.secret_access_key)?,
        region: input.region.clone().unwrap_or_default(),
        endpoint: input.endpoint.clone().unwrap_or_default(),
    })
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
    /// A job over named inputs that are read as they are (uploads).
    pub fn named(head: Head, inputs: Vec<pb::NamedInput>) -> Submission {
        Submission { head, source: Source::Named(inputs), credentials: None }
    }

    /// The native submission.
    pub fn into_request(self) -> pb::SubmitJobRequest {
        use pb::submit_job_request::Source as S;
        let batch_size = self.head.batch_size;
        let source = match self.source {
            Source::Named(inputs) => S::NamedInputs(pb::NamedInputs { inputs, batch_size }),
            Source::Folders(folders) => S::S3Folders(pb::S3Folders { folders, batch_size }),
            Source::Sql(query) => S::SqlQuery(pb::SqlQuery { batch_size, ..query }),
        };
        pb::SubmitJobRequest {
            pipeline: self.head.model,
            workers: self.head.workers,
            source: Some(source),
            timeout: self.head.timeout_ms.map(|t| batchmill_core::time::duration_ms(t.unsigned_abs())),
            s3_credentials: self.credentials,
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

    /// A submission to submit.
    fn submission(body: &Value) -> Submission {
        match parse(body.to_string().as_bytes()) {
            Ok(Parsed::Submit(s)) => s,
            other => panic!("not a submission: {other:?}"),
        }
    }

    #[test]
    fn text_and_embedded_sources_become_named_inputs() {
        let body = json!({"model": {"identifier": "echo", "version": "1"}, "explain": false,
            "input": {"type": "text", "sources": {"a": {"input.txt": "hi"}, "b": {"input.txt": "yo"}}}});
        let s = submission(&body);
        assert!(matches!(&s.source, Source::Named(inputs) if inputs.len() == 2));
        assert_eq!((s.head.model.as_str(), s.head.version.as_str()), ("echo", "1"));
        let embedded = json!({"model": {"identifier": "echo", "version": 1},
            "input": {"type": "embedded", "sources": {"a": {"input.txt": "data:text/plain;base64,aGVsbG8="}, "b": {"x": "data:application/octet-stream;base64,/w=="}}}});
        let s = submission(&embedded);
        let Source::Named(inputs) = &s.source else { panic!("named inputs") };
        let value = |i: usize, k: &str| inputs[i].inputs.get(k).map(batchmill_core::json::value_to_json);
        assert_eq!(value(0, "input.txt"), Some(json!("hello")));
        assert_eq!(value(1, "x"), Some(json!("data:application/octet-stream;base64,/w==")), "binary stays a data URI");
    }

    #[test]
    fn s3_sources_become_objects_and_folders_with_the_jobs_credentials() {
        let body = json!({"model": {"identifier": "echo", "version": "1"}, "input": {"type": "aws-s3",
            "accessKeyID": "AK", "secretAccessKey": "SK", "region": "us-east-1", "endpoint": "http://127.0.0.1:9000",
            "sources": {"a": {"input.txt": {"bucket": "b", "key": "/docs/a.txt"}}}}});
        let s = submission(&body);
        assert!(!format!("{s:?}").contains("SK"), "the secret is never printed");
        let request = s.into_request();
        let Some(pb::submit_job_request::Source::NamedInputs(named)) = &request.source else { panic!("named") };
        assert_eq!(named.inputs[0].objects.get("input.txt").map(String::as_str), Some("s3://b/docs/a.txt"));
        assert_eq!(
            request.s3_credentials.map(|c| (c.secret_access_key, c.endpoint)),
            Some(("SK".into(), "http://127.0.0.1:9000".into()))
        );
        let body = json!({"model": {"identifier": "echo", "version": "1"}, "input": {"type": "aws-s3-folder",
            "accessKeyID": "AK", "secretAccessKey": "SK", "region": "us-east-1",
            "sources": {"docs": {"input.txt": {"bucket": "b", "path": "/docs/"}}}}});
        let request = submission(&body).into_request();
        let Some(pb::submit_job_request::Source::S3Folders(f)) = &request.source else { panic!("folders") };
        assert_eq!(
            (f.folders[0].name.as_str(), f.folders[0].input.as_str(), f.folders[0].s3_path.as_str()),
            ("docs", "input.txt", "s3://b/docs/")
        );
    }

    #[test]
    fn jdbc_becomes_a_sql_query_of_postgresql_only() {
        let jdbc = |url: &str, driver: &str| {
            json!({"model": {"identifier": "echo", "version": "1"}, "input": {"type": "jdbc",
            "url": url, "username": "u", "password": "pw-9", "driver": driver, "query": "select 1"}})
        };
        let s = submission(&jdbc("jdbc:postgresql://db:5432/app", "org.postgresql.Driver"));
        assert!(!format!("{s:?}").contains("pw-9"), "the password is never printed");
        let Some(pb::submit_job_request::Source::SqlQuery(q)) = s.into_request().source else { panic!("sql") };
        assert_eq!((q.url.as_str(), q.password.as_str(), q.batch_size), ("jdbc:postgresql://db:5432/app", "pw-9", 10));
        assert_eq!(field(jdbc("jdbc:mysql://db/app", "")), "input.url");
        assert_eq!(field(jdbc("jdbc:postgresql://db/app", "com.mysql.Driver")), "input.driver");
    }

    #[test]
    fn no_input_opens_a_job_for_uploads() {
        let body = json!({"model": {"identifier": "echo", "version": "1"}, "explain": false, "timeout": 5000});
        let head = match parse(body.to_string().as_bytes()) {
            Ok(Parsed::Open(head)) => head,
            other => panic!("not an opening: {other:?}"),
        };
        assert_eq!(
            head,
            Head { model: "echo".into(), version: "1".into(), timeout_ms: Some(5000), workers: 1, batch_size: 10 }
        );
        assert_eq!(field(json!({"model": {"identifier": "echo", "version": "1"}, "explain": true})), "explain");
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
