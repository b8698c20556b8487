//! A scriptable in-memory [`Backend`] for tests of everything above the backend (API,
//! scheduler, driver, shutdown): no processes, deterministic, and observable (how many
//! instances are alive at once, which jobs it got). Not used by the binary.
//!
//! An instance plays its [`Behavior`]: stream a canned answer, follow a script, or wait for the
//! test's [`Control`] messages (complete, crash, emit). Cancel handling is configurable with
//! [`OnCancel`] to imitate a runtime that reports, dies silently, or ignores the request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use polydev_protocol::{ErrorEvent, ErrorKind, Event, FinishReason, Job, Usage};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::backend::{
    Backend, BackendError, CancelHandle, ExitInfo, Instance, InstanceOutput, PoolStatus,
};

/// What an instance does after it starts.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// `tokens` text events (`"tok{i} "`), `delay` apart, then usage, `end` and exit 0.
    Stream { tokens: usize, delay: Duration },
    /// Steps in order, then exit 0 unless a step exited.
    Script(Vec<Step>),
    /// Wait for [`Control`] messages from the test.
    Manual,
}

/// One scripted step.
#[derive(Debug, Clone)]
pub enum Step {
    Event(Event),
    Garbage(String),
    Sleep(Duration),
    /// Exit now with this status (no further steps).
    Exit(ExitInfo),
    /// Continue with [`Control`] messages.
    Manual,
}

/// A test's instruction to a running manual instance.
#[derive(Debug, Clone)]
pub enum Control {
    Event(Event),
    Garbage(String),
    /// Usage, `end`, exit 0.
    Complete,
    /// Exit without a terminal event.
    Crash(ExitInfo),
}

/// What an instance does when cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCancel {
    /// Like the runtime: usage so far, `error{cancelled}`, exit 130.
    Report,
    /// Dies at once without a terminal event (SIGTERM, no handler).
    Die,
    /// Ignores the request and carries on (the driver must end it by itself).
    Ignore,
}

#[derive(Debug)]
struct Inner {
    behavior: Mutex<Behavior>,
    on_cancel: Mutex<OnCancel>,
    fail_next: Mutex<Option<BackendError>>,
    controls: Mutex<HashMap<String, mpsc::UnboundedSender<Control>>>,
    jobs: Mutex<Vec<Job>>,
    live: AtomicUsize,
    peak_live: AtomicUsize,
    launched: AtomicUsize,
    pool_size: AtomicUsize,
    shut_down: AtomicBool,
    stop: CancellationToken,
}

