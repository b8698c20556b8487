//! The event report of a pull-mode execution, built to outlive the controller (DESIGN.md 5.2).
//!
//! Why this exists: a pull-mode runtime's only reader is the controller, over one long
//! `POST …/events`. When that request breaks (a network blip, a controller deploy or crash)
//! the provider is usually still streaming, and cancelling would throw the answer away. So the
//! execution never writes to the network: it writes into a bounded in-memory [`ReportLog`]
//! of complete output lines, and a separate [`report`] task delivers that log, reconnecting
//! and resuming with the handshake of [`polydev_protocol::report`] (ask how many lines the
//! controller holds, send the rest with [`EVENT_OFFSET_HEADER`]).
//!
//! The log keeps every line, because a restarted controller holds none and rebuilds its event
//! log from what the runtime resends. Past its bound ([`ReportLog::new`]) the writer fails,
//! which stops the upstream call, and the execution ends with one terminal `protocol` error
//! whose room is reserved ([`RESERVED_FINAL_LINE_BYTES`]), so it always fits.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use polydev_protocol::report::{EVENT_OFFSET_HEADER, ReportPosition};
use polydev_protocol::{ErrorEvent, ErrorKind, Event};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::execute::Cancel;
use crate::pull::{PullConfig, PullError};
use crate::transport::Transport;

/// Bytes kept back from ordinary lines for the terminal error line of a full log.
pub const RESERVED_FINAL_LINE_BYTES: usize = 1024;
/// Smallest accepted `REPORT_BUFFER_BYTES`: room for `start`, some output and the reserve.
pub const MIN_REPORT_BUFFER_BYTES: usize = 4 * 1024;
/// What each kept line costs besides its bytes (its end offset in the index).
const INDEX_COST: usize = std::mem::size_of::<usize>();
/// Largest body frame; a longer single line still goes out whole.
const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Exit code of a pull-mode runtime that could not reach the controller within
/// `CONTROLLER_RECONNECT_WINDOW` (sysexits' `EX_UNAVAILABLE`). Not an error `kind`: no event
/// can say it, since nobody is listening.
pub const EXIT_CONTROLLER_UNREACHABLE: i32 = 69;

/// Reconnect backoff after a failed contact: 100 ms doubling to 5 s.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The handshake request, connect included.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the controller gets to acknowledge a report whose body has ended.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// After SIGTERM/SIGINT, how long delivering the `cancelled` line may still take (the
/// runtime must exit well inside an orchestrator's kill timeout).
const SIGNAL_DELIVERY_GRACE: Duration = Duration::from_secs(2);
/// A report whose connection takes no line for this long while lines wait is stuck (a
/// controller host gone silent, no reset): it is dropped and resumed.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest handshake or refusal body we read.
const MAX_ANSWER_BYTES: usize = 4096;
/// Immediate re-handshakes after a `409` before the backoff applies (a controller that
/// keeps refusing must not make us spin).
const FREE_CONFLICTS: u32 = 2;

/// Why a line was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogError {
    /// The bound is reached: the execution must stop.
    Full,
    /// The log was closed (its terminal line is in).
    Closed,
}

/// Every complete output line of one execution, in order, within a byte bound. Shared by the
/// execution's writer and the reporter; neither ever waits for the other.
pub struct ReportLog {
    capacity: usize,
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    /// The lines' bytes, back to back, newline included.
    data: Vec<u8>,
    /// End offset in `data` of each line.
    ends: Vec<usize>,
    /// A line written without its newline yet.
    partial: Vec<u8>,
    closed: bool,
    full: bool,
    output_started: bool,
    /// Bodies waiting for lines, by reader id.
    wakers: Vec<(u64, Waker)>,
    next_reader: u64,
}

impl LogState {
    fn used(&self) -> usize {
        self.data.len() + self.ends.len() * INDEX_COST + self.partial.len()
    }

    fn wake(&mut self) {
        for (_, w) in self.wakers.drain(..) {
            w.wake();
        }
    }

