//! Modzy's file upload, as `modzy-sdk`'s `jobs.submit_file` drives it:
//!
//! 1. `POST /api/jobs` with a model and no `input` opens a job: an upload,
//!    kept in S3 under `<staging>/uploads/<account>/<upload id>/` (its
//!    `open.json` says what job to submit).
//! 2. `POST /api/jobs/{id}/{item}/{input}`, multipart with one field
//!    `input`, appends a chunk (at most [`CHUNK_MAX`] bytes, as
//!    `GET /api/jobs/features` says) to model input `input` of input item
//!    `item`. Each chunk is written to S3 as it arrives, as the next part
//!    object of that input; the gateway never holds a file whole. Chunks of
//!    one input are sent in order, one at a time, as the SDK sends them.
//! 3. `POST /api/jobs/{id}/close` submits the job over named inputs whose
//!    inputs are those parts (an object stored in parts, read whole by the
//!    worker with the cluster's access; the scheduler lets an account read
//!    its own uploads and nothing else of the cluster's places), and
//!    answers the job. A second close answers the same job.
//!
//! Until it is closed, `GET /api/jobs/{upload id}` answers the upload as an
//! `OPEN` job, and `DELETE` cancels it; after, both act on the job it
//! became. Only the key that opened an upload, or an admin of its account,
//! sees it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Request};
use batchmill_blob::{BlobError, ObjectStore};
use batchmill_core::fence::Fence;
use batchmill_core::time::now_ms;
use batchmill_core::{Caller, JobId, Owner, S3Uri};
use batchmill_proto::jobs::v1 as pb;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ModzyError;
use super::submit::{Head, Submission};

/// Largest chunk, in bytes; `input_chunk_maximum_size` says it as
/// [`CHUNK_MAX_TEXT`].
pub const CHUNK_MAX: usize = 1024 * 1024;
pub const CHUNK_MAX_TEXT: &str = "1M";
/// Most chunks of one input: 32 MiB, the most a worker reads into one input.
const MOST_PARTS: usize = 32;
/// The prefix of every upload id.
const ID_PREFIX: &str = "upload-";

/// What an open upload will submit, and whose it is.
#[derive(Debug, Serialize, Deserialize)]
struct Opened {
    head: Head,
    owner: Owner,
    create_ms: u64,
}

/// How an upload ended: submitted as a job, or cancelled.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Ended {
    Submitted { job_id: String },
    Cancelled,
}

/// An upload the caller sees: open or cancelled (as Modzy's job object),
/// or the job it became.
pub enum Upload {
    Shown(Value),
    Became(String),
}

/// What closing an upload does.
pub enum Closing {
    /// Submit this job, then record it with [`Uploads::submitted`].
    Submit(Box<Submission>),
    /// Nothing: it ended before.
    Ended(Upload),
}

/// Uploads kept in S3.
#[derive(Clone)]
pub struct Uploads {
    store: Arc<dyn ObjectStore>,
    staging: S3Uri,
}

/// Whether `id` names an upload, not a job.
pub fn is_upload_id(id: &str) -> bool {
    id.starts_with(ID_PREFIX)
}

/// A path segment naming an input item or a model input: decoded, 1 to 256
/// characters, a name that is a path segment in S3 too.
fn name(field: &str, segment: &str) -> Result<String, ModzyError> {
    let decoded = crate::rest::template::decode(segment)
        .ok_or_else(|| ModzyError::bad(format!("{field} {segment:?} is not a well-formed path segment")))?;
    let bad = decoded.is_empty()
        || decoded.chars().count() > batchmill_core::named::MAX_NAME
        || decoded.contains('/')
        || decoded == "."
        || decoded == "..";
    if bad {
        return Err(ModzyError::bad(format!(
            "{field} {decoded:?} must be 1 to {} characters, without '/', and not . or ..",
            batchmill_core::named::MAX_NAME
        )));
    }
    Ok(decoded)
}

fn s3_error(what: &str, error: BlobError) -> ModzyError {
    tracing::warn!(error = %error, "{what}");
    ModzyError { status: StatusCode::SERVICE_UNAVAILABLE, message: format!("{what}: {error}") }
}

impl Uploads {
    pub fn new(store: Arc<dyn ObjectStore>, staging: S3Uri) -> Uploads {
        Uploads { store, staging }
    }

