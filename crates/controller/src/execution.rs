//! One execution as the controller sees it: its identity, its status, and its event log.
//!
//! The log is the single source for every client: the POST response stream, `/events` and
//! its `Last-Event-ID` resumes, and the perspectives stream all read the same numbered events
//! (`seq` 1, 2, 3…), so a resume can have no gap and no duplicate. Subscribers hold no buffer
//! of their own: they wait on a version counter and read from the log at their own pace, so a
//! slow client costs nothing but its position. The log is bounded (`max_event_log_bytes`);
//! when an execution would exceed it, the driver stops the execution with an error instead of
//! dropping events, so the log always holds every event from `start` to the terminal one.
//!
//! Exactly one terminal event is ever appended: [`Execution::append`] refuses anything after
//! it, and the status, timings and outcome are fixed at that moment.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use polydev_protocol::{ErrorEvent, Event, FinishReason, Provider, ToolCall, Usage};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::config::{MAX_STATUS_TEXT_BYTES, MAX_STATUS_TOOL_CALL_BYTES, MAX_STATUS_TOOL_CALLS};

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Queued,
            Status::Running,
            Status::Succeeded,
            Status::Failed,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// The status a terminal event leads to.
    pub fn of_terminal(event: &Event) -> Status {
        match event {
            Event::Error(e) if e.kind == polydev_protocol::ErrorKind::Cancelled => {
                Status::Cancelled
            }
            Event::Error(_) => Status::Failed,
            _ => Status::Succeeded,
        }
    }
}

/// Why the controller asked an execution to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// `DELETE /v1/executions/{id}`.
    Client,
    /// The controller is shutting down.
    Shutdown,
}

/// One event as clients receive it: its number, its type, and its JSON (the runtime's event
/// plus `execution_id`), rendered once.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub seq: u64,
    pub kind: &'static str,
    pub data: Arc<str>,
    pub terminal: bool,
}

impl LoggedEvent {
    /// The data with `target` and `seq` added, for the perspectives stream.
    pub fn data_with_target(&self, target: usize) -> String {
        let body = self.data.strip_suffix('}').unwrap_or(&self.data);
        format!("{body},\"target\":{target},\"seq\":{}}}", self.seq)
    }
}

/// Milliseconds since the Unix epoch (for records).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What `append` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// A non-terminal event was logged.
    Event,
    /// The terminal event was logged: the execution has ended.
    Terminal,
    /// The event would exceed the log bound and was not logged.
    Overflow,
    /// The execution had already ended; nothing was logged.
    AfterEnd,
}

#[derive(Debug)]
pub struct Execution {
    pub id: String,
    pub user_id: String,
    pub provider: Provider,
    pub model: String,
    pub created_at_ms: u64,
    pub created: Instant,
    max_log_bytes: u64,
    state: Mutex<State>,
    /// The number of events in the log; subscribers wait on changes.
    version: watch::Sender<u64>,
    cancel: Notify,
}

#[derive(Debug)]
struct State {
    status: Status,
    events: Vec<LoggedEvent>,
    log_bytes: u64,
    text: String,
    text_truncated: bool,
    refusal: String,
    tool_calls: Vec<ToolCall>,
    tool_call_bytes: usize,
    tool_calls_truncated: bool,
    usage: Option<Usage>,
    finish_reason: Option<FinishReason>,
    error: Option<ErrorEvent>,
    output_started: bool,
    started_at_ms: Option<u64>,
    ended_at_ms: Option<u64>,
    started: Option<Instant>,
    first_output: Option<Instant>,
    ended: Option<Instant>,
    warm: Option<bool>,
    cancel_reason: Option<CancelReason>,
}

/// A read-only view of an execution, as `GET /v1/executions/{id}` returns it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExecutionView {
    pub id: String,
    pub user_id: String,
    pub provider: Provider,
    pub model: String,
    pub status: Status,
    /// The accumulated answer (`null` once the events are no longer retained).
    pub text: Option<String>,
    pub text_truncated: bool,
    /// The refusal text, when the provider marked the answer as a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The tool calls the model made, in order (`tool_call` events).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tool_calls_truncated: bool,
    pub usage: Option<Usage>,
    pub finish_reason: Option<FinishReason>,
    pub error: Option<ErrorView>,
    pub warm: Option<bool>,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub queue_ms: Option<u64>,
    pub ttft_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// Number of events logged so far (the last `id:`).
    pub events: Option<u64>,
    pub events_url: String,
}

