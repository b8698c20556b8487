//! Runs one execution: `start`, the provider's stream as `text` / `reasoning` events, usage,
//! and exactly one terminal event, under the timeout, retry and cancel rules of DESIGN.md 4.3.
//!
//! Retries happen only before any output was emitted, only for retryable failures, honour the
//! provider's retry hint, and are capped in attempts and total waiting. A stream that ends
//! without its terminator, stalls, or breaks its format is an error, never a silent success.

use std::time::Duration;

use crate::transport::UpstreamBody;
use bytes::Bytes;
use http_body_util::BodyExt;
use polydev_protocol::{ErrorEvent, ErrorKind, Event, Job, Usage};
use polydev_providers::{Finish, StreamParser};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{ResolvedTimeouts, RetryPolicy};
use crate::output::Output;
use crate::transport::{Transport, TransportError};

/// Bytes of an error response body we read to find the provider's message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Backoff between retries without a hint: 500 ms doubling, capped at 8 s.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(8);

/// What one execution needs besides the job.
pub struct Plan<'a> {
    pub job: &'a Job,
    pub execution_id: String,
    pub user_id: String,
    pub model: String,
    pub base_url: String,
    pub timeouts: ResolvedTimeouts,
    pub retry: RetryPolicy,
    pub limits: polydev_sse::Limits,
}

/// How an execution ended, for the exit code.
pub enum Outcome {
    /// A terminal event was emitted.
    Terminal(Event),
    /// Stdout closed under us: nobody is listening; stop quietly.
    OutputClosed,
}

/// A cancel request: SIGTERM / SIGINT flip the watch to `true`.
pub type Cancel = watch::Receiver<bool>;

async fn cancelled(cancel: &mut Cancel) {
    // An Err means the sender is gone, which only happens at shutdown: treat as cancel.
    let _ = cancel.wait_for(|c| *c).await;
}

enum AttemptEnd {
    Finished(Finish),
    Failed(ErrorEvent),
    Cancelled,
    OutputClosed,
}

struct Run<'a, W: std::io::Write> {
    plan: &'a Plan<'a>,
    transport: &'a Transport,
    out: &'a mut Output<W>,
    total_deadline: Instant,
    first_output: Option<Instant>,
    usage: Option<Usage>,
    events: Vec<Event>,
}

