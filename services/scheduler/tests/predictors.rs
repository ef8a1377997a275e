//! The scheduler with deployed predictors, against the same fakes as
//! `state.rs`: jobs that start after enqueuing and finalize once, hooks
//! whose worker is lost or that fail, predictors that cannot start, and
//! GPU pipelines matched to workers with the GPU they ask for.
// The fakes and helpers below are test code too: a poisoned lock or a bad
// fixture should stop the test where it happens.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use batchmill_accounts::Limits;
use batchmill_coord::{Kv, MemKv};
use batchmill_core::WorkerId;
use batchmill_core::enqueue::EnqueueProgress;
use batchmill_core::finalize::Finalizing;
use batchmill_proto::jobs::v1 as pb;
use batchmill_proto::scheduler::v1::{self as spb, session_response::Message as Out};
use batchmill_scheduler::{Deployed, JobRecord, PredictorSpec, State};

use common::*;

fn deployed_record(id: &str) -> JobRecord {
    let predictor = PredictorSpec {
        kind: "python".into(),
        path: "predictor.py".into(),
        config: serde_json::json!({"dest": "s3://out/agg", "nested": {"a": 1, "b": 2}}).as_object().cloned().unwrap(),
        env: Default::default(),
        python_path: String::new(),
    };
    let deployed = Deployed {
        name: "classifier".into(),
        version: 2,
        kind: "BatchAPI".into(),
        predictor,
        compute: Default::default(),
        artifacts_uri: "s3://out/pipelines/classifier/v2/".into(),
        deploy_ms: 1,
        files: vec!["predictor.py".into()],
        account: "acme".into(),
        config: Default::default(),
        run: Default::default(),
    };
    JobRecord {
        pipeline: "classifier".into(),
        config: serde_json::json!({"nested": {"b": 3}}).as_object().cloned().unwrap(),
        deployed: Some(deployed),
        ..record(id, 2)
    }
}

fn finalizing(attempt: u32, worker: &str, done: bool, error: Option<&str>) -> Finalizing {
    Finalizing { attempt, worker_id: worker.into(), done, error: error.map(str::to_owned) }
}

/// A worker writes the job's finalizer claim, and the scheduler's watch of
/// it tells the state.
async fn claim(state: &mut State, kv: &MemKv, job: &str, claim: Finalizing) {
    kv.put(&format!("/batchmill/finalizers/{job}"), claim.encode().unwrap()).await.unwrap();
    state.claim_changed(&job_id(job), Some(claim));
}

