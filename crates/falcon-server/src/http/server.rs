//! The accept loop and connection limits: what stands between a socket and the router.
//!
//! `axum::serve` has no header-read or idle timeout and no connection cap, and it retries a
//! failing `accept` once a second without counting it: slow or silent clients could hold
//! file descriptors until real clients were refused. Here every connection is HTTP/1.1 with
//! a header-read timeout (which also closes a keep-alive connection idle that long), at
//! most `max_connections` are open at once (more are closed as soon as they are accepted,
//! and counted), and `accept` errors back off exponentially and are counted and logged at a
//! bounded rate. On shutdown the listener closes; idle connections and ones that have not
//! sent a whole request head close at once; requests in progress finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use metrics::{counter, gauge};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

pub use falcon_app::config::ConnectionLimits;
use falcon_app::telemetry::metrics::{HTTP_ACCEPT_ERRORS, HTTP_CONNECTIONS_OPEN, HTTP_CONNECTIONS_REFUSED};
use falcon_app::telemetry::throttle::Throttle;

/// Serves `router` on `listener` until `shutdown` completes, then closes the listener,
/// calls `closed`, and serves until every connection has closed (the caller bounds that by
/// the grace period).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    closed: impl FnOnce() + Send,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        // A client that sends its request and closes its side at once still gets the
        // request run (and counted, and logged): without this, hyper dropped most such
        // requests unseen on the EOF.
        .half_close(true)
        // Far above the router's own limits (100 headers, 32 KiB, 8 KiB target), so an
        // oversized request reaches it and gets the JSON error body; beyond these, hyper
        // answers on its own.
        .max_headers(1000)
        .max_buf_size(1024 * 1024);
    let refused_warning = Throttle::new(Duration::from_secs(10));
    let accept_warning = Throttle::new(Duration::from_secs(10));
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = Duration::ZERO;
                    a
                }
                Err(error) => {
                    // Out of file descriptors, or another transient accept failure: wait
                    // (5 ms doubling to 1 s) rather than spin, count it, say so now and then.
                    counter!(HTTP_ACCEPT_ERRORS).increment(1);
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                    if accept_warning.ready() {
                        tracing::warn!(error = %error, backoff_ms = backoff.as_millis() as u64, "Cannot accept connections");
                    }
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => continue,
                    }
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // Over the cap: close it now rather than let it wait in the backlog.
            counter!(HTTP_CONNECTIONS_REFUSED).increment(1);
            if refused_warning.ready() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "Connection limit reached; closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        gauge!(HTTP_CONNECTIONS_OPEN).increment(1.0);
        tokio::spawn(async move {
            // Errors here are the client's (a reset, a header timeout): nothing to report.
            let _ = conn.await;
            gauge!(HTTP_CONNECTIONS_OPEN).decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    closed();
    graceful.shutdown().await;
}
