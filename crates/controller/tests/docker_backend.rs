//! The Docker backend against this machine's Docker Engine, through the controller's API
//! (controller, scheduler, driver and backend in-process, real containers of the pinned
//! `polydev-runtime:<version>` image):
//!
//! - every provider streams, cold and warm, with the emulator as a container on a private
//!   network, over TLS, reached by its container name (the emulator's CA mounted read-only);
//! - running containers carry every hardening setting, and the key is in none of them
//!   (`docker inspect`), warm or cold;
//! - `POLYDEV_DOCKER_NETWORK=host` with the in-process emulator on loopback: cancel closes the
//!   upstream and removes the container; a container killed from outside mid-stream, and one
//!   killed for memory, end as typed errors; an idle warm container that dies is replaced,
//!   never handed out; the backend creates its own network when missing;
//! - an unreachable engine is a clear `unavailable` error, then `503` (in-process and through
//!   the binary with `DOCKER_HOST`);
//! - the binary killed with SIGKILL mid-stream and restarted: the leftover containers are
//!   removed and the execution is recorded `failed`/`interrupted`;
//! - pull mode (`POLYDEV_DOCKER_MODE=pull`, host network, the controller on loopback): every
//!   provider cold and warm, cancel (cold and warm), what `docker inspect` shows (no key, no
//!   prompt, no token, no stdin, the token file mounted read-only, the labels for finding the
//!   container again), a container killed mid-job, an out-of-memory kill, a container that
//!   cannot reach the controller, and nothing left after shutdown (containers, token
//!   directory); the binary with `POLYDEV_DOCKER_MODE=pull` (the wiring, the default URL);
//! - pull mode across a controller restart (DESIGN.md 5.2): SIGTERM detaches (the container
//!   runs on, its token file stays, the store journals its id and token digest, no key or token
//!   in the database) and the next controller adopts it, a client resuming with
//!   `Last-Event-ID` gets every remaining event once and one `end`, then the container and its
//!   token file are gone; the binary killed with SIGKILL mid-stream with a warm pool: the next
//!   one removes the idle leftover, adopts the claimed container and loses nothing; an adopted
//!   container that never reports again ends `interrupted` after the grace and is removed.
//!
//! After every test no container of its instance is left (`docker ps -a`). Needs a Docker
//! Engine: without one these tests print `SKIPPED …`, and fail under `CI=true`
//! (`polydev_test_support::docker`); the images are built by `deploy/docker/build.sh` if
//! missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;
use polydev_controller::Controller;
use polydev_controller::backend::Backend;
use polydev_controller::backend::docker::{
    DEFAULT_IMAGE, DockerBackend, DockerBackendConfig, DockerMode, LABEL_CONTROLLER,
    LABEL_EXECUTION, LABEL_INSTANCE, LABEL_MANAGED, LABEL_MODE, LABEL_ROLE, TOKEN_MOUNT,
};
use polydev_controller::backend::process::PullOptions;
use polydev_controller::config::{ControllerConfig, Secret};
use polydev_controller::store::Store;
use polydev_protocol::Provider;
use polydev_test_support::docker::{
    DockerScope, PID_LABEL, SCOPE_LABEL, docker, repo_root, require_docker, under_ci,
};
use polydev_test_support::{CANARY, Emulator, answer_text, base_url_env, emulator, fake_key};
use serde_json::{Value, json};
use support::{SseReader, TOKEN, send};
use tokio::io::{AsyncBufReadExt, BufReader};

const SSE: (&str, &str) = ("accept", "text/event-stream");
/// Bound on anything that waits for the engine (it may be busy with other tests' containers).
const ENGINE_WAIT: Duration = Duration::from_secs(120);

// === set-up ===

/// The Docker check of every test, plus the pinned image the backend runs: built by
/// `deploy/docker/build.sh` when missing.
fn require(test: &str) -> Option<DockerScope> {
    let scope = require_docker(test)?;
    let present = || {
        docker(["image", "inspect", "--format", "{{.Id}}", DEFAULT_IMAGE])
            .status
            .success()
    };
    if !present() {
        let script = repo_root().join("deploy/docker/build.sh");
        let out = std::process::Command::new(&script)
            .arg("--quiet")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "deploy/docker/build.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !present() {
        let reason = format!("image {DEFAULT_IMAGE} is missing after deploy/docker/build.sh");
        if under_ci() {
            panic!("{test}: {reason}");
        }
        eprintln!("SKIPPED {test}: {reason} (under CI=true this is a failure)");
        return None;
    }
    Some(scope)
}

/// A backend configuration for `scope`: its id as the instance name, its labels on every
/// container (so the scope removes them even if the test fails), short timers.
fn backend_config(
    scope: &DockerScope,
    network: &str,
    env: Vec<(String, String)>,
) -> DockerBackendConfig {
    DockerBackendConfig {
        network: network.to_owned(),
        create_network: false,
        instance: scope.id().to_owned(),
        env,
        extra_labels: vec![
            (SCOPE_LABEL.to_owned(), scope.id().to_owned()),
            (PID_LABEL.to_owned(), std::process::id().to_string()),
        ],
        cancel_grace: Duration::from_secs(1),
        ..DockerBackendConfig::new()
    }
}

/// Base-URL variables pointing every provider at `base`.
fn base_urls(base: &str) -> Vec<(String, String)> {
    Provider::ALL
        .iter()
        .map(|p| {
            let (k, v) = base_url_env(*p, base);
            (k.to_owned(), v)
        })
        .collect()
}

fn controller_config() -> ControllerConfig {
    ControllerConfig {
        api_token: Some(Secret::new(TOKEN)),
        max_concurrency: 8,
        queue_size: 8,
        sse_keepalive: Duration::from_secs(1),
        ..ControllerConfig::default()
    }
}

/// The controller over a Docker backend, serving on a real port.
struct Stack {
    backend: Arc<DockerBackend>,
    server: support::Server,
    instance: String,
    _dir: tempfile::TempDir,
}

async fn stack(backend: DockerBackendConfig, config: ControllerConfig) -> Stack {
    // `POLYDEV_TEST_LOG=polydev_controller=debug` shows the controller's log.
    if let Ok(filter) = std::env::var("POLYDEV_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let instance = backend.instance.clone();
    let backend = Arc::new(DockerBackend::new(backend).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("p.db")).unwrap();
    let controller = Controller::new(config, backend.clone(), store);
    let server = support::serve(controller.clone()).await;
    Stack {
        backend,
        server,
        instance,
        _dir: dir,
    }
}

impl Stack {
    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Shuts the controller down and asserts nothing of this instance is left on the engine.
    async fn stop(mut self) {
        self.server.shutdown();
        tokio::time::timeout(ENGINE_WAIT, &mut self.server.task)
            .await
            .expect("the controller shuts down in time")
            .unwrap()
            .unwrap();
        assert!(
            self.backend.container_names().is_empty(),
            "{:?}",
            self.backend.container_names()
        );
        assert_eq!(
            ours(&self.instance).await,
            Vec::<String>::new(),
            "left after shutdown"
        );
    }
}

// === engine helpers (the docker CLI, off the async workers) ===

async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || docker(&args))
        .await
        .unwrap()
}

