//! `GET /api/jobs/history`: the caller's jobs filtered, sorted and paged as
//! the SDK's `jobs.get_history` asks: `user` and `accessKey` (the
//! submitting account or key id), `startDate` and `endDate` (ISO 8601, on
//! the submission time), `model` (a pipeline), `status` (`all`, `pending`:
//! not ended, `terminated`: ended), `sort-by` (`submittedAt`, `status`,
//! `model`), `direction` (`asc`, `desc`), `page` (from 1) and `per-page`.

use batchmill_core::FieldViolation;
use batchmill_core::job::is_terminal;
use batchmill_proto::jobs::v1 as pb;

/// Most jobs the history looks through.
pub const MOST: usize = 10_000;
/// Jobs per page when `per-page` is not given.
const PER_PAGE: usize = 25;

#[derive(Debug, Default)]
pub struct Filter {
    user: Option<String>,
    access_key: Option<String>,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    model: Option<String>,
    status: Status,
    sort_by: SortBy,
    ascending: bool,
    page: usize,
    per_page: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum Status {
    #[default]
    All,
    Pending,
    Terminated,
}

#[derive(Debug, Default)]
enum SortBy {
    #[default]
    SubmittedAt,
    Status,
    Model,
}

/// Milliseconds of an ISO 8601 date or date-time (`2021-06-01`,
/// `2021-06-01T18:34:42`, with `.345`, `Z` or `+00:00` after).
fn date_ms(field: &str, text: &str) -> Result<i64, FieldViolation> {
    let bad =
        || FieldViolation::new(field, format!("{text:?} is not an ISO 8601 date, such as 2021-06-01T18:34:42.000"));
    let number = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let (date, time) = text.split_once('T').unwrap_or((text, "00:00:00"));
    let parts: Vec<&str> = date.split('-').collect();
    let [y, mo, d] = parts[..] else { return Err(bad()) };
    let (y, mo, d) = (number(y)?, number(mo)?, number(d)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    // Offsets other than UTC are rare in these queries; they are refused, not guessed.
    let time = time.trim_end_matches('Z').trim_end_matches("+00:00").trim_end_matches("+0000");
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<&str> = hms.split(':').collect();
    let [h, mi, s] = t[..] else { return Err(bad()) };
    let (h, mi, s) = (number(h)?, number(mi)?, number(s)?);
    let milli = number(&format!("{frac:0<3}")[..3])?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + milli)
}

impl Filter {
    pub fn parse(query: &[(String, String)]) -> Result<Filter, FieldViolation> {
        let mut f = Filter { page: 1, per_page: PER_PAGE, ..Filter::default() };
        let count = |field: &str, v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|n| *n >= 1.0 && n.fract() == 0.0)
                .map(|n| n as usize)
                .ok_or_else(|| FieldViolation::new(field, format!("{v:?} must be a whole number from 1")))
        };
        for (key, value) in query {
            match key.as_str() {
                "user" => f.user = Some(value.clone()),
                "accessKey" => f.access_key = Some(value.clone()),
                "startDate" => f.start_ms = Some(date_ms("startDate", value)?),
                "endDate" => f.end_ms = Some(date_ms("endDate", value)?),
                "model" => f.model = Some(value.clone()),
                "status" => {
                    f.status = match value.to_ascii_lowercase().as_str() {
                        "all" => Status::All,
                        "pending" => Status::Pending,
                        "terminated" => Status::Terminated,
                        _ => {
                            return Err(FieldViolation::new(
                                "status",
                                format!("{value:?}: use all, pending or terminated"),
                            ));
                        }
                    };
                }
                "sort-by" | "sortBy" => {
                    f.sort_by = match value.as_str() {
                        "submittedAt" | "createdAt" | "submitted_at" => SortBy::SubmittedAt,
                        "status" => SortBy::Status,
                        "model" => SortBy::Model,
                        _ => {
                            return Err(FieldViolation::new(
                                "sort-by",
                                format!("{value:?}: use submittedAt, status or model"),
                            ));
                        }
                    };
                }
                "direction" => {
                    f.ascending = match value.to_ascii_lowercase().as_str() {
                        "asc" => true,
                        "desc" => false,
                        _ => return Err(FieldViolation::new("direction", format!("{value:?}: use asc or desc"))),
                    };
                }
                "page" => f.page = count("page", value)?,
                "per-page" | "perPage" => f.per_page = count("per-page", value)?.min(1000),
                _ => {}
            }
        }
        Ok(f)
    }

    fn keeps(&self, job: &pb::Job) -> bool {
        let created = job.create_time.as_ref().map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000));
        let terminal = is_terminal(job.state());
        self.user.as_ref().is_none_or(|u| *u == job.account_id || *u == job.submitted_by)
            && self.access_key.as_ref().is_none_or(|k| *k == job.submitted_by)
            && self.model.as_ref().is_none_or(|m| *m == job.pipeline)
            && self.start_ms.is_none_or(|s| created >= s)
            && self.end_ms.is_none_or(|e| created <= e)
            && match self.status {
                Status::All => true,
                Status::Pending => !terminal,
                Status::Terminated => terminal,
            }
    }

    /// The page of `jobs` (newest first, as listed) this filter asks for.
    pub fn apply(&self, mut jobs: Vec<pb::Job>) -> Vec<pb::Job> {
        jobs.retain(|j| self.keeps(j));
        match self.sort_by {
            // Job ids are time-ordered, so by id is by submission.
            SortBy::SubmittedAt => jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id)),
            SortBy::Status => jobs.sort_by_key(|j| (super::view::status(j.state()), j.job_id.clone())),
            SortBy::Model => jobs.sort_by(|a, b| (&a.pipeline, &a.job_id).cmp(&(&b.pipeline, &b.job_id))),
        }
        if !self.ascending {
            jobs.reverse();
        }
        jobs.into_iter().skip((self.page - 1) * self.per_page).take(self.per_page).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn job(id: &str, pipeline: &str, state: pb::JobState, key: &str) -> pb::Job {
        pb::Job {
            job_id: id.into(),
            pipeline: pipeline.into(),
            state: state as i32,
            submitted_by: key.into(),
            account_id: "acme".into(),
            create_time: Some(prost_types::Timestamp { seconds: 1_622_572_482, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn filters_sort_and_pages_as_the_sdk_asks() {
        let jobs = vec![
            job("j3", "echo", pb::JobState::Running, "k1"),
            job("j2", "embed", pb::JobState::Succeeded, "k2"),
            job("j1", "echo", pb::JobState::Cancelled, "k1"),
        ];
        let ids = |f: Filter| f.apply(jobs.clone()).into_iter().map(|j| j.job_id).collect::<Vec<_>>();
        assert_eq!(ids(Filter::parse(&[]).unwrap_or_default()), ["j3", "j2", "j1"]);
        assert_eq!(ids(Filter::parse(&q(&[("status", "terminated")])).unwrap_or_default()), ["j2", "j1"]);
        assert_eq!(ids(Filter::parse(&q(&[("status", "pending")])).unwrap_or_default()), ["j3"]);
        assert_eq!(
            ids(Filter::parse(&q(&[("model", "echo"), ("direction", "asc")])).unwrap_or_default()),
            ["j1", "j3"]
        );
        assert_eq!(ids(Filter::parse(&q(&[("accessKey", "k2")])).unwrap_or_default()), ["j2"]);
        assert_eq!(ids(Filter::parse(&q(&[("page", "2"), ("per-page", "2")])).unwrap_or_default()), ["j1"]);
        assert_eq!(
            ids(Filter::parse(&q(&[("startDate", "2021-06-02T00:00:00.000")])).unwrap_or_default()),
            Vec::<String>::new()
        );
        assert_eq!(ids(Filter::parse(&q(&[("endDate", "2021-06-01T18:34:42.000Z")])).unwrap_or_default()).len(), 3);
        for (key, value) in [("status", "done"), ("page", "0"), ("startDate", "yesterday"), ("direction", "up")] {
            let err = Filter::parse(&q(&[(key, value)])).err().map(|e| e.field).unwrap_or_default();
            assert_eq!(err, if key == "startDate" { "startDate" } else { key });
        }
    }
}
