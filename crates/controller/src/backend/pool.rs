//! A warm pool of pre-started runtime instances, generic over how an instance is started and
//! what "idle" means, so that the process backend and a Docker backend share one
//! implementation of the subtle parts (DESIGN.md 5, orchestration.md 3.4):
//!
//! - **Claims are synchronous and cheap**: [`WarmPool::claim`] pops an idle instance under a
//!   short mutex; no I/O, no await. The backend then hands the job over itself.
//! - **Dead instances are never handed out**: claim skips (and drops) instances whose
//!   [`WarmInstance::is_alive`] says no, and an instance that dies while idle tells the pool
//!   through its [`DeathNotice`], which removes it and starts a replacement.
//! - **One job per instance**: a claimed instance leaves the pool for good; the pool refills in
//!   the background once the claimer calls [`WarmPool::replenish`] (after its handover, so the
//!   refill's task spawn stays off the claim's critical path), or later still through a
//!   [`Refill`] that the claimed instance's supervisor fires just after its first token: on a small machine the
//!   replacement's start-up (a spawn, an exec, TLS set-up) would otherwise compete for the CPU
//!   with the claimed execution's way to its first token.
//! - **Bounded, non-spinning refills**: at most `max_concurrent_starts` starts are in flight,
//!   and consecutive start failures (a missing binary, a broken image) back off exponentially
//!   up to `backoff_max` instead of spinning.
//! - **Resizable and closable**: [`WarmPool::set_size`] drops surplus idle instances (dropping
//!   an idle instance must make it exit: for processes, closing its stdin), and
//!   [`WarmPool::close`] stops refilling and hands the idle instances back for termination.
//!
//! Refills run as tasks on the tokio runtime the pool was created in.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::time::Instant;

use super::{BackendError, PoolStatus};

/// An idle, ready instance held by the pool. Dropping it must make the instance go away
/// (the backend's own bookkeeping reaps it).
pub trait WarmInstance: Send + 'static {
    /// Whether the instance can still take a job, as far as can be told without I/O.
    fn is_alive(&self) -> bool;
}

/// Starts instances for a [`WarmPool`].
pub trait WarmStarter: Send + Sync + 'static {
    type Instance: WarmInstance;

    /// Starts one instance and resolves once it is ready for a job. The instance must call
    /// [`DeathNotice::notify`] if it dies while idle, so the pool can drop and replace it.
    ///
    /// Called with the pool's lock held: do all the work in the returned future, and never
    /// call back into the pool synchronously.
    fn start(
        &self,
        notice: DeathNotice,
    ) -> BoxFuture<'static, Result<Self::Instance, BackendError>>;
}

/// Tuning of a [`WarmPool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Target number of idle instances.
    pub size: usize,
    /// How many instances may be starting at once.
    pub max_concurrent_starts: usize,
    /// Wait after the first failed start; doubles with each consecutive failure.
    pub backoff_initial: Duration,
    /// Longest wait between failing starts.
    pub backoff_max: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: 0,
            max_concurrent_starts: 4,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Counters beyond [`PoolStatus`], for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolCounters {
    /// Instances that started and became ready.
    pub started: u64,
    /// Starts that failed.
    pub start_failures: u64,
    /// Idle instances found dead (at claim time or by their own notice) and dropped.
    pub died_idle: u64,
    /// Consecutive start failures right now (0 when the last start succeeded).
    pub consecutive_failures: u32,
}

/// Tells the pool that an idle instance died. Holds only a weak reference: an instance never
/// keeps its pool alive.
pub struct DeathNotice {
    id: u64,
    sink: Weak<dyn DeathSink>,
}

impl DeathNotice {
    /// The instance is gone: the pool drops it from the idle list (if it is still there) and
    /// starts a replacement. Harmless after a claim, or after the pool is gone.
    pub fn notify(&self) {
        if let Some(sink) = self.sink.upgrade() {
            sink.instance_died(self.id);
        }
    }

    /// A notice attached to no pool (for instances started outside one).
    pub fn detached() -> DeathNotice {
        let sink: Weak<dyn DeathSink> = Weak::<NoSink>::new();
        DeathNotice { id: 0, sink }
    }
}

impl std::fmt::Debug for DeathNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeathNotice").field("id", &self.id).finish()
    }
}

