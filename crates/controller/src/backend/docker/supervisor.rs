//! One task per container, from `start` to removal, mirroring the process backend's supervisor
//! so that both backends behave the same to the driver:
//!
//! - it reads the attach stream (bounded lines; an over-long line is reported as garbage and
//!   the container killed) and forwards events in order through the bounded output channel: a
//!   slow consumer stops the reads, the engine's copy blocks, and the runtime blocks on its
//!   stdout, instead of anything growing in memory;
//! - cancel, shutdown or a dropped output receiver send SIGTERM (the runtime reports
//!   `cancelled` and exits), then SIGKILL after the grace;
//! - when the stream ends (the container exited, or was killed from outside), it asks the
//!   engine for the exit code (`wait`) and the state (`inspect`: `OOMKilled`), removes the
//!   container, and only then sends the one [`InstanceOutput::Exited`], last. Holding the
//!   execution's slot until the container is gone keeps capacity accounting honest.
//!
//! Warm containers start in [`Supervisor::warm`]: wait for `ready`, then for a claim while
//! watching for death, exactly like a warm process.
//!
//! Pull mode (`pull.rs`): the events come from the instance's registry feed instead of
//! stdout (which then carries only `ready`, ignored); a warm container is ready once it has
//! polled, and is retired after its idle lifetime; the loop runs until both the attach stream
//! (the container's exit) and the feed (the report) ended, with a grace for the other once one
//! has, and `Exited` still comes last.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use polydev_protocol::{ApiKey, Event};
use tokio::io::ReadHalf;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::super::pool::DeathNotice;
use super::super::{BackendError, ExitInfo, InstanceOutput};
use super::api::{AttachStream, ContainerState};
use super::pull::PullLink;
use super::stream::{AttachReader, Line, Tail};
use super::{Common, ContainerGuard};
use crate::backend::text::{garbage_text, line_output, parse_event, render_tail};

/// What a claimed warm container's supervisor needs.
pub(super) struct Claim {
    pub out: mpsc::Sender<InstanceOutput>,
    pub cancel: oneshot::Receiver<()>,
    pub key: ApiKey,
    /// Fired at the runtime's first output line, or when it ended without output but the job
    /// itself is the likely cause (out of memory) or `retry_if_silent` is unset; dropped
    /// unfired otherwise, so that the launch gives the job to another instance.
    pub accepted: oneshot::Sender<()>,
    pub retry_if_silent: bool,
}

/// How the pre-claim phase of a warm container ended, when it did not end with a claim.
enum NotClaimed {
    /// The pool dropped it (resize, close, or its start was abandoned).
    Released,
    Shutdown,
    /// Pull mode: it waited its whole idle lifetime (its token is about to expire).
    Retired,
    /// It failed before or while idle (exited, garbage, no `ready` in time).
    Failed(String),
}

pub(super) struct Supervisor {
    common: Arc<Common>,
    guard: ContainerGuard,
    reader: AttachReader<ReadHalf<AttachStream>>,
    stream_open: bool,
    shutdown: watch::Receiver<bool>,
    shutdown_seen: bool,
    /// When SIGTERM was sent.
    term_sent: Option<Instant>,
    /// When SIGKILL was sent.
    killed_at: Option<Instant>,
    /// Operator notes for `ExitInfo::detail`.
    notes: Vec<String>,
    /// The job's credential, for redaction only.
    pub key: Option<ApiKey>,
    /// A claimed warm container: tell `launch` about the first output line.
    accepted: Option<oneshot::Sender<()>>,
    /// A silent death of this claimed container lets the launch retry elsewhere.
    retry_if_silent: bool,
    /// Pull mode: the container's registry slot, token and event feed.
    pub pull: Option<PullLink>,
}

impl Supervisor {
    pub(super) fn new(
        common: Arc<Common>,
        guard: ContainerGuard,
        reader: AttachReader<ReadHalf<AttachStream>>,
    ) -> Supervisor {
        let shutdown = common.shutdown.subscribe();
        Supervisor {
            common,
            guard,
            reader,
            stream_open: true,
            shutdown,
            shutdown_seen: false,
            term_sent: None,
            killed_at: None,
            notes: Vec::new(),
            key: None,
            accepted: None,
            retry_if_silent: false,
            pull: None,
        }
    }

