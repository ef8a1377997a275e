//! Failures: a worker killed with SIGKILL mid-job has its batches
//! redelivered to the other worker and every batch counts once; a batch
//! whose confirmation is slow stays with its worker and runs once; a batch that
//! always fails is retried up to max_receive_count deliveries, dead-lettered,
//! and the job ends COMPLETED_WITH_FAILURES with the other results intact;
//! re-running it completes the job.

use std::time::Duration;

use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{Options, Sandbox, assert_echo_results, echo_job};
use serde_json::{Value, json};

#[tokio::test]
async fn a_killed_worker_loses_nothing_and_counts_nothing_twice() -> anyhow::Result<()> {
    let sandbox =
        Sandbox::start(Options { workers: 2, ack_wait_secs: 2, max_deliver: 5, ..Options::default() }).await?;
    let items: Vec<Value> = (0..150).map(|i| json!({"i": i})).collect();
    let mut jobs = sandbox.jobs().await?;
    let job = jobs.submit_job(echo_job(&items, 5, 2, json!({"delay_ms": 250}))).await?.into_inner().job.unwrap();

    // Let both workers get going, then kill one while it holds a batch.
    sandbox.wait_succeeded(&job.job_id, 6, Duration::from_secs(30)).await?;
    sandbox.signal("worker-0", "KILL")?;

    let done = sandbox.wait_terminal(&job.job_id, Duration::from_secs(120)).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    let scheduler = sandbox.log_tail("scheduler");
    let b = done.batches.unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.in_queue), (30, 30, 0, 0), "{done:?}\n{scheduler}");
    let i = done.items.unwrap();
    assert_eq!((i.total, i.completed, i.failed), (150, 150, 0), "{done:?}");
    let w = done.workers.unwrap();
    assert_eq!((w.failed, w.succeeded), (1, 1), "{w:?}\n{scheduler}");
    assert_echo_results(&sandbox, &done, &items, 5, &[]).await?;
    Ok(())
}

#[tokio::test]
async fn a_batch_waiting_for_a_slow_confirmation_is_not_run_again() -> anyhow::Result<()> {
    // Deliveries time out after 2 s; the scheduler is frozen for 4 s while
    // both workers wait for it to confirm the batches they ran. Its
    // leadership lease (10 s, renewed every 3.3 s) outlasts that.
    let sandbox =
        Sandbox::start(Options { workers: 2, ack_wait_secs: 2, max_deliver: 5, ..Options::default() }).await?;
    let items: Vec<Value> = (0..24).map(|i| json!(i)).collect();
    let mut jobs = sandbox.jobs().await?;
    let job = jobs.submit_job(echo_job(&items, 2, 2, json!({"delay_ms": 150}))).await?.into_inner().job.unwrap();
    sandbox.wait_succeeded(&job.job_id, 2, Duration::from_secs(30)).await?;
    sandbox.signal("scheduler", "STOP")?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    sandbox.signal("scheduler", "CONT")?;

    let done = sandbox.wait_terminal(&job.job_id, Duration::from_secs(60)).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    let b = done.batches.unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.failed_attempts), (12, 12, 0, 0), "{done:?}");
    assert_echo_results(&sandbox, &done, &items, 2, &[]).await?;
    // Each batch ran once: one log line per batch, from its first delivery.
    let request = pb::StreamJobLogsRequest { job_id: job.job_id.clone(), follow: false };
    let mut logs = jobs.stream_job_logs(request).await?.into_inner();
    let mut runs: Vec<(String, String)> = Vec::new();
    while let Some(chunk) = logs.message().await? {
        runs.extend(chunk.lines.into_iter().filter(|l| !l.batch_id.is_empty()).map(|l| (l.batch_id, l.message)));
    }
    runs.sort();
    let batches: std::collections::BTreeSet<&str> = runs.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!((runs.len(), batches.len()), (12, 12), "{runs:#?}");
    assert!(runs.iter().all(|(_, m)| m.contains("(delivery 1 of 5)")), "{runs:#?}");
    Ok(())
}

