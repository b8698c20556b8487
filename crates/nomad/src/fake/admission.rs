//! The fake's job admission: the part of Nomad's canonicalization and validation that a job
//! like the runtime job can trip, answered with Nomad's texts, so that the fake refuses what a
//! real cluster refuses. (Issue 10: the fake used to store any job, which hid a job every Nomad
//! ≥ 1.7 rejects.) Written from Nomad's source, read at hashicorp/nomad `aa026cc99c`
//! (the audit is `shared/reference/nomad-fidelity.md`); behaviour, not code, is reproduced.
//!
//! The path a `PUT /v1/jobs` takes in Nomad, and here:
//! 1. `api.Job.Canonicalize` on the HTTP server fills absent fields with defaults
//!    (command/agent/job_endpoint.go:1128-1129): ephemeral disk 300 MB (api/tasks.go:366-383),
//!    log rotation 10 files × 10 MB (api/tasks.go:729-739, 813-816), CPU 100 / memory 300
//!    (api/resources.go:33-70), restart and reschedule policies merged over the job type's
//!    defaults (api/tasks.go:260-304, 605-662), payload `""` → `optional`
//!    (nomad/structs/structs.go:6101-6105), the default identity moved out of `Identities`
//!    with its audience forced to `nomadproject.io` (structs.go:8170-8190,
//!    workload_id.go:432-449).
//! 2. `Job.Validate` and the admission validators (nomad/job_endpoint_hooks.go:490-555); any
//!    error is a plain error, so HTTP 500 with the go-multierror text
//!    (command/agent/http.go:761-790).
//! 3. Warnings: memory oversubscription disabled while a task sets `MemoryMaxMB`
//!    (job_endpoint_hooks.go:617-645), merged by `helper.MergeMultierrorWarnings`
//!    (helper/warning.go) into `JobRegisterResponse.Warnings`.
//!
//! Rules checked (with the Nomad source of each): job type, datacenters, task groups
//! (structs.go:4736-4880); parameterized only for batch/sysbatch, payload values and disjoint
//! meta lists (structs.go:4867-4877, 6084-6099); task-group count, tasks, restart policy
//! (structs.go:6565-6586), reschedule policy when enabled (structs.go:6638-6700), ephemeral
//! disk ≥ 10 MB (structs.go:10399-10403); per task: resources minimums and `MemoryMaxMB ≥
//! MemoryMB` (structs.go:2420-2470, 2598-2607), log storage below the disk even with logs
//! disabled (structs.go:7863-7883, 8251-8256), identity name pattern, change mode, and no TTL
//! on the default identity (workload_id.go:452-498, structs.go:8398-8413). Not checked:
//! everything a runtime-like job cannot contain (services, networks, volumes, constraints,
//! Vault, Consul, templates, scaling, multiregion), and the exponential/fibonacci reschedule
//! cross-checks.

use serde_json::{Map, Value, json};

const SECOND: i64 = 1_000_000_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;

/// go-multierror's `ListFormatFunc`: how every validation error reaches the HTTP body.
pub(crate) fn multierror(errors: &[String]) -> String {
    match errors {
        [one] => format!("1 error occurred:\n\t* {one}\n\n"),
        many => {
            let points: Vec<String> = many.iter().map(|e| format!("* {e}")).collect();
            format!(
                "{} errors occurred:\n\t{}\n\n",
                many.len(),
                points.join("\n\t")
            )
        }
    }
}

/// `helper.MergeMultierrorWarnings` (helper/warning.go): `""` when there is none.
pub(crate) fn warnings_text(warnings: &[String]) -> String {
    match warnings {
        [] => String::new(),
        ws => {
            let mut out = if ws.len() == 1 {
                "1 warning:\n".to_owned()
            } else {
                format!("{} warnings:\n", ws.len())
            };
            for w in ws {
                out.push_str(&format!("\n* {}", w.trim()));
            }
            out
        }
    }
}

