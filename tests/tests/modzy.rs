//! Modzy's Jobs API as Modzy users reach it: their public Python SDK
//! (modzy-sdk 0.11.6 from PyPI, unchanged) runs `tests/modzy/sdk_jobs.py`
//! against the cluster's `/api` routes with an account's member key: text,
//! embedded and embed jobs, `block_until_complete`, results by input name,
//! history with filters and paging, cancel, models, bad input named, and
//! another account seeing nothing. Then no API key, S3 secret or database
//! password (right or wrong) is in any log, etcd, NATS, S3 or exported span.
// A test walks a whole scenario; the 80-line bar is the product's.
#![allow(clippy::too_many_lines)]

use std::path::Path;

use batchmill_blob::ObjectStore;
use batchmill_proto::pipelines::v1 as ppb;
use batchmill_tests::{
    BUCKET, Options, Sandbox, TENANT_ACCESS_KEY, TENANT_SECRET_KEY, assert_script_passed, member_key, tools_dir,
};
use bytes::Bytes;
use serde_json::json;

/// A pipeline whose batches take two seconds each: jobs on it are still
/// running when they are cancelled.
const SLOW: &str = "import time\n\nclass PythonPredictor:\n    def __init__(self, config, job_spec):\n        pass\n\n    def predict(self, payload, batch_id):\n        time.sleep(2)\n        return payload\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modzy_sdk_runs_unchanged_against_the_modzy_routes() -> anyhow::Result<()> {
    // Every service exports its traces to a collector, which the secrets
    // are looked for in at the end.
    let (traces, endpoint) = batchmill_tests::collector::Traces::start().await?;
    let service_env = batchmill_tests::collector::Traces::env(&endpoint);
    let sandbox = Sandbox::start(Options { postgres: true, service_env, ..Options::default() }).await?;
    let pg = sandbox.postgres.as_ref().expect("postgres started");
    pg.client()
        .await?
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, body text);
             INSERT INTO docs SELECT n, 'doc ' || n FROM generate_series(1, 30) AS n;",
        )
        .await?;
    let key = member_key(&sandbox, "acme").await?;
    let other = member_key(&sandbox, "globex").await?;
    let request = ppb::DeployPipelineRequest {
        name: "slow-model".into(),
        kind: "BatchAPI".into(),
        predictor: Some(ppb::Predictor { r#type: "python".into(), path: "predictor.py".into(), ..Default::default() }),
        files: [("predictor.py".to_owned(), SLOW.as_bytes().to_vec())].into_iter().collect(),
        ..Default::default()
    };
    sandbox.pipelines().await?.deploy_pipeline(request).await?;
    for (key, body) in [
        ("tenant/docs/a.txt", &b"alpha"[..]),
        ("tenant/docs/b.txt", &b"beta"[..]),
        ("tenant/docs/sub/c.bin", &[0u8, 1, 2, 255][..]),
    ] {
        sandbox.blob.put(BUCKET, key, Bytes::copy_from_slice(body), "application/octet-stream").await?;
    }

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("modzy/sdk_jobs.py");
    let python = tools_dir().join("modzy-venv/bin/python3");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .env("BATCHMILL_MODZY_URL", format!("{}/api", sandbox.rest_url()))
        .env("BATCHMILL_API_KEY", &key)
        .env("BATCHMILL_OTHER_KEY", &other)
        .envs(sandbox.client_env()?)
        .env("BATCHMILL_SLOW_MODEL", "slow-model")
        .env("BATCHMILL_TENANT_S3", format!("{TENANT_ACCESS_KEY}:{TENANT_SECRET_KEY}"))
        .env("BATCHMILL_BUCKET", BUCKET)
        .env("BATCHMILL_PG", format!("{} {} {}", pg.jdbc_url(), batchmill_tests::postgres::USER, pg.password))
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running {} (deploy/local/install-deps installs it): {e}", python.display()))?;
    assert_script_passed(&sandbox, "the SDK script", &out);

    // Wrong credentials are refused without the error repeating them.
    let (wrong_s3, wrong_pg) =
        (format!("wrong-s3-{:016x}", fastrand::u64(..)), format!("wrong-pg-{:016x}", fastrand::u64(..)));
    let http = batchmill_tests::http_as(&key);
    let refused = [
        json!({"pipeline": "echo", "workers": 1, "filePathLister": {"s3Paths": [format!("s3://{BUCKET}/tenant/docs/")], "batchSize": 1},
               "s3Credentials": {"accessKeyId": TENANT_ACCESS_KEY, "secretAccessKey": wrong_s3}}),
        json!({"pipeline": "echo", "workers": 1, "sqlQuery": {"url": pg.jdbc_url(), "username": batchmill_tests::postgres::USER,
               "password": wrong_pg, "query": "SELECT body FROM docs", "batchSize": 5}}),
    ];
    for body in &refused {
        let response = http.post(format!("{}/v1/jobs", sandbox.rest_url())).json(body).send().await?;
        let status = response.status();
        let text = response.text().await?;
        assert!(status.is_client_error(), "{status}: {text}");
        assert!(!text.contains(&wrong_s3) && !text.contains(&wrong_pg), "the error repeats a secret: {text}");
    }

    // Neither the API keys nor the jobs' own secrets (right or wrong) were
    // written anywhere in clear: not in any process's log, not in etcd's
    // data, not in NATS's streams, not in S3.
    let secrets = [
        &key[key.find('.').unwrap_or_default() + 1..],
        &other[other.find('.').unwrap_or_default() + 1..],
        &sandbox.api_key[sandbox.api_key.find('.').unwrap_or_default() + 1..],
        TENANT_SECRET_KEY,
        pg.password.as_str(),
        wrong_s3.as_str(),
        wrong_pg.as_str(),
    ];
    let found = sandbox.files_holding(&secrets)?;
    assert!(found.is_empty(), "secrets in clear in: {found:?}");
    // Nor in any span any service exported (the spans of every call above).
    no_secret_in_spans(&traces, &secrets).await;
    let etcd =
        batchmill_coord::Etcd::connect(std::slice::from_ref(&sandbox.etcd_url), std::time::Duration::from_secs(10))
            .await?;
    let stored = batchmill_coord::Kv::list(&etcd, "/batchmill/").await?;
    assert!(
        stored.iter().any(|(_, v)| String::from_utf8_lossy(v).contains("input_access")),
        "sealed credentials are stored"
    );
    Ok(())
}

/// Waits until every service's spans came, then looks for `secrets` in them.
async fn no_secret_in_spans(traces: &batchmill_tests::collector::Traces, secrets: &[&str]) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let wanted =
        ["batchmill-gateway", "batchmill-scheduler", "batchmill-worker", "batchmill-lister", "batchmill-enqueuer"];
    loop {
        let (services, spans) = traces.seen();
        if wanted.iter().all(|s| services.contains(*s)) {
            assert!(spans > 100, "only {spans} spans");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "spans came from {services:?} only");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let traced = traces.holding(secrets);
    assert!(traced.is_empty(), "secrets in the exported spans: {traced:?}");
}
