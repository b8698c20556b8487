//! The controller-wide live feed behind `GET /v1/events` and the web console: what is running,
//! what just ended, the warm pool, and a short timeline for charts. It exists so that an
//! operator watches the service without polling and without reading any user's data.
//!
//! - **What it carries**: execution summaries (who, provider, model, status, timings, token
//!   counts, error kind), pool and load figures, and per-interval statistics. Never a prompt,
//!   an answer, an error message or a credential: a summary is built from the same
//!   [`Record`] the store keeps, which holds none of those.
//! - **Slow subscribers cost nothing**: events go through one bounded
//!   [`tokio::sync::broadcast`] ring. Publishing never waits; a subscriber that falls more
//!   than [`FEED_CAPACITY`] events behind is told it lagged and gets a fresh snapshot instead
//!   (see `api::events_feed`). Memory is the ring, whatever the subscribers do.
//! - **Pool changes are sampled** every [`SAMPLE_EVERY`] by one task (each backend keeps its
//!   pool its own way; one sampler covers them all) and published only when they changed.
//! - **The timeline** keeps [`TIMELINE_BUCKETS`] closed buckets of [`BUCKET`] each: executions
//!   ended by outcome, time-to-first-token percentiles (from a per-bucket histogram), and the
//!   most executions running and queued against the limit.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::backend::PoolStatus;
use crate::metrics::LATENCY_BUCKETS;
use crate::scheduler::Load;
use crate::store::Record;

/// Events held for subscribers; one that falls further behind gets a new snapshot.
pub const FEED_CAPACITY: usize = 1024;
/// How often the pool and the load are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Width of one timeline bucket.
pub const BUCKET: Duration = Duration::from_secs(5);
/// Closed buckets kept (10 minutes).
pub const TIMELINE_BUCKETS: usize = 120;

/// One feed event: its SSE `event:` name and its JSON, rendered once for every subscriber.
#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub kind: &'static str,
    pub data: Arc<str>,
}

/// The feed; one per controller.
#[derive(Debug)]
pub struct Feed {
    tx: broadcast::Sender<FeedEvent>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Last pool and load published (to publish changes only).
    last_pool: Option<(PoolStatus, usize, usize, usize)>,
    current: Option<Bucket>,
    closed: VecDeque<Bucket>,
}

#[derive(Debug, Clone, PartialEq)]
struct Bucket {
    start_ms: u64,
    outcomes: BTreeMap<&'static str, u64>,
    /// Counts per [`LATENCY_BUCKETS`] bound, plus one overflow slot.
    ttft: [u64; LATENCY_BUCKETS.len() + 1],
    running_max: usize,
    queued_max: usize,
    limit: usize,
}

impl Bucket {
    fn new(start_ms: u64, limit: usize) -> Bucket {
        Bucket {
            start_ms,
            outcomes: BTreeMap::new(),
            ttft: [0; LATENCY_BUCKETS.len() + 1],
            running_max: 0,
            queued_max: 0,
            limit,
        }
    }

    fn view(&self) -> Value {
        let n: u64 = self.ttft.iter().sum();
        let ttft = (n > 0).then(|| {
            json!({
                "p50": quantile_ms(&self.ttft, 0.5),
                "p90": quantile_ms(&self.ttft, 0.9),
                "p99": quantile_ms(&self.ttft, 0.99),
            })
        });
        json!({
            "start_ms": self.start_ms,
            "end_ms": self.start_ms + BUCKET.as_millis() as u64,
            "outcomes": self.outcomes,
            "ttft_count": n,
            "ttft_ms": ttft,
            "running_max": self.running_max,
            "queued_max": self.queued_max,
            "limit": self.limit,
        })
    }
}

/// The `q` quantile of a latency histogram, in milliseconds, interpolated linearly within its
/// bucket (as Prometheus' `histogram_quantile`); the overflow bucket reports the last bound.
fn quantile_ms(counts: &[u64], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && (below + c) as f64 >= rank {
            let Some(&upper) = LATENCY_BUCKETS.get(i) else {
                break;
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let within = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
            return ((lower + (upper - lower) * within) * 1e6).round() / 1e3;
        }
        below += c;
    }
    LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 1e3
}