trait DeathSink: Send + Sync {
    fn instance_died(self: Arc<Self>, id: u64);
    fn replenish(self: Arc<Self>);
}

struct NoSink;

impl DeathSink for NoSink {
    fn instance_died(self: Arc<Self>, _id: u64) {}
    fn replenish(self: Arc<Self>) {}
}

/// A claim's deferred pool refill: starts the replacement when [`Refill::now`] is called (the
/// backend does at the claimed instance's first output, or after a short delay) or, at the
/// latest, when dropped. Holds only a weak reference to the pool.
pub struct Refill {
    sink: Option<Weak<dyn DeathSink>>,
}

impl Refill {
    /// A refill that does nothing (nothing was claimed).
    pub fn none() -> Refill {
        Refill { sink: None }
    }

    /// Whether it still has a refill to start.
    pub fn is_armed(&self) -> bool {
        self.sink.is_some()
    }

    /// Starts the refill now (in the background; returns at once). Later calls do nothing.
    pub fn now(&mut self) {
        if let Some(sink) = self.sink.take().and_then(|w| w.upgrade()) {
            sink.replenish();
        }
    }
}

impl Drop for Refill {
    fn drop(&mut self) {
        self.now();
    }
}

impl std::fmt::Debug for Refill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refill")
            .field("armed", &self.is_armed())
            .finish()
    }
}

/// The pool. Cheap to share behind an `Arc` (all methods take `&self`).
pub struct WarmPool<S: WarmStarter> {
    shared: Arc<Shared<S>>,
}

impl<S: WarmStarter> std::fmt::Debug for WarmPool<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("status", &self.status())
            .finish()
    }
}

struct Shared<S: WarmStarter> {
    starter: S,
    runtime: Handle,
    max_concurrent_starts: usize,
    backoff_initial: Duration,
    backoff_max: Duration,
    state: Mutex<State<S::Instance>>,
}

struct State<I> {
    target: usize,
    idle: VecDeque<(u64, I)>,
    starting: usize,
    hits: u64,
    misses: u64,
    closed: bool,
    next_id: u64,
    counters: PoolCounters,
    /// No start before this instant (backoff after failures).
    retry_at: Option<Instant>,
    /// Backoff exponent: grows by one per failed round of starts, resets on a success.
    backoff_step: u32,
    /// A delayed refill is already scheduled for `retry_at`.
    retry_scheduled: bool,
}

impl<S: WarmStarter> WarmPool<S> {
    /// Creates the pool and starts filling it in the background on `runtime`.
    pub fn new(starter: S, config: PoolConfig, runtime: Handle) -> WarmPool<S> {
        let shared = Arc::new(Shared {
            starter,
            runtime,
            max_concurrent_starts: config.max_concurrent_starts.max(1),
            backoff_initial: config.backoff_initial,
            backoff_max: config.backoff_max.max(config.backoff_initial),
            state: Mutex::new(State {
                target: config.size,
                idle: VecDeque::new(),
                starting: 0,
                hits: 0,
                misses: 0,
                closed: false,
                next_id: 1,
                counters: PoolCounters::default(),
                retry_at: None,
                backoff_step: 0,
                retry_scheduled: false,
            }),
        });
        Shared::refill(&shared);
        WarmPool { shared }
    }

    /// Takes one live idle instance out of the pool, or `None` when there is none (the caller
    /// then starts cold and calls [`WarmPool::record_miss`]). Instances found dead on the way
    /// are dropped. Never blocks and does no I/O: a mutex and a pop.
    ///
    /// It does not start the replacement: the caller calls [`WarmPool::replenish`] once it has
    /// handed the job over, because starting a replacement spawns a task (and may wake a
    /// worker thread), which costs tens of microseconds that the claimed job should not wait
    /// for.
    ///
    /// The pool does not count the claim as a hit by itself: the backend calls
    /// [`WarmPool::record_hit`] once the job was actually handed over, and
    /// [`WarmPool::record_dead_on_claim`] when the handover showed the instance was dead.
    pub fn claim(&self) -> Option<S::Instance> {
        let mut dead = Vec::new();
        let found = {
            let mut st = self.shared.lock();
            let mut found = None;
            while let Some((_, inst)) = st.idle.pop_front() {
                if inst.is_alive() {
                    found = Some(inst);
                    break;
                }
                st.counters.died_idle += 1;
                dead.push(inst);
            }
            found
        };
        // A dead instance taken out here is one its own death notice will no longer find in
        // `idle` (the notice may still be on its way): replace it now, or the pool would stay
        // short of its target for good.
        let replace = !dead.is_empty();
        // Dropped outside the lock: dropping an instance may do a little work.
        drop(dead);
        if replace {
            Shared::refill(&self.shared);
        }
        found
    }

