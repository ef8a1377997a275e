//! Native jobs and results as Modzy's API shows them.
//!
//! Status: `PENDING` and `ADMITTED` are `SUBMITTED`; `RUNNING` and
//! `COMPLETING` are `IN_PROGRESS`; `SUCCEEDED`, `COMPLETED_WITH_FAILURES`
//! and `FAILED` are `COMPLETED` (failed items are counted in `failed`; a
//! job that failed as a whole says why in `message`); `TIMED_OUT` is
//! `TIMEDOUT`; `CANCELLED` is `CANCELED`.

use batchmill_core::time::duration_to_ms;
use batchmill_proto::jobs::v1::{self as pb, JobState};
use serde_json::{Map, Value, json};

/// Most results `GET /api/results/{id}` gathers.
pub const MOST_RESULTS: usize = 100_000;

/// Modzy's status of a native state.
pub fn status(state: JobState) -> &'static str {
    match state {
        JobState::Unspecified | JobState::Pending | JobState::Admitted | JobState::Preempted => "SUBMITTED",
        JobState::Running | JobState::Completing => "IN_PROGRESS",
        JobState::Succeeded | JobState::CompletedWithFailures | JobState::Failed => "COMPLETED",
        JobState::TimedOut => "TIMEDOUT",
        JobState::Cancelled => "CANCELED",
    }
}

/// A timestamp as Modzy writes it: `2021-06-01T18:34:42.345+0000`.
fn time(t: Option<&prost_types::Timestamp>) -> Value {
    let Some(t) = t else { return Value::Null };
    let ms = t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000);
    let text = batchmill_core::time::rfc3339_ms(ms);
    Value::String(text.replace('Z', "+0000"))
}

fn ms(d: Option<&prost_types::Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(duration_to_ms(d)))
}

/// The job object of `GET /api/jobs/{id}`.
pub fn job(job: &pb::Job) -> Value {
    let items = job.items.unwrap_or_default();
    let updated = job.end_time.as_ref().or(job.start_time.as_ref()).or(job.create_time.as_ref());
    json!({
        "jobIdentifier": job.job_id,
        "submittedBy": job.submitted_by,
        "accountIdentifier": job.account_id,
        "model": {"identifier": job.pipeline, "version": job.pipeline_version.to_string(), "name": job.pipeline},
        "status": status(job.state()),
        "createdAt": time(job.create_time.as_ref()),
        "submittedAt": time(job.create_time.as_ref()),
        "updatedAt": time(updated),
        "total": items.total,
        "pending": items.pending,
        "completed": items.completed,
        "failed": items.failed,
        "totalInputs": items.total,
        "elapsedTime": ms(job.elapsed_time.as_ref()),
        "queueTime": ms(job.queue_time.as_ref()),
        "timeout": ms(job.timeout.as_ref()),
        "jobInputs": {"identifier": job.input_names},
        "inputByteAmount": job.input_bytes,
        "explain": false,
        "message": job.message,
    })
}

/// The results object of `GET /api/results/{id}`.
pub fn results(job: &pb::Job, results: &[pb::ItemResult], dead: &[pb::DeadLetter]) -> Value {
    let items = job.items.unwrap_or_default();
    let mut by_name = Map::new();
    for r in results {
        let name = if r.name.is_empty() { r.index.to_string() } else { r.name.clone() };
        let result = r.result.as_ref().map(batchmill_core::json::value_to_json).unwrap_or(Value::Null);
        by_name.insert(name, json!({"status": "SUCCESSFUL", "results.json": result}));
    }
    let mut failures = Map::new();
    for d in dead {
        // Where its failing items were isolated, only those failed, each
        // with its own error; else the whole batch, with the batch's.
        let failed: Vec<(usize, &str)> = if d.failed_items.is_empty() {
            (0..d.items.len()).map(|i| (i, d.last_error.as_str())).collect()
        } else {
            let at = |f: &pb::FailedItem| usize::try_from(f.index - d.first_item).ok();
            d.failed_items.iter().filter_map(|f| Some((at(f)?, f.error.as_str()))).collect()
        };
        for (i, error) in failed {
            let Some(item) = d.items.get(i) else { continue };
            let item = batchmill_core::json::value_to_json(item);
            let name =
                batchmill_core::named::name_of(&item).map_or_else(|| format!("{}:{i}", d.batch_id), str::to_owned);
            failures.insert(name, json!({"status": "FAILED", "error": error}));
        }
    }
    json!({
        "jobIdentifier": job.job_id,
        "accountIdentifier": job.account_id,
        "submittedByKey": job.submitted_by,
        "total": items.total,
        "completed": items.completed,
        "failed": items.failed,
        "finished": batchmill_core::job::is_terminal(job.state()),
        "submittedAt": time(job.create_time.as_ref()),
        "elapsedTime": ms(job.elapsed_time.as_ref()),
        "initialQueueTime": ms(job.queue_time.as_ref()),
        "explained": false,
        "results": by_name,
        "failures": failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_native_state_has_a_modzy_status() {
        let cases = [
            (JobState::Pending, "SUBMITTED"),
            (JobState::Admitted, "SUBMITTED"),
            (JobState::Running, "IN_PROGRESS"),
            (JobState::Completing, "IN_PROGRESS"),
            (JobState::Succeeded, "COMPLETED"),
            (JobState::CompletedWithFailures, "COMPLETED"),
            (JobState::Failed, "COMPLETED"),
            (JobState::TimedOut, "TIMEDOUT"),
            (JobState::Cancelled, "CANCELED"),
        ];
        for (state, want) in cases {
            assert_eq!(status(state), want, "{state:?}");
        }
    }

    #[test]
    fn results_are_keyed_by_input_name_and_failures_name_their_items() {
        let job = pb::Job { job_id: "j1".into(), state: JobState::Succeeded as i32, ..Default::default() };
        let ok = pb::ItemResult {
            index: 0,
            name: "a".into(),
            batch_id: "j1-0".into(),
            result: Some(batchmill_core::json::json_to_value(&json!({"x": 1}))),
        };
        let dead = pb::DeadLetter {
            batch_id: "j1-1".into(),
            items: vec![batchmill_core::json::json_to_value(&json!({"name": "b", "inputs": {"t": "y"}}))],
            last_error: "boom".into(),
            ..Default::default()
        };
        let view = results(&job, &[ok], &[dead]);
        assert_eq!(view["results"]["a"]["results.json"], json!({"x": 1}));
        assert_eq!(view["failures"]["b"]["error"], "boom");
        assert_eq!(view["finished"], true);

        // A batch whose failing item was isolated: only that one failed.
        let named = |n: &str| batchmill_core::json::json_to_value(&json!({"name": n, "inputs": {"t": n}}));
        let isolated = pb::DeadLetter {
            batch_id: "j1-2".into(),
            first_item: 20,
            items: vec![named("c"), named("d"), named("e")],
            last_error: "1 of its 3 items failed".into(),
            failed_items: vec![pb::FailedItem { index: 21, error: "bad d".into() }],
            ..Default::default()
        };
        let view = results(&job, &[], &[isolated]);
        assert_eq!(view["failures"], json!({"d": {"status": "FAILED", "error": "bad d"}}));
    }
}
