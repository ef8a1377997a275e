//! Where a client's TLS material is, for a server it calls (etcd, NATS):
//! the CA it trusts and, for a server that asks, its own certificate.
//! Paths only; each adapter reads them as its client library wants.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificates to trust for the server's certificate.
    pub ca: PathBuf,
    /// A PEM certificate and its key to present, for a server that asks.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    /// From the paths a service is given: TLS once a CA is named.
    pub fn from_paths(ca: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>) -> Option<ClientTls> {
        Some(ClientTls { ca: ca?, identity: cert.zip(key) })
    }

    /// Reads `path`, naming it if that fails.
    pub fn read(path: &std::path::Path) -> Result<Vec<u8>, Unreadable> {
        std::fs::read(path).map_err(|source| Unreadable { path: path.to_path_buf(), source })
    }
}

/// A TLS file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct Unreadable {
    pub path: PathBuf,
    pub source: std::io::Error,
}
