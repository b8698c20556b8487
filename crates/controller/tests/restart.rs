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

    // "Crash": the database as the first controller leaves it (its committed pages and WAL,
    // copied while it still runs, since in this process its store keeps the file's lock), opened
    // by a new controller.
    let crashed = h.dir.path().join("crashed.db");
    for suffix in ["", "-wal"] {
        let from = format!("{}{suffix}", h.db.display());
        if std::path::Path::new(&from).exists() {
            std::fs::copy(&from, format!("{}{suffix}", crashed.display())).unwrap();
        }
    }
    let (store, marked) = Store::open(&crashed).unwrap();
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

#[tokio::test]
async fn a_second_controller_on_a_live_database_is_refused() {
    let h = Harness::new(config(), FakeBackend::new(Behavior::Manual));
    let running = submit(&h, "u").await;
    eventually("launched", || h.fake.is_running(&running)).await;
    h.controller.flush().await;
    let err = Store::open(&h.db).unwrap_err();
    assert!(err.to_string().contains("another controller"), "{err}");
    let v = h
        .call(req(Method::GET, &format!("/v1/executions/{running}"), None))
        .await
        .json();
    assert_eq!(v["status"], "running", "{v}");
}
