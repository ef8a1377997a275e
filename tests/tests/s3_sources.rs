//! Jobs over S3 inputs: `filePathLister` (one item per selected object) and
//! `delimitedFiles` (one item per line), selected by prefixes and Cortex
//! globs over the full s3://bucket/key.

use batchmill_blob::ObjectStore;
use std::time::Duration;

use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{BUCKET, Options, Sandbox, assert_echo_results};
use bytes::Bytes;
use serde_json::{Value, json};

async fn put(sandbox: &Sandbox, key: &str, body: &str) -> anyhow::Result<()> {
    sandbox.blob.put(BUCKET, key, Bytes::from(body.to_owned()), "application/octet-stream").await?;
    Ok(())
}

async fn submit(sandbox: &Sandbox, body: Value) -> anyhow::Result<pb::Job> {
    sandbox.submit_rest(body, Duration::from_secs(60)).await
}

#[tokio::test]
async fn file_path_lister_selects_by_glob_each_object_once() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options::default()).await?;
    let mut expected = Vec::new();
    for i in 0..8 {
        put(&sandbox, &format!("data/images/{i:02}.jpg"), "jpg").await?;
        expected.push(format!("s3://{BUCKET}/data/images/{i:02}.jpg"));
    }
    for i in 0..4 {
        put(&sandbox, &format!("data/images/sub/{i}.png"), "png").await?;
        expected.push(format!("s3://{BUCKET}/data/images/sub/{i}.png"));
    }
    for key in ["data/images/thumbs/t.jpg", "data/images/notes.txt", "data/other/o.jpg"] {
        put(&sandbox, key, "not selected").await?;
    }
    // Overlapping prefixes: the sub/ objects must still come once.
    let job = submit(
        &sandbox,
        json!({"pipeline": "echo", "workers": 2, "filePathLister": {
            "s3Paths": [format!("s3://{BUCKET}/data/images/"), format!("s3://{BUCKET}/data/images/sub/")],
            "includes": ["**.jpg", "**.png"], "excludes": ["**/thumbs/**"], "batchSize": 5}}),
    )
    .await?;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
    let b = job.batches.unwrap();
    assert_eq!((b.total, b.succeeded), (3, 3));
    assert_eq!(job.items.unwrap().total, 12);
    // Objects come in key order, so the items are exactly the sorted paths.
    let items: Vec<Value> = expected.iter().map(|p| json!(p)).collect();
    assert_echo_results(&sandbox, &job, &items, 5, &[]).await?;
    Ok(())
}

#[tokio::test]
async fn delimited_files_stream_every_line_across_files() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options::default()).await?;
    let mut items = Vec::new();
    for (file, lines) in [("a", 5), ("b", 7), ("c", 1)] {
        let rows: Vec<Value> = (0..lines).map(|n| json!({"file": file, "n": n})).collect();
        let body: String = rows.iter().map(|r| format!("{r}\n")).collect::<String>() + "\n";
        put(&sandbox, &format!("data/lines/{file}.jsonl"), &body).await?;
        items.extend(rows);
    }
    put(&sandbox, "data/lines/readme.txt", "not json").await?;
    let job = submit(
        &sandbox,
        json!({"pipeline": "echo", "workers": 2, "delimitedFiles": {
            "s3Paths": [format!("s3://{BUCKET}/data/lines/")], "includes": ["**.jsonl"], "batchSize": 4}}),
    )
    .await?;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
    let b = job.batches.unwrap();
    assert_eq!((b.total, b.succeeded), (4, 4), "13 lines in batches of 4, spanning files");
    assert_eq!(job.items.unwrap().completed, 13);
    assert_echo_results(&sandbox, &job, &items, 4, &[]).await?;
    Ok(())
}

