//! The fake's scheduler and client: evaluations become allocations, allocations become local
//! processes, process exits become `ClientStatus`, and the task's workload identities are
//! signed into its secrets directory.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::{AllocCommand, AllocRec, Shared, alloc_event, eval_event, job_event, signer};
use crate::types::{Allocation, Evaluation, Event, TaskEvent, TaskState};

const STDERR_TAIL: usize = 64 << 10;
/// Nomad's `allocLost` description.
const ALLOC_LOST: &str = "alloc is lost since its node is down";

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 UTC with nanoseconds, as Go's `time.Time` marshals.
pub(crate) fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60,
        d.subsec_nanos()
    )
}

/// go-jose marshals a one-element audience as a string.
pub(crate) fn set_audience(claims: &mut serde_json::Value, aud: &[String]) {
    claims["aud"] = match aud {
        [] => serde_json::Value::Null,
        [one] => serde_json::json!(one),
        many => serde_json::json!(many),
    };
    if claims["aud"].is_null()
        && let Some(map) = claims.as_object_mut()
    {
        map.remove("aud");
    }
}

/// SIGTERM (or SIGKILL) to `pid`.
pub(crate) fn signal(pid: u32, kill: bool) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if let Some(pid) = rustix::process::Pid::from_raw(raw) {
        let sig = if kill {
            rustix::process::Signal::KILL
        } else {
            rustix::process::Signal::TERM
        };
        // The process may already be gone.
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// One workload identity of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdentitySpec {
    pub name: String,
    pub audience: Vec<String>,
    pub ttl: Duration,
    pub file: bool,
    pub filepath: Option<String>,
}

impl IdentitySpec {
    fn from_json(v: &serde_json::Value, default: bool) -> IdentitySpec {
        let name = v
            .get("Name")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_owned();
        let is_default = default || name == "default";
        let audience = if is_default {
            vec!["nomadproject.io".to_owned()]
        } else {
            v.get("Audience")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                // No default: Nomad only warns that such an identity is insecure
                // (nomad/structs/workload_id.go:500-511).
                .unwrap_or_default()
        };
        IdentitySpec {
            name,
            audience,
            ttl: Duration::from_nanos(
                v.get("TTL")
                    .and_then(|t| t.as_u64())
                    .filter(|_| !is_default)
                    .unwrap_or(0),
            ),
            file: v.get("File").and_then(|f| f.as_bool()).unwrap_or(false),
            filepath: v
                .get("Filepath")
                .and_then(|f| f.as_str())
                .filter(|f| !f.is_empty())
                .map(str::to_owned),
        }
    }

    /// Where Nomad writes the token: `secrets/nomad_token` for the default identity,
    /// `secrets/nomad_<name>.jwt` for a named one, or `Filepath` under the task directory.
    fn path(&self, task_dir: &Path) -> PathBuf {
        if let Some(p) = &self.filepath {
            return task_dir.join(p);
        }
        if self.name == "default" {
            task_dir.join("secrets").join("nomad_token")
        } else {
            task_dir
                .join("secrets")
                .join(format!("nomad_{}.jwt", self.name))
        }
    }
}

fn task_event(event_type: &str, f: impl FnOnce(&mut TaskEvent)) -> TaskEvent {
    let mut e = TaskEvent {
        event_type: event_type.into(),
        time: now_nanos(),
        ..TaskEvent::default()
    };
    f(&mut e);
    if e.display_message.is_empty() {
        e.display_message = e.message.clone();
    }
    e
}

fn push_event<'a>(alloc: &'a mut Allocation, task: &str, event: TaskEvent) -> &'a mut TaskState {
    let states = alloc.task_states.get_or_insert_with(Default::default);
    let state = states.entry(task.to_owned()).or_insert_with(|| TaskState {
        state: "pending".into(),
        ..TaskState::default()
    });
    let events = state.events.get_or_insert_with(Vec::new);
    events.push(event);
    // Nomad keeps the latest 10.
    if events.len() > 10 {
        let extra = events.len() - 10;
        events.drain(..extra);
    }
    state
}

