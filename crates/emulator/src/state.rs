//! State shared by every connection: counters, the request log, the `times` counters, the
//! barrier and the record file.
//!
//! Everything here is bounded: the request log is a ring buffer, recorded bodies are capped,
//! and the per-model `times` table is cleared when it grows past a limit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::Scenario;

/// Largest request body kept verbatim in the request log (bigger ones keep only their size).
const MAX_RECORDED_BODY: usize = 256 * 1024;
/// Most distinct model names tracked for `times{N}` before the table is cleared.
const MAX_TIMES_ENTRIES: usize = 10_000;

/// Counters, as served by `GET /emulator/status` and [`crate::Emulator::status`].
///
/// `open_streams` is a gauge (streams whose response body is still alive); all other fields
/// count since start or the last `POST /emulator/reset` (`peak_open_streams` restarts from the
/// current `open_streams`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// Streaming response bodies currently alive.
    pub open_streams: u64,
    /// Highest value `open_streams` reached.
    pub peak_open_streams: u64,
    /// Provider requests received (control endpoints under `/emulator/` excluded).
    pub total_requests: u64,
    /// Streaming responses started.
    pub total_streams: u64,
    /// Streams whose body the emulator ended (including `trunc` and `mid` endings).
    pub completed_streams: u64,
    /// Streams the emulator aborted on purpose (`drop` knob).
    pub aborted_streams: u64,
    /// Streams the client closed before the emulator ended them.
    pub client_disconnects: u64,
    /// Response body bytes handed to the connections.
    pub bytes_sent: u64,
}

/// One received request, as kept in the log and written to the record file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Sequence number since start (not reset).
    pub seq: u64,
    /// Arrival time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The same arrival time in microseconds since the Unix epoch (wall clock, for
    /// start-to-first-upstream-byte measurements; `time_ms == time_us / 1000`).
    #[serde(default)]
    pub time_us: u64,
    /// HTTP method.
    pub method: String,
    /// Request path (without the query).
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Request headers (lower-case names; repeated headers joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// The body parsed as JSON; `null` when empty, not JSON, or larger than 256 KiB.
    pub body: serde_json::Value,
    /// The body as text when it was not JSON (capped like `body`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
    /// Size of the body in bytes (as received, or as announced when it was refused).
    pub body_bytes: u64,
    /// `openai`, `anthropic` or `google` when the path belongs to one of them.
    pub provider: Option<String>,
    /// The model named by the request (body `model`, or the Gemini path), if any.
    pub model: Option<String>,
}

impl RecordedRequest {
    /// Fill `body` / `body_text` from raw bytes, honouring the size cap.
    pub(crate) fn set_body(&mut self, bytes: &[u8]) {
        self.body_bytes = bytes.len() as u64;
        if bytes.is_empty() || bytes.len() > MAX_RECORDED_BODY {
            return;
        }
        match serde_json::from_slice(bytes) {
            Ok(value) => self.body = value,
            Err(_) => self.body_text = Some(String::from_utf8_lossy(bytes).into_owned()),
        }
    }
}

/// Holds the first bytes of every stream until `target` streams are open.
pub(crate) struct Barrier {
    target: u64,
    released: watch::Sender<bool>,
}

impl Barrier {
    fn new(target: u64) -> Barrier {
        Barrier {
            target,
            released: watch::Sender::new(target == 0),
        }
    }

    fn on_open(&self, open: u64) {
        if open >= self.target {
            self.released.send_replace(true);
        }
    }

    pub(crate) async fn wait(&self) {
        let mut rx = self.released.subscribe();
        // The sender lives in `Shared`, which outlives every stream.
        let _ = rx.wait_for(|released| *released).await;
    }

    fn rearm(&self, open: u64) {
        self.released
            .send_replace(self.target == 0 || open >= self.target);
    }
}

#[derive(Default)]
struct Counters {
    open_streams: AtomicU64,
    peak_open_streams: AtomicU64,
    total_requests: AtomicU64,
    total_streams: AtomicU64,
    completed_streams: AtomicU64,
    aborted_streams: AtomicU64,
    client_disconnects: AtomicU64,
    bytes_sent: AtomicU64,
}

/// Settings the serving code needs (a subset of [`crate::EmulatorConfig`]).
pub(crate) struct Settings {
    pub defaults: Scenario,
    pub max_body_bytes: usize,
    pub log_capacity: usize,
}

