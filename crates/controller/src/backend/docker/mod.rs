//! The Docker backend (`POLYDEV_BACKEND=docker`): every execution runs in its own hardened,
//! short-lived container of the pinned runtime image, started cold or taken from a warm pool,
//! driven over the Docker Engine API on its unix socket (DESIGN.md 4.4, 5;
//! reference/orchestration.md 4).
//!
//! Why it is built this way:
//!
//! - **The credential travels only on the attached stdin.** Containers are created with
//!   `OpenStdin`/`StdinOnce` and attached (`POST /containers/{id}/attach` with
//!   `Upgrade: tcp`, answered `101`) *before* they start, so no output is missed; the job line
//!   is written on that hijacked connection and its write side is then shut down (the engine
//!   closes the container's stdin). Env, labels and the command hold only non-secret settings,
//!   so `docker inspect` never shows a key; the job is not in any engine object or log.
//! - **Output comes from the attach stream, not `/logs`**: no log file and no inotify watch per
//!   container, no polling lag, and the log driver is `none`, so prompts and answers never
//!   touch the engine's disk. The stream is multiplexed (`Tty=false`: 8-byte frame headers,
//!   see `stream.rs`); stdout is split into bounded lines exactly like the process backend's.
//! - **One supervisor task per container** (`supervisor.rs`) from start to removal: it
//!   forwards events through a bounded channel, turns cancel into SIGTERM then SIGKILL after
//!   the grace, and when the stream ends asks the engine for the exit code (`wait`) and state
//!   (`inspect`: `OOMKilled`), removes the container (`DELETE ?force=1`), and sends the one
//!   `Exited`, last. `AutoRemove` is off on purpose: with it, the state (and so the OOM flag)
//!   can vanish before it is read (orchestration.md 4.3).
//! - **The warm pool** is the generic [`WarmPool`]: started containers in `WARM_POOL=true`
//!   mode that printed `ready` and wait on stdin, each with its attach connection already
//!   open, so a claim is a mutex, a oneshot send and one write on an open socket, with no
//!   engine round trip. Dead idle containers are never handed out (the stream's end marks them
//!   dead and the pool replaces them).
//! - **Everything is labelled and nothing leaks**: `io.polydev.managed=true`,
//!   `io.polydev.controller=<instance>` (stable across restarts), `io.polydev.session=<this
//!   process>`, `io.polydev.role=warm|cold` and, for cold containers,
//!   `io.polydev.execution=<id>`. A container's removal is owned by a guard that, if its
//!   normal path is skipped, removes it in the background; shutdown waits for every removal
//!   and then sweeps anything still labelled with its session.
//! - **After a restart**, the controller (same instance name) finds its predecessor's
//!   containers by label and removes them ([`Recovery`]), but for those of executions it
//!   adopts (pull mode, [`DockerBackendConfig::adopting`]); executions the others were running
//!   are the ones the store already marked `failed`/`interrupted` when it opened, and
//!   [`record_interrupted`] makes sure of it. Idle warm containers are not adopted: with
//!   `StdinOnce`, the dead controller's attach connection closing has closed their stdin for
//!   good (the runtime has exited or is exiting), and labels cannot say whether a warm
//!   container was already claimed, so adopting one could hand out a runtime that is running
//!   someone else's job.
//! - **Pull mode** (`POLYDEV_DOCKER_MODE=pull`, `pull.rs`): containers get no stdin; they
//!   fetch their job from the controller's runtime API with a per-container token (a read-only
//!   bind-mounted file, never env) and post their events back, like the process backend's pull
//!   mode and Nomad, with the same shared registry and tokens (`backend/pull.rs`). Nothing of
//!   an execution then rides on a connection to the engine, the precondition for adopting
//!   containers after a controller restart; they are labelled for it (`io.polydev.mode`,
//!   `io.polydev.instance`, and `io.polydev.execution` for cold ones).
//! - **Runtimes outlive the controller in pull mode** (DESIGN.md 5.2): each handed-out job is
//!   journaled as an [`InstanceRecord`](super::InstanceRecord) (the container id, the token's
//!   digest and expiry); SIGTERM detaches (idle warm containers are removed, those with a job
//!   run on, their token files and the private directory stay), and the next controller leaves
//!   them out of its start-up removal and adopts them (`pull.rs`): the token is accepted again,
//!   the container attached again for its exit, and its end handled as any container's.
//! - **An unreachable engine** is reported as [`BackendError::Unavailable`] naming the socket
//!   and what to check; the controller then answers `503 unavailable` for a few seconds
//!   instead of queueing work it cannot run.

