//! Objects in S3 (any S3-compatible endpoint) through aws-sdk-s3.
//!
//! Results, inputs and manifests are written here. The endpoint and
//! credentials come from the standard `AWS_*` environment variables; a
//! custom endpoint (such as a local server) uses path-style addressing.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

/// Errors from object storage.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("s3 {op} s3://{bucket}/{key}: {message}")]
    S3 { op: &'static str, bucket: String, key: String, message: String },
    #[error("s3://{bucket}/{key} not found")]
    NotFound { bucket: String, key: String },
}

pub type Result<T, E = BlobError> = std::result::Result<T, E>;

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
}

/// An S3 client; clones share connections.
#[derive(Clone)]
pub struct Blob {
    client: Client,
}

fn err(op: &'static str, bucket: &str, key: &str, e: impl std::fmt::Display) -> BlobError {
    BlobError::S3 { op, bucket: bucket.to_owned(), key: key.to_owned(), message: e.to_string() }
}

/// The full text of an SDK error, with its cause chain (the SDK's own
/// display says only "service error").
pub fn describe<E: std::error::Error>(e: &E) -> String {
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

    /// The underlying SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn put(&self, bucket: &str, key: &str, body: Bytes, content_type: &str) -> Result<()> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| err("put", bucket, key, describe(&e)))?;
        Ok(())
    }

    async fn get_object(&self, bucket: &str, key: &str) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput> {
        self.client.get_object().bucket(bucket).key(key).send().await.map_err(|e| {
            if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                BlobError::NotFound { bucket: bucket.to_owned(), key: key.to_owned() }
            } else {
                err("get", bucket, key, describe(&e))
            }
        })
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Result<Bytes> {
        let out = self.get_object(bucket, key).await?;
        let body = out.body.collect().await.map_err(|e| err("get", bucket, key, describe(&e)))?;
        Ok(body.into_bytes())
    }

    /// A streaming reader of an object, for reading it line by line.
    pub async fn reader(&self, bucket: &str, key: &str) -> Result<impl tokio::io::AsyncBufRead + Unpin + use<>> {
        let out = self.get_object(bucket, key).await?;
        Ok(tokio::io::BufReader::with_capacity(64 * 1024, out.body.into_async_read()))
    }

    /// Keys under `prefix`, following pagination.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| err("list", bucket, prefix, describe(&e)))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
        }
        Ok(keys)
    }

    /// Creates `bucket` unless it exists.
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        if self.client.head_bucket().bucket(bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = describe(&e);
                if text.contains("BucketAlreadyOwnedByYou") || text.contains("BucketAlreadyExists") {
                    Ok(())
                } else {
                    Err(err("create bucket", bucket, "", text))
                }
            }
        }
    }
}
