//! Every setting of the controller: its env var name, flag, default and meaning, in one place
//! (DESIGN.md 5), parsed once at start-up into validated values ("parse, then build").
//!
//! [`Cli`] is what `--help` shows and what the environment fills in; [`ControllerConfig`] is
//! the validated subset the library runs with, so tests build one directly without touching the
//! process environment. Secrets ([`Secret`]) never print through `Debug`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::capacity;

// === env var names ===

pub const ENV_LISTEN: &str = "POLYDEV_LISTEN";
pub const ENV_API_TOKEN: &str = "POLYDEV_API_TOKEN";
pub const ENV_API_TOKEN_FILE: &str = "POLYDEV_API_TOKEN_FILE";
pub const ENV_BACKEND: &str = "POLYDEV_BACKEND";
pub const ENV_DB: &str = "POLYDEV_DB";
pub const ENV_POOL_SIZE: &str = "POLYDEV_POOL_SIZE";
pub const ENV_MAX_CONCURRENCY: &str = "POLYDEV_MAX_CONCURRENCY";
pub const ENV_MAX_PER_USER: &str = "POLYDEV_MAX_PER_USER";
pub const ENV_QUEUE_SIZE: &str = "POLYDEV_QUEUE_SIZE";
pub const ENV_QUEUE_WAIT: &str = "POLYDEV_QUEUE_WAIT";
pub const ENV_ALLOWED_BASE_URLS: &str = "POLYDEV_ALLOWED_BASE_URLS";
pub const ENV_EVENT_RETENTION: &str = "POLYDEV_EVENT_RETENTION";
pub const ENV_MAX_RETAINED: &str = "POLYDEV_MAX_RETAINED";
pub const ENV_RETAINED_BYTES: &str = "POLYDEV_RETAINED_BYTES";
pub const ENV_MAX_EVENT_LOG_BYTES: &str = "POLYDEV_MAX_EVENT_LOG_BYTES";
pub const ENV_MAX_BODY_BYTES: &str = "POLYDEV_MAX_BODY_BYTES";
pub const ENV_MAX_STREAMS: &str = "POLYDEV_MAX_STREAMS";
pub const ENV_MAX_CONNECTIONS: &str = "POLYDEV_MAX_CONNECTIONS";
pub const ENV_HEADER_TIMEOUT: &str = "POLYDEV_HEADER_TIMEOUT";
pub const ENV_BODY_TIMEOUT: &str = "POLYDEV_BODY_TIMEOUT";
pub const ENV_SSE_KEEPALIVE: &str = "POLYDEV_SSE_KEEPALIVE";
pub const ENV_SHUTDOWN_GRACE: &str = "POLYDEV_SHUTDOWN_GRACE";
pub const ENV_REATTACH_GRACE: &str = "POLYDEV_REATTACH_GRACE";
pub const ENV_MAX_EXECUTION_TIME: &str = "POLYDEV_MAX_EXECUTION_TIME";
pub const ENV_RUNTIME_MODE: &str = "POLYDEV_RUNTIME_MODE";
pub const ENV_PUBLIC_URL: &str = "POLYDEV_PUBLIC_URL";
pub const ENV_TLS_CERT: &str = "POLYDEV_TLS_CERT";
pub const ENV_TLS_KEY: &str = "POLYDEV_TLS_KEY";
pub const ENV_TLS_CA: &str = "POLYDEV_TLS_CA";
pub const ENV_RUNTIME: &str = "POLYDEV_RUNTIME";
pub const ENV_LOG: &str = "POLYDEV_LOG";
pub const ENV_DOCKER_HOST: &str = "DOCKER_HOST";
pub const ENV_DOCKER_NETWORK: &str = "POLYDEV_DOCKER_NETWORK";
pub const ENV_DOCKER_IMAGE: &str = "POLYDEV_DOCKER_IMAGE";
pub const ENV_DOCKER_MEMORY: &str = "POLYDEV_DOCKER_MEMORY";
pub const ENV_DOCKER_PIDS: &str = "POLYDEV_DOCKER_PIDS";
pub const ENV_DOCKER_CPUS: &str = "POLYDEV_DOCKER_CPUS";
pub const ENV_DOCKER_INSTANCE: &str = "POLYDEV_DOCKER_INSTANCE";
pub const ENV_DOCKER_MODE: &str = "POLYDEV_DOCKER_MODE";
/// The runtime's own variables, passed on to every runtime the process backend starts.
pub const RUNTIME_PASSTHROUGH: [&str; 10] = [
    "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL",
    "GOOGLE_BASE_URL",
    "EXTRA_CA_CERTS",
    "CONNECT_TIMEOUT_MS",
    "FIRST_TOKEN_TIMEOUT_MS",
    "IDLE_TIMEOUT_MS",
    "TOTAL_TIMEOUT_MS",
    "MAX_ATTEMPTS",
    "MAX_RETRY_WAIT_MS",
];

