//! The validated job spec, and the conversion of a `SubmitJobRequest` into
//! it, naming the wrong field.

use super::*;

/// Where a job's items come from, as submitted.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// Items given inline, each any JSON value.
    Items(Vec<Value>),
    /// One item per selected object: its `s3://bucket/key`.
    FilePaths(S3Selection),
    /// One item per line of every selected object.
    DelimitedFiles(S3Selection),
    /// One named item per object under each folder.
    Folders(Vec<Folder>),
    /// One named item per row of a query.
    Sql(crate::access::SqlSource),
    /// One item per line of each of the account's files, by id.
    Files(Vec<String>),
}

/// S3 objects under prefixes, filtered by globs (see [`crate::glob`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct S3Selection {
    pub s3_paths: Vec<S3Uri>,
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
}

impl S3Selection {
    /// Validates a selection given in request field `field`.
    pub fn parse(
        field: &str,
        s3_paths: &[String],
        includes: &[String],
        excludes: &[String],
    ) -> Result<S3Selection, FieldViolation> {
        if s3_paths.is_empty() {
            return Err(FieldViolation::new(format!("{field}.s3_paths"), "must name at least one s3:// prefix or key"));
        }
        let s3_paths = s3_paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                S3Uri::parse(p).map_err(|e| FieldViolation::new(format!("{field}.s3_paths[{i}]"), e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        crate::glob::Filter::new(includes, excludes)
            .map_err(|e| FieldViolation::new(format!("{field}.{}[{}]", e.list, e.index), e.error.to_string()))?;
        Ok(S3Selection { s3_paths, includes: includes.to_vec(), excludes: excludes.to_vec() })
    }
}

/// A validated job submission.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub pipeline: String,
    pub max_workers: u32,
    pub batch_size: u32,
    pub source: SourceSpec,
    pub config: Map<String, Value>,
    pub output_uri: Option<S3Uri>,
    /// Deliveries of a batch before it is dead-lettered; `None` for the
    /// cluster's default.
    pub max_receive_count: Option<u32>,
    /// Whether a batch that fails for good is bisected to isolate the items
    /// that fail (`dead_letter.bisect`, default true).
    pub bisect: bool,
    /// Milliseconds from submission after which the job times out.
    pub timeout_ms: Option<u64>,
    /// How to read the job's own S3 objects.
    pub s3_access: Option<crate::access::S3Access>,
    /// The password of a SQL source.
    pub sql_password: Option<String>,
    /// Its priority in its queue.
    pub priority: u32,
    /// Its admission queue, if it names one.
    pub queue: Option<String>,
}

/// A prefix whose every object is one named item (see [`crate::named`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Folder {
    pub name: String,
    pub input: String,
    pub s3_path: S3Uri,
}

impl JobSpec {
    /// Checks `req` as [`JobSpec::try_from`] does, except the sizes of its
    /// inline items' batches (checked where the job is made), without
    /// copying its items: cheap however many it holds. `req` is left as it
    /// was.
    pub fn check(req: &mut pb::SubmitJobRequest) -> Result<(), FieldViolation> {
        let items = match &mut req.source {
            Some(pb::submit_job_request::Source::ItemList(list)) if !list.items.is_empty() => {
                std::mem::replace(&mut list.items, vec![prost_types::Value::default()])
            }
            _ => Vec::new(),
        };
        let checked = JobSpec::try_from(req.clone()).map(drop);
        if let Some(pb::submit_job_request::Source::ItemList(list)) = &mut req.source
            && !items.is_empty()
        {
            list.items = items;
        }
        checked
    }
}

impl TryFrom<pb::SubmitJobRequest> for JobSpec {
    type Error = FieldViolation;

