//! The one HTTP/1.1 connection an execution needs: DNS, TCP (`TCP_NODELAY`), TLS through rustls
//! with bundled webpki roots plus `EXTRA_CA_CERTS`, and hyper's client connection.
//!
//! No connection pool and no system trust store: the binary runs in an empty root filesystem
//! and makes one request (or a few retries). The connection task is owned by
//! [`Connection`]; dropping it aborts the task, which closes the upstream socket at once, so a
//! cancel really tears the stream down.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// Why no response arrived. Messages name the host, never headers or the key.
#[derive(Debug)]
pub enum TransportError {
    /// The URL cannot be requested (bad scheme, no host).
    InvalidUrl(String),
    /// `EXTRA_CA_CERTS` could not be read or held no certificate.
    CaCerts(String),
    /// Name resolution failed.
    Dns {
        host: String,
        source: std::io::Error,
    },
    /// TCP connect failed.
    Connect {
        host: String,
        source: std::io::Error,
    },
    /// TCP + TLS did not complete in time.
    ConnectTimeout { host: String, after: Duration },
    /// The TLS handshake failed (for example an untrusted certificate).
    Tls {
        host: String,
        source: std::io::Error,
    },
    /// HTTP-level failure (connection closed, malformed response).
    Http(hyper::Error),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::InvalidUrl(m) => write!(f, "invalid URL: {m}"),
            TransportError::CaCerts(m) => write!(f, "EXTRA_CA_CERTS: {m}"),
            TransportError::Dns { host, source } => {
                write!(f, "cannot resolve {host}: {source}")
            }
            TransportError::Connect { host, source } => {
                write!(f, "cannot connect to {host}: {source}")
            }
            TransportError::ConnectTimeout { host, after } => {
                write!(
                    f,
                    "connecting to {host} timed out after {} ms",
                    after.as_millis()
                )
            }
            TransportError::Tls { host, source } => {
                write!(f, "TLS handshake with {host} failed: {source}")
            }
            TransportError::Http(e) => write!(f, "HTTP error: {e}"),
        }
    }
}

impl std::error::Error for TransportError {}

/// TLS settings, built once per process (warm runtimes build them before `ready`).
#[derive(Clone)]
pub struct Transport {
    tls: TlsConnector,
}

impl Transport {
    /// Bundled Mozilla roots, plus every certificate in the PEM file `extra_ca`.
    pub fn new(extra_ca: Option<&Path>) -> Result<Transport, TransportError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            let display = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| TransportError::CaCerts(format!("cannot read {display}: {e}")))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TransportError::CaCerts(format!("{display}: {e}")))?;
            if certs.is_empty() {
                return Err(TransportError::CaCerts(format!(
                    "{display} holds no PEM certificate"
                )));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    TransportError::CaCerts(format!("{display}: unusable certificate: {e}"))
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::CaCerts(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Transport {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Opens a connection to the request's host and sends the request; returns the response
    /// head with its streaming body. `connect_timeout` bounds DNS + TCP + TLS.
    pub async fn send(
        &self,
        req: http::Request<Bytes>,
        connect_timeout: Duration,
    ) -> Result<(http::Response<Incoming>, Connection), TransportError> {
        let (parts, body) = req.into_parts();
        self.send_body(
            http::Request::from_parts(parts, Full::new(body)),
            connect_timeout,
        )
        .await
    }

    /// Like [`Transport::send`], with any request body, for example one that streams
    /// events to the controller as they happen.
    pub async fn send_body<B>(
        &self,
        req: http::Request<B>,
        connect_timeout: Duration,
    ) -> Result<(http::Response<Incoming>, Connection), TransportError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let uri = req.uri().clone();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(TransportError::InvalidUrl(
                    "scheme must be http or https".into(),
                ));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| TransportError::InvalidUrl("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| host.clone());

        let (mut sender, task) =
            tokio::time::timeout(connect_timeout, async {
                let tcp = connect_tcp(&host, port).await?;
                if https {
                    let name = ServerName::try_from(host.clone())
                        .map_err(|_| TransportError::InvalidUrl(format!("bad host name {host}")))?;
                    let tls = self.tls.connect(name, tcp).await.map_err(|source| {
                        TransportError::Tls {
                            host: host.clone(),
                            source,
                        }
                    })?;
                    handshake(TokioIo::new(tls)).await
                } else {
                    handshake(TokioIo::new(tcp)).await
                }
            })
            .await
            .map_err(|_| TransportError::ConnectTimeout {
                host: host.clone(),
                after: connect_timeout,
            })??;

        // hyper's connection-level client sends the URI as given: use origin-form and set Host.
        let (mut parts, body) = req.into_parts();
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        parts.uri = path
            .parse()
            .map_err(|_| TransportError::InvalidUrl("bad path".into()))?;
        let host_value = http::HeaderValue::from_str(&authority)
            .map_err(|_| TransportError::InvalidUrl("bad host".into()))?;
        parts.headers.insert(http::header::HOST, host_value);
        let req = http::Request::from_parts(parts, body);
        let conn = Connection { task };
        let resp = sender
            .send_request(req)
            .await
            .map_err(TransportError::Http)?;
        Ok((resp, conn))
    }
}

type Sender<B> = hyper::client::conn::http1::SendRequest<B>;

async fn handshake<IO, B>(io: IO) -> Result<(Sender<B>, JoinHandle<()>), TransportError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(TransportError::Http)?;
    let task = tokio::spawn(async move {
        // Errors surface to the caller through the response body; nothing to do here.
        let _ = conn.await;
    });
    Ok((sender, task))
}

async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, TransportError> {
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| TransportError::Dns {
            host: host.to_owned(),
            source,
        })?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // Tokens must leave as they arrive; Nagle would batch them.
                s.set_nodelay(true)
                    .map_err(|source| TransportError::Connect {
                        host: host.to_owned(),
                        source,
                    })?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(TransportError::Connect {
        host: host.to_owned(),
        source: last,
    })
}

/// Owns the connection task; dropping it closes the upstream socket.
pub struct Connection {
    task: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}
