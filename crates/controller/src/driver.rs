//! The execution driver: the one place, for every backend, that takes an admitted execution
//! from its queue slot to its terminal event.
//!
//! It waits for a slot (bounded by the queue wait, cancellable), launches the runtime through
//! the [`Backend`](crate::backend::Backend), logs the runtime's events in order, and guarantees
//! that every execution ends exactly once with a recorded outcome, whatever the runtime does:
//! if it exits without a terminal event (a crash, an OOM kill, a cancel it did not report), the
//! driver synthesizes one; if it hangs after a cancel, the driver ends the execution itself
//! after `cancel_wait`; if it runs past `max_execution_time`, it is cancelled as a `timeout`;
//! if its output would exceed the event log bound, it is stopped with an error. Lines that are
//! not events are counted and logged with the credential masked, never forwarded.

use std::sync::Arc;
use std::time::Duration;

use polydev_protocol::{ApiKey, ErrorEvent, ErrorKind, Event, Job};
use tokio::time::{Instant, sleep_until};

use crate::backend::{BackendError, ExitInfo, Instance, InstanceOutput, InstanceRecord};
use crate::controller::Shared;
use crate::execution::{Appended, CancelReason, Execution};
use crate::policy::redact_line;
use crate::scheduler::{Admission, Permit};

/// Why the driver asked the runtime to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancel(CancelReason),
    /// `max_execution_time` passed.
    Deadline,
    /// The runtime reported its terminal event but did not exit.
    Linger,
    /// The output exceeded the event log bound (the execution has already ended).
    Overflow,
    /// The runtime sent nothing for longer than its own timeouts allow: it is hung.
    Silent(Duration),
    /// An adopted execution's runtime did not come back within the reattach grace.
    NotBack(Duration),
}

/// Ends the execution if the driver stops without having ended it (a bug or a panic): the
/// exactly-once guarantee must not depend on the happy path.
struct EndGuard {
    shared: Arc<Shared>,
    exec: Arc<Execution>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.exec.is_ended() {
            self.shared.metrics.synthesized_terminal();
            let e = error(
                &self.exec,
                ErrorKind::Internal,
                "the controller lost track of this execution",
            );
            self.shared.end(&self.exec, e);
        }
    }
}

pub(crate) async fn drive(
    shared: Arc<Shared>,
    exec: Arc<Execution>,
    job: Job,
    admission: Admission,
) {
    let _guard = EndGuard {
        shared: Arc::clone(&shared),
        exec: Arc::clone(&exec),
    };
    let permit = match admission {
        Admission::Ready(p) => p,
        Admission::Queued(mut q) => {
            let wait = shared.config.queue_wait;
            tokio::select! {
                p = q.wait() => match p {
                    Some(p) => p,
                    None => {
                        let e = error(
                            &exec,
                            ErrorKind::Interrupted,
                            "the controller shut down before the execution started",
                        );
                        shared.end(&exec, e);
                        return;
                    }
                },
                () = tokio::time::sleep(wait) => {
                    let msg = format!(
                        "no execution slot became free within {} ms: the controller is at capacity",
                        wait.as_millis()
                    );
                    let e = ErrorEvent {
                        retry_after_ms: Some(crate::config::RETRY_AFTER.as_millis() as u64),
                        ..ErrorEvent::new(ErrorKind::Overloaded, msg)
                    };
                    shared.end(&exec, Event::Error(e));
                    return;
                }
                () = exec.cancel_requested() => {
                    let reason = exec.cancel_reason().unwrap_or(CancelReason::Client);
                    let e = stopped_error(&exec, Stop::Cancel(reason), &shared);
                    shared.end(&exec, e);
                    return;
                }
            }
        }
    };
    if let Some(reason) = exec.cancel_reason() {
        let e = stopped_error(&exec, Stop::Cancel(reason), &shared);
        shared.end(&exec, e);
        return;
    }
    exec.mark_running();
    // The record is written once the launch is done (below, with warm or cold): one store
    // write fewer per execution, and not while the claimed runtime heads for its first token.
    let queue_wait = exec.created.elapsed();
    let secret = job.credentials.api_key.clone();
    let instance = match shared.backend.launch(job).await {
        Ok(i) => i,
        Err(e) => {
            shared.metrics.launch_failed();
            tracing::error!(execution_id = %exec.id, error = %e, "cannot launch the runtime");
            let (kind, retryable) = match &e {
                BackendError::ShuttingDown => (ErrorKind::Interrupted, true),
                BackendError::Unavailable(_) => {
                    shared.backend_unavailable();
                    (ErrorKind::Internal, true)
                }
                BackendError::Launch(_) => (ErrorKind::Internal, true),
            };
            let ev = ErrorEvent {
                retryable,
                ..ErrorEvent::new(kind, e.to_string())
            };
            shared.end(&exec, Event::Error(ev));
            return;
        }
    };
    shared.backend_available();
    exec.set_warm(instance.warm);
    shared
        .metrics
        .launched(instance.warm, instance.claim_latency, queue_wait);
    shared.recorded(&exec);
    shared.journal(&exec);
    let deadline = Instant::now() + shared.config.max_execution_time;
    pump(&shared, &exec, instance, &secret, deadline, None).await;
    drop(permit);
}

