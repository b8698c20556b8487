//! A faithful in-process fake Nomad for tests (feature `fake`): no Nomad binary can be
//! installed here, and Nomad's own test harness forks a real `nomad` (orchestration.md §5.2).
//!
//! It serves the endpoints the client uses, with the request and response shapes of Nomad's
//! HTTP API docs and Go handlers (`command/agent/job_endpoint.go`, `nomad/job_endpoint.go`):
//! `PUT|POST /v1/jobs`, `GET|DELETE /v1/job/:id[?purge=true]`, `POST /v1/job/:id/dispatch`
//! (meta/payload validation and the idempotency-token lookup of `Job.Dispatch`),
//! `GET /v1/job/:id/allocations`, `GET /v1/allocation/:id`, `GET /v1/evaluation/:id`,
//! `GET /v1/event/stream` (NDJSON, `{}` heartbeats, topic filters, resume index) and
//! `GET /.well-known/jwks.json`. Reads support blocking queries (`index`/`wait`,
//! `X-Nomad-Index`). Every state change takes one "Raft" index and publishes events.
//!
//! And it really runs allocations: each placed allocation launches the configured runtime
//! binary (whatever the docker `image` says) as a local process with the task's `Env`
//! interpolated (`${NOMAD_SECRETS_DIR}` and friends point into a temporary task directory),
//! writes signed workload-identity JWTs into the secrets directory, tracks the exit into
//! `ClientStatus` (pending → running → complete/failed, or lost), and stops processes with
//! SIGTERM then SIGKILL after `KillTimeout` when a job is stopped.
//!
//! It is as strict as Nomad where that matters (issue 10; `shared/reference/nomad-fidelity.md`):
//! registration canonicalizes and validates the job as Nomad does and answers a refusal with
//! Nomad's HTTP 500 and text, and memory oversubscription (off by default, as in Nomad) with
//! Nomad's warning (`admission`); a lost allocation is replaced in the same plan whatever the
//! reschedule policy; a job's allocations are listed by ID (random with respect to creation,
//! [`AllocOrder`]); token files are rewritten in place, not atomically; `sub` carries the
//! parent job's ID; the event stream sends `{}` on connect; blocking queries stop at 300 s; the
//! event buffer keeps 100 frames.
//!
//! Failure knobs: API errors (500 or any status, optionally with a given body) and slow
//! responses for the next N requests (optionally only on paths containing a string),
//! allocations that fail to start (driver failure), placements that fail (blocked evaluation),
//! allocations lost mid-run (and replaced), identity and signing-key rotation (with a pause
//! inside the in-place write), and minting arbitrary tokens.
//!
//! Where it is simpler than Nomad (documented, not hidden): one node; no Raft, so indexes are
//! one counter; allocation status updates are immediate (Nomad batches them every 200 ms); a
//! purged job's terminal allocations are garbage collected at once (Nomad keeps allocations and
//! evaluations until its core GC); admission checks only the rules a runtime-like job can trip
//! (`admission` lists them); only the docker task driver's `image`/`args`/`command` matter (the
//! rest of `Config` is stored, not enforced: no `allow_runtimes`, no capabilities); no
//! `disconnect` block (`unknown` allocations). It listens on loopback only.

mod admission;
mod http;
mod keys;
mod runner;
mod signer;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

pub use admission::check_job;
pub use signer::SigningAlg;

use crate::config::NomadConfig;
use crate::types::{Allocation, Evaluation, Event, EventFrame, JobInfo, Jwks};

/// Settings of a fake Nomad.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The program every docker task runs (the image name is ignored).
    pub runtime_binary: PathBuf,
    /// When set, every API call (not the JWKS) needs this `X-Nomad-Token`.
    pub acl_token: Option<String>,
    pub region: String,
    pub datacenter: String,
    pub signing: SigningAlg,
    /// Event-stream heartbeat period (Nomad: 30 s).
    pub heartbeat_interval: Duration,
    /// Events kept for resuming subscribers (Nomad's `event_buffer_size`, default 100).
    pub event_buffer_size: usize,
    /// Delay between an evaluation and its placement (scheduler latency).
    pub schedule_delay: Duration,
    /// Delay between placement and the task starting (client latency).
    pub start_delay: Duration,
    /// Extra environment for every task (tests: e.g. `EXTRA_CA_CERTS`).
    pub extra_env: Vec<(String, String)>,
    /// The cluster's scheduler has memory oversubscription enabled. Nomad's default is off,
    /// and then registering a job whose task sets `MemoryMaxMB` returns a warning
    /// (nomad/job_endpoint_hooks.go:617-645).
    pub memory_oversubscription: bool,
    /// Order of `GET /v1/job/:id/allocations`.
    pub alloc_order: AllocOrder,
    /// Pause between truncating a token file and writing the new token when identities are
    /// renewed, to widen the window in which a reader sees it empty (tests of readers).
    pub token_write_pause: Duration,
}