// === defaults ===

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DB: &str = "./polydev.db";
/// Idle warm runtimes kept ready. Each costs a few MiB of RSS and no CPU while it waits.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Active (queued or running) executions per `user_id`. Polydev's "perspectives" asks a handful
/// of models at once, so a user needs several slots, but not the whole machine.
pub const DEFAULT_MAX_PER_USER: usize = 16;
/// How long an execution may wait in the queue for a slot before it fails `overloaded`.
pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_secs(30);
/// How long a finished execution's events stay resumable through `/events`.
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(600);
/// Finished executions kept in memory at most (the oldest go first).
pub const DEFAULT_MAX_RETAINED: usize = 10_000;
/// Bytes of finished executions' event logs kept in memory at most (the oldest go first).
pub const DEFAULT_RETAINED_BYTES: u64 = 512 * 1024 * 1024;
/// One execution's event log. An LLM answer of 64k tokens is about 256 KiB of text, plus some
/// 40 bytes of framing per delta; 8 MiB leaves a wide margin. Beyond it the execution is
/// stopped with an error rather than growing without bound.
pub const DEFAULT_MAX_EVENT_LOG_BYTES: u64 = 8 * 1024 * 1024;
/// Request bodies: a job with a long conversation and base64 images (one image may be 20 MiB
/// decoded, 26.7 MiB as base64; DESIGN.md 4.5). Equal to the runtime's largest job line, so
/// whatever the runtime accepts the controller accepts too. axum's own default is 2 MiB; lower
/// it with `POLYDEV_MAX_BODY_BYTES` where jobs carry no images.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// Open SSE responses at most; more get `503`.
pub const DEFAULT_MAX_STREAMS: usize = 10_000;
/// A request's head must arrive within this of the connection opening or of the previous
/// response (an idle keep-alive connection closes after it too).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// A request's body must arrive within this once its head has.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Client connections beyond the open streams: short requests, status polls, slack.
pub const CONNECTION_SLACK: usize = 256;
/// SSE keep-alive comment interval; proxies commonly cut idle connections after 30-60 s.
pub const DEFAULT_SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// How long running executions may finish after SIGTERM before they are cancelled. With the
/// cancel window below this fits Nomad's 5 s default `kill_timeout` and Docker's 10 s.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// After a cancel, how long the controller waits for the runtime to report and exit before it
/// ends the execution itself. The runtime exits within a second of SIGTERM.
pub const CANCEL_WAIT: Duration = Duration::from_secs(2);
/// A safety net for every backend: an execution running longer than this is cancelled
/// (`timeout`). The runtime's own total timeout defaults to 600 s.
pub const DEFAULT_MAX_EXECUTION_TIME: Duration = Duration::from_secs(660);
/// `GET /v1/executions/{id}` returns at most this much accumulated text (and as much refusal
/// text).
pub const MAX_STATUS_TEXT_BYTES: usize = 1024 * 1024;
/// `GET /v1/executions/{id}` lists at most this many tool calls, of at most this many bytes of
/// arguments in all; beyond them `tool_calls_truncated` is set.
pub const MAX_STATUS_TOOL_CALLS: usize = 128;
pub const MAX_STATUS_TOOL_CALL_BYTES: usize = 1024 * 1024;
/// Targets of one `POST /v1/perspectives`.
pub const MAX_PERSPECTIVE_TARGETS: usize = 16;
/// `user_id` length bound (it is stored and logged).
pub const MAX_USER_ID_BYTES: usize = 256;
/// `Retry-After` sent with `429` and `503`.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A secret setting (the API token). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself. Call only where it is compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(**redacted**)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// How the listener treats connections before any request is authenticated (security probe
/// F1, F8): every connection counts against `max_connections` (accepting waits while it is
/// reached, so idle sockets cannot take the descriptors runtimes need); a request's head must
/// arrive within `header_timeout` of the connection opening or of the previous response, and
/// its body within `body_timeout`; the server speaks HTTP/1.1 only, by choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl ConnectionLimits {
    /// The default connection cap: every open stream plus [`CONNECTION_SLACK`].
    pub fn for_streams(max_streams: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: max_streams.saturating_add(CONNECTION_SLACK),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

/// How long a runtime that has started its job may send nothing before the controller calls
/// it hung (security probe F7: a SIGSTOPped runtime otherwise holds its stream with keep-alives
/// until `max_execution_time`). Derived from the runtime's own timeouts, which end a silent
/// upstream first: before any output it may legitimately wait through every attempt's connect
/// and first-token timeouts plus the retry waits; once output flows, at most its idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SilenceLimits {
    pub before_output: Duration,
    pub streaming: Duration,
}

impl SilenceLimits {
    /// Slack over the runtime's own bound, for its error to arrive first.
    pub const MARGIN: Duration = Duration::from_secs(30);

