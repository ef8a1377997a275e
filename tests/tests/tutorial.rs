//! Cortex's BatchAPI image-classifier tutorial, walked end to end against
//! the cluster: `batchmill deploy` of examples/image-classifier (cortex.yaml
//! and a PythonPredictor of the tutorial's shape, its imports as Cortex
//! shipped them: requests and PIL, unlisted in requirements.txt, and boto3),
//! 16 sample PNG images under a prefix and over HTTP, the three ways to
//! submit, dry runs, the aggregated results file that `on_job_complete`
//! writes, and stopping a job.
// A test walks a whole scenario; the 80-line bar is the product's.
#![allow(clippy::too_many_lines)]

use batchmill_blob::ObjectStore;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use batchmill_tests::{BUCKET, Options, Sandbox, binary, free_port, tool};
use bytes::Bytes;
use serde_json::{Value, json};

const LABELS: [&str; 5] = ["tabby cat", "golden retriever", "goldfish", "great white shark", "tree frog"];

fn image_url(i: usize) -> String {
    format!("s3://{BUCKET}/image-classifier/samples/img_{i:02}.jpg")
}

async fn wait_status(http: &reqwest::Client, base: &str, job_id: &str, want: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s: Value = http.get(format!("{base}/image-classifier?jobID={job_id}")).send().await?.json().await?;
        if s["job_status"]["status"] == want {
            return Ok(s);
        }
        let status = s["job_status"]["status"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(
            !["succeeded", "completed_with_failures", "stopped", "worker_error", "timed_out"]
                .contains(&status.as_str())
                && tokio::time::Instant::now() < deadline,
            "job {job_id} is {status}, not {want}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The 16 sample pictures, made with Pillow (the workers' Python runtime has
/// it) as tiny PNGs whose red channel is 40 × their label's index, in `dir`
/// as `img_<i>.png`.
fn make_images(dir: &Path) -> anyhow::Result<()> {
    let script = "import sys; from PIL import Image\n\
        for i in range(16): Image.new('RGB', (8, 8), (40 * (i % 5), i, 7)).save(f'{sys.argv[1]}/img_{i:02}.png')";
    let made = Command::new(tool("python3")?).args(["-c", script]).arg(dir).output()?;
    anyhow::ensure!(made.status.success(), "making images: {}", String::from_utf8_lossy(&made.stderr));
    Ok(())
}

/// An HTTP server of `dir` (Python's http.server), stopped when dropped.
struct HttpServer {
    child: std::process::Child,
    base: String,
}

impl HttpServer {
    async fn start(dir: &Path) -> anyhow::Result<HttpServer> {
        let port = free_port()?;
        let child = Command::new(tool("python3")?)
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let server = HttpServer { child, base: format!("http://127.0.0.1:{port}") };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the HTTP server did not listen on {port}")
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Submits `body` to the tutorial API, waits for it to succeed and checks
/// the aggregated results: all 16 images, each with its class.
async fn run_and_check(sandbox: &Sandbox, http: &reqwest::Client, body: &Value) -> anyhow::Result<String> {
    run_and_check_urls(sandbox, http, body, image_url).await
}

/// [`run_and_check`] for images at `url(i)`.
async fn run_and_check_urls(
    sandbox: &Sandbox,
    http: &reqwest::Client,
    body: &Value,
    url: impl Fn(usize) -> String,
) -> anyhow::Result<String> {
    let base = sandbox.rest_url();
    let response = http.post(format!("{base}/image-classifier")).json(body).send().await?;
    anyhow::ensure!(response.status() == 200, "submit: {}", response.text().await?);
    let spec: Value = response.json().await?;
    let job_id = spec["job_id"].as_str().expect("job_id").to_owned();
    let done = wait_status(http, &base, &job_id, "succeeded").await?;
    assert_eq!(done["job_status"]["batch_metrics"]["failed"], 0, "{done}");
    let key = format!("tutorial/results/{job_id}/aggregated_results.json");
    let aggregated: Vec<Value> = serde_json::from_slice(&sandbox.blob.get(BUCKET, &key).await?)?;
    assert_eq!(aggregated.len(), 16, "{aggregated:?}");
    let mut by_url: Vec<(String, String)> = aggregated
        .iter()
        .map(|r| (r["url"].as_str().unwrap_or_default().to_owned(), r["class"].as_str().unwrap_or_default().to_owned()))
        .collect();
    by_url.sort();
    let mut expected: Vec<(String, String)> = (0..16).map(|i| (url(i), LABELS[i % 5].to_owned())).collect();
    expected.sort();
    assert_eq!(by_url, expected, "every image once, with its class");
    Ok(job_id)
}

#[tokio::test]
async fn the_cortex_image_classifier_tutorial_runs_unchanged() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options::default()).await?;
    let http = sandbox.http();
    let base = sandbox.rest_url();

    // 16 sample images under a prefix and over HTTP, and the URL lists
    // delimited_files reads.
    let images = sandbox.dir().join("images");
    std::fs::create_dir_all(&images)?;
    make_images(&images)?;
    for i in 0..16 {
        let picture = std::fs::read(images.join(format!("img_{i:02}.png")))?;
        let key = format!("image-classifier/samples/img_{i:02}.jpg");
        sandbox.blob.put(BUCKET, &key, Bytes::from(picture), "image/png").await?;
    }
    let web = HttpServer::start(&images).await?;
    sandbox
        .blob
        .put(BUCKET, "image-classifier/samples/README.txt", Bytes::from_static(b"not an image"), "text/plain")
        .await?;
    for part in 0..2 {
        let lines: String = (part * 8..part * 8 + 8).map(|i| format!("{}\n", json!(image_url(i)))).collect();
        let key = format!("image-classifier/urls/urls_{part}.json");
        sandbox.blob.put(BUCKET, &key, Bytes::from(lines), "application/json").await?;
    }

    // `batchmill deploy` of the tutorial's project directory.
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/image-classifier");
    let deployed = Command::new(binary("batchmill")?)
        .env("BATCHMILL_API_KEY", &sandbox.api_key)
        .args(sandbox.cli_target())
        .arg("deploy")
        .arg(&project)
        .output()?;
    anyhow::ensure!(deployed.status.success(), "deploy: {}", String::from_utf8_lossy(&deployed.stderr));
    let pipeline: Value = serde_json::from_slice(&deployed.stdout)?;
    assert_eq!((pipeline["name"].as_str(), pipeline["version"].as_u64()), (Some("image-classifier"), Some(1)));
    assert_eq!(pipeline["files"], json!(["cortex.yaml", "predictor.py", "requirements.txt"]));
    let got: Value = http.get(format!("{base}/v1/pipelines/image-classifier")).send().await?.json().await?;
    assert_eq!(got["predictor"]["type"], "python", "{got}");

    let dest = json!({"dest_s3_dir": format!("s3://{BUCKET}/tutorial/results")});

    // 1. item_list: the URLs themselves.
    let urls: Vec<String> = (0..16).map(image_url).collect();
    let by_items = json!({"workers": 1, "item_list": {"items": urls, "batch_size": 2}, "config": dest});
    let first = run_and_check(&sandbox, &http, &by_items).await?;
    // The predictor's prints are the job's log lines, with their batch ids.
    let logs = http.get(format!("{base}/v1/jobs/{first}/logs")).send().await?.text().await?;
    for seq in 0..8 {
        assert!(logs.contains(&format!("classified 2 images in batch {first}-{seq}")), "{logs}");
    }

    // The same images over HTTP, which the predictor fetches with requests.
    let web_url = |i: usize| format!("{}/img_{i:02}.png", web.base);
    let over_http = json!({"workers": 2, "item_list": {"items": (0..16).map(web_url).collect::<Vec<_>>(),
        "batch_size": 4}, "config": dest});
    run_and_check_urls(&sandbox, &http, &over_http, web_url).await?;

    // 2. file_path_lister: a dry run lists the 16 images, then the job.
    let lister = json!({"workers": 2, "file_path_lister": {"s3_paths": [format!("s3://{BUCKET}/image-classifier/samples/")],
        "includes": ["**.jpg"], "batch_size": 2}, "config": dest});
    let response = http.post(format!("{base}/image-classifier?dryRun=true")).json(&lister).send().await?;
    let expected: String = (0..16).map(|i| format!("{}\n", image_url(i))).collect();
    assert_eq!(response.text().await?, format!("{expected}validations passed"));
    run_and_check(&sandbox, &http, &lister).await?;

    // 3. delimited_files: a dry run lists the two URL files, then the job.
    let delimited = json!({"workers": 2, "delimited_files": {"s3_paths": [format!("s3://{BUCKET}/image-classifier/urls/")],
        "includes": ["**.json"], "batch_size": 2}, "config": dest});
    let response = http.post(format!("{base}/image-classifier?dryRun=true")).json(&delimited).send().await?;
    let expected = format!(
        "s3://{BUCKET}/image-classifier/urls/urls_0.json\ns3://{BUCKET}/image-classifier/urls/urls_1.json\nvalidations passed"
    );
    assert_eq!(response.text().await?, expected);
    run_and_check(&sandbox, &http, &delimited).await?;

    // A job without dest_s3_dir fails its predictor's __init__ on every try, and says why.
    let response = http
        .post(format!("{base}/image-classifier"))
        .json(&json!({"workers": 1, "item_list": {"items": [image_url(0)], "batch_size": 1}}))
        .send()
        .await?;
    let bad: Value = response.json().await?;
    let bad_id = bad["job_id"].as_str().expect("job_id").to_owned();
    let failed = wait_status(&http, &base, &bad_id, "worker_error").await?;
    let job: Value = http.get(format!("{base}/v1/jobs/{bad_id}")).send().await?.json().await?;
    let message = job["message"].as_str().unwrap_or_default();
    assert!(message.contains("'dest_s3_dir' field was not provided"), "{message} / {failed}");

    // Stop: a slow job is stopped while it runs; its hook never runs.
    let slow = json!({"workers": 1, "item_list": {"items": (0..16).map(image_url).collect::<Vec<_>>(), "batch_size": 1},
        "config": {"dest_s3_dir": format!("s3://{BUCKET}/tutorial/results"), "delay_s": 0.5}});
    let response = http.post(format!("{base}/image-classifier")).json(&slow).send().await?;
    let stopped: Value = response.json().await?;
    let stopped_id = stopped["job_id"].as_str().expect("job_id").to_owned();
    wait_status(&http, &base, &stopped_id, "running").await?;
    let response = http.delete(format!("{base}/image-classifier?jobID={stopped_id}")).send().await?;
    assert_eq!(response.text().await?, format!("{{\"message\":\"stopped job {stopped_id}\"}}\n"));
    wait_status(&http, &base, &stopped_id, "stopped").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let key = format!("tutorial/results/{stopped_id}/aggregated_results.json");
    assert!(sandbox.blob.get(BUCKET, &key).await.is_err(), "a stopped job's on_job_complete does not run");
    Ok(())
}
