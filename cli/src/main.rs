//! `batchmill`: the command-line client of the public gRPC API.

mod accounts;
mod config;
mod connect;
mod deploy;
mod events;
mod output;
mod progress;
mod submit;

use std::process::ExitCode;

use anyhow::Context;
use batchmill_proto::jobs::v1::{self as pb, job_service_client::JobServiceClient};
use batchmill_proto::pipelines::v1::pipeline_service_client::PipelineServiceClient;
use clap::{CommandFactory, Parser, Subcommand};
use connect::Api;
use prost::Message;
use tonic_types::StatusExt;

/// Exit statuses: a job followed to its end that did not succeed, and a
/// command that could not do what was asked (a refused request, no
/// connection; clap's usage errors are 2 too).
const JOB_DID_NOT_SUCCEED: u8 = 1;
const FAILED: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "batchmill", version, about = "Submit and follow batchmill jobs")]
struct Cli {
    /// Gateway gRPC address (host:port); default: the profile's, else 127.0.0.1:7410.
    #[arg(long, env = "BATCHMILL_GRPC_ADDR", global = true)]
    addr: Option<String>,
    /// API key, as `<key_id>.<secret>`; default: the profile's.
    #[arg(long, env = "BATCHMILL_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// Speak TLS to the gateway, trusting the system's roots (or --ca-cert).
    #[arg(long, env = "BATCHMILL_TLS", global = true)]
    tls: bool,
    /// PEM CA certificate to trust for the gateway's (implies --tls).
    #[arg(long, env = "BATCHMILL_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate, for a gateway that asks for one (with --client-key).
    #[arg(long, env = "BATCHMILL_CLIENT_CERT", global = true)]
    client_cert: Option<std::path::PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long, env = "BATCHMILL_CLIENT_KEY", global = true)]
    client_key: Option<std::path::PathBuf>,
    /// The profile to use from the config file ($BATCHMILL_CONFIG, else
    /// ~/.config/batchmill/config.yaml); default: its `default`.
    #[arg(long, env = "BATCHMILL_PROFILE", global = true)]
    profile: Option<String>,
    /// How results print.
    #[arg(short, long, value_enum, default_value = "json", global = true)]
    output: output::Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submits a job over any source: inline items, NDJSON or files in S3,
    /// named inputs, uploaded files, or a whole request (--spec); --dry-run
    /// checks it and counts its items without submitting.
    Submit(Box<submit::Submit>),
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
    /// Follows a job until it ends (a progress bar on a terminal, a line per
    /// change elsewhere), prints it, and exits 0 only if it succeeded.
    Watch {
        job_id: String,
        /// Print the job as one JSON line per change on stdout instead.
        #[arg(long)]
        json_lines: bool,
    },
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
    /// Prints the completion script of a shell, e.g.
    /// `batchmill completions bash > /etc/bash_completion.d/batchmill`.
    Completions { shell: clap_complete::Shell },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    output::set(cli.output);
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            report(&error);
            ExitCode::from(FAILED)
        }
    }
}

