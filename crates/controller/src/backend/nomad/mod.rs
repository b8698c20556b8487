//! The Nomad backend (`POLYDEV_BACKEND=nomad`, issue 7): every runtime is one dispatched child
//! of a parameterized batch job, and fetches its job from the controller (pull mode).
//!
//! Why it works this way (orchestration.md §1–3, docs/nomad.md):
//! - **One registered job, many dispatches.** [`NomadBackend::start`] registers
//!   [`polydev_nomad::runtime_job`] (the hardened job; `nomad-spec` prints the same document)
//!   before the controller admits any execution, and fails with one clear error if Nomad
//!   refuses it or cannot be reached; Nomad's registration warnings (memory oversubscription
//!   off) are logged at WARN.
//!   A cold execution dispatches one child carrying only opaque IDs in `Meta` (`instance_id`,
//!   `execution_id`), with the instance ID as idempotency token, so a retried dispatch after a
//!   lost answer never starts a second runtime. Dispatch Meta and payloads live in Raft and are
//!   readable with `read-job`: the user's key never goes there.
//! - **No reusable secret anywhere.** The runtime reads its allocation's workload-identity JWT
//!   (`RUNTIME_TOKEN_FILE`, rotated by Nomad) and long-polls `GET /runtime/v1/next`; the
//!   [`auth::NomadAuthenticator`] verifies the JWT against Nomad's JWKS and maps its allocation
//!   to the instance dispatched for it, so a job goes only to that allocation, once.
//! - **Nomad says when it is over.** A supervisor per instance forwards the report's events and
//!   follows *every* allocation of the child with blocking queries (Nomad lists them in no
//!   useful order); `Exited` comes from the terminal status (complete, failed, lost) of the
//!   allocation bound to the instance, after the report ended. Nomad replaces a lost
//!   allocation even with reschedule attempts 0 (scheduler/reconciler/reconcile_cluster.go:
//!   933-943): the replacement is refused a job (it carries `PreviousAllocation`, and the
//!   instance is bound to the original) and the child is stopped, so it never runs a second
//!   time; the execution ends with Nomad's reason (`DesiredDescription`). Failed placements,
//!   lost allocations and a Nomad API that keeps failing end the execution with an error
//!   saying so, never a hang. The finished child is stopped and purged.
//! - **The warm pool is dispatched instances, not a service job** (a service task that exits
//!   after its one job would be restarted): [`WarmPool`] with a starter that dispatches an
//!   idle instance and counts it ready on its first poll. Dropping an idle instance (resize,
//!   shutdown) stops and purges its child.
//! - **Nothing left behind.** Shutdown stops every supervisor, which stops and purges its
//!   child, then sweeps any child still known.
//! - **Except across a controller restart** (DESIGN.md 5.2): each handed-out job is journaled
//!   as an [`InstanceRecord`] (handle `<dispatched job>/<allocation>`; no credential, the
//!   workload identity is Nomad's), SIGTERM detaches (children with a job keep running, idle
//!   ones are stopped as usual), and the next controller adopts them: the allocation → instance
//!   ledger is rebuilt from the record, the registry waits for the resent report, and a
//!   supervisor follows the allocation exactly as for a cold launch.
//! - **What a killed controller left is swept** (issue 15). SIGKILL skips the detach, so the
//!   killed controller's idle pool instances (and any child whose purge failed) keep running
//!   with nobody to give them a job. [`NomadBackend::start`] lists the parent's dispatched
//!   children (`GET /v1/jobs?prefix=<parent>/dispatch-`, those with `ParentID = <parent>`)
//!   right after registering, before this controller dispatches anything, so every child
//!   listed is a previous run's. Once the controller knows what it adopts
//!   ([`Backend::sweep_leftovers`], called before any adoption starts), every listed child not
//!   named by an adopted record's handle is stopped and purged in the background, with bounded
//!   retries. A child being adopted is never in that set, whatever the adoption's progress;
//!   no job outside the parent's children is ever touched.

mod auth;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use polydev_nomad::spec::{META_EXECUTION_ID, META_INSTANCE_ID, TASK_NAME};
use polydev_nomad::types::Allocation;
use polydev_nomad::{
    DispatchRequest, NomadClient, NomadConfig, NomadError, QueryOptions, RuntimeJobConfig,
    SpecError, VerifyOptions, WorkloadIdentityVerifier,
};
use polydev_protocol::{ErrorEvent, ErrorKind, Event, Job};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::auth::{Ledger, NomadAuthenticator};
use super::pool::{DeathNotice, PoolConfig, WarmInstance, WarmPool, WarmStarter};
use super::pull::{
    DEFAULT_MAX_REPORT_BYTES, DEFAULT_MAX_REPORT_LINE, DEFAULT_POLL_HOLD, InstanceId,
    InstanceRegistry, PullError, RegistryConfig, RuntimeApi, check_runtime_url,
};
use super::{
    Backend, BackendError, CancelHandle, ExitInfo, Instance, InstanceOutput, InstanceRecord,
    PoolStatus,
};

/// Stop-and-purge rounds of the start-up sweep of a previous run's children (each call is
/// already retried by the client); then what is left is logged and left alone.
const SWEEP_ROUNDS: u32 = 5;
/// Pause after the first failed sweep round, doubled after each (at most 30 s).
const SWEEP_BACKOFF: Duration = Duration::from_secs(1);

/// Environment names that must never be set through [`NomadBackendConfig::runtime_env`]: the
/// job spec is stored in Raft and readable by anyone with `read-job`.
const SECRET_HINTS: [&str; 5] = ["KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL"];
/// Names the job itself sets.
const RESERVED_ENV: [&str; 3] = ["WARM_POOL", "CONTROLLER_URL", "RUNTIME_TOKEN_FILE"];