/// Mutates one allocation at a new index and publishes `AllocationUpdated`.
fn update_alloc(
    shared: &Shared,
    alloc_id: &str,
    event_type: &str,
    f: impl FnOnce(&mut AllocRec),
) -> Option<Allocation> {
    shared.mutate(|st, index| {
        let Some(rec) = st.allocs.get_mut(alloc_id) else {
            return (None, Vec::new());
        };
        f(rec);
        rec.alloc.modify_index = index;
        rec.alloc.modify_time = now_nanos();
        let alloc = rec.alloc.clone();
        st.allocs_index = index;
        (Some(alloc.clone()), vec![alloc_event(event_type, &alloc)])
    })
}

/// Places the allocations of `eval_id` after the scheduler delay.
pub(crate) fn schedule(shared: Arc<Shared>, eval_id: String) {
    tokio::spawn(async move {
        tokio::time::sleep(shared.cfg.schedule_delay).await;
        let placed = place(&shared, &eval_id);
        for (alloc_id, ctl) in placed {
            let shared = shared.clone();
            tokio::spawn(async move { run_alloc(shared, alloc_id, ctl).await });
        }
    });
}

fn place(shared: &Arc<Shared>, eval_id: &str) -> Vec<(String, watch::Receiver<AllocCommand>)> {
    let node_id = shared.node_id.clone();
    let rng = ring::rand::SystemRandom::new();
    shared.mutate(|st, index| {
        let Some(mut eval) = st.evals.get(eval_id).cloned() else {
            return (Vec::new(), Vec::new());
        };
        let key = (eval.namespace.clone(), eval.job_id.clone());
        let Some(job) = st.jobs.get(&key).map(|j| j.job.clone()) else {
            eval.status = "complete".into();
            eval.modify_index = index;
            st.evals.insert(eval.id.clone(), eval.clone());
            st.evals_index = index;
            return (Vec::new(), vec![eval_event(&eval)]);
        };
        let mut events = Vec::new();
        let groups = job
            .get("TaskGroups")
            .and_then(|g| g.as_array())
            .cloned()
            .unwrap_or_default();
        let now = now_nanos();
        eval.status = "complete".into();
        eval.modify_index = index;
        eval.modify_time = now;
        if st.knobs.fail_placements > 0 {
            st.knobs.fail_placements -= 1;
            let mut failed = std::collections::HashMap::new();
            let mut queued = std::collections::HashMap::new();
            for g in &groups {
                let name = g
                    .get("Name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("")
                    .to_owned();
                let count = g.get("Count").and_then(|c| c.as_u64()).unwrap_or(1);
                failed.insert(
                    name.clone(),
                    serde_json::json!({
                        "NodesEvaluated": 1, "NodesFiltered": 0, "NodesInPool": 1,
                        "NodesAvailable": {shared.cfg.datacenter.clone(): 1},
                        "NodesExhausted": 1, "DimensionExhausted": {"memory": 1},
                        "CoalescedFailures": count.saturating_sub(1),
                    }),
                );
                queued.insert(name, count);
            }
            let blocked = Evaluation {
                id: signer::uuid(&rng),
                namespace: eval.namespace.clone(),
                priority: eval.priority,
                eval_type: eval.eval_type.clone(),
                triggered_by: "queued-allocs".into(),
                job_id: eval.job_id.clone(),
                job_modify_index: eval.job_modify_index,
                status: "blocked".into(),
                status_description: "created to place remaining allocations".into(),
                previous_eval: eval.id.clone(),
                create_index: index,
                modify_index: index,
                create_time: now,
                modify_time: now,
                ..Evaluation::default()
            };
            eval.failed_tg_allocs = Some(failed);
            eval.queued_allocations = Some(queued);
            eval.blocked_eval = blocked.id.clone();
            events.push(eval_event(&eval));
            events.push(eval_event(&blocked));
            st.evals.insert(blocked.id.clone(), blocked);
            st.evals.insert(eval.id.clone(), eval);
            st.evals_index = index;
            return (Vec::new(), events);
        }
        let mut placed = Vec::new();
        let job_id = eval.job_id.clone();
        let job_type = job
            .get("Type")
            .and_then(|t| t.as_str())
            .unwrap_or("batch")
            .to_owned();
        let mut queued = std::collections::HashMap::new();
        for g in &groups {
            let group = g
                .get("Name")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_owned();
            let count = g.get("Count").and_then(|c| c.as_u64()).unwrap_or(1);
            queued.insert(group.clone(), 0);
            let task = g
                .get("Tasks")
                .and_then(|t| t.as_array())
                .and_then(|t| t.first())
                .cloned()
                .unwrap_or_default();
            let task_name = task
                .get("Name")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_owned();
            let mut identities = Vec::new();
            if let Some(def) = task.get("Identity").filter(|v| !v.is_null()) {
                identities.push(IdentitySpec::from_json(def, true));
            }
            for id in task
                .get("Identities")
                .and_then(|i| i.as_array())
                .into_iter()
                .flatten()
            {
                identities.push(IdentitySpec::from_json(id, false));
            }
            for i in 0..count {
                let id = signer::uuid(&rng);
                let mut alloc = Allocation {
                    id: id.clone(),
                    eval_id: eval.id.clone(),
                    name: format!("{job_id}.{group}[{i}]"),
                    namespace: eval.namespace.clone(),
                    node_id: node_id.clone(),
                    node_name: "fake-node-1".into(),
                    job_id: job_id.clone(),
                    job_type: job_type.clone(),
                    task_group: group.clone(),
                    desired_status: "run".into(),
                    client_status: "pending".into(),
                    create_index: index,
                    modify_index: index,
                    alloc_modify_index: index,
                    create_time: now,
                    modify_time: now,
                    ..Allocation::default()
                };
                push_event(
                    &mut alloc,
                    &task_name,
                    task_event("Received", |e| {
                        e.message = "Task received by client".into();
                    }),
                );
                let (tx, rx) = watch::channel(AllocCommand::Run);
                events.push(alloc_event("PlanResult", &alloc));
                st.allocs.insert(
                    id.clone(),
                    AllocRec {
                        alloc,
                        job: job.clone(),
                        control: Some(tx),
                        task_dir: None,
                        identities: identities.clone(),
                        task_name: task_name.clone(),
                        group: group.clone(),
                        stderr: Arc::new(Mutex::new(Vec::new())),
                        pid: None,
                    },
                );
                placed.push((id, rx));
            }
        }
        eval.queued_allocations = Some(queued);
        events.push(eval_event(&eval));
        st.evals.insert(eval.id.clone(), eval);
        st.evals_index = index;
        st.allocs_index = index;
        if let Some(rec) = st.jobs.get_mut(&key) {
            rec.job["Status"] = "running".into();
            rec.job["ModifyIndex"] = index.into();
            events.push(job_event("JobRegistered", &rec.job));
            st.jobs_index = index;
        }
        (placed, events)
    })
}

/// What Nomad's `os.WriteFile` does (helper/users/lookup.go:80-103): open with truncation,
/// then write; not atomic. The write goes in two halves with `pause` after the first, so a
/// test reader can catch the file empty or half-written.
fn write_in_place(path: &Path, bytes: &[u8], pause: Duration) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .open(path)?;
    let (first, second) = bytes.split_at(bytes.len() / 2);
    if !pause.is_zero() {
        std::thread::sleep(pause);
    }
    f.write_all(first)?;
    f.flush()?;
    if !pause.is_zero() {
        std::thread::sleep(pause);
    }
    f.write_all(second)
}

