//! The built-in `embed` pipeline on the local cluster: NDJSON lines of
//! `{"id", "text"}` in S3 → one result line per item with its id and
//! embedding, each matching sentence-transformers' (the committed fixture);
//! the model from the worker's default or from S3 (`config.model`); a bad
//! item fails its batch naming the item; a bad config is refused at submission.
//! And the same on a worker built with the cuda feature, on its CUDA backend.

use batchmill_blob::ObjectStore;
use std::collections::BTreeMap;
use std::time::Duration;

use batchmill_embed::Precision;
use batchmill_embed::reference::{Fixture, FixtureItem, cosine, fixture_path};
use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{BUCKET, Options, Sandbox, embed_model};
use bytes::Bytes;
use serde_json::{Value, json};

async fn submit(sandbox: &Sandbox, body: Value) -> anyhow::Result<pb::Job> {
    sandbox.submit_rest(body, Duration::from_secs(180)).await
}

/// Result lines by id: id → embedding.
async fn embeddings(sandbox: &Sandbox, job: &pb::Job) -> anyhow::Result<BTreeMap<String, Vec<f32>>> {
    let mut out = BTreeMap::new();
    for (key, body) in sandbox.results(job).await? {
        if !key.ends_with(".jsonl") {
            continue;
        }
        for line in body.lines() {
            let v: Value = serde_json::from_str(line)?;
            let id = v["id"].as_str().map(str::to_owned).unwrap_or_else(|| v["id"].to_string());
            let e: Vec<f32> = serde_json::from_value(v["embedding"].clone())?;
            anyhow::ensure!(out.insert(id.clone(), e).is_none(), "id {id} twice");
        }
    }
    Ok(out)
}

/// A job's text, from the fixture: (id, text, sentence-transformers' embedding).
type Text<'a> = (String, &'a str, &'a Vec<f32>);

fn texts<'a>(items: impl Iterator<Item = &'a FixtureItem>) -> Vec<Text<'a>> {
    items.enumerate().map(|(i, it)| (format!("t{i:03}"), it.text.as_str(), &it.embedding)).collect()
}

/// NDJSON lines of `{"id", "text"}`.
fn ndjson(texts: &[Text<'_>]) -> Bytes {
    Bytes::from(texts.iter().map(|(id, text, _)| format!("{}\n", json!({"id": id, "text": text}))).collect::<String>())
}

/// Every text has one embedding of 384 values, at cosine ≥ `bar` to its reference.
fn assert_close(got: &BTreeMap<String, Vec<f32>>, texts: &[Text<'_>], bar: f32) {
    assert_eq!(got.len(), texts.len(), "one result per item");
    for (id, text, reference) in texts {
        let e = got.get(id).unwrap_or_else(|| panic!("no result for {id}"));
        assert_eq!(e.len(), 384);
        let c = cosine(reference, e);
        assert!(c >= bar, "{id} ({text:?}): cosine {c}");
    }
}

#[tokio::test]
async fn embed_jobs_write_every_items_embedding_as_sentence_transformers_computes_it() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 2, ..Options::default() }).await?;
    let fixture = Fixture::read(&fixture_path()).map_err(anyhow::Error::msg)?;
    // 60 texts (short, long past truncation, non-ASCII, empty) in 3 files.
    let items = texts(fixture.items.iter().take(60));
    for (f, chunk) in items.chunks(20).enumerate() {
        sandbox.blob.put(BUCKET, &format!("embed/in/{f}.jsonl"), ndjson(chunk), "application/x-ndjson").await?;
    }
    let source = json!({"s3Paths": [format!("s3://{BUCKET}/embed/in/")], "batchSize": 16});
    let job = submit(&sandbox, json!({"pipeline": "embed", "workers": 2, "delimitedFiles": source.clone()})).await?;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
    assert_eq!(job.items.unwrap_or_default().completed, 60);
    let got = embeddings(&sandbox, &job).await?;
    assert_close(&got, &items, Precision::Fp32.cosine_bar());

    // The model from S3, named in the job's config: the same vectors.
    let model = embed_model();
    for file in
        ["config.json", "tokenizer.json", "model.safetensors", "sentence_bert_config.json", "1_Pooling/config.json"]
    {
        let body = tokio::fs::read(model.join(file)).await?;
        sandbox
            .blob
            .put(BUCKET, &format!("models/minilm/{file}"), Bytes::from(body), "application/octet-stream")
            .await?;
    }
    let config = json!({"model": format!("s3://{BUCKET}/models/minilm"), "precision": "fp32"});
    let job = submit(&sandbox, json!({"pipeline": "embed", "workers": 1, "config": config, "delimitedFiles": source}))
        .await?;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
    let from_s3 = embeddings(&sandbox, &job).await?;
    assert_eq!(from_s3.len(), 60);
    for (id, e) in &got {
        assert!(cosine(e, &from_s3[id]) >= 0.99999, "{id}");
    }

    // Plain strings take their index as id; a number is not a text: it is
    // isolated from its batch (bisection), and "fourth" beside it embedded.
    let items = json!(["first", "second", 42, "fourth"]);
    let job = submit(
        &sandbox,
        json!({"pipeline": "embed", "workers": 1, "itemList": {"items": items, "batchSize": 2},
               "deadLetter": {"maxReceiveCount": 1}}),
    )
    .await?;
    assert_eq!(job.state(), pb::JobState::CompletedWithFailures, "{job:?}");
    let got = embeddings(&sandbox, &job).await?;
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), ["0", "1", "3"]);
    let items = job.items.unwrap_or_default();
    assert_eq!((items.completed, items.failed), (3, 1), "{job:?}");
    let mut jobs = sandbox.jobs().await?;
    let dead = jobs
        .list_dead_letters(pb::ListDeadLettersRequest { job_id: job.job_id.clone(), ..Default::default() })
        .await?
        .into_inner()
        .dead_letters;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].last_error.contains("item 2: expected a string"), "{:?}", dead[0]);
    let failed: Vec<i64> = dead[0].failed_items.iter().map(|f| f.index).collect();
    assert_eq!(failed, [2], "{:?}", dead[0]);

    // A config the pipeline cannot use is refused at submission, naming the field.
    let response = sandbox
        .http()
        .post(format!("{}/v1/jobs", sandbox.rest_url()))
        .json(&json!({"pipeline": "embed", "workers": 1, "config": {"precision": "int8"},
                      "itemList": {"items": ["x"], "batchSize": 1}}))
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await?;
    assert!(error["message"].as_str().unwrap_or_default().contains("config.precision"), "{error}");
    Ok(())
}