    /// The limits for runtimes configured with these settings (`None`: the runtime's default).
    pub fn for_runtime(env: &RuntimeEnvArgs) -> SilenceLimits {
        use polydev_protocol::defaults as d;
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        let attempts = env.max_attempts.unwrap_or(d::DEFAULT_MAX_ATTEMPTS).max(1);
        let per_attempt = ms(env.connect_timeout_ms, d::DEFAULT_CONNECT_TIMEOUT).saturating_add(
            ms(env.first_token_timeout_ms, d::DEFAULT_FIRST_TOKEN_TIMEOUT),
        );
        SilenceLimits {
            before_output: per_attempt
                .saturating_mul(attempts)
                .saturating_add(ms(env.max_retry_wait_ms, d::DEFAULT_MAX_RETRY_WAIT))
                .saturating_add(Self::MARGIN),
            streaming: ms(env.idle_timeout_ms, d::DEFAULT_IDLE_TIMEOUT)
                .saturating_add(Self::MARGIN),
        }
    }
}

impl Default for SilenceLimits {
    fn default() -> Self {
        SilenceLimits::for_runtime(&RuntimeEnvArgs::default())
    }
}

/// What the library runs with: validated limits and policies.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The bearer token clients must send; `None` disables auth (loopback only, enforced by
    /// [`ServeArgs::controller_config`]).
    pub api_token: Option<Secret>,
    pub max_concurrency: usize,
    pub max_per_user: usize,
    pub queue_size: usize,
    pub queue_wait: Duration,
    /// URL prefixes a request's `base_url` may start with; empty: no caller-chosen URL.
    pub allowed_base_urls: Vec<String>,
    pub event_retention: Duration,
    pub max_retained: usize,
    pub retained_bytes: u64,
    pub max_event_log_bytes: u64,
    pub max_body_bytes: usize,
    pub max_streams: usize,
    pub connections: ConnectionLimits,
    pub sse_keepalive: Duration,
    pub shutdown_grace: Duration,
    /// How long a runtime that reports over the runtime API may take to come back (after a
    /// controller restart, or after its report broke) before its execution ends
    /// (`POLYDEV_REATTACH_GRACE`, DESIGN.md 5.2).
    pub reattach_grace: Duration,
    pub cancel_wait: Duration,
    pub max_execution_time: Duration,
    pub runtime_silence: SilenceLimits,
}

impl Default for ControllerConfig {
    /// Small limits suitable for tests and as a base for [`ServeArgs::controller_config`].
    fn default() -> Self {
        ControllerConfig {
            api_token: None,
            max_concurrency: 16,
            max_per_user: DEFAULT_MAX_PER_USER,
            queue_size: 16,
            queue_wait: DEFAULT_QUEUE_WAIT,
            allowed_base_urls: Vec::new(),
            event_retention: DEFAULT_EVENT_RETENTION,
            max_retained: DEFAULT_MAX_RETAINED,
            retained_bytes: DEFAULT_RETAINED_BYTES,
            max_event_log_bytes: DEFAULT_MAX_EVENT_LOG_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES as usize,
            max_streams: DEFAULT_MAX_STREAMS,
            connections: ConnectionLimits::for_streams(DEFAULT_MAX_STREAMS),
            sse_keepalive: DEFAULT_SSE_KEEPALIVE,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            reattach_grace: polydev_protocol::report::DEFAULT_REATTACH_GRACE,
            cancel_wait: CANCEL_WAIT,
            max_execution_time: DEFAULT_MAX_EXECUTION_TIME,
            runtime_silence: SilenceLimits::default(),
        }
    }
}

// === command line ===

/// The polydev master controller: an HTTP API that runs LLM executions on isolated
/// `polydev-runtime` processes and streams their events as server-sent events.
///
/// Every flag also reads the environment variable shown. With no subcommand it serves.
#[derive(Debug, Parser)]
#[command(
    name = "polydev-controller",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print how many concurrent executions a machine supports, from the measured per-execution
    /// footprint, next to the original design's 256 MB / 0.1-core arithmetic.
    Capacity(CapacityArgs),
    /// Print the Nomad runtime job exactly as POLYDEV_BACKEND=nomad registers it, as
    /// {"Job": {...}} for `nomad job run -json`.
    NomadSpec(Box<crate::backend::nomad::NomadSpecArgs>),
}

#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// Machine memory (e.g. 62G; binary units: G = GiB). Default: this machine's.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// CPU cores. Default: this machine's.
    #[arg(long)]
    pub cores: Option<f64>,
    /// Memory kept for the OS and other services (e.g. 10G). Default: 10 % (at least 1 GiB).
    #[arg(long, value_parser = parse_size)]
    pub reserve: Option<u64>,
}

