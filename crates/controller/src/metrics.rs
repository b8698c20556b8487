//! Prometheus metrics, rendered by hand in the text exposition format (`GET /metrics`).
//!
//! Labels are only ever from closed sets (provider, outcome = `succeeded` or an error kind,
//! rejection reason), never a user id, model name or message, so cardinality is fixed and no
//! user data or secret can reach a metric.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::backend::PoolStatus;
use crate::scheduler::Load;

/// Seconds; from sub-millisecond (warm claims) to minutes (long answers).
pub(crate) const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const DURATION_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b)
            && let Some(c) = self.counts.get(i)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Why a submission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectReason {
    AtCapacity,
    UserLimit,
    ShuttingDown,
    Unavailable,
}

impl RejectReason {
    fn as_str(self) -> &'static str {
        match self {
            RejectReason::AtCapacity => "at_capacity",
            RejectReason::UserLimit => "user_limit",
            RejectReason::ShuttingDown => "shutting_down",
            RejectReason::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    accepted: AtomicU64,
    outcomes: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    rejected: Mutex<BTreeMap<RejectReason, u64>>,
    launches_warm: AtomicU64,
    launches_cold: AtomicU64,
    launch_failures: AtomicU64,
    garbage_lines: AtomicU64,
    synthesized_terminals: AtomicU64,
    ttft: Histogram,
    duration: Histogram,
    queue_wait: Histogram,
    claim: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            accepted: AtomicU64::new(0),
            outcomes: Mutex::new(BTreeMap::new()),
            rejected: Mutex::new(BTreeMap::new()),
            launches_warm: AtomicU64::new(0),
            launches_cold: AtomicU64::new(0),
            launch_failures: AtomicU64::new(0),
            garbage_lines: AtomicU64::new(0),
            synthesized_terminals: AtomicU64::new(0),
            ttft: Histogram::new(&LATENCY_BUCKETS),
            duration: Histogram::new(&DURATION_BUCKETS),
            queue_wait: Histogram::new(&LATENCY_BUCKETS),
            claim: Histogram::new(&LATENCY_BUCKETS),
        }
    }
}

/// Gauges read at render time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub load: Load,
    pub pool: PoolStatus,
    pub streams: usize,
    pub retained: usize,
    pub backend: &'static str,
}

impl Metrics {
    pub fn accepted(&self, n: usize) {
        self.accepted.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: RejectReason) {
        let mut m = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(reason).or_insert(0) += 1;
    }

    /// An execution ended with `outcome` (`succeeded` or an error kind).
    pub fn ended(
        &self,
        provider: &'static str,
        outcome: &'static str,
        ttft: Option<Duration>,
        duration: Option<Duration>,
    ) {
        {
            let mut m = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
            *m.entry((provider, outcome)).or_insert(0) += 1;
        }
        if let Some(t) = ttft {
            self.ttft.observe(t);
        }
        if let Some(d) = duration {
            self.duration.observe(d);
        }
    }

    pub fn launched(&self, warm: bool, claim: Duration, queue_wait: Duration) {
        if warm {
            self.launches_warm.fetch_add(1, Ordering::Relaxed);
        } else {
            self.launches_cold.fetch_add(1, Ordering::Relaxed);
        }
        self.claim.observe(claim);
        self.queue_wait.observe(queue_wait);
    }