#[tokio::test]
async fn a_python_job_starts_after_enqueuing_and_finalizes_once_on_one_worker() {
    let fakes = fakes().await;
    let kv = fakes.kv.clone();
    let mut state = state(&fakes);
    let mut w1 = join(&mut state, "w1");
    let mut w2 = join(&mut state, "w2");
    state.submit(deployed_record("j1"), Limits::default()).await.unwrap();
    assert!(drain(&mut w1).is_empty() && drain(&mut w2).is_empty(), "no worker before the batch count is known");

    state.enqueue_progress("j1", EnqueueProgress { next_seq: 2, next_item: 20, done: true, ..Default::default() });
    state.tick().await;
    let assigned: Vec<Out> = [drain(&mut w1), drain(&mut w2)].concat();
    assert_eq!(assigned.len(), 2, "{assigned:?}");
    let Out::Assign(a) = &assigned[0] else { panic!("{assigned:?}") };
    assert_eq!(a.total_batch_count, 2);
    assert_eq!(a.workers, 2);
    let p = a.predictor.as_ref().expect("predictor");
    assert_eq!(
        (p.r#type.as_str(), p.version, p.artifacts_uri.as_str()),
        ("python", 2, "s3://out/pipelines/classifier/v2/")
    );
    let config = serde_json::Value::Object(batchmill_core::json::struct_to_json(a.config.as_ref().unwrap()));
    assert_eq!(config, serde_json::json!({"dest": "s3://out/agg", "nested": {"a": 1, "b": 3}}));

    for seq in [0, 1] {
        state.outcome(&WorkerId::new("w1"), outcome("j1", seq, spb::BatchStatus::Succeeded));
    }
    state.settle().await;
    state.flush().await;
    assert_eq!(state.get(&job_id("j1")).unwrap().state(), pb::JobState::Completing);
    let sent: Vec<Out> = [drain(&mut w1), drain(&mut w2)].concat();
    let finalizes: Vec<&spb::Finalize> =
        sent.iter().filter_map(|m| if let Out::Finalize(f) = m { Some(f) } else { None }).collect();
    assert_eq!(finalizes.len(), 1, "one worker is asked: {sent:?}");
    assert_eq!(finalizes[0].attempt, 1);
    let metrics = batchmill_core::json::struct_to_json(finalizes[0].metrics.as_ref().unwrap());
    assert_eq!((metrics["succeeded"].as_i64(), metrics["total_batch_count"].as_i64()), (Some(2), Some(2)));

    // Claimed and running: the job waits, and nobody else is asked.
    let key = "/batchmill/finalizers/j1";
    claim(&mut state, &kv, "j1", finalizing(1, "w1", false, None)).await;
    state.tick().await;
    assert!(drain(&mut w1).iter().chain(drain(&mut w2).iter()).all(|m| !matches!(m, Out::Finalize(_))));
    assert_eq!(state.get(&job_id("j1")).unwrap().state(), pb::JobState::Completing);

    claim(&mut state, &kv, "j1", finalizing(1, "w1", true, None)).await;
    state.tick().await;
    state.flush().await;
    assert_eq!(fakes.ended(&mut state, "j1").await.state(), pb::JobState::Succeeded);
    assert_eq!(kv.get(key).await.unwrap(), None, "the finalizer key is cleaned up");
    assert!(fakes.objects(&mut state).await.contains_key("s3://out/results/j1/manifest.json"));
}

/// Submits deployed job `id`, fully enqueued as one batch of 10 items, and
/// lets the scheduler assign it.
async fn submit_enqueued(state: &mut State, id: &str) {
    state.submit(deployed_record(id), Limits::default()).await.unwrap();
    state.enqueue_progress(id, EnqueueProgress { next_seq: 1, next_item: 10, done: true, ..Default::default() });
    state.tick().await;
}

#[tokio::test]
async fn a_lost_finalizer_is_replaced_and_a_failed_hook_fails_the_job() {
    let fakes = fakes().await;
    let kv = fakes.kv.clone();
    let mut state = state(&fakes);
    let mut w1 = join(&mut state, "w1");
    submit_enqueued(&mut state, "j1").await;
    state.outcome(&WorkerId::new("w1"), outcome("j1", 0, spb::BatchStatus::Succeeded));
    state.settle().await;
    state.flush().await;
    assert!(drain(&mut w1).iter().any(|m| matches!(m, Out::Finalize(f) if f.attempt == 1)));

    // w1 dies before claiming; w2 is asked next.
    state.worker_gone(&WorkerId::new("w1"), None);
    let mut w2 = join(&mut state, "w2");
    state.tick().await;
    assert!(drain(&mut w2).iter().any(|m| matches!(m, Out::Finalize(f) if f.attempt == 2)));
    // A claim left from attempt 1 would be stale only before this completion; attempt 2 reports an error.
    claim(&mut state, &kv, "j1", finalizing(2, "w2", true, Some("ValueError: no results"))).await;
    state.tick().await;
    let job = fakes.ended(&mut state, "j1").await;
    assert_eq!(job.state(), pb::JobState::Failed);
    assert!(job.message.contains("on_job_complete failed on worker w2: ValueError: no results"), "{}", job.message);
}

#[tokio::test]
async fn a_predictor_that_cannot_start_fails_its_job_after_three_tries() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let mut w1 = join(&mut state, "w1");
    submit_enqueued(&mut state, "j1").await;
    for attempt in 1..=3 {
        assert!(drain(&mut w1).iter().any(|m| matches!(m, Out::Assign(_))), "attempt {attempt}");
        state.released(&WorkerId::new("w1"), "j1", Some(("KeyError: 'dest_s3_dir'".into(), false))).await;
    }
    let job = fakes.ended(&mut state, "j1").await;
    assert_eq!(job.state(), pb::JobState::Failed);
    assert!(
        job.message.contains("could not start (3 attempts)") && job.message.contains("dest_s3_dir"),
        "{}",
        job.message
    );
    assert_eq!(job.workers.unwrap().failed, 3);
}

