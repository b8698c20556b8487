//! The controller's core, independent of HTTP: validates and admits jobs, keeps the executions
//! (live and recently finished) in a bounded registry, records every outcome, and runs the
//! phased shutdown. The HTTP layer ([`crate::api`]) is a thin translation on top, and tests
//! drive this type directly with a fake backend.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use polydev_protocol::{ErrorEvent, ErrorKind, Event, Job};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, BackendError, PoolStatus};
use crate::config::ControllerConfig;
use crate::execution::{Appended, CancelReason, Execution, unix_ms};
use crate::feed::Feed;
use crate::metrics::{Gauges, Metrics, RejectReason};
use crate::policy;
use crate::scheduler::{Rejection, Scheduler};
use crate::store::{Record, Store};

/// How long new submissions are refused after the backend reported itself unavailable
/// (fail fast instead of queueing work that cannot start).
const BACKEND_DOWN_HOLD: Duration = Duration::from_secs(5);
/// Bound on `Backend::shutdown`.
const BACKEND_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The job is invalid; the message is for the caller.
    #[error("{0}")]
    Invalid(String),
    #[error("the controller is at capacity")]
    AtCapacity,
    #[error("too many active executions for this user")]
    UserLimit,
    #[error("the controller is shutting down")]
    ShuttingDown,
    #[error("the backend cannot start runtimes right now")]
    Unavailable,
}

/// Where an execution was found.
#[derive(Debug)]
pub enum Lookup {
    /// In memory, with its events.
    Live(Arc<Execution>),
    /// Only its record is left.
    Stored(Box<Record>),
    Missing,
}

/// The controller; cheap to clone.
#[derive(Clone)]
pub struct Controller {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("backend", &self.shared.backend.name())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) config: ControllerConfig,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) store: Store,
    pub(crate) metrics: Metrics,
    pub(crate) feed: Feed,
    registry: Mutex<Registry>,
    tracker: TaskTracker,
    stop_background: CancellationToken,
    shutting_down: AtomicBool,
    /// SIGTERM with a backend that detaches: journaled executions are left running.
    detaching: AtomicBool,
    streams: AtomicUsize,
    backend_down_until: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Registry {
    map: HashMap<String, Arc<Execution>>,
    /// Finished executions, oldest first: (ended, id, log bytes).
    finished: VecDeque<(Instant, String, u64)>,
    finished_bytes: u64,
}