/// Signs every identity of `alloc_id` and writes the files; returns how many were written.
fn write_identities(shared: &Shared, alloc_id: &str, pause: Duration) -> std::io::Result<usize> {
    let (alloc, job, task_dir, task, group, identities) = {
        let st = shared.lock();
        let Some(rec) = st.allocs.get(alloc_id) else {
            return Ok(0);
        };
        let Some(dir) = rec.task_dir.clone() else {
            return Ok(0);
        };
        (
            rec.alloc.clone(),
            rec.job.clone(),
            dir,
            rec.task_name.clone(),
            rec.group.clone(),
            rec.identities.clone(),
        )
    };
    let get = |k: &str| {
        job.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let parent = get("ParentID");
    // GetIDforWorkloadIdentity: dispatched children use the parent's ID.
    let claim_job = if parent.is_empty() { get("ID") } else { parent };
    let region = Some(get("Region"))
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| shared.cfg.region.clone());
    let mut written = 0;
    for id in identities.iter().filter(|i| i.file) {
        let now = unix_now();
        let mut claims = serde_json::json!({
            "nomad_namespace": alloc.namespace,
            "nomad_job_id": claim_job,
            "nomad_allocation_id": alloc.id,
            "nomad_task": task,
            // The job part is the parent's ID for dispatched children since 1.8.4/1.9.0
            // (nomad/structs/identity.go:170-185).
            "sub": format!("{region}:{}:{claim_job}:{group}:{task}:{}", alloc.namespace, id.name),
            "iat": now,
            "nbf": now,
            "jti": signer::uuid(shared.signer().rng()),
        });
        set_audience(&mut claims, &id.audience);
        if !id.ttl.is_zero() {
            claims["exp"] = serde_json::json!(now + id.ttl.as_secs().max(1));
        }
        let token = shared
            .signer()
            .sign(&claims)
            .map_err(std::io::Error::other)?;
        write_in_place(&id.path(&task_dir), token.as_bytes(), pause)?;
        written += 1;
    }
    Ok(written)
}