/// Which backend runs runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Local child processes (default, zero setup).
    Process,
    /// Hardened Docker containers over the Engine API's unix socket.
    Docker,
    /// Nomad parameterized batch jobs; runtimes pull their job (NOMAD_ADDR, NOMAD_TOKEN…).
    Nomad,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. A non-loopback address requires an API token.
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Bearer token clients must send (`Authorization: Bearer …`). Required unless listening on
    /// a loopback address.
    #[arg(long, env = ENV_API_TOKEN, hide_env_values = true, value_parser = parse_secret)]
    pub api_token: Option<Secret>,

    /// File holding the API token (alternative to POLYDEV_API_TOKEN).
    #[arg(long, env = ENV_API_TOKEN_FILE, conflicts_with = "api_token")]
    pub api_token_file: Option<PathBuf>,

    /// Backend that runs runtimes.
    #[arg(long, env = ENV_BACKEND, value_enum, default_value_t = BackendKind::Process)]
    pub backend: BackendKind,

    /// SQLite database file (created if missing).
    #[arg(long, env = ENV_DB, default_value = DEFAULT_DB)]
    pub db: PathBuf,

    /// Warm runtimes kept idle and ready (0 disables the pool).
    #[arg(long, env = ENV_POOL_SIZE, default_value_t = DEFAULT_POOL_SIZE)]
    pub pool_size: usize,

    /// Executions running at once. Default: derived from memory and cores (see `capacity`).
    #[arg(long, env = ENV_MAX_CONCURRENCY)]
    pub max_concurrency: Option<usize>,

    /// Active (queued + running) executions per user_id.
    #[arg(long, env = ENV_MAX_PER_USER, default_value_t = DEFAULT_MAX_PER_USER)]
    pub max_per_user: usize,

    /// Executions waiting for a slot at most; more get 429. Default: the concurrency limit.
    #[arg(long, env = ENV_QUEUE_SIZE)]
    pub queue_size: Option<usize>,

    /// How long an execution may wait in the queue (e.g. 30s, 500ms, 2m).
    #[arg(long, env = ENV_QUEUE_WAIT, value_parser = parse_duration, default_value = "30s")]
    pub queue_wait: Duration,

    /// Comma-separated URL prefixes a request's base_url may start with. Default: none, so
    /// callers cannot choose where their credential is sent.
    #[arg(long, env = ENV_ALLOWED_BASE_URLS, value_delimiter = ',')]
    pub allowed_base_urls: Vec<String>,

    /// How long a finished execution's events stay resumable through /events.
    #[arg(long, env = ENV_EVENT_RETENTION, value_parser = parse_duration, default_value = "10m")]
    pub event_retention: Duration,

    /// Finished executions kept in memory at most.
    #[arg(long, env = ENV_MAX_RETAINED, default_value_t = DEFAULT_MAX_RETAINED)]
    pub max_retained: usize,

    /// Bytes of finished executions' events kept in memory at most (e.g. 512M).
    #[arg(long, env = ENV_RETAINED_BYTES, value_parser = parse_size, default_value = "512M")]
    pub retained_bytes: u64,

    /// One execution's event log at most (e.g. 8M); beyond it the execution is stopped.
    #[arg(long, env = ENV_MAX_EVENT_LOG_BYTES, value_parser = parse_size, default_value = "8M")]
    pub max_event_log_bytes: u64,

    /// Request body size at most (e.g. 4M); 32M fits a job with a 20 MiB base64 image.
    #[arg(long, env = ENV_MAX_BODY_BYTES, value_parser = parse_size, default_value = "32M")]
    pub max_body_bytes: u64,

    /// Open event streams at most.
    #[arg(long, env = ENV_MAX_STREAMS, default_value_t = DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,

    /// Client connections open at once at most (default: POLYDEV_MAX_STREAMS + 256, lowered to
    /// what the open-file limit leaves after the runtimes' share). Beyond it, new connections
    /// wait in the listen backlog.
    #[arg(long, env = ENV_MAX_CONNECTIONS)]
    pub max_connections: Option<usize>,

    /// A request's head must arrive within this of the connection opening or of the previous
    /// response; idle keep-alive connections close after it too.
    #[arg(long, env = ENV_HEADER_TIMEOUT, value_parser = parse_duration, default_value = "20s")]
    pub header_timeout: Duration,

    /// A request's body must arrive within this once its head has.
    #[arg(long, env = ENV_BODY_TIMEOUT, value_parser = parse_duration, default_value = "30s")]
    pub body_timeout: Duration,

    /// Interval of SSE keep-alive comments.
    #[arg(long, env = ENV_SSE_KEEPALIVE, value_parser = parse_duration, default_value = "15s")]
    pub sse_keepalive: Duration,

    /// After SIGTERM, how long running executions may finish before they are cancelled.
    #[arg(long, env = ENV_SHUTDOWN_GRACE, value_parser = parse_duration, default_value = "3s")]
    pub shutdown_grace: Duration,

    /// How long a pull-mode runtime (Nomad, the process backend's pull mode) may take to come
    /// back before its execution ends `interrupted`: after a controller restart, the runtimes
    /// of executions still `running` in the store; while running, one whose event report broke.
    #[arg(long, env = ENV_REATTACH_GRACE, value_parser = parse_duration, default_value = "60s")]
    pub reattach_grace: Duration,

    /// Longest an execution may run before the controller cancels it.
    #[arg(long, env = ENV_MAX_EXECUTION_TIME, value_parser = parse_duration, default_value = "11m")]
    pub max_execution_time: Duration,

    /// Path of the polydev-runtime binary. Default: next to this executable, then PATH.
    #[arg(long, env = ENV_RUNTIME)]
    pub runtime: Option<PathBuf>,

    /// Log filter (tracing EnvFilter syntax, e.g. info or polydev_controller=debug).
    #[arg(long, env = ENV_LOG, default_value = "info")]
    pub log: String,

    #[command(flatten)]
    pub runtime_env: RuntimeEnvArgs,

    #[command(flatten)]
    pub process: ProcessArgs,

    #[command(flatten)]
    pub docker: DockerArgs,

    #[command(flatten)]
    pub nomad: crate::backend::nomad::NomadArgs,

    #[command(flatten)]
    pub runtime_api: RuntimeApiArgs,
}

