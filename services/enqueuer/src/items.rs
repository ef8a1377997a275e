//! Where the enqueuer reads items: the lister, as a trait so its logic
//! runs against a fake in unit tests.

use async_trait::async_trait;
use batchmill_core::RemoteError;
use batchmill_proto::lister::v1::ListItemsRequest;
use batchmill_proto::lister::v1::lister_service_client::ListerServiceClient;
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::transport::Channel;

/// Chunks of items (JSON texts), in order.
pub type Chunks = BoxStream<'static, Result<Vec<String>, RemoteError>>;

/// A source of a job's items.
#[async_trait]
pub trait ItemSource: Send + Sync + 'static {
    /// The items of `request.source` after the first `request.skip`, in
    /// chunks; the call runs in the current trace.
    async fn items(&self, request: ListItemsRequest) -> Result<Chunks, RemoteError>;
}

#[async_trait]
impl ItemSource for ListerServiceClient<Channel> {
    async fn items(&self, request: ListItemsRequest) -> Result<Chunks, RemoteError> {
        let request = batchmill_runtime::trace::request(request);
        let stream = self.clone().list_items(request).await?.into_inner();
        Ok(stream.map(|chunk| chunk.map(|c| c.items).map_err(RemoteError::from)).boxed())
    }
}
