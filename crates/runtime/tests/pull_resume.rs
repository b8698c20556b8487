//! A pull-mode runtime outlives its controller (DESIGN.md 5.2): the real binary against the
//! emulator and a fake controller (plain hyper on 127.0.0.1, so a test can cut connections and
//! restart the listener) that speaks the resume handshake of `polydev_protocol::report`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use polydev_protocol::report::{EVENT_OFFSET_HEADER, ReportPosition};
use polydev_protocol::{ErrorKind, Event, Provider};
use polydev_test_support::{RunOutput, RuntimeCommand, answer_text, emulator, fake_key};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

const BIN: &str = env!("CARGO_BIN_EXE_polydev-runtime");
const EXECUTION_ID: &str = "ex_resume_1";
const TOKEN: &str = "runtime-token-1";

/// What the fake controller does once it holds `after` lines of the report.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    /// Nothing: an uninterrupted run.
    Plain,
    /// Cut the report connection (the runtime must resume from what is kept).
    Cut,
    /// Cut, then answer the next handshake with a stale position once (the report gets 409).
    CutThenStale,
    /// Cut, then refuse the token of the next handshake once (as while Nomad renews it).
    CutThenUnauthorized,
    /// Cut, then refuse every token from then on.
    CutThenRejected,
    /// Forget everything, close the listener and open it again on the same port.
    Restart,
    /// Answer the report with 410.
    Gone,
    /// Close the listener and every connection for good.
    Vanish,
}

#[derive(Default)]
struct State {
    /// The lines the controller holds.
    lines: Vec<String>,
    job_given: bool,
    triggered: bool,
    stale_answers: u32,
    unauthorized_answers: u32,
    handshakes: u32,
    /// `polydev-event-offset` of every report request, and its answer.
    posts: Vec<(u64, u16)>,
}

struct Fake {
    job: String,
    plan: Plan,
    after: usize,
    state: Mutex<State>,
    conns: Mutex<Vec<AbortHandle>>,
    /// Close the listener (then reopen it unless `Vanish`).
    relisten: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn answer(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res
}

impl Fake {
    fn cut_connections(&self) {
        for c in lock(&self.conns).drain(..) {
            c.abort();
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let authorized = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {TOKEN}"));
        if !authorized {
            return answer(StatusCode::UNAUTHORIZED, String::new());
        }
        let events_path = format!("/runtime/v1/executions/{EXECUTION_ID}/events");
        match (req.method().as_str(), req.uri().path()) {
            ("GET", "/runtime/v1/next") => {
                let mut st = lock(&self.state);
                if st.job_given {
                    return answer(StatusCode::GONE, String::new());
                }
                st.job_given = true;
                answer(StatusCode::OK, self.job.clone())
            }
            ("GET", p) if p == events_path => {
                let mut st = lock(&self.state);
                st.handshakes += 1;
                if st.unauthorized_answers > 0 {
                    st.unauthorized_answers -= 1;
                    return answer(StatusCode::UNAUTHORIZED, String::new());
                }
                let mut received = st.lines.len() as u64;
                if st.stale_answers > 0 && received >= 2 {
                    st.stale_answers -= 1;
                    received -= 2;
                }
                let body = serde_json::to_string(&ReportPosition { received }).unwrap_or_default();
                answer(StatusCode::OK, body)
            }
            ("POST", p) if p == events_path => self.report(req).await,
            _ => answer(StatusCode::NOT_FOUND, String::new()),
        }
    }

    async fn report(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let offset: u64 = req
            .headers()
            .get(EVENT_OFFSET_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        {
            let mut st = lock(&self.state);
            let held = st.lines.len() as u64;
            if offset != held {
                st.posts.push((offset, 409));
                let body = serde_json::to_string(&ReportPosition { received: held });
                return answer(StatusCode::CONFLICT, body.unwrap_or_default());
            }
            st.posts.push((offset, 0));
        }
        let mut body = req.into_body();
        let mut partial = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return answer(StatusCode::BAD_REQUEST, String::new());
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            partial.extend_from_slice(&data);
            while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=i).collect();
                let trigger = {
                    let mut st = lock(&self.state);
                    st.lines
                        .push(String::from_utf8_lossy(&line[..i]).into_owned());
                    let fire =
                        self.plan != Plan::Plain && !st.triggered && st.lines.len() >= self.after;
                    if fire {
                        st.triggered = true;
                        match self.plan {
                            Plan::CutThenStale => st.stale_answers = 1,
                            Plan::CutThenUnauthorized => st.unauthorized_answers = 1,
                            Plan::CutThenRejected => st.unauthorized_answers = u32::MAX,
                            _ => {}
                        }
                        if self.plan == Plan::Restart {
                            st.lines.clear();
                        }
                    }
                    fire
                };
                if trigger {
                    match self.plan {
                        Plan::Gone => {
                            self.record_answer(410);
                            return answer(StatusCode::GONE, String::new());
                        }
                        Plan::Restart | Plan::Vanish => {
                            self.relisten.notify_one();
                            self.cut_connections();
                            std::future::pending::<()>().await;
                        }
                        _ => {
                            // Aborting our own connection task ends this handler at the
                            // next await: the socket closes mid-request.
                            self.cut_connections();
                            std::future::pending::<()>().await;
                        }
                    }
                }
            }
        }
        self.record_answer(204);
        answer(StatusCode::NO_CONTENT, String::new())
    }