/// The error of a failed execution.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorView {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// Appends as much of `more` as fits in `limit` bytes (on a character boundary); false if
/// something was cut.
fn push_bounded(buf: &mut String, more: &str, limit: usize) -> bool {
    let room = limit.saturating_sub(buf.len());
    if more.len() <= room {
        buf.push_str(more);
        return true;
    }
    let mut cut = room;
    while !more.is_char_boundary(cut) {
        cut -= 1;
    }
    buf.push_str(&more[..cut]);
    false
}

pub fn events_url(id: &str) -> String {
    format!("/v1/executions/{id}/events")
}

impl Execution {
    pub fn new(
        id: String,
        user_id: String,
        provider: Provider,
        model: String,
        max_log_bytes: u64,
    ) -> Execution {
        let (version, _) = watch::channel(0);
        Execution {
            id,
            user_id,
            provider,
            model,
            created_at_ms: unix_ms(SystemTime::now()),
            created: Instant::now(),
            max_log_bytes,
            state: Mutex::new(State {
                status: Status::Queued,
                events: Vec::new(),
                log_bytes: 0,
                text: String::new(),
                text_truncated: false,
                refusal: String::new(),
                tool_calls: Vec::new(),
                tool_call_bytes: 0,
                tool_calls_truncated: false,
                usage: None,
                finish_reason: None,
                error: None,
                output_started: false,
                started_at_ms: None,
                ended_at_ms: None,
                started: None,
                first_output: None,
                ended: None,
                warm: None,
                cancel_reason: None,
            }),
            version,
            cancel: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Updates under this lock leave the state consistent at every step.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `start` event the controller logs at admission, so that every stream names the
    /// execution from its first event, even one that is cancelled while queued.
    pub fn start_event(&self) -> Event {
        Event::Start {
            execution_id: self.id.clone(),
            user_id: self.user_id.clone(),
            provider: self.provider,
            model: self.model.clone(),
        }
    }

    /// Appends `event` with the next sequence number. A terminal event is always accepted (it
    /// may exceed the bound); a non-terminal one is refused with [`Appended::Overflow`] when it
    /// would exceed it.
    pub fn append(&self, event: &Event) -> Appended {
        let data = match render(event, &self.id) {
            Some(d) => d,
            // Serializing our own event types cannot fail; if it did, log nothing.
            None => return Appended::Overflow,
        };
        let terminal = event.is_terminal();
        let mut s = self.lock();
        if s.status.is_terminal() {
            return Appended::AfterEnd;
        }
        let size = data.len() as u64 + 32;
        if !terminal && s.log_bytes + size > self.max_log_bytes {
            return Appended::Overflow;
        }
        let now = Instant::now();
        match event {
            Event::Text { text } => {
                s.output_started = true;
                s.first_output.get_or_insert(now);
                if !push_bounded(&mut s.text, text, MAX_STATUS_TEXT_BYTES) {
                    s.text_truncated = true;
                }
            }
            Event::Reasoning { .. } => {
                s.output_started = true;
                s.first_output.get_or_insert(now);
            }
            Event::Refusal { text } => {
                s.output_started = true;
                s.first_output.get_or_insert(now);
                if !push_bounded(&mut s.refusal, text, MAX_STATUS_TEXT_BYTES) {
                    s.text_truncated = true;
                }
            }
            Event::ToolCall(call) => {
                s.output_started = true;
                s.first_output.get_or_insert(now);
                let size = call.id.len() + call.name.len() + call.arguments.len();
                if s.tool_calls.len() < MAX_STATUS_TOOL_CALLS
                    && s.tool_call_bytes + size <= MAX_STATUS_TOOL_CALL_BYTES
                {
                    s.tool_call_bytes += size;
                    s.tool_calls.push(call.clone());
                } else {
                    s.tool_calls_truncated = true;
                }
            }
            Event::Usage(u) => s.usage = Some(u.clone()),
            Event::End { finish_reason, .. } => s.finish_reason = Some(*finish_reason),
            Event::Error(e) => s.error = Some(e.clone()),
            Event::Start { .. } | Event::Ready => {}
        }
        let seq = s.events.len() as u64 + 1;
        s.log_bytes += size;
        s.events.push(LoggedEvent {
            seq,
            kind: event.type_name(),
            data: data.into(),
            terminal,
        });
        if terminal {
            s.status = Status::of_terminal(event);
            s.ended = Some(now);
            s.ended_at_ms = Some(unix_ms(SystemTime::now()));
        }
        drop(s);
        self.version.send_replace(seq);
        if terminal {
            Appended::Terminal
        } else {
            Appended::Event
        }
    }

    /// Marks the execution as running (it got a slot).
    pub fn mark_running(&self) {
        let mut s = self.lock();
        if s.status == Status::Queued {
            s.status = Status::Running;
            s.started = Some(Instant::now());
            s.started_at_ms = Some(unix_ms(SystemTime::now()));
        }
    }

    pub fn set_warm(&self, warm: bool) {
        self.lock().warm = Some(warm);
    }

    pub fn status(&self) -> Status {
        self.lock().status
    }

    pub fn is_ended(&self) -> bool {
        self.lock().status.is_terminal()
    }

    /// Whether any answer or reasoning was logged (errors after it are `partial`).
    pub fn output_started(&self) -> bool {
        self.lock().output_started
    }

    /// Bytes held by the log.
    pub fn log_bytes(&self) -> u64 {
        self.lock().log_bytes
    }

    /// Requests cancellation; the first reason wins. Returns whether the execution was still
    /// active.
    pub fn request_cancel(&self, reason: CancelReason) -> bool {
        let mut s = self.lock();
        if s.status.is_terminal() {
            return false;
        }
        s.cancel_reason.get_or_insert(reason);
        drop(s);
        // `notify_one` keeps a permit if the driver is not waiting right now.
        self.cancel.notify_one();
        true
    }

    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.lock().cancel_reason
    }

    /// Resolves when a cancel was requested (the driver's side).
    pub async fn cancel_requested(&self) {
        loop {
            if self.lock().cancel_reason.is_some() {
                return;
            }
            self.cancel.notified().await;
        }
    }

    /// Subscribes to new events; read them with [`Execution::events_after`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Up to `max` logged events with `seq > after`.
    pub fn events_after(&self, after: u64, max: usize) -> Vec<LoggedEvent> {
        let s = self.lock();
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(s.events.len());
        s.events[start..].iter().take(max).cloned().collect()
    }

    /// Number of events logged.
    pub fn last_seq(&self) -> u64 {
        self.lock().events.len() as u64
    }

    /// Time from admission to the first answer or reasoning token.
    pub fn ttft(&self) -> Option<std::time::Duration> {
        self.lock().first_output.map(|t| t - self.created)
    }

    /// Time from admission to the end.
    pub fn duration(&self) -> Option<std::time::Duration> {
        self.lock().ended.map(|t| t - self.created)
    }

    /// The terminal outcome, once ended: the error kind or `succeeded`.
    pub fn outcome(&self) -> Option<&'static str> {
        let s = self.lock();
        if !s.status.is_terminal() {
            return None;
        }
        Some(match &s.error {
            Some(e) => e.kind.as_str(),
            None => "succeeded",
        })
    }

