//! The subset of Nomad's JSON shapes this project reads and writes, with Nomad's own field
//! names (Go field names, PascalCase, `ID`-style acronyms) as documented in the HTTP API pages
//! (`api-docs/jobs.mdx`, `allocations.mdx`, `evaluations.mdx`, `events.mdx`,
//! `operator/keyring.mdx`) and the Go `api` package.
//!
//! Every struct tolerates missing and unknown fields (`#[serde(default)]`, no
//! `deny_unknown_fields`): Nomad adds fields between releases, and we would rather read a newer
//! server than fail on it. The fake Nomad serializes the same structs, so both sides agree by
//! construction and the shapes are pinned by the fixture tests.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// `PUT /v1/jobs` response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobRegisterResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: u64,
    pub job_modify_index: u64,
    pub warnings: String,
    pub index: u64,
    pub last_contact: u64,
    pub known_leader: bool,
}

/// `POST /v1/job/:id/dispatch` body. There is deliberately no `Payload` field: the runtime
/// job forbids payloads, and nothing secret may ride in `Meta` (it is stored in Raft and shown
/// to the task as `NOMAD_META_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DispatchBody {
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id_prefix_template: String,
}

/// `POST /v1/job/:id/dispatch` response. When an idempotency token matched an existing child,
/// Nomad returns that child's ID with an empty `EvalID`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DispatchResponse {
    pub index: u64,
    pub job_create_index: u64,
    pub eval_create_index: u64,
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    #[serde(rename = "DispatchedJobID")]
    pub dispatched_job_id: String,
}

/// `DELETE /v1/job/:id` response. Stopping a job that does not exist succeeds with zeroes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobDeregisterResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: u64,
    pub job_modify_index: u64,
    pub index: u64,
}

/// `ParameterizedJob` block of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ParameterizedJobConfig {
    pub payload: String,
    pub meta_required: Vec<String>,
    pub meta_optional: Vec<String>,
}

/// The fields of `GET /v1/job/:id` that the backend reads (the full job is much larger).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobInfo {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "ParentID")]
    pub parent_id: String,
    pub name: String,
    pub namespace: String,
    #[serde(rename = "Type")]
    pub job_type: String,
    /// `pending`, `running` or `dead`.
    pub status: String,
    pub stop: bool,
    pub dispatched: bool,
    pub meta: Option<BTreeMap<String, String>>,
    pub parameterized_job: Option<ParameterizedJobConfig>,
    pub create_index: u64,
    pub modify_index: u64,
    pub job_modify_index: u64,
}

/// One entry of `GET /v1/jobs` (Nomad's `JobListStub`, nomad/structs/structs.go): the fields
/// the backend reads to find the dispatched children a previous controller left.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobListStub {
    #[serde(rename = "ID")]
    pub id: String,
    /// The parameterized (or periodic) job a child was created from; empty otherwise.
    #[serde(rename = "ParentID")]
    pub parent_id: String,
    pub name: String,
    pub namespace: String,
    #[serde(rename = "Type")]
    pub job_type: String,
    /// `pending`, `running` or `dead`.
    pub status: String,
    pub stop: bool,
    pub create_index: u64,
    pub modify_index: u64,
    pub job_modify_index: u64,
}

/// One task event (`TaskStates[task].Events[]`); Nomad keeps the latest 10.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskEvent {
    /// `Received`, `Task Setup`, `Driver`, `Started`, `Terminated`, `Killing`, `Killed`,
    /// `Not Restarting`, `Driver Failure`, ...
    #[serde(rename = "Type")]
    pub event_type: String,
    /// Unix nanoseconds.
    pub time: i64,
    pub fails_task: bool,
    pub display_message: String,
    pub message: String,
    pub driver_error: String,
    pub setup_error: String,
    pub validation_error: String,
    pub kill_reason: String,
    pub kill_error: String,
    pub exit_code: i32,
    pub signal: i32,
    pub kill_timeout: i64,
    pub restart_reason: String,
    pub driver_message: String,
    pub details: HashMap<String, String>,
}

/// `TaskStates[task]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskState {
    /// `pending`, `running` or `dead`.
    pub state: String,
    pub failed: bool,
    pub restarts: u64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub last_restart: Option<String>,
    pub events: Option<Vec<TaskEvent>>,
}