    /// Where upload `id` of `account` is kept.
    fn place(&self, account: &str, id: &str) -> S3Uri {
        Fence::uploads(&self.staging, account).join(id)
    }

    async fn put_json(&self, uri: &S3Uri, value: &impl Serialize) -> Result<(), ModzyError> {
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.store
            .put(&uri.bucket, &uri.key, Bytes::from(body), "application/json")
            .await
            .map_err(|e| s3_error("writing the upload", e))
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, uri: &S3Uri) -> Result<Option<T>, ModzyError> {
        match self.store.get(&uri.bucket, &uri.key).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(BlobError::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error("reading the upload", e)),
        }
    }

    /// Opens an upload for `caller`; answers it as Modzy's open job.
    pub async fn open(&self, caller: &Caller, head: Head) -> Result<Value, ModzyError> {
        let create_ms = now_ms();
        let id = format!("{ID_PREFIX}{}", JobId::generate(create_ms));
        let opened = Opened { head, owner: caller.owner(), create_ms };
        self.put_json(&self.place(&caller.account, &id).join("open.json"), &opened).await?;
        tracing::info!(upload = %id, account = %caller.account, key_id = %caller.key_id, "upload opened");
        Ok(open_view(&id, &opened))
    }

    /// The caller's upload `id`: 404 for one it does not see.
    async fn opened(&self, caller: &Caller, id: &str) -> Result<Opened, ModzyError> {
        let opened: Option<Opened> = self.get_json(&self.place(&caller.account, id).join("open.json")).await?;
        opened.filter(|o| caller.sees(&o.owner)).ok_or_else(|| ModzyError::not_found(format!("job {id} not found")))
    }

    async fn ended(&self, caller: &Caller, id: &str) -> Result<Option<Ended>, ModzyError> {
        self.get_json(&self.place(&caller.account, id).join("ended.json")).await
    }

    /// Upload `id` as the caller sees it.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Upload, ModzyError> {
        let opened = self.opened(caller, id).await?;
        let ended = self.ended(caller, id).await?;
        Ok(shown(id, &opened, ended))
    }

    /// Cancels upload `id` if it is open; else says how it ended.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<Upload, ModzyError> {
        let opened = self.opened(caller, id).await?;
        if let Some(ended) = self.ended(caller, id).await? {
            return Ok(shown(id, &opened, Some(ended)));
        }
        self.put_json(&self.place(&caller.account, id).join("ended.json"), &Ended::Cancelled).await?;
        tracing::info!(upload = %id, "upload cancelled");
        Ok(shown(id, &opened, Some(Ended::Cancelled)))
    }

    /// Appends the chunk in `request` (multipart, field `input`) to model
    /// input `input` of item `item` of upload `id`.
    pub async fn append(
        &self,
        caller: &Caller,
        id: &str,
        item: &str,
        input: &str,
        request: Request,
    ) -> Result<Value, ModzyError> {
        let opened = self.opened(caller, id).await?;
        if self.ended(caller, id).await?.is_some() {
            return Err(ModzyError::bad(format!("job {id} is closed: open a new job to upload more")));
        }
        let (item, input) = (name("input item", item)?, name("model input", input)?);
        let folder = self.place(&caller.account, id).join("inputs").join(&item).join(&input);
        let prefix = format!("{}/", folder.key);
        let parts = self.store.list(&folder.bucket, &prefix).await.map_err(|e| s3_error("listing the upload", e))?;
        if parts.len() >= MOST_PARTS {
            return Err(ModzyError::bad(format!(
                "input {item}/{input} is over {MOST_PARTS} chunks of {CHUNK_MAX_TEXT}, the 32 MiB limit of one input"
            )));
        }
        let chunk = chunk(request).await?;
        let part = folder.join(&format!("{:06}", parts.len() + 1));
        self.store
            .put(&part.bucket, &part.key, chunk, "application/octet-stream")
            .await
            .map_err(|e| s3_error("writing the chunk", e))?;
        Ok(open_view(id, &opened))
    }

    /// The job upload `id` becomes: every uploaded input, as named inputs
    /// read from their parts.
    pub async fn closing(&self, caller: &Caller, id: &str) -> Result<Closing, ModzyError> {
        let opened = self.opened(caller, id).await?;
        if let Some(ended) = self.ended(caller, id).await? {
            return Ok(Closing::Ended(shown(id, &opened, Some(ended))));
        }
        let inputs_at = self.place(&caller.account, id).join("inputs");
        let prefix = format!("{}/", inputs_at.key);
        let keys = self.store.list(&inputs_at.bucket, &prefix).await.map_err(|e| s3_error("listing the upload", e))?;
        let mut items: BTreeMap<String, pb::NamedInput> = BTreeMap::new();
        for key in &keys {
            let mut path = key[prefix.len()..].split('/');
            let (Some(item), Some(input), Some(_part), None) = (path.next(), path.next(), path.next(), path.next())
            else {
                continue;
            };
            let folder = format!("s3://{}/{prefix}{item}/{input}/", inputs_at.bucket);
            let named = items
                .entry(item.to_owned())
                .or_insert_with(|| pb::NamedInput { name: item.to_owned(), ..Default::default() });
            named.objects.insert(input.to_owned(), folder);
        }
        if items.is_empty() {
            return Err(ModzyError::bad(format!(
                "job {id} has no inputs: append them with POST /api/jobs/{id}/<input item>/<model input> first"
            )));
        }
        Ok(Closing::Submit(Box::new(Submission::named(opened.head, items.into_values().collect()))))
    }

    /// Records that upload `id` became job `job_id`.
    pub async fn submitted(&self, caller: &Caller, id: &str, job_id: &str) -> Result<(), ModzyError> {
        let ended = Ended::Submitted { job_id: job_id.to_owned() };
        self.put_json(&self.place(&caller.account, id).join("ended.json"), &ended).await?;
        tracing::info!(upload = %id, job_id, "upload closed");
        Ok(())
    }
}

