//! The Docker backend in controller-pull mode (`POLYDEV_DOCKER_MODE=pull`, DESIGN.md 4.4):
//! containers fetch their job from the controller's runtime API and post their events back,
//! instead of the attach stream, so that nothing of an execution depends on a connection
//! between the controller and the engine (the ground for adopting running containers after a
//! controller restart, issue 15).
//!
//! It is the process backend's pull mode (`process/pull_mode.rs`) with containers: the same
//! [`InstanceRegistry`], [`TokenAuthenticator`] and [`PrivateDir`] from `backend/pull.rs`, the
//! same rules (an idle instance is one that has polled; a cold launch assigns the job before
//! the container starts and fails clearly if it is never fetched; `Exited` comes last, after
//! the report ended and the engine's `wait`). What differs is how the token reaches the
//! runtime, under the container hardening (a non-root uid, a read-only root filesystem):
//!
//! - **A read-only bind-mounted file**, not `RUNTIME_TOKEN` in the env: a container's env is
//!   shown by `docker inspect` to anyone with the engine socket and kept in the engine's
//!   on-disk config for the container's whole life. The file is written in the controller's
//!   private 0700 directory (so no other host user can reach it) and handed to the container's
//!   uid:gid with `chown`, mode 0600, when the controller may (it runs as root, as with a
//!   rootful engine's socket it usually does); otherwise it is made 0644, still shielded on the
//!   host by its directory, so that the container's user can read it. It is mounted at
//!   [`TOKEN_MOUNT`] read-only (`Mounts`, so a vanished file fails the start rather than
//!   becoming a directory). The runtime re-reads it on every request.
//! - The file lives in the controller's filesystem: the engine must see the same paths (a
//!   local engine; with a controller itself in a container, the temporary directory must be a
//!   host path shared with the engine, the same rule as for `EXTRA_CA_CERTS`).
//! - **No stdin**: containers are attached for stdout and stderr only (the stderr tail for the
//!   exit detail, the stream's end as the exit signal); closing that connection does nothing
//!   to the container, unlike attach mode's `StdinOnce` stdin.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use polydev_protocol::{ApiKey, Job};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::config::DockerBackendConfig;
use super::spec::Role;
use super::supervisor::{Claim, Supervisor};
use super::{DockerBackend, DockerIdle, DockerStarter, Started, start_container};
use crate::backend::pool::Replenish;
use crate::backend::process::PullOptions;
use crate::backend::pull::{
    DEFAULT_MAX_REPORT_BYTES, InstanceId, InstanceRegistry, PRIVATE_DIR_DETACHED, PrivateDir,
    PullError, RegistryConfig, RuntimeApi, TokenAuthenticator, check_runtime_url,
};
use crate::backend::{BackendError, CancelHandle, Instance, InstanceOutput, InstanceRecord};
use crate::execution::unix_ms;

/// Pull mode's shared state: the registry and tokens behind the runtime API, the private
/// directory of the token files, and what every container's env gets.
pub(super) struct DockerPull {
    pub(super) registry: Arc<InstanceRegistry>,
    tokens: Arc<TokenAuthenticator>,
    dir: Arc<PrivateDir>,
    /// `CONTROLLER_URL`, checked.
    pub(super) url: String,
    /// With `POLYDEV_TLS_CA`: the CA bundle (that CA plus the operator's `EXTRA_CA_CERTS`) in
    /// the private directory, mounted in place of the operator's file.
    pub(super) ca_bundle: Option<PathBuf>,
    pub(super) max_idle: Duration,
    job_ttl: Duration,
    pub(super) ready_timeout: Duration,
    output_buffer: usize,
    /// The containers' numeric uid and gid, owners of their token files.
    owner: (u32, u32),
    /// Handed-out jobs the controller has not journaled yet: execution id → record, taken by
    /// [`DockerPull::take_record`]; dropped with its instance at the latest.
    journal: Mutex<HashMap<String, InstanceRecord>>,
    /// Instances running a job they fetched (or adopted): the ones a detach leaves running.
    handed: Mutex<HashSet<InstanceId>>,
}

