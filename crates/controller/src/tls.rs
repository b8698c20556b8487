//! HTTPS for the controller (`POLYDEV_TLS_CERT`, `POLYDEV_TLS_KEY`): rustls with the ring
//! provider, the same code path for the client API and the runtime API, since both are one
//! router on one listener.
//!
//! Why a listener of its own: axum's `serve` accepts connections one at a time through its
//! [`Listener`] trait. Doing the TLS handshake inside `accept` would let one slow (or silent)
//! client stall every other connection, so [`TlsListener`] accepts TCP in a background task and
//! runs handshakes concurrently (bounded in number and in time), handing only finished TLS
//! streams to axum. Pull-mode runtimes need this: credentials cross the runtime API, and the
//! runtime refuses a plain-HTTP controller that is not on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;
/// Finished handshakes waiting for axum to pick them up.
const READY_QUEUE: usize = 64;

/// Why the TLS configuration cannot be loaded. Messages name the setting, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read POLYDEV_TLS_CERT ({0})")]
    ReadCert(String),
    #[error("POLYDEV_TLS_CERT holds no PEM certificate")]
    NoCert,
    #[error("cannot read POLYDEV_TLS_KEY (a PEM private key: PKCS#8, PKCS#1 or SEC1): {0}")]
    ReadKey(String),
    #[error("the certificate and key cannot be used together: {0}")]
    Config(String),
}

/// A server configuration from a PEM certificate chain (leaf first) and its private key.
/// HTTP/1.1 only, as the router serves.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::ReadCert(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::ReadCert(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert);
    }
    // The error text of a key parse names the file's problem, not its content.
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::ReadKey(e.to_string()))?;
    config_from(certs, key)
}

/// A server configuration from a certificate chain and key already in memory (tests).
pub fn config_from(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A [`Listener`] yielding TLS streams whose handshake has completed. Dropping it stops
/// accepting and aborts handshakes in progress.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Starts accepting on `listener` (on the current tokio runtime).
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsListener { ready, local, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    // Owned here, so aborting this task aborts every handshake too.
    let mut handshakes = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = ready.closed() => return,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = ready.closed() => return,
            // Reap finished handshakes while waiting.
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
        };
        // Events are small and must leave at once.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        handshakes.spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
        while handshakes.try_join_next().is_some() {}
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task is gone (it only stops when this listener is dropped): nothing
            // will ever be accepted again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
