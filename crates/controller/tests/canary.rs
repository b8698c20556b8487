//! S4 / 7.2 (controller side): a canary credential sent through every path of the controller
//! never appears in any sink: logs (captured at TRACE, every target), HTTP response bodies
//! (successes and errors), metrics, the SQLite file (and its WAL), or `Debug` output.
//!
//! This file installs a global tracing subscriber, so it holds this one test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use polydev_controller::backend::ExitInfo;
use polydev_controller::testing::{Behavior, Control, FakeBackend, Step};
use polydev_protocol::{Event, Provider};
use polydev_test_support::{CANARY, fake_key};
use serde_json::json;
use support::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_never_leaks() {
    let logs = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .init();

    let key = fake_key(Provider::OpenAi);
    assert!(key.contains(CANARY));
    let h = Harness::new(
        config(),
        FakeBackend::new(Behavior::Script(vec![
            // A runtime that prints a line with the key (it must not, but if it did).
            Step::Garbage(format!("debug: sending key {key} upstream")),
            Step::Garbage(format!("half a key: {}", &key[..24])),
            Step::Event(Event::Text {
                text: "hello".into(),
            }),
        ])),
    );
    let server = serve(h.controller.clone()).await;
    let mut bodies: Vec<String> = Vec::new();

    // Success, streamed and not.
    let res = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[("accept", "text/event-stream")],
        Some(job("u")),
    )
    .await;
    let mut r = SseReader::new(res);
    let events = r.rest().await;
    let id = events[0].data["execution_id"].as_str().unwrap().to_owned();
    bodies.push(String::from_utf8_lossy(&r.raw).into_owned());
    let id2 = submit(&h, "u").await;
    wait_terminal(&h, &id2).await;

    // The key in places where it does not belong: every error body must hold no trace of it.
    let misplaced = [
        json!({"user_id": "u", "provider": "openai", "prompt": "p", "credentials": key}),
        json!({"user_id": "u", "provider": "openai", "prompt": "p", "max_tokens": key, "credentials": {"api_key": key}}),
        json!({"user_id": "u", "provider": key, "prompt": "p", "credentials": {"api_key": key}}),
        json!({"user_id": "u", "provider": "openai", "prompt": "p", "temperature": 5, "credentials": {"api_key": key}}),
        json!({"user_id": "u", "provider": "openai", "prompt": "p", "base_url": format!("https://{key}.example/"), "credentials": {"api_key": key}}),
        json!({"user_id": "u", "provider": "openai", "model": "a b", "credentials": {"api_key": key}}),
        json!({"provider": "openai", "prompt": "p", "credentials": {"api_key": key}}),
    ];
    for body in misplaced {
        let r = h
            .call(req(Method::POST, "/v1/executions", Some(body)))
            .await;
        assert_eq!(r.status, 400, "{}", r.text());
        bodies.push(r.text());
    }
    // Perspectives with the key in every target.
    let res = send(
        server.addr,
        Method::POST,
        "/v1/perspectives",
        &[],
        Some(json!({"user_id": "u", "prompt": "p", "targets": [
            {"provider": "openai", "credentials": {"api_key": key}},
            {"provider": "anthropic", "credentials": {"api_key": fake_key(Provider::Anthropic)}},
        ]})),
    )
    .await;
    let mut r = SseReader::new(res);
    r.rest().await;
    bodies.push(String::from_utf8_lossy(&r.raw).into_owned());

    // A runtime that crashes with the key in its exit detail, and one that is cancelled.
    h.fake.set_behavior(Behavior::Manual);
    let crash = submit(&h, "u").await;
    eventually("launched", || h.fake.is_running(&crash)).await;
    h.fake.control(
        &crash,
        Control::Garbage(format!("{{\"type\":\"text\",\"text\":\"{key}\"")),
    );
    h.fake.control(
        &crash,
        Control::Crash(ExitInfo {
            code: Some(101),
            signal: None,
            detail: Some(format!("panicked: {key}")),
            oom_killed: false,
        }),
    );
    bodies.push(wait_terminal(&h, &crash).await.to_string());
    let cancel = submit(&h, "u").await;
    eventually("launched", || h.fake.is_running(&cancel)).await;
    bodies.push(
        h.call(req(
            Method::DELETE,
            &format!("/v1/executions/{cancel}"),
            None,
        ))
        .await
        .text(),
    );

    for id in [&id, &id2, &crash, &cancel] {
        bodies.push(
            h.call(req(Method::GET, &format!("/v1/executions/{id}"), None))
                .await
                .text(),
        );
        let res = send(
            server.addr,
            Method::GET,
            &format!("/v1/executions/{id}/events"),
            &[],
            None,
        )
        .await;
        let mut r = SseReader::new(res);
        r.rest().await;
        bodies.push(String::from_utf8_lossy(&r.raw).into_owned());
    }
    bodies.push(h.call(req(Method::GET, "/metrics", None)).await.text());
    bodies.push(h.call(req(Method::GET, "/v1/pool", None)).await.text());
    bodies.push(format!("{:?}", h.controller));
    bodies.push(format!("{:?}", h.fake.jobs()));
    h.controller.flush().await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    for (i, b) in bodies.iter().enumerate() {
        assert!(!b.contains(CANARY), "canary in body {i}: {b}");
    }
    let mut files = 0;
    for entry in std::fs::read_dir(h.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        assert!(
            !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "canary in {}",
            path.display()
        );
    }
    assert!(files >= 1);
    let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    // The paths that could have leaked did run and log.
    assert!(log.contains("execution accepted"), "{log}");
    assert!(log.contains("not an event"), "{log}");
    assert!(log.contains("without a terminal event"), "{log}");
    assert!(!log.contains(CANARY), "canary in logs:\n{log}");
}
