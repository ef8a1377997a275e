//! [`ObjectStore`] on S3 through aws-sdk-s3.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use batchmill_core::metrics::{S3, Timed};
use bytes::Bytes;

use crate::{BlobError, ObjectStore, Page, Reader, Result};

/// How to reach S3.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// Endpoint URL; `None` for AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// Access key and secret; `None` for the standard chain (`AWS_*`
    /// variables, profiles, instance roles).
    pub credentials: Option<(String, String)>,
}

impl S3Config {
    /// Credentials from the standard chain.
    pub fn new(endpoint: Option<String>, region: String) -> S3Config {
        S3Config { endpoint, region, credentials: None }
    }

    /// Another identity over this store: its own keys, and its region and
    /// endpoint where it names them (empty: this config's).
    pub fn with_credentials(&self, key: &str, secret: &str, region: &str, endpoint: &str) -> S3Config {
        S3Config {
            endpoint: if endpoint.is_empty() { self.endpoint.clone() } else { Some(endpoint.to_owned()) },
            region: if region.is_empty() { self.region.clone() } else { region.to_owned() },
            credentials: Some((key.to_owned(), secret.to_owned())),
        }
    }
}

/// An S3 client; clones share connections.
#[derive(Clone)]
pub struct Blob {
    client: Client,
}

/// The error of one S3 call, classified: a missing bucket or object by its
/// S3 error code, and whether a retry can help by what failed (no
/// connection, a timeout, an unreadable response, a 5xx or a throttle).
fn classify<E>(op: &'static str, bucket: &str, key: &str, e: &SdkError<E, HttpResponse>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = e.as_service_error().and_then(ProvideErrorMetadata::code);
    match code {
        Some("NoSuchBucket") => return BlobError::NoSuchBucket { bucket: bucket.to_owned() },
        Some("NoSuchKey") => return BlobError::NotFound { bucket: bucket.to_owned(), key: key.to_owned() },
        _ => {}
    }
    let transient = match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(_) => {
            let status = e.raw_response().map_or(0, |r| r.status().as_u16());
            status >= 500 || status == 429 || matches!(code, Some("SlowDown" | "RequestTimeout" | "InternalError"))
        }
        _ => false,
    };
    BlobError::S3 { op, bucket: bucket.to_owned(), key: key.to_owned(), message: describe(e), transient }
}

/// The full text of an SDK error, with its cause chain (the SDK's own
/// display says only "service error").
fn describe<E: std::error::Error>(e: &E) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Blob {
    /// A client from the environment and `config`.
    pub async fn new(config: &S3Config) -> Blob {
        let mut loader = aws_config::from_env().region(aws_config::Region::new(config.region.clone()));
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some((key, secret)) = &config.credentials {
            loader =
                loader.credentials_provider(aws_sdk_s3::config::Credentials::new(key, secret, None, None, "batchmill"));
        }
        let shared = loader.load().await;
        let s3 = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.endpoint.is_some())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            )
            .build();
        Blob { client: Client::from_conf(s3) }
    }

    async fn get_object(&self, bucket: &str, key: &str) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput> {
        self.client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .timed(&S3, "get")
            .await
            .map_err(|e| classify("get", bucket, key, &e))
    }
}

#[async_trait]
impl ObjectStore for Blob {
    async fn put(&self, bucket: &str, key: &str, body: Bytes, content_type: &str) -> Result<()> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .timed(&S3, "put")
            .await
            .map_err(|e| classify("put", bucket, key, &e))?;
        Ok(())
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes> {
        let out = self.get_object(bucket, key).await?;
        let body = out.body.collect().await.map_err(|e| BlobError::S3 {
            op: "get",
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            message: describe(&e),
            transient: true,
        })?;
        Ok(body.into_bytes())
    }

    async fn reader(&self, bucket: &str, key: &str) -> Result<Reader> {
        let out = self.get_object(bucket, key).await?;
        Ok(Box::new(tokio::io::BufReader::with_capacity(64 * 1024, out.body.into_async_read())))
    }

    async fn list_page(&self, bucket: &str, prefix: &str, page: Option<String>) -> Result<Page> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(page)
            .send()
            .timed(&S3, "list")
            .await
            .map_err(|e| classify("list", bucket, prefix, &e))?;
        let (keys, sizes) = out
            .contents()
            .iter()
            .filter_map(|o| Some((o.key()?.to_owned(), o.size().unwrap_or(0).max(0) as u64)))
            .unzip();
        let next =
            if out.is_truncated() == Some(true) { out.next_continuation_token().map(str::to_owned) } else { None };
        Ok(Page { keys, sizes, next })
    }

    async fn presign_get(&self, bucket: &str, key: &str, expires: std::time::Duration) -> Result<String> {
        let refused = |message: String| BlobError::S3 {
            op: "presign",
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            message,
            transient: false,
        };
        let config =
            aws_sdk_s3::presigning::PresigningConfig::expires_in(expires).map_err(|e| refused(e.to_string()))?;
        let request = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| refused(describe(&e)))?;
        Ok(request.uri().to_owned())
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        match self.client.delete_object().bucket(bucket).key(key).send().timed(&S3, "delete").await {
            Ok(_) => Ok(()),
            Err(e) => match classify("delete", bucket, key, &e) {
                BlobError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn start_upload(&self, bucket: &str, key: &str, content_type: &str) -> Result<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .timed(&S3, "start_upload")
            .await
            .map_err(|e| classify("start upload", bucket, key, &e))?;
        out.upload_id.ok_or_else(|| BlobError::S3 {
            op: "start upload",
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            message: "no upload id in the answer".into(),
            transient: false,
        })
    }

    async fn upload_part(&self, bucket: &str, key: &str, upload: &str, number: i32, body: Bytes) -> Result<String> {
        let out = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .timed(&S3, "upload_part")
            .await
            .map_err(|e| classify("upload part", bucket, key, &e))?;
        Ok(out.e_tag.unwrap_or_default())
    }

    async fn complete_upload(&self, bucket: &str, key: &str, upload: &str, parts: Vec<(i32, String)>) -> Result<()> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let parts =
            parts.into_iter().map(|(number, e_tag)| CompletedPart::builder().part_number(number).e_tag(e_tag).build());
        let upload_parts = CompletedMultipartUpload::builder().set_parts(Some(parts.collect())).build();
        self.client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload)
            .multipart_upload(upload_parts)
            .send()
            .timed(&S3, "complete_upload")
            .await
            .map_err(|e| classify("complete upload", bucket, key, &e))?;
        Ok(())
    }

    async fn abort_upload(&self, bucket: &str, key: &str, upload: &str) -> Result<()> {
        self.client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload)
            .send()
            .timed(&S3, "abort_upload")
            .await
            .map_err(|e| classify("abort upload", bucket, key, &e))?;
        Ok(())
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        if self.client.head_bucket().bucket(bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => Ok(()),
            Err(e) => Err(classify("create bucket", bucket, "", &e)),
        }
    }
}