    /// The record for the store.
    pub fn record(&self) -> crate::store::Record {
        let s = self.lock();
        crate::store::Record {
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            provider: self.provider.as_str().to_owned(),
            model: self.model.clone(),
            status: s.status.as_str().to_owned(),
            created_at_ms: self.created_at_ms,
            started_at_ms: s.started_at_ms,
            ended_at_ms: s.ended_at_ms,
            ttft_ms: s
                .first_output
                .map(|t| (t - self.created).as_millis() as u64),
            usage: s.usage.clone(),
            finish_reason: s.finish_reason.map(finish_reason_str),
            error_kind: s.error.as_ref().map(|e| e.kind.as_str().to_owned()),
            warm: s.warm,
        }
    }

    pub fn view(&self) -> ExecutionView {
        let s = self.lock();
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        ExecutionView {
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            provider: self.provider,
            model: self.model.clone(),
            status: s.status,
            text: Some(s.text.clone()),
            text_truncated: s.text_truncated,
            refusal: (!s.refusal.is_empty()).then(|| s.refusal.clone()),
            tool_calls: s.tool_calls.clone(),
            tool_calls_truncated: s.tool_calls_truncated,
            usage: s.usage.clone(),
            finish_reason: s.finish_reason,
            error: s.error.as_ref().map(|e| ErrorView {
                kind: e.kind.as_str().to_owned(),
                message: Some(e.message.clone()),
                retryable: Some(e.retryable),
                status: e.status,
            }),
            warm: s.warm,
            created_at_ms: self.created_at_ms,
            started_at_ms: s.started_at_ms,
            ended_at_ms: s.ended_at_ms,
            queue_ms: s.started.map(|t| ms(t - self.created)),
            ttft_ms: s.first_output.map(|t| ms(t - self.created)),
            duration_ms: s.ended.map(|t| ms(t - self.created)),
            events: Some(s.events.len() as u64),
            events_url: events_url(&self.id),
        }
    }
}

