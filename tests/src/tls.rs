//! A sandbox whose gateway speaks TLS (`Options::tls`): certificates from
//! `deploy/local/make-certs`, as `deploy/local/up --tls` makes them, in the
//! sandbox's `tls/`. Its clients (gRPC channels, the HTTP client) then
//! trust that CA, and present the client certificate where the gateway
//! asks for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Sandbox;

/// TLS on the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GatewayTls {
    /// In the clear (h2c and HTTP/1.1).
    #[default]
    Off,
    /// TLS; clients need no certificate.
    Server,
    /// TLS, and clients must present a certificate the CA signed.
    Mutual,
    /// TLS for clients (no certificate asked), and mutual TLS between
    /// every service.
    Everywhere,
}

impl GatewayTls {
    /// `BATCHMILL_SANDBOX_TLS=everywhere` (or `server`, `mutual`) runs every
    /// sandbox whose test does not say otherwise with that TLS, so that
    /// any test can be run against a TLS cluster; default off.
    pub fn from_env() -> GatewayTls {
        match std::env::var("BATCHMILL_SANDBOX_TLS").as_deref() {
            Ok("everywhere") => GatewayTls::Everywhere,
            Ok("server") => GatewayTls::Server,
            Ok("mutual") => GatewayTls::Mutual,
            _ => GatewayTls::Off,
        }
    }
}

/// Where the sandbox's certificates are.
#[derive(Debug, Clone)]
pub struct Certs {
    pub dir: PathBuf,
    /// The gateway asks clients for certificates.
    pub mutual: bool,
    /// The services speak mutual TLS to each other, and to etcd and NATS
    /// (which require client certificates, NATS a user too).
    pub internal: bool,
    /// NATS's password for user [`NATS_USER`], made for this sandbox.
    pub nats_password: String,
}

/// The user the services log in to NATS as, when NATS asks for one.
pub const NATS_USER: &str = "batchmill";

impl Certs {
    /// Makes the CA, the gateway's and a client's certificates in `dir`.
    pub fn make(dir: &Path, tls: GatewayTls) -> anyhow::Result<Certs> {
        let (mutual, internal) = (tls == GatewayTls::Mutual, tls == GatewayTls::Everywhere);
        let nats_password = format!("nats-{:016x}", fastrand::u64(..));
        let certs = Certs { dir: dir.to_path_buf(), mutual, internal, nats_password };
        certs.issue("all")?;
        Ok(certs)
    }