    /// Pull mode: the event feed is still open.
    fn feed_open(&self) -> bool {
        self.pull.as_ref().is_some_and(|p| p.feed_open)
    }

    fn grace(&self) -> Duration {
        self.common.config.cancel_grace
    }

    /// SIGTERM, once. Sent from its own task: a slow engine must not stall the output.
    fn terminate(&mut self, why: &str) {
        if self.term_sent.is_some() || !self.stream_open {
            return;
        }
        self.term_sent = Some(Instant::now());
        self.notes.push(format!("terminated ({why})"));
        self.signal("SIGTERM");
    }

    /// SIGKILL, once.
    fn kill(&mut self, why: &str) {
        if self.killed_at.is_some() || !self.stream_open {
            return;
        }
        self.killed_at = Some(Instant::now());
        self.notes.push(format!("killed ({why})"));
        self.signal("SIGKILL");
    }

    fn signal(&self, signal: &'static str) {
        let docker = self.common.docker.clone();
        let target = self.guard.target().to_owned();
        tokio::spawn(async move {
            if let Err(e) = docker.kill(&target, signal).await {
                tracing::debug!(container = %target, signal, error = %e,
                    "docker backend: signalling the container failed");
            }
        });
    }

    /// A warm container before its claim: wait for `ready`, report it, then wait for a claim
    /// while watching for death; then run (or remove) it.
    pub(super) async fn warm(
        mut self,
        ready: oneshot::Sender<Result<(), BackendError>>,
        mut claim_rx: oneshot::Receiver<Claim>,
        alive: Arc<AtomicBool>,
        notice: DeathNotice,
    ) {
        let deadline = Instant::now() + self.common.config.ready_timeout;
        let mut ready = Some(ready);
        // Pull mode: "ready" means it has polled the runtime API (so it can reach the
        // controller and its token works), not that it printed `ready`. Once idle, it waits at
        // most its idle lifetime, within which its token stays valid.
        let pull_mode = self.pull.is_some();
        let mut polled = self.pull.as_mut().and_then(|p| p.polled.take());
        let max_idle = self.common.pull.as_ref().map(|p| p.max_idle);
        let mut idle_until: Option<Instant> = None;
        let outcome: Result<Claim, NotClaimed> = loop {
            let waiting_ready = ready.is_some();
            let waiting_poll = waiting_ready && polled.is_some();
            tokio::select! {
                biased;
                c = &mut claim_rx => break c.map_err(|_| NotClaimed::Released),
                _ = shutdown_signalled(&mut self.shutdown), if !self.shutdown_seen => {
                    self.shutdown_seen = true;
                    break Err(NotClaimed::Shutdown);
                }
                _ = tokio::time::sleep_until(deadline), if waiting_ready => {
                    let what = if pull_mode { "no poll of the runtime API in time (can it reach the controller?)" } else { "no ready event in time" };
                    break Err(NotClaimed::Failed(what.into()));
                }
                r = recv_polled(&mut polled), if waiting_poll => {
                    polled = None;
                    // An error means the slot is gone: the stream's end says why.
                    if r.is_ok() {
                        idle_until = max_idle.map(|d| Instant::now() + d);
                        if let Some(tx) = ready.take()
                            && tx.send(Ok(())).is_err()
                        {
                            break Err(NotClaimed::Released);
                        }
                    }
                }
                _ = sleep_opt(idle_until), if !waiting_ready && idle_until.is_some() => {
                    break Err(NotClaimed::Retired);
                }
                line = self.reader.next() => match line {
                    Ok(Line::Data(bytes)) => {
                        let parsed = parse_event(&bytes);
                        if matches!(parsed, Ok(Some(Event::Ready))) {
                            // Pull mode: readiness is the first poll, above.
                            if !pull_mode
                                && let Some(tx) = ready.take()
                                && tx.send(Ok(())).is_err()
                            {
                                break Err(NotClaimed::Released);
                            }
                        } else if !matches!(parsed, Ok(None)) {
                            let text = garbage_text(&bytes, None);
                            tracing::warn!(container = %self.guard.name(), line = %text,
                                "docker backend: unexpected output from an idle warm runtime");
                            break Err(NotClaimed::Failed(format!("unexpected output: {text}")));
                        }
                    }
                    Ok(Line::TooLong) => {
                        break Err(NotClaimed::Failed("over-long output line".into()));
                    }
                    Ok(Line::Eof) => {
                        self.stream_open = false;
                        break Err(NotClaimed::Failed("the container exited".into()));
                    }
                    Err(e) => {
                        self.stream_open = false;
                        break Err(NotClaimed::Failed(format!("attach stream: {e}")));
                    }
                },
            }
        };
        let outcome = match outcome {
            Ok(claim) => Ok(claim),
            Err(why) => {
                // Make the pool see this instance as dead first, then take a claim that may
                // have raced with this decision: it must still get its `Exited`.
                alive.store(false, Ordering::Release);
                claim_rx.close();
                match claim_rx.try_recv() {
                    Ok(claim) => Ok(claim),
                    Err(_) => Err(why),
                }
            }
        };
        match outcome {
            Ok(claim) => {
                self.key = Some(claim.key);
                self.accepted = Some(claim.accepted);
                self.retry_if_silent = claim.retry_if_silent;
                self.run(Some(claim.out), Some(claim.cancel)).await;
            }
            Err(why) => {
                let reason = match why {
                    NotClaimed::Released => "released".to_owned(),
                    NotClaimed::Shutdown => "shutdown".to_owned(),
                    NotClaimed::Retired => {
                        notice.notify();
                        "idle lifetime over".to_owned()
                    }
                    NotClaimed::Failed(why) => {
                        let tail = self.reader.take_tail();
                        let stderr = render_tail(tail, None, 300);
                        let why = if stderr.is_empty() {
                            why
                        } else {
                            format!("{why}; stderr: {stderr}")
                        };
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(Err(BackendError::Launch(format!(
                                "the warm runtime failed to start: {why}"
                            ))));
                        } else {
                            tracing::info!(container = %self.guard.name(), %why,
                                "docker backend: an idle warm runtime died; replacing it");
                            notice.notify();
                        }
                        why
                    }
                };
                tracing::debug!(container = %self.guard.name(), %reason,
                    "docker backend: warm container leaves the pool");
                // An idle runtime holds no upstream connection and no job: SIGKILL and remove.
                // (Pull mode: its token and slot go first.)
                if let Some(pull) = &mut self.pull {
                    pull.revoke();
                }
                self.guard.remove_logged().await;
            }
        }
    }

    /// Forwards output (when `out` is set) until the attach stream ends, handling cancel,
    /// shutdown, a dropped receiver and the kill timer; then collects the exit, removes the
    /// container and sends `Exited`.
    pub(super) async fn run(
        mut self,
        mut out: Option<mpsc::Sender<InstanceOutput>>,
        mut cancel: Option<oneshot::Receiver<()>>,
    ) {
        let grace = self.grace();
        let max_line = self.common.config.max_line_bytes;
        // Look at the shutdown flag afresh: a warm container claimed in a race with shutdown
        // must still be stopped.
        self.shutdown_seen = false;
        let mut pending: Option<InstanceOutput> = None;
        // After an over-long line: the rest of the output is not trusted.
        let mut discard = false;
        let pull_mode = self.pull.is_some();
        // Pull mode: when the stream (the container) and the feed (the report) ended.
        let mut stream_end: Option<Instant> = None;
        let mut feed_end: Option<Instant> = None;
        while self.stream_open || self.feed_open() {
            let kill_at = self.term_sent.map(|t| t + grace);
            // A stream still open well after SIGKILL: the engine lost track; stop reading.
            let give_up_at = self.killed_at.map(|t| t + grace * 2);
            // Pull mode: a report still open after the container exited is cut off; a
            // container still running after its report ended is stopped.
            let feed_give_up_at = stream_end.map(|t| t + grace);
            let linger_at = feed_end.map(|t| t + grace);
            let feed_open = self.feed_open();
            tokio::select! {
                biased;
                r = recv_cancel(&mut cancel) => {
                    cancel = None;
                    // A dropped handle is not a cancel: the output receiver decides.
                    if r.is_ok() {
                        self.terminate("cancelled");
                    }
                }
                _ = shutdown_signalled(&mut self.shutdown), if !self.shutdown_seen => {
                    self.shutdown_seen = true;
                    if self.common.detaching.load(Ordering::SeqCst)
                        && self.stream_open
                        && self.feed_open()
                        && out.is_some()
                        && self.term_sent.is_none()
                        && self.pull.as_ref().is_some_and(PullLink::is_handed)
                    {
                        // Detach: the container keeps its job (its report has not ended)
                        // and reports to the next controller, which adopts it. No signal, no removal, no `Exited`;
                        // its token file stays (the runtime re-reads it).
                        tracing::info!(container = %self.guard.name(),
                            "docker backend: detaching from a running pull-mode container");
                        if let Some(pull) = &mut self.pull {
                            pull.release();
                        }
                        self.guard.release();
                        return;
                    }
                    self.terminate("shutdown");
                }
                _ = sleep_opt(kill_at), if self.killed_at.is_none() => {
                    self.kill(&format!("still running {grace:?} after SIGTERM"));
                }
                _ = sleep_opt(give_up_at), if self.stream_open => {
                    self.notes.push("the attach stream stayed open after SIGKILL".into());
                    self.stream_open = false;
                    stream_end = Some(Instant::now());
                }
                _ = sleep_opt(feed_give_up_at), if feed_open => {
                    if let Some(pull) = &mut self.pull {
                        pull.close_feed();
                    }
                    self.notes.push("event report still open after the container exited".into());
                }
                _ = sleep_opt(linger_at), if self.stream_open && self.term_sent.is_none() => {
                    self.terminate("still running after its report ended");
                }
                // Pull mode: the events the runtime reports over the runtime API.
                item = recv_feed(&mut self.pull), if feed_open && pending.is_none() => match item {
                    Some(item) => {
                        if !discard && out.is_some() {
                            pending = Some(item);
                        }
                    }
                    None => {
                        if let Some(pull) = &mut self.pull {
                            pull.close_feed();
                        }
                        feed_end = Some(Instant::now());
                    }
                },
                open = has_capacity(&out), if pending.is_some() => match (open, &out, pending.take()) {
                    (true, Some(tx), Some(item)) => {
                        // This task is the channel's only sender: the capacity is still there.
                        if let Err(mpsc::error::TrySendError::Full(item)) = tx.try_send(item) {
                            pending = Some(item);
                        }
                    }
                    _ => {
                        out = None;
                        self.terminate("output dropped");
                    }
                },
                _ = closed(&out), if pending.is_none() => {
                    out = None;
                    self.terminate("output dropped");
                }
                line = self.reader.next(), if self.stream_open && pending.is_none() => match line {
                    Ok(Line::Data(bytes)) => {
                        if let Some(accepted) = self.accepted.take() {
                            let _ = accepted.send(());
                        }
                        // Pull mode: stdout carries only `ready`; events come from the feed.
                        if discard || out.is_none() || pull_mode {
                            continue;
                        }
                        pending = line_output(&bytes, self.key.as_ref());
                    }
                    Ok(Line::TooLong) => {
                        if let Some(accepted) = self.accepted.take() {
                            let _ = accepted.send(());
                        }
                        if !discard && out.is_some() {
                            pending = Some(InstanceOutput::Garbage(format!(
                                "output line longer than {max_line} bytes"
                            )));
                        }
                        discard = true;
                        self.kill("output line too long");
                    }
                    Ok(Line::Eof) => {
                        self.stream_open = false;
                        stream_end = Some(Instant::now());
                        // Pull mode: the container is gone, so no new request may come from it;
                        // a report in progress keeps its own end of the feed.
                        if let Some(pull) = &mut self.pull {
                            pull.revoke();
                        }
                    }
                    Err(e) => {
                        self.notes.push(format!("attach stream: {e}"));
                        self.stream_open = false;
                        stream_end = Some(Instant::now());
                    }
                },
            }
        }
        if let (Some(tx), Some(item)) = (&out, pending.take()) {
            let _ = tx.send(item).await;
        }
        let (info, oom) = self.finish().await;
        // Pull mode: the container is gone; so are its token and slot.
        if let Some(pull) = &mut self.pull {
            pull.revoke();
        }
        if (oom || !self.retry_if_silent)
            && let Some(accepted) = self.accepted.take()
        {
            // Killed for memory right after taking the job: the job is the likely cause, so
            // giving it to another instance would only repeat this. Report it instead.
            let _ = accepted.send(());
        }
        // Dropping an unfired `accepted` here tells a warm launch to try the next instance.
        drop(self.accepted.take());
        if let Some(tx) = out {
            // The receiver may be gone; then nobody needs it.
            let _ = tx.send(InstanceOutput::Exited(info)).await;
        }
    }

    /// The stream has ended: the exit code (`wait`), the state (`inspect`), removal. Returns
    /// the exit info and whether the container was killed for memory.
    async fn finish(&mut self) -> (ExitInfo, bool) {
        let docker = self.common.docker.clone();
        let target = self.guard.target().to_owned();
        let grace = self.grace().max(Duration::from_secs(1));
        let mut code = match docker.wait(&target, grace).await {
            Ok(code) => Some(code),
            Err(e) => {
                // Still running with its stream gone (an engine hiccup), or the engine is in
                // trouble: make sure it is stopped.
                self.notes.push(format!("waiting for the exit: {e}"));
                let _ = docker.kill(&target, "SIGKILL").await;
                docker
                    .wait(&target, self.common.config.api_timeout)
                    .await
                    .ok()
            }
        };
        let state = match docker.inspect_state(&target).await {
            Ok(s) => Some(s),
            Err(e) => {
                self.notes.push(format!("inspecting the container: {e}"));
                None
            }
        };
        if code.is_none() {
            code = state.as_ref().filter(|s| !s.running).map(|s| s.exit_code);
        }
        self.guard.remove_logged().await;
        let tail = self.reader.take_tail();
        let memory = self.common.config.memory_bytes;
        let notes = std::mem::take(&mut self.notes);
        let ending = Ending {
            code,
            state: state.as_ref(),
            we_killed: self.killed_at.is_some(),
            notes,
            tail,
        };
        exit_info(
            ending,
            self.key.as_ref(),
            memory,
            self.common.config.max_stderr_bytes,
        )
    }
}

