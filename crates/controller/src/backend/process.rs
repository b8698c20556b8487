//! The process backend (the default): every execution is a `polydev-runtime` child process of
//! the controller, optionally pre-started in a warm pool (DESIGN.md 4.4, 5).
//!
//! Why it is built this way:
//!
//! - **The credential travels only on stdin.** Children get a *cleared* environment plus the
//!   operator's non-secret settings (base URLs, `EXTRA_CA_CERTS`, timeouts); the job, key
//!   included, is one JSON line written to the child's stdin: `run --job -` for a cold start, or
//!   the stdin of a warm runtime that printed `ready`. Nothing secret is in argv or
//!   `/proc/<pid>/environ`, and variables that look like credentials are refused in the
//!   configuration.
//! - **Every child is supervised by one task** from spawn to reap: it reads stdout line by line
//!   (bounded; an over-long line is reported as garbage and the child is killed), forwards
//!   events in order through a bounded channel (a slow consumer slows the runtime down through
//!   the pipe instead of growing memory), drains stderr continuously into a small redacted tail
//!   for [`ExitInfo::detail`], handles cancel (SIGTERM, SIGKILL after the grace), notices a
//!   dropped output receiver (same as cancel), and sends exactly one [`InstanceOutput::Exited`]
//!   last, after stdout EOF and the exit status. It reaps the child as soon as it exits, even if
//!   the consumer is slow, so there are no zombies and [`Backend::shutdown`] can wait for reaping
//!   alone.
//! - **Children die with the controller**, even on `kill -9`: they are spawned (`posix_spawn`,
//!   no `fork` of the controller) from one long-lived spawner thread, and each sets
//!   `PR_SET_PDEATHSIG(SIGKILL)` itself and checks that its parent is still the controller
//!   (`PARENT_PID`; see `spawner.rs` for why a dedicated thread). They also run in their own
//!   process group, so a terminal's Ctrl-C reaches only the controller, which then shuts down
//!   in order.
//! - **The warm pool** is the generic [`WarmPool`]; a claim pops an idle instance (checking it
//!   is alive), hands it the output channel, and writes the job line to its stdin: a mutex, a
//!   oneshot send and one pipe write, measured as [`Instance::claim_latency`]. The replacement
//!   starts 2 ms after the claimed runtime printed its second line (its first token, or its
//!   error), or [`REFILL_DELAY`] after the claim if that comes first: on a small machine its start-up
//!   would otherwise compete for the CPU with the claimed execution's first token. A failed write, or a runtime that ends without printing anything (it
//!   was dying already, so it sent nothing upstream), means "give the job to the next one"; an
//!   instance is never reused.
//! - **Controller-pull mode** ([`ProcessBackendConfig::pull`], `pull_mode.rs`) runs the same
//!   children the way a Nomad allocation runs: no job on stdin, a per-instance token file, the
//!   job fetched from the controller's runtime API and the events posted back to it. The
//!   supervisor, the pool and the reaping are shared; only the job's way in and the events' way
//!   out differ. It exists so that mode is tested end to end on one machine.

mod pull_mode;
mod spawner;

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use polydev_protocol::{ApiKey, Event, Job};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use crate::sys::raise_nofile_limit;
pub use pull_mode::PullOptions;

use super::pool::{
    DeathNotice, PoolConfig, PoolCounters, Refill, Replenish, WarmInstance, WarmPool, WarmStarter,
};
use super::pull::InstanceId;
use super::text::{Tail, garbage_text, line_output, parse_event, render_tail};
use super::{
    Backend, BackendError, CancelHandle, ExitInfo, Instance, InstanceOutput, PoolStatus, job_line,
};

/// The runtime binary's file name.
pub const RUNTIME_BIN: &str = "polydev-runtime";

/// Longest a claimed warm runtime's replacement waits for the claimed one's first token (see
/// the module documentation). Real upstreams take far longer to their first token, so the
/// replacement then starts while the claimed runtime only waits on the network.
pub const REFILL_DELAY: Duration = Duration::from_millis(20);
/// How long after the claimed runtime's first token its replacement starts: the token's relay
/// to the client (a pipe, three tasks, a socket) takes well under a millisecond.
const REFILL_AFTER_FIRST_TOKEN: Duration = Duration::from_millis(2);

/// Extra stderr bytes kept beyond `max_stderr_bytes`, so that a credential cut at the start of
/// the kept window can be dropped whole before redaction (see `render_tail`).
const REDACTION_SLACK: usize = 4096;

/// How the process backend runs runtimes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessBackendConfig {
    /// The `polydev-runtime` binary (see [`find_runtime`]).
    pub runtime_path: PathBuf,
    /// The whole environment of every runtime: non-secret settings only (base URLs,
    /// `EXTRA_CA_CERTS`, `*_TIMEOUT_MS`, `MAX_ATTEMPTS`…). Nothing is inherited from the
    /// controller. `OUTPUT` and `WARM_POOL` are set by the backend; credential-like names are
    /// refused by [`ProcessBackend::new`].
    pub env: Vec<(String, String)>,
    /// Target number of idle warm runtimes (0: every launch is cold).
    pub pool_size: usize,
    /// Time between SIGTERM and SIGKILL on cancel, shutdown or a dropped output.
    pub cancel_grace: Duration,
    /// How much of a runtime's stderr is kept (its end) for [`ExitInfo::detail`].
    pub max_stderr_bytes: usize,
    /// Longest stdout line accepted; a longer one is reported as garbage and the runtime killed.
    pub max_line_bytes: usize,
    /// Capacity of each instance's output channel, in items.
    pub output_buffer: usize,
    /// How long a warm runtime may take to print `ready`.
    pub ready_timeout: Duration,
    /// How many warm runtimes may be starting at once.
    pub max_concurrent_starts: usize,
    /// Longest wait between warm starts after repeated failures.
    pub start_backoff_max: Duration,
    /// Controller-pull mode (DESIGN.md 4.4): runtimes fetch their job from the controller's
    /// runtime API instead of reading it from stdin. `None`: stdin.
    pub pull: Option<PullOptions>,
    /// The hardened process mode: another uid and resource limits for every runtime.
    pub hardening: ProcessHardening,
}