/// The order in which the fake lists a job's allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllocOrder {
    /// By allocation ID, i.e. random with respect to creation: what Nomad does, iterating the
    /// non-unique `job` index of its `allocs` table, whose ties go by the UUID primary key
    /// (nomad/state/state_store.go:4616-4654; go-memdb semantics, inferred).
    #[default]
    ById,
    /// Newest first: a replacement before the allocation it replaces (a test's worst case).
    NewestFirst,
}

impl FakeConfig {
    pub fn new(runtime_binary: impl Into<PathBuf>) -> FakeConfig {
        FakeConfig {
            runtime_binary: runtime_binary.into(),
            acl_token: None,
            region: "global".into(),
            datacenter: "dc1".into(),
            signing: SigningAlg::Rs256,
            heartbeat_interval: Duration::from_secs(30),
            // Nomad's `event_buffer_size` default (command/agent/config.go:1883).
            event_buffer_size: 100,
            schedule_delay: Duration::from_millis(5),
            start_delay: Duration::from_millis(5),
            extra_env: Vec::new(),
            memory_oversubscription: false,
            alloc_order: AllocOrder::ById,
            token_write_pause: Duration::ZERO,
        }
    }
}

/// Claims for a token minted with [`FakeNomad::mint_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintClaims {
    pub namespace: String,
    pub job_id: String,
    pub allocation_id: String,
    pub task: String,
    pub audience: Vec<String>,
    /// Seconds relative to now (negative: in the past).
    pub issued_at_offset: i64,
    /// Seconds relative to now; `None`: no `exp`.
    pub expires_in: Option<i64>,
}

