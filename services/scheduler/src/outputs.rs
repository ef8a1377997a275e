//! A job's output objects for `ListOutputs`: its batches' result objects and
//! its manifest, each with its size and a presigned URL that downloads it
//! without credentials until it expires. Pages follow S3's listing; the
//! page token is the one `results` uses.

use std::sync::Arc;
use std::time::Duration;

use batchmill_blob::ObjectStore;
use batchmill_core::FieldViolation;
use batchmill_core::time::{now_ms, timestamp};
use batchmill_proto::jobs::v1 as pb;

use crate::SchedulerError;
use crate::results::Listed;

/// How long download URLs last when the caller does not say.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(3600);
/// The longest S3 signs for (SigV4: 7 days).
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The expiry a request asks for, checked.
pub fn expiry(asked: Option<&prost_types::Duration>) -> Result<Duration, FieldViolation> {
    let Some(asked) = asked else { return Ok(DEFAULT_EXPIRY) };
    let ms = batchmill_core::time::checked_duration_ms(asked);
    match ms.map(Duration::from_millis) {
        Some(d) if d >= Duration::from_secs(1) && d <= MAX_EXPIRY => Ok(Duration::from_secs(d.as_secs())),
        _ => Err(FieldViolation::new("expires_in", "must be between 1 second and 7 days")),
    }
}

/// One page of `job`'s outputs: at most `limit`, their URLs valid for `expires`.
pub async fn page(
    store: &Arc<dyn ObjectStore>,
    job: &pb::Job,
    token: &str,
    limit: usize,
    expires: Duration,
) -> Result<(Vec<pb::Output>, Option<String>), SchedulerError> {
    let (listed, skip) = Listed::read(store, job, token).await?;
    let of = listed.page.keys.len();
    let end = (skip + limit).min(of);
    let expire_time = Some(timestamp(now_ms() + expires.as_millis() as u64));
    let mut outputs = Vec::with_capacity(end.saturating_sub(skip));
    for (key, size) in listed.page.keys.iter().zip(&listed.page.sizes).take(end).skip(skip) {
        let download_url = store.presign_get(&listed.bucket, key, expires).await.map_err(SchedulerError::Results)?;
        outputs.push(pb::Output {
            uri: format!("s3://{}/{key}", listed.bucket),
            name: key[listed.prefix.len()..].to_owned(),
            size_bytes: *size as i64,
            download_url,
            expire_time,
        });
    }
    Ok((outputs, listed.next(end, of)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchmill_blob::mem::MemBlob;

    #[tokio::test]
    async fn outputs_list_each_object_with_its_size_and_a_download_url() {
        let blob = MemBlob::default();
        blob.ensure_bucket("out").await.unwrap_or_default();
        for (key, body) in [("r/j1/j1-0.jsonl", "abc\n"), ("r/j1/j1-1.jsonl", "de\n"), ("r/j1/manifest.json", "{}")] {
            blob.put("out", key, bytes::Bytes::from(body), "x").await.unwrap_or_default();
        }
        blob.put("out", "r/j10/other.jsonl", bytes::Bytes::from("x"), "x").await.unwrap_or_default();
        let store: Arc<dyn ObjectStore> = Arc::new(blob);
        let job = pb::Job { job_id: "j1".into(), output_uri: "s3://out/r".into(), ..Default::default() };
        let hour = Duration::from_secs(3600);
        let (first, next) = page(&store, &job, "", 2, hour).await.unwrap_or_default();
        let got: Vec<(&str, i64, &str)> =
            first.iter().map(|o| (o.name.as_str(), o.size_bytes, o.download_url.as_str())).collect();
        assert_eq!(
            got,
            [
                ("j1-0.jsonl", 4, "mem://out/r/j1/j1-0.jsonl?expires=3600"),
                ("j1-1.jsonl", 3, "mem://out/r/j1/j1-1.jsonl?expires=3600")
            ]
        );
        assert_eq!(first[0].uri, "s3://out/r/j1/j1-0.jsonl");
        let (second, last) = page(&store, &job, &next.unwrap_or_default(), 2, hour).await.unwrap_or_default();
        assert_eq!((second.len(), second[0].name.as_str(), last), (1, "manifest.json", None));
    }

    #[test]
    fn expiry_is_an_hour_unless_asked_and_at_most_a_week() {
        assert_eq!(expiry(None), Ok(DEFAULT_EXPIRY));
        let d = |s: i64| prost_types::Duration { seconds: s, nanos: 0 };
        assert_eq!(expiry(Some(&d(60))), Ok(Duration::from_secs(60)));
        for bad in [0, -5, 8 * 24 * 3600] {
            assert_eq!(expiry(Some(&d(bad))).map_err(|e| e.field), Err("expires_in".into()), "{bad}");
        }
    }
}