/// Drives an execution a restarted controller adopted (DESIGN.md 5.2): the backend watches
/// the instance again and the same pump relays what the runtime resends. A runtime that sends
/// nothing within the reattach grace is cancelled and the execution ends `interrupted`.
pub(crate) async fn adopt(
    shared: Arc<Shared>,
    exec: Arc<Execution>,
    record: InstanceRecord,
    permit: Permit,
) {
    let _guard = EndGuard {
        shared: Arc::clone(&shared),
        exec: Arc::clone(&exec),
    };
    let grace = shared.config.reattach_grace;
    let reattach_by = Instant::now() + grace;
    let adopted = shared.backend.adopt(record).await;
    // Its credential is restored (or will never be): unknown credentials are refused again.
    if let Some(api) = shared.backend.runtime_api() {
        api.registry.adoption_settled();
    }
    let instance = match adopted {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(execution_id = %exec.id, error = %e, "cannot adopt the runtime");
            let e = error(
                &exec,
                ErrorKind::Interrupted,
                format!("the controller restarted and could not take this execution back: {e}"),
            );
            shared.end(&exec, e);
            return;
        }
    };
    // The execution limit counts from its original start.
    let left = shared
        .config
        .max_execution_time
        .saturating_sub(exec.running_for());
    let deadline = Instant::now() + left;
    // No key is known here (it never reaches the store); runtime lines are logged unmasked
    // only if they are garbage, and the runtime never echoes the key.
    let secret = ApiKey::new(String::new());
    pump(
        &shared,
        &exec,
        instance,
        &secret,
        deadline,
        Some(reattach_by),
    )
    .await;
    drop(permit);
}

