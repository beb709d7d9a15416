//! The HTTP/1.1 server loop: what `axum::serve` does (a task per connection, graceful shutdown
//! that stops accepting and lets every connection finish its request in hand), with the one
//! setting `axum::serve` does not expose: the size of each connection's buffer.

use std::future::Future;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tower::ServiceExt;

/// The most a connection's read buffer grows to: a request head must fit (hyper answers 431
/// when a head is still incomplete at this size; one read may take in somewhat more), and a
/// body is read through it in pieces of about this size. hyper's default (about
/// 400 KiB) is reached by every connection that once sent a large body, and a keep-alive
/// connection keeps that buffer until it closes: 64 idle connections after bodies near the
/// 1 MiB limit held 25.7 MiB of them in the heap profile (bench/results/memory-*.md). 64 KiB
/// still takes a body in a few reads and any sane request head in one.
pub const CONNECTION_BUFFER_BYTES: usize = 64 * 1024;

/// Serve `router` on `listener` until `shutdown` completes, then stop accepting, let every
/// connection finish the request in hand, and return once all are closed. A response still
/// being sent after `drain` (the request timeout: no request may take longer) is cut: an event
/// stream never ends by itself, and must not hold the shutdown.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: std::time::Duration,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
{
    // Connections watch `stop` for the shutdown, and each holds a clone of `open` until it
    // closes: `open_tx.closed()` resolves when the last one is gone.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            connection = listener.accept() => connection,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(|request: Request<Incoming>| request.map(axum::body::Body::new)),
        );
        let mut stop = stop_rx.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.max_buf_size(CONNECTION_BUFFER_BYTES);
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::trace!(%error, "connection ended with an error");
                    }
                }
                // (The guard `wait_for` returns is dropped inside: it must not be held across
                // an await.)
                _ = async { stop.wait_for(|stopped| *stopped).await.map(|_| ()) } => {
                    // Finish the request in hand (if any), then close.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(drain, connection).await;
                }
            }
            drop(open);
        });
    }
    // No new connections from here on (as axum::serve, which drops its listener).
    drop(listener);
    drop(open_rx);
    let _ = stop_tx.send(true);
    open_tx.closed().await;
    Ok(())
}
