//! Deployed Python pipelines on the cluster: a completion hook that runs
//! once though the scheduler or the worker running it dies, and batches that
//! raise or crash their process.

use batchmill_blob::ObjectStore;
use std::time::Duration;

use batchmill_proto::jobs::v1 as pb;
use batchmill_proto::pipelines::v1 as ppb;
use batchmill_tests::{BUCKET, Options, Sandbox, is_terminal};
use serde_json::{Value, json};

/// Deploys `source` as pipeline `name`.
async fn deploy(sandbox: &Sandbox, name: &str, source: &str) -> anyhow::Result<()> {
    let request = ppb::DeployPipelineRequest {
        name: name.into(),
        kind: "BatchAPI".into(),
        predictor: Some(ppb::Predictor { r#type: "python".into(), path: "predictor.py".into(), ..Default::default() }),
        files: [("predictor.py".to_owned(), source.as_bytes().to_vec())].into_iter().collect(),
        ..Default::default()
    };
    sandbox.pipelines().await?.deploy_pipeline(request).await?;
    Ok(())
}

fn job(pipeline: &str, items: Vec<Value>, batch_size: i32, config: Value) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        pipeline: pipeline.into(),
        workers: 2,
        source: Some(pb::submit_job_request::Source::ItemList(pb::ItemList {
            items: items.iter().map(batchmill_core::json::json_to_value).collect(),
            batch_size,
        })),
        config: config.as_object().map(batchmill_core::json::json_to_struct),
        ..Default::default()
    }
}

/// The job's log lines so far, through REST.
async fn log_lines(sandbox: &Sandbox, job_id: &str) -> anyhow::Result<Vec<Value>> {
    let body = sandbox.http().get(format!("{}/v1/jobs/{job_id}/logs", sandbox.rest_url())).send().await?.text().await?;
    let mut lines = Vec::new();
    for chunk in body.lines() {
        let chunk: Value = serde_json::from_str(chunk)?;
        lines.extend(chunk["result"]["lines"].as_array().cloned().unwrap_or_default());
    }
    Ok(lines)
}