pub fn finish_reason_str(f: FinishReason) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "other".to_owned())
}

/// The event's JSON with `execution_id` added (the `start` event carries it already).
fn render(event: &Event, execution_id: &str) -> Option<String> {
    let json = serde_json::to_string(event).ok()?;
    if matches!(event, Event::Start { .. }) {
        return Some(json);
    }
    let body = json.strip_suffix('}')?;
    let id = serde_json::to_string(execution_id).ok()?;
    Some(format!("{body},\"execution_id\":{id}}}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use polydev_protocol::ErrorKind;

    fn exec(max: u64) -> Execution {
        Execution::new("ex_1".into(), "u".into(), Provider::OpenAi, "m".into(), max)
    }

    #[test]
    fn sequence_numbers_and_data() {
        let e = exec(1 << 20);
        assert_eq!(e.append(&e.start_event()), Appended::Event);
        assert_eq!(
            e.append(&Event::Text { text: "hi".into() }),
            Appended::Event
        );
        let evs = e.events_after(0, 10);
        assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(evs[0].kind, "start");
        assert_eq!(
            &*evs[1].data,
            r#"{"type":"text","text":"hi","execution_id":"ex_1"}"#
        );
        assert_eq!(
            evs[1].data_with_target(2),
            r#"{"type":"text","text":"hi","execution_id":"ex_1","target":2,"seq":2}"#
        );
        let start: serde_json::Value = serde_json::from_str(&evs[0].data).unwrap();
        assert_eq!(start["execution_id"], "ex_1");
        assert_eq!(e.events_after(1, 10).len(), 1);
        assert!(e.events_after(5, 10).is_empty());
    }

    #[test]
    fn exactly_one_terminal() {
        let e = exec(1 << 20);
        e.append(&e.start_event());
        let end = Event::End {
            finish_reason: FinishReason::Stop,
            raw_finish_reason: None,
            ttft_ms: None,
            duration_ms: 1,
        };
        assert_eq!(e.append(&end), Appended::Terminal);
        assert_eq!(e.status(), Status::Succeeded);
        let err = Event::Error(ErrorEvent::new(ErrorKind::Internal, "x"));
        assert_eq!(e.append(&err), Appended::AfterEnd);
        assert_eq!(
            e.append(&Event::Text {
                text: "late".into()
            }),
            Appended::AfterEnd
        );
        assert_eq!(e.last_seq(), 2);
        assert!(!e.request_cancel(CancelReason::Client));
    }

    #[test]
    fn the_log_is_bounded_but_the_terminal_event_always_fits() {
        let e = exec(200);
        e.append(&e.start_event());
        let big = Event::Text {
            text: "x".repeat(150),
        };
        assert_eq!(e.append(&big), Appended::Overflow);
        let err = Event::Error(ErrorEvent::new(ErrorKind::Internal, "too big"));
        assert_eq!(e.append(&err), Appended::Terminal);
        assert_eq!(e.status(), Status::Failed);
    }

    #[test]
    fn cancelled_status_and_view() {
        let e = exec(1 << 20);
        e.append(&e.start_event());
        e.mark_running();
        assert!(e.request_cancel(CancelReason::Client));
        e.append(&Event::Usage(Usage {
            input_tokens: 3,
            output_tokens: 4,
            ..Usage::default()
        }));
        e.append(&Event::Error(ErrorEvent::new(ErrorKind::Cancelled, "stop")));
        let v = e.view();
        assert_eq!(v.status, Status::Cancelled);
        assert_eq!(v.usage.unwrap().output_tokens, 4);
        assert_eq!(v.error.unwrap().kind, "cancelled");
        assert_eq!(e.outcome(), Some("cancelled"));
        assert_eq!(e.cancel_reason(), Some(CancelReason::Client));
    }
}
