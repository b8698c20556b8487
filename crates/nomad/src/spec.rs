//! The one parameterized batch job the Nomad backend registers, built in Rust so that the
//! backend, `polydev-controller nomad-spec` and the operator HCL template
//! (`deploy/nomad/polydev-runtime.nomad.hcl`, checked against this in a test) cannot drift.
//!
//! Why each setting (orchestration.md §0, §1.2–1.3, §2):
//! - `Type: batch` + `ParameterizedJob`: every instance is a dispatched child that runs once;
//!   `Payload: forbidden` and only opaque IDs in `Meta`, because payload and meta are stored in
//!   Raft and readable with `read-job`.
//! - restart `Attempts: 0, Mode: fail` and reschedule `Attempts: 0, Unlimited: false`: a runtime
//!   serves one job, so a failed allocation is neither restarted nor rescheduled. Nomad still
//!   replaces a *lost* allocation (node down) whatever the reschedule policy
//!   (scheduler/reconciler/reconcile_cluster.go:933-943); the backend refuses that replacement
//!   a job and stops it (crates/controller/src/backend/nomad).
//! - the task gets no credential at all: `WARM_POOL=true`, `CONTROLLER_URL` and
//!   `RUNTIME_TOKEN_FILE` pointing at a *named* workload identity written to the secrets
//!   directory. A named identity (not the default one) because only named identities carry an
//!   audience of our choosing and a TTL (`exp`), which Nomad renews by rewriting the file; the
//!   runtime re-reads the file on every request. The controller verifies the JWT against
//!   Nomad's JWKS.
//! - small reservation (`MemoryMB` ≤ 64) with a `MemoryMaxMB` ceiling (needs memory
//!   oversubscription), a small CPU share.
//! - docker hardening: read-only root, all capabilities dropped, `no-new-privileges`, a pids
//!   limit, numeric non-root user (the image is `FROM scratch`, no `/etc/passwd`), never
//!   privileged; a pinned image tag (`latest` forces a pull on every start).
//! - `KillTimeout` ≤ 5 s: the runtime exits within a second of SIGTERM.
//! - logs disabled: the runtime streams to the controller; model output must not land on the
//!   node's disk, and each log collector is one more process per task. Rotation is still set to
//!   1 file × 1 MB because Nomad checks log storage against the 10 MB disk even for disabled
//!   logs ([`LOG_MAX_FILES`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Name of the task inside the group.
pub const TASK_NAME: &str = "runtime";
/// Name of the task group.
pub const GROUP_NAME: &str = "runtime";
/// Dispatch meta key every instance carries: the controller's opaque instance ID.
pub const META_INSTANCE_ID: &str = "instance_id";
/// Optional dispatch meta key for a cold start: the execution the instance is for (an opaque
/// ID, not the prompt or anything secret).
pub const META_EXECUTION_ID: &str = "execution_id";

/// The group's ephemeral disk: Nomad's minimum (`EphemeralDisk.Validate`,
/// nomad/structs/structs.go:10399-10403). Nothing is written to it.
pub const EPHEMERAL_DISK_MB: u32 = 10;
/// Log rotation settings sent with `Disabled: true`: the smallest Nomad accepts (1 file of
/// 1 MB), so that log storage (1 MB) stays below [`EPHEMERAL_DISK_MB`], as
/// `LogConfig.Validate` requires even for disabled logs (nomad/structs/structs.go:7863-7883).
pub const LOG_MAX_FILES: u32 = 1;
pub const LOG_MAX_FILE_SIZE_MB: u32 = 1;

/// Why a configuration cannot produce a safe job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Nomad runtime job configuration: {0}")]
pub struct SpecError(pub String);

