//! Fuzz target: arbitrary bytes as the JSON body of every body-carrying route of the
//! controller's client API (executions, perspectives, pool, the two front doors when present),
//! through the real router (guard, body reading, parsing, validation, admission) over a fake
//! backend. Nothing may panic, no answer may be a 500 (a bad body is the client's error), and
//! every error answer carries a JSON body.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use polydev_controller::config::{ControllerConfig, Secret};
use polydev_controller::store::Store;
use polydev_controller::testing::{Behavior, FakeBackend};
use polydev_controller::{Controller, app};
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";

const ROUTES: [(Method, &str); 5] = [
    (Method::POST, "/v1/executions"),
    (Method::POST, "/v1/perspectives"),
    (Method::PUT, "/v1/pool"),
    (Method::POST, "/v1/chat/completions"),
    (Method::POST, "/v1/messages"),
];

struct World {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        let router = rt.block_on(async {
            let config = ControllerConfig {
                api_token: Some(Secret::new(TOKEN)),
                max_concurrency: 4,
                queue_size: 0,
                max_body_bytes: 64 * 1024,
                ..ControllerConfig::default()
            };
            // Executions that get through run instantly and end: the fuzzer explores parsing
            // and validation, not scheduling.
            let fake = FakeBackend::new(Behavior::Stream {
                tokens: 1,
                delay: std::time::Duration::ZERO,
            });
            let store = Store::in_memory().expect("an in-memory store opens");
            app(Controller::new(config, Arc::new(fake), store))
        });
        World { rt, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (method, path) = &ROUTES[usize::from(selector) % ROUTES.len()];
    let w = world();
    w.rt.block_on(async {
        let req = Request::builder()
            .method(method.clone())
            .uri(*path)
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
            .expect("a request builds");
        let res = w.router.clone().oneshot(req).await.expect("the router is infallible");
        let status = res.status();
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: a body made a 500");
        // Streaming answers are not read to the end: the execution runs on its own.
        if status.is_client_error() {
            let bytes = res.into_body().collect().await.expect("an error body reads").to_bytes();
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).expect("an error answer is JSON");
            assert!(v.get("error").is_some(), "{path}: error answer without an error: {v}");
        }
    });
});