/// The runtime's own settings, passed on to every runtime this controller starts.
#[derive(Debug, Clone, Default, Args)]
pub struct RuntimeEnvArgs {
    /// Passed to runtimes: OpenAI endpoint (includes /v1).
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,
    /// Passed to runtimes: Anthropic endpoint.
    #[arg(long, env = "ANTHROPIC_BASE_URL")]
    pub anthropic_base_url: Option<String>,
    /// Passed to runtimes: Google Gemini endpoint.
    #[arg(long, env = "GOOGLE_BASE_URL")]
    pub google_base_url: Option<String>,
    /// Passed to runtimes: PEM file of extra trusted CAs.
    #[arg(long, env = "EXTRA_CA_CERTS")]
    pub extra_ca_certs: Option<PathBuf>,
    /// Passed to runtimes: connect timeout in ms.
    #[arg(long, env = "CONNECT_TIMEOUT_MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Passed to runtimes: first-token timeout in ms.
    #[arg(long, env = "FIRST_TOKEN_TIMEOUT_MS")]
    pub first_token_timeout_ms: Option<u64>,
    /// Passed to runtimes: idle timeout in ms.
    #[arg(long, env = "IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Passed to runtimes: total timeout in ms.
    #[arg(long, env = "TOTAL_TIMEOUT_MS")]
    pub total_timeout_ms: Option<u64>,
    /// Passed to runtimes: attempts per execution (retries happen only before any output).
    #[arg(long, env = "MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// Passed to runtimes: total retry wait in ms.
    #[arg(long, env = "MAX_RETRY_WAIT_MS")]
    pub max_retry_wait_ms: Option<u64>,
}

impl RuntimeEnvArgs {
    /// The set variables as `(name, value)` pairs, in [`RUNTIME_PASSTHROUGH`] order.
    pub fn vars(&self) -> Vec<(String, String)> {
        let values = [
            self.openai_base_url.clone(),
            self.anthropic_base_url.clone(),
            self.google_base_url.clone(),
            self.extra_ca_certs
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            self.connect_timeout_ms.map(|v| v.to_string()),
            self.first_token_timeout_ms.map(|v| v.to_string()),
            self.idle_timeout_ms.map(|v| v.to_string()),
            self.total_timeout_ms.map(|v| v.to_string()),
            self.max_attempts.map(|v| v.to_string()),
            self.max_retry_wait_ms.map(|v| v.to_string()),
        ];
        RUNTIME_PASSTHROUGH
            .iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), v)))
            .collect()
    }
}

/// The process backend's hardened mode (README "Hardened process mode"); ignored by the other
/// backends.
#[derive(Debug, Clone, Default, Args)]
pub struct ProcessArgs {
    /// Process backend: numeric uid:gid (not 0) every runtime switches to before reading its
    /// job. Needs a controller running as root and POLYDEV_RUNTIME_MODE=stdin. Default: the
    /// controller's own user.
    #[arg(long, env = "POLYDEV_PROCESS_USER", value_parser = parse_process_user)]
    pub process_user: Option<(u32, u32)>,
    /// Process backend: address-space limit of each runtime in bytes (RLIMIT_AS, at least
    /// 64 MiB).
    #[arg(long, env = "POLYDEV_PROCESS_MAX_MEMORY")]
    pub process_max_memory: Option<u64>,
    /// Process backend: open-file limit of each runtime (RLIMIT_NOFILE, at least 16).
    #[arg(long, env = "POLYDEV_PROCESS_MAX_OPEN_FILES")]
    pub process_max_open_files: Option<u64>,
}