/// The one field `input` of a multipart chunk, at most [`CHUNK_MAX`] bytes.
async fn chunk(request: Request) -> Result<Bytes, ModzyError> {
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| ModzyError::bad(format!("not a multipart body: {e}")))?;
    let too_large = || ModzyError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("a chunk is at most {CHUNK_MAX} bytes (input_chunk_maximum_size {CHUNK_MAX_TEXT})"),
    };
    let bad = |e: axum::extract::multipart::MultipartError| ModzyError::bad(format!("reading the multipart body: {e}"));
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        if field.name() != Some("input") {
            continue;
        }
        let mut bytes = Vec::new();
        while let Some(piece) = field.chunk().await.map_err(bad)? {
            if bytes.len() + piece.len() > CHUNK_MAX {
                return Err(too_large());
            }
            bytes.extend_from_slice(&piece);
        }
        return Ok(Bytes::from(bytes));
    }
    Err(ModzyError::bad("the multipart body has no field \"input\""))
}

fn shown(id: &str, opened: &Opened, ended: Option<Ended>) -> Upload {
    match ended {
        Some(Ended::Submitted { job_id }) => Upload::Became(job_id),
        Some(Ended::Cancelled) => {
            let mut view = open_view(id, opened);
            view["status"] = Value::from("CANCELED");
            Upload::Shown(view)
        }
        None => Upload::Shown(open_view(id, opened)),
    }
}

