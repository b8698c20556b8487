//! The process backend in controller-pull mode (DESIGN.md 4.4): what changes when a runtime
//! fetches its job from the controller's runtime API instead of reading it from stdin.
//!
//! - **Spawn**: `WARM_POOL=true`, `CONTROLLER_URL` (the public URL), `RUNTIME_TOKEN_FILE` (a
//!   0600 file in the backend's private 0700 directory, deleted once the execution's report
//!   has ended (it stays valid for resuming a broken report until then), or when it exits) and, with `POLYDEV_TLS_CA`, `EXTRA_CA_CERTS` pointing at a
//!   bundle of that CA plus the operator's own extra CAs. The token is a file rather than
//!   `RUNTIME_TOKEN` because the environment of a process is readable in
//!   `/proc/<pid>/environ` for its whole life (and inherited by anything it starts), while the
//!   file is removed after use; the runtime re-reads it on every request.
//! - **Cold launch**: the job is assigned to the instance's slot before the process starts;
//!   `launch` waits (up to `ready_timeout`) until the runtime fetched it. A runtime that cannot
//!   reach the controller (wrong URL, untrusted certificate) never does: the job is taken back
//!   (so it is never handed out late) and the launch fails with a message saying so.
//! - **Warm pool**: an idle instance is one that has *polled* `next` (it can reach us and its
//!   token works). A claim assigns the job to its slot, which wakes its poll. As with stdin, a
//!   claimed instance that ends before fetching the job never saw it, so the job goes to the
//!   next one; one too slow to fetch it is retired and the job taken back. An idle instance
//!   lives at most `max_idle` (its token's lifetime); then it is told to exit (410) and
//!   replaced.
//! - **Events** come in over `POST …/events` into the instance's feed, which the supervisor
//!   forwards like stdout lines; `Exited` still comes last, after the process exit and the end
//!   of the report.
//! - **Runtimes outlive the controller** (DESIGN.md 5.2): a pull-mode runtime is not tied to
//!   the controller's life (no parent-death signal, its own process group, not killed when its
//!   `Child` is dropped). Each handed-out job is described by an
//!   [`InstanceRecord`](crate::backend::InstanceRecord) (`pid:start-time`, the token's digest
//!   and expiry) that the controller journals; at SIGTERM the backend detaches from runtimes
//!   with a job instead of stopping them, and the next controller [`adopt`](ProcessBackend)s
//!   them: the token digest is accepted again, the registry waits for the resent report, and
//!   the pid is watched through `/proc` (its start time guards against pid reuse); cancel is
//!   SIGTERM, then SIGKILL after the grace. The exit status of an adopted runtime is unknown
//!   (it is not this controller's child).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use polydev_protocol::{ApiKey, Job};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{
    Claim, ProcessBackend, ProcessBackendConfig, ProcessIdle, ProcessStarter, Refill, Replenish,
    Supervisor, spawn_runtime,
};
use crate::backend::pull::{
    DEFAULT_MAX_REPORT_BYTES, DEFAULT_POLL_HOLD, InstanceId, InstanceRegistry, PrivateDir,
    RegistryConfig, RuntimeApi, TokenAuthenticator, check_runtime_url,
};
use crate::backend::{
    BackendError, CancelHandle, ExitInfo, Instance, InstanceOutput, InstanceRecord,
};
use crate::execution::unix_ms;

/// How long an idle pull-mode runtime waits for a job before it is replaced (its token's
/// lifetime). Replacing one costs a process start, once an hour.
pub const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(3600);
/// Longest a job may run once fetched, for its token's lifetime: the controller's default
/// execution limit plus a margin.
pub const DEFAULT_JOB_TTL: Duration = Duration::from_secs(660 + 60);

