//! Accepting connections the way a server facing the internet must: HTTP/1 with a deadline for a
//! request's headers (the body's deadline is kept where bodies are read, [`crate::routes::read_body`]), and
//! a cap on open connections. A client that opens connections and never finishes a request (slowloris) is
//! dropped at the deadline, and at most the cap of connections (file descriptors) is ever open: beyond it
//! new connections wait in the listen backlog until one closes, instead of taking the descriptors that
//! requests in flight need.

use crate::Metrics;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How long a failed `accept` (e.g. out of file descriptors) pauses accepting, so as not to spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The limits [`serve`] enforces on every connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// A request's head (request line and headers) must arrive within this, else the connection closes;
    /// it also bounds how long an idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` completes, then lets every open connection finish the
/// request it is answering (no new ones) and returns once all have closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let max_connections = u32::try_from(limits.max_connections).unwrap_or(u32::MAX).max(1);
    let slots = Arc::new(Semaphore::new(max_connections as usize));
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed; nothing left to serve with
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("cannot accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = Connection { stream, permit, metrics: metrics.clone(), stopping: stopping.clone() };
        tokio::spawn(connection.run(router.clone(), limits.header_timeout));
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot until it closes: having them all back means all have closed.
    let _ = slots.acquire_many(max_connections).await;
}

/// One accepted connection and what it holds while open.
struct Connection {
    stream: TcpStream,
    /// Its place among `max_connections`, given back when it closes.
    permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    /// Turns true when the server shuts down.
    stopping: watch::Receiver<bool>,
}

impl Connection {
    async fn run(self, router: Router, header_timeout: Duration) {
        let Connection { stream, permit, metrics, mut stopping } = self;
        let open = metrics.open_connections.fetch_add(1, Ordering::Relaxed) + 1;
        metrics.peak_connections.fetch_max(open, Ordering::Relaxed);
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
        let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router)));
        // A connection error (a deadline passed, the client vanished) only ends this connection.
        tokio::select! {
            _ = conn.as_mut() => {}
            // (An error means the server is gone without saying so: stop all the same.)
            _ = async { stopping.wait_for(|&stop| stop).await.is_ok() } => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        metrics.open_connections.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
    }
}
