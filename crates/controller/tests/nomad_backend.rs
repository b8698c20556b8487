//! The Nomad backend's own checks (the shared suite covers success, cancel, leaks, warm/cold and
//! shutdown): failures end executions with clear errors, foreign identities are refused, and
//! `nomad-spec` prints what the backend registers. Everything runs against the fake Nomad
//! (`polydev_nomad::fake`), which runs each allocation as a local `polydev-runtime` process:
//! build it first (`cargo build -p polydev-runtime`). No live cluster is involved; timings here
//! say nothing about Nomad's own latency.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use polydev_controller::Controller;
use polydev_controller::backend::Backend;
use polydev_controller::backend::nomad::{NomadBackend, NomadBackendConfig, job_spec};
use polydev_controller::config::ControllerConfig;
use polydev_controller::store::Store;
use polydev_nomad::RuntimeJobConfig;
use polydev_nomad::fake::{FakeConfig, FakeNomad, MintClaims};
use polydev_protocol::Provider;
use polydev_test_support::{Emulator, base_url_env, emulator, fake_key};
use serde_json::{Value, json};
use support::*;

const SSE: (&str, &str) = ("accept", "text/event-stream");

struct World {
    _emu: Emulator,
    fake: Arc<FakeNomad>,
    backend: Arc<NomadBackend>,
    controller: Controller,
    server: Server,
    _dir: tempfile::TempDir,
}

fn runtime_env(emulator_base: &str) -> Vec<(String, String)> {
    Provider::ALL
        .iter()
        .map(|p| {
            let (k, v) = base_url_env(*p, emulator_base);
            (k.to_owned(), v)
        })
        .collect()
}

async fn world(pool: usize, tune: impl FnOnce(&mut NomadBackendConfig)) -> World {
    world_with(pool, |_| {}, tune).await
}

