//! Helpers shared by the integration tests: a fake Nomad whose tasks run `/bin/sh -c
//! "${NOMAD_META_script}"`, so each dispatch chooses what its allocation does.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use polydev_nomad::fake::{FakeConfig, FakeNomad};
use polydev_nomad::types::Allocation;
use polydev_nomad::{DispatchRequest, NomadClient, QueryOptions};
use serde_json::{Value, json};

pub const JOB: &str = "testjob";
pub const TASK: &str = "t";

pub fn sh_config() -> FakeConfig {
    let mut cfg = FakeConfig::new("/bin/sh");
    cfg.heartbeat_interval = Duration::from_millis(100);
    cfg
}

pub async fn fake() -> FakeNomad {
    FakeNomad::start(sh_config()).await.unwrap()
}

pub fn client(fake: &FakeNomad) -> NomadClient {
    NomadClient::new(fake.client_config()).unwrap()
}

/// A parameterized batch job shaped like the runtime job, whose task runs the dispatch's
/// `script` meta with `/bin/sh -c`.
pub fn test_job(id: &str) -> Value {
    json!({"Job": {
        "ID": id,
        "Type": "batch",
        "Datacenters": ["*"],
        "ParameterizedJob": {
            "Payload": "forbidden",
            "MetaRequired": ["instance_id"],
            "MetaOptional": ["script"]
        },
        "TaskGroups": [{
            "Name": "g",
            "Count": 1,
            "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
            "ReschedulePolicy": {"Attempts": 0, "Unlimited": false},
            "Tasks": [{
                "Name": TASK,
                "Driver": "docker",
                "Config": {"image": "busybox:1.36", "args": ["-c", "${NOMAD_META_script}"]},
                "Env": {"TOKEN_FILE": "${NOMAD_SECRETS_DIR}/nomad_polydev.jwt"},
                "KillTimeout": 1_000_000_000u64,
                "Identities": [{
                    "Name": "polydev",
                    "Audience": ["polydev-controller"],
                    "File": true,
                    "TTL": 3_600_000_000_000u64
                }]
            }]
        }]
    }})
}

pub fn dispatch_req(token: &str, script: &str) -> DispatchRequest {
    DispatchRequest::new(token)
        .meta("instance_id", token)
        .meta("script", script)
}

/// Blocks (with Nomad blocking queries) until the job's allocations satisfy `pred`.
pub async fn wait_allocs(
    client: &NomadClient,
    job_id: &str,
    pred: impl Fn(&[Allocation]) -> bool,
) -> Vec<Allocation> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut index = 0;
    loop {
        let resp = client
            .job_allocations(
                job_id,
                &QueryOptions::blocking(index, Duration::from_secs(2)),
            )
            .await
            .unwrap();
        if pred(&resp.value) {
            return resp.value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "allocations of {job_id} never matched: {:#?}",
            resp.value
        );
        index = resp.index;
    }
}

pub fn all_terminal(allocs: &[Allocation]) -> bool {
    !allocs.is_empty() && allocs.iter().all(|a| a.status().is_terminal())
}

pub fn any_running(allocs: &[Allocation]) -> bool {
    allocs.iter().any(|a| a.client_status == "running")
}
