//! TLS for a server, from PEM files, reloaded when they change: a
//! certificate chain and its key, and optionally a CA whose client
//! certificates are then required (mutual TLS). Each new connection takes
//! the configuration as it is then; connections already open keep theirs.
//! A reload that fails (a half-written file, a key that does not match)
//! keeps the last good configuration and says why.
//!
//! rustls with the aws-lc-rs provider, the one the AWS SDK and async-nats
//! already bring (a second provider makes rustls' defaults panic).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the files are looked at for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Config(#[from] rustls::Error),
    #[error("the client CA {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
}

/// Where a server's certificate, key and client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates signed by this CA are required; none: no
    /// client certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// The modification times of `paths`, to see a change.
pub(crate) fn stamp<'a>(paths: impl Iterator<Item = &'a Path>) -> Vec<Option<SystemTime>> {
    paths.map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
}

fn unusable(path: &Path, e: &dyn std::fmt::Display) -> TlsError {
    TlsError::File { path: path.into(), message: e.to_string() }
}

/// The PEM certificates in `path`: at least one.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| unusable(path, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| unusable(path, &e))?;
    if certs.is_empty() {
        return Err(unusable(path, &"holds no certificate"));
    }
    Ok(certs)
}

/// The PEM private key in `path`.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| unusable(path, &e))
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()].into_iter().flatten().map(PathBuf::as_path)
    }

    fn stamp(&self) -> Vec<Option<SystemTime>> {
        stamp(self.paths())
    }

    /// A server configuration from the files as they are now, offering
    /// `alpn` (such as `h2` and `http/1.1`).
    pub fn load(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
        let (chain, key) = (read_certs(&self.cert)?, read_key(&self.key)?);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder =
            rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let client_ca = |message: String| TlsError::ClientCa { path: path.clone(), message };
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| client_ca(e.to_string()))? {
                    roots.add(cert.map_err(|e| client_ca(e.to_string()))?).map_err(|e| client_ca(e.to_string()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| client_ca(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// A server's TLS configuration, reloaded from its files as they change.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl ServerTls {
    /// Loads the files (an error if they cannot be used) and watches them
    /// until `stop`.
    pub fn start(files: TlsFiles, alpn: &[&[u8]], stop: CancellationToken) -> Result<ServerTls, TlsError> {
        let first = files.load(alpn)?;
        let tls = ServerTls { current: Arc::new(RwLock::new(Arc::new(first))) };
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let cert = files.cert.display().to_string();
        let stamp = {
            let files = files.clone();
            move || files.stamp()
        };
        let load = move || files.load(&alpn.iter().map(Vec::as_slice).collect::<Vec<_>>());
        keep_loaded(tls.current.clone(), stamp, load, cert, stop);
        Ok(tls)
    }

    /// An acceptor with the configuration as it is now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

/// Loads `slot` again with `load` whenever the files' `stamp` changes,
/// looking every [`RELOAD_EVERY`] until `stop`. A load that fails keeps the
/// last good configuration and is tried again at the next look (a file may
/// be half written). `what` names the files in the log.
pub(crate) fn keep_loaded<T: Send + Sync + 'static>(
    slot: Arc<RwLock<Arc<T>>>,
    stamp: impl Fn() -> Vec<Option<SystemTime>> + Send + 'static,
    load: impl Fn() -> Result<T, TlsError> + Send + 'static,
    what: String,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut seen = stamp();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            let now = stamp();
            if now == seen {
                continue;
            }
            match load() {
                Ok(config) => {
                    *slot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
                    info!(files = %what, "TLS certificate reloaded");
                    seen = now;
                }
                Err(e) => warn!(error = %e, "reloading TLS failed; keeping the last good files"),
            }
        }
    });
}

/// TLS between this process and the other services, set once by `main`
/// ([`configure`]): the certificate it serves with (and presents as a
/// client), the CA it requires of its clients, and the CA it trusts for
/// the servers it calls. Unset: everything in the clear.
#[derive(Clone)]
struct Internal {
    server: Option<TlsFiles>,
    client: Option<crate::dial::DialTls>,
}

static INTERNAL: std::sync::OnceLock<Internal> = std::sync::OnceLock::new();

/// Sets this process's TLS between services from `args` (see
/// [`crate::args::TlsArgs`]): servers serve TLS with its certificate (and
/// require client certificates when it names a client CA); clients, once
/// it names a CA to trust (`--tls-ca`), dial every service over TLS,
/// presenting the certificate ([`crate::dial`]). Both reload their files as
/// they change. Call it once, within the Tokio runtime, before serving or
/// calling.
pub fn configure(args: &crate::args::TlsArgs) -> Result<(), TlsError> {
    let client = args.client_files().map(crate::dial::DialTls::start).transpose()?;
    let _ = INTERNAL.set(Internal { server: args.clone().files(), client });
    Ok(())
}

/// How this process dials the other services over TLS, if it does.
pub fn client() -> Option<crate::dial::DialTls> {
    INTERNAL.get()?.client.clone()
}

/// The files this process serves TLS with, if it does.
pub fn server_files() -> Option<TlsFiles> {
    INTERNAL.get()?.server.clone()
}

/// Whether calls to other services go over TLS.
pub fn dials_tls() -> bool {
    INTERNAL.get().is_some_and(|i| i.client.is_some())
}

/// The URL scheme this process's own gRPC server is reached by.
pub fn scheme() -> &'static str {
    if server_files().is_some() { "https" } else { "http" }
}

/// `listener`'s connections, over TLS with `files` (reloaded as they
/// change) until `stop`: each handshake on its own task, so a slow client
/// holds up no other; a failed one is dropped.
pub fn incoming(
    listener: tokio::net::TcpListener,
    files: TlsFiles,
    stop: CancellationToken,
) -> Result<
    tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>,
    TlsError,
> {
    let tls = ServerTls::start(files, &[b"h2", b"http/1.1"], stop.clone())?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(stream) = accept(&listener, &stop).await {
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The next connection on `listener`, or None once `stop` is cancelled. A
/// failed accept (out of file descriptors, say) is waited out, not spun on.
pub async fn accept(listener: &tokio::net::TcpListener, stop: &CancellationToken) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => return Some(stream),
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}
