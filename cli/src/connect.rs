//! The connection to the gateway: every call carries the API key.

use anyhow::Context;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::config::{Target, Tls};

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

/// Connects to the gateway `target` names, over TLS if it says so, sending
/// its key if it has one.
pub async fn connect(target: &Target) -> anyhow::Result<Api> {
    let addr = &target.endpoint;
    let endpoint = match &target.tls {
        None => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?,
        Some(tls) => {
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?.tls_config(client_tls(tls)?)?
        }
    };
    let channel = endpoint.connect().await.with_context(|| format!("connecting to {addr}"))?;
    let bearer = match target.api_key.as_deref() {
        Some(key) => Some(format!("Bearer {key}").parse().context("the API key holds characters a header cannot")?),
        None => None,
    };
    Ok(InterceptedService::new(channel, Bearer(bearer)))
}

/// tonic's TLS settings for `tls`: its CA (else the system's roots) and
/// its client certificate.
fn client_tls(tls: &Tls) -> anyhow::Result<ClientTlsConfig> {
    let read = |path: &std::path::Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_cert {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => config.with_native_roots(),
    };
    if let Some((cert, key)) = &tls.client {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(config)
}