/// How the process backend runs pull-mode runtimes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOptions {
    /// `CONTROLLER_URL` for the runtimes: `https://`, or `http://` on loopback only.
    pub controller_url: String,
    /// PEM CA certificate(s) the runtimes must trust to reach `controller_url` (a certificate
    /// from a private CA); added to their `EXTRA_CA_CERTS`.
    pub controller_ca: Option<PathBuf>,
    /// Longest an idle instance waits for a job (and so its token's lifetime while idle).
    pub max_idle: Duration,
    /// Longest a job may run; with the start timeout, a claimed instance's token lifetime.
    pub job_ttl: Duration,
    /// How long `next` holds a poll before `204`.
    pub poll_hold: Duration,
}

impl PullOptions {
    /// Defaults for everything but the URL.
    pub fn new(controller_url: impl Into<String>) -> PullOptions {
        PullOptions {
            controller_url: controller_url.into(),
            controller_ca: None,
            max_idle: DEFAULT_MAX_IDLE,
            job_ttl: DEFAULT_JOB_TTL,
            poll_hold: DEFAULT_POLL_HOLD,
        }
    }
}

/// Pull mode's shared state: the registry and tokens behind the runtime API, the private
/// directory, and the runtimes' environment.
pub(super) struct PullMode {
    pub(super) registry: Arc<InstanceRegistry>,
    tokens: Arc<TokenAuthenticator>,
    dir: Arc<PrivateDir>,
    /// The whole environment of a pull-mode runtime but its token file.
    pub(super) env: Vec<(String, String)>,
    pub(super) max_idle: Duration,
    job_ttl: Duration,
    ready_timeout: Duration,
    output_buffer: usize,
    /// Handed-out jobs the controller has not journaled yet: execution id → record. Taken by
    /// [`PullMode::take_record`]; an entry is dropped with its instance at the latest.
    journal: Mutex<HashMap<String, InstanceRecord>>,
}

