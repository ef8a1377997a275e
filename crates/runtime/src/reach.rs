//! How a service reaches the rest of the cluster, set once by its `main`
//! from its arguments, before it serves or connects: TLS between the
//! services, TLS to etcd, and TLS and credentials for NATS.

use crate::args::{EtcdArgs, NatsArgs, TlsArgs};

/// A TLS or credential file named in the arguments that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error("TLS between services: {0}")]
    Services(#[from] crate::tls::TlsError),
    #[error("TLS to etcd: {0}")]
    Etcd(#[from] batchmill_coord::CoordError),
}

/// Sets how this process reaches the other services, etcd and NATS.
pub fn cluster(tls: &TlsArgs, etcd: &EtcdArgs, nats: &NatsArgs) -> Result<(), ReachError> {
    crate::tls::configure(tls)?;
    if let Some(tls) = etcd.tls() {
        batchmill_coord::Etcd::use_tls(&tls)?;
    }
    batchmill_queue::use_access(batchmill_queue::NatsAccess {
        tls: nats.tls(),
        user: nats.nats_user.clone().zip(nats.nats_password.clone()),
    });
    Ok(())
}
