//! One chaos client: it starts an execution (`POST /v1/executions`, streamed), reads its SSE
//! stream the way the scenario says (normally, slowly, not at all for a while, or dropping the
//! connection every few events), resumes through `GET /v1/executions/{id}/events` with
//! `Last-Event-ID` whenever the stream ends without its terminal event (across controller
//! restarts too, with bounded retries), and checks as it goes what DESIGN.md 5 promises: ids
//! `1, 2, 3…` with no gap and no duplicate, exactly one terminal event and nothing after it.
//!
//! The final verdict (the right terminal, the whole answer) is [`Outcome::check`]'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use polydev_sse::{Decoder, Item, Limits};
use serde_json::Value;

/// Bearer token of the controllers the suite starts (not a secret: loopback only).
pub const API_TOKEN: &str = "chaos-token-0123456789abcdef";

/// Largest SSE line / event the client accepts (events are small; a bound all the same).
const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Resume attempts in a row that may fail (connection refused while a controller restarts,
/// 5xx) before the stream is given up.
const MAX_FAILED_RESUMES: u32 = 120;
/// Longest wait between two resume attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How a client reads its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// As fast as the bytes come.
    Normal,
    /// Sleeps this long after every body chunk until `slow_for` has passed, then reads normally.
    Slow { pause: Duration, slow_for: Duration },
    /// Starts the execution without streaming, opens `/events` and reads nothing for `hold`,
    /// then drops that connection and resumes normally from the start.
    Never { hold: Duration },
    /// Drops the connection after every `every` events and resumes.
    Storm { every: u32 },
}

/// What the stream must end with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// `end`, with the whole answer.
    Complete,
    /// One `error` of this kind, after a prefix of the answer.
    Error(String),
    /// Either of the above (a runtime killed at a random moment may already have finished).
    CompleteOr(String),
}

/// One stream to run.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub index: usize,
    pub provider: &'static str,
    pub model: String,
    pub api_key: String,
    /// Answer length in tokens (the emulator's `len` knob).
    pub len: usize,
    pub expect: Expect,
    pub reader: Reader,
    /// Give up (a loss) when the stream has not ended by then.
    pub deadline: Instant,
}

/// How a stream ended, and everything checked on the way.
#[derive(Debug, Default)]
pub struct Outcome {
    pub execution_id: Option<String>,
    pub text: String,
    /// `end`, or the error kind.
    pub terminal: Option<String>,
    pub terminal_message: Option<String>,
    pub terminals: u32,
    pub events: u64,
    /// Reconnections through `/events`.
    pub resumes: u32,
    /// Longest time between two `text` events on one connection.
    pub max_token_gap: Duration,
    /// Broken promises seen while reading (gap, duplicate, event after the terminal, ...).
    pub violations: Vec<String>,
    /// Why the client gave up, when it did.
    pub lost: Option<String>,
}

/// Counters the scenario reads while streams run (to time its faults).
#[derive(Debug, Default)]
pub struct Progress {
    /// Streams whose `start` event arrived.
    pub started: AtomicU64,
    /// `text` events received over all streams.
    pub tokens: AtomicU64,
    /// Streams that ended (terminal or given up).
    pub finished: AtomicU64,
}

/// Expected answer text of `len` tokens.
pub fn answer(len: usize) -> String {
    polydev_emulator::answer_text(len)
}

/// Number of tokens (words) in a piece of the emulator's answer.
pub fn token_count(text: &str) -> usize {
    text.split(' ').filter(|w| !w.is_empty()).count()
}

impl Outcome {
    /// Every violation of this stream against `spec`, empty when it held.
    pub fn check(&self, spec: &StreamSpec) -> Vec<String> {
        let mut out = self.violations.clone();
        if let Some(l) = &self.lost {
            out.push(format!("lost: {l}"));
        }
        if self.terminals > 1 {
            out.push(format!("{} terminal events", self.terminals));
        }
        let full = answer(spec.len);
        let complete_ok = || {
            if self.text == full {
                None
            } else {
                Some(format!(
                    "ended `end` with {} of {} tokens (text differs from the answer)",
                    token_count(&self.text),
                    spec.len
                ))
            }
        };
        let error_ok = |kind: &str, got: &str| {
            if got != kind {
                Some(format!(
                    "error kind {got:?} ({}), expected {kind:?}",
                    self.terminal_message.as_deref().unwrap_or("")
                ))
            } else if !full.starts_with(&self.text) {
                Some("text before the error is not a prefix of the answer".to_owned())
            } else {
                None
            }
        };
        let verdict = match (&spec.expect, self.terminal.as_deref()) {
            (_, None) => self.lost.is_none().then(|| "no terminal event".to_owned()),
            (Expect::Complete, Some("end")) => complete_ok(),
            (Expect::Complete, Some(kind)) => Some(format!(
                "error {kind:?} ({}), expected the whole answer",
                self.terminal_message.as_deref().unwrap_or("")
            )),
            (Expect::Error(k), Some("end")) => Some(format!("ended `end`, expected error {k:?}")),
            (Expect::Error(k), Some(got)) => error_ok(k, got),
            (Expect::CompleteOr(_), Some("end")) => complete_ok(),
            (Expect::CompleteOr(k), Some(got)) => error_ok(k, got),
        };
        out.extend(verdict);
        out
    }

