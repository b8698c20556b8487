//! Failure injection: API 500s and retries, timeouts, a lost dispatch response, allocations
//! that fail to start, placements that fail, allocations lost mid-run, an unreachable Nomad.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    JOB, TASK, all_terminal, any_running, client, dispatch_req, fake, test_job, wait_allocs,
};
use polydev_nomad::types::ClientStatus;
use polydev_nomad::{NomadClient, NomadConfig, NomadError, QueryOptions};

#[tokio::test]
async fn idempotent_calls_retry_500s_a_bounded_number_of_times() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();

    let before = fake.request_count();
    fake.fail_next_requests(2, 500);
    let ok = c.read_job(JOB, &QueryOptions::default()).await.unwrap();
    assert_eq!(ok.value.id, JOB);
    assert_eq!(
        fake.request_count() - before,
        3,
        "two failures, then success"
    );

    let before = fake.request_count();
    fake.fail_next_requests(10, 503);
    let err = c
        .job_allocations(JOB, &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, NomadError::Api { status: 503, .. }), "{err}");
    assert!(err.is_transient());
    assert_eq!(
        fake.request_count() - before,
        u64::from(c.config().retry.max_attempts)
    );
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let fake = fake().await;
    let c = client(&fake);
    let before = fake.request_count();
    let err = c
        .register_job(&serde_json::json!({"Job": {"Type": "batch"}}))
        .await
        .unwrap_err();
    match &err {
        NomadError::Api {
            status, message, ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(message, "Job ID hasn't been provided");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.request_count() - before, 1);
    let err = c
        .read_job("missing", &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_not_found() && !err.is_transient());
}

#[tokio::test]
async fn slow_responses_surface_as_typed_timeouts() {
    let fake = fake().await;
    let mut cfg = fake.client_config();
    cfg.request_timeout = Duration::from_millis(200);
    cfg.retry.max_attempts = 1;
    let c = NomadClient::new(cfg.clone()).unwrap();
    fake.delay_requests("/v1/job/", 1, Duration::from_secs(2));
    let err = c
        .job_allocations(JOB, &QueryOptions::default())
        .await
        .unwrap_err();
    match &err {
        NomadError::Timeout { after, .. } => assert_eq!(*after, Duration::from_millis(200)),
        other => panic!("{other:?}"),
    }
    assert!(err.is_transient());

    // With retries, one slow answer is absorbed.
    cfg.retry.max_attempts = 3;
    let c = NomadClient::new(cfg).unwrap();
    fake.delay_requests("/v1/job/", 1, Duration::from_secs(2));
    assert!(
        c.job_allocations(JOB, &QueryOptions::default())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_lost_dispatch_response_does_not_start_a_second_instance() {
    let fake = fake().await;
    let mut cfg = fake.client_config();
    cfg.request_timeout = Duration::from_millis(300);
    let c = NomadClient::new(cfg).unwrap();
    c.register_job(&test_job(JOB)).await.unwrap();

    // Nomad dispatches, but the answer arrives after the client gave up: the retry carries
    // the same idempotency token and gets the same child back.
    fake.delay_responses("/dispatch", 1, Duration::from_secs(2));
    let d = c
        .dispatch_job(JOB, &dispatch_req("exec-42", "exit 0"))
        .await
        .unwrap();
    let children: Vec<_> = fake.jobs().into_iter().filter(|j| j.dispatched).collect();
    assert_eq!(children.len(), 1, "{children:#?}");
    assert_eq!(children[0].id, d.dispatched_job_id);
    wait_allocs(&c, &d.dispatched_job_id, all_terminal).await;
    assert_eq!(
        fake.allocations()
            .iter()
            .filter(|a| a.job_id == d.dispatched_job_id)
            .count(),
        1
    );
}

#[tokio::test]
async fn an_allocation_that_fails_to_start_is_failed_with_the_driver_error() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    fake.fail_next_allocations(1, "Failed to pull `polydev-runtime:0.1.0`: not found");
    let d = c
        .dispatch_job(JOB, &dispatch_req("i", "exit 0"))
        .await
        .unwrap();
    let allocs = wait_allocs(&c, &d.dispatched_job_id, all_terminal).await;
    let a = &allocs[0];
    assert_eq!(a.status(), ClientStatus::Failed);
    assert_eq!(a.exit_code(TASK), None);
    assert_eq!(
        a.failure_summary(TASK).unwrap(),
        "Driver Failure: Failed to pull `polydev-runtime:0.1.0`: not found"
    );
    let state = &a.task_states.as_ref().unwrap()[TASK];
    assert!(state.failed);
    assert_eq!(state.state, "dead");
    assert_eq!(fake.running_processes(), 0);
}

#[tokio::test]
async fn a_missing_runtime_binary_is_a_driver_failure() {
    let mut cfg = common::sh_config();
    cfg.runtime_binary = "/nonexistent/polydev-runtime".into();
    let fake = polydev_nomad::fake::FakeNomad::start(cfg).await.unwrap();
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    let d = c
        .dispatch_job(JOB, &dispatch_req("i", "exit 0"))
        .await
        .unwrap();
    let allocs = wait_allocs(&c, &d.dispatched_job_id, all_terminal).await;
    let summary = allocs[0].failure_summary(TASK).unwrap();
    assert!(
        summary.starts_with("Driver Failure: failed to start task"),
        "{summary}"
    );
}

#[tokio::test]
async fn a_failed_placement_leaves_a_blocked_evaluation_and_no_allocation() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    fake.fail_next_placements(1);
    let d = c
        .dispatch_job(JOB, &dispatch_req("i", "exit 0"))
        .await
        .unwrap();
    let mut index = 0;
    let eval = loop {
        let e = c
            .read_evaluation(
                &d.eval_id,
                &QueryOptions::blocking(index, Duration::from_secs(2)),
            )
            .await
            .unwrap();
        if e.value.status == "complete" {
            break e.value;
        }
        index = e.index;
    };
    assert!(eval.placement_failed());
    assert!(eval.failed_tg_allocs.as_ref().unwrap().contains_key("g"));
    assert!(!eval.blocked_eval.is_empty());
    let blocked = c
        .read_evaluation(&eval.blocked_eval, &QueryOptions::default())
        .await
        .unwrap()
        .value;
    assert_eq!(blocked.status, "blocked");
    assert_eq!(blocked.previous_eval, eval.id);
    let allocs = c
        .job_allocations(&d.dispatched_job_id, &QueryOptions::default())
        .await
        .unwrap();
    assert!(allocs.value.is_empty());
}

