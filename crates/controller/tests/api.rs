//! C1: the API contract and its error bodies, over `app(state)` with `oneshot` (no socket).
//! Every error is `{"error":{"kind","message"}}` with the right status and no internals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use polydev_controller::backend::BackendError;
use polydev_controller::config::ControllerConfig;
use polydev_controller::testing::{Behavior, Control, FakeBackend};
use serde_json::json;
use support::*;

fn fast() -> FakeBackend {
    FakeBackend::streaming(3, Duration::from_millis(1))
}

#[tokio::test]
async fn healthz_needs_no_token_and_everything_else_does() {
    let h = Harness::new(config(), fast());
    let r = h
        .call(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ok");

    for (method, uri) in [
        (Method::GET, "/metrics"),
        (Method::GET, "/v1/pool"),
        (Method::POST, "/v1/executions"),
        (Method::GET, "/v1/executions/ex_1"),
        (Method::GET, "/v1/executions/ex_1/events"),
        (Method::DELETE, "/v1/executions/ex_1"),
        (Method::POST, "/v1/perspectives"),
        (Method::GET, "/nope"),
    ] {
        let none = Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let r = h.call(none).await;
        r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        for bad in [
            "Bearer wrong",
            "Basic dGVzdA==",
            "Bearer",
            &format!("Bearer {TOKEN}x"),
        ] {
            let wrong = Request::builder()
                .method(method.clone())
                .uri(uri)
                .header("authorization", bad)
                .body(Body::empty())
                .unwrap();
            h.call(wrong)
                .await
                .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    // The scheme is case-insensitive.
    let lower = Request::get("/v1/pool")
        .header("authorization", format!("bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.call(lower).await.status, StatusCode::OK);
}

#[tokio::test]
async fn no_token_configured_means_open_loopback_api() {
    let cfg = ControllerConfig {
        api_token: None,
        ..config()
    };
    let h = Harness::new(cfg, fast());
    for host in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"] {
        let r = h
            .call(
                Request::get("/v1/pool")
                    .header("host", host)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{host}");
    }
}

/// Probe F5: without a token, a foreign `Host` (DNS rebinding) is refused on every client
/// route, and a `text/plain` POST (a CORS "simple" request any web page can send) starts
/// nothing, with or without a token.
#[tokio::test]
async fn no_token_refuses_foreign_hosts_and_every_api_refuses_non_json_bodies() {
    let open = Harness::new(
        ControllerConfig {
            api_token: None,
            ..config()
        },
        fast(),
    );
    for (method, path) in [
        (Method::GET, "/v1/pool"),
        (Method::PUT, "/v1/pool"),
        (Method::POST, "/v1/executions"),
        (Method::GET, "/metrics"),
    ] {
        for host in ["attacker.example:8080", "127.0.0.1.nip.io:8080", ""] {
            let mut b = Request::builder().method(method.clone()).uri(path);
            if !host.is_empty() {
                b = b.header("host", host);
            }
            let r = open
                .call(
                    b.header("content-type", "application/json")
                        .body(Body::from(job("u").to_string()))
                        .unwrap(),
                )
                .await;
            r.assert_error(StatusCode::MISDIRECTED_REQUEST, "misdirected_request");
        }
    }
    // /healthz stays reachable (load balancers probe it by address).
    let r = open
        .call(
            Request::get("/healthz")
                .header("host", "lb.internal")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let authed = Harness::new(config(), fast());
    for (h, auth) in [(&open, false), (&authed, true)] {
        for (method, path, ct) in [
            (
                Method::POST,
                "/v1/executions",
                Some("text/plain;charset=UTF-8"),
            ),
            (Method::POST, "/v1/executions", None),
            (
                Method::POST,
                "/v1/perspectives",
                Some("application/x-www-form-urlencoded"),
            ),
            (Method::PUT, "/v1/pool", Some("text/plain")),
        ] {
            let mut b = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "127.0.0.1:8080");
            if auth {
                b = b.header("authorization", format!("Bearer {TOKEN}"));
            }
            if let Some(ct) = ct {
                b = b.header("content-type", ct);
            }
            let r = h.call(b.body(Body::from(r#"{"size":3}"#)).unwrap()).await;
            r.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
        }
        assert_eq!(h.fake.launched(), 0);
    }
}

#[tokio::test]
async fn submit_then_read_status_text_usage_and_timings() {
    let h = Harness::new(config(), fast());
    let r = h
        .call(req(Method::POST, "/v1/executions", Some(job("u1"))))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ex_"));
    assert!(matches!(v["status"].as_str(), Some("queued" | "running")));
    assert_eq!(v["events_url"], format!("/v1/executions/{id}/events"));
    assert_eq!(r.headers["location"], format!("/v1/executions/{id}"));

    let s = wait_terminal(&h, &id).await;
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["text"], "tok0 tok1 tok2 ");
    assert_eq!(s["text_truncated"], false);
    assert_eq!(s["usage"]["output_tokens"], 3);
    assert_eq!(s["finish_reason"], "stop");
    assert_eq!(s["error"], json!(null));
    assert_eq!(s["user_id"], "u1");
    assert_eq!(s["provider"], "openai");
    // No model given: the provider's default is resolved at admission.
    assert_eq!(s["model"], "gpt-5-mini");
    assert_eq!(s["warm"], false);
    for t in [
        "created_at_ms",
        "started_at_ms",
        "ended_at_ms",
        "queue_ms",
        "ttft_ms",
        "duration_ms",
    ] {
        assert!(s[t].is_u64(), "{t}: {s}");
    }
    assert_eq!(s["events"], 6); // start, 3 text, usage, end
    // The backend got the job with the id set and the model resolved.
    let jobs = h.fake.jobs();
    assert_eq!(jobs[0].execution_id.as_deref(), Some(id.as_str()));
    assert_eq!(jobs[0].model.as_deref(), Some("gpt-5-mini"));
}

#[tokio::test]
async fn validation_errors_are_400_with_a_reason() {
    let h = Harness::new(config(), fast());
    let cases = [
        (json!("not an object"), "invalid job"),
        (
            json!({"user_id": "u", "provider": "mistral", "prompt": "p", "credentials": {"api_key": "k"}}),
            "unknown provider",
        ),
        (
            json!({"provider": "openai", "prompt": "p", "credentials": {"api_key": "k"}}),
            "user_id is required",
        ),
        (
            json!({"user_id": "u", "provider": "openai", "prompt": "p", "credentials": {"api_key": ""}}),
            "no API key",
        ),
        (
            json!({"user_id": "u", "provider": "openai", "credentials": {"api_key": "k"}}),
            "no prompt",
        ),
        (
            json!({"user_id": "u", "provider": "openai", "prompt": "p", "temperature": 9, "credentials": {"api_key": "k"}}),
            "temperature",
        ),
        (
            json!({"user_id": "u", "provider": "openai", "prompt": "p", "max_tokens": "many", "credentials": {"api_key": "k"}}),
            "invalid job",
        ),
        (
            json!({"execution_id": "mine", "user_id": "u", "provider": "openai", "prompt": "p", "credentials": {"api_key": "k"}}),
            "execution_id",
        ),
        (
            json!({"user_id": "u", "provider": "openai", "prompt": "p", "base_url": "http://169.254.169.254/", "credentials": {"api_key": "k"}}),
            "base_url",
        ),
        (
            json!({"user_id": "u".repeat(300), "provider": "openai", "prompt": "p", "credentials": {"api_key": "k"}}),
            "user_id",
        ),
    ];
    for (body, needle) in cases {
        let r = h
            .call(req(Method::POST, "/v1/executions", Some(body.clone())))
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(needle), "{body} -> {msg}");
    }
    // Not JSON at all.
    let raw = Request::post("/v1/executions")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from("{nope"))
        .unwrap();
    h.call(raw)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(h.fake.launched(), 0);
}

#[tokio::test]
async fn base_url_only_under_an_allowed_prefix() {
    let cfg = ControllerConfig {
        allowed_base_urls: vec!["http://127.0.0.1:8787".into()],
        ..config()
    };
    let h = Harness::new(cfg, fast());
    let mut body = job("u");
    body["base_url"] = json!("http://127.0.0.1:8787/v1");
    let r = h
        .call(req(Method::POST, "/v1/executions", Some(body.clone())))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_terminal(&h, &id).await;
    assert_eq!(
        h.fake.jobs()[0].base_url.as_deref(),
        Some("http://127.0.0.1:8787/v1")
    );
    for bad in [
        "http://127.0.0.1:87870/v1",
        "http://127.0.0.1:8787@evil.example/v1",
        "http://127.0.0.1:8787/../x",
        "https://api.openai.com/v1",
    ] {
        body["base_url"] = json!(bad);
        h.call(req(Method::POST, "/v1/executions", Some(body.clone())))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[tokio::test]
async fn unknown_things_are_404_and_wrong_methods_405() {
    let h = Harness::new(config(), fast());
    for uri in [
        "/v1/executions/ex_000000000000000000000000000",
        "/v1/executions/ex_000000000000000000000000000/events",
        "/v1/executions/..%2f..%2fetc",
        "/v1/nothing",
    ] {
        h.call(req(Method::GET, uri, None))
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
    }
    h.call(req(Method::DELETE, "/v1/executions/ex_0", None))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.call(req(Method::PATCH, "/v1/executions", None))
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let cfg = ControllerConfig {
        max_body_bytes: 1024,
        ..config()
    };
    let h = Harness::new(cfg, fast());
    let mut body = job("u");
    body["prompt"] = json!("x".repeat(4096));
    let r = h
        .call(req(Method::POST, "/v1/executions", Some(body)))
        .await;
    r.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn full_is_a_fast_429_with_retry_after() {
    let cfg = ControllerConfig {
        max_concurrency: 1,
        queue_size: 1,
        ..config()
    };
    let h = Harness::new(cfg, FakeBackend::new(Behavior::Manual));
    let a = submit(&h, "a").await;
    let b = submit(&h, "b").await;
    let r = h
        .call(req(Method::POST, "/v1/executions", Some(job("c"))))
        .await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "at_capacity");
    assert_eq!(r.headers["retry-after"], "1");
    let s = h
        .call(req(Method::GET, &format!("/v1/executions/{b}"), None))
        .await
        .json();
    assert_eq!(s["status"], "queued");
    eventually("a launched", || h.fake.is_running(&a)).await;
    h.fake.control(&a, Control::Complete);
    assert_eq!(wait_terminal(&h, &a).await["status"], "succeeded");
    eventually("b launched", || h.fake.is_running(&b)).await;
    h.fake.control(&b, Control::Complete);
    assert_eq!(wait_terminal(&h, &b).await["status"], "succeeded");
    let m = h.call(req(Method::GET, "/metrics", None)).await.text();
    assert!(
        m.contains("polydev_executions_rejected_total{reason=\"at_capacity\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn per_user_limit_is_its_own_429() {
    let cfg = ControllerConfig {
        max_concurrency: 10,
        queue_size: 10,
        max_per_user: 2,
        ..config()
    };
    let h = Harness::new(cfg, FakeBackend::new(Behavior::Manual));
    let a = submit(&h, "greedy").await;
    let _b = submit(&h, "greedy").await;
    let r = h
        .call(req(Method::POST, "/v1/executions", Some(job("greedy"))))
        .await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "user_limit");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2")
    );
    assert_eq!(r.headers["retry-after"], "1");
    // Another user is unaffected.
    submit(&h, "modest").await;
    // When one ends, the user may submit again.
    eventually("a launched", || h.fake.is_running(&a)).await;
    h.fake.control(&a, Control::Complete);
    wait_terminal(&h, &a).await;
    // (Its slot is freed when the runtime has exited, a moment after the terminal event.)
    let mut accepted = false;
    for _ in 0..200 {
        let r = h
            .call(req(Method::POST, "/v1/executions", Some(job("greedy"))))
            .await;
        if r.status == StatusCode::ACCEPTED {
            accepted = true;
            break;
        }
        r.assert_error(StatusCode::TOO_MANY_REQUESTS, "user_limit");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(accepted);
}

#[tokio::test]
async fn cancel_queued_at_once_and_running_with_known_usage() {
    let cfg = ControllerConfig {
        max_concurrency: 1,
        queue_size: 4,
        ..config()
    };
    let h = Harness::new(cfg, FakeBackend::new(Behavior::Manual));
    let running = submit(&h, "u").await;
    let queued = submit(&h, "u").await;
    eventually("launched", || h.fake.is_running(&running)).await;
    h.fake.control(
        &running,
        Control::Event(polydev_protocol::Event::Text { text: "par".into() }),
    );

    let r = h
        .call(req(
            Method::DELETE,
            &format!("/v1/executions/{queued}"),
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["error"]["kind"], "cancelled");
    assert!(
        !h.fake
            .jobs()
            .iter()
            .any(|j| j.execution_id.as_deref() == Some(&queued))
    );

    let r = h
        .call(req(
            Method::DELETE,
            &format!("/v1/executions/{running}"),
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["text"], "par");
    assert_eq!(v["usage"]["output_tokens"], 1);
    assert_eq!(v["error"]["kind"], "cancelled");
    // Idempotent.
    let again = h
        .call(req(
            Method::DELETE,
            &format!("/v1/executions/{running}"),
            None,
        ))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["status"], "cancelled");
    h.controller.wait_idle().await;
    assert_eq!(h.fake.live(), 0);
}

#[tokio::test]
async fn pool_get_and_put() {
    let h = Harness::new(config(), fast());
    let r = h.call(req(Method::GET, "/v1/pool", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["size"], 0);
    // config(): max_concurrency 4, so a pool of 4 is the largest useful one.
    let r = h
        .call(req(Method::PUT, "/v1/pool", Some(json!({"size": 4}))))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["size"], 4);
    for bad in [json!({"size": -1}), json!({}), json!({"size": 1_000_000})] {
        h.call(req(Method::PUT, "/v1/pool", Some(bad)))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    // Probe F4: a pool larger than the executions that can run at once is refused, clearly.
    let r = h
        .call(req(Method::PUT, "/v1/pool", Some(json!({"size": 5}))))
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("at most 4") && msg.contains("POLYDEV_MAX_CONCURRENCY"),
        "{msg}"
    );
    assert_eq!(
        h.call(req(Method::GET, "/v1/pool", None)).await.json()["size"],
        4
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let h = Harness::new(config(), fast());
    let id = submit(&h, "u").await;
    wait_terminal(&h, &id).await;
    let r = h.call(req(Method::GET, "/metrics", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let m = r.text();
    for needle in [
        "polydev_executions_total{provider=\"openai\",outcome=\"succeeded\"} 1",
        "polydev_executions_accepted_total 1",
        "polydev_running 0",
        "polydev_queue_depth 0",
        "polydev_max_concurrency 4",
        "polydev_pool_idle 0",
        "polydev_ttft_seconds_count 1",
        "polydev_execution_duration_seconds_count 1",
        "polydev_claim_latency_seconds_count 1",
        "polydev_launches_total{start=\"cold\"} 1",
        "polydev_backend_info{backend=\"fake\"} 1",
    ] {
        assert!(m.contains(needle), "missing {needle}:\n{m}");
    }
}

#[tokio::test]
async fn finished_executions_fall_back_to_the_store_after_retention() {
    let cfg = ControllerConfig {
        event_retention: Duration::from_millis(100),
        ..config()
    };
    let h = Harness::new(cfg, fast());
    let id = submit(&h, "u").await;
    let live = wait_terminal(&h, &id).await;
    eventually("evicted", || h.controller.get(&id).is_none()).await;
    let r = h
        .call(req(Method::GET, &format!("/v1/executions/{id}"), None))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["text"], json!(null));
    assert_eq!(v["usage"], live["usage"]);
    assert_eq!(v["finish_reason"], "stop");
    assert_eq!(v["ttft_ms"], live["ttft_ms"]);
    h.call(req(
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        None,
    ))
    .await
    .assert_error(StatusCode::GONE, "expired");
}

#[tokio::test]
async fn retention_is_bounded_by_count() {
    let cfg = ControllerConfig {
        max_retained: 2,
        ..config()
    };
    let h = Harness::new(cfg, fast());
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = submit(&h, "u").await;
        wait_terminal(&h, &id).await;
        ids.push(id);
    }
    assert_eq!(h.controller.retained(), 2);
    assert!(h.controller.get(&ids[4]).is_some());
    assert!(h.controller.get(&ids[0]).is_none());
}

#[tokio::test]
async fn launch_failure_ends_the_execution_and_fails_fast_afterwards() {
    let h = Harness::new(config(), fast());
    h.fake
        .fail_next_launch(BackendError::Unavailable("runtime binary missing".into()));
    let id = submit(&h, "u").await;
    let v = wait_terminal(&h, &id).await;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["kind"], "internal");
    assert_eq!(v["error"]["retryable"], true);
    // While the backend is known to be down, submissions fail fast.
    h.call(req(Method::POST, "/v1/executions", Some(job("u"))))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
}

#[tokio::test]
async fn runtime_crash_without_terminal_event_is_synthesized() {
    let h = Harness::new(config(), FakeBackend::new(Behavior::Manual));
    let id = submit(&h, "u").await;
    eventually("launched", || h.fake.is_running(&id)).await;
    h.fake.control(
        &id,
        Control::Event(polydev_protocol::Event::Text { text: "hal".into() }),
    );
    h.fake.control(
        &id,
        Control::Crash(polydev_controller::backend::ExitInfo {
            code: None,
            signal: Some(9),
            detail: Some("OOMKilled".into()),
            oom_killed: true,
        }),
    );
    let v = wait_terminal(&h, &id).await;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["kind"], "internal");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("out of memory"),
        "{v}"
    );
    assert_eq!(v["text"], "hal");
    let m = h.call(req(Method::GET, "/metrics", None)).await.text();
    assert!(
        m.contains("polydev_synthesized_terminal_events_total 1"),
        "{m}"
    );
}

#[tokio::test]
async fn queued_executions_time_out_with_a_clear_error() {
    let cfg = ControllerConfig {
        max_concurrency: 1,
        queue_size: 1,
        queue_wait: Duration::from_millis(100),
        ..config()
    };
    let h = Harness::new(cfg, FakeBackend::new(Behavior::Manual));
    let _busy = submit(&h, "a").await;
    let waiting = submit(&h, "b").await;
    let v = wait_terminal(&h, &waiting).await;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["kind"], "overloaded");
    assert_eq!(v["error"]["retryable"], true);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at capacity")
    );
}

#[tokio::test]
async fn error_bodies_hold_no_internals() {
    let h = Harness::new(config(), fast());
    let bodies = [
        h.call(req(Method::GET, "/v1/executions/ex_x", None)).await,
        h.call(req(Method::POST, "/v1/executions", Some(json!({"x": 1}))))
            .await,
        h.call(req(Method::GET, "/v1/zzz", None)).await,
    ];
    for r in bodies {
        let t = r.text();
        for leak in [
            "/work", "/tmp", ".rs", "panicked", "rusqlite", "Error {", TOKEN,
        ] {
            assert!(!t.contains(leak), "{leak} in {t}");
        }
    }
}

/// Probe F7: a runtime that stops talking mid-stream (SIGSTOPped, wedged) and ignores the
/// cancel is ended by the controller's silence watchdog with `timeout`, long before
/// `max_execution_time`; and one that is merely slow before its first token is left alone for
/// the longer pre-output bound.
#[tokio::test]
async fn a_silent_runtime_is_ended_as_hung() {
    use polydev_controller::config::SilenceLimits;
    use polydev_controller::testing::OnCancel;
    use polydev_protocol::Event;
    let cfg = ControllerConfig {
        runtime_silence: SilenceLimits {
            before_output: Duration::from_millis(1500),
            streaming: Duration::from_millis(300),
        },
        cancel_wait: Duration::from_millis(100),
        ..config()
    };
    let fake = FakeBackend::new(Behavior::Manual);
    fake.set_on_cancel(OnCancel::Ignore);
    let h = Harness::new(cfg, fake);
    let id = submit(&h, "u").await;
    eventually("launched", || h.fake.is_running(&id)).await;
    h.fake
        .control(&id, Control::Event(Event::Text { text: "a".into() }));
    let t0 = std::time::Instant::now();
    let v = wait_terminal(&h, &id).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["kind"], "timeout", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sent nothing"),
        "{v}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // Before any output the longer bound applies: still running after the streaming bound.
    let id = submit(&h, "u").await;
    eventually("launched", || h.fake.is_running(&id)).await;
    h.fake.control(
        &id,
        Control::Event(Event::Usage(polydev_protocol::Usage::default())),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let v = h
        .call(req(Method::GET, &format!("/v1/executions/{id}"), None))
        .await
        .json();
    assert_eq!(v["status"], "running", "{v}");
}
