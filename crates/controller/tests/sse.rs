//! C2: SSE to clients over a real socket: framing per DESIGN.md 5, the same ids on the POST
//! stream and on `/events`, resume across a forced disconnect with no gap and no duplicate,
//! keep-alive comments, and a terminal event on success, failure and cancel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::Method;
use polydev_controller::config::ControllerConfig;
use polydev_controller::testing::{Behavior, Control, FakeBackend, Step};
use polydev_protocol::{ErrorEvent, ErrorKind, Event};
use support::*;

const SSE: (&str, &str) = ("accept", "text/event-stream");

fn check_framing(events: &[Sse], id: &str) {
    assert!(!events.is_empty());
    assert_eq!(events[0].event, "start");
    assert_eq!(events[0].data["execution_id"], id);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, Some(i as u64 + 1), "ids are 1, 2, 3…: {events:?}");
        assert_eq!(e.data["type"], e.event, "event: equals data.type");
        assert_eq!(e.data["execution_id"], id);
    }
    let terminals = events
        .iter()
        .filter(|e| e.event == "end" || e.event == "error")
        .count();
    assert_eq!(terminals, 1);
    assert!(matches!(
        events.last().map(|e| e.event.as_str()),
        Some("end" | "error")
    ));
}

#[tokio::test]
async fn post_stream_is_framed_and_equals_events_replay() {
    let h = Harness::new(
        config(),
        FakeBackend::streaming(20, Duration::from_millis(1)),
    );
    let server = serve(h.controller.clone()).await;
    let res = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job("u")),
    )
    .await;
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let mut r = SseReader::new(res);
    let events = r.rest().await;
    let id = events[0].data["execution_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/executions/{id}"));
    check_framing(&events, &id);
    assert_eq!(events.len(), 1 + 20 + 2);
    assert_eq!(events[0].data["user_id"], "u");
    assert_eq!(events[0].data["provider"], "openai");
    assert_eq!(events[0].data["model"], "gpt-5-mini");
    assert_eq!(
        events[1].data,
        serde_json::json!({"type": "text", "text": "tok0 ", "execution_id": id})
    );
    // Raw framing: `id:`, `event:`, `data:` lines.
    let raw = String::from_utf8(r.raw.clone()).unwrap();
    assert!(raw.contains(&format!("id: 2\nevent: text\ndata: {{\"type\":\"text\",\"text\":\"tok0 \",\"execution_id\":\"{id}\"}}\n\n")), "{raw}");

    // The same execution through /events: identical events and ids.
    let res = send(
        server.addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[],
        None,
    )
    .await;
    let replay = SseReader::new(res).rest().await;
    assert_eq!(replay, events);
}

#[tokio::test]
async fn resume_after_a_forced_disconnect_has_no_gap_and_no_duplicate() {
    let h = Harness::new(config(), FakeBackend::new(Behavior::Manual));
    let server = serve(h.controller.clone()).await;
    let id = submit(&h, "u").await;
    eventually("launched", || h.fake.is_running(&id)).await;
    let text = |i: usize| {
        Control::Event(Event::Text {
            text: format!("t{i} "),
        })
    };
    for i in 0..10 {
        h.fake.control(&id, text(i));
    }

    // First connection: read 6 events, then drop the connection mid-stream.
    let res = send(
        server.addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[],
        None,
    )
    .await;
    let mut r = SseReader::new(res);
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(r.next().await.unwrap());
    }
    drop(r);
    let last = got.last().unwrap().id.unwrap();

    // More output while the client is away.
    for i in 10..20 {
        h.fake.control(&id, text(i));
    }
    // Resume with Last-Event-ID from a second connection, while the execution is still live.
    let res = send(
        server.addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[("last-event-id", &last.to_string())],
        None,
    )
    .await;
    let mut r = SseReader::new(res);
    let first = r.next().await.unwrap();
    assert_eq!(
        first.id,
        Some(last + 1),
        "resume starts right after the last seen id"
    );
    got.push(first);
    // Output after the reconnect arrives live.
    h.fake.control(&id, Control::Complete);
    got.extend(r.rest().await);
    check_framing(&got, &id);
    let text: String = got
        .iter()
        .filter(|e| e.event == "text")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    let want: String = (0..20).map(|i| format!("t{i} ")).collect();
    assert_eq!(text, want);

    // Resuming at the terminal event ends at once; the query parameter works too.
    let total = got.len();
    let res = send(
        server.addr,
        Method::GET,
        &format!("/v1/executions/{id}/events?last_event_id={total}"),
        &[],
        None,
    )
    .await;
    assert!(SseReader::new(res).rest().await.is_empty());
    // A Last-Event-ID beyond the log is refused.
    let res = send(
        server.addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[("last-event-id", "999")],
        None,
    )
    .await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn keep_alive_comments_flow_while_waiting() {
    let cfg = ControllerConfig {
        sse_keepalive: Duration::from_millis(100),
        ..config()
    };
    let h = Harness::new(cfg, FakeBackend::new(Behavior::Manual));
    let server = serve(h.controller.clone()).await;
    let id = submit(&h, "u").await;
    let res = send(
        server.addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[],
        None,
    )
    .await;
    let mut r = SseReader::new(res);
    assert_eq!(r.next().await.unwrap().event, "start");
    tokio::time::sleep(Duration::from_millis(550)).await;
    eventually("launched", || h.fake.is_running(&id)).await;
    h.fake.control(&id, Control::Complete);
    let rest = r.rest().await;
    assert_eq!(rest.last().unwrap().event, "end");
    let raw = String::from_utf8(r.raw.clone()).unwrap();
    let comments = raw.matches("\n: keep-alive\n").count();
    assert!(
        (4..=7).contains(&comments),
        "{comments} keep-alives in 550 ms: {raw}"
    );
}