    fn try_from(req: pb::SubmitJobRequest) -> Result<Self, FieldViolation> {
        let pipeline = validate_pipeline_name(&req.pipeline)?;
        if req.workers < 1 || req.workers > MAX_WORKERS {
            return Err(FieldViolation::new(
                "workers",
                format!("must be between 1 and {MAX_WORKERS}, got {}", req.workers),
            ));
        }
        let sql_password = match &req.source {
            Some(pb::submit_job_request::Source::SqlQuery(q)) => Some(q.password.clone()),
            _ => None,
        };
        let (source, batch_size) = source_spec(req.source)?;
        let output_uri = if req.output_uri.is_empty() {
            None
        } else {
            Some(S3Uri::parse(&req.output_uri).map_err(|e| FieldViolation::new("output_uri", e.to_string()))?)
        };
        let config = req.config.as_ref().map(crate::json::struct_to_json).unwrap_or_default();
        let bisect = req.dead_letter.as_ref().and_then(|p| p.bisect).unwrap_or(true);
        let max_receive_count = match req.dead_letter {
            None => None,
            // A policy that only says whether to bisect keeps the default.
            Some(p) if p.max_receive_count == 0 && p.bisect.is_some() => None,
            Some(p) if (1..=MAX_RECEIVE_COUNT).contains(&p.max_receive_count) => Some(p.max_receive_count as u32),
            Some(p) => {
                return Err(FieldViolation::new(
                    "dead_letter.max_receive_count",
                    format!("must be between 1 and {MAX_RECEIVE_COUNT}, got {}", p.max_receive_count),
                ));
            }
        };
        let timeout_ms = req.timeout.as_ref().map(check_timeout).transpose()?;
        let s3_access = req
            .s3_credentials
            .as_ref()
            .map(|c| crate::access::S3Access::from_request("s3_credentials", c))
            .transpose()?;
        let queue = if req.queue.is_empty() {
            None
        } else {
            crate::queues::check_name("queue", &req.queue)?;
            Some(req.queue.clone())
        };
        Ok(JobSpec {
            priority: req.priority,
            queue,
            pipeline,
            max_workers: req.workers as u32,
            batch_size,
            source,
            config,
            output_uri,
            max_receive_count,
            bisect,
            timeout_ms,
            s3_access,
            sql_password,
        })
    }
}

/// The source of a submission, and its batch size; errors name the field.
fn source_spec(source: Option<pb::submit_job_request::Source>) -> Result<(SourceSpec, u32), FieldViolation> {
    let (source, batch_size) = match source {
        None => {
            return Err(FieldViolation::new(
                "source",
                "one source must be set: item_list, named_inputs, s3_folders, sql_query, file_path_lister, delimited_files or files",
            ));
        }
        Some(pb::submit_job_request::Source::FilePathLister(s)) => {
            let batch_size = validate_batch_size("file_path_lister.batch_size", s.batch_size)?;
            let selection = S3Selection::parse("file_path_lister", &s.s3_paths, &s.includes, &s.excludes)?;
            (SourceSpec::FilePaths(selection), batch_size)
        }
        Some(pb::submit_job_request::Source::DelimitedFiles(s)) => {
            let batch_size = validate_batch_size("delimited_files.batch_size", s.batch_size)?;
            let selection = S3Selection::parse("delimited_files", &s.s3_paths, &s.includes, &s.excludes)?;
            (SourceSpec::DelimitedFiles(selection), batch_size)
        }
        Some(pb::submit_job_request::Source::ItemList(list)) => {
            let batch_size = validate_batch_size("item_list.batch_size", list.batch_size)?;
            if list.items.is_empty() {
                return Err(FieldViolation::new("item_list.items", "must not be empty"));
            }
            let items: Vec<Value> = list.items.iter().map(crate::json::value_to_json).collect();
            check_batch_bytes(&items, batch_size)?;
            (SourceSpec::Items(items), batch_size)
        }
        Some(pb::submit_job_request::Source::NamedInputs(named)) => {
            let batch_size = validate_batch_size("named_inputs.batch_size", named.batch_size)?;
            let items = named_items(&named.inputs)?;
            check_batch_bytes(&items, batch_size)?;
            (SourceSpec::Items(items), batch_size)
        }
        Some(pb::submit_job_request::Source::SqlQuery(q)) => {
            let batch_size = validate_batch_size("sql_query.batch_size", q.batch_size)?;
            (SourceSpec::Sql(crate::access::SqlSource::from_request("sql_query", &q)?.0), batch_size)
        }
        Some(pb::submit_job_request::Source::Files(f)) => {
            let batch_size = validate_batch_size("files.batch_size", f.batch_size)?;
            if f.file_ids.is_empty() {
                return Err(FieldViolation::new("files.file_ids", "must name at least one file"));
            }
            for (i, id) in f.file_ids.iter().enumerate() {
                crate::files::check_id(&format!("files.file_ids[{i}]"), id)?;
            }
            (SourceSpec::Files(f.file_ids), batch_size)
        }
        Some(pb::submit_job_request::Source::S3Folders(f)) => {
            let batch_size = validate_batch_size("s3_folders.batch_size", f.batch_size)?;
            (SourceSpec::Folders(folders(&f.folders)?), batch_size)
        }
    };
    Ok((source, batch_size))
}