/// Relays the instance's output into the log until the instance is gone.
async fn pump(
    shared: &Arc<Shared>,
    exec: &Arc<Execution>,
    mut instance: Instance,
    secret: &ApiKey,
    deadline: Instant,
    reattach_by: Option<Instant>,
) {
    let cfg = &shared.config;
    let mut deadline = deadline;
    let reattach = reattach_by.map(sleep_until);
    tokio::pin!(reattach);
    let mut stop: Option<Stop> = None;
    let mut kill_at: Option<Instant> = None;
    let mut late_events = 0u64;
    // The silence watchdog: armed by the runtime's first event (a cold start, scheduling and
    // image pulls are the backend's to bound), checked lazily: an event only records the time,
    // and the timer is re-armed when it fires early, never reset per event.
    let mut last_output: Option<Instant> = None;
    let mut streaming = false;
    let silence = sleep_until(deadline);
    tokio::pin!(silence);
    let limit = |streaming: bool| {
        if streaming {
            cfg.runtime_silence.streaming
        } else {
            cfg.runtime_silence.before_output
        }
    };
    // Built once, not per event: a timer made in every turn of the loop would be registered
    // with the timer wheel and removed again for every token.
    let deadline_timer = sleep_until(deadline);
    tokio::pin!(deadline_timer);
    let cancelled = exec.cancel_requested();
    tokio::pin!(cancelled);
    loop {
        if deadline_timer.deadline() != deadline {
            deadline_timer.as_mut().reset(deadline);
        }
        tokio::select! {
            item = instance.output.recv() => match item {
                Some(InstanceOutput::Event(event)) => {
                    let now = Instant::now();
                    if last_output.is_none() {
                        silence.as_mut().reset(now + limit(false));
                    }
                    last_output = Some(now);
                    // Output flows once anything but the runtime's bookkeeping arrives.
                    streaming |= !matches!(event, Event::Ready | Event::Start { .. } | Event::Usage(_));
                    match on_event(shared, exec, event, stop) {
                        Relay::Continue => {}
                        Relay::Ended => {
                            // The runtime exits right after its terminal event; if it lingers,
                            // stop it rather than hold the slot.
                            deadline = deadline.min(Instant::now() + cfg.cancel_wait);
                        }
                        Relay::AfterEnd => late_events += 1,
                        Relay::Overflow => {
                            instance.cancel.cancel();
                            stop = Some(Stop::Overflow);
                            kill_at = Some(Instant::now() + cfg.cancel_wait);
                        }
                    }
                }
                Some(InstanceOutput::Garbage(line)) => {
                    shared.metrics.garbage_line();
                    tracing::warn!(
                        execution_id = %exec.id,
                        line = %redact_line(&line, secret.expose()),
                        "runtime wrote a line that is not an event; ignored"
                    );
                }
                Some(InstanceOutput::Exited(info)) => {
                    if !exec.is_ended() {
                        shared.metrics.synthesized_terminal();
                        // An adopted runtime that is gone before it sent anything never came
                        // back.
                        let not_back = reattach_by.is_some() && last_output.is_none();
                        let e = if not_back {
                            stopped_error(exec, Stop::NotBack(cfg.reattach_grace), shared)
                        } else {
                            exit_error(exec, &info, stop, shared)
                        };
                        let detail = info.detail.as_deref().unwrap_or("");
                        tracing::warn!(
                            execution_id = %exec.id,
                            code = info.code,
                            signal = info.signal,
                            detail = %redact_line(detail, secret.expose()),
                            "runtime exited without a terminal event"
                        );
                        shared.end(exec, e);
                    }
                    break;
                }
                None => {
                    if !exec.is_ended() {
                        shared.metrics.synthesized_terminal();
                        let e = match stop {
                            Some(s) => stopped_error(exec, s, shared),
                            None => {
                                error(exec, ErrorKind::Internal, "the backend lost the runtime")
                            }
                        };
                        shared.end(exec, e);
                    }
                    break;
                }
            },
            // Completes once; `stop` is set then, so it is never polled again.
            () = &mut cancelled, if stop.is_none() && !shared.detached(exec) => {
                let reason = exec.cancel_reason().unwrap_or(CancelReason::Client);
                instance.cancel.cancel();
                stop = Some(Stop::Cancel(reason));
                kill_at = Some(Instant::now() + cfg.cancel_wait);
            }
            () = &mut silence, if stop.is_none() && last_output.is_some() && !exec.is_ended() => {
                let limit = limit(streaming);
                let due = last_output.map_or(deadline, |t| t + limit);
                if Instant::now() >= due {
                    instance.cancel.cancel();
                    stop = Some(Stop::Silent(limit));
                    kill_at = Some(Instant::now() + cfg.cancel_wait);
                } else {
                    silence.as_mut().reset(due);
                }
            }
            // An adopted execution whose runtime has not come back within the grace.
            () = async { if let Some(t) = reattach.as_mut().as_pin_mut() { t.await } },
                if reattach_by.is_some() && last_output.is_none() && stop.is_none() => {
                let s = Stop::NotBack(cfg.reattach_grace);
                tracing::warn!(execution_id = %exec.id, "the adopted execution's runtime did not come back");
                shared.metrics.synthesized_terminal();
                shared.end(exec, stopped_error(exec, s, shared));
                instance.cancel.cancel();
                stop = Some(s);
                kill_at = Some(Instant::now() + cfg.cancel_wait);
            }
            () = &mut deadline_timer, if stop.is_none() => {
                instance.cancel.cancel();
                stop = Some(if exec.is_ended() { Stop::Linger } else { Stop::Deadline });
                kill_at = Some(Instant::now() + cfg.cancel_wait);
            }
            () = sleep_until(kill_at.unwrap_or(deadline)), if kill_at.is_some() => {
                tracing::warn!(
                    execution_id = %exec.id,
                    "runtime did not exit after being stopped; leaving it to the backend"
                );
                if !exec.is_ended() {
                    shared.metrics.synthesized_terminal();
                    let e = stopped_error(exec, stop.unwrap_or(Stop::Deadline), shared);
                    shared.end(exec, e);
                }
                break;
            }
        }
    }
    if late_events > 0 {
        tracing::warn!(
            execution_id = %exec.id,
            late_events,
            "runtime wrote events after its terminal event; ignored"
        );
    }
}

enum Relay {
    Continue,
    Ended,
    AfterEnd,
    Overflow,
}