/// Settings of the runtime job. [`RuntimeJobConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeJobConfig {
    /// The parameterized job's ID.
    pub job_id: String,
    /// Pinned image, e.g. `polydev-runtime:0.1.0`. `latest` and untagged images are refused.
    pub image: String,
    /// URL runtimes use to reach the controller (`POLYDEV_PUBLIC_URL`): `https://`, or
    /// `http://` only to a loopback host.
    pub controller_url: String,
    pub datacenters: Vec<String>,
    pub namespace: Option<String>,
    pub region: Option<String>,
    pub node_pool: Option<String>,
    /// Docker `network_mode` (`bridge`, `host`, a named network); the driver default if unset.
    pub network_mode: Option<String>,
    /// Docker `runtime` (e.g. `runsc` for gVisor), if set.
    pub docker_runtime: Option<String>,
    /// CPU share in MHz.
    pub cpu_mhz: u32,
    /// Memory reservation in MB (10..=64).
    pub memory_mb: u32,
    /// Memory ceiling in MB (> `memory_mb`; needs memory oversubscription on the cluster).
    pub memory_max_mb: u32,
    pub pids_limit: u32,
    /// At most 5 s.
    pub kill_timeout: Duration,
    /// Name of the workload identity the runtime presents (file `secrets/nomad_<name>.jwt`).
    pub identity_name: String,
    /// `aud` of that identity; the controller requires it.
    pub identity_audience: String,
    /// Lifetime of one identity token; Nomad renews it before it expires.
    pub identity_ttl: Duration,
}

impl RuntimeJobConfig {
    /// Defaults: job `polydev-runtime`, image `polydev-runtime:<this crate's version>`, all
    /// datacenters, 100 MHz, 32 MB reserved / 128 MB ceiling, 64 pids, 5 s kill timeout,
    /// identity `polydev` for audience `polydev-controller` valid 1 h.
    pub fn new(controller_url: impl Into<String>) -> RuntimeJobConfig {
        RuntimeJobConfig {
            job_id: "polydev-runtime".into(),
            image: concat!("polydev-runtime:", env!("CARGO_PKG_VERSION")).into(),
            controller_url: controller_url.into(),
            datacenters: vec!["*".into()],
            namespace: None,
            region: None,
            node_pool: None,
            network_mode: None,
            docker_runtime: None,
            cpu_mhz: 100,
            memory_mb: 32,
            memory_max_mb: 128,
            pids_limit: 64,
            kill_timeout: Duration::from_secs(5),
            identity_name: "polydev".into(),
            identity_audience: "polydev-controller".into(),
            identity_ttl: Duration::from_secs(3600),
        }
    }

