//! Reading a job's results back from its result objects, for
//! `ListJobResults`: a page of objects at a time, each line an item's
//! result. Nothing per item is kept anywhere else.
//!
//! Result lines are `{"index", "name"?, "result"}` (echo, Python
//! predictors) or `{"id", "embedding"}` (embed, whose `id` is the item's
//! index, its name, or the id it was given).

use std::sync::Arc;

use batchmill_blob::ObjectStore;
use batchmill_core::{FieldViolation, S3Uri};
use batchmill_proto::jobs::v1 as pb;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use crate::SchedulerError;

/// Result objects read at once.
const READS: usize = 8;

/// A page token: how many keys of a listing page were read, and that
/// listing page's own token.
fn parse_token(token: &str) -> Result<(usize, Option<String>), FieldViolation> {
    if token.is_empty() {
        return Ok((0, None));
    }
    let bad = || FieldViolation::new("page_token", "is not a token this API returned; pass next_page_token as it was");
    let (skip, listing) = token.split_once(':').ok_or_else(bad)?;
    let skip = skip.parse().map_err(|_| bad())?;
    Ok((skip, (!listing.is_empty()).then(|| listing.to_owned())))
}

/// One listing page of a job's output objects, and where a page of
/// `wanted` of them, from the page token, starts and ends in it.
pub(crate) struct Listed {
    pub bucket: String,
    /// `<output key>/<job_id>/`.
    pub prefix: String,
    pub page: batchmill_blob::Page,
    listing: Option<String>,
}

impl Listed {
    /// Lists the page `token` points into.
    pub async fn read(
        store: &Arc<dyn ObjectStore>,
        job: &pb::Job,
        token: &str,
    ) -> Result<(Listed, usize), SchedulerError> {
        let (skip, listing) = parse_token(token)?;
        let output = S3Uri::parse(&job.output_uri)
            .map_err(|e| SchedulerError::BadSource { field: "output_uri".into(), message: e.to_string() })?
            .join(&job.job_id);
        let prefix = format!("{}/", output.key);
        let page = store.list_page(&output.bucket, &prefix, listing.clone()).await.map_err(SchedulerError::Results)?;
        Ok((Listed { bucket: output.bucket, prefix, page, listing }, skip))
    }

    /// The token of the page after one that ended at `end` of `of` entries.
    pub fn next(self, end: usize, of: usize) -> Option<String> {
        if end < of {
            Some(format!("{end}:{}", self.listing.unwrap_or_default()))
        } else {
            self.page.next.map(|n| format!("0:{n}"))
        }
    }
}

/// One page of `job`'s results: at most `objects` result objects read.
pub async fn page(
    store: &Arc<dyn ObjectStore>,
    job: &pb::Job,
    token: &str,
    objects: usize,
) -> Result<(Vec<pb::ItemResult>, Option<String>), SchedulerError> {
    let (listed, skip) = Listed::read(store, job, token).await?;
    let keys: Vec<&String> = listed.page.keys.iter().filter(|k| k.ends_with(".jsonl")).collect();
    let (end, of) = ((skip + objects).min(keys.len()), keys.len());
    let chosen: Vec<String> = keys.get(skip..end).unwrap_or_default().iter().map(|k| (*k).clone()).collect();
    let reads = chosen.into_iter().map(|key| {
        let (store, bucket) = (store.clone(), listed.bucket.clone());
        async move {
            let body = store.get(&bucket, &key).await.map_err(SchedulerError::Results)?;
            Ok::<_, SchedulerError>((batch_id_of(&key), body))
        }
    });
    let bodies: Vec<(String, bytes::Bytes)> = futures::stream::iter(reads).buffered(READS).try_collect().await?;
    let mut results = Vec::new();
    for (batch_id, body) in &bodies {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(line) = serde_json::from_slice::<Value>(line) else { continue };
            results.push(item_result(batch_id, line));
        }
    }
    Ok((results, listed.next(end, of)))
}

/// `<prefix>/<job>/<batch_id>.jsonl` → `<batch_id>` (for a group's object,
/// `<job>-<first>-<last>`).
fn batch_id_of(key: &str) -> String {
    let file = key.rsplit('/').next().unwrap_or(key);
    file.strip_suffix(".jsonl").unwrap_or(file).to_owned()
}

fn item_result(batch_id: &str, mut line: Value) -> pb::ItemResult {
    let id = line.get("id").cloned();
    let index = line.get("index").and_then(Value::as_i64).or_else(|| id.as_ref().and_then(Value::as_i64)).unwrap_or(-1);
    let name = line
        .get("name")
        .and_then(Value::as_str)
        .or_else(|| id.as_ref().and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned();
    let result = match line.get_mut("result") {
        Some(result) => result.take(),
        None => line,
    };
    pb::ItemResult {
        index,
        name,
        batch_id: batch_id.to_owned(),
        result: Some(batchmill_core::json::json_to_value(&result)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchmill_blob::mem::MemBlob;
    use serde_json::json;

    #[tokio::test]
    async fn results_are_read_a_page_of_objects_at_a_time_with_their_names() {
        let blob = MemBlob::default();
        blob.ensure_bucket("out").await.unwrap_or_default();
        let put = |key: &str, body: &str| {
            let (blob, key, body) = (blob.clone(), key.to_owned(), body.to_owned());
            async move { blob.put("out", &key, bytes::Bytes::from(body), "x").await }
        };
        put("r/j1/j1-0.jsonl", "{\"index\":0,\"name\":\"a\",\"result\":{\"x\":1}}\n{\"index\":1,\"result\":2}\n")
            .await
            .unwrap_or_default();
        put("r/j1/j1-1.jsonl", "{\"id\":\"b\",\"embedding\":[0.5]}\n").await.unwrap_or_default();
        put("r/j1/manifest.json", "{}").await.unwrap_or_default();
        let store: Arc<dyn ObjectStore> = Arc::new(blob);
        let job = pb::Job { job_id: "j1".into(), output_uri: "s3://out/r".into(), ..Default::default() };
        let (first, next) = page(&store, &job, "", 1).await.unwrap_or_default();
        let got: Vec<(i64, &str, &str)> =
            first.iter().map(|r| (r.index, r.name.as_str(), r.batch_id.as_str())).collect();
        assert_eq!(got, [(0, "a", "j1-0"), (1, "", "j1-0")]);
        assert_eq!(first[0].result.as_ref().map(batchmill_core::json::value_to_json), Some(json!({"x": 1})));
        let next = next.expect("a second page");
        let (second, last) = page(&store, &job, &next, 1).await.unwrap_or_default();
        assert_eq!((second[0].name.as_str(), second[0].index), ("b", -1));
        assert_eq!(
            second[0].result.as_ref().map(batchmill_core::json::value_to_json),
            Some(json!({"id": "b", "embedding": [0.5]}))
        );
        assert_eq!(last, None);
        assert!(page(&store, &job, "garbage", 1).await.is_err());
    }
}
