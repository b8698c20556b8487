//! Backends run runtimes: local processes (default), Docker containers or Nomad jobs, all
//! behind one [`Backend`] trait so that the scheduler, the API and the shared backend test suite
//! never know which one is in use (DESIGN.md 5).
//!
//! A backend's whole job is: given a [`Job`] (with `execution_id` set), produce an [`Instance`]
//! whose output is the runtime's events in order, followed by exactly one
//! [`InstanceOutput::Exited`], and which can be cancelled. Everything above (sequence numbers,
//! the event log, the store, synthesizing a terminal event when a runtime dies without one)
//! lives in the controller, once, for every backend.
//!
//! Backends whose runtimes pull their job over the runtime API can also let those runtimes
//! outlive the controller (DESIGN.md 5.2): they describe each handed-out instance with an
//! [`InstanceRecord`] the controller journals in its store, [`Backend::adopt`] such an instance
//! again after a restart, and [`Backend::detach`] from them on SIGTERM instead of stopping them.

pub mod docker;
pub mod nomad;
pub mod pool;
pub mod process;
pub mod pull;
pub mod text;

use std::time::Duration;

use futures_util::future::BoxFuture;
use polydev_protocol::{Event, Job};
use serde::{Deserialize, Serialize};
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

/// What the controller journals when a pull-mode job is handed to an instance: everything a
/// restarted controller needs to accept that instance's returning report and to watch it, and
/// nothing that could be used as a credential (a digest and an expiry, never a key or token).
/// Written to the store when the job is handed out, deleted when the execution ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The execution the instance runs.
    pub execution_id: String,
    /// The instance's id in the runtime API ([`pull::InstanceId`]).
    pub instance_id: String,
    /// [`Backend::name`] of the backend that started it; only that backend adopts it.
    pub backend: String,
    /// The backend's own handle on the instance, opaque to the controller: a Nomad dispatched
    /// job and allocation id, `pid:start-time` of a process, a Docker container id.
    pub handle: String,
    /// Hex SHA-256 digest of the instance's credential, where the backend issues tokens (the
    /// process and Docker backends); `None` where the platform vouches for the instance (Nomad
    /// workload identity).
    pub credential_digest: Option<String>,
    /// When that credential expires (Unix milliseconds).
    pub credential_expires_at_ms: Option<u64>,
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

    /// The record to journal for the instance that runs `execution_id`, once `launch` handed it
    /// its job; `None` (the default) for a backend whose runtimes cannot outlive the
    /// controller. The controller asks right after `launch` returns and stores the answer.
    fn instance_record(&self, execution_id: &str) -> Option<InstanceRecord> {
        let _ = execution_id;
        None
    }

    /// Takes back, after a controller restart, the instance `record` describes (its execution
    /// was still `running`): the credential is accepted again for that one execution, the
    /// returned [`Instance`]'s output is fed by the report the runtime resends (from line 0,
    /// with the usual resume handshake), its cancel handle stops the instance, and `Exited`
    /// comes from watching the backend's handle (process gone, allocation terminal). The
    /// controller, not the backend, bounds the wait for the runtime to come back. The default
    /// refuses.
    fn adopt(&self, record: InstanceRecord) -> BoxFuture<'_, Result<Instance, BackendError>> {
        let _ = record;
        Box::pin(std::future::ready(Err(BackendError::Unavailable(format!(
            "the {} backend cannot adopt runtimes",
            self.name()
        )))))
    }

    /// Called once at start-up by [`crate::Controller::adopt`], before any adoption begins,
    /// with the record of every instance the controller is taking back: a backend whose
    /// runtimes outlive the controller removes, in the background, what a previous run left
    /// that nobody takes back (a killed controller's idle pool instances). Instances named in
    /// `adopting` are never touched. The default does nothing.
    fn sweep_leftovers(&self, adopting: &[InstanceRecord]) {
        let _ = adopting;
    }

    /// Whether SIGTERM detaches from running instances (they keep running and are adopted by
    /// the next controller) rather than cancelling them. `false` (the default) for backends
    /// whose runtimes die with the controller.
    fn detaches(&self) -> bool {
        false
    }

    /// Stops admitting and stops the pool's idle instances, but leaves every instance with a
    /// job running and releases it without a signal, for the next controller to adopt. Called
    /// instead of [`Backend::shutdown`] when [`Backend::detaches`]; the default shuts down.
    fn detach(&self) -> BoxFuture<'_, ()> {
        self.shutdown()
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