/// The fake backend; cheap to clone (clones share state).
#[derive(Debug, Clone)]
pub struct FakeBackend {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeBackend {
    pub fn new(behavior: Behavior) -> FakeBackend {
        FakeBackend {
            inner: Arc::new(Inner {
                behavior: Mutex::new(behavior),
                on_cancel: Mutex::new(OnCancel::Report),
                fail_next: Mutex::new(None),
                controls: Mutex::new(HashMap::new()),
                jobs: Mutex::new(Vec::new()),
                live: AtomicUsize::new(0),
                peak_live: AtomicUsize::new(0),
                launched: AtomicUsize::new(0),
                pool_size: AtomicUsize::new(0),
                shut_down: AtomicBool::new(false),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// A backend whose instances stream `tokens` tokens `delay` apart.
    pub fn streaming(tokens: usize, delay: Duration) -> FakeBackend {
        FakeBackend::new(Behavior::Stream { tokens, delay })
    }

    pub fn set_behavior(&self, b: Behavior) {
        *lock(&self.inner.behavior) = b;
    }

    pub fn set_on_cancel(&self, c: OnCancel) {
        *lock(&self.inner.on_cancel) = c;
    }

    /// The next launch fails with `e`.
    pub fn fail_next_launch(&self, e: BackendError) {
        *lock(&self.inner.fail_next) = Some(e);
    }

    /// Sends `c` to the manual instance running `execution_id`; false if there is none.
    pub fn control(&self, execution_id: &str, c: Control) -> bool {
        lock(&self.inner.controls)
            .get(execution_id)
            .is_some_and(|tx| tx.send(c).is_ok())
    }

    /// Whether an instance for `execution_id` was launched and has not exited.
    pub fn is_running(&self, execution_id: &str) -> bool {
        lock(&self.inner.controls).contains_key(execution_id)
    }

    /// Instances alive now.
    pub fn live(&self) -> usize {
        self.inner.live.load(Ordering::SeqCst)
    }

    /// Most instances ever alive at once.
    pub fn peak_live(&self) -> usize {
        self.inner.peak_live.load(Ordering::SeqCst)
    }

    pub fn launched(&self) -> usize {
        self.inner.launched.load(Ordering::SeqCst)
    }

    /// The jobs launched so far, in order.
    pub fn jobs(&self) -> Vec<Job> {
        lock(&self.inner.jobs).clone()
    }

    pub fn was_shut_down(&self) -> bool {
        self.inner.shut_down.load(Ordering::SeqCst)
    }
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn launch(&self, job: Job) -> BoxFuture<'_, Result<Instance, BackendError>> {
        Box::pin(async move {
            if let Some(e) = lock(&self.inner.fail_next).take() {
                return Err(e);
            }
            if self.inner.shut_down.load(Ordering::SeqCst) {
                return Err(BackendError::ShuttingDown);
            }
            let id = job.execution_id.clone().unwrap_or_default();
            let behavior = lock(&self.inner.behavior).clone();
            let on_cancel = *lock(&self.inner.on_cancel);
            lock(&self.inner.jobs).push(job.clone());
            let (out_tx, out_rx) = mpsc::channel(64);
            let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
            let (cancel, cancel_rx) = CancelHandle::new();
            lock(&self.inner.controls).insert(id.clone(), ctl_tx);
            let live = self.inner.live.fetch_add(1, Ordering::SeqCst) + 1;
            self.inner.peak_live.fetch_max(live, Ordering::SeqCst);
            self.inner.launched.fetch_add(1, Ordering::SeqCst);
            let inner = Arc::clone(&self.inner);
            tokio::spawn(async move {
                let mut run = Run {
                    job,
                    out: out_tx,
                    text: 0,
                };
                let exit = run
                    .play(behavior, on_cancel, cancel_rx, ctl_rx, inner.stop.clone())
                    .await;
                lock(&inner.controls).remove(&id);
                inner.live.fetch_sub(1, Ordering::SeqCst);
                let _ = run.out.send(InstanceOutput::Exited(exit)).await;
            });
            Ok(Instance {
                output: out_rx,
                cancel,
                warm: false,
                claim_latency: Duration::from_micros(50),
            })
        })
    }

    fn pool_status(&self) -> PoolStatus {
        PoolStatus {
            size: self.inner.pool_size.load(Ordering::SeqCst),
            ..PoolStatus::default()
        }
    }

    fn set_pool_size(&self, size: usize) -> Result<(), BackendError> {
        if self.inner.shut_down.load(Ordering::SeqCst) {
            return Err(BackendError::ShuttingDown);
        }
        self.inner.pool_size.store(size, Ordering::SeqCst);
        Ok(())
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.shut_down.store(true, Ordering::SeqCst);
            self.inner.stop.cancel();
            // Instances exit on `stop`; wait until they have.
            while self.inner.live.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    }
}

struct Run {
    job: Job,
    out: mpsc::Sender<InstanceOutput>,
    text: u64,
}

const CODE_OK: ExitInfo = ExitInfo {
    code: Some(0),
    signal: None,
    detail: None,
    oom_killed: false,
};

enum Flow {
    Go,
    Exit(ExitInfo),
}

impl Run {
    async fn emit(&mut self, e: Event) -> Flow {
        if let Event::Text { .. } = &e {
            self.text += 1;
        }
        match self.out.send(InstanceOutput::Event(e)).await {
            Ok(()) => Flow::Go,
            // The driver dropped the output: like a killed process.
            Err(_) => Flow::Exit(ExitInfo {
                code: None,
                signal: Some(9),
                detail: None,
                oom_killed: false,
            }),
        }
    }

    async fn complete(&mut self) -> ExitInfo {
        let usage = Event::Usage(Usage {
            input_tokens: 5,
            output_tokens: self.text,
            ..Usage::default()
        });
        if let Flow::Exit(e) = self.emit(usage).await {
            return e;
        }
        let end = Event::End {
            finish_reason: FinishReason::Stop,
            raw_finish_reason: Some("stop".into()),
            ttft_ms: Some(1),
            duration_ms: 2,
        };
        match self.emit(end).await {
            Flow::Exit(e) => e,
            Flow::Go => CODE_OK,
        }
    }

    async fn cancelled(&mut self, on_cancel: OnCancel) -> Option<ExitInfo> {
        match on_cancel {
            OnCancel::Ignore => None,
            OnCancel::Die => Some(ExitInfo {
                code: None,
                signal: Some(15),
                detail: None,
                oom_killed: false,
            }),
            OnCancel::Report => {
                let usage = Event::Usage(Usage {
                    input_tokens: 5,
                    output_tokens: self.text,
                    ..Usage::default()
                });
                let _ = self.emit(usage).await;
                let err = ErrorEvent {
                    partial: self.text > 0,
                    ..ErrorEvent::new(ErrorKind::Cancelled, "cancelled")
                };
                let _ = self.emit(Event::Error(err)).await;
                Some(ExitInfo {
                    code: Some(130),
                    signal: None,
                    detail: None,
                    oom_killed: false,
                })
            }
        }
    }

    async fn play(
        &mut self,
        behavior: Behavior,
        on_cancel: OnCancel,
        cancel_rx: oneshot::Receiver<()>,
        mut ctl: mpsc::UnboundedReceiver<Control>,
        stop: CancellationToken,
    ) -> ExitInfo {
        let start = Event::Start {
            execution_id: self.job.execution_id.clone().unwrap_or_default(),
            user_id: self.job.user_id.clone().unwrap_or_default(),
            provider: self.job.provider,
            model: self.job.model.clone().unwrap_or_default(),
        };
        if let Flow::Exit(e) = self.emit(start).await {
            return e;
        }
        let steps = match behavior {
            Behavior::Stream { tokens, delay } => {
                let mut v = Vec::new();
                for i in 0..tokens {
                    if i > 0 {
                        v.push(Step::Sleep(delay));
                    }
                    v.push(Step::Event(Event::Text {
                        text: format!("tok{i} "),
                    }));
                }
                v
            }
            Behavior::Script(steps) => steps,
            Behavior::Manual => vec![Step::Manual],
        };
        let mut cancel_rx = Some(cancel_rx);
        // Resolves once on cancel; never again after an ignored one.
        macro_rules! cancelled {
            () => {
                async {
                    match cancel_rx.as_mut() {
                        Some(rx) => {
                            let _ = rx.await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                }
            };
        }
        let mut manual = false;
        for step in steps {
            let flow = tokio::select! {
                f = self.step(step.clone()) => f,
                () = cancelled!() => {
                    cancel_rx = None;
                    match self.cancelled(on_cancel).await {
                        Some(e) => return e,
                        None => self.step(step).await,
                    }
                }
                () = stop.cancelled() => return shutdown_exit(),
            };
            match flow {
                StepFlow::Go => {}
                StepFlow::Exit(e) => return e,
                StepFlow::Manual => {
                    manual = true;
                    break;
                }
            }
        }
        if !manual {
            return self.complete().await;
        }
        loop {
            tokio::select! {
                c = ctl.recv() => match c {
                    Some(Control::Event(e)) => {
                        if let Flow::Exit(x) = self.emit(e).await {
                            return x;
                        }
                    }
                    Some(Control::Garbage(g)) => {
                        if self.out.send(InstanceOutput::Garbage(g)).await.is_err() {
                            return shutdown_exit();
                        }
                    }
                    Some(Control::Complete) => return self.complete().await,
                    Some(Control::Crash(e)) => return e,
                    None => return shutdown_exit(),
                },
                () = cancelled!() => {
                    cancel_rx = None;
                    if let Some(e) = self.cancelled(on_cancel).await {
                        return e;
                    }
                }
                () = stop.cancelled() => return shutdown_exit(),
                () = self.out.closed() => return shutdown_exit(),
            }
        }
    }

    async fn step(&mut self, step: Step) -> StepFlow {
        match step {
            Step::Event(e) => match self.emit(e).await {
                Flow::Go => StepFlow::Go,
                Flow::Exit(x) => StepFlow::Exit(x),
            },
            Step::Garbage(g) => match self.out.send(InstanceOutput::Garbage(g)).await {
                Ok(()) => StepFlow::Go,
                Err(_) => StepFlow::Exit(shutdown_exit()),
            },
            Step::Sleep(d) => {
                tokio::time::sleep(d).await;
                StepFlow::Go
            }
            Step::Exit(e) => StepFlow::Exit(e),
            Step::Manual => StepFlow::Manual,
        }
    }
}

enum StepFlow {
    Go,
    Exit(ExitInfo),
    Manual,
}

fn shutdown_exit() -> ExitInfo {
    ExitInfo {
        code: None,
        signal: Some(9),
        detail: None,
        oom_killed: false,
    }
}
