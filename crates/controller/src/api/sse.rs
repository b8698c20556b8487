//! Server-sent event streams over execution logs (DESIGN.md 5): `id:` is the event's sequence
//! number within its execution, `event:` its type, `data:` the runtime's event JSON plus
//! `execution_id` (added here: the log stores it once per execution). A stream ends right after the terminal event; keep-alive comments flow while
//! it waits. The perspectives stream interleaves several executions (adding `target` and `seq`
//! to each event's data, and no `id:`, since ids are per execution) and ends with
//! `event: done` once every target has ended. When the controller detaches from an execution at
//! shutdown (DESIGN.md 5.2), its streams close with no further event, so the client resumes on
//! the next controller.
//!
//! Streams read from the shared log ([`Execution::events_after`]) and buffer at most one batch,
//! so a slow client holds no more than that, whatever the execution produces.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use crate::controller::StreamGuard;
use crate::execution::{Execution, LoggedEvent, json_string};

/// Events read from the log at a time.
const BATCH: usize = 64;

/// The logged events of `exec` with `seq > after`, ending after the terminal event.
pub fn log_stream(exec: Arc<Execution>, after: u64) -> impl Stream<Item = LoggedEvent> + Send {
    struct State {
        exec: Arc<Execution>,
        rx: tokio::sync::watch::Receiver<u64>,
        after: u64,
        buf: VecDeque<LoggedEvent>,
        done: bool,
    }
    let rx = exec.subscribe();
    let state = State {
        exec,
        rx,
        after,
        buf: VecDeque::new(),
        done: false,
    };
    stream::unfold(state, |mut st| async move {
        loop {
            // Detached at shutdown: the stream closes with no further event.
            if st.done || st.exec.is_detached() {
                return None;
            }
            if let Some(ev) = st.buf.pop_front() {
                st.after = ev.seq;
                st.done = ev.terminal;
                return Some((ev, st));
            }
            // Mark the current version seen *before* reading, so an append between the read
            // and the wait below still wakes us.
            st.rx.borrow_and_update();
            let batch = st.exec.events_after(st.after, BATCH);
            if batch.is_empty() {
                if st.exec.is_ended() {
                    // An adopted execution that ended before its rebuilt log reached where the
                    // client resumed (its runtime did not come back): the client has not seen
                    // this terminal event, so it still gets it, once.
                    let last = st.exec.last_seq();
                    if st.exec.adopted && st.after > last {
                        st.done = true;
                        let end = st.exec.events_after(last.saturating_sub(1), 1);
                        if let Some(ev) = end.into_iter().next().filter(|e| e.terminal) {
                            return Some((ev, st));
                        }
                    }
                    // Resumed at or past the terminal event: nothing more will come.
                    return None;
                }
                if st.rx.changed().await.is_err() {
                    return None;
                }
                continue;
            }
            st.buf.extend(batch);
        }
    })
}

fn frame(ev: &LoggedEvent, execution_id_json: &str) -> SseEvent {
    SseEvent::default()
        .id(ev.seq.to_string())
        .event(ev.kind)
        .data(ev.wire_data(execution_id_json))
}

/// The comment the controller's own streams send while they wait: `: keep-alive`.
pub(crate) fn keep_alive_comment() -> SseEvent {
    SseEvent::default().comment("keep-alive")
}

/// `inner` with `keep_alive` sent after every `interval` without an event.
///
/// The timer is checked lazily: an event only records the time, and when the timer fires
/// early (events flowed meanwhile) it is re-armed for the real due time. Resetting it on every
/// event, as axum's own keep-alive does, would cost a timer-wheel update per streamed token.
pub(crate) fn with_keep_alive<S>(
    inner: S,
    interval: Duration,
    keep_alive: SseEvent,
) -> Sse<KeepAliveStream<S>>
where
    S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    Sse::new(KeepAliveStream {
        inner: Box::pin(inner),
        timer: Box::pin(tokio::time::sleep(interval)),
        interval,
        last: Instant::now(),
        keep_alive,
    })
}

/// See [`with_keep_alive`].
pub(crate) struct KeepAliveStream<S> {
    inner: Pin<Box<S>>,
    timer: Pin<Box<Sleep>>,
    interval: Duration,
    /// When the last event or keep-alive left.
    last: Instant,
    keep_alive: SseEvent,
}

impl<S> Stream for KeepAliveStream<S>
where
    S: Stream<Item = Result<SseEvent, Infallible>>,
{
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin (the stream and the timer are boxed).
        let this = self.get_mut();
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => {
                this.last = Instant::now();
                return Poll::Ready(Some(item));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        loop {
            ready!(this.timer.as_mut().poll(cx));
            let now = Instant::now();
            let due = this.last + this.interval;
            if now >= due {
                this.last = now;
                this.timer.as_mut().reset(now + this.interval);
                return Poll::Ready(Some(Ok(this.keep_alive.clone())));
            }
            this.timer.as_mut().reset(due);
        }
    }
}

/// One execution's SSE response.
pub fn execution_sse(
    exec: Arc<Execution>,
    after: u64,
    guard: StreamGuard,
    keepalive: Duration,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>> + Send> {
    // Escaped once per stream, not once per event.
    let id_json = json_string(&exec.id);
    let s = log_stream(exec, after).map(move |ev| {
        let _held = &guard;
        Ok(frame(&ev, &id_json))
    });
    with_keep_alive(s, keepalive, keep_alive_comment())
}

/// The perspectives SSE response: every target's events, interleaved as they come, then
/// `done`.
pub fn perspectives_sse(
    execs: Vec<Arc<Execution>>,
    guard: StreamGuard,
    keepalive: Duration,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>> + Send> {
    let streams = execs.into_iter().enumerate().map(|(target, exec)| {
        let id_json = json_string(&exec.id);
        log_stream(exec, 0)
            .map(move |ev| {
                SseEvent::default()
                    .event(ev.kind)
                    .data(ev.data_with_target(&id_json, target))
            })
            .boxed()
    });
    let done = stream::once(async { SseEvent::default().event("done").data(r#"{"type":"done"}"#) });
    let s = stream::select_all(streams).chain(done).map(move |ev| {
        let _held = &guard;
        Ok(ev)
    });
    with_keep_alive(s, keepalive, keep_alive_comment())
}
