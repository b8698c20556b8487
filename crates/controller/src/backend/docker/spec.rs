//! What the backend asks the engine to create: the hardened container and the dedicated
//! network. Kept apart from the lifecycle code so that every security-relevant field is in one
//! place and unit-tested as JSON.
//!
//! Hardening (CIS Docker Benchmark ids in reference/reliability.md 7.1): a numeric non-root
//! user (4.1), read-only root filesystem (5.13), every capability dropped (5.4), no privilege
//! gain (5.26), the default seccomp profile (5.22: we never pass `seccomp=unconfined`),
//! memory with swap equal to it, and pids limits (5.11, 5.29), private PID and IPC namespaces
//! (5.16, 5.17), the host network only when the operator names it (5.10), no bind mount but the
//! optional CA file, read-only (so never the Docker socket, 5.32), not privileged (5.5), no
//! restart policy, and no log driver: output is read from the attach stream, so prompts and
//! answers never land in the engine's log files.
//!
//! The job (credential included) is never part of any of this: containers get non-secret
//! settings as env, and the job only through the attached stdin (attach mode) or from the
//! authenticated runtime API (pull mode).
//!
//! Pull mode adds one more read-only bind mount: the container's own runtime-API token, a file
//! at [`TOKEN_MOUNT`] (`RUNTIME_TOKEN_FILE`). A file rather than `RUNTIME_TOKEN` in the env
//! because the env of a container is shown by `docker inspect` (and kept in the engine's
//! container config on disk) for the container's whole life, while a bind mount shows only
//! the host path of a file in the controller's private 0700 directory, readable by the
//! container's user and nobody else on the host. It is a `Mounts` entry, not a `Binds` one, so
//! that a file already gone makes the start fail instead of the engine creating a directory in
//! its place.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Every container and network the backend creates carries `LABEL_MANAGED=true`.
pub const LABEL_MANAGED: &str = "io.polydev.managed";
/// The controller instance's name (stable across restarts: how leftovers are found).
pub const LABEL_CONTROLLER: &str = "io.polydev.controller";
/// The controller process that created the container (random per start).
pub const LABEL_SESSION: &str = "io.polydev.session";
/// `warm` (pool) or `cold` (one execution).
pub const LABEL_ROLE: &str = "io.polydev.role";
/// The execution a cold container runs (warm containers learn theirs only on stdin).
pub const LABEL_EXECUTION: &str = "io.polydev.execution";

/// Pull mode: the runtime-API instance id of the container (how a later controller finds the
/// container again, with [`LABEL_EXECUTION`] for cold ones).
pub const LABEL_INSTANCE: &str = "io.polydev.instance";
/// `attach` or `pull`: how the container gets its job.
pub const LABEL_MODE: &str = "io.polydev.mode";

/// Where the operator's `EXTRA_CA_CERTS` file is mounted (read-only) inside containers.
pub const CA_MOUNT: &str = "/etc/polydev/extra-ca.pem";
/// Pull mode: where the container's token file is mounted (read-only).
pub const TOKEN_MOUNT: &str = "/run/polydev/token";

/// Pull mode's per-container part of the body.
#[derive(Debug, Clone, Copy)]
pub struct Pulled<'a> {
    /// The runtime-API instance id (label [`LABEL_INSTANCE`]).
    pub instance: &'a str,
    /// The host path of the token file, mounted read-only at [`TOKEN_MOUNT`].
    pub token_file: &'a str,
}

/// The kind of container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role<'a> {
    /// A warm pool runtime: `WARM_POOL=true`, waits for its job on stdin.
    Warm,
    /// A runtime started for one execution: `run --job -`.
    Cold { execution_id: Option<&'a str> },
}

/// Everything needed to build a container body, from the backend's configuration.
#[derive(Debug, Clone)]
pub struct ContainerSpec<'a> {
    pub image: &'a str,
    pub user: &'a str,
    /// `KEY=VALUE` entries, non-secret (checked by the backend's configuration).
    pub env: &'a [String],
    /// `host:container:ro` entries.
    pub binds: &'a [String],
    pub network: &'a str,
    pub memory_bytes: u64,
    pub pids_limit: i64,
    pub nano_cpus: Option<i64>,
    pub nofile: u64,
    /// Labels common to every container of this backend (managed, controller, session, and
    /// any extra ones).
    pub labels: &'a BTreeMap<String, String>,
}

