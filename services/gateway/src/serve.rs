//! The gateway's HTTP server: HTTP/1.1 and HTTP/2 on one port, in the
//! clear (h2c) or over TLS (`BATCHMILL_TLS_CERT`/`_KEY`, with client
//! certificates required when `BATCHMILL_TLS_CLIENT_CA` is set; see
//! [`batchmill_runtime::tls`]: the files are reloaded as they change). The
//! HTTP layer's own bounds are set where the gateway wants them rather than
//! at hyper's defaults. They are backstops above the named limits of
//! [`crate::limits`]: what passes them reaches the middleware, which names
//! the limit it breaks.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Header bytes the HTTP layer reads before answering a bare 431: four
/// times [`crate::limits::MAX_HEADER_BYTES`], so that a request a little
/// over the limit gets the named refusal.
pub const HEADER_BACKSTOP: usize = 4 * crate::limits::MAX_HEADER_BYTES;

/// Header fields per HTTP/1.1 request the HTTP layer takes.
const MAX_HEADER_FIELDS: usize = 256;

/// Streams one HTTP/2 connection may have open at once; a client over it
/// waits for one to end.
pub const STREAMS_PER_CONNECTION: u32 = 256;

/// How long open connections get to finish once the gateway stops.
const DRAIN: Duration = Duration::from_secs(10);

/// How long a client has to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// What the gateway offers by ALPN: gRPC needs `h2`; REST may use either.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A slow client gets 30 s to send its headers (hyper's default, which
    // needs a timer to run).
    builder.http1().timer(TokioTimer::new()).max_buf_size(HEADER_BACKSTOP).max_headers(MAX_HEADER_FIELDS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HEADER_BACKSTOP as u32)
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .keep_alive_interval(Some(Duration::from_secs(20)));
    builder
}

/// Serves `app` on `listener` until `shutdown`, over TLS if `tls` is
/// given, then lets open connections finish (at most [`DRAIN`]).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<batchmill_runtime::tls::ServerTls>,
    shutdown: CancellationToken,
) {
    let builder = builder();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    while let Some(stream) = batchmill_runtime::tls::accept(&listener, &shutdown).await {
        let _ = stream.set_nodelay(true);
        let (builder, app, watcher) = (builder.clone(), app.clone(), graceful.watcher());
        let acceptor = tls.as_ref().map(batchmill_runtime::tls::ServerTls::acceptor);
        // The handshake runs on the connection's own task, so a slow client
        // holds up no other.
        tokio::spawn(async move {
            let service = TowerToHyperService::new(app);
            let served = match acceptor {
                None => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service)).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(connection).await
                    }
                    Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
                    Err(_) => return debug!("TLS handshake timed out"),
                },
            };
            if let Err(e) = served {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        warn!("connections still open after {DRAIN:?}; closing them");
    }
}