impl PullMode {
    pub(super) fn new(
        options: &PullOptions,
        config: &ProcessBackendConfig,
        base_env: &[(String, String)],
    ) -> Result<PullMode, BackendError> {
        let url = check_runtime_url(&options.controller_url)
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let dir =
            Arc::new(PrivateDir::create().map_err(|e| BackendError::Unavailable(e.to_string()))?);
        let mut env = base_env.to_vec();
        if let Some(ca) = &options.controller_ca {
            let mut bundle = read_certs(ca, "POLYDEV_TLS_CA")?;
            if let Some((_, extra)) = env.iter().find(|(k, _)| k == "EXTRA_CA_CERTS") {
                bundle.extend(read_certs(Path::new(extra), "EXTRA_CA_CERTS")?);
            }
            let path = dir
                .write("ca.pem", &bundle)
                .map_err(|e| BackendError::Unavailable(e.to_string()))?;
            env.retain(|(k, _)| k != "EXTRA_CA_CERTS");
            env.push(("EXTRA_CA_CERTS".into(), path.to_string_lossy().into_owned()));
        }
        env.push(("WARM_POOL".into(), "true".into()));
        env.push(("CONTROLLER_URL".into(), url));
        let registry = Arc::new(InstanceRegistry::new(RegistryConfig {
            poll_hold: options.poll_hold,
            max_line_bytes: config.max_line_bytes,
            max_report_bytes: DEFAULT_MAX_REPORT_BYTES,
            ..RegistryConfig::default()
        }));
        Ok(PullMode {
            registry,
            tokens: Arc::new(TokenAuthenticator::with_dir(Arc::clone(&dir))),
            dir,
            env,
            max_idle: options.max_idle,
            job_ttl: options.job_ttl,
            ready_timeout: config.ready_timeout,
            output_buffer: config.output_buffer.max(1),
            journal: Mutex::new(HashMap::new()),
        })
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, HashMap<String, InstanceRecord>> {
        // Inserts and removals only: always consistent.
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that instance `id` (process `pid`) was handed the job of `execution_id`.
    fn handed(&self, execution_id: &str, id: &InstanceId, pid: u32) {
        let Some(start) = proc_start_time(pid) else {
            // Already gone: nothing to adopt later.
            return;
        };
        let (digest, left) = match self.tokens.digest(id) {
            Some((d, left)) => (Some(d), Some(left)),
            None => (None, None),
        };
        let record = InstanceRecord {
            execution_id: execution_id.to_owned(),
            instance_id: id.to_string(),
            backend: "process".into(),
            handle: format!("{pid}:{start}"),
            credential_digest: digest,
            credential_expires_at_ms: left.map(|l| {
                unix_ms(SystemTime::now())
                    .saturating_add(u64::try_from(l.as_millis()).unwrap_or(u64::MAX))
            }),
        };
        self.journal().insert(execution_id.to_owned(), record);
    }

    /// The record of the instance handed `execution_id`'s job, once.
    pub(super) fn take_record(&self, execution_id: &str) -> Option<InstanceRecord> {
        self.journal().remove(execution_id)
    }

    fn forget_instance(&self, id: &InstanceId) {
        self.journal().retain(|_, r| r.instance_id != id.as_str());
    }

    pub(super) fn api(&self) -> RuntimeApi {
        RuntimeApi {
            auth: Arc::clone(&self.tokens) as _,
            registry: Arc::clone(&self.registry),
        }
    }

    pub(super) fn dir_path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A warm instance's token: start-up, then its idle lifetime (it is retired before).
    pub(super) fn idle_token_ttl(&self) -> Duration {
        self.ready_timeout + self.max_idle + self.ready_timeout
    }

    /// A job's token: fetch, then run.
    fn job_token_ttl(&self) -> Duration {
        self.ready_timeout + self.job_ttl
    }

    /// Registers a new instance (idle, or with `job` assigned) and writes its token file.
    pub(super) fn new_instance(
        self: &Arc<Self>,
        job: Option<Job>,
        ttl: Duration,
    ) -> Result<PullLink, BackendError> {
        let launch = |e: crate::backend::pull::PullError| BackendError::Launch(e.to_string());
        let id = InstanceId::random().map_err(launch)?;
        let (feed_tx, feed) = mpsc::channel(self.output_buffer);
        let registration =
            self.registry
                .register(id.clone(), feed_tx, job)
                .map_err(|e| match e {
                    crate::backend::pull::PullError::Closed => BackendError::ShuttingDown,
                    other => launch(other),
                })?;
        let token_file = match self.tokens.issue_file(&id, ttl) {
            Ok(p) => p,
            Err(e) => {
                self.registry.remove(&id);
                return Err(launch(e));
            }
        };
        Ok(PullLink {
            id,
            mode: Arc::clone(self),
            token_file,
            feed,
            feed_open: true,
            polled: Some(registration.polled),
            fetched: registration.fetched,
            revoked: false,
        })
    }

    /// After shutdown: every token revoked, the private directory removed.
    pub(super) fn close(&self) {
        self.registry.close();
        self.dir.close();
    }
}

/// Reads a PEM file that must hold at least one certificate.
fn read_certs(path: &Path, setting: &str) -> Result<Vec<u8>, BackendError> {
    let bytes = std::fs::read(path)
        .map_err(|e| BackendError::Unavailable(format!("cannot read {setting}: {}", e.kind())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BackendError::Unavailable(format!("{setting}: {e}")))?;
    if certs.is_empty() {
        return Err(BackendError::Unavailable(format!(
            "{setting} holds no PEM certificate"
        )));
    }
    let mut bytes = bytes;
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    Ok(bytes)
}

/// One pull-mode instance as its supervisor holds it: its slot, token file and event feed.
/// Dropping it (or [`PullLink::revoke`]) revokes the token, deletes the file and forgets the
/// slot.
pub(super) struct PullLink {
    pub(super) id: InstanceId,
    mode: Arc<PullMode>,
    pub(super) token_file: PathBuf,
    feed: mpsc::Receiver<InstanceOutput>,
    /// Some sender may still exist (the slot's, or a report's).
    pub(super) feed_open: bool,
    /// Fires on the first poll (warm readiness).
    pub(super) polled: Option<oneshot::Receiver<()>>,
    /// Cold launch: fires when the job is fetched.
    fetched: Option<oneshot::Receiver<()>>,
    revoked: bool,
}

impl PullLink {
    /// The instance is gone: no further request may authenticate as it.
    pub(super) fn revoke(&mut self) {
        if !std::mem::replace(&mut self.revoked, true) {
            self.mode.tokens.revoke(&self.id);
            self.mode.registry.remove(&self.id);
            self.mode.forget_instance(&self.id);
        }
    }

    /// No job will come: its polls get `410` and it exits.
    pub(super) fn retire(&self) {
        self.mode.registry.retire(&self.id);
    }

    pub(super) async fn recv(&mut self) -> Option<InstanceOutput> {
        self.feed.recv().await
    }

    /// Stops reading the feed (a report still in progress sees it closed).
    pub(super) fn close_feed(&mut self) {
        self.feed_open = false;
        self.feed.close();
    }
}

impl Drop for PullLink {
    fn drop(&mut self) {
        self.revoke();
    }
}

impl ProcessBackend {
    /// `launch` in pull mode: claim a warm instance (assign the job to its slot), else start a
    /// cold one with the job already assigned.
    pub(super) async fn launch_pull(
        &self,
        pull: &Arc<PullMode>,
        job: Job,
        started: Instant,
    ) -> Result<Instance, BackendError> {
        if job.execution_id.is_none() {
            return Err(BackendError::Launch("the job has no execution_id".into()));
        }
        let key = job.credentials.api_key.clone();
        let mut replenish = Replenish {
            pool: &self.pool,
            due: false,
        };
        while let Some(idle) = self.pool.claim() {
            replenish.due = true;
            match self
                .hand_over_pull(pull, idle, &job, key.clone(), started, &mut replenish)
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
        self.launch_cold_pull(pull, job, key, started).await
    }

    /// Gives the job to a claimed idle instance; `None` if it turned out dead or too slow (the
    /// job was then never handed out).
    async fn hand_over_pull(
        &self,
        pull: &Arc<PullMode>,
        idle: ProcessIdle,
        job: &Job,
        key: ApiKey,
        started: Instant,
        replenish: &mut Replenish<'_, ProcessStarter>,
    ) -> Option<Instance> {
        let ProcessIdle {
            claim,
            instance,
            pid,
            ..
        } = idle;
        let id = instance?;
        let (out_tx, output) = mpsc::channel(self.common.config.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        // Pull mode learns about the handover from the registry, not from stdout.
        let (accepted, _) = oneshot::channel();
        // The supervisor learns about the claim before the job can be fetched. On any failure
        // below, `output` is dropped and the supervisor stops the instance.
        claim
            .send(Claim {
                out: out_tx,
                cancel: cancel_rx,
                key,
                accepted,
                // Pull mode refills right after the assignment below.
                refill: Refill::none(),
            })
            .ok()?;
        pull.tokens.set_ttl(&id, pull.job_token_ttl());
        let fetched = pull.registry.assign(&id, job.clone()).ok()?;
        let claim_latency = started.elapsed();
        replenish.now();
        let instance = Instance {
            output,
            cancel,
            warm: true,
            claim_latency,
        };
        if !pull
            .registry
            .claimed_fetch(&id, fetched, pull.ready_timeout, "process")
            .await
        {
            return None;
        }
        if let Some(exec) = &job.execution_id {
            pull.handed(exec, &id, pid);
        }
        Some(instance)
    }

    async fn launch_cold_pull(
        &self,
        pull: &Arc<PullMode>,
        job: Job,
        key: ApiKey,
        started: Instant,
    ) -> Result<Instance, BackendError> {
        let job_id = job.execution_id.clone();
        let mut link = pull.new_instance(Some(job), pull.job_token_ttl())?;
        let fetched = link.fetched.take();
        let id = link.id.clone();
        // On an error the link is dropped: token, file and slot go with it.
        let execution_id = job_id;
        let mut spawned = spawn_runtime(&self.common, true, Some(&link.token_file)).await?;
        let pid = spawned.pid;
        // Nothing is written to a pull-mode runtime's stdin.
        drop(spawned.stdin.take());
        let (out_tx, output) = mpsc::channel(self.common.config.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        let mut supervisor = Supervisor::new(Arc::clone(&self.common), spawned);
        supervisor.key = Some(key);
        supervisor.pull = Some(link);
        tokio::spawn(supervisor.run(Some(out_tx), Some(cancel_rx), None));
        let wait = pull.ready_timeout;
        if !pull.registry.cold_fetch(&id, fetched, wait).await {
            // Never handed out; dropping `output` makes the supervisor stop the runtime.
            tracing::warn!(
                instance = %id,
                controller_url = %self.controller_url(),
                "process backend: a pull-mode runtime did not fetch its job; can it reach the controller?"
            );
            return Err(BackendError::Launch(format!(
                "the runtime did not fetch its job within {} ms: it cannot reach the controller \
                 (check POLYDEV_PUBLIC_URL and that runtimes trust its certificate)",
                wait.as_millis()
            )));
        }
        // Fetched; or ended before fetching, and then its output ends with its `Exited`, which
        // says how (code, stderr tail).
        if let Some(exec) = &execution_id {
            pull.handed(exec, &id, pid);
        }
        Ok(Instance {
            output,
            cancel,
            warm: false,
            claim_latency: started.elapsed(),
        })
    }

    /// `adopt` in pull mode: accept the runtime's token again, wait for its resent report and
    /// watch its process (see the module documentation).
    pub(super) fn adopt_pull(
        &self,
        pull: &Arc<PullMode>,
        record: InstanceRecord,
    ) -> Result<Instance, BackendError> {
        let gone = || BackendError::Launch("the runtime process is gone".into());
        let (pid, start) = record
            .handle
            .split_once(':')
            .and_then(|(p, s)| Some((p.parse::<u32>().ok()?, s.parse::<u64>().ok()?)))
            .ok_or_else(|| BackendError::Launch("unreadable process handle".into()))?;
        if pid == 0 || proc_start_time(pid) != Some(start) {
            return Err(gone());
        }
        let id = InstanceId::new(record.instance_id.clone())
            .map_err(|e| BackendError::Launch(e.to_string()))?;
        if let Some(digest) = &record.credential_digest {
            let now = unix_ms(SystemTime::now());
            let left = record.credential_expires_at_ms.map_or(pull.job_ttl, |t| {
                Duration::from_millis(t.saturating_sub(now))
            });
            pull.tokens
                .restore(&id, digest, left)
                .map_err(|e| BackendError::Launch(e.to_string()))?;
        }
        let (feed_tx, feed) = mpsc::channel(pull.output_buffer);
        if let Err(e) = pull
            .registry
            .register_adopted(id.clone(), feed_tx, &record.execution_id)
        {
            pull.tokens.revoke(&id);
            return Err(match e {
                crate::backend::pull::PullError::Closed => BackendError::ShuttingDown,
                other => BackendError::Launch(other.to_string()),
            });
        }
        let mut guard = match self.common.tracker.enter() {
            Ok(g) => g,
            Err(e) => {
                pull.tokens.revoke(&id);
                pull.registry.remove(&id);
                return Err(e);
            }
        };
        guard.set_pid(pid);
        let (out_tx, output) = mpsc::channel(self.common.config.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        let watch = Adopted {
            common: Arc::clone(&self.common),
            pull: Arc::clone(pull),
            id,
            pid,
            start,
            feed,
            _guard: guard,
        };
        tokio::spawn(watch.run(out_tx, cancel_rx));
        Ok(Instance {
            output,
            cancel,
            warm: false,
            claim_latency: Duration::ZERO,
        })
    }

    fn controller_url(&self) -> &str {
        self.common
            .pull
            .as_ref()
            .and_then(|p| p.env.iter().find(|(k, _)| k == "CONTROLLER_URL"))
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// How often an adopted runtime's process is looked at.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

/// The start time (clock ticks after boot, `/proc/<pid>/stat` field 22) of live process `pid`;
/// `None` if there is no such process or it is a zombie.
pub(super) fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (the state), so field 22 is fields[19].
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// An adopted pull-mode runtime: no longer this controller's child, watched through `/proc`.
struct Adopted {
    common: Arc<super::Common>,
    pull: Arc<PullMode>,
    id: InstanceId,
    pid: u32,
    start: u64,
    feed: mpsc::Receiver<InstanceOutput>,
    _guard: super::LiveGuard,
}

impl Adopted {
    fn alive(&self) -> bool {
        proc_start_time(self.pid) == Some(self.start)
    }

    fn signal(&self, kill: bool) {
        // Checked right before: the same process (pid and start time), not a reuse.
        if !self.alive() {
            return;
        }
        let r = if kill {
            crate::sys::send_sigkill(self.pid)
        } else {
            crate::sys::send_sigterm(self.pid)
        };
        if let Err(e) = r {
            tracing::debug!(pid = self.pid, error = %e, "process backend: signalling an adopted runtime failed");
        }
    }

    fn forget(&self) {
        self.pull.tokens.revoke(&self.id);
        self.pull.registry.remove(&self.id);
    }

    async fn run(mut self, out: mpsc::Sender<InstanceOutput>, mut cancel: oneshot::Receiver<()>) {
        let grace = self.common.config.cancel_grace;
        let mut shutdown = self.common.shutdown.subscribe();
        let mut shutdown_seen = false;
        let mut cancel_open = true;
        let mut feed_open = true;
        let mut term_sent: Option<Instant> = None;
        let mut killed = false;
        let mut exited_at: Option<Instant> = None;
        let mut out = Some(out);
        let mut tick = tokio::time::interval(ADOPTED_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                r = &mut cancel, if cancel_open => {
                    cancel_open = false;
                    if r.is_ok() && term_sent.is_none() {
                        self.signal(false);
                        term_sent = Some(Instant::now());
                    }
                }
                () = super::shutdown_signalled(&mut shutdown), if !shutdown_seen => {
                    shutdown_seen = true;
                    if self.common.detaching.load(std::sync::atomic::Ordering::SeqCst) {
                        // Detached again: the next controller adopts it.
                        self.forget();
                        return;
                    }
                    if term_sent.is_none() {
                        self.signal(false);
                        term_sent = Some(Instant::now());
                    }
                }
                item = self.feed.recv(), if feed_open => match item {
                    Some(item) => {
                        let sent = match &out {
                            Some(tx) => tx.send(item).await.is_ok(),
                            None => true,
                        };
                        if !sent {
                            out = None;
                            if term_sent.is_none() {
                                self.signal(false);
                                term_sent = Some(Instant::now());
                            }
                        }
                    }
                    None => feed_open = false,
                },
                _ = tick.tick() => {
                    if exited_at.is_none() && !self.alive() {
                        exited_at = Some(Instant::now());
                        // Its credential and slot go with it; a report in progress still ends.
                        self.forget();
                    }
                    if let Some(t) = term_sent
                        && !killed
                        && exited_at.is_none()
                        && t.elapsed() >= grace
                    {
                        killed = true;
                        self.signal(true);
                    }
                    if let Some(t) = exited_at
                        && (!feed_open || t.elapsed() >= grace)
                    {
                        break;
                    }
                }
            }
        }
        self.feed.close();
        while let Ok(item) = self.feed.try_recv() {
            if let Some(tx) = &out {
                let _ = tx.send(item).await;
            }
        }
        if let Some(tx) = out {
            let mut notes = vec![
                "an adopted runtime (not this controller's child: exit status unknown)".to_owned(),
            ];
            if killed {
                notes.push("killed (still running after SIGTERM)".into());
            } else if term_sent.is_some() {
                notes.push("terminated".into());
            }
            let _ = tx
                .send(InstanceOutput::Exited(ExitInfo {
                    code: None,
                    signal: None,
                    detail: Some(notes.join("; ")),
                    oom_killed: false,
                }))
                .await;
        }
    }
}
