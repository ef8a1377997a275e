//! `batchmill submit`: a job over any source the API has, checked first
//! with `--dry-run` if asked, and followed to its end with `--wait`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use batchmill_proto::jobs::v1::{self as pb, job_service_client::JobServiceClient};
use pb::submit_job_request::Source;

use crate::connect::Api;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args([
    "items_file", "count", "ndjson", "s3_files", "named_inputs", "file_ids", "spec",
])))]
pub struct Submit {
    /// Pipeline to run.
    #[arg(long, default_value = "echo")]
    pipeline: String,
    /// Most workers for the job.
    #[arg(long, default_value_t = 2)]
    workers: i32,
    /// Items per batch.
    #[arg(long, default_value_t = 10)]
    batch_size: i32,
    /// A JSON file holding an array of items.
    #[arg(long)]
    items_file: Option<PathBuf>,
    /// Generate N items {"n": i}.
    #[arg(long)]
    count: Option<usize>,
    /// One item per line of the NDJSON objects at these s3:// paths (globs
    /// allowed, as the API takes them).
    #[arg(long, num_args = 1..)]
    ndjson: Vec<String>,
    /// One item per S3 object at these s3:// paths (globs allowed): its s3://bucket/key.
    #[arg(long, num_args = 1..)]
    s3_files: Vec<String>,
    /// Globs of keys to include, for --ndjson and --s3-files.
    #[arg(long)]
    include: Vec<String>,
    /// Globs of keys to leave out, for --ndjson and --s3-files.
    #[arg(long)]
    exclude: Vec<String>,
    /// A JSON file of named inputs: {"<item name>": {"<input name>": <value>, ...}, ...}.
    #[arg(long)]
    named_inputs: Option<PathBuf>,
    /// One item per line of these uploaded files (Files API ids).
    #[arg(long, num_args = 1..)]
    file_ids: Vec<String>,
    /// A whole SubmitJobRequest as proto3 JSON (every source, SQL and S3
    /// folders included); the other flags given override its fields.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Predictor configuration, as a JSON object.
    #[arg(long)]
    config: Option<String>,
    /// Results location (s3://bucket/prefix); default: the cluster's.
    #[arg(long, default_value = "")]
    output_uri: String,
    /// Deliveries of a batch before it is dead-lettered; default: the cluster's.
    #[arg(long)]
    max_receive_count: Option<i32>,
    /// Dead-letter a batch that fails for good whole, instead of bisecting
    /// it to isolate the items that fail.
    #[arg(long)]
    no_bisect: bool,
    /// Seconds after submission at which the job times out.
    #[arg(long)]
    timeout_secs: Option<i64>,
    /// The job's priority in its queue (at most the account's max_priority).
    #[arg(long, default_value_t = 0)]
    priority: u32,
    /// The admission queue; default: the pipeline's, else "default".
    #[arg(long, default_value = "")]
    queue: String,
    /// Check the job and count its items and batches, without submitting it.
    #[arg(long, conflicts_with = "wait")]
    dry_run: bool,
    /// Follow the job to its end (a progress bar on a terminal), print it, and
    /// exit 0 only if it succeeded.
    #[arg(long)]
    wait: bool,
}