/// Runs the plan to its terminal event, writing every event to `out`.
pub async fn run<W: std::io::Write>(
    plan: &Plan<'_>,
    transport: &Transport,
    out: &mut Output<W>,
    cancel: &mut Cancel,
) -> Outcome {
    let started = Instant::now();
    let mut run = Run {
        plan,
        transport,
        out,
        total_deadline: started + plan.timeouts.total,
        first_output: None,
        usage: None,
        events: Vec::new(),
    };
    let start = Event::Start {
        execution_id: plan.execution_id.clone(),
        user_id: plan.user_id.clone(),
        provider: plan.job.provider,
        model: plan.model.clone(),
    };
    if run.out.emit(&start).is_err() {
        return Outcome::OutputClosed;
    }
    let end = run.attempts(cancel).await;
    let terminal = match end {
        AttemptEnd::OutputClosed => return Outcome::OutputClosed,
        AttemptEnd::Finished(f) => Event::End {
            finish_reason: f.finish_reason,
            raw_finish_reason: f.raw_finish_reason,
            ttft_ms: run.first_output.map(|t| millis(t - started)),
            duration_ms: millis(started.elapsed()),
        },
        AttemptEnd::Failed(mut e) => {
            e.partial = run.first_output.is_some();
            Event::Error(e)
        }
        AttemptEnd::Cancelled => {
            let mut e = ErrorEvent::new(ErrorKind::Cancelled, "cancelled before completion");
            e.partial = run.first_output.is_some();
            Event::Error(e)
        }
    };
    if let Some(usage) = run.usage.take()
        && run.out.emit(&Event::Usage(usage)).is_err()
    {
        return Outcome::OutputClosed;
    }
    if run.out.emit(&terminal).is_err() {
        return Outcome::OutputClosed;
    }
    Outcome::Terminal(terminal)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<W: std::io::Write> Run<'_, W> {
    async fn attempts(&mut self, cancel: &mut Cancel) -> AttemptEnd {
        let mut waited = Duration::ZERO;
        let mut attempt = 1;
        loop {
            let end = self.attempt(cancel).await;
            let AttemptEnd::Failed(err) = end else {
                return end;
            };
            if self.first_output.is_some()
                || !err.retryable
                || attempt >= self.plan.retry.max_attempts
            {
                return AttemptEnd::Failed(err);
            }
            let delay = match err.retry_after_ms {
                Some(ms) => Duration::from_millis(ms),
                None => backoff(attempt),
            };
            let budget_left = self.plan.retry.max_total_wait.saturating_sub(waited);
            if delay > budget_left || Instant::now() + delay >= self.total_deadline {
                // The provider asks for longer than we may wait: report its hint at once.
                return AttemptEnd::Failed(err);
            }
            crate::output::diag(&format!(
                "attempt {attempt} failed ({}: {}); retrying in {} ms",
                err.kind,
                err.message,
                delay.as_millis()
            ));
            tokio::select! {
                biased;
                _ = cancelled(cancel) => return AttemptEnd::Cancelled,
                _ = tokio::time::sleep(delay) => {}
            }
            waited += delay;
            attempt += 1;
        }
    }

    async fn attempt(&mut self, cancel: &mut Cancel) -> AttemptEnd {
        let plan = self.plan;
        let request = match polydev_providers::build_request(plan.job, &plan.model, &plan.base_url)
        {
            Ok(r) => r,
            Err(e) => return AttemptEnd::Failed(ErrorEvent::new(ErrorKind::Config, e.to_string())),
        };
        let attempt_start = Instant::now();
        let first_token_deadline = attempt_start + plan.timeouts.first_token;
        let head_deadline = first_token_deadline.min(self.total_deadline);

        let sent = tokio::select! {
            biased;
            _ = cancelled(cancel) => return AttemptEnd::Cancelled,
            r = tokio::time::timeout_at(head_deadline, self.transport.send(request, plan.timeouts.connect)) => r,
        };
        let response = match sent {
            Err(_) => return AttemptEnd::Failed(self.timeout_error(head_deadline, attempt_start)),
            Ok(Err(e)) => return AttemptEnd::Failed(transport_error(e)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = tokio::select! {
                biased;
                _ = cancelled(cancel) => return AttemptEnd::Cancelled,
                b = read_bounded(&mut body, MAX_ERROR_BODY, Instant::now() + plan.timeouts.idle) => b,
            };
            drop(body);
            let key = &plan.job.credentials.api_key;
            let err =
                polydev_providers::map_http_error(plan.job.provider, status, &headers, &bytes, key);
            return AttemptEnd::Failed(err);
        }

        let key = &plan.job.credentials.api_key;
        let mut parser = StreamParser::for_job(plan.job, &plan.model, plan.limits);
        let mut last_activity = Instant::now();
        // One timer for the whole stream, checked lazily: it is armed for the deadline as it
        // was, and when it fires, activity since then may have moved the deadline, so it is
        // re-armed instead of failing. Resetting a timer on every chunk would cost a timer
        // wheel update per token.
        let timer = tokio::time::sleep_until(self.deadline(last_activity, first_token_deadline));
        tokio::pin!(timer);
        let cancel_wait = cancelled(cancel);
        tokio::pin!(cancel_wait);
        let end = loop {
            let frame = tokio::select! {
                biased;
                _ = &mut cancel_wait => break AttemptEnd::Cancelled,
                f = body.frame() => Ok(f),
                () = &mut timer => {
                    let deadline = self.deadline(last_activity, first_token_deadline);
                    if Instant::now() < deadline {
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    Err(deadline)
                }
            };
            self.events.clear();
            let step = match frame {
                Err(deadline) => {
                    break AttemptEnd::Failed(self.timeout_error(deadline, attempt_start));
                }
                Ok(None) => match parser.finish(&mut self.events) {
                    Ok(f) => Ok(Some(f)),
                    Err(e) => Err(e.redacted(key).into()),
                },
                Ok(Some(Err(e))) => Err(ErrorEvent {
                    retryable: true,
                    ..ErrorEvent::new(
                        ErrorKind::Upstream,
                        format!("the connection broke mid-stream: {e}"),
                    )
                }),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        last_activity = Instant::now();
                        parser
                            .feed(&data, &mut self.events)
                            .map_err(|e| e.redacted(key).into())
                    }
                    // Trailers carry nothing we use.
                    Err(_) => Ok(None),
                },
            };
            if let Some(u) = parser.usage() {
                self.usage = Some(u);
            }
            if !self.emit_pending() {
                break AttemptEnd::OutputClosed;
            }
            match step {
                Ok(None) => {}
                Ok(Some(finish)) => break AttemptEnd::Finished(finish),
                Err(e) => break AttemptEnd::Failed(e),
            }
        };
        // Dropping the body (it owns the connection) closes the upstream socket (also on
        // cancel).
        drop(body);
        end
    }

    /// The stream's deadline: idle since the last activity, total, and first token until the
    /// first output.
    fn deadline(&self, last_activity: Instant, first_token_deadline: Instant) -> Instant {
        let deadline = (last_activity + self.plan.timeouts.idle).min(self.total_deadline);
        if self.first_output.is_none() {
            deadline.min(first_token_deadline)
        } else {
            deadline
        }
    }

    /// Writes the events the parser produced (one write for all of them); false if stdout is
    /// gone.
    fn emit_pending(&mut self) -> bool {
        if self.events.is_empty() {
            return true;
        }
        if self.first_output.is_none() && self.events.iter().any(|ev| ev.is_output()) {
            self.first_output = Some(Instant::now());
        }
        self.out.emit_all(&self.events).is_ok()
    }

    /// Names the timeout that expired at `deadline`.
    fn timeout_error(&self, deadline: Instant, attempt_start: Instant) -> ErrorEvent {
        let t = &self.plan.timeouts;
        let (what, limit, retryable) = if deadline >= self.total_deadline {
            ("total", t.total, false)
        } else if self.first_output.is_none() && deadline == attempt_start + t.first_token {
            ("first token", t.first_token, true)
        } else {
            ("idle", t.idle, true)
        };
        ErrorEvent {
            retryable,
            ..ErrorEvent::new(
                ErrorKind::Timeout,
                format!("{what} timeout: nothing within {} ms", limit.as_millis()),
            )
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(BACKOFF_CAP);
    // Up to 25% jitter so that many runtimes retrying together spread out; the clock's
    // sub-microsecond noise is random enough for that.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = capped.mul_f64(f64::from(nanos % 1000) / 4000.0);
    capped.saturating_sub(jitter)
}

fn transport_error(e: TransportError) -> ErrorEvent {
    let (kind, retryable) = match &e {
        TransportError::ConnectTimeout { .. } => (ErrorKind::Timeout, true),
        TransportError::InvalidUrl(_) | TransportError::CaCerts(_) => (ErrorKind::Config, false),
        // An untrusted certificate will not become trusted by retrying.
        TransportError::Tls { .. } => (ErrorKind::Upstream, false),
        TransportError::Dns { .. } | TransportError::Connect { .. } | TransportError::Http(_) => {
            (ErrorKind::Upstream, true)
        }
    };
    ErrorEvent {
        retryable,
        ..ErrorEvent::new(kind, e.to_string())
    }
}

/// Reads at most `limit` bytes of a body, stopping early at the deadline.
async fn read_bounded(body: &mut UpstreamBody, limit: usize, deadline: Instant) -> Bytes {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(limit - buf.len());
                    buf.extend_from_slice(&data[..take]);
                }
            }
            _ => break,
        }
    }
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_bounds() {
        for attempt in 1..40 {
            let d = backoff(attempt);
            let nominal = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_CAP);
            assert!(
                d <= nominal && d >= nominal.mul_f64(0.75),
                "{attempt}: {d:?}"
            );
        }
    }
}
