//! The connection to the gateway: every call carries the API key.

use anyhow::Context;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Sends `authorization: Bearer <key>` with every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel to the gateway that sends the key.
pub type Api = InterceptedService<Channel, Bearer>;

/// Connects to the gateway at `addr` (host:port), sending `key` if given.
pub async fn connect(addr: &str, key: Option<&str>) -> anyhow::Result<Api> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let bearer = match key {
        Some(key) => Some(format!("Bearer {key}").parse().context("the API key holds characters a header cannot")?),
        None => None,
    };
    Ok(InterceptedService::new(channel, Bearer(bearer)))
}
