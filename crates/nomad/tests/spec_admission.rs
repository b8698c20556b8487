//! The job `runtime_job` builds (what `polydev-controller nomad-spec` prints and the backend
//! registers) against Nomad's admission rules as the fake reproduces them
//! (`polydev_nomad::fake::check_job`, src/fake/admission.rs, each rule with its Nomad source):
//! it passes them all, with only the memory-oversubscription warning; the job as it was before
//! issue 10 (a 10 MB disk with `LogConfig {Disabled: true}` only) is refused with Nomad's text,
//! by the rule check and by a running fake's `PUT /v1/jobs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use polydev_nomad::fake::{FakeConfig, FakeNomad, check_job};
use polydev_nomad::{NomadClient, NomadError, RuntimeJobConfig, runtime_job};
use serde_json::{Value, json};

/// Nomad's text for the old job, as the HTTP body carries it: go-multierror lists nested by
/// `Job.Validate` → `TaskGroup.Validate` → `Task.Validate` (which keeps `LogConfig.Validate`'s
/// own list as one item) → `LogConfig.Validate`.
const OLD_SPEC_ERROR: &str = "1 error occurred:\n\t* Task group runtime validation failed: \
    1 error occurred:\n\t* Task runtime validation failed: 1 error occurred:\n\t* 1 error \
    occurred:\n\t* log storage (100 MB) must be less than requested disk capacity (10 MB)\n\n\
    \n\n\n\n\n\n";

const OVERSUBSCRIPTION_WARNING: &str = "Memory oversubscription is not enabled; Task \
    \"runtime.runtime\" memory_max value will be ignored. Update the Scheduler Configuration to \
    allow oversubscription.";

fn current() -> Value {
    runtime_job(&RuntimeJobConfig::new("https://controller.example:8443")).unwrap()
}

/// The job as the builder made it before issue 10.
fn old_spec() -> Value {
    let mut job = current();
    job["Job"]["TaskGroups"][0]["Tasks"][0]["LogConfig"] = json!({"Disabled": true});
    assert_eq!(job["Job"]["TaskGroups"][0]["EphemeralDisk"]["SizeMB"], 10);
    job
}

#[test]
fn the_runtime_job_passes_every_rule_with_only_the_memory_warning() {
    assert_eq!(
        check_job(&current()).unwrap(),
        vec![OVERSUBSCRIPTION_WARNING.to_owned()]
    );
    // Every optional setting too.
    let mut cfg = RuntimeJobConfig::new("https://controller.example:8443");
    cfg.namespace = Some("polydev".into());
    cfg.node_pool = Some("llm".into());
    cfg.network_mode = Some("bridge".into());
    cfg.docker_runtime = Some("runsc".into());
    cfg.memory_mb = 64;
    cfg.memory_max_mb = 65;
    assert!(check_job(&runtime_job(&cfg).unwrap()).is_ok());
}

#[test]
fn the_old_job_is_refused_with_nomads_message() {
    assert_eq!(check_job(&old_spec()).unwrap_err(), OLD_SPEC_ERROR);
}

#[tokio::test]
async fn registering_the_old_job_gets_nomads_500_and_the_new_one_a_warning() {
    let fake = FakeNomad::start(FakeConfig::new("/bin/true"))
        .await
        .unwrap();
    let client = NomadClient::new(fake.client_config()).unwrap();
    let before = fake.request_count();
    let err = client.register_job(&old_spec()).await.unwrap_err();
    match &err {
        NomadError::Api {
            status, message, ..
        } => {
            assert_eq!(*status, 500);
            // The client flattens control characters.
            let flat: String = OLD_SPEC_ERROR
                .trim()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            assert_eq!(message, &flat);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_validation() && !err.is_transient());
    assert_eq!(fake.request_count() - before, 1, "not retried");
    assert!(fake.jobs().is_empty(), "nothing stored");

    let resp = client.register_job(&current()).await.unwrap();
    assert_eq!(
        resp.warnings,
        format!("1 warning:\n\n* {OVERSUBSCRIPTION_WARNING}")
    );
    // With oversubscription enabled on the cluster, no warning.
    let mut cfg = FakeConfig::new("/bin/true");
    cfg.memory_oversubscription = true;
    let fake = FakeNomad::start(cfg).await.unwrap();
    let client = NomadClient::new(fake.client_config()).unwrap();
    assert_eq!(client.register_job(&current()).await.unwrap().warnings, "");
}