/// An open upload as Modzy's job object.
fn open_view(id: &str, opened: &Opened) -> Value {
    let job = pb::Job {
        job_id: id.to_owned(),
        pipeline: opened.head.model.clone(),
        account_id: opened.owner.account.clone(),
        submitted_by: opened.owner.key_id.clone(),
        create_time: Some(batchmill_core::time::timestamp(opened.create_ms)),
        timeout: opened.head.timeout_ms.map(|t| batchmill_core::time::duration_ms(t.unsigned_abs())),
        ..Default::default()
    };
    let mut view = super::view::job(&job);
    view["status"] = Value::from("OPEN");
    view["model"]["version"] = Value::from(opened.head.version.clone());
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchmill_blob::mem::MemBlob;
    use batchmill_core::Role;

    fn caller(key_id: &str, role: Role) -> Caller {
        Caller { account: "acme".into(), key_id: key_id.into(), role }
    }

    fn head() -> Head {
        Head { model: "echo".into(), version: "1".into(), timeout_ms: None, workers: 1, batch_size: 10 }
    }

    fn chunk_request(data: &[u8]) -> Request {
        let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"input\"; filename=\"input\"\r\n\r\n".to_vec();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        http::Request::builder()
            .method("POST")
            .header(http::header::CONTENT_TYPE, "multipart/form-data; boundary=XyZ")
            .body(axum::body::Body::from(body))
            .unwrap_or_default()
    }

    async fn uploads() -> Uploads {
        let blob = MemBlob::default();
        blob.ensure_bucket("batchmill").await.unwrap_or_default();
        Uploads::new(Arc::new(blob), S3Uri::parse("s3://batchmill/staging").expect("uri"))
    }

    #[tokio::test]
    async fn chunks_become_parts_and_closing_names_each_input_by_its_parts() {
        let uploads = uploads().await;
        let member = caller("k1", Role::Member);
        let view = uploads.open(&member, head()).await.unwrap_or_else(|e| panic!("{e:?}"));
        let id = view["jobIdentifier"].as_str().unwrap_or_default().to_owned();
        assert!(is_upload_id(&id) && view["status"] == "OPEN", "{view}");
        for (item, input, data) in [("doc%201", "input.txt", "hel"), ("doc%201", "input.txt", "lo"), ("b", "x", "z")] {
            uploads
                .append(&member, &id, item, input, chunk_request(data.as_bytes()))
                .await
                .unwrap_or_else(|e| panic!("{e:?}"));
        }
        let Ok(Closing::Submit(submission)) = uploads.closing(&member, &id).await else { panic!("a job to submit") };
        let request = submission.into_request();
        let Some(pb::submit_job_request::Source::NamedInputs(named)) = request.source else { panic!("named inputs") };
        let objects: Vec<(String, Vec<(String, String)>)> = named
            .inputs
            .iter()
            .map(|i| (i.name.clone(), i.objects.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
            .collect();
        let at = format!("s3://batchmill/staging/uploads/acme/{id}/inputs");
        assert_eq!(
            objects,
            [
                ("b".to_owned(), vec![("x".to_owned(), format!("{at}/b/x/"))]),
                ("doc 1".to_owned(), vec![("input.txt".to_owned(), format!("{at}/doc 1/input.txt/"))]),
            ]
        );
        let parts =
            uploads.store.list("batchmill", &format!("staging/uploads/acme/{id}/inputs/doc 1/input.txt/")).await;
        assert_eq!(parts.unwrap_or_default().len(), 2, "one part object a chunk");
        uploads.submitted(&member, &id, "j1").await.unwrap_or_else(|e| panic!("{e:?}"));
        assert!(matches!(uploads.get(&member, &id).await, Ok(Upload::Became(job)) if job == "j1"));
        let late = uploads.append(&member, &id, "b", "x", chunk_request(b"late")).await.err();
        assert!(late.is_some_and(|e| e.status == StatusCode::BAD_REQUEST && e.message.contains("closed")));
    }

    #[tokio::test]
    async fn an_upload_is_seen_by_its_key_and_its_accounts_admins_only() {
        let uploads = uploads().await;
        let view = uploads.open(&caller("k1", Role::Member), head()).await.unwrap_or_else(|e| panic!("{e:?}"));
        let id = view["jobIdentifier"].as_str().unwrap_or_default().to_owned();
        let other_key = uploads.get(&caller("k2", Role::Member), &id).await.err().map(|e| e.status);
        assert_eq!(other_key, Some(StatusCode::NOT_FOUND));
        let other_account = Caller { account: "globex".into(), key_id: "k1".into(), role: Role::AccountAdmin };
        assert_eq!(uploads.get(&other_account, &id).await.err().map(|e| e.status), Some(StatusCode::NOT_FOUND));
        assert!(matches!(uploads.get(&caller("k3", Role::AccountAdmin), &id).await, Ok(Upload::Shown(_))));
        let empty = uploads.closing(&caller("k1", Role::Member), &id).await.err();
        assert!(empty.is_some_and(|e| e.message.contains("no inputs")));
        for (item, why) in [("..", "not . or .."), ("a%2Fb", "without '/'")] {
            let bad = uploads.append(&caller("k1", Role::Member), &id, item, "x", chunk_request(b"d")).await.err();
            assert!(bad.is_some_and(|e| e.status == StatusCode::BAD_REQUEST && e.message.contains(why)), "{item}");
        }
    }
}
