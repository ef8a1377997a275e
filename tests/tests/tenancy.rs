//! Accounts, keys and isolation as tenants meet them: two accounts, three
//! keys, every job call tried across tenants over gRPC, REST and the Cortex
//! routes (none may succeed, and each answers as if the job did not exist),
//! keys refused when missing, wrong or revoked, limits that name
//! themselves, and no key in clear anywhere after it was created.
//!
//! The cluster runs no workers, so every job stays unended while it is
//! probed.
#![allow(clippy::too_many_lines)]

use std::time::{Duration, Instant};

use batchmill_proto::accounts::v1 as apb;
use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{BUCKET, Options, Sandbox, echo_job, http_as};
use serde_json::json;
use tonic::Code;

/// A key of a tenant: its text and its id.
struct Key {
    name: &'static str,
    key: String,
    key_id: String,
}

async fn create_key(
    sandbox: &Sandbox,
    as_key: &str,
    account: &str,
    role: apb::Role,
    name: &'static str,
) -> anyhow::Result<Key> {
    let created = sandbox
        .accounts_as(as_key)
        .await?
        .create_key(apb::CreateKeyRequest { account_id: account.into(), role: role as i32, description: name.into() })
        .await?
        .into_inner();
    let key_id = created.key.map(|k| k.key_id).unwrap_or_default();
    assert!(created.secret_key.starts_with(&format!("{key_id}.")), "the key is <key_id>.<secret>");
    Ok(Key { name, key: created.secret_key, key_id })
}

async fn submit(sandbox: &Sandbox, key: &Key) -> anyhow::Result<pb::Job> {
    let request = echo_job(&[json!(1), json!(2), json!(3)], 1, 1, json!({}));
    Ok(sandbox.jobs_as(&key.key).await?.submit_job(request).await?.into_inner().job.unwrap_or_default())
}

/// Every job call of `key` on `job_id`: (what, the gRPC code).
async fn job_calls(sandbox: &Sandbox, key: &str, job_id: &str) -> anyhow::Result<Vec<(&'static str, Code)>> {
    let mut jobs = sandbox.jobs_as(key).await?;
    let id = || job_id.to_owned();
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    Ok(vec![
        ("GetJob", code(jobs.get_job(pb::GetJobRequest { job_id: id() }).await.map(drop))),
        (
            "ListBatches",
            code(jobs.list_batches(pb::ListBatchesRequest { job_id: id(), ..Default::default() }).await.map(drop)),
        ),
        (
            "ListDeadLetters",
            code(
                jobs.list_dead_letters(pb::ListDeadLettersRequest { job_id: id(), ..Default::default() })
                    .await
                    .map(drop),
            ),
        ),
        (
            "StreamJobLogs",
            code(jobs.stream_job_logs(pb::StreamJobLogsRequest { job_id: id(), follow: false }).await.map(drop)),
        ),
        ("WatchJob", code(jobs.watch_job(pb::WatchJobRequest { job_id: id() }).await.map(drop))),
        (
            "ListJobResults",
            code(
                jobs.list_job_results(pb::ListJobResultsRequest { job_id: id(), ..Default::default() }).await.map(drop),
            ),
        ),
        (
            "ListOutputs",
            code(jobs.list_outputs(pb::ListOutputsRequest { job_id: id(), ..Default::default() }).await.map(drop)),
        ),
        (
            "RerunDeadLetters",
            code(
                jobs.rerun_dead_letters(pb::RerunDeadLettersRequest { job_id: id(), batch_ids: vec![] })
                    .await
                    .map(drop),
            ),
        ),
        (
            "ListJobEvents",
            code(jobs.list_job_events(pb::ListJobEventsRequest { job_id: id(), ..Default::default() }).await.map(drop)),
        ),
        (
            "WatchJobEvents",
            code(
                jobs.watch_job_events(pb::WatchJobEventsRequest { job_id: id(), ..Default::default() }).await.map(drop),
            ),
        ),
        (
            "RetryFailedItems",
            code(
                jobs.retry_failed_items(pb::RetryFailedItemsRequest { job_id: id(), ..Default::default() })
                    .await
                    .map(drop),
            ),
        ),
        ("RetryJob", code(jobs.retry_job(pb::RetryJobRequest { job_id: id() }).await.map(drop))),
        // Last: on the job's owner it ends the job.
        ("CancelJob", code(jobs.cancel_job(pb::CancelJobRequest { job_id: id() }).await.map(drop))),
    ])
}

