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
    assert!((4..40).contains(&final_at_cancel), "{final_at_cancel} of 40 batches final at the cancel");
    assert!(before.len() as i64 >= final_at_cancel, "{} batch records, {final_at_cancel} final", before.len());

    let retried: Value = http.post(format!("{base}/v1/jobs/{id}:retry")).json(&json!({})).send().await?.json().await?;
    assert_eq!(retried["jobId"], id.as_str(), "the same job");
    assert_eq!(retried["state"], "JOB_STATE_PENDING", "{retried}");
    assert_eq!(retried["retries"], 1, "{retried}");
    assert!(retried["retryTime"].is_string() && retried.get("endTime").is_none(), "{retried}");
    assert_eq!(retried["batches"]["succeeded"], final_at_cancel.to_string(), "the counts carry over: {retried}");

    let done = sandbox.wait_terminal(&id, Duration::from_secs(90)).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    let (batches, items_done) = (done.batches.unwrap(), done.items.unwrap());
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

    // Its event log tells the story: cancelled, retried, run again, succeeded.
    let events = listed_events(&sandbox, &id, "", "&types=job_state&types=job_retried", 1000).await?;
    let short: Vec<String> = kinds(&events).iter().map(|k| k.replace("job_state JOB_STATE_", "")).collect();
    assert_eq!(
        short,
        ["PENDING", "ADMITTED", "RUNNING", "CANCELLED", "PENDING", "job_retried", "ADMITTED", "RUNNING", "SUCCEEDED"],
        "{events:?}"
    );
    let retried = &events[5];
    assert!(
        retried["message"].as_str().unwrap().contains(&format!("its {final_at_cancel} final batches are kept")),
        "{retried}"
    );
    Ok(())
}

/// Every event of a job through REST after cursor `after` (all when
/// empty), with the query `query`, in pages of `size`.
async fn listed_events(sandbox: &Sandbox, id: &str, after: &str, query: &str, size: u32) -> anyhow::Result<Vec<Value>> {
    let (http, base) = (sandbox.http(), sandbox.rest_url());
    let (mut out, mut token) = (Vec::new(), after.to_owned());
    loop {
        let url = format!("{base}/v1/jobs/{id}/events?pageSize={size}&pageToken={token}{query}");
        let response = http.get(url).send().await?;
        anyhow::ensure!(response.status() == 200, "{}", response.text().await?);
        let page: Value = response.json().await?;
        out.extend(page["events"].as_array().cloned().unwrap_or_default());
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_owned(),
            _ => return Ok(out),
        }
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["type"].as_str() {
            Some("job_state") => format!("job_state {}", e["state"].as_str().unwrap_or("?")),
            other => other.unwrap_or("?").to_owned(),
        })
        .collect()
}