/// Settings of the Nomad backend.
#[derive(Debug, Clone)]
pub struct NomadBackendConfig {
    /// How to reach Nomad (`NOMAD_ADDR`, `NOMAD_TOKEN`, `NOMAD_CACERT`…).
    pub nomad: NomadConfig,
    /// The parameterized job (image, controller URL, resources, identity).
    pub job: RuntimeJobConfig,
    /// Extra, non-secret environment of every runtime (provider base URLs). Written into the
    /// job spec, so names that look like credentials are refused.
    pub runtime_env: Vec<(String, String)>,
    /// Initial warm pool size.
    pub pool_size: usize,
    /// Longest wait from dispatch to the runtime fetching its job (cold) or first polling
    /// (warm): scheduling, image pull, start.
    pub start_timeout: Duration,
    /// After the allocation ended, how long to wait for its report to end.
    pub drain_grace: Duration,
    /// After a stop was requested, how long to wait for the allocation to end before giving up
    /// on it (it is still purged).
    pub stop_timeout: Duration,
    /// Blocking-query wait when following a child's allocations.
    pub watch_wait: Duration,
    /// Consecutive failed Nomad reads (each already retried by the client) before an execution
    /// is ended with an error.
    pub max_watch_failures: u32,
    /// `next` poll hold.
    pub poll_hold: Duration,
    /// Capacity of each instance's output channel.
    pub output_buffer: usize,
    /// How workload identities are checked (the audience is the job's identity audience).
    pub verify: VerifyOptions,
}

impl NomadBackendConfig {
    pub fn new(nomad: NomadConfig, job: RuntimeJobConfig) -> NomadBackendConfig {
        let verify = VerifyOptions {
            audience: Some(job.identity_audience.clone()),
            ..VerifyOptions::default()
        };
        NomadBackendConfig {
            nomad,
            job,
            runtime_env: Vec::new(),
            pool_size: 0,
            start_timeout: Duration::from_secs(60),
            drain_grace: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(30),
            watch_wait: Duration::from_secs(30),
            max_watch_failures: 5,
            poll_hold: DEFAULT_POLL_HOLD,
            output_buffer: 256,
            verify,
        }
    }
}

/// The job document the backend registers: [`polydev_nomad::runtime_job`] plus the non-secret
/// `runtime_env`. `polydev-controller nomad-spec` prints exactly this.
pub fn job_spec(
    job: &RuntimeJobConfig,
    runtime_env: &[(String, String)],
) -> Result<Value, SpecError> {
    let mut spec = polydev_nomad::runtime_job(job)?;
    if runtime_env.is_empty() {
        return Ok(spec);
    }
    for (k, _) in runtime_env {
        let upper = k.to_ascii_uppercase();
        if SECRET_HINTS.iter().any(|h| upper.contains(h)) {
            return Err(SpecError(format!(
                "{k} looks like a credential; the job spec is readable by anyone with read-job"
            )));
        }
        if RESERVED_ENV.contains(&k.as_str()) || k.starts_with("NOMAD_") {
            return Err(SpecError(format!("{k} is set by the job itself")));
        }
    }
    let env = spec
        .pointer_mut("/Job/TaskGroups/0/Tasks/0/Env")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| SpecError("the runtime job has no task Env".into()))?;
    for (k, v) in runtime_env {
        env.insert(k.clone(), Value::String(v.clone()));
    }
    Ok(spec)
}

/// Shared state of the backend, its supervisors and its pool starter.
struct Inner {
    client: NomadClient,
    cfg: NomadBackendConfig,
    spec: Value,
    parent: String,
    registry: Arc<InstanceRegistry>,
    auth: Arc<NomadAuthenticator>,
    ledger: Arc<Ledger>,
    tracker: TaskTracker,
    closing: CancellationToken,
    /// Set by `detach` before `closing`: supervisors of instances with a job let them run.
    detaching: AtomicBool,
    /// Handed-out jobs not journaled yet: execution id → record (taken once).
    journal: std::sync::Mutex<std::collections::HashMap<String, InstanceRecord>>,
    /// Dispatched children that existed when this backend started (a previous run's), until
    /// [`Backend::sweep_leftovers`] takes them; `None` once taken or if they could not be listed.
    leftovers: std::sync::Mutex<Option<Vec<String>>>,
}

