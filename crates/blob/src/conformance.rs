//! The conformance suite every [`ObjectStore`] passes: the in-memory one in
//! this crate's tests, S3 in the cluster tests (`tests/tests/adapters.rs`).
//! `prefix` keeps runs against a shared server apart.

use bytes::Bytes;
use tokio::io::AsyncBufReadExt;

use crate::{BlobError, ObjectStore};

/// The bucket the suite uses; it is created if missing.
pub const BUCKET: &str = "conformance";

/// Runs every check against `store`; panics naming the first that fails.
pub async fn run(store: &dyn ObjectStore, prefix: &str) {
    store.ensure_bucket(BUCKET).await.expect("create the bucket");
    store.ensure_bucket(BUCKET).await.expect("creating a bucket that exists is fine");
    let key = |k: &str| format!("{prefix}/{k}");

    store.put(BUCKET, &key("a.txt"), Bytes::from_static(b"one\ntwo\n"), "text/plain").await.expect("put");
    assert_eq!(store.get(BUCKET, &key("a.txt")).await.expect("get"), Bytes::from_static(b"one\ntwo\n"));
    store.put(BUCKET, &key("a.txt"), Bytes::from_static(b"three\n"), "text/plain").await.expect("overwrite");
    assert_eq!(store.get(BUCKET, &key("a.txt")).await.expect("get"), Bytes::from_static(b"three\n"), "replaced");
    let mut reader = store.reader(BUCKET, &key("a.txt")).await.expect("reader");
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("read a line");
    assert_eq!(line, "three\n");

    match store.get(BUCKET, &key("missing")).await {
        Err(e @ BlobError::NotFound { .. }) => assert!(!e.is_transient(), "a missing object stays missing"),
        other => panic!("a missing object is NotFound, got {:?}", other.map(|b| b.len())),
    }
    let listed = store.list_page("no-such-bucket-here", "", None).await;
    assert!(matches!(listed, Err(BlobError::NoSuchBucket { .. })), "listing a missing bucket: {listed:?}");
    // S3 never creates a bucket on a write; that refusal is for good.
    match store.put("no-such-bucket-here", &key("a.txt"), Bytes::from_static(b"x"), "text/plain").await {
        Err(e @ BlobError::NoSuchBucket { .. }) => assert!(!e.is_transient(), "a missing bucket stays missing"),
        other => panic!("a write into a missing bucket is NoSuchBucket, got {other:?}"),
    }
    let upload = store.start_upload("no-such-bucket-here", &key("big.bin"), "application/octet-stream").await;
    assert!(
        matches!(upload, Err(BlobError::NoSuchBucket { .. })),
        "an upload into a missing bucket: {:?}",
        upload.err()
    );
    let listed = store.list_page("no-such-bucket-here", "", None).await;
    assert!(matches!(listed, Err(BlobError::NoSuchBucket { .. })), "a refused write creates no bucket: {listed:?}");

    for i in 0..1_005 {
        store.put(BUCKET, &key(&format!("many/{i:05}")), Bytes::from(i.to_string()), "text/plain").await.expect("put");
    }
    let first = store.list_page(BUCKET, &key("many/"), None).await.expect("list a page");
    assert_eq!(first.keys.len(), 1_000, "a page holds 1,000 keys");
    assert_eq!(first.keys[0], key("many/00000"));
    let second = store.list_page(BUCKET, &key("many/"), first.next.clone()).await.expect("next page");
    assert_eq!((second.keys.len(), second.next), (5, None), "the last page");
    let all = store.list(BUCKET, &key("")).await.expect("list");
    assert_eq!(all.len(), 1_006, "listing follows pages, in key order");
    assert_eq!(all[0], key("a.txt"));
    assert_eq!(store.get(BUCKET, &key("many/01004")).await.expect("get"), Bytes::from("1004"));
    assert_eq!(second.sizes, [4, 4, 4, 4, 4], "each key's size in bytes");
    let top = store.list_page(BUCKET, &key("a.txt"), None).await.expect("list one");
    assert_eq!((top.keys, top.sizes), (vec![key("a.txt")], vec![6]));

    let url = store.presign_get(BUCKET, &key("a.txt"), std::time::Duration::from_secs(300)).await.expect("presign");
    assert!(url.contains(&key("a.txt")) && url.contains("300"), "a presigned URL names the object and expiry: {url}");

    multipart_uploads_make_one_object_and_deletes_remove_it(store, &key("big.bin")).await;
}

async fn multipart_uploads_make_one_object_and_deletes_remove_it(store: &dyn ObjectStore, key: &str) {
    let first = Bytes::from(vec![7u8; crate::MIN_PART]);
    let last = Bytes::from_static(b"the end");
    let upload = store.start_upload(BUCKET, key, "application/octet-stream").await.expect("start");
    let one = store.upload_part(BUCKET, key, &upload, 1, first.clone()).await.expect("part 1");
    let two = store.upload_part(BUCKET, key, &upload, 2, last.clone()).await.expect("part 2");
    assert!(matches!(store.get(BUCKET, key).await, Err(BlobError::NotFound { .. })), "not there before it completes");
    store.complete_upload(BUCKET, key, &upload, vec![(1, one), (2, two)]).await.expect("complete");
    let whole = store.get(BUCKET, key).await.expect("get");
    assert_eq!((whole.len(), &whole[crate::MIN_PART..]), (crate::MIN_PART + 7, &b"the end"[..]), "the parts, in order");

    let abandoned = format!("{key}.abandoned");
    let upload = store.start_upload(BUCKET, &abandoned, "application/octet-stream").await.expect("start");
    store.upload_part(BUCKET, &abandoned, &upload, 1, last).await.expect("part");
    store.abort_upload(BUCKET, &abandoned, &upload).await.expect("abort");
    assert!(
        matches!(store.get(BUCKET, &abandoned).await, Err(BlobError::NotFound { .. })),
        "an aborted upload leaves nothing"
    );

    store.delete(BUCKET, key).await.expect("delete");
    assert!(matches!(store.get(BUCKET, key).await, Err(BlobError::NotFound { .. })), "deleted");
    store.delete(BUCKET, key).await.expect("deleting what is not there succeeds");
}