/// Holds one of the `max_streams` stream slots; dropping it frees the slot.
pub struct StreamGuard {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamGuard")
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.shared.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Controller {
    /// A controller over `backend`, recording into `store`. Call from within a Tokio runtime
    /// (it starts the retention task).
    pub fn new(config: ControllerConfig, backend: Arc<dyn Backend>, store: Store) -> Controller {
        // The backend's runtime API waits this long for a broken report to resume.
        if let Some(api) = backend.runtime_api() {
            api.registry.set_reattach_grace(config.reattach_grace);
        }
        let scheduler = Scheduler::new(
            config.max_concurrency,
            config.queue_size,
            config.max_per_user,
        );
        let shared = Arc::new(Shared {
            config,
            backend,
            scheduler,
            store,
            metrics: Metrics::default(),
            feed: Feed::new(),
            registry: Mutex::new(Registry::default()),
            tracker: TaskTracker::new(),
            stop_background: CancellationToken::new(),
            shutting_down: AtomicBool::new(false),
            detaching: AtomicBool::new(false),
            streams: AtomicUsize::new(0),
            backend_down_until: Mutex::new(None),
        });
        spawn_reaper(&shared);
        spawn_sampler(&shared);
        Controller { shared }
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.shared.config
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.shared.backend
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }

    /// Admits one job (its `execution_id` must be unset: the controller assigns it).
    pub fn submit(&self, job: Job) -> Result<Arc<Execution>, SubmitError> {
        let mut v = self.submit_many(vec![job])?;
        v.pop().ok_or(SubmitError::AtCapacity)
    }

    /// Admits several jobs of one user, all or none (perspectives).
    pub fn submit_many(&self, mut jobs: Vec<Job>) -> Result<Vec<Arc<Execution>>, SubmitError> {
        let sh = &self.shared;
        if self.is_shutting_down() {
            sh.metrics.rejected(RejectReason::ShuttingDown);
            return Err(SubmitError::ShuttingDown);
        }
        for job in &mut jobs {
            prepare(job, &sh.config)?;
        }
        let user = match jobs.first().and_then(|j| j.user_id.clone()) {
            Some(u) => u,
            None => return Err(SubmitError::Invalid("no job".into())),
        };
        if jobs
            .iter()
            .any(|j| j.user_id.as_deref() != Some(user.as_str()))
        {
            return Err(SubmitError::Invalid(
                "all jobs must have the same user_id".into(),
            ));
        }
        if self.backend_down() {
            sh.metrics.rejected(RejectReason::Unavailable);
            return Err(SubmitError::Unavailable);
        }
        let admissions = sh.scheduler.admit_many(&user, jobs.len()).map_err(|r| {
            let (reason, err) = match r {
                Rejection::Full => (RejectReason::AtCapacity, SubmitError::AtCapacity),
                Rejection::UserLimit => (RejectReason::UserLimit, SubmitError::UserLimit),
                Rejection::Closed => (RejectReason::ShuttingDown, SubmitError::ShuttingDown),
            };
            sh.metrics.rejected(reason);
            err
        })?;
        sh.metrics.accepted(jobs.len());
        let mut out = Vec::with_capacity(jobs.len());
        for (mut job, admission) in jobs.into_iter().zip(admissions) {
            let id = new_execution_id();
            job.execution_id = Some(id.clone());
            let exec = Arc::new(Execution::new(
                id.clone(),
                user.clone(),
                job.provider,
                job.model.clone().unwrap_or_default(),
                sh.config.max_event_log_bytes,
            ));
            exec.append(&exec.start_event());
            lock(&sh.registry).map.insert(id.clone(), Arc::clone(&exec));
            sh.recorded(&exec);
            let provider = job.provider;
            let driver =
                crate::driver::drive(Arc::clone(&self.shared), Arc::clone(&exec), job, admission);
            sh.tracker.spawn(driver);
            // Client-supplied strings are logged escaped (`?`), whatever validation let
            // through: a log line is never something a client can forge. Logged after the
            // driver is spawned: a worker that steals it need not wait for this write.
            tracing::info!(
                execution_id = %id,
                user_id = ?user,
                provider = %provider,
                model = ?exec.model,
                "execution accepted"
            );
            out.push(exec);
        }
        Ok(out)
    }

    /// The live execution `id`, if still in memory.
    /// Takes back the executions a previous run left `running` with their runtimes still
    /// reporting to this controller (DESIGN.md 5.2; [`crate::store::Store::open_adopting`]):
    /// each is live again, status `running`, its log rebuilt from what its runtime resends,
    /// and ends `interrupted` if the runtime does not come back within
    /// [`ControllerConfig::reattach_grace`]. Returns how many were adopted.
    ///
    /// Before any adoption starts, the backend is told which instances are taken back
    /// ([`crate::backend::Backend::sweep_leftovers`]) and removes the others a previous run
    /// left (an execution whose provider is unreadable is not taken back).
    pub fn adopt(&self, found: Vec<crate::store::Adoptable>) -> usize {
        let sh = &self.shared;
        let (found, refused): (Vec<_>, Vec<_>) = found.into_iter().partition(|a| {
            a.record
                .provider
                .parse::<polydev_protocol::Provider>()
                .is_ok()
        });
        let adopting: Vec<_> = found.iter().map(|a| a.instance.clone()).collect();
        sh.backend.sweep_leftovers(&adopting);
        // Settled by each adoption driver once the backend's `adopt` has returned.
        if let Some(api) = sh.backend.runtime_api() {
            api.registry.begin_adoptions(found.len());
        }
        let mut adopted = 0;
        for a in refused.into_iter().chain(found) {
            let Ok(provider) = a.record.provider.parse::<polydev_protocol::Provider>() else {
                tracing::warn!(execution_id = %a.record.id, "cannot adopt: unknown provider");
                let mut r = a.record;
                r.status = "failed".into();
                r.error_kind = Some("interrupted".into());
                r.ended_at_ms = Some(unix_ms(SystemTime::now()));
                sh.store.put(r);
                sh.store.forget_instance(&a.instance.execution_id);
                continue;
            };
            let exec = Arc::new(Execution::adopted(
                &a.record,
                provider,
                sh.config.max_event_log_bytes,
                a.last_seq.unwrap_or(0),
            ));
            lock(&sh.registry)
                .map
                .insert(exec.id.clone(), Arc::clone(&exec));
            let permit = sh.scheduler.adopt(&exec.user_id);
            tracing::info!(
                execution_id = %exec.id,
                instance = %a.instance.instance_id,
                "adopting a running execution; waiting for its runtime"
            );
            let driver =
                crate::driver::adopt(Arc::clone(sh), Arc::clone(&exec), a.instance, permit);
            sh.tracker.spawn(driver);
            adopted += 1;
        }
        adopted
    }

    pub fn get(&self, id: &str) -> Option<Arc<Execution>> {
        lock(&self.shared.registry).map.get(id).cloned()
    }

    /// Finds `id` in memory or, failing that, in the store.
    pub async fn lookup(&self, id: &str) -> Result<Lookup, crate::store::StoreError> {
        if let Some(e) = self.get(id) {
            return Ok(Lookup::Live(e));
        }
        Ok(match self.shared.store.get(id).await? {
            Some(r) => Lookup::Stored(Box::new(r)),
            None => Lookup::Missing,
        })
    }

    /// Requests cancellation of `id`; idempotent. `None` when it is not in memory.
    pub fn cancel(&self, id: &str) -> Option<Arc<Execution>> {
        let exec = self.get(id)?;
        if exec.request_cancel(CancelReason::Client) {
            tracing::info!(execution_id = %id, "cancel requested");
        }
        Some(exec)
    }

    /// Takes one stream slot, or `None` when `max_streams` are open.
    pub fn stream_guard(&self) -> Option<StreamGuard> {
        let max = self.shared.config.max_streams;
        self.shared
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamGuard {
                shared: Arc::clone(&self.shared),
            })
    }