    /// Starts replacements for claimed or dead instances (in the background; returns at once).
    pub fn replenish(&self) {
        Shared::refill(&self.shared);
    }

    /// A [`Refill`] that starts replacements when fired or dropped.
    pub fn deferred_replenish(&self) -> Refill {
        let weak: Weak<Shared<S>> = Arc::downgrade(&self.shared);
        let sink: Weak<dyn DeathSink> = weak;
        Refill { sink: Some(sink) }
    }

    /// A claim was served by a warm instance.
    pub fn record_hit(&self) {
        self.shared.lock().hits += 1;
    }

    /// A launch found no idle instance and started cold.
    pub fn record_miss(&self) {
        self.shared.lock().misses += 1;
    }

    /// A claimed instance turned out dead during the handover (it died after the liveness
    /// check); the backend tries the next one.
    pub fn record_dead_on_claim(&self) {
        self.shared.lock().counters.died_idle += 1;
    }

    /// Size, idle, starting, hits and misses.
    pub fn status(&self) -> PoolStatus {
        let st = self.shared.lock();
        PoolStatus {
            size: st.target,
            idle: st.idle.len(),
            starting: st.starting,
            hits: st.hits,
            misses: st.misses,
        }
    }

    /// Start, failure and death counters.
    pub fn counters(&self) -> PoolCounters {
        self.shared.lock().counters.clone()
    }

    /// Calls `f` on every idle instance (for diagnostics; keep `f` short, the pool is locked).
    pub fn for_each_idle(&self, mut f: impl FnMut(&S::Instance)) {
        let st = self.shared.lock();
        for (_, inst) in &st.idle {
            f(inst);
        }
    }

    /// Sets the target number of idle instances. Growing starts instances in the background;
    /// shrinking drops the newest surplus idle instances now (instances still starting are
    /// dropped when they become ready, if still surplus). Fails once the pool is closed.
    pub fn set_size(&self, size: usize) -> Result<(), BackendError> {
        let surplus: Vec<S::Instance> = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(BackendError::ShuttingDown);
            }
            st.target = size;
            // A resize is an operator's "try again now": forget any backoff.
            st.retry_at = None;
            let keep = st.idle.len().min(size);
            st.idle.drain(keep..).map(|(_, i)| i).collect()
        };
        drop(surplus);
        Shared::refill(&self.shared);
        Ok(())
    }

    /// Stops refilling for good and returns the idle instances, for the caller to terminate.
    /// Instances still starting are dropped as soon as they are ready.
    pub fn close(&self) -> Vec<S::Instance> {
        let mut st = self.shared.lock();
        st.closed = true;
        st.target = 0;
        st.idle.drain(..).map(|(_, i)| i).collect()
    }

    /// Whether [`WarmPool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