/// A worker on the CPU emulation of CUDA (crates/embed/cuda-emu), as
/// `scripts/test` sets it up: it builds the workers with the cuda feature and
/// names the emulator's libraries in BATCHMILL_CUDA_EMU. The worker finds the
/// CUDA device and registers it, runs `embed` on its CUDA backend (two
/// batches at a time) at a GPU's default precision, fp16, and every embedding
/// matches sentence-transformers' within fp16's bar. On a GPU machine,
/// BATCHMILL_CUDA_EMU may name CUDA's own library directory.
#[tokio::test]
async fn a_cuda_worker_embeds_on_its_cuda_backend() -> anyhow::Result<()> {
    let Some(libs) = std::env::var_os("BATCHMILL_CUDA_EMU") else {
        assert!(
            std::env::var_os("BATCHMILL_EXPECT_CUDA").is_none(),
            "BATCHMILL_EXPECT_CUDA is set, but BATCHMILL_CUDA_EMU is not"
        );
        println!("not run: BATCHMILL_CUDA_EMU is not set (scripts/test sets it)");
        return Ok(());
    };
    let worker_env = vec![
        ("LD_LIBRARY_PATH".into(), libs.to_string_lossy().into_owned()),
        ("BATCHMILL_DEVICE".into(), "cuda".into()),
    ];
    let sandbox = Sandbox::start(Options { workers: 1, worker_env, ..Options::default() }).await?;
    let fixture = Fixture::read(&fixture_path()).map_err(anyhow::Error::msg)?;
    // Every fifth text of the fixture, 48 (empty to 448 tokens, long past
    // truncation, non-ASCII), in batches of 8.
    let items = texts(fixture.items.iter().step_by(5));
    sandbox.blob.put(BUCKET, "embed-cuda/in.jsonl", ndjson(&items), "application/x-ndjson").await?;
    let source = json!({"s3Paths": [format!("s3://{BUCKET}/embed-cuda/")], "batchSize": 8});
    let job = submit(&sandbox, json!({"pipeline": "embed", "workers": 1, "delimitedFiles": source})).await?;
    let log = std::fs::read_to_string(sandbox.dir().join("worker-0.log"))?;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}\n{log}");
    assert_eq!(job.items.unwrap_or_default().completed, 48);
    assert_close(&embeddings(&sandbox, &job).await?, &items, Precision::Fp16.cosine_bar());
    let registered = log.lines().find(|l| l.contains("registered")).unwrap_or_default();
    assert!(registered.contains("device=cuda:0 "), "the worker registered another device: {registered}");
    let loaded = log.lines().find(|l| l.contains("embedding model loaded")).unwrap_or_default();
    assert!(loaded.contains("cuda:0") && loaded.contains("fp16"), "{loaded}");
    println!("{registered}\n{loaded}");
    Ok(())
}
