//! Fuzz target: arbitrary bytes as a pull-mode runtime's event report
//! (`POST /runtime/v1/executions/{id}/events`), cut into arbitrary chunks and sent with an
//! arbitrary resume offset, through the controller's real runtime API: authentication, the
//! instance registry, the resume handshake (`GET …/events`, `polydev-event-offset`), line
//! splitting and bounds, event parsing. Nothing may panic, no answer may be a 500, every
//! refusal carries a JSON body, and the instance's output never holds more items than the body
//! had lines (plus the one terminal error the registry may add).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use polydev_controller::api::runtime::router;
use polydev_controller::backend::pull::{
    InstanceId, InstanceRegistry, RegistryConfig, RuntimeApi, TokenAuthenticator,
};
use polydev_protocol::Job;
use polydev_protocol::report::EVENT_OFFSET_HEADER;
use tokio::sync::mpsc;
use tower::ServiceExt;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime always builds")
    })
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let res = app.clone().oneshot(req).await.expect("the router is infallible");
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    (status, body)
}

fn check(status: StatusCode, body: &[u8]) {
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(body).expect("a JSON error body");
        assert!(v["error"]["kind"].is_string(), "{v}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    rt().block_on(async {
        let auth = Arc::new(TokenAuthenticator::new());
        let registry = Arc::new(InstanceRegistry::new(RegistryConfig {
            poll_hold: Duration::from_millis(1),
            max_line_bytes: 4096,
            max_report_bytes: 64 * 1024,
            reattach_grace: Duration::ZERO,
        }));
        let app = router(RuntimeApi {
            auth: auth.clone(),
            registry: registry.clone(),
        });
        let id = InstanceId::random().expect("the OS RNG works");
        let token = auth
            .issue(&id, Duration::from_secs(60))
            .expect("issuing a token to a fresh id works");
        let bearer = format!("Bearer {}", token.expose());
        let (tx, mut rx) = mpsc::channel(64);
        // Drains the instance's output as the driver would, counting the items.
        let drained = tokio::spawn(async move {
            let mut n = 0usize;
            while rx.recv().await.is_some() {
                n += 1;
            }
            n
        });
        registry
            .register(id.clone(), tx, None)
            .expect("a fresh id registers");
        let job = Job::from_json(
            r#"{"execution_id":"ex_1","user_id":"u","provider":"openai","prompt":"hi","credentials":{"api_key":"sk-fuzz-not-a-key"}}"#,
        )
        .expect("the job is valid");
        let _fetched = registry.assign(&id, job).expect("the slot is idle");
        let next = Request::builder()
            .method(Method::GET)
            .uri("/runtime/v1/next")
            .header("authorization", &bearer)
            .body(Body::empty())
            .expect("a valid request");
        let (status, _) = call(&app, next).await;
        assert_eq!(status, StatusCode::OK);

        // The first byte picks the offset the report claims (mostly 0, sometimes wrong) and
        // how the body is cut.
        let offset = u64::from(head & 0x03);
        let cut = usize::from(head >> 2).max(1);
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = rest
            .chunks(cut)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let post = Request::builder()
            .method(Method::POST)
            .uri("/runtime/v1/executions/ex_1/events")
            .header("authorization", &bearer)
            .header(EVENT_OFFSET_HEADER, offset.to_string())
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .expect("a valid request");
        let (status, body) = call(&app, post).await;
        check(status, &body);
        // The handshake after it answers the position or that the report is over.
        let position = Request::builder()
            .method(Method::GET)
            .uri("/runtime/v1/executions/ex_1/events")
            .header("authorization", &bearer)
            .body(Body::empty())
            .expect("a valid request");
        let (status, body) = call(&app, position).await;
        check(status, &body);
        registry.remove(&id);
        drop(registry);
        drop(app);
        let items = tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(items) = items {
            let lines = rest.iter().filter(|&&b| b == b'\n').count();
            assert!(items <= lines + 2, "{items} items from {lines} lines");
        }
    });
});
