//! The whole path in one process: HTTP API → scheduler → driver → process backend → real
//! `polydev-runtime` children → the in-process emulator, and back as SSE. Streams every
//! provider, uses the warm pool, cancels a live stream (the upstream connection is closed and
//! the execution ends `cancelled` with its usage), fans out perspectives, and shuts down with
//! no child left.
//!
//! The runtime binary must be built first (`cargo build -p polydev-runtime`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use polydev_controller::Controller;
use polydev_controller::backend::Backend;
use polydev_controller::backend::process::{ProcessBackend, ProcessBackendConfig};
use polydev_controller::config::ControllerConfig;
use polydev_controller::store::Store;
use polydev_protocol::Provider;
use polydev_test_support::{Emulator, answer_text, base_url_env, emulator, fake_key};
use serde_json::json;
use support::*;

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

struct World {
    emu: Emulator,
    backend: Arc<ProcessBackend>,
    controller: Controller,
    server: Server,
    _dir: tempfile::TempDir,
}

async fn world(pool_size: usize) -> World {
    let emu = emulator().await;
    let mut cfg = ProcessBackendConfig::new(runtime_bin());
    cfg.env = Provider::ALL
        .iter()
        .map(|p| {
            let (k, v) = base_url_env(*p, &emu.base_url());
            (k.to_owned(), v)
        })
        .collect();
    cfg.pool_size = pool_size;
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
    let server = serve(controller.clone()).await;
    World {
        emu,
        backend,
        controller,
        server,
        _dir: dir,
    }
}

fn job_for(p: Provider, model: &str) -> serde_json::Value {
    json!({
        "user_id": "u1",
        "provider": p.as_str(),
        "model": model,
        "prompt": "Say hello to the test suite",
        "credentials": {"api_key": fake_key(p)},
    })
}

