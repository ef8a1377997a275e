//! Bad input gets INVALID_ARGUMENT / HTTP 400 naming the field, and the
//! gateway stays up and keeps serving.
// A test walks a whole scenario; the 80-line bar is the product's.
#![allow(clippy::too_many_lines)]

use batchmill_blob::ObjectStore;
use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{Options, Sandbox, echo_job};
use serde_json::{Value, json};

#[tokio::test]
async fn bad_submissions_name_the_field_and_the_gateway_stays_up() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    let http = sandbox.http();
    let url = format!("{}/v1/jobs", sandbox.rest_url());
    let item_list = |items: Value, batch: i64| json!({"items": items, "batchSize": batch});
    let cases: Vec<(String, &str)> = vec![
        (
            json!({"pipeline": "echo", "workers": 1, "itemList": item_list(json!([]), 10)}).to_string(),
            "item_list.items",
        ),
        (
            json!({"pipeline": "echo", "workers": 1, "itemList": item_list(json!([1]), 0)}).to_string(),
            "item_list.batch_size",
        ),
        (json!({"pipeline": "echo", "workers": 0, "itemList": item_list(json!([1]), 1)}).to_string(), "workers"),
        (json!({"pipeline": "echo", "workers": 1}).to_string(), "source"),
        (json!({"pipeline": "nope", "workers": 1, "itemList": item_list(json!([1]), 1)}).to_string(), "pipeline"),
        (
            json!({"pipeline": "echo", "workers": 1, "itemList": item_list(json!([1]), 1), "outputUri": "ftp://x"})
                .to_string(),
            "output_uri",
        ),
        (
            json!({"pipeline": "echo", "workers": 1, "itemList": item_list(json!([1]), 1), "bogusField": 1})
                .to_string(),
            "bogusField",
        ),
        (r#"{"pipeline": "echo", "workers": 1, "itemList": {"items": [1], "batchSize": }"#.to_owned(), "invalid JSON"),
        (json!({"pipeline": "echo", "workers": "two"}).to_string(), "invalid JSON"),
        (
            json!({"pipeline": "echo", "workers": 1, "itemList": item_list(json!([1]), 1),
                "deadLetter": {"maxReceiveCount": 0}})
            .to_string(),
            "dead_letter.max_receive_count",
        ),
        (
            json!({"pipeline": "echo", "workers": 1, "itemList": item_list(json!([1]), 1), "timeout": "-5s"})
                .to_string(),
            "timeout",
        ),
    ];
    for (body, named) in &cases {
        let response = http.post(&url).header("content-type", "application/json").body(body.clone()).send().await?;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await?;
        assert_eq!(error["code"], 3, "{error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "error for {body} does not name {named}: {message}");
    }
    // An output location that cannot be written is refused at submission
    // by a probe write, in a dry run too, and no bucket appears.
    let unwritable = json!({"pipeline": "echo", "workers": 1, "itemList": item_list(json!([1]), 1),
        "outputUri": "s3://no-such-output-bucket/results"});
    for path in ["/v1/jobs", "/v1/jobs:dryRun"] {
        let response = http.post(format!("{}{path}", sandbox.rest_url())).json(&unwritable).send().await?;
        assert_eq!(response.status(), 400, "{path}");
        let error: Value = response.json().await?;
        assert_eq!(error["details"][0]["fieldViolations"][0]["field"], "output_uri", "{path}: {error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("\"no-such-output-bucket\" does not exist"), "{path}: {message}");
    }
    let listed = sandbox.blob.list_page("no-such-output-bucket", "", None).await;
    assert!(matches!(listed, Err(batchmill_blob::BlobError::NoSuchBucket { .. })), "{listed:?}");
    // Field violations are structured too.
    let response = http
        .post(&url)
        .json(&json!({"pipeline": "echo", "workers": 0, "itemList": item_list(json!([1]), 1)}))
        .send()
        .await?;
    let error: Value = response.json().await?;
    assert_eq!(error["details"][0]["fieldViolations"][0]["field"], "workers", "{error}");

    // The same over gRPC.
    let mut jobs = sandbox.jobs().await?;
    let grpc_cases = vec![
        (echo_job(&[], 10, 1, json!({})), "item_list.items"),
        (echo_job(&[json!(1)], 0, 1, json!({})), "item_list.batch_size"),
        (echo_job(&[json!(1)], 1, 0, json!({})), "workers"),
        (pb::SubmitJobRequest { pipeline: "echo".into(), workers: 1, ..Default::default() }, "source"),
    ];
    for (request, named) in grpc_cases {
        let status = jobs.submit_job(request).await.expect_err("must be refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(named), "{}", status.message());
    }
    // Requests over 10 MiB are refused naming the limit, over gRPC and REST.
    let big: Vec<Value> = (0..11).map(|_| json!("x".repeat(1024 * 1024))).collect();
    let status = jobs.submit_job(echo_job(&big, 1, 1, json!({}))).await.expect_err("over 10 MiB");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("10 MiB"), "{}", status.message());
    let body = json!({"pipeline": "echo", "workers": 1, "itemList": item_list(json!(big), 1)});
    let response = http.post(&url).json(&body).send().await?;
    assert_eq!(response.status(), 413);
    // The unread body leaves the connection unusable: the response says so,
    // and the client's next request takes a new one.
    assert_eq!(response.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    let error: Value = response.json().await?;
    assert!(error["message"].as_str().unwrap_or_default().contains("10 MiB"), "{error}");
    let cortex = format!("{}/echo", sandbox.rest_url());
    let response = http.post(&cortex).json(&json!({"item_list": {"items": big, "batch_size": 1}})).send().await?;
    assert_eq!(response.status(), 413);
    assert_eq!(response.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    let error: Value = response.json().await?;
    assert_eq!(error["kind"], "err_request_too_large", "{error}");
    let missing =
        jobs.get_job(pb::GetJobRequest { job_id: "0123456789abcdef0123".into() }).await.expect_err("no such job");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let response = http.get(format!("{}/v1/jobs/0123456789abcdef0123", sandbox.rest_url())).send().await?;
    assert_eq!(response.status(), 404);
    let response = http.get(format!("{}/v1/nothing-here", sandbox.rest_url())).send().await?;
    assert_eq!(response.status(), 404);
    let response = http.delete(format!("{}/v1/jobs", sandbox.rest_url())).send().await?;
    assert_eq!(response.status(), 405);

    // Nothing was accepted, and the gateway still serves a good job.
    let listed: Value = http.get(&url).send().await?.json().await?;
    assert_eq!(listed["jobs"], json!([]), "{listed}");
    let job = jobs.submit_job(echo_job(&[json!("ok")], 1, 1, json!({}))).await?.into_inner().job.unwrap();
    let done = sandbox.wait_terminal(&job.job_id, std::time::Duration::from_secs(60)).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded);
    Ok(())
}
