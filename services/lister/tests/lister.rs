//! The lister against the in-memory object store: selections by prefix and
//! glob, lines of NDJSON objects in order across files and chunks, resuming
//! after `skip`, and errors that name the object and line or say an S3
//! outage is one.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use batchmill_blob::ObjectStore;
use batchmill_blob::mem::MemBlob;
use batchmill_core::{ErrorCode, S3Selection, S3Uri, ServiceError};
use batchmill_lister::{Lister, ListerError, Source};
use bytes::Bytes;
use futures::StreamExt;

async fn store(objects: &[(&str, String)]) -> MemBlob {
    let blob = MemBlob::default();
    blob.ensure_bucket("data").await.unwrap();
    for (key, body) in objects {
        blob.put("data", key, Bytes::from(body.clone()), "text/plain").await.unwrap();
    }
    blob
}

/// Every item `source` lists after `skip`, or the first error.
async fn items(blob: &MemBlob, source: Source, skip: u64) -> Result<Vec<String>, ListerError> {
    let lister = Lister::new(Arc::new(blob.clone()));
    let mut chunks = lister.list(source, None, skip).await;
    let mut out = Vec::new();
    while let Some(chunk) = chunks.next().await {
        out.extend(chunk?);
    }
    Ok(out)
}

fn selection(paths: &[&str], includes: &[&str], excludes: &[&str]) -> S3Selection {
    S3Selection {
        s3_paths: paths.iter().map(|p| S3Uri::parse(p).unwrap()).collect(),
        includes: includes.iter().map(|s| (*s).to_owned()).collect(),
        excludes: excludes.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[tokio::test]
async fn selections_list_each_matching_object_once_in_key_order() {
    let blob = store(&[
        ("img/a.jpg", String::new()),
        ("img/sub/b.jpg", String::new()),
        ("img/sub/c.png", String::new()),
        ("img/skip.jpg", String::new()),
        ("other/d.jpg", String::new()),
    ])
    .await;
    let picked = selection(&["s3://data/img/sub/", "s3://data/img/"], &["**.jpg"], &["**/skip.jpg"]);
    let listed = items(&blob, Source::FilePaths(picked), 0).await.unwrap();
    assert_eq!(listed, ["\"s3://data/img/a.jpg\"", "\"s3://data/img/sub/b.jpg\""]);
}

#[tokio::test]
async fn lines_stream_in_order_across_objects_and_chunks_and_resume_after_skip() {
    let first: String = (0..1_000).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let second: String = (1_000..1_300).map(|i| format!("{{\"i\":{i}}}\n\n")).collect();
    let blob = store(&[("lines/a.jsonl", first), ("lines/b.jsonl", second)]).await;
    let source = || Source::DelimitedFiles(selection(&["s3://data/lines/"], &[], &[]));
    let all = items(&blob, source(), 0).await.unwrap();
    let expected: Vec<String> = (0..1_300).map(|i| format!("{{\"i\":{i}}}")).collect();
    assert_eq!(all, expected, "every non-blank line once, in order");
    let rest = items(&blob, source(), 1_250).await.unwrap();
    assert_eq!(rest, expected[1_250..]);
}

#[tokio::test]
async fn a_bad_line_names_its_object_and_line_and_an_outage_is_one() {
    let blob = store(&[("bad.jsonl", "{\"ok\":1}\nnot json\n".into())]).await;
    let source = || Source::NdjsonObjects(vec![S3Uri::parse("s3://data/bad.jsonl").unwrap()]);
    let err = items(&blob, source(), 0).await.unwrap_err();
    assert!(err.to_string().starts_with("s3://data/bad.jsonl line 2: not JSON"), "{err}");
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    let missing = Source::NdjsonObjects(vec![S3Uri::parse("s3://data/nope.jsonl").unwrap()]);
    assert_eq!(items(&blob, missing, 0).await.unwrap_err().code(), ErrorCode::NotFound);
    let nothing = Source::FilePaths(selection(&["s3://data/empty/"], &[], &[]));
    assert_eq!(items(&blob, nothing, 0).await.unwrap_err().code(), ErrorCode::InvalidArgument);
    blob.set_down(true);
    let down = items(&blob, source(), 0).await.unwrap_err();
    assert_eq!(down.code(), ErrorCode::Unavailable, "S3 unreachable is worth a retry: {down}");
}

#[tokio::test]
async fn every_object_of_a_folder_is_a_named_item_reading_it() {
    let blob = store(&[("docs/a.txt", "A".into()), ("docs/sub/b.txt", "B".into()), ("more/c.txt", "C".into())]).await;
    let folder = |name: &str, path: &str| batchmill_core::job::Folder {
        name: name.into(),
        input: "input.txt".into(),
        s3_path: S3Uri::parse(path).unwrap(),
    };
    let listed =
        items(&blob, Source::Folders(vec![folder("docs", "s3://data/docs/"), folder("more", "s3://data/more")]), 0)
            .await
            .unwrap();
    let listed: Vec<serde_json::Value> = listed.iter().map(|i| serde_json::from_str(i).unwrap()).collect();
    assert_eq!(
        listed,
        [
            serde_json::json!({"name": "docs/a.txt", "inputs": {}, "objects": {"input.txt": "s3://data/docs/a.txt"}}),
            serde_json::json!({"name": "docs/sub/b.txt", "inputs": {}, "objects": {"input.txt": "s3://data/docs/sub/b.txt"}}),
            serde_json::json!({"name": "more/c.txt", "inputs": {}, "objects": {"input.txt": "s3://data/more/c.txt"}}),
        ]
    );
    let empty = items(&blob, Source::Folders(vec![folder("none", "s3://data/nothing/")]), 0).await;
    assert!(matches!(empty, Err(ListerError::NoMatch { .. })), "an empty folder is named: {empty:?}");
}