fn model(p: Provider, knobs: &str) -> String {
    let base = match p {
        Provider::OpenAi => "gpt-5-mini",
        Provider::Anthropic => "claude-haiku-4-5",
        Provider::Google => "gemini-2.5-flash",
    };
    format!("{base}-{knobs}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_streams_through_the_controller() {
    let mut w = world(2).await;
    // Let the pool fill so that the first launches are warm.
    eventually("pool warm", || w.backend.pool_status().idle == 2).await;
    for p in Provider::ALL {
        let res = send(
            w.server.addr,
            Method::POST,
            "/v1/executions",
            &[SSE],
            Some(job_for(p, &model(p, "len12"))),
        )
        .await;
        let events = SseReader::new(res).rest().await;
        let id = events[0].data["execution_id"].as_str().unwrap().to_owned();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.id, Some(i as u64 + 1));
            assert_eq!(e.data["execution_id"], id);
        }
        let text: String = events
            .iter()
            .filter(|e| e.event == "text")
            .map(|e| e.data["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, answer_text(12), "{p}");
        let last = events.last().unwrap();
        assert_eq!(last.event, "end", "{p}: {events:?}");
        assert_eq!(last.data["finish_reason"], "stop");
        let status = send(
            w.server.addr,
            Method::GET,
            &format!("/v1/executions/{id}"),
            &[],
            None,
        )
        .await;
        let body = http_body_util::BodyExt::collect(status.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "succeeded");
        assert_eq!(v["text"], answer_text(12));
        assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
        assert_eq!(v["provider"], p.as_str());
    }
    let warm = w.backend.pool_status().hits;
    assert!(
        warm >= 1,
        "the pool served launches: {:?}",
        w.backend.pool_status()
    );
    let m = w.controller.metrics_text();
    assert!(m.contains("polydev_launches_total{start=\"warm\"}"), "{m}");

    w.server.shutdown();
    tokio::time::timeout(Duration::from_secs(10), &mut w.server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        w.backend.child_pids().is_empty(),
        "{:?}",
        w.backend.child_pids()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_closes_the_upstream_and_keeps_the_usage() {
    let mut w = world(0).await;
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
    assert_eq!(w.emu.status().open_streams, 1);
    let del = send(
        w.server.addr,
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
    let v = w.controller.get(&id).unwrap().view();
    assert_eq!(v.status, polydev_controller::execution::Status::Cancelled);
    assert!(v.usage.is_some(), "usage known at cancel: {v:?}");
    eventually("upstream closed", || w.emu.status().open_streams == 0).await;
    w.controller.wait_idle().await;
    eventually("child reaped", || w.backend.child_pids().is_empty()).await;
    w.server.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut w.server.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perspectives_over_real_runtimes() {
    let mut w = world(1).await;
    let body = json!({
        "user_id": "u1",
        "prompt": "Which is best?",
        "targets": Provider::ALL.iter().map(|p| json!({
            "provider": p.as_str(),
            "model": model(*p, "len8-rate200"),
            "credentials": {"api_key": fake_key(*p)},
        })).collect::<Vec<_>>(),
    });
    let res = send(
        w.server.addr,
        Method::POST,
        "/v1/perspectives",
        &[SSE],
        Some(body),
    )
    .await;
    let events = SseReader::new(res).rest().await;
    assert_eq!(events.last().unwrap().event, "done");
    for target in 0..3u64 {
        let text: String = events
            .iter()
            .filter(|e| e.data["target"] == target && e.event == "text")
            .map(|e| e.data["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, answer_text(8), "target {target}");
        assert!(
            events
                .iter()
                .any(|e| e.data["target"] == target && e.event == "end")
        );
    }
    w.server.shutdown();
    tokio::time::timeout(Duration::from_secs(10), &mut w.server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(w.backend.child_pids().is_empty());
}

/// DESIGN.md 4.5 through the controller: a job with an image, tools and a reasoning effort
/// flows to the runtime unchanged, the `tool_call` / signed `reasoning` / `refusal` events are
/// relayed like any other (SSE and resume), the status document lists the tool calls and the
/// refusal text, and perspectives targets take the fields shared or per target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_images_reasoning_and_refusals_through_the_controller() {
    let mut w = world(0).await;
    let png = "iVBORw0KGgoAAAANSUhEUg==";
    for p in Provider::ALL {
        let mut job = job_for(p, &model(p, "think3-tools2-argsplit2"));
        let obj = job.as_object_mut().unwrap();
        obj.remove("prompt");
        obj.insert(
            "messages".into(),
            json!([{"role": "user", "content": [
            {"type": "text", "text": "Weather here?"},
            {"type": "image", "media_type": "image/png", "data": png}]}]),
        );
        obj.insert(
            "tools".into(),
            json!([{"name": "get_weather", "parameters": {"type": "object"}}]),
        );
        obj.insert("tool_choice".into(), json!("required"));
        obj.insert("reasoning".into(), json!({"effort": "low"}));
        let res = send(
            w.server.addr,
            Method::POST,
            "/v1/executions",
            &[SSE],
            Some(job),
        )
        .await;
        let events = SseReader::new(res).rest().await;
        let id = events[0].data["execution_id"].as_str().unwrap().to_owned();
        let calls: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e.event == "tool_call")
            .map(|e| &e.data)
            .collect();
        assert_eq!(calls.len(), 2, "{p}: {events:?}");
        for (i, c) in calls.iter().enumerate() {
            assert_eq!(c["name"], "get_weather");
            assert_eq!(c["arguments"], polydev_test_support::tool_call_arguments(i));
        }
        if p != Provider::OpenAi {
            assert!(
                events
                    .iter()
                    .any(|e| e.event == "reasoning" && e.data["signature"].is_string()),
                "{p}"
            );
        }
        let end = events.iter().find(|e| e.event == "end").unwrap();
        assert_eq!(end.data["finish_reason"], "tool_calls");
        // Resume from the start: the same events, tool calls included.
        let res = send(
            w.server.addr,
            Method::GET,
            &format!("/v1/executions/{id}/events"),
            &[SSE],
            None,
        )
        .await;
        let again = SseReader::new(res).rest().await;
        assert_eq!(again.len(), events.len());
        assert!(again.iter().zip(&events).all(|(a, b)| a.data == b.data));
        // The status document lists the calls.
        let res = send(
            w.server.addr,
            Method::GET,
            &format!("/v1/executions/{id}"),
            &[],
            None,
        )
        .await;
        let status: serde_json::Value = serde_json::from_slice(
            &http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap()
                .to_bytes(),
        )
        .unwrap();
        assert_eq!(
            status["tool_calls"].as_array().unwrap().len(),
            2,
            "{status}"
        );
        assert_eq!(
            status["tool_calls"][1]["arguments"],
            polydev_test_support::tool_call_arguments(1)
        );
        assert_eq!(status["finish_reason"], "tool_calls");
        // What reached the provider: the image and the tool in its shape.
        let sent = w.emu.requests().last().unwrap().body.to_string();
        assert!(
            sent.contains(png) && sent.contains("get_weather"),
            "{p}: {sent}"
        );
    }
    // A refusal: relayed, and in the status document.
    let job = job_for(Provider::OpenAi, &model(Provider::OpenAi, "refuse-len4"));
    let res = send(
        w.server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job),
    )
    .await;
    let events = SseReader::new(res).rest().await;
    let id = events[0].data["execution_id"].as_str().unwrap().to_owned();
    let refusal: String = events
        .iter()
        .filter(|e| e.event == "refusal")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(refusal, answer_text(4));
    let res = send(
        w.server.addr,
        Method::GET,
        &format!("/v1/executions/{id}"),
        &[],
        None,
    )
    .await;
    let status: serde_json::Value = serde_json::from_slice(
        &http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    assert_eq!(status["refusal"], answer_text(4));
    assert_eq!(status["finish_reason"], "content_filter");
    // Perspectives: tools shared, a per-target response format.
    let body = json!({
        "user_id": "u1",
        "prompt": "Weather?",
        "tools": [{"name": "get_weather"}],
        "targets": Provider::ALL.iter().map(|p| json!({
            "provider": p.as_str(),
            "model": model(*p, "tools1"),
            "credentials": {"api_key": fake_key(*p)},
            "stop": ["\n\nUser:"],
        })).collect::<Vec<_>>(),
    });
    let res = send(
        w.server.addr,
        Method::POST,
        "/v1/perspectives",
        &[SSE],
        Some(body),
    )
    .await;
    let events = SseReader::new(res).rest().await;
    for target in 0..3u64 {
        assert!(
            events.iter().any(|e| e.data["target"] == target
                && e.event == "tool_call"
                && e.data["name"] == "get_weather"),
            "target {target}: {events:?}"
        );
    }
    // A validation mistake is a 400 before any execution starts.
    let mut job = job_for(Provider::Anthropic, "m");
    job["tool_choice"] = json!({"name": "nope"});
    let res = send(
        w.server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job),
    )
    .await;
    assert_eq!(res.status(), 400);
    w.server.shutdown();
    tokio::time::timeout(Duration::from_secs(10), &mut w.server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