/// Every container (running or not) of `instance`.
async fn ours(instance: &str) -> Vec<String> {
    let out = cli(vec![
        "ps".into(),
        "-aq".into(),
        "--filter".into(),
        format!("label={LABEL_CONTROLLER}={instance}"),
    ])
    .await;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `docker inspect` of one container, as JSON.
async fn inspect(id: &str) -> Value {
    let out = cli(vec!["inspect".into(), id.into()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

/// Waits (bounded) until no container of `instance` exists.
async fn wait_gone(instance: &str) {
    let deadline = Instant::now() + ENGINE_WAIT;
    loop {
        let left = ours(instance).await;
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "containers left: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + ENGINE_WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === API helpers ===

fn model(p: Provider, knobs: &str) -> String {
    let base = match p {
        Provider::OpenAi => "gpt-5-mini",
        Provider::Anthropic => "claude-haiku-4-5",
        Provider::Google => "gemini-2.5-flash",
    };
    format!("{base}-{knobs}")
}

fn job(p: Provider, knobs: &str) -> Value {
    json!({
        "user_id": "u-docker",
        "provider": p.as_str(),
        "model": model(p, knobs),
        "prompt": "Say hello from a container",
        "credentials": {"api_key": fake_key(p)},
    })
}

/// Starts a streamed execution; returns the reader and the execution id.
async fn open_stream(addr: SocketAddr, job: Value) -> (SseReader, String) {
    let res = send(addr, Method::POST, "/v1/executions", &[SSE], Some(job)).await;
    let mut r = SseReader::new(res);
    let first = r.next().await.unwrap();
    assert_eq!(first.event, "start");
    let id = first.data["execution_id"].as_str().unwrap().to_owned();
    (r, id)
}

/// Reads until the first `text` event.
async fn until_text(r: &mut SseReader) {
    loop {
        let e = r.next().await.expect("stream ended before any text");
        if e.event == "text" {
            return;
        }
        assert_ne!(e.event, "error", "{e:?}");
    }
}

/// `GET /v1/executions/{id}` as JSON.
async fn status(addr: SocketAddr, id: &str) -> Value {
    let res = send(
        addr,
        Method::GET,
        &format!("/v1/executions/{id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// Streams one execution to its end; asserts the full answer and returns the execution id.
async fn stream_ok(addr: SocketAddr, p: Provider, len: usize) -> String {
    let (mut r, id) = open_stream(addr, job(p, &format!("len{len}-split7"))).await;
    let rest = r.rest().await;
    let text: String = rest
        .iter()
        .filter(|e| e.event == "text")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    let last = rest.last().unwrap();
    assert_eq!(last.event, "end", "{p}: {rest:?}");
    assert_eq!(text, answer_text(len), "{p}");
    let raw = String::from_utf8_lossy(&r.raw);
    assert!(!raw.contains(CANARY), "{p}: the key is in the stream");
    id
}

/// A private network with the emulator as a TLS container on it; the backend's runtime env
/// (base URLs by container name, the emulator's CA).
fn tls_emulator(
    scope: &DockerScope,
) -> (
    String,
    polydev_test_support::docker::Emulated,
    Vec<(String, String)>,
) {
    let net = scope.network("net");
    let emu = scope.start_emulator(&net, &scope.name("emu"), true, &[]);
    let mut env = base_urls(&emu.base_url);
    let ca = emu.ca_pem.clone().expect("TLS mode writes its CA");
    env.push(("EXTRA_CA_CERTS".into(), ca.display().to_string()));
    (net, emu, env)
}

/// The in-process emulator on loopback, reached from containers on the host network.
async fn host_emulator() -> (Emulator, Vec<(String, String)>) {
    let emu = emulator().await;
    let env = base_urls(&emu.base_url());
    (emu, env)
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_streams_cold_and_warm_over_tls_by_container_name() {
    let Some(scope) = require("every_provider_streams_cold_and_warm_over_tls_by_container_name")
    else {
        return;
    };
    let (net, _emu, env) = tls_emulator(&scope);
    let s = stack(backend_config(&scope, &net, env), controller_config()).await;
    let t0 = Instant::now();
    for p in Provider::ALL {
        let id = stream_ok(s.addr(), p, 40).await;
        let v = status(s.addr(), &id).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        assert_eq!(v["warm"], false, "{v}");
    }
    eprintln!("cold: 3 executions in {:?}", t0.elapsed());
    wait_gone(&s.instance).await;

    // Warm: the pool fills, claims are served from it, and it refills.
    s.backend.set_pool_size(2).unwrap();
    until("pool warm", || s.backend.pool_status().idle == 2).await;
    let t0 = Instant::now();
    for p in Provider::ALL {
        until("pool refilled", || s.backend.pool_status().idle >= 1).await;
        let id = stream_ok(s.addr(), p, 40).await;
        let v = status(s.addr(), &id).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        assert_eq!(v["warm"], true, "{v}");
    }
    eprintln!("warm: 3 executions in {:?}", t0.elapsed());
    let pool = s.backend.pool_status();
    assert_eq!(pool.hits, 3, "{pool:?}");
    until("pool refilled", || s.backend.pool_status().idle == 2).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_containers_are_hardened_and_the_key_is_absent_from_docker_inspect() {
    let Some(scope) =
        require("running_containers_are_hardened_and_the_key_is_absent_from_docker_inspect")
    else {
        return;
    };
    let (net, _emu, env) = tls_emulator(&scope);
    let mut cfg = backend_config(&scope, &net, env);
    cfg.pool_size = 1;
    let s = stack(cfg, controller_config()).await;
    until("pool warm", || s.backend.pool_status().idle == 1).await;
    // Two slow streams at once: the first takes the warm container, the second starts cold.
    let p = Provider::Anthropic;
    let (mut warm, warm_id) = open_stream(s.addr(), job(p, "len300-rate20")).await;
    until_text(&mut warm).await;
    let (mut cold, cold_id) = open_stream(s.addr(), job(Provider::Google, "len300-rate20")).await;
    until_text(&mut cold).await;

    let ids = ours(&s.instance).await;
    assert!(ids.len() >= 2, "{ids:?}");
    let mut roles = Vec::new();
    for id in &ids {
        let v = inspect(id).await;
        let text = v.to_string();
        assert!(
            !text.contains(CANARY),
            "the key is in docker inspect {id}:\n{text}"
        );
        assert!(
            !text.contains("Say hello"),
            "the prompt is in docker inspect {id}"
        );
        let c = &v["Config"];
        let h = &v["HostConfig"];
        assert_eq!(c["User"], "65534:65534");
        assert_eq!(c["Image"], DEFAULT_IMAGE);
        assert_eq!(c["OpenStdin"], true);
        assert_eq!(c["StdinOnce"], true);
        assert_eq!(c["Tty"], false);
        assert_eq!(c["Labels"][LABEL_MANAGED], "true");
        assert_eq!(c["Labels"][LABEL_CONTROLLER], s.instance);
        assert_eq!(h["ReadonlyRootfs"], true);
        assert_eq!(h["CapDrop"], json!(["ALL"]));
        assert_eq!(h["SecurityOpt"], json!(["no-new-privileges:true"]));
        assert_eq!(h["Privileged"], false);
        assert_eq!(h["Memory"], 32 << 20);
        assert_eq!(h["MemorySwap"], 32 << 20);
        assert_eq!(h["PidsLimit"], 32);
        assert_eq!(h["IpcMode"], "private");
        assert_eq!(h["PidMode"], "");
        assert_eq!(h["NetworkMode"], net);
        assert_eq!(h["LogConfig"]["Type"], "none");
        assert_eq!(h["AutoRemove"], false);
        let binds = h["Binds"].as_array().unwrap();
        assert_eq!(binds.len(), 1, "{binds:?}");
        assert!(
            binds[0]
                .as_str()
                .unwrap()
                .ends_with(":/etc/polydev/extra-ca.pem:ro")
        );
        assert!(!text.contains("docker.sock"));
        assert!(v["State"]["Running"] == true, "{id}");
        let role = c["Labels"][LABEL_ROLE].as_str().unwrap().to_owned();
        if role == "cold" {
            assert_eq!(c["Labels"][LABEL_EXECUTION], cold_id);
            assert_eq!(c["Cmd"], json!(["run", "--job", "-"]));
        } else {
            assert!(c["Labels"].get(LABEL_EXECUTION).is_none());
        }
        roles.push(role);
    }
    roles.sort();
    assert!(
        roles.contains(&"cold".to_owned()) && roles.contains(&"warm".to_owned()),
        "{roles:?}"
    );

    // Cancel both: `cancelled` with the output so far, and the containers go away.
    for (r, id) in [(&mut warm, &warm_id), (&mut cold, &cold_id)] {
        let del = send(
            s.addr(),
            Method::DELETE,
            &format!("/v1/executions/{id}"),
            &[],
            None,
        )
        .await;
        assert_eq!(del.status(), 200);
        let rest = r.rest().await;
        let last = rest.last().unwrap();
        assert_eq!(last.event, "error", "{rest:?}");
        assert_eq!(last.data["kind"], "cancelled");
        assert_eq!(last.data["partial"], true);
    }
    // Only the refilled warm container may remain.
    let deadline = Instant::now() + ENGINE_WAIT;
    loop {
        let left = ours(&s.instance).await;
        let idle = s.backend.idle_names();
        if left.len() <= idle.len() {
            break;
        }
        assert!(Instant::now() < deadline, "left: {left:?}, idle: {idle:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_the_host_network_closes_the_upstream_and_removes_the_container() {
    let Some(scope) =
        require("cancel_on_the_host_network_closes_the_upstream_and_removes_the_container")
    else {
        return;
    };
    let (emu, env) = host_emulator().await;
    let s = stack(backend_config(&scope, "host", env), controller_config()).await;
    for p in Provider::ALL {
        let (mut r, id) = open_stream(s.addr(), job(p, "len400-rate20")).await;
        until_text(&mut r).await;
        assert_eq!(emu.status().open_streams, 1, "{p}");
        let t0 = Instant::now();
        let del = send(
            s.addr(),
            Method::DELETE,
            &format!("/v1/executions/{id}"),
            &[],
            None,
        )
        .await;
        assert_eq!(del.status(), 200);
        let rest = r.rest().await;
        let last = rest.last().unwrap();
        assert_eq!(last.event, "error", "{p}: {rest:?}");
        assert_eq!(last.data["kind"], "cancelled", "{p}");
        eprintln!("{p}: cancelled after {:?}", t0.elapsed());
        until("upstream closed", || emu.status().open_streams == 0).await;
        wait_gone(&s.instance).await;
        eprintln!("{p}: container removed {:?} after the cancel", t0.elapsed());
        let v = status(s.addr(), &id).await;
        assert_eq!(v["status"], "cancelled", "{v}");
        // Anthropic reports usage at the start of its stream, and the runtime reports it with
        // `cancelled`. (When the engine is so loaded that the SIGTERM takes longer than the
        // controller's cancel wait, the controller ends the execution itself, without it.)
        if p == Provider::Anthropic && last.data["message"] != "cancelled" {
            assert!(v["usage"].is_object(), "usage known at cancel: {v}");
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killed_from_outside_mid_stream_is_a_typed_error() {
    let Some(scope) = require("a_container_killed_from_outside_mid_stream_is_a_typed_error") else {
        return;
    };
    let (_emu, env) = host_emulator().await;
    let s = stack(backend_config(&scope, "host", env), controller_config()).await;
    let (mut r, id) = open_stream(s.addr(), job(Provider::OpenAi, "len400-rate20")).await;
    until_text(&mut r).await;
    let names = s.backend.container_names();
    assert_eq!(names.len(), 1, "{names:?}");
    let out = cli(vec!["kill".into(), names[0].clone()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rest = r.rest().await;
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error", "{rest:?}");
    assert_eq!(last.data["kind"], "internal", "{last:?}");
    assert_eq!(last.data["partial"], true, "{last:?}");
    assert_eq!(last.data["retryable"], true, "{last:?}");
    let msg = last.data["message"].as_str().unwrap();
    assert!(msg.contains("killed (SIGKILL)"), "{msg}");
    let v = status(s.addr(), &id).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["kind"], "internal", "{v}");
    wait_gone(&s.instance).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_memory_kill_is_reported_as_out_of_memory() {
    let Some(scope) = require("an_out_of_memory_kill_is_reported_as_out_of_memory") else {
        return;
    };
    let (_emu, env) = host_emulator().await;
    let mut cfg = backend_config(&scope, "host", env);
    // Docker's smallest limit, and a 3 MiB prompt the runtime must hold several times (the
    // line read, the parsed job, the request body): it is killed within a second. (A much
    // larger job is no better: near the limit the kernel reclaims the runtime's own code pages
    // while it reads, and it crawls for a minute before the kill.)
    cfg.memory_bytes = 6 << 20;
    let config = ControllerConfig {
        max_body_bytes: 64 << 20,
        ..controller_config()
    };
    let s = stack(cfg, config).await;
    let mut j = job(Provider::Anthropic, "len10");
    j["prompt"] = Value::String("a".repeat(3 << 20));
    let (mut r, id) = open_stream(s.addr(), j).await;
    let rest = r.rest().await;
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error", "{rest:?}");
    assert_eq!(last.data["kind"], "internal", "{last:?}");
    assert_eq!(last.data["retryable"], true, "{last:?}");
    assert_eq!(last.data["partial"], false, "{last:?}");
    // The engine's `State.OOMKilled` decides the message. Where the engine cannot see the
    // kernel's OOM kill (cgroup v1 whose OOM notifications are missing or late, seen here
    // under heavy load), it reports a bare exit 137: a SIGKILL the controller did not send,
    // which the controller names with memory as the likely cause. Only then is the second
    // message accepted, and only if a probe confirms the engine misses OOM kills.
    const OOM: &str = "the runtime was killed because it ran out of memory";
    const SIGKILL: &str = "the runtime was killed (SIGKILL) before it reported a result; it may have run out of memory";
    let message = last.data["message"].as_str().unwrap().to_owned();
    if message != OOM {
        assert_eq!(message, SIGKILL, "{last:?}");
        let probe = scope.name("oom-probe");
        let reports_oom = tokio::task::spawn_blocking(move || engine_reports_oom_kills(&probe))
            .await
            .unwrap();
        assert!(
            !reports_oom,
            "the engine reports OOM kills, but this one was not: {last:?}"
        );
        eprintln!("this engine does not report OOM kills (State.OOMKilled stays false)");
    }
    let v = status(s.addr(), &id).await;
    assert_eq!(v["status"], "failed", "{v}");
    wait_gone(&s.instance).await;
    s.stop().await;
}

/// Runs the pinned image at 6 MiB with a 3 MiB job line (as the test's job, through the CLI)
/// and says whether the engine reported the kernel's kill as `OOMKilled`.
fn engine_reports_oom_kills(name: &str) -> bool {
    let mut child = std::process::Command::new("docker")
        .args([
            "run",
            "-i",
            "--name",
            name,
            "--label",
            &format!("{PID_LABEL}={}", std::process::id()),
        ])
        .args([
            "--memory",
            "6m",
            "--memory-swap",
            "6m",
            "--user",
            "65534:65534",
            "--network",
            "none",
        ])
        .args([DEFAULT_IMAGE, "run", "--job", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let mut job = job(Provider::Anthropic, "len10");
        job["prompt"] = Value::String("a".repeat(3 << 20));
        job["base_url"] = Value::String("http://127.0.0.1:9".into());
        let _ = writeln!(stdin, "{job}");
    }
    let _ = child.wait();
    let state = docker([
        "inspect",
        "--format",
        "{{.State.ExitCode}} {{.State.OOMKilled}}",
        name,
    ]);
    let _ = docker(["rm", "-f", name]);
    let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
    assert!(
        state.starts_with("137 "),
        "the probe was not killed: {state}"
    );
    state == "137 true"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_warm_container_that_dies_is_replaced_not_handed_out() {
    let Some(scope) = require("an_idle_warm_container_that_dies_is_replaced_not_handed_out") else {
        return;
    };
    let (_emu, env) = host_emulator().await;
    let mut cfg = backend_config(&scope, "host", env);
    cfg.pool_size = 2;
    let s = stack(cfg, controller_config()).await;
    until("pool warm", || s.backend.pool_status().idle == 2).await;
    let victim = s.backend.idle_names()[0].clone();
    let out = cli(vec!["kill".into(), victim.clone()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until("the dead one replaced", || {
        let idle = s.backend.idle_names();
        idle.len() == 2 && !idle.contains(&victim)
    })
    .await;
    assert!(s.backend.pool_counters().died_idle >= 1);
    // Both launches are served warm by live containers.
    for p in [Provider::OpenAi, Provider::Google] {
        let id = stream_ok(s.addr(), p, 8).await;
        assert_eq!(status(s.addr(), &id).await["warm"], true);
    }
    assert_eq!(s.backend.pool_status().hits, 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_creates_its_isolated_network_when_missing() {
    let Some(scope) = require("the_backend_creates_its_isolated_network_when_missing") else {
        return;
    };
    let net = scope.name("own-net");
    let mut cfg = backend_config(&scope, &net, base_urls("http://127.0.0.1:9"));
    cfg.create_network = true;
    let s = stack(cfg, controller_config()).await;
    // Nothing listens on the container's own loopback: a quick upstream error, which shows the
    // container ran.
    let (mut r, id) = open_stream(s.addr(), job(Provider::OpenAi, "len3")).await;
    let rest = r.rest().await;
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error", "{rest:?}");
    assert_eq!(last.data["kind"], "upstream", "{last:?}");
    assert_eq!(status(s.addr(), &id).await["status"], "failed");
    let n = cli(vec!["network".into(), "inspect".into(), net.clone()]).await;
    assert!(n.status.success());
    let n: Value = serde_json::from_slice(&n.stdout).unwrap();
    assert_eq!(n[0]["Driver"], "bridge");
    assert_eq!(
        n[0]["Options"]["com.docker.network.bridge.enable_icc"],
        "false"
    );
    assert_eq!(n[0]["Labels"][LABEL_MANAGED], "true");
    wait_gone(&s.instance).await;
    s.stop().await;
    // The scope removes the network (it carries the scope's label).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_a_clear_unavailable_error_then_503() {
    // No engine needed: the socket does not exist.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-docker.sock");
    let cfg = DockerBackendConfig {
        socket: socket.clone(),
        instance: "unreachable-test".into(),
        pool_size: 1,
        ..DockerBackendConfig::new()
    };
    let s = stack(cfg, controller_config()).await;
    let res = send(
        s.addr(),
        Method::POST,
        "/v1/executions",
        &[],
        Some(job(Provider::OpenAi, "len3")),
    )
    .await;
    assert_eq!(res.status(), 202);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let id = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut events, _) = open_events(s.addr(), &id).await;
    let all = events.rest().await;
    let last = all.last().unwrap();
    assert_eq!(last.event, "error", "{all:?}");
    assert_eq!(last.data["retryable"], true);
    let msg = last.data["message"].as_str().unwrap();
    assert!(
        msg.starts_with("backend unavailable: the Docker engine at unix://"),
        "{msg}"
    );
    assert!(msg.contains(&socket.display().to_string()), "{msg}");
    assert!(
        msg.contains("no such socket") && msg.contains("DOCKER_HOST"),
        "{msg}"
    );
    // While the engine is down, new executions are refused at once.
    let res = send(
        s.addr(),
        Method::POST,
        "/v1/executions",
        &[],
        Some(job(Provider::OpenAi, "len3")),
    )
    .await;
    assert_eq!(res.status(), 503);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["kind"], "unavailable", "{v}");
    // The pool does not spin on a missing engine.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = s.backend.pool_counters();
    assert!(c.start_failures >= 1 && c.start_failures <= 6, "{c:?}");
    assert_eq!(s.backend.pool_status().idle, 0);
    let mut server = s.server;
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(20), &mut server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // The binary, with DOCKER_HOST: the same, through main's wiring.
    let db = dir.path().join("bin.db");
    let mut bin = Binary::start(
        &db,
        &[
            ("DOCKER_HOST", format!("unix://{}", socket.display())),
            ("POLYDEV_DOCKER_INSTANCE", "unreachable-bin".into()),
            ("POLYDEV_POOL_SIZE", "0".into()),
        ],
    )
    .await;
    let (mut r, _) = open_stream(bin.addr, job(Provider::Google, "len3")).await;
    let rest = r.rest().await;
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error", "{rest:?}");
    assert!(
        last.data["message"]
            .as_str()
            .unwrap()
            .contains("Docker engine"),
        "{last:?}"
    );
    let res = send(
        bin.addr,
        Method::POST,
        "/v1/executions",
        &[],
        Some(job(Provider::Google, "len3")),
    )
    .await;
    assert_eq!(res.status(), 503);
    bin.sigterm_and_wait().await;
}

/// `GET /v1/executions/{id}/events` (from the start).
async fn open_events(addr: SocketAddr, id: &str) -> (SseReader, u16) {
    let res = send(
        addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[SSE],
        None,
    )
    .await;
    let code = res.status().as_u16();
    (SseReader::new(res), code)
}

/// Removes every container of an instance when dropped, also when the test failed: the binary
/// cannot be given the scope's labels.
struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_CONTROLLER}={}", self.0);
        let out = docker(["ps", "-aq", "--filter", &filter]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = docker(["rm", "-f", id]);
        }
    }
}

/// The `polydev-controller` binary with the Docker backend.
struct Binary {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Binary {
    async fn start(db: &Path, env: &[(&str, String)]) -> Binary {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_polydev-controller"));
        cmd.env_clear()
            .env("POLYDEV_BACKEND", "docker")
            .env("POLYDEV_LISTEN", "127.0.0.1:0")
            .env("POLYDEV_API_TOKEN", TOKEN)
            .env("POLYDEV_DB", db)
            .env("POLYDEV_MAX_CONCURRENCY", "8")
            .env("POLYDEV_SHUTDOWN_GRACE", "300ms")
            .env("POLYDEV_SSE_KEEPALIVE", "1s")
            .env("POLYDEV_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its log, next to its database, for the checks and for a failing run.
            .stderr(std::fs::File::create(db.with_extension("log")).unwrap())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the controller prints its address")
            .unwrap()
            .expect("an address line");
        let addr = line
            .strip_prefix("polydev-controller listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Binary { child, addr }
    }

    async fn sigterm_and_wait(&mut self) {
        let pid = self.child.id().unwrap();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let status = tokio::time::timeout(ENGINE_WAIT, self.child.wait())
            .await
            .expect("the controller exits after SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_removes_what_a_killed_controller_left_and_records_it_interrupted() {
    let Some(scope) =
        require("a_restart_removes_what_a_killed_controller_left_and_records_it_interrupted")
    else {
        return;
    };
    let (emu, _) = host_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let instance = scope.id().to_owned();
    let mut env: Vec<(&str, String)> = vec![
        ("POLYDEV_DOCKER_NETWORK", "host".into()),
        ("POLYDEV_DOCKER_INSTANCE", instance.clone()),
        ("POLYDEV_POOL_SIZE", "1".into()),
    ];
    for p in Provider::ALL {
        let (k, v) = base_url_env(p, &emu.base_url());
        env.push((k, v));
    }
    let _sweep = Sweep(instance.clone());
    let mut first = Binary::start(&db, &env).await;
    // A cold container: the pool's one warm container takes the first execution.
    let deadline = Instant::now() + ENGINE_WAIT;
    loop {
        let res = send(first.addr, Method::GET, "/v1/pool", &[], None).await;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let pool: Value = serde_json::from_slice(&body).unwrap();
        if pool["idle"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the pool never filled: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut a, _) = open_stream(first.addr, job(Provider::OpenAi, "len600-rate20")).await;
    until_text(&mut a).await;
    let (mut b, id) = open_stream(first.addr, job(Provider::Anthropic, "len600-rate20")).await;
    until_text(&mut b).await;
    // SIGKILL: nothing of the controller's shutdown runs.
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    let left = ours(&instance).await;
    assert!(
        left.len() >= 2,
        "containers survive the controller: {left:?}"
    );
    let mut states = Vec::new();
    for c in &left {
        let v = inspect(c).await;
        states.push((v["Config"]["Labels"].clone(), v["State"].clone()));
    }
    let cold_running = states
        .iter()
        .any(|(l, s)| l[LABEL_EXECUTION] == id.as_str() && s["Running"] == true);
    assert!(
        cold_running,
        "the cold container runs on without its controller: {states:#?}"
    );

    let t0 = Instant::now();
    let mut second = Binary::start(&db, &env).await;
    // The leftovers go (the new run's own warm container stays).
    let deadline = Instant::now() + ENGINE_WAIT;
    loop {
        let now = ours(&instance).await;
        if left.iter().all(|c| !now.contains(c)) {
            break;
        }
        assert!(Instant::now() < deadline, "leftovers not removed: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("leftovers removed {:?} after the restart", t0.elapsed());
    let v = status(second.addr, &id).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["kind"], "interrupted", "{v}");
    until("upstreams closed", || emu.status().open_streams == 0).await;
    second.sigterm_and_wait().await;
    assert_eq!(
        ours(&instance).await,
        Vec::<String>::new(),
        "left after shutdown"
    );
    let log = std::fs::read_to_string(db.with_extension("log")).unwrap();
    assert!(
        log.contains("removed containers left by a previous controller run"),
        "{log}"
    );
    assert!(
        log.contains(&id),
        "the interrupted execution is named: {log}"
    );
    assert!(!log.contains(CANARY), "the key is in the controller's log");
}

// === pull mode (POLYDEV_DOCKER_MODE=pull) ===

/// The controller over a pull-mode Docker backend: the listener is bound first, since the
/// containers are told its URL (`CONTROLLER_URL`, plain HTTP on loopback: host network).
async fn pull_stack(mut backend: DockerBackendConfig, config: ControllerConfig) -> Stack {
    if let Ok(filter) = std::env::var("POLYDEV_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    backend.pull = Some(PullOptions::new(format!("http://{addr}")));
    let instance = backend.instance.clone();
    let backend = Arc::new(DockerBackend::new(backend).unwrap());
    assert_eq!(backend.mode(), DockerMode::Pull);
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("p.db")).unwrap();
    let controller = Controller::new(config, backend.clone(), store);
    let server = support::serve_bound(listener, None, controller);
    Stack {
        backend,
        server,
        instance,
        _dir: dir,
    }
}

/// Asserts what `docker inspect` shows of a running pull-mode container: no key, no prompt, no
/// token (its value is read from the mounted file), no stdin, the token mounted read-only, and
/// the labels a later controller needs to find it.
async fn assert_pull_container(id: &str, token_dir: &Path) -> Value {
    let v = inspect(id).await;
    let text = v.to_string();
    assert!(!text.contains(CANARY), "the key is in docker inspect {id}");
    assert!(
        !text.contains("Say hello"),
        "the prompt is in docker inspect {id}"
    );
    let c = &v["Config"];
    let h = &v["HostConfig"];
    assert_eq!(c["OpenStdin"], false);
    assert_eq!(c["AttachStdin"], false);
    assert_eq!(c["User"], "65534:65534");
    assert!(
        c.get("Cmd")
            .is_none_or(|cmd| cmd.is_null() || cmd == &json!([])),
        "{c}"
    );
    assert_eq!(h["ReadonlyRootfs"], true);
    assert_eq!(c["Labels"][LABEL_MODE], "pull");
    let instance = c["Labels"][LABEL_INSTANCE].as_str().unwrap().to_owned();
    assert!(!instance.is_empty());
    let env: Vec<String> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    assert!(env.contains(&"WARM_POOL=true".to_owned()), "{env:?}");
    assert!(
        env.iter()
            .any(|e| e.starts_with("CONTROLLER_URL=http://127.0.0.1:")),
        "{env:?}"
    );
    assert!(
        env.contains(&format!("RUNTIME_TOKEN_FILE={TOKEN_MOUNT}")),
        "{env:?}"
    );
    assert!(
        !env.iter().any(|e| e.starts_with("RUNTIME_TOKEN=")),
        "{env:?}"
    );
    let mounts = v["Mounts"].as_array().unwrap();
    let token = mounts
        .iter()
        .find(|m| m["Destination"] == TOKEN_MOUNT)
        .unwrap_or_else(|| panic!("no token mount: {mounts:?}"));
    assert_eq!(token["RW"], false, "{token}");
    let source = Path::new(token["Source"].as_str().unwrap());
    assert!(
        source.starts_with(token_dir),
        "{source:?} not in {token_dir:?}"
    );
    // The token itself is only in that file (until the runtime starts reporting, when the
    // controller deletes it).
    if let Ok(secret) = std::fs::read_to_string(source) {
        let secret = secret.trim();
        assert!(
            secret.starts_with(&format!("{instance}.")),
            "token of another instance"
        );
        let hex = secret.rsplit_once('.').unwrap().1;
        assert!(!text.contains(hex), "the token is in docker inspect {id}");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mode_every_provider_streams_cold_and_warm_without_the_key_in_docker_inspect() {
    let Some(scope) =
        require("pull_mode_every_provider_streams_cold_and_warm_without_the_key_in_docker_inspect")
    else {
        return;
    };
    let (emu, env) = host_emulator().await;
    let s = pull_stack(backend_config(&scope, "host", env), controller_config()).await;
    let token_dir = s.backend.pull_dir().unwrap();
    for p in Provider::ALL {
        let id = stream_ok(s.addr(), p, 40).await;
        let v = status(s.addr(), &id).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        assert_eq!(v["warm"], false, "{v}");
    }
    wait_gone(&s.instance).await;

    // A slow cold stream: what the engine shows of it, then cancel.
    let (mut r, id) = open_stream(s.addr(), job(Provider::Google, "len400-rate20")).await;
    until_text(&mut r).await;
    let ids = ours(&s.instance).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let v = assert_pull_container(&ids[0], &token_dir).await;
    assert_eq!(v["Config"]["Labels"][LABEL_ROLE], "cold");
    assert_eq!(v["Config"]["Labels"][LABEL_EXECUTION], id);
    assert_eq!(emu.status().open_streams, 1);
    let del = send(
        s.addr(),
        Method::DELETE,
        &format!("/v1/executions/{id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(del.status(), 200);
    let rest = r.rest().await;
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error", "{rest:?}");
    assert_eq!(last.data["kind"], "cancelled", "{last:?}");
    assert_eq!(rest.iter().filter(|e| e.event == "error").count(), 1);
    until("upstream closed", || emu.status().open_streams == 0).await;
    wait_gone(&s.instance).await;
    assert_eq!(status(s.addr(), &id).await["status"], "cancelled");

    // Warm: idle means "has polled"; claims are served from the pool, which refills.
    s.backend.set_pool_size(2).unwrap();
    until("pool warm", || s.backend.pool_status().idle == 2).await;
    for name in s.backend.idle_names() {
        let v = assert_pull_container(&name, &token_dir).await;
        assert_eq!(v["Config"]["Labels"][LABEL_ROLE], "warm");
        assert!(v["Config"]["Labels"].get(LABEL_EXECUTION).is_none());
    }
    for p in Provider::ALL {
        until("pool refilled", || s.backend.pool_status().idle >= 1).await;
        let id = stream_ok(s.addr(), p, 40).await;
        let v = status(s.addr(), &id).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        assert_eq!(v["warm"], true, "{v}");
    }
    assert_eq!(s.backend.pool_status().hits, 3);
    // A warm container cancelled mid-stream.
    until("pool refilled", || s.backend.pool_status().idle >= 1).await;
    let (mut r, id) = open_stream(s.addr(), job(Provider::OpenAi, "len400-rate20")).await;
    until_text(&mut r).await;
    let del = send(
        s.addr(),
        Method::DELETE,
        &format!("/v1/executions/{id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(del.status(), 200);
    let rest = r.rest().await;
    assert_eq!(rest.last().unwrap().data["kind"], "cancelled", "{rest:?}");
    assert_eq!(status(s.addr(), &id).await["warm"], true);
    until("upstream closed", || emu.status().open_streams == 0).await;
    s.stop().await;
    assert!(!token_dir.exists(), "the token directory outlived shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mode_a_container_killed_mid_job_ends_the_execution_clearly() {
    let Some(scope) = require("pull_mode_a_container_killed_mid_job_ends_the_execution_clearly")
    else {
        return;
    };
    let (emu, env) = host_emulator().await;
    let s = pull_stack(backend_config(&scope, "host", env), controller_config()).await;
    let (mut r, id) = open_stream(s.addr(), job(Provider::Anthropic, "len400-rate20")).await;
    until_text(&mut r).await;
    let names = s.backend.container_names();
    assert_eq!(names.len(), 1, "{names:?}");
    let out = cli(vec!["kill".into(), names[0].clone()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rest = r.rest().await;
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error", "{rest:?}");
    assert_eq!(rest.iter().filter(|e| e.event == "error").count(), 1);
    assert_eq!(last.data["kind"], "internal", "{last:?}");
    assert_eq!(last.data["partial"], true, "{last:?}");
    let msg = last.data["message"].as_str().unwrap();
    // The report breaks with the container (usually seen first), or its exit is.
    assert!(
        msg.contains("vanished mid-job") || msg.contains("killed (SIGKILL)"),
        "{msg}"
    );
    let v = status(s.addr(), &id).await;
    assert_eq!(v["status"], "failed", "{v}");
    until("upstream closed", || emu.status().open_streams == 0).await;
    wait_gone(&s.instance).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mode_a_container_that_cannot_reach_the_controller_fails_its_launch_clearly() {
    let Some(scope) =
        require("pull_mode_a_container_that_cannot_reach_the_controller_fails_its_launch_clearly")
    else {
        return;
    };
    let (_emu, env) = host_emulator().await;
    let mut cfg = backend_config(&scope, "host", env);
    cfg.ready_timeout = Duration::from_secs(5);
    // A loopback port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    cfg.pull = Some(PullOptions::new(url));
    let s = stack(cfg, controller_config()).await;
    let res = send(
        s.addr(),
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job(Provider::OpenAi, "len10")),
    )
    .await;
    let mut r = SseReader::new(res);
    let events = r.rest().await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{events:?}");
    let text = last.data.to_string();
    assert!(text.contains("did not fetch its job"), "{text}");
    assert!(!r.raw.is_empty() && !String::from_utf8_lossy(&r.raw).contains(CANARY));
    wait_gone(&s.instance).await;
    s.stop().await;
}

// === a one-off measurement (issue 13 item 3), not run by default ===

/// utime + stime of `pid` in clock ticks, if it still exists.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Pids of the processes named `comm`, with their command lines.
fn processes(comm: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim() == comm {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    found
}

/// Streams `n` paced executions at once in `mode` and returns (ticks of dockerd + the
/// containers' containerd-shims while they streamed, text events received then).
async fn measure_mode(scope: &DockerScope, pull: bool, n: usize, knobs: &str) -> (u64, u64) {
    let (_emu, env) = host_emulator().await;
    let mut cfg = backend_config(scope, "host", env);
    // The containers are the only work of the window: every stream starts cold, together.
    cfg.pool_size = 0;
    let config = ControllerConfig {
        max_concurrency: n + 4,
        max_per_user: n + 4,
        queue_size: n + 4,
        ..controller_config()
    };
    let s = if pull {
        pull_stack(cfg, config).await
    } else {
        stack(cfg, config).await
    };
    // All at once, so that the window below covers most of every stream.
    let addr = s.addr();
    let readers = futures_util::future::join_all((0..n).map(|i| async move {
        let p = Provider::ALL[i % Provider::ALL.len()];
        let (mut r, _) = open_stream(addr, job(p, knobs)).await;
        until_text(&mut r).await;
        r
    }))
    .await;
    // Every stream is flowing: the window starts.
    let ids: Vec<String> = {
        let out = cli(vec![
            "ps".into(),
            "-q".into(),
            "--no-trunc".into(),
            "--filter".into(),
            format!("label={LABEL_CONTROLLER}={}", s.instance),
        ])
        .await;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let shims: Vec<u32> = processes("containerd-shim")
        .into_iter()
        .filter(|(_, cmd)| ids.iter().any(|id| cmd.contains(id.as_str())))
        .map(|(pid, _)| pid)
        .collect();
    eprintln!(
        "{} containers, {} of their shims found",
        ids.len(),
        shims.len()
    );
    let dockerd = processes("dockerd")[0].0;
    let d0 = cpu_ticks(dockerd).unwrap();
    // This process: the controller, but also the in-process emulator and the SSE clients
    // (the same work in both modes, so only the difference says something).
    let me = std::process::id();
    let c0 = cpu_ticks(me).unwrap();
    let start: Vec<(u32, u64)> = shims
        .iter()
        .filter_map(|p| cpu_ticks(*p).map(|t| (*p, t)))
        .collect();
    // The shims exit with their containers: sample them until then.
    let last = Arc::new(std::sync::Mutex::new(start.clone()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (last, stop) = (Arc::clone(&last), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (pid, t) in last.lock().unwrap().iter_mut() {
                    if let Some(now) = cpu_ticks(*pid) {
                        *t = now;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut tokens = 0u64;
    for mut r in readers {
        let rest = r.rest().await;
        assert_eq!(rest.last().unwrap().event, "end", "{rest:?}");
        tokens += rest.iter().filter(|e| e.event == "text").count() as u64;
    }
    let d1 = cpu_ticks(dockerd).unwrap();
    let c1 = cpu_ticks(me).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let shim_ticks: u64 = last
        .lock()
        .unwrap()
        .iter()
        .zip(&start)
        .map(|((_, t1), (_, t0))| t1 - t0)
        .sum();
    eprintln!(
        "{}: dockerd {} ticks, shims {shim_ticks} ticks, test process (controller + emulator + clients) {} ticks, {tokens} tokens",
        if pull { "pull" } else { "attach" },
        d1 - d0,
        c1 - c0
    );
    s.stop().await;
    (d1 - d0 + shim_ticks, tokens)
}

/// CPU of dockerd + containerd-shim per streamed token, attach vs pull mode: 20 paced streams
/// each (docs/benchmarks-controller.md, "Docker attach vs pull"). One-off, by hand:
/// `cargo test -p polydev-controller --test docker_backend -- --ignored --nocapture
/// measure_engine_cpu_per_token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a one-off measurement, run by hand"]
async fn measure_engine_cpu_per_token_attach_vs_pull() {
    let Some(scope) = require("measure_engine_cpu_per_token_attach_vs_pull") else {
        return;
    };
    let ticks_per_s = 100.0;
    let knobs = std::env::var("MEASURE_KNOBS").unwrap_or_else(|_| "len600-rate30".into());
    let rounds: usize = std::env::var("MEASURE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for round in 0..rounds {
        for pull in [false, true] {
            let (ticks, tokens) = measure_mode(&scope, pull, 20, &knobs).await;
            let us = ticks as f64 / ticks_per_s * 1e6 / tokens.max(1) as f64;
            eprintln!(
                "round {round} {}: {ticks} ticks for {tokens} tokens = {us:.1} µs CPU per token",
                if pull { "pull" } else { "attach" }
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mode_through_the_binary_streams_warm_and_cold_and_leaves_nothing() {
    let Some(scope) =
        require("pull_mode_through_the_binary_streams_warm_and_cold_and_leaves_nothing")
    else {
        return;
    };
    let (emu, _) = host_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let instance = scope.id().to_owned();
    // No POLYDEV_PUBLIC_URL: runtimes are given the controller's own loopback address.
    let mut env: Vec<(&str, String)> = vec![
        ("POLYDEV_DOCKER_MODE", "pull".into()),
        ("POLYDEV_DOCKER_NETWORK", "host".into()),
        ("POLYDEV_DOCKER_INSTANCE", instance.clone()),
        ("POLYDEV_POOL_SIZE", "1".into()),
    ];
    for p in Provider::ALL {
        let (k, v) = base_url_env(p, &emu.base_url());
        env.push((k, v));
    }
    let _sweep = Sweep(instance.clone());
    let mut bin = Binary::start(&db, &env).await;
    let deadline = Instant::now() + ENGINE_WAIT;
    loop {
        let res = send(bin.addr, Method::GET, "/v1/pool", &[], None).await;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let pool: Value = serde_json::from_slice(&body).unwrap();
        if pool["idle"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the pool never filled: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = ours(&instance).await;
    assert_eq!(left.len(), 1, "{left:?}");
    let v = inspect(&left[0]).await;
    assert_eq!(v["Config"]["Labels"][LABEL_MODE], "pull", "{v}");
    assert_eq!(v["Config"]["OpenStdin"], false);
    // The first takes the warm container, the second (while the pool refills) may go either way.
    let id = stream_ok(bin.addr, Provider::Google, 30).await;
    let v = status(bin.addr, &id).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["warm"], true, "{v}");
    let id = stream_ok(bin.addr, Provider::Anthropic, 30).await;
    assert_eq!(status(bin.addr, &id).await["status"], "succeeded");
    bin.sigterm_and_wait().await;
    assert_eq!(
        ours(&instance).await,
        Vec::<String>::new(),
        "left after shutdown"
    );
    let log = std::fs::read_to_string(db.with_extension("log")).unwrap();
    assert!(!log.contains(CANARY), "the key is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mode_an_out_of_memory_kill_is_reported_from_the_engine() {
    let Some(scope) = require("pull_mode_an_out_of_memory_kill_is_reported_from_the_engine") else {
        return;
    };
    let (_emu, env) = host_emulator().await;
    let mut cfg = backend_config(&scope, "host", env);
    // As in attach mode: Docker's smallest limit and a 3 MiB prompt, here fetched over HTTP.
    cfg.memory_bytes = 6 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    cfg.pull = Some(PullOptions::new(format!("http://{addr}")));
    let instance = cfg.instance.clone();
    let backend = Arc::new(DockerBackend::new(cfg).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("p.db")).unwrap();
    let config = ControllerConfig {
        max_body_bytes: 64 << 20,
        ..controller_config()
    };
    let controller = Controller::new(config, backend.clone(), store);
    let s = Stack {
        backend,
        server: support::serve_bound(listener, None, controller),
        instance,
        _dir: dir,
    };
    let mut j = job(Provider::Anthropic, "len10");
    j["prompt"] = Value::String("a".repeat(3 << 20));
    let (mut r, id) = open_stream(s.addr(), j).await;
    let rest = r.rest().await;
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error", "{rest:?}");
    assert_eq!(rest.iter().filter(|e| e.event == "error").count(), 1);
    assert_eq!(last.data["kind"], "internal", "{last:?}");
    assert_eq!(last.data["partial"], false, "{last:?}");
    let message = last.data["message"].as_str().unwrap().to_owned();
    eprintln!("pull mode, out of memory: {message}");
    // The engine's `State.OOMKilled` after the container's exit, or (engines that miss OOM
    // kills, see the attach-mode test) the unexplained SIGKILL; a report cut by the kill, if
    // the runtime got as far as opening it.
    assert!(
        message.contains("ran out of memory")
            || message.contains("may have run out of memory")
            || message.contains("vanished mid-job"),
        "{last:?}"
    );
    let v = status(s.addr(), &id).await;
    assert_eq!(v["status"], "failed", "{v}");
    wait_gone(&s.instance).await;
    s.stop().await;
}

// === restarts in pull mode: adoption (DESIGN.md 5.2, issue 15) ===

/// A controller over a pull-mode Docker backend on `listener` and `db`, adopting what the
/// store left running for it (the containers journaled for adoption are kept by start-up
/// recovery), with `grace` to wait for their runtimes.
async fn adopting_stack(
    scope: &polydev_test_support::docker::DockerScope,
    env: Vec<(String, String)>,
    listener: tokio::net::TcpListener,
    db: &Path,
    grace: Duration,
) -> (Controller, support::Server, Arc<DockerBackend>, usize) {
    if let Ok(filter) = std::env::var("POLYDEV_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let addr = listener.local_addr().unwrap();
    let mut cfg = backend_config(scope, "host", env);
    cfg.pull = Some(PullOptions::new(format!("http://{addr}")));
    let (store, recovery) = Store::open_adopting(db, Some("docker")).unwrap();
    cfg.adopting = recovery
        .adoptable
        .iter()
        .map(|a| a.instance.handle.clone())
        .collect();
    let backend = Arc::new(DockerBackend::new(cfg).unwrap());
    let config = ControllerConfig {
        reattach_grace: grace,
        ..controller_config()
    };
    let controller = Controller::new(config, backend.clone(), store);
    let adopted = controller.adopt(recovery.adoptable);
    let server = support::serve_bound(listener, None, controller.clone());
    (controller, server, backend, adopted)
}

/// Binds `addr` again once the previous controller has let it go.
async fn rebind(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot bind {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The journaled record of `id`: (backend, handle, credential digest).
fn journaled(db: &Path, id: &str) -> (String, String, Option<String>) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let status: String = conn
        .query_row("SELECT status FROM executions WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(status, "running");
    conn.query_row(
        "SELECT backend, handle, credential_digest FROM instance_records WHERE execution_id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

/// No file under `dir` (database, WAL, log) holds the key or `secret`.
fn assert_no_secret_in(dir: &Path, secret: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(CANARY), "{} holds the key", path.display());
        assert!(
            !secret.is_empty() && !text.contains(secret),
            "{} holds the runtime token",
            path.display()
        );
    }
}

/// The one container of `instance`, running, and the host path of its token file.
async fn running_container(instance: &str) -> (String, std::path::PathBuf) {
    let ids = ours(instance).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let v = inspect(&ids[0]).await;
    assert_eq!(v["State"]["Running"], true, "{v}");
    let mounts = v["Mounts"].as_array().unwrap();
    let token = mounts
        .iter()
        .find(|m| m["Destination"] == TOKEN_MOUNT)
        .unwrap_or_else(|| panic!("no token mount: {mounts:?}"));
    (
        v["Id"].as_str().unwrap().to_owned(),
        std::path::PathBuf::from(token["Source"].as_str().unwrap()),
    )
}

fn texts(events: &[support::Sse]) -> String {
    events
        .iter()
        .filter(|e| e.event == "text")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mode_a_sigterm_restart_adopts_the_running_container_and_the_client_resumes_exactly_once()
 {
    let Some(scope) = require(
        "pull_mode_a_sigterm_restart_adopts_the_running_container_and_the_client_resumes_exactly_once",
    ) else {
        return;
    };
    let (emu, env) = host_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, mut a_server, a_backend, adopted) =
        adopting_stack(&scope, env.clone(), listener, &db, Duration::from_secs(60)).await;
    assert_eq!(adopted, 0);
    let len = 200;
    let (mut sse, id) = open_stream(addr, job(Provider::OpenAi, &format!("len{len}-rate20"))).await;
    let mut before = Vec::new();
    while before.len() < 4 {
        let e = sse.next().await.unwrap();
        assert_ne!(e.event, "error", "{e:?}");
        before.push(e);
    }
    let (container, token_file) = running_container(scope.id()).await;
    let token_dir = a_backend.pull_dir().unwrap();
    assert!(token_file.starts_with(&token_dir), "{token_file:?}");
    let secret = std::fs::read_to_string(&token_file).unwrap();
    let secret = secret.trim().rsplit_once('.').unwrap().1.to_owned();

    // SIGTERM on A: it detaches; the stream closes with no terminal event.
    a_server.shutdown();
    tokio::time::timeout(ENGINE_WAIT, &mut a_server.task)
        .await
        .expect("A stops in time")
        .unwrap()
        .unwrap();
    drop(a);
    drop(a_backend);
    let after = sse.rest().await;
    assert!(
        after.iter().all(|e| e.event != "end" && e.event != "error"),
        "{after:?}"
    );
    before.extend(after);
    // The container runs on, its token file with it; the store journals it, without a key.
    let (c2, _) = running_container(scope.id()).await;
    assert_eq!(c2, container);
    assert!(token_file.is_file(), "the token file went with A");
    let (backend, handle, digest) = journaled(&db, &id);
    assert_eq!(
        (backend.as_str(), handle.as_str()),
        ("docker", container.as_str())
    );
    assert_eq!(digest.map(|d| d.len()), Some(64));
    assert_no_secret_in(dir.path(), &secret);
    // A token file left there for a container that has gone since (as if it ended while no
    // controller ran).
    let orphan = token_dir.join("pi_0000000000000000.token");
    std::fs::write(&orphan, "pi_0000000000000000.00").unwrap();

    // B on the same address and database adopts it; its start-up deletes the orphan only.
    let listener = rebind(addr).await;
    let (b, mut b_server, b_backend, adopted) =
        adopting_stack(&scope, env, listener, &db, Duration::from_secs(60)).await;
    assert_eq!(adopted, 1);
    until("orphan token file deleted", || !orphan.exists()).await;
    assert!(
        token_file.is_file(),
        "the adopted container's token file went early"
    );
    let last = before.last().unwrap().id.unwrap();
    let res = send(
        addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[SSE, ("last-event-id", &last.to_string())],
        None,
    )
    .await;
    assert_eq!(res.status(), 200);
    let rest = tokio::time::timeout(ENGINE_WAIT, SseReader::new(res).rest())
        .await
        .expect("the resumed stream ends");
    for (i, e) in rest.iter().enumerate() {
        assert_eq!(e.id, Some(last + 1 + i as u64), "{rest:?}");
    }
    let terminal: Vec<_> = rest
        .iter()
        .filter(|e| e.event == "end" || e.event == "error")
        .collect();
    assert_eq!(terminal.len(), 1, "{rest:?}");
    assert_eq!(rest.last().unwrap().event, "end", "{rest:?}");
    // Every word once: what A delivered, then what B did.
    let mut whole = texts(&before);
    whole.push_str(&texts(&rest));
    assert_eq!(whole, answer_text(len));
    let v = status(addr, &id).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    // The container is removed and its token file (and A's directory) deleted.
    wait_gone(scope.id()).await;
    until("token file deleted", || !token_file.exists()).await;
    until("token directory removed", || !token_dir.exists()).await;
    until("upstream closed", || emu.status().open_streams == 0).await;
    b.flush().await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let records: i64 = conn
        .query_row("SELECT count(*) FROM instance_records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(records, 0);
    drop(conn);
    b_server.shutdown();
    tokio::time::timeout(ENGINE_WAIT, &mut b_server.task)
        .await
        .expect("B stops in time")
        .unwrap()
        .unwrap();
    assert!(b_backend.container_names().is_empty());
    assert_eq!(ours(scope.id()).await, Vec::<String>::new());
    assert_no_secret_in(dir.path(), &secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mode_an_adopted_container_that_never_reports_is_interrupted_and_removed() {
    let Some(scope) =
        require("pull_mode_an_adopted_container_that_never_reports_is_interrupted_and_removed")
    else {
        return;
    };
    let (emu, env) = host_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, mut a_server, a_backend, _) =
        adopting_stack(&scope, env.clone(), listener, &db, Duration::from_secs(60)).await;
    let (mut sse, id) = open_stream(addr, job(Provider::Anthropic, "len400-rate20")).await;
    let mut last = 1;
    loop {
        let e = sse.next().await.expect("stream ended before any text");
        assert_ne!(e.event, "error", "{e:?}");
        last = e.id.unwrap_or(last);
        if e.event == "text" {
            break;
        }
    }
    let (container, token_file) = running_container(scope.id()).await;
    a_server.shutdown();
    tokio::time::timeout(ENGINE_WAIT, &mut a_server.task)
        .await
        .expect("A stops in time")
        .unwrap()
        .unwrap();
    drop(a);
    drop(a_backend);
    let seen = sse.rest().await;
    assert!(seen.iter().all(|e| e.event != "end" && e.event != "error"));
    let last = seen.last().and_then(|e| e.id).unwrap_or(last);
    // B listens elsewhere: the container's runtime keeps trying A's address and never reports
    // to B.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = listener.local_addr().unwrap();
    let (b, mut b_server, _b_backend, adopted) =
        adopting_stack(&scope, env, listener, &db, Duration::from_secs(2)).await;
    assert_eq!(adopted, 1);
    let res = send(
        b_addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[SSE, ("last-event-id", &last.to_string())],
        None,
    )
    .await;
    let rest = tokio::time::timeout(ENGINE_WAIT, SseReader::new(res).rest())
        .await
        .expect("the stream ends after the grace");
    assert_eq!(rest.first().and_then(|e| e.id), Some(last + 1), "{rest:?}");
    let terminal: Vec<_> = rest
        .iter()
        .filter(|e| e.event == "end" || e.event == "error")
        .collect();
    assert_eq!(terminal.len(), 1, "{rest:?}");
    assert_eq!(terminal[0].data["kind"], "interrupted", "{rest:?}");
    let v = status(b_addr, &id).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["kind"], "interrupted", "{v}");
    // The container is stopped and removed, its token file deleted.
    wait_gone(scope.id()).await;
    let gone = cli(vec!["inspect".into(), container]).await;
    assert!(!gone.status.success());
    until("token file deleted", || !token_file.exists()).await;
    until("upstream closed", || emu.status().open_streams == 0).await;
    drop(b);
    b_server.shutdown();
    tokio::time::timeout(ENGINE_WAIT, &mut b_server.task)
        .await
        .expect("B stops in time")
        .unwrap()
        .unwrap();
    assert_eq!(ours(scope.id()).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mode_the_binary_killed_mid_stream_is_adopted_by_the_next_one_and_loses_nothing() {
    let Some(scope) = require(
        "pull_mode_the_binary_killed_mid_stream_is_adopted_by_the_next_one_and_loses_nothing",
    ) else {
        return;
    };
    let (emu, _) = host_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let instance = scope.id().to_owned();
    // A fixed port: the containers are told this address, and the next controller takes it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut env: Vec<(&str, String)> = vec![
        ("POLYDEV_DOCKER_MODE", "pull".into()),
        ("POLYDEV_DOCKER_NETWORK", "host".into()),
        ("POLYDEV_DOCKER_INSTANCE", instance.clone()),
        ("POLYDEV_LISTEN", format!("127.0.0.1:{port}")),
        ("POLYDEV_REATTACH_GRACE", "60s".into()),
        ("POLYDEV_POOL_SIZE", "1".into()),
    ];
    for p in Provider::ALL {
        let (k, v) = base_url_env(p, &emu.base_url());
        env.push((k, v));
    }
    let _sweep = Sweep(instance.clone());
    let mut first = Binary::start(&db, &env).await;
    let pool_idle = |addr: SocketAddr| async move {
        let res = send(addr, Method::GET, "/v1/pool", &[], None).await;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let pool: Value = serde_json::from_slice(&body).unwrap();
        pool["idle"].as_u64().unwrap_or(0)
    };
    let deadline = Instant::now() + ENGINE_WAIT;
    while pool_idle(first.addr).await < 1 {
        assert!(Instant::now() < deadline, "the pool never filled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The execution takes the warm container (labelled `warm`, no execution label: only
    // the journaled container id tells it from an idle one).
    let len = 200;
    let (mut sse, id) = open_stream(
        first.addr,
        job(Provider::Google, &format!("len{len}-rate20")),
    )
    .await;
    let mut before = Vec::new();
    while before.len() < 4 {
        let e = sse.next().await.unwrap();
        assert_ne!(e.event, "error", "{e:?}");
        before.push(e);
    }
    // ...and the pool refills: one container with the job, one idle.
    let deadline = Instant::now() + ENGINE_WAIT;
    while pool_idle(first.addr).await < 1 {
        assert!(Instant::now() < deadline, "the pool never refilled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(first.addr, &id).await["warm"], true);
    // SIGKILL: nothing of the controller's shutdown runs.
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    // The client's connection breaks (no clean end to read); it resumes from what it read.
    drop(sse);
    let left = ours(&instance).await;
    assert_eq!(left.len(), 2, "{left:?}");
    let (backend, container, digest) = journaled(&db, &id);
    assert_eq!(backend, "docker");
    assert_eq!(digest.map(|d| d.len()), Some(64));
    let idle: Vec<String> = left
        .iter()
        .filter(|c| !container.starts_with(c.as_str()))
        .cloned()
        .collect();
    assert_eq!(idle.len(), 1, "{left:?} vs {container}");
    let mut second = Binary::start(&db, &env).await;
    assert_eq!(second.addr, first.addr);
    // The previous run's idle container goes; the adopted one stays until its job ends.
    let deadline = Instant::now() + ENGINE_WAIT;
    while ours(&instance).await.contains(&idle[0]) {
        assert!(
            Instant::now() < deadline,
            "the old idle container was not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = before.last().unwrap().id.unwrap();
    let res = send(
        second.addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[SSE, ("last-event-id", &last.to_string())],
        None,
    )
    .await;
    assert_eq!(res.status(), 200);
    let rest = tokio::time::timeout(ENGINE_WAIT, SseReader::new(res).rest())
        .await
        .expect("the resumed stream ends");
    for (i, e) in rest.iter().enumerate() {
        assert_eq!(e.id, Some(last + 1 + i as u64), "{rest:?}");
    }
    let terminal: Vec<_> = rest
        .iter()
        .filter(|e| e.event == "end" || e.event == "error")
        .collect();
    assert_eq!(terminal.len(), 1, "{rest:?}");
    assert_eq!(rest.last().unwrap().event, "end", "{rest:?}");
    let mut whole = texts(&before);
    whole.push_str(&texts(&rest));
    assert_eq!(whole, answer_text(len));
    assert_eq!(status(second.addr, &id).await["status"], "succeeded");
    let deadline = Instant::now() + ENGINE_WAIT;
    while cli(vec!["inspect".into(), container.clone()])
        .await
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the adopted container was not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.sigterm_and_wait().await;
    assert_eq!(ours(&instance).await, Vec::<String>::new());
    let log = std::fs::read_to_string(db.with_extension("log")).unwrap();
    assert!(!log.contains(CANARY), "the key is in the log");
    assert!(log.contains("adopt"), "{log}");
}