/// The feed's JSON for one execution: the store's record and nothing more.
pub fn summary(r: &Record) -> Value {
    let usage = r.usage.as_ref();
    json!({
        "id": r.id,
        "user_id": r.user_id,
        "provider": r.provider,
        "model": r.model,
        "status": r.status,
        "warm": r.warm,
        "created_at_ms": r.created_at_ms,
        "started_at_ms": r.started_at_ms,
        "ended_at_ms": r.ended_at_ms,
        "ttft_ms": r.ttft_ms,
        "duration_ms": r.ended_at_ms.map(|e| e.saturating_sub(r.created_at_ms)),
        "input_tokens": usage.map(|u| u.input_tokens),
        "output_tokens": usage.map(|u| u.output_tokens),
        "reasoning_tokens": usage.and_then(|u| u.reasoning_tokens),
        "finish_reason": r.finish_reason,
        "error_kind": r.error_kind,
    })
}

/// The pool and load figures (`pool` events and snapshots).
pub fn pool_view(pool: &PoolStatus, load: &Load) -> Value {
    json!({
        "pool": pool,
        "running": load.running,
        "queued": load.queued,
        "limit": load.limit,
    })
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new()
    }
}

impl Feed {
    pub fn new() -> Feed {
        let (tx, _) = broadcast::channel(FEED_CAPACITY);
        Feed {
            tx,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new subscriber: it sees every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FeedEvent> {
        self.tx.subscribe()
    }

    fn publish(&self, kind: &'static str, data: impl FnOnce() -> Value) {
        // Rendering costs nothing when nobody listens; `send` never waits.
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(FeedEvent {
                kind,
                data: data().to_string().into(),
            });
        }
    }

    /// An execution was admitted, started, or ended.
    pub fn execution(&self, r: &Record) {
        self.publish("execution", || summary(r));
    }

    /// An execution ended with `outcome` (`succeeded` or an error kind): counts it in the
    /// timeline.
    pub fn ended(&self, outcome: &'static str, ttft: Option<Duration>, now_ms: u64, limit: usize) {
        let mut st = self.lock();
        let b = current(&mut st, now_ms, limit);
        *b.outcomes.entry(outcome).or_insert(0) += 1;
        if let Some(t) = ttft {
            let secs = t.as_secs_f64();
            let i = LATENCY_BUCKETS
                .iter()
                .position(|b| secs <= *b)
                .unwrap_or(LATENCY_BUCKETS.len());
            if let Some(c) = b.ttft.get_mut(i) {
                *c += 1;
            }
        }
    }

    /// One sample of the pool and the load: publishes `pool` if they changed, and `stats` for
    /// each bucket that closed since the last sample.
    pub fn sample(&self, pool: PoolStatus, load: Load, now_ms: u64) {
        let mut st = self.lock();
        let key = (pool, load.running, load.queued, load.limit);
        if st.last_pool.as_ref() != Some(&key) {
            self.publish("pool", || pool_view(&key.0, &load));
            st.last_pool = Some(key);
        }
        let start = bucket_start(now_ms);
        while let Some(cur) = st.current.take_if(|c| c.start_ms < start) {
            let next = cur.start_ms + BUCKET.as_millis() as u64;
            self.publish("stats", || cur.view());
            st.closed.push_back(cur);
            if st.closed.len() > TIMELINE_BUCKETS {
                st.closed.pop_front();
            }
            // Intervals with no sample at all (a stalled runtime) still get their bucket, up to
            // the timeline's length.
            if next < start && start - next <= TIMELINE_BUCKETS as u64 * BUCKET.as_millis() as u64 {
                st.current = Some(Bucket::new(next, load.limit));
            }
        }
        let b = current(&mut st, now_ms, load.limit);
        b.running_max = b.running_max.max(load.running);
        b.queued_max = b.queued_max.max(load.queued);
        b.limit = load.limit;
    }

    /// The closed buckets, oldest first (`GET /v1/stats`, snapshots).
    pub fn stats(&self) -> Value {
        let st = self.lock();
        json!({
            "bucket_ms": BUCKET.as_millis() as u64,
            "buckets": st.closed.iter().map(Bucket::view).collect::<Vec<_>>(),
        })
    }
}

fn bucket_start(now_ms: u64) -> u64 {
    let w = BUCKET.as_millis() as u64;
    now_ms - now_ms % w
}

fn current(st: &mut State, now_ms: u64, limit: usize) -> &mut Bucket {
    st.current
        .get_or_insert_with(|| Bucket::new(bucket_start(now_ms), limit))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load(running: usize) -> Load {
        Load {
            running,
            queued: 0,
            limit: 8,
            peak_running: running,
        }
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let mut counts = [0u64; LATENCY_BUCKETS.len() + 1];
        // 10 samples in (0.1, 0.25] s.
        let i = LATENCY_BUCKETS.iter().position(|b| *b == 0.25).unwrap();
        counts[i] = 10;
        assert_eq!(quantile_ms(&counts, 0.5), 175.0);
        assert_eq!(quantile_ms(&counts, 1.0), 250.0);
        assert_eq!(quantile_ms(&[0; 4], 0.5), 0.0);
        let mut over = [0u64; LATENCY_BUCKETS.len() + 1];
        over[LATENCY_BUCKETS.len()] = 1;
        assert_eq!(quantile_ms(&over, 0.99), 60_000.0);
    }

    #[test]
    fn publishes_pool_changes_only_and_closes_buckets() {
        let feed = Feed::new();
        let mut rx = feed.subscribe();
        let pool = PoolStatus::default();
        feed.sample(pool.clone(), load(1), 1_000);
        feed.sample(pool.clone(), load(1), 1_250);
        feed.ended("succeeded", Some(Duration::from_millis(30)), 1_300, 8);
        feed.ended("timeout", None, 1_400, 8);
        feed.sample(pool.clone(), load(2), 6_000);
        let kinds: Vec<&str> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["pool", "pool", "stats"]);
        let stats = feed.stats();
        let b = &stats["buckets"][0];
        assert_eq!(b["start_ms"], 0);
        assert_eq!(b["outcomes"]["succeeded"], 1);
        assert_eq!(b["outcomes"]["timeout"], 1);
        assert_eq!(b["ttft_count"], 1);
        assert_eq!(b["running_max"], 1);
    }

