//! `batchmill-chaos`: a chaos run against a fresh cluster sandbox; prints
//! its seed first, then each fault, then the figures per kind of fault,
//! and writes a JSON record. Exits 1 if any job was hurt or any fault not
//! recovered from.
//!
//! ```text
//! batchmill-chaos [--faults N] [--seed S] [--outage LOW-HIGH] [--pause LOW-HIGH]
//!                 [--job-secs S] [--record PATH] [--only KIND]...
//! ```
//! `--only "SIGSTOP scheduler leader"` (a kind's name, as the figures name
//! it) strikes with that kind alone. When a job is hurt, the sandbox's
//! directory (every process's log and data) is kept, and its path printed.
//! Outages and pauses are in seconds (defaults 5-30 and 2-10); the seed
//! defaults to one from the clock. `bench/chaos` runs it.

use anyhow::{Context, bail};
use batchmill_tests::chaos::{self, Durations, Plan, report};

fn range(value: &str) -> anyhow::Result<(u64, u64)> {
    let (low, high) = value.split_once('-').with_context(|| format!("{value}: expected LOW-HIGH seconds"))?;
    let (low, high) = (low.parse()?, high.parse()?);
    anyhow::ensure!(low <= high, "{value}: LOW is above HIGH");
    Ok((low, high))
}

fn parse() -> anyhow::Result<(Plan, Option<String>)> {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    let durations = Durations { outage: (5, 30), pause: (2, 10) };
    let mut plan = Plan { faults: 30, seed, durations, job_secs: 15, only: Vec::new() };
    let mut record = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--faults" => plan.faults = value.parse().context("--faults")?,
            "--seed" => plan.seed = value.parse().context("--seed")?,
            "--outage" => plan.durations.outage = range(&value).context("--outage")?,
            "--pause" => plan.durations.pause = range(&value).context("--pause")?,
            "--job-secs" => plan.job_secs = value.parse().context("--job-secs")?,
            "--record" => record = Some(value),
            "--only" => plan.only.push(value),
            other => bail!("unknown option {other}"),
        }
    }
    Ok((plan, record))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (plan, record) = parse()?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    println!("seed {} ({} faults; rerun with --seed {})", plan.seed, plan.faults, plan.seed);
    let mut sandbox = chaos::sandbox().await?;
    let mut hurt = false;
    let runs = chaos::run(&mut sandbox, &plan, |run| {
        if !run.verdict.good() || run.recovery_s.is_none() {
            eprintln!("[chaos] PROBLEM: {run:#?}");
            hurt = true;
        }
    })
    .await?;
    if hurt {
        println!("the sandbox is kept: {}", sandbox.keep_dir().display());
    }
    let (per_kind, total) = report::summarize(&runs);
    println!("{}", report::table(&per_kind, &total));
    if let Some(path) = record {
        std::fs::write(&path, serde_json::to_vec_pretty(&report::record(&plan, &runs, &command))?)?;
        println!("record: {path}");
    }
    sandbox.stop_all().await;
    if !total.clean() {
        bail!("the faults hurt: {} bad jobs, {} of {} recovered", total.bad_jobs, total.recovered, total.faults);
    }
    Ok(())
}