mod api;
mod config;
mod pull;
mod spec;
mod stream;
mod supervisor;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use polydev_protocol::{ApiKey, Job};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

pub use api::{ContainerState, DockerError};
pub use config::{
    DEFAULT_IMAGE, DEFAULT_INSTANCE, DEFAULT_MEMORY, DEFAULT_NETWORK, DEFAULT_PIDS, DEFAULT_SOCKET,
    DEFAULT_USER, DockerBackendConfig, DockerMode, MIN_MEMORY, socket_from_docker_host,
};
pub use spec::{
    CA_MOUNT, LABEL_CONTROLLER, LABEL_EXECUTION, LABEL_INSTANCE, LABEL_MANAGED, LABEL_MODE,
    LABEL_ROLE, LABEL_SESSION, TOKEN_MOUNT,
};

use self::api::{AttachStream, Docker};
use self::config::Prepared;
use self::pull::{DockerPull, PullLink};
use self::spec::{ContainerSpec, Pulled, Role};
use self::stream::AttachReader;
use self::supervisor::{Claim, Supervisor};
use super::pool::{
    DeathNotice, PoolConfig, PoolCounters, Replenish, WarmInstance, WarmPool, WarmStarter,
};
use super::pull::InstanceId;
use super::{Backend, BackendError, CancelHandle, Instance, PoolStatus, job_line};
use crate::store::Store;

/// Open files per container.
const NOFILE: u64 = 1024;
/// Extra stderr bytes kept beyond `max_stderr_bytes`, so that a credential cut at the start of
/// the kept window can be dropped whole before redaction (see [`render_tail`]).
const REDACTION_SLACK: usize = 4096;
/// What start-up found from a previous controller process with the same instance name, and
/// removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Containers removed.
    pub removed: usize,
    /// Of those, idle or claimed warm containers.
    pub warm: usize,
    /// Executions whose cold container was still running (killed and removed): they end
    /// `failed`/`interrupted` (see [`record_interrupted`]).
    pub interrupted: Vec<String>,
    /// Containers left for adoption (pull mode, [`DockerBackendConfig::adopting`]).
    pub kept: usize,
}

/// Makes sure the store records every execution in `ids` (from [`Recovery::interrupted`]) as
/// `failed`/`interrupted`. The store already does so for every row it finds unfinished when it
/// opens; this covers rows written afterwards by a slow store thread of the same process.
/// Rows that are already terminal (the runtime finished just before the crash) stay as they
/// are. Returns how many rows it changed.
pub async fn record_interrupted(store: &Store, ids: &[String]) -> usize {
    let mut changed = 0;
    for id in ids {
        match store.get(id).await {
            Ok(Some(mut record)) if matches!(record.status.as_str(), "queued" | "running") => {
                record.status = "failed".into();
                record.error_kind = Some("interrupted".into());
                record.ended_at_ms = Some(crate::execution::unix_ms(std::time::SystemTime::now()));
                store.put(record);
                changed += 1;
            }
            Ok(Some(record)) => {
                tracing::debug!(execution_id = %id, status = %record.status,
                    "docker backend: a leftover container's execution had already ended");
            }
            Ok(None) => {
                tracing::warn!(execution_id = %id,
                    "docker backend: a leftover container ran an execution the store does not know");
            }
            Err(e) => {
                tracing::warn!(execution_id = %id, error = %e,
                    "docker backend: cannot read a leftover container's execution");
            }
        }
    }
    store.flush().await;
    changed
}

/// Runs runtimes in Docker containers. See the module documentation.
pub struct DockerBackend {
    common: Arc<Common>,
    pool: WarmPool<DockerStarter>,
    recovery: watch::Receiver<Option<Recovery>>,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend")
            .field("socket", &self.common.config.socket)
            .field("image", &self.common.config.image)
            .field("instance", &self.common.config.instance)
            .field("session", &self.common.session)
            .field("pool", &self.pool)
            .finish()
    }
}

/// What every supervisor, guard and the warm starter share.
pub(crate) struct Common {
    config: DockerBackendConfig,
    docker: Docker,
    /// `KEY=VALUE`, with `OUTPUT=ndjson` forced and `EXTRA_CA_CERTS` pointing at the mount.
    env: Vec<String>,
    binds: Vec<String>,
    /// Labels of every container: managed, controller, session, extra.
    labels: BTreeMap<String, String>,
    session: String,
    nano_cpus: Option<i64>,
    tracker: Arc<Tracker>,
    /// Flipped to `true` once by `shutdown`: every supervisor stops its container.
    shutdown: watch::Sender<bool>,
    network_ready: tokio::sync::OnceCell<()>,
    seq: AtomicU64,
    /// Pull mode (`POLYDEV_DOCKER_MODE=pull`): the registry, tokens and private directory.
    pull: Option<Arc<DockerPull>>,
    /// Set by `detach` (pull mode) before the shutdown signal: supervisors of containers
    /// running a fetched job let them run on, for the next controller to adopt.
    detaching: AtomicBool,
    /// Ids of the containers a detach left running: the shutdown sweep leaves them.
    released: Mutex<BTreeSet<String>>,
}