/// What the engine and the stream said about a container's end.
#[derive(Debug, Default)]
struct Ending<'a> {
    /// From `wait` (or the inspected state).
    code: Option<i64>,
    state: Option<&'a ContainerState>,
    /// This supervisor sent SIGKILL.
    we_killed: bool,
    notes: Vec<String>,
    tail: Tail,
}

/// The exit as the driver sees it. Docker reports a signal death of PID 1 as `128 + signal`;
/// the runtime's own codes are 0, 64-77 and 130 (`cancelled`), so 129-159 other than 130 are
/// read as signals. An OOM kill the engine reports (`State.OOMKilled`) is said so first in
/// `detail`, which the driver turns into "ran out of memory". Some engines cannot see OOM
/// kills (cgroup v1 without working OOM notifications: the kernel kills, the engine reports a
/// plain exit 137), so a SIGKILL the controller did not send is described as either.
fn exit_info(
    ending: Ending<'_>,
    key: Option<&ApiKey>,
    memory_bytes: u64,
    max_stderr: usize,
) -> (ExitInfo, bool) {
    let Ending {
        code,
        state,
        we_killed,
        mut notes,
        tail,
    } = ending;
    let oom = state.is_some_and(|s| s.oom_killed);
    let code = code.map(|c| i32::try_from(c).unwrap_or(i32::MAX));
    let (code, signal) = match code {
        Some(c) if (129..=159).contains(&c) && c != 130 => (None, Some(c - 128)),
        other => (other, None),
    };
    let signal = if oom { signal.or(Some(9)) } else { signal };
    if oom {
        notes.insert(
            0,
            format!(
                "OOMKilled: out of memory at the container's {} MiB limit (POLYDEV_DOCKER_MEMORY)",
                memory_bytes / (1024 * 1024)
            ),
        );
    }
    if signal == Some(9) && !oom && !we_killed {
        // Only `ExitInfo::oom_killed` makes the driver say "out of memory" for certain.
        notes.push(format!(
            "SIGKILL not sent by the controller: docker kill from outside, or the kernel at the {} MiB memory limit (the engine reported no memory kill)",
            memory_bytes / (1024 * 1024)
        ));
    }
    if let Some(s) = state
        && !s.error.is_empty()
    {
        notes.push(format!("engine: {}", s.error));
    }
    if code != Some(0) {
        let text = render_tail(tail, key, max_stderr);
        if !text.is_empty() {
            notes.push(format!("stderr: {text}"));
        }
    }
    let info = ExitInfo {
        code,
        signal,
        detail: (!notes.is_empty()).then(|| notes.join("; ")),
        oom_killed: oom,
    };
    (info, oom)
}