    #[test]
    fn the_timeline_is_bounded_and_gaps_get_buckets() {
        let feed = Feed::new();
        feed.sample(PoolStatus::default(), load(0), 0);
        feed.sample(PoolStatus::default(), load(0), 15_000);
        assert_eq!(feed.stats()["buckets"].as_array().unwrap().len(), 3);
        for i in 0..400u64 {
            feed.sample(PoolStatus::default(), load(0), 20_000 + i * 5_000);
        }
        assert_eq!(
            feed.stats()["buckets"].as_array().unwrap().len(),
            TIMELINE_BUCKETS
        );
        // A long gap does not create more than the timeline holds.
        feed.sample(PoolStatus::default(), load(0), 1 << 40);
        assert!(feed.stats()["buckets"].as_array().unwrap().len() <= TIMELINE_BUCKETS);
    }

    #[test]
    fn a_subscriber_that_never_reads_only_lags() {
        let feed = Feed::new();
        let mut rx = feed.subscribe();
        let r = Record {
            id: "ex_1".into(),
            user_id: "u".into(),
            provider: "openai".into(),
            model: "m".into(),
            status: "running".into(),
            created_at_ms: 1,
            started_at_ms: None,
            ended_at_ms: None,
            ttft_ms: None,
            usage: None,
            finish_reason: None,
            error_kind: None,
            warm: None,
        };
        for _ in 0..FEED_CAPACITY * 3 {
            feed.execution(&r);
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        let next = rx.try_recv().unwrap();
        assert_eq!(next.kind, "execution");
        assert!(!next.data.contains("prompt"));
    }
}
