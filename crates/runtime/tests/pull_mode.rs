//! Controller-pull warm mode against a fake controller that speaks the runtime API
//! (`GET /runtime/v1/next`, `POST /runtime/v1/executions/{id}/events`) and an emulator.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use polydev_protocol::{ErrorKind, Event, Provider};
use polydev_test_support::{RuntimeCommand, answer_text, emulator, fake_key, parse_events};

const BIN: &str = env!("CARGO_BIN_EXE_polydev-runtime");

/// What the fake controller does on `/next`.
#[derive(Clone, Copy, PartialEq)]
enum NextMode {
    /// 204 first (so the runtime polls again), then the job.
    JobAfterOneEmptyPoll,
    /// 410: no job will come.
    Gone,
}

struct Fake {
    job: String,
    mode: NextMode,
    token_file: PathBuf,
    /// The token the controller accepts now; rotated after the first poll.
    token: Mutex<String>,
    polls: Mutex<u32>,
    received: Mutex<Vec<String>>,
}

fn authorized(fake: &Fake, headers: &HeaderMap) -> bool {
    let want = format!("Bearer {}", lock(&fake.token));
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == want)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn next(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    if !authorized(&fake, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if fake.mode == NextMode::Gone {
        return StatusCode::GONE.into_response();
    }
    let polls = {
        let mut p = lock(&fake.polls);
        *p += 1;
        *p
    };
    if polls == 1 {
        // Rotate the token, as Nomad does with workload identities: the runtime must re-read
        // its token file before the next request.
        *lock(&fake.token) = "rotated-token".to_owned();
        let _ = std::fs::write(&fake.token_file, "rotated-token\n");
        return StatusCode::NO_CONTENT.into_response();
    }
    (StatusCode::OK, fake.job.clone()).into_response()
}

async fn events(
    State(fake): State<Arc<Fake>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorized(&fake, &headers) || id != "ex_pull_1" {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        buf.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    lock(&fake.received).extend(text.lines().map(str::to_owned));
    StatusCode::OK.into_response()
}

async fn start_fake(fake: Arc<Fake>) -> String {
    let app = Router::new()
        .route("/runtime/v1/next", get(next))
        .route("/runtime/v1/executions/{id}/events", post(events))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn fake(job: String, mode: NextMode, dir: &tempfile::TempDir) -> Arc<Fake> {
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "first-token\n").unwrap_or_else(|e| panic!("{e}"));
    Arc::new(Fake {
        job,
        mode,
        token_file,
        token: Mutex::new("first-token".to_owned()),
        polls: Mutex::new(0),
        received: Mutex::new(Vec::new()),
    })
}

fn pull_cmd(url: &str, fake: &Fake) -> RuntimeCommand {
    RuntimeCommand::new(BIN)
        .env("WARM_POOL", "true")
        .env("CONTROLLER_URL", url)
        .env(
            "RUNTIME_TOKEN_FILE",
            fake.token_file.to_str().unwrap_or_default(),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_job_streams_its_events_to_the_controller() {
    let emu = emulator().await;
    for p in Provider::ALL {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (_, base) = polydev_test_support::base_url_env(p, &emu.base_url());
        let job = serde_json::json!({
            "execution_id": "ex_pull_1", "user_id": "u", "provider": p.as_str(),
            "model": "emu-len20-split5", "prompt": "hi", "base_url": base,
            "credentials": {"api_key": fake_key(p)},
        })
        .to_string();
        let fake = fake(job, NextMode::JobAfterOneEmptyPoll, &dir);
        let url = start_fake(fake.clone()).await;
        let out = pull_cmd(&url, &fake).run().await;
        assert_eq!(out.code, Some(0), "{p}: {out:#?}");
        out.assert_no_canary();
        // Only `ready` goes to stdout; the answer goes to the controller.
        assert_eq!(out.events, vec![Event::Ready], "{p}");
        let received = parse_events(&lock(&fake.received).join("\n"));
        assert!(
            matches!(received.first(), Some(Event::Start { execution_id, .. }) if execution_id == "ex_pull_1")
        );
        assert!(
            matches!(received.last(), Some(Event::End { .. })),
            "{p}: {received:?}"
        );
        let text: String = received.iter().filter_map(Event::as_text).collect();
        assert_eq!(text, answer_text(20), "{p}");
        assert_eq!(*lock(&fake.polls), 2, "{p}: polled again after 204");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_remote_controller_is_refused_before_any_io() {
    let out = RuntimeCommand::new(BIN)
        .env("WARM_POOL", "true")
        .env("CONTROLLER_URL", "http://10.255.255.1:8080")
        .env("RUNTIME_TOKEN", "t")
        .timeout(Duration::from_secs(5))
        .run()
        .await;
    assert_eq!(out.code, ErrorKind::Config.exit_code(), "{out:#?}");
    assert!(out.stderr.contains("https"), "{}", out.stderr);
    let no_token = RuntimeCommand::new(BIN)
        .env("WARM_POOL", "true")
        .env("CONTROLLER_URL", "http://127.0.0.1:1")
        .run()
        .await;
    assert_eq!(no_token.code, Some(64), "{no_token:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_token_gone_controller_and_sigterm() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let gone = fake(String::new(), NextMode::Gone, &dir);
    let url = start_fake(gone.clone()).await;
    let out = pull_cmd(&url, &gone).run().await;
    assert_eq!(out.code, Some(0), "410 means exit quietly: {out:#?}");
    assert_eq!(out.events, vec![Event::Ready]);

    let rejected = pull_cmd(&url, &gone)
        .env("RUNTIME_TOKEN_FILE", "")
        .env("RUNTIME_TOKEN", "wrong")
        .run()
        .await;
    assert_eq!(rejected.code, ErrorKind::Auth.exit_code(), "{rejected:#?}");

    // A runtime waiting on an unreachable controller stops cleanly on SIGTERM.
    let waiting = RuntimeCommand::new(BIN)
        .env("WARM_POOL", "true")
        .env("CONTROLLER_URL", "http://127.0.0.1:9")
        .env("RUNTIME_TOKEN", "t");
    let child = waiting.spawn();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().unwrap_or_else(|| panic!("pid"));
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(kill.is_ok_and(|s| s.success()));
    let out = polydev_test_support::collect(child, Duration::from_secs(2)).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.events, vec![Event::Ready]);
}