#[tokio::test]
async fn a_gpu_pipeline_runs_only_on_workers_with_the_gpu_it_asks_for() {
    use batchmill_scheduler::{Capabilities, Resources, RunPolicy};
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let worker = |name: &str, gpus: u32, gpu_name: &str, gib: u64| {
        let runs = Capabilities {
            built_in: vec!["echo".into()],
            predictor_types: vec!["python".into()],
            gpu_count: gpus,
            gpu_name: gpu_name.into(),
            gpu_memory_bytes: gib << 30,
        };
        (name.to_owned(), runs)
    };
    let mut channels = Vec::new();
    for (name, runs) in [
        worker("cpu", 0, "", 0),
        worker("a100", 1, "NVIDIA A100-SXM4-80GB", 80),
        worker("small-h100", 1, "NVIDIA H100 PCIe", 24),
        worker("h100", 1, "NVIDIA H100 80GB HBM3", 80),
    ] {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        state.worker_joined(WorkerId::new(&name), 1, runs, std::sync::Arc::new(tx));
        channels.push((name, rx));
    }
    let mut job = deployed_record("g1");
    if let Some(d) = job.deployed.as_mut() {
        let resources =
            Resources { gpu_count: 1, gpu_type: "h100".into(), gpu_memory: "40Gi".into(), ..Resources::default() };
        d.run = RunPolicy { resources, ..RunPolicy::default() };
    }
    state.submit(job, Limits::default()).await.unwrap();
    state.enqueue_progress("g1", EnqueueProgress { next_seq: 1, next_item: 10, done: true, ..Default::default() });
    state.tick().await;
    let mut assigned = Vec::new();
    for (name, rx) in &mut channels {
        if drain(rx).iter().any(|m| matches!(m, Out::Assign(a) if a.job_id == "g1")) {
            assigned.push(name.clone());
        }
    }
    assert_eq!(assigned, ["h100"], "only the H100 with 40 GiB or more");
}

#[tokio::test(start_paused = true)]
async fn a_job_no_worker_can_run_says_so_in_its_log_once() {
    use batchmill_scheduler::{Capabilities, Resources, RunPolicy};
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let cpu =
        Capabilities { built_in: vec!["echo".into()], predictor_types: vec!["python".into()], ..Default::default() };
    let (tx, _cpu) = tokio::sync::mpsc::unbounded_channel();
    state.worker_joined(WorkerId::new("cpu"), 1, cpu.clone(), std::sync::Arc::new(tx));
    let mut job = deployed_record("g1");
    if let Some(d) = job.deployed.as_mut() {
        let resources = Resources { gpu_count: 1, gpu_type: "h100".into(), ..Resources::default() };
        d.run = RunPolicy { resources, ..RunPolicy::default() };
    }
    state.submit(job, Limits::default()).await.unwrap();
    state.enqueue_progress("g1", EnqueueProgress { next_seq: 1, next_item: 10, done: true, ..Default::default() });
    let unmatched = |seen: &[(String, pb::EventLevel, String, pb::JobState)]| {
        seen.iter().filter(|(t, l, _, _)| t == "no_matching_worker" && *l == pb::EventLevel::Warn).count()
    };
    state.tick().await;
    tokio::time::advance(Duration::from_secs(2)).await;
    state.tick().await;
    state.flush().await;
    assert_eq!(unmatched(&events(&state, &fakes, "g1").await), 0, "a moment without a worker is no news");
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(4)).await;
        state.tick().await;
        state.flush().await;
    }
    let said: Vec<String> = fakes
        .events(&state, "g1")
        .await
        .into_iter()
        .filter(|e| e.r#type == "no_matching_worker")
        .map(|e| e.message)
        .collect();
    assert_eq!(said.len(), 1, "said once: {said:?}");
    assert!(said[0].contains("1 GPU(s) of type h100") && said[0].contains("no GPU"), "{}", said[0]);

    // A worker with the GPU takes it.
    let h100 =
        Capabilities { gpu_count: 1, gpu_name: "NVIDIA H100 80GB HBM3".into(), gpu_memory_bytes: 80 << 30, ..cpu };
    let (tx, mut gpu) = tokio::sync::mpsc::unbounded_channel();
    state.worker_joined(WorkerId::new("h100"), 1, h100, std::sync::Arc::new(tx));
    assert!(drain(&mut gpu).iter().any(|m| matches!(m, Out::Assign(a) if a.job_id == "g1")));
}
