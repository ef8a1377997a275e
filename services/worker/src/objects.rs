//! Named inputs' S3 objects (`{"objects": {<input>: "s3://bucket/key"}}`,
//! see `batchmill_core::named`), read into the item's inputs before the
//! predictor sees it, with the job's own access. A missing or refused object
//! fails the batch for good, naming the item and the object; S3 being
//! unreachable is waited out in place.

use std::sync::Arc;

use batchmill_blob::{BlobError, ObjectStore};
use batchmill_core::S3Uri;
use batchmill_proto::queue::v1::Batch;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::predictor::PredictError;
use crate::settle::retry_in_place;

/// Largest object read into an input.
pub const MAX_OBJECT_BYTES: usize = 32 * 1024 * 1024;
/// Objects of one batch read at once.
const READS: usize = 8;

/// Whether any item of `batch` has objects to read.
pub fn has_objects(batch: &Batch) -> bool {
    batch.items.iter().any(|i| i.contains("\"objects\""))
}

/// Reads every object of `batch`'s named items into their inputs.
pub async fn resolve(
    store: Option<&Arc<dyn ObjectStore>>,
    batch: &mut Batch,
    give_up: &CancellationToken,
) -> Result<(), PredictError> {
    for text in &mut batch.items {
        let Ok(mut item) = serde_json::from_str::<Value>(text) else { continue };
        let objects: Vec<(String, String)> =
            batchmill_core::named::objects_of(&item).into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        if objects.is_empty() {
            continue;
        }
        let name = batchmill_core::named::name_of(&item).unwrap_or_default().to_owned();
        let store = store
            .ok_or_else(|| PredictError::Retryable(format!("item {name}: the job's S3 access is not open yet")))?;
        let read = objects.into_iter().map(|(input, uri)| {
            let (store, name) = (store.clone(), name.clone());
            async move { read(store.as_ref(), &name, &uri, give_up).await.map(|value| (input, value)) }
        });
        let values: Vec<(String, Value)> = futures::stream::iter(read).buffered(READS).try_collect().await?;
        if let Some(object) = item.as_object_mut() {
            object.remove("objects");
            if let Some(inputs) = object.get_mut("inputs").and_then(Value::as_object_mut) {
                inputs.extend(values);
            }
        }
        *text = item.to_string();
    }
    Ok(())
}

/// Reads one input: the object at `uri`, or, for a URI that ends in `/`,
/// an object stored in parts (as Modzy's chunked uploads are kept): every
/// object under that prefix, in key order, concatenated.
async fn read(
    store: &dyn ObjectStore,
    name: &str,
    uri: &str,
    give_up: &CancellationToken,
) -> Result<Value, PredictError> {
    let fail = |why: String| PredictError::Permanent(format!("item {name}: reading {uri}: {why}"));
    let taken = || PredictError::Retryable(format!("item {name}: reading {uri}: the job was taken from this worker"));
    let parsed = S3Uri::parse(uri).map_err(|e| fail(e.to_string()))?;
    let keys = if parsed.key.ends_with('/') {
        let list = || store.list(&parsed.bucket, &parsed.key);
        match retry_in_place(&format!("listing {uri}"), give_up, list, BlobError::is_transient).await {
            Some(Ok(keys)) if keys.is_empty() => return Err(fail("no objects under it".into())),
            Some(Ok(keys)) => keys,
            Some(Err(e)) => return Err(fail(e.to_string())),
            None => return Err(taken()),
        }
    } else {
        vec![parsed.key.clone()]
    };
    let mut bytes = Vec::new();
    for key in &keys {
        let get = || store.get(&parsed.bucket, key);
        let part = match retry_in_place(&format!("reading {uri}"), give_up, get, BlobError::is_transient).await {
            Some(Ok(part)) => part,
            Some(Err(e)) => return Err(fail(e.to_string())),
            None => return Err(taken()),
        };
        if bytes.len() + part.len() > MAX_OBJECT_BYTES {
            return Err(fail(format!(
                "over {} bytes, the {MAX_OBJECT_BYTES}-byte limit of one input",
                bytes.len() + part.len()
            )));
        }
        bytes.extend_from_slice(&part);
    }
    Ok(batchmill_core::named::content(bytes, "application/octet-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchmill_blob::mem::MemBlob;
    use serde_json::json;

    #[tokio::test]
    async fn objects_become_inputs_and_a_missing_one_names_its_item() {
        let blob = MemBlob::default();
        blob.ensure_bucket("inputs").await.unwrap_or_default();
        blob.put("inputs", "a.txt", bytes::Bytes::from_static(b"hello"), "text/plain").await.unwrap_or_default();
        blob.put("inputs", "b.bin", bytes::Bytes::from_static(&[0, 255]), "x").await.unwrap_or_default();
        let store: Arc<dyn ObjectStore> = Arc::new(blob);
        let item =
            |name: &str, uri: &str| json!({"name": name, "inputs": {"x": 1}, "objects": {"doc": uri}}).to_string();
        let mut batch = Batch {
            items: vec![item("a", "s3://inputs/a.txt"), item("b", "s3://inputs/b.bin"), json!("plain").to_string()],
            ..Default::default()
        };
        assert!(has_objects(&batch));
        resolve(Some(&store), &mut batch, &CancellationToken::new()).await.unwrap_or_else(|e| panic!("{e}"));
        let items: Vec<Value> = batch.items.iter().map(|i| serde_json::from_str(i).unwrap_or_default()).collect();
        assert_eq!(items[0], json!({"name": "a", "inputs": {"x": 1, "doc": "hello"}}));
        assert_eq!(items[1]["inputs"]["doc"], "data:application/octet-stream;base64,AP8=");
        assert_eq!(items[2], json!("plain"));
        let mut missing = Batch { items: vec![item("c", "s3://inputs/none.txt")], ..Default::default() };
        let err = resolve(Some(&store), &mut missing, &CancellationToken::new()).await.err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("item c") && e.contains("s3://inputs/none.txt")), "{err:?}");
    }

    #[tokio::test]
    async fn an_object_in_parts_is_read_whole_in_key_order() {
        let blob = MemBlob::default();
        blob.ensure_bucket("ups").await.unwrap_or_default();
        for (key, part) in [("f/doc/000002", "lo, "), ("f/doc/000001", "hel"), ("f/doc/000003", "parts"), ("g/x", "-")]
        {
            blob.put("ups", key, bytes::Bytes::from(part), "x").await.unwrap_or_default();
        }
        let store: Arc<dyn ObjectStore> = Arc::new(blob);
        let item = json!({"name": "f", "inputs": {}, "objects": {"doc": "s3://ups/f/doc/"}}).to_string();
        let mut batch = Batch { items: vec![item], ..Default::default() };
        resolve(Some(&store), &mut batch, &CancellationToken::new()).await.unwrap_or_else(|e| panic!("{e}"));
        let read: Value = serde_json::from_str(&batch.items[0]).unwrap_or_default();
        assert_eq!(read, json!({"name": "f", "inputs": {"doc": "hello, parts"}}));
        let empty = json!({"name": "e", "inputs": {}, "objects": {"doc": "s3://ups/none/"}}).to_string();
        let mut batch = Batch { items: vec![empty], ..Default::default() };
        let err = resolve(Some(&store), &mut batch, &CancellationToken::new()).await.err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("item e") && e.contains("no objects under it")), "{err:?}");
    }
}
