//! `polydev-controller`: the master controller. An HTTP API for the frontend, a scheduler with
//! admission control, a warm pool, and backends that run `polydev-runtime` executions
//! (DESIGN.md 5).
//!
//! How the parts fit:
//!
//! - [`api`] turns HTTP into calls on the [`Controller`] and execution logs into SSE;
//! - [`controller`] validates and admits jobs ([`scheduler`]), keeps executions in a bounded
//!   registry, records them ([`store`], [`metrics`]) and runs the phased shutdown;
//! - `driver` takes each admitted execution through a [`backend::Backend`] to exactly one
//!   terminal event;
//! - [`execution`] is one execution's numbered event log, the single source for every stream;
//! - [`feed`] is the controller-wide live feed (`GET /v1/events`) the web console watches.
//!
//! [`run`] (or [`run_tls`], for HTTPS) serves an [`api::app`] on a listener until a shutdown
//! future resolves; `main` only wires real resources (listener, TLS files, SQLite file,
//! backend, signals), so tests run the same code on port 0 with a fake backend and a shutdown
//! they trigger.

pub mod api;
pub mod backend;
pub mod capacity;
pub mod config;
pub mod controller;
mod driver;
pub mod execution;
pub mod feed;
pub mod metrics;
pub mod policy;
pub mod scheduler;
pub mod store;
mod sys;
pub mod testing;
pub mod tls;

use std::future::Future;
use std::time::Duration;

use axum::serve::ListenerExt;

pub use api::app;
pub use config::ControllerConfig;
pub use controller::Controller;

/// After every execution has ended, how long open connections may take to finish sending
/// (their streams end with the terminal event) before the server is dropped.
const HTTP_DRAIN: Duration = Duration::from_secs(2);

/// Serves the API on `listener` until `shutdown` resolves, then shuts down in phases: stop
/// admitting (`503`), let running executions finish within the grace, cancel the rest, end
/// every client stream with its terminal event, stop the backend (no runtime left), flush the
/// store, and close the listener.
pub async fn run(
    listener: tokio::net::TcpListener,
    controller: Controller,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_tls(listener, None, controller, shutdown).await
}

/// [`run`], serving HTTPS when `tls` is set (see [`tls`]); the client API and the runtime API
/// are the same router either way.
pub async fn run_tls(
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    controller: Controller,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config)?;
            serve_on(listener, controller, shutdown).await
        }
        None => {
            let listener = listener.tap_io(|tcp| {
                // Events are small and must leave at once.
                let _ = tcp.set_nodelay(true);
            });
            serve_on(listener, controller, shutdown).await
        }
    }
}

async fn serve_on<L>(
    mut listener: L,
    controller: Controller,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let limits = controller.config().connections;
    let server = Connections {
        app: app(controller.clone()),
        slots: std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1))),
        graceful: hyper_util::server::graceful::GracefulShutdown::new(),
        http: {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true);
            http
        },
    };
    tokio::select! {
        () = shutdown => {}
        () = server.accept_forever(&mut listener) => {}
    }
    // Stop admitting, end every execution and its streams (each with its terminal event)
    // within the grace; meanwhile keep answering (new work gets 503, health says so).
    tokio::select! {
        () = controller.shutdown() => {}
        () = server.accept_forever(&mut listener) => {}
    }
    drop(listener);
    if tokio::time::timeout(HTTP_DRAIN, server.graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain; closing them");
    }
    Ok(())
}

/// The listener's side of [`ConnectionLimits`](config::ConnectionLimits): each connection
/// holds a slot of `slots` until it closes, and is served HTTP/1.1 only, with the header (and
/// keep-alive idle) timeout, under `graceful` for the drain at shutdown.
struct Connections {
    app: axum::Router,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    graceful: hyper_util::server::graceful::GracefulShutdown,
    http: hyper::server::conn::http1::Builder,
}

impl Connections {
    async fn accept_forever<L: axum::serve::Listener>(&self, listener: &mut L) {
        loop {
            // The semaphore is never closed, so acquiring cannot fail.
            let Ok(slot) = std::sync::Arc::clone(&self.slots).acquire_owned().await else {
                return std::future::pending().await;
            };
            // axum's `accept` retries transient errors (EMFILE included) itself.
            let (io, _addr) = listener.accept().await;
            let service = hyper_util::service::TowerToHyperService::new(self.app.clone());
            let conn = self
                .http
                .serve_connection(hyper_util::rt::TokioIo::new(io), service);
            let conn = self.graceful.watch(conn);
            tokio::spawn(async move {
                // Errors here are the client's (reset, timeout, malformed request).
                let _ = conn.await;
                drop(slot);
            });
        }
    }
}