/// The hardened process mode (README "Hardened process mode"): what each runtime applies to
/// itself first thing, before it reads its job (the runtime's `harden.rs`). Without it,
/// runtimes run as the controller's user, with its file access. Every runtime always sets
/// `no_new_privs` and turns off core dumps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessHardening {
    /// `(uid, gid)` runtimes switch to (`POLYDEV_PROCESS_USER`). Needs a controller running as
    /// root, and stdin mode: the pull mode's token files belong to the controller's user.
    pub user: Option<(u32, u32)>,
    /// Address-space limit per runtime, bytes (`RLIMIT_AS`).
    pub max_memory: Option<u64>,
    /// Open files per runtime (`RLIMIT_NOFILE`).
    pub max_open_files: Option<u64>,
}

impl ProcessHardening {
    /// Parses `POLYDEV_PROCESS_USER`'s `uid:gid` (numeric, neither 0).
    pub fn parse_user(v: &str) -> Result<(u32, u32), String> {
        let parsed = v.trim().split_once(':').and_then(|(u, g)| {
            let (u, g): (u32, u32) = (u.parse().ok()?, g.parse().ok()?);
            (u != 0 && g != 0).then_some((u, g))
        });
        parsed.ok_or_else(|| format!("{v:?} is not numeric uid:gid with neither 0"))
    }

    /// Checks what the platform allows: switching users needs root, and pull mode's token
    /// files (0600, the controller's user) would be unreadable after the switch.
    fn check(&self, pull: bool) -> Result<(), BackendError> {
        if self.user.is_none() {
            return Ok(());
        }
        if !crate::sys::is_root() {
            return Err(BackendError::Unavailable(
                "POLYDEV_PROCESS_USER needs a controller running as root (it starts each \
                 runtime as root and the runtime switches to that user before reading input)"
                    .into(),
            ));
        }
        if pull {
            return Err(BackendError::Unavailable(
                "POLYDEV_PROCESS_USER works with POLYDEV_RUNTIME_MODE=stdin only (pull mode's \
                 token files are readable by the controller's user alone)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The runtime's variables for these settings (`RUNTIME_USER`, `RUNTIME_MAX_*`).
    fn runtime_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some((u, g)) = self.user {
            env.push(("RUNTIME_USER".to_owned(), format!("{u}:{g}")));
        }
        if let Some(b) = self.max_memory {
            env.push(("RUNTIME_MAX_MEMORY".to_owned(), b.to_string()));
        }
        if let Some(n) = self.max_open_files {
            env.push(("RUNTIME_MAX_OPEN_FILES".to_owned(), n.to_string()));
        }
        env
    }
}

impl ProcessBackendConfig {
    /// Defaults: no pool, 2 s cancel grace, 4 KiB stderr tail, 32 MiB lines.
    pub fn new(runtime_path: impl Into<PathBuf>) -> ProcessBackendConfig {
        ProcessBackendConfig {
            runtime_path: runtime_path.into(),
            env: Vec::new(),
            pool_size: 0,
            cancel_grace: Duration::from_secs(2),
            max_stderr_bytes: 4096,
            max_line_bytes: 32 * 1024 * 1024,
            output_buffer: 256,
            ready_timeout: Duration::from_secs(10),
            max_concurrent_starts: 4,
            start_backoff_max: Duration::from_secs(30),
            pull: None,
            hardening: ProcessHardening::default(),
        }
    }
}

/// Finds `polydev-runtime` next to the current executable (also one level up when the
/// executable sits in cargo's `deps/` directory, as test binaries do), then on `PATH`.
pub fn find_runtime() -> Result<PathBuf, BackendError> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(RUNTIME_BIN));
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(up) = dir.parent()
        {
            candidates.push(up.join(RUNTIME_BIN));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(RUNTIME_BIN)));
    }
    candidates
        .into_iter()
        .find(|c| is_executable_file(c))
        .ok_or_else(|| {
            BackendError::Unavailable(format!(
                "{RUNTIME_BIN} was not found next to the controller or on PATH"
            ))
        })
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Refuses environment entries that look like credentials: they must travel only in the job.
fn check_env(env: &[(String, String)]) -> Result<(), BackendError> {
    for (name, _) in env {
        let upper = name.to_ascii_uppercase();
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(BackendError::Unavailable(format!(
                "invalid runtime environment variable name {name:?}"
            )));
        }
        let secret = upper.ends_with("_API_KEY")
            || upper.ends_with("_API_KEY_FILE")
            || upper.starts_with("RUNTIME_TOKEN");
        if secret {
            return Err(BackendError::Unavailable(format!(
                "{name} must not be passed to runtimes: credentials travel only inside the job"
            )));
        }
    }
    Ok(())
}

/// Runs runtimes as child processes. See the module documentation.
pub struct ProcessBackend {
    common: Arc<Common>,
    pool: WarmPool<ProcessStarter>,
}

impl std::fmt::Debug for ProcessBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessBackend")
            .field("runtime_path", &self.common.config.runtime_path)
            .field("pool", &self.pool)
            .finish()
    }
}

/// What every supervisor and the warm starter share.
struct Common {
    config: ProcessBackendConfig,
    /// `config.env` with `OUTPUT=ndjson` forced.
    base_env: Vec<(String, String)>,
    tracker: Arc<Tracker>,
    /// Flipped to `true` once by `shutdown`: every supervisor terminates its child.
    shutdown: watch::Sender<bool>,
    /// Set before `shutdown` by `detach` (pull mode): supervisors of runtimes with a job let
    /// them run on, for the next controller to adopt.
    detaching: AtomicBool,
    /// Controller-pull mode's registry, tokens and runtime environment.
    pull: Option<Arc<pull_mode::PullMode>>,
}

