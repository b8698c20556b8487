//! `POST /v1/perspectives`: one prompt to several targets, one interleaved stream whose events
//! carry `execution_id`, `target` and `seq`, ending with `done`; each target is an ordinary
//! execution, readable and resumable on its own; admission is all or nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, StatusCode};
use polydev_controller::config::ControllerConfig;
use polydev_controller::testing::{Behavior, FakeBackend};
use polydev_protocol::Provider;
use polydev_test_support::fake_key;
use serde_json::{Value, json};
use support::*;

fn body(user: &str, n: usize) -> Value {
    let providers = [Provider::OpenAi, Provider::Anthropic, Provider::Google];
    json!({
        "user_id": user,
        "prompt": "Which is best?",
        "max_tokens": 64,
        "targets": (0..n).map(|i| {
            let p = providers[i % 3];
            json!({"provider": p.as_str(), "credentials": {"api_key": fake_key(p)}})
        }).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn one_stream_interleaves_every_target_then_done() {
    let h = Harness::new(
        config(),
        FakeBackend::streaming(10, Duration::from_millis(2)),
    );
    let server = serve(h.controller.clone()).await;
    let res = send(
        server.addr,
        Method::POST,
        "/v1/perspectives",
        &[("accept", "text/event-stream")],
        Some(body("u", 3)),
    )
    .await;
    let events = SseReader::new(res).rest().await;
    let done = events.last().unwrap();
    assert_eq!(done.event, "done");
    assert_eq!(done.data, json!({"type": "done"}));
    assert_eq!(events.iter().filter(|e| e.event == "done").count(), 1);

    let mut per_target: BTreeMap<u64, Vec<&Sse>> = BTreeMap::new();
    for e in &events[..events.len() - 1] {
        assert_eq!(
            e.id, None,
            "the interleaved stream has no id: (ids are per execution)"
        );
        assert_eq!(e.data["type"], e.event);
        per_target
            .entry(e.data["target"].as_u64().unwrap())
            .or_default()
            .push(e);
    }
    assert_eq!(per_target.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    let mut ids = Vec::new();
    for (target, evs) in &per_target {
        let id = evs[0].data["execution_id"].as_str().unwrap().to_owned();
        assert_eq!(evs[0].event, "start");
        let provider = ["openai", "anthropic", "google"][*target as usize];
        assert_eq!(evs[0].data["provider"], provider);
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(e.data["seq"], i as u64 + 1);
            assert_eq!(e.data["execution_id"], id);
        }
        assert_eq!(evs.last().unwrap().event, "end");
        ids.push((id, evs.len()));
    }
    // Interleaved, not one after another: some target's event comes between another's.
    let order: Vec<u64> = events[..events.len() - 1]
        .iter()
        .map(|e| e.data["target"].as_u64().unwrap())
        .collect();
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(switches > 2, "{order:?}");

    // Each target is an ordinary execution: status and resumable events.
    for (id, n) in &ids {
        let s = wait_terminal(&h, id).await;
        assert_eq!(s["status"], "succeeded");
        let res = send(
            server.addr,
            Method::GET,
            &format!("/v1/executions/{id}/events"),
            &[("last-event-id", "3")],
            None,
        )
        .await;
        let rest = SseReader::new(res).rest().await;
        assert_eq!(rest.len(), n - 3);
        assert_eq!(rest[0].id, Some(4));
    }
    // The prompt and max_tokens reached every job.
    let jobs = h.fake.jobs();
    assert_eq!(jobs.len(), 3);
    assert!(
        jobs.iter()
            .all(|j| j.prompt.as_deref() == Some("Which is best?") && j.max_tokens == Some(64))
    );
}

#[tokio::test]
async fn json_clients_get_the_ids() {
    let h = Harness::new(config(), FakeBackend::streaming(1, Duration::ZERO));
    let r = h
        .call(req(Method::POST, "/v1/perspectives", Some(body("u", 2))))
        .await;
    // `req` sends no Accept header: the stream is the default.
    assert_eq!(r.status, StatusCode::OK);
    let mut with_accept = req(Method::POST, "/v1/perspectives", Some(body("u", 2)));
    with_accept
        .headers_mut()
        .insert("accept", "application/json".parse().unwrap());
    let r = h.call(with_accept).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let v = r.json();
    assert_eq!(v["executions"].as_array().unwrap().len(), 2);
    assert_eq!(v["executions"][1]["target"], 1);
}

#[tokio::test]
async fn invalid_requests_and_all_or_nothing_admission() {
    let cfg = ControllerConfig {
        max_concurrency: 2,
        queue_size: 1,
        ..config()
    };
    let h = Harness::new(cfg, FakeBackend::new(Behavior::Manual));
    h.call(req(Method::POST, "/v1/perspectives", Some(body("u", 0))))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    h.call(req(Method::POST, "/v1/perspectives", Some(body("u", 17))))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    let mut no_user = body("u", 2);
    no_user.as_object_mut().unwrap().remove("user_id");
    h.call(req(Method::POST, "/v1/perspectives", Some(no_user)))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    let mut bad_target = body("u", 2);
    bad_target["targets"][1]["credentials"]["api_key"] = json!("");
    h.call(req(Method::POST, "/v1/perspectives", Some(bad_target)))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    // 4 targets do not fit in 2 slots + 1 queue place: nothing is admitted.
    h.call(req(Method::POST, "/v1/perspectives", Some(body("u", 4))))
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "at_capacity");
    assert_eq!(h.controller.load().running, 0);
    assert_eq!(h.fake.launched(), 0);
}