pub(crate) fn rotate_identities(shared: &Shared) -> usize {
    let live: Vec<String> = shared
        .lock()
        .allocs
        .iter()
        .filter(|(_, r)| r.task_dir.is_some() && !r.alloc.status().is_terminal())
        .map(|(id, _)| id.clone())
        .collect();
    live.iter()
        .map(|id| write_identities(shared, id, shared.cfg.token_write_pause).unwrap_or(0))
        .sum()
}

/// `${NAME}` → value for every `NAME` in `vars`; unknown references stay as they are (Nomad
/// leaves them for runtime interpolation).
fn interpolate(value: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => {
                        out.push_str("${");
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    kill_timeout: Duration,
    task_dir: PathBuf,
}

/// The task's environment as Nomad's taskenv builds it (the subset that matters here).
fn build_launch(shared: &Shared, rec: &AllocRec, root: &Path) -> Launch {
    let job = &rec.job;
    let get = |k: &str| {
        job.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let task = job
        .get("TaskGroups")
        .and_then(|g| g.as_array())
        .and_then(|gs| {
            gs.iter()
                .find(|g| g.get("Name").and_then(|n| n.as_str()) == Some(rec.group.as_str()))
        })
        .and_then(|g| g.get("Tasks"))
        .and_then(|t| t.as_array())
        .and_then(|t| {
            t.iter()
                .find(|t| t.get("Name").and_then(|n| n.as_str()) == Some(rec.task_name.as_str()))
        })
        .cloned()
        .unwrap_or_default();
    let task_dir = root.join(&rec.task_name);
    let mut vars = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        vars.insert(k.to_owned(), v);
    };
    set("NOMAD_ALLOC_DIR", root.join("alloc").display().to_string());
    set(
        "NOMAD_TASK_DIR",
        task_dir.join("local").display().to_string(),
    );
    set(
        "NOMAD_SECRETS_DIR",
        task_dir.join("secrets").display().to_string(),
    );
    set("NOMAD_ALLOC_ID", rec.alloc.id.clone());
    set(
        "NOMAD_SHORT_ALLOC_ID",
        rec.alloc.id.chars().take(8).collect(),
    );
    set("NOMAD_ALLOC_NAME", rec.alloc.name.clone());
    set("NOMAD_ALLOC_INDEX", "0".into());
    set("NOMAD_GROUP_NAME", rec.group.clone());
    set("NOMAD_TASK_NAME", rec.task_name.clone());
    set("NOMAD_JOB_ID", get("ID"));
    set("NOMAD_JOB_NAME", get("Name"));
    set("NOMAD_JOB_PARENT_ID", get("ParentID"));
    set("NOMAD_NAMESPACE", rec.alloc.namespace.clone());
    set("NOMAD_REGION", shared.cfg.region.clone());
    set("NOMAD_DC", shared.cfg.datacenter.clone());
    if let Some(res) = task.get("Resources") {
        for (k, field) in [
            ("NOMAD_CPU_LIMIT", "CPU"),
            ("NOMAD_MEMORY_LIMIT", "MemoryMB"),
            ("NOMAD_MEMORY_MAX_LIMIT", "MemoryMaxMB"),
        ] {
            if let Some(v) = res.get(field).and_then(|v| v.as_u64()) {
                set(k, v.to_string());
            }
        }
    }
    if let Some(meta) = job.get("Meta").and_then(|m| m.as_object()) {
        for (k, v) in meta {
            let v = v.as_str().unwrap_or_default().to_owned();
            set(&format!("NOMAD_META_{k}"), v.clone());
            set(&format!("NOMAD_META_{}", k.to_uppercase()), v);
        }
    }
    let mut env = vars.clone();
    if let Some(task_env) = task.get("Env").and_then(|e| e.as_object()) {
        for (k, v) in task_env {
            env.insert(
                k.clone(),
                interpolate(v.as_str().unwrap_or_default(), &vars),
            );
        }
    }
    for (k, v) in &shared.cfg.extra_env {
        env.insert(k.clone(), v.clone());
    }
    let config = task.get("Config").cloned().unwrap_or_default();
    let strings = |key: &str| -> Vec<String> {
        config
            .get(key)
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(|s| interpolate(s, &vars)))
                    .collect()
            })
            .unwrap_or_default()
    };
    // The docker image's entrypoint is the runtime; `args` are passed as the driver would.
    // (`command` would replace the entrypoint; the fake has only one program to run.)
    let args = strings("args");
    let program = shared.cfg.runtime_binary.clone();
    let kill_timeout = Duration::from_nanos(
        task.get("KillTimeout")
            .and_then(|k| k.as_u64())
            .unwrap_or(5_000_000_000),
    );
    Launch {
        program,
        args,
        env,
        kill_timeout,
        task_dir,
    }
}

