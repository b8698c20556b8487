//! Controller-pull mode end to end (DESIGN.md 4.4, issue 6 item 1): the process backend's
//! runtimes fetch their job from the controller's runtime API and post their events back.
//!
//! - every provider, cold and warm, through the client API over plain loopback HTTP;
//! - HTTPS with a generated CA, for the API client and for the pull runtimes (`EXTRA_CA_CERTS`);
//!   a runtime that does not trust the controller fails its launch clearly, without a hang;
//! - a non-loopback `http://` runtime URL is refused;
//! - the token file: 0600 in a 0700 directory, never in argv or the environment, removed after
//!   use, the directory removed at shutdown;
//! - a runtime killed mid-job, and a report cut mid-job, fail the execution with a clear error;
//! - concurrent polls with one token get the job exactly once; the client token and the
//!   runtime tokens open only their own API.
//!
//! The runtime binary must be built first (`cargo build -p polydev-runtime`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use polydev_controller::Controller;
use polydev_controller::backend::process::{ProcessBackend, ProcessBackendConfig, PullOptions};
use polydev_controller::backend::pull::{
    InstanceId, InstanceRegistry, RegistryConfig, RuntimeApi, RuntimeToken, TokenAuthenticator,
};
use polydev_controller::backend::{
    Backend, BackendError, CancelHandle, ExitInfo, Instance, InstanceOutput, PoolStatus,
};
use polydev_controller::config::ControllerConfig;
use polydev_controller::store::Store;
use polydev_protocol::{Job, Provider};
use polydev_test_support::{CANARY, Emulator, answer_text, base_url_env, emulator, fake_key};
use serde_json::{Value, json};
use support::*;
use tokio::sync::mpsc;

const SSE: (&str, &str) = ("accept", "text/event-stream");

