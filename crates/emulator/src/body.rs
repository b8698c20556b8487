//! Response bodies, and the driver that turns a provider's event script into paced,
//! split, faulty bytes.
//!
//! Providers only describe *what* a stream contains (a [`Script`] of frames); the driver
//! decides *when and how* the bytes leave: the barrier, the token rate, keep-alives, byte
//! splitting, and the injected faults (stall, drop, trunc, mid). Keeping this in one place
//! makes every knob behave the same for all three providers.
//!
//! A stream is driven from inside the body's `poll_frame`, on the connection's own task: no
//! task or channel per stream, and a client that goes away simply drops the body (which the
//! [`StreamGuard`] counts as a client disconnect).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::scenario::{Effective, Fault, FaultKind};
use crate::state::{Outcome, Shared, StreamGuard};
use std::sync::Arc;

/// The error a body yields to make hyper abort the connection (the `drop` knob).
#[derive(Debug, thiserror::Error)]
#[error("stream aborted on purpose by the emulator (drop knob)")]
pub struct InjectedAbort;

/// Pause before an injected abort so bytes already produced reach the socket first.
const FLUSH_GRACE: Duration = Duration::from_millis(5);

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, InjectedAbort>> + Send>>;

/// The body of every response the emulator sends.
pub struct ResponseBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Stream {
        stream: ByteStream,
        guard: Option<StreamGuard>,
    },
}

impl ResponseBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        let bytes = bytes.into();
        ResponseBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// A counted stream (`open_streams`, disconnects...).
    pub(crate) fn tracked(stream: ByteStream, guard: StreamGuard) -> ResponseBody {
        ResponseBody {
            kind: Kind::Stream {
                stream,
                guard: Some(guard),
            },
        }
    }

    /// An uncounted stream (partial non-streaming bodies).
    pub(crate) fn untracked(stream: ByteStream) -> ResponseBody {
        ResponseBody {
            kind: Kind::Stream {
                stream,
                guard: None,
            },
        }
    }

    /// Length of a fixed body, if this is one.
    pub(crate) fn fixed_len(&self) -> Option<usize> {
        match &self.kind {
            Kind::Full(bytes) => Some(bytes.as_ref().map_or(0, Bytes::len)),
            Kind::Stream { .. } => None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = InjectedAbort;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InjectedAbort>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream { stream, guard } => match stream.as_mut().poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => {
                    if let Some(g) = guard {
                        g.sent(bytes.len());
                    }
                    Poll::Ready(Some(Ok(Frame::data(bytes))))
                }
                Poll::Ready(Some(Err(abort))) => {
                    if let Some(g) = guard {
                        g.finish(Outcome::Aborted);
                    }
                    Poll::Ready(Some(Err(abort)))
                }
                Poll::Ready(None) => {
                    if let Some(g) = guard {
                        g.finish(Outcome::Completed);
                    }
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, Bytes::len) as u64),
            Kind::Stream { .. } => SizeHint::default(),
        }
    }
}

/// One step of a provider's stream, produced lazily.
pub(crate) enum Step {
    /// A frame that is not a token (message start, block boundaries, pings).
    Meta(Bytes),
    /// A frame carrying one token: counted for the fault knobs and paced by `rate`.
    Content(Bytes),
    /// A frame of the provider's ending (finish, usage, terminator): a pending fault strikes
    /// before the first of these, and they wait until the token clock has caught up.
    End(Bytes),
    /// Time passes as if this many tokens were generated with no output (hidden reasoning).
    Think(usize),
}

/// A provider's stream contents.
pub(crate) trait Script: Send + 'static {
    /// The next step, or `None` when the stream is complete.
    fn next_step(&mut self) -> Option<Step>;
    /// The provider's in-stream error frame (`mid` knob).
    fn mid_error(&mut self) -> Bytes;
    /// The provider's in-stream content-policy error frame (`policymid` knob), or `None` when
    /// the provider has no such error (the stream then goes on as if the knob were absent).
    fn policy_error(&mut self) -> Option<Bytes>;
    /// The provider's keep-alive frame (`ka` knob).
    fn keep_alive(&self) -> Bytes;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stalled,
    Done,
}

struct Driver {
    script: Box<dyn Script>,
    shared: Arc<Shared>,
    split: usize,
    rate: u32,
    keep_alive: Option<Duration>,
    /// The fault still to come (taken when it strikes).
    fault: Option<Fault>,
    phase: Phase,
    /// The rest of a frame being sent in `split` pieces.
    pieces: VecDeque<Bytes>,
    /// A step put back while a keep-alive went out first.
    held: Option<Step>,
    /// When the barrier let this stream go; the token clock counts from here.
    started: Option<Instant>,
    last_write: Instant,
    /// Token slots used so far (sent tokens plus hidden reasoning): token `k` is due at
    /// `started + k / rate`, so pacing does not drift with scheduling delays.
    token_clock: u64,
    content_sent: usize,
    polled_once: bool,
}

/// Build the body of a streaming response.
pub(crate) fn stream_body(
    script: Box<dyn Script>,
    scenario: &Effective,
    shared: &Arc<Shared>,
) -> ResponseBody {
    let guard = shared.open_stream();
    let driver = Driver {
        script,
        shared: Arc::clone(shared),
        split: scenario.split,
        rate: scenario.rate,
        keep_alive: scenario.keep_alive,
        fault: scenario.fault,
        phase: Phase::Running,
        pieces: VecDeque::new(),
        held: None,
        started: None,
        last_write: Instant::now(),
        token_clock: 0,
        content_sent: 0,
        polled_once: false,
    };
    let stream = futures_util::stream::unfold(driver, |mut driver| async move {
        let item = driver.next().await?;
        Some((item, driver))
    });
    ResponseBody::tracked(Box::pin(stream), guard)
}

