//! The Nomad client against the fake: register, dispatch (idempotent), evaluations,
//! allocations, blocking queries, the event stream, stop and purge, ACL tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    JOB, TASK, all_terminal, any_running, client, dispatch_req, fake, test_job, wait_allocs,
};
use polydev_nomad::fake::{FakeConfig, FakeNomad};
use polydev_nomad::types::ClientStatus;
use polydev_nomad::{EventStreamRequest, NomadClient, NomadConfig, NomadError, QueryOptions};

#[tokio::test]
async fn register_dispatch_and_follow_an_allocation_to_completion() {
    let fake = fake().await;
    let c = client(&fake);

    let reg = c.register_job(&test_job(JOB)).await.unwrap();
    assert!(
        reg.eval_id.is_empty(),
        "a parameterized parent gets no evaluation"
    );
    assert!(reg.job_modify_index > 0);
    let parent = c.read_job(JOB, &QueryOptions::default()).await.unwrap();
    assert_eq!(parent.value.status, "running");
    assert!(parent.value.parameterized_job.is_some());
    assert!(parent.index >= reg.job_modify_index);

    let d = c
        .dispatch_job(JOB, &dispatch_req("inst-1", "exit 0"))
        .await
        .unwrap();
    assert!(
        d.dispatched_job_id.starts_with("testjob/dispatch-"),
        "{}",
        d.dispatched_job_id
    );
    assert!(!d.eval_id.is_empty());

    // The evaluation completes (blocking query on the evaluation).
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
    assert_eq!(eval.job_id, d.dispatched_job_id);
    assert!(!eval.placement_failed());

    let allocs = wait_allocs(&c, &d.dispatched_job_id, all_terminal).await;
    assert_eq!(allocs.len(), 1);
    let alloc = c
        .read_allocation(&allocs[0].id, &QueryOptions::default())
        .await
        .unwrap()
        .value;
    assert_eq!(alloc.status(), ClientStatus::Complete);
    assert_eq!(alloc.exit_code(TASK), Some(0));
    assert!(alloc.failure_summary(TASK).is_none());
    assert!(
        alloc.job.is_some(),
        "GET /v1/allocation/:id includes the job"
    );
    let events: Vec<String> = alloc.task_states.as_ref().unwrap()[TASK]
        .events
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(events, ["Received", "Task Setup", "Started", "Terminated"]);
    let child = c
        .read_job(&d.dispatched_job_id, &QueryOptions::default())
        .await
        .unwrap()
        .value;
    assert_eq!(child.parent_id, JOB);
    assert!(child.dispatched);
    assert_eq!(child.status, "dead");
    assert_eq!(child.meta.unwrap()["instance_id"], "inst-1");
}

#[tokio::test]
async fn nonzero_exit_fails_the_allocation() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    let d = c
        .dispatch_job(JOB, &dispatch_req("i", "exit 3"))
        .await
        .unwrap();
    let allocs = wait_allocs(&c, &d.dispatched_job_id, all_terminal).await;
    assert_eq!(allocs[0].status(), ClientStatus::Failed);
    assert_eq!(allocs[0].exit_code(TASK), Some(3));
    assert_eq!(
        allocs[0].failure_summary(TASK).unwrap(),
        "task exited with code 3 (signal 0)"
    );
}

#[tokio::test]
async fn dispatch_is_idempotent_per_token() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    let a = c
        .dispatch_job(JOB, &dispatch_req("tok-a", "exit 0"))
        .await
        .unwrap();
    let again = c
        .dispatch_job(JOB, &dispatch_req("tok-a", "exit 0"))
        .await
        .unwrap();
    assert_eq!(a.dispatched_job_id, again.dispatched_job_id);
    assert!(
        again.eval_id.is_empty(),
        "no new evaluation for a repeated token"
    );
    let b = c
        .dispatch_job(JOB, &dispatch_req("tok-b", "exit 0"))
        .await
        .unwrap();
    assert_ne!(a.dispatched_job_id, b.dispatched_job_id);
    let children = fake.jobs().into_iter().filter(|j| j.dispatched).count();
    assert_eq!(children, 2);

    // The token dedups only while the child exists: after a purge it dispatches anew.
    wait_allocs(&c, &a.dispatched_job_id, all_terminal).await;
    c.stop_job(&a.dispatched_job_id, true).await.unwrap();
    let fresh = c
        .dispatch_job(JOB, &dispatch_req("tok-a", "exit 0"))
        .await
        .unwrap();
    assert_ne!(fresh.dispatched_job_id, a.dispatched_job_id);

    // Dispatch without a token is refused client-side.
    let err = c
        .dispatch_job(JOB, &polydev_nomad::DispatchRequest::new(""))
        .await
        .unwrap_err();
    assert!(matches!(err, NomadError::Config(_)), "{err}");
}