#[tokio::test]
async fn a_lost_allocation_is_replaced_as_nomad_does() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    let d = c
        .dispatch_job(JOB, &dispatch_req("i", "exec /bin/sleep 30"))
        .await
        .unwrap();
    let running = wait_allocs(&c, &d.dispatched_job_id, any_running).await;
    let original = running[0].id.clone();
    assert!(fake.lose_allocation(&original));
    // Reschedule attempts 0 or not, Nomad places a replacement of a lost allocation.
    let allocs = wait_allocs(&c, &d.dispatched_job_id, |a| a.len() == 2 && any_running(a)).await;
    let lost = allocs.iter().find(|a| a.id == original).unwrap();
    assert_eq!(lost.status(), ClientStatus::Lost);
    assert_eq!(lost.desired_status, "stop");
    assert_eq!(
        lost.desired_description,
        "alloc is lost since its node is down"
    );
    assert_eq!(
        lost.client_description, "",
        "Nomad leaves the client's description"
    );
    assert_eq!(
        lost.failure_summary(TASK).unwrap(),
        "allocation lost: alloc is lost since its node is down"
    );
    let replacement = allocs.iter().find(|a| a.id != original).unwrap();
    assert_eq!(replacement.previous_allocation, original);
    assert_eq!(replacement.desired_status, "run");
    assert!(!fake.lose_allocation(&original), "already terminal");
    // Stopping the job stops the replacement; nothing replaces a stopped job's allocation.
    c.stop_job(&d.dispatched_job_id, false).await.unwrap();
    let allocs = wait_allocs(&c, &d.dispatched_job_id, all_terminal).await;
    assert_eq!(allocs.len(), 2);
    assert_eq!(fake.running_processes(), 0);
}

#[tokio::test]
async fn validation_errors_are_nomads_500_and_not_retried() {
    let fake = fake().await;
    let c = client(&fake);
    let mut job = test_job(JOB);
    job["Job"]["TaskGroups"][0]["EphemeralDisk"] = serde_json::json!({"SizeMB": 10});
    job["Job"]["TaskGroups"][0]["Tasks"][0]["LogConfig"] = serde_json::json!({"Disabled": true});
    let before = fake.request_count();
    let err = c.register_job(&job).await.unwrap_err();
    assert!(matches!(err, NomadError::Api { status: 500, .. }), "{err}");
    assert!(err.is_validation(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("Task {TASK} validation failed"))
            && err
                .to_string()
                .contains("log storage (100 MB) must be less than requested disk capacity (10 MB)"),
        "{err}"
    );
    assert_eq!(
        fake.request_count() - before,
        1,
        "a validation error is not retried"
    );
    // An injected 500 without Nomad's validation text is still retried.
    let before = fake.request_count();
    fake.fail_next_requests(1, 500);
    c.register_job(&test_job(JOB)).await.unwrap();
    assert_eq!(fake.request_count() - before, 2);
    // Dispatch validation errors are not retried either.
    let before = fake.request_count();
    let err = c
        .dispatch_job(JOB, &polydev_nomad::DispatchRequest::new("tok"))
        .await
        .unwrap_err();
    assert!(err.is_validation(), "{err}");
    assert_eq!(fake.request_count() - before, 1);
}

#[tokio::test]
async fn an_unreachable_nomad_is_a_typed_connect_error() {
    // Bind then drop a listener to get a loopback port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = NomadConfig::new(format!("http://127.0.0.1:{port}"));
    cfg.retry.initial_backoff = Duration::from_millis(5);
    let c = NomadClient::new(cfg).unwrap();
    let err = c.jwks().await.unwrap_err();
    assert!(matches!(err, NomadError::Connect { .. }), "{err}");
    assert!(err.is_transient());
}