    pub fn pool_status(&self) -> PoolStatus {
        self.shared.backend.pool_status()
    }

    pub fn set_pool_size(&self, size: usize) -> Result<(), BackendError> {
        self.shared.backend.set_pool_size(size)
    }

    pub fn load(&self) -> crate::scheduler::Load {
        self.shared.scheduler.load()
    }

    /// Executions in memory (live and retained).
    pub fn retained(&self) -> usize {
        lock(&self.shared.registry).map.len()
    }

    /// Executions ended so far (every outcome).
    pub fn ended_total(&self) -> u64 {
        self.shared.metrics.ended_total()
    }

    pub fn metrics_text(&self) -> String {
        let sh = &self.shared;
        sh.metrics.render(&Gauges {
            load: sh.scheduler.load(),
            pool: sh.backend.pool_status(),
            streams: sh.streams.load(Ordering::Relaxed),
            retained: self.retained(),
            backend: sh.backend.name(),
        })
    }

    /// The live feed (`GET /v1/events`).
    pub fn feed(&self) -> &Feed {
        &self.shared.feed
    }

    /// Resolves once the controller has stopped its background work (end of shutdown): the
    /// live feed's streams end then.
    pub async fn stopped(&self) {
        self.shared.stop_background.cancelled().await;
    }