async fn recv_cancel(
    cancel: &mut Option<oneshot::Receiver<()>>,
) -> Result<(), oneshot::error::RecvError> {
    match cancel {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

async fn recv_feed(pull: &mut Option<PullLink>) -> Option<InstanceOutput> {
    match pull {
        Some(p) if p.feed_open => p.recv().await,
        _ => std::future::pending().await,
    }
}

async fn recv_polled(
    polled: &mut Option<oneshot::Receiver<()>>,
) -> Result<(), oneshot::error::RecvError> {
    match polled {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits until the channel can take one item: `true`, or `false` if the receiver is gone.
async fn has_capacity<T>(out: &Option<mpsc::Sender<T>>) -> bool {
    match out {
        Some(tx) => tx.reserve().await.is_ok(),
        None => false,
    }
}

async fn closed<T>(out: &Option<mpsc::Sender<T>>) {
    match out {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}

async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        // The backend is gone without a shutdown; nothing will ever signal.
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(oom: bool, code: i64) -> ContainerState {
        ContainerState {
            status: "exited".into(),
            running: false,
            oom_killed: oom,
            exit_code: code,
            error: String::new(),
        }
    }

    #[test]
    fn exit_codes_map_to_signals_and_oom() {
        let ok = state(false, 0);
        let ending = |code: i64, state, we_killed, notes: Vec<String>| Ending {
            code: Some(code),
            state,
            we_killed,
            notes,
            tail: Tail::default(),
        };
        let (i, oom) = exit_info(ending(0, Some(&ok), false, vec![]), None, 32 << 20, 100);
        assert_eq!(
            (i.code, i.signal, i.detail, oom),
            (Some(0), None, None, false)
        );
        let (i, _) = exit_info(ending(130, None, false, vec![]), None, 1, 100);
        assert_eq!((i.code, i.signal), (Some(130), None));
        let (i, _) = exit_info(ending(137, None, false, vec![]), None, 6 << 20, 100);
        assert_eq!((i.code, i.signal), (None, Some(9)));
        // An unexplained SIGKILL must not read as a certain OOM to the driver.
        let detail = i.detail.unwrap().to_ascii_lowercase();
        assert!(detail.contains("not sent by the controller"), "{detail}");
        assert!(
            !detail.contains("oom") && !detail.contains("out of memory"),
            "{detail}"
        );
        let (i, _) = exit_info(ending(137, None, true, vec![]), None, 1, 100);
        assert_eq!((i.signal, i.detail), (Some(9), None));
        let killed = state(true, 137);
        let notes = vec!["terminated (cancelled)".to_owned()];
        let (i, oom) = exit_info(ending(137, Some(&killed), false, notes), None, 6 << 20, 100);
        assert!(oom);
        assert_eq!(i.signal, Some(9));
        let detail = i.detail.unwrap();
        assert!(detail.starts_with("OOMKilled: out of memory at the container's 6 MiB limit"));
        assert!(detail.to_ascii_lowercase().contains("oom"), "{detail}");
    }

    #[test]
    fn the_stderr_tail_is_redacted() {
        let key = ApiKey::new("sk-SECRET");
        let ending = Ending {
            code: Some(64),
            tail: Tail {
                bytes: b"error: sk-SECRET rejected".to_vec(),
                truncated: false,
            },
            ..Ending::default()
        };
        let (i, _) = exit_info(ending, Some(&key), 1, 100);
        assert_eq!(
            i.detail.as_deref(),
            Some("stderr: error: [REDACTED] rejected")
        );
    }
}
