//! The fake really runs `polydev-runtime` (build it first: `cargo build -p polydev-runtime`)
//! from the job `runtime_job` builds: the runtime starts in controller-pull mode, reads its
//! workload-identity token from the secrets directory, and polls a stub controller that
//! verifies that token against the fake's JWKS, exactly as the controller will.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use polydev_nomad::fake::{FakeConfig, FakeNomad};
use polydev_nomad::spec::{META_INSTANCE_ID, TASK_NAME};
use polydev_nomad::types::ClientStatus;
use polydev_nomad::{
    DispatchRequest, NomadClient, QueryOptions, RuntimeJobConfig, VerifyOptions, WorkloadClaims,
    WorkloadIdentityVerifier, runtime_job,
};

fn runtime_bin() -> PathBuf {
    let bin = polydev_test_support::workspace_bin("polydev-runtime");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p polydev-runtime` before these tests",
        bin.display()
    );
    bin
}

/// A stand-in for the controller's `GET /runtime/v1/next`.
struct Stub {
    verifier: WorkloadIdentityVerifier,
    seen: Mutex<Vec<WorkloadClaims>>,
    rejected: Mutex<Vec<String>>,
    /// Answer 410 ("no job will come, exit") instead of holding and answering 204.
    gone: AtomicBool,
}

async fn next(State(stub): State<Arc<Stub>>, headers: HeaderMap) -> StatusCode {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match stub.verifier.verify(token).await {
        Ok(claims) => stub.seen.lock().unwrap().push(claims),
        Err(e) => {
            stub.rejected.lock().unwrap().push(e.to_string());
            return StatusCode::UNAUTHORIZED;
        }
    }
    if stub.gone.load(Ordering::SeqCst) {
        StatusCode::GONE
    } else {
        // A short long-poll, then "nothing yet".
        tokio::time::sleep(Duration::from_millis(100)).await;
        StatusCode::NO_CONTENT
    }
}

async fn start_stub(fake: &FakeNomad, gone: bool) -> (Arc<Stub>, String) {
    let client = Arc::new(NomadClient::new(fake.client_config()).unwrap());
    let stub = Arc::new(Stub {
        verifier: WorkloadIdentityVerifier::new(
            client,
            VerifyOptions {
                audience: Some("polydev-controller".into()),
                ..VerifyOptions::default()
            },
        ),
        seen: Mutex::new(Vec::new()),
        rejected: Mutex::new(Vec::new()),
        gone: AtomicBool::new(gone),
    });
    let app = axum::Router::new()
        .route("/runtime/v1/next", axum::routing::get(next))
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (stub, url)
}

async fn fake_with_runtime() -> FakeNomad {
    FakeNomad::start(FakeConfig::new(runtime_bin()))
        .await
        .unwrap()
}

async fn register_and_dispatch(fake: &FakeNomad, controller_url: &str) -> (NomadClient, String) {
    let c = NomadClient::new(fake.client_config()).unwrap();
    let cfg = RuntimeJobConfig::new(controller_url);
    c.register_job(&runtime_job(&cfg).unwrap()).await.unwrap();
    let d = c
        .dispatch_job(
            &cfg.job_id,
            &DispatchRequest::new("instance-1").meta(META_INSTANCE_ID, "instance-1"),
        )
        .await
        .unwrap();
    (c, d.dispatched_job_id)
}

#[tokio::test]
async fn a_dispatched_runtime_authenticates_with_its_identity_and_completes() {
    let fake = fake_with_runtime().await;
    let (stub, url) = start_stub(&fake, true).await;
    let (c, child) = register_and_dispatch(&fake, &url).await;

    let allocs = fake
        .wait_for_allocs(&child, Duration::from_secs(20), |a| {
            !a.is_empty() && a.iter().all(|a| a.status().is_terminal())
        })
        .await
        .expect("the allocation finishes");
    let alloc = &allocs[0];
    let stderr = fake.task_stderr(&alloc.id);
    assert_eq!(alloc.status(), ClientStatus::Complete, "stderr: {stderr}");
    assert_eq!(alloc.exit_code(TASK_NAME), Some(0), "stderr: {stderr}");

    assert!(stub.rejected.lock().unwrap().is_empty());
    let seen = stub.seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty(),
        "the runtime polled the controller; stderr: {stderr}"
    );
    for claims in &seen {
        assert_eq!(claims.allocation_id, alloc.id);
        assert_eq!(claims.job_id, "polydev-runtime", "the parent job's ID");
        assert_eq!(claims.task.as_deref(), Some(TASK_NAME));
        assert_eq!(claims.audience, ["polydev-controller"]);
    }

    let job = c.read_job(&child, &QueryOptions::default()).await.unwrap();
    assert_eq!(job.value.status, "dead");
    c.stop_job(&child, true).await.unwrap();
    assert_eq!(fake.running_processes(), 0);
}

#[tokio::test]
async fn a_waiting_runtime_picks_up_a_rotated_token_and_stops_cleanly() {
    let fake = fake_with_runtime().await;
    let (stub, url) = start_stub(&fake, false).await;
    let (c, child) = register_and_dispatch(&fake, &url).await;

    // Running and polling.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stub.seen.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no poll arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = stub.seen.lock().unwrap()[0].clone();

    // Nomad renews the identity: the runtime re-reads the file on its next request.
    assert_eq!(fake.rotate_identities(), 1);
    loop {
        let rotated = stub
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.token_id != first.token_id);
        if rotated {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated token never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stub.rejected.lock().unwrap().is_empty());

    // Stop + purge: SIGTERM, the waiting runtime exits 0, nothing is left.
    c.stop_job(&child, true).await.unwrap();
    let gone = fake
        .wait_for_allocs(&child, Duration::from_secs(10), |a| a.is_empty())
        .await;
    assert!(gone.is_some(), "the allocation stopped and was collected");
    assert_eq!(fake.running_processes(), 0);
    assert!(
        c.read_job(&child, &QueryOptions::default())
            .await
            .unwrap_err()
            .is_not_found()
    );
}
