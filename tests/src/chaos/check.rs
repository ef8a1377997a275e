//! What the chaos suite checks of each job once it has ended, counted
//! rather than asserted, so that a run reports every fault's toll: items
//! lost or duplicated, values wrong, counts that do not match the results,
//! objects the manifest does not list, and anything left in JetStream.

use anyhow::Context;
use batchmill_core::subjects::{BATCH_STREAM, consumer_name};
use batchmill_proto::jobs::v1 as pb;
use serde_json::Value;

use crate::Sandbox;

/// The toll of the faults on one job; all zero and empty for a good one.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Verdict {
    /// Items with no result.
    pub lost: u64,
    /// Results beyond the first of an item.
    pub duplicated: u64,
    /// Results that are not the item's echo.
    pub wrong_values: u64,
    /// Counts in `GetJob` that differ from the results (0 or 1).
    pub wrong_counts: u64,
    /// Messages left in the batch stream once the job ended.
    pub left_in_queue: u64,
    /// Each thing wrong, in words.
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn good(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks job `done` (ended) of echo items `items` in batches of
/// `batch_size`: it must have SUCCEEDED with every item's result exactly
/// once, counts exact, the manifest listing each result object once, and
/// nothing left in JetStream.
pub async fn check(sandbox: &Sandbox, done: &pb::Job, items: &[Value], batch_size: usize) -> anyhow::Result<Verdict> {
    let mut verdict = Verdict::default();
    if done.state() != pb::JobState::Succeeded {
        verdict.problems.push(format!("ended {:?}: {}", done.state(), done.message));
    }
    let batches = items.len().div_ceil(batch_size) as i64;
    let b = done.batches.unwrap_or_default();
    let i = done.items.unwrap_or_default();
    let counts = (b.total, b.succeeded, b.failed, i.completed, i.failed);
    let expected = (batches, batches, 0, items.len() as i64, 0);
    if counts != expected {
        verdict.wrong_counts = 1;
        verdict
            .problems
            .push(format!("counts (total, succeeded, failed, items, failed items) {counts:?}, not {expected:?}"));
    }
    tally_results(sandbox, done, items, &mut verdict).await?;
    verdict.left_in_queue = left_in_queue(sandbox, &done.job_id).await?;
    if verdict.left_in_queue > 0 {
        verdict.problems.push(format!("{} messages left in {BATCH_STREAM}", verdict.left_in_queue));
    }
    Ok(verdict)
}

/// Counts each item's results across the job's objects, and checks them
/// against the manifest.
async fn tally_results(
    sandbox: &Sandbox,
    done: &pb::Job,
    items: &[Value],
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    tally(&sandbox.results(done).await?, items, verdict)
}

/// [`tally_results`] over a job's objects, as (key, body).
fn tally(results: &[(String, String)], items: &[Value], verdict: &mut Verdict) -> anyhow::Result<()> {
    let (manifests, objects): (Vec<_>, Vec<_>) = results.iter().partition(|(k, _)| k.ends_with("/manifest.json"));
    let name = |uri: &str| uri.rsplit('/').next().unwrap_or_default().to_owned();
    let mut names: Vec<String> = objects.iter().map(|(k, _)| name(k)).collect();
    names.sort();
    match manifests.first() {
        Some((_, body)) => {
            let manifest: Value = serde_json::from_str(body).context("the manifest")?;
            let uris = manifest["results"].as_array().cloned().unwrap_or_default();
            let mut listed: Vec<String> = uris.iter().map(|u| name(u.as_str().unwrap_or_default())).collect();
            listed.sort();
            if listed != names {
                verdict.problems.push(format!("result objects {names:?}, but the manifest lists {listed:?}"));
            }
        }
        None => verdict.problems.push("no manifest".into()),
    }
    let mut seen = vec![0u64; items.len()];
    for (key, body) in objects {
        for line in body.lines() {
            let line: Value = serde_json::from_str(line).with_context(|| format!("{key}: {line}"))?;
            let index = line["index"].as_u64().map(|i| i as usize).filter(|i| *i < items.len());
            match index {
                Some(index) if line["result"] == items[index] => seen[index] += 1,
                _ => verdict.wrong_values += 1,
            }
        }
    }
    verdict.lost = seen.iter().filter(|n| **n == 0).count() as u64;
    verdict.duplicated = seen.iter().map(|n| n.saturating_sub(1)).sum();
    for (count, what) in [(verdict.lost, "lost"), (verdict.duplicated, "duplicated"), (verdict.wrong_values, "wrong")] {
        if count > 0 {
            verdict.problems.push(format!("{count} results {what}"));
        }
    }
    Ok(())
}

/// Messages of the job left in the batch stream, plus one if its consumer
/// is still there.
async fn left_in_queue(sandbox: &Sandbox, job_id: &str) -> anyhow::Result<u64> {
    let nats = async_nats::jetstream::new(batchmill_queue::client(&sandbox.nats_url).await?);
    let stream = nats.get_stream(BATCH_STREAM).await?;
    let subjects = stream.info_with_subjects(batchmill_core::subjects::batch_subject(job_id)).await?;
    let counts: Vec<(String, usize)> = futures::TryStreamExt::try_collect(subjects).await?;
    let messages: u64 = counts.iter().map(|(_, n)| *n as u64).sum();
    let consumer = stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>(&consumer_name(job_id)).await;
    Ok(messages + u64::from(consumer.is_ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(objects: &[(&str, &str)], listed: &[&str]) -> Vec<(String, String)> {
        let manifest =
            serde_json::json!({"results": listed.iter().map(|n| format!("s3://b/r/j/{n}")).collect::<Vec<_>>()});
        let mut out: Vec<(String, String)> =
            objects.iter().map(|(k, v)| (format!("r/j/{k}"), (*v).to_owned())).collect();
        out.push(("r/j/manifest.json".into(), manifest.to_string()));
        out
    }

    fn line(index: usize, result: &Value) -> String {
        format!("{}\n", serde_json::json!({"index": index, "result": result}))
    }

    #[test]
    fn a_tally_counts_lost_duplicated_and_wrong_results_and_unlisted_objects() -> anyhow::Result<()> {
        let items: Vec<Value> = (0..4).map(|i| serde_json::json!({"i": i})).collect();
        let good = [line(0, &items[0]) + &line(1, &items[1]), line(2, &items[2]) + &line(3, &items[3])];
        let mut verdict = Verdict::default();
        tally(
            &results(&[("j-0.jsonl", &good[0]), ("j-1.jsonl", &good[1])], &["j-0.jsonl", "j-1.jsonl"]),
            &items,
            &mut verdict,
        )?;
        assert!(verdict.good(), "{verdict:?}");

        // Item 1 twice, item 3 missing, item 2 with another's value, and an object the manifest does not list.
        let bad = [line(0, &items[0]) + &line(1, &items[1]), line(1, &items[1]) + &line(2, &items[0])];
        let mut verdict = Verdict::default();
        tally(&results(&[("j-0.jsonl", &bad[0]), ("j-1.jsonl", &bad[1])], &["j-0.jsonl"]), &items, &mut verdict)?;
        assert_eq!((verdict.lost, verdict.duplicated, verdict.wrong_values), (2, 1, 1), "{verdict:?}");
        assert!(verdict.problems.iter().any(|p| p.contains("the manifest lists")), "{verdict:?}");
        Ok(())
    }
}
