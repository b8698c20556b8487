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
//! - [`execution`] is one execution's numbered event log, the single source for every stream.
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
pub mod metrics;
pub mod policy;
pub mod scheduler;
pub mod store;
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
    listener: L,
    controller: Controller,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let (stop_http, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app(controller.clone())).with_graceful_shutdown(async {
        let _ = stop_http_rx.await;
    });
    let mut server = tokio::spawn(std::future::IntoFuture::into_future(server));
    tokio::select! {
        () = shutdown => {}
        res = &mut server => {
            // The server stopped by itself (it only does on an accept-loop failure).
            controller.shutdown().await;
            return res.map_err(std::io::Error::other)?;
        }
    }
    controller.shutdown().await;
    let _ = stop_http.send(());
    match tokio::time::timeout(HTTP_DRAIN, &mut server).await {
        Ok(res) => res.map_err(std::io::Error::other)?,
        Err(_) => {
            tracing::warn!("connections still open after the drain; closing them");
            server.abort();
            Ok(())
        }
    }
}