impl ProcessArgs {
    /// The process backend's hardening settings.
    pub fn hardening(&self) -> crate::backend::process::ProcessHardening {
        crate::backend::process::ProcessHardening {
            user: self.process_user,
            max_memory: self.process_max_memory,
            max_open_files: self.process_max_open_files,
        }
    }
}

fn parse_process_user(v: &str) -> Result<(u32, u32), String> {
    crate::backend::process::ProcessHardening::parse_user(v)
}

/// Settings of the Docker backend (`POLYDEV_BACKEND=docker`); ignored by the others.
#[derive(Debug, Clone, Args)]
pub struct DockerArgs {
    /// Docker backend: the engine's socket, as unix:///path. Default: unix:///var/run/docker.sock.
    #[arg(long, env = ENV_DOCKER_HOST)]
    pub docker_host: Option<String>,
    /// Docker backend: network of runtime containers: `polydev` (a bridge network without
    /// inter-container traffic, created if missing), `host` (runtimes reach the host's
    /// loopback), or the name of an existing network.
    #[arg(long, env = ENV_DOCKER_NETWORK, default_value = "polydev")]
    pub docker_network: String,
    /// Docker backend: the runtime image, with a pinned tag.
    #[arg(long, env = ENV_DOCKER_IMAGE, default_value = crate::backend::docker::DEFAULT_IMAGE)]
    pub docker_image: String,
    /// Docker backend: memory limit of each runtime container (e.g. 32M; at least 6M).
    #[arg(long, env = ENV_DOCKER_MEMORY, value_parser = parse_size, default_value = "32M")]
    pub docker_memory: u64,
    /// Docker backend: process (thread) limit of each runtime container.
    #[arg(long, env = ENV_DOCKER_PIDS, default_value_t = crate::backend::docker::DEFAULT_PIDS)]
    pub docker_pids: u32,
    /// Docker backend: CPU limit of each runtime container, in cores (e.g. 0.5). Default: none.
    #[arg(long, env = ENV_DOCKER_CPUS)]
    pub docker_cpus: Option<f64>,
    /// Docker backend: this controller's name on the engine. Its containers carry it as a
    /// label, and at start the containers a previous run with the same name left are removed:
    /// controllers sharing one engine need different names.
    #[arg(long, env = ENV_DOCKER_INSTANCE, default_value = crate::backend::docker::DEFAULT_INSTANCE)]
    pub docker_instance: String,
    /// Docker backend: how runtimes get their job. `attach`: on the container's attached
    /// stdin, events read from its stdout (the output depends on that connection). `pull`: they
    /// fetch it from this controller's runtime API at POLYDEV_PUBLIC_URL with a per-container
    /// token (a read-only bind-mounted file) and post their events back over HTTP, as Nomad
    /// runtimes do.
    #[arg(long, env = ENV_DOCKER_MODE, value_enum, default_value_t = crate::backend::docker::DockerMode::Attach)]
    pub docker_mode: crate::backend::docker::DockerMode,
}

/// How runtimes get their job (DESIGN.md 4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeMode {
    /// The job is written to the runtime's stdin (process and Docker backends).
    Stdin,
    /// The runtime fetches its job from this controller's runtime API at POLYDEV_PUBLIC_URL with
    /// a per-instance token, and posts its events back (as on Nomad).
    Pull,
}

/// HTTPS, and the runtime API that pull-mode runtimes call.
#[derive(Debug, Clone, Args)]
pub struct RuntimeApiArgs {
    /// How runtimes get their job: `stdin`, or `pull` (process backend: runtimes long-poll
    /// GET /runtime/v1/next with a per-instance token file and POST their events back, as Nomad
    /// runtimes do).
    #[arg(long, env = ENV_RUNTIME_MODE, value_enum, default_value_t = RuntimeMode::Stdin)]
    pub runtime_mode: RuntimeMode,

    /// URL pull-mode runtimes use to reach this controller (given to them as CONTROLLER_URL):
    /// https://, or http:// on a loopback address only. Default: this controller's listen
    /// address (127.0.0.1 when it listens on all addresses), https:// when serving HTTPS.
    #[arg(long, env = ENV_PUBLIC_URL)]
    pub public_url: Option<String>,

    /// Serve HTTPS (client and runtime API alike) with this PEM certificate chain, leaf first.
    #[arg(long, env = ENV_TLS_CERT, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of POLYDEV_TLS_CERT.
    #[arg(long, env = ENV_TLS_KEY, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) pull-mode runtimes must trust to reach POLYDEV_PUBLIC_URL (a
    /// certificate from a private CA); added to their EXTRA_CA_CERTS.
    #[arg(long, env = ENV_TLS_CA)]
    pub tls_ca: Option<PathBuf>,
}