fn finish_job_if_done(st: &mut super::State, job_key: &(String, String), index: u64) -> Vec<Event> {
    let all_terminal = st
        .allocs
        .values()
        .filter(|r| r.alloc.namespace == job_key.0 && r.alloc.job_id == job_key.1)
        .all(|r| r.alloc.status().is_terminal());
    match st.jobs.get_mut(job_key) {
        Some(rec) if all_terminal => {
            rec.job["Status"] = "dead".into();
            rec.job["ModifyIndex"] = index.into();
            st.jobs_index = index;
            vec![job_event("JobRegistered", &rec.job)]
        }
        Some(_) => Vec::new(),
        None => {
            // Purged job: garbage-collect its terminal allocations at once.
            st.allocs.retain(|_, r| {
                !(r.alloc.namespace == job_key.0
                    && r.alloc.job_id == job_key.1
                    && r.alloc.status().is_terminal())
            });
            Vec::new()
        }
    }
}

/// Marks the allocation terminal with `client_status` and updates its job.
fn terminate(shared: &Shared, alloc_id: &str, client_status: &str, f: impl FnOnce(&mut AllocRec)) {
    shared.mutate(|st, index| {
        let Some(rec) = st.allocs.get_mut(alloc_id) else {
            return ((), Vec::new());
        };
        f(rec);
        rec.alloc.client_status = client_status.into();
        rec.alloc.modify_index = index;
        rec.alloc.modify_time = now_nanos();
        rec.pid = None;
        rec.control = None;
        rec.task_dir = None;
        let alloc = rec.alloc.clone();
        let key = (alloc.namespace.clone(), alloc.job_id.clone());
        st.allocs_index = index;
        let mut events = vec![alloc_event("AllocationUpdated", &alloc)];
        events.extend(finish_job_if_done(st, &key, index));
        ((), events)
    });
}

