//! C6 (controller side): after a crash, a restart marks the executions the dead controller left
//! `queued` or `running` as `failed` / `interrupted`, and serves them from the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use http::{Method, StatusCode};
use polydev_controller::config::ControllerConfig;
use polydev_controller::store::Store;
use polydev_controller::testing::{Behavior, Control, FakeBackend};
use polydev_controller::{Controller, app};
use support::*;

#[tokio::test]
async fn restart_marks_unfinished_rows_interrupted() {
    let cfg = ControllerConfig {
        max_concurrency: 1,
        queue_size: 2,
        ..config()
    };
    let h = Harness::new(cfg.clone(), FakeBackend::new(Behavior::Manual));
    let done = submit(&h, "u").await;
    eventually("launched", || h.fake.is_running(&done)).await;
    h.fake.control(&done, Control::Complete);
    wait_terminal(&h, &done).await;
    let running = submit(&h, "u").await;
    let queued = submit(&h, "u").await;
    eventually("launched", || h.fake.is_running(&running)).await;
    h.controller.flush().await;

    // "Crash": the first controller is abandoned without shutdown; a new one opens the file.
    let (store, marked) = Store::open(&h.db).unwrap();
    assert_eq!(marked, 2);
    let fresh = Controller::new(cfg, Arc::new(FakeBackend::new(Behavior::Manual)), store);
    let app = app(fresh);
    for (id, status, kind) in [
        (&running, "failed", Some("interrupted")),
        (&queued, "failed", Some("interrupted")),
        (&done, "succeeded", None),
    ] {
        let r = call(
            &app,
            req(Method::GET, &format!("/v1/executions/{id}"), None),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let v = r.json();
        assert_eq!(v["status"], status, "{v}");
        assert_eq!(v["error"]["kind"].as_str(), kind, "{v}");
        assert!(v["ended_at_ms"].is_u64());
        // Events are not kept across restarts.
        call(
            &app,
            req(Method::GET, &format!("/v1/executions/{id}/events"), None),
        )
        .await
        .assert_error(StatusCode::GONE, "expired");
    }
    let v = call(
        &app,
        req(Method::GET, &format!("/v1/executions/{done}"), None),
    )
    .await
    .json();
    assert_eq!(v["usage"]["input_tokens"], 5);
    assert_eq!(v["warm"], false);
}