    /// Issues `which` (`gateway`, `client` or `all`) again from the same CA.
    pub fn issue(&self, which: &str) -> anyhow::Result<()> {
        let script = crate::repo_root().join("deploy/local/make-certs");
        let out = std::process::Command::new(&script).arg(&self.dir).arg(which).output()?;
        anyhow::ensure!(out.status.success(), "make-certs: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The gateway's environment for TLS.
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        let path = |name: &str| self.path(name).to_string_lossy().into_owned();
        let mut env = vec![
            ("BATCHMILL_TLS_CERT".to_owned(), path("gateway.pem")),
            ("BATCHMILL_TLS_KEY".to_owned(), path("gateway.key")),
        ];
        if self.mutual {
            env.push(("BATCHMILL_TLS_CLIENT_CA".to_owned(), path("ca.pem")));
        }
        if self.internal {
            env.push(("BATCHMILL_TLS_CA".to_owned(), path("ca.pem")));
        }
        env
    }

    /// Every other service's environment: mutual TLS with the others
    /// (when they speak it).
    pub fn service_env(&self) -> Vec<(String, String)> {
        if !self.internal {
            return Vec::new();
        }
        let path = |name: &str| self.path(name).to_string_lossy().into_owned();
        vec![
            ("BATCHMILL_TLS_CERT".to_owned(), path("service.pem")),
            ("BATCHMILL_TLS_KEY".to_owned(), path("service.key")),
            ("BATCHMILL_TLS_CLIENT_CA".to_owned(), path("ca.pem")),
            ("BATCHMILL_TLS_CA".to_owned(), path("ca.pem")),
        ]
    }

    /// etcd's flags for client TLS: its certificate, and client
    /// certificates from the CA required.
    pub fn etcd_server_args(&self) -> Vec<String> {
        let path = |name: &str| self.path(name).to_string_lossy().into_owned();
        vec![
            "--cert-file".into(),
            path("service.pem"),
            "--key-file".into(),
            path("service.key"),
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            path("ca.pem"),
        ]
    }

    /// NATS's flags: TLS only, client certificates from the CA and a user
    /// and password required.
    pub fn nats_server_args(&self) -> Vec<String> {
        let path = |name: &str| self.path(name).to_string_lossy().into_owned();
        vec![
            "--tls".into(),
            "--tlscert".into(),
            path("service.pem"),
            "--tlskey".into(),
            path("service.key"),
            "--tlscacert".into(),
            path("ca.pem"),
            "--tlsverify".into(),
            "--user".into(),
            NATS_USER.into(),
            "--pass".into(),
            self.nats_password.clone(),
        ]
    }

    /// What every service is given to reach etcd and NATS over TLS.
    pub fn dependency_env(&self) -> Vec<(String, String)> {
        let path = |name: &str| self.path(name).to_string_lossy().into_owned();
        let mut env = Vec::new();
        for system in ["ETCD", "NATS"] {
            env.push((format!("BATCHMILL_{system}_CA"), path("ca.pem")));
            env.push((format!("BATCHMILL_{system}_CERT"), path("service.pem")));
            env.push((format!("BATCHMILL_{system}_KEY"), path("service.key")));
        }
        env.push(("BATCHMILL_NATS_USER".into(), NATS_USER.into()));
        env.push(("BATCHMILL_NATS_PASSWORD".into(), self.nats_password.clone()));
        env
    }

    /// Makes this (test) process reach etcd and NATS as the services do,
    /// with the client certificate.
    pub fn use_for_this_process(&self) -> anyhow::Result<()> {
        let tls = batchmill_core::client_tls::ClientTls {
            ca: self.path("ca.pem"),
            identity: Some((self.path("client.pem"), self.path("client.key"))),
        };
        batchmill_coord::Etcd::use_tls(&tls)?;
        batchmill_queue::use_access(batchmill_queue::NatsAccess {
            tls: Some(tls),
            user: Some((NATS_USER.into(), self.nats_password.clone())),
        });
        Ok(())
    }

    /// tonic's TLS settings: trust the CA, and present the client
    /// certificate when the gateway asks for one.
    pub fn tonic(&self, with_client: bool) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        let read = |name: &str| std::fs::read(self.path(name)).with_context(|| name.to_owned());
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")?));
        if with_client {
            config = config.identity(tonic::transport::Identity::from_pem(read("client.pem")?, read("client.key")?));
        }
        Ok(config)
    }

    /// rustls' client settings, as [`Certs::tonic`].
    pub fn rustls(&self, with_client: bool) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.path("ca.pem"))? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        Ok(if with_client {
            let chain = CertificateDer::pem_file_iter(self.path("client.pem"))?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(self.path("client.key"))?)?
        } else {
            builder.with_no_client_auth()
        })
    }
}

/// Makes aws-lc-rs rustls' process-wide provider (idempotent): every
/// reqwest client is built on rustls without a provider of its own.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The certificates of the TLS sandbox this process runs (one per test
/// process), which HTTP clients then trust and present.
static PROCESS_CERTS: std::sync::OnceLock<Certs> = std::sync::OnceLock::new();

/// Remembers `certs` for this process's HTTP clients.
pub(crate) fn remember(certs: &Certs) {
    let _ = PROCESS_CERTS.set(certs.clone());
}

/// An HTTP client sending `headers`, trusting this process's TLS sandbox
/// (and presenting its client certificate where its gateway asks).
pub(crate) fn client_with(headers: reqwest::header::HeaderMap) -> reqwest::Client {
    install_provider();
    let builder = reqwest::Client::builder().default_headers(headers);
    let builder = match PROCESS_CERTS.get().map(|c| c.rustls(c.mutual || c.internal)) {
        Some(Ok(config)) => builder.use_preconfigured_tls(config),
        _ => builder,
    };
    builder.build().unwrap_or_default()
}