#[derive(Debug, Clone, Default)]
struct FailRule {
    path_contains: Option<String>,
    status: u16,
    remaining: usize,
    /// The body answered; a generic message if `None`.
    body: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct DelayRule {
    path_contains: Option<String>,
    delay: Duration,
    remaining: usize,
    /// Delay the response after the request took effect (a lost or late answer), instead of
    /// delaying the handling.
    after: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Knobs {
    fail: Vec<FailRule>,
    delay: Vec<DelayRule>,
    /// Next allocations that fail to start, with the driver error.
    fail_allocs: VecDeque<String>,
    fail_placements: usize,
}

impl Knobs {
    fn take_fail(&mut self, path: &str) -> Option<(u16, Option<String>)> {
        let rule = self.fail.iter_mut().find(|r| {
            r.remaining > 0 && r.path_contains.as_deref().is_none_or(|p| path.contains(p))
        })?;
        rule.remaining -= 1;
        Some((rule.status, rule.body.clone()))
    }

    fn take_delay(&mut self, path: &str, after: bool) -> Option<Duration> {
        let rule = self.delay.iter_mut().find(|r| {
            r.remaining > 0
                && r.after == after
                && r.path_contains.as_deref().is_none_or(|p| path.contains(p))
        })?;
        rule.remaining -= 1;
        Some(rule.delay)
    }
}

/// A stored job: the submitted JSON, canonicalized, plus its server-side fields.
#[derive(Debug, Clone)]
pub(crate) struct JobRec {
    pub job: serde_json::Value,
}

impl JobRec {
    fn str(&self, key: &str) -> String {
        self.job
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    }

    pub(crate) fn info(&self) -> JobInfo {
        serde_json::from_value(self.job.clone()).unwrap_or_default()
    }
}

/// What the runner of one allocation is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AllocCommand {
    Run,
    Stop,
    /// Its node went down: the allocation becomes `lost` and Nomad places a replacement.
    Lose,
    /// The fake is going away: killed and marked `lost`, nothing replaced.
    Kill,
}

pub(crate) struct AllocRec {
    pub alloc: Allocation,
    pub job: serde_json::Value,
    pub control: Option<watch::Sender<AllocCommand>>,
    pub task_dir: Option<PathBuf>,
    pub identities: Vec<runner::IdentitySpec>,
    pub task_name: String,
    pub group: String,
    pub stderr: Arc<Mutex<Vec<u8>>>,
    pub pid: Option<u32>,
}

pub(crate) struct State {
    pub index: u64,
    pub jobs_index: u64,
    pub allocs_index: u64,
    pub evals_index: u64,
    pub jobs: BTreeMap<(String, String), JobRec>,
    pub evals: BTreeMap<String, Evaluation>,
    pub allocs: BTreeMap<String, AllocRec>,
    pub buffer: VecDeque<EventFrame>,
    pub knobs: Knobs,
    pub requests: u64,
}

pub(crate) struct Shared {
    pub cfg: FakeConfig,
    state: Mutex<State>,
    pub changed: watch::Sender<u64>,
    pub events: broadcast::Sender<EventFrame>,
    pub signer: Mutex<signer::Signer>,
    pub node_id: String,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn signer(&self) -> MutexGuard<'_, signer::Signer> {
        self.signer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one state change at a fresh index, publishes its events and wakes blocking
    /// queries.
    pub(crate) fn mutate<R>(&self, f: impl FnOnce(&mut State, u64) -> (R, Vec<Event>)) -> R {
        let mut st = self.lock();
        st.index += 1;
        let index = st.index;
        let (result, mut events) = f(&mut st, index);
        if !events.is_empty() {
            for e in &mut events {
                e.index = index;
            }
            let frame = EventFrame { index, events };
            st.buffer.push_back(frame.clone());
            while st.buffer.len() > self.cfg.event_buffer_size.max(1) {
                st.buffer.pop_front();
            }
            // No subscriber is fine.
            let _ = self.events.send(frame);
        }
        drop(st);
        self.changed.send_replace(index);
        result
    }
}

/// A running fake Nomad. Dropping it stops the server and kills every task process.
pub struct FakeNomad {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeNomad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeNomad")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for FakeNomad {
    fn drop(&mut self) {
        self.server.abort();
        self.kill_all();
    }
}

impl FakeNomad {
    /// Starts the fake on `127.0.0.1:0`.
    pub async fn start(cfg: FakeConfig) -> std::io::Result<FakeNomad> {
        let signer = signer::Signer::new(cfg.signing).map_err(std::io::Error::other)?;
        let node_id = signer::uuid(signer.rng());
        let (changed, _) = watch::channel(0);
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State {
                index: 1,
                jobs_index: 1,
                allocs_index: 1,
                evals_index: 1,
                jobs: BTreeMap::new(),
                evals: BTreeMap::new(),
                allocs: BTreeMap::new(),
                buffer: VecDeque::new(),
                knobs: Knobs::default(),
                requests: 0,
            }),
            changed,
            events,
            signer: Mutex::new(signer),
            node_id,
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let app = http::router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeNomad {
            addr,
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client configuration pointing at this fake (with its ACL token, if any) and short
    /// retry backoffs.
    pub fn client_config(&self) -> NomadConfig {
        let mut cfg = NomadConfig::new(self.address());
        if let Some(t) = &self.shared.cfg.acl_token {
            cfg = cfg.with_token(t.clone());
        }
        cfg.retry.initial_backoff = Duration::from_millis(10);
        cfg.retry.max_backoff = Duration::from_millis(50);
        cfg
    }

    /// The next `n` API requests answer `status` (e.g. 500) with a plain-text error.
    pub fn fail_next_requests(&self, n: usize, status: u16) {
        self.fail_requests_matching("", n, status);
    }

    /// Like [`FakeNomad::fail_next_requests`], only for paths containing `path_contains`.
    pub fn fail_requests_matching(&self, path_contains: &str, n: usize, status: u16) {
        self.shared.lock().knobs.fail.push(FailRule {
            path_contains: (!path_contains.is_empty()).then(|| path_contains.to_owned()),
            status,
            remaining: n,
            body: None,
        });
    }

    /// Like [`FakeNomad::fail_requests_matching`], answering `body` (e.g. one of Nomad's
    /// validation errors).
    pub fn fail_requests_with(&self, path_contains: &str, n: usize, status: u16, body: &str) {
        self.shared.lock().knobs.fail.push(FailRule {
            path_contains: (!path_contains.is_empty()).then(|| path_contains.to_owned()),
            status,
            remaining: n,
            body: Some(body.to_owned()),
        });
    }

    /// The next `n` requests (on paths containing `path_contains`, or all if empty) wait
    /// `delay` before being handled: slow responses and client timeouts.
    pub fn delay_requests(&self, path_contains: &str, n: usize, delay: Duration) {
        self.shared.lock().knobs.delay.push(DelayRule {
            path_contains: (!path_contains.is_empty()).then(|| path_contains.to_owned()),
            delay,
            remaining: n,
            after: false,
        });
    }

    /// The next `n` matching requests take effect at once but their response is held back for
    /// `delay`: a client that times out meanwhile sees no answer although Nomad acted (the
    /// case dispatch idempotency tokens exist for).
    pub fn delay_responses(&self, path_contains: &str, n: usize, delay: Duration) {
        self.shared.lock().knobs.delay.push(DelayRule {
            path_contains: (!path_contains.is_empty()).then(|| path_contains.to_owned()),
            delay,
            remaining: n,
            after: true,
        });
    }

    /// The next `n` allocations fail to start with a `Driver Failure` event.
    pub fn fail_next_allocations(&self, n: usize, driver_error: &str) {
        let mut st = self.shared.lock();
        for _ in 0..n {
            st.knobs.fail_allocs.push_back(driver_error.to_owned());
        }
    }

    /// The next `n` evaluations cannot place their allocations (exhausted node; a blocked
    /// evaluation is created, as Nomad does).
    pub fn fail_next_placements(&self, n: usize) {
        self.shared.lock().knobs.fail_placements += n;
    }

    /// Loses an allocation mid-run (its node went down): the process is killed, the
    /// allocation becomes `lost` (`DesiredStatus: stop`, `DesiredDescription` "alloc is lost
    /// since its node is down", `ClientDescription` left as it was: nomad/structs/plan.go:
    /// 155-181) and, as Nomad does whatever the reschedule policy says, a replacement
    /// allocation of the same job is placed in the same plan, with `PreviousAllocation` set
    /// (scheduler/reconciler/reconcile_cluster.go:866-876, 933-943; unless the job is stopped).
    /// Returns false if it is unknown or already terminal.
    pub fn lose_allocation(&self, alloc_id: &str) -> bool {
        let st = self.shared.lock();
        match st.allocs.get(alloc_id) {
            Some(rec) if !rec.alloc.status().is_terminal() => match &rec.control {
                Some(ctl) => {
                    ctl.send_replace(AllocCommand::Lose);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    /// Re-signs every live allocation's identities (new `iat`/`exp`/`jti`) and rewrites the
    /// token files in place (truncate, then write, pausing `token_write_pause` in between), as
    /// a Nomad client renewing identities does: `users.WriteFileFor` falls back to
    /// `os.WriteFile` when the task's `user` is not a host user name, as `65534:65534` is not
    /// (helper/users/lookup.go:69-103). A reader can see the file empty or half-written.
    pub fn rotate_identities(&self) -> usize {
        runner::rotate_identities(&self.shared)
    }

    /// Adds a new signing key (new `kid`) that signs from now on; old keys stay in the JWKS
    /// unless `drop_old`. Returns the new key ID.
    pub fn rotate_signing_key(&self, drop_old: bool) -> Result<String, String> {
        self.shared.signer().rotate(drop_old)
    }

    /// The current JWKS (as served on `/.well-known/jwks.json`).
    pub fn jwks(&self) -> Jwks {
        self.shared.signer().jwks()
    }

    /// Signs arbitrary claims with the active key (expired, wrong audience, ...).
    pub fn mint_token(&self, c: &MintClaims) -> Result<String, String> {
        let now = runner::unix_now() as i64;
        let iat = now + c.issued_at_offset;
        let mut claims = serde_json::json!({
            "nomad_namespace": c.namespace,
            "nomad_job_id": c.job_id,
            "nomad_allocation_id": c.allocation_id,
            "nomad_task": c.task,
            "iat": iat,
            "nbf": iat,
            "jti": signer::uuid(self.shared.signer().rng()),
        });
        runner::set_audience(&mut claims, &c.audience);
        if let Some(exp) = c.expires_in {
            claims["exp"] = serde_json::json!(now + exp);
        }
        self.shared.signer().sign(&claims)
    }

    /// Snapshot of every job (parents and dispatched children).
    pub fn jobs(&self) -> Vec<JobInfo> {
        self.shared.lock().jobs.values().map(JobRec::info).collect()
    }

    /// Snapshot of every allocation still in state.
    pub fn allocations(&self) -> Vec<Allocation> {
        self.shared
            .lock()
            .allocs
            .values()
            .map(|r| r.alloc.clone())
            .collect()
    }

    /// Task processes currently alive.
    pub fn running_processes(&self) -> usize {
        self.shared
            .lock()
            .allocs
            .values()
            .filter(|r| r.pid.is_some())
            .count()
    }

    /// API requests served so far (including injected failures).
    pub fn request_count(&self) -> u64 {
        self.shared.lock().requests
    }

    /// Evaluations in state.
    pub fn evaluations(&self) -> Vec<Evaluation> {
        self.shared.lock().evals.values().cloned().collect()
    }

    /// The allocation's secrets directory while it runs.
    pub fn secrets_dir(&self, alloc_id: &str) -> Option<PathBuf> {
        self.shared
            .lock()
            .allocs
            .get(alloc_id)
            .and_then(|r| r.task_dir.as_ref().map(|d| d.join("secrets")))
    }

    /// What the task wrote to stderr (last 64 KiB), for debugging tests.
    pub fn task_stderr(&self, alloc_id: &str) -> String {
        self.shared
            .lock()
            .allocs
            .get(alloc_id)
            .map(|r| {
                String::from_utf8_lossy(&r.stderr.lock().unwrap_or_else(|e| e.into_inner()))
                    .into_owned()
            })
            .unwrap_or_default()
    }

    /// Waits until `pred` holds for the allocations of `job_id` (any namespace), polling
    /// state changes; returns them, or `None` after `timeout`.
    pub async fn wait_for_allocs(
        &self,
        job_id: &str,
        timeout: Duration,
        pred: impl Fn(&[Allocation]) -> bool,
    ) -> Option<Vec<Allocation>> {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let allocs: Vec<Allocation> = self
                .shared
                .lock()
                .allocs
                .values()
                .filter(|r| r.alloc.job_id == job_id)
                .map(|r| r.alloc.clone())
                .collect();
            if pred(&allocs) {
                return Some(allocs);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Stops the server and kills every task (also done on drop).
    pub async fn shutdown(self) {
        self.kill_all();
        // Give runners a moment to reap their children.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fn kill_all(&self) {
        let st = self.shared.lock();
        for rec in st.allocs.values() {
            if let Some(pid) = rec.pid {
                runner::signal(pid, true);
            }
            if let Some(ctl) = &rec.control {
                ctl.send_replace(AllocCommand::Kill);
            }
        }
    }
}

/// An Evaluation-topic event (`EvaluationUpdated`, key = eval ID, filter keys = job ID).
pub(crate) fn eval_event(eval: &Evaluation) -> Event {
    Event {
        topic: "Evaluation".into(),
        event_type: "EvaluationUpdated".into(),
        key: eval.id.clone(),
        namespace: eval.namespace.clone(),
        filter_keys: Some(vec![eval.job_id.clone(), String::new()]),
        index: 0,
        payload: serde_json::json!({ "Evaluation": eval }),
    }
}

/// An Allocation-topic event: key = alloc ID, filter keys = [job ID, deployment ID], payload
/// the allocation without its job (nomad/state/events.go).
pub(crate) fn alloc_event(event_type: &str, alloc: &Allocation) -> Event {
    let mut a = alloc.clone();
    a.job = None;
    Event {
        topic: "Allocation".into(),
        event_type: event_type.into(),
        key: a.id.clone(),
        namespace: a.namespace.clone(),
        filter_keys: Some(vec![a.job_id.clone(), String::new()]),
        index: 0,
        payload: serde_json::json!({ "Allocation": a }),
    }
}

/// A Job-topic event (`JobRegistered`, `JobDeregistered`).
pub(crate) fn job_event(event_type: &str, job: &serde_json::Value) -> Event {
    let get = |k: &str| {
        job.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    Event {
        topic: "Job".into(),
        event_type: event_type.into(),
        key: get("ID"),
        namespace: get("Namespace"),
        filter_keys: None,
        index: 0,
        payload: serde_json::json!({ "Job": job }),
    }
}