impl DockerPull {
    pub(super) fn new(
        options: &PullOptions,
        config: &DockerBackendConfig,
    ) -> Result<DockerPull, BackendError> {
        let unavailable = |e: PullError| BackendError::Unavailable(e.to_string());
        let url = check_runtime_url(&options.controller_url).map_err(unavailable)?;
        let owner = parse_user(&config.user).ok_or_else(|| {
            BackendError::Unavailable(format!(
                "the container user must be a numeric uid[:gid], not {:?}",
                config.user
            ))
        })?;
        let dir = Arc::new(PrivateDir::create().map_err(unavailable)?);
        let ca_bundle = match &options.controller_ca {
            Some(ca) => {
                let mut bundle = read_pem(ca, "POLYDEV_TLS_CA")?;
                if let Some((_, extra)) = config.env.iter().find(|(k, _)| k == "EXTRA_CA_CERTS") {
                    bundle.extend(read_pem(Path::new(extra), "EXTRA_CA_CERTS")?);
                }
                let path = dir.write("ca.pem", &bundle).map_err(unavailable)?;
                // Public certificates: readable by the container's user.
                set_mode(&path, 0o644).map_err(|e| {
                    BackendError::Unavailable(format!("cannot make the CA bundle readable: {e}"))
                })?;
                Some(path)
            }
            None => None,
        };
        let registry = Arc::new(InstanceRegistry::new(RegistryConfig {
            poll_hold: options.poll_hold,
            max_line_bytes: config.max_line_bytes,
            max_report_bytes: DEFAULT_MAX_REPORT_BYTES,
            ..RegistryConfig::default()
        }));
        Ok(DockerPull {
            registry,
            tokens: Arc::new(TokenAuthenticator::with_dir(Arc::clone(&dir))),
            dir,
            url,
            ca_bundle,
            max_idle: options.max_idle,
            job_ttl: options.job_ttl,
            ready_timeout: config.ready_timeout,
            output_buffer: config.output_buffer.max(1),
            owner,
            journal: Mutex::new(HashMap::new()),
            handed: Mutex::new(HashSet::new()),
        })
    }

    fn journal(&self) -> MutexGuard<'_, HashMap<String, InstanceRecord>> {
        // Inserts and removals only: always consistent.
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handed_set(&self) -> MutexGuard<'_, HashSet<InstanceId>> {
        // Inserts and removals only: always consistent.
        self.handed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that instance `id` (container `container`) fetched the job of `execution_id`:
    /// the record the controller journals, with the token's digest and expiry (never the
    /// token).
    pub(super) fn handed(&self, execution_id: &str, id: &InstanceId, container: &str) {
        self.handed_set().insert(id.clone());
        let (digest, left) = match self.tokens.digest(id) {
            Some((d, left)) => (Some(d), Some(left)),
            None => (None, None),
        };
        let record = InstanceRecord {
            execution_id: execution_id.to_owned(),
            instance_id: id.to_string(),
            backend: "docker".into(),
            handle: container.to_owned(),
            credential_digest: digest,
            credential_expires_at_ms: left.map(|l| {
                unix_ms(SystemTime::now())
                    .saturating_add(u64::try_from(l.as_millis()).unwrap_or(u64::MAX))
            }),
        };
        self.journal().insert(execution_id.to_owned(), record);
    }

    /// Whether `id` runs a fetched (or adopted) job.
    pub(super) fn is_handed(&self, id: &InstanceId) -> bool {
        self.handed_set().contains(id)
    }

    /// The record of the instance handed `execution_id`'s job, once.
    pub(super) fn take_record(&self, execution_id: &str) -> Option<InstanceRecord> {
        self.journal().remove(execution_id)
    }

    fn forget_instance(&self, id: &InstanceId) {
        self.handed_set().remove(id);
        self.journal().retain(|_, r| r.instance_id != id.as_str());
    }

