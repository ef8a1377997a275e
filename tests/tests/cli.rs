//! The `batchmill` CLI as a user runs it: the gateway and key from a
//! profile in its config file, `submit --wait` following a job to its end
//! (status lines when not on a terminal) and printing it as a table or
//! YAML, `--dry-run` checking an NDJSON source without submitting, errors
//! naming the field at fault, exit statuses that say whether the job
//! succeeded, and shell completions.

use std::process::Output;

use batchmill_blob::ObjectStore;
use batchmill_tests::{BUCKET, Options, Sandbox, binary, http_as};
use bytes::Bytes;
use serde_json::Value;

/// Runs the CLI with `config` as its config file and nothing else to say
/// where the gateway is.
fn cli(config: &std::path::Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(std::process::Command::new(binary("batchmill")?)
        .env("BATCHMILL_CONFIG", config)
        .env_remove("BATCHMILL_GRPC_ADDR")
        .env_remove("BATCHMILL_API_KEY")
        .env_remove("BATCHMILL_PROFILE")
        .args(args)
        .output()?)
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_submits_any_source_follows_jobs_and_says_how_they_ended() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 2, ..Options::default() }).await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    let endpoint = sandbox.gateway.clone();
    std::fs::write(
        &config,
        format!(
            "default: sandbox\nprofiles:\n  sandbox:\n    endpoint: '{endpoint}'\n    api_key: '{}'\n{}  nowhere:\n    endpoint: '127.0.0.1:1'\n",
            sandbox.api_key,
            sandbox.cli_profile_tls()
        ),
    )?;

    // Inline items, followed to the end, printed as a table.
    let out = cli(&config, &["-o", "table", "submit", "--count", "30", "--batch-size", "5", "--wait"])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let rows: Vec<&str> = stdout.lines().collect();
    assert!(rows[0].starts_with("JOB ID") && rows.len() == 2, "{stdout}");
    let cells: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!(&cells[1..6], ["echo", "SUCCEEDED", "6/6", "30/30", "0"], "{stdout}");
    // Not on a terminal, progress is a line per change on stderr.
    assert!(stderr.contains("SUCCEEDED: batches 6/6 done, 0 failed; items 30/30"), "{stderr}");

    // An NDJSON source: counted by --dry-run, nothing submitted.
    let lines = "{\"t\": 1}\n{\"t\": 2}\n{\"t\": 3}\n{\"t\": 4}\n";
    sandbox.blob.put(BUCKET, "cli/in.jsonl", Bytes::from(lines), "application/x-ndjson").await?;
    let http = http_as(&sandbox.api_key);
    let jobs = |v: Value| v["jobs"].as_array().map_or(0, Vec::len);
    let before = jobs(http.get(format!("{}/v1/jobs", sandbox.rest_url())).send().await?.json().await?);
    let source = format!("s3://{BUCKET}/cli/in.jsonl");
    let out = cli(&config, &["submit", "--ndjson", &source, "--batch-size", "3", "--dry-run"])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let checked: Value = serde_json::from_str(&stdout)?;
    // It lists the files (lines are counted only as the job reads them).
    assert_eq!((checked["fileCount"].as_str(), checked["files"][0].as_str()), (Some("1"), Some(source.as_str())));
    assert!(checked["message"].as_str().is_some_and(|m| m.contains("validations passed")), "{checked}");
    let after = jobs(http.get(format!("{}/v1/jobs", sandbox.rest_url())).send().await?.json().await?);
    assert_eq!(after, before, "a dry run submitted a job");
    // Then run, printed as YAML.
    let out = cli(&config, &["-o", "yaml", "submit", "--ndjson", &source, "--batch-size", "3", "--wait"])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let job: Value = serde_yaml::from_str(&stdout)?;
    assert_eq!((job["state"].as_str(), job["items"]["completed"].as_str()), (Some("JOB_STATE_SUCCEEDED"), Some("4")));

    // A bad request names the field, with exit status 2.
    let out = cli(&config, &["submit", "--count", "3", "--batch-size", "0"])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("item_list.batch_size"), "{stderr}");

    // A job that ends other than SUCCEEDED (batch 0 fails, with one delivery):
    // submit --wait exits 1, and so does watch on it afterwards.
    let config_json = r#"{"fail_batches": [0]}"#;
    let args = ["submit", "--count", "2", "--batch-size", "1", "--config", config_json, "--max-receive-count", "1"];
    let out = cli(&config, &[&args[..], &["--wait"]].concat())?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let job: Value = serde_json::from_str(&stdout)?;
    assert_eq!(job["state"], "JOB_STATE_COMPLETED_WITH_FAILURES", "{job}");
    assert!(stderr.contains("1 failed"), "{stderr}");
    let id = job["jobId"].as_str().unwrap_or_default();
    let out = cli(&config, &["watch", id])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);

    // Profiles: another one, and one that does not exist.
    let out = cli(&config, &["--profile", "nowhere", "list"])?;
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&config, &["--profile", "prod", "list"])?;
    let (_, stderr) = text(&out);
    assert!(stderr.contains("no profile \"prod\"") && stderr.contains("nowhere, sandbox"), "{stderr}");

    // Completions need no gateway.
    let out = cli(&config, &["completions", "bash"])?;
    let (stdout, _) = text(&out);
    assert!(out.status.success() && stdout.contains("complete") && stdout.contains("submit"), "{stdout}");
    Ok(())
}