fn on_event(
    shared: &Arc<Shared>,
    exec: &Arc<Execution>,
    event: Event,
    stop: Option<Stop>,
) -> Relay {
    let event = match event {
        // Warm readiness is the backend's business; `start` was logged at admission.
        Event::Ready => return Relay::Continue,
        Event::Start { model, .. } => {
            if model != exec.model {
                tracing::debug!(
                    execution_id = %exec.id,
                    runtime_model = ?model,
                    "runtime resolved another model"
                );
            }
            return Relay::Continue;
        }
        // A `cancelled` the controller caused is reported with the controller's reason.
        Event::Error(e) if e.kind == ErrorKind::Cancelled => match stop {
            Some(s @ (Stop::Cancel(CancelReason::Shutdown) | Stop::Deadline)) => {
                match stopped_error(exec, s, shared) {
                    Event::Error(mut mine) => {
                        mine.partial = e.partial || mine.partial;
                        Event::Error(mine)
                    }
                    other => other,
                }
            }
            _ => Event::Error(e),
        },
        other => other,
    };
    match exec.append(&event) {
        Appended::Event => Relay::Continue,
        Appended::Terminal => {
            shared.ended(exec);
            Relay::Ended
        }
        Appended::AfterEnd => Relay::AfterEnd,
        Appended::Overflow => {
            let msg = format!(
                "the output exceeded the controller's limit of {} bytes per execution",
                shared.config.max_event_log_bytes
            );
            let e = ErrorEvent {
                partial: exec.output_started(),
                ..ErrorEvent::new(ErrorKind::Protocol, msg)
            };
            shared.end(exec, Event::Error(e));
            Relay::Overflow
        }
    }
}

/// An error event for `exec` with `partial` set from its output so far.
fn error(exec: &Execution, kind: ErrorKind, message: impl Into<String>) -> Event {
    Event::Error(ErrorEvent {
        partial: exec.output_started(),
        ..ErrorEvent::new(kind, message)
    })
}

/// The terminal event of an execution the controller stopped.
fn stopped_error(exec: &Execution, stop: Stop, shared: &Shared) -> Event {
    match stop {
        Stop::Cancel(CancelReason::Client) => error(exec, ErrorKind::Cancelled, "cancelled"),
        Stop::Cancel(CancelReason::Shutdown) => error(
            exec,
            ErrorKind::Interrupted,
            "the controller shut down before the execution finished",
        ),
        Stop::Deadline => error(
            exec,
            ErrorKind::Timeout,
            format!(
                "the execution ran longer than the controller's limit of {} s",
                shared.config.max_execution_time.as_secs()
            ),
        ),
        Stop::Silent(limit) => error(
            exec,
            ErrorKind::Timeout,
            format!(
                "the runtime sent nothing for {} s, longer than its own timeouts allow; it was \
                 stopped as hung",
                limit.as_secs()
            ),
        ),
        Stop::NotBack(grace) => Event::Error(ErrorEvent {
            retryable: true,
            partial: exec.output_started(),
            ..ErrorEvent::new(
                ErrorKind::Interrupted,
                format!(
                    "the controller restarted and this execution's runtime did not come back \
                     within {} s",
                    grace.as_secs()
                ),
            )
        }),
        Stop::Linger | Stop::Overflow => error(
            exec,
            ErrorKind::Internal,
            "the runtime did not exit after its terminal event",
        ),
    }
}

/// The terminal event of a runtime that exited without one.
fn exit_error(exec: &Execution, info: &ExitInfo, stop: Option<Stop>, shared: &Shared) -> Event {
    if let Some(s) = stop {
        return stopped_error(exec, s, shared);
    }
    let (message, retryable) = if info.oom_killed {
        (
            "the runtime was killed because it ran out of memory".to_owned(),
            true,
        )
    } else {
        match (info.signal, info.code) {
            (Some(9), _) => (
                "the runtime was killed (SIGKILL) before it reported a result; it may have run out of memory"
                    .to_owned(),
                true,
            ),
            (Some(sig), _) => (
                format!("the runtime was killed by signal {sig} before it reported a result"),
                true,
            ),
            (None, Some(code)) => (
                format!("the runtime exited with code {code} without reporting a result"),
                false,
            ),
            (None, None) => ("the runtime ended without reporting a result".to_owned(), false),
        }
    };
    // `detail` (a backend's note, such as a stderr tail) is for operators: it is logged by the
    // caller, not shown to clients, since it may name host paths.
    Event::Error(ErrorEvent {
        retryable,
        partial: exec.output_started(),
        ..ErrorEvent::new(ErrorKind::Internal, message)
    })
}
