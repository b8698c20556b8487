//! Nothing lost when a report breaks or the controller restarts (DESIGN.md 5.2, issue 15), with
//! a scripted runtime: a backend whose "runtimes" are this test's own HTTP calls, following the
//! runtime API's resume contract (`polydev_protocol::report`) line for line. It checks:
//!
//! - a live report cut mid-line and resumed from the controller's position: the client's
//!   stream has every event once, in order, and one terminal event;
//! - controller A detaches at shutdown (client streams close with no terminal event, the row
//!   stays `running` with its instance record, no key in the database); controller B opens the
//!   same database, adopts the execution, the runtime resends from line 0, and a client
//!   resuming with `Last-Event-ID` on B gets every remaining event exactly once and one
//!   terminal event, with the same ids as before;
//! - a runtime that never comes back: the adopted execution ends `interrupted` after the grace,
//!   and a stream held open on B gets that one terminal event.
//!
//! The same restart against the real runtime binary (process backend in pull mode) is
//! `real_runtime_process_pull_across_a_sigterm_restart` below: the runtime resends its report
//! and the client gets the whole answer once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use polydev_controller::Controller;
use polydev_controller::backend::pull::{
    InstanceId, InstanceRegistry, RegistryConfig, RuntimeApi, TokenAuthenticator,
};
use polydev_controller::backend::{
    Backend, BackendError, CancelHandle, ExitInfo, Instance, InstanceOutput, InstanceRecord,
    PoolStatus,
};
use polydev_controller::config::ControllerConfig;
use polydev_controller::store::Store;
use polydev_protocol::Job;
use polydev_protocol::report::EVENT_OFFSET_HEADER;
use serde_json::Value;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

const SSE: (&str, &str) = ("accept", "text/event-stream");

// ---------------------------------------------------------------------------------------------
// The scripted backend.

/// Plays a pull backend whose runtimes outlive the controller: it registers each job, issues a
/// token (kept here so the test can act as the runtime), journals an instance record, adopts
/// one, and "watches" an instance by forwarding its report until the report ends.
struct Scripted {
    api: RuntimeApi,
    tokens: Arc<TokenAuthenticator>,
    /// Execution id → the instance's token (what the runtime holds, never the store).
    issued: Arc<Mutex<HashMap<String, String>>>,
    journal: Mutex<HashMap<String, InstanceRecord>>,
    /// Set by `detach`: forwarders let go of their instances without an `Exited`.
    detached: watch::Sender<bool>,
}

impl Scripted {
    fn new(issued: Arc<Mutex<HashMap<String, String>>>) -> Arc<Scripted> {
        let tokens = Arc::new(TokenAuthenticator::new());
        let registry = Arc::new(InstanceRegistry::new(RegistryConfig {
            poll_hold: Duration::from_millis(300),
            ..RegistryConfig::default()
        }));
        Arc::new(Scripted {
            api: RuntimeApi {
                auth: tokens.clone(),
                registry,
            },
            tokens,
            issued,
            journal: Mutex::new(HashMap::new()),
            detached: watch::channel(false).0,
        })
    }

    /// The instance's output: its report, then `Exited` once the report is over.
    fn watch(&self, id: InstanceId, mut feed: mpsc::Receiver<InstanceOutput>) -> Instance {
        let (out, output) = mpsc::channel(16);
        let registry = self.api.registry.clone();
        let mut detached = self.detached.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    item = feed.recv() => match item {
                        Some(item) => { let _ = out.send(item).await; }
                        None => break,
                    },
                    r = detached.changed() => {
                        // Let go: no `Exited`, the "runtime" lives on.
                        if r.is_err() || *detached.borrow() {
                            return;
                        }
                    }
                }
            }
            registry.remove(&id);
            let _ = out.send(InstanceOutput::Exited(ExitInfo::default())).await;
        });
        let (cancel, _cancel_rx) = CancelHandle::new();
        Instance {
            output,
            cancel,
            warm: false,
            claim_latency: Duration::ZERO,
        }
    }
}