/// An allocation, as `GET /v1/job/:id/allocations` (list stubs) and
/// `GET /v1/allocation/:id` (full, with `Job`) return it, and as Allocation events carry it
/// (without `Job`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Allocation {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub name: String,
    pub namespace: String,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub node_name: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub job_type: String,
    pub task_group: String,
    /// `run`, `stop` or `evict`.
    pub desired_status: String,
    pub desired_description: String,
    /// `pending`, `running`, `complete`, `failed`, `lost` or `unknown`.
    pub client_status: String,
    pub client_description: String,
    pub task_states: Option<HashMap<String, TaskState>>,
    #[serde(rename = "FollowupEvalID")]
    pub followup_eval_id: String,
    /// The allocation this one replaces (a lost allocation's replacement carries it:
    /// scheduler/reconciler/reconcile_cluster.go:866-876, scheduler/generic_sched.go:664-666).
    pub previous_allocation: String,
    /// Present on `GET /v1/allocation/:id` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<serde_json::Value>,
    pub create_index: u64,
    pub modify_index: u64,
    pub alloc_modify_index: u64,
    pub create_time: i64,
    pub modify_time: i64,
}

/// `Allocation.ClientStatus`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStatus {
    Pending,
    Running,
    Complete,
    Failed,
    Lost,
    Unknown,
    /// A value this client does not know.
    Other(String),
}

impl ClientStatus {
    pub fn parse(s: &str) -> ClientStatus {
        match s {
            "pending" => ClientStatus::Pending,
            "running" => ClientStatus::Running,
            "complete" => ClientStatus::Complete,
            "failed" => ClientStatus::Failed,
            "lost" => ClientStatus::Lost,
            "unknown" => ClientStatus::Unknown,
            other => ClientStatus::Other(other.to_owned()),
        }
    }

    /// The allocation will not run (again): `complete`, `failed` or `lost`.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ClientStatus::Complete | ClientStatus::Failed | ClientStatus::Lost
        )
    }
}

impl Allocation {
    pub fn status(&self) -> ClientStatus {
        ClientStatus::parse(&self.client_status)
    }

    /// The exit code of `task`'s last `Terminated` event, if it has one.
    pub fn exit_code(&self, task: &str) -> Option<i32> {
        self.task_events(task)
            .iter()
            .rev()
            .find(|e| e.event_type == "Terminated")
            .map(|e| e.exit_code)
    }

    fn task_events(&self, task: &str) -> &[TaskEvent] {
        self.task_states
            .as_ref()
            .and_then(|s| s.get(task))
            .and_then(|s| s.events.as_deref())
            .unwrap_or(&[])
    }

    /// Whether `task`'s last exit was an OOM kill: `Details["oom_killed"]` of its
    /// `Terminated` event (client/allocrunner/taskrunner/task_runner.go:853-858,
    /// nomad/structs/structs.go:9773-9774).
    pub fn oom_killed(&self, task: &str) -> bool {
        self.task_events(task)
            .iter()
            .rev()
            .find(|e| e.event_type == "Terminated")
            .is_some_and(|e| e.details.get("oom_killed").is_some_and(|v| v == "true"))
    }

    /// A one-line explanation of why the allocation did not complete, for operators and API
    /// clients: for a lost allocation the scheduler's `DesiredDescription` ("alloc is lost
    /// since its node is down"; Nomad leaves `ClientDescription` as the client last reported
    /// it: nomad/structs/plan.go:155-181), otherwise the most telling task event (driver,
    /// setup or hook failure, OOM kill, non-zero exit).
    pub fn failure_summary(&self, task: &str) -> Option<String> {
        match self.status() {
            ClientStatus::Complete | ClientStatus::Running | ClientStatus::Pending => {
                return None;
            }
            ClientStatus::Lost => {
                let why = [&self.desired_description, &self.client_description]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .map_or("the allocation's node was lost", |s| s.as_str());
                return Some(format!("allocation lost: {why}"));
            }
            _ => {}
        }
        for e in self.task_events(task).iter().rev() {
            let text = [
                &e.driver_error,
                &e.setup_error,
                &e.validation_error,
                &e.kill_error,
                &e.display_message,
                &e.message,
            ]
            .into_iter()
            .find(|s| !s.is_empty())
            .cloned()
            .unwrap_or_default();
            match e.event_type.as_str() {
                // A failing prestart hook (identity, template, …) emits `Task hook failed`
                // (client/allocrunner/taskrunner/task_runner_hooks.go:213).
                "Driver Failure" | "Setup Failure" | "Failed Validation" | "Task hook failed" => {
                    return Some(format!("{}: {text}", e.event_type));
                }
                "Terminated" if e.details.get("oom_killed").is_some_and(|v| v == "true") => {
                    return Some(format!(
                        "task was killed for running out of memory (exit code {}, signal {})",
                        e.exit_code, e.signal
                    ));
                }
                "Terminated" if e.exit_code != 0 || e.signal != 0 => {
                    return Some(format!(
                        "task exited with code {} (signal {})",
                        e.exit_code, e.signal
                    ));
                }
                _ => {}
            }
        }
        Some(format!("allocation {}", self.client_status))
    }
}