#[tokio::test]
async fn a_jobs_events_are_listed_filtered_paged_and_watched_from_any_cursor() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    let items: Vec<Value> = (0..10).map(|i| json!(i)).collect();
    // Batch 1 (items 2 and 3) fails on each of its 2 deliveries.
    let body = json!({"pipeline": "echo", "workers": 1, "itemList": {"items": items, "batchSize": 2},
        "deadLetter": {"maxReceiveCount": 2}, "config": {"delay_ms": 200, "fail_batches": [1]}});
    let id = sandbox.post_job(body).await?;
    // Watch it live from the start.
    let mut jobs = sandbox.jobs().await?;
    let mut live = jobs
        .watch_job_events(pb::WatchJobEventsRequest { job_id: id.clone(), ..Default::default() })
        .await?
        .into_inner();
    let done = sandbox.wait_terminal(&id, Duration::from_secs(60)).await?;
    assert_eq!(done.state(), pb::JobState::CompletedWithFailures, "{done:?}");
    let mut watched = Vec::new();
    while let Some(response) = tokio::time::timeout(Duration::from_secs(10), live.message()).await?? {
        watched.push(response.event.unwrap());
    }

    let all = listed_events(&sandbox, &id, "", "", 1000).await?;
    let kinds = kinds(&all);
    let states: Vec<&String> = kinds.iter().filter(|k| k.starts_with("job_state")).collect();
    assert_eq!(
        states,
        [
            "job_state JOB_STATE_PENDING",
            "job_state JOB_STATE_ADMITTED",
            "job_state JOB_STATE_RUNNING",
            "job_state JOB_STATE_COMPLETED_WITH_FAILURES"
        ],
        "{kinds:?}"
    );
    let position = |k: &str| kinds.iter().position(|x| x == k).unwrap_or_else(|| panic!("no {k} in {kinds:?}"));
    assert!(position("job_state JOB_STATE_ADMITTED") < position("worker_assigned"), "{kinds:?}");
    assert!(position("batch_failed") < position("batch_dead_lettered"), "{kinds:?}");
    assert!(position("batch_dead_lettered") < position("job_state JOB_STATE_COMPLETED_WITH_FAILURES"), "{kinds:?}");
    assert!(kinds.contains(&"enqueue_complete".to_owned()), "{kinds:?}");
    let dead = &all[position("batch_dead_lettered")];
    assert_eq!(
        (dead["level"].as_str(), dead["batchId"].as_str()),
        (Some("EVENT_LEVEL_ERROR"), Some(format!("{id}-1").as_str()))
    );
    assert!(dead["message"].as_str().unwrap().contains("dead-lettered: echo: batch"), "{dead}");
    assert_eq!(all.last().unwrap()["level"], "EVENT_LEVEL_WARN");
    // The live stream saw the same events, and ended with the job.
    let watched_cursors: Vec<&str> = watched.iter().map(|e| e.cursor.as_str()).collect();
    let cursors: Vec<&str> = all.iter().map(|e| e["cursor"].as_str().unwrap()).collect();
    assert_eq!(watched_cursors, cursors, "watching live missed or repeated nothing");

    // Pages of 3 give the same events; resuming from any cursor gives the rest, once each.
    let paged = listed_events(&sandbox, &id, "", "", 3).await?;
    assert_eq!(paged, all);
    for cut in [0, 4, all.len() - 1] {
        let token = cursors[cut];
        let rest: Vec<Value> = listed_events(&sandbox, &id, token, "", 1000).await?;
        assert_eq!(rest, all[cut + 1..].to_vec(), "resumed after event {cut}");
        let request = pb::WatchJobEventsRequest { job_id: id.clone(), cursor: token.to_owned(), ..Default::default() };
        let mut stream = jobs.watch_job_events(request).await?.into_inner();
        let mut tail = Vec::new();
        while let Some(response) = tokio::time::timeout(Duration::from_secs(10), stream.message()).await?? {
            tail.push(response.event.unwrap().cursor);
        }
        assert_eq!(tail, cursors[cut + 1..].to_vec(), "watched from event {cut}");
    }

    check_filters(&sandbox, &id).await
}

/// Filters by level, type and input (an item's index: item 3 is in batch 1),
/// through REST and the CLI; bad ones name the field.
async fn check_filters(sandbox: &Sandbox, id: &str) -> anyhow::Result<()> {
    let id = id.to_owned();
    // Filters: by level, type and input (an item's index, here item 3 of batch 1).
    let errors = listed_events(sandbox, &id, "", "&levels=ERROR", 2).await?;
    assert_eq!(self::kinds(&errors), ["batch_dead_lettered"]);
    let failures = listed_events(sandbox, &id, "", "&types=batch_failed&types=batch_dead_lettered", 1000).await?;
    assert_eq!(self::kinds(&failures), ["batch_failed", "batch_dead_lettered"]);
    let item = listed_events(sandbox, &id, "", "&input=3", 1000).await?;
    assert_eq!(item, failures, "item 3's events are its batch's");
    assert!(listed_events(sandbox, &id, "", "&input=4", 1000).await?.is_empty());
    // The CLI prints them one a line.
    let printed = std::process::Command::new(batchmill_tests::binary("batchmill")?)
        .env("BATCHMILL_API_KEY", &sandbox.api_key)
        .args(sandbox.cli_target())
        .args(["events", &id, "--level", "error"])
        .output()?;
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let printed = String::from_utf8(printed.stdout)?;
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "{printed}");
    assert!(
        lines[0].contains(&format!(
            "ERROR batch_dead_lettered #{} {id}-1 delivery 2",
            errors[0]["cursor"].as_str().unwrap_or("?")
        )),
        "{printed}"
    );
    let bad = sandbox.http().get(format!("{}/v1/jobs/{id}/events?levels=LOUD", sandbox.rest_url())).send().await?;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await?.contains("levels"));
    let bad = sandbox.http().get(format!("{}/v1/jobs/{id}/events?pageToken=x", sandbox.rest_url())).send().await?;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await?.contains("page_token"));
    Ok(())
}

