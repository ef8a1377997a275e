//! The Files API, served as REST by the gateway:
//!
//! - `POST /v1/files?name=data.ndjson` streams the request body to S3 as a
//!   multipart upload, [`PART`] at a time, hashing it with SHA-256 on the
//!   way; the gateway never holds more than a part of it. At most
//!   [`MAX_FILE`] bytes; a larger body is a 413 and nothing is kept.
//! - `GET /v1/files` lists the caller's account's files; `GET
//!   /v1/files/{id}` answers one; `DELETE /v1/files/{id}` deletes it.
//!
//! A file is kept at `<staging>/files/<account>/<file_id>` and recorded in
//! etcd ([`batchmill_core::files`]); only its account sees it. Jobs take
//! files by id (`SubmitJob`'s `files`), each line an item.

use std::sync::Arc;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use batchmill_blob::ObjectStore;
use batchmill_coord::Kv;
use batchmill_core::files::{self, FileRecord};
use batchmill_core::time::now_ms;
use batchmill_core::{Caller, S3Uri};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::rest::error::json_error;

/// Bytes per uploaded part.
pub const PART: usize = 8 * 1024 * 1024;
/// The largest file: 512 MiB.
pub const MAX_FILE: u64 = 512 * 1024 * 1024;
/// The route prefix.
const PATH: &str = "/v1/files";

/// Whether `path` is the Files API's.
pub fn is_files_path(path: &str) -> bool {
    path == PATH || path.starts_with("/v1/files/")
}

/// The Files API; clones share it.
#[derive(Clone)]
pub struct Files {
    store: Arc<dyn ObjectStore>,
    kv: Arc<dyn Kv>,
    /// Where files are kept: `<staging>/files/`.
    staging: S3Uri,
}

/// A refusal, as the REST API answers errors.
struct Refusal(StatusCode, tonic::Code, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        json_error(self.0, self.1, &self.2, Vec::new())
    }
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    Refusal(StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable, e.to_string())
}

fn not_found(id: &str) -> Refusal {
    Refusal(StatusCode::NOT_FOUND, tonic::Code::NotFound, format!("file {id} not found"))
}

fn view(record: &FileRecord) -> Value {
    json!({
        "fileId": record.file_id,
        "name": record.name,
        "size": record.size.to_string(),
        "sha256": record.sha256,
        "contentType": record.content_type,
        "createTime": batchmill_core::time::timestamp(record.create_ms).to_string(),
    })
}

impl Files {
    pub fn new(store: Arc<dyn ObjectStore>, kv: Arc<dyn Kv>, staging: S3Uri) -> Files {
        Files { store, kv, staging }
    }