#[tokio::test]
async fn dispatch_validation_errors_are_reported() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    let err = c
        .dispatch_job(
            JOB,
            &polydev_nomad::DispatchRequest::new("x").meta("prompt", "secret"),
        )
        .await
        .unwrap_err();
    match err {
        NomadError::Api {
            status, message, ..
        } => {
            assert_eq!(status, 500, "Nomad reports Job.Dispatch errors as 500");
            assert!(message.contains("unpermitted metadata keys"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let err = c
        .dispatch_job("no-such-job", &dispatch_req("x", "exit 0"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("parameterized job not found"),
        "{err}"
    );
}

#[tokio::test]
async fn blocking_query_wakes_on_change_and_times_out_without_one() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    let d = c
        .dispatch_job(JOB, &dispatch_req("i", "exec /bin/sleep 30"))
        .await
        .unwrap();
    let running = wait_allocs(&c, &d.dispatched_job_id, any_running).await;
    let first = c
        .read_allocation(&running[0].id, &QueryOptions::default())
        .await
        .unwrap();

    // Nothing changes: the query returns after `wait` with the same index.
    let t = Instant::now();
    let same = c
        .read_allocation(
            &running[0].id,
            &QueryOptions::blocking(first.index, Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert_eq!(same.index, first.index);
    assert!(
        t.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t.elapsed()
    );

    // A change (stopping the job) wakes a long query at once.
    let c2 = c.clone();
    let id = running[0].id.clone();
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let r = c2
            .read_allocation(
                &id,
                &QueryOptions::blocking(first.index, Duration::from_secs(30)),
            )
            .await
            .unwrap();
        (r, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.stop_job(&d.dispatched_job_id, false).await.unwrap();
    let (r, took) = waiter.await.unwrap();
    assert!(r.index > first.index);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn event_stream_delivers_allocation_events_and_heartbeats() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    let mut stream = c
        .event_stream(&EventStreamRequest {
            topics: vec![
                ("Allocation".into(), "*".into()),
                ("Evaluation".into(), "*".into()),
            ],
            idle_timeout: Some(Duration::from_secs(5)),
            ..EventStreamRequest::default()
        })
        .await
        .unwrap();
    let d = c
        .dispatch_job(JOB, &dispatch_req("i", "exit 0"))
        .await
        .unwrap();
    let mut types = Vec::new();
    let mut first_index = 0;
    let done = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), stream.next_frame())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream stays open");
        if first_index == 0 {
            first_index = frame.index;
        }
        let mut finished = None;
        for e in &frame.events {
            assert!(
                e.topic == "Allocation" || e.topic == "Evaluation",
                "{}",
                e.topic
            );
            assert_eq!(e.index, frame.index);
            if let Some(a) = e.allocation() {
                assert_eq!(a.job_id, d.dispatched_job_id);
                assert!(a.job.is_none(), "allocation events carry no job");
                assert_eq!(e.key, a.id);
                assert!(e.filter_keys.as_ref().unwrap().contains(&a.job_id));
                types.push(e.event_type.clone());
                if a.status().is_terminal() {
                    finished = Some(a);
                }
            }
        }
        if let Some(a) = finished {
            break a;
        }
    };
    assert_eq!(done.status(), ClientStatus::Complete);
    assert_eq!(types.first().map(String::as_str), Some("PlanResult"));
    assert!(types.iter().any(|t| t == "AllocationUpdated"));

    // Idle: heartbeats `{}` keep the stream alive and are skipped.
    let before = stream.heartbeats();
    let idle = tokio::time::timeout(Duration::from_millis(400), stream.next_frame()).await;
    assert!(idle.is_err(), "no events while idle");
    assert!(stream.heartbeats() > before);

    // A subscriber filtered on one job, resuming from an index, replays the backlog.
    let mut replay = c
        .event_stream(&EventStreamRequest {
            topics: vec![("Allocation".into(), d.dispatched_job_id.clone())],
            index: Some(first_index),
            ..EventStreamRequest::default()
        })
        .await
        .unwrap();
    let frame = replay.next_frame().await.unwrap().unwrap();
    // Nomad sends one `{}` on connect, before anything else (nomad/stream/ndjson.go:38-50).
    assert_eq!(replay.heartbeats(), 1);
    assert!(frame.index >= first_index);
    assert!(
        frame
            .events
            .iter()
            .all(|e| e.topic == "Allocation"
                && e.allocation().unwrap().job_id == d.dispatched_job_id)
    );
}

#[tokio::test]
async fn stop_kills_the_task_and_purge_removes_the_job() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    let d = c
        .dispatch_job(JOB, &dispatch_req("i", "exec /bin/sleep 30"))
        .await
        .unwrap();
    wait_allocs(&c, &d.dispatched_job_id, any_running).await;
    assert_eq!(fake.running_processes(), 1);

    let t = Instant::now();
    let stopped = c.stop_job(&d.dispatched_job_id, false).await.unwrap();
    assert!(!stopped.eval_id.is_empty());
    let allocs = wait_allocs(&c, &d.dispatched_job_id, all_terminal).await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "SIGTERM stops sleep at once"
    );
    assert_eq!(allocs[0].desired_status, "stop");
    assert_eq!(allocs[0].status(), ClientStatus::Complete);
    let events: Vec<String> = allocs[0].task_states.as_ref().unwrap()[TASK]
        .events
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert!(
        events.ends_with(&["Killing".into(), "Terminated".into(), "Killed".into()]),
        "{events:?}"
    );
    assert_eq!(fake.running_processes(), 0);
    let job = c
        .read_job(&d.dispatched_job_id, &QueryOptions::default())
        .await
        .unwrap()
        .value;
    assert!(job.stop);
    assert_eq!(job.status, "dead");

    c.stop_job(&d.dispatched_job_id, true).await.unwrap();
    let err = c
        .read_job(&d.dispatched_job_id, &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let left = c
        .job_allocations(&d.dispatched_job_id, &QueryOptions::default())
        .await
        .unwrap();
    assert!(left.value.is_empty());

    // Stopping what is not there succeeds (idempotent).
    let none = c.stop_job("never-existed", true).await.unwrap();
    assert!(none.eval_id.is_empty());
    // The parent survives its children.
    assert!(c.read_job(JOB, &QueryOptions::default()).await.is_ok());
}

#[tokio::test]
async fn stop_with_purge_of_a_running_job_leaves_nothing() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    let d = c
        .dispatch_job(JOB, &dispatch_req("i", "exec /bin/sleep 30"))
        .await
        .unwrap();
    wait_allocs(&c, &d.dispatched_job_id, any_running).await;
    c.stop_job(&d.dispatched_job_id, true).await.unwrap();
    let gone = fake
        .wait_for_allocs(&d.dispatched_job_id, Duration::from_secs(5), |a| {
            a.is_empty()
        })
        .await;
    assert!(
        gone.is_some(),
        "the purged job's allocation is collected once it stops"
    );
    assert_eq!(fake.running_processes(), 0);
}

/// `GET /v1/jobs?prefix=`: the stubs of the namespace's jobs whose ID has the prefix, in ID
/// order, with `ParentID`; a stopped child is still listed (`Stop`), a purged one is not; another
/// namespace's jobs are not seen.
#[tokio::test]
async fn listing_jobs_by_prefix_finds_a_parents_dispatched_children() {
    let fake = fake().await;
    let c = client(&fake);
    c.register_job(&test_job(JOB)).await.unwrap();
    // Shares the prefix `testjob` but not `testjob/dispatch-`.
    c.register_job(&test_job("testjob-other")).await.unwrap();
    let mut children = Vec::new();
    for token in ["a", "b"] {
        let d = c
            .dispatch_job(JOB, &dispatch_req(token, "exit 0"))
            .await
            .unwrap();
        children.push(d.dispatched_job_id);
    }
    let other = c
        .dispatch_job("testjob-other", &dispatch_req("c", "exit 0"))
        .await
        .unwrap();
    let mut ns_cfg = fake.client_config();
    ns_cfg.namespace = Some("polydev".into());
    let in_ns = NomadClient::new(ns_cfg).unwrap();
    let mut job = test_job(JOB);
    job["Job"]["Namespace"] = "polydev".into();
    in_ns.register_job(&job).await.unwrap();
    let ns_child = in_ns
        .dispatch_job(JOB, &dispatch_req("d", "exit 0"))
        .await
        .unwrap()
        .dispatched_job_id;

    let prefix = format!("{JOB}/dispatch-");
    let listed = c
        .list_jobs(&prefix, &QueryOptions::default())
        .await
        .unwrap();
    assert!(listed.index > 0);
    let ids: Vec<&str> = listed.value.iter().map(|j| j.id.as_str()).collect();
    let mut want: Vec<&str> = children.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    for j in &listed.value {
        assert_eq!(j.parent_id, JOB);
        assert_eq!(j.namespace, "default");
        assert_eq!(j.job_type, "batch");
        assert!(!j.stop);
        assert!(j.create_index > 0 && j.modify_index >= j.create_index);
    }
    // No prefix: every job of the namespace, parents (no ParentID) included.
    let all = c.list_jobs("", &QueryOptions::default()).await.unwrap();
    let all: Vec<(&str, &str)> = all
        .value
        .iter()
        .map(|j| (j.id.as_str(), j.parent_id.as_str()))
        .collect();
    assert!(all.contains(&(JOB, "")), "{all:?}");
    assert!(all.contains(&(other.dispatched_job_id.as_str(), "testjob-other")));
    assert!(!all.iter().any(|(id, _)| *id == ns_child), "{all:?}");
    assert_eq!(all.len(), 5, "{all:?}");
    // The other namespace sees only its own.
    let theirs = in_ns
        .list_jobs(&prefix, &QueryOptions::default())
        .await
        .unwrap();
    let theirs: Vec<&str> = theirs.value.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(theirs, [ns_child.as_str()]);

    c.stop_job(&children[0], false).await.unwrap();
    c.stop_job(&children[1], true).await.unwrap();
    let after = c
        .list_jobs(&prefix, &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(after.value.len(), 1, "{:?}", after.value);
    assert_eq!(after.value[0].id, children[0]);
    assert!(after.value[0].stop);
    assert!(after.index > listed.index);
}

#[tokio::test]
async fn acl_token_is_required_and_never_needed_for_jwks() {
    let mut cfg: FakeConfig = common::sh_config();
    cfg.acl_token = Some("s3cr3t-acl".into());
    let fake = FakeNomad::start(cfg).await.unwrap();

    let anonymous = NomadClient::new(NomadConfig::new(fake.address())).unwrap();
    let err = anonymous
        .job_allocations(JOB, &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_permission_denied(), "{err}");
    assert!(!err.is_transient());
    let err = anonymous
        .list_jobs("", &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_permission_denied(), "{err}");
    assert!(!anonymous.jwks().await.unwrap().keys.is_empty());

    let wrong = NomadClient::new(NomadConfig::new(fake.address()).with_token("nope")).unwrap();
    let err = wrong.register_job(&test_job(JOB)).await.unwrap_err();
    assert!(err.to_string().contains("ACL token not found"), "{err}");
    assert!(!err.to_string().contains("nope"));

    let good = client(&fake);
    good.register_job(&test_job(JOB)).await.unwrap();
    assert!(!format!("{good:?}").contains("s3cr3t-acl"));
}

#[tokio::test]
async fn namespace_from_the_config_scopes_every_call() {
    let fake = fake().await;
    let mut cfg = fake.client_config();
    cfg.namespace = Some("polydev".into());
    let c = NomadClient::new(cfg).unwrap();
    let mut job = test_job(JOB);
    job["Job"]["Namespace"] = "polydev".into();
    c.register_job(&job).await.unwrap();
    let d = c
        .dispatch_job(JOB, &dispatch_req("i", "exit 0"))
        .await
        .unwrap();
    let allocs = wait_allocs(&c, &d.dispatched_job_id, all_terminal).await;
    assert_eq!(allocs[0].namespace, "polydev");
    // The default namespace does not see it.
    let other = client(&fake);
    assert!(
        other
            .read_job(JOB, &QueryOptions::default())
            .await
            .unwrap_err()
            .is_not_found()
    );
}