impl ProcessBackend {
    /// Creates the backend and starts filling the warm pool in the background. Must be called
    /// inside a tokio runtime (the pool refills and the children are driven there).
    pub fn new(config: ProcessBackendConfig) -> Result<ProcessBackend, BackendError> {
        let runtime = Handle::try_current().map_err(|_| {
            BackendError::Unavailable("the process backend needs a tokio runtime".into())
        })?;
        if !is_executable_file(&config.runtime_path) {
            return Err(BackendError::Unavailable(format!(
                "the {RUNTIME_BIN} binary is missing or not executable"
            )));
        }
        check_env(&config.env)?;
        config.hardening.check(config.pull.is_some())?;
        let mut base_env: Vec<(String, String)> = config
            .env
            .iter()
            .filter(|(k, _)| k != "OUTPUT" && k != "WARM_POOL" && !k.starts_with("RUNTIME_"))
            .cloned()
            .collect();
        base_env.push(("OUTPUT".into(), "ndjson".into()));
        base_env.extend(config.hardening.runtime_env());
        let pool_config = PoolConfig {
            size: config.pool_size,
            max_concurrent_starts: config.max_concurrent_starts,
            backoff_max: config.start_backoff_max,
            ..PoolConfig::default()
        };
        let pull = match &config.pull {
            Some(options) => Some(Arc::new(pull_mode::PullMode::new(
                options, &config, &base_env,
            )?)),
            None => None,
        };
        let (shutdown, _) = watch::channel(false);
        let common = Arc::new(Common {
            config,
            base_env,
            tracker: Arc::new(Tracker::default()),
            shutdown,
            detaching: AtomicBool::new(false),
            pull,
        });
        let starter = ProcessStarter {
            common: Arc::clone(&common),
        };
        let pool = WarmPool::new(starter, pool_config, runtime);
        Ok(ProcessBackend { common, pool })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ProcessBackendConfig {
        &self.common.config
    }

    /// PIDs of every runtime this backend has started and not yet reaped (warm, starting and
    /// running), for diagnostics and tests.
    pub fn child_pids(&self) -> Vec<u32> {
        self.common.tracker.pids()
    }

    /// Pull mode: the private directory holding the runtimes' token files (and the CA bundle
    /// they trust), for diagnostics and tests. Removed by `shutdown`.
    pub fn pull_dir(&self) -> Option<PathBuf> {
        self.common.pull.as_ref().map(|p| p.dir_path())
    }

    /// PIDs of the idle warm runtimes.
    pub fn idle_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        self.pool.for_each_idle(|i| pids.push(i.pid));
        pids
    }

    /// Warm pool counters beyond [`PoolStatus`] (starts, failures, idle deaths).
    pub fn pool_counters(&self) -> PoolCounters {
        self.pool.counters()
    }

    async fn launch_inner(&self, job: Job) -> Result<Instance, BackendError> {
        let started = Instant::now();
        if self.pool.is_closed() {
            return Err(BackendError::ShuttingDown);
        }
        if let Some(pull) = &self.common.pull {
            return self.launch_pull(pull, job, started).await;
        }
        let key = job.credentials.api_key.clone();
        let line = job_line(&job)?;
        drop(job);
        // Replacements start once the job is handed over, or when this future ends.
        let mut replenish = Replenish {
            pool: &self.pool,
            due: false,
        };
        while let Some(idle) = self.pool.claim() {
            replenish.due = true;
            match self
                .hand_over(idle, &line, key.clone(), started, &mut replenish)
                .await
            {
                Some(instance) => {
                    self.pool.record_hit();
                    return Ok(instance);
                }
                None => self.pool.record_dead_on_claim(),
            }
        }
        replenish.now();
        self.pool.record_miss();
        self.launch_cold(&line, key, started).await
    }

    /// Gives the job to a claimed warm runtime; `None` if it turned out to be dead.
    async fn hand_over(
        &self,
        idle: ProcessIdle,
        line: &str,
        key: ApiKey,
        started: Instant,
        replenish: &mut Replenish<'_, ProcessStarter>,
    ) -> Option<Instance> {
        let ProcessIdle {
            mut stdin, claim, ..
        } = idle;
        let (out_tx, output) = mpsc::channel(self.common.config.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        let (accepted, accepted_rx) = oneshot::channel();
        // The supervisor learns about the claim before the runtime can print anything for it,
        // and starts the replacement once the claimed runtime is past its first token.
        claim
            .send(Claim {
                out: out_tx,
                cancel: cancel_rx,
                key,
                accepted,
                refill: replenish.defer(),
            })
            .ok()?;
        // On failure `output` is dropped here, and the supervisor terminates and reaps the
        // instance.
        write_job(&mut stdin, line, self.write_timeout())
            .await
            .ok()?;
        drop(stdin);
        let claim_latency = started.elapsed();
        // A runtime that was already dying (say, SIGKILLed a moment ago: kill(2) returns before
        // the target is gone, so the write above can still succeed) ends without printing
        // anything. The runtime prints `start` (or a config error) before any network I/O, so
        // a runtime that printed nothing sent nothing upstream, and the job can safely go to
        // the next instance. This waits for the runtime, not for controller work (`start`
        // comes a millisecond or so after the job line), and delays no event: the caller would
        // be waiting for that first line anyway. Printed something (`Ok(Ok)`), or is slow to
        // (`Err`): either way it has the job.
        let accepted = tokio::time::timeout(self.common.config.ready_timeout, accepted_rx).await;
        if let Ok(Err(_)) = accepted {
            return None;
        }
        Some(Instance {
            output,
            cancel,
            warm: true,
            claim_latency,
        })
    }

    async fn launch_cold(
        &self,
        line: &str,
        key: ApiKey,
        started: Instant,
    ) -> Result<Instance, BackendError> {
        let mut spawned = spawn_runtime(&self.common, false, None).await?;
        let mut stdin = spawned.stdin.take().ok_or_else(no_pipe)?;
        let (out_tx, output) = mpsc::channel(self.common.config.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        let mut supervisor = Supervisor::new(Arc::clone(&self.common), spawned);
        supervisor.key = Some(key);
        tokio::spawn(supervisor.run(Some(out_tx), Some(cancel_rx), None));
        match write_job(&mut stdin, line, self.write_timeout()).await {
            Ok(()) => {}
            // Stuck without reading its stdin: dropping `output` makes the supervisor stop it.
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(BackendError::Launch(
                    "the runtime did not accept the job".into(),
                ));
            }
            // It exited before reading the job (a broken binary, say): the instance's output
            // still ends with its `Exited`, which says how (code, stderr tail).
            Err(e) => {
                tracing::debug!(error = %e, "process backend: writing the job failed");
            }
        }
        drop(stdin);
        Ok(Instance {
            output,
            cancel,
            warm: false,
            claim_latency: started.elapsed(),
        })
    }

    fn write_timeout(&self) -> Duration {
        self.common.config.cancel_grace.max(Duration::from_secs(1))
    }

    async fn shutdown_inner(&self) {
        // No more refills; idle runtimes whose stdin closes exit 0 on their own.
        drop(self.pool.close());
        // Pull mode: every poll still waiting is told that no job will come (410), so idle and
        // starting runtimes exit 0 on their own too.
        if let Some(pull) = &self.common.pull {
            pull.registry.close();
        }
        // Every supervisor (including ones being spawned right now) sends SIGTERM, then
        // SIGKILL after the grace.
        self.common.shutdown.send_replace(true);
        self.common.tracker.close_and_wait().await;
        // Every token revoked, the private directory (token files, CA bundle) removed.
        if let Some(pull) = &self.common.pull {
            pull.close();
        }
    }
}

impl Backend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    fn launch(&self, job: Job) -> BoxFuture<'_, Result<Instance, BackendError>> {
        Box::pin(self.launch_inner(job))
    }

    fn pool_status(&self) -> PoolStatus {
        self.pool.status()
    }

    fn set_pool_size(&self, size: usize) -> Result<(), BackendError> {
        self.pool.set_size(size)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.shutdown_inner())
    }

    fn runtime_api(&self) -> Option<super::pull::RuntimeApi> {
        self.common.pull.as_ref().map(|p| p.api())
    }

    fn instance_record(&self, execution_id: &str) -> Option<super::InstanceRecord> {
        self.common.pull.as_ref()?.take_record(execution_id)
    }

    fn adopt(
        &self,
        record: super::InstanceRecord,
    ) -> BoxFuture<'_, Result<Instance, BackendError>> {
        let result = match &self.common.pull {
            Some(pull) if !self.pool.is_closed() => self.adopt_pull(pull, record),
            Some(_) => Err(BackendError::ShuttingDown),
            None => Err(BackendError::Unavailable(
                "the process backend adopts runtimes only in pull mode".into(),
            )),
        };
        Box::pin(std::future::ready(result))
    }

    /// Pull mode only: its runtimes report over the runtime API and outlive the controller;
    /// stdin-mode runtimes are children by design and stop with it.
    fn detaches(&self) -> bool {
        self.common.pull.is_some()
    }

    fn detach(&self) -> BoxFuture<'_, ()> {
        self.common.detaching.store(true, Ordering::SeqCst);
        Box::pin(self.shutdown_inner())
    }
}