    /// Takes back instance `id` after a controller restart (see `DockerBackend::adopt`): its
    /// token is accepted again from the journaled digest until `expires_at_ms` (or a job's
    /// lifetime), and its resent report goes to the returned link's feed. `token_file`: the
    /// previous controller's file, which the link deletes when the instance is gone.
    pub(super) fn adopt_instance(
        self: &Arc<Self>,
        id: InstanceId,
        execution_id: &str,
        digest: Option<&str>,
        expires_at_ms: Option<u64>,
        token_file: Option<PathBuf>,
    ) -> Result<PullLink, BackendError> {
        let launch = |e: PullError| BackendError::Launch(e.to_string());
        if let Some(digest) = digest {
            let now = unix_ms(SystemTime::now());
            let left = expires_at_ms.map_or(self.job_ttl, |t| {
                Duration::from_millis(t.saturating_sub(now))
            });
            self.tokens.restore(&id, digest, left).map_err(launch)?;
        }
        let (feed_tx, feed) = mpsc::channel(self.output_buffer);
        if let Err(e) = self
            .registry
            .register_adopted(id.clone(), feed_tx, execution_id)
        {
            self.tokens.revoke(&id);
            return Err(match e {
                PullError::Closed => BackendError::ShuttingDown,
                other => launch(other),
            });
        }
        self.handed_set().insert(id.clone());
        Ok(PullLink {
            id,
            mode: Arc::clone(self),
            token_file: PathBuf::new(),
            inherited: token_file,
            feed,
            feed_open: true,
            polled: None,
            fetched: None,
            revoked: false,
        })
    }

    pub(super) fn api(&self) -> RuntimeApi {
        RuntimeApi {
            auth: Arc::clone(&self.tokens) as _,
            registry: Arc::clone(&self.registry),
        }
    }

    pub(super) fn dir_path(&self) -> &Path {
        self.dir.path()
    }

    /// A warm container's token: start-up, then its idle lifetime (it is retired before).
    pub(super) fn idle_token_ttl(&self) -> Duration {
        self.ready_timeout + self.max_idle + self.ready_timeout
    }

    /// A job's token: fetch, then run.
    pub(super) fn job_token_ttl(&self) -> Duration {
        self.ready_timeout + self.job_ttl
    }

    /// Moves `id`'s token expiry to a job's lifetime (a claimed warm container).
    pub(super) fn extend_for_job(&self, id: &InstanceId) {
        self.tokens.set_ttl(id, self.job_token_ttl());
    }

    /// Registers a new instance (idle, or with `job` assigned) and writes its token file,
    /// readable by the container's user.
    pub(super) fn new_instance(
        self: &Arc<Self>,
        job: Option<Job>,
        ttl: Duration,
    ) -> Result<PullLink, BackendError> {
        let launch = |e: PullError| BackendError::Launch(e.to_string());
        let id = InstanceId::random().map_err(launch)?;
        let (feed_tx, feed) = mpsc::channel(self.output_buffer);
        let registration =
            self.registry
                .register(id.clone(), feed_tx, job)
                .map_err(|e| match e {
                    PullError::Closed => BackendError::ShuttingDown,
                    other => launch(other),
                })?;
        let mut link = PullLink {
            id: id.clone(),
            mode: Arc::clone(self),
            token_file: PathBuf::new(),
            inherited: None,
            feed,
            feed_open: true,
            polled: Some(registration.polled),
            fetched: registration.fetched,
            revoked: false,
        };
        // On an error below, dropping the link forgets the slot and revokes the token.
        link.token_file = self.tokens.issue_file(&id, ttl).map_err(launch)?;
        hand_to_container(&link.token_file, self.owner)
            .map_err(|e| BackendError::Launch(format!("cannot prepare the token file: {e}")))?;
        Ok(link)
    }

    /// After shutdown: every token revoked, the private directory removed.
    pub(super) fn close(&self) {
        self.registry.close();
        self.dir.close();
    }

    /// After a detach that left `kept` containers running: the private directory (their token
    /// files) stays for them and the next controller; without any, it goes as at shutdown.
    pub(super) fn close_detached(&self, kept: usize, instance: &str) {
        self.registry.close();
        if kept == 0 {
            self.dir.close();
        } else if let Err(e) = self.dir.keep(instance) {
            tracing::error!(error = %e,
                "docker backend: cannot keep the token directory for the detached containers");
        }
    }
}