pub(crate) struct Shared {
    pub settings: Settings,
    counters: Counters,
    seq: AtomicU64,
    log: Mutex<VecDeque<RecordedRequest>>,
    record: Option<Mutex<File>>,
    times: Mutex<HashMap<String, u32>>,
    barrier: Option<Barrier>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data inconsistent (each
    // critical section is a single push, insert or clear), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(settings: Settings, record: Option<File>, barrier: Option<u64>) -> Shared {
        Shared {
            settings,
            counters: Counters::default(),
            seq: AtomicU64::new(0),
            log: Mutex::new(VecDeque::new()),
            record: record.map(Mutex::new),
            times: Mutex::new(HashMap::new()),
            barrier: barrier.map(Barrier::new),
        }
    }

    pub(crate) fn snapshot(&self) -> StatusSnapshot {
        let c = &self.counters;
        StatusSnapshot {
            open_streams: c.open_streams.load(Ordering::Relaxed),
            peak_open_streams: c.peak_open_streams.load(Ordering::Relaxed),
            total_requests: c.total_requests.load(Ordering::Relaxed),
            total_streams: c.total_streams.load(Ordering::Relaxed),
            completed_streams: c.completed_streams.load(Ordering::Relaxed),
            aborted_streams: c.aborted_streams.load(Ordering::Relaxed),
            client_disconnects: c.client_disconnects.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
        }
    }

    /// Zero the counters, the request log and the `times` table; re-arm the barrier.
    pub(crate) fn reset(&self) {
        let c = &self.counters;
        for counter in [
            &c.total_requests,
            &c.total_streams,
            &c.completed_streams,
            &c.aborted_streams,
            &c.client_disconnects,
            &c.bytes_sent,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        let open = c.open_streams.load(Ordering::Relaxed);
        c.peak_open_streams.store(open, Ordering::Relaxed);
        lock(&self.log).clear();
        lock(&self.times).clear();
        if let Some(barrier) = &self.barrier {
            barrier.rearm(open);
        }
    }

    pub(crate) fn count_request(&self) {
        self.counters.total_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes(&self, n: usize) {
        self.counters
            .bytes_sent
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn record(&self, request: RecordedRequest) {
        if let Some(file) = &self.record {
            match serde_json::to_vec(&request) {
                Ok(mut line) => {
                    line.push(b'\n');
                    // One write per line on an O_APPEND file keeps lines whole.
                    if let Err(e) = lock(file).write_all(&line) {
                        eprintln!("polydev-emulator: cannot append to the record file: {e}");
                    }
                }
                Err(e) => eprintln!("polydev-emulator: cannot serialise a request: {e}"),
            }
        }
        if self.settings.log_capacity == 0 {
            return;
        }
        let mut log = lock(&self.log);
        while log.len() >= self.settings.log_capacity {
            log.pop_front();
        }
        log.push_back(request);
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.log).iter().cloned().collect()
    }

    /// Count one request for `model` and say whether its faults still apply (`times{N}`).
    pub(crate) fn faults_apply(&self, model: &str, times: Option<u32>) -> bool {
        let Some(limit) = times else {
            return true;
        };
        let mut table = lock(&self.times);
        if table.len() >= MAX_TIMES_ENTRIES && !table.contains_key(model) {
            table.clear();
        }
        let seen = table.entry(model.to_owned()).or_insert(0);
        let applies = *seen < limit;
        *seen = seen.saturating_add(1);
        applies
    }

    pub(crate) fn barrier(&self) -> Option<&Barrier> {
        self.barrier.as_ref()
    }

    /// Register a new stream; the returned guard keeps it counted as open.
    pub(crate) fn open_stream(self: &Arc<Self>) -> StreamGuard {
        let c = &self.counters;
        c.total_streams.fetch_add(1, Ordering::Relaxed);
        let open = c.open_streams.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak_open_streams.fetch_max(open, Ordering::Relaxed);
        if let Some(barrier) = &self.barrier {
            barrier.on_open(open);
        }
        StreamGuard {
            shared: Arc::clone(self),
            outcome: None,
        }
    }
}

/// How a stream ended, from the emulator's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Aborted,
}

/// Counts one open stream; on drop, closes it and, if the emulator never ended it, counts a
/// client disconnect.
pub(crate) struct StreamGuard {
    shared: Arc<Shared>,
    outcome: Option<Outcome>,
}

impl StreamGuard {
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
            let c = &self.shared.counters;
            match outcome {
                Outcome::Completed => c.completed_streams.fetch_add(1, Ordering::Relaxed),
                Outcome::Aborted => c.aborted_streams.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    pub(crate) fn sent(&self, n: usize) {
        self.shared.add_bytes(n);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let c = &self.shared.counters;
        c.open_streams.fetch_sub(1, Ordering::Relaxed);
        if self.outcome.is_none() {
            c.client_disconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
}