#[tokio::test]
async fn bad_selections_and_empty_matches_are_refused_at_submission() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    let url = format!("{}/v1/jobs", sandbox.rest_url());
    let http = sandbox.http();
    for (source, field) in [
        (
            json!({"delimitedFiles": {"s3Paths": ["s3://batchmill/x/"], "includes": ["[bad"], "batchSize": 1}}),
            "delimited_files.includes[0]",
        ),
        (json!({"filePathLister": {"s3Paths": [], "batchSize": 1}}), "file_path_lister.s3_paths"),
        (json!({"filePathLister": {"s3Paths": ["http://x/y"], "batchSize": 1}}), "file_path_lister.s3_paths[0]"),
    ] {
        let mut body = json!({"pipeline": "echo", "workers": 1});
        body.as_object_mut().unwrap().extend(source.as_object().unwrap().clone());
        let response = http.post(&url).json(&body).send().await?;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await?;
        assert!(error["message"].as_str().unwrap_or_default().contains(field), "{error}");
    }
    // Caught at submission, not left to fail later: no match, an unknown bucket.
    for (source, says) in [
        (json!({"filePathLister": {"s3Paths": ["s3://batchmill/nothing/"], "batchSize": 1}}), "no S3 object matches"),
        (json!({"delimitedFiles": {"s3Paths": ["s3://no-such-bucket/x/"], "batchSize": 1}}), "s3://no-such-bucket/x/"),
    ] {
        let mut body = json!({"pipeline": "echo", "workers": 1});
        body.as_object_mut().unwrap().extend(source.as_object().unwrap().clone());
        let response = http.post(&url).json(&body).send().await?;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await?;
        let message = error["message"].as_str().unwrap_or_default();
        let field = if body.get("filePathLister").is_some() { "file_path_lister: " } else { "delimited_files: " };
        assert!(message.starts_with(field) && message.contains(says), "{error}");
    }
    let listed: Value = http.get(&url).send().await?.json().await?;
    assert_eq!(listed["jobs"], json!([]), "nothing was accepted: {listed}");
    Ok(())
}

#[tokio::test]
async fn dry_runs_list_the_matched_files_and_create_no_job() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    for key in ["dry/a/1.json", "dry/a/2.json", "dry/b/3.json", "dry/b/skip.txt"] {
        put(&sandbox, key, "{\"x\": 1}\n{\"x\": 2}\n").await?;
    }
    let http = sandbox.http();
    let url = format!("{}/v1/jobs:dryRun", sandbox.rest_url());
    let selection = json!({"s3Paths": [format!("s3://{BUCKET}/dry/")], "includes": ["**.json"], "batchSize": 2});
    let files: Vec<String> =
        ["a/1.json", "a/2.json", "b/3.json"].iter().map(|k| format!("s3://{BUCKET}/dry/{k}")).collect();

    let answer: Value = http
        .post(&url)
        .json(&json!({"pipeline": "echo", "workers": 1, "filePathLister": selection}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(answer["message"], format!("{}\nvalidations passed", files.join("\n")), "{answer}");
    assert_eq!(answer["files"], json!(files));
    assert_eq!((answer["fileCount"].as_str(), answer["itemCount"].as_str()), (Some("3"), Some("3")), "{answer}");
    assert_eq!(answer["batchCount"], "2");

    let answer: Value = http
        .post(&url)
        .json(&json!({"pipeline": "echo", "workers": 1, "delimitedFiles": selection}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(answer["files"], json!(files));
    assert_eq!(
        (answer["itemCount"].as_str(), answer["batchCount"].as_str()),
        (Some("-1"), Some("-1")),
        "lines are not read"
    );

    let answer: Value = http
        .post(&url)
        .json(&json!({"pipeline": "echo", "workers": 1, "itemList": {"items": [1, 2, 3], "batchSize": 2}}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(answer["message"], "validations passed");
    assert_eq!((answer["itemCount"].as_str(), answer["batchCount"].as_str()), (Some("3"), Some("2")));

    // A dry run is checked as a submission is.
    let nothing = json!({"s3Paths": [format!("s3://{BUCKET}/nothing/")], "batchSize": 1});
    let response =
        http.post(&url).json(&json!({"pipeline": "echo", "workers": 1, "filePathLister": nothing})).send().await?;
    assert_eq!(response.status(), 400);
    let response =
        http.post(&url).json(&json!({"pipeline": "echo", "workers": 0, "filePathLister": selection})).send().await?;
    assert_eq!(response.status(), 400);
    assert!(response.text().await?.contains("workers"));

    let listed: Value = http.get(format!("{}/v1/jobs", sandbox.rest_url())).send().await?.json().await?;
    assert_eq!(listed["jobs"], json!([]), "a dry run creates no job: {listed}");
    Ok(())
}