impl RuntimeApiArgs {
    /// The HTTPS configuration, when POLYDEV_TLS_CERT and POLYDEV_TLS_KEY are set.
    pub fn tls(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                crate::tls::server_config(cert, key)
                    .map(Some)
                    .map_err(|e| ConfigError::Invalid {
                        setting: ENV_TLS_CERT,
                        reason: e.to_string(),
                    })
            }
            (None, None) => Ok(None),
            _ => Err(ConfigError::Invalid {
                setting: ENV_TLS_CERT,
                reason: format!("{ENV_TLS_CERT} and {ENV_TLS_KEY} go together"),
            }),
        }
    }

    /// `CONTROLLER_URL` for pull-mode runtimes, once the listener is bound to `bound`:
    /// POLYDEV_PUBLIC_URL, or this controller's own address. Plain http:// to a non-loopback
    /// host is refused: the jobs, with the users' keys, cross that link.
    pub fn public_url(&self, bound: SocketAddr) -> Result<String, ConfigError> {
        let url = match &self.public_url {
            Some(u) => u.clone(),
            None => {
                let scheme = if self.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                };
                let ip = match bound.ip() {
                    std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
                    }
                    std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                        std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
                    }
                    ip => ip,
                };
                format!("{scheme}://{}", SocketAddr::new(ip, bound.port()))
            }
        };
        crate::backend::pull::check_runtime_url(&url).map_err(|e| ConfigError::Invalid {
            setting: ENV_PUBLIC_URL,
            reason: e.to_string(),
        })
    }
}

/// A setting is unusable; the message names the setting, never a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "refusing to listen on {0} without an API token: set {ENV_API_TOKEN} (or {ENV_API_TOKEN_FILE}), or listen on a loopback address"
    )]
    TokenRequired(SocketAddr),
    #[error("cannot read {ENV_API_TOKEN_FILE}: {0}")]
    TokenFile(String),
    #[error("the API token is empty")]
    EmptyToken,
    #[error("invalid {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error(
        "POLYDEV_BACKEND={0} is not built yet: this version runs the process backend (POLYDEV_BACKEND=process)"
    )]
    BackendNotBuilt(&'static str),
}