    /// The path (inside the task) where Nomad writes the identity token.
    pub fn token_file(&self) -> String {
        format!("${{NOMAD_SECRETS_DIR}}/nomad_{}.jwt", self.identity_name)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |m: String| Err(SpecError(m));
        if self.job_id.is_empty()
            || !self
                .job_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return err(format!("job ID {:?} must be [A-Za-z0-9_-]+", self.job_id));
        }
        let tag = self
            .image
            .rsplit_once('/')
            .map_or(self.image.as_str(), |(_, last)| last)
            .split_once(':')
            .map(|(_, t)| t);
        match tag {
            _ if self.image.contains('@') => {}
            None | Some("") => {
                return err(format!("image {:?} must carry a pinned tag", self.image));
            }
            Some("latest") => {
                return err(format!(
                    "image {:?}: `latest` makes Nomad pull on every start; pin a version",
                    self.image
                ));
            }
            Some(_) => {}
        }
        let uri: http::Uri = self.controller_url.parse().map_err(|_| {
            SpecError(format!(
                "controller URL {:?} is invalid",
                self.controller_url
            ))
        })?;
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        match uri.scheme_str() {
            Some("https") if !host.is_empty() => {}
            Some("http") if loopback => {}
            _ => {
                return err(format!(
                    "controller URL {:?} must be https:// (http:// only on loopback)",
                    self.controller_url
                ));
            }
        }
        if self.datacenters.is_empty() {
            return err("at least one datacenter (or \"*\") is required".into());
        }
        if !(10..=64).contains(&self.memory_mb) {
            return err(format!("memory_mb {} must be 10..=64", self.memory_mb));
        }
        if self.memory_max_mb <= self.memory_mb {
            return err("memory_max_mb must exceed memory_mb".into());
        }
        if self.cpu_mhz == 0 || self.pids_limit == 0 {
            return err("cpu_mhz and pids_limit must be positive".into());
        }
        if self.kill_timeout.is_zero() || self.kill_timeout > Duration::from_secs(5) {
            return err("kill_timeout must be within (0, 5 s]".into());
        }
        if self.identity_name.is_empty()
            || self.identity_name == "default"
            || !self
                .identity_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return err(format!(
                "identity name {:?} must be a non-default [A-Za-z0-9_-]+ name",
                self.identity_name
            ));
        }
        if self.identity_audience.is_empty() {
            return err("identity audience must be set".into());
        }
        if self.identity_ttl < Duration::from_secs(60) {
            return err("identity TTL must be at least a minute".into());
        }
        Ok(())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `{"Job": {...}}`, the body of `PUT /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobRegisterRequest {
    pub job: JobSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobSpec {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(rename = "Type")]
    pub job_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub datacenters: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_pool: Option<String>,
    pub parameterized_job: ParameterizedJob,
    pub task_groups: Vec<TaskGroup>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ParameterizedJob {
    pub payload: String,
    pub meta_required: Vec<String>,
    pub meta_optional: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskGroup {
    pub name: String,
    pub count: u32,
    pub restart_policy: RestartPolicy,
    pub reschedule_policy: ReschedulePolicy,
    pub ephemeral_disk: EphemeralDisk,
    pub tasks: Vec<Task>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    pub attempts: u32,
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReschedulePolicy {
    pub attempts: u32,
    pub unlimited: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EphemeralDisk {
    #[serde(rename = "SizeMB")]
    pub size_mb: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    pub name: String,
    pub driver: String,
    pub user: String,
    pub config: DockerConfig,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    /// Nanoseconds.
    pub kill_timeout: u64,
    pub log_config: LogConfig,
    pub identities: Vec<WorkloadIdentity>,
}

/// The docker driver's `config` block: snake_case keys, as in the driver docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DockerConfig {
    pub image: String,
    pub readonly_rootfs: bool,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub pids_limit: u32,
    pub privileged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resources {
    #[serde(rename = "CPU")]
    pub cpu: u32,
    #[serde(rename = "MemoryMB")]
    pub memory_mb: u32,
    #[serde(rename = "MemoryMaxMB")]
    pub memory_max_mb: u32,
}

/// `LogConfig`. `MaxFiles` and `MaxFileSizeMB` are sent even with `Disabled`: Nomad fills
/// absent ones with 10 × 10 MB (api/tasks.go:729-739) and then requires the group's ephemeral
/// disk to exceed `MaxFiles × MaxFileSizeMB`, whether or not logs are disabled
/// (nomad/structs/structs.go:7863-7883, 8251-8256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LogConfig {
    pub disabled: bool,
    pub max_files: u32,
    #[serde(rename = "MaxFileSizeMB")]
    pub max_file_size_mb: u32,
}

/// `Identities[]` entry (`identity` block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WorkloadIdentity {
    pub name: String,
    pub audience: Vec<String>,
    pub change_mode: String,
    pub env: bool,
    pub file: bool,
    /// Nanoseconds.
    #[serde(rename = "TTL")]
    pub ttl: u64,
}

/// The typed job for `cfg` (validated).
pub fn runtime_job_spec(cfg: &RuntimeJobConfig) -> Result<JobRegisterRequest, SpecError> {
    cfg.validate()?;
    let env = BTreeMap::from([
        ("WARM_POOL".to_owned(), "true".to_owned()),
        ("CONTROLLER_URL".to_owned(), cfg.controller_url.clone()),
        ("RUNTIME_TOKEN_FILE".to_owned(), cfg.token_file()),
    ]);
    let task = Task {
        name: TASK_NAME.into(),
        driver: "docker".into(),
        user: "65534:65534".into(),
        config: DockerConfig {
            image: cfg.image.clone(),
            readonly_rootfs: true,
            cap_drop: vec!["ALL".into()],
            security_opt: vec!["no-new-privileges".into()],
            pids_limit: cfg.pids_limit,
            privileged: false,
            network_mode: cfg.network_mode.clone(),
            runtime: cfg.docker_runtime.clone(),
        },
        env,
        resources: Resources {
            cpu: cfg.cpu_mhz,
            memory_mb: cfg.memory_mb,
            memory_max_mb: cfg.memory_max_mb,
        },
        kill_timeout: nanos(cfg.kill_timeout),
        log_config: LogConfig {
            disabled: true,
            max_files: LOG_MAX_FILES,
            max_file_size_mb: LOG_MAX_FILE_SIZE_MB,
        },
        identities: vec![WorkloadIdentity {
            name: cfg.identity_name.clone(),
            audience: vec![cfg.identity_audience.clone()],
            change_mode: "noop".into(),
            env: false,
            file: true,
            ttl: nanos(cfg.identity_ttl),
        }],
    };
    Ok(JobRegisterRequest {
        job: JobSpec {
            id: cfg.job_id.clone(),
            name: cfg.job_id.clone(),
            job_type: "batch".into(),
            namespace: cfg.namespace.clone(),
            region: cfg.region.clone(),
            datacenters: cfg.datacenters.clone(),
            node_pool: cfg.node_pool.clone(),
            parameterized_job: ParameterizedJob {
                payload: "forbidden".into(),
                meta_required: vec![META_INSTANCE_ID.into()],
                meta_optional: vec![META_EXECUTION_ID.into()],
            },
            task_groups: vec![TaskGroup {
                name: GROUP_NAME.into(),
                count: 1,
                restart_policy: RestartPolicy {
                    attempts: 0,
                    mode: "fail".into(),
                },
                reschedule_policy: ReschedulePolicy {
                    attempts: 0,
                    unlimited: false,
                },
                ephemeral_disk: EphemeralDisk {
                    size_mb: EPHEMERAL_DISK_MB,
                },
                tasks: vec![task],
            }],
        },
    })
}

/// `{"Job": {...}}` for `cfg`, exactly as the backend registers it and as
/// `nomad job run -json` accepts it.
pub fn runtime_job(cfg: &RuntimeJobConfig) -> Result<serde_json::Value, SpecError> {
    let spec = runtime_job_spec(cfg)?;
    serde_json::to_value(spec).map_err(|e| SpecError(format!("cannot serialize the job: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn cfg() -> RuntimeJobConfig {
        RuntimeJobConfig::new("https://controller.example:8443")
    }

    #[test]
    fn default_job_is_hardened_and_carries_no_secret() {
        let job = runtime_job(&cfg()).unwrap();
        let j = &job["Job"];
        assert_eq!(j["Type"], "batch");
        assert_eq!(j["ParameterizedJob"]["Payload"], "forbidden");
        assert_eq!(j["ParameterizedJob"]["MetaRequired"][0], META_INSTANCE_ID);
        let g = &j["TaskGroups"][0];
        assert_eq!(g["RestartPolicy"]["Attempts"], 0);
        assert_eq!(g["RestartPolicy"]["Mode"], "fail");
        assert_eq!(g["ReschedulePolicy"]["Attempts"], 0);
        assert_eq!(g["ReschedulePolicy"]["Unlimited"], false);
        let t = &g["Tasks"][0];
        assert_eq!(t["Driver"], "docker");
        assert_eq!(t["User"], "65534:65534");
        assert_eq!(t["Config"]["readonly_rootfs"], true);
        assert_eq!(t["Config"]["cap_drop"][0], "ALL");
        assert_eq!(t["Config"]["security_opt"][0], "no-new-privileges");
        assert_eq!(t["Config"]["privileged"], false);
        assert!(
            t["Config"]["image"]
                .as_str()
                .unwrap()
                .ends_with(env!("CARGO_PKG_VERSION"))
        );
        assert!(t["Resources"]["MemoryMB"].as_u64().unwrap() <= 64);
        assert!(t["Resources"]["MemoryMaxMB"].as_u64() > t["Resources"]["MemoryMB"].as_u64());
        assert!(t["KillTimeout"].as_u64().unwrap() <= 5_000_000_000);
        assert_eq!(t["LogConfig"]["Disabled"], true);
        assert_eq!(t["Env"]["WARM_POOL"], "true");
        assert_eq!(
            t["Env"]["RUNTIME_TOKEN_FILE"],
            "${NOMAD_SECRETS_DIR}/nomad_polydev.jwt"
        );
        let id = &t["Identities"][0];
        assert_eq!(id["File"], true);
        assert_eq!(id["Env"], false);
        assert_eq!(id["Audience"][0], "polydev-controller");
        assert!(id["TTL"].as_u64().unwrap() > 0);
        // Nothing credential-like anywhere, and exactly the three non-secret variables.
        let text = job.to_string().to_lowercase();
        for bad in [
            "api_key",
            "password",
            "prompt",
            "credentials",
            "runtime_token\"",
        ] {
            assert!(!text.contains(bad), "{bad} in {text}");
        }
        assert_eq!(t["Env"].as_object().unwrap().len(), 3);
    }

    /// Nomad's rule, applied to what the builder sends: `LogConfig.Validate` requires the
    /// group's disk to exceed `MaxFiles × MaxFileSizeMB` even with logs disabled, and absent
    /// values become 10 × 10 MB (nomad/structs/structs.go:7863-7883; api/tasks.go:729-739).
    /// The full rule set runs against this job in tests/spec_admission.rs.
    #[test]
    fn log_storage_fits_the_disk_as_nomad_requires() {
        let job = runtime_job(&cfg()).unwrap();
        let g = &job["Job"]["TaskGroups"][0];
        let logs = &g["Tasks"][0]["LogConfig"];
        let files = logs["MaxFiles"]
            .as_u64()
            .expect("MaxFiles is sent, else Nomad uses 10");
        let size = logs["MaxFileSizeMB"]
            .as_u64()
            .expect("MaxFileSizeMB is sent, else Nomad uses 10");
        let disk = g["EphemeralDisk"]["SizeMB"].as_u64().unwrap();
        assert!(files >= 1 && size >= 1, "Nomad's minimums");
        assert!(disk >= 10, "Nomad's minimum disk");
        assert!(
            disk > files * size,
            "log storage {files}×{size} MB ≥ disk {disk} MB"
        );
    }

    #[test]
    fn refuses_unsafe_settings() {
        let bad = |f: fn(&mut RuntimeJobConfig)| {
            let mut c = cfg();
            f(&mut c);
            runtime_job(&c).is_err()
        };
        assert!(bad(|c| c.image = "polydev-runtime:latest".into()));
        assert!(bad(|c| c.image = "polydev-runtime".into()));
        assert!(bad(
            |c| c.image = "registry.example:5000/polydev-runtime".into()
        ));
        assert!(!bad(
            |c| c.image = "registry.example:5000/polydev-runtime:0.1.0".into()
        ));
        assert!(!bad(|c| c.image = "polydev-runtime@sha256:abcd".into()));
        assert!(bad(
            |c| c.controller_url = "http://controller.example".into()
        ));
        assert!(!bad(|c| c.controller_url = "http://127.0.0.1:8080".into()));
        assert!(bad(|c| c.memory_mb = 128));
        assert!(bad(|c| c.memory_max_mb = c.memory_mb));
        assert!(bad(|c| c.kill_timeout = Duration::from_secs(30)));
        assert!(bad(|c| c.identity_name = "default".into()));
        assert!(bad(|c| c.identity_audience = String::new()));
        assert!(bad(|c| c.job_id = "a/b".into()));
        assert!(bad(|c| c.datacenters.clear()));
    }

    #[test]
    fn optional_settings_appear_only_when_set() {
        let j = runtime_job(&cfg()).unwrap();
        assert!(j["Job"].get("Namespace").is_none());
        assert!(
            j["Job"]["TaskGroups"][0]["Tasks"][0]["Config"]
                .get("network_mode")
                .is_none()
        );
        let mut c = cfg();
        c.namespace = Some("polydev".into());
        c.network_mode = Some("llm-egress".into());
        c.docker_runtime = Some("runsc".into());
        let j = runtime_job(&c).unwrap();
        assert_eq!(j["Job"]["Namespace"], "polydev");
        let config = &j["Job"]["TaskGroups"][0]["Tasks"][0]["Config"];
        assert_eq!(config["network_mode"], "llm-egress");
        assert_eq!(config["runtime"], "runsc");
    }
}