#[tokio::test]
async fn failures_and_cancels_end_the_stream_with_one_terminal_event() {
    let h = Harness::new(config(), FakeBackend::new(Behavior::Manual));
    let server = serve(h.controller.clone()).await;

    // A runtime error.
    h.fake.set_behavior(Behavior::Script(vec![
        Step::Event(Event::Text { text: "a".into() }),
        Step::Event(Event::Error(ErrorEvent {
            partial: true,
            ..ErrorEvent::new(ErrorKind::RateLimited, "slow down")
        })),
        Step::Exit(polydev_controller::backend::ExitInfo {
            code: Some(75),
            signal: None,
            detail: None,
            oom_killed: false,
        }),
    ]));
    let res = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job("u")),
    )
    .await;
    let events = SseReader::new(res).rest().await;
    let id = events[0].data["execution_id"].as_str().unwrap().to_owned();
    check_framing(&events, &id);
    let last = events.last().unwrap();
    assert_eq!(last.data["kind"], "rate_limited");
    assert_eq!(last.data["partial"], true);

    // A cancel while a client streams: the stream ends with `cancelled` and the usage.
    h.fake.set_behavior(Behavior::Manual);
    let res = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job("u")),
    )
    .await;
    let mut r = SseReader::new(res);
    let start = r.next().await.unwrap();
    let id = start.data["execution_id"].as_str().unwrap().to_owned();
    eventually("launched", || h.fake.is_running(&id)).await;
    h.fake
        .control(&id, Control::Event(Event::Text { text: "x".into() }));
    assert_eq!(r.next().await.unwrap().event, "text");
    let del = send(
        server.addr,
        Method::DELETE,
        &format!("/v1/executions/{id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(del.status(), 200);
    let rest = r.rest().await;
    let kinds: Vec<_> = rest.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["usage", "error"]);
    assert_eq!(rest[1].data["kind"], "cancelled");
    assert_eq!(rest[1].data["partial"], true);
    assert_eq!(rest[0].data["output_tokens"], 1);

    // A runtime that dies silently on cancel still ends the stream (synthesized).
    h.fake
        .set_on_cancel(polydev_controller::testing::OnCancel::Die);
    let res = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job("u")),
    )
    .await;
    let mut r = SseReader::new(res);
    let id = r.next().await.unwrap().data["execution_id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("launched", || h.fake.is_running(&id)).await;
    send(
        server.addr,
        Method::DELETE,
        &format!("/v1/executions/{id}"),
        &[],
        None,
    )
    .await;
    let rest = r.rest().await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].data["kind"], "cancelled");

    // A runtime that ignores the cancel: the controller ends it after the cancel wait.
    h.fake
        .set_on_cancel(polydev_controller::testing::OnCancel::Ignore);
    let res = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job("u")),
    )
    .await;
    let mut r = SseReader::new(res);
    let id = r.next().await.unwrap().data["execution_id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("launched", || h.fake.is_running(&id)).await;
    send(
        server.addr,
        Method::DELETE,
        &format!("/v1/executions/{id}"),
        &[],
        None,
    )
    .await;
    let rest = r.rest().await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].data["kind"], "cancelled");
}

#[tokio::test]
async fn garbage_lines_are_not_forwarded() {
    let h = Harness::new(
        config(),
        FakeBackend::new(Behavior::Script(vec![
            Step::Garbage("this is not json".into()),
            Step::Event(Event::Text { text: "ok".into() }),
        ])),
    );
    let server = serve(h.controller.clone()).await;
    let res = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job("u")),
    )
    .await;
    let events = SseReader::new(res).rest().await;
    let kinds: Vec<_> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["start", "text", "usage", "end"]);
}

#[tokio::test]
async fn the_event_log_is_bounded() {
    let cfg = ControllerConfig {
        max_event_log_bytes: 64 * 1024,
        ..config()
    };
    let big = "y".repeat(10_000);
    let steps = (0..20)
        .map(|_| Step::Event(Event::Text { text: big.clone() }))
        .collect();
    let h = Harness::new(cfg, FakeBackend::new(Behavior::Script(steps)));
    let server = serve(h.controller.clone()).await;
    let res = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job("u")),
    )
    .await;
    let events = SseReader::new(res).rest().await;
    let id = events[0].data["execution_id"].as_str().unwrap().to_owned();
    check_framing(&events, &id);
    let last = events.last().unwrap();
    assert_eq!(last.data["kind"], "protocol");
    assert!(last.data["message"].as_str().unwrap().contains("limit"));
    assert!(events.len() < 10);
    h.controller.wait_idle().await;
    assert_eq!(h.fake.live(), 0);
}

#[tokio::test]
async fn stream_count_is_bounded() {
    let cfg = ControllerConfig {
        max_streams: 1,
        ..config()
    };
    let h = Harness::new(cfg, FakeBackend::new(Behavior::Manual));
    let server = serve(h.controller.clone()).await;
    let id = submit(&h, "u").await;
    let first = send(
        server.addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[],
        None,
    )
    .await;
    let mut r = SseReader::new(first);
    r.next().await.unwrap();
    let second = send(
        server.addr,
        Method::GET,
        &format!("/v1/executions/{id}/events"),
        &[],
        None,
    )
    .await;
    assert_eq!(second.status(), 503);
    // A streaming POST is refused before anything is admitted.
    let post = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[SSE],
        Some(job("v")),
    )
    .await;
    assert_eq!(post.status(), 503);
    assert!(
        h.controller
            .metrics_text()
            .contains("polydev_executions_accepted_total 1\n")
    );
    drop(r);
    eventually("slot freed", || h.controller.stream_guard().is_some()).await;
}