    fn record_answer(&self, status: u16) {
        if let Some(last) = lock(&self.state).posts.last_mut() {
            last.1 = status;
        }
    }
}

/// Accepts connections, each in its own task (so a test can cut them), and closes and reopens
/// the listener on the same port when told to.
async fn serve(fake: Arc<Fake>, mut listener: TcpListener) {
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    loop {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let handler = fake.clone();
                    let task = tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let fake = handler.clone();
                            async move { Ok::<_, Infallible>(fake.handle(req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                    lock(&fake.conns).push(task.abort_handle());
                }
                () = fake.relisten.notified() => break,
            }
        }
        drop(listener);
        if fake.plan == Plan::Vanish {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        listener = rebind(addr).await;
    }
}

async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() > deadline => panic!("cannot rebind {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Starts a fake controller handing out one openai job for `model` at the emulator.
async fn start_fake(emu_base: &str, model: &str, plan: Plan, after: usize) -> (Arc<Fake>, String) {
    let job = serde_json::json!({
        "execution_id": EXECUTION_ID, "user_id": "u", "provider": "openai",
        "model": model, "prompt": "hi", "base_url": format!("{emu_base}/v1"),
        "credentials": {"api_key": fake_key(Provider::OpenAi)},
    })
    .to_string();
    let fake = Arc::new(Fake {
        job,
        plan,
        after,
        state: Mutex::new(State::default()),
        conns: Mutex::new(Vec::new()),
        relisten: Notify::new(),
    });
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    tokio::spawn(serve(fake.clone(), listener));
    (fake, url)
}

fn runtime(url: &str) -> RuntimeCommand {
    RuntimeCommand::new(BIN)
        .env("WARM_POOL", "true")
        .env("CONTROLLER_URL", url)
        .env("RUNTIME_TOKEN", TOKEN)
        .timeout(Duration::from_secs(20))
}

/// The report's events, with the timing fields of `end` cleared so two runs compare.
fn events(fake: &Fake) -> Vec<Event> {
    lock(&fake.state)
        .lines
        .iter()
        .map(|l| match serde_json::from_str::<Event>(l) {
            Ok(Event::End {
                finish_reason,
                raw_finish_reason,
                ..
            }) => Event::End {
                finish_reason,
                raw_finish_reason,
                ttft_ms: None,
                duration_ms: 0,
            },
            Ok(e) => e,
            Err(e) => panic!("not an event line ({e}): {l}"),
        })
        .collect()
}

fn posts(fake: &Fake) -> Vec<(u64, u16)> {
    lock(&fake.state).posts.clone()
}

/// A paced answer: 200 text events over about two seconds.
const PACED: &str = "emu-len200-rate100";

async fn run_plan(plan: Plan, after: usize) -> (Arc<Fake>, RunOutput) {
    let emu = emulator().await;
    let (fake, url) = start_fake(&emu.base_url(), PACED, plan, after).await;
    let out = runtime(&url).run().await;
    out.assert_no_canary();
    (fake, out)
}

fn assert_complete(plan: Plan, got: &[Event], want: &[Event]) {
    assert_eq!(got.len(), want.len(), "{plan:?}: line count");
    assert_eq!(got, want, "{plan:?}: the assembled report");
    let text: String = got.iter().filter_map(Event::as_text).collect();
    assert_eq!(text, answer_text(200), "{plan:?}");
}

/// (a) a cut mid-stream resumes from the lines the controller kept; (b) a controller
/// restart (handshake says 0) gets everything again; (c) a stale handshake answer makes the
/// report a 409, after which the runtime asks again. Each assembles exactly the lines of an
/// uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_report_resumes_without_gap_or_duplicate() {
    let (plain, out) = run_plan(Plan::Plain, 0).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let want = events(&plain);
    assert!(
        matches!(want.first(), Some(Event::Start { .. })),
        "{want:?}"
    );
    assert!(matches!(want.last(), Some(Event::End { .. })), "{want:?}");
    assert_eq!(posts(&plain), vec![(0, 204)]);

    let (cut, out) = run_plan(Plan::Cut, 50).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_complete(Plan::Cut, &events(&cut), &want);
    let p = posts(&cut);
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].0, 0);
    assert!(
        p[1].0 >= 50 && p[1].1 == 204,
        "resumed from what was kept: {p:?}"
    );
    assert!(
        out.stderr.contains("retrying"),
        "the break is reported: {}",
        out.stderr
    );

    let (restart, out) = run_plan(Plan::Restart, 50).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_complete(Plan::Restart, &events(&restart), &want);
    let p = posts(&restart);
    assert_eq!(
        p.last(),
        Some(&(0, 204)),
        "full resend after a restart: {p:?}"
    );

    let (stale, out) = run_plan(Plan::CutThenStale, 50).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_complete(Plan::CutThenStale, &events(&stale), &want);
    let p = posts(&stale);
    assert!(
        p.iter().any(|&(_, s)| s == 409),
        "the stale offset was refused: {p:?}"
    );
    assert_eq!(p.last().map(|l| l.1), Some(204), "{p:?}");
    assert!(lock(&stale.state).handshakes >= 3);
}