/// The allocation is lost: `lost`, desired `stop` with Nomad's reason in
/// `DesiredDescription` only (nomad/structs/plan.go:155-181, scheduler/structs/const.go:22).
/// With `replace`, a replacement is placed in the same plan (one index), as Nomad's reconciler
/// does for lost allocations whatever the reschedule policy
/// (scheduler/reconciler/reconcile_cluster.go:933-943), unless the job is stopped or gone.
fn lose(shared: &Arc<Shared>, alloc_id: &str, replace: bool) {
    let placed = shared.mutate(|st, index| {
        let Some(rec) = st.allocs.get_mut(alloc_id) else {
            return (None, Vec::new());
        };
        // The node is gone, so nothing updates the task states any more.
        rec.alloc.client_status = "lost".into();
        rec.alloc.desired_status = "stop".into();
        rec.alloc.desired_description = ALLOC_LOST.into();
        rec.alloc.modify_index = index;
        rec.alloc.modify_time = now_nanos();
        rec.pid = None;
        rec.control = None;
        rec.task_dir = None;
        let lost = rec.alloc.clone();
        let key = (lost.namespace.clone(), lost.job_id.clone());
        st.allocs_index = index;
        let mut events = vec![alloc_event("AllocationUpdated", &lost)];
        let live_job = st
            .jobs
            .get(&key)
            .is_some_and(|j| j.job["Stop"].as_bool() != Some(true));
        if !(replace && live_job) {
            events.extend(finish_job_if_done(st, &key, index));
            return (None, events);
        }
        let Some(template) = st.allocs.get(alloc_id) else {
            return (None, events);
        };
        let rng = ring::rand::SystemRandom::new();
        let now = now_nanos();
        let eval = Evaluation {
            id: signer::uuid(&rng),
            namespace: lost.namespace.clone(),
            priority: 50,
            eval_type: lost.job_type.clone(),
            triggered_by: "node-update".into(),
            job_id: lost.job_id.clone(),
            status: "complete".into(),
            create_index: index,
            modify_index: index,
            create_time: now,
            modify_time: now,
            ..Evaluation::default()
        };
        let id = signer::uuid(&rng);
        let mut alloc = Allocation {
            id: id.clone(),
            eval_id: eval.id.clone(),
            previous_allocation: lost.id.clone(),
            desired_status: "run".into(),
            desired_description: String::new(),
            client_status: "pending".into(),
            client_description: String::new(),
            task_states: None,
            followup_eval_id: String::new(),
            job: None,
            create_index: index,
            modify_index: index,
            alloc_modify_index: index,
            create_time: now,
            modify_time: now,
            ..lost.clone()
        };
        push_event(
            &mut alloc,
            &template.task_name,
            task_event("Received", |e| e.message = "Task received by client".into()),
        );
        let (tx, rx) = watch::channel(AllocCommand::Run);
        let rec = AllocRec {
            alloc: alloc.clone(),
            job: template.job.clone(),
            control: Some(tx),
            task_dir: None,
            identities: template.identities.clone(),
            task_name: template.task_name.clone(),
            group: template.group.clone(),
            stderr: Arc::new(Mutex::new(Vec::new())),
            pid: None,
        };
        events.push(eval_event(&eval));
        events.push(alloc_event("PlanResult", &alloc));
        st.evals.insert(eval.id.clone(), eval);
        st.evals_index = index;
        st.allocs.insert(id.clone(), rec);
        (Some((id, rx)), events)
    });
    if let Some((id, rx)) = placed {
        let shared = shared.clone();
        tokio::spawn(async move { run_alloc(shared, id, rx).await });
    }
}

