//! The gRPC adapter of [`Lister`].

use batchmill_core::access::S3Access;
use batchmill_core::{S3Uri, ServiceError};
use batchmill_proto::lister::v1::{self as pb, source};
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::{Lister, ListerError, Source};

/// Serves [`Lister`] as `ListerService`.
#[derive(Clone)]
pub struct ListerGrpc {
    lister: Lister,
}

impl ListerGrpc {
    pub fn new(lister: Lister) -> ListerGrpc {
        ListerGrpc { lister }
    }

    pub fn into_service(self) -> pb::lister_service_server::ListerServiceServer<ListerGrpc> {
        pb::lister_service_server::ListerServiceServer::new(self)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }
}

impl TryFrom<pb::Source> for Source {
    type Error = ListerError;

    fn try_from(s: pb::Source) -> Result<Self, ListerError> {
        match s.kind {
            Some(source::Kind::NdjsonObjects(objects)) => {
                Ok(Source::NdjsonObjects(parse_uris("ndjson_objects.uris", &objects.uris)?))
            }
            Some(source::Kind::FilePaths(s)) => Ok(Source::FilePaths(selection(s)?)),
            Some(source::Kind::DelimitedFiles(s)) => Ok(Source::DelimitedFiles(selection(s)?)),
            Some(source::Kind::NamedFolders(f)) => Ok(Source::Folders(folders(f)?)),
            Some(source::Kind::SqlRows(q)) => Ok(Source::Sql(crate::sql::Query {
                url: q.url,
                username: q.username,
                password: q.password,
                query: q.query,
            })),
            None => Err(ListerError::BadSource("source.kind must be set".into())),
        }
    }
}

fn selection(s: pb::S3Selection) -> Result<batchmill_core::S3Selection, ListerError> {
    let s3_paths = parse_uris("s3_paths", &s.s3_paths)?;
    Ok(batchmill_core::S3Selection { s3_paths, includes: s.includes, excludes: s.excludes })
}

fn folders(f: pb::NamedFolders) -> Result<Vec<batchmill_core::job::Folder>, ListerError> {
    if f.folders.is_empty() {
        return Err(ListerError::BadSource("named_folders.folders must not be empty".into()));
    }
    f.folders
        .into_iter()
        .map(|f| {
            let s3_path =
                S3Uri::parse(&f.s3_path).map_err(|e| ListerError::BadSource(format!("named_folders: {e}")))?;
            Ok(batchmill_core::job::Folder { name: f.name, input: f.input, s3_path })
        })
        .collect()
}

/// A non-empty list of s3:// URIs, given in field `field`.
fn parse_uris(field: &str, uris: &[String]) -> Result<Vec<S3Uri>, ListerError> {
    if uris.is_empty() {
        return Err(ListerError::BadSource(format!("{field} must not be empty")));
    }
    uris.iter().map(|u| S3Uri::parse(u).map_err(|e| ListerError::BadSource(format!("{field}: {e}")))).collect()
}

#[tonic::async_trait]
impl pb::lister_service_server::ListerService for ListerGrpc {
    type ListItemsStream = BoxStream<'static, Result<pb::ListItemsResponse, Status>>;

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<Self::ListItemsStream>, Status> {
        let req = request.into_inner();
        let source = req.source.ok_or_else(|| Status::invalid_argument("source: must be set"))?;
        let access = source.access.as_ref().map(S3Access::from_pb);
        let source = Source::try_from(source).map_err(|e| e.to_status())?;
        let stream = self
            .lister
            .list(source, access.as_ref(), req.skip)
            .await
            .map(|chunk| chunk.map(|items| pb::ListItemsResponse { items }).map_err(|e| e.to_status()))
            .boxed();
        Ok(Response::new(stream))
    }
}
