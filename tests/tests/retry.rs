//! RetryJob continues a cancelled (or failed, or timed-out) job from its
//! ledger: the same job id, the batches that were final not run again, the
//! counts exact, every result present once.

use std::collections::BTreeMap;
use std::time::Duration;

use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{Options, Sandbox};
use serde_json::{Value, json};

#[tokio::test]
async fn a_cancelled_job_retried_runs_only_its_unfinished_batches_and_succeeds() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options::default()).await?;
    let http = sandbox.http();
    let base = sandbox.rest_url();
    let items: Vec<Value> = (0..200).map(|i| json!({"n": i})).collect();
    let body = json!({"pipeline": "echo", "workers": 2, "itemList": {"items": items, "batchSize": 5},
        "config": {"delay_ms": 150}});
    let job: Value = http.post(format!("{base}/v1/jobs")).json(&body).send().await?.json().await?;
    let id = job["jobId"].as_str().unwrap().to_owned();

    // A job still running cannot be retried: the error names its state.
    sandbox.wait_succeeded(&id, 4, Duration::from_secs(30)).await?;
    let refused = http.post(format!("{base}/v1/jobs/{id}:retry")).json(&json!({})).send().await?;
    assert_eq!(refused.status(), 409);
    let text = refused.text().await?;
    assert!(text.contains("JOB_STATE_RUNNING") && text.contains("can be retried"), "{text}");

    let cancelled: Value =
        http.post(format!("{base}/v1/jobs/{id}:cancel")).json(&json!({})).send().await?.json().await?;
    assert_eq!(cancelled["state"], "JOB_STATE_CANCELLED", "{cancelled}");
    // The batches in hand at the cancel finish; they were not counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut jobs = sandbox.jobs().await?;
    let at_cancel = jobs.get_job(pb::GetJobRequest { job_id: id.clone() }).await?.into_inner().job.unwrap();
    let final_at_cancel = at_cancel.batches.as_ref().unwrap().succeeded;
    let before = sandbox.batch_attempts(&id).await?;
    assert!(final_at_cancel >= 4 && final_at_cancel < 40, "{final_at_cancel} of 40 batches final at the cancel");
    assert!(before.len() as i64 >= final_at_cancel, "{} batch records, {final_at_cancel} final", before.len());

    let retried: Value = http.post(format!("{base}/v1/jobs/{id}:retry")).json(&json!({})).send().await?.json().await?;
    assert_eq!(retried["jobId"], id.as_str(), "the same job");
    assert_eq!(retried["state"], "JOB_STATE_PENDING", "{retried}");
    assert_eq!(retried["retries"], 1, "{retried}");
    assert!(retried["retryTime"].is_string() && retried.get("endTime").is_none(), "{retried}");
    assert_eq!(retried["batches"]["succeeded"], final_at_cancel.to_string(), "the counts carry over: {retried}");

    let done = sandbox.wait_terminal(&id, Duration::from_secs(90)).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    let (batches, items_done) = (done.batches.clone().unwrap(), done.items.clone().unwrap());
    assert_eq!((batches.total, batches.succeeded, batches.failed, batches.in_queue), (40, 40, 0, 0), "{done:?}");
    assert_eq!((items_done.total, items_done.completed, items_done.pending), (200, 200, 0), "{done:?}");
    batchmill_tests::assert_echo_results(&sandbox, &done, &items, 5, &[]).await?;

    // From the batch records: every batch ran, and the only ones that ran
    // twice are among those in hand at the cancel (finished, not counted).
    let after = sandbox.batch_attempts(&id).await?;
    let mut runs: BTreeMap<i64, usize> = BTreeMap::new();
    for (seq, _) in &after {
        *runs.entry(*seq).or_default() += 1;
    }
    assert_eq!(runs.keys().copied().collect::<Vec<_>>(), (0..40).collect::<Vec<_>>(), "every batch has a record");
    let again: Vec<i64> = runs.iter().filter(|(_, n)| **n > 1).map(|(s, _)| *s).collect();
    let in_hand = before.len() as i64 - final_at_cancel;
    assert!(again.len() as i64 <= in_hand, "batches run again: {again:?}; only {in_hand} were in hand at the cancel");
    assert!(again.iter().all(|s| before.iter().any(|(b, _)| b == s)), "{again:?} ran again but had not run before");
    assert!(runs.values().all(|n| *n <= 2), "{runs:?}");

    // A job that succeeded is not retried.
    let refused = http.post(format!("{base}/v1/jobs/{id}:retry")).json(&json!({})).send().await?;
    assert_eq!(refused.status(), 409);
    assert!(refused.text().await?.contains("JOB_STATE_SUCCEEDED"));
    Ok(())
}