fn mark_dead(rec: &mut AllocRec, failed: bool) {
    let task = rec.task_name.clone();
    if let Some(state) = rec
        .alloc
        .task_states
        .as_mut()
        .and_then(|s| s.get_mut(&task))
    {
        state.state = "dead".into();
        state.failed = failed;
        state.finished_at = Some(rfc3339_now());
    }
}

async fn run_alloc(shared: Arc<Shared>, alloc_id: String, mut ctl: watch::Receiver<AllocCommand>) {
    tokio::time::sleep(shared.cfg.start_delay).await;
    let cmd = *ctl.borrow();
    match cmd {
        AllocCommand::Run => {}
        AllocCommand::Stop => {
            terminate(&shared, &alloc_id, "complete", |rec| mark_dead(rec, false));
            return;
        }
        AllocCommand::Lose | AllocCommand::Kill => {
            lose(&shared, &alloc_id, cmd == AllocCommand::Lose);
            return;
        }
    }
    // Task directory: <alloc>/alloc, <alloc>/<task>/{local,secrets}.
    let root = match tempfile::Builder::new()
        .prefix("fake-nomad-alloc-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            fail_to_start(
                &shared,
                &alloc_id,
                &format!("cannot create task directory: {e}"),
            );
            return;
        }
    };
    let launch = {
        let st = shared.lock();
        let Some(rec) = st.allocs.get(&alloc_id) else {
            return;
        };
        build_launch(&shared, rec, root.path())
    };
    let setup = std::fs::create_dir_all(root.path().join("alloc"))
        .and_then(|()| std::fs::create_dir_all(launch.task_dir.join("local")))
        .and_then(|()| std::fs::create_dir_all(launch.task_dir.join("secrets")));
    if let Err(e) = setup {
        fail_to_start(
            &shared,
            &alloc_id,
            &format!("cannot create task directory: {e}"),
        );
        return;
    }
    let task_name = update_alloc(&shared, &alloc_id, "AllocationUpdated", |rec| {
        rec.task_dir = Some(launch.task_dir.clone());
        let task = rec.task_name.clone();
        push_event(
            &mut rec.alloc,
            &task,
            task_event("Task Setup", |e| {
                e.message = "Building Task Directory".into();
                e.details
                    .insert("message".into(), "Building Task Directory".into());
            }),
        );
    })
    .map(|_| ());
    if task_name.is_none() {
        return;
    }
    if let Err(e) = write_identities(&shared, &alloc_id, Duration::ZERO) {
        fail_to_start(
            &shared,
            &alloc_id,
            &format!("failed to write workload identity: {e}"),
        );
        return;
    }
    let injected = shared.lock().knobs.fail_allocs.pop_front();
    if let Some(driver_error) = injected {
        fail_to_start(&shared, &alloc_id, &driver_error);
        return;
    }
    let mut cmd = tokio::process::Command::new(&launch.program);
    cmd.args(&launch.args)
        .env_clear()
        .envs(&launch.env)
        .current_dir(&launch.task_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            fail_to_start(
                &shared,
                &alloc_id,
                &format!("failed to start task: {}: {e}", launch.program.display()),
            );
            return;
        }
    };
    let pid = child.id();
    let stderr_buf = shared
        .lock()
        .allocs
        .get(&alloc_id)
        .map(|r| r.stderr.clone());
    if let (Some(mut err), Some(buf)) = (child.stderr.take(), stderr_buf) {
        tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                b.extend_from_slice(&chunk[..n]);
                if b.len() > STDERR_TAIL {
                    let extra = b.len() - STDERR_TAIL;
                    b.drain(..extra);
                }
            }
        });
    }
    update_alloc(&shared, &alloc_id, "AllocationUpdated", |rec| {
        rec.pid = pid;
        rec.alloc.client_status = "running".into();
        let task = rec.task_name.clone();
        let state = push_event(
            &mut rec.alloc,
            &task,
            task_event("Started", |e| e.message = "Task started by client".into()),
        );
        state.state = "running".into();
        state.started_at = Some(rfc3339_now());
    });

    // Run until exit, stop or loss.
    let mut killing = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            changed = ctl.changed(), if !killing => {
                let cmd = if changed.is_err() { AllocCommand::Kill } else { *ctl.borrow() };
                match cmd {
                    AllocCommand::Run => {}
                    AllocCommand::Lose | AllocCommand::Kill => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        lose(&shared, &alloc_id, cmd == AllocCommand::Lose);
                        return;
                    }
                    AllocCommand::Stop => {
                        killing = true;
                        let kt = launch.kill_timeout;
                        update_alloc(&shared, &alloc_id, "AllocationUpdated", |rec| {
                            let task = rec.task_name.clone();
                            push_event(&mut rec.alloc, &task, task_event("Killing", |e| {
                                e.kill_timeout = i64::try_from(kt.as_nanos()).unwrap_or(i64::MAX);
                                e.message = format!(
                                    "Sent interrupt. Waiting {}s before force killing",
                                    kt.as_secs()
                                );
                            }));
                        });
                        if let Some(pid) = pid {
                            signal(pid, false);
                        }
                        match tokio::time::timeout(kt, child.wait()).await {
                            Ok(status) => break status,
                            Err(_) => {
                                let _ = child.start_kill();
                                break child.wait().await;
                            }
                        }
                    }
                }
            }
        }
    };
    let (code, sig) = match &status {
        Ok(s) => (s.code().unwrap_or(0), s.signal().unwrap_or(0)),
        Err(_) => (0, 0),
    };
    let stopped = killing || *ctl.borrow() == AllocCommand::Stop;
    let failed = !stopped && (code != 0 || sig != 0);
    terminate(
        &shared,
        &alloc_id,
        if failed { "failed" } else { "complete" },
        |rec| {
            let task = rec.task_name.clone();
            push_event(
                &mut rec.alloc,
                &task,
                task_event("Terminated", |e| {
                    e.exit_code = code;
                    e.signal = sig;
                    e.message = format!("Exit Code: {code}");
                    e.details.insert("exit_code".into(), code.to_string());
                    e.details.insert("signal".into(), sig.to_string());
                }),
            );
            if stopped {
                push_event(
                    &mut rec.alloc,
                    &task,
                    task_event("Killed", |e| e.message = "Task successfully killed".into()),
                );
            } else if failed {
                push_event(
                    &mut rec.alloc,
                    &task,
                    task_event("Not Restarting", |e| {
                        e.fails_task = true;
                        e.restart_reason = "Policy allows no restarts".into();
                        e.message = "Policy allows no restarts".into();
                    }),
                );
            }
            mark_dead(rec, failed);
        },
    );
    drop(root);
}