fn runtime_bin() -> PathBuf {
    let bin = polydev_test_support::workspace_bin("polydev-runtime");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p polydev-runtime` before these tests",
        bin.display()
    );
    bin
}

fn model(p: Provider, knobs: &str) -> String {
    let base = match p {
        Provider::OpenAi => "gpt-5-mini",
        Provider::Anthropic => "claude-haiku-4-5",
        Provider::Google => "gemini-2.5-flash",
    };
    format!("{base}-{knobs}")
}

fn job_for(p: Provider, model: &str) -> Value {
    json!({
        "user_id": "u1",
        "provider": p.as_str(),
        "model": model,
        "prompt": "Say hello to the test suite",
        "credentials": {"api_key": fake_key(p)},
    })
}

fn process_config(emu: &Emulator, pool_size: usize, url: &str) -> ProcessBackendConfig {
    let mut cfg = ProcessBackendConfig::new(runtime_bin());
    cfg.env = Provider::ALL
        .iter()
        .map(|p| {
            let (k, v) = base_url_env(*p, &emu.base_url());
            (k.to_owned(), v)
        })
        .collect();
    cfg.pool_size = pool_size;
    cfg.ready_timeout = Duration::from_secs(5);
    cfg.pull = Some(PullOptions::new(url));
    cfg
}

struct World {
    emu: Emulator,
    backend: Arc<ProcessBackend>,
    controller: Controller,
    server: Server,
    _dir: tempfile::TempDir,
}

/// A controller with a pull-mode process backend, served on a port bound first so that the
/// runtimes can be told its URL. `tls`: the server configuration and the CA file runtimes trust.
async fn world(
    pool_size: usize,
    tls: Option<(Arc<rustls::ServerConfig>, Option<PathBuf>)>,
    tweak: impl FnOnce(&mut ProcessBackendConfig),
) -> World {
    let emu = emulator().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (server_tls, ca) = match tls {
        Some((config, ca)) => (Some(config), ca),
        None => (None, None),
    };
    let scheme = if server_tls.is_some() {
        "https://localhost"
    } else {
        "http://127.0.0.1"
    };
    let mut cfg = process_config(&emu, pool_size, &format!("{scheme}:{}", addr.port()));
    if let Some(p) = cfg.pull.as_mut() {
        p.controller_ca = ca;
    }
    tweak(&mut cfg);
    let backend = Arc::new(ProcessBackend::new(cfg).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("p.db")).unwrap();
    let controller = Controller::new(
        ControllerConfig {
            max_concurrency: 8,
            queue_size: 8,
            ..config()
        },
        backend.clone(),
        store,
    );
    let server = serve_bound(listener, server_tls, controller.clone());
    World {
        emu,
        backend,
        controller,
        server,
        _dir: dir,
    }
}

impl World {
    async fn stop(mut self) {
        self.server.shutdown();
        self.server.task.await.unwrap().unwrap();
        assert!(self.backend.child_pids().is_empty());
        if let Some(dir) = self.backend.pull_dir() {
            assert!(!dir.exists(), "the private directory outlived shutdown");
        }
    }
}

async fn stream(addr: SocketAddr, body: Value) -> Vec<Sse> {
    let res = send(addr, Method::POST, "/v1/executions", &[SSE], Some(body)).await;
    SseReader::new(res).rest().await
}

fn text_of(events: &[Sse]) -> String {
    events
        .iter()
        .filter(|e| e.event == "text")
        .map(|e| e.data["text"].as_str().unwrap().to_owned())
        .collect()
}

/// `GET /v1/executions/{id}` once the execution has ended.
async fn status(w: &World, id: &str) -> Value {
    let app = polydev_controller::app(w.controller.clone());
    for _ in 0..1000 {
        let r = call(
            &app,
            req(Method::GET, &format!("/v1/executions/{id}"), None),
        )
        .await;
        let v = r.json();
        if matches!(
            v["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{id} did not end");
}

fn token_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "token"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_pulls_its_job_cold_and_warm() {
    let w = world(2, None, |_| {}).await;
    assert!(w.controller.backend().runtime_api().is_some());
    eventually("pool warm", || w.backend.pool_status().idle == 2).await;
    for warm in [true, false] {
        if !warm {
            let app = polydev_controller::app(w.controller.clone());
            let r = call(&app, req(Method::PUT, "/v1/pool", Some(json!({"size": 0})))).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
        for p in Provider::ALL {
            if warm {
                eventually("pool refilled", || w.backend.pool_status().idle == 2).await;
            }
            let events = stream(w.server.addr, job_for(p, &model(p, "len9"))).await;
            let id = events[0].data["execution_id"].as_str().unwrap().to_owned();
            assert_eq!(text_of(&events), answer_text(9), "{p:?} warm={warm}");
            let last = events.last().unwrap();
            assert_eq!(last.event, "end", "{last:?}");
            assert_eq!(events.iter().filter(|e| e.event == "end").count(), 1);
            let v = status(&w, &id).await;
            assert_eq!(v["status"], "succeeded", "{v}");
            assert_eq!(v["warm"], warm, "{p:?}: {v}");
        }
    }
    // Every request reached the emulator with the user's key, and nothing else leaked it.
    assert_eq!(w.emu.status().completed_streams, 6);
    let dir = w.backend.pull_dir().unwrap();
    eventually("token files of finished runtimes removed", || {
        token_files(&dir).is_empty()
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_a_private_file_used_once() {
    let w = world(0, None, |_| {}).await;
    let p = Provider::OpenAi;
    let res = send(
        w.server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job_for(p, &model(p, "len200-rate20"))),
    )
    .await;
    let mut r = SseReader::new(res);
    loop {
        let e = r.next().await.unwrap();
        if e.event == "text" {
            break;
        }
    }
    let dir = w.backend.pull_dir().unwrap();
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // The runtime is reporting: its token stays (a broken report may resume with it) until
    // the report ends.
    assert_eq!(token_files(&dir).len(), 1, "{:?}", token_files(&dir));
    let pids = w.backend.child_pids();
    assert_eq!(pids.len(), 1);
    let environ = std::fs::read(format!("/proc/{}/environ", pids[0])).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    assert!(environ.contains("RUNTIME_TOKEN_FILE="), "{environ}");
    assert!(
        environ.contains("CONTROLLER_URL=http://127.0.0.1:"),
        "{environ}"
    );
    assert!(!environ.contains("RUNTIME_TOKEN="), "{environ}");
    assert!(!environ.contains(CANARY) && !String::from_utf8_lossy(&cmdline).contains(CANARY));
    let id = r.rest().await;
    assert_eq!(id.last().unwrap().event, "end");
    // The report ended: the token was redeemed and its file deleted.
    eventually("token file deleted", || token_files(&dir).is_empty()).await;

    // Before it is used, the file is there: 0600, and it opens only the runtime API.
    let w2 = world(1, None, |_| {}).await;
    eventually("pool warm", || w2.backend.pool_status().idle == 1).await;
    let dir2 = w2.backend.pull_dir().unwrap();
    let files = token_files(&dir2);
    assert_eq!(files.len(), 1);
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = std::fs::read_to_string(&files[0]).unwrap();
    assert!(token.len() > 64);
    let res = send_with(w2.server.addr, Method::GET, "/v1/pool", Some(&token)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = send_with(w2.server.addr, Method::GET, "/runtime/v1/next", Some(TOKEN)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = send_with(w2.server.addr, Method::GET, "/runtime/v1/next", None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    w.stop().await;
    w2.stop().await;
}

/// One request with an optional bearer token (and nothing else).
async fn send_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> http::Response<hyper::body::Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    sender
        .send_request(b.body(http_body_util::Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_runs_each_job_on_exactly_one_instance() {
    let w = world(3, None, |_| {}).await;
    eventually("pool warm", || w.backend.pool_status().idle == 3).await;
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let p = Provider::ALL[i % 3];
            let addr = w.server.addr;
            tokio::spawn(async move { stream(addr, job_for(p, &model(p, "len6"))).await })
        })
        .collect();
    let mut ids = HashSet::new();
    for r in runs {
        let events = r.await.unwrap();
        assert_eq!(text_of(&events), answer_text(6));
        assert_eq!(events.last().unwrap().event, "end");
        ids.insert(events[0].data["execution_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 8);
    // One upstream request per job: none was handed to two instances.
    let s = w.emu.status();
    assert_eq!((s.total_requests, s.completed_streams), (8, 8));
    let pool = w.backend.pool_status();
    assert!(pool.hits >= 3, "{pool:?}");
    w.stop().await;
}

#[tokio::test]
async fn a_plain_http_url_off_loopback_is_refused() {
    let emu = emulator().await;
    for url in [
        "http://192.0.2.10:8080",
        "http://controller:8080",
        "ftp://x",
    ] {
        let err = ProcessBackend::new(process_config(&emu, 0, url)).unwrap_err();
        assert!(matches!(err, BackendError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("https"), "{err}");
    }
    for url in ["https://controller.example:8443", "http://[::1]:9"] {
        ProcessBackend::new(process_config(&emu, 0, url)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_killed_mid_job_fails_the_execution_clearly() {
    let w = world(0, None, |_| {}).await;
    let p = Provider::Anthropic;
    let res = send(
        w.server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job_for(p, &model(p, "len200-rate20"))),
    )
    .await;
    let mut r = SseReader::new(res);
    let id = r.next().await.unwrap().data["execution_id"]
        .as_str()
        .unwrap()
        .to_owned();
    loop {
        if r.next().await.unwrap().event == "text" {
            break;
        }
    }
    let pids = w.backend.child_pids();
    assert_eq!(pids.len(), 1);
    let started = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    let rest = r.rest().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error", "{last:?}");
    let msg = last.data.to_string();
    // The report broke with the process, before its exit was even reaped.
    assert!(msg.contains("vanished mid-job"), "{msg}");
    assert_eq!(last.data["partial"], true, "{msg}");
    assert_eq!(rest.iter().filter(|e| e.event == "error").count(), 1);
    let v = status(&w, &id).await;
    assert_eq!(v["status"], "failed", "{v}");
    w.stop().await;
}

/// rcgen: a CA and a server certificate for localhost / 127.0.0.1, written to `dir`.
fn generate_tls(dir: &Path) -> (Arc<rustls::ServerConfig>, PathBuf, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "polydev test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    // The same loader the binary uses for POLYDEV_TLS_CERT / POLYDEV_TLS_KEY.
    let config = polydev_controller::tls::server_config(&cert_path, &key_path).unwrap();
    (config, ca_path, ca_cert.pem())
}

/// POST /v1/executions over TLS trusting `ca_pem`; the SSE events.
async fn stream_tls(addr: SocketAddr, ca_pem: &str, body: Value) -> Vec<Sse> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/executions")
        .header("host", format!("localhost:{}", addr.port()))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    SseReader::new(res).rest().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_for_clients_and_pull_runtimes() {
    let certs = tempfile::tempdir().unwrap();
    let (server, ca_path, ca_pem) = generate_tls(certs.path());
    let w = world(1, Some((server.clone(), Some(ca_path))), |_| {}).await;
    eventually("pool warm over TLS", || w.backend.pool_status().idle == 1).await;
    for p in [Provider::OpenAi, Provider::Google] {
        let events = stream_tls(w.server.addr, &ca_pem, job_for(p, &model(p, "len7"))).await;
        assert_eq!(text_of(&events), answer_text(7), "{p:?}");
        assert_eq!(events.last().unwrap().event, "end");
    }
    // Plain HTTP to the TLS port gets nowhere.
    let stream = tokio::net::TcpStream::connect(w.server.addr).await.unwrap();
    let handshake =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await;
    if let Ok((mut sender, conn)) = handshake {
        tokio::spawn(conn);
        let req = Request::builder()
            .uri("/healthz")
            .header("host", "localhost")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req)).await;
        assert!(!matches!(res, Ok(Ok(_))), "plain HTTP was answered");
    }
    w.stop().await;

    // Runtimes that do not trust the controller's CA never get their job: the launch fails
    // with a message saying why, in bounded time.
    let w = world(0, Some((server, None)), |c| {
        c.ready_timeout = Duration::from_millis(1500)
    })
    .await;
    let p = Provider::OpenAi;
    let started = std::time::Instant::now();
    let events = stream_tls(w.server.addr, &ca_pem, job_for(p, &model(p, "len7"))).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{last:?}");
    let text = last.data.to_string();
    assert!(text.contains("did not fetch its job"), "{text}");
    assert_eq!(w.emu.status().total_requests, 0);
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A backend that plays the runtime's part itself, to cut a report halfway or poll many times
// at once with one token: the runtime API's rules, without processes.

struct Scripted {
    api: RuntimeApi,
    tokens: Arc<TokenAuthenticator>,
    issued: Mutex<Vec<(String, RuntimeToken)>>,
}

impl Scripted {
    fn new() -> Arc<Scripted> {
        let tokens = Arc::new(TokenAuthenticator::new());
        let registry = Arc::new(InstanceRegistry::new(RegistryConfig {
            poll_hold: Duration::from_millis(500),
            ..RegistryConfig::default()
        }));
        Arc::new(Scripted {
            api: RuntimeApi {
                auth: tokens.clone(),
                registry,
            },
            tokens,
            issued: Mutex::new(Vec::new()),
        })
    }

    async fn token_for(&self, execution_id: &str) -> String {
        for _ in 0..400 {
            if let Some((_, t)) = self
                .issued
                .lock()
                .unwrap()
                .iter()
                .find(|(e, _)| e == execution_id)
            {
                return t.expose().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no instance for {execution_id}");
    }
}

impl Backend for Scripted {
    fn name(&self) -> &'static str {
        "scripted-pull"
    }

    fn launch(&self, job: Job) -> BoxFuture<'_, Result<Instance, BackendError>> {
        Box::pin(async move {
            let execution_id = job.execution_id.clone().unwrap();
            let id = InstanceId::random().unwrap();
            let (feed_tx, mut feed) = mpsc::channel(16);
            self.api
                .registry
                .register(id.clone(), feed_tx, Some(job))
                .unwrap();
            let token = self.tokens.issue(&id, Duration::from_secs(60)).unwrap();
            self.issued.lock().unwrap().push((execution_id, token));
            let (out, output) = mpsc::channel(16);
            let registry = self.api.registry.clone();
            // The "process": forwards the report, then exits once it has ended.
            tokio::spawn(async move {
                while let Some(item) = feed.recv().await {
                    let _ = out.send(item).await;
                }
                registry.remove(&id);
                let _ = out.send(InstanceOutput::Exited(ExitInfo::default())).await;
            });
            let (cancel, _cancel_rx) = CancelHandle::new();
            Ok(Instance {
                output,
                cancel,
                warm: false,
                claim_latency: Duration::ZERO,
            })
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
}

async fn scripted_world() -> (Arc<Scripted>, Controller, Server, tempfile::TempDir) {
    let backend = Scripted::new();
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("s.db")).unwrap();
    // A cut report waits this long for its runtime to resume it.
    let config = ControllerConfig {
        reattach_grace: Duration::from_millis(500),
        ..config()
    };
    let controller = Controller::new(config, backend.clone(), store);
    let server = serve(controller.clone()).await;
    (backend, controller, server, dir)
}

async fn get_next(addr: SocketAddr, token: &str) -> (StatusCode, Bytes) {
    let res = send_with(addr, Method::GET, "/runtime/v1/next", Some(token)).await;
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_polls_with_one_token_get_the_job_once() {
    let (backend, _c, server, _dir) = scripted_world().await;
    let res = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[],
        Some(job_for(Provider::OpenAi, "gpt-5-mini")),
    )
    .await;
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let id = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = backend.token_for(&id).await;
    let polls: Vec<_> = (0..24)
        .map(|_| {
            let token = token.clone();
            let addr = server.addr;
            tokio::spawn(async move { get_next(addr, &token).await })
        })
        .collect();
    let mut jobs = Vec::new();
    for p in polls {
        let (status, body) = p.await.unwrap();
        match status {
            StatusCode::OK => jobs.push(body),
            StatusCode::GONE => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(jobs.len(), 1, "the job was handed out {} times", jobs.len());
    let job = Job::from_json(std::str::from_utf8(&jobs[0]).unwrap()).unwrap();
    assert_eq!(job.execution_id.as_deref(), Some(id.as_str()));
    assert!(String::from_utf8_lossy(&jobs[0]).contains(CANARY));
    // Another instance's token cannot report this execution.
    let res = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[],
        Some(job_for(Provider::OpenAi, "gpt-5-mini")),
    )
    .await;
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let other = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_token = backend.token_for(&other).await;
    let (s, _) = get_next(server.addr, &other_token).await;
    assert_eq!(s, StatusCode::OK);
    let res = send_with(
        server.addr,
        Method::POST,
        &format!("/runtime/v1/executions/{id}/events"),
        Some(&other_token),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_cut_mid_job_fails_the_execution_clearly() {
    let (backend, controller, server, _dir) = scripted_world().await;
    let res = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job_for(Provider::OpenAi, "gpt-5-mini")),
    )
    .await;
    let mut sse = SseReader::new(res);
    let id = sse.next().await.unwrap().data["execution_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = backend.token_for(&id).await;
    let (s, _) = get_next(server.addr, &token).await;
    assert_eq!(s, StatusCode::OK);

    // Act as the runtime: open the report, send one event, then vanish.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>(4);
    let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/runtime/v1/executions/{id}/events"))
        .header("host", server.addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .unwrap();
    let response = tokio::spawn(async move { sender.send_request(req).await });
    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(
        b"{\"type\":\"text\",\"text\":\"partial \"}\n",
    ))))
    .await
    .unwrap();
    let text = sse.next().await.unwrap();
    assert_eq!(text.event, "text");
    assert_eq!(text.data["text"], "partial ");
    // The connection goes away mid-body.
    conn.abort();
    response.abort();
    drop(tx);
    let rest = sse.rest().await;
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error", "{rest:?}");
    let e = &last.data;
    let msg = e.to_string();
    assert!(msg.contains("vanished mid-job"), "{msg}");
    assert_eq!(e["partial"], true, "{msg}");
    let exec = controller.get(&id).unwrap();
    assert_eq!(exec.status().as_str(), "failed");
}

/// A stream of the receiver's items (futures' `unfold`, to avoid another dependency).
fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}

// ---------------------------------------------------------------------------------------------
// The binary, configured through its environment.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_https_to_clients_and_pull_runtimes() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let emu = emulator().await;
    let certs = tempfile::tempdir().unwrap();
    let (_, ca_path, ca_pem) = generate_tls(certs.path());
    let db = certs.path().join("bin.db");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_polydev-controller"));
    cmd.env_clear()
        .env("POLYDEV_LISTEN", "127.0.0.1:0")
        .env("POLYDEV_API_TOKEN", TOKEN)
        .env("POLYDEV_DB", &db)
        .env("POLYDEV_RUNTIME", runtime_bin())
        .env("POLYDEV_RUNTIME_MODE", "pull")
        .env("POLYDEV_TLS_CERT", certs.path().join("cert.pem"))
        .env("POLYDEV_TLS_KEY", certs.path().join("key.pem"))
        .env("POLYDEV_TLS_CA", &ca_path)
        .env("POLYDEV_POOL_SIZE", "1")
        .env("POLYDEV_MAX_CONCURRENCY", "4")
        .env("POLYDEV_SHUTDOWN_GRACE", "300ms")
        .env("POLYDEV_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for p in Provider::ALL {
        let (k, v) = base_url_env(p, &emu.base_url());
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the controller prints its address")
        .unwrap()
        .expect("an address line");
    let addr: SocketAddr = line
        .strip_prefix("polydev-controller listening on https://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    // Pull runtimes reach https://127.0.0.1:port (the default public URL) trusting
    // POLYDEV_TLS_CA: the first execution is served by the warm pool.
    for (p, pause) in [(Provider::Anthropic, 1500), (Provider::OpenAi, 0)] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let events = stream_tls(addr, &ca_pem, job_for(p, &model(p, "len5"))).await;
        assert_eq!(text_of(&events), answer_text(5), "{p:?}: {events:?}");
    }
    nix_kill(child.id().unwrap(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let logs = logs.await.unwrap();
    assert!(!logs.contains(CANARY));
    assert!(logs.contains("runtime API: job handed out"), "{logs}");
}

fn nix_kill(pid: u32, signal: &str) {
    std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
}

#[test]
fn help_lists_the_pull_and_tls_settings() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polydev-controller"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for name in [
        "POLYDEV_RUNTIME_MODE",
        "POLYDEV_PUBLIC_URL",
        "POLYDEV_TLS_CERT",
        "POLYDEV_TLS_KEY",
        "POLYDEV_TLS_CA",
    ] {
        assert!(help.contains(name), "{name} missing from --help");
    }
}