impl<S: WarmStarter> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, State<S::Instance>> {
        // Nothing panics while holding this lock; if something did, the state is still
        // consistent enough to keep serving (counters at worst).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn backoff(&self, step: u32) -> Duration {
        let exp = step.saturating_sub(1).min(16);
        self.backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max)
    }

    /// Starts as many instances as the target needs, within the concurrency bound and the
    /// backoff. Cheap when there is nothing to do; called after every change.
    fn refill(this: &Arc<Self>) {
        let mut st = this.lock();
        if st.closed {
            return;
        }
        if let Some(at) = st.retry_at {
            if Instant::now() < at {
                if !st.retry_scheduled && st.idle.len() + st.starting < st.target {
                    st.retry_scheduled = true;
                    let weak = Arc::downgrade(this);
                    this.runtime.spawn(async move {
                        tokio::time::sleep_until(at).await;
                        if let Some(shared) = weak.upgrade() {
                            shared.lock().retry_scheduled = false;
                            Shared::refill(&shared);
                        }
                    });
                }
                return;
            }
            st.retry_at = None;
        }
        while st.idle.len() + st.starting < st.target && st.starting < this.max_concurrent_starts {
            st.starting += 1;
            let id = st.next_id;
            st.next_id += 1;
            let weak: Weak<Self> = Arc::downgrade(this);
            let sink: Weak<dyn DeathSink> = weak;
            let start = this.starter.start(DeathNotice { id, sink });
            let shared = Arc::clone(this);
            this.runtime.spawn(async move {
                let result = start.await;
                Shared::start_finished(&shared, id, result);
            });
        }
    }

    fn start_finished(this: &Arc<Self>, id: u64, result: Result<S::Instance, BackendError>) {
        let mut failure_log = None;
        let surplus = {
            let mut st = this.lock();
            st.starting = st.starting.saturating_sub(1);
            match result {
                Ok(inst) => {
                    st.counters.started += 1;
                    st.counters.consecutive_failures = 0;
                    st.backoff_step = 0;
                    if st.closed || st.idle.len() >= st.target || !inst.is_alive() {
                        Some(inst)
                    } else {
                        st.idle.push_back((id, inst));
                        None
                    }
                }
                Err(e) => {
                    st.counters.start_failures += 1;
                    st.counters.consecutive_failures =
                        st.counters.consecutive_failures.saturating_add(1);
                    // Starts that were in flight together and fail together count as one step
                    // of the backoff: the first failure sets the wait, the others join it.
                    let now = Instant::now();
                    if st.retry_at.is_none_or(|t| t <= now) {
                        st.backoff_step = st.backoff_step.saturating_add(1);
                        let wait = this.backoff(st.backoff_step);
                        st.retry_at = Some(now + wait);
                        if !st.closed {
                            failure_log = Some((e, st.counters.consecutive_failures, wait));
                        }
                    }
                    None
                }
            }
        };
        drop(surplus);
        if let Some((error, failures, wait)) = failure_log {
            tracing::warn!(
                %error,
                failures,
                retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "warm pool: starting an instance failed"
            );
        }
        Shared::refill(this);
    }
}

impl<S: WarmStarter> DeathSink for Shared<S> {
    fn replenish(self: Arc<Self>) {
        Shared::refill(&self);
    }

    fn instance_died(self: Arc<Self>, id: u64) {
        let removed = {
            let mut st = self.lock();
            let pos = st.idle.iter().position(|(i, _)| *i == id);
            let removed = pos.and_then(|p| st.idle.remove(p));
            if removed.is_some() {
                st.counters.died_idle += 1;
            }
            removed
        };
        if removed.is_some() {
            drop(removed);
            Shared::refill(&self);
        }
    }
}

/// Starts a launch's pool replacements once: when [`Replenish::now`] is called after the
/// handover, or at the latest when dropped (so a launch future dropped halfway still refills
/// the pool). Set `due` once an idle instance was taken.
pub struct Replenish<'a, S: WarmStarter> {
    pub pool: &'a WarmPool<S>,
    pub due: bool,
}

impl<S: WarmStarter> Replenish<'_, S> {
    pub fn now(&mut self) {
        if std::mem::take(&mut self.due) {
            self.pool.replenish();
        }
    }

    /// Hands the due refill over to a [`Refill`] (disarmed when none is due).
    pub fn defer(&mut self) -> Refill {
        if std::mem::take(&mut self.due) {
            self.pool.deferred_replenish()
        } else {
            Refill::none()
        }
    }
}