/// Start-up: in the directories detached controllers of `instance` left, deletes every token
/// file but those of the containers being adopted (`keep`: their file names, which are their
/// instance ids), and each directory left without one. Returns how many files it deleted.
pub(super) fn prune_detached(instance: &str, keep: &HashSet<std::ffi::OsString>) -> usize {
    let mut deleted = 0;
    for dir in crate::backend::pull::detached_dirs(instance) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut left = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_name().to_string_lossy().ends_with(".token") {
                continue;
            }
            if keep.contains(&entry.file_name()) {
                left += 1;
            } else if std::fs::remove_file(&path).is_ok() {
                deleted += 1;
            }
        }
        if left == 0
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(error = %e, "docker backend: cannot remove a detached controller's token directory");
        }
    }
    deleted
}

/// Deletes `file`, the token file a previous (detached) controller left for a container now
/// gone, and then its directory once it holds no token file any more. Only files in a
/// directory marked [`PRIVATE_DIR_DETACHED`] are touched: a live controller's are its own.
pub(super) fn delete_inherited(file: &Path) {
    let Some(dir) = file.parent() else {
        return;
    };
    if !dir.join(PRIVATE_DIR_DETACHED).is_file() {
        return;
    }
    if let Err(e) = std::fs::remove_file(file)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, "docker backend: cannot delete an adopted container's token file");
    }
    let tokens_left = std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".token"))
    });
    if !tokens_left && let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(error = %e, "docker backend: cannot remove a detached controller's token directory");
    }
}

/// `uid[:gid]` as numbers (the gid defaults to the uid).
fn parse_user(user: &str) -> Option<(u32, u32)> {
    let mut parts = user.split(':');
    let uid = parts.next()?.parse().ok()?;
    let gid = match parts.next() {
        Some(g) => g.parse().ok()?,
        None => uid,
    };
    parts.next().is_none().then_some((uid, gid))
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Makes a 0600 token file readable by the container's user: given to it when this process
/// may `chown` (then still 0600), else 0644 (the private 0700 directory keeps other host users
/// out either way).
fn hand_to_container(path: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    match std::os::unix::fs::chown(path, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => set_mode(path, 0o644),
        Err(e) => Err(e),
    }
}

/// Reads a PEM file that must hold a certificate; ends with a newline (for concatenation).
fn read_pem(path: &Path, setting: &str) -> Result<Vec<u8>, BackendError> {
    let mut bytes = std::fs::read(path)
        .map_err(|e| BackendError::Unavailable(format!("cannot read {setting}: {}", e.kind())))?;
    if !bytes
        .windows(27)
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(BackendError::Unavailable(format!(
            "{setting} holds no PEM certificate"
        )));
    }
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    Ok(bytes)
}

/// One pull-mode container as its supervisor holds it: its registry slot, token file and
/// event feed. Dropping it (or [`PullLink::revoke`]) revokes the token, deletes the file and
/// forgets the slot.
pub(super) struct PullLink {
    pub(super) id: InstanceId,
    mode: Arc<DockerPull>,
    pub(super) token_file: PathBuf,
    /// Adopted: the token file the previous controller wrote (and left for the container),
    /// deleted when the instance is gone.
    inherited: Option<PathBuf>,
    feed: mpsc::Receiver<InstanceOutput>,
    /// Some sender may still exist (the slot's, or a report's).
    pub(super) feed_open: bool,
    /// Fires on the first poll (warm readiness).
    pub(super) polled: Option<oneshot::Receiver<()>>,
    /// Cold launch: fires when the job is fetched.
    pub(super) fetched: Option<oneshot::Receiver<()>>,
    revoked: bool,
}

impl PullLink {
    /// The instance is gone: no further request may authenticate as it.
    pub(super) fn revoke(&mut self) {
        if !std::mem::replace(&mut self.revoked, true) {
            self.mode.tokens.revoke(&self.id);
            self.mode.registry.remove(&self.id);
            self.mode.forget_instance(&self.id);
            if let Some(file) = self.inherited.take() {
                delete_inherited(&file);
            }
        }
    }