    /// Answers a request under `/v1/files`.
    pub async fn handle(&self, request: Request) -> Response {
        let caller = match crate::auth::caller_of(request.extensions()) {
            Ok(caller) => caller,
            Err(status) => {
                return Refusal(StatusCode::UNAUTHORIZED, status.code(), status.message().into()).into_response();
            }
        };
        let path = request.uri().path().to_owned();
        let id = path.strip_prefix("/v1/files/").map(str::to_owned);
        let answer = match (request.method().clone(), id) {
            (Method::POST, None) => self.upload(&caller, request).await.map(|r| (StatusCode::OK, view(&r))),
            (Method::GET, None) => self.list(&caller).await.map(|all| (StatusCode::OK, json!({"files": all}))),
            (Method::GET, Some(id)) => self.get(&caller, &id).await.map(|r| (StatusCode::OK, view(&r))),
            (Method::DELETE, Some(id)) => self.delete(&caller, &id).await.map(|()| (StatusCode::OK, json!({}))),
            (method, _) => Err(Refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                tonic::Code::Unimplemented,
                format!("{method} {path}: the Files API takes POST and GET {PATH}, and GET and DELETE {PATH}/{{id}}"),
            )),
        };
        match answer {
            Ok((status, body)) => (status, axum::Json(body)).into_response(),
            Err(refusal) => refusal.into_response(),
        }
    }

    /// Streams the body to S3, part by part, and records the file.
    async fn upload(&self, caller: &Caller, request: Request) -> Result<FileRecord, Refusal> {
        let query = request.uri().query().unwrap_or_default().to_owned();
        let name = crate::rest::form_urlencoded(&query)
            .into_iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v)
            .unwrap_or_default();
        if name.is_empty() || name.len() > 255 || name.contains('/') {
            let message = "name: give the file's name (?name=data.ndjson), at most 255 characters, with no '/'";
            return Err(Refusal(StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument, message.into()));
        }
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let file_id = files::new_id(now_ms());
        let uri = self.staging.join("files").join(&caller.account).join(&file_id);
        let upload = self.store.start_upload(&uri.bucket, &uri.key, &content_type).await.map_err(unavailable)?;
        let body = request.into_body().into_data_stream();
        match self.parts(&uri, &upload, body).await {
            Ok((size, sha256, parts)) => {
                self.store.complete_upload(&uri.bucket, &uri.key, &upload, parts).await.map_err(unavailable)?;
                let record = FileRecord {
                    file_id,
                    name,
                    size,
                    sha256,
                    content_type,
                    uri: uri.to_string(),
                    account: caller.account.clone(),
                    key_id: caller.key_id.clone(),
                    create_ms: now_ms(),
                };
                let bytes = record.encode().map_err(unavailable)?;
                self.kv.put(&files::file_key(&caller.account, &record.file_id), bytes).await.map_err(unavailable)?;
                tracing::info!(file_id = %record.file_id, size, account = %caller.account, "file uploaded");
                Ok(record)
            }
            Err(refusal) => {
                if let Err(e) = self.store.abort_upload(&uri.bucket, &uri.key, &upload).await {
                    tracing::warn!(%uri, error = %e, "abandoning an upload failed");
                }
                Err(refusal)
            }
        }
    }

    /// Uploads the body's bytes [`PART`] at a time; returns the size, the
    /// SHA-256 and the parts.
    async fn parts(
        &self,
        uri: &S3Uri,
        upload: &str,
        mut body: axum::body::BodyDataStream,
    ) -> Result<(u64, String, Vec<(i32, String)>), Refusal> {
        let (mut hasher, mut size, mut parts) = (Sha256::new(), 0u64, Vec::new());
        let mut buffer = BytesMut::with_capacity(PART);
        loop {
            let chunk = body.next().await;
            let end = chunk.is_none();
            if let Some(chunk) = chunk {
                let chunk = chunk.map_err(|e| {
                    Refusal(StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument, format!("reading the body: {e}"))
                })?;
                size += chunk.len() as u64;
                if size > MAX_FILE {
                    let message = format!("the file is over {MAX_FILE} bytes (512 MiB), the most one file may hold");
                    return Err(Refusal(StatusCode::PAYLOAD_TOO_LARGE, tonic::Code::InvalidArgument, message));
                }
                hasher.update(&chunk);
                buffer.extend_from_slice(&chunk);
            }
            while buffer.len() >= PART || (end && (!buffer.is_empty() || parts.is_empty())) {
                let take = buffer.len().min(PART);
                let part: Bytes = buffer.split_to(take).freeze();
                let number = parts.len() as i32 + 1;
                let etag =
                    self.store.upload_part(&uri.bucket, &uri.key, upload, number, part).await.map_err(unavailable)?;
                parts.push((number, etag));
                if end && buffer.is_empty() {
                    break;
                }
            }
            if end {
                let digest = hasher.finalize();
                return Ok((size, digest.iter().map(|b| format!("{b:02x}")).collect(), parts));
            }
        }
    }

    async fn list(&self, caller: &Caller) -> Result<Vec<Value>, Refusal> {
        let listed = self.kv.list(&files::account_prefix(&caller.account)).await.map_err(unavailable)?;
        Ok(listed.iter().filter_map(|(_, bytes)| FileRecord::decode(bytes).ok()).map(|r| view(&r)).collect())
    }

    async fn get(&self, caller: &Caller, id: &str) -> Result<FileRecord, Refusal> {
        files::check_id("file_id", id)
            .map_err(|v| Refusal(StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument, v.to_string()))?;
        let bytes = self.kv.get(&files::file_key(&caller.account, id)).await.map_err(unavailable)?;
        bytes.and_then(|b| FileRecord::decode(&b).ok()).ok_or_else(|| not_found(id))
    }

    async fn delete(&self, caller: &Caller, id: &str) -> Result<(), Refusal> {
        let record = self.get(caller, id).await?;
        let uri = S3Uri::parse(&record.uri).map_err(unavailable)?;
        self.store.delete(&uri.bucket, &uri.key).await.map_err(unavailable)?;
        self.kv.delete(&files::file_key(&caller.account, id)).await.map_err(unavailable)?;
        tracing::info!(file_id = %id, account = %caller.account, "file deleted");
        Ok(())
    }
}
