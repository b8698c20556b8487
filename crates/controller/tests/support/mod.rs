//! Shared helpers for the controller's integration tests: a controller over the fake backend
//! with a throwaway SQLite file, `oneshot` requests against the router, a real server on port
//! 0, and a small streaming HTTP/1 + SSE client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use polydev_controller::config::ControllerConfig;
use polydev_controller::store::Store;
use polydev_controller::testing::FakeBackend;
use polydev_controller::{Controller, app};
use polydev_protocol::Provider;
use polydev_test_support::fake_key;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tower::ServiceExt;

pub const TOKEN: &str = "test-token-0123456789";

/// A controller over a fake backend with a temporary database.
pub struct Harness {
    pub controller: Controller,
    pub fake: FakeBackend,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
}

pub fn config() -> ControllerConfig {
    ControllerConfig {
        api_token: Some(polydev_controller::config::Secret::new(TOKEN)),
        max_concurrency: 4,
        queue_size: 4,
        ..ControllerConfig::default()
    }
}

impl Harness {
    pub fn new(config: ControllerConfig, fake: FakeBackend) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("polydev.db");
        let (store, _) = Store::open(&db).unwrap();
        let controller = Controller::new(config, Arc::new(fake.clone()), store);
        Harness {
            controller,
            fake,
            dir,
            db,
        }
    }

    pub fn app(&self) -> Router {
        app(self.controller.clone())
    }

    pub async fn call(&self, req: Request<Body>) -> Reply {
        call(&self.app(), req).await
    }
}

/// A buffered response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an error body `{"error":{"kind","message"}}` with this status and kind.
    pub fn assert_error(&self, status: StatusCode, kind: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        let v = self.json();
        assert_eq!(v["error"]["kind"], kind, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
    }
}

pub async fn call(app: &Router, req: Request<Body>) -> Reply {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// A request with the test token.
pub fn req(method: Method, uri: &str, body: Option<Value>) -> Request<Body> {
    let b = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"));
    match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

/// A job for `user` against OpenAI with a fake (canary) key.
pub fn job(user: &str) -> Value {
    json!({
        "user_id": user,
        "provider": "openai",
        "prompt": "hello",
        "credentials": {"api_key": fake_key(Provider::OpenAi)},
    })
}

/// Submits a job (202) and returns its id.
pub async fn submit(h: &Harness, user: &str) -> String {
    let r = h
        .call(req(Method::POST, "/v1/executions", Some(job(user))))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// Polls `GET /v1/executions/{id}` until its status is terminal.
pub async fn wait_terminal(h: &Harness, id: &str) -> Value {
    for _ in 0..1000 {
        let r = h
            .call(req(Method::GET, &format!("/v1/executions/{id}"), None))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
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

/// Waits until `f` holds (bounded).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

// === a real server ===

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Fires the shutdown future given to `run`.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn serve(controller: Controller) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(polydev_controller::run(listener, controller, async {
        let _ = rx.await;
    }));
    Server {
        addr,
        stop: Some(tx),
        task,
    }
}

/// Serves `controller` on a listener bound beforehand (pull-mode runtimes must be told the
/// address before the backend starts them), over HTTPS when `tls` is set.
pub fn serve_bound(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    controller: Controller,
) -> Server {
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(polydev_controller::run_tls(
        listener,
        tls,
        controller,
        async {
            let _ = rx.await;
        },
    ));
    Server {
        addr,
        stop: Some(tx),
        task,
    }
}

/// Sends one request on a fresh HTTP/1 connection and returns the streaming response.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> http::Response<hyper::body::Incoming> {
    let auth = format!("Bearer {TOKEN}");
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    send_as(addr, method, path, &all, body).await
}

/// [`send`] with exactly these headers (no token added).
pub async fn send_as(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
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
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = match body {
        Some(v) => http_body_util::Full::new(Bytes::from(v.to_string())),
        None => http_body_util::Full::new(Bytes::new()),
    };
    sender.send_request(b.body(body).unwrap()).await.unwrap()
}

/// One received SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Reads SSE events from a streaming response body; also keeps every raw byte.
pub struct SseReader {
    body: hyper::body::Incoming,
    dec: polydev_sse::Decoder,
    pending: VecDeque<Sse>,
    pub raw: Vec<u8>,
    last_id: Option<String>,
}

impl SseReader {
    pub fn new(res: http::Response<hyper::body::Incoming>) -> SseReader {
        assert_eq!(res.status(), StatusCode::OK);
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        SseReader {
            body: res.into_body(),
            dec: polydev_sse::Decoder::new(),
            pending: VecDeque::new(),
            raw: Vec::new(),
            last_id: None,
        }
    }

    /// The next event, or `None` at the end of the stream. Bounded by 10 s.
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("no SSE frame within 10 s");
            let data = match frame {
                None => return None,
                Some(f) => match f.unwrap().into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            self.raw.extend_from_slice(&data);
            let mut items = Vec::new();
            self.dec.feed(&data, &mut items).unwrap();
            for item in items {
                if let polydev_sse::Item::Event(e) = item {
                    // The decoder carries the last id over; report only ids this event set.
                    let id = if e.id != self.last_id {
                        self.last_id = e.id.clone();
                        e.id.as_deref().and_then(|s| s.parse().ok())
                    } else {
                        None
                    };
                    self.pending.push_back(Sse {
                        id,
                        event: e.event_type().to_owned(),
                        data: serde_json::from_str(&e.data).unwrap(),
                    });
                }
            }
        }
    }

    /// Every remaining event until the stream ends.
    pub async fn rest(&mut self) -> Vec<Sse> {
        let mut v = Vec::new();
        while let Some(e) = self.next().await {
            v.push(e);
        }
        v
    }
}