/// The `POST /containers/create` body. With `pulled` (pull mode) every container runs in
/// warm mode (`WARM_POOL=true`; the env then also holds `CONTROLLER_URL`, from the backend)
/// with its token file mounted and no stdin; a cold one differs only by its labels.
pub fn container_body(
    spec: &ContainerSpec<'_>,
    role: &Role<'_>,
    pulled: Option<&Pulled<'_>>,
) -> Value {
    let mut labels = spec.labels.clone();
    let mut env: Vec<String> = spec.env.to_vec();
    let cmd: Vec<&str> = match role {
        Role::Warm => {
            labels.insert(LABEL_ROLE.into(), "warm".into());
            env.push("WARM_POOL=true".into());
            Vec::new()
        }
        Role::Cold { execution_id } => {
            labels.insert(LABEL_ROLE.into(), "cold".into());
            if let Some(id) = execution_id {
                labels.insert(LABEL_EXECUTION.into(), (*id).to_owned());
            }
            if pulled.is_some() {
                env.push("WARM_POOL=true".into());
                Vec::new()
            } else {
                vec!["run", "--job", "-"]
            }
        }
    };
    let mut mounts = Vec::new();
    match pulled {
        Some(p) => {
            labels.insert(LABEL_MODE.into(), "pull".into());
            labels.insert(LABEL_INSTANCE.into(), p.instance.to_owned());
            env.push(format!("RUNTIME_TOKEN_FILE={TOKEN_MOUNT}"));
            mounts.push(json!({
                "Type": "bind",
                "Source": p.token_file,
                "Target": TOKEN_MOUNT,
                "ReadOnly": true,
            }));
        }
        None => {
            labels.insert(LABEL_MODE.into(), "attach".into());
        }
    }
    let stdin = pulled.is_none();
    let memory = i64::try_from(spec.memory_bytes).unwrap_or(i64::MAX);
    let nofile = i64::try_from(spec.nofile).unwrap_or(1024);
    let mut host = json!({
        "ReadonlyRootfs": true,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"],
        "Privileged": false,
        "Memory": memory,
        "MemorySwap": memory,
        "PidsLimit": spec.pids_limit,
        "Ulimits": [{"Name": "nofile", "Soft": nofile, "Hard": nofile}],
        "IpcMode": "private",
        "PidMode": "",
        "NetworkMode": spec.network,
        "Binds": spec.binds,
        "Mounts": mounts,
        "AutoRemove": false,
        "RestartPolicy": {"Name": "no"},
        "LogConfig": {"Type": "none", "Config": {}},
        "Init": false,
    });
    if let (Some(cpus), Some(obj)) = (spec.nano_cpus, host.as_object_mut()) {
        obj.insert("NanoCpus".into(), json!(cpus));
    }
    let mut body = json!({
        "Image": spec.image,
        "User": spec.user,
        "Env": env,
        "Labels": labels,
        "AttachStdin": stdin,
        "AttachStdout": true,
        "AttachStderr": true,
        "OpenStdin": stdin,
        "StdinOnce": stdin,
        "Tty": false,
        "NetworkDisabled": false,
        "HostConfig": host,
    });
    if !cmd.is_empty()
        && let Some(obj) = body.as_object_mut()
    {
        obj.insert("Cmd".into(), json!(cmd));
    }
    body
}

/// The `POST /networks/create` body of the backend's own bridge network. Containers on it
/// cannot talk to each other (`enable_icc=false`): a runtime needs egress only.
pub fn network_body(name: &str, labels: &BTreeMap<String, String>) -> Value {
    json!({
        "Name": name,
        "Driver": "bridge",
        "CheckDuplicate": true,
        "Labels": labels,
        "Options": {"com.docker.network.bridge.enable_icc": "false"},
    })
}