/// Waits for a log line containing `text`; returns it.
async fn wait_line(sandbox: &Sandbox, job_id: &str, text: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(line) = log_lines(sandbox, job_id)
            .await?
            .into_iter()
            .find(|l| l["message"].as_str().is_some_and(|m| m.contains(text)))
        {
            return Ok(line);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no log line {text:?} for job {job_id}: {:?}\nscheduler: {}\nstandby: {}\nworker-0: {}\nworker-1: {}",
            log_lines(sandbox, job_id).await?,
            sandbox.log_tail("scheduler"),
            sandbox.log_tail("scheduler-standby"),
            sandbox.log_tail("worker-0"),
            sandbox.log_tail("worker-1"),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until the job is terminal, riding out a scheduler failover.
async fn wait_terminal(sandbox: &Sandbox, job_id: &str) -> anyhow::Result<pb::Job> {
    let mut jobs = sandbox.jobs().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "job {job_id} not terminal:\nscheduler: {}\nstandby: {}\nworker-0: {}\nworker-1: {}",
            sandbox.log_tail("scheduler"),
            sandbox.log_tail("scheduler-standby"),
            sandbox.log_tail("worker-0"),
            sandbox.log_tail("worker-1"),
        );
        match jobs.get_job(pb::GetJobRequest { job_id: job_id.into() }).await {
            Ok(r) => {
                let job = r.into_inner().job.unwrap_or_default();
                if is_terminal(job.state()) {
                    return Ok(job);
                }
            }
            Err(status) => anyhow::ensure!(status.code() == tonic::Code::Unavailable, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Keys of the hook's marker objects: (started, done).
async fn hook_runs(sandbox: &Sandbox, job_id: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let keys = sandbox.blob.list(BUCKET, &format!("hooks/{job_id}/")).await?;
    let started = keys.iter().filter(|k| k.contains("/started-")).cloned().collect();
    let done = keys.iter().filter(|k| k.contains("/done-")).cloned().collect();
    Ok((started, done))
}

const HOOKED: &str = r#"
import json, time, uuid
import boto3

class PythonPredictor:
    def __init__(self, config, job_spec):
        self.s3 = boto3.client("s3")
        self.bucket = config["bucket"]
        self.prefix = f"hooks/{job_spec['job_id']}"
        self.hold = config["hold_s"]

    def predict(self, payload, batch_id):
        return [x * 2 for x in payload]

    def on_job_complete(self, metrics):
        run = uuid.uuid4().hex
        self.s3.put_object(Bucket=self.bucket, Key=f"{self.prefix}/started-{run}", Body=b"")
        print(f"hook started {run}")
        time.sleep(self.hold)
        self.s3.put_object(Bucket=self.bucket, Key=f"{self.prefix}/done-{run}", Body=json.dumps(metrics))
"#;

#[tokio::test]
async fn on_job_complete_runs_once_though_its_scheduler_or_its_worker_dies() -> anyhow::Result<()> {
    let sandbox =
        Sandbox::start(Options { workers: 2, ack_wait_secs: 3, standby_scheduler: true, ..Options::default() }).await?;
    deploy(&sandbox, "hooked", HOOKED).await?;
    let items: Vec<Value> = (0..20).map(|i| json!(i)).collect();
    let config = json!({"bucket": BUCKET, "hold_s": 4});
    let mut jobs = sandbox.jobs().await?;

    // The scheduler leader dies while the hook runs: the worker finishes it
    // and the new leader ends the job from the outcome in etcd.
    let first = jobs.submit_job(job("hooked", items.clone(), 5, config.clone())).await?.into_inner().job.unwrap();
    wait_line(&sandbox, &first.job_id, "hook started").await?;
    sandbox.signal("scheduler", "KILL")?;
    let done = wait_terminal(&sandbox, &first.job_id).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    let (started, finished) = hook_runs(&sandbox, &first.job_id).await?;
    assert_eq!((started.len(), finished.len()), (1, 1), "the hook ran once: {started:?} {finished:?}");
    let metrics: Value = serde_json::from_slice(&sandbox.blob.get(BUCKET, &finished[0]).await?)?;
    assert_eq!((metrics["succeeded"].as_i64(), metrics["total_batch_count"].as_i64()), (Some(4), Some(4)));
    let results = sandbox.results(&done).await?;
    let lines: Vec<Value> = results
        .iter()
        .filter(|(k, _)| k.ends_with(".jsonl"))
        .flat_map(|(_, body)| body.lines().map(|l| serde_json::from_str(l).unwrap_or_default()).collect::<Vec<Value>>())
        .collect();
    let mut doubled: Vec<(i64, i64)> =
        lines.iter().map(|l| (l["index"].as_i64().unwrap_or(-1), l["result"].as_i64().unwrap_or(-1))).collect();
    doubled.sort();
    assert_eq!(doubled, (0..20).map(|i| (i, 2 * i)).collect::<Vec<_>>());

    // The worker running the hook dies: its claim lapses, the other worker
    // runs the hook again, and the job ends once, having completed it once.
    let second = jobs.submit_job(job("hooked", items, 5, config)).await?.into_inner().job.unwrap();
    let line = wait_line(&sandbox, &second.job_id, "hook started").await?;
    let worker = line["workerId"].as_str().unwrap_or_default().replace("sandbox-", "worker-");
    sandbox.signal(&worker, "KILL")?;
    let done = wait_terminal(&sandbox, &second.job_id).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    let (started, finished) = hook_runs(&sandbox, &second.job_id).await?;
    assert_eq!((started.len(), finished.len()), (2, 1), "started twice, completed once: {started:?} {finished:?}");
    Ok(())
}

const FLAKY: &str = r#"
import os

class PythonPredictor:
    def __init__(self, config, job_spec):
        self.marker = os.path.join(config["marker_dir"], f"crashed-{job_spec['job_id']}")

    def predict(self, payload, batch_id):
        if "bad" in payload:
            raise ValueError(f"bad item in {batch_id}")
        if "crash" in payload and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(7)
        return [{"len": len(str(p))} for p in payload]
"#;

#[tokio::test]
async fn python_batches_that_raise_are_dead_lettered_and_a_crash_is_retried() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 2, ..Options::default() }).await?;
    deploy(&sandbox, "flaky", FLAKY).await?;
    let items = vec![json!("a"), json!("bad"), json!("crash"), json!("dddd")];
    // The crash marker outlives the worker, inside the sandbox's directory.
    let mut request = job("flaky", items, 1, json!({"marker_dir": sandbox.dir()}));
    request.dead_letter = Some(pb::DeadLetterPolicy { max_receive_count: 2, bisect: None });
    let mut jobs = sandbox.jobs().await?;
    let submitted = jobs.submit_job(request).await?.into_inner().job.unwrap();
    let done = wait_terminal(&sandbox, &submitted.job_id).await?;
    assert_eq!(done.state(), pb::JobState::CompletedWithFailures, "{done:?}");
    let b = done.batches.unwrap_or_default();
    assert_eq!((b.total, b.succeeded, b.failed), (4, 3, 1));

    let letters = jobs
        .list_dead_letters(pb::ListDeadLettersRequest { job_id: done.job_id.clone(), ..Default::default() })
        .await?
        .into_inner()
        .dead_letters;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].seq, letters[0].attempts), (1, 2));
    assert!(letters[0].last_error.contains("ValueError: bad item in"), "{}", letters[0].last_error);

    // One record per batch: how it ended, after how many deliveries, where.
    let records = jobs
        .list_batches(pb::ListBatchesRequest { job_id: done.job_id.clone(), ..Default::default() })
        .await?
        .into_inner()
        .batches;
    let mut summary: Vec<(i64, pb::BatchState, i64, i64)> =
        records.iter().map(|r| (r.seq, r.state(), r.attempts, r.items)).collect();
    summary.sort_by_key(|r| r.0);
    use pb::BatchState::{Failed, Succeeded};
    assert_eq!(summary, [(0, Succeeded, 1, 1), (1, Failed, 2, 1), (2, Succeeded, 2, 1), (3, Succeeded, 1, 1)]);
    for r in &records {
        assert_eq!(r.batch_id, format!("{}-{}", done.job_id, r.seq));
        assert!(r.worker_id.starts_with("sandbox-") && r.duration.is_some() && r.end_time.is_some(), "{r:?}");
        assert_eq!(r.last_error.contains("ValueError"), r.seq == 1, "{r:?}");
    }
    let results = sandbox.results(&done).await?;
    let crash = results.iter().find(|(k, _)| k.ends_with(&format!("{}-2.jsonl", done.job_id))).expect("batch 2");
    assert_eq!(crash.1, "{\"index\":2,\"result\":{\"len\":5}}\n", "the crashed batch succeeded on its retry");
    let lines = log_lines(&sandbox, &done.job_id).await?;
    let died = format!("{}-2", done.job_id);
    assert!(
        lines
            .iter()
            .any(|l| l["batchId"] == died.as_str() && l["message"].as_str().is_some_and(|m| m.contains("died"))),
        "{lines:?}"
    );
    Ok(())
}