    /// Detach: this controller lets go of the instance but its token file stays, for the
    /// runtime (which re-reads it) and the next controller.
    pub(super) fn release(&mut self) {
        if !std::mem::replace(&mut self.revoked, true) {
            let _ = self.mode.tokens.release(&self.id);
            self.mode.registry.remove(&self.id);
            self.mode.forget_instance(&self.id);
        }
    }

    /// Whether the instance runs a fetched (or adopted) job.
    pub(super) fn is_handed(&self) -> bool {
        self.mode.is_handed(&self.id)
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

impl DockerBackend {
    /// `launch` in pull mode: claim a warm container (assign the job to its slot, which wakes
    /// its poll), else start a cold one with the job already assigned.
    pub(super) async fn launch_pull(
        &self,
        pull: &Arc<DockerPull>,
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

    /// Gives the job to a claimed idle container; `None` if it turned out dead or too slow to
    /// fetch it (the job was then never handed out: a slot that goes away, or one taken back
    /// with `unassign`, never gave it).
    async fn hand_over_pull(
        &self,
        pull: &Arc<DockerPull>,
        idle: DockerIdle,
        job: &Job,
        key: ApiKey,
        started: Instant,
        replenish: &mut Replenish<'_, DockerStarter>,
    ) -> Option<Instance> {
        let DockerIdle {
            claim,
            instance,
            container,
            ..
        } = idle;
        let id = instance?;
        let (out_tx, output) = mpsc::channel(self.common.config.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        // Pull mode learns about the handover from the registry, not from output.
        let (accepted, _) = oneshot::channel();
        // The supervisor learns about the claim before the job can be fetched. On any failure
        // below, `output` is dropped and the supervisor stops the container.
        claim
            .send(Claim {
                out: out_tx,
                cancel: cancel_rx,
                key,
                accepted,
                retry_if_silent: false,
            })
            .ok()?;
        pull.extend_for_job(&id);
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
            .claimed_fetch(&id, fetched, pull.ready_timeout, "docker")
            .await
        {
            return None;
        }
        if let Some(exec) = &job.execution_id {
            pull.handed(exec, &id, &container);
        }
        Some(instance)
    }

    async fn launch_cold_pull(
        &self,
        pull: &Arc<DockerPull>,
        job: Job,
        key: ApiKey,
        started: Instant,
    ) -> Result<Instance, BackendError> {
        let execution_id = job.execution_id.clone();
        let mut link = pull.new_instance(Some(job), pull.job_token_ttl())?;
        let fetched = link.fetched.take();
        let id = link.id.clone();
        let role = Role::Cold {
            execution_id: execution_id.as_deref(),
        };
        // On an error the link is dropped: token, file and slot go with it.
        let Started { guard, reader, .. } =
            start_container(&self.common, &role, Some(&link)).await?;
        let container = guard.target().to_owned();
        let (out_tx, output) = mpsc::channel(self.common.config.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        let mut supervisor = Supervisor::new(Arc::clone(&self.common), guard, reader);
        supervisor.key = Some(key);
        supervisor.pull = Some(link);
        tokio::spawn(supervisor.run(Some(out_tx), Some(cancel_rx)));
        let wait = pull.ready_timeout;
        if !pull.registry.cold_fetch(&id, fetched, wait).await {
            // Never handed out; dropping `output` makes the supervisor stop the container.
            tracing::warn!(instance = %id, controller_url = %pull.url,
                "docker backend: a pull-mode container did not fetch its job; can it reach the controller?");
            return Err(BackendError::Launch(format!(
                "the runtime container did not fetch its job within {} ms: it cannot reach the \
                 controller (check POLYDEV_PUBLIC_URL, POLYDEV_DOCKER_NETWORK and that runtimes \
                 trust its certificate)",
                wait.as_millis()
            )));
        }
        // Fetched; or ended before fetching, and then its output ends with its `Exited`, which
        // says how (code, OOM, stderr tail).
        if let Some(exec) = &execution_id {
            pull.handed(exec, &id, &container);
        }
        Ok(Instance {
            output,
            cancel,
            warm: false,
            claim_latency: started.elapsed(),
        })
    }
}

impl DockerBackend {
    /// `adopt` (pull mode): takes back, after a controller restart, the container `record`
    /// names (its id). It must be this instance's pull-mode container for that runtime
    /// instance, and running. Its token is accepted again (digest and expiry from the record),
    /// the registry waits for its resent report, and it is attached again (stdout and stderr
    /// only: the stream's end is its exit) under an ordinary supervisor: cancel is SIGTERM then
    /// SIGKILL, and at the end `wait` and `inspect` give the exit code and `OOMKilled`, the
    /// container is removed and the previous controller's token file deleted. A container
    /// that is gone or has exited is removed and the adoption refused (the execution ends
    /// `interrupted`).
    pub(super) async fn adopt_pull(
        &self,
        record: InstanceRecord,
    ) -> Result<Instance, BackendError> {
        let Some(pull) = &self.common.pull else {
            return Err(BackendError::Unavailable(
                "the Docker backend adopts containers only in pull mode".into(),
            ));
        };
        if self.pool.is_closed() {
            return Err(BackendError::ShuttingDown);
        }
        let container = record.handle.as_str();
        if container.is_empty()
            || container.len() > 128
            || !container.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(BackendError::Launch("unreadable container handle".into()));
        }
        let id = InstanceId::new(record.instance_id.clone())
            .map_err(|e| BackendError::Launch(e.to_string()))?;
        let info = match self.common.docker.inspect(container).await {
            Ok(info) => info,
            Err(e) if e.is_not_found() => {
                return Err(BackendError::Launch("the runtime container is gone".into()));
            }
            Err(e) => return Err(super::unavailable(e)),
        };
        let labels = &info.config.labels;
        let label = |k: &str| labels.get(k).map(String::as_str);
        if label(super::LABEL_CONTROLLER) != Some(self.common.config.instance.as_str())
            || label(super::LABEL_MODE) != Some("pull")
            || label(super::LABEL_INSTANCE) != Some(id.as_str())
        {
            // Not ours to take or remove.
            return Err(BackendError::Launch(
                "the container is not this controller's runtime for that execution".into(),
            ));
        }
        let token_file = info
            .mounts
            .iter()
            .find(|m| m.destination == super::TOKEN_MOUNT)
            .map(|m| PathBuf::from(&m.source));
        let name = info.name.trim_start_matches('/').to_owned();
        // From here on the guard removes the container, and the link deletes its token file,
        // if the adoption fails.
        let mut guard = super::ContainerGuard::enter(&self.common, name)?;
        guard.id = Some(info.id.clone());
        let link = pull.adopt_instance(
            id,
            &record.execution_id,
            record.credential_digest.as_deref(),
            record.credential_expires_at_ms,
            token_file,
        )?;
        if !info.state.running {
            return Err(BackendError::Launch(format!(
                "the runtime container has exited ({})",
                info.state.status
            )));
        }
        // Attached for stdout and stderr only: its end is the container's exit.
        let stream = self
            .common
            .docker
            .attach(guard.target(), false)
            .await
            .map_err(super::unavailable)?;
        // An attach to a container that exited after the inspect above waits for its next
        // start, which never comes: look again now that the attach would see the exit.
        match self.common.docker.inspect(container).await {
            Ok(now) if now.state.running => {}
            Ok(now) => {
                return Err(BackendError::Launch(format!(
                    "the runtime container has exited ({})",
                    now.state.status
                )));
            }
            Err(e) if e.is_not_found() => {
                return Err(BackendError::Launch("the runtime container is gone".into()));
            }
            Err(e) => return Err(super::unavailable(e)),
        }
        let (read, _write) = tokio::io::split(stream);
        let keep = self.common.config.max_stderr_bytes + super::REDACTION_SLACK;
        let reader = super::AttachReader::new(read, self.common.config.max_line_bytes, keep);
        let (out_tx, output) = mpsc::channel(self.common.config.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        let mut supervisor = Supervisor::new(Arc::clone(&self.common), guard, reader);
        supervisor.pull = Some(link);
        tokio::spawn(supervisor.run(Some(out_tx), Some(cancel_rx)));
        Ok(Instance {
            output,
            cancel,
            warm: false,
            claim_latency: Duration::ZERO,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn users_parse_as_numbers() {
        assert_eq!(parse_user("65534:65534"), Some((65534, 65534)));
        assert_eq!(parse_user("1000"), Some((1000, 1000)));
        assert_eq!(parse_user("a:b"), None);
        assert_eq!(parse_user("1:2:3"), None);
    }

    #[tokio::test]
    async fn token_files_are_readable_by_the_container_user_only() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let config = DockerBackendConfig::new();
        let pull =
            Arc::new(DockerPull::new(&PullOptions::new("http://127.0.0.1:1"), &config).unwrap());
        let link = pull.new_instance(None, Duration::from_secs(60)).unwrap();
        let meta = std::fs::metadata(&link.token_file).unwrap();
        let dir = std::fs::metadata(pull.dir_path()).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
        // Root may chown; others fall back to 0644.
        if meta.uid() == 65534 {
            assert_eq!(meta.gid(), 65534);
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        } else {
            assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        }
        let path = link.token_file.clone();
        drop(link);
        assert!(!path.exists(), "the token file goes with its instance");
        assert!(pull.registry.is_empty());
        pull.close();
        assert!(!pull.dir_path().exists());
    }

    #[test]
    fn inherited_token_files_go_with_their_container_and_the_last_takes_the_directory() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("polydev-runtime-api-old");
        std::fs::create_dir(&dir).unwrap();
        let (a, b) = (dir.join("a.token"), dir.join("b.token"));
        std::fs::write(&a, "x").unwrap();
        std::fs::write(&b, "y").unwrap();
        // Not marked detached: a live controller's files are left alone.
        delete_inherited(&a);
        assert!(a.is_file());
        std::fs::write(dir.join(PRIVATE_DIR_DETACHED), "inst").unwrap();
        delete_inherited(&a);
        assert!(!a.exists() && b.is_file());
        delete_inherited(&b);
        assert!(!dir.exists(), "the emptied directory stayed");
        // Twice, or for a file already gone: nothing happens.
        delete_inherited(&b);
    }

    #[tokio::test]
    async fn a_handed_job_is_journaled_once_with_a_digest_and_never_the_token() {
        let config = DockerBackendConfig::new();
        let pull =
            Arc::new(DockerPull::new(&PullOptions::new("http://127.0.0.1:1"), &config).unwrap());
        let mut link = pull.new_instance(None, Duration::from_secs(60)).unwrap();
        let token = std::fs::read_to_string(&link.token_file).unwrap();
        assert!(!link.is_handed());
        pull.handed("ex_1", &link.id, "c0ffee");
        assert!(link.is_handed());
        let record = pull.take_record("ex_1").unwrap();
        assert_eq!(pull.take_record("ex_1"), None);
        assert_eq!(
            (record.backend.as_str(), record.handle.as_str()),
            ("docker", "c0ffee")
        );
        assert_eq!(record.instance_id, link.id.as_str());
        let digest = record.credential_digest.clone().unwrap();
        assert_eq!(digest.len(), 64);
        let text = serde_json::to_string(&record).unwrap();
        assert!(!text.contains(token.rsplit_once('.').unwrap().1));
        assert!(record.credential_expires_at_ms.unwrap() > unix_ms(SystemTime::now()));
        // Detach: the file stays for the container; the instance is forgotten here.
        let file = link.token_file.clone();
        link.release();
        assert!(file.is_file() && !link.is_handed());
        assert!(pull.registry.is_empty());
        drop(link);
        assert!(file.is_file(), "a released link deleted the token file");
        pull.close();
    }

    #[test]
    fn plain_http_off_loopback_is_refused() {
        let config = DockerBackendConfig::new();
        let e = DockerPull::new(&PullOptions::new("http://10.0.0.1:8080"), &config);
        assert!(matches!(e, Err(BackendError::Unavailable(_))));
    }
}
