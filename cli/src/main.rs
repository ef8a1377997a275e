//! `batchmill`: the command-line client of the public gRPC API.

mod accounts;
mod connect;
mod deploy;
mod events;

use std::time::Instant;

use anyhow::{Context, bail};
use batchmill_proto::jobs::v1::{self as pb, job_service_client::JobServiceClient};
use batchmill_proto::pipelines::v1::pipeline_service_client::PipelineServiceClient;
use clap::{Parser, Subcommand};
use connect::Api;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

#[derive(Debug, Parser)]
#[command(name = "batchmill", version, about = "Submit and follow batchmill jobs")]
struct Cli {
    /// Gateway gRPC address (host:port).
    #[arg(long, env = "BATCHMILL_GRPC_ADDR", default_value = "127.0.0.1:7410", global = true)]
    addr: String,
    /// API key, as `<key_id>.<secret>`.
    #[arg(long, env = "BATCHMILL_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submits a job over inline items.
    Submit(Submit),
    /// Shows a job.
    Get { job_id: String },
    /// Lists jobs, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
        /// Only jobs of this pipeline.
        #[arg(long, default_value = "")]
        pipeline: String,
    },
    /// Cancels a job.
    Cancel { job_id: String },
    /// Continues a FAILED, CANCELLED or TIMED_OUT job from its ledger: the
    /// same job, its final batches not run again.
    Retry { job_id: String },
    /// Runs the items of a job's batches that failed for good again, as a
    /// child job that the parent's manifest lists.
    RetryFailed {
        job_id: String,
        /// Items per batch of the child; default: the parent's (1 isolates each item).
        #[arg(long, default_value_t = 0)]
        batch_size: i32,
        /// Most workers of the child; default: the parent's.
        #[arg(long, default_value_t = 0)]
        workers: i32,
    },
    /// Follows a job until it ends, one JSON line per change.
    Watch { job_id: String },
    /// Lists a job's dead-lettered batches.
    DeadLetters {
        job_id: String,
        #[arg(long, default_value_t = 100)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Lists how each of a job's final batches ended: attempts, worker, duration, error.
    Batches {
        job_id: String,
        #[arg(long, default_value_t = 1000)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Prints a job's log lines from all of its workers.
    Logs {
        job_id: String,
        /// Keep printing new lines until the job ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Prints a job's event log, one event a line: time, level, type, cursor,
    /// batch and what happened.
    Events(events::EventsArgs),
    /// Runs a job's dead-lettered batches again (all of them, or those named).
    Rerun { job_id: String, batch_ids: Vec<String> },
    /// Deploys a Cortex project (cortex.yaml and its files) as pipelines.
    Deploy {
        /// The project directory.
        #[arg(default_value = ".")]
        dir: std::path::PathBuf,
        /// The configuration file, relative to the directory.
        #[arg(long, default_value = "cortex.yaml")]
        config: String,
    },
    /// Lists the pipelines jobs may name, or shows one (at its latest
    /// version, or at --version): predictor, config schema, the fields a
    /// job may set, defaults.
    Pipelines {
        /// The pipeline to show; every pipeline if unset.
        name: Option<String>,
        /// Its version, from 1; the latest if unset.
        #[arg(long, requires = "name")]
        version: Option<u32>,
    },
    /// Manages accounts.
    #[command(subcommand)]
    Accounts(accounts::Accounts),
    /// Manages API keys.
    #[command(subcommand)]
    Keys(accounts::Keys),
    /// Shows the key in use: its id, account and role.
    Whoami,
}

#[derive(Debug, clap::Args)]
struct Submit {
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
    #[arg(long, conflicts_with = "count")]
    items_file: Option<std::path::PathBuf>,
    /// Generate N items {"n": i} instead of reading a file.
    #[arg(long)]
    count: Option<usize>,
    /// Predictor configuration, as a JSON object.
    #[arg(long)]
    config: Option<String>,
    /// Results location (s3://bucket/prefix); default: the cluster's.
    #[arg(long, default_value = "")]
    output_uri: String,
    /// Deliveries of a batch before it is dead-lettered; default: the cluster's.
    #[arg(long)]
    max_receive_count: Option<i32>,
    /// Seconds after submission at which the job times out.
    #[arg(long)]
    timeout_secs: Option<i64>,
    /// The job's priority in its queue (at most the account's max_priority).
    #[arg(long, default_value_t = 0)]
    priority: u32,
    /// The admission queue; default: the pipeline's, else "default".
    #[arg(long, default_value = "")]
    queue: String,
    /// Wait for the job to end and print how long it took.
    #[arg(long)]
    wait: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let channel = connect::connect(&cli.addr, cli.api_key.as_deref()).await?;
    let mut client = JobServiceClient::new(channel.clone()).max_encoding_message_size(16 * 1024 * 1024);
    match cli.command {
        Command::Submit(submit) => run_submit(&mut client, submit).await?,
        Command::Get { job_id } => {
            print_job(&client.get_job(pb::GetJobRequest { job_id }).await?.into_inner().job.unwrap_or_default())?;
        }
        Command::List { page_size, page_token, pipeline } => {
            let page = client.list_jobs(pb::ListJobsRequest { page_size, page_token, pipeline }).await?.into_inner();
            println!("{}", to_json(&page, "batchmill.jobs.v1.ListJobsResponse")?);
        }
        Command::Cancel { job_id } => {
            print_job(&client.cancel_job(pb::CancelJobRequest { job_id }).await?.into_inner().job.unwrap_or_default())?;
        }
        Command::Retry { job_id } => {
            print_job(&client.retry_job(pb::RetryJobRequest { job_id }).await?.into_inner().job.unwrap_or_default())?;
        }
        Command::DeadLetters { job_id, page_size, page_token } => {
            let page = client
                .list_dead_letters(pb::ListDeadLettersRequest { job_id, page_size, page_token })
                .await?
                .into_inner();
            println!("{}", to_json(&page, "batchmill.jobs.v1.ListDeadLettersResponse")?);
        }
        Command::Batches { job_id, page_size, page_token } => {
            let page =
                client.list_batches(pb::ListBatchesRequest { job_id, page_size, page_token }).await?.into_inner();
            println!("{}", to_json(&page, "batchmill.jobs.v1.ListBatchesResponse")?);
        }
        Command::Logs { job_id, follow } => {
            let mut stream = client.stream_job_logs(pb::StreamJobLogsRequest { job_id, follow }).await?.into_inner();
            while let Some(chunk) = stream.message().await? {
                for line in chunk.lines {
                    let time = line.time.map(|t| t.to_string()).unwrap_or_default();
                    let batch = if line.batch_id.is_empty() { "-" } else { line.batch_id.as_str() };
                    println!("{time} {} {batch} {} {}", line.worker_id, line.level, line.message);
                }
            }
        }
        Command::RetryFailed { job_id, batch_size, workers } => {
            let request = pb::RetryFailedItemsRequest { job_id, batch_size, workers };
            print_job(&client.retry_failed_items(request).await?.into_inner().job.unwrap_or_default())?;
        }
        Command::Events(args) => events::run(&mut client, args).await?,
        Command::Rerun { job_id, batch_ids } => {
            let done = client.rerun_dead_letters(pb::RerunDeadLettersRequest { job_id, batch_ids }).await?.into_inner();
            println!("{}", to_json(&done, "batchmill.jobs.v1.RerunDeadLettersResponse")?);
        }
        Command::Deploy { dir, config } => {
            let mut pipelines = PipelineServiceClient::new(channel.clone()).max_encoding_message_size(16 * 1024 * 1024);
            for request in deploy::read_project(&dir, &config)? {
                let name = request.name.clone();
                let deployed = pipelines
                    .deploy_pipeline(request)
                    .await
                    .map_err(|s| anyhow::anyhow!("deploying {name}: {}", s.message()))?
                    .into_inner()
                    .pipeline
                    .unwrap_or_default();
                println!("{}", to_json(&deployed, "batchmill.pipelines.v1.Pipeline")?);
            }
        }
        Command::Pipelines { name, version } => show_pipelines(channel.clone(), name, version).await?,
        Command::Accounts(command) => accounts::accounts(channel, command).await?,
        Command::Keys(command) => accounts::keys(channel, command).await?,
        Command::Whoami => accounts::whoami(channel).await?,
        Command::Watch { job_id } => {
            let job = watch(&mut client, &job_id, true).await?;
            print_job(&job)?;
        }
    }
    Ok(())
}

async fn run_submit(client: &mut JobServiceClient<Api>, s: Submit) -> anyhow::Result<()> {
    let items: Vec<serde_json::Value> = match (&s.items_file, s.count) {
        (Some(path), _) => {
            let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice(&text).with_context(|| format!("{}: expected a JSON array", path.display()))?
        }
        (None, Some(n)) => (0..n).map(|i| serde_json::json!({"n": i})).collect(),
        (None, None) => bail!("give --items-file or --count"),
    };
    let config = match &s.config {
        Some(text) => {
            let value: serde_json::Value = serde_json::from_str(text).context("--config")?;
            let object = value.as_object().context("--config must be a JSON object")?;
            Some(batchmill_core::json::json_to_struct(object))
        }
        None => None,
    };
    let request = pb::SubmitJobRequest {
        pipeline: s.pipeline,
        workers: s.workers,
        source: Some(pb::submit_job_request::Source::ItemList(pb::ItemList {
            items: items.iter().map(batchmill_core::json::json_to_value).collect(),
            batch_size: s.batch_size,
        })),
        config,
        output_uri: s.output_uri,
        dead_letter: s.max_receive_count.map(|max_receive_count| pb::DeadLetterPolicy { max_receive_count }),
        timeout: s.timeout_secs.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
        s3_credentials: None,
        priority: s.priority,
        queue: s.queue,
    };
    let started = Instant::now();
    let job = client.submit_job(request).await?.into_inner().job.unwrap_or_default();
    if !s.wait {
        return print_job(&job);
    }
    eprintln!("submitted job {}", job.job_id);
    let done = watch(client, &job.job_id, false).await?;
    let elapsed = started.elapsed();
    print_job(&done)?;
    eprintln!(
        "job {} ended {} in {:.3} s (submit to terminal state)",
        done.job_id,
        done.state().as_str_name(),
        elapsed.as_secs_f64()
    );
    if done.state() != pb::JobState::Succeeded {
        std::process::exit(1);
    }
    Ok(())
}

/// Follows a job to its end; returns its last state.
async fn watch(client: &mut JobServiceClient<Api>, job_id: &str, print: bool) -> anyhow::Result<pb::Job> {
    let mut stream = client.watch_job(pb::WatchJobRequest { job_id: job_id.to_owned() }).await?.into_inner();
    let mut last = None;
    while let Some(update) = stream.message().await? {
        let job = update.job.unwrap_or_default();
        if print {
            println!("{}", compact_json(&job)?);
        } else if let Some(b) = &job.batches {
            eprintln!(
                "  {} batches {}/{} succeeded, {} failed",
                job.state().as_str_name(),
                b.succeeded,
                b.total,
                b.failed
            );
        }
        last = Some(job);
    }
    last.context("the watch ended without a state")
}

fn pool() -> anyhow::Result<DescriptorPool> {
    Ok(DescriptorPool::decode(batchmill_proto::FILE_DESCRIPTOR_SET)?)
}

fn to_json<M: Message>(message: &M, name: &str) -> anyhow::Result<String> {
    let desc = pool()?.get_message_by_name(name).with_context(|| format!("no message {name}"))?;
    let dynamic = DynamicMessage::decode(desc, message.encode_to_vec().as_slice())?;
    let mut out = serde_json::Serializer::pretty(Vec::new());
    dynamic.serialize_with_options(&mut out, &SerializeOptions::new().skip_default_fields(false))?;
    Ok(String::from_utf8(out.into_inner())?)
}

fn compact_json(job: &pb::Job) -> anyhow::Result<String> {
    let pretty = to_json(job, "batchmill.jobs.v1.Job")?;
    Ok(serde_json::from_str::<serde_json::Value>(&pretty)?.to_string())
}

fn print_job(job: &pb::Job) -> anyhow::Result<()> {
    println!("{}", to_json(job, "batchmill.jobs.v1.Job")?);
    Ok(())
}

/// Prints every pipeline, or one at its latest version or at `version`.
async fn show_pipelines(channel: connect::Api, name: Option<String>, version: Option<u32>) -> anyhow::Result<()> {
    use batchmill_proto::pipelines::v1 as ppb;
    let mut client = PipelineServiceClient::new(channel);
    let Some(name) = name else {
        let all = client.list_pipelines(ppb::ListPipelinesRequest {}).await?.into_inner();
        println!("{}", to_json(&all, "batchmill.pipelines.v1.ListPipelinesResponse")?);
        return Ok(());
    };
    let pipeline = match version {
        Some(version) => {
            client.get_pipeline_version(ppb::GetPipelineVersionRequest { name, version }).await?.into_inner().pipeline
        }
        None => client.get_pipeline(ppb::GetPipelineRequest { name }).await?.into_inner().pipeline,
    }
    .unwrap_or_default();
    println!("{}", to_json(&pipeline, "batchmill.pipelines.v1.Pipeline")?);
    Ok(())
}