/// `GET /v1/evaluation/:id`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Evaluation {
    #[serde(rename = "ID")]
    pub id: String,
    pub namespace: String,
    pub priority: i32,
    #[serde(rename = "Type")]
    pub eval_type: String,
    pub triggered_by: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub job_modify_index: u64,
    /// `blocked`, `pending`, `complete`, `failed` or `canceled`.
    pub status: String,
    pub status_description: String,
    /// Per task group: why placement failed (`AllocMetric`), when it did.
    #[serde(rename = "FailedTGAllocs")]
    pub failed_tg_allocs: Option<HashMap<String, serde_json::Value>>,
    pub blocked_eval: String,
    pub next_eval: String,
    pub previous_eval: String,
    pub queued_allocations: Option<HashMap<String, u64>>,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time: i64,
    pub modify_time: i64,
}

impl Evaluation {
    /// The scheduler could not place every allocation.
    pub fn placement_failed(&self) -> bool {
        self.failed_tg_allocs
            .as_ref()
            .is_some_and(|m| !m.is_empty())
    }
}

/// One event of the event stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Event {
    /// `Job`, `Allocation`, `Evaluation`, `Deployment`, `Node`, ...
    pub topic: String,
    /// `JobRegistered`, `AllocationUpdated`, `PlanResult`, `EvaluationUpdated`, ...
    #[serde(rename = "Type")]
    pub event_type: String,
    pub key: String,
    pub namespace: String,
    pub filter_keys: Option<Vec<String>>,
    pub index: u64,
    /// `{"Allocation": {...}}`, `{"Job": {...}}`, `{"Evaluation": {...}}`, ...
    pub payload: serde_json::Value,
}

impl Event {
    fn payload_as<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.payload.get(key).and_then(|v| T::deserialize(v).ok())
    }

    /// The allocation an Allocation-topic event carries.
    pub fn allocation(&self) -> Option<Allocation> {
        self.payload_as("Allocation")
    }

    /// The evaluation an Evaluation-topic event carries.
    pub fn evaluation(&self) -> Option<Evaluation> {
        self.payload_as("Evaluation")
    }

    /// The job a Job-topic event carries.
    pub fn job(&self) -> Option<JobInfo> {
        self.payload_as("Job")
    }
}

/// One NDJSON line of the event stream; `{}` (no index, no events) is a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EventFrame {
    #[serde(skip_serializing_if = "is_zero")]
    pub index: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl EventFrame {
    pub fn is_heartbeat(&self) -> bool {
        self.index == 0 && self.events.is_empty()
    }
}