/// Named inputs as the items predictors get ([`crate::named`]): at least
/// one, each named uniquely and with at least one input.
fn named_items(inputs: &[pb::NamedInput]) -> Result<Vec<Value>, FieldViolation> {
    if inputs.is_empty() {
        return Err(FieldViolation::new("named_inputs.inputs", "must not be empty"));
    }
    let mut seen = std::collections::HashSet::with_capacity(inputs.len());
    let mut items = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let field = |f: &str| format!("named_inputs.inputs[{i}].{f}");
        let length = input.name.chars().count();
        if length == 0 || length > crate::named::MAX_NAME {
            return Err(FieldViolation::new(
                field("name"),
                format!("must be 1 to {} characters", crate::named::MAX_NAME),
            ));
        }
        if !seen.insert(input.name.as_str()) {
            return Err(FieldViolation::new(
                field("name"),
                format!("{:?} is given twice; names are unique", input.name),
            ));
        }
        if input.inputs.is_empty() && input.objects.is_empty() {
            return Err(FieldViolation::new(field("inputs"), "must hold at least one input (or object)"));
        }
        let values = input.inputs.iter().map(|(k, v)| (k.clone(), crate::json::value_to_json(v))).collect();
        let mut objects = Map::new();
        for (k, uri) in &input.objects {
            let parsed =
                S3Uri::parse(uri).map_err(|e| FieldViolation::new(field(&format!("objects.{k}")), e.to_string()))?;
            // A key that ends in "/" is an object stored in parts.
            if parsed.key.trim_end_matches('/').is_empty() {
                return Err(FieldViolation::new(
                    field(&format!("objects.{k}")),
                    "must name an object, s3://bucket/key, or an object in parts, s3://bucket/prefix/",
                ));
            }
            objects.insert(k.clone(), Value::String(parsed.to_string()));
        }
        items.push(crate::named::item(&input.name, values, objects));
    }
    Ok(items)
}

/// S3 folders, checked: at least one, each named, with an input and a prefix.
fn folders(folders: &[pb::S3Folder]) -> Result<Vec<Folder>, FieldViolation> {
    if folders.is_empty() {
        return Err(FieldViolation::new("s3_folders.folders", "must not be empty"));
    }
    folders
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let field = |name: &str| format!("s3_folders.folders[{i}].{name}");
            if f.name.is_empty() || f.name.chars().count() > crate::named::MAX_NAME {
                return Err(FieldViolation::new(
                    field("name"),
                    format!("must be 1 to {} characters", crate::named::MAX_NAME),
                ));
            }
            if f.input.is_empty() {
                return Err(FieldViolation::new(field("input"), "must name the model input each object is"));
            }
            let s3_path = S3Uri::parse(&f.s3_path).map_err(|e| FieldViolation::new(field("s3_path"), e.to_string()))?;
            Ok(Folder { name: f.name.clone(), input: f.input.clone(), s3_path })
        })
        .collect()
}

/// Longest timeout a job may ask for: a year.
pub const MAX_TIMEOUT_MS: u64 = 365 * 24 * 3600 * 1000;

/// A job's `timeout` in milliseconds: positive, at most [`MAX_TIMEOUT_MS`].
/// A `timeout` as milliseconds: positive, at most a year.
pub fn check_timeout(d: &prost_types::Duration) -> Result<u64, FieldViolation> {
    let refuse = |why: &str| FieldViolation::new("timeout", format!("{why}, got {}s {}ns", d.seconds, d.nanos));
    if !(-999_999_999..=999_999_999).contains(&d.nanos) {
        return Err(refuse("is not a duration: nanos must be within ±999999999"));
    }
    if d.seconds < 0 || d.nanos < 0 || d.seconds == 0 && d.nanos == 0 {
        return Err(refuse("must be positive"));
    }
    match crate::time::checked_duration_ms(d) {
        Some(ms) if ms <= MAX_TIMEOUT_MS => Ok(ms.max(1)),
        _ => Err(refuse("must be at most a year (31536000s)")),
    }
}

fn validate_pipeline_name(name: &str) -> Result<String, FieldViolation> {
    if name.is_empty() {
        return Err(FieldViolation::new("pipeline", "must not be empty"));
    }
    let ok = name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(FieldViolation::new(
            "pipeline",
            format!("{name:?} is not a pipeline name (lowercase letters, digits, '-', '_', at most 63)"),
        ));
    }
    Ok(name.to_owned())
}

fn validate_batch_size(field: &str, n: i32) -> Result<u32, FieldViolation> {
    if n < 1 {
        return Err(FieldViolation::new(field, format!("must be at least 1, got {n}")));
    }
    Ok(n as u32)
}

