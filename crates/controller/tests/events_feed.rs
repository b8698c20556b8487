//! The live feed (`GET /v1/events`, `GET /v1/stats`) and the console's files (`GET /console`)
//! over a real socket: a snapshot first, then every change of status; no prompt, answer or
//! key on it; a subscriber that never reads stalls nothing; the console is served without the
//! token and with its security headers, the feed only with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use polydev_controller::config::ControllerConfig;
use polydev_controller::testing::FakeBackend;
use polydev_protocol::Provider;
use polydev_test_support::fake_key;
use serde_json::json;
use support::*;

fn roomy() -> ControllerConfig {
    ControllerConfig {
        max_concurrency: 64,
        queue_size: 1024,
        max_per_user: 1024,
        ..config()
    }
}

/// Reads feed events until `f` says stop; returns everything read.
async fn read_until(r: &mut SseReader, mut f: impl FnMut(&Sse) -> bool) -> Vec<Sse> {
    let mut seen = Vec::new();
    while let Some(e) = r.next().await {
        let stop = f(&e);
        seen.push(e);
        if stop {
            return seen;
        }
    }
    panic!("the feed ended early: {seen:?}");
}

#[tokio::test]
async fn a_snapshot_then_every_change_of_status_and_no_user_data() {
    let h = Harness::new(roomy(), FakeBackend::streaming(5, Duration::from_millis(2)));
    let server = serve(h.controller.clone()).await;
    let res = send(server.addr, Method::GET, "/v1/events", &[], None).await;
    let mut feed = SseReader::new(res);
    let first = feed.next().await.unwrap();
    assert_eq!(first.event, "snapshot");
    assert_eq!(first.data["executions"], json!([]));
    assert_eq!(first.data["pool"]["limit"], 64);
    assert!(first.data["stats"]["buckets"].is_array());
    assert_eq!(first.data["stats"]["bucket_ms"], 5000);

    let id = submit(&h, "watcher").await;
    let seen = read_until(&mut feed, |e| {
        e.event == "execution" && e.data["id"] == id.as_str() && e.data["status"] == "succeeded"
    })
    .await;
    let statuses: Vec<&str> = seen
        .iter()
        .filter(|e| e.event == "execution" && e.data["id"] == id.as_str())
        .map(|e| e.data["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.first(), Some(&"queued"), "{statuses:?}");
    assert!(statuses.contains(&"running"), "{statuses:?}");
    let last = &seen.last().unwrap().data;
    assert_eq!(last["user_id"], "watcher");
    assert_eq!(last["provider"], "openai");
    assert!(last["duration_ms"].is_u64());
    // Nothing of the prompt, the answer or the key.
    let raw = String::from_utf8(feed.raw.clone()).unwrap();
    for secret in ["hello", "tok0", &fake_key(Provider::OpenAi)] {
        assert!(!raw.contains(secret), "{secret} on the feed: {raw}");
    }

    // A pool change is pushed.
    let r = h
        .call(req(Method::PUT, "/v1/pool", Some(json!({"size": 3}))))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    read_until(&mut feed, |e| {
        e.event == "pool" && e.data["pool"]["size"] == 3
    })
    .await;
}

#[tokio::test]
async fn the_snapshot_lists_executions_the_registry_no_longer_holds() {
    let cfg = ControllerConfig {
        event_retention: Duration::from_millis(50),
        ..roomy()
    };
    let h = Harness::new(cfg, FakeBackend::streaming(2, Duration::ZERO));
    let id = submit(&h, "history").await;
    wait_terminal(&h, &id).await;
    h.controller.flush().await;
    eventually("the execution leaves memory", || {
        h.controller.get(&id).is_none()
    })
    .await;
    let server = serve(h.controller.clone()).await;
    let res = send(server.addr, Method::GET, "/v1/events", &[], None).await;
    let snapshot = SseReader::new(res).next().await.unwrap();
    assert_eq!(snapshot.event, "snapshot");
    let listed = &snapshot.data["executions"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["status"], "succeeded");
    assert_eq!(listed["user_id"], "history");
}

#[tokio::test]
async fn a_subscriber_that_never_reads_stalls_no_execution() {
    let h = Harness::new(roomy(), FakeBackend::streaming(2, Duration::ZERO));
    let server = serve(h.controller.clone()).await;
    // Opened, then never read while 600 executions run (thousands of feed events).
    let stalled = send(server.addr, Method::GET, "/v1/events", &[], None).await;
    let mut ids = Vec::new();
    for i in 0..600 {
        ids.push(submit(&h, &format!("u{}", i % 50)).await);
    }
    tokio::time::timeout(Duration::from_secs(30), h.controller.wait_idle())
        .await
        .expect("executions finished while a feed subscriber read nothing");
    // The stalled subscriber still gets a coherent picture: events in order or, having fallen
    // behind the ring, a new snapshot.
    let mut feed = SseReader::new(stalled);
    let mut ended = std::collections::HashSet::new();
    let last_id = ids.last().unwrap().clone();
    read_until(&mut feed, |e| {
        match e.event.as_str() {
            "snapshot" => {
                for x in e.data["executions"].as_array().unwrap() {
                    if x["status"] == "succeeded" {
                        ended.insert(x["id"].as_str().unwrap().to_owned());
                    }
                }
            }
            "execution" if e.data["status"] == "succeeded" => {
                ended.insert(e.data["id"].as_str().unwrap().to_owned());
            }
            _ => {}
        }
        ended.contains(&last_id)
    })
    .await;
}

#[tokio::test]
async fn stats_count_outcomes_in_closed_buckets() {
    let h = Harness::new(roomy(), FakeBackend::streaming(1, Duration::ZERO));
    let id = submit(&h, "s").await;
    wait_terminal(&h, &id).await;
    let r = h.call(req(Method::GET, "/v1/stats", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["bucket_ms"], 5000);
    // The bucket closes within 5 s (and one sample).
    let mut found = false;
    for _ in 0..60 {
        let v = h.call(req(Method::GET, "/v1/stats", None)).await.json();
        let n: u64 = v["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["outcomes"]["succeeded"].as_u64())
            .sum();
        if n == 1 {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "the execution was not counted in a closed bucket");
}

#[tokio::test]
async fn the_console_is_public_and_strict_the_feed_is_not() {
    let h = Harness::new(config(), FakeBackend::streaming(1, Duration::ZERO));
    let anonymous = |uri: &str| {
        http::Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    for (path, ct) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let r = h.call(anonymous(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.headers["content-type"], ct, "{path}");
        let csp = r.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(r.headers["x-content-type-options"], "nosniff");
        assert_eq!(r.headers["referrer-policy"], "no-referrer");
    }
    let page = h.call(anonymous("/console")).await.text();
    assert!(page.contains("src=\"/console/console.js\""));
    h.call(anonymous("/v1/events"))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    h.call(anonymous("/v1/stats"))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // Only the console's own paths are public.
    h.call(anonymous("/consoles"))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let r = h.call(anonymous("/console/nope")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