async fn write_job(stdin: &mut ChildStdin, line: &str, limit: Duration) -> io::Result<()> {
    let write = async {
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await
    };
    tokio::time::timeout(limit, write)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "job write timed out"))?
}

fn no_pipe() -> BackendError {
    BackendError::Launch("the runtime's pipes are missing".into())
}

// ---------------------------------------------------------------------------------------------
// Child bookkeeping: how many children are unreaped, and their pids.

#[derive(Default)]
struct Tracker {
    state: Mutex<TrackState>,
    zero: Notify,
}

#[derive(Default)]
struct TrackState {
    live: usize,
    closed: bool,
    pids: HashSet<u32>,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a child about to be spawned; refused once shutdown began, so that shutdown's
    /// wait covers every child that will ever exist.
    fn enter(self: &Arc<Self>) -> Result<LiveGuard, BackendError> {
        let mut st = self.lock();
        if st.closed {
            return Err(BackendError::ShuttingDown);
        }
        st.live += 1;
        Ok(LiveGuard {
            tracker: Arc::clone(self),
            pid: None,
        })
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.lock().pids.iter().copied().collect();
        pids.sort_unstable();
        pids
    }

    /// Admits no new child and waits until every counted child is reaped.
    async fn close_and_wait(&self) {
        loop {
            let notified = self.zero.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                st.closed = true;
                if st.live == 0 {
                    return;
                }
            }
            notified.await;
        }
    }
}

/// One unreaped (or about to be spawned) child. Dropped right after the child is reaped.
struct LiveGuard {
    tracker: Arc<Tracker>,
    pid: Option<u32>,
}

