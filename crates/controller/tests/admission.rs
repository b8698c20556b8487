//! C4: admission at 10x capacity. The excess is refused at once with `429` and `Retry-After`,
//! the queue never exceeds its bound, running never exceeds the limit, and every admitted
//! execution ends exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use polydev_controller::config::ControllerConfig;
use polydev_controller::testing::FakeBackend;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_capacity_in_one_burst() {
    const LIMIT: usize = 4;
    const QUEUE: usize = 4;
    const SUBMISSIONS: usize = 10 * (LIMIT + QUEUE);
    let cfg = ControllerConfig {
        max_concurrency: LIMIT,
        queue_size: QUEUE,
        ..config()
    };
    let h = Arc::new(Harness::new(
        cfg,
        FakeBackend::streaming(5, Duration::from_millis(20)),
    ));

    // Watch the scheduler's bounds while the burst runs.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (h, stop) = (Arc::clone(&h), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut max_queue = 0;
            while !stop.load(Ordering::SeqCst) {
                let load = h.controller.load();
                assert!(load.running <= LIMIT, "{load:?}");
                assert!(load.queued <= QUEUE, "{load:?}");
                max_queue = max_queue.max(load.queued);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            max_queue
        })
    };

    let mut tasks = Vec::new();
    for i in 0..SUBMISSIONS {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = h
                .call(req(
                    Method::POST,
                    "/v1/executions",
                    Some(job(&format!("user{i}"))),
                ))
                .await;
            (r, started.elapsed())
        }));
    }
    let mut accepted = Vec::new();
    let mut reject_latency = Vec::new();
    for t in tasks {
        let (r, took) = t.await.unwrap();
        match r.status {
            StatusCode::ACCEPTED => accepted.push(r.json()["id"].as_str().unwrap().to_owned()),
            StatusCode::TOO_MANY_REQUESTS => {
                r.assert_error(StatusCode::TOO_MANY_REQUESTS, "at_capacity");
                assert_eq!(r.headers["retry-after"], "1");
                reject_latency.push(took);
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    // Only what fits was admitted (a few more if executions ended during the burst).
    assert!(accepted.len() >= LIMIT + QUEUE, "{}", accepted.len());
    assert!(accepted.len() < SUBMISSIONS / 2, "{}", accepted.len());
    reject_latency.sort();
    let p99 = reject_latency[reject_latency.len() * 99 / 100];
    eprintln!(
        "admitted {} of {SUBMISSIONS}; reject latency p50 {:?} p99 {:?}",
        accepted.len(),
        reject_latency[reject_latency.len() / 2],
        p99
    );
    // Generous for an unoptimized build on a shared machine; the point is "no waiting".
    assert!(p99 < Duration::from_millis(250), "reject p99 {p99:?}");

    for id in &accepted {
        let v = wait_terminal(&h, id).await;
        assert_eq!(v["status"], "succeeded", "{v}");
    }
    h.controller.wait_idle().await;
    stop.store(true, Ordering::SeqCst);
    let max_queue = watcher.await.unwrap();
    assert!(max_queue <= QUEUE);
    assert!(h.fake.peak_live() <= LIMIT, "peak {}", h.fake.peak_live());
    assert!(h.controller.load().peak_running <= LIMIT);
    assert_eq!(h.controller.ended_total(), accepted.len() as u64);
    assert_eq!(h.fake.live(), 0);
}
