//! Admission in the cluster: a queue of one worker, a running job preempted
//! by one of higher priority, and resumed; every result object checked, no
//! batch run twice. Queues and priorities that a job may not use are
//! refused naming the field.

use std::time::Duration;

use batchmill_proto::accounts::v1 as apb;
use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{Options, Sandbox, http_as};
use serde_json::{Value, json};

#[tokio::test]
async fn a_running_job_is_preempted_by_a_higher_priority_one_and_resumes_to_exact_results() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 2, queues: "one=1".into(), ..Options::default() }).await?;
    let (http, base) = (sandbox.http(), sandbox.rest_url());
    let low_items: Vec<Value> = (0..40).map(|i| json!({"low": i})).collect();
    let low = sandbox
        .post_job(json!({"pipeline": "echo", "workers": 1, "queue": "one",
            "itemList": {"items": low_items, "batchSize": 2}, "config": {"delay_ms": 250}}))
        .await?;
    assert_eq!(sandbox.wait_succeeded(&low, 3, Duration::from_secs(30)).await?.queue, "one");

    // The queue holds one worker: the priority-5 job (a cluster admin's key
    // is not bounded) takes it from the running priority-0 job.
    let high_items: Vec<Value> = (0..10).map(|i| json!({"high": i})).collect();
    let high = sandbox
        .post_job(json!({"pipeline": "echo", "workers": 1, "queue": "one", "priority": 5,
            "itemList": {"items": high_items, "batchSize": 2}}))
        .await?;
    let preempted = sandbox.wait_job(&low, Duration::from_secs(10), "preempted", |j| j.preemptions == 1).await?;
    assert!(matches!(preempted.state(), pb::JobState::Preempted | pb::JobState::Pending), "{:?}", preempted.state());
    let high_done = sandbox.wait_terminal(&high, Duration::from_secs(60)).await?;
    assert_eq!(high_done.state(), pb::JobState::Succeeded);
    let low_done = sandbox.wait_terminal(&low, Duration::from_secs(90)).await?;
    assert_eq!(low_done.state(), pb::JobState::Succeeded, "{low_done:?}");
    // The high-priority job ran while the low one waited: it ended first.
    assert!(high_done.end_time.unwrap().seconds <= low_done.end_time.unwrap().seconds);
    let b = low_done.batches.unwrap();
    assert_eq!((b.total, b.succeeded, b.failed), (20, 20, 0));
    batchmill_tests::assert_echo_results(&sandbox, &low_done, &low_items, 2, &[]).await?;
    batchmill_tests::assert_echo_results(&sandbox, &high_done, &high_items, 2, &[]).await?;
    // Its workers finished the batches in hand: each batch ran once.
    let runs = sandbox.batch_attempts(&low).await?;
    let seqs: Vec<i64> = runs.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>(), "each batch has one record: none ran twice, none lost");

    // Its event log: preempted, its worker's hand-back once the batch in
    // hand was finished, then waiting, admitted and running again.
    let url =
        format!("{base}/v1/jobs/{}/events?types=job_state&types=preemption&types=worker_handed_back&pageSize=100", low);
    let events: Value = http.get(url).send().await?.json().await?;
    let kinds: Vec<String> = events["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| {
                    e["state"]
                        .as_str()
                        .filter(|s| *s != "JOB_STATE_UNSPECIFIED")
                        .or(e["type"].as_str())
                        .unwrap_or("?")
                        .replace("JOB_STATE_", "")
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        kinds,
        [
            "PENDING",
            "ADMITTED",
            "RUNNING",
            "PREEMPTED",
            "preemption",
            "worker_handed_back",
            "PENDING",
            "ADMITTED",
            "RUNNING",
            "SUCCEEDED"
        ],
        "{events}"
    );
    Ok(())
}

#[tokio::test]
async fn a_queue_or_priority_a_job_may_not_use_is_refused_naming_the_field() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 0, queues: "one=1".into(), ..Options::default() }).await?;
    let mut accounts = sandbox.accounts_as(&sandbox.api_key).await?;
    let limits = apb::Limits { max_priority: 3, ..Default::default() };
    accounts.create_account(apb::CreateAccountRequest { account_id: "acme".into(), limits: Some(limits) }).await?;
    let key = accounts
        .create_key(apb::CreateKeyRequest {
            account_id: "acme".into(),
            role: apb::Role::Member as i32,
            description: "m".into(),
        })
        .await?
        .into_inner()
        .secret_key;
    let base = sandbox.rest_url();
    let submit = |extra: Value| {
        let mut body = json!({"pipeline": "echo", "workers": 1, "itemList": {"items": [1], "batchSize": 1}});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        http_as(&key).post(format!("{base}/v1/jobs")).json(&body).send()
    };
    let over = submit(json!({"priority": 4})).await?;
    assert_eq!(over.status(), 400);
    let text = over.text().await?;
    assert!(text.contains("priority") && text.contains("at most 3"), "{text}");
    // A dry run checks them as a submission does.
    let dry = http_as(&key)
        .post(format!("{base}/v1/jobs:dryRun"))
        .json(&json!({"pipeline": "echo", "workers": 1, "priority": 4, "itemList": {"items": [1], "batchSize": 1}}))
        .send()
        .await?;
    assert_eq!(dry.status(), 400);
    assert!(dry.text().await?.contains("priority"));
    let unknown = submit(json!({"queue": "gpu"})).await?;
    assert_eq!(unknown.status(), 400);
    let text = unknown.text().await?;
    assert!(text.contains("queue") && text.contains("default, one"), "{text}");
    let ok: Value = submit(json!({"priority": 3, "queue": "one"})).await?.json().await?;
    assert_eq!((ok["priority"].as_u64(), ok["queue"].as_str()), (Some(3), Some("one")), "{ok}");
    Ok(())
}