    pub fn launch_failed(&self) {
        self.launch_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn garbage_line(&self) {
        self.garbage_lines.fetch_add(1, Ordering::Relaxed);
    }

    pub fn synthesized_terminal(&self) {
        self.synthesized_terminals.fetch_add(1, Ordering::Relaxed);
    }

    /// Total ended executions (all outcomes).
    pub fn ended_total(&self) -> u64 {
        let m = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        m.values().sum()
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        };
        counter(
            &mut out,
            "polydev_executions_accepted_total",
            "Executions admitted.",
            self.accepted.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP polydev_executions_total Executions ended, by provider and outcome (succeeded or the error kind)."
        );
        let _ = writeln!(out, "# TYPE polydev_executions_total counter");
        {
            let m = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
            for ((provider, outcome), v) in m.iter() {
                let _ = writeln!(
                    out,
                    "polydev_executions_total{{provider=\"{provider}\",outcome=\"{outcome}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP polydev_executions_rejected_total Submissions refused, by reason."
        );
        let _ = writeln!(out, "# TYPE polydev_executions_rejected_total counter");
        {
            let m = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
            for (reason, v) in m.iter() {
                let _ = writeln!(
                    out,
                    "polydev_executions_rejected_total{{reason=\"{}\"}} {v}",
                    reason.as_str()
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP polydev_launches_total Runtime launches, by warm (pool) or cold start."
        );
        let _ = writeln!(out, "# TYPE polydev_launches_total counter");
        let _ = writeln!(
            out,
            "polydev_launches_total{{start=\"warm\"}} {}",
            self.launches_warm.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "polydev_launches_total{{start=\"cold\"}} {}",
            self.launches_cold.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "polydev_launch_failures_total",
            "Launches the backend could not perform.",
            self.launch_failures.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "polydev_runtime_garbage_lines_total",
            "Runtime output lines that were not events (ignored).",
            self.garbage_lines.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "polydev_synthesized_terminal_events_total",
            "Executions the controller had to end itself (runtime died, deadline, cancel timeout).",
            self.synthesized_terminals.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "polydev_running",
            "Executions holding a slot.",
            g.load.running as u64,
        );
        gauge(
            &mut out,
            "polydev_queue_depth",
            "Executions waiting for a slot.",
            g.load.queued as u64,
        );
        gauge(
            &mut out,
            "polydev_max_concurrency",
            "The concurrency limit.",
            g.load.limit as u64,
        );
        gauge(
            &mut out,
            "polydev_open_streams",
            "Open SSE responses.",
            g.streams as u64,
        );
        gauge(
            &mut out,
            "polydev_retained_executions",
            "Executions whose events are held in memory.",
            g.retained as u64,
        );
        gauge(
            &mut out,
            "polydev_pool_target",
            "Warm pool target size.",
            g.pool.size as u64,
        );
        gauge(
            &mut out,
            "polydev_pool_idle",
            "Warm runtimes ready and waiting.",
            g.pool.idle as u64,
        );
        gauge(
            &mut out,
            "polydev_pool_starting",
            "Warm runtimes starting up.",
            g.pool.starting as u64,
        );
        counter(
            &mut out,
            "polydev_pool_claims_total",
            "Launches served by a warm runtime (pool hits).",
            g.pool.hits,
        );
        counter(
            &mut out,
            "polydev_pool_misses_total",
            "Launches that found no idle warm runtime.",
            g.pool.misses,
        );
        let _ = writeln!(out, "# HELP polydev_backend_info The backend in use.");
        let _ = writeln!(out, "# TYPE polydev_backend_info gauge");
        let _ = writeln!(out, "polydev_backend_info{{backend=\"{}\"}} 1", g.backend);
        self.claim.render(
            &mut out,
            "polydev_claim_latency_seconds",
            "Backend time from launch to the job handed to a runtime.",
        );
        self.queue_wait.render(
            &mut out,
            "polydev_queue_wait_seconds",
            "Time from admission to a slot.",
        );
        self.ttft.render(
            &mut out,
            "polydev_ttft_seconds",
            "Time from admission to the first answer or reasoning token.",
        );
        self.duration.render(
            &mut out,
            "polydev_execution_duration_seconds",
            "Time from admission to the terminal event.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.accepted(2);
        m.ended(
            "openai",
            "succeeded",
            Some(Duration::from_millis(3)),
            Some(Duration::from_secs(2)),
        );
        m.ended(
            "google",
            "rate_limited",
            None,
            Some(Duration::from_millis(50)),
        );
        m.rejected(RejectReason::AtCapacity);
        m.launched(true, Duration::from_micros(200), Duration::ZERO);
        let text = m.render(&Gauges::default());
        assert!(
            text.contains("polydev_executions_total{provider=\"openai\",outcome=\"succeeded\"} 1")
        );
        assert!(text.contains("polydev_executions_rejected_total{reason=\"at_capacity\"} 1"));
        assert!(text.contains("polydev_ttft_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("polydev_ttft_seconds_count 1"));
        assert!(text.contains("polydev_claim_latency_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("polydev_execution_duration_seconds_count 2"));
        assert_eq!(m.ended_total(), 2);
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "{line}");
        }
    }
}