#[tokio::test]
async fn a_failing_batch_is_dead_lettered_after_max_receive_count_deliveries_and_reruns() -> anyhow::Result<()> {
    // The cluster's default is 2 deliveries; the job asks for 3.
    let sandbox =
        Sandbox::start(Options { workers: 2, ack_wait_secs: 30, max_deliver: 2, ..Options::default() }).await?;
    let items: Vec<Value> = (0..40).map(|i| json!(i)).collect();
    let mut jobs = sandbox.jobs().await?;
    // Batch 3 fails until `until`; the three deliveries (backoff 1s, 2s) end well before.
    let until = batchmill_core::time::now_ms() + 20_000;
    let mut request = echo_job(&items, 4, 2, json!({"fail_batches": [3], "fail_until_ms": until}));
    request.dead_letter = Some(pb::DeadLetterPolicy { max_receive_count: 3, bisect: None });
    let job = jobs.submit_job(request).await?.into_inner().job.unwrap();
    assert_eq!(job.max_receive_count, 3);
    // Follow the job's logs from the start; the stream ends after the job does.
    let follow = pb::StreamJobLogsRequest { job_id: job.job_id.clone(), follow: true };
    let mut followed = jobs.stream_job_logs(follow).await?.into_inner();
    let following = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(chunk) = followed.message().await? {
            lines.extend(chunk.lines);
        }
        Ok::<_, tonic::Status>(lines)
    });
    let done = sandbox.wait_terminal(&job.job_id, Duration::from_secs(60)).await?;
    assert!(batchmill_core::time::now_ms() < until, "the job took too long for this test to mean anything");
    assert_eq!(done.state(), pb::JobState::CompletedWithFailures, "{done:?}");
    let b = done.batches.unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.dead_lettered, b.failed_attempts), (10, 9, 1, 1, 3));
    let i = done.items.unwrap();
    assert_eq!((i.total, i.completed, i.failed, i.pending), (40, 36, 4, 0));
    assert_echo_results(&sandbox, &done, &items, 4, &[3]).await?;
    let manifest = sandbox.results(&done).await?.into_iter().find(|(k, _)| k.ends_with("manifest.json")).unwrap().1;
    let manifest: Value = serde_json::from_str(&manifest)?;
    assert_eq!(manifest["state"], "JOB_STATE_COMPLETED_WITH_FAILURES");
    assert_eq!(manifest["failed_batches"], json!([format!("{}-3", done.job_id)]));

    // The dead-letter stream holds it after exactly 3 deliveries, with its items and error.
    let http = sandbox.http();
    let url = format!("{}/v1/jobs/{}/deadLetters", sandbox.rest_url(), done.job_id);
    let listed: Value = http.get(&url).send().await?.json().await?;
    let letters = listed["deadLetters"].as_array().cloned().unwrap_or_default();
    assert_eq!(letters.len(), 1, "{listed}");
    assert_eq!(letters[0]["batchId"], format!("{}-3", done.job_id));
    assert_eq!(letters[0]["attempts"], "3", "{listed}");
    assert_eq!(letters[0]["items"], json!([12, 13, 14, 15]));
    assert!(letters[0]["lastError"].as_str().unwrap().contains("fails as configured"), "{listed}");
    assert!(letters[0]["workerId"].as_str().is_some_and(|w| !w.is_empty()), "{listed}");

    // The logs say what happened to each batch, from all workers, live and afterwards.
    let followed = tokio::time::timeout(Duration::from_secs(20), following).await???;
    let failing = format!("{}-3", done.job_id);
    let errors: Vec<&pb::LogLine> = followed.iter().filter(|l| l.batch_id == failing).collect();
    assert_eq!(errors.len(), 3, "one line per delivery: {errors:?}");
    assert!(errors.iter().all(|l| l.level == "ERROR" && l.message.contains("fails as configured")));
    assert!(errors[2].message.contains("delivery 3 of 3, dead-lettered"), "{:?}", errors[2]);
    let succeeded: std::collections::BTreeSet<&str> =
        followed.iter().filter(|l| l.message.starts_with("succeeded")).map(|l| l.batch_id.as_str()).collect();
    assert_eq!(succeeded.len(), 9, "{followed:?}");
    let text = http.get(format!("{}/v1/jobs/{}/logs", sandbox.rest_url(), done.job_id)).send().await?.text().await?;
    let mut after = 0;
    for line in text.lines() {
        let chunk: Value = serde_json::from_str(line)?;
        after += chunk["result"]["lines"].as_array().map_or(0, Vec::len);
    }
    assert_eq!(after, followed.len(), "the same lines afterwards: {text}");

    // Re-run once the batch can succeed: the job runs again and ends with every result.
    let wait = until.saturating_sub(batchmill_core::time::now_ms()) + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let rerun: Value = http.post(format!("{url}:rerun")).json(&json!({})).send().await?.json().await?;
    assert_eq!(rerun["batchIds"], json!([format!("{}-3", done.job_id)]), "{rerun}");
    assert_eq!(rerun["job"]["state"], "JOB_STATE_RUNNING", "{rerun}");
    let again = sandbox.wait_terminal(&job.job_id, Duration::from_secs(60)).await?;
    assert_eq!(again.state(), pb::JobState::Succeeded, "{again:?}");
    let b = again.batches.unwrap();
    assert_eq!((b.succeeded, b.failed, b.dead_lettered), (10, 0, 0));
    assert_echo_results(&sandbox, &again, &items, 4, &[]).await?;
    let listed: Value = http.get(&url).send().await?.json().await?;
    assert!(listed["deadLetters"].as_array().is_none_or(Vec::is_empty), "{listed}");
    let manifest = sandbox.results(&again).await?.into_iter().find(|(k, _)| k.ends_with("manifest.json")).unwrap().1;
    assert_eq!(serde_json::from_str::<Value>(&manifest)?["state"], "JOB_STATE_SUCCEEDED");
    Ok(())
}

