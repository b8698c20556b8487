//! Backends run runtimes: local processes (default), Docker containers or Nomad jobs, all
//! behind one [`Backend`] trait so that the scheduler, the API and the shared backend test suite
//! never know which one is in use (DESIGN.md 5).
//!
//! A backend's whole job is: given a [`Job`] (with `execution_id` set), produce an [`Instance`]
//! whose output is the runtime's events in order, followed by exactly one
//! [`InstanceOutput::Exited`], and which can be cancelled. Everything above (sequence numbers,
//! the event log, the store, synthesizing a terminal event when a runtime dies without one)
//! lives in the controller, once, for every backend.

pub mod docker;
pub mod nomad;
pub mod pool;
pub mod process;
pub mod pull;
pub mod text;

use std::time::Duration;

use futures_util::future::BoxFuture;
use polydev_protocol::{Event, Job};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Why a backend could not start an execution. Messages are safe to show to API clients:
/// no credential, no host paths.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot run anything right now (engine unreachable, binary missing).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Starting this one instance failed.
    #[error("cannot start the runtime: {0}")]
    Launch(String),
    /// The backend is shutting down and admits nothing.
    #[error("shutting down")]
    ShuttingDown,
}

/// How a runtime instance ended, as far as the backend can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    /// The process exit code, if it exited normally.
    pub code: Option<i32>,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Backend detail for operators (for example `OOMKilled`); never contains the credential.
    pub detail: Option<String>,
    /// The backend knows the instance was killed for exceeding its memory limit (Docker's
    /// `State.OOMKilled`). A flag, not a word in `detail`, so that no stderr text can fake it.
    pub oom_killed: bool,
}

/// One item of an instance's output.
#[derive(Debug, Clone, PartialEq)]
pub enum InstanceOutput {
    /// One runtime event, in order. (`ready` events of warm instances are not forwarded.)
    Event(Event),
    /// A line that was not a valid event (logged by the controller, not forwarded).
    Garbage(String),
    /// The instance is gone. Always the last item, exactly once.
    Exited(ExitInfo),
}

/// Asks a running instance to stop: the backend sends SIGTERM (or its equivalent), and kills
/// it if it has not exited after its grace period.
#[derive(Debug)]
pub struct CancelHandle(Option<oneshot::Sender<()>>);

impl CancelHandle {
    /// A handle and the receiver the backend watches.
    pub fn new() -> (CancelHandle, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (CancelHandle(Some(tx)), rx)
    }

    /// Requests cancellation; idempotent.
    pub fn cancel(&mut self) {
        if let Some(tx) = self.0.take() {
            // The instance may already be gone; then there is nothing to cancel.
            let _ = tx.send(());
        }
    }
}

/// A started execution.
#[derive(Debug)]
pub struct Instance {
    /// The runtime's output, ending with exactly one `Exited`.
    pub output: mpsc::Receiver<InstanceOutput>,
    pub cancel: CancelHandle,
    /// Whether a warm pool instance served it.
    pub warm: bool,
    /// Time the backend spent between `launch` and handing the job over.
    pub claim_latency: Duration,
}

/// Warm pool state, as `GET /v1/pool` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    /// Target number of idle instances.
    pub size: usize,
    /// Instances ready and waiting now.
    pub idle: usize,
    /// Instances starting up (not yet ready).
    pub starting: usize,
    /// Claims served by a warm instance since start.
    pub hits: u64,
    /// Launches that found no idle instance and started cold.
    pub misses: u64,
}

/// Runs runtimes. Implementations must be cheap to share (`Arc<dyn Backend>`).
pub trait Backend: Send + Sync + 'static {
    /// `process`, `docker` or `nomad`.
    fn name(&self) -> &'static str;

    /// Starts `job` (its `execution_id` is set): claims a warm instance when one is idle,
    /// otherwise starts a cold one. The credential travels only inside the job document over a
    /// private channel (stdin, an attach stream, or the authenticated pull API), never in argv,
    /// env, labels or job specs.
    fn launch(&self, job: Job) -> BoxFuture<'_, Result<Instance, BackendError>>;

    /// The warm pool's state.
    fn pool_status(&self) -> PoolStatus;

    /// Sets the warm pool's target size; the backend starts or stops instances to match.
    fn set_pool_size(&self, size: usize) -> Result<(), BackendError>;

    /// Stops the pool and every instance this backend still runs; leaves nothing behind.
    fn shutdown(&self) -> BoxFuture<'_, ()>;

    /// The runtime API (`/runtime/v1/…`) of a backend whose runtimes pull their job from the
    /// controller (DESIGN.md 4.4); `None` (the default) when they get it some other way. The
    /// API serves it on the same listener, outside the client token check.
    fn runtime_api(&self) -> Option<pull::RuntimeApi> {
        None
    }
}

/// The job as one JSON line for a runtime's stdin or the pull API, wiped from memory when
/// dropped (it carries the credential).
pub(crate) fn job_line(job: &Job) -> Result<zeroize::Zeroizing<String>, BackendError> {
    let mut line = serde_json::to_string(job)
        .map_err(|_| BackendError::Launch("the job cannot be serialized".into()))?;
    line.push('\n');
    Ok(zeroize::Zeroizing::new(line))
}