impl Sandbox {
    /// An endpoint for the gateway, over TLS when it speaks it.
    pub fn gateway_endpoint(&self) -> anyhow::Result<tonic::transport::Endpoint> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.rest_url())?;
        Ok(match &self.certs {
            Some(certs) => endpoint.tls_config(certs.tonic(certs.mutual)?)?,
            None => endpoint,
        })
    }

    /// An HTTP client of the gateway sending `headers`, over TLS when it
    /// speaks it.
    pub(crate) fn http_with(&self, headers: reqwest::header::HeaderMap) -> reqwest::Client {
        client_with(headers)
    }

    /// How to reach the services other than the gateway: None in the
    /// clear, else mutual TLS with the client certificate.
    pub fn internal_tls(&self) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
        match &self.certs {
            Some(certs) if certs.internal => Ok(Some(certs.tonic(true)?)),
            _ => Ok(None),
        }
    }

    /// The base URL of service `name`'s port (`http://` or `https://`).
    pub fn url_of(&self, name: &str) -> anyhow::Result<String> {
        let port = self.grpc_ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p).context("no such service")?;
        let tls = self.certs.as_ref().is_some_and(|c| name == "gateway" || c.internal);
        Ok(format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" }))
    }

    /// grpcurl's flags to reach service `name`: `-plaintext`, or its TLS.
    pub fn grpcurl_tls(&self, name: &str) -> Vec<String> {
        match &self.certs {
            Some(certs) if name == "gateway" || certs.internal => {
                let path = |file: &str| certs.path(file).to_string_lossy().into_owned();
                vec![
                    "-cacert".into(),
                    path("ca.pem"),
                    "-cert".into(),
                    path("client.pem"),
                    "-key".into(),
                    path("client.key"),
                ]
            }
            _ => vec!["-plaintext".into()],
        }
    }

    /// What a script (Python's requests, Chromium) is given to trust this
    /// sandbox's gateway: the CA as `REQUESTS_CA_BUNDLE` and
    /// `SSL_CERT_FILE`, and the gateway certificate's public-key hash as
    /// `BATCHMILL_GATEWAY_SPKI` (for Chromium's
    /// `--ignore-certificate-errors-spki-list`). Empty in the clear.
    pub fn client_env(&self) -> anyhow::Result<Vec<(String, String)>> {
        let Some(certs) = &self.certs else { return Ok(Vec::new()) };
        let ca = certs.path("ca.pem").to_string_lossy().into_owned();
        let pem = certs.path("gateway.pem");
        let spki = std::process::Command::new("sh")
            .arg("-c")
            .arg("openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64")
            .arg("sh")
            .arg(&pem)
            .output()?;
        anyhow::ensure!(spki.status.success(), "hashing the gateway's key: {}", String::from_utf8_lossy(&spki.stderr));
        Ok(vec![
            ("REQUESTS_CA_BUNDLE".into(), ca.clone()),
            ("SSL_CERT_FILE".into(), ca),
            ("BATCHMILL_GATEWAY_SPKI".into(), String::from_utf8(spki.stdout)?.trim().to_owned()),
        ])
    }

    /// The CLI's flags to reach this sandbox's gateway (`--addr`, and its
    /// TLS when it speaks it).
    pub fn cli_target(&self) -> Vec<String> {
        let mut args = vec!["--addr".to_owned(), self.gateway.clone()];
        if let Some(certs) = &self.certs {
            let path = |name: &str| certs.path(name).to_string_lossy().into_owned();
            args.extend(["--ca-cert".to_owned(), path("ca.pem")]);
            if certs.mutual {
                args.extend([
                    "--client-cert".to_owned(),
                    path("client.pem"),
                    "--client-key".to_owned(),
                    path("client.key"),
                ]);
            }
        }
        args
    }

    /// The same as lines of a CLI profile (YAML, indented four spaces).
    pub fn cli_profile_tls(&self) -> String {
        let Some(certs) = &self.certs else { return String::new() };
        let path = |name: &str| certs.path(name).display().to_string();
        let mut lines = format!("    ca_cert: '{}'\n", path("ca.pem"));
        if certs.mutual {
            lines.push_str(&format!(
                "    client_cert: '{}'\n    client_key: '{}'\n",
                path("client.pem"),
                path("client.key")
            ));
        }
        lines
    }

    /// Whether the gateway answers its health check (over TLS when it
    /// speaks it), within a second.
    pub async fn gateway_serving(&self) -> bool {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let Ok(endpoint) = self.gateway_endpoint() else { return false };
        let check = async {
            let channel = endpoint.connect().await.ok()?;
            let answer = HealthClient::new(channel).check(HealthCheckRequest::default()).await.ok()?;
            Some(answer.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
        };
        matches!(tokio::time::timeout(std::time::Duration::from_secs(1), check).await, Ok(Some(true)))
    }

    /// Waits until the gateway answers its health check over TLS.
    pub(crate) async fn wait_gateway_tls(&self) -> anyhow::Result<()> {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let mut last = String::new();
        for _ in 0..300 {
            match self.gateway_endpoint()?.connect().await {
                Ok(channel) => match HealthClient::new(channel).check(HealthCheckRequest::default()).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = format!("{e:?}"),
                },
                Err(e) => last = format!("{e:?}"),
            }
            self.process("gateway")?.check_alive()?;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        anyhow::bail!("the gateway did not answer over TLS: {last}\n{}", self.log_tail("gateway"))
    }
}
