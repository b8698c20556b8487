//! The operator HCL template (`deploy/nomad/polydev-runtime.nomad.hcl`) and the job the backend
//! registers (`polydev_nomad::runtime_job`, printed by `polydev-controller nomad-spec`) must
//! agree: this test parses the HCL with `hcl-rs`, evaluates it with the same inputs, maps
//! Nomad's HCL names to its JSON names, and compares every setting that matters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use hcl::eval::{Context, Evaluate};
use hcl::{Block, Body, Expression};
use polydev_nomad::{RuntimeJobConfig, runtime_job};
use serde_json::{Value, json};

fn hcl_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nomad/polydev-runtime.nomad.hcl")
}

fn block<'a>(body: &'a Body, ident: &str) -> &'a Block {
    body.blocks()
        .find(|b| b.identifier() == ident)
        .unwrap_or_else(|| panic!("no {ident} block"))
}

fn attr(body: &Body, key: &str) -> Value {
    let expr: &Expression = body
        .attributes()
        .find(|a| a.key() == key)
        .map(|a| a.expr())
        .unwrap_or_else(|| panic!("no attribute {key}"));
    serde_json::to_value(hcl::Value::from(expr.clone())).unwrap()
}

fn variable_default(body: &Body, name: &str) -> Value {
    let var = body
        .blocks()
        .find(|b| {
            b.identifier() == "variable" && b.labels().first().map(|l| l.as_str()) == Some(name)
        })
        .unwrap_or_else(|| panic!("no variable {name}"));
    attr(var.body(), "default")
}

/// Go duration strings as Nomad's HCL parser reads them → nanoseconds.
fn duration_ns(v: &Value) -> u64 {
    let s = v.as_str().unwrap();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap());
    let n: u64 = n.parse().unwrap();
    n * match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        other => panic!("unit {other}"),
    }
}

#[test]
fn hcl_template_matches_the_registered_job() {
    let text = std::fs::read_to_string(hcl_path()).unwrap();
    let file = hcl::parse(&text).unwrap();

    // The template's defaults are the backend's defaults: a release that bumps the crate
    // version must bump the template's pinned image too.
    let controller_url = "https://polydev-controller.example:8443";
    let cfg = RuntimeJobConfig::new(controller_url);
    assert_eq!(variable_default(&file, "image"), json!(cfg.image));
    assert_eq!(
        variable_default(&file, "datacenters"),
        json!(cfg.datacenters)
    );

    let mut ctx = Context::new();
    ctx.declare_var(
        "var",
        hcl::value!({
            image = (cfg.image.clone())
            controller_url = (controller_url)
            datacenters = (cfg.datacenters.clone())
        }),
    );
    // Runtime variables stay for Nomad to interpolate in the task, as Nomad's HCL2 parser
    // leaves them.
    ctx.declare_var("NOMAD_SECRETS_DIR", "${NOMAD_SECRETS_DIR}");
    let job_block = block(&file, "job")
        .evaluate(&ctx)
        .expect("the job block evaluates");
    let want = runtime_job(&cfg).unwrap();
    let want = &want["Job"];

    let job = job_block.body();
    assert_eq!(
        job_block.labels().first().map(|l| l.as_str()),
        want["ID"].as_str()
    );
    assert_eq!(attr(job, "type"), want["Type"]);
    assert_eq!(attr(job, "datacenters"), want["Datacenters"]);

    let p = block(job, "parameterized").body();
    assert_eq!(attr(p, "payload"), want["ParameterizedJob"]["Payload"]);
    assert_eq!(
        attr(p, "meta_required"),
        want["ParameterizedJob"]["MetaRequired"]
    );
    assert_eq!(
        attr(p, "meta_optional"),
        want["ParameterizedJob"]["MetaOptional"]
    );

    let group_block = block(job, "group");
    let wg = &want["TaskGroups"][0];
    assert_eq!(
        group_block.labels().first().map(|l| l.as_str()),
        wg["Name"].as_str()
    );
    let group = group_block.body();
    assert_eq!(attr(group, "count"), wg["Count"]);
    let restart = block(group, "restart").body();
    assert_eq!(attr(restart, "attempts"), wg["RestartPolicy"]["Attempts"]);
    assert_eq!(attr(restart, "mode"), wg["RestartPolicy"]["Mode"]);
    let resched = block(group, "reschedule").body();
    assert_eq!(
        attr(resched, "attempts"),
        wg["ReschedulePolicy"]["Attempts"]
    );
    assert_eq!(
        attr(resched, "unlimited"),
        wg["ReschedulePolicy"]["Unlimited"]
    );
    assert_eq!(
        attr(block(group, "ephemeral_disk").body(), "size"),
        wg["EphemeralDisk"]["SizeMB"]
    );

    let task_block = block(group, "task");
    let wt = &wg["Tasks"][0];
    assert_eq!(
        task_block.labels().first().map(|l| l.as_str()),
        wt["Name"].as_str()
    );
    let task = task_block.body();
    assert_eq!(attr(task, "driver"), wt["Driver"]);
    assert_eq!(attr(task, "user"), wt["User"]);
    assert_eq!(
        json!(duration_ns(&attr(task, "kill_timeout"))),
        wt["KillTimeout"]
    );

    // Docker config: every key the builder sets, with the same value, and nothing else.
    let config = block(task, "config").body();
    let keys: Vec<&str> = config.attributes().map(|a| a.key()).collect();
    let want_config = wt["Config"].as_object().unwrap();
    assert_eq!(keys.len(), want_config.len(), "config keys {keys:?}");
    for (k, v) in want_config {
        assert_eq!(&attr(config, k), v, "config.{k}");
    }

    // Env: exactly the three non-secret variables.
    let env = block(task, "env").body();
    let want_env = wt["Env"].as_object().unwrap();
    assert_eq!(env.attributes().count(), want_env.len());
    for (k, v) in want_env {
        assert_eq!(&attr(env, k), v, "env.{k}");
    }

    let identity = block(task, "identity").body();
    let wi = &wt["Identities"][0];
    assert_eq!(attr(identity, "name"), wi["Name"]);
    assert_eq!(attr(identity, "aud"), wi["Audience"]);
    assert_eq!(attr(identity, "file"), wi["File"]);
    assert_eq!(attr(identity, "env"), wi["Env"]);
    assert_eq!(attr(identity, "change_mode"), wi["ChangeMode"]);
    assert_eq!(json!(duration_ns(&attr(identity, "ttl"))), wi["TTL"]);

    let logs = block(task, "logs").body();
    assert_eq!(attr(logs, "disabled"), wt["LogConfig"]["Disabled"]);
    assert_eq!(attr(logs, "max_files"), wt["LogConfig"]["MaxFiles"]);
    assert_eq!(
        attr(logs, "max_file_size"),
        wt["LogConfig"]["MaxFileSizeMB"]
    );
    assert_eq!(logs.attributes().count(), 3, "logs keys");

    let resources = block(task, "resources").body();
    assert_eq!(attr(resources, "cpu"), wt["Resources"]["CPU"]);
    assert_eq!(attr(resources, "memory"), wt["Resources"]["MemoryMB"]);
    assert_eq!(
        attr(resources, "memory_max"),
        wt["Resources"]["MemoryMaxMB"]
    );
}

#[test]
fn hcl_template_carries_no_secret() {
    let text = std::fs::read_to_string(hcl_path()).unwrap().to_lowercase();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for bad in [
        "api_key",
        "_key =",
        "token =",
        "password",
        "template {",
        "dispatch_payload",
    ] {
        assert!(!code.contains(bad), "the template contains {bad:?}");
    }
}