impl Inner {
    fn journal(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, InstanceRecord>> {
        // Inserts and removals only: always consistent.
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that instance `id` (dispatched job `child`) was handed `execution_id`'s job.
    fn handed(&self, execution_id: &str, id: &InstanceId, child: &str) {
        let alloc = self.ledger.alloc_of(id).unwrap_or_default();
        self.journal().insert(
            execution_id.to_owned(),
            InstanceRecord {
                execution_id: execution_id.to_owned(),
                instance_id: id.to_string(),
                backend: "nomad".into(),
                handle: format!("{child}/{alloc}"),
                credential_digest: None,
                credential_expires_at_ms: None,
            },
        );
    }

    fn detaching(&self) -> bool {
        self.detaching.load(Ordering::SeqCst)
    }
}

/// The Nomad backend. See the module documentation.
pub struct NomadBackend {
    inner: Arc<Inner>,
    pool: WarmPool<Starter>,
}

impl std::fmt::Debug for NomadBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NomadBackend")
            .field("job", &self.inner.parent)
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl NomadBackend {
    /// Validates the settings, builds the client, registers the job with Nomad, lists the
    /// dispatched children a previous run left (swept by [`Backend::sweep_leftovers`]) and
    /// starts filling the pool. Fails, before any execution can be admitted, when Nomad refuses the
    /// job (its validation error, not retried) or cannot be reached (after the client's
    /// bounded retries): one error saying which. Must be called inside a tokio runtime.
    pub async fn start(cfg: NomadBackendConfig) -> Result<NomadBackend, BackendError> {
        let unavailable = |m: String| BackendError::Unavailable(m);
        check_runtime_url(&cfg.job.controller_url).map_err(|e| unavailable(e.to_string()))?;
        let spec = job_spec(&cfg.job, &cfg.runtime_env).map_err(|e| unavailable(e.to_string()))?;
        let client = NomadClient::new(cfg.nomad.clone())
            .map_err(|e| unavailable(format!("Nomad client: {e}")))?;
        let namespace = cfg
            .job
            .namespace
            .clone()
            .or_else(|| cfg.nomad.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let ledger = Arc::new(Ledger::default());
        let verifier = WorkloadIdentityVerifier::new(Arc::new(client.clone()), cfg.verify.clone());
        let auth = Arc::new(NomadAuthenticator {
            verifier,
            client: client.clone(),
            ledger: Arc::clone(&ledger),
            parent: cfg.job.job_id.clone(),
            namespace,
        });
        let registry = Arc::new(InstanceRegistry::new(RegistryConfig {
            poll_hold: cfg.poll_hold,
            max_line_bytes: DEFAULT_MAX_REPORT_LINE,
            max_report_bytes: DEFAULT_MAX_REPORT_BYTES,
            ..RegistryConfig::default()
        }));
        let inner = Arc::new(Inner {
            client,
            parent: cfg.job.job_id.clone(),
            spec,
            registry,
            auth,
            ledger,
            tracker: TaskTracker::new(),
            closing: CancellationToken::new(),
            detaching: AtomicBool::new(false),
            journal: std::sync::Mutex::new(std::collections::HashMap::new()),
            leftovers: std::sync::Mutex::new(None),
            cfg,
        });
        inner.register().await?;
        // Before the pool dispatches anything: every child listed now is a previous run's.
        let found = inner.list_children().await;
        *inner.leftovers.lock().unwrap_or_else(|e| e.into_inner()) = found;
        let pool = WarmPool::new(
            Starter(Arc::clone(&inner)),
            PoolConfig {
                size: inner.cfg.pool_size,
                ..PoolConfig::default()
            },
            tokio::runtime::Handle::current(),
        );
        Ok(NomadBackend { inner, pool })
    }

    /// The job document registered with Nomad.
    pub fn spec(&self) -> &Value {
        &self.inner.spec
    }

    /// Dispatched children not yet purged (tests, metrics).
    pub fn live_children(&self) -> Vec<String> {
        self.inner.ledger.children()
    }

    async fn launch_job(&self, job: Job) -> Result<Instance, BackendError> {
        let started = Instant::now();
        if self.inner.closing.is_cancelled() {
            return Err(BackendError::ShuttingDown);
        }
        let Some(execution_id) = job.execution_id.clone() else {
            return Err(BackendError::Launch("the job has no execution_id".into()));
        };
        while let Some(idle) = self.pool.claim() {
            match self.hand_over(idle, &job, started).await {
                Some(instance) => {
                    self.pool.replenish();
                    self.pool.record_hit();
                    return Ok(instance);
                }
                None => self.pool.record_dead_on_claim(),
            }
        }
        self.pool.replenish();
        self.pool.record_miss();
        self.launch_cold(job, &execution_id, started).await
    }

    /// Gives `job` to a claimed idle instance; `None` if it turned out gone (the job was then
    /// never handed out).
    async fn hand_over(&self, idle: Idle, job: &Job, started: Instant) -> Option<Instance> {
        let (out, output) = mpsc::channel(self.inner.cfg.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        idle.claim
            .send(Claim {
                out,
                cancel: cancel_rx,
            })
            .ok()?;
        let fetched = self.inner.registry.assign(&idle.id, job.clone()).ok()?;
        let claim_latency = started.elapsed();
        if !self
            .inner
            .registry
            .claimed_fetch(&idle.id, fetched, self.inner.cfg.start_timeout, "nomad")
            .await
        {
            return None;
        }
        // (The ledger's lock is released before `handed` takes it again.)
        let child = self
            .inner
            .ledger
            .lock()
            .instances
            .get(&idle.id)
            .and_then(|e| e.child.clone());
        if let (Some(exec), Some(child)) = (&job.execution_id, child) {
            self.inner.handed(exec, &idle.id, &child);
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
        job: Job,
        execution_id: &str,
        started: Instant,
    ) -> Result<Instance, BackendError> {
        let inner = &self.inner;
        let id = InstanceId::random().map_err(|e| BackendError::Launch(e.to_string()))?;
        let (feed_tx, feed) = mpsc::channel(inner.cfg.output_buffer.max(1));
        let registration = inner
            .registry
            .register(id.clone(), feed_tx, Some(job))
            .map_err(registry_error)?;
        inner.ledger.add(&id);
        let (child, eval) = match inner.dispatch(&id, Some(execution_id)).await {
            Ok(c) => c,
            Err(e) => {
                inner.registry.remove(&id);
                inner.ledger.forget(&id);
                return Err(e);
            }
        };
        let (out, output) = mpsc::channel(inner.cfg.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        let (early_tx, early_rx) = oneshot::channel();
        let sup = Supervisor {
            inner: Arc::clone(inner),
            id: id.clone(),
            child: child.clone(),
            eval,
            feed,
        };
        inner.tracker.spawn(sup.run(Mode::Cold {
            claim: Claim {
                out,
                cancel: cancel_rx,
            },
            early: early_tx,
        }));
        let wait = inner.cfg.start_timeout;
        let fetched = match registration.fetched {
            Some(rx) => rx,
            None => return Err(BackendError::Launch("no job was assigned".into())),
        };
        enum Start {
            Fetched,
            Lost,
            Early(Result<(bool, String), oneshot::error::RecvError>),
            Timeout,
        }
        let mut early_rx = early_rx;
        let start = tokio::select! {
            r = fetched => if r.is_ok() { Start::Fetched } else { Start::Lost },
            why = &mut early_rx => Start::Early(why),
            () = tokio::time::sleep(wait) => Start::Timeout,
        };
        // The job was taken back: the supervisor says why right after.
        let start = match start {
            Start::Lost => Start::Early(early_rx.await),
            other => other,
        };
        let never_handed = match start {
            Start::Fetched => false,
            // Ended before fetching: dropping `output` makes the supervisor clean up.
            Start::Early(Ok((true, why))) => {
                return Err(BackendError::Launch(format!(
                    "the runtime did not start on Nomad: {why}"
                )));
            }
            // Fetched at the last moment: its output says how it ended.
            Start::Early(Ok((false, _))) => false,
            Start::Early(Err(_)) | Start::Lost | Start::Timeout => inner.registry.unassign(&id),
        };
        if never_handed {
            return Err(BackendError::Launch(format!(
                "the runtime did not fetch its job within {} ms of its dispatch: Nomad did not \
                 start it in time, or it cannot reach the controller (check POLYDEV_PUBLIC_URL, \
                 the runtimes' trust of its certificate, and the cluster's capacity)",
                wait.as_millis()
            )));
        }
        inner.handed(execution_id, &id, &child);
        Ok(Instance {
            output,
            cancel,
            warm: false,
            claim_latency: started.elapsed(),
        })
    }
}

impl NomadBackend {
    /// Takes back a dispatched child a previous controller handed a job (see the module
    /// documentation): the ledger learns its allocation again, the registry waits for its
    /// resent report, and a supervisor follows the allocation as for a cold launch.
    fn adopt_instance(&self, record: InstanceRecord) -> Result<Instance, BackendError> {
        let inner = &self.inner;
        if inner.closing.is_cancelled() {
            return Err(BackendError::ShuttingDown);
        }
        let (child, alloc) = record
            .handle
            // Dispatched job ids contain `/` (`<parent>/dispatch-…`); allocation ids do not.
            .rsplit_once('/')
            .filter(|(c, _)| c.starts_with(&format!("{}/", inner.parent)))
            .ok_or_else(|| BackendError::Launch("unreadable Nomad handle".into()))?;
        let id = InstanceId::new(record.instance_id.clone())
            .map_err(|e| BackendError::Launch(e.to_string()))?;
        let (feed_tx, feed) = mpsc::channel(inner.cfg.output_buffer.max(1));
        inner
            .registry
            .register_adopted(id.clone(), feed_tx, &record.execution_id)
            .map_err(registry_error)?;
        inner.ledger.add(&id);
        inner.ledger.set_child(&id, child);
        // Not known when the job was handed out before the watch bound it: the watch binds the
        // child's first allocation, as for a cold launch.
        if !alloc.is_empty() {
            inner.ledger.bind(&id, alloc);
        }
        let (out, output) = mpsc::channel(inner.cfg.output_buffer.max(1));
        let (cancel, cancel_rx) = CancelHandle::new();
        // Nobody waits for the start: the job was handed out long ago.
        let (early, _) = oneshot::channel();
        let sup = Supervisor {
            inner: Arc::clone(inner),
            id,
            child: child.to_owned(),
            eval: None,
            feed,
        };
        inner.tracker.spawn(sup.run(Mode::Cold {
            claim: Claim {
                out,
                cancel: cancel_rx,
            },
            early,
        }));
        Ok(Instance {
            output,
            cancel,
            warm: false,
            claim_latency: Duration::ZERO,
        })
    }
}

fn registry_error(e: PullError) -> BackendError {
    match e {
        PullError::Closed => BackendError::ShuttingDown,
        other => BackendError::Launch(other.to_string()),
    }
}

impl Inner {
    /// Registers the parameterized job (`PUT /v1/jobs`; re-registering the same spec is a
    /// no-op for Nomad) and logs Nomad's warnings at WARN: with memory oversubscription off,
    /// Nomad accepts the job but ignores `memory_max` (nomad/job_endpoint_hooks.go:617-645).
    async fn register(&self) -> Result<(), BackendError> {
        match self.client.register_job(&self.spec).await {
            Ok(resp) => {
                if !resp.warnings.trim().is_empty() {
                    tracing::warn!(
                        job = %self.parent,
                        warnings = %resp.warnings.trim(),
                        "nomad backend: Nomad registered the runtime job with warnings"
                    );
                }
                Ok(())
            }
            Err(e) if e.is_validation() => Err(BackendError::Unavailable(format!(
                "Nomad refused the runtime job {} (check `polydev-controller nomad-spec` against \
                 this Nomad version and its settings): {e}",
                self.parent
            ))),
            Err(e) => Err(BackendError::Unavailable(format!(
                "cannot register the Nomad job {}: {e}",
                self.parent
            ))),
        }
    }

    /// Dispatches the child of instance `id`; returns its job ID and evaluation (none when an
    /// idempotency token matched an existing child).
    async fn dispatch(
        &self,
        id: &InstanceId,
        execution_id: Option<&str>,
    ) -> Result<(String, Option<String>), BackendError> {
        let mut req = DispatchRequest::new(id.as_str()).meta(META_INSTANCE_ID, id.as_str());
        if let Some(e) = execution_id {
            req = req.meta(META_EXECUTION_ID, e);
        }
        let resp = self
            .client
            .dispatch_job(&self.parent, &req)
            .await
            .map_err(|e| BackendError::Unavailable(format!("Nomad dispatch failed: {e}")))?;
        self.ledger.set_child(id, &resp.dispatched_job_id);
        tracing::debug!(instance = %id, child = %resp.dispatched_job_id, "nomad backend: dispatched");
        let eval = (!resp.eval_id.is_empty()).then_some(resp.eval_id);
        Ok((resp.dispatched_job_id, eval))
    }

    /// The parent's dispatched children Nomad knows now (`None`, logged, if they cannot be
    /// listed: then nothing is swept). Only jobs whose `ParentID` is the parent and whose ID
    /// has its dispatch prefix: no other job is ever a candidate.
    async fn list_children(&self) -> Option<Vec<String>> {
        let prefix = format!("{}/dispatch-", self.parent);
        match self
            .client
            .list_jobs(&prefix, &QueryOptions::default())
            .await
        {
            Ok(r) => Some(
                r.value
                    .into_iter()
                    .filter(|j| j.parent_id == self.parent && j.id.starts_with(&prefix))
                    .map(|j| j.id)
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(
                    job = %self.parent,
                    error = %e,
                    "nomad backend: cannot list the runtime job's dispatched children; those a \
                     killed controller left will not be stopped (the token needs list-jobs)"
                );
                None
            }
        }
    }

    /// Stops and purges `stale` children a previous run left, in rounds with a growing pause
    /// (bounded: [`SWEEP_ROUNDS`]); at shutdown, one more round and no pause.
    async fn sweep(self: Arc<Self>, mut stale: Vec<String>) {
        let total = stale.len();
        let mut pause = SWEEP_BACKOFF;
        for round in 1..=SWEEP_ROUNDS {
            let mut left = Vec::new();
            for child in stale {
                if !self.purge(&child).await {
                    left.push(child);
                }
            }
            stale = left;
            if stale.is_empty() || round == SWEEP_ROUNDS || self.closing.is_cancelled() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.closing.cancelled() => {}
            }
            pause = (pause * 2).min(Duration::from_secs(30));
        }
        if stale.is_empty() {
            tracing::info!(count = total, job = %self.parent, "nomad backend: stopped and purged the dispatched children a previous run left");
        } else {
            tracing::warn!(
                count = total,
                left = stale.len(),
                children = ?stale,
                "nomad backend: could not stop and purge every dispatched child a previous run left"
            );
        }
    }

    /// Stops and purges a child; failures are logged (the shutdown sweep retries).
    async fn purge(&self, child: &str) -> bool {
        match self.client.stop_job(child, true).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(child, error = %e, "nomad backend: cannot stop and purge a dispatched job");
                false
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Following an allocation.

/// How a child's run ended, as far as Nomad tells.
#[derive(Debug)]
enum Ended {
    /// Its allocation reached a terminal status.
    Alloc(Box<Allocation>),
    /// The scheduler could not place it.
    Unplaced(String),
    /// Nomad's API kept failing.
    Api(NomadError),
}

/// Follows every allocation of `child` with blocking queries until the instance's own is
/// terminal. Its own is the one bound to it (by the runtime's first request, or here), else
/// the child's first (lowest `CreateIndex`): Nomad lists a job's allocations in no useful
/// order (by ID; nomad/state/state_store.go:4616-4654). Any other live allocation is a
/// replacement Nomad placed for a lost one (reconcile_cluster.go:933-943): it is refused a job
/// (see the authenticator) and the child is stopped once, so it does not run the job twice.
async fn watch(inner: Arc<Inner>, id: InstanceId, child: String, eval: Option<String>) -> Ended {
    let mut index = 0;
    let mut failures = 0u32;
    let mut eval = eval;
    let mut replacement_stopped = false;
    loop {
        let q = QueryOptions::blocking(index, inner.cfg.watch_wait);
        match inner.client.job_allocations(&child, &q).await {
            Ok(resp) => {
                failures = 0;
                index = resp.index.max(index);
                let allocs = resp.value;
                let bound = inner
                    .ledger
                    .alloc_of(&id)
                    .and_then(|b| allocs.iter().find(|a| a.id == b));
                let first = allocs
                    .iter()
                    .min_by(|a, b| (a.create_index, &a.id).cmp(&(b.create_index, &b.id)));
                if let Some(mine) = bound.or(first) {
                    inner.ledger.bind(&id, &mine.id);
                    let others: Vec<&str> = allocs
                        .iter()
                        .filter(|a| a.id != mine.id && !a.status().is_terminal())
                        .map(|a| a.id.as_str())
                        .collect();
                    if !others.is_empty() && !replacement_stopped {
                        replacement_stopped = true;
                        tracing::warn!(
                            instance = %id, child, allocation = %mine.id, replacements = ?others,
                            why = %mine.desired_description,
                            "nomad backend: Nomad placed a replacement allocation; stopping the child so it does not run twice"
                        );
                        if let Err(e) = inner.client.stop_job(&child, false).await {
                            tracing::warn!(child, error = %e, "nomad backend: cannot stop a dispatched job");
                        }
                    }
                    if mine.status().is_terminal() {
                        // The list is a stub; the full allocation has the task events.
                        let full = inner
                            .client
                            .read_allocation(&mine.id, &QueryOptions::default())
                            .await
                            .map(|r| r.value)
                            .unwrap_or_else(|_| mine.clone());
                        return Ended::Alloc(Box::new(full));
                    }
                } else if let Some(e) = eval.clone() {
                    match inner
                        .client
                        .read_evaluation(&e, &QueryOptions::default())
                        .await
                    {
                        Ok(ev) if ev.value.placement_failed() => {
                            return Ended::Unplaced(
                                "no node could take it (cluster full or constraints unmet)".into(),
                            );
                        }
                        Ok(ev) if ev.value.status == "complete" => eval = None,
                        _ => {}
                    }
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(child, error = %e, failures, "nomad backend: cannot read allocations");
                if failures >= inner.cfg.max_watch_failures {
                    return Ended::Api(e);
                }
                tokio::time::sleep(Duration::from_millis(200) * failures).await;
            }
        }
    }
}

impl Ended {
    /// `err` (an internal error that ended the report), with Nomad's reason instead when the
    /// allocation was lost: the cut stream was a consequence, not the cause.
    fn explain(&self, err: ErrorEvent) -> ErrorEvent {
        match self {
            Ended::Alloc(a) if a.status() == polydev_nomad::types::ClientStatus::Lost => {
                match self.describe().1 {
                    Some(message) => ErrorEvent { message, ..err },
                    None => err,
                }
            }
            _ => err,
        }
    }

    /// `ExitInfo` for the controller, and a client-safe message when the runtime could not
    /// have reported a result itself.
    fn describe(&self) -> (ExitInfo, Option<String>) {
        match self {
            Ended::Alloc(a) => {
                let code = a.exit_code(TASK_NAME);
                let summary = a.failure_summary(TASK_NAME);
                let message = match a.status() {
                    polydev_nomad::types::ClientStatus::Lost => Some(format!(
                        "the Nomad allocation running the runtime was lost ({}); a \
                         replacement Nomad places is stopped, never given the job",
                        if a.desired_description.is_empty() {
                            "its node went down or lost contact"
                        } else {
                            &a.desired_description
                        }
                    )),
                    polydev_nomad::types::ClientStatus::Failed if code.is_none() => Some(format!(
                        "the Nomad allocation failed: {}",
                        summary
                            .as_deref()
                            .and_then(|s| s.split(':').next())
                            .unwrap_or("unknown reason")
                    )),
                    _ => None,
                };
                (
                    ExitInfo {
                        code,
                        signal: None,
                        detail: summary,
                        oom_killed: a.oom_killed(TASK_NAME),
                    },
                    message,
                )
            }
            Ended::Unplaced(why) => (
                ExitInfo {
                    detail: Some(format!("placement failed: {why}")),
                    ..ExitInfo::default()
                },
                Some(format!("Nomad could not place the runtime: {why}")),
            ),
            Ended::Api(e) => (
                ExitInfo {
                    detail: Some(format!("Nomad API: {e}")),
                    ..ExitInfo::default()
                },
                Some(format!(
                    "lost track of the runtime: the Nomad API kept failing ({})",
                    e.to_string().chars().take(200).collect::<String>()
                )),
            ),
        }
    }

    fn short(&self) -> String {
        self.describe()
            .1
            .or_else(|| self.describe().0.detail)
            .unwrap_or_else(|| "the Nomad allocation ended".into())
    }
}

// ---------------------------------------------------------------------------------------------
// The supervisor of one instance.

/// What a claimed instance's supervisor gets.
struct Claim {
    out: mpsc::Sender<InstanceOutput>,
    cancel: oneshot::Receiver<()>,
}

enum Mode {
    Cold {
        claim: Claim,
        /// Told, when the allocation ends, whether the job was never handed out, and why.
        early: oneshot::Sender<(bool, String)>,
    },
    Warm {
        claim: oneshot::Receiver<Claim>,
        notice: DeathNotice,
        alive: Arc<AtomicBool>,
    },
}

struct Supervisor {
    inner: Arc<Inner>,
    id: InstanceId,
    child: String,
    eval: Option<String>,
    feed: mpsc::Receiver<InstanceOutput>,
}

impl Supervisor {
    async fn run(mut self, mode: Mode) {
        let inner = Arc::clone(&self.inner);
        let watcher = watch(
            Arc::clone(&inner),
            self.id.clone(),
            self.child.clone(),
            self.eval.take(),
        );
        tokio::pin!(watcher);
        let (claim, mut early) = match mode {
            Mode::Cold { claim, early } => (claim, Some(early)),
            Mode::Warm {
                claim,
                notice,
                alive,
            } => {
                tokio::select! {
                    c = claim => match c {
                        Ok(c) => (c, None),
                        Err(_) => {
                            // Dropped while idle: resize or shutdown.
                            alive.store(false, Ordering::Release);
                            inner.registry.retire(&self.id);
                            self.stop_and_wait(&mut watcher).await;
                            return;
                        }
                    },
                    ended = &mut watcher => {
                        alive.store(false, Ordering::Release);
                        tracing::warn!(instance = %self.id, why = %ended.short(), "nomad backend: an idle instance ended");
                        notice.notify();
                        self.finish().await;
                        return;
                    }
                    () = inner.closing.cancelled() => {
                        alive.store(false, Ordering::Release);
                        inner.registry.retire(&self.id);
                        self.stop_and_wait(&mut watcher).await;
                        return;
                    }
                }
            }
        };
        let Claim { out, cancel } = claim;
        let mut cancel = Some(cancel);
        let mut feed_open = true;
        let mut terminal_seen = false;
        let mut stopped = false;
        let mut ended: Option<Ended> = None;
        let mut drain_until: Option<Instant> = None;
        let mut give_up_at: Option<Instant> = None;
        // An internal error ending the report (typically "the runtime vanished mid-job") is
        // held until Nomad says how the allocation ended (at most the drain grace), so that a
        // lost allocation is reported with Nomad's reason rather than a cut stream.
        let mut held: Option<(ErrorEvent, Instant)> = None;
        loop {
            if ended.is_some() && !feed_open && held.is_none() {
                break;
            }
            tokio::select! {
                item = self.feed.recv(), if feed_open => match item {
                    Some(item) => {
                        if let InstanceOutput::Event(e) = &item && e.is_terminal() {
                            terminal_seen = true;
                        }
                        let item = match item {
                            InstanceOutput::Event(Event::Error(err))
                                if err.kind == ErrorKind::Internal && held.is_none() =>
                            {
                                match &ended {
                                    Some(e) => InstanceOutput::Event(Event::Error(e.explain(err))),
                                    None => {
                                        held = Some((err, Instant::now() + inner.cfg.drain_grace));
                                        continue;
                                    }
                                }
                            }
                            other => other,
                        };
                        if out.send(item).await.is_err() && !stopped {
                            stopped = true;
                            give_up_at = Some(Instant::now() + inner.cfg.stop_timeout);
                            self.stop();
                        }
                    }
                    None => feed_open = false,
                },
                r = async {
                    match cancel.as_mut() {
                        Some(c) => c.await.map_err(|_| ()),
                        None => std::future::pending().await,
                    }
                }, if cancel.is_some() => {
                    cancel = None;
                    if r.is_ok() && !stopped {
                        stopped = true;
                        give_up_at = Some(Instant::now() + inner.cfg.stop_timeout);
                        self.stop();
                    }
                }
                () = out.closed(), if !stopped => {
                    if inner.detaching() && ended.is_none() && !terminal_seen {
                        self.let_go();
                        return;
                    }
                    stopped = true;
                    give_up_at = Some(Instant::now() + inner.cfg.stop_timeout);
                    self.stop();
                }
                e = &mut watcher, if ended.is_none() => {
                    if let Some(early) = early.take() {
                        // Taken back here, so the launch knows for sure whether the runtime
                        // ever had the job.
                        let never_handed = inner.registry.unassign(&self.id);
                        let _ = early.send((never_handed, e.short()));
                    }
                    // Ends the slot: its feed sender goes, the report's follows when it ends.
                    inner.registry.remove(&self.id);
                    if let Some((err, _)) = held.take() {
                        let _ = out.send(InstanceOutput::Event(Event::Error(e.explain(err)))).await;
                    }
                    ended = Some(e);
                    drain_until = Some(Instant::now() + inner.cfg.drain_grace);
                }
                () = sleep_opt(held.as_ref().map(|h| h.1)), if held.is_some() => {
                    if let Some((err, _)) = held.take() {
                        let _ = out.send(InstanceOutput::Event(Event::Error(err))).await;
                    }
                }
                () = sleep_opt(drain_until), if drain_until.is_some() && feed_open => {
                    tracing::warn!(instance = %self.id, "nomad backend: the report did not end after the allocation did");
                    feed_open = false;
                }
                () = sleep_opt(give_up_at), if give_up_at.is_some() && ended.is_none() => {
                    ended = Some(Ended::Api(NomadError::Timeout {
                        op: "stop allocation".into(),
                        after: inner.cfg.stop_timeout,
                    }));
                    break;
                }
                () = inner.closing.cancelled(), if !stopped => {
                    // Only a runtime still working on its job is left running.
                    if inner.detaching() && ended.is_none() && !terminal_seen {
                        self.let_go();
                        return;
                    }
                    stopped = true;
                    give_up_at = Some(Instant::now() + inner.cfg.stop_timeout.min(Duration::from_secs(5)));
                    self.stop();
                }
            }
        }
        drop(early);
        if let Some(e) = ended {
            let (info, message) = e.describe();
            if !terminal_seen
                && !stopped
                && let Some(message) = message
            {
                let _ = out
                    .send(InstanceOutput::Event(Event::Error(ErrorEvent {
                        retryable: true,
                        ..ErrorEvent::new(ErrorKind::Internal, message)
                    })))
                    .await;
            }
            if info.detail.is_some() {
                tracing::info!(instance = %self.id, child = %self.child, detail = ?info.detail, "nomad backend: allocation ended");
            }
            let _ = out.send(InstanceOutput::Exited(info)).await;
        }
        self.finish().await;
    }

    /// Asks Nomad to stop the child (SIGTERM, then SIGKILL after its kill timeout), without
    /// holding up the event forwarding.
    /// Detach: the child keeps running with its job, for the next controller to adopt; it
    /// leaves the ledger (so the shutdown sweep spares it) and the registry.
    fn let_go(&mut self) {
        tracing::info!(instance = %self.id, child = %self.child, "nomad backend: detaching from a running instance");
        self.inner.registry.remove(&self.id);
        self.inner.ledger.forget(&self.id);
        self.feed.close();
    }

    fn stop(&self) {
        let inner = Arc::clone(&self.inner);
        let child = self.child.clone();
        inner.tracker.clone().spawn(async move {
            if let Err(e) = inner.client.stop_job(&child, false).await {
                tracing::warn!(child, error = %e, "nomad backend: cannot stop a dispatched job");
            }
        });
    }

    /// An idle instance that will get no job: stop it, wait (bounded) until Nomad reports its
    /// allocation ended, so that nothing runs once this returns, then purge it.
    async fn stop_and_wait(
        &mut self,
        watcher: &mut std::pin::Pin<&mut impl std::future::Future<Output = Ended>>,
    ) {
        if let Err(e) = self.inner.client.stop_job(&self.child, false).await {
            tracing::warn!(child = %self.child, error = %e, "nomad backend: cannot stop a dispatched job");
        }
        if tokio::time::timeout(self.inner.cfg.stop_timeout, watcher.as_mut())
            .await
            .is_err()
        {
            tracing::warn!(child = %self.child, "nomad backend: an idle instance did not stop in time");
        }
        self.finish().await;
    }

    /// The instance is over: forget it, stop and purge its child.
    async fn finish(&mut self) {
        self.inner.registry.remove(&self.id);
        self.feed.close();
        if self.inner.purge(&self.child).await {
            self.inner.ledger.forget(&self.id);
        } else {
            // Kept in the ledger for the shutdown sweep, but no longer authenticated.
            if let Some(e) = self.inner.ledger.lock().instances.get_mut(&self.id) {
                e.redeemed = true;
            }
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------------
// The warm pool.

/// An idle, dispatched instance that has polled. Dropping it retires it (its supervisor stops
/// and purges the child).
struct Idle {
    id: InstanceId,
    claim: oneshot::Sender<Claim>,
    alive: Arc<AtomicBool>,
}

impl WarmInstance for Idle {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.claim.is_closed()
    }
}

struct Starter(Arc<Inner>);

impl WarmStarter for Starter {
    type Instance = Idle;

    fn start(&self, notice: DeathNotice) -> BoxFuture<'static, Result<Idle, BackendError>> {
        let inner = Arc::clone(&self.0);
        Box::pin(async move {
            let id = InstanceId::random().map_err(|e| BackendError::Launch(e.to_string()))?;
            let (feed_tx, feed) = mpsc::channel(inner.cfg.output_buffer.max(1));
            let registration = inner
                .registry
                .register(id.clone(), feed_tx, None)
                .map_err(registry_error)?;
            inner.ledger.add(&id);
            let (child, eval) = match inner.dispatch(&id, None).await {
                Ok(c) => c,
                Err(e) => {
                    inner.registry.remove(&id);
                    inner.ledger.forget(&id);
                    return Err(e);
                }
            };
            let (claim_tx, claim_rx) = oneshot::channel();
            let alive = Arc::new(AtomicBool::new(true));
            let sup = Supervisor {
                inner: Arc::clone(&inner),
                id: id.clone(),
                child,
                eval,
                feed,
            };
            inner.tracker.spawn(sup.run(Mode::Warm {
                claim: claim_rx,
                notice,
                alive: Arc::clone(&alive),
            }));
            match tokio::time::timeout(inner.cfg.start_timeout, registration.polled).await {
                Ok(Ok(())) => Ok(Idle {
                    id,
                    claim: claim_tx,
                    alive,
                }),
                // Dropping `claim_tx` makes the supervisor stop and purge it.
                Ok(Err(_)) => Err(BackendError::Launch(
                    "a warm Nomad instance ended before polling for a job".into(),
                )),
                Err(_) => Err(BackendError::Launch(format!(
                    "a warm Nomad instance did not poll within {} ms",
                    inner.cfg.start_timeout.as_millis()
                ))),
            }
        })
    }
}

impl Backend for NomadBackend {
    fn name(&self) -> &'static str {
        "nomad"
    }

    fn launch(&self, job: Job) -> BoxFuture<'_, Result<Instance, BackendError>> {
        Box::pin(self.launch_job(job))
    }

    fn pool_status(&self) -> PoolStatus {
        self.pool.status()
    }

    fn set_pool_size(&self, size: usize) -> Result<(), BackendError> {
        self.pool.set_size(size)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            drop(self.pool.close());
            inner.closing.cancel();
            inner.tracker.close();
            let wait = inner.cfg.stop_timeout + inner.cfg.drain_grace;
            if tokio::time::timeout(wait, inner.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!("nomad backend: instances still stopping at shutdown; purging them");
            }
            inner.registry.close();
            for child in inner.ledger.children() {
                inner.purge(&child).await;
            }
        })
    }

    fn runtime_api(&self) -> Option<RuntimeApi> {
        Some(RuntimeApi {
            auth: Arc::clone(&self.inner.auth) as _,
            registry: Arc::clone(&self.inner.registry),
        })
    }

    fn instance_record(&self, execution_id: &str) -> Option<InstanceRecord> {
        self.inner.journal().remove(execution_id)
    }

    fn adopt(&self, record: InstanceRecord) -> BoxFuture<'_, Result<Instance, BackendError>> {
        Box::pin(std::future::ready(self.adopt_instance(record)))
    }

    fn detaches(&self) -> bool {
        true
    }

    fn sweep_leftovers(&self, adopting: &[InstanceRecord]) {
        let inner = &self.inner;
        let Some(found) = inner
            .leftovers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        // The adopted children (their handle is `<child>/<allocation>`), and, in case an
        // adoption already began, every child this backend follows.
        let mut keep: std::collections::HashSet<String> = adopting
            .iter()
            .filter(|r| r.backend == self.name())
            .filter_map(|r| r.handle.rsplit_once('/').map(|(c, _)| c.to_owned()))
            .collect();
        keep.extend(inner.ledger.children());
        let stale: Vec<String> = found.into_iter().filter(|c| !keep.contains(c)).collect();
        tracing::info!(
            job = %inner.parent,
            adopted = adopting.len(),
            stale = stale.len(),
            "nomad backend: dispatched children a previous run left"
        );
        if stale.is_empty() {
            return;
        }
        let sweeper = Arc::clone(inner);
        inner.tracker.spawn(sweeper.sweep(stale));
    }

    fn detach(&self) -> BoxFuture<'_, ()> {
        self.inner.detaching.store(true, Ordering::SeqCst);
        self.shutdown()
    }
}

// ---------------------------------------------------------------------------------------------
// Settings from the command line / environment.

/// Settings of the Nomad backend (`POLYDEV_BACKEND=nomad`) and of `nomad-spec`; ignored by
/// the other backends. Nomad itself is reached with Nomad's own variables (`NOMAD_ADDR`,
/// `NOMAD_TOKEN`, `NOMAD_CACERT`, `NOMAD_CLIENT_CERT`, `NOMAD_CLIENT_KEY`,
/// `NOMAD_TLS_SERVER_NAME`, `NOMAD_NAMESPACE`, `NOMAD_REGION`).
#[derive(Debug, Clone, clap::Args)]
pub struct NomadArgs {
    /// Nomad backend: ID of the parameterized job the controller registers and dispatches.
    #[arg(long, env = "POLYDEV_NOMAD_JOB", default_value = "polydev-runtime")]
    pub nomad_job: String,
    /// Nomad backend: the runtime image, with a pinned tag (`latest` is refused).
    #[arg(long, env = "POLYDEV_NOMAD_IMAGE")]
    pub nomad_image: Option<String>,
    /// Nomad backend: datacenters, comma-separated (default: all, `*`).
    #[arg(long, env = "POLYDEV_NOMAD_DATACENTERS", value_delimiter = ',')]
    pub nomad_datacenters: Vec<String>,
    /// Nomad backend: node pool of the runtime job.
    #[arg(long, env = "POLYDEV_NOMAD_NODE_POOL")]
    pub nomad_node_pool: Option<String>,
    /// Nomad backend: docker `network_mode` of runtime tasks (driver default if unset).
    #[arg(long, env = "POLYDEV_NOMAD_NETWORK_MODE")]
    pub nomad_network_mode: Option<String>,
    /// Nomad backend: docker `runtime` of runtime tasks (e.g. runsc for gVisor).
    #[arg(long, env = "POLYDEV_NOMAD_DOCKER_RUNTIME")]
    pub nomad_docker_runtime: Option<String>,
    /// Nomad backend: memory reservation of each runtime in MB (at most 64).
    #[arg(long, env = "POLYDEV_NOMAD_MEMORY_MB", default_value_t = 32)]
    pub nomad_memory_mb: u32,
    /// Nomad backend: memory ceiling of each runtime in MB (needs memory oversubscription).
    #[arg(long, env = "POLYDEV_NOMAD_MEMORY_MAX_MB", default_value_t = 128)]
    pub nomad_memory_max_mb: u32,
    /// Nomad backend: longest wait from dispatch to the runtime fetching its job, in seconds
    /// (scheduling, image pull, start).
    #[arg(long, env = "POLYDEV_NOMAD_START_TIMEOUT", default_value_t = 60)]
    pub nomad_start_timeout: u64,
}

impl NomadArgs {
    /// The job settings for runtimes reaching the controller at `controller_url`.
    pub fn job_config(&self, controller_url: &str) -> RuntimeJobConfig {
        let mut job = RuntimeJobConfig::new(controller_url);
        job.job_id = self.nomad_job.clone();
        if let Some(image) = &self.nomad_image {
            job.image = image.clone();
        }
        if !self.nomad_datacenters.is_empty() {
            job.datacenters = self.nomad_datacenters.clone();
        }
        job.node_pool = self.nomad_node_pool.clone();
        job.network_mode = self.nomad_network_mode.clone();
        job.docker_runtime = self.nomad_docker_runtime.clone();
        job.memory_mb = self.nomad_memory_mb;
        job.memory_max_mb = self.nomad_memory_max_mb;
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        job.namespace = var("NOMAD_NAMESPACE");
        job.region = var("NOMAD_REGION");
        job
    }

    /// The runtime environment that goes into the job: `EXTRA_CA_CERTS` names a file on the
    /// controller's host, which does not exist inside a Nomad task, so it is left out.
    pub fn runtime_env(vars: Vec<(String, String)>) -> Vec<(String, String)> {
        vars.into_iter()
            .filter(|(k, _)| {
                let keep = k != "EXTRA_CA_CERTS";
                if !keep {
                    tracing::warn!(
                        "EXTRA_CA_CERTS is not passed to Nomad runtimes (a path on this host); \
                         build the CA into the runtime image instead"
                    );
                }
                keep
            })
            .collect()
    }

    /// The backend configuration: Nomad from `NOMAD_*`, the job from these settings.
    pub fn backend_config(
        &self,
        controller_url: &str,
        runtime_env: Vec<(String, String)>,
        pool_size: usize,
    ) -> Result<NomadBackendConfig, BackendError> {
        let nomad = NomadConfig::from_env()
            .map_err(|e| BackendError::Unavailable(format!("Nomad settings: {e}")))?;
        let mut cfg = NomadBackendConfig::new(nomad, self.job_config(controller_url));
        cfg.runtime_env = NomadArgs::runtime_env(runtime_env);
        cfg.pool_size = pool_size;
        cfg.start_timeout = Duration::from_secs(self.nomad_start_timeout.max(1));
        Ok(cfg)
    }
}

/// `polydev-controller nomad-spec`: the job document exactly as `POLYDEV_BACKEND=nomad`
/// registers it with the same settings, for `nomad job run -json`.
#[derive(Debug, clap::Args)]
pub struct NomadSpecArgs {
    /// URL runtimes use to reach the controller (https://, or http:// on loopback only).
    #[arg(long, env = crate::config::ENV_PUBLIC_URL)]
    pub public_url: String,
    #[command(flatten)]
    pub nomad: NomadArgs,
    #[command(flatten)]
    pub runtime_env: crate::config::RuntimeEnvArgs,
}

/// The pretty-printed `{"Job": {...}}` for `nomad-spec`.
pub fn spec_json(args: &NomadSpecArgs) -> Result<String, String> {
    let url = check_runtime_url(&args.public_url).map_err(|e| e.to_string())?;
    let job = args.nomad.job_config(&url);
    let env = NomadArgs::runtime_env(args.runtime_env.vars());
    let spec = job_spec(&job, &env).map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&spec).map_err(|e| e.to_string())
}