    /// Appends one complete line (newline included) and indexes it, growing the buffers no
    /// further than `capacity` bytes in all.
    fn push_line(&mut self, line: &[u8], capacity: usize) {
        let start = self.data.len();
        let need = start + self.partial.len() + line.len();
        if need > self.data.capacity() {
            let target = (self.data.capacity() * 2).max(need).min(capacity.max(need));
            self.data.reserve_exact(target - start);
        }
        self.data.append(&mut self.partial);
        self.data.extend_from_slice(line);
        if self.ends.len() == self.ends.capacity() {
            let max = (capacity / INDEX_COST).max(self.ends.len() + 1);
            let target = (self.ends.capacity() * 2).clamp(16, max);
            self.ends
                .reserve_exact(target.max(self.ends.len() + 1) - self.ends.len());
        }
        self.ends.push(self.data.len());
        if !self.output_started && is_output_line(&self.data[start..]) {
            self.output_started = true;
        }
    }
}

/// Whether a line is model output (`text`, `reasoning`, `tool_call`, `refusal`), for the
/// `partial` flag of the terminal error of a full log.
fn is_output_line(line: &[u8]) -> bool {
    [
        &b"{\"type\":\"text\""[..],
        b"{\"type\":\"reasoning\"",
        b"{\"type\":\"tool_call\"",
        b"{\"type\":\"refusal\"",
    ]
    .iter()
    .any(|p| line.starts_with(p))
}