/// (d) 410: the controller no longer wants the execution; the runtime stops its upstream
/// call and exits at once, long before the answer would have ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_stops_the_runtime() {
    let emu = emulator().await;
    // 3000 tokens at 100/s: half a minute if nothing stopped it.
    let (fake, url) = start_fake(&emu.base_url(), "emu-len3000-rate100", Plan::Gone, 20).await;
    let out = runtime(&url).run().await;
    assert_eq!(out.code, ErrorKind::Cancelled.exit_code(), "{out:#?}");
    assert!(out.stderr.contains("410"), "{}", out.stderr);
    assert_eq!(posts(&fake), vec![(0, 410)]);
    out.assert_no_canary();
}

/// (e) a controller gone for longer than CONTROLLER_RECONNECT_WINDOW: the runtime stops and
/// exits with the documented code and a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_controller_ends_the_runtime_after_the_window() {
    let emu = emulator().await;
    let (fake, url) = start_fake(&emu.base_url(), "emu-len3000-rate100", Plan::Vanish, 20).await;
    let started = Instant::now();
    let out = runtime(&url)
        .env("CONTROLLER_RECONNECT_WINDOW", "1500ms")
        .run()
        .await;
    assert_eq!(out.code, Some(69), "{out:#?}");
    assert!(
        out.stderr.contains("CONTROLLER_RECONNECT_WINDOW") && out.stderr.contains("stopped"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "did not wait for the whole answer"
    );
    assert_eq!(posts(&fake).len(), 1);
    out.assert_no_canary();
}

/// (f) a report buffer smaller than the answer: the upstream call stops and the one terminal
/// error, which always fits, is still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_report_buffer_ends_with_a_delivered_error() {
    let emu = emulator().await;
    let (fake, url) = start_fake(&emu.base_url(), "emu-len2000", Plan::Plain, 0).await;
    let out = runtime(&url).env("REPORT_BUFFER_BYTES", "4K").run().await;
    assert_eq!(out.code, ErrorKind::Protocol.exit_code(), "{out:#?}");
    let got = events(&fake);
    let bytes: usize = lock(&fake.state).lines.iter().map(|l| l.len() + 1).sum();
    assert!(bytes <= 4096, "{bytes} bytes kept");
    assert!(matches!(got.first(), Some(Event::Start { .. })), "{got:?}");
    let Some(Event::Error(e)) = got.last() else {
        panic!("no terminal error: {got:?}")
    };
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert!(
        e.partial && e.message.contains("REPORT_BUFFER_BYTES"),
        "{e:?}"
    );
    assert_eq!(got.iter().filter(|e| e.is_terminal()).count(), 1);
    let text: String = got.iter().filter_map(Event::as_text).collect();
    assert!(
        !text.is_empty() && answer_text(2000).starts_with(&text),
        "the kept output is a prefix of the answer"
    );
    assert_eq!(posts(&fake), vec![(0, 204)]);
    out.assert_no_canary();
}

/// SIGTERM while the controller is away: the runtime does not wait out the reconnect window;
/// it stops within the signal grace with the `cancelled` exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_controller_is_away_exits_promptly() {
    let emu = emulator().await;
    let (fake, url) = start_fake(&emu.base_url(), "emu-len3000-rate100", Plan::Vanish, 20).await;
    let child = runtime(&url)
        .env("CONTROLLER_RECONNECT_WINDOW", "60s")
        .spawn();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lock(&fake.state).triggered {
        assert!(Instant::now() < deadline, "the report never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the runtime notice the break and start reconnecting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().unwrap_or_else(|| panic!("no pid"));
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(kill.is_ok_and(|s| s.success()));
    // Well inside the window (60 s); the grace is 2 s.
    let out = polydev_test_support::collect(child, Duration::from_secs(10)).await;
    assert_eq!(out.code, ErrorKind::Cancelled.exit_code(), "{out:#?}");
    assert!(out.stderr.contains("signal"), "{}", out.stderr);
    out.assert_no_canary();
}

/// 401/403 on a resumed report: the runtime re-reads its token once and goes on; a controller
/// that keeps refusing ends it with the `auth` exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_retried_once() {
    let (plain, out) = run_plan(Plan::Plain, 0).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let want = events(&plain);

    let (renewed, out) = run_plan(Plan::CutThenUnauthorized, 50).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_complete(Plan::CutThenUnauthorized, &events(&renewed), &want);
    assert!(out.stderr.contains("re-reading"), "{}", out.stderr);

    let (rejected, out) = run_plan(Plan::CutThenRejected, 50).await;
    assert_eq!(out.code, ErrorKind::Auth.exit_code(), "{out:#?}");
    assert!(
        out.stderr.contains("rejected the runtime token"),
        "{}",
        out.stderr
    );
    assert_eq!(posts(&rejected).len(), 1);
}
