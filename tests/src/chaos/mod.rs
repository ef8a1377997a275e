//! The chaos suite: faults, each injected at a random moment of a running
//! job, from a seed the run prints, in a cluster of two schedulers (a 3 s
//! leadership lease) and two workers. After each fault the run times how
//! long the cluster takes to be whole again (every process running, every
//! service serving, one scheduler leading, the job answering and moving
//! on), then checks the job once it ends (see [`check`]).
//!
//! `batchmill-chaos` (a binary of this crate; `bench/chaos` runs it) makes a
//! long run; `tests/tests/chaos.rs` a short sample of every kind once.

pub mod check;
mod faults;
mod health;
pub mod report;

use std::time::Duration;

use anyhow::Context;
use batchmill_proto::jobs::v1 as pb;
use serde_json::{Value, json};
use tokio::time::Instant;

pub use check::Verdict;
pub use faults::{Durations, Kind};

use crate::{Options, Sandbox, echo_job, is_terminal};

/// What a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub faults: usize,
    pub seed: u64,
    pub durations: Durations,
    /// How long each job runs undisturbed (its batches are paced to it).
    pub job_secs: u64,
    /// Strike only with faults of these kinds (by name); empty: every kind.
    pub only: Vec<String>,
}

/// The items per job and per batch.
const ITEMS: usize = 200;
const BATCH: usize = 2;
const WORKERS: usize = 2;
/// How long the cluster may take to be whole again after a fault.
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);
/// How long a job may take to end once the cluster is whole again.
const END_LIMIT: Duration = Duration::from_secs(180);

/// One fault and the job it struck.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaultRun {
    pub kind: String,
    pub detail: String,
    pub job_id: String,
    /// Seconds from the job's submission to the fault.
    pub at_s: f64,
    /// Seconds the fault lasted.
    pub lasted_s: f64,
    /// Seconds from the fault's end until the cluster was whole and the job
    /// moving again; None if it was not within the limit.
    pub recovery_s: Option<f64>,
    /// What was still wrong when the limit passed.
    pub unrecovered: Vec<String>,
    pub verdict: Verdict,
}

/// Starts the cluster the suite runs in.
/// `BATCHMILL_CHAOS_LOG` sets the services' `RUST_LOG` (such as
/// `info,batchmill_scheduler=debug`), to see more of a fault that hurt.
pub async fn sandbox() -> anyhow::Result<Sandbox> {
    let mut service_env = vec![("BATCHMILL_LEADER_TTL_SECS".to_owned(), "3".to_owned())];
    if let Ok(level) = std::env::var("BATCHMILL_CHAOS_LOG") {
        service_env.push(("RUST_LOG".into(), level));
    }
    Sandbox::start(Options {
        workers: WORKERS,
        ack_wait_secs: 3,
        standby_scheduler: true,
        jumping_clock: true,
        service_env,
        ..Options::default()
    })
    .await
}

/// Runs `plan` in `sandbox`, telling `each` of every fault as it is
/// checked. Stops early, with what it has, if a job never ends.
pub async fn run(sandbox: &mut Sandbox, plan: &Plan, mut each: impl FnMut(&FaultRun)) -> anyhow::Result<Vec<FaultRun>> {
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let kinds: Vec<Kind> =
        Kind::all().into_iter().filter(|k| plan.only.is_empty() || plan.only.contains(&k.name())).collect();
    anyhow::ensure!(!kinds.is_empty(), "no kind of fault is named {:?}", plan.only);
    let mut order = Vec::new();
    let mut runs = Vec::new();
    for n in 0..plan.faults {
        if order.is_empty() {
            // Every kind once per round, in a seeded order.
            order = kinds.clone();
            rng.shuffle(&mut order);
        }
        let kind = order.pop().context("no kinds")?;
        let run = strike(sandbox, plan, kind, n, &mut rng).await?;
        each(&run);
        let stop = run.verdict.problems.iter().any(|p| p.starts_with("never ended"));
        runs.push(run);
        if stop {
            break;
        }
    }
    Ok(runs)
}