/// The same over REST and the Cortex routes: (what, the HTTP status).
async fn http_calls(sandbox: &Sandbox, key: &str, job_id: &str) -> anyhow::Result<Vec<(String, u16)>> {
    let (http, base) = (http_as(key), sandbox.rest_url());
    let mut out = Vec::new();
    for path in [
        format!("/v1/jobs/{job_id}"),
        format!("/v1/jobs/{job_id}/batches"),
        format!("/v1/jobs/{job_id}/deadLetters"),
        format!("/v1/jobs/{job_id}/logs"),
        format!("/v1/jobs/{job_id}/results"),
        format!("/v1/jobs/{job_id}/outputs"),
        format!("/v1/jobs/{job_id}/events"),
        format!("/v1/jobs/{job_id}/events:watch"),
        format!("/echo?jobID={job_id}"),
    ] {
        out.push((format!("GET {path}"), http.get(format!("{base}{path}")).send().await?.status().as_u16()));
    }
    for path in [
        format!("/v1/jobs/{job_id}/deadLetters:rerun"),
        format!("/v1/jobs/{job_id}:retry"),
        format!("/v1/jobs/{job_id}:retryFailedItems"),
        format!("/v1/jobs/{job_id}:cancel"),
    ] {
        let status = http.post(format!("{base}{path}")).json(&json!({})).send().await?.status().as_u16();
        out.push((format!("POST {path}"), status));
    }
    let status = http.delete(format!("{base}/echo?jobID={job_id}")).send().await?.status().as_u16();
    out.push((format!("DELETE /echo?jobID={job_id}"), status));
    Ok(out)
}