/// Whether `s` is usable in container names and label values we build (`[A-Za-z0-9_.-]`,
/// starting with an alphanumeric).
pub fn is_name_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_CONTROLLER.to_owned(), "default".to_owned()),
        ])
    }

    fn spec<'a>(env: &'a [String], labels: &'a BTreeMap<String, String>) -> ContainerSpec<'a> {
        ContainerSpec {
            image: "polydev-runtime:0.1.0",
            user: "65534:65534",
            env,
            binds: &[],
            network: "polydev",
            memory_bytes: 32 << 20,
            pids_limit: 32,
            nano_cpus: None,
            nofile: 256,
            labels,
        }
    }

    #[test]
    fn containers_are_hardened() {
        let env = vec!["OUTPUT=ndjson".to_owned()];
        let labels = labels();
        let body = container_body(&spec(&env, &labels), &Role::Warm, None);
        let h = &body["HostConfig"];
        assert_eq!(h["ReadonlyRootfs"], true);
        assert_eq!(h["CapDrop"], json!(["ALL"]));
        assert_eq!(h["SecurityOpt"], json!(["no-new-privileges:true"]));
        assert_eq!(h["Privileged"], false);
        assert_eq!(h["Memory"], 32 << 20);
        assert_eq!(h["MemorySwap"], 32 << 20);
        assert_eq!(h["PidsLimit"], 32);
        assert_eq!(h["IpcMode"], "private");
        assert_eq!(h["NetworkMode"], "polydev");
        assert_eq!(h["Binds"], json!([]));
        assert_eq!(h["LogConfig"]["Type"], "none");
        assert!(h.get("NanoCpus").is_none());
        assert_eq!(body["User"], "65534:65534");
        assert_eq!(body["OpenStdin"], true);
        assert_eq!(body["StdinOnce"], true);
        assert_eq!(body["Tty"], false);
        assert_eq!(body["Env"], json!(["OUTPUT=ndjson", "WARM_POOL=true"]));
        assert_eq!(body["Labels"][LABEL_ROLE], "warm");
        assert!(body.get("Cmd").is_none());
        // Nothing turns the hardening off.
        let text = body.to_string();
        for bad in ["unconfined", "docker.sock", "CapAdd", "\"host\""] {
            assert!(!text.contains(bad), "{bad} in {text}");
        }
    }

    #[test]
    fn cold_containers_run_one_job_from_stdin_and_name_their_execution() {
        let labels = labels();
        let mut s = spec(&[], &labels);
        s.nano_cpus = Some(500_000_000);
        let body = container_body(
            &s,
            &Role::Cold {
                execution_id: Some("ex_1"),
            },
            None,
        );
        assert_eq!(body["Cmd"], json!(["run", "--job", "-"]));
        assert_eq!(body["Labels"][LABEL_EXECUTION], "ex_1");
        assert_eq!(body["Labels"][LABEL_ROLE], "cold");
        assert_eq!(body["HostConfig"]["NanoCpus"], 500_000_000);
    }

    #[test]
    fn pull_mode_mounts_the_token_read_only_and_opens_no_stdin() {
        let env = vec![
            "OUTPUT=ndjson".to_owned(),
            "CONTROLLER_URL=https://c.example".to_owned(),
        ];
        let labels = labels();
        let pulled = Pulled {
            instance: "i-1",
            token_file: "/tmp/polydev-runtime-api-x/i-1.token",
        };
        for role in [
            Role::Warm,
            Role::Cold {
                execution_id: Some("ex_2"),
            },
        ] {
            let body = container_body(&spec(&env, &labels), &role, Some(&pulled));
            assert!(body.get("Cmd").is_none(), "{body}");
            assert_eq!(body["OpenStdin"], false);
            assert_eq!(body["AttachStdin"], false);
            assert_eq!(body["StdinOnce"], false);
            assert_eq!(body["Labels"][LABEL_MODE], "pull");
            assert_eq!(body["Labels"][LABEL_INSTANCE], "i-1");
            assert_eq!(
                body["HostConfig"]["Mounts"],
                json!([{
                    "Type": "bind",
                    "Source": "/tmp/polydev-runtime-api-x/i-1.token",
                    "Target": TOKEN_MOUNT,
                    "ReadOnly": true,
                }])
            );
            let env = body["Env"].as_array().unwrap();
            assert!(env.contains(&json!("WARM_POOL=true")), "{env:?}");
            assert!(
                env.contains(&json!(format!("RUNTIME_TOKEN_FILE={TOKEN_MOUNT}"))),
                "{env:?}"
            );
            assert!(
                !env.iter()
                    .any(|e| e.as_str().unwrap().starts_with("RUNTIME_TOKEN=")),
                "{env:?}"
            );
            assert_eq!(body["HostConfig"]["ReadonlyRootfs"], true);
        }
        let cold = container_body(
            &spec(&env, &labels),
            &Role::Cold {
                execution_id: Some("ex_2"),
            },
            Some(&pulled),
        );
        assert_eq!(cold["Labels"][LABEL_EXECUTION], "ex_2");
    }

    #[test]
    fn the_network_isolates_containers_from_each_other() {
        let body = network_body("polydev", &labels());
        assert_eq!(
            body["Options"]["com.docker.network.bridge.enable_icc"],
            "false"
        );
        assert_eq!(body["Labels"][LABEL_MANAGED], "true");
    }

    #[test]
    fn names() {
        assert!(is_name_safe("default"));
        assert!(is_name_safe("pdt-test-12-0"));
        assert!(!is_name_safe("-x"));
        assert!(!is_name_safe("a b"));
        assert!(!is_name_safe(""));
        assert!(!is_name_safe(&"a".repeat(65)));
    }
}
