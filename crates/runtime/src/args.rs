//! Command-line arguments shared by services, each with a `BATCHMILL_*` (or
//! standard `AWS_*`) environment variable. Only `main.rs` files parse them;
//! libraries take plain values.

use std::net::SocketAddr;

/// Where a service listens.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// Address to serve gRPC on (and `GET /metrics`).
    #[arg(long, env = "BATCHMILL_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Also serve `GET /metrics` alone on this address, so that a network
    /// policy can let Prometheus reach the metrics and not the gRPC port.
    #[arg(long, env = "BATCHMILL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl ListenArgs {
    /// Binds the service's listener, and starts serving the metrics on
    /// their own address if one is given, until `shutdown`.
    pub async fn bind(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<tokio::net::TcpListener, crate::RuntimeError> {
        if let Some(addr) = self.metrics_listen {
            let listener = crate::bind(addr).await?;
            tokio::spawn(crate::metrics::serve(listener, shutdown.clone()));
        }
        crate::bind(self.listen).await
    }
}

/// How to reach etcd.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "BATCHMILL_ETCD_ENDPOINTS", value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
    /// PEM CA to trust for etcd's certificate: etcd is reached over TLS
    /// (https:// endpoints).
    #[arg(long, env = "BATCHMILL_ETCD_CA")]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for etcd (with --etcd-key), if it asks.
    #[arg(long, env = "BATCHMILL_ETCD_CERT", requires = "etcd_ca")]
    pub etcd_cert: Option<std::path::PathBuf>,
    #[arg(long, env = "BATCHMILL_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<std::path::PathBuf>,
}

impl EtcdArgs {
    /// TLS to etcd, if a CA is named.
    pub fn tls(&self) -> Option<batchmill_core::client_tls::ClientTls> {
        batchmill_core::client_tls::ClientTls::from_paths(
            self.etcd_ca.clone(),
            self.etcd_cert.clone(),
            self.etcd_key.clone(),
        )
    }
}

/// How to reach NATS.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL.
    #[arg(long, env = "BATCHMILL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// PEM CA to trust for NATS's certificate: NATS is reached over TLS.
    #[arg(long, env = "BATCHMILL_NATS_CA")]
    pub nats_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for NATS (with --nats-key), if it asks.
    #[arg(long, env = "BATCHMILL_NATS_CERT", requires = "nats_ca")]
    pub nats_cert: Option<std::path::PathBuf>,
    #[arg(long, env = "BATCHMILL_NATS_KEY", requires = "nats_cert")]
    pub nats_key: Option<std::path::PathBuf>,
    /// NATS user (with BATCHMILL_NATS_PASSWORD), for a server that requires one.
    #[arg(long, env = "BATCHMILL_NATS_USER")]
    pub nats_user: Option<String>,
    #[arg(long, env = "BATCHMILL_NATS_PASSWORD", hide_env_values = true, requires = "nats_user")]
    pub nats_password: Option<String>,
}

impl NatsArgs {
    /// TLS to NATS, if a CA is named.
    pub fn tls(&self) -> Option<batchmill_core::client_tls::ClientTls> {
        batchmill_core::client_tls::ClientTls::from_paths(
            self.nats_ca.clone(),
            self.nats_cert.clone(),
            self.nats_key.clone(),
        )
    }
}

/// How to reach S3. Credentials come from the standard `AWS_*` variables.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// S3 endpoint URL; unset for AWS itself.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub s3_region: String,
}

/// TLS, from PEM files: for the server (reloaded as they change; see
/// [`crate::tls`]) and for calls to other services. In the clear when no
/// certificate and no CA is given.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain to serve TLS with.
    #[arg(long, env = "BATCHMILL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, env = "BATCHMILL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificates: clients must present a certificate one of
    /// them signed (mutual TLS).
    #[arg(long, env = "BATCHMILL_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// PEM CA certificates to trust for the other services: calls to them
    /// go over TLS, presenting --tls-cert when given.
    #[arg(long, env = "BATCHMILL_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// The name to check the other services' certificates for, whatever
    /// address they are dialed at (the scheduler leader is dialed at the
    /// address it advertises, a pod's IP on Kubernetes); default: the host
    /// dialed.
    #[arg(long, env = "BATCHMILL_TLS_SERVER_NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The files, if TLS is asked for.
    pub fn files(self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles { cert: self.tls_cert?, key: self.tls_key?, client_ca: self.tls_client_ca })
    }

    /// How to dial the other services over TLS, if a CA to trust is given.
    pub fn client_files(&self) -> Option<crate::dial::ClientFiles> {
        let paths = batchmill_core::client_tls::ClientTls::from_paths(
            self.tls_ca.clone(),
            self.tls_cert.clone(),
            self.tls_key.clone(),
        )?;
        Some(crate::dial::ClientFiles { paths, server_name: self.tls_server_name.clone() })
    }
}