#[tokio::test]
async fn batches_whose_workers_died_on_their_last_delivery_fail_and_the_job_ends() -> anyhow::Result<()> {
    let sandbox =
        Sandbox::start(Options { workers: 2, ack_wait_secs: 2, max_deliver: 1, ..Options::default() }).await?;
    let mut jobs = sandbox.jobs().await?;
    // Two batches that take ten minutes each: one in each worker's hands.
    let items = [json!("a"), json!("b")];
    let job = jobs.submit_job(echo_job(&items, 1, 2, json!({"delay_ms": 600_000}))).await?.into_inner().job.unwrap();
    sandbox.wait_held(&job.job_id, 2, Duration::from_secs(30)).await?;
    sandbox.signal("worker-0", "KILL")?;
    sandbox.signal("worker-1", "KILL")?;

    // No worker is left: only the max-deliveries advisory can end the job.
    let done = sandbox.wait_terminal(&job.job_id, Duration::from_secs(60)).await?;
    assert_eq!(done.state(), pb::JobState::CompletedWithFailures, "{done:?}");
    let b = done.batches.unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.in_queue), (2, 0, 2, 0), "{done:?}");
    assert_eq!(done.items.unwrap().failed, 2, "{done:?}");
    assert_eq!(done.workers.unwrap().failed, 2, "{done:?}\n{}", sandbox.log_tail("scheduler"));
    let nats = async_nats::jetstream::new(batchmill_queue::client(&sandbox.nats_url).await?);
    let mut stream = nats.get_stream("BATCHMILL_BATCHES").await?;
    let left = stream.info().await?.state.messages;
    assert_eq!(left, 0, "exhausted batches are removed from the stream\n{}", sandbox.log_tail("scheduler"));
    // Both are in the dead-letter stream, saying why.
    let listed =
        jobs.list_dead_letters(pb::ListDeadLettersRequest { job_id: job.job_id.clone(), ..Default::default() }).await?;
    let letters = listed.into_inner().dead_letters;
    // Oldest first: the two deliveries ran out in either order.
    let mut seqs: Vec<i64> = letters.iter().map(|d| d.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [0, 1], "{letters:?}");
    assert!(
        letters.iter().all(|d| d.attempts == 1 && d.worker_id.is_empty() && d.last_error.contains("lost")),
        "{letters:?}"
    );
    // And each has its batch record.
    let records =
        jobs.list_batches(pb::ListBatchesRequest { job_id: job.job_id.clone(), ..Default::default() }).await?;
    let records = records.into_inner().batches;
    let mut seqs: Vec<i64> = records.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [0, 1], "{records:?}");
    assert!(
        records.iter().all(|r| r.state() == pb::BatchState::Failed && r.attempts == 1 && r.items == 1),
        "{records:?}"
    );
    Ok(())
}