impl Driver {
    async fn next(&mut self) -> Option<Result<Bytes, InjectedAbort>> {
        if self.split > 0 && self.polled_once {
            // Give hyper a chance to flush, so pieces tend to leave as separate writes.
            tokio::task::yield_now().await;
        }
        self.polled_once = true;
        if let Some(piece) = self.pieces.pop_front() {
            return Some(Ok(self.wrote(piece)));
        }
        if self.started.is_none() {
            if let Some(barrier) = self.shared.barrier() {
                barrier.wait().await;
            }
            self.started = Some(Instant::now());
        }
        loop {
            match self.phase {
                Phase::Done => return None,
                Phase::Stalled => match self.keep_alive {
                    Some(every) => {
                        tokio::time::sleep_until(self.last_write + every).await;
                        let frame = self.script.keep_alive();
                        return Some(Ok(self.emit(frame)));
                    }
                    None => std::future::pending::<()>().await,
                },
                Phase::Running => {}
            }
            let Some(step) = self.held.take().or_else(|| self.script.next_step()) else {
                self.phase = Phase::Done;
                return None;
            };
            // Tokens and the ending are paced by the token clock; a fault strikes when the
            // event it replaces was due, not earlier.
            if matches!(step, Step::Content(_) | Step::End(_))
                && let Some(ka) = self.wait_for_clock(self.token_clock).await
            {
                self.held = Some(step);
                return Some(Ok(self.emit(ka)));
            }
            if let Some(fault) = self.fault {
                let strikes = match step {
                    Step::Content(_) => self.content_sent >= fault.after,
                    Step::End(_) => true,
                    Step::Meta(_) | Step::Think(_) => false,
                };
                if strikes {
                    self.fault = None;
                    match fault.kind {
                        FaultKind::Stall => {
                            self.phase = Phase::Stalled;
                            continue;
                        }
                        FaultKind::Drop => {
                            self.phase = Phase::Done;
                            // hyper flushes when the body is pending; without this the frames
                            // already produced could die in its write buffer with the abort.
                            tokio::task::yield_now().await;
                            tokio::time::sleep(FLUSH_GRACE).await;
                            return Some(Err(InjectedAbort));
                        }
                        FaultKind::Trunc => {
                            self.phase = Phase::Done;
                            return None;
                        }
                        FaultKind::Mid => {
                            self.phase = Phase::Done;
                            let frame = self.script.mid_error();
                            return Some(Ok(self.emit(frame)));
                        }
                        FaultKind::Policy => {
                            if let Some(frame) = self.script.policy_error() {
                                self.phase = Phase::Done;
                                return Some(Ok(self.emit(frame)));
                            }
                        }
                    }
                }
            }
            match step {
                Step::Think(tokens) => {
                    self.token_clock = self.token_clock.saturating_add(tokens as u64);
                }
                Step::Meta(frame) | Step::End(frame) => return Some(Ok(self.emit(frame))),
                Step::Content(frame) => {
                    self.token_clock = self.token_clock.saturating_add(1);
                    self.content_sent += 1;
                    return Some(Ok(self.emit(frame)));
                }
            }
        }
    }

    /// Sleep until token slot `slot` is due. Returns a keep-alive frame instead when one is
    /// due first (the caller sends it and comes back).
    async fn wait_for_clock(&mut self, slot: u64) -> Option<Bytes> {
        if self.rate == 0 {
            return None;
        }
        let started = self.started.unwrap_or_else(Instant::now);
        let offset = Duration::from_secs_f64(slot as f64 / f64::from(self.rate));
        let Some(due) = started.checked_add(offset) else {
            // Unreachably far in the future: behave like a stall.
            std::future::pending::<()>().await;
            return None;
        };
        if let Some(every) = self.keep_alive {
            let ka_due = self.last_write + every;
            if ka_due < due {
                tokio::time::sleep_until(ka_due).await;
                return Some(self.script.keep_alive());
            }
        }
        tokio::time::sleep_until(due).await;
        None
    }

    /// Send a whole frame, split into pieces when the `split` knob asks for it.
    fn emit(&mut self, frame: Bytes) -> Bytes {
        if self.split == 0 || frame.len() <= self.split {
            return self.wrote(frame);
        }
        let mut rest = frame;
        let first = rest.split_to(self.split);
        while !rest.is_empty() {
            let n = self.split.min(rest.len());
            self.pieces.push_back(rest.split_to(n));
        }
        self.wrote(first)
    }

    fn wrote(&mut self, bytes: Bytes) -> Bytes {
        self.last_write = Instant::now();
        bytes
    }
}

/// A non-streaming body cut short: `prefix`, then either an abort or a clean end.
pub(crate) fn partial_body(prefix: Bytes, abort: bool) -> ResponseBody {
    enum Cut {
        Prefix(Bytes),
        Abort,
        End,
    }
    let stream = futures_util::stream::unfold(Cut::Prefix(prefix), move |state| async move {
        match state {
            Cut::Prefix(prefix) => Some((Ok(prefix), if abort { Cut::Abort } else { Cut::End })),
            Cut::Abort => {
                tokio::task::yield_now().await;
                tokio::time::sleep(FLUSH_GRACE).await;
                Some((Err(InjectedAbort), Cut::End))
            }
            Cut::End => None,
        }
    });
    ResponseBody::untracked(Box::pin(stream))
}