impl Backend for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn launch(&self, job: Job) -> BoxFuture<'_, Result<Instance, BackendError>> {
        Box::pin(async move {
            let execution_id = job.execution_id.clone().unwrap();
            let id = InstanceId::random().unwrap();
            let (feed_tx, feed) = mpsc::channel(16);
            let registration = self
                .api
                .registry
                .register(id.clone(), feed_tx, Some(job))
                .unwrap();
            let token = self.tokens.issue(&id, Duration::from_secs(600)).unwrap();
            self.issued
                .lock()
                .unwrap()
                .insert(execution_id.clone(), token.expose().to_owned());
            // Like the real pull backends: launch returns once the job was fetched.
            registration.fetched.unwrap().await.unwrap();
            let (digest, left) = self.tokens.digest(&id).unwrap();
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap();
            self.journal.lock().unwrap().insert(
                execution_id.clone(),
                InstanceRecord {
                    execution_id,
                    instance_id: id.to_string(),
                    backend: "scripted".into(),
                    handle: "scripted-handle".into(),
                    credential_digest: Some(digest),
                    credential_expires_at_ms: Some((now + left).as_millis() as u64),
                },
            );
            Ok(self.watch(id, feed))
        })
    }

    fn pool_status(&self) -> PoolStatus {
        PoolStatus::default()
    }

    fn set_pool_size(&self, _: usize) -> Result<(), BackendError> {
        Ok(())
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.api.registry.close();
        Box::pin(async {})
    }

    fn runtime_api(&self) -> Option<RuntimeApi> {
        Some(self.api.clone())
    }

    fn instance_record(&self, execution_id: &str) -> Option<InstanceRecord> {
        self.journal.lock().unwrap().remove(execution_id)
    }

    fn adopt(&self, record: InstanceRecord) -> BoxFuture<'_, Result<Instance, BackendError>> {
        Box::pin(async move {
            assert_eq!(record.backend, "scripted");
            assert_eq!(record.handle, "scripted-handle");
            let id = InstanceId::new(record.instance_id.clone()).unwrap();
            self.tokens
                .restore(
                    &id,
                    record.credential_digest.as_deref().unwrap(),
                    Duration::from_secs(600),
                )
                .unwrap();
            let (feed_tx, feed) = mpsc::channel(16);
            self.api
                .registry
                .register_adopted(id.clone(), feed_tx, &record.execution_id)
                .unwrap();
            Ok(self.watch(id, feed))
        })
    }

    fn detaches(&self) -> bool {
        true
    }

    fn detach(&self) -> BoxFuture<'_, ()> {
        self.detached.send_replace(true);
        self.api.registry.close();
        Box::pin(async {})
    }
}

fn grace_config(grace: Duration) -> ControllerConfig {
    ControllerConfig {
        reattach_grace: grace,
        ..config()
    }
}

struct World {
    backend: Arc<Scripted>,
    controller: Controller,
    server: Server,
}

impl World {
    fn token(&self, execution_id: &str) -> String {
        self.backend.issued.lock().unwrap()[execution_id].clone()
    }

    /// SIGTERM: the server's shutdown (the controller detaches), then its end.
    async fn stop(mut self) {
        self.server.shutdown();
        tokio::time::timeout(Duration::from_secs(30), self.server.task)
            .await
            .expect("the server did not stop")
            .unwrap()
            .unwrap();
        drop(self.controller);
    }
}

/// A controller over a scripted backend on `db`, adopting what the store left for it.
async fn world(
    db: &Path,
    grace: Duration,
    issued: Arc<Mutex<HashMap<String, String>>>,
) -> (World, usize) {
    let backend = Scripted::new(issued);
    let (store, recovery) = Store::open_adopting(db, Some("scripted")).unwrap();
    let controller = Controller::new(grace_config(grace), backend.clone(), store);
    let adopted = controller.adopt(recovery.adoptable);
    let server = serve(controller.clone()).await;
    (
        World {
            backend,
            controller,
            server,
        },
        adopted,
    )
}

// ---------------------------------------------------------------------------------------------
// The runtime's side of the contract, by hand.

fn events_path(execution_id: &str) -> String {
    format!("/runtime/v1/executions/{execution_id}/events")
}

