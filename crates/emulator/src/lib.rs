//! `polydev-emulator`: a faithful local stand-in for the streaming APIs of OpenAI (Chat
//! Completions), Anthropic (Messages) and Google Gemini (`generateContent` /
//! `streamGenerateContent`).
//!
//! Tests, benchmarks and key-less demos run against it instead of the real providers. It
//! reproduces each provider's wire format byte for byte where it matters (SSE framing, CRLF
//! for Gemini, `[DONE]`, event names, usage placement, error bodies and retry hints) and
//! injects latency, pacing, byte splitting, stalls, disconnects and errors on demand, steered
//! per request through the model name (see [`Scenario`] and the crate README).
//!
//! ```no_run
//! # async fn demo() -> Result<(), polydev_emulator::EmulatorError> {
//! use polydev_emulator::{Emulator, EmulatorConfig};
//! let emulator = Emulator::start(EmulatorConfig::default()).await?;
//! println!("OpenAI base URL: {}/v1", emulator.base_url());
//! // ... point a client at it, with model "gpt-5-mini-len40-rate50" ...
//! assert_eq!(emulator.status().completed_streams, 0);
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```

mod body;
mod error;
mod ids;
mod providers;
mod router;
mod scenario;
mod server;
mod state;
mod text;
mod tls;

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use body::{InjectedAbort, ResponseBody};
pub use error::EmulatorError;
pub use providers::extras::tool_call_arguments;
pub use scenario::{BlockReason, DEFAULT_LEN, DEFAULT_RETRY_MS, Scenario};
pub use state::{RecordedRequest, StatusSnapshot};
pub use text::{answer_text, reasoning_text};

use state::{Settings, Shared};

/// Default bound on a request body (Anthropic's documented 32 MB limit).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Default number of requests kept by `GET /emulator/requests`.
pub const DEFAULT_REQUEST_LOG_CAPACITY: usize = 1000;

/// TLS mode settings.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// Extra subject alternative names for the server certificate (for example docker
    /// container names), on top of `localhost`, `127.0.0.1` and `::1`.
    pub extra_sans: Vec<String>,
}

/// How to start an [`Emulator`].
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Serve HTTPS with a freshly generated CA when set.
    pub tls: Option<TlsConfig>,
    /// Knobs that apply when the model name does not set them.
    pub defaults: Scenario,
    /// Append every received request to this file as one NDJSON line.
    pub record_path: Option<PathBuf>,
    /// Hold the first bytes of every stream until this many streams are open.
    pub barrier: Option<u64>,
    /// Largest accepted request body; larger ones get the provider's 413.
    pub max_body_bytes: usize,
    /// How many recent requests `GET /emulator/requests` keeps.
    pub request_log_capacity: usize,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: None,
            defaults: Scenario::default(),
            record_path: None,
            barrier: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_log_capacity: DEFAULT_REQUEST_LOG_CAPACITY,
        }
    }
}

/// A running emulator. Dropping it stops the server too; [`Emulator::shutdown`] also waits
/// until every connection is closed.
pub struct Emulator {
    addr: SocketAddr,
    ca_pem: Option<String>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("tls", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Bind, prepare TLS and the record file, and spawn the serving task on the current
    /// tokio runtime.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| EmulatorError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = server::local_addr(&listener)?;
        let tls = config
            .tls
            .as_ref()
            .map(|t| tls::generate(&t.extra_sans))
            .transpose()?;
        let record = match &config.record_path {
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| EmulatorError::File {
                        path: path.clone(),
                        source,
                    })?,
            ),
            None => None,
        };
        let settings = Settings {
            defaults: config.defaults.clone(),
            max_body_bytes: config.max_body_bytes,
            log_capacity: config.request_log_capacity,
        };
        let shared = Arc::new(Shared::new(settings, record, config.barrier));
        let (stop, stop_rx) = watch::channel(false);
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(Arc::clone(&t.config)));
        let task = tokio::spawn(server::accept_loop(
            listener,
            acceptor,
            Arc::clone(&shared),
            stop_rx,
        ));
        Ok(Emulator {
            addr,
            ca_pem: tls.map(|t| t.ca_pem),
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The bound address (with the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` in TLS mode (the certificate
    /// names `localhost`). Append `/v1` for an OpenAI base URL.
    pub fn base_url(&self) -> String {
        if self.ca_pem.is_some() {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The generated CA certificate (PEM) in TLS mode.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The counters served by `GET /emulator/status`.
    pub fn status(&self) -> StatusSnapshot {
        self.shared.snapshot()
    }

    /// The recent requests served by `GET /emulator/requests`, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// Same as `POST /emulator/reset`.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stop accepting, close every connection (open streams included) and wait for it.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