#[tokio::test]
async fn failed_items_run_again_as_a_child_job_that_the_parents_manifest_lists() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    let (http, base) = (sandbox.http(), sandbox.rest_url());
    let items: Vec<Value> = (0..12).map(|i| json!({"n": i})).collect();
    // Batches 4 and 5 (items 8 to 11) fail on their only delivery.
    let body = json!({"pipeline": "echo", "workers": 1, "itemList": {"items": items, "batchSize": 2},
        "deadLetter": {"maxReceiveCount": 1}, "config": {"fail_batches": [4, 5]}});
    let parent = sandbox.submit_rest(body, Duration::from_secs(10)).await?;
    let parent = sandbox.wait_terminal(&parent.job_id, Duration::from_secs(60)).await?;
    assert_eq!(parent.state(), pb::JobState::CompletedWithFailures, "{parent:?}");
    assert_eq!(parent.items.as_ref().map(|i| i.failed), Some(4));
    let id = parent.job_id.clone();

    let response =
        http.post(format!("{base}/v1/jobs/{id}:retryFailedItems")).json(&json!({"batchSize": 1})).send().await?;
    assert_eq!(response.status(), 200);
    let child: Value = response.json().await?;
    assert_eq!(child["parentJobId"], id.as_str(), "{child}");
    assert_eq!((child["batchSize"].as_i64(), child["items"]["total"].as_str()), (Some(1), Some("4")), "{child}");
    let child_id = child["jobId"].as_str().unwrap_or_default().to_owned();
    // The child runs the parent's pipeline and config over items 8 to 11, in order.
    let done = sandbox.wait_terminal(&child_id, Duration::from_secs(60)).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    batchmill_tests::assert_echo_results(&sandbox, &done, &items[8..], 1, &[]).await?;

    // The parent lists the child, in its record and in its manifest.
    let got = sandbox.jobs().await?.get_job(pb::GetJobRequest { job_id: id.clone() }).await?.into_inner();
    assert_eq!(got.job.unwrap_or_default().child_job_ids, std::slice::from_ref(&child_id));
    let manifest = loop {
        let results = sandbox.results(&parent).await?;
        let manifest = results.iter().find(|(k, _)| k.ends_with("manifest.json")).map(|(_, b)| b.clone());
        let manifest: Value = serde_json::from_str(&manifest.unwrap_or_default())?;
        if manifest["children"].as_array().is_some_and(|c| !c.is_empty()) {
            break manifest;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(manifest["children"], json!([child_id]), "{manifest}");
    assert_eq!(manifest["failed_batches"], json!([format!("{id}-4"), format!("{id}-5")]), "{manifest}");
    let events = listed_events(&sandbox, &id, "", "&types=failed_items_retried", 10).await?;
    assert_eq!(events.len(), 1, "{events:?}");

    // A job without failed items has none to retry, and says so.
    let refused = http.post(format!("{base}/v1/jobs/{child_id}:retryFailedItems")).json(&json!({})).send().await?;
    assert_eq!(refused.status(), 409);
    let text = refused.text().await?;
    assert!(text.contains("no failed items"), "{text}");
    let bad = http.post(format!("{base}/v1/jobs/{id}:retryFailedItems")).json(&json!({"workers": -1})).send().await?;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await?.contains("workers"));
    Ok(())
}