    /// The live feed's starting point: pool and load, the `limit` most recent executions
    /// (those in memory, then the store's), and the statistics timeline.
    pub async fn feed_snapshot(&self, limit: usize) -> serde_json::Value {
        let sh = &self.shared;
        let mut records: Vec<Record> = lock(&sh.registry)
            .map
            .values()
            .map(|e| e.record())
            .collect();
        match sh.store.recent(limit).await {
            Ok(stored) => {
                let live: std::collections::HashSet<String> =
                    records.iter().map(|r| r.id.clone()).collect();
                records.extend(stored.into_iter().filter(|r| !live.contains(&r.id)));
            }
            Err(e) => tracing::warn!(error = %e, "the live feed cannot read recent records"),
        }
        records.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
        records.truncate(limit);
        serde_json::json!({
            "pool": crate::feed::pool_view(&sh.backend.pool_status(), &sh.scheduler.load()),
            "executions": records.iter().map(crate::feed::summary).collect::<Vec<_>>(),
            "stats": sh.feed.stats(),
        })
    }

    /// Waits until every record written so far is committed to the store.
    pub async fn flush(&self) {
        self.shared.store.flush().await;
    }

    /// Waits until every admitted execution has ended and its driver is done (tests).
    pub async fn wait_idle(&self) {
        loop {
            let active = lock(&self.shared.registry)
                .map
                .values()
                .any(|e| !e.is_ended());
            let load = self.shared.scheduler.load();
            if !active && load.running == 0 && load.queued == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Phased shutdown: stop admitting; let running executions finish within the grace; cancel
    /// the rest (they end `interrupted`); end anything still open so that every client stream
    /// receives its terminal event; stop the backend; flush the store.
    pub async fn shutdown(&self) {
        let sh = &self.shared;
        if sh.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        if sh.backend.detaches() {
            self.detach().await;
            return;
        }
        let active = self.active().len();
        tracing::info!(
            active,
            grace_ms = sh.config.shutdown_grace.as_millis() as u64,
            "shutting down: no longer admitting"
        );
        // Queued executions end at once: their drivers see the closed queue.
        sh.scheduler.close();
        sh.tracker.close();
        if tokio::time::timeout(sh.config.shutdown_grace, sh.tracker.wait())
            .await
            .is_err()
        {
            let rest = self.active();
            tracing::info!(
                count = rest.len(),
                "grace over: cancelling running executions"
            );
            for e in &rest {
                e.request_cancel(CancelReason::Shutdown);
            }
            // Each driver ends its execution within `cancel_wait` even if the runtime hangs.
            let bound = sh.config.cancel_wait + Duration::from_secs(1);
            if tokio::time::timeout(bound, sh.tracker.wait())
                .await
                .is_err()
            {
                for e in self.active() {
                    let err = ErrorEvent {
                        partial: e.output_started(),
                        ..ErrorEvent::new(
                            ErrorKind::Interrupted,
                            "the controller shut down before the execution finished",
                        )
                    };
                    sh.end(&e, Event::Error(err));
                }
            }
        }
        sh.stop_background.cancel();
        if tokio::time::timeout(BACKEND_SHUTDOWN_TIMEOUT, sh.backend.shutdown())
            .await
            .is_err()
        {
            tracing::error!("the backend did not shut down in time");
        }
        sh.store.flush().await;
        tracing::info!("controller stopped");
    }

    /// Shutdown with a backend whose runtimes outlive the controller (DESIGN.md 5.2): stop
    /// admitting, leave every journaled execution running (row `running`, instance record
    /// kept, runtime untouched) for the next controller to adopt, close its client streams
    /// with no further event, and stop. Executions not handed to a runtime yet end as usual.
    async fn detach(&self) {
        let sh = &self.shared;
        let active = self.active();
        tracing::info!(
            active = active.len(),
            "shutting down: no longer admitting; detaching from running executions"
        );
        sh.detaching.store(true, Ordering::SeqCst);
        // Runtimes reporting now are told to come back (503), not to stop (410).
        if let Some(api) = sh.backend.runtime_api() {
            api.registry.detach();
        }
        sh.scheduler.close();
        sh.tracker.close();
        // The backend lets go of its instances first (no signal, no cancel), so that the
        // drivers, whose instance outputs then close, record nothing.
        if tokio::time::timeout(BACKEND_SHUTDOWN_TIMEOUT, sh.backend.detach())
            .await
            .is_err()
        {
            tracing::error!("the backend did not detach in time");
        }
        let mut detached = 0;
        for e in self.active() {
            if sh.detached(&e) {
                // Where its clients may have read to: a terminal event the next controller logs
                // before its rebuilt log gets there is numbered above it.
                e.detach_streams();
                sh.store.note_detached(&e.id, e.last_seq());
                detached += 1;
            }
        }
        // Drivers of executions that were not handed out yet end them (queued ones at once).
        let bound = sh.config.cancel_wait + Duration::from_secs(1);
        if tokio::time::timeout(bound, sh.tracker.wait())
            .await
            .is_err()
        {
            for e in self.active() {
                if !sh.detached(&e) {
                    e.request_cancel(CancelReason::Shutdown);
                }
            }
        }
        sh.stop_background.cancel();
        sh.store.flush().await;
        tracing::info!(
            detached,
            "controller stopped; runtimes left running for the next one"
        );
    }

    fn active(&self) -> Vec<Arc<Execution>> {
        lock(&self.shared.registry)
            .map
            .values()
            .filter(|e| !e.is_ended())
            .cloned()
            .collect()
    }

    fn backend_down(&self) -> bool {
        let mut g = lock(&self.shared.backend_down_until);
        match *g {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *g = None;
                false
            }
            None => false,
        }
    }
}

impl Shared {
    /// Logs `event` as the execution's terminal event if it has none yet, and records the
    /// outcome. The one place an execution ends.
    pub(crate) fn end(&self, exec: &Arc<Execution>, event: Event) {
        // Detached: it keeps running and the next controller records how it ends.
        if self.detached(exec) {
            return;
        }
        if exec.append(&event) == Appended::Terminal {
            self.ended(exec);
        }
    }