fn fail_to_start(shared: &Shared, alloc_id: &str, driver_error: &str) {
    terminate(shared, alloc_id, "failed", |rec| {
        let task = rec.task_name.clone();
        push_event(
            &mut rec.alloc,
            &task,
            task_event("Driver Failure", |e| {
                e.fails_task = true;
                e.driver_error = driver_error.to_owned();
                e.message = driver_error.to_owned();
            }),
        );
        push_event(
            &mut rec.alloc,
            &task,
            task_event("Not Restarting", |e| {
                e.fails_task = true;
                e.restart_reason = "Error was unrecoverable".into();
                e.message = "Error was unrecoverable".into();
            }),
        );
        mark_dead(rec, true);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_leaves_unknown_references() {
        let vars = BTreeMap::from([("NOMAD_SECRETS_DIR".to_owned(), "/s".to_owned())]);
        assert_eq!(
            interpolate("${NOMAD_SECRETS_DIR}/nomad_x.jwt", &vars),
            "/s/nomad_x.jwt"
        );
        assert_eq!(interpolate("${attr.x} ${", &vars), "${attr.x} ${");
        assert_eq!(interpolate("plain", &vars), "plain");
    }

    #[test]
    fn timestamps_look_like_go() {
        let t = rfc3339_now();
        assert_eq!(t.len(), "2026-11-27T10:32:00.123456789Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
