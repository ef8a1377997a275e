//! An in-memory [`ObjectStore`] for unit tests, passing the same
//! [`crate::conformance`] suite as S3. Faults can be injected: an outage
//! ([`MemBlob::set_down`]) or the next few writes failing
//! ([`MemBlob::fail_puts`]), each as S3 unreachable would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{BlobError, ObjectStore, Page, Reader, Result};

/// Keys in one page of a listing, as S3.
const PAGE: usize = 1000;

type Buckets = BTreeMap<String, BTreeMap<String, Bytes>>;

/// Objects held in memory; clones share them.
#[derive(Clone, Default)]
pub struct MemBlob {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    buckets: Buckets,
    down: bool,
    failing_puts: u32,
    puts: u64,
    /// Multipart uploads in progress: (bucket, key, parts by number).
    uploads: BTreeMap<String, (String, String, BTreeMap<i32, Bytes>)>,
    next_upload: u64,
}

impl MemBlob {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call fails as with S3 unreachable while `down`.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// The next `n` writes fail as with S3 unreachable.
    pub fn fail_puts(&self, n: u32) {
        self.lock().failing_puts = n;
    }

    /// Writes tried so far, failed ones included.
    pub fn puts(&self) -> u64 {
        self.lock().puts
    }

    /// Every object, as `s3://bucket/key` and body.
    pub fn objects(&self) -> BTreeMap<String, Bytes> {
        let inner = self.lock();
        let all = inner.buckets.iter().flat_map(|(b, objects)| objects.iter().map(move |(k, v)| (b, k, v)));
        all.map(|(b, k, v)| (format!("s3://{b}/{k}"), v.clone())).collect()
    }

    /// Runs `op` on the buckets, failing first if S3 is down.
    fn with<T>(&self, op: &'static str, bucket: &str, key: &str, f: impl FnOnce(&mut Inner) -> Result<T>) -> Result<T> {
        let mut inner = self.lock();
        if inner.down {
            let message = "injected fault: S3 unreachable".to_owned();
            return Err(BlobError::S3 { op, bucket: bucket.to_owned(), key: key.to_owned(), message, transient: true });
        }
        f(&mut inner)
    }
}

fn objects<'a>(buckets: &'a mut Buckets, bucket: &str) -> Result<&'a mut BTreeMap<String, Bytes>> {
    buckets.get_mut(bucket).ok_or_else(|| BlobError::NoSuchBucket { bucket: bucket.to_owned() })
}

#[async_trait]
impl ObjectStore for MemBlob {
    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        self.with("delete", bucket, key, |inner| {
            objects(&mut inner.buckets, bucket)?.remove(key);
            Ok(())
        })
    }

    async fn start_upload(&self, bucket: &str, key: &str, _content_type: &str) -> Result<String> {
        self.with("start upload", bucket, key, |inner| {
            objects(&mut inner.buckets, bucket)?;
            inner.next_upload += 1;
            let id = format!("upload-{}", inner.next_upload);
            inner.uploads.insert(id.clone(), (bucket.to_owned(), key.to_owned(), BTreeMap::new()));
            Ok(id)
        })
    }

    async fn upload_part(&self, bucket: &str, key: &str, upload: &str, number: i32, body: Bytes) -> Result<String> {
        self.with("upload part", bucket, key, |inner| {
            let missing = || BlobError::S3 {
                op: "upload part",
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                message: format!("no upload {upload}"),
                transient: false,
            };
            let (_, _, parts) = inner.uploads.get_mut(upload).ok_or_else(missing)?;
            parts.insert(number, body);
            Ok(format!("\"{upload}-{number}\""))
        })
    }

    async fn complete_upload(&self, bucket: &str, key: &str, upload: &str, parts: Vec<(i32, String)>) -> Result<()> {
        self.with("complete upload", bucket, key, |inner| {
            let refuse = |message: String| BlobError::S3 {
                op: "complete upload",
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                message,
                transient: false,
            };
            let (_, _, stored) = inner.uploads.remove(upload).ok_or_else(|| refuse(format!("no upload {upload}")))?;
            let mut body = Vec::new();
            for (i, (number, _)) in parts.iter().enumerate() {
                let part = stored.get(number).ok_or_else(|| refuse(format!("no part {number}")))?;
                if i + 1 < parts.len() && part.len() < crate::MIN_PART {
                    return Err(refuse(format!("part {number} is smaller than 5 MiB and not the last")));
                }
                body.extend_from_slice(part);
            }
            objects(&mut inner.buckets, bucket)?.insert(key.to_owned(), Bytes::from(body));
            Ok(())
        })
    }

    async fn abort_upload(&self, bucket: &str, key: &str, upload: &str) -> Result<()> {
        self.with("abort upload", bucket, key, |inner| {
            inner.uploads.remove(upload);
            Ok(())
        })
    }

    async fn put(&self, bucket: &str, key: &str, body: Bytes, _content_type: &str) -> Result<()> {
        self.with("put", bucket, key, |inner| {
            inner.puts += 1;
            if inner.failing_puts > 0 {
                inner.failing_puts -= 1;
                let message = "injected fault: S3 unreachable".to_owned();
                let (bucket, key) = (bucket.to_owned(), key.to_owned());
                return Err(BlobError::S3 { op: "put", bucket, key, message, transient: true });
            }
            objects(&mut inner.buckets, bucket)?.insert(key.to_owned(), body);
            Ok(())
        })
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes> {
        self.with("get", bucket, key, |inner| {
            let found = objects(&mut inner.buckets, bucket)?.get(key).cloned();
            found.ok_or_else(|| BlobError::NotFound { bucket: bucket.to_owned(), key: key.to_owned() })
        })
    }

    async fn reader(&self, bucket: &str, key: &str) -> Result<Reader> {
        let body = self.get(bucket, key).await?;
        Ok(Box::new(std::io::Cursor::new(body)))
    }

    async fn list_page(&self, bucket: &str, prefix: &str, page: Option<String>) -> Result<Page> {
        self.with("list", bucket, prefix, |inner| {
            let objects = objects(&mut inner.buckets, bucket)?;
            let after = page.unwrap_or_default();
            let mut listed: Vec<(String, u64)> = objects
                .range::<String, _>((std::ops::Bound::Excluded(&after), std::ops::Bound::Unbounded))
                .filter(|(k, _)| k.starts_with(prefix))
                .take(PAGE + 1)
                .map(|(k, body)| (k.clone(), body.len() as u64))
                .collect();
            let next = (listed.len() > PAGE).then(|| {
                listed.truncate(PAGE);
                listed.last().map(|(k, _)| k.clone()).unwrap_or_default()
            });
            let (keys, sizes) = listed.into_iter().unzip();
            Ok(Page { keys, sizes, next })
        })
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        self.with("create bucket", bucket, "", |inner| {
            inner.buckets.entry(bucket.to_owned()).or_default();
            Ok(())
        })
    }

    /// `mem://bucket/key?expires=<seconds>`: nothing serves it, but it
    /// names the object and the expiry as a presigned URL does.
    async fn presign_get(&self, bucket: &str, key: &str, expires: std::time::Duration) -> Result<String> {
        Ok(format!("mem://{bucket}/{key}?expires={}", expires.as_secs()))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn mem_blob_conforms() {
        crate::conformance::run(&super::MemBlob::default(), "mem").await;
    }
}
