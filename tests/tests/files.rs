//! The Files API: a 512 MiB upload streamed through the gateway to S3
//! (the gateway's peak memory stays under 100 MB, and the stored file's
//! SHA-256 matches what was sent); files listed, read and deleted per
//! account; a job over a file by id.

use std::time::Duration;

use batchmill_blob::ObjectStore;
use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{Options, Sandbox};
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// 512 MiB of NDJSON-ish lines, made as they are sent.
const SIZE: usize = 512 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The size and SHA-256 of an object of the sandbox's bucket, read as a stream.
async fn stored_sha256(sandbox: &Sandbox, key: &str) -> anyhow::Result<(usize, String)> {
    let mut reader = sandbox.blob.reader("batchmill", key).await?;
    let (mut hasher, mut stored) = (Sha256::new(), 0usize);
    loop {
        let buffer = tokio::io::AsyncBufReadExt::fill_buf(&mut reader).await?;
        if buffer.is_empty() {
            return Ok((stored, hex(&hasher.finalize())));
        }
        hasher.update(buffer);
        let n = buffer.len();
        stored += n;
        tokio::io::AsyncBufReadExt::consume(&mut reader, n);
    }
}

#[tokio::test]
async fn a_512_mib_upload_streams_through_the_gateway_and_a_job_reads_a_file_by_id() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    let (http, base) = (sandbox.http(), sandbox.rest_url());
    let baseline = sandbox.peak_rss("gateway")?;

    // The body: 512 chunks of 1 MiB, each different, hashed as they go.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let sender = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        for i in 0..SIZE / CHUNK {
            let mut chunk = vec![b'x'; CHUNK];
            chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
            hasher.update(&chunk);
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                break;
            }
        }
        hex(&hasher.finalize())
    });
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let response = http.post(format!("{base}/v1/files?name=big.bin")).body(body).send().await?;
    let sent = sender.await?;
    assert_eq!(response.status(), 200, "{}", response.text().await?);
    let file: Value = response.json().await?;
    assert_eq!((file["size"].as_str(), file["name"].as_str()), (Some("536870912"), Some("big.bin")), "{file}");
    assert_eq!(file["sha256"].as_str(), Some(sent.as_str()), "the gateway's checksum is the sender's");
    let peak = sandbox.peak_rss("gateway")?;
    eprintln!("gateway peak RSS {} MiB after a 512 MiB upload (before it: {} MiB)", peak >> 20, baseline >> 20);
    assert!(peak < 100 * 1024 * 1024, "the gateway's peak RSS was {} MiB (before: {} MiB)", peak >> 20, baseline >> 20);

    // What S3 holds hashes the same, read back as a stream.
    let id = file["fileId"].as_str().unwrap_or_default().to_owned();
    let key = format!("staging/files/admin/{id}");
    let (stored, stored_sha) = stored_sha256(&sandbox, &key).await?;
    assert_eq!((stored, stored_sha), (SIZE, sent), "the stored file is the one sent");

    // A small NDJSON file, read by a job by its id: each line an item.
    let lines: String = (0..25).map(|i| format!("{}\n", json!({"n": i}))).collect();
    let small: Value = http.post(format!("{base}/v1/files?name=items.ndjson")).body(lines).send().await?.json().await?;
    let small_id = small["fileId"].as_str().unwrap_or_default().to_owned();
    let listed: Value = http.get(format!("{base}/v1/files")).send().await?.json().await?;
    let ids: Vec<&str> =
        listed["files"].as_array().map(|f| f.iter().filter_map(|f| f["fileId"].as_str()).collect()).unwrap_or_default();
    assert_eq!(ids, [id.as_str(), small_id.as_str()], "{listed}");
    let body = json!({"pipeline": "echo", "workers": 1, "files": {"fileIds": [small_id], "batchSize": 10}});
    let job = sandbox.submit_rest(body, Duration::from_secs(60)).await?;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
    let items: Vec<Value> = (0..25).map(|i| json!({"n": i})).collect();
    batchmill_tests::assert_echo_results(&sandbox, &job, &items, 10, &[]).await?;

    // Another account sees none of them; a file that is not there is a 404 or a 400 naming it.
    let mut accounts = sandbox.accounts_as(&sandbox.api_key).await?;
    use batchmill_proto::accounts::v1 as apb;
    accounts.create_account(apb::CreateAccountRequest { account_id: "globex".into(), limits: None }).await?;
    let other = accounts
        .create_key(apb::CreateKeyRequest {
            account_id: "globex".into(),
            role: apb::Role::Member as i32,
            description: "g".into(),
        })
        .await?
        .into_inner()
        .secret_key;
    let theirs = batchmill_tests::http_as(&other);
    let listed: Value = theirs.get(format!("{base}/v1/files")).send().await?.json().await?;
    assert_eq!(listed["files"], json!([]));
    assert_eq!(theirs.get(format!("{base}/v1/files/{id}")).send().await?.status(), 404);
    assert_eq!(theirs.delete(format!("{base}/v1/files/{id}")).send().await?.status(), 404);
    let refused = theirs
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"pipeline": "echo", "workers": 1, "files": {"fileIds": [id], "batchSize": 1}}))
        .send()
        .await?;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await?.contains("files.file_ids[0]"));

    // Deleted: gone from the listing and from S3.
    assert_eq!(http.delete(format!("{base}/v1/files/{id}")).send().await?.status(), 200);
    assert_eq!(http.get(format!("{base}/v1/files/{id}")).send().await?.status(), 404);
    assert!(sandbox.blob.list("batchmill", &key).await?.is_empty(), "the object is deleted");
    Ok(())
}