impl DockerBackend {
    /// Validates the configuration, starts filling the warm pool and, in the background,
    /// removes what a previous controller with the same instance name left behind. Does not
    /// need the engine to be up: launches report it as unavailable until it is. Must be called
    /// inside a tokio runtime.
    pub fn new(config: DockerBackendConfig) -> Result<DockerBackend, BackendError> {
        let runtime = Handle::try_current().map_err(|_| {
            BackendError::Unavailable("the Docker backend needs a tokio runtime".into())
        })?;
        let Prepared {
            mut env,
            mut binds,
            nano_cpus,
        } = config.prepare()?;
        let pull = match &config.pull {
            Some(options) => {
                let pull = DockerPull::new(options, &config)?;
                env.retain(|e| !e.starts_with("CONTROLLER_URL="));
                env.push(format!("CONTROLLER_URL={}", pull.url));
                if let Some(ca) = &pull.ca_bundle {
                    binds.retain(|b| !b.ends_with(&format!(":{CA_MOUNT}:ro")));
                    binds.push(format!("{}:{CA_MOUNT}:ro", ca.display()));
                    env.retain(|e| !e.starts_with("EXTRA_CA_CERTS="));
                    env.push(format!("EXTRA_CA_CERTS={CA_MOUNT}"));
                }
                Some(Arc::new(pull))
            }
            None => None,
        };
        let session = new_session_id();
        let mut labels: BTreeMap<String, String> = config.extra_labels.iter().cloned().collect();
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_CONTROLLER.into(), config.instance.clone());
        labels.insert(LABEL_SESSION.into(), session.clone());
        let pool_config = PoolConfig {
            size: config.pool_size,
            max_concurrent_starts: config.max_concurrent_starts,
            backoff_max: config.start_backoff_max,
            ..PoolConfig::default()
        };
        let (shutdown, _) = watch::channel(false);
        let docker = Docker::new(config.socket.clone(), config.api_timeout);
        let common = Arc::new(Common {
            config,
            docker,
            env,
            binds,
            labels,
            session,
            nano_cpus,
            tracker: Arc::new(Tracker::default()),
            shutdown,
            network_ready: tokio::sync::OnceCell::new(),
            seq: AtomicU64::new(0),
            pull,
            detaching: AtomicBool::new(false),
            released: Mutex::new(BTreeSet::new()),
        });
        let (recovery_tx, recovery) = watch::channel(None);
        runtime.spawn(startup(Arc::clone(&common), recovery_tx));
        let starter = DockerStarter {
            common: Arc::clone(&common),
        };
        let pool = WarmPool::new(starter, pool_config, runtime);
        Ok(DockerBackend {
            common,
            pool,
            recovery,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &DockerBackendConfig {
        &self.common.config
    }

    /// Attach or pull.
    pub fn mode(&self) -> DockerMode {
        self.common.config.mode()
    }

    /// Pull mode: the private directory holding the containers' token files (and the CA
    /// bundle), for diagnostics and tests.
    pub fn pull_dir(&self) -> Option<std::path::PathBuf> {
        self.common
            .pull
            .as_ref()
            .map(|p| p.dir_path().to_path_buf())
    }

    /// This process's session id (label `io.polydev.session` of its containers).
    pub fn session(&self) -> &str {
        &self.common.session
    }

    /// Names of every container this backend has created and not yet removed (warm, starting
    /// and running), for diagnostics and tests.
    pub fn container_names(&self) -> Vec<String> {
        self.common.tracker.names()
    }

    /// Names of the idle warm containers.
    pub fn idle_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.pool.for_each_idle(|i| names.push(i.name.clone()));
        names
    }

    /// Warm pool counters beyond [`PoolStatus`].
    pub fn pool_counters(&self) -> PoolCounters {
        self.pool.counters()
    }

    /// What start-up removed, once it is done (it retries while the engine is unreachable);
    /// `None` if the backend shut down first.
    pub async fn recovery(&self) -> Option<Recovery> {
        let mut rx = self.recovery.clone();
        let mut shutdown = self.common.shutdown.subscribe();
        tokio::select! {
            r = rx.wait_for(Option::is_some) => r.ok().and_then(|r| r.clone()),
            _ = shutdown.wait_for(|s| *s) => None,
        }
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
        let execution_id = job.execution_id.clone();
        let line = job_line(&job)?;
        drop(job);
        // Replacements start once the job is handed over, or when this future ends.
        let mut replenish = Replenish {
            pool: &self.pool,
            due: false,
        };
        // A container that took the job and died without a word may have been dying anyway
        // (killed from outside) or killed by the job itself (out of memory, where the engine
        // cannot always say so): the job gets one more warm container, not the whole pool.
        let mut silent_retries = 1u32;
        while let Some(idle) = self.pool.claim() {
            replenish.due = true;
            let retry_if_silent = silent_retries > 0;
            match self
                .hand_over(
                    idle,
                    &line,
                    key.clone(),
                    started,
                    retry_if_silent,
                    &mut replenish,
                )
                .await
            {
                HandOver::Served(instance) => {
                    self.pool.record_hit();
                    return Ok(instance);
                }
                HandOver::Dead { took_job } => {
                    self.pool.record_dead_on_claim();
                    if took_job {
                        silent_retries = silent_retries.saturating_sub(1);
                    }
                }
            }
        }
        replenish.now();
        self.pool.record_miss();
        self.launch_cold(&line, key, execution_id.as_deref(), started)
            .await
    }

    /// Gives the job to a claimed warm container, unless it turns out to be dead. With
    /// `retry_if_silent` unset, a container that dies without output after taking the job is
    /// served anyway (its output then says how it died).
    async fn hand_over(
        &self,
        idle: DockerIdle,
        line: &str,
        key: ApiKey,
        started: Instant,
        retry_if_silent: bool,
        replenish: &mut Replenish<'_, DockerStarter>,
    ) -> HandOver {
        let DockerIdle { stdin, claim, .. } = idle;
        let Some(mut stdin) = stdin else {
            return HandOver::Dead { took_job: false };
        };
        let (out_tx, output) = mpsc::channel(self.common.config.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        let (accepted, accepted_rx) = oneshot::channel();
        // The supervisor learns about the claim before the runtime can print anything for it.
        let sent = claim.send(Claim {
            out: out_tx,
            cancel: cancel_rx,
            key,
            accepted,
            retry_if_silent,
        });
        if sent.is_err() {
            return HandOver::Dead { took_job: false };
        }
        // On failure `output` is dropped here, and the supervisor stops and removes the
        // container.
        if let Err(e) = write_job(&mut stdin, line, self.write_timeout()).await {
            tracing::debug!(error = %e, "docker backend: handing the job to a warm container failed");
            return HandOver::Dead { took_job: false };
        }
        drop(stdin);
        let claim_latency = started.elapsed();
        replenish.now();
        // A container that was already dying ends without printing anything; the runtime
        // prints `start` (or a config error) before any network I/O, so it sent nothing
        // upstream and the job can go to the next instance. (The supervisor fires `accepted`
        // instead for an out-of-memory death, which the job itself likely caused, and when
        // `retry_if_silent` is unset.)
        let accepted = tokio::time::timeout(self.common.config.ready_timeout, accepted_rx).await;
        if let Ok(Err(_)) = accepted {
            return HandOver::Dead { took_job: true };
        }
        HandOver::Served(Instance {
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
        execution_id: Option<&str>,
        started: Instant,
    ) -> Result<Instance, BackendError> {
        let role = Role::Cold { execution_id };
        let container = start_container(&self.common, &role, None).await?;
        let Started {
            guard,
            reader,
            stdin,
        } = container;
        let Some(mut stdin) = stdin else {
            return Err(BackendError::Launch("no stdin attached".into()));
        };
        let (out_tx, output) = mpsc::channel(self.common.config.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        let mut supervisor = Supervisor::new(Arc::clone(&self.common), guard, reader);
        supervisor.key = Some(key);
        tokio::spawn(supervisor.run(Some(out_tx), Some(cancel_rx)));
        match write_job(&mut stdin, line, self.write_timeout()).await {
            Ok(()) => {}
            // Stuck without reading its stdin: dropping `output` makes the supervisor stop it.
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(BackendError::Launch(
                    "the runtime container did not accept the job".into(),
                ));
            }
            // It exited before reading the job: the output still ends with its `Exited`,
            // which says how (code, OOM, stderr tail).
            Err(e) => tracing::debug!(error = %e, "docker backend: writing the job failed"),
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
        self.common.config.api_timeout
    }

    async fn shutdown_inner(&self) {
        // Pull mode: every poll still waiting is told that no job will come (410).
        if let Some(pull) = &self.common.pull {
            pull.registry.close();
        }
        // No more refills; idle containers are released (their supervisors remove them).
        drop(self.pool.close());
        // Every supervisor (including ones starting right now) stops its container: SIGTERM,
        // then SIGKILL after the grace, then removal.
        self.common.shutdown.send_replace(true);
        let cfg = &self.common.config;
        let limit = cfg.cancel_grace * 3 + cfg.api_timeout;
        if tokio::time::timeout(limit, self.common.tracker.close_and_wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = ?self.common.tracker.names(),
                "docker backend: containers still being removed at shutdown"
            );
        }
        // Anything of this session still there (a create whose answer was lost, a removal
        // that failed) goes now.
        let session = format!("{LABEL_SESSION}={}", self.common.session);
        let released = self.common.released_ids();
        match self.common.docker.list_containers(&[session]).await {
            Ok(left) => {
                for c in left.into_iter().filter(|c| !released.contains(&c.id)) {
                    tracing::warn!(container = %c.id, "docker backend: removing a straggler at shutdown");
                    if let Err(e) = self.common.docker.remove(&c.id).await {
                        tracing::error!(container = %c.id, error = %e,
                            "docker backend: cannot remove a container at shutdown");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "docker backend: cannot list containers at shutdown")
            }
        }
        if let Some(pull) = &self.common.pull {
            if self.common.detaching.load(Ordering::SeqCst) {
                if !released.is_empty() {
                    tracing::info!(
                        containers = released.len(),
                        "docker backend: detached; containers with a job left running for the next controller"
                    );
                }
                pull.close_detached(released.len(), &self.common.config.instance);
            } else {
                pull.close();
            }
        }
    }
}

impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
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
        Box::pin(self.adopt_pull(record))
    }

    /// Pull mode only: its containers report over the runtime API and need no connection to
    /// this controller; attach mode's job and output ride on the attach connection.
    fn detaches(&self) -> bool {
        self.common.pull.is_some()
    }

    fn detach(&self) -> BoxFuture<'_, ()> {
        if self.common.pull.is_some() {
            self.common.detaching.store(true, Ordering::SeqCst);
        }
        Box::pin(self.shutdown_inner())
    }
}

/// Start-up housekeeping: remove a previous run's containers, retrying while the engine is
/// unreachable; publishes what it did.
async fn startup(common: Arc<Common>, done: watch::Sender<Option<Recovery>>) {
    let mut shutdown = common.shutdown.subscribe();
    let mut wait = Duration::from_millis(500);
    let mut warned = false;
    loop {
        match recover(&common).await {
            Ok(r) => {
                if r.removed > 0 {
                    tracing::warn!(
                        removed = r.removed,
                        warm = r.warm,
                        interrupted = ?r.interrupted,
                        "docker backend: removed containers left by a previous controller run"
                    );
                }
                if r.kept > 0 {
                    tracing::info!(
                        kept = r.kept,
                        "docker backend: left running the containers of executions being adopted"
                    );
                }
                done.send_replace(Some(r));
                break;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e,
                        "docker backend: cannot look for containers of a previous run yet; retrying");
                    warned = true;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
    // Tell the operator early, not at the first execution, if the image is missing.
    match common.docker.image_exists(&common.config.image).await {
        Ok(true) => {}
        Ok(false) => tracing::error!(image = %common.config.image,
            "docker backend: the runtime image is not on the engine; build it with deploy/docker/build.sh"),
        Err(e) => tracing::debug!(error = %e, "docker backend: cannot inspect the runtime image"),
    }
}

/// Removes every container of this instance that another (earlier) session created.
async fn recover(common: &Common) -> Result<Recovery, DockerError> {
    let filters = [
        format!("{LABEL_MANAGED}=true"),
        format!("{LABEL_CONTROLLER}={}", common.config.instance),
    ];
    let found = common.docker.list_containers(&filters).await?;
    let mut r = Recovery::default();
    let mut kept_files = std::collections::HashSet::new();
    let adopting: BTreeSet<&str> = if common.pull.is_some() {
        common.config.adopting.iter().map(String::as_str).collect()
    } else {
        BTreeSet::new()
    };
    for c in found {
        if c.labels.get(LABEL_SESSION) == Some(&common.session) {
            continue;
        }
        // Journaled for adoption: `adopt` takes it (or removes it if it cannot).
        if adopting.contains(c.id.as_str()) {
            r.kept += 1;
            kept_files.extend(
                c.mounts
                    .iter()
                    .filter(|m| m.destination == TOKEN_MOUNT)
                    .filter_map(|m| std::path::Path::new(&m.source).file_name())
                    .map(std::ffi::OsStr::to_os_string),
            );
            continue;
        }
        let running = matches!(
            c.state.as_str(),
            "running" | "created" | "restarting" | "paused"
        );
        if c.labels.get(LABEL_ROLE).map(String::as_str) == Some("warm") {
            r.warm += 1;
        } else if running && let Some(id) = c.labels.get(LABEL_EXECUTION) {
            r.interrupted.push(id.clone());
        }
        // `DELETE ?force=1` kills (SIGKILL closes the runtime's upstream connection) and
        // removes in one call.
        match common.docker.remove(&c.id).await {
            Ok(()) => {
                r.removed += 1;
                // Pull mode: the token file a detached controller left for it.
                if let Some(m) = c.mounts.iter().find(|m| m.destination == TOKEN_MOUNT) {
                    pull::delete_inherited(std::path::Path::new(&m.source));
                }
            }
            Err(e) => tracing::error!(container = %c.id, error = %e,
                "docker backend: cannot remove a leftover container"),
        }
    }
    // Token files detached controllers left for containers that are gone by now.
    if common.pull.is_some() {
        let deleted = pull::prune_detached(&common.config.instance, &kept_files);
        if deleted > 0 {
            tracing::info!(
                deleted,
                "docker backend: deleted token files left for containers that are gone"
            );
        }
    }
    Ok(r)
}

fn new_session_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

impl Common {
    fn released_ids(&self) -> BTreeSet<String> {
        self.released
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn next_name(&self, role: &Role<'_>) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let kind = match role {
            Role::Warm => "w",
            Role::Cold { .. } => "c",
        };
        format!(
            "polydev-{}-{}-{kind}{n}",
            self.config.instance, self.session
        )
    }

    /// Makes sure the configured network exists (once; a failure is retried next time).
    async fn ensure_network(&self) -> Result<(), BackendError> {
        let name = self.config.network.as_str();
        if matches!(name, "host" | "bridge" | "none" | "default") {
            return Ok(());
        }
        self.network_ready
            .get_or_try_init(|| async {
                let exists = self.docker.network_exists(name).await.map_err(unavailable)?;
                if exists {
                    return Ok(());
                }
                if !self.config.create_network {
                    return Err(BackendError::Unavailable(format!(
                        "the Docker network {name} does not exist: create it, or leave POLYDEV_DOCKER_NETWORK unset for the backend's own `{DEFAULT_NETWORK}` network"
                    )));
                }
                let mut labels: BTreeMap<String, String> =
                    self.config.extra_labels.iter().cloned().collect();
                labels.insert(LABEL_MANAGED.into(), "true".into());
                self.docker
                    .create_network(&spec::network_body(name, &labels))
                    .await
                    .map_err(unavailable)?;
                tracing::info!(network = name, "docker backend: created the runtime network");
                Ok(())
            })
            .await
            .map(drop)
    }

    fn spec(&self) -> ContainerSpec<'_> {
        ContainerSpec {
            image: &self.config.image,
            user: &self.config.user,
            env: &self.env,
            binds: &self.binds,
            network: &self.config.network,
            memory_bytes: self.config.memory_bytes,
            pids_limit: i64::from(self.config.pids_limit),
            nano_cpus: self.nano_cpus,
            nofile: NOFILE,
            labels: &self.labels,
        }
    }
}

/// An engine failure as the backend reports it: an unreachable engine is `Unavailable` (the
/// API answers 503), anything else a failed launch.
fn unavailable(e: DockerError) -> BackendError {
    if e.is_unreachable() {
        BackendError::Unavailable(e.to_string())
    } else {
        BackendError::Launch(e.to_string())
    }
}

/// A container created, attached and started.
struct Started {
    guard: ContainerGuard,
    reader: AttachReader<tokio::io::ReadHalf<AttachStream>>,
    /// Attach mode only.
    stdin: Option<WriteHalf<AttachStream>>,
}

/// Create → attach → start (attaching before start misses no output). On any failure the
/// guard removes what was created. `link`: pull mode's instance (token file, id), whose
/// container gets no stdin.
async fn start_container(
    common: &Arc<Common>,
    role: &Role<'_>,
    link: Option<&PullLink>,
) -> Result<Started, BackendError> {
    let t0 = Instant::now();
    common.ensure_network().await?;
    let mut guard = ContainerGuard::enter(common, common.next_name(role))?;
    let token_file = link.map(|l| l.token_file.to_string_lossy().into_owned());
    let pulled = match (link, &token_file) {
        (Some(l), Some(file)) => Some(Pulled {
            instance: l.id.as_str(),
            token_file: file,
        }),
        _ => None,
    };
    let body = spec::container_body(&common.spec(), role, pulled.as_ref());
    let id = match common.docker.create_container(guard.name(), &body).await {
        Ok(id) => id,
        Err(e) => {
            // Refused or never sent: nothing to remove. (A timeout may have created it: the
            // guard removes it by name.)
            if matches!(e, DockerError::Unreachable { .. } | DockerError::Api { .. }) {
                guard.removed = true;
            }
            return Err(create_error(e, common));
        }
    };
    guard.id = Some(id);
    let created = t0.elapsed();
    let stream = common
        .docker
        .attach(guard.target(), link.is_none())
        .await
        .map_err(unavailable)?;
    common
        .docker
        .start(guard.target())
        .await
        .map_err(unavailable)?;
    tracing::debug!(
        container = %guard.name(),
        create_ms = created.as_millis() as u64,
        total_ms = t0.elapsed().as_millis() as u64,
        "docker backend: container created, attached and started"
    );
    let (read, write) = tokio::io::split(stream);
    let keep = common.config.max_stderr_bytes + REDACTION_SLACK;
    Ok(Started {
        guard,
        reader: AttachReader::new(read, common.config.max_line_bytes, keep),
        stdin: link.is_none().then_some(write),
    })
}

fn create_error(e: DockerError, common: &Common) -> BackendError {
    match &e {
        DockerError::Api {
            status: 404,
            message,
            ..
        } if message.contains("network") => BackendError::Unavailable(format!(
            "the Docker network {} does not exist ({message})",
            common.config.network
        )),
        DockerError::Api { status: 404, .. } => BackendError::Unavailable(format!(
            "the runtime image {} is not on the Docker engine: build it with deploy/docker/build.sh (or set POLYDEV_DOCKER_IMAGE)",
            common.config.image
        )),
        _ => unavailable(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Container bookkeeping: which containers exist, and their removal.

#[derive(Default)]
struct Tracker {
    state: Mutex<TrackState>,
    zero: Notify,
}

#[derive(Default)]
struct TrackState {
    live: usize,
    closed: bool,
    names: BTreeSet<String>,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn names(&self) -> Vec<String> {
        self.lock().names.iter().cloned().collect()
    }

    fn leave(&self, name: &str) {
        let mut st = self.lock();
        st.live = st.live.saturating_sub(1);
        st.names.remove(name);
        if st.live == 0 {
            self.zero.notify_waiters();
        }
    }

    /// Admits no new container and waits until every counted one is removed.
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

/// Owns one container's removal, from just before its creation. Removed on the normal path by
/// [`ContainerGuard::remove_logged`]; if that path is skipped (an error, a dropped future), the
/// drop removes it in the background. Shutdown waits for every guard.
pub(crate) struct ContainerGuard {
    common: Arc<Common>,
    name: String,
    id: Option<String>,
    removed: bool,
}

impl ContainerGuard {
    /// Counts a container about to be created; refused once shutdown began, so that
    /// shutdown's wait covers every container that will ever exist.
    fn enter(common: &Arc<Common>, name: String) -> Result<ContainerGuard, BackendError> {
        let mut st = common.tracker.lock();
        if st.closed {
            return Err(BackendError::ShuttingDown);
        }
        st.live += 1;
        st.names.insert(name.clone());
        Ok(ContainerGuard {
            common: Arc::clone(common),
            name,
            id: None,
            removed: false,
        })
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// The id once created, else the name (which the engine accepts too).
    fn target(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.name)
    }

    /// Kills (if running) and removes the container; failures are logged (the shutdown sweep
    /// or the next start's recovery gets it).
    async fn remove_logged(&mut self) {
        if self.removed {
            return;
        }
        match self.common.docker.remove(self.target()).await {
            Ok(()) => self.removed = true,
            Err(e) => {
                tracing::warn!(container = %self.name, error = %e,
                    "docker backend: cannot remove the container");
                // Do not retry from Drop: the engine just failed this.
                self.removed = true;
            }
        }
    }
}

impl ContainerGuard {
    /// Detach: the container runs on for the next controller; this one forgets it (no
    /// removal, not swept at shutdown).
    fn release(&mut self) {
        self.removed = true;
        self.common
            .released
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.target().to_owned());
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if self.removed {
            self.common.tracker.leave(&self.name);
            return;
        }
        let common = Arc::clone(&self.common);
        let name = std::mem::take(&mut self.name);
        let target = self.id.take().unwrap_or_else(|| name.clone());
        match Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = common.docker.remove(&target).await {
                        tracing::warn!(container = %name, error = %e,
                            "docker backend: cannot remove the container");
                    }
                    common.tracker.leave(&name);
                });
            }
            Err(_) => common.tracker.leave(&name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The warm pool's instances.

/// An idle warm container, as the pool holds it: its stdin (the attach connection's write
/// side; pull mode: its runtime-API instance id instead) and the way to tell its supervisor
/// about a claim. Dropping it makes the supervisor remove the container.
struct DockerIdle {
    name: String,
    /// The container's id (its name if the engine's answer was lost).
    container: String,
    stdin: Option<WriteHalf<AttachStream>>,
    instance: Option<InstanceId>,
    claim: oneshot::Sender<Claim>,
    alive: Arc<AtomicBool>,
}

impl WarmInstance for DockerIdle {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.claim.is_closed()
    }
}

struct DockerStarter {
    common: Arc<Common>,
}

impl WarmStarter for DockerStarter {
    type Instance = DockerIdle;

    fn start(&self, notice: DeathNotice) -> BoxFuture<'static, Result<DockerIdle, BackendError>> {
        let common = Arc::clone(&self.common);
        Box::pin(start_warm(common, notice))
    }
}

async fn start_warm(common: Arc<Common>, notice: DeathNotice) -> Result<DockerIdle, BackendError> {
    // Pull mode: registered idle, with a token valid for its idle lifetime. On an error the
    // link is dropped: token, file and slot go with it.
    let link = match &common.pull {
        Some(pull) => Some(pull.new_instance(None, pull.idle_token_ttl())?),
        None => None,
    };
    let Started {
        guard,
        reader,
        stdin,
    } = start_container(&common, &Role::Warm, link.as_ref()).await?;
    let name = guard.name().to_owned();
    let container = guard.target().to_owned();
    let instance = link.as_ref().map(|l| l.id.clone());
    let (ready_tx, ready_rx) = oneshot::channel();
    let (claim, claim_rx) = oneshot::channel();
    let alive = Arc::new(AtomicBool::new(true));
    let mut supervisor = Supervisor::new(common, guard, reader);
    supervisor.pull = link;
    tokio::spawn(supervisor.warm(ready_tx, claim_rx, Arc::clone(&alive), notice));
    match ready_rx.await {
        Ok(Ok(())) => Ok(DockerIdle {
            name,
            container,
            stdin,
            instance,
            claim,
            alive,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BackendError::Launch(
            "the warm container stopped before it was ready".into(),
        )),
    }
}

/// How handing a job to a claimed warm container went.
enum HandOver {
    Served(Instance),
    /// It was dead; `took_job`: it died after the job was written to it.
    Dead {
        took_job: bool,
    },
}

/// Writes the job line on the attach connection, then shuts its write side down: the engine
/// closes the container's stdin (`StdinOnce`), and the runtime reads exactly one line anyway.
async fn write_job(
    stdin: &mut WriteHalf<AttachStream>,
    line: &str,
    limit: Duration,
) -> io::Result<()> {
    let write = async {
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;
        stdin.shutdown().await
    };
    tokio::time::timeout(limit, write)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "job write timed out"))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_configurations_are_refused() {
        let bad = [
            DockerBackendConfig {
                env: vec![("OPENAI_API_KEY".into(), "x".into())],
                ..DockerBackendConfig::new()
            },
            DockerBackendConfig {
                memory_bytes: 1 << 20,
                ..DockerBackendConfig::new()
            },
            DockerBackendConfig {
                user: "0:0".into(),
                ..DockerBackendConfig::new()
            },
            DockerBackendConfig {
                user: "root".into(),
                ..DockerBackendConfig::new()
            },
            DockerBackendConfig {
                instance: "a b".into(),
                ..DockerBackendConfig::new()
            },
            DockerBackendConfig {
                pids_limit: 1,
                ..DockerBackendConfig::new()
            },
            DockerBackendConfig {
                cpus: Some(-1.0),
                ..DockerBackendConfig::new()
            },
            DockerBackendConfig {
                env: vec![("EXTRA_CA_CERTS".into(), "/nonexistent/ca.pem".into())],
                ..DockerBackendConfig::new()
            },
            DockerBackendConfig {
                extra_labels: vec![(LABEL_MANAGED.into(), "false".into())],
                ..DockerBackendConfig::new()
            },
        ];
        for config in bad {
            let shown = format!("{:?}", (&config.env, &config.user, config.memory_bytes));
            assert!(
                matches!(
                    DockerBackend::new(config),
                    Err(BackendError::Unavailable(_))
                ),
                "{shown}"
            );
        }
    }
}
