//! Binding, accepting and serving connections, in plain HTTP or TLS.
//!
//! One code path serves both: a TLS connection is just another `AsyncRead + AsyncWrite`
//! handed to hyper-util's HTTP/1 + HTTP/2 auto builder. Connections live in a `JoinSet`
//! owned by the accept loop, so shutting down aborts every one of them, stalled streams
//! included.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::router;
use crate::state::Shared;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams allowed on one HTTP/2 connection (density benchmarks may multiplex many).
const MAX_H2_STREAMS: u32 = 100_000;

pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    // Streams are latency tests: never let Nagle hold a small frame back.
                    let _ = tcp.set_nodelay(true);
                    let shared = Arc::clone(&shared);
                    let tls = tls.clone();
                    connections.spawn(async move {
                        match tls {
                            Some(acceptor) => {
                                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                                if let Ok(Ok(stream)) = handshake {
                                    serve(stream, shared).await;
                                }
                            }
                            None => serve(tcp, shared).await,
                        }
                    });
                }
                // Out of file descriptors and the like: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it before the future completes.
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

async fn serve<I>(io: I, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(router::handle(shared, request).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS);
    // Errors here are the client's (reset, bad request line) or our injected aborts.
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

pub(crate) fn local_addr(listener: &TcpListener) -> std::io::Result<SocketAddr> {
    listener.local_addr()
}