/// Go's `time.Duration.String()` (`24h0m0s`, `15s`, `1.5s`, `500ms`), as Nomad's messages
/// print durations.
pub(crate) fn go_duration(ns: i64) -> String {
    fn frac(v: u64, div: u64) -> String {
        let (whole, rest) = (v / div, v % div);
        if rest == 0 {
            return whole.to_string();
        }
        let width = div.ilog10() as usize;
        let digits = format!("{rest:0width$}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }
    if ns == 0 {
        return "0s".into();
    }
    let u = ns.unsigned_abs();
    let text = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", frac(u, 1_000))
    } else if u < SECOND as u64 {
        format!("{}ms", frac(u, 1_000_000))
    } else {
        let (h, rest) = (u / HOUR as u64, u % HOUR as u64);
        let (m, s) = (rest / MINUTE as u64, rest % MINUTE as u64);
        let secs = format!("{}s", frac(s, SECOND as u64));
        if h > 0 {
            format!("{h}h{m}m{secs}")
        } else if m > 0 {
            format!("{m}m{secs}")
        } else {
            secs
        }
    };
    if ns < 0 { format!("-{text}") } else { text }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn int_of(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or_default()
}

fn absent(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key).is_none_or(Value::is_null)
}

/// Sets each `(key, default)` that `obj` lacks (a JSON `null` counts as absent, like a nil
/// pointer in Nomad's `api` structs).
fn fill(v: &mut Value, defaults: &[(&str, Value)]) {
    if !v.is_object() {
        *v = json!({});
    }
    if let Some(obj) = v.as_object_mut() {
        for (k, d) in defaults {
            if absent(obj, k) {
                obj.insert((*k).to_owned(), d.clone());
            }
        }
    }
}

/// Step 1: the defaults `api.Job.Canonicalize` and `structs.Job.Canonicalize` fill in (the
/// ones validation depends on, plus the identifying fields the fake stores).
pub(crate) fn canonicalize(job: &mut Value, namespace: &str, region: &str) {
    let Some(obj) = job.as_object_mut() else {
        return;
    };
    let id = obj
        .get("ID")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut default = |k: &str, v: Value| {
        if obj.get(k).is_none_or(|x| x.is_null() || x == "") {
            obj.insert(k.to_owned(), v);
        }
    };
    default("Name", id.into());
    default("Namespace", namespace.into());
    default("Region", region.into());
    default("Type", "service".into());
    default("Datacenters", json!(["*"]));
    default("Priority", 50.into());
    default("ParentID", "".into());
    default("Payload", Value::Null);
    default("Meta", Value::Null);
    obj.insert("Stop".into(), false.into());
    if obj.get("Dispatched").is_none() {
        obj.insert("Dispatched".into(), false.into());
    }
    let job_type = str_of(job, "Type").to_owned();
    if let Some(p) = job
        .get_mut("ParameterizedJob")
        .filter(|p| p.is_object())
        .and_then(Value::as_object_mut)
        && p.get("Payload").is_none_or(|x| x.is_null() || x == "")
    {
        p.insert("Payload".into(), "optional".into());
    }
    let Some(groups) = job.get_mut("TaskGroups").and_then(Value::as_array_mut) else {
        return;
    };
    for g in groups {
        fill(g, &[("Count", 1.into())]);
        let mut disk = g
            .get("EphemeralDisk")
            .filter(|d| d.is_object())
            .cloned()
            .unwrap_or_else(|| json!({}));
        fill(
            &mut disk,
            &[
                ("SizeMB", 300.into()),
                ("Sticky", false.into()),
                ("Migrate", false.into()),
            ],
        );
        g["EphemeralDisk"] = disk;
        let (attempts, interval) = if job_type == "batch" {
            (3, 24 * HOUR)
        } else {
            (2, 30 * MINUTE)
        };
        let mut restart = g
            .get("RestartPolicy")
            .filter(|r| r.is_object())
            .cloned()
            .unwrap_or_else(|| json!({}));
        fill(
            &mut restart,
            &[
                ("Attempts", attempts.into()),
                ("Interval", interval.into()),
                ("Delay", (15 * SECOND).into()),
                ("Mode", "fail".into()),
                ("RenderTemplates", false.into()),
            ],
        );
        g["RestartPolicy"] = restart;
        if job_type != "system" && job_type != "sysbatch" {
            let defaults: [(&str, Value); 6] = match job_type.as_str() {
                "service" => [
                    ("Attempts", 0.into()),
                    ("Interval", 0.into()),
                    ("Delay", (30 * SECOND).into()),
                    ("DelayFunction", "exponential".into()),
                    ("MaxDelay", HOUR.into()),
                    ("Unlimited", true.into()),
                ],
                "batch" => [
                    ("Attempts", 1.into()),
                    ("Interval", (24 * HOUR).into()),
                    ("Delay", (5 * SECOND).into()),
                    ("DelayFunction", "constant".into()),
                    ("MaxDelay", 0.into()),
                    ("Unlimited", false.into()),
                ],
                _ => [
                    ("Attempts", 0.into()),
                    ("Interval", 0.into()),
                    ("Delay", 0.into()),
                    ("DelayFunction", "".into()),
                    ("MaxDelay", 0.into()),
                    ("Unlimited", false.into()),
                ],
            };
            let mut resched = g
                .get("ReschedulePolicy")
                .filter(|r| r.is_object())
                .cloned()
                .unwrap_or_else(|| json!({}));
            fill(&mut resched, &defaults);
            g["ReschedulePolicy"] = resched;
        }
        let Some(tasks) = g.get_mut("Tasks").and_then(Value::as_array_mut) else {
            continue;
        };
        for t in tasks {
            canonicalize_task(t);
        }
    }
}

fn canonicalize_task(t: &mut Value) {
    fill(t, &[("KillTimeout", (5 * SECOND).into())]);
    let mut resources = t
        .get("Resources")
        .filter(|r| r.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    fill(
        &mut resources,
        &[("CPU", 100.into()), ("MemoryMB", 300.into())],
    );
    t["Resources"] = resources;
    let mut logs = t
        .get("LogConfig")
        .filter(|l| l.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    fill(
        &mut logs,
        &[
            ("MaxFiles", 10.into()),
            ("MaxFileSizeMB", 10.into()),
            ("Disabled", false.into()),
        ],
    );
    t["LogConfig"] = logs;
    // Named identities stay; one named "" or "default" becomes the default identity.
    let mut identities: Vec<Value> = t
        .get("Identities")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut default = t.get("Identity").filter(|i| i.is_object()).cloned();
    for wid in &mut identities {
        if str_of(wid, "Name").is_empty() {
            wid["Name"] = "default".into();
        }
    }
    if let Some(pos) = identities
        .iter()
        .position(|w| str_of(w, "Name") == "default")
    {
        default = Some(identities.remove(pos));
    }
    let mut default = default.unwrap_or_else(|| json!({"Env": false, "File": false}));
    if str_of(&default, "Name").is_empty() {
        default["Name"] = "default".into();
    }
    default["Audience"] = json!(["nomadproject.io"]);
    t["Identity"] = default;
    if !identities.is_empty() {
        t["Identities"] = Value::Array(identities);
    }
}

/// Step 2 and 3 for a canonicalized job: `Err` with the HTTP 500 body Nomad would send, or the
/// warnings to return.
pub(crate) fn validate(job: &Value, memory_oversubscription: bool) -> Result<Vec<String>, String> {
    let errors = job_errors(job);
    if !errors.is_empty() {
        return Err(multierror(&errors));
    }
    let mut warnings = Vec::new();
    if !memory_oversubscription {
        for g in groups(job) {
            for t in tasks(g) {
                let max = t
                    .get("Resources")
                    .map(|r| int_of(r, "MemoryMaxMB"))
                    .unwrap_or(0);
                if max != 0 {
                    warnings.push(format!(
                        "Memory oversubscription is not enabled; Task \"{}.{}\" memory_max value \
                         will be ignored. Update the Scheduler Configuration to allow \
                         oversubscription.",
                        str_of(g, "Name"),
                        str_of(t, "Name")
                    ));
                }
            }
        }
    }
    Ok(warnings)
}

fn groups(job: &Value) -> &[Value] {
    job.get("TaskGroups")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn tasks(group: &Value) -> &[Value] {
    group
        .get("Tasks")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// `Job.Validate`'s list (already flattened the way `multierror.Append` flattens it on its
/// way through the admission validators).
fn job_errors(job: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    let job_type = str_of(job, "Type");
    match job_type {
        "core" | "service" | "batch" | "system" | "sysbatch" => {}
        "" => errs.push("Missing job type".to_owned()),
        other => errs.push(format!("Invalid job type: {other:?}")),
    }
    match job.get("Datacenters").and_then(Value::as_array) {
        None => errs.push("Missing job datacenters".into()),
        Some(dcs) if dcs.is_empty() => errs.push("Missing job datacenters".into()),
        Some(dcs) => {
            if dcs.iter().any(|d| d.as_str().is_none_or(str::is_empty)) {
                errs.push("Job datacenter must be non-empty string".into());
            }
        }
    }
    if groups(job).is_empty() {
        errs.push("Missing job task groups".into());
    }
    for g in groups(job) {
        let tg = group_errors(g, job_type);
        if !tg.is_empty() {
            errs.push(format!(
                "Task group {} validation failed: {}",
                str_of(g, "Name"),
                multierror(&tg)
            ));
        }
    }
    if let Some(p) = job.get("ParameterizedJob").filter(|p| p.is_object()) {
        if job_type != "batch" && job_type != "sysbatch" {
            errs.push(
                "Parameterized job can only be used with \"batch\" or \"sysbatch\" scheduler"
                    .into(),
            );
        }
        let mut perrs = Vec::new();
        let payload = str_of(p, "Payload");
        if !matches!(payload, "optional" | "required" | "forbidden") {
            perrs.push(format!("Unknown payload requirement: {payload:?}"));
        }
        let list = |k: &str| -> Vec<String> {
            p.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let optional = list("MetaOptional");
        let both: Vec<String> = list("MetaRequired")
            .into_iter()
            .filter(|k| optional.contains(k))
            .collect();
        if !both.is_empty() {
            perrs.push(format!(
                "Required and optional meta keys should be disjoint. Following keys exist in \
                 both: [{}]",
                both.join(" ")
            ));
        }
        if !perrs.is_empty() {
            errs.push(multierror(&perrs));
        }
    }
    errs
}

/// `TaskGroup.Validate` (errors of sub-validators flattened by `multierror.Append`).
fn group_errors(g: &Value, job_type: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let name = str_of(g, "Name");
    if name.is_empty() {
        errs.push("Missing task group name".to_owned());
    }
    if int_of(g, "Count") < 0 {
        errs.push("Task group count can't be negative".into());
    }
    if tasks(g).is_empty() {
        errs.push("Missing tasks for task group".into());
    }
    match g.get("RestartPolicy").filter(|r| r.is_object()) {
        Some(r) => errs.extend(restart_errors(r)),
        None => errs.push(format!("Task Group {name} should have a restart policy")),
    }
    if job_type == "system" || job_type == "sysbatch" {
        if g.get("ReschedulePolicy").is_some_and(|r| !r.is_null()) {
            errs.push("System or sysbatch jobs should not have a reschedule policy".into());
        }
    } else if let Some(r) = g.get("ReschedulePolicy").filter(|r| r.is_object()) {
        errs.extend(reschedule_errors(r));
    }
    let disk = g.get("EphemeralDisk").map(|d| int_of(d, "SizeMB"));
    if let Some(size) = disk
        && size < 10
    {
        errs.push(format!("minimum DiskMB value is 10; got {size}"));
    }
    for t in tasks(g) {
        let terrs = task_errors(t, disk);
        if !terrs.is_empty() {
            errs.push(format!(
                "Task {} validation failed: {}",
                str_of(t, "Name"),
                multierror(&terrs)
            ));
        }
    }
    errs
}

/// `RestartPolicy.Validate` (structs.go:6565-6586).
fn restart_errors(r: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    let mode = str_of(r, "Mode");
    let attempts = int_of(r, "Attempts");
    let (interval, delay) = (int_of(r, "Interval"), int_of(r, "Delay"));
    if !matches!(mode, "delay" | "fail") {
        errs.push(format!("Unsupported restart mode: {mode:?}"));
    }
    if attempts == 0 && mode != "fail" {
        errs.push(format!(
            "Restart policy {mode:?} with {attempts} attempts is ambiguous"
        ));
    }
    if interval < 5 * SECOND {
        errs.push(format!(
            "Interval can not be less than 5s (got {})",
            go_duration(interval)
        ));
    }
    if attempts.saturating_mul(delay) > interval {
        errs.push(format!(
            "Nomad can't restart the TaskGroup {attempts} times in an interval of {} with a \
             delay of {}",
            go_duration(interval),
            go_duration(delay)
        ));
    }
    errs
}

/// `ReschedulePolicy.Validate` (structs.go:6638-6700): nothing to check unless rescheduling
/// is enabled (`Attempts > 0` or `Unlimited`).
fn reschedule_errors(r: &Value) -> Vec<String> {
    let attempts = int_of(r, "Attempts");
    let unlimited = r.get("Unlimited").and_then(Value::as_bool).unwrap_or(false);
    if attempts <= 0 && !unlimited {
        return Vec::new();
    }
    let mut errs = Vec::new();
    let (interval, delay, max_delay) = (
        int_of(r, "Interval"),
        int_of(r, "Delay"),
        int_of(r, "MaxDelay"),
    );
    let function = str_of(r, "DelayFunction");
    if attempts > 0 {
        if interval <= 0 {
            errs.push("Interval must be a non zero value if Attempts > 0".to_owned());
        }
        if unlimited {
            errs.push(format!(
                "Reschedule Policy with Attempts = {attempts}, Interval = {}, and Unlimited = \
                 true is ambiguous",
                go_duration(interval)
            ));
            errs.push("If Attempts >0, Unlimited cannot also be set to true".into());
        }
    }
    let mut delay_ok = true;
    if delay < 5 * SECOND {
        errs.push(format!(
            "Delay cannot be less than 5s (got {})",
            go_duration(delay)
        ));
        delay_ok = false;
    }
    if !matches!(function, "constant" | "exponential" | "fibonacci") {
        errs.push(format!(
            "Invalid delay function {function:?}, must be one of [\"constant\" \"exponential\" \
             \"fibonacci\"]"
        ));
        delay_ok = false;
    }
    if function != "constant" {
        if max_delay < 5 * SECOND {
            errs.push(format!(
                "Max Delay cannot be less than 5s (got {})",
                go_duration(delay)
            ));
            delay_ok = false;
        }
        if max_delay < delay {
            errs.push(format!(
                "Max Delay cannot be less than Delay {} (got {})",
                go_duration(delay),
                go_duration(max_delay)
            ));
            delay_ok = false;
        }
    }
    if !unlimited {
        if interval < 15 * SECOND {
            errs.push(format!(
                "Interval cannot be less than 15s (got {})",
                go_duration(interval)
            ));
        }
        // The cross-check of the constant delay function (viableAttempts); the exponential
        // and fibonacci ones are not reproduced.
        if delay_ok && function == "constant" && interval < attempts.saturating_mul(delay) {
            let possible = interval / delay.max(1);
            errs.push(multierror(&[
                format!(
                    "Nomad can only make {possible} attempts in {} with initial delay {} and \
                     delay function \"constant\"",
                    go_duration(interval),
                    go_duration(delay)
                ),
                format!(
                    "Set the interval to at least {} to accommodate {attempts} attempts",
                    go_duration(attempts.saturating_mul(delay))
                ),
            ]));
        }
    }
    errs
}

/// `Task.Validate`'s list, for the checks listed in the module documentation.
fn task_errors(t: &Value, disk_mb: Option<i64>) -> Vec<String> {
    let mut errs = Vec::new();
    if str_of(t, "Name").is_empty() {
        errs.push("Missing task name".to_owned());
    }
    if str_of(t, "Driver").is_empty() {
        errs.push("Missing task driver".into());
    }
    if int_of(t, "KillTimeout") < 0 {
        errs.push("KillTimeout must be a positive value".into());
    }
    match t.get("Resources").filter(|r| r.is_object()) {
        None => errs.push("Missing task resources".into()),
        Some(r) => {
            let mut rerrs = Vec::new();
            let (cpu, cores) = (int_of(r, "CPU"), int_of(r, "Cores"));
            let (mem, mem_max) = (int_of(r, "MemoryMB"), int_of(r, "MemoryMaxMB"));
            let mut min = Vec::new();
            if cpu < 1 && cores == 0 {
                min.push(format!("minimum CPU value is 1; got {cpu}"));
            }
            if mem < 10 {
                min.push(format!("minimum MemoryMB value is 10; got {mem}"));
            }
            if !min.is_empty() {
                rerrs.push(multierror(&min));
            }
            // 0 and -1 (no limit) are sentinels.
            if mem_max != 0 && mem_max != -1 && mem_max < mem {
                rerrs.push(format!(
                    "MemoryMaxMB value ({mem_max}) should be larger than MemoryMB value ({mem})"
                ));
            }
            if !rerrs.is_empty() {
                errs.push(multierror(&rerrs));
            }
        }
    }
    match t.get("LogConfig").filter(|l| l.is_object()) {
        None => errs.push("Missing Log Config".into()),
        Some(l) => {
            let (files, size) = (int_of(l, "MaxFiles"), int_of(l, "MaxFileSizeMB"));
            let mut lerrs = Vec::new();
            if files < 1 {
                lerrs.push(format!("minimum number of files is 1; got {files}"));
            }
            if size < 1 {
                lerrs.push(format!("minimum file size is 1MB; got {size}"));
            }
            // Whether or not `Disabled` is set: Nomad cannot tell defaults from settings.
            if let Some(disk) = disk_mb
                && disk <= files * size
            {
                lerrs.push(format!(
                    "log storage ({} MB) must be less than requested disk capacity ({disk} MB)",
                    files * size
                ));
            }
            if !lerrs.is_empty() {
                errs.push(multierror(&lerrs));
            }
        }
    }
    if let Some(default) = t.get("Identity").filter(|i| i.is_object())
        && let Some(e) = identity_errors(default)
    {
        errs.push(format!(
            "Identity {:?} is invalid: {e}",
            str_of(default, "Name")
        ));
    }
    for wid in t
        .get("Identities")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_of(wid, "Name");
        if name == "default" {
            errs.push("Duplicate default identities found".into());
        }
        if let Some(e) = identity_errors(wid) {
            errs.push(format!("Identity {name:?} is invalid: {e}"));
        }
    }
    errs
}

/// `WorkloadIdentity.Validate` (workload_id.go:452-498).
fn identity_errors(wid: &Value) -> Option<String> {
    let mut errs = Vec::new();
    let name = str_of(wid, "Name");
    let valid_name = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        errs.push(format!(
            "invalid name {name:?}. Must match regex ^[a-zA-Z0-9-_]{{1,128}}$"
        ));
    }
    for (i, aud) in wid
        .get("Audience")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if aud.as_str().is_none_or(str::is_empty) {
            errs.push(format!(
                "an empty string is an invalid audience ({})",
                i + 1
            ));
        }
    }
    let signal = str_of(wid, "ChangeSignal");
    match str_of(wid, "ChangeMode") {
        "" | "noop" | "restart" => {
            if !signal.is_empty() {
                errs.push(format!(
                    "can only use change_signal={signal:?} with change_mode=\"signal\""
                ));
            }
        }
        "signal" => {
            if signal.is_empty() {
                errs.push(
                    "change_signal must be specified when using change_mode=\"signal\"".into(),
                );
            }
        }
        other => errs.push(format!("invalid change_mode: {other}")),
    }
    let ttl = int_of(wid, "TTL");
    if ttl > 0 && (name.is_empty() || name == "default") {
        errs.push("ttl for default identity not yet supported".into());
    }
    if ttl < 0 {
        errs.push("ttl must be >= 0".into());
    }
    let file = wid.get("File").and_then(Value::as_bool).unwrap_or(false);
    if !str_of(wid, "Filepath").is_empty() && !file {
        errs.push("file parameter must be true in order to specify filepath".into());
    }
    (!errs.is_empty()).then(|| multierror(&errs))
}

/// Canonicalizes and validates a `{"Job": {...}}` register body as Nomad's `PUT /v1/jobs`
/// would: `Ok(warnings)` when Nomad would accept it, `Err(body of the HTTP 500)` when not.
/// Memory oversubscription is taken as disabled (Nomad's default). For tests of job documents
/// (`polydev-controller nomad-spec`, the HCL twin) without a running fake.
pub fn check_job(register_body: &Value) -> Result<Vec<String>, String> {
    let mut job = register_body
        .get("Job")
        .filter(|j| j.is_object())
        .cloned()
        .ok_or_else(|| "Job must be specified".to_owned())?;
    let namespace = str_of(&job, "Namespace");
    let namespace = if namespace.is_empty() {
        "default".to_owned()
    } else {
        namespace.to_owned()
    };
    canonicalize(&mut job, &namespace, "global");
    validate(&job, false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(24 * HOUR), "24h0m0s");
        assert_eq!(go_duration(30 * MINUTE), "30m0s");
        assert_eq!(go_duration(15 * SECOND), "15s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(-2 * SECOND), "-2s");
    }

    #[test]
    fn multierror_and_warning_texts() {
        assert_eq!(multierror(&["a".into()]), "1 error occurred:\n\t* a\n\n");
        assert_eq!(
            multierror(&["a".into(), "b".into()]),
            "2 errors occurred:\n\t* a\n\t* b\n\n"
        );
        assert_eq!(warnings_text(&[]), "");
        assert_eq!(warnings_text(&["w ".into()]), "1 warning:\n\n* w");
    }

    fn minimal() -> Value {
        json!({"Job": {
            "ID": "j", "Type": "batch",
            "TaskGroups": [{"Name": "g", "Tasks": [{"Name": "t", "Driver": "docker"}]}]
        }})
    }

    #[test]
    fn defaults_pass_and_each_rule_fails_with_nomads_text() {
        assert_eq!(check_job(&minimal()).unwrap(), Vec::<String>::new());
        let fails = |f: fn(&mut Value), want: &str| {
            let mut j = minimal();
            f(&mut j);
            let err = check_job(&j).unwrap_err();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        };
        fails(
            |j| j["Job"]["TaskGroups"][0]["EphemeralDisk"] = json!({"SizeMB": 10}),
            "log storage (100 MB) must be less than requested disk capacity (10 MB)",
        );
        fails(
            |j| j["Job"]["TaskGroups"][0]["EphemeralDisk"] = json!({"SizeMB": 5}),
            "minimum DiskMB value is 10; got 5",
        );
        fails(
            |j| {
                j["Job"]["Type"] = "service".into();
                j["Job"]["ParameterizedJob"] = json!({});
            },
            "Parameterized job can only be used with \"batch\" or \"sysbatch\" scheduler",
        );
        fails(
            |j| j["Job"]["ParameterizedJob"] = json!({"Payload": "sometimes"}),
            "Unknown payload requirement: \"sometimes\"",
        );
        fails(
            |j| {
                j["Job"]["ParameterizedJob"] =
                    json!({"MetaRequired": ["a", "b"], "MetaOptional": ["b"]})
            },
            "Following keys exist in both: [b]",
        );
        fails(
            |j| {
                j["Job"]["TaskGroups"][0]["RestartPolicy"] = json!({"Attempts": 0, "Mode": "delay"})
            },
            "Restart policy \"delay\" with 0 attempts is ambiguous",
        );
        fails(
            |j| j["Job"]["TaskGroups"][0]["RestartPolicy"] = json!({"Mode": "sometimes"}),
            "Unsupported restart mode: \"sometimes\"",
        );
        fails(
            |j| {
                j["Job"]["TaskGroups"][0]["ReschedulePolicy"] =
                    json!({"Attempts": 2, "Unlimited": true})
            },
            "If Attempts >0, Unlimited cannot also be set to true",
        );
        fails(
            |j| {
                j["Job"]["TaskGroups"][0]["ReschedulePolicy"] =
                    json!({"Attempts": 3, "Delay": 1_000_000_000})
            },
            "Delay cannot be less than 5s (got 1s)",
        );
        fails(
            |j| {
                j["Job"]["TaskGroups"][0]["Tasks"][0]["Identities"] =
                    json!([{"Name": "bad name", "Audience": ["x"]}])
            },
            "invalid name \"bad name\". Must match regex ^[a-zA-Z0-9-_]{1,128}$",
        );
        fails(
            |j| {
                j["Job"]["TaskGroups"][0]["Tasks"][0]["Identity"] =
                    json!({"File": true, "TTL": 3_600_000_000_000u64})
            },
            "ttl for default identity not yet supported",
        );
        fails(
            |j| {
                j["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"] =
                    json!({"MemoryMB": 64, "MemoryMaxMB": 32})
            },
            "MemoryMaxMB value (32) should be larger than MemoryMB value (64)",
        );
        fails(
            |j| j["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"] = json!({"MemoryMB": 4}),
            "minimum MemoryMB value is 10; got 4",
        );
    }

    #[test]
    fn memory_max_warns_without_oversubscription() {
        let mut j = minimal();
        j["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"] =
            json!({"MemoryMB": 32, "MemoryMaxMB": 128});
        let w = check_job(&j).unwrap();
        assert_eq!(
            w,
            [
                "Memory oversubscription is not enabled; Task \"g.t\" memory_max value will be \
              ignored. Update the Scheduler Configuration to allow oversubscription."
            ]
        );
        let mut job = j["Job"].clone();
        canonicalize(&mut job, "default", "global");
        assert!(validate(&job, true).unwrap().is_empty());
    }
}