impl ReportLog {
    /// A log holding at most `capacity` bytes (lines plus their index), of which
    /// [`RESERVED_FINAL_LINE_BYTES`] are kept for the terminal line of a full log.
    pub fn new(capacity: usize) -> Arc<ReportLog> {
        Arc::new(ReportLog {
            capacity: capacity.max(MIN_REPORT_BUFFER_BYTES),
            state: Mutex::new(LogState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than losing the report; keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer the execution's output goes to.
    pub fn writer(self: &Arc<Self>) -> LogWriter {
        LogWriter {
            log: Arc::clone(self),
        }
    }

    /// Appends bytes; every complete line is kept in order. On [`LogError::Full`] the lines
    /// before the one that did not fit are kept, the rest is dropped, and the log takes
    /// nothing more but its terminal line ([`ReportLog::close`]).
    pub fn append(&self, mut bytes: &[u8]) -> Result<(), LogError> {
        let mut st = self.lock();
        if st.closed {
            return Err(LogError::Closed);
        }
        if st.full {
            return Err(LogError::Full);
        }
        let limit = self.capacity - RESERVED_FINAL_LINE_BYTES;
        let mut result = Ok(());
        while !bytes.is_empty() {
            let (piece, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..=i], &bytes[i + 1..], true),
                None => (bytes, &bytes[..0], false),
            };
            if st.used() + piece.len() + INDEX_COST > limit {
                st.full = true;
                st.partial.clear();
                result = Err(LogError::Full);
                break;
            }
            if complete {
                st.push_line(piece, self.capacity);
            } else {
                st.partial.extend_from_slice(piece);
            }
            bytes = rest;
        }
        st.wake();
        result
    }

    /// Ends the log: an unfinished line is dropped and `last` (one line, newline included,
    /// for example the terminal error of a full log) is appended, using the reserved room.
    pub fn close(&self, last: Option<&[u8]>) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        st.partial.clear();
        if let Some(line) = last
            && st.used() + line.len() + INDEX_COST <= self.capacity
        {
            st.push_line(line, self.capacity);
        }
        st.closed = true;
        st.wake();
    }

    /// Lines kept so far.
    pub fn len(&self) -> usize {
        self.lock().ends.len()
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Whether the bound was reached.
    pub fn is_full(&self) -> bool {
        self.lock().full
    }

    /// The terminal error of a full log, as one line that fits the reserved room.
    pub fn full_error(&self) -> Event {
        let partial = self.lock().output_started;
        Event::Error(ErrorEvent {
            partial,
            ..ErrorEvent::new(
                ErrorKind::Protocol,
                format!(
                    "the output exceeded the runtime's report buffer of {} bytes \
                     (REPORT_BUFFER_BYTES); the upstream call was stopped",
                    self.capacity
                ),
            )
        })
    }

    /// Lines `from..` (whole lines, about [`MAX_FRAME_BYTES`] at most, at least one) and the
    /// index after them; `Ready(None)` once the log is closed and `from` is its end.
    fn poll_lines(
        &self,
        from: usize,
        reader: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(Bytes, usize)>> {
        let mut st = self.lock();
        if from < st.ends.len() {
            let start = if from == 0 { 0 } else { st.ends[from - 1] };
            let mut to = from + 1;
            while to < st.ends.len() && st.ends[to] - start <= MAX_FRAME_BYTES {
                to += 1;
            }
            let end = st.ends[to - 1];
            return Poll::Ready(Some((Bytes::copy_from_slice(&st.data[start..end]), to)));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        match st.wakers.iter_mut().find(|(id, _)| *id == reader) {
            Some((_, w)) => w.clone_from(cx.waker()),
            None => st.wakers.push((reader, cx.waker().clone())),
        }
        Poll::Pending
    }

    fn new_reader(&self) -> u64 {
        let mut st = self.lock();
        st.next_reader += 1;
        st.next_reader
    }

    fn drop_reader(&self, reader: u64) {
        self.lock().wakers.retain(|(id, _)| *id != reader);
    }
}

/// The execution's output: whole lines go into the log at once; nothing waits on the network.
/// A full or closed log is an error, which stops the execution (its upstream call with it).
pub struct LogWriter {
    log: Arc<ReportLog>,
}

impl io::Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.log.append(data) {
            Ok(()) => Ok(data.len()),
            Err(LogError::Full) => Err(io::Error::other("the report buffer is full")),
            Err(LogError::Closed) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the report is closed",
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One report request's body: the log's lines from a position on, following new lines as
/// they are appended, ending after the terminal line.
struct LogBody {
    log: Arc<ReportLog>,
    next: usize,
    /// `next`, for the stall watchdog.
    sent: Arc<AtomicUsize>,
    reader: u64,
    /// Fired when the body has ended (every line is handed to the connection).
    ended: Option<oneshot::Sender<()>>,
}

impl Body for LogBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match this.log.poll_lines(this.next, this.reader, cx) {
            Poll::Ready(Some((bytes, next))) => {
                this.next = next;
                this.sent.store(next, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(None) => {
                if let Some(tx) = this.ended.take() {
                    let _ = tx.send(());
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for LogBody {
    fn drop(&mut self) {
        self.log.drop_reader(self.reader);
    }
}

/// Checks that the job's execution id can go into the report's path.
pub fn check_execution_id(execution_id: &str) -> Result<(), PullError> {
    let usable = !execution_id.is_empty()
        && execution_id.len() <= 128
        && execution_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if usable {
        Ok(())
    } else {
        Err(PullError::BadJob(
            "the job has no usable execution_id".into(),
        ))
    }
}

/// How the report ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportEnd {
    /// The controller acknowledged every line.
    Delivered,
    /// `410`: the controller no longer takes this execution.
    Gone,
    /// No contact within the reconnect window (or the signal grace); the message says why.
    Unreachable(String),
    /// The controller refused the token (401/403), also after a re-read.
    Rejected(u16),
    /// The controller refused the report for good (another 4xx, or it cannot resume).
    Refused(String),
}

/// What the report needs besides the log.
pub struct Reporter {
    pub transport: Transport,
    pub cfg: PullConfig,
    pub execution_id: String,
    pub connect_timeout: Duration,
    /// `CONTROLLER_RECONNECT_WINDOW`.
    pub window: Duration,
    /// SIGTERM/SIGINT: shortens the window to [`SIGNAL_DELIVERY_GRACE`].
    pub signal: Cancel,
    /// Flipped when the report ends without delivery: stops the execution's upstream call.
    pub stop: Arc<watch::Sender<bool>>,
}

/// The answer to the handshake.
enum Handshake {
    Position(u64),
    /// `404`/`405`: a controller from before the resume handshake; it takes one report from
    /// offset 0 and cannot resume.
    Legacy,
}

/// Why one exchange did not go on.
enum Failure {
    /// Worth another try after the backoff.
    Transient(String),
    /// `409`: ask again.
    Conflict,
    Gone,
    Unauthorized(u16),
    Refused(String),
}

impl Reporter {
    /// Delivers `log` to the controller, resuming after every failure, until the controller
    /// has every line or the report cannot go on. Stops the execution when it gives up.
    pub async fn run(self, log: Arc<ReportLog>) -> ReportEnd {
        let end = self.deliver(&log).await;
        if end != ReportEnd::Delivered {
            self.stop.send_replace(true);
        }
        end
    }

    async fn deliver(&self, log: &Arc<ReportLog>) -> ReportEnd {
        let mut failing_since: Option<Instant> = None;
        let mut backoff = BACKOFF_MIN;
        let mut conflicts = 0u32;
        let mut auth_retried = false;
        let mut legacy_posted = false;
        loop {
            // Every attempt is bounded by what is left of the window (once failing) and by
            // the signal grace, so neither a blackholed handshake nor a stuck report can
            // hold the runtime past them.
            let window_end = failing_since.map(|s| s + self.window);
            let mut signal = self.signal.clone();
            let give_up = async {
                let window = async {
                    match window_end {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                let grace = async {
                    if signal.wait_for(|c| *c).await.is_err() {
                        // No signal handler: no signal will come.
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(SIGNAL_DELIVERY_GRACE).await;
                };
                tokio::select! {
                    () = window => format!("CONTROLLER_RECONNECT_WINDOW={} ms", self.window.as_millis()),
                    () = grace => "stopping on a signal".to_owned(),
                }
            };
            let (contact, result) = tokio::select! {
                r = self.attempt(log, &mut legacy_posted) => r,
                setting = give_up => {
                    let since = failing_since.map_or(0, |s| s.elapsed().as_millis());
                    return ReportEnd::Unreachable(format!(
                        "no contact with the controller for {since} ms ({setting})"
                    ));
                }
            };
            if contact {
                failing_since = None;
            }
            let failure = match result {
                Ok(true) => return ReportEnd::Delivered,
                // An acknowledgement before the body ended: the handshake says what it has.
                Ok(false) => Failure::Transient("acknowledged before the report ended".into()),
                Err(f) => f,
            };
            match failure {
                Failure::Gone => return ReportEnd::Gone,
                Failure::Refused(m) => return ReportEnd::Refused(m),
                Failure::Unauthorized(status) => {
                    if auth_retried {
                        return ReportEnd::Rejected(status);
                    }
                    // The token file may have been rotated under us: the next request
                    // re-reads it.
                    auth_retried = true;
                    crate::output::diag(&format!(
                        "the controller refused the token ({status}); re-reading it"
                    ));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Failure::Conflict => {
                    conflicts += 1;
                    if conflicts <= FREE_CONFLICTS {
                        continue;
                    }
                    crate::output::diag(&format!(
                        "the controller refused the report offset {conflicts} times; \
                         asking again in {} ms",
                        backoff.as_millis()
                    ));
                }
                Failure::Transient(why) => {
                    auth_retried = false;
                    conflicts = 0;
                    if contact {
                        // The report was accepted and broke later: a fresh outage.
                        backoff = BACKOFF_MIN;
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let signalled = *self.signal.borrow();
                    let window = if signalled {
                        self.window.min(SIGNAL_DELIVERY_GRACE)
                    } else {
                        self.window
                    };
                    if since.elapsed() >= window {
                        let setting = if signalled {
                            "stopping on a signal".to_owned()
                        } else {
                            format!("CONTROLLER_RECONNECT_WINDOW={} ms", window.as_millis())
                        };
                        return ReportEnd::Unreachable(format!(
                            "no contact with the controller for {} ms ({setting}); \
                             last error: {why}",
                            since.elapsed().as_millis()
                        ));
                    }
                    crate::output::diag(&format!(
                        "reporting events to the controller: {why}; retrying in {} ms",
                        backoff.as_millis()
                    ));
                }
            }
            let mut signal = self.signal.clone();
            let signalled = *signal.borrow();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                // A signal shortens the window: look again at once.
                _ = signal.wait_for(|c| *c), if !signalled => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One handshake and, if it allows, one report. The flag says whether the controller
    /// answered the handshake (a contact, which restarts the reconnect window).
    async fn attempt(
        &self,
        log: &Arc<ReportLog>,
        legacy_posted: &mut bool,
    ) -> (bool, Result<bool, Failure>) {
        let from = match self.handshake().await {
            Err(f) => return (false, Err(f)),
            Ok(Handshake::Position(received)) => {
                let from = usize::try_from(received).unwrap_or(usize::MAX);
                if from > log.len() {
                    // The controller cannot hold lines we never wrote: ask again.
                    return (true, Err(Failure::Conflict));
                }
                if from == log.len() && log.is_closed() {
                    return (true, Ok(true));
                }
                from
            }
            Ok(Handshake::Legacy) if *legacy_posted => {
                return (
                    true,
                    Err(Failure::Refused(
                        "the controller cannot resume a broken report (it has no resume \
                         handshake)"
                            .into(),
                    )),
                );
            }
            Ok(Handshake::Legacy) => {
                *legacy_posted = true;
                0
            }
        };
        (true, self.post(log, from).await)
    }

    fn path(&self) -> String {
        format!("/runtime/v1/executions/{}/events", self.execution_id)
    }

    fn token(&self) -> Result<String, Failure> {
        self.cfg
            .token
            .read()
            .map_err(|e| Failure::Transient(e.to_string()))
    }

    /// `GET …/events`: how many lines the controller holds.
    async fn handshake(&self) -> Result<Handshake, Failure> {
        let token = self.token()?;
        let req = self
            .cfg
            .request(&token, http::Method::GET, &self.path())
            .map_err(|e| Failure::Refused(e.to_string()))?
            .body(Bytes::new())
            .map_err(|e| Failure::Refused(e.to_string()))?;
        let exchange = async {
            let resp = self
                .transport
                .send(req, self.connect_timeout)
                .await
                .map_err(|e| Failure::Transient(e.to_string()))?;
            let status = resp.status();
            let body = resp.into_body().read_all(MAX_ANSWER_BYTES).await;
            Ok::<_, Failure>((status, body))
        };
        let (status, body) = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
            .await
            .map_err(|_| Failure::Transient("the handshake timed out".into()))??;
        match status.as_u16() {
            200 => {
                let body = body.map_err(Failure::Transient)?;
                serde_json::from_slice::<ReportPosition>(&body)
                    .map(|p| Handshake::Position(p.received))
                    .map_err(|e| Failure::Transient(format!("unreadable handshake answer: {e}")))
            }
            404 | 405 => Ok(Handshake::Legacy),
            other => Err(classify(status, other)),
        }
    }

    /// `POST …/events` from line `from` on, following the log until it is closed. `Ok(true)`:
    /// the controller acknowledged the whole report.
    async fn post(&self, log: &Arc<ReportLog>, from: usize) -> Result<bool, Failure> {
        let token = self.token()?;
        let (ended_tx, ended_rx) = oneshot::channel();
        let sent = Arc::new(AtomicUsize::new(from));
        let body = LogBody {
            log: Arc::clone(log),
            next: from,
            sent: Arc::clone(&sent),
            reader: log.new_reader(),
            ended: Some(ended_tx),
        };
        let req = self
            .cfg
            .request(&token, http::Method::POST, &self.path())
            .map_err(|e| Failure::Refused(e.to_string()))?
            .header(http::header::CONTENT_TYPE, "application/x-ndjson")
            .header(EVENT_OFFSET_HEADER, from.to_string())
            .body(body)
            .map_err(|e| Failure::Refused(e.to_string()))?;
        let send = self.transport.send_body(req, self.connect_timeout);
        let ack_deadline = async {
            if ended_rx.await.is_err() {
                // The body was dropped unfinished: the response says why.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(ACK_TIMEOUT).await;
        };
        let stalled = async {
            let mut seen = from;
            let mut since = Instant::now();
            loop {
                tokio::time::sleep(STALL_TIMEOUT / 10).await;
                let now = sent.load(Ordering::Relaxed);
                if now != seen || now >= log.len() {
                    seen = now;
                    since = Instant::now();
                } else if since.elapsed() >= STALL_TIMEOUT {
                    return;
                }
            }
        };
        let answered = tokio::select! {
            r = send => r,
            () = ack_deadline => {
                return Err(Failure::Transient("no acknowledgement from the controller".into()));
            }
            () = stalled => {
                return Err(Failure::Transient(format!(
                    "the controller took no line for {} s",
                    STALL_TIMEOUT.as_secs()
                )));
            }
        };
        let (resp, conn) = answered.map_err(|e| Failure::Transient(e.to_string()))?;
        let status = resp.status();
        drop(conn);
        if status.is_success() {
            return Ok(log.is_closed());
        }
        Err(match status.as_u16() {
            409 => Failure::Conflict,
            other => classify(status, other),
        })
    }
}

/// The failure an unexpected status means.
fn classify(status: http::StatusCode, code: u16) -> Failure {
    match code {
        410 => Failure::Gone,
        401 | 403 => Failure::Unauthorized(code),
        409 => Failure::Conflict,
        408 | 429 => Failure::Transient(format!("HTTP {status}")),
        c if (500..600).contains(&c) => Failure::Transient(format!("HTTP {status}")),
        _ => Failure::Refused(format!("the controller answered HTTP {status}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;
    use std::task::Wake;

    use super::*;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn lines(log: &ReportLog) -> Vec<String> {
        let st = log.lock();
        let mut out = Vec::new();
        let mut start = 0;
        for &end in &st.ends {
            out.push(String::from_utf8_lossy(&st.data[start..end]).into_owned());
            start = end;
        }
        out
    }

    #[test]
    fn complete_lines_are_kept_in_order() {
        let log = ReportLog::new(MIN_REPORT_BUFFER_BYTES);
        let mut w = log.writer();
        w.write_all(b"{\"type\":\"start\"}\n{\"type\":\"te")
            .unwrap();
        assert_eq!(log.len(), 1, "the unfinished line is not a line yet");
        w.write_all(b"xt\",\"text\":\"a\"}\n").unwrap();
        assert_eq!(
            lines(&log),
            [
                "{\"type\":\"start\"}\n",
                "{\"type\":\"text\",\"text\":\"a\"}\n"
            ]
        );
        w.write_all(b"unfinished").unwrap();
        log.close(None);
        assert_eq!(log.len(), 2, "an unfinished line is dropped at close");
        assert!(w.write_all(b"late\n").is_err());
        assert!(log.is_closed() && !log.is_full());
    }

    /// The bound counts line bytes plus the index; the reserve is kept for the final line,
    /// which always fits.
    #[test]
    fn the_bound_stops_the_writer_and_the_final_line_fits() {
        let cap = MIN_REPORT_BUFFER_BYTES;
        let log = ReportLog::new(cap);
        let mut w = log.writer();
        let line = format!("{{\"type\":\"text\",\"text\":\"{}\"}}\n", "x".repeat(74));
        assert_eq!(line.len(), 100);
        let fit = (cap - RESERVED_FINAL_LINE_BYTES) / (100 + INDEX_COST);
        for _ in 0..fit {
            w.write_all(line.as_bytes()).unwrap();
        }
        assert!(!log.is_full());
        let err = w.write_all(line.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        assert!(log.is_full());
        assert!(w.write_all(b"{}\n").is_err(), "nothing more once full");
        assert_eq!(log.len(), fit);
        let final_line = serde_json::to_string(&log.full_error()).unwrap() + "\n";
        assert!(final_line.len() + INDEX_COST <= RESERVED_FINAL_LINE_BYTES);
        assert!(final_line.contains("\"partial\":true"), "{final_line}");
        assert!(final_line.contains("REPORT_BUFFER_BYTES"), "{final_line}");
        log.close(Some(final_line.as_bytes()));
        assert_eq!(log.len(), fit + 1);
        assert_eq!(lines(&log).last().unwrap(), &final_line);
        let st = log.lock();
        assert!(st.used() <= cap, "{} > {cap}", st.used());
        assert!(st.data.capacity() <= cap, "the buffer grew past the bound");
    }

    /// A batch that overflows keeps the lines before the one that did not fit.
    #[test]
    fn an_overflowing_batch_keeps_whole_lines_only() {
        let log = ReportLog::new(MIN_REPORT_BUFFER_BYTES);
        let line = "y".repeat(999) + "\n";
        let batch = line.repeat(5);
        assert!(log.append(batch.as_bytes()).is_err());
        // (4096 - 1024) / (1000 + 8): three whole lines fit.
        assert_eq!(log.len(), 3);
        assert!(lines(&log).iter().all(|l| l == &line));
        assert!(
            !matches!(log.full_error(), Event::Error(e) if e.partial),
            "no output line was kept"
        );
    }

    /// Readers get whole lines from any position, are woken by new lines, and see the end
    /// after the terminal line.
    #[test]
    fn readers_follow_the_log_from_any_position() {
        let log = ReportLog::new(MIN_REPORT_BUFFER_BYTES);
        log.append(b"a\nb\nc\n").unwrap();
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let reader = log.new_reader();
        match log.poll_lines(1, reader, &mut cx) {
            Poll::Ready(Some((bytes, next))) => {
                assert_eq!(&bytes[..], b"b\nc\n");
                assert_eq!(next, 3);
            }
            other => panic!("{other:?}"),
        }
        assert!(log.poll_lines(3, reader, &mut cx).is_pending());
        log.append(b"d\n").unwrap();
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst), "woken");
        assert!(
            matches!(log.poll_lines(3, reader, &mut cx), Poll::Ready(Some((b, 4))) if &b[..] == b"d\n")
        );
        log.close(None);
        assert!(matches!(
            log.poll_lines(4, reader, &mut cx),
            Poll::Ready(None)
        ));
        log.drop_reader(reader);
        assert!(log.lock().wakers.is_empty());
    }

    #[test]
    fn frames_are_bounded_but_hold_at_least_one_line() {
        let log = ReportLog::new(1024 * 1024);
        let big = "z".repeat(MAX_FRAME_BYTES * 2) + "\n";
        log.append(big.as_bytes()).unwrap();
        let small = "s".repeat(1023) + "\n";
        for _ in 0..100 {
            log.append(small.as_bytes()).unwrap();
        }
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let Poll::Ready(Some((b, next))) = log.poll_lines(0, 1, &mut cx) else {
            panic!("no frame")
        };
        assert_eq!((b.len(), next), (big.len(), 1));
        let Poll::Ready(Some((b, next))) = log.poll_lines(1, 1, &mut cx) else {
            panic!("no frame")
        };
        assert_eq!((b.len(), next), (64 * 1024, 65));
    }

    #[test]
    fn execution_ids_are_checked() {
        assert!(check_execution_id("ex_0123abc-d").is_ok());
        assert!(check_execution_id("").is_err());
        assert!(check_execution_id("a/b").is_err());
        assert!(check_execution_id("../x").is_err());
    }
}
