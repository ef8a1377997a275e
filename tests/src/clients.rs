//! Clients of a sandbox's gateway, as its users have them: gRPC clients
//! and HTTP clients that send an API key (over TLS to a TLS sandbox).

use batchmill_proto::accounts::v1::account_service_client::AccountServiceClient;
use batchmill_proto::jobs::v1::job_service_client::JobServiceClient;
use batchmill_proto::pipelines::v1::pipeline_service_client::PipelineServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::{Sandbox, tls};

/// Sends an API key with every gRPC call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(key: &str) -> anyhow::Result<Bearer> {
        Ok(Bearer(format!("Bearer {key}").parse()?))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel to the gateway that sends an API key.
pub type Authed = InterceptedService<Channel, Bearer>;

impl Sandbox {
    /// A gRPC channel to the gateway that sends `key`.
    pub async fn channel_as(&self, key: &str) -> anyhow::Result<Authed> {
        let channel = self.gateway_endpoint()?.connect().await?;
        Ok(InterceptedService::new(channel, Bearer::new(key)?))
    }

    /// A gRPC client of the public job API, through the gateway, with the
    /// cluster admin key.
    pub async fn jobs(&self) -> anyhow::Result<JobServiceClient<Authed>> {
        self.jobs_as(&self.api_key).await
    }

    /// A gRPC client of the public job API that sends `key`.
    pub async fn jobs_as(&self, key: &str) -> anyhow::Result<JobServiceClient<Authed>> {
        Ok(JobServiceClient::new(self.channel_as(key).await?).max_encoding_message_size(16 * 1024 * 1024))
    }

    /// A gRPC client of the public pipeline API, with the cluster admin key.
    pub async fn pipelines(&self) -> anyhow::Result<PipelineServiceClient<Authed>> {
        Ok(PipelineServiceClient::new(self.channel_as(&self.api_key).await?)
            .max_encoding_message_size(64 * 1024 * 1024))
    }

    /// A gRPC client of the account API that sends `key`.
    pub async fn accounts_as(&self, key: &str) -> anyhow::Result<AccountServiceClient<Authed>> {
        Ok(AccountServiceClient::new(self.channel_as(key).await?))
    }

    /// An HTTP client that sends the cluster admin key.
    pub fn http(&self) -> reqwest::Client {
        self.http_with(bearer_headers(&self.api_key))
    }
}

/// Creates `account` and a member key of it (with the sandbox's admin key);
/// returns the key.
pub async fn member_key(sandbox: &Sandbox, account: &str) -> anyhow::Result<String> {
    use batchmill_proto::accounts::v1 as apb;
    let mut accounts = sandbox.accounts_as(&sandbox.api_key).await?;
    accounts.create_account(apb::CreateAccountRequest { account_id: account.into(), limits: None }).await?;
    let request = apb::CreateKeyRequest {
        account_id: account.into(),
        role: apb::Role::Member as i32,
        description: "test".into(),
    };
    Ok(accounts.create_key(request).await?.into_inner().secret_key)
}

/// An HTTP client that sends `key` as `Authorization: Bearer <key>`.
/// When this process runs a TLS sandbox, over TLS to its gateway.
pub fn http_as(key: &str) -> reqwest::Client {
    tls::client_with(bearer_headers(key))
}

/// An HTTP client that sends no key (over TLS to a TLS sandbox's gateway).
pub fn http_anonymous() -> reqwest::Client {
    tls::client_with(reqwest::header::HeaderMap::new())
}

fn bearer_headers(key: &str) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")) {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    headers
}