    /// Writes the execution's record to the store and tells the live feed: after every change
    /// of status (admitted, running, launched, ended).
    pub(crate) fn recorded(&self, exec: &Execution) {
        let record = exec.record();
        self.feed.execution(&record);
        self.store.put(record);
    }

    /// Bookkeeping once an execution has logged its terminal event.
    /// Whether the controller detached from `exec` (shutting down with a backend whose runtimes
    /// outlive it, and `exec`'s instance is journaled).
    pub(crate) fn detached(&self, exec: &Execution) -> bool {
        self.detaching.load(Ordering::SeqCst) && exec.journaled.load(Ordering::SeqCst)
    }

    /// Journals the instance running `exec`, if its backend lets it outlive the controller.
    pub(crate) fn journal(&self, exec: &Execution) {
        if let Some(record) = self.backend.instance_record(&exec.id) {
            exec.journaled.store(true, Ordering::SeqCst);
            self.store.put_instance(record);
        }
    }

    pub(crate) fn ended(&self, exec: &Arc<Execution>) {
        self.recorded(exec);
        if exec.journaled.swap(false, Ordering::SeqCst) {
            self.store.forget_instance(&exec.id);
            // Its runtime, if it reports again, is told to stop.
            if let Some(api) = self.backend.runtime_api() {
                api.registry.end_execution(&exec.id);
            }
        }
        let outcome = exec.outcome().unwrap_or("internal");
        let ttft = exec.ttft();
        let duration = exec.duration();
        self.metrics
            .ended(exec.provider.as_str(), outcome, ttft, duration);
        self.feed.ended(
            outcome,
            ttft,
            unix_ms(SystemTime::now()),
            self.scheduler.load().limit,
        );
        tracing::info!(
            execution_id = %exec.id,
            outcome,
            status = exec.status().as_str(),
            ttft_ms = ttft.map(|d| d.as_millis() as u64),
            duration_ms = duration.map(|d| d.as_millis() as u64),
            "execution ended"
        );
        let mut r = lock(&self.registry);
        let bytes = exec.log_bytes();
        r.finished
            .push_back((Instant::now(), exec.id.clone(), bytes));
        r.finished_bytes += bytes;
        while r.finished.len() > self.config.max_retained
            || r.finished_bytes > self.config.retained_bytes
        {
            if !evict_oldest(&mut r) {
                break;
            }
        }
    }