/// `GET …/events`: the status and, on 200, how many lines the controller holds.
async fn position(addr: SocketAddr, execution_id: &str, token: &str) -> (StatusCode, Option<u64>) {
    let auth = format!("Bearer {token}");
    let res = send_as(
        addr,
        Method::GET,
        &events_path(execution_id),
        &[("authorization", &auth)],
        None,
    )
    .await;
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let received = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["received"].as_u64());
    (status, received)
}

/// `POST …/events` from `offset` with `body`, completely.
async fn report(
    addr: SocketAddr,
    execution_id: &str,
    token: &str,
    offset: u64,
    body: String,
) -> (StatusCode, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri(events_path(execution_id))
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/x-ndjson")
        .header(EVENT_OFFSET_HEADER, offset.to_string())
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Opens a chunked `POST …/events` from `offset`, sends `part` (which may end mid-line), and
/// returns the open socket: dropping it breaks the report.
async fn report_then_break(
    addr: SocketAddr,
    execution_id: &str,
    token: &str,
    offset: u64,
    part: &str,
) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/x-ndjson\r\n{EVENT_OFFSET_HEADER}: {offset}\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{part}\r\n",
        events_path(execution_id),
        part.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.flush().await.unwrap();
    tcp
}

/// Waits until the controller holds `lines` lines of the report.
async fn wait_position(addr: SocketAddr, execution_id: &str, token: &str, lines: u64) {
    for _ in 0..1000 {
        if position(addr, execution_id, token).await == (StatusCode::OK, Some(lines)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the controller never held {lines} lines");
}

/// The runtime's output lines for one execution: `ready`, `start`, `n` texts, `end`.
fn lines(execution_id: &str, n: usize) -> Vec<String> {
    let mut v = vec![
        r#"{"type":"ready"}"#.to_owned(),
        format!(
            r#"{{"type":"start","execution_id":"{execution_id}","user_id":"u1","provider":"openai","model":"gpt-5-mini"}}"#
        ),
    ];
    for i in 0..n {
        v.push(format!(r#"{{"type":"text","text":"t{i} "}}"#));
    }
    v.push(r#"{"type":"end","finish_reason":"stop","duration_ms":5}"#.to_owned());
    v
}

fn joined(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Submits a job as a streaming client: the open SSE reader and the execution id.
async fn submit_streaming(addr: SocketAddr) -> (SseReader, String) {
    let res = send(
        addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job("u1")),
    )
    .await;
    let mut sse = SseReader::new(res);
    let start = sse.next().await.unwrap();
    assert_eq!(start.event, "start");
    assert_eq!(start.id, Some(1));
    let id = start.data["execution_id"].as_str().unwrap().to_owned();
    (sse, id)
}

/// The runtime fetches its job (the token exists once `launch` registered the instance).
async fn fetch_job(w: &World, execution_id: &str) -> String {
    for _ in 0..400 {
        if w.backend.issued.lock().unwrap().contains_key(execution_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let token = w.token(execution_id);
    let auth = format!("Bearer {token}");
    let res = send_as(
        w.server.addr,
        Method::GET,
        "/runtime/v1/next",
        &[("authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    token
}

/// The texts of `events`, asserting their ids are consecutive from `first`.
fn texts_from(events: &[Sse], first: u64) -> Vec<String> {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, Some(first + i as u64), "{events:?}");
    }
    events
        .iter()
        .filter(|e| e.event == "text")
        .map(|e| e.data["text"].as_str().unwrap().to_owned())
        .collect()
}

fn expected_texts(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("t{i} ")).collect()
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_report_cut_mid_line_resumes_with_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let issued = Arc::default();
    let (w, _) = world(&dir.path().join("a.db"), Duration::from_secs(60), issued).await;
    let addr = w.server.addr;
    let (mut sse, id) = submit_streaming(addr).await;
    let token = fetch_job(&w, &id).await;
    assert_eq!(position(addr, &id, &token).await, (StatusCode::OK, Some(0)));
    let all = lines(&id, 10);
    // Lines 0..6 whole, then half of line 6; the connection breaks.
    let mut part = joined(&all[..6]);
    part.push_str(&all[6][..10]);
    let tcp = report_then_break(addr, &id, &token, 0, &part).await;
    wait_position(addr, &id, &token, 6).await;
    drop(tcp);
    // A report from the wrong place is refused with the position.
    let (s, body) = report(addr, &id, &token, 2, joined(&all[2..])).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(body.contains(r#""received":6"#), "{body}");
    // A second report supersedes a third's predecessor: open one from 6 and leave it open...
    let open = report_then_break(addr, &id, &token, 6, &joined(&all[6..8])).await;
    wait_position(addr, &id, &token, 8).await;
    // ...and the last one takes over from 8 while it is still open.
    let (s, body) = report(addr, &id, &token, 8, joined(&all[8..])).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    drop(open);
    let rest = sse.rest().await;
    // start was id 1; texts t0.. are ids 2..; one terminal event.
    assert_eq!(texts_from(&rest, 2), expected_texts(0..10));
    assert_eq!(rest.last().unwrap().event, "end");
    assert_eq!(
        rest.iter()
            .filter(|e| e.event == "end" || e.event == "error")
            .count(),
        1
    );
    // The report is over: the credential is spent.
    let (s, _) = position(addr, &id, &token).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_adopts_and_a_client_resumes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("restart.db");
    let issued: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let (a, adopted) = world(&db, Duration::from_secs(60), Arc::clone(&issued)).await;
    assert_eq!(adopted, 0);
    let (mut sse, id) = submit_streaming(a.server.addr).await;
    let token = fetch_job(&a, &id).await;
    let all = lines(&id, 12);
    // Lines 0..7 (ready, start, t0..t4) reach A over a report that stays open.
    let open = report_then_break(a.server.addr, &id, &token, 0, &joined(&all[..7])).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let e = sse.next().await.unwrap();
        seen.push(e);
    }
    assert_eq!(texts_from(&seen, 2), expected_texts(0..5));
    let last_id = seen.last().unwrap().id.unwrap();
    assert_eq!(last_id, 6);

    // SIGTERM on A: it detaches. The client's stream closes with no further event.
    let stop = tokio::spawn(a.stop());
    let after = sse.rest().await;
    assert!(after.is_empty(), "{after:?}");
    stop.await.unwrap();
    drop(open);
    // The row is still running; the database holds the instance record but no token or key.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let status: String = conn
        .query_row("SELECT status FROM executions WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(status, "running");
    let records: i64 = conn
        .query_row("SELECT count(*) FROM instance_records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(records, 1);
    drop(conn);
    assert_no_secret(dir.path(), &token);

    // Controller B on the same database adopts it.
    let (b, adopted) = world(&db, Duration::from_secs(60), Arc::clone(&issued)).await;
    assert_eq!(adopted, 1);
    let v = get_json(b.server.addr, &format!("/v1/executions/{id}")).await;
    assert_eq!(v["status"], "running", "{v}");
    // The client resumes on B before the runtime is back: held open (no 404/410).
    let res = send(
        b.server.addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[SSE, ("last-event-id", &last_id.to_string())],
        None,
    )
    .await;
    let mut resumed = SseReader::new(res);
    // The runtime comes back: B holds nothing, so it resends everything, then the rest.
    assert_eq!(
        position(b.server.addr, &id, &token).await,
        (StatusCode::OK, Some(0))
    );
    let (s, body) = report(b.server.addr, &id, &token, 0, joined(&all)).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let rest = resumed.rest().await;
    assert_eq!(texts_from(&rest, last_id + 1), expected_texts(5..12));
    assert_eq!(rest.last().unwrap().event, "end");
    assert_eq!(
        rest.iter()
            .filter(|e| e.event == "end" || e.event == "error")
            .count(),
        1
    );
    // A fresh reader from 0 sees the same ids as before the restart.
    let res = send(
        b.server.addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[SSE],
        None,
    )
    .await;
    let whole = SseReader::new(res).rest().await;
    assert_eq!(whole[..6], seen_with_start(&seen, &whole[0])[..]);
    let v = get_json(b.server.addr, &format!("/v1/executions/{id}")).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    b.controller.flush().await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let records: i64 = conn
        .query_row("SELECT count(*) FROM instance_records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(records, 0, "the record goes when the execution ends");
    drop(conn);
    b.stop().await;
    assert_no_secret(dir.path(), &token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_that_never_comes_back_is_interrupted_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gone.db");
    let issued: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let (a, _) = world(&db, Duration::from_secs(60), Arc::clone(&issued)).await;
    let (mut sse, id) = submit_streaming(a.server.addr).await;
    let token = fetch_job(&a, &id).await;
    let all = lines(&id, 4);
    let open = report_then_break(a.server.addr, &id, &token, 0, &joined(&all[..4])).await;
    let t0 = sse.next().await.unwrap();
    let t1 = sse.next().await.unwrap();
    assert_eq!((t0.id, t1.id), (Some(2), Some(3)));
    let stop = tokio::spawn(a.stop());
    assert!(sse.rest().await.is_empty());
    stop.await.unwrap();
    drop(open);

    let (b, adopted) = world(&db, Duration::from_millis(800), Arc::clone(&issued)).await;
    assert_eq!(adopted, 1);
    let res = send(
        b.server.addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[SSE, ("last-event-id", "3")],
        None,
    )
    .await;
    let rest = SseReader::new(res).rest().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].event, "error");
    assert_eq!(rest[0].data["kind"], "interrupted", "{:?}", rest[0]);
    let msg = rest[0].data["message"].as_str().unwrap();
    assert!(msg.contains("did not come back"), "{msg}");
    let v = get_json(b.server.addr, &format!("/v1/executions/{id}")).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["kind"], "interrupted", "{v}");
    // The runtime, too late, is told to stop.
    let (s, _) = position(b.server.addr, &id, &token).await;
    assert!(
        matches!(s, StatusCode::GONE | StatusCode::UNAUTHORIZED),
        "{s}"
    );
    b.stop().await;
}

/// The events before the restart, with `start` (id 1) in front, for comparing ids and data.
fn seen_with_start(seen: &[Sse], start: &Sse) -> Vec<Sse> {
    let mut v = vec![start.clone()];
    v.extend(seen.iter().cloned());
    v
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let res = send(addr, Method::GET, path, &[], None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// No file under `dir` (database, WAL, lock) contains the runtime's token secret or the
/// user's key.
fn assert_no_secret(dir: &Path, token: &str) {
    let secret = token.rsplit_once('.').unwrap().1;
    let key = polydev_test_support::fake_key(polydev_protocol::Provider::OpenAi);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(secret),
            "{} holds the runtime token",
            path.display()
        );
        assert!(!text.contains(&key), "{} holds the key", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// The real runtime binary (process backend, pull mode): `cargo build -p polydev-runtime` first.

fn process_pull(
    emu_base: &str,
    port: u16,
) -> polydev_controller::backend::process::ProcessBackendConfig {
    use polydev_controller::backend::process::{ProcessBackendConfig, PullOptions};
    let bin = polydev_test_support::workspace_bin("polydev-runtime");
    assert!(bin.is_file(), "run `cargo build -p polydev-runtime` first");
    let mut cfg = ProcessBackendConfig::new(bin);
    cfg.env = polydev_protocol::Provider::ALL
        .iter()
        .map(|p| {
            let (k, v) = polydev_test_support::base_url_env(*p, emu_base);
            (k.to_owned(), v)
        })
        .collect();
    cfg.pool_size = 0;
    cfg.ready_timeout = Duration::from_secs(10);
    cfg.pull = Some(PullOptions::new(format!("http://127.0.0.1:{port}")));
    cfg
}

/// A controller with a pull-mode process backend on `listener` and `db`, adopting what the
/// store left running for it.
async fn real_world(
    listener: tokio::net::TcpListener,
    db: &Path,
    emu_base: &str,
) -> (
    Controller,
    Server,
    Arc<polydev_controller::backend::process::ProcessBackend>,
    usize,
) {
    use polydev_controller::backend::process::ProcessBackend;
    let port = listener.local_addr().unwrap().port();
    let backend = Arc::new(ProcessBackend::new(process_pull(emu_base, port)).unwrap());
    let (store, recovery) = Store::open_adopting(db, Some("process")).unwrap();
    let controller = Controller::new(
        grace_config(Duration::from_secs(30)),
        backend.clone(),
        store,
    );
    let adopted = controller.adopt(recovery.adoptable);
    let server = serve_bound(listener, None, controller.clone());
    (controller, server, backend, adopted)
}

/// The real runtime in the process backend's pull mode across a SIGTERM restart: A detaches
/// (the stream closes with no terminal event, the row stays `running`), B on the same address
/// and database adopts. With a runtime that resends its report (crates/runtime, issue 15) the
/// client resuming on B gets the rest of the answer with consecutive ids and `end`, and
/// nothing is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_runtime_process_pull_across_a_sigterm_restart() {
    let emu = polydev_test_support::emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("real.db");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, mut a_server, a_backend, _) = real_world(listener, &db, &emu.base_url()).await;
    let body = serde_json::json!({
        "user_id": "u1",
        "provider": "openai",
        "model": "gpt-5-mini-len300-rate30",
        "prompt": "hello",
        "credentials": {"api_key": polydev_test_support::fake_key(polydev_protocol::Provider::OpenAi)},
    });
    let res = send(addr, Method::POST, "/v1/executions", &[SSE], Some(body)).await;
    let mut sse = SseReader::new(res);
    let start = sse.next().await.unwrap();
    let id = start.data["execution_id"].as_str().unwrap().to_owned();
    let mut before = vec![start];
    while before.len() < 4 {
        before.push(sse.next().await.unwrap());
    }
    let pid = a_backend.child_pids()[0];
    // SIGTERM: A detaches; the stream closes with no terminal event.
    a_server.shutdown();
    a_server.task.await.unwrap().unwrap();
    drop(a);
    let after = sse.rest().await;
    assert!(
        after.iter().all(|e| e.event != "end" && e.event != "error"),
        "{after:?}"
    );
    before.extend(after);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let status: String = conn
        .query_row("SELECT status FROM executions WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(status, "running");
    let (backend, handle, digest): (String, String, Option<String>) = conn
        .query_row(
            "SELECT backend, handle, credential_digest FROM instance_records WHERE execution_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(backend, "process");
    assert!(handle.starts_with(&format!("{pid}:")), "{handle}");
    assert_eq!(digest.map(|d| d.len()), Some(64));
    drop(conn);
    // No key (nor anything but digests) in the database files.
    let key = polydev_test_support::fake_key(polydev_protocol::Provider::OpenAi);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&key),
            "{} holds the key",
            path.display()
        );
    }
    // B on the same address and database.
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let (b, mut b_server, b_backend, adopted) = real_world(listener, &db, &emu.base_url()).await;
    assert_eq!(adopted, 1);
    let last = before.last().unwrap().id.unwrap();
    let res = send(
        addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[SSE, ("last-event-id", &last.to_string())],
        None,
    )
    .await;
    let rest = tokio::time::timeout(Duration::from_secs(90), SseReader::new(res).rest())
        .await
        .unwrap();
    let terminal: Vec<&Sse> = rest
        .iter()
        .filter(|e| e.event == "end" || e.event == "error")
        .collect();
    assert_eq!(terminal.len(), 1, "{rest:?}");
    assert_eq!(
        rest.last().map(|e| e.event.as_str()),
        Some(terminal[0].event.as_str())
    );
    let v = get_json(addr, &format!("/v1/executions/{id}")).await;
    // The runtime resent its report: the rest of the answer, consecutive ids, `end`.
    assert_eq!(
        terminal[0].event, "end",
        "the runtime did not resume: {rest:?}"
    );
    for (i, e) in rest.iter().enumerate() {
        assert_eq!(e.id, Some(last + 1 + i as u64), "{rest:?}");
    }
    assert_eq!(v["status"], "succeeded", "{v}");
    let text: String = before
        .iter()
        .chain(rest.iter())
        .filter(|e| e.event == "text")
        .filter_map(|e| e.data["text"].as_str())
        .collect();
    assert_eq!(text, polydev_test_support::answer_text(300));
    drop(b);
    b_server.shutdown();
    b_server.task.await.unwrap().unwrap();
    assert!(b_backend.child_pids().is_empty());
    // The runtime is gone (reaped, or a zombie of this test process awaiting tokio's reaper).
    for _ in 0..1000 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("runtime pid {pid} outlived both controllers");
}