#[tokio::test]
async fn small_batches_run_in_groups_and_a_failure_in_one_reruns_alone() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    // 80 batches of 2 on 1 worker: groups of 10 (each worker gets 8 groups).
    let items: Vec<Value> = (0..160).map(|i| json!(i)).collect();
    let mut jobs = sandbox.jobs().await?;
    let until = batchmill_core::time::now_ms() + 20_000;
    let mut request = echo_job(&items, 2, 1, json!({"fail_batches": [13], "fail_until_ms": until}));
    request.dead_letter = Some(pb::DeadLetterPolicy { max_receive_count: 2, bisect: None });
    let job = jobs.submit_job(request).await?.into_inner().job.unwrap();
    let done = sandbox.wait_terminal(&job.job_id, Duration::from_secs(60)).await?;
    assert!(batchmill_core::time::now_ms() < until, "the job took too long for this test to mean anything");
    assert_eq!(done.state(), pb::JobState::CompletedWithFailures, "{done:?}");
    let b = done.batches.unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.dead_lettered), (80, 79, 1, 1));
    // One object per group; group 10..=19 holds every batch but 13.
    let objects = assert_echo_results(&sandbox, &done, &items, 2, &[13]).await?;
    let group = |first: u64| format!("{}-{first}-{}.jsonl", done.job_id, first + 9);
    let mut expected: Vec<String> = (0..8).map(|g| group(g * 10)).collect();
    expected.sort();
    assert_eq!(objects, expected);

    // Re-run once it can succeed: batch 13 runs alone, into its own object.
    let wait = until.saturating_sub(batchmill_core::time::now_ms()) + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let url = format!("{}/v1/jobs/{}/deadLetters", sandbox.rest_url(), done.job_id);
    let rerun: Value = sandbox.http().post(format!("{url}:rerun")).json(&json!({})).send().await?.json().await?;
    assert_eq!(rerun["batchIds"], json!([format!("{}-13", done.job_id)]), "{rerun}");
    let again = sandbox.wait_terminal(&job.job_id, Duration::from_secs(60)).await?;
    assert_eq!(again.state(), pb::JobState::Succeeded, "{again:?}");
    let objects = assert_echo_results(&sandbox, &again, &items, 2, &[]).await?;
    expected.push(format!("{}-13.jsonl", done.job_id));
    expected.sort();
    assert_eq!(objects, expected);
    // A group's records are stored in one message; pages of 7 end inside
    // them and still list every batch, 13 last as succeeded.
    let records = sandbox.batch_records(&done.job_id, 7).await?;
    let mut seqs: Vec<i64> = records.iter().map(|r| r.seq).filter(|&s| s != 13).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..80).filter(|&s| s != 13).collect::<Vec<i64>>(), "each batch but 13 once");
    let last_13 = records.iter().rev().find(|r| r.seq == 13).expect("batch 13's record");
    assert_eq!(last_13.state(), pb::BatchState::Succeeded);
    // The results API reads every item back once.
    let mut read = 0;
    let mut token = String::new();
    loop {
        let request =
            pb::ListJobResultsRequest { job_id: done.job_id.clone(), page_token: token, ..Default::default() };
        let page = jobs.list_job_results(request).await?.into_inner();
        read += page.results.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(read, items.len());
    Ok(())
}

