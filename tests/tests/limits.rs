//! Limits a user can run into, each refused with an error that names it,
//! while the cluster stays up: items per job (`BATCHMILL_MAX_JOB_ITEMS`).

use std::time::Duration;

use batchmill_blob::ObjectStore;
use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{BUCKET, Options, Sandbox};
use bytes::Bytes;
use serde_json::{Value, json};

#[tokio::test]
async fn a_job_over_the_item_limit_is_refused_or_failed_naming_the_limit() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options {
        workers: 1,
        service_env: vec![("BATCHMILL_MAX_JOB_ITEMS".into(), "50".into())],
        ..Options::default()
    })
    .await?;
    let http = sandbox.http();
    let base = sandbox.rest_url();
    let inline = |n: usize| json!({"pipeline": "echo", "workers": 1, "itemList": {"items": (0..n).collect::<Vec<_>>(), "batchSize": 10}});

    // Inline items are counted at submission, and by a dry run.
    for url in [format!("{base}/v1/jobs"), format!("{base}/v1/jobs:dryRun")] {
        let response = http.post(&url).json(&inline(51)).send().await?;
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await?;
        let text = body.to_string();
        assert!(text.contains("item_list.items") && text.contains("51 items, over the 50"), "{url}: {text}");
    }
    let at_limit = sandbox.submit_rest(inline(50), Duration::from_secs(60)).await?;
    assert_eq!(at_limit.state(), pb::JobState::Succeeded, "{at_limit:?}");

    // Listed items are counted as the lister goes: the job fails once past it.
    let lines: String = (0..120).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    sandbox.blob.put(BUCKET, "limits/lines.jsonl", Bytes::from(lines), "application/x-ndjson").await?;
    let listed = json!({"pipeline": "echo", "workers": 1,
        "delimitedFiles": {"s3Paths": [format!("s3://{BUCKET}/limits/lines.jsonl")], "batchSize": 10}});
    let failed = sandbox.submit_rest(listed, Duration::from_secs(60)).await?;
    assert_eq!(failed.state(), pb::JobState::Failed, "{failed:?}");
    assert!(
        failed.message.contains("more than 50 items") && failed.message.contains("BATCHMILL_MAX_JOB_ITEMS"),
        "{failed:?}"
    );
    sandbox.check_all_alive()
}