/// Prints what went wrong: a refused request's message and each field it
/// names (a google.rpc.BadRequest), else the error and its causes.
fn report(error: &anyhow::Error) {
    match error.downcast_ref::<tonic::Status>() {
        Some(status) => {
            eprintln!("error: {} ({:?})", status.message(), status.code());
            if let Some(bad) = status.get_details_bad_request() {
                for v in bad.field_violations {
                    eprintln!("  {}: {}", v.field, v.description);
                }
            }
        }
        None => eprintln!("error: {error:#}"),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "batchmill", &mut std::io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    let flags = config::Flags {
        addr: cli.addr,
        api_key: cli.api_key,
        tls: cli.tls,
        ca_cert: cli.ca_cert,
        client_cert: cli.client_cert,
        client_key: cli.client_key,
    };
    let target = config::resolve(config::path(), cli.profile.as_deref(), flags)?;
    let channel = connect::connect(&target).await?;
    let mut client = JobServiceClient::new(channel.clone()).max_encoding_message_size(16 * 1024 * 1024);
    match cli.command {
        Command::Submit(args) => return submit::run(&mut client, *args).await,
        Command::Get { job_id } => {
            print_job(&client.get_job(pb::GetJobRequest { job_id }).await?.into_inner().job.unwrap_or_default())?;
        }
        Command::List { page_size, page_token, pipeline } => {
            let page = client.list_jobs(pb::ListJobsRequest { page_size, page_token, pipeline }).await?.into_inner();
            println!("{}", show(&page, "batchmill.jobs.v1.ListJobsResponse")?);
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
            println!("{}", show(&page, "batchmill.jobs.v1.ListDeadLettersResponse")?);
        }
        Command::Batches { job_id, page_size, page_token } => {
            let page =
                client.list_batches(pb::ListBatchesRequest { job_id, page_size, page_token }).await?.into_inner();
            println!("{}", show(&page, "batchmill.jobs.v1.ListBatchesResponse")?);
        }
        Command::Logs { job_id, follow } => logs(&mut client, job_id, follow).await?,
        Command::RetryFailed { job_id, batch_size, workers } => {
            let request = pb::RetryFailedItemsRequest { job_id, batch_size, workers };
            print_job(&client.retry_failed_items(request).await?.into_inner().job.unwrap_or_default())?;
        }
        Command::Events(args) => events::run(&mut client, args).await?,
        Command::Rerun { job_id, batch_ids } => {
            let done = client.rerun_dead_letters(pb::RerunDeadLettersRequest { job_id, batch_ids }).await?.into_inner();
            println!("{}", show(&done, "batchmill.jobs.v1.RerunDeadLettersResponse")?);
        }
        Command::Deploy { dir, config } => deploy_project(channel.clone(), &dir, &config).await?,
        Command::Pipelines { name, version } => show_pipelines(channel.clone(), name, version).await?,
        Command::Accounts(command) => accounts::accounts(channel, command).await?,
        Command::Keys(command) => accounts::keys(channel, command).await?,
        Command::Whoami => accounts::whoami(channel).await?,
        Command::Watch { job_id, json_lines } => {
            let job = watch(&mut client, &job_id, json_lines).await?;
            if !json_lines {
                print_job(&job)?;
            }
            return Ok(ended(&job));
        }
        Command::Completions { .. } => unreachable!("handled before connecting"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a job's log lines, following them to its end if asked.
async fn logs(client: &mut JobServiceClient<Api>, job_id: String, follow: bool) -> anyhow::Result<()> {
    let mut stream = client.stream_job_logs(pb::StreamJobLogsRequest { job_id, follow }).await?.into_inner();
    while let Some(chunk) = stream.message().await? {
        for line in chunk.lines {
            let time = line.time.map(|t| t.to_string()).unwrap_or_default();
            let batch = if line.batch_id.is_empty() { "-" } else { line.batch_id.as_str() };
            println!("{time} {} {batch} {} {}", line.worker_id, line.level, line.message);
        }
    }
    Ok(())
}

/// Deploys the Cortex project in `dir` as pipelines.
async fn deploy_project(channel: Api, dir: &std::path::Path, config: &str) -> anyhow::Result<()> {
    let mut pipelines = PipelineServiceClient::new(channel).max_encoding_message_size(16 * 1024 * 1024);
    for request in deploy::read_project(dir, config)? {
        let name = request.name.clone();
        let deployed = pipelines
            .deploy_pipeline(request)
            .await
            .map_err(|s| anyhow::anyhow!("deploying {name}: {}", s.message()))?
            .into_inner()
            .pipeline
            .unwrap_or_default();
        println!("{}", show(&deployed, "batchmill.pipelines.v1.Pipeline")?);
    }
    Ok(())
}

/// Exit 0 for a job that succeeded, else [`JOB_DID_NOT_SUCCEED`].
fn ended(job: &pb::Job) -> ExitCode {
    if job.state() == pb::JobState::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(JOB_DID_NOT_SUCCEED) }
}

/// Follows a job to its end, with [`progress::Progress`] (or, with
/// `json_lines`, each change as a JSON line on stdout); returns its last
/// state.
async fn watch(client: &mut JobServiceClient<Api>, job_id: &str, json_lines: bool) -> anyhow::Result<pb::Job> {
    let mut stream = client.watch_job(pb::WatchJobRequest { job_id: job_id.to_owned() }).await?.into_inner();
    let mut progress = (!json_lines).then(progress::Progress::new);
    let mut last = None;
    while let Some(update) = stream.message().await? {
        let job = update.job.unwrap_or_default();
        match &mut progress {
            Some(progress) => progress.update(&job),
            None => println!("{}", output::to_value(&job, "batchmill.jobs.v1.Job")?),
        }
        last = Some(job);
    }
    if let Some(progress) = &progress {
        progress.finish();
    }
    last.context("the watch ended without a state")
}

/// `message` (the proto message `name`) as `--output` asks.
fn show<M: Message>(message: &M, name: &str) -> anyhow::Result<String> {
    output::render(message, name, output::get())
}

fn print_job(job: &pb::Job) -> anyhow::Result<()> {
    println!("{}", show(job, "batchmill.jobs.v1.Job")?);
    Ok(())
}

/// Prints every pipeline, or one at its latest version or at `version`.
async fn show_pipelines(channel: connect::Api, name: Option<String>, version: Option<u32>) -> anyhow::Result<()> {
    use batchmill_proto::pipelines::v1 as ppb;
    let mut client = PipelineServiceClient::new(channel);
    let Some(name) = name else {
        let all = client.list_pipelines(ppb::ListPipelinesRequest {}).await?.into_inner();
        println!("{}", show(&all, "batchmill.pipelines.v1.ListPipelinesResponse")?);
        return Ok(());
    };
    let pipeline = match version {
        Some(version) => {
            client.get_pipeline_version(ppb::GetPipelineVersionRequest { name, version }).await?.into_inner().pipeline
        }
        None => client.get_pipeline(ppb::GetPipelineRequest { name }).await?.into_inner().pipeline,
    }
    .unwrap_or_default();
    println!("{}", show(&pipeline, "batchmill.pipelines.v1.Pipeline")?);
    Ok(())
}