/// `GET /.well-known/jwks.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One JSON Web Key (RFC 7517/7518/8037 member names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Jwk {
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
    pub kty: String,
    pub kid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// RSA modulus, base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent, base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// OKP curve (`Ed25519`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// OKP public key, base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // Upstream fixtures: `api-docs/jobs.mdx` (Dispatch Job, Stop a Job, List Job Allocations),
    // `allocations.mdx`, `operator/keyring.mdx`, `events.mdx` sample responses.
    #[test]
    fn decodes_the_documented_samples() {
        let d: DispatchResponse = serde_json::from_str(
            r#"{"Index":13,"JobCreateIndex":12,"EvalCreateIndex":13,
                "EvalID":"e5f55fac-bc69-119d-528a-1fc7ade5e02c",
                "DispatchedJobID":"example/dispatch-1485408778-81644024"}"#,
        )
        .unwrap();
        assert_eq!(d.dispatched_job_id, "example/dispatch-1485408778-81644024");
        assert_eq!(d.index, 13);

        let s: JobDeregisterResponse = serde_json::from_str(
            r#"{"EvalID":"d092fdc0-e1fd-2536-67d8-43af8ca798ac","EvalCreateIndex":35,"JobModifyIndex":34}"#,
        )
        .unwrap();
        assert_eq!(s.eval_create_index, 35);

        let allocs: Vec<Allocation> = serde_json::from_str(
            r#"[{"ID":"ed344e0a-7290-d117-41d3-a64f853ca3c2","EvalID":"a9c5effc-2242-51b2-f1fe-054ee11ab189",
                 "Name":"example.cache[0]","NodeID":"cb1f6030-a220-4f92-57dc-7baaabdc3823",
                 "PreviousAllocation":"516d2753-0513-cfc7-57ac-2d6fac18b9dc",
                 "RescheduleTracker":{"Events":[{"PrevAllocID":"516d2753","Delay":5000000000}]},
                 "JobID":"example","TaskGroup":"cache","DesiredStatus":"run","DesiredDescription":"",
                 "ClientStatus":"running","ClientDescription":"",
                 "TaskStates":{"redis":{"State":"running","Failed":false,
                   "StartedAt":"2017-05-25T23:41:23.240184101Z","FinishedAt":"0001-01-01T00:00:00Z",
                   "Events":[{"Type":"Received","Time":1495755675956923000,"FailsTask":false,
                     "RestartReason":"","SetupError":"","DriverError":"","ExitCode":0,"Signal":0,
                     "Message":"","KillTimeout":0,"KillError":"","KillReason":"","StartDelay":0,
                     "DownloadError":"","ValidationError":"","DiskLimit":0,"FailedSibling":"",
                     "VaultError":"","TaskSignalReason":"","TaskSignal":"","DriverMessage":""}]}},
                 "CreateIndex":9,"ModifyIndex":13,"CreateTime":1495755675944527600,
                 "ModifyTime":1495755675944527600}]"#,
        )
        .unwrap();
        assert_eq!(allocs[0].status(), ClientStatus::Running);
        assert!(!allocs[0].status().is_terminal());
        assert_eq!(
            allocs[0].task_states.as_ref().unwrap()["redis"].state,
            "running"
        );

        let jwks: Jwks = serde_json::from_str(
            r#"{"keys":[{"use":"sig","kty":"RSA","kid":"15a95f48-001a-8be5-5da9-d94901d022c9",
                "alg":"RS256","n":"6sImUQR6A","e":"AQAB"}]}"#,
        )
        .unwrap();
        assert_eq!(jwks.keys[0].alg.as_deref(), Some("RS256"));

        let frame: EventFrame = serde_json::from_str(
            r#"{"Index":7,"Events":[{"Topic":"Node","Type":"NodeRegistration",
                "Key":"ccc4ce56-7f0a-4124-b8b1-a4015aa82c40","Namespace":"","FilterKeys":null,
                "Index":7,"Payload":{"Node":{"ID":"ccc4ce56"}}}]}"#,
        )
        .unwrap();
        assert_eq!(frame.index, 7);
        assert!(!frame.is_heartbeat());
        let hb: EventFrame = serde_json::from_str("{}").unwrap();
        assert!(hb.is_heartbeat());
        assert_eq!(serde_json::to_string(&hb).unwrap(), "{}");
    }

    #[test]
    fn failure_summaries() {
        let mut a = Allocation {
            client_status: "failed".into(),
            ..Allocation::default()
        };
        let ev = |t: &str, f: fn(&mut TaskEvent)| {
            let mut e = TaskEvent {
                event_type: t.into(),
                ..TaskEvent::default()
            };
            f(&mut e);
            e
        };
        a.task_states = Some(HashMap::from([(
            "runtime".to_owned(),
            TaskState {
                state: "dead".into(),
                failed: true,
                events: Some(vec![
                    ev("Received", |_| {}),
                    ev("Driver Failure", |e| {
                        e.driver_error = "image not found".into()
                    }),
                    ev("Not Restarting", |_| {}),
                ]),
                ..TaskState::default()
            },
        )]));
        assert_eq!(
            a.failure_summary("runtime").unwrap(),
            "Driver Failure: image not found"
        );
        a.client_status = "lost".into();
        assert!(
            a.failure_summary("runtime")
                .unwrap()
                .starts_with("allocation lost")
        );
        // Nomad says why in DesiredDescription and leaves the client's last description.
        a.client_description = "Tasks are running".into();
        a.desired_description = "alloc is lost since its node is down".into();
        assert_eq!(
            a.failure_summary("runtime").unwrap(),
            "allocation lost: alloc is lost since its node is down"
        );
        a.client_status = "failed".into();
        let states = a.task_states.as_mut().unwrap();
        let events = states.get_mut("runtime").unwrap().events.as_mut().unwrap();
        events.push(ev("Task hook failed", |e| {
            e.message = "identity: failed to write token".into()
        }));
        assert_eq!(
            a.failure_summary("runtime").unwrap(),
            "Task hook failed: identity: failed to write token"
        );
        let states = a.task_states.as_mut().unwrap();
        let events = states.get_mut("runtime").unwrap().events.as_mut().unwrap();
        events.push(ev("Terminated", |e| {
            e.exit_code = 137;
            e.details.insert("oom_killed".into(), "true".into());
        }));
        assert!(a.oom_killed("runtime"));
        assert!(
            a.failure_summary("runtime")
                .unwrap()
                .contains("out of memory")
        );
        a.client_status = "complete".into();
        assert!(a.failure_summary("runtime").is_none());
    }
}
