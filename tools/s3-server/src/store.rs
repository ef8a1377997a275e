//! The S3 service: s3s-fs for everything but listing, which
//! [`crate::listing`] answers by prefix instead of walking the whole bucket,
//! and writes, which first check that their bucket exists (as S3 does).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CommonPrefix, CompleteMultipartUploadInput,
    CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput, CreateBucketInput, CreateBucketOutput,
    CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteBucketInput, DeleteBucketOutput, DeleteObjectInput,
    DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput, GetBucketLocationInput, GetBucketLocationOutput,
    GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput, HeadObjectOutput,
    ListBucketsInput, ListBucketsOutput, ListObjectsInput, ListObjectsOutput, ListObjectsV2Input, ListObjectsV2Output,
    ListPartsInput, ListPartsOutput, Object, PutObjectInput, PutObjectOutput, Timestamp, UploadPartCopyInput,
    UploadPartCopyOutput, UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};

use crate::listing::{self, Entry, Query};

/// S3's most keys per listing page.
const MAX_KEYS: i32 = 1000;

pub struct Store {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
}

impl Store {
    pub fn new(root: &std::path::Path) -> std::io::Result<Self> {
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        Ok(Store { fs, root: root.canonicalize()? })
    }

    fn bucket_dir(&self, bucket: &str) -> S3Result<PathBuf> {
        if bucket.is_empty() || bucket.starts_with('.') || bucket.contains(['/', '\\']) {
            return Err(s3_error!(InvalidBucketName));
        }
        let dir = self.root.join(bucket);
        if !dir.is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        Ok(dir)
    }
}

/// Methods answered by s3s-fs, written out as `async_trait` expands them
/// (the attribute runs before this macro does).
macro_rules! delegate {
    ($($name:ident($input:ty) -> $output:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                req: S3Request<$input>,
            ) -> Pin<Box<dyn Future<Output = S3Result<S3Response<$output>>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                self.fs.$name(req)
            }
        )*
    };
}

#[async_trait::async_trait]
impl S3 for Store {
    delegate! {
        create_bucket(CreateBucketInput) -> CreateBucketOutput;
        delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
        delete_object(DeleteObjectInput) -> DeleteObjectOutput;
        delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
        get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
        get_object(GetObjectInput) -> GetObjectOutput;
        head_bucket(HeadBucketInput) -> HeadBucketOutput;
        head_object(HeadObjectInput) -> HeadObjectOutput;
        list_buckets(ListBucketsInput) -> ListBucketsOutput;
        upload_part(UploadPartInput) -> UploadPartOutput;
        upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
        list_parts(ListPartsInput) -> ListPartsOutput;
        complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
        abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
    }

    // s3s-fs creates a missing bucket on a write; S3 refuses it, and tests
    // of an unwritable output location depend on that.
    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.bucket_dir(&req.input.bucket)?;
        self.fs.put_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.bucket_dir(&req.input.bucket)?;
        self.fs.create_multipart_upload(req).await
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.bucket_dir(&req.input.bucket)?;
        self.fs.copy_object(req).await
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let v2 = self.list_objects_v2(req.map_input(Into::into)).await?;
        Ok(v2.map_output(|v2| ListObjectsOutput {
            contents: v2.contents,
            common_prefixes: v2.common_prefixes,
            delimiter: v2.delimiter,
            encoding_type: v2.encoding_type,
            name: v2.name,
            prefix: v2.prefix,
            max_keys: v2.max_keys,
            is_truncated: v2.is_truncated,
            next_marker: v2.next_continuation_token,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let rolled = match req.input.delimiter.as_deref() {
            None => false,
            Some("/") => true,
            // Other delimiters are rare: the whole-bucket walk answers them.
            Some(_) => return self.fs.list_objects_v2(req).await,
        };
        let input = req.input;
        let dir = self.bucket_dir(&input.bucket)?;
        let max_keys = input.max_keys.unwrap_or(MAX_KEYS).clamp(0, MAX_KEYS);
        let prefix = input.prefix.clone().unwrap_or_default().trim_start_matches('/').to_owned();
        let after = match (input.continuation_token.clone(), input.start_after.clone()) {
            (Some(token), Some(start)) => Some(token.max(start)),
            (token, start) => token.or(start),
        };
        let limit = usize::try_from(max_keys).unwrap_or(0);
        let mut entries = if limit == 0 {
            Vec::new()
        } else {
            tokio::task::spawn_blocking(move || {
                listing::list(&dir, Query { prefix: &prefix, after: after.as_deref(), rolled, limit })
            })
            .await
            .map_err(|e| s3_error!(InternalError, "listing: {e}"))?
            .map_err(|e| s3_error!(InternalError, "listing: {e}"))?
        };
        let is_truncated = entries.len() > limit;
        entries.truncate(limit);
        let next_continuation_token = is_truncated.then(|| entries.last().map(|e| e.key().to_owned())).flatten();
        let key_count = i32::try_from(entries.len()).unwrap_or(MAX_KEYS);
        let (mut contents, mut common_prefixes) = (Vec::new(), Vec::new());
        for entry in entries {
            match entry {
                Entry::Object { key, size, modified } => contents.push(Object {
                    key: Some(key),
                    size: Some(i64::try_from(size).unwrap_or(i64::MAX)),
                    last_modified: Some(Timestamp::from(modified)),
                    ..Default::default()
                }),
                Entry::Prefix(prefix) => common_prefixes.push(CommonPrefix { prefix: Some(prefix) }),
            }
        }
        Ok(S3Response::new(ListObjectsV2Output {
            key_count: Some(key_count),
            max_keys: Some(max_keys),
            is_truncated: Some(is_truncated),
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!common_prefixes.is_empty()).then_some(common_prefixes),
            continuation_token: input.continuation_token,
            next_continuation_token,
            delimiter: input.delimiter,
            encoding_type: input.encoding_type,
            name: Some(input.bucket),
            prefix: input.prefix,
            start_after: input.start_after,
            ..Default::default()
        }))
    }
}