impl LiveGuard {
    fn set_pid(&mut self, pid: u32) {
        self.pid = Some(pid);
        self.tracker.lock().pids.insert(pid);
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut st = self.tracker.lock();
        st.live = st.live.saturating_sub(1);
        if let Some(pid) = self.pid {
            st.pids.remove(&pid);
        }
        if st.live == 0 {
            self.tracker.zero.notify_waiters();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spawning.

struct Spawned {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    stdout: LineReader<ChildStdout>,
    stderr: JoinHandle<Tail>,
    guard: LiveGuard,
}

/// Starts a runtime: cold (`run --job -`), warm on stdin, or, with `token_file`, in pull mode
/// (the token travels as a file path: never in argv, and not in the environment either).
async fn spawn_runtime(
    common: &Arc<Common>,
    warm: bool,
    token_file: Option<&Path>,
) -> Result<Spawned, BackendError> {
    let mut guard = common.tracker.enter()?;
    let mut env = common.base_env.clone();
    let args: Vec<OsString> = if let Some(file) = token_file {
        if let Some(pull) = &common.pull {
            env = pull.env.clone();
        }
        env.push((
            "RUNTIME_TOKEN_FILE".into(),
            file.to_string_lossy().into_owned(),
        ));
        Vec::new()
    } else if warm {
        env.push(("WARM_POOL".into(), "true".into()));
        Vec::new()
    } else {
        vec!["run".into(), "--job".into(), "-".into()]
    };
    let spec = spawner::SpawnSpec {
        program: common.config.runtime_path.clone(),
        args,
        env,
        outlive: token_file.is_some(),
    };
    let mut child = spawner::spawn(spec).await.map_err(|e| {
        tracing::warn!(error = %e, "process backend: cannot start the runtime");
        match e.kind() {
            io::ErrorKind::NotFound => {
                BackendError::Unavailable(format!("the {RUNTIME_BIN} binary was not found"))
            }
            io::ErrorKind::PermissionDenied => {
                BackendError::Unavailable(format!("the {RUNTIME_BIN} binary is not executable"))
            }
            kind => BackendError::Launch(format!("spawning failed ({kind})")),
        }
    })?;
    // Dropping `child` on an early return below kills it and leaves it to tokio's reaper.
    let pid = child.id().ok_or_else(no_pipe)?;
    guard.set_pid(pid);
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().ok_or_else(no_pipe)?;
    let stderr = child.stderr.take().ok_or_else(no_pipe)?;
    let keep = common.config.max_stderr_bytes + REDACTION_SLACK;
    Ok(Spawned {
        child,
        pid,
        stdin,
        stdout: LineReader::new(stdout, common.config.max_line_bytes),
        stderr: tokio::spawn(drain_stderr(stderr, keep)),
        guard,
    })
}

// ---------------------------------------------------------------------------------------------
// The warm pool's instances.

/// An idle warm runtime, as the pool holds it. Dropping it closes the runtime's stdin (it
/// exits 0) and tells its supervisor it was released.
struct ProcessIdle {
    pid: u32,
    stdin: ChildStdin,
    claim: oneshot::Sender<Claim>,
    alive: Arc<AtomicBool>,
    /// Pull mode: the instance's slot in the registry, which a claim assigns the job to.
    instance: Option<InstanceId>,
}

impl WarmInstance for ProcessIdle {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.claim.is_closed()
    }
}

/// What a claimed warm runtime's supervisor needs.
struct Claim {
    out: mpsc::Sender<InstanceOutput>,
    cancel: oneshot::Receiver<()>,
    key: ApiKey,
    /// Fired at the runtime's first output line; dropped unfired if it ends without any.
    accepted: oneshot::Sender<()>,
    /// The pool's replacement for this instance, started just after its first token (or after
    /// [`REFILL_DELAY`], or when the supervisor ends).
    refill: Refill,
}

struct ProcessStarter {
    common: Arc<Common>,
}

impl WarmStarter for ProcessStarter {
    type Instance = ProcessIdle;

    fn start(&self, notice: DeathNotice) -> BoxFuture<'static, Result<ProcessIdle, BackendError>> {
        let common = Arc::clone(&self.common);
        Box::pin(start_warm(common, notice))
    }
}

async fn start_warm(common: Arc<Common>, notice: DeathNotice) -> Result<ProcessIdle, BackendError> {
    // Pull mode: registered idle, with a token valid for its idle lifetime.
    let link = match &common.pull {
        Some(pull) => Some(pull.new_instance(None, pull.idle_token_ttl())?),
        None => None,
    };
    let token_file = link.as_ref().map(|l| l.token_file.clone());
    let mut spawned = spawn_runtime(&common, true, token_file.as_deref()).await?;
    let stdin = spawned.stdin.take().ok_or_else(no_pipe)?;
    let pid = spawned.pid;
    let instance = link.as_ref().map(|l| l.id.clone());
    let (ready_tx, ready_rx) = oneshot::channel();
    let (claim, claim_rx) = oneshot::channel();
    let alive = Arc::new(AtomicBool::new(true));
    let mut supervisor = Supervisor::new(common, spawned);
    supervisor.pull = link;
    tokio::spawn(supervisor.warm(ready_tx, claim_rx, Arc::clone(&alive), notice));
    match ready_rx.await {
        Ok(Ok(())) => Ok(ProcessIdle {
            pid,
            stdin,
            claim,
            alive,
            instance,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BackendError::Launch(
            "the warm runtime stopped before it was ready".into(),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Supervision of one child, from spawn to reap.

struct Supervisor {
    common: Arc<Common>,
    child: Child,
    pid: u32,
    stdout: LineReader<ChildStdout>,
    stdout_open: bool,
    /// When stdout reached EOF.
    eof_at: Option<Instant>,
    stderr: Option<JoinHandle<Tail>>,
    guard: Option<LiveGuard>,
    shutdown: watch::Receiver<bool>,
    shutdown_seen: bool,
    /// When SIGTERM was sent.
    term_sent: Option<Instant>,
    killed: bool,
    exit: Option<Result<ExitStatus, String>>,
    exited_at: Option<Instant>,
    /// Operator notes for `ExitInfo::detail` (why we signalled, what went wrong).
    notes: Vec<String>,
    /// The job's credential, for redaction only.
    key: Option<ApiKey>,
    /// A claimed warm runtime: tell `launch` about the first output line.
    accepted: Option<oneshot::Sender<()>>,
    /// A claimed warm runtime: the pool's replacement, started at `refill_at` (brought forward
    /// at the second output line) or when the supervisor ends.
    refill: Refill,
    refill_at: Option<Instant>,
    /// Output lines read so far.
    lines: u64,
    /// Pull mode: the instance's registry slot, token and event feed.
    pull: Option<pull_mode::PullLink>,
}

/// How the pre-claim phase of a warm runtime ended, when it did not end with a claim.
enum NotClaimed {
    /// The pool dropped it (resize, discard, close, or its start was abandoned).
    Released,
    Shutdown,
    /// It failed before or while idle (exited, garbage, no `ready` in time).
    Failed(String),
    /// Pull mode: it waited its whole idle lifetime (its token is about to expire).
    Retired,
}

impl Supervisor {
    fn new(common: Arc<Common>, spawned: Spawned) -> Supervisor {
        let shutdown = common.shutdown.subscribe();
        Supervisor {
            common,
            child: spawned.child,
            pid: spawned.pid,
            stdout: spawned.stdout,
            stdout_open: true,
            eof_at: None,
            stderr: Some(spawned.stderr),
            guard: Some(spawned.guard),
            shutdown,
            shutdown_seen: false,
            term_sent: None,
            killed: false,
            exit: None,
            exited_at: None,
            notes: Vec::new(),
            key: None,
            accepted: None,
            refill: Refill::none(),
            refill_at: None,
            lines: 0,
            pull: None,
        }
    }

    fn grace(&self) -> Duration {
        self.common.config.cancel_grace
    }

    /// SIGTERM, once, if the child has not been reaped.
    fn terminate(&mut self, why: &str) {
        if self.term_sent.is_some() || self.exit.is_some() {
            return;
        }
        self.term_sent = Some(Instant::now());
        self.notes.push(format!("terminated ({why})"));
        // `id()` is `None` once tokio has reaped the child, so the pid cannot be reused here.
        if let Some(pid) = self.child.id()
            && let Err(e) = crate::sys::send_sigterm(pid)
        {
            tracing::debug!(pid, error = %e, "process backend: SIGTERM failed");
        }
    }

    /// SIGKILL, once, if the child has not been reaped.
    fn kill(&mut self, why: &str) {
        if self.killed || self.exit.is_some() {
            return;
        }
        self.killed = true;
        self.notes.push(format!("killed ({why})"));
        if let Err(e) = self.child.start_kill() {
            tracing::debug!(pid = self.pid, error = %e, "process backend: SIGKILL failed");
        }
    }

    fn record_exit(&mut self, status: io::Result<ExitStatus>) {
        self.exit = Some(status.map_err(|e| format!("waiting for the runtime failed: {e}")));
        self.exited_at = Some(Instant::now());
        // Reaped: shutdown no longer needs to wait for this child.
        self.guard = None;
        // Pull mode: its token and registry slot go with it (a report in progress still ends).
        if let Some(pull) = &mut self.pull {
            pull.revoke();
        }
    }

    /// Pull mode: the event feed is still open.
    fn feed_open(&self) -> bool {
        self.pull.as_ref().is_some_and(|p| p.feed_open)
    }

    /// A warm runtime before its claim: wait for `ready`, report it, then wait for a claim
    /// while watching for death; then run (or reap) it.
    async fn warm(
        mut self,
        ready: oneshot::Sender<Result<(), BackendError>>,
        mut claim_rx: oneshot::Receiver<Claim>,
        alive: Arc<AtomicBool>,
        notice: DeathNotice,
    ) {
        let deadline = Instant::now() + self.common.config.ready_timeout;
        let mut ready = Some(ready);
        // Pull mode: "ready" means it has polled the runtime API (so it can reach the
        // controller and its token works), not that it printed `ready`. Once idle, it waits at
        // most its idle lifetime, within which its token stays valid.
        let pull_mode = self.pull.is_some();
        let mut polled = self.pull.as_mut().and_then(|p| p.polled.take());
        let max_idle = self.common.pull.as_ref().map(|p| p.max_idle);
        let mut idle_until: Option<Instant> = None;
        let outcome: Result<Claim, NotClaimed> = loop {
            let waiting_ready = ready.is_some();
            let waiting_poll = waiting_ready && polled.is_some();
            tokio::select! {
                biased;
                c = &mut claim_rx => break c.map_err(|_| NotClaimed::Released),
                _ = shutdown_signalled(&mut self.shutdown), if !self.shutdown_seen => {
                    self.shutdown_seen = true;
                    break Err(NotClaimed::Shutdown);
                }
                _ = tokio::time::sleep_until(deadline), if waiting_ready => {
                    break Err(NotClaimed::Failed("no ready event in time".into()));
                }
                r = recv_polled(&mut polled), if waiting_poll => {
                    polled = None;
                    // An error means the slot is gone: the exit arm says why.
                    if r.is_ok() {
                        idle_until = max_idle.map(|d| Instant::now() + d);
                        if let Some(tx) = ready.take()
                            && tx.send(Ok(())).is_err()
                        {
                            break Err(NotClaimed::Released);
                        }
                    }
                }
                _ = sleep_opt(idle_until), if !waiting_ready && idle_until.is_some() => {
                    break Err(NotClaimed::Retired);
                }
                status = self.child.wait(), if self.exit.is_none() => {
                    self.record_exit(status);
                    break Err(NotClaimed::Failed("exited".into()));
                }
                line = self.stdout.next(), if self.stdout_open => match line {
                    Ok(Line::Data(bytes)) => {
                        let parsed = parse_event(&bytes);
                        if matches!(parsed, Ok(Some(Event::Ready))) {
                            // The first `ready` makes it idle; a repeated one changes nothing.
                            if !pull_mode
                                && let Some(tx) = ready.take()
                                && tx.send(Ok(())).is_err()
                            {
                                break Err(NotClaimed::Released);
                            }
                        } else if !matches!(parsed, Ok(None)) {
                            let text = garbage_text(&bytes, None);
                            tracing::warn!(pid = self.pid, line = %text,
                                "process backend: unexpected output from an idle warm runtime");
                            break Err(NotClaimed::Failed("unexpected output".into()));
                        }
                    }
                    Ok(Line::TooLong) => {
                        break Err(NotClaimed::Failed("over-long output line".into()));
                    }
                    Ok(Line::Eof) | Err(_) => {
                        self.stdout_open = false;
                        self.eof_at = Some(Instant::now());
                        break Err(NotClaimed::Failed("stdout closed".into()));
                    }
                },
            }
        };
        let outcome = match outcome {
            Ok(claim) => Ok(claim),
            Err(why) => {
                // Make the pool see this instance as dead before anything else, then take a
                // claim that may have raced with this decision: it must still get its
                // `Exited`.
                alive.store(false, Ordering::Release);
                claim_rx.close();
                match claim_rx.try_recv() {
                    Ok(claim) => Ok(claim),
                    Err(_) => Err(why),
                }
            }
        };
        match outcome {
            Ok(claim) => {
                self.key = Some(claim.key);
                self.accepted = Some(claim.accepted);
                self.refill = claim.refill;
                self.refill_at = Some(Instant::now() + REFILL_DELAY);
                self.run(Some(claim.out), Some(claim.cancel), None).await;
            }
            Err(why) => {
                let (reason, terminate_at) = match why {
                    NotClaimed::Released => {
                        // Its stdin is closed: a healthy runtime exits 0 by itself. In pull
                        // mode its polls are answered 410, with the same effect.
                        if let Some(pull) = &self.pull {
                            pull.retire();
                        }
                        ("released", Some(Instant::now() + self.grace()))
                    }
                    NotClaimed::Retired => {
                        if let Some(pull) = &self.pull {
                            pull.retire();
                        }
                        notice.notify();
                        ("idle lifetime over", Some(Instant::now() + self.grace()))
                    }
                    NotClaimed::Shutdown => {
                        self.terminate("shutdown");
                        ("shutdown", None)
                    }
                    NotClaimed::Failed(why) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(Err(BackendError::Launch(format!(
                                "the warm runtime failed to start: {why}"
                            ))));
                        } else {
                            tracing::info!(pid = self.pid, %why,
                                "process backend: an idle warm runtime died; replacing it");
                            notice.notify();
                        }
                        self.terminate("warm runtime failed");
                        ("failed", None)
                    }
                };
                tracing::debug!(
                    pid = self.pid,
                    reason,
                    "process backend: warm runtime leaves the pool"
                );
                self.run(None, None, terminate_at).await;
            }
        }
    }

    /// Forwards output (when `out` is set) until stdout EOF and exit, handling cancel,
    /// shutdown, a dropped receiver and the kill timer; then sends `Exited`. With `out` unset it
    /// only drains and reaps. `terminate_at`: SIGTERM then if the child is still running.
    async fn run(
        mut self,
        mut out: Option<mpsc::Sender<InstanceOutput>>,
        mut cancel: Option<oneshot::Receiver<()>>,
        terminate_at: Option<Instant>,
    ) {
        let grace = self.grace();
        let max_line = self.common.config.max_line_bytes;
        // Look at the shutdown flag afresh: a warm runtime claimed in a race with shutdown
        // must still be terminated.
        self.shutdown_seen = false;
        let mut pending: Option<InstanceOutput> = None;
        // After an over-long line: the rest of the output is not trusted.
        let mut discard = false;
        while self.stdout_open || self.exit.is_none() || self.feed_open() {
            let kill_at = self.term_sent.map(|t| t + grace);
            // A runtime that closed stdout but keeps running is stuck: stop it.
            let linger_at = self.eof_at.map(|t| t + grace);
            // A child that exited while something else holds its stdout (or, in pull mode, its
            // event report) open: stop reading.
            let give_up_at = self.exited_at.map(|t| t + grace);
            let feed_open = self.feed_open();
            tokio::select! {
                biased;
                r = recv_cancel(&mut cancel) => {
                    cancel = None;
                    // A dropped handle is not a cancel: the output receiver decides.
                    if r.is_ok() {
                        self.terminate("cancelled");
                    }
                }
                _ = shutdown_signalled(&mut self.shutdown), if !self.shutdown_seen => {
                    self.shutdown_seen = true;
                    if self.common.detaching.load(Ordering::SeqCst)
                        && out.is_some()
                        && self.exit.is_none()
                        && let Some(pull) = &self.pull
                    {
                        // Detach: the runtime keeps its job and reports to the next
                        // controller. No signal, no `Exited`; the child is dropped unkilled.
                        tracing::info!(pid = self.pid, instance = %pull.id,
                            "process backend: detaching from a running pull-mode runtime");
                        return;
                    }
                    self.terminate("shutdown");
                }
                _ = sleep_opt(kill_at), if !self.killed && self.exit.is_none() => {
                    self.kill(&format!("still running {grace:?} after SIGTERM"));
                }
                _ = sleep_opt(terminate_at), if self.term_sent.is_none() && self.exit.is_none() => {
                    self.terminate("did not exit after its stdin closed");
                }
                _ = sleep_opt(linger_at), if self.term_sent.is_none() && self.exit.is_none() => {
                    self.terminate("still running after closing stdout");
                }
                status = self.child.wait(), if self.exit.is_none() => self.record_exit(status),
                _ = sleep_opt(self.refill_at), if self.refill.is_armed() => self.refill.now(),
                _ = sleep_opt(give_up_at), if self.stdout_open || feed_open => {
                    if self.stdout_open {
                        self.stdout_open = false;
                        self.notes.push("stdout still open after exit".into());
                    }
                    if let Some(pull) = &mut self.pull
                        && pull.feed_open
                    {
                        pull.close_feed();
                        self.notes.push("event report still open after exit".into());
                    }
                }
                // Pull mode: the events the runtime reports over the runtime API.
                item = recv_feed(&mut self.pull), if feed_open && pending.is_none() => match item {
                    Some(item) => {
                        if let Some(accepted) = self.accepted.take() {
                            let _ = accepted.send(());
                        }
                        if !discard && out.is_some() {
                            pending = Some(item);
                        }
                    }
                    None => {
                        if let Some(pull) = &mut self.pull {
                            pull.close_feed();
                        }
                    }
                },
                open = has_capacity(&out), if pending.is_some() => match (open, &out, pending.take()) {
                    (true, Some(tx), Some(item)) => {
                        // This task is the channel's only sender, so the capacity just seen is
                        // still there.
                        if let Err(mpsc::error::TrySendError::Full(item)) = tx.try_send(item) {
                            pending = Some(item);
                        }
                    }
                    _ => {
                        out = None;
                        self.terminate("output dropped");
                    }
                },
                _ = closed(&out), if pending.is_none() => {
                    out = None;
                    self.terminate("output dropped");
                }
                line = self.stdout.next(), if self.stdout_open && pending.is_none() => match line {
                    Ok(Line::Data(bytes)) => {
                        if let Some(accepted) = self.accepted.take() {
                            let _ = accepted.send(());
                        }
                        // `start` comes first; the next line is the first token (or an error).
                        // The replacement starts a moment after it, once that token is on its
                        // way to the client, not while this task and the driver relay it.
                        self.lines += 1;
                        if self.lines == 2 {
                            let soon = Instant::now() + REFILL_AFTER_FIRST_TOKEN;
                            self.refill_at = Some(self.refill_at.map_or(soon, |t| t.min(soon)));
                        }
                        if discard || out.is_none() {
                            continue;
                        }
                        pending = line_output(&bytes, self.key.as_ref());
                    }
                    Ok(Line::TooLong) => {
                        if let Some(accepted) = self.accepted.take() {
                            let _ = accepted.send(());
                        }
                        if !discard && out.is_some() {
                            pending = Some(InstanceOutput::Garbage(format!(
                                "output line longer than {max_line} bytes"
                            )));
                        }
                        discard = true;
                        self.kill("output line too long");
                    }
                    Ok(Line::Eof) | Err(_) => {
                        self.stdout_open = false;
                        self.eof_at = Some(Instant::now());
                    }
                },
            }
        }
        if let (Some(tx), Some(item)) = (&out, pending.take()) {
            let _ = tx.send(item).await;
        }
        let info = self.exit_info().await;
        if let Some(tx) = out {
            // The receiver may be gone; then nobody needs it.
            let _ = tx.send(InstanceOutput::Exited(info)).await;
        }
    }

    async fn exit_info(&mut self) -> ExitInfo {
        let tail = match self.stderr.take() {
            // The child is gone, so stderr is at EOF unless something inherited it.
            Some(task) => match tokio::time::timeout(Duration::from_secs(1), task).await {
                Ok(Ok(tail)) => Some(tail),
                _ => None,
            },
            None => None,
        };
        let (code, signal) = match &self.exit {
            Some(Ok(status)) => (status.code(), status.signal()),
            Some(Err(e)) => {
                self.notes.push(e.clone());
                (None, None)
            }
            None => (None, None),
        };
        let mut parts = std::mem::take(&mut self.notes);
        if code != Some(0)
            && let Some(tail) = tail
        {
            let text = render_tail(tail, self.key.as_ref(), self.common.config.max_stderr_bytes);
            if !text.is_empty() {
                parts.push(format!("stderr: {text}"));
            }
        }
        ExitInfo {
            code,
            signal,
            detail: (!parts.is_empty()).then(|| parts.join("; ")),
            oom_killed: false,
        }
    }
}

async fn recv_cancel(
    cancel: &mut Option<oneshot::Receiver<()>>,
) -> Result<(), oneshot::error::RecvError> {
    match cancel {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

async fn recv_polled(polled: &mut Option<oneshot::Receiver<()>>) -> Result<(), ()> {
    match polled {
        Some(rx) => rx.await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}

async fn recv_feed(pull: &mut Option<pull_mode::PullLink>) -> Option<InstanceOutput> {
    match pull {
        Some(p) if p.feed_open => p.recv().await,
        _ => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits until the channel can take one item: `true`, or `false` if the receiver is gone.
async fn has_capacity<T>(out: &Option<mpsc::Sender<T>>) -> bool {
    match out {
        Some(tx) => tx.reserve().await.is_ok(),
        None => false,
    }
}

async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        // The backend is gone without a shutdown; nothing will ever signal.
        std::future::pending::<()>().await;
    }
}

async fn closed<T>(out: &Option<mpsc::Sender<T>>) {
    match out {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded line reading and the stderr tail.

enum Line {
    Data(Vec<u8>),
    /// A line exceeded the bound; its bytes were discarded.
    TooLong,
    Eof,
}

/// Reads `\n`-terminated lines of at most `max` bytes. Cancel-safe: partial progress lives in
/// `self`, so it can sit in a `select!`.
struct LineReader<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    max: usize,
    /// Discarding the rest of an over-long line.
    skipping: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R, max: usize) -> LineReader<R> {
        LineReader {
            inner: BufReader::with_capacity(64 * 1024, inner),
            buf: Vec::new(),
            max,
            skipping: false,
        }
    }

    async fn next(&mut self) -> io::Result<Line> {
        loop {
            let chunk = self.inner.fill_buf().await?;
            if chunk.is_empty() {
                // EOF; a last line without its newline still counts.
                if self.buf.is_empty() {
                    return Ok(Line::Eof);
                }
                return Ok(Line::Data(std::mem::take(&mut self.buf)));
            }
            match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let skipping = std::mem::replace(&mut self.skipping, false);
                    let fits = self.buf.len() + i <= self.max;
                    if !skipping && fits {
                        self.buf.extend_from_slice(&chunk[..i]);
                    }
                    self.inner.consume(i + 1);
                    if skipping {
                        continue;
                    }
                    if !fits {
                        self.buf.clear();
                        return Ok(Line::TooLong);
                    }
                    return Ok(Line::Data(std::mem::take(&mut self.buf)));
                }
                None => {
                    let n = chunk.len();
                    if self.skipping {
                        self.inner.consume(n);
                    } else if self.buf.len() + n <= self.max {
                        self.buf.extend_from_slice(chunk);
                        self.inner.consume(n);
                    } else {
                        self.inner.consume(n);
                        self.buf = Vec::new();
                        self.skipping = true;
                        return Ok(Line::TooLong);
                    }
                }
            }
        }
    }
}

/// Reads stderr to EOF (so the child never blocks on a full pipe), keeping the last `keep`
/// bytes.
async fn drain_stderr(mut stderr: ChildStderr, keep: usize) -> Tail {
    let mut bytes = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; 8192];
    loop {
        match stderr.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.extend_from_slice(&chunk[..n]);
                if bytes.len() > keep {
                    let cut = bytes.len() - keep;
                    bytes.drain(..cut);
                    truncated = true;
                }
            }
        }
    }
    Tail { bytes, truncated }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut r = LineReader::new(input, max);
        let mut out = Vec::new();
        loop {
            match r.next().await.unwrap() {
                Line::Data(d) => out.push(String::from_utf8(d).unwrap()),
                Line::TooLong => out.push("<too long>".into()),
                Line::Eof => return out,
            }
        }
    }

    #[tokio::test]
    async fn line_reader_bounds_lines() {
        assert_eq!(lines(b"a\nbb\n\nccc", 3).await, ["a", "bb", "", "ccc"]);
        assert_eq!(
            lines(b"abcd\nxy\nabcdefgh\nz\n", 3).await,
            ["<too long>", "xy", "<too long>", "z"]
        );
    }

    #[test]
    fn tail_is_redacted_and_bounded() {
        let key = ApiKey::new("sk-SECRET-123");
        let tail = Tail {
            bytes: b"x sk-SECRET-123 y".to_vec(),
            truncated: false,
        };
        assert_eq!(render_tail(tail, Some(&key), 100), "x [REDACTED] y");
        // A key cut by the window's start leaves no fragment.
        let tail = Tail {
            bytes: b"CRET-123 then the end".to_vec(),
            truncated: true,
        };
        let text = render_tail(tail, Some(&key), 100);
        assert!(!text.contains("CRET"), "{text}");
        let tail = Tail {
            bytes: "ééééé".as_bytes().to_vec(),
            truncated: false,
        };
        assert_eq!(render_tail(tail, None, 3), "é");
    }

    #[test]
    fn credential_like_env_is_refused() {
        let env = |k: &str| vec![(k.to_owned(), "v".to_owned())];
        assert!(check_env(&env("OPENAI_BASE_URL")).is_ok());
        assert!(check_env(&env("OPENAI_API_KEY")).is_err());
        assert!(check_env(&env("gemini_api_key_file")).is_err());
        assert!(check_env(&env("RUNTIME_TOKEN")).is_err());
        assert!(check_env(&env("A=B")).is_err());
    }

    #[test]
    fn garbage_is_cut_and_redacted() {
        let key = ApiKey::new("k3y");
        assert_eq!(garbage_text(b"oops k3y", Some(&key)), "oops [REDACTED]");
        let long = vec![b'x'; 5000];
        assert!(garbage_text(&long, None).len() <= crate::backend::text::MAX_GARBAGE_CHARS + 3);
    }
}