async fn world_with(
    pool: usize,
    setup: impl FnOnce(&FakeNomad),
    tune: impl FnOnce(&mut NomadBackendConfig),
) -> World {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_test_writer()
        .try_init();
    let bin = polydev_test_support::workspace_bin("polydev-runtime");
    assert!(bin.is_file(), "run `cargo build -p polydev-runtime` first");
    let emu = emulator().await;
    let fake = Arc::new(FakeNomad::start(FakeConfig::new(bin)).await.unwrap());
    setup(&fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let job = RuntimeJobConfig::new(format!("http://127.0.0.1:{port}"));
    let mut cfg = NomadBackendConfig::new(fake.client_config(), job);
    cfg.runtime_env = runtime_env(&emu.base_url());
    cfg.pool_size = pool;
    cfg.start_timeout = Duration::from_secs(10);
    tune(&mut cfg);
    let backend = Arc::new(NomadBackend::start(cfg).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("nomad.db")).unwrap();
    let controller = Controller::new(
        ControllerConfig {
            shutdown_grace: Duration::from_millis(300),
            ..config()
        },
        Arc::clone(&backend) as Arc<dyn Backend>,
        store,
    );
    let server = serve_bound(listener, None, controller.clone());
    World {
        _emu: emu,
        fake,
        backend,
        controller,
        server,
        _dir: dir,
    }
}

fn job(p: Provider, knobs: &str) -> Value {
    let model = match p {
        Provider::OpenAi => "gpt-5-mini",
        Provider::Anthropic => "claude-haiku-4-5",
        Provider::Google => "gemini-2.5-flash",
    };
    json!({
        "user_id": "nomad",
        "provider": p.as_str(),
        "model": format!("{model}-{knobs}"),
        "prompt": "hello nomad",
        "credentials": {"api_key": fake_key(p)},
    })
}

impl World {
    async fn open(&self, body: Value) -> SseReader {
        let res = send(
            self.server.addr,
            Method::POST,
            "/v1/executions",
            &[SSE],
            Some(body),
        )
        .await;
        SseReader::new(res)
    }

    async fn run(&self, body: Value) -> Vec<Sse> {
        tokio::time::timeout(Duration::from_secs(60), self.open(body).await.rest())
            .await
            .expect("the execution hung")
    }

    async fn shutdown(mut self) {
        self.server.shutdown();
        tokio::time::timeout(Duration::from_secs(60), &mut self.server.task)
            .await
            .expect("shutdown hung")
            .unwrap()
            .unwrap();
        let live = self.backend.live_children();
        assert!(live.is_empty(), "{live:?} {:?}", self.fake.jobs());
        let children: Vec<_> = self
            .fake
            .jobs()
            .into_iter()
            .filter(|j| j.dispatched)
            .collect();
        assert!(children.is_empty(), "not purged: {children:?}");
        assert_eq!(self.fake.running_processes(), 0);
    }

    /// Calls the runtime API with `bearer`.
    async fn runtime_next(&self, bearer: &str) -> StatusCode {
        let r = Request::builder()
            .method(Method::GET)
            .uri("/runtime/v1/next")
            .header("authorization", format!("Bearer {bearer}"))
            .body(Body::empty())
            .unwrap();
        call(&polydev_controller::app(self.controller.clone()), r)
            .await
            .status
    }
}

fn last_error(events: &[Sse]) -> String {
    let last = events.last().expect("no events");
    assert_eq!(
        last.event,
        "error",
        "{last:?} after {} events",
        events.len()
    );
    last.data["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_that_fails_to_start_ends_with_a_clear_error() {
    let w = world(0, |_| {}).await;
    w.fake
        .fail_next_allocations(1, "failed to pull image polydev-runtime");
    let events = w.run(job(Provider::OpenAi, "len4")).await;
    let msg = last_error(&events);
    assert!(msg.contains("did not start on Nomad"), "{msg}");
    assert!(msg.contains("Driver Failure"), "{msg}");
    // The next one works.
    let events = w.run(job(Provider::Anthropic, "len4")).await;
    assert_eq!(events.last().unwrap().event, "end", "{events:?}");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_allocation_ends_the_execution() {
    let w = world(0, |_| {}).await;
    let mut r = w.open(job(Provider::Google, "len400-rate20")).await;
    loop {
        let e = r.next().await.unwrap();
        if e.event == "text" {
            break;
        }
    }
    let running: Vec<_> = w
        .fake
        .allocations()
        .into_iter()
        .filter(|a| a.client_status == "running")
        .collect();
    assert_eq!(running.len(), 1, "{running:?}");
    assert!(w.fake.lose_allocation(&running[0].id));
    let rest = tokio::time::timeout(Duration::from_secs(30), r.rest())
        .await
        .expect("hung after the allocation was lost");
    let msg = last_error(&rest);
    assert!(
        msg.contains("alloc is lost since its node is down"),
        "{msg}"
    );
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nomad_api_errors_and_timeouts_end_with_clear_errors() {
    let w = world(0, |cfg| {
        cfg.nomad.request_timeout = Duration::from_millis(500);
        cfg.max_watch_failures = 2;
        cfg.watch_wait = Duration::from_millis(500);
    })
    .await;
    // One 500 is retried by the client: the execution succeeds.
    w.fake.fail_requests_matching("/dispatch", 1, 500);
    let events = w.run(job(Provider::OpenAi, "len4")).await;
    assert_eq!(events.last().unwrap().event, "end", "{events:?}");
    // The API failing while a runtime runs: the execution ends saying so.
    let mut r = w.open(job(Provider::Anthropic, "len400-rate20")).await;
    loop {
        if r.next().await.unwrap().event == "text" {
            break;
        }
    }
    w.fake.fail_requests_matching("/allocations", 1000, 500);
    let rest = tokio::time::timeout(Duration::from_secs(30), r.rest())
        .await
        .expect("hung while Nomad failed");
    let msg = last_error(&rest);
    assert!(msg.contains("Nomad API kept failing"), "{msg}");
    // Its child is purged (before the next rule, which would match its path too).
    let backend = Arc::clone(&w.backend);
    eventually("the child is purged", move || {
        backend.live_children().is_empty()
    })
    .await;
    // Persistent 500s on dispatch: a clear error, no hang.
    w.fake.fail_requests_matching("/dispatch", 20, 500);
    let msg = last_error(&w.run(job(Provider::OpenAi, "len4")).await);
    assert!(msg.contains("Nomad dispatch failed"), "{msg}");
    assert!(msg.contains("500"), "{msg}");
    // Every child was still stopped and purged.
    w.shutdown().await;
}

/// A backend against a fresh fake whose `setup` runs first; what `start` answered.
async fn start_against(
    setup: impl FnOnce(&FakeNomad),
    tune: impl FnOnce(&mut NomadBackendConfig),
) -> (FakeNomad, Result<NomadBackend, String>) {
    let bin = polydev_test_support::workspace_bin("polydev-runtime");
    let fake = FakeNomad::start(FakeConfig::new(bin)).await.unwrap();
    setup(&fake);
    let job = RuntimeJobConfig::new("http://127.0.0.1:9");
    let mut cfg = NomadBackendConfig::new(fake.client_config(), job);
    tune(&mut cfg);
    let started = NomadBackend::start(cfg).await.map_err(|e| e.to_string());
    (fake, started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nomad_that_does_not_answer_fails_the_start_clearly() {
    // Registration hangs past the client timeout on every attempt.
    let (fake, started) = start_against(
        |fake| fake.delay_requests("/v1/jobs", 6, Duration::from_secs(3)),
        |cfg| cfg.nomad.request_timeout = Duration::from_millis(300),
    )
    .await;
    let msg = started.unwrap_err();
    assert!(
        msg.contains("cannot register the Nomad job polydev-runtime"),
        "{msg}"
    );
    assert!(msg.contains("timed out"), "{msg}");
    assert!(fake.jobs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_nomad_refuses_fails_the_start_with_nomads_message_at_once() {
    // What Nomad answers for the job as it was before issue 10 (tests/spec_admission.rs in
    // polydev-nomad shows the fake's admission producing exactly this for that job).
    let refusal = "1 error occurred:\n\t* Task group runtime validation failed: 1 error \
        occurred:\n\t* Task runtime validation failed: 1 error occurred:\n\t* 1 error \
        occurred:\n\t* log storage (100 MB) must be less than requested disk capacity (10 MB)\
        \n\n\n\n\n\n\n\n";
    let (fake, started) = start_against(
        |fake| fake.fail_requests_with("/v1/jobs", 5, 500, refusal),
        |_| {},
    )
    .await;
    let msg = started.unwrap_err();
    assert!(
        msg.contains("Nomad refused the runtime job polydev-runtime"),
        "{msg}"
    );
    assert!(
        msg.contains("log storage (100 MB) must be less than requested disk capacity (10 MB)"),
        "{msg}"
    );
    assert_eq!(fake.request_count(), 1, "a validation error is not retried");
    // The job as built today is accepted by the stricter fake, with Nomad's warning.
    let (fake, started) = start_against(|_| {}, |_| {}).await;
    assert!(started.is_ok(), "{:?}", started.err());
    assert!(fake.jobs().iter().any(|j| j.id == "polydev-runtime"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_of_other_allocations_or_jobs_are_refused() {
    let w = world(1, |_| {}).await;
    for _ in 0..2000 {
        if w.backend.pool_status().idle >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(w.backend.pool_status().idle, 1);
    let alloc = w
        .fake
        .allocations()
        .into_iter()
        .find(|a| a.client_status == "running")
        .unwrap();
    let claims = |alloc_id: &str, job_id: &str, aud: &str| MintClaims {
        namespace: "default".into(),
        job_id: job_id.into(),
        allocation_id: alloc_id.into(),
        task: "runtime".into(),
        audience: vec![aud.into()],
        issued_at_offset: 0,
        expires_in: Some(600),
    };
    // An allocation this controller did not dispatch.
    let other = w
        .fake
        .mint_token(&claims(
            "0b9e3a1c-1111-2222-3333-444455556666",
            "polydev-runtime",
            "polydev-controller",
        ))
        .unwrap();
    assert_eq!(w.runtime_next(&other).await, StatusCode::UNAUTHORIZED);
    // Our allocation, but another job or audience.
    let wrong_job = w
        .fake
        .mint_token(&claims(&alloc.id, "some-other-job", "polydev-controller"))
        .unwrap();
    assert_eq!(w.runtime_next(&wrong_job).await, StatusCode::UNAUTHORIZED);
    let wrong_aud = w
        .fake
        .mint_token(&claims(&alloc.id, "polydev-runtime", "nomadproject.io"))
        .unwrap();
    assert_eq!(w.runtime_next(&wrong_aud).await, StatusCode::UNAUTHORIZED);
    // Expired.
    let mut c = claims(&alloc.id, "polydev-runtime", "polydev-controller");
    c.issued_at_offset = -7200;
    c.expires_in = Some(-3600);
    let expired = w.fake.mint_token(&c).unwrap();
    assert_eq!(w.runtime_next(&expired).await, StatusCode::UNAUTHORIZED);
    // Garbage and unsigned.
    assert_eq!(w.runtime_next("not-a-jwt").await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        w.runtime_next("eyJhbGciOiJub25lIn0.eyJmb28iOjF9.").await,
        StatusCode::UNAUTHORIZED
    );
    // The warm instance still serves its one job.
    let events = w.run(job(Provider::OpenAi, "len4")).await;
    assert_eq!(events.last().unwrap().event, "end", "{events:?}");
    w.shutdown().await;
}

/// `GET path` on the fake, raw JSON.
fn fake_get(fake: &FakeNomad, path: &str) -> Value {
    let addr = fake.address().trim_start_matches("http://").to_owned();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // Dechunk.
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).unwrap()
}

/// Every value of `spec` is in `stored` (Nomad adds server-side fields and defaults).
fn contained(spec: &Value, stored: &Value, at: &str) {
    match (spec, stored) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let inner = b
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}/{k} missing in Nomad"));
                contained(v, inner, &format!("{at}/{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                contained(x, y, &format!("{at}/{i}"));
            }
        }
        (a, b) => assert_eq!(a, b, "{at}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nomad_spec_prints_what_the_backend_registers() {
    let w = world(0, |_| {}).await;
    // Registered at start.
    for _ in 0..1000 {
        if w.fake.jobs().iter().any(|j| j.id == "polydev-runtime") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fake = Arc::clone(&w.fake);
    let stored = tokio::task::spawn_blocking(move || fake_get(&fake, "/v1/job/polydev-runtime"))
        .await
        .unwrap();
    let spec = w.backend.spec().clone();
    contained(&spec["Job"], &stored, "Job");
    // No credential-like value anywhere in it, and only opaque IDs in dispatch Meta.
    let text = spec.to_string();
    assert!(!text.contains("CANARY"), "{text}");

    // The subcommand, with the same settings, prints the same document.
    let controller_url = spec["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]["CONTROLLER_URL"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_polydev-controller"));
    cmd.arg("nomad-spec")
        .env_clear()
        .env("POLYDEV_PUBLIC_URL", &controller_url);
    let env = spec["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]
        .as_object()
        .unwrap();
    for k in ["OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "GOOGLE_BASE_URL"] {
        cmd.env(k, env[k].as_str().unwrap());
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, spec);
    // And without extra settings, exactly runtime_job (the HCL twin's reference).
    let plain = std::process::Command::new(env!("CARGO_BIN_EXE_polydev-controller"))
        .args([
            "nomad-spec",
            "--public-url",
            "https://controller.example:8443",
        ])
        .env_clear()
        .output()
        .unwrap();
    let plain: Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert_eq!(
        plain,
        job_spec(
            &RuntimeJobConfig::new("https://controller.example:8443"),
            &[]
        )
        .unwrap()
    );
    // An http:// URL off loopback is refused.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_polydev-controller"))
        .args(["nomad-spec", "--public-url", "http://10.0.0.5:8080"])
        .env_clear()
        .output()
        .unwrap();
    assert!(!bad.status.success());
    w.shutdown().await;
}

#[test]
fn credential_like_runtime_env_is_refused() {
    let job = RuntimeJobConfig::new("https://c.example");
    for k in [
        "OPENAI_API_KEY",
        "MY_TOKEN",
        "CONTROLLER_URL",
        "NOMAD_TOKEN",
    ] {
        assert!(job_spec(&job, &[(k.into(), "x".into())]).is_err(), "{k}");
    }
    assert!(job_spec(&job, &[("OPENAI_BASE_URL".into(), "https://x".into())]).is_ok());
}

/// A controller restart with the Nomad backend (DESIGN.md 5.2): SIGTERM detaches (the client's
/// stream closes with no terminal event, the dispatched child keeps its job, the row stays
/// `running` with its instance record), and a second controller on the same database and
/// address adopts the child: its allocation is followed again and its runtime may report to
/// it. The runtime resends its report: the client resuming with `Last-Event-ID` gets the rest
/// of the answer with consecutive ids and one `end`, the row ends `succeeded`, and nothing is
/// left in Nomad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_adopts_the_running_child() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_test_writer()
        .try_init();
    let bin = polydev_test_support::workspace_bin("polydev-runtime");
    assert!(bin.is_file(), "run `cargo build -p polydev-runtime` first");
    let emu = emulator().await;
    let fake = Arc::new(FakeNomad::start(FakeConfig::new(bin)).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("adopt.db");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = || {
        let job = RuntimeJobConfig::new(format!("http://127.0.0.1:{}", addr.port()));
        let mut cfg = NomadBackendConfig::new(fake.client_config(), job);
        cfg.runtime_env = runtime_env(&emu.base_url());
        cfg.start_timeout = Duration::from_secs(10);
        cfg
    };
    let controller_cfg = ControllerConfig {
        shutdown_grace: Duration::from_millis(300),
        reattach_grace: Duration::from_secs(5),
        ..config()
    };
    let start = |listener| {
        let (cfg, controller_cfg, db) = (cfg(), controller_cfg.clone(), db.clone());
        async move {
            let backend = Arc::new(NomadBackend::start(cfg).await.unwrap());
            let (store, recovery) = Store::open_adopting(&db, Some("nomad")).unwrap();
            let controller = Controller::new(
                controller_cfg,
                Arc::clone(&backend) as Arc<dyn Backend>,
                store,
            );
            let adopted = controller.adopt(recovery.adoptable);
            let server = serve_bound(listener, None, controller.clone());
            (backend, controller, server, adopted)
        }
    };

    let (_a_backend, a, mut a_server, adopted) = start(listener).await;
    assert_eq!(adopted, 0);
    let res = send(
        addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job(Provider::OpenAi, "len300-rate30")),
    )
    .await;
    let mut sse = SseReader::new(res);
    let first = sse.next().await.unwrap();
    let id = first.data["execution_id"].as_str().unwrap().to_owned();
    assert_eq!(first.id, Some(1));
    let mut last_id = loop {
        let e = sse.next().await.unwrap();
        if e.event == "text" {
            break e.id.unwrap();
        }
    };
    a_server.shutdown();
    tokio::time::timeout(Duration::from_secs(60), &mut a_server.task)
        .await
        .expect("detach hung")
        .unwrap()
        .unwrap();
    drop(a);
    for e in sse.rest().await {
        assert!(e.event != "end" && e.event != "error", "{e:?}");
        last_id = e.id.unwrap_or(last_id);
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let status: String = conn
        .query_row("SELECT status FROM executions WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(status, "running");
    drop(conn);
    assert!(
        fake.jobs().iter().any(|j| j.dispatched),
        "the child was stopped at detach"
    );

    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let (b_backend, b, mut b_server, adopted) = start(listener).await;
    assert_eq!(adopted, 1);
    let res = send(
        addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[SSE, ("last-event-id", &last_id.to_string())],
        None,
    )
    .await;
    let rest = tokio::time::timeout(Duration::from_secs(60), SseReader::new(res).rest())
        .await
        .expect("the resumed stream hung");
    let terminal: Vec<&Sse> = rest
        .iter()
        .filter(|e| e.event == "end" || e.event == "error")
        .collect();
    assert_eq!(terminal.len(), 1, "{rest:?}");
    let v = b.lookup(&id).await.unwrap();
    let status = match v {
        polydev_controller::controller::Lookup::Live(e) => e.status().as_str().to_owned(),
        other => panic!("{other:?}"),
    };
    // The runtime resent its report: the rest of the answer, consecutive ids, `end`.
    assert_eq!(
        terminal[0].event, "end",
        "the runtime did not resume: {rest:?}"
    );
    for (i, e) in rest.iter().enumerate() {
        assert_eq!(e.id, Some(last_id + 1 + i as u64), "{rest:?}");
    }
    assert_eq!(status, "succeeded");
    b_server.shutdown();
    tokio::time::timeout(Duration::from_secs(60), &mut b_server.task)
        .await
        .expect("shutdown hung")
        .unwrap()
        .unwrap();
    drop(b);
    // The adopted child's supervisor stops and purges it (bounded by the drain grace).
    for _ in 0..3000 {
        if b_backend.live_children().is_empty()
            && fake.running_processes() == 0
            && !fake.jobs().iter().any(|j| j.dispatched)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(b_backend.live_children().is_empty());
    assert_eq!(fake.running_processes(), 0);
    let left: Vec<_> = fake.jobs().into_iter().filter(|j| j.dispatched).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Issue 15: a controller killed outright (SIGKILL: no detach; here its tokio runtime is
/// dropped, so none of its tasks runs another step) leaves its warm pool's idle children
/// dispatched and running, with nobody to give them a job. The next controller on the same
/// database adopts the running execution and stops and purges every other child the killed
/// one left, never the adopted one nor its own pool's; the client resuming with
/// `Last-Event-ID` gets the rest of the answer once, and nothing is left after its shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_sweeps_the_children_a_killed_one_left() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_test_writer()
        .try_init();
    let bin = polydev_test_support::workspace_bin("polydev-runtime");
    assert!(bin.is_file(), "run `cargo build -p polydev-runtime` first");
    let emu = emulator().await;
    let fake = Arc::new(FakeNomad::start(FakeConfig::new(bin)).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sweep.db");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = |pool: usize| {
        let job = RuntimeJobConfig::new(format!("http://127.0.0.1:{}", addr.port()));
        let mut cfg = NomadBackendConfig::new(fake.client_config(), job);
        cfg.runtime_env = runtime_env(&emu.base_url());
        cfg.start_timeout = Duration::from_secs(20);
        cfg.pool_size = pool;
        cfg
    };
    let controller_cfg = ControllerConfig {
        shutdown_grace: Duration::from_millis(300),
        reattach_grace: Duration::from_secs(10),
        ..config()
    };
    let start = |listener: std::net::TcpListener, pool: usize, db: std::path::PathBuf| {
        let (cfg, controller_cfg) = (cfg(pool), controller_cfg.clone());
        async move {
            let backend = Arc::new(NomadBackend::start(cfg).await.unwrap());
            let (store, recovery) = Store::open_adopting(&db, Some("nomad")).unwrap();
            let controller = Controller::new(
                controller_cfg,
                Arc::clone(&backend) as Arc<dyn Backend>,
                store,
            );
            let adopted = controller.adopt(recovery.adoptable);
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let server = serve_bound(listener, None, controller.clone());
            (backend, controller, server, adopted)
        }
    };
    let pool_ready = |backend: Arc<NomadBackend>, n: usize| async move {
        for _ in 0..1200 {
            if backend.pool_status().idle >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the pool did not fill: {:?}", backend.pool_status());
    };

    // The first controller runs on a runtime of its own, to be killed.
    let killed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (a_backend, a, a_server, adopted) =
        killed.spawn(start(listener, 2, db.clone())).await.unwrap();
    assert_eq!(adopted, 0);
    killed
        .spawn(pool_ready(Arc::clone(&a_backend), 2))
        .await
        .unwrap();
    let res = send(
        addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job(Provider::OpenAi, "len300-rate30")),
    )
    .await;
    let mut sse = SseReader::new(res);
    let first = sse.next().await.unwrap();
    let id = first.data["execution_id"].as_str().unwrap().to_owned();
    let last_id = loop {
        let e = sse.next().await.unwrap();
        if e.event == "text" {
            break e.id.unwrap();
        }
    };
    // The pool refilled: two idle children and the one running the execution.
    killed
        .spawn(pool_ready(Arc::clone(&a_backend), 2))
        .await
        .unwrap();
    let left_by_a = a_backend.live_children();
    assert_eq!(left_by_a.len(), 3, "{left_by_a:?}");
    // What the killed controller had written when it died: its database once the handed-out
    // job is journaled (dropping its runtime runs drop guards a SIGKILL never would, and they
    // write to the database).
    let at_kill = dir.path().join("at-kill.db");
    let mut journaled = false;
    for _ in 0..600 {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM instance_records", [], |r| r.get(0))
            .unwrap();
        if n == 1 {
            conn.execute("VACUUM INTO ?1", [at_kill.to_str().unwrap()])
                .unwrap();
            journaled = true;
            break;
        }
        drop(conn);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(journaled, "the handed-out job was never journaled");
    killed.shutdown_background();
    drop((a_backend, a, a_server));
    // The stream breaks off (no `end`): the client resumes after the last event it read.
    drop(sse);
    // Nothing stopped them.
    let jobs = fake.jobs();
    for c in &left_by_a {
        assert!(
            jobs.iter().any(|j| &j.id == c && !j.stop),
            "{c} was stopped: {jobs:?}"
        );
    }

    let listener = loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let (b_backend, b, mut b_server, adopted) = start(listener, 1, at_kill.clone()).await;
    assert_eq!(adopted, 1);
    // The journaled handle is `<dispatched job>/<allocation>`.
    let handle: String = rusqlite::Connection::open(&at_kill)
        .unwrap()
        .query_row("SELECT handle FROM instance_records", [], |r| r.get(0))
        .unwrap();
    let adopted_child = handle.rsplit_once('/').unwrap().0.to_owned();
    assert!(left_by_a.contains(&adopted_child), "{handle} {left_by_a:?}");
    let stale: Vec<&String> = left_by_a.iter().filter(|c| **c != adopted_child).collect();
    // The idle leftovers are stopped and purged: no job, no live allocation.
    let gone = |fake: &FakeNomad| {
        let jobs = fake.jobs();
        let allocs = fake.allocations();
        stale.iter().all(|c| {
            !jobs.iter().any(|j| &j.id == *c)
                && !allocs
                    .iter()
                    .any(|a| &a.job_id == *c && !a.status().is_terminal())
        })
    };
    let mut swept = false;
    for _ in 0..1200 {
        if gone(&fake) {
            swept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swept, "leftovers not swept: {stale:?} {:?}", fake.jobs());

    let res = send(
        addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[SSE, ("last-event-id", &last_id.to_string())],
        None,
    )
    .await;
    let rest = tokio::time::timeout(Duration::from_secs(60), SseReader::new(res).rest())
        .await
        .expect("the resumed stream hung");
    let terminal: Vec<&Sse> = rest
        .iter()
        .filter(|e| e.event == "end" || e.event == "error")
        .collect();
    assert_eq!(terminal.len(), 1, "{rest:?}");
    assert_eq!(
        terminal[0].event, "end",
        "the runtime did not resume: {rest:?}"
    );
    for (i, e) in rest.iter().enumerate() {
        assert_eq!(e.id, Some(last_id + 1 + i as u64), "{rest:?}");
    }
    let status = match b.lookup(&id).await.unwrap() {
        polydev_controller::controller::Lookup::Live(e) => e.status().as_str().to_owned(),
        other => panic!("{other:?}"),
    };
    assert_eq!(status, "succeeded");
    // The new controller's own pool was never touched.
    pool_ready(Arc::clone(&b_backend), 1).await;
    let jobs = fake.jobs();
    // (The adopted child may still be being purged now that its execution ended.)
    let own: Vec<String> = b_backend
        .live_children()
        .into_iter()
        .filter(|c| *c != adopted_child)
        .collect();
    assert!(!own.is_empty());
    for c in own {
        assert!(!left_by_a.contains(&c), "{c}");
        assert!(jobs.iter().any(|j| j.id == c && !j.stop), "{c}: {jobs:?}");
    }

    b_server.shutdown();
    tokio::time::timeout(Duration::from_secs(60), &mut b_server.task)
        .await
        .expect("shutdown hung")
        .unwrap()
        .unwrap();
    drop(b);
    for _ in 0..3000 {
        if b_backend.live_children().is_empty()
            && fake.running_processes() == 0
            && !fake.jobs().iter().any(|j| j.dispatched)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(b_backend.live_children().is_empty());
    assert_eq!(fake.running_processes(), 0);
    let left: Vec<_> = fake.jobs().into_iter().filter(|j| j.dispatched).collect();
    assert!(left.is_empty(), "{left:?}");
}