impl<S: WarmStarter> Drop for Replenish<'_, S> {
    fn drop(&mut self) {
        self.now();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    struct Fake {
        alive: Arc<AtomicBool>,
    }

    impl WarmInstance for Fake {
        fn is_alive(&self) -> bool {
            self.alive.load(Ordering::SeqCst)
        }
    }

    type Handles = Arc<Mutex<Vec<(Arc<AtomicBool>, DeathNotice)>>>;

    #[derive(Default)]
    struct Starter {
        fail: Arc<AtomicBool>,
        attempts: Arc<AtomicU64>,
        handles: Handles,
    }

    impl WarmStarter for Starter {
        type Instance = Fake;
        fn start(&self, notice: DeathNotice) -> BoxFuture<'static, Result<Fake, BackendError>> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            let fail = self.fail.load(Ordering::SeqCst);
            let handles = Arc::clone(&self.handles);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if fail {
                    return Err(BackendError::Launch("nope".into()));
                }
                let alive = Arc::new(AtomicBool::new(true));
                handles.lock().unwrap().push((Arc::clone(&alive), notice));
                Ok(Fake { alive })
            })
        }
    }

    async fn until(pool: &WarmPool<Starter>, f: impl Fn(&PoolStatus) -> bool) -> PoolStatus {
        for _ in 0..400 {
            let s = pool.status();
            if f(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("pool never reached the state: {:?}", pool.status());
    }

    fn pool(size: usize, starter: Starter) -> WarmPool<Starter> {
        let config = PoolConfig {
            size,
            ..PoolConfig::default()
        };
        WarmPool::new(starter, config, Handle::current())
    }

    #[tokio::test]
    async fn fills_claims_and_refills() {
        let p = pool(3, Starter::default());
        until(&p, |s| s.idle == 3).await;
        assert!(p.claim().is_some());
        assert!(p.claim().is_some());
        assert_eq!(p.status().idle, 1);
        p.replenish();
        until(&p, |s| s.idle == 3).await;
        assert_eq!(p.counters().started, 5);
    }

    #[tokio::test]
    async fn a_deferred_refill_starts_only_when_fired_or_dropped() {
        let p = pool(2, Starter::default());
        until(&p, |s| s.idle == 2).await;
        let mut first = Replenish {
            pool: &p,
            due: false,
        };
        assert!(p.claim().is_some());
        first.due = true;
        let mut refill = first.defer();
        assert!(refill.is_armed());
        drop(first);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let s = p.status();
        assert_eq!(
            (s.idle, s.starting),
            (1, 0),
            "nothing starts before the refill fires"
        );
        refill.now();
        assert!(!refill.is_armed());
        until(&p, |s| s.idle == 2).await;
        // Dropped unfired (the claimed instance never produced output): it refills too.
        assert!(p.claim().is_some());
        drop(p.deferred_replenish());
        until(&p, |s| s.idle == 2).await;
        assert_eq!(p.counters().started, 4);
        // Nothing due: nothing to start, and a pool that is gone is no error.
        let mut none = Replenish {
            pool: &p,
            due: false,
        }
        .defer();
        assert!(!none.is_armed());
        none.now();
        let orphan = p.deferred_replenish();
        drop(p);
        drop(orphan);
    }

    #[tokio::test]
    async fn dead_instances_are_skipped_and_replaced() {
        let starter = Starter::default();
        let handles = Arc::clone(&starter.handles);
        let p = pool(2, starter);
        until(&p, |s| s.idle == 2).await;
        // One dies silently (no notice yet): a claim skips it.
        handles.lock().unwrap()[0].0.store(false, Ordering::SeqCst);
        let got = p.claim().unwrap();
        assert!(got.is_alive());
        p.replenish();
        until(&p, |s| s.idle == 2).await;
        // An idle one dies and says so: it leaves the idle list and is replaced. (0 died, 1 was
        // claimed, 2 and 3 replaced them.)
        let (alive, notice) = handles.lock().unwrap().remove(2);
        alive.store(false, Ordering::SeqCst);
        notice.notify();
        until(&p, |s| s.idle == 2).await;
        assert_eq!(p.counters().died_idle, 2);
        p.for_each_idle(|i| assert!(i.is_alive()));
    }

    #[tokio::test]
    async fn resize_and_close() {
        let p = pool(4, Starter::default());
        until(&p, |s| s.idle == 4).await;
        p.set_size(1).unwrap();
        assert_eq!(p.status().idle, 1);
        p.set_size(3).unwrap();
        until(&p, |s| s.idle == 3).await;
        assert_eq!(p.close().len(), 3);
        assert!(p.set_size(2).is_err());
        assert!(p.claim().is_none());
    }

    #[tokio::test]
    async fn failing_starts_back_off() {
        let starter = Starter::default();
        starter.fail.store(true, Ordering::SeqCst);
        let attempts = Arc::clone(&starter.attempts);
        let fail = Arc::clone(&starter.fail);
        let p = pool(2, starter);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // 100, 200, 400 ms… : a handful of attempts per second, not thousands.
        let n = attempts.load(Ordering::SeqCst);
        assert!((2..=12).contains(&n), "{n} attempts");
        fail.store(false, Ordering::SeqCst);
        // A resize retries at once.
        p.set_size(2).unwrap();
        until(&p, |s| s.idle == 2).await;
        assert_eq!(p.counters().consecutive_failures, 0);
    }
}