impl ServeArgs {
    /// The API token from the flag, the variable or the file.
    pub fn token(&self) -> Result<Option<Secret>, ConfigError> {
        if let Some(t) = &self.api_token {
            if t.expose().trim().is_empty() {
                return Err(ConfigError::EmptyToken);
            }
            return Ok(Some(t.clone()));
        }
        if let Some(path) = &self.api_token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::TokenFile(e.kind().to_string()))?;
            let t = text.trim();
            if t.is_empty() {
                return Err(ConfigError::EmptyToken);
            }
            return Ok(Some(Secret::new(t)));
        }
        Ok(None)
    }

    /// Validates the settings and derives what has no explicit value.
    pub fn controller_config(&self) -> Result<ControllerConfig, ConfigError> {
        let api_token = self.token()?;
        if api_token.is_none() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::TokenRequired(self.listen));
        }
        match self.backend {
            BackendKind::Process => {}
            BackendKind::Docker => {}
            BackendKind::Nomad => {}
        }
        let max_concurrency = match self.max_concurrency {
            Some(0) => {
                return Err(ConfigError::Invalid {
                    setting: ENV_MAX_CONCURRENCY,
                    reason: "must be at least 1".into(),
                });
            }
            Some(n) => n,
            None => capacity::Machine::detect().supported().polydev,
        };
        if self.max_per_user == 0 {
            return Err(ConfigError::Invalid {
                setting: ENV_MAX_PER_USER,
                reason: "must be at least 1".into(),
            });
        }
        let allowed_base_urls = self
            .allowed_base_urls
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
            .map(|u| {
                crate::policy::check_allowed_prefix(u)
                    .map(|()| u.to_owned())
                    .map_err(|reason| ConfigError::Invalid {
                        setting: ENV_ALLOWED_BASE_URLS,
                        reason,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_body_bytes =
            usize::try_from(self.max_body_bytes).map_err(|_| ConfigError::Invalid {
                setting: ENV_MAX_BODY_BYTES,
                reason: "too large".into(),
            })?;
        Ok(ControllerConfig {
            api_token,
            max_concurrency,
            max_per_user: self.max_per_user,
            queue_size: self.queue_size.unwrap_or(max_concurrency),
            queue_wait: self.queue_wait,
            allowed_base_urls,
            event_retention: self.event_retention,
            max_retained: self.max_retained,
            retained_bytes: self.retained_bytes,
            max_event_log_bytes: self.max_event_log_bytes.max(64 * 1024),
            max_body_bytes,
            max_streams: self.max_streams.max(1),
            connections: ConnectionLimits {
                max_connections: self
                    .max_connections
                    .unwrap_or_else(|| {
                        ConnectionLimits::for_streams(self.max_streams.max(1)).max_connections
                    })
                    .max(1),
                header_timeout: self.header_timeout.max(Duration::from_millis(100)),
                body_timeout: self.body_timeout.max(Duration::from_millis(100)),
            },
            sse_keepalive: self.sse_keepalive.max(Duration::from_millis(100)),
            shutdown_grace: self.shutdown_grace,
            reattach_grace: self.reattach_grace,
            cancel_wait: CANCEL_WAIT,
            max_execution_time: self.max_execution_time,
            runtime_silence: SilenceLimits::for_runtime(&self.runtime_env),
        })
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

/// Parses `500ms`, `30s`, `10m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 30s, 10m, 1h)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `62G`, `10GiB`, `512M`, `4k` or plain bytes. Units are binary (G = GiB), as memory
/// is counted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 62G, 512M, 4096)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?} (K, M, G, T)")),
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut argv = vec!["polydev-controller"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_size("62G").unwrap(), 62 << 30);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn non_loopback_needs_a_token() {
        let cli = parse(&["--listen", "0.0.0.0:8080", "--max-concurrency", "4"]);
        assert!(matches!(
            cli.serve.controller_config(),
            Err(ConfigError::TokenRequired(_))
        ));
        let cli = parse(&[
            "--listen",
            "0.0.0.0:8080",
            "--api-token",
            "t0ken",
            "--max-concurrency",
            "4",
        ]);
        let c = cli.serve.controller_config().unwrap();
        assert_eq!(c.api_token.as_ref().map(Secret::expose), Some("t0ken"));
        assert_eq!(c.queue_size, 4);
        let cli = parse(&["--max-concurrency", "4"]);
        assert!(cli.serve.controller_config().unwrap().api_token.is_none());
    }

    #[test]
    fn nomad_backend_settings() {
        let cli = parse(&[
            "--backend",
            "nomad",
            "--max-concurrency",
            "1",
            "--nomad-datacenters",
            "dc1,dc2",
            "--nomad-image",
            "reg/polydev-runtime:1.2.3",
        ]);
        assert!(cli.serve.controller_config().is_ok());
        let job = cli.serve.nomad.job_config("https://c.example");
        assert_eq!(job.datacenters, ["dc1", "dc2"]);
        assert_eq!(job.image, "reg/polydev-runtime:1.2.3");
        assert_eq!(job.job_id, "polydev-runtime");
    }

    #[test]
    fn allowed_base_urls_are_checked() {
        let cli = parse(&[
            "--allowed-base-urls",
            "https://api.example.com/v1, http://127.0.0.1:8787",
            "--max-concurrency",
            "1",
        ]);
        let c = cli.serve.controller_config().unwrap();
        assert_eq!(
            c.allowed_base_urls,
            ["https://api.example.com/v1", "http://127.0.0.1:8787"]
        );
        let cli = parse(&["--allowed-base-urls", "ftp://x", "--max-concurrency", "1"]);
        assert!(cli.serve.controller_config().is_err());
    }

    #[test]
    fn runtime_api_settings() {
        let bound: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        let cli = parse(&["--runtime-mode", "pull"]);
        let ra = &cli.serve.runtime_api;
        assert_eq!(ra.runtime_mode, RuntimeMode::Pull);
        assert_eq!(ra.public_url(bound).unwrap(), "http://127.0.0.1:8443");
        assert!(ra.tls().unwrap().is_none());
        let cli = parse(&["--public-url", "http://10.1.2.3:8080"]);
        let err = cli.serve.runtime_api.public_url(bound).unwrap_err();
        assert!(err.to_string().contains(ENV_PUBLIC_URL), "{err}");
        let cli = parse(&["--public-url", "https://controller.internal:8443/"]);
        assert_eq!(
            cli.serve.runtime_api.public_url(bound).unwrap(),
            "https://controller.internal:8443"
        );
        // A certificate needs its key.
        let argv = ["polydev-controller", "--tls-cert", "/nonexistent.pem"];
        assert!(Cli::try_parse_from(argv).is_err());
        let cli = parse(&[
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
        ]);
        let err = cli.serve.runtime_api.tls().unwrap_err().to_string();
        assert!(err.contains(ENV_TLS_CERT), "{err}");
    }

    #[test]
    fn token_never_in_debug() {
        let cli = parse(&["--api-token", "s3cret-token-value"]);
        let dbg = format!("{cli:?}");
        assert!(!dbg.contains("s3cret-token-value"), "{dbg}");
    }

    #[test]
    fn runtime_vars_pass_through() {
        let cli = parse(&[
            "--openai-base-url",
            "http://127.0.0.1:1/v1",
            "--idle-timeout-ms",
            "500",
        ]);
        assert_eq!(
            cli.serve.runtime_env.vars(),
            [
                (
                    "OPENAI_BASE_URL".to_owned(),
                    "http://127.0.0.1:1/v1".to_owned()
                ),
                ("IDLE_TIMEOUT_MS".to_owned(), "500".to_owned())
            ]
        );
    }
}