async fn listed(sandbox: &Sandbox, key: &str) -> anyhow::Result<Vec<String>> {
    let page = sandbox.jobs_as(key).await?.list_jobs(pb::ListJobsRequest::default()).await?.into_inner();
    let mut ids: Vec<String> = page.jobs.into_iter().map(|j| j.job_id).collect();
    ids.sort();
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_jobs_and_keys_work_until_revoked() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 0, ..Options::default() }).await?;
    let root = sandbox.api_key.clone();
    let mut accounts = sandbox.accounts_as(&root).await?;
    for id in ["acme", "globex"] {
        accounts.create_account(apb::CreateAccountRequest { account_id: id.into(), limits: None }).await?;
    }
    let acme_admin = create_key(&sandbox, &root, "acme", apb::Role::AccountAdmin, "acme-admin").await?;
    let acme_member = create_key(&sandbox, &acme_admin.key, "acme", apb::Role::Member, "acme-member").await?;
    let globex = create_key(&sandbox, &root, "globex", apb::Role::Member, "globex-member").await?;

    let member_job = submit(&sandbox, &acme_member).await?;
    let admin_job = submit(&sandbox, &acme_admin).await?;
    let globex_job = submit(&sandbox, &globex).await?;
    assert_eq!(
        (member_job.account_id.as_str(), member_job.submitted_by.as_str()),
        ("acme", acme_member.key_id.as_str())
    );
    assert_eq!(globex_job.account_id, "globex");

    // What each key may see: a member its own key's jobs, an account admin
    // its account's, the cluster admin everything.
    let all = [&member_job, &admin_job, &globex_job];
    let sees =
        [(&acme_member, vec![&member_job]), (&acme_admin, vec![&member_job, &admin_job]), (&globex, vec![&globex_job])];
    let (mut tried, mut succeeded) = (0, Vec::new());
    for (key, visible) in &sees {
        let mut want: Vec<String> = visible.iter().map(|j| j.job_id.clone()).collect();
        want.sort();
        assert_eq!(listed(&sandbox, &key.key).await?, want, "{} lists", key.name);
        for job in all.iter().filter(|j| !visible.iter().any(|v| v.job_id == j.job_id)) {
            for (call, code) in job_calls(&sandbox, &key.key, &job.job_id).await? {
                tried += 1;
                if code != Code::NotFound {
                    succeeded.push(format!("{} {call} {}: {code:?}", key.name, job.job_id));
                }
            }
            for (call, status) in http_calls(&sandbox, &key.key, &job.job_id).await? {
                tried += 1;
                if status != 404 {
                    succeeded.push(format!("{} {call}: {status}", key.name));
                }
            }
        }
    }
    assert_eq!(tried, 5 * 27, "each key tried every call on each job it may not see");
    assert!(succeeded.is_empty(), "calls across tenants that did not answer 404 / NOT_FOUND: {succeeded:#?}");
    // Every job is still as submitted: nothing across tenants cancelled it.
    for job in all {
        let now = sandbox.jobs().await?.get_job(pb::GetJobRequest { job_id: job.job_id.clone() }).await?.into_inner();
        let state = now.job.unwrap_or_default().state();
        assert!(matches!(state, pb::JobState::Pending | pb::JobState::Admitted), "{state:?}");
    }
    let mut everything: Vec<String> = all.iter().map(|j| j.job_id.clone()).collect();
    everything.sort();
    assert_eq!(listed(&sandbox, &root).await?, everything, "the cluster admin sees every job");
    // An account admin's own calls work on its member's job.
    for (call, code) in job_calls(&sandbox, &acme_admin.key, &member_job.job_id).await? {
        // A job that has not ended is not retried: the call reached it.
        let expected = if call.starts_with("Retry") { Code::FailedPrecondition } else { Code::Ok };
        assert_eq!(code, expected, "acme admin {call} on its member's job");
    }

    // Accounts and keys across tenants: not found, or not allowed in one's own.
    let mut admin_accounts = sandbox.accounts_as(&acme_admin.key).await?;
    let err = admin_accounts.list_keys(apb::ListKeysRequest { account_id: "globex".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = admin_accounts.revoke_key(apb::RevokeKeyRequest { key_id: globex.key_id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = admin_accounts
        .create_key(apb::CreateKeyRequest { account_id: "globex".into(), role: 0, description: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = sandbox
        .accounts_as(&acme_member.key)
        .await?
        .create_key(apb::CreateKeyRequest { account_id: "acme".into(), role: 0, description: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let caller = sandbox.accounts_as(&globex.key).await?.get_caller(apb::GetCallerRequest {}).await?.into_inner();
    let caller = caller.key.unwrap_or_default();
    assert_eq!((caller.account_id.as_str(), caller.role()), ("globex", apb::Role::Member));

    // No key, a malformed one, a wrong one: 401 / UNAUTHENTICATED. Health is open.
    let base = sandbox.rest_url();
    let plain = batchmill_tests::http_anonymous();
    let response = plain.get(format!("{base}/v1/jobs")).send().await?;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers().get("www-authenticate").map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
    let body: serde_json::Value = response.json().await?;
    assert!(body["message"].as_str().unwrap_or_default().contains("no API key"), "{body}");
    let forged = format!("{}.{}", acme_member.key_id, "x".repeat(32));
    for bad in ["nonsense", forged.as_str()] {
        assert_eq!(http_as(bad).get(format!("{base}/v1/jobs")).send().await?.status(), 401, "{bad}");
        assert_eq!(http_as(bad).get(format!("{base}/echo")).send().await?.status(), 401, "{bad}");
        let err = sandbox.jobs_as(bad).await?.list_jobs(pb::ListJobsRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    // Modzy's form of the header works too.
    let modzy = plain
        .get(format!("{base}/v1/jobs/{}", globex_job.job_id))
        .header("authorization", format!("ApiKey {}", globex.key))
        .send()
        .await?;
    assert_eq!(modzy.status(), 200);
    // A client cannot claim an identity by sending the gateway's headers.
    let claimed = http_as(&globex.key)
        .get(format!("{base}/v1/jobs/{}", member_job.job_id))
        .header("x-batchmill-account", "acme")
        .header("x-batchmill-key-id", &acme_member.key_id)
        .header("x-batchmill-role", "cluster_admin")
        .send()
        .await?;
    assert_eq!(claimed.status(), 404);
    let mut health = tonic_health::pb::health_client::HealthClient::new(sandbox.gateway_endpoint()?.connect().await?);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?;

    // The cluster's own places in S3 are fenced off from jobs that read with
    // the cluster's credentials: other jobs' results, staged inputs and
    // uploads, pipelines' files.
    let acme_items = format!("s3://{BUCKET}/staging/{}/items.ndjson", member_job.job_id);
    for (body, field, place) in [
        (
            json!({"delimitedFiles": {"s3Paths": [format!("s3://{BUCKET}/results/")], "batchSize": 1}}),
            "delimited_files.s3_paths",
            "results/",
        ),
        (
            json!({"filePathLister": {"s3Paths": [format!("s3://{BUCKET}/")], "batchSize": 1}}),
            "file_path_lister.s3_paths",
            "/results/",
        ),
        (
            json!({"namedInputs": {"inputs": [{"name": "a", "objects": {"x": acme_items}}], "batchSize": 1}}),
            "named_inputs.inputs.objects",
            "staging/",
        ),
        (
            json!({"namedInputs": {"inputs": [{"name": "a", "objects": {"x": format!("s3://{BUCKET}/staging/uploads/acme/upload-1/a/x/")}}], "batchSize": 1}}),
            "named_inputs.inputs.objects",
            "staging/",
        ),
        (
            json!({"s3Folders": {"folders": [{"name": "p", "input": "x", "s3Path": format!("s3://{BUCKET}/pipelines/")}], "batchSize": 1}}),
            "s3_folders.folders.s3_path",
            "pipelines/",
        ),
        (
            json!({"itemList": {"items": [1], "batchSize": 1}, "outputUri": format!("s3://{BUCKET}/pipelines/mine")}),
            "output_uri",
            "pipelines/",
        ),
    ] {
        let mut body = body;
        body["pipeline"] = json!("echo");
        body["workers"] = json!(1);
        let response = http_as(&globex.key).post(format!("{base}/v1/jobs")).json(&body).send().await?;
        let status = response.status();
        let text = response.text().await?;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(field) && text.contains(place), "{body}: the error names {field} and {place}: {text}");
    }

    // Revocation: the next call with the key is refused.
    sandbox
        .accounts_as(&acme_admin.key)
        .await?
        .revoke_key(apb::RevokeKeyRequest { key_id: acme_member.key_id.clone() })
        .await?;
    let revoked_at = Instant::now();
    let err = sandbox.jobs_as(&acme_member.key).await?.list_jobs(pb::ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    assert_eq!(http_as(&acme_member.key).get(format!("{base}/v1/jobs")).send().await?.status(), 401);

    // Limits name themselves.
    accounts
        .set_account_limits(apb::SetAccountLimitsRequest {
            account_id: "globex".into(),
            limits: Some(apb::Limits { max_concurrent_jobs: 1, ..Default::default() }),
        })
        .await?;
    let err = sandbox.jobs_as(&globex.key).await?.submit_job(echo_job(&[json!(1)], 1, 1, json!({}))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("max_concurrent_jobs is 1"), "{}", err.message());
    let response = http_as(&globex.key)
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"pipeline": "echo", "workers": 1, "itemList": {"items": [1], "batchSize": 1}}))
        .send()
        .await?;
    assert_eq!(response.status(), 409);
    accounts
        .set_account_limits(apb::SetAccountLimitsRequest {
            account_id: "globex".into(),
            limits: Some(apb::Limits { max_workers: 3, ..Default::default() }),
        })
        .await?;
    let err = sandbox.jobs_as(&globex.key).await?.submit_job(echo_job(&[json!(1)], 1, 3, json!({}))).await.unwrap_err();
    assert!(err.message().contains("max_workers is 3"), "{}", err.message());
    submit(&sandbox, &globex).await?;

    // Revoking an account revokes its keys.
    accounts.revoke_account(apb::RevokeAccountRequest { account_id: "globex".into() }).await?;
    assert_eq!(http_as(&globex.key).get(format!("{base}/v1/jobs")).send().await?.status(), 401);

    // No key in clear after its creation: not in etcd, not in any log, not
    // in any answer that lists keys.
    let listed_keys = accounts.list_keys(apb::ListKeysRequest { account_id: "acme".into() }).await?.into_inner();
    let answers = format!("{listed_keys:?}");
    let etcd = batchmill_coord::Etcd::connect(std::slice::from_ref(&sandbox.etcd_url), Duration::from_secs(10)).await?;
    let stored = batchmill_coord::Kv::list(&etcd, "/batchmill/").await?;
    let stored: String = stored.iter().map(|(k, v)| format!("{k}={}\n", String::from_utf8_lossy(v))).collect();
    let logs: String = ["gateway", "scheduler", "enqueuer", "lister"].iter().map(|s| sandbox.log(s)).collect();
    for key in [&root, &acme_admin.key, &acme_member.key, &globex.key] {
        let secret = &key[key.find('.').unwrap_or_default() + 1..];
        assert!(!stored.contains(secret), "a key's secret is in etcd");
        assert!(!logs.contains(secret), "a key's secret is in a log");
        assert!(!answers.contains(secret), "a key's secret is in a response");
    }
    assert!(stored.contains(&acme_member.key_id), "keys are stored by id");
    Ok(())
}