    /// Tokens of the answer this stream delivered and the suite compared.
    pub fn tokens_checked(&self) -> usize {
        token_count(&self.text)
    }
}

/// Runs one stream to its end (or its deadline).
pub async fn run_stream(
    addr: Arc<std::sync::Mutex<SocketAddr>>,
    spec: StreamSpec,
    progress: Arc<Progress>,
) -> Outcome {
    let mut st = StreamState {
        out: Outcome::default(),
        last_seq: 0,
        progress: Arc::clone(&progress),
    };
    let body = serde_json::json!({
        "user_id": format!("chaos-{}", spec.index),
        "provider": spec.provider,
        "model": spec.model,
        "prompt": "chaos suite: say the deterministic answer",
        "credentials": {"api_key": spec.api_key},
    });
    let body = Bytes::from(body.to_string());
    let mut failures = 0u32;
    let mut first = true;
    loop {
        if st.out.terminal.is_some() {
            break;
        }
        if Instant::now() >= spec.deadline {
            st.out.lost = Some(format!(
                "no terminal event by the deadline (last id {})",
                st.last_seq
            ));
            break;
        }
        let current = current_addr(&addr);
        let result = if first {
            first = false;
            match spec.reader {
                Reader::Never { hold } => start_detached(current, &body, &mut st, hold).await,
                _ => {
                    let req = request(Method::POST, "/v1/executions", None, Some(body.clone()));
                    st.connection(current, req, &spec).await
                }
            }
        } else {
            let Some(id) = st.out.execution_id.clone() else {
                st.out.lost = Some("the POST stream failed before its `start` event".into());
                break;
            };
            st.out.resumes += 1;
            let path = format!("/v1/executions/{id}/events");
            let req = request(Method::GET, &path, Some(st.last_seq), None);
            st.connection(current, req, &spec).await
        };
        match result {
            Ok(()) => failures = 0,
            Err(ConnError::Refused(status, msg)) => {
                st.out.lost = Some(format!("HTTP {status}: {msg}"));
                break;
            }
            Err(ConnError::Transient(e)) => {
                failures += 1;
                if failures > MAX_FAILED_RESUMES {
                    st.out.lost = Some(format!("{failures} failed reconnections, last: {e}"));
                    break;
                }
                let backoff = Duration::from_millis(50u64 << failures.min(5)).min(MAX_BACKOFF);
                tokio::time::sleep(backoff).await;
            }
        }
    }
    progress.finished.fetch_add(1, Ordering::Relaxed);
    st.out
}

fn current_addr(addr: &std::sync::Mutex<SocketAddr>) -> SocketAddr {
    match addr.lock() {
        Ok(a) => *a,
        Err(poisoned) => *poisoned.into_inner(),
    }
}

/// Why a connection ended without the terminal event.
#[derive(Debug)]
enum ConnError {
    /// Worth retrying: connection refused or reset, 5xx, the body cut.
    Transient(String),
    /// The controller refused for good (4xx other than 429).
    Refused(u16, String),
}

struct StreamState {
    out: Outcome,
    last_seq: u64,
    progress: Arc<Progress>,
}

fn request(
    method: Method,
    path: &str,
    last: Option<u64>,
    body: Option<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .header("accept", "text/event-stream");
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    if let Some(l) = last {
        b = b.header("last-event-id", l.to_string());
    }
    // The builder only fails on invalid parts; these are all constants or digits.
    match b.body(Full::new(body.unwrap_or_default())) {
        Ok(r) => r,
        Err(_) => Request::new(Full::new(Bytes::new())),
    }
}