#[tokio::test]
async fn poison_items_are_isolated_by_bisection_and_only_they_are_dead_lettered() -> anyhow::Result<()> {
    let sandbox =
        Sandbox::start(Options { workers: 2, ack_wait_secs: 30, max_deliver: 2, ..Options::default() }).await?;
    let items: Vec<Value> = (0..40).map(|i| json!(i)).collect();
    let http = sandbox.http();
    let base = sandbox.rest_url();
    // Items 5, 17 and 18 fail every call they are in (batches 0 and 2),
    // until `until`; the same job without bisection fails both batches whole.
    let poison = [5u64, 17, 18];
    let until = batchmill_core::time::now_ms() + 30_000;
    let config = json!({"fail_items": poison, "fail_until_ms": until});
    let job = |bisect: Option<bool>| {
        let mut body = json!({"pipeline": "echo", "workers": 2, "config": config,
            "itemList": {"items": items, "batchSize": 8}});
        if let Some(bisect) = bisect {
            body["deadLetter"] = json!({"bisect": bisect});
        }
        body
    };
    let submitted: Value = http.post(format!("{base}/v1/jobs")).json(&job(None)).send().await?.json().await?;
    let whole: Value = http.post(format!("{base}/v1/jobs")).json(&job(Some(false))).send().await?.json().await?;
    let (id, whole_id) = (submitted["jobId"].as_str().unwrap_or_default(), whole["jobId"].as_str().unwrap_or_default());
    assert!(!id.is_empty() && !whole_id.is_empty(), "{submitted} {whole}");

    let done = sandbox.wait_terminal(id, Duration::from_secs(60)).await?;
    assert!(batchmill_core::time::now_ms() < until, "the job took too long for this test to mean anything");
    assert_eq!(done.state(), pb::JobState::CompletedWithFailures, "{done:?}");
    let b = done.batches.unwrap_or_default();
    assert_eq!((b.total, b.succeeded, b.failed, b.dead_lettered), (5, 3, 2, 2), "{done:?}");
    let i = done.items.unwrap_or_default();
    assert_eq!((i.total, i.completed, i.failed, i.pending), (40, 37, 3, 0), "only the poison items failed");
    let is_poison = |index: usize| poison.contains(&(index as u64));
    batchmill_tests::assert_echo_results_but(&sandbox, &done, &items, 8, &is_poison).await?;

    // The dead letters hold the whole batches, naming the items that failed.
    let letters: Value = http.get(format!("{base}/v1/jobs/{id}/deadLetters")).send().await?.json().await?;
    let mut letters = letters["deadLetters"].as_array().cloned().unwrap_or_default();
    // In the order they were dead-lettered: by batch here.
    letters.sort_by_key(|l| l["seq"].as_str().unwrap_or_default().to_owned());
    let failed: Vec<(String, Vec<String>)> = letters
        .iter()
        .map(|l| {
            let indexes = l["failedItems"].as_array().into_iter().flatten();
            let indexes = indexes.map(|f| f["index"].as_str().unwrap_or_default().to_owned()).collect();
            (l["batchId"].as_str().unwrap_or_default().to_owned(), indexes)
        })
        .collect();
    let want = vec![(format!("{id}-0"), vec!["5".to_owned()]), (format!("{id}-2"), vec!["17".into(), "18".into()])];
    assert_eq!(failed, want, "{letters:?}");
    assert_eq!(letters[1]["failedItems"][0]["error"], "echo: item 17 fails as configured");
    assert_eq!(letters[0]["items"].as_array().map(Vec::len), Some(8), "the whole batch, for a re-run");

    // Without bisection, both batches fail whole.
    let whole = sandbox.wait_terminal(whole_id, Duration::from_secs(60)).await?;
    let i = whole.items.unwrap_or_default();
    assert_eq!((i.completed, i.failed), (24, 16), "{whole:?}");
    batchmill_tests::assert_echo_results(&sandbox, &whole, &items, 8, &[0, 2]).await?;

    // A child job of the failed items runs exactly those three.
    let child: Value =
        http.post(format!("{base}/v1/jobs/{id}:retryFailedItems")).json(&json!({})).send().await?.json().await?;
    assert_eq!(child["items"]["total"], "3", "{child}");
    let child_id = child["jobId"].as_str().unwrap_or_default().to_owned();
    let child_done = sandbox.wait_terminal(&child_id, Duration::from_secs(60)).await?;
    assert_eq!(child_done.state(), pb::JobState::Succeeded, "{child_done:?}");
    let poison_items: Vec<Value> = poison.iter().map(|p| json!(p)).collect();
    batchmill_tests::assert_echo_results(&sandbox, &child_done, &poison_items, 8, &[]).await?;

    // Once the items can succeed, re-running the dead letters runs both
    // batches whole again: every item once, counts exact.
    let wait = until.saturating_sub(batchmill_core::time::now_ms()) + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let rerun = http.post(format!("{base}/v1/jobs/{id}/deadLetters:rerun")).json(&json!({})).send().await?;
    assert_eq!(rerun.status(), 200);
    let again = sandbox.wait_terminal(id, Duration::from_secs(60)).await?;
    assert_eq!(again.state(), pb::JobState::Succeeded, "{again:?}");
    let i = again.items.unwrap_or_default();
    assert_eq!((i.completed, i.failed), (40, 0), "{again:?}");
    let b = again.batches.unwrap_or_default();
    assert_eq!((b.succeeded, b.failed, b.dead_lettered), (5, 0, 0), "{again:?}");
    batchmill_tests::assert_echo_results(&sandbox, &again, &items, 8, &[]).await?;
    Ok(())
}
