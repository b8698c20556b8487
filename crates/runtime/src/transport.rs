//! The one HTTP/1.1 connection an execution needs: DNS, TCP (`TCP_NODELAY`), TLS through rustls
//! with bundled webpki roots plus `EXTRA_CA_CERTS`, and hyper's client connection.
//!
//! No connection pool and no system trust store: the binary runs in an empty root filesystem
//! and makes one request (or a few retries).
//!
//! The upstream request ([`Transport::send`]) drives hyper's connection inside its response
//! body ([`UpstreamBody`]): reading a frame polls the connection first, in the same task, so a
//! streamed token costs no wake-up of a second task. Dropping the body closes the upstream
//! socket at once, so a cancel really tears the stream down. A request whose body streams
//! while the response is awaited ([`Transport::send_body`], the report to the controller)
//! runs its connection as a task owned by [`Connection`]; dropping that aborts the task.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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
    ) -> Result<http::Response<UpstreamBody>, TransportError> {
        let (parts, body) = req.into_parts();
        let req = http::Request::from_parts(parts, Full::new(body));
        let (req, (mut sender, conn)) = self.connect(req, connect_timeout).await?;
        let mut conn = DrivenConnection(Some(Box::pin(async move {
            // Errors surface to the caller through the response body.
            let _ = conn.await;
        })));
        let send = sender.send_request(req);
        tokio::pin!(send);
        // The request is written and its response head read by the connection: drive it until
        // the head arrives (or the connection ends, which settles the request either way).
        let resp = std::future::poll_fn(|cx| {
            conn.poll_drive(cx);
            send.as_mut().poll(cx)
        })
        .await
        .map_err(TransportError::Http)?;
        let (parts, body) = resp.into_parts();
        Ok(http::Response::from_parts(
            parts,
            UpstreamBody { body, conn },
        ))
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
        let (req, (mut sender, conn)) = self.connect(req, connect_timeout).await?;
        let task = tokio::spawn(async move {
            // Errors surface to the caller through the response body; nothing to do here.
            let _ = conn.await;
        });
        let conn = Connection { task };
        let resp = sender
            .send_request(req)
            .await
            .map_err(TransportError::Http)?;
        Ok((resp, conn))
    }

    /// DNS, TCP, TLS and hyper's handshake for `req`'s host, bounded by `connect_timeout`;
    /// returns the request in origin-form with its `Host` header, ready to send, and the
    /// connection, which the caller must drive.
    #[allow(clippy::type_complexity)]
    async fn connect<B>(
        &self,
        req: http::Request<B>,
        connect_timeout: Duration,
    ) -> Result<(http::Request<B>, (Sender<B>, Conn)), TransportError>
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

        let handshaken =
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
        Ok((http::Request::from_parts(parts, body), handshaken))
    }
}

type Sender<B> = hyper::client::conn::http1::SendRequest<B>;

/// hyper's connection future over plain TCP or TLS, boxed: the caller drives it.
type Conn = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

async fn handshake<IO, B>(io: IO) -> Result<(Sender<B>, Conn), TransportError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(TransportError::Http)?;
    Ok((sender, Box::pin(conn)))
}

/// A connection driven by whoever polls it, until it ends.
struct DrivenConnection(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl DrivenConnection {
    /// Lets the connection make progress (write the request, read the socket into the
    /// response body); once it has ended, does nothing.
    fn poll_drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.0
            && conn.as_mut().poll(cx).is_ready()
        {
            self.0 = None;
        }
    }
}

/// The upstream response body with the connection that feeds it: each poll for a frame first
/// drives the connection, in the caller's task. Dropping it closes the upstream socket.
pub struct UpstreamBody {
    body: Incoming,
    conn: DrivenConnection,
}

impl UpstreamBody {
    /// The whole body, refused once it would exceed `limit` bytes (a small answer such as a
    /// pulled job or a handshake position).
    pub async fn read_all(mut self, limit: usize) -> Result<Vec<u8>, String> {
        use http_body_util::BodyExt;
        let mut buf = Vec::new();
        while let Some(frame) = self.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(format!("response larger than {limit} bytes"));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf)
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        this.conn.poll_drive(cx);
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
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
