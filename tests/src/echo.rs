//! The echo pipeline's jobs and the check of their results: every item
//! once, in objects the manifest lists once.

use anyhow::Context;
use batchmill_proto::jobs::v1 as pb;

use crate::Sandbox;

/// An inline-items job request for the echo pipeline.
pub fn echo_job(
    items: &[serde_json::Value],
    batch_size: i32,
    workers: i32,
    config: serde_json::Value,
) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        pipeline: "echo".into(),
        workers,
        source: Some(pb::submit_job_request::Source::ItemList(pb::ItemList {
            items: items.iter().map(batchmill_core::json::json_to_value).collect(),
            batch_size,
        })),
        config: config.as_object().map(batchmill_core::json::json_to_struct),
        ..Default::default()
    }
}

/// Checks that a job's result objects hold exactly `items` through the echo
/// pipeline: one line `{"index", "result"}` per item, each item once, in
/// objects that are a batch's (`<job>-<seq>.jsonl`) or a group's
/// (`<job>-<first>-<last>.jsonl`, holding only batches in that range, in
/// order), each listed once in the manifest, and no other objects. Failed
/// batches (by seq) have no results. Returns the objects' names.
pub async fn assert_echo_results(
    sandbox: &Sandbox,
    job: &pb::Job,
    items: &[serde_json::Value],
    batch_size: usize,
    failed: &[u64],
) -> anyhow::Result<Vec<String>> {
    let missing = |index: usize| failed.contains(&((index / batch_size) as u64));
    assert_echo_results_but(sandbox, job, items, batch_size, &missing).await
}

/// [`assert_echo_results`], with the items that have no result named one
/// by one (`missing`, by index), as where a batch's failing items were
/// isolated.
pub async fn assert_echo_results_but(
    sandbox: &Sandbox,
    job: &pb::Job,
    items: &[serde_json::Value],
    batch_size: usize,
    missing: &dyn Fn(usize) -> bool,
) -> anyhow::Result<Vec<String>> {
    let results = sandbox.results(job).await?;
    let prefix = format!("results/{}/", job.job_id);
    let manifest = results.iter().find(|(k, _)| *k == format!("{prefix}manifest.json")).context("no manifest")?;
    let manifest: serde_json::Value = serde_json::from_str(&manifest.1)?;
    anyhow::ensure!(manifest["job_id"] == job.job_id.as_str(), "manifest {manifest}");
    let mut listed: Vec<String> = manifest["results"]
        .as_array()
        .context("manifest results")?
        .iter()
        .map(|u| u.as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    let mut names: Vec<String> = results
        .iter()
        .filter(|(k, _)| !k.ends_with("manifest.json"))
        .map(|(k, _)| k.trim_start_matches(&prefix).to_owned())
        .collect();
    let listed_count = listed.len();
    listed.sort();
    listed.dedup();
    anyhow::ensure!(listed.len() == listed_count, "the manifest lists an object twice: {manifest}");
    names.sort();
    anyhow::ensure!(names == listed, "result objects {names:?}, but the manifest lists {listed:?}");
    let mut seen = vec![0u32; items.len()];
    for (key, body) in results.iter().filter(|(k, _)| !k.ends_with("manifest.json")) {
        let stem = key.trim_start_matches(&prefix).trim_end_matches(".jsonl");
        let range = stem.strip_prefix(&format!("{}-", job.job_id)).context("object name")?;
        let (first, last): (u64, u64) = match range.split_once('-') {
            Some((a, b)) => (a.parse()?, b.parse()?),
            None => (range.parse()?, range.parse()?),
        };
        let mut previous = None;
        for line in body.lines() {
            let line: serde_json::Value = serde_json::from_str(line)?;
            let index = line["index"].as_u64().with_context(|| format!("{key}: {line}"))? as usize;
            let seq = (index / batch_size) as u64;
            anyhow::ensure!((first..=last).contains(&seq), "{key} holds item {index}, of batch {seq}");
            anyhow::ensure!(!missing(index), "{key} holds item {index}, which failed");
            anyhow::ensure!(previous < Some(index), "{key} is out of order at item {index}");
            previous = Some(index);
            let expected = serde_json::json!({"index": index, "result": items.get(index)});
            anyhow::ensure!(line == expected, "{key} holds {line}, expected {expected}");
            seen[index] += 1;
        }
    }
    for (index, count) in seen.iter().enumerate() {
        let want = u32::from(!missing(index));
        anyhow::ensure!(*count == want, "item {index} is in the results {count} times, expected {want}");
    }
    Ok(names)
}
