//! Dialing the other services: in the clear, or over TLS with a client
//! configuration reloaded from its files as they change (the CA trusted
//! for the servers, and the certificate presented to them), so that a
//! certificate renewed on disk is presented from the next connection on,
//! by channels already made too, without a restart. A reload that fails
//! keeps the last good configuration and says why.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

use crate::tls::{TlsError, read_certs, read_key};

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a client's TLS files are, and the name to check in the servers'
/// certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    /// The CA trusted for the servers, and the certificate to present.
    pub paths: batchmill_core::client_tls::ClientTls,
    /// Checked in every server's certificate instead of the host dialed.
    pub server_name: Option<String>,
}

impl ClientFiles {
    fn stamp(&self) -> Vec<Option<SystemTime>> {
        let identity = self.paths.identity.iter().flat_map(|(cert, key)| [cert.as_path(), key.as_path()]);
        crate::tls::stamp(std::iter::once(self.paths.ca.as_path()).chain(identity))
    }

    /// A client configuration from the files as they are now, speaking h2.
    pub fn load(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&self.paths.ca)? {
            roots.add(cert).map_err(|e| TlsError::File { path: self.paths.ca.clone(), message: e.to_string() })?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match &self.paths.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder.with_client_auth_cert(read_certs(cert)?, read_key(key)?)?,
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// A client's TLS configuration, reloaded from its files as they change.
#[derive(Clone)]
pub struct DialTls {
    current: Arc<RwLock<Arc<rustls::ClientConfig>>>,
    server_name: Option<String>,
}

impl DialTls {
    /// Loads the files (an error if they cannot be used) and watches them
    /// for the life of the process. Call it within a Tokio runtime.
    pub fn start(files: ClientFiles) -> Result<DialTls, TlsError> {
        let tls =
            DialTls { current: Arc::new(RwLock::new(Arc::new(files.load()?))), server_name: files.server_name.clone() };
        let what = files.paths.ca.display().to_string();
        let stamp = {
            let files = files.clone();
            move || files.stamp()
        };
        let load = move || files.load();
        // For the life of the process: the channels dialing with it live as long.
        let forever = tokio_util::sync::CancellationToken::new();
        crate::tls::keep_loaded(tls.current.clone(), stamp, load, what, forever);
        Ok(tls)
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    /// Opens a TCP connection to `uri`'s host and port and speaks TLS over
    /// it, with the configuration as it is now.
    async fn connect(
        self,
        uri: http::Uri,
    ) -> std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
        let host = uri.host().ok_or_else(|| invalid("no host"))?.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
        let name = self.server_name.clone().unwrap_or_else(|| host.to_owned());
        let name = ServerName::try_from(name).map_err(|e| invalid(&e.to_string()))?;
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let tls = self.connector().connect(name, tcp).await?;
        Ok(hyper_util::rt::TokioIo::new(tls))
    }
}

/// A channel to the service at `url`, made lazily (it connects on the first
/// call and again after a broken connection): over TLS when this process
/// dials services over TLS ([`crate::tls::configure`]).
pub fn channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    channel_with(url, crate::tls::client().as_ref())
}

/// [`channel`], over TLS with `tls` if given (an `https://` URL is dialed the
/// same way: TLS is this connector's, not tonic's).
pub fn channel_with(url: &str, tls: Option<&DialTls>) -> Result<Channel, tonic::transport::Error> {
    let Some(tls) = tls.cloned() else {
        let endpoint = Endpoint::from_shared(url.to_owned())?;
        return Ok(endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true).connect_lazy());
    };
    let url = match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_owned(),
    };
    let endpoint = Endpoint::from_shared(url)?.connect_timeout(CONNECT_TIMEOUT);
    Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: http::Uri| tls.clone().connect(uri))))
}
