//! HTTP/1.1 to one Nomad agent: TCP (`TCP_NODELAY`), optional TLS through rustls (ring), and a
//! small pool of idle keep-alive connections.
//!
//! Why hand-rolled rather than a general HTTP client: the workspace already builds on hyper 1 +
//! rustls (ring), and the controller talks to exactly one address. The pool matters because
//! Nomad limits concurrent connections per client IP (`http_max_conns_per_client`, default 100)
//! and TLS handshakes are not free; long-lived calls (blocking queries, the event stream) hold
//! their own connection for as long as they last, and the pool never grows past
//! [`MAX_IDLE`] idle ones.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::config::{NomadConfig, ParsedAddress, TlsSettings};
use crate::error::NomadError;

/// Idle connections kept for reuse.
const MAX_IDLE: usize = 8;

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response whose body has been read in full.
pub(crate) struct FullResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A response whose body is still streaming; holds its connection open.
pub(crate) struct StreamingResponse {
    pub status: http::StatusCode,
    pub body: Incoming,
    pub _conn: ConnGuard,
}

/// Keeps a streaming connection alive; dropping it closes the socket at once.
pub(crate) struct ConnGuard(#[allow(dead_code)] Conn);

#[derive(Clone)]
pub(crate) struct Transport {
    inner: Arc<TransportInner>,
}

struct TransportInner {
    addr: ParsedAddress,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

impl Transport {
    pub(crate) fn new(cfg: &NomadConfig) -> Result<Transport, NomadError> {
        let addr = ParsedAddress::parse(&cfg.address)?;
        let tls = if addr.https {
            let connector = tls_connector(&cfg.tls)?;
            let name = cfg
                .tls
                .server_name
                .clone()
                .unwrap_or_else(|| addr.host.clone());
            let server_name = ServerName::try_from(name.clone())
                .map_err(|_| NomadError::Config(format!("invalid TLS server name {name:?}")))?;
            Some((connector, server_name))
        } else {
            None
        };
        Ok(Transport {
            inner: Arc::new(TransportInner {
                addr,
                tls,
                connect_timeout: cfg.connect_timeout,
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    pub(crate) fn base_path(&self) -> &str {
        &self.inner.addr.base_path
    }

    fn display_addr(&self) -> String {
        let scheme = if self.inner.addr.https {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.inner.addr.authority)
    }

    async fn connect(&self) -> Result<Conn, NomadError> {
        let inner = &self.inner;
        let addr = self.display_addr();
        let work = async {
            let tcp = TcpStream::connect((inner.addr.host.as_str(), inner.addr.port))
                .await
                .map_err(|source| NomadError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
            // Small request/response exchanges: do not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            match &inner.tls {
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|source| NomadError::Tls {
                            addr: addr.clone(),
                            source,
                        })?;
                    handshake(TokioIo::new(tls), &addr).await
                }
                None => handshake(TokioIo::new(tcp), &addr).await,
            }
        };
        tokio::time::timeout(inner.connect_timeout, work)
            .await
            .map_err(|_| NomadError::Timeout {
                op: format!("connect to {addr}"),
                after: inner.connect_timeout,
            })?
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.inner.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && conn.sender.is_ready() {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, conn: Conn) {
        if conn.sender.is_closed() || !conn.sender.is_ready() {
            return;
        }
        if let Ok(mut idle) = self.inner.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(conn);
        }
    }

    fn finish_request(
        &self,
        mut req: http::Request<Full<Bytes>>,
    ) -> Result<http::Request<Full<Bytes>>, NomadError> {
        let host = http::HeaderValue::from_str(&self.inner.addr.authority)
            .map_err(|_| NomadError::Config("NOMAD_ADDR host is not a valid header".into()))?;
        req.headers_mut().insert(http::header::HOST, host);
        Ok(req)
    }

    /// Sends `req` (origin-form URI) and reads the whole body, at most `limit` bytes; the
    /// connection goes back to the pool afterwards. `timeout` bounds everything.
    pub(crate) async fn send(
        &self,
        op: &str,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
        limit: usize,
    ) -> Result<FullResponse, NomadError> {
        let req = self.finish_request(req)?;
        let work = async {
            let mut conn = match self.take_idle() {
                Some(c) => c,
                None => self.connect().await?,
            };
            let resp = conn
                .sender
                .send_request(req)
                .await
                .map_err(|e| NomadError::Http {
                    op: op.to_owned(),
                    message: e.to_string(),
                })?;
            let (parts, body) = resp.into_parts();
            let body = read_limited(body, limit, op).await?;
            self.put_idle(conn);
            Ok(FullResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        // On timeout the future (and its connection) is dropped, which aborts the socket.
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| NomadError::Timeout {
                op: op.to_owned(),
                after: timeout,
            })?
    }

    /// Sends `req` on a fresh connection and returns the streaming body; `timeout` bounds only
    /// the wait for the response head.
    pub(crate) async fn send_streaming(
        &self,
        op: &str,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<StreamingResponse, NomadError> {
        let req = self.finish_request(req)?;
        let work = async {
            let mut conn = self.connect().await?;
            let resp = conn
                .sender
                .send_request(req)
                .await
                .map_err(|e| NomadError::Http {
                    op: op.to_owned(),
                    message: e.to_string(),
                })?;
            let (parts, body) = resp.into_parts();
            Ok(StreamingResponse {
                status: parts.status,
                body,
                _conn: ConnGuard(conn),
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| NomadError::Timeout {
                op: op.to_owned(),
                after: timeout,
            })?
    }
}

async fn handshake<T>(io: TokioIo<T>, addr: &str) -> Result<Conn, NomadError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| NomadError::Http {
            op: format!("handshake with {addr}"),
            message: e.to_string(),
        })?;
    let task = tokio::spawn(async move {
        // Connection errors surface on the request that was in flight.
        let _ = conn.await;
    });
    Ok(Conn { sender, task })
}

/// Reads a body up to `limit` bytes.
pub(crate) async fn read_limited(
    mut body: Incoming,
    limit: usize,
    op: &str,
) -> Result<Bytes, NomadError> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| NomadError::Http {
            op: op.to_owned(),
            message: e.to_string(),
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(NomadError::TooLarge {
                    op: op.to_owned(),
                    limit,
                });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

fn read_pem_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, NomadError> {
    let display = path.display();
    CertificateDer::pem_file_iter(path)
        .map_err(|e| NomadError::Config(format!("cannot read {display}: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NomadError::Config(format!("{display}: {e}")))
}

fn tls_connector(tls: &TlsSettings) -> Result<TlsConnector, NomadError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut custom = Vec::new();
    if let Some(ca) = &tls.ca_cert {
        custom.extend(read_pem_certs(ca)?);
    }
    if let Some(dir) = &tls.ca_path {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| NomadError::Config(format!("cannot read {}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                custom.extend(read_pem_certs(&path)?);
            }
        }
    }
    if tls.ca_cert.is_some() || tls.ca_path.is_some() {
        if custom.is_empty() {
            return Err(NomadError::Config(
                "NOMAD_CACERT / NOMAD_CAPATH hold no PEM certificate".into(),
            ));
        }
        for cert in custom {
            roots
                .add(cert)
                .map_err(|e| NomadError::Config(format!("unusable CA certificate: {e}")))?;
        }
    } else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NomadError::Config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_pem_certs(cert)?;
            if chain.is_empty() {
                return Err(NomadError::Config(format!(
                    "{} holds no PEM certificate",
                    cert.display()
                )));
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                NomadError::Config(format!("cannot read client key {}: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| NomadError::Config(format!("client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(NomadError::Config(
                "NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY must be set together".into(),
            ));
        }
    };
    // The Go client forces HTTP/1.1 too.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}