    pub(crate) fn backend_unavailable(&self) {
        *lock(&self.backend_down_until) = Some(Instant::now() + BACKEND_DOWN_HOLD);
    }

    pub(crate) fn backend_available(&self) {
        *lock(&self.backend_down_until) = None;
    }
}

fn evict_oldest(r: &mut Registry) -> bool {
    match r.finished.pop_front() {
        Some((_, id, bytes)) => {
            r.map.remove(&id);
            r.finished_bytes = r.finished_bytes.saturating_sub(bytes);
            true
        }
        None => false,
    }
}

/// Drops finished executions older than the retention period, periodically.
fn spawn_reaper(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let stop = shared.stop_background.clone();
    let retention = shared.config.event_retention;
    let period = (retention / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let Some(shared) = weak.upgrade() else { return };
            let now = Instant::now();
            let mut r = lock(&shared.registry);
            while r
                .finished
                .front()
                .is_some_and(|(ended, _, _)| now.duration_since(*ended) >= retention)
            {
                evict_oldest(&mut r);
            }
        }
    });
}

/// Samples the pool and the load for the live feed ([`crate::feed`]), periodically.
fn spawn_sampler(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let stop = shared.stop_background.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::feed::SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let Some(shared) = weak.upgrade() else { return };
            shared.feed.sample(
                shared.backend.pool_status(),
                shared.scheduler.load(),
                unix_ms(SystemTime::now()),
            );
        }
    });
}

/// Validates a submitted job and fills in what the controller decides.
fn prepare(job: &mut Job, config: &ControllerConfig) -> Result<(), SubmitError> {
    if job.execution_id.is_some() {
        return Err(SubmitError::Invalid(
            "execution_id is assigned by the controller: leave it out".into(),
        ));
    }
    policy::check_user_id(job.user_id.as_deref()).map_err(SubmitError::Invalid)?;
    // The job's own checks (model id, key format, …) run here too, so a job the runtime would
    // refuse is a 400 now rather than a slot, a launch and a `config` event later.
    job.validate()
        .map_err(|e| SubmitError::Invalid(e.to_string()))?;
    if let Some(url) = &job.base_url {
        policy::base_url_allowed(url, &config.allowed_base_urls).map_err(SubmitError::Invalid)?;
    }
    if job.model.is_none() {
        job.model = Some(polydev_providers::default_model(job.provider).to_owned());
    }
    Ok(())
}

/// `ex_` + creation time (ms, hex) + 64 random bits: unique across restarts, sortable by time,
/// not guessable.
pub fn new_execution_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let ms = unix_ms(SystemTime::now());
    // RandomState is seeded from the OS's random source; SipHash of a counter under its keys
    // is unpredictable without them.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.write_u64(ms);
    format!("ex_{ms:011x}{:016x}", h.finish())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent; a panic elsewhere does not poison it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| new_execution_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert!(id.starts_with("ex_"));
            assert_eq!(id.len(), 3 + 11 + 16);
            assert!(id[3..].chars().all(|c| c.is_ascii_hexdigit()));
        }
    }
}
