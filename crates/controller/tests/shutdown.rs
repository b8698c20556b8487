//! C5: graceful shutdown with running executions, a queued one and open streams. New work is
//! refused at once; executions that finish within the grace complete intact; the rest end
//! `interrupted`; every open stream receives its terminal event and closes; the backend is
//! shut down with nothing left running; every record is terminal; `run` returns in bounded time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use http::Method;
use polydev_controller::config::ControllerConfig;
use polydev_controller::testing::{Behavior, FakeBackend, OnCancel, Step};
use polydev_protocol::Event;
use support::*;

const SSE: (&str, &str) = ("accept", "text/event-stream");

fn cfg() -> ControllerConfig {
    ControllerConfig {
        max_concurrency: 5,
        queue_size: 2,
        shutdown_grace: Duration::from_millis(800),
        cancel_wait: Duration::from_millis(500),
        ..config()
    }
}

async fn open_stream(server: &Server) -> (String, SseReader) {
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
    (start.data["execution_id"].as_str().unwrap().to_owned(), r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_queued_and_streaming_all_end_cleanly() {
    let h = Harness::new(cfg(), FakeBackend::new(Behavior::Manual));
    let mut server = serve(h.controller.clone()).await;

    // Two that finish inside the grace.
    h.fake.set_behavior(Behavior::Script(vec![
        Step::Event(Event::Text {
            text: "quick".into(),
        }),
        Step::Sleep(Duration::from_millis(300)),
    ]));
    let mut quick = Vec::new();
    for _ in 0..2 {
        quick.push(open_stream(&server).await);
    }
    // (The fake reads its behaviour at launch.)
    eventually("quick ones launched", || h.fake.launched() == 2).await;
    // Three that never finish on their own.
    h.fake.set_behavior(Behavior::Manual);
    let mut stuck = Vec::new();
    for _ in 0..3 {
        stuck.push(open_stream(&server).await);
    }
    // One waiting in the queue.
    let queued = open_stream(&server).await;
    for (id, _) in &stuck {
        eventually("launched", || h.fake.is_running(id)).await;
    }

    let t0 = Instant::now();
    server.shutdown();
    eventually("shutting down", || h.controller.is_shutting_down()).await;
    // New work is refused at once, and health says so.
    let res = send(
        server.addr,
        Method::POST,
        "/v1/executions",
        &[],
        Some(job("u")),
    )
    .await;
    assert_eq!(res.status(), 503);
    let res = send(server.addr, Method::GET, "/healthz", &[], None).await;
    assert_eq!(res.status(), 503);

    // The queued one ends at once.
    let (qid, mut qr) = queued;
    let rest = qr.rest().await;
    assert_eq!(rest.last().unwrap().data["kind"], "interrupted", "{rest:?}");
    assert!(t0.elapsed() < Duration::from_millis(700));

    for (_, mut r) in quick {
        let rest = r.rest().await;
        assert_eq!(rest.last().unwrap().event, "end", "{rest:?}");
    }
    for (_, mut r) in stuck.drain(..) {
        let rest = r.rest().await;
        let last = rest.last().unwrap();
        assert_eq!(last.event, "error");
        assert_eq!(last.data["kind"], "interrupted");
        assert_eq!(last.data["retryable"], true);
    }
    let res = tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("run returns in bounded time")
        .unwrap();
    res.unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(800 + 500 + 2000), "{took:?}");
    assert!(h.fake.was_shut_down());
    assert_eq!(h.fake.live(), 0);

    // Every record is terminal, the queued one included.
    let conn = rusqlite::Connection::open(&h.db).unwrap();
    let open: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM executions WHERE status IN ('queued', 'running')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 0);
    let kind: String = conn
        .query_row(
            "SELECT error_kind FROM executions WHERE id = ?1",
            [&qid],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kind, "interrupted");
    let succeeded: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM executions WHERE status = 'succeeded'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(succeeded, 2);
    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn a_runtime_that_ignores_cancel_does_not_hold_shutdown() {
    let h = Harness::new(cfg(), FakeBackend::new(Behavior::Manual));
    h.fake.set_on_cancel(OnCancel::Ignore);
    let mut server = serve(h.controller.clone()).await;
    let (id, mut r) = open_stream(&server).await;
    eventually("launched", || h.fake.is_running(&id)).await;
    let t0 = Instant::now();
    server.shutdown();
    let rest = r.rest().await;
    assert_eq!(rest.last().unwrap().data["kind"], "interrupted");
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("bounded")
        .unwrap()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    // The backend's shutdown removed what the runtime would not end by itself.
    assert_eq!(h.fake.live(), 0);
}

#[tokio::test]
async fn idle_shutdown_is_immediate() {
    let h = Harness::new(cfg(), FakeBackend::new(Behavior::Manual));
    let mut server = serve(h.controller.clone()).await;
    let t0 = Instant::now();
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(3), &mut server.task)
        .await
        .expect("bounded")
        .unwrap()
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
}