/// Submits a job, strikes it with a fault of `kind` at a random moment,
/// times the recovery and checks the job.
async fn strike(
    sandbox: &mut Sandbox,
    plan: &Plan,
    kind: Kind,
    n: usize,
    rng: &mut fastrand::Rng,
) -> anyhow::Result<FaultRun> {
    let items: Vec<Value> = (0..ITEMS).map(|i| json!({"fault": n, "i": i})).collect();
    let batches = ITEMS.div_ceil(BATCH) as u64;
    let delay_ms = plan.job_secs * 1000 * WORKERS as u64 / batches;
    let request = echo_job(&items, BATCH as i32, WORKERS as i32, json!({"delay_ms": delay_ms}));
    let submitted = Instant::now();
    let job = sandbox.jobs().await?.submit_job(request).await?.into_inner().job.context("no job")?;
    let at = Duration::from_millis(rng.u64(300..=plan.job_secs * 600));
    tokio::time::sleep(at).await;
    let baseline = succeeded(sandbox, &job.job_id).await.unwrap_or(0);
    let injected = faults::inject(sandbox, kind, rng, &plan.durations).await?;
    let (recovery, unrecovered) = recover(sandbox, &job.job_id, baseline, injected.ended).await;
    let mut run = FaultRun {
        kind: kind.name(),
        detail: injected.detail,
        job_id: job.job_id.clone(),
        at_s: at.as_secs_f64(),
        lasted_s: injected.lasted.as_secs_f64(),
        recovery_s: recovery.map(|r| r.as_secs_f64()),
        unrecovered,
        verdict: Verdict::default(),
    };
    match sandbox.wait_terminal_through(&job.job_id, END_LIMIT).await {
        Ok(done) => run.verdict = check::check(sandbox, &done, &items, BATCH).await?,
        Err(e) => {
            let logs = ["scheduler", "scheduler-standby", "worker-0", "worker-1"]
                .map(|name| format!("{name}:\n{}", sandbox.log_tail(name)))
                .join("\n");
            run.verdict.problems.push(format!("never ended: {e:#}\n{logs}"));
        }
    }
    let took = submitted.elapsed().as_secs_f64();
    progress(&format!("fault {n}: {}, {}; job {} ended after {took:.1} s", run.kind, run.detail, run.job_id));
    Ok(run)
}

/// Batches of the job succeeded so far, if the cluster answers.
async fn succeeded(sandbox: &Sandbox, job_id: &str) -> Option<i64> {
    let job = job_now(sandbox, job_id).await?;
    Some(job.batches.unwrap_or_default().succeeded)
}

async fn job_now(sandbox: &Sandbox, job_id: &str) -> Option<pb::Job> {
    let mut jobs = sandbox.jobs().await.ok()?;
    let answer =
        tokio::time::timeout(Duration::from_secs(2), jobs.get_job(pb::GetJobRequest { job_id: job_id.into() }));
    answer.await.ok()?.ok()?.into_inner().job
}

/// Waits until the cluster is whole and the job has moved on since the
/// fault began (or ended); the time from `ended`, or what was still wrong
/// at the limit.
async fn recover(sandbox: &Sandbox, job_id: &str, baseline: i64, ended: Instant) -> (Option<Duration>, Vec<String>) {
    let mut wrong = Vec::new();
    while ended.elapsed() < RECOVERY_LIMIT {
        wrong = sandbox.unhealthy().await;
        if wrong.is_empty() {
            match job_now(sandbox, job_id).await {
                Some(job) if is_terminal(job.state()) => return (Some(ended.elapsed()), wrong),
                Some(job) if job.batches.unwrap_or_default().succeeded > baseline => {
                    return (Some(ended.elapsed()), wrong);
                }
                Some(job) => wrong.push(format!("the job has not moved on: {:?}", job.batches.unwrap_or_default())),
                None => wrong.push("GetJob does not answer".into()),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (None, wrong)
}

/// Progress lines, on stderr so that a report on stdout stays clean.
fn progress(line: &str) {
    eprintln!("[chaos] {line}");
}