/// Submits (or dry-runs) the job `s` describes.
pub async fn run(client: &mut JobServiceClient<Api>, s: Submit) -> anyhow::Result<ExitCode> {
    let request = request(&s)?;
    if s.dry_run {
        let checked = client.dry_run_job(pb::DryRunJobRequest { job: Some(request) }).await?.into_inner();
        println!("{}", crate::show(&checked, "batchmill.jobs.v1.DryRunJobResponse")?);
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let job = client.submit_job(request).await?.into_inner().job.unwrap_or_default();
    if !s.wait {
        crate::print_job(&job)?;
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("submitted job {}", job.job_id);
    let done = crate::watch(client, &job.job_id, false).await?;
    crate::print_job(&done)?;
    eprintln!(
        "job {} ended {} in {:.3} s (submit to terminal state)",
        done.job_id,
        done.state().as_str_name(),
        started.elapsed().as_secs_f64()
    );
    Ok(crate::ended(&done))
}

/// The request the flags describe.
fn request(s: &Submit) -> anyhow::Result<pb::SubmitJobRequest> {
    let mut request = match &s.spec {
        Some(path) => {
            let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            spec(&text).with_context(|| format!("{}: not a SubmitJobRequest in proto3 JSON", path.display()))?
        }
        None => pb::SubmitJobRequest {
            pipeline: s.pipeline.clone(),
            workers: s.workers,
            source: Some(source(s)?),
            ..Default::default()
        },
    };
    if let Some(text) = &s.config {
        let value: serde_json::Value = serde_json::from_str(text).context("--config")?;
        let object = value.as_object().context("--config must be a JSON object")?;
        request.config = Some(batchmill_core::json::json_to_struct(object));
    }
    if !s.output_uri.is_empty() {
        request.output_uri.clone_from(&s.output_uri);
    }
    if s.max_receive_count.is_some() || s.no_bisect {
        let bisect = s.no_bisect.then_some(false);
        request.dead_letter =
            Some(pb::DeadLetterPolicy { max_receive_count: s.max_receive_count.unwrap_or(0), bisect });
    }
    if let Some(seconds) = s.timeout_secs {
        request.timeout = Some(prost_types::Duration { seconds, nanos: 0 });
    }
    if s.priority != 0 {
        request.priority = s.priority;
    }
    if !s.queue.is_empty() {
        request.queue.clone_from(&s.queue);
    }
    Ok(request)
}

/// A SubmitJobRequest from its proto3 JSON.
fn spec(text: &[u8]) -> anyhow::Result<pb::SubmitJobRequest> {
    use prost::Message;
    let pool = prost_reflect::DescriptorPool::decode(batchmill_proto::FILE_DESCRIPTOR_SET)?;
    let desc = pool.get_message_by_name("batchmill.jobs.v1.SubmitJobRequest").context("no SubmitJobRequest")?;
    let mut de = serde_json::Deserializer::from_slice(text);
    let dynamic = prost_reflect::DynamicMessage::deserialize(desc, &mut de)?;
    Ok(pb::SubmitJobRequest::decode(dynamic.encode_to_vec().as_slice())?)
}

/// The source the flags name (clap lets exactly one through).
fn source(s: &Submit) -> anyhow::Result<Source> {
    let batch_size = s.batch_size;
    let globs = |paths: &[String]| (paths.to_vec(), s.include.clone(), s.exclude.clone());
    Ok(if let Some(path) = &s.items_file {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let items: Vec<serde_json::Value> =
            serde_json::from_slice(&text).with_context(|| format!("{}: expected a JSON array", path.display()))?;
        Source::ItemList(pb::ItemList {
            items: items.iter().map(batchmill_core::json::json_to_value).collect(),
            batch_size,
        })
    } else if let Some(n) = s.count {
        let items = (0..n).map(|i| batchmill_core::json::json_to_value(&serde_json::json!({"n": i}))).collect();
        Source::ItemList(pb::ItemList { items, batch_size })
    } else if !s.ndjson.is_empty() {
        let (s3_paths, includes, excludes) = globs(&s.ndjson);
        Source::DelimitedFiles(pb::DelimitedFiles { s3_paths, includes, excludes, batch_size })
    } else if !s.s3_files.is_empty() {
        let (s3_paths, includes, excludes) = globs(&s.s3_files);
        Source::FilePathLister(pb::FilePathLister { s3_paths, includes, excludes, batch_size })
    } else if let Some(path) = &s.named_inputs {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let named: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text)
            .with_context(|| format!("{}: expected {{\"<item name>\": {{\"<input>\": <value>}}}}", path.display()))?;
        let mut inputs = Vec::with_capacity(named.len());
        for (name, value) in named {
            let fields =
                value.as_object().with_context(|| format!("{}: item {name:?} is not an object", path.display()))?;
            let fields = fields.iter().map(|(k, v)| (k.clone(), batchmill_core::json::json_to_value(v))).collect();
            inputs.push(pb::NamedInput { name, inputs: fields, ..Default::default() });
        }
        Source::NamedInputs(pb::NamedInputs { inputs, batch_size })
    } else if !s.file_ids.is_empty() {
        Source::Files(pb::FileInputs { file_ids: s.file_ids.clone(), batch_size })
    } else {
        bail!("name a source: --items-file, --count, --ndjson, --s3-files, --named-inputs, --file-ids or --spec")
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Args {
        #[command(flatten)]
        submit: Submit,
    }

    fn parse(args: &[&str]) -> Result<pb::SubmitJobRequest, String> {
        let args =
            Args::try_parse_from(std::iter::once("submit").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        request(&args.submit).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn each_source_flag_makes_its_source() {
        let r = parse(&["--ndjson", "s3://b/a.jsonl", "s3://b/c/*.jsonl", "--exclude", "*.tmp", "--batch-size", "7"])
            .unwrap();
        let Some(Source::DelimitedFiles(d)) = r.source else { panic!("{r:?}") };
        assert_eq!((d.s3_paths.len(), d.excludes, d.batch_size), (2, vec!["*.tmp".to_owned()], 7));
        let r = parse(&["--s3-files", "s3://b/img/*.png"]).unwrap();
        assert!(matches!(r.source, Some(Source::FilePathLister(_))), "{r:?}");
        let r = parse(&["--file-ids", "f1", "f2", "--pipeline", "embed"]).unwrap();
        assert_eq!(r.pipeline, "embed");
        let Some(Source::Files(f)) = r.source else { panic!("{r:?}") };
        assert_eq!(f.file_ids, ["f1", "f2"]);
        let r = parse(&["--count", "3", "--priority", "2", "--timeout-secs", "60"]).unwrap();
        let Some(Source::ItemList(l)) = &r.source else { panic!("{r:?}") };
        assert_eq!((l.items.len(), r.priority, r.timeout.map(|t| t.seconds)), (3, 2, Some(60)));
    }

    #[test]
    fn named_inputs_and_a_whole_spec_are_read_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("named.json");
        std::fs::write(&named, r#"{"a": {"text": "hi"}, "b": {"text": "yo", "n": 2}}"#).unwrap();
        let r = parse(&["--named-inputs", named.to_str().unwrap()]).unwrap();
        let Some(Source::NamedInputs(n)) = r.source else { panic!("{r:?}") };
        assert_eq!(n.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let spec = dir.path().join("spec.json");
        std::fs::write(
            &spec,
            r#"{"pipeline": "embed", "workers": 3, "s3Folders": {"folders": [{"s3Path": "s3://b/x/"}]}}"#,
        )
        .unwrap();
        let r = parse(&["--spec", spec.to_str().unwrap(), "--queue", "batch"]).unwrap();
        assert_eq!((r.pipeline.as_str(), r.workers, r.queue.as_str()), ("embed", 3, "batch"));
        assert!(matches!(r.source, Some(Source::S3Folders(_))), "{r:?}");
        std::fs::write(&spec, r#"{"pipeline": "embed", "colour": "red"}"#).unwrap();
        let e = parse(&["--spec", spec.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn exactly_one_source_is_required() {
        assert!(parse(&[]).unwrap_err().contains("required"));
        let e = parse(&["--count", "3", "--ndjson", "s3://b/a"]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
    }
}