async fn send(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<Incoming>, ConnError> {
    let connect = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    );
    let stream = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnError::Transient(format!("connect: {e}"))),
        Err(_) => return Err(ConnError::Transient("connect timed out".into())),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnError::Transient(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let res = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| ConnError::Transient("no response head within 30 s".into()))?
        .map_err(|e| ConnError::Transient(format!("request: {e}")))?;
    let status = res.status();
    if status == StatusCode::OK {
        return Ok(res);
    }
    let text = match tokio::time::timeout(Duration::from_secs(5), res.into_body().collect()).await {
        Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes())
            .chars()
            .take(300)
            .collect(),
        _ => String::new(),
    };
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Err(ConnError::Transient(format!("HTTP {status}: {text}")))
    } else {
        Err(ConnError::Refused(status.as_u16(), text))
    }
}

/// The never-reading client: `POST` without streaming (202 and the id), then `/events` left
/// unread for `hold`; the caller's loop then resumes from what was read (nothing).
async fn start_detached(
    addr: SocketAddr,
    body: &Bytes,
    st: &mut StreamState,
    hold: Duration,
) -> Result<(), ConnError> {
    let mut req = request(Method::POST, "/v1/executions", None, Some(body.clone()));
    req.headers_mut().remove("accept");
    let connect = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| ConnError::Transient(format!("connect: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(connect))
        .await
        .map_err(|e| ConnError::Transient(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| ConnError::Transient(format!("request: {e}")))?;
    let status = res.status();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| ConnError::Transient(format!("body: {e}")))?
        .to_bytes();
    if status != StatusCode::ACCEPTED {
        return Err(ConnError::Refused(
            status.as_u16(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ConnError::Refused(202, format!("not JSON: {e}")))?;
    let Some(id) = v["id"].as_str() else {
        return Err(ConnError::Refused(202, "no id".into()));
    };
    st.out.execution_id = Some(id.to_owned());
    st.progress.started.fetch_add(1, Ordering::Relaxed);
    let path = format!("/v1/executions/{id}/events");
    let res = send(addr, request(Method::GET, &path, None, None)).await?;
    // Hold the response (and its connection) without reading a byte.
    tokio::time::sleep(hold).await;
    drop(res);
    Ok(())
}

impl StreamState {
    /// Reads one response stream until it ends; `Ok` when the terminal event came, or when
    /// the reader itself dropped the connection (storm) and should resume.
    async fn connection(
        &mut self,
        addr: SocketAddr,
        req: Request<Full<Bytes>>,
        spec: &StreamSpec,
    ) -> Result<(), ConnError> {
        let res = send(addr, req).await?;
        let mut body = res.into_body();
        let mut decoder = Decoder::with_limits(Limits {
            max_line_bytes: MAX_EVENT_BYTES,
            max_event_bytes: MAX_EVENT_BYTES,
        });
        let mut items = Vec::new();
        let opened = Instant::now();
        let mut last_token: Option<Instant> = None;
        let mut on_this_conn = 0u32;
        loop {
            let remaining = spec.deadline.saturating_duration_since(Instant::now());
            let frame = match tokio::time::timeout(remaining, body.frame()).await {
                Err(_) => return Ok(()), // the outer loop reports the deadline
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return self.cut(format!("body: {e}"));
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if let Err(e) = decoder.feed(&data, &mut items) {
                self.out.violations.push(format!("bad SSE: {e}"));
                return Ok(());
            }
            for item in items.drain(..) {
                let Item::Event(ev) = item else { continue };
                on_this_conn += 1;
                self.on_event(&ev, &mut last_token);
            }
            if let Reader::Storm { every } = spec.reader
                && on_this_conn >= every
                && self.out.terminal.is_none()
            {
                return Ok(());
            }
            if let Reader::Slow { pause, slow_for } = spec.reader
                && opened.elapsed() < slow_for
                && self.out.terminal.is_none()
            {
                tokio::time::sleep(pause).await;
            }
        }
        if self.out.terminal.is_some() {
            Ok(())
        } else {
            self.cut("the stream closed without a terminal event".into())
        }
    }

    fn cut(&self, why: String) -> Result<(), ConnError> {
        if self.out.terminal.is_some() {
            Ok(())
        } else {
            Err(ConnError::Transient(why))
        }
    }

    fn on_event(&mut self, ev: &polydev_sse::Event, last_token: &mut Option<Instant>) {
        let kind = ev.event_type().to_owned();
        let Some(seq) = ev.id.as_deref().and_then(|s| s.parse::<u64>().ok()) else {
            self.out
                .violations
                .push(format!("event {kind:?} without a numeric id"));
            return;
        };
        if seq <= self.last_seq {
            self.out
                .violations
                .push(format!("duplicate: id {seq} after {}", self.last_seq));
            return;
        }
        if seq != self.last_seq + 1 {
            self.out
                .violations
                .push(format!("gap: id {seq} after {}", self.last_seq));
        }
        self.last_seq = seq;
        self.out.events += 1;
        if self.out.terminal.is_some() {
            self.out.violations.push(format!(
                "event {kind:?} (id {seq}) after the terminal event"
            ));
        }
        let data: Value = match serde_json::from_str(&ev.data) {
            Ok(v) => v,
            Err(e) => {
                self.out
                    .violations
                    .push(format!("id {seq}: data is not JSON: {e}"));
                return;
            }
        };
        match kind.as_str() {
            "start" => {
                if let Some(id) = data["execution_id"].as_str() {
                    if self.out.execution_id.is_none() {
                        self.progress.started.fetch_add(1, Ordering::Relaxed);
                    }
                    self.out.execution_id = Some(id.to_owned());
                }
            }
            "text" => {
                if let Some(t) = data["text"].as_str() {
                    self.out.text.push_str(t);
                }
                let now = Instant::now();
                if let Some(prev) = last_token.replace(now) {
                    self.out.max_token_gap = self.out.max_token_gap.max(now - prev);
                }
                self.progress.tokens.fetch_add(1, Ordering::Relaxed);
            }
            "end" => {
                self.out.terminals += 1;
                self.out.terminal = Some("end".into());
            }
            "error" => {
                self.out.terminals += 1;
                self.out.terminal = Some(data["kind"].as_str().unwrap_or("?").to_owned());
                self.out.terminal_message = data["message"].as_str().map(str::to_owned);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(expect: Expect) -> StreamSpec {
        StreamSpec {
            index: 0,
            provider: "openai",
            model: "m".into(),
            api_key: "k".into(),
            len: 5,
            expect,
            reader: Reader::Normal,
            deadline: Instant::now(),
        }
    }

    #[test]
    fn verdicts() {
        let full = Outcome {
            text: answer(5),
            terminal: Some("end".into()),
            terminals: 1,
            ..Outcome::default()
        };
        assert!(full.check(&spec(Expect::Complete)).is_empty());
        assert!(
            full.check(&spec(Expect::CompleteOr("internal".into())))
                .is_empty()
        );
        assert_eq!(full.check(&spec(Expect::Error("upstream".into()))).len(), 1);
        let short = Outcome {
            text: answer(3),
            ..full
        };
        assert_eq!(short.check(&spec(Expect::Complete)).len(), 1);
        let err = Outcome {
            text: answer(2),
            terminal: Some("upstream".into()),
            terminals: 1,
            ..Outcome::default()
        };
        assert!(
            err.check(&spec(Expect::Error("upstream".into())))
                .is_empty()
        );
        assert_eq!(err.check(&spec(Expect::Error("timeout".into()))).len(), 1);
        assert_eq!(err.check(&spec(Expect::Complete)).len(), 1);
        let lost = Outcome {
            lost: Some("HTTP 410".into()),
            ..Outcome::default()
        };
        assert_eq!(lost.check(&spec(Expect::Complete)).len(), 1);
    }

    #[test]
    fn ids_must_follow_each_other() {
        let mut st = StreamState {
            out: Outcome::default(),
            last_seq: 0,
            progress: Arc::new(Progress::default()),
        };
        let ev = |id: &str, kind: &str, data: &str| polydev_sse::Event {
            event: Some(kind.into()),
            data: data.into(),
            id: Some(id.into()),
            retry: None,
        };
        let mut t = None;
        st.on_event(&ev("1", "start", r#"{"execution_id":"x"}"#), &mut t);
        st.on_event(&ev("2", "text", r#"{"text":"Hello "}"#), &mut t);
        st.on_event(&ev("2", "text", r#"{"text":"Hello "}"#), &mut t);
        st.on_event(&ev("4", "end", "{}"), &mut t);
        st.on_event(&ev("5", "text", r#"{"text":"x"}"#), &mut t);
        assert_eq!(st.out.text, "Hello x");
        assert_eq!(st.out.violations.len(), 3, "{:?}", st.out.violations);
        assert_eq!(st.out.execution_id.as_deref(), Some("x"));
    }
}