/// Refuses a batch whose items, as JSON lines, exceed [`MAX_BATCH_BYTES`].
fn check_batch_bytes(items: &[Value], batch_size: u32) -> Result<(), FieldViolation> {
    for (seq, batch) in items.chunks(batch_size as usize).enumerate() {
        let bytes: usize = batch.iter().map(|v| v.to_string().len() + 1).sum();
        if bytes > MAX_BATCH_BYTES {
            let first = seq * batch_size as usize;
            return Err(FieldViolation::new(
                "item_list.items",
                format!(
                    "batch {seq} (items {first} to {}) is {bytes} bytes, over the {MAX_BATCH_BYTES}-byte (256 KiB) batch limit; use a smaller batch_size",
                    first + batch.len() - 1
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::json_to_value;

    #[test]
    fn a_check_without_copying_items_finds_what_a_full_one_does_and_keeps_the_items() {
        let items: Vec<prost_types::Value> = (0..5).map(|i| json_to_value(&serde_json::json!({"n": i}))).collect();
        let list = |items: Vec<prost_types::Value>, batch_size| {
            Some(pb::submit_job_request::Source::ItemList(pb::ItemList { items, batch_size }))
        };
        let mut ok = pb::SubmitJobRequest {
            pipeline: "echo".into(),
            workers: 1,
            source: list(items.clone(), 2),
            ..Default::default()
        };
        assert_eq!(JobSpec::check(&mut ok), Ok(()));
        assert_eq!(ok.source, list(items.clone(), 2), "the items are back");
        for (mut bad, field) in [
            (pb::SubmitJobRequest { workers: 0, ..ok.clone() }, "workers"),
            (pb::SubmitJobRequest { source: list(vec![], 2), ..ok.clone() }, "item_list.items"),
            (pb::SubmitJobRequest { source: list(items.clone(), 0), ..ok.clone() }, "item_list.batch_size"),
        ] {
            let full = JobSpec::try_from(bad.clone()).err().map(|v| v.field);
            assert_eq!(JobSpec::check(&mut bad).err().map(|v| v.field), full);
            assert_eq!(full.as_deref(), Some(field));
        }
    }
    use serde_json::json;

    fn request(items: Vec<Value>, batch_size: i32, workers: i32) -> pb::SubmitJobRequest {
        pb::SubmitJobRequest {
            pipeline: "echo".into(),
            workers,
            source: Some(pb::submit_job_request::Source::ItemList(pb::ItemList {
                items: items.iter().map(json_to_value).collect(),
                batch_size,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_valid_request() {
        let spec = JobSpec::try_from(request(vec![json!(1), json!({"a": "b"})], 10, 2)).unwrap();
        assert_eq!(spec.batch_size, 10);
        assert_eq!(spec.max_workers, 2);
        assert_eq!(spec.source, SourceSpec::Items(vec![json!(1), json!({"a": "b"})]));
    }

    #[test]
    fn names_each_bad_field() {
        let cases = [
            (request(vec![], 10, 1), "item_list.items"),
            (request(vec![json!(1)], 0, 1), "item_list.batch_size"),
            (request(vec![json!(1)], 1, 0), "workers"),
            (pb::SubmitJobRequest { pipeline: "echo".into(), workers: 1, ..Default::default() }, "source"),
            (pb::SubmitJobRequest { pipeline: "Bad Name".into(), ..request(vec![json!(1)], 1, 1) }, "pipeline"),
            (pb::SubmitJobRequest { output_uri: "http://x".into(), ..request(vec![json!(1)], 1, 1) }, "output_uri"),
            (
                pb::SubmitJobRequest {
                    dead_letter: Some(pb::DeadLetterPolicy { max_receive_count: 0, bisect: None }),
                    ..request(vec![json!(1)], 1, 1)
                },
                "dead_letter.max_receive_count",
            ),
            (
                pb::SubmitJobRequest {
                    timeout: Some(prost_types::Duration { seconds: -5, nanos: 0 }),
                    ..request(vec![json!(1)], 1, 1)
                },
                "timeout",
            ),
        ];
        for (req, field) in cases {
            assert_eq!(JobSpec::try_from(req).unwrap_err().field, field);
        }
    }

    #[test]
    fn timeouts_are_positive_and_bounded() {
        let with = |seconds, nanos| pb::SubmitJobRequest {
            timeout: Some(prost_types::Duration { seconds, nanos }),
            ..request(vec![json!(1)], 1, 1)
        };
        assert_eq!(JobSpec::try_from(with(600, 0)).unwrap().timeout_ms, Some(600_000));
        assert_eq!(JobSpec::try_from(with(0, 1)).unwrap().timeout_ms, Some(1), "under a millisecond rounds up");
        for (seconds, nanos, why) in [
            (0, 0, "positive"),
            (-1, 0, "positive"),
            (i64::MAX, 0, "at most a year"),
            (1, 2_000_000_000, "not a duration"),
        ] {
            let err = JobSpec::try_from(with(seconds, nanos)).unwrap_err();
            assert_eq!(err.field, "timeout");
            assert!(err.description.contains(why), "{seconds}s {nanos}ns: {}", err.description);
        }
    }

    #[test]
    fn refuses_a_batch_over_256_kib_naming_it() {
        let big = json!("x".repeat(150 * 1024));
        let err = JobSpec::try_from(request(vec![json!(1), big.clone(), big.clone(), big], 2, 1)).unwrap_err();
        assert_eq!(err.field, "item_list.items");
        assert!(err.description.contains("batch 1 (items 2 to 3)"), "{}", err.description);
    }

    #[test]
    fn validates_s3_sources_naming_the_field() {
        let lister = |paths: &[&str], includes: &[&str], batch_size| pb::SubmitJobRequest {
            pipeline: "echo".into(),
            workers: 1,
            source: Some(pb::submit_job_request::Source::FilePathLister(pb::FilePathLister {
                s3_paths: paths.iter().map(|s| (*s).to_owned()).collect(),
                includes: includes.iter().map(|s| (*s).to_owned()).collect(),
                excludes: vec![],
                batch_size,
            })),
            ..Default::default()
        };
        let ok = JobSpec::try_from(lister(&["s3://bucket/images/"], &["**.jpg"], 4)).unwrap();
        assert!(matches!(ok.source, SourceSpec::FilePaths(ref s) if s.s3_paths[0].key == "images/"));
        for (req, field) in [
            (lister(&[], &[], 4), "file_path_lister.s3_paths"),
            (lister(&["s3://bucket/a", "gs://x"], &[], 4), "file_path_lister.s3_paths[1]"),
            (lister(&["s3://bucket/a"], &["[bad"], 4), "file_path_lister.includes[0]"),
            (lister(&["s3://bucket/a"], &[], 0), "file_path_lister.batch_size"),
        ] {
            assert_eq!(JobSpec::try_from(req).unwrap_err().field, field);
        }
    }

    #[test]
    fn failure_reasons_round_trip_by_name() {
        for r in [FailureReason::EnqueueFailed, FailureReason::WorkerError, FailureReason::WorkerOom] {
            assert_eq!(FailureReason::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), serde_json::Value::String(r.as_str().into()));
        }
        assert_eq!(FailureReason::parse(""), None);
    }

    #[test]
    fn terminal_states() {
        assert!(JobState::Cancelled.is_terminal());
        assert!(!JobState::Running.is_terminal());
        for state in [JobState::Pending, JobState::Running, JobState::TimedOut, JobState::Cancelled] {
            assert_eq!(is_terminal(pb::JobState::from(state)), state.is_terminal(), "{state:?}");
        }
    }

    fn named(inputs: &[(&str, &[(&str, Value)])]) -> pb::SubmitJobRequest {
        let inputs = inputs
            .iter()
            .map(|(name, values)| pb::NamedInput {
                name: (*name).into(),
                inputs: values.iter().map(|(k, v)| ((*k).to_owned(), crate::json::json_to_value(v))).collect(),
                objects: Default::default(),
            })
            .collect();
        pb::SubmitJobRequest {
            pipeline: "echo".into(),
            workers: 1,
            source: Some(pb::submit_job_request::Source::NamedInputs(pb::NamedInputs { inputs, batch_size: 2 })),
            ..Default::default()
        }
    }

    #[test]
    fn named_inputs_become_named_items_and_bad_ones_are_named() {
        let spec =
            JobSpec::try_from(named(&[("a", &[("input.txt", json!("hi"))]), ("b", &[("input.txt", json!("yo"))])]))
                .expect("valid");
        let SourceSpec::Items(items) = spec.source else { panic!("inline items") };
        assert_eq!(items[0], json!({"name": "a", "inputs": {"input.txt": "hi"}}));
        assert_eq!(crate::named::name_of(&items[1]), Some("b"));
        let field = |r: pb::SubmitJobRequest| JobSpec::try_from(r).err().map(|e| e.field);
        assert_eq!(field(named(&[])), Some("named_inputs.inputs".into()));
        assert_eq!(
            field(named(&[("a", &[("x", json!(1))]), ("a", &[("x", json!(2))])])),
            Some("named_inputs.inputs[1].name".into())
        );
        assert_eq!(field(named(&[("", &[("x", json!(1))])])), Some("named_inputs.inputs[0].name".into()));
        assert_eq!(field(named(&[("a", &[])])), Some("named_inputs.inputs[0].inputs".into()));
    }
}
