//! The fake's HTTP surface. One handler routes on the percent-decoded path the way Nomad's
//! `JobSpecificRequest` does (trim `/v1/job/`, then match suffixes), so dispatched IDs with a
//! `/` work encoded or not.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State as AxState;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use tokio::sync::broadcast;

use super::runner::{self, now_nanos};
use super::{AllocCommand, AllocOrder, JobRec, Shared, admission, eval_event, job_event, signer};
use crate::types::{
    DispatchResponse, Evaluation, EventFrame, JobDeregisterResponse, JobRegisterResponse,
};

pub(crate) fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(msg.into()))
        .unwrap_or_default()
}

fn json<T: serde::Serialize>(value: &T, index: u64) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("X-Nomad-Index", index.to_string())
            .header("X-Nomad-KnownLeader", "true")
            .header("X-Nomad-LastContact", "0")
            .body(Body::from(body))
            .unwrap_or_default(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn query_params(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn param(q: &[(String, String)], name: &str) -> Option<String> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn go_bool(v: Option<String>) -> Result<bool, String> {
    match v.as_deref() {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(format!("invalid bool {other:?}")),
    }
}

/// Go's `time.ParseDuration` for the forms clients send (`300ms`, `5s`, `10m`).
fn parse_wait(v: &str) -> Option<Duration> {
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ns" => Duration::from_nanos(n),
        "us" | "µs" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

async fn handle(
    AxState(shared): AxState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = percent_encoding::percent_decode_str(uri.path())
        .decode_utf8_lossy()
        .into_owned();
    let after = shared.lock().knobs.take_delay(&path, true);
    let resp = route(&shared, method, &uri, &path, &headers, &body).await;
    if let Some(d) = after {
        tokio::time::sleep(d).await;
    }
    resp
}

async fn route(
    shared: &Arc<Shared>,
    method: Method,
    uri: &Uri,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let path = path.to_owned();
    let (delay, fail) = {
        let mut st = shared.lock();
        st.requests += 1;
        (st.knobs.take_delay(&path, false), st.knobs.take_fail(&path))
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some((status, body)) = fail {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return text(
            status,
            body.unwrap_or_else(|| "fake nomad: injected failure".into()),
        );
    }
    if path == "/.well-known/jwks.json" {
        let jwks = shared.signer().jwks();
        let index = shared.lock().index;
        return json(&jwks, index);
    }
    if let Some(want) = &shared.cfg.acl_token {
        let given = headers
            .get("X-Nomad-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| {
                headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_owned)
            });
        match given {
            None => return text(StatusCode::FORBIDDEN, "Permission denied"),
            Some(t) if &t != want => return text(StatusCode::FORBIDDEN, "ACL token not found"),
            Some(_) => {}
        }
    }
    let q = query_params(uri);
    let query_namespace = param(&q, "namespace").filter(|n| !n.is_empty());
    let namespace = param(&q, "namespace")
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());

    if path == "/v1/jobs" {
        return match method {
            Method::PUT | Method::POST => register(shared, body, None, query_namespace.as_deref()),
            Method::GET => list_jobs(shared, &q, &namespace).await,
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "Invalid method"),
        };
    }
    if path == "/v1/event/stream" {
        return event_stream(shared, &q, &namespace);
    }
    if let Some(rest) = path.strip_prefix("/v1/job/") {
        if let Some(job_id) = rest.strip_suffix("/allocations") {
            if method != Method::GET {
                return text(StatusCode::METHOD_NOT_ALLOWED, "Invalid method");
            }
            let (ns, id) = (namespace.clone(), job_id.to_owned());
            let order = shared.cfg.alloc_order;
            return blocking(shared, &q, move |st| {
                let mut allocs: Vec<_> = st
                    .allocs
                    .values()
                    .filter(|r| r.alloc.namespace == ns && r.alloc.job_id == id)
                    .map(|r| {
                        let mut a = r.alloc.clone();
                        a.job = None;
                        a
                    })
                    .collect();
                if order == AllocOrder::NewestFirst {
                    allocs.sort_by_key(|a| std::cmp::Reverse(a.create_index));
                }
                // Nomad wakes on a change of this job's allocations but answers with the
                // index of the whole `allocs` table (nomad/job_endpoint.go:1543-1548).
                let changed = allocs.iter().map(|a| a.modify_index).max().unwrap_or(0);
                Ok(Found {
                    value: serde_json::to_value(allocs).unwrap_or_default(),
                    changed,
                    index: st.allocs_index,
                })
            })
            .await;
        }
        if let Some(job_id) = rest.strip_suffix("/dispatch") {
            if method != Method::PUT && method != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "Invalid method");
            }
            return dispatch(shared, job_id, &namespace, &q, body);
        }
        let job_id = rest.to_owned();
        return match method {
            Method::GET => {
                let ns = namespace.clone();
                blocking(shared, &q, move |st| {
                    match st.jobs.get(&(ns.clone(), job_id.clone())) {
                        Some(rec) => {
                            let index = rec.job["ModifyIndex"].as_u64().unwrap_or(st.jobs_index);
                            Ok(Found::at(rec.job.clone(), index))
                        }
                        None => Err((StatusCode::NOT_FOUND, "job not found".into())),
                    }
                })
                .await
            }
            Method::PUT | Method::POST => {
                register(shared, body, Some(&job_id), query_namespace.as_deref())
            }
            Method::DELETE => stop(shared, &job_id, &namespace, &q),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "Invalid method"),
        };
    }
    if let Some(alloc_id) = path.strip_prefix("/v1/allocation/") {
        if method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Invalid method");
        }
        let id = alloc_id.to_owned();
        return blocking(shared, &q, move |st| match st.allocs.get(&id) {
            Some(rec) => {
                let mut a = rec.alloc.clone();
                a.job = Some(rec.job.clone());
                Ok(Found::at(
                    serde_json::to_value(a).unwrap_or_default(),
                    rec.alloc.modify_index,
                ))
            }
            None => Err((StatusCode::NOT_FOUND, "alloc not found".into())),
        })
        .await;
    }
    if let Some(eval_id) = path.strip_prefix("/v1/evaluation/") {
        if method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Invalid method");
        }
        let id = eval_id.to_owned();
        return blocking(shared, &q, move |st| match st.evals.get(&id) {
            Some(e) => Ok(Found::at(
                serde_json::to_value(e).unwrap_or_default(),
                e.modify_index,
            )),
            None => Err((StatusCode::NOT_FOUND, "eval not found".into())),
        })
        .await;
    }
    text(StatusCode::NOT_FOUND, "Not found")
}

/// What a blocking read found: the value, the index of its last change (what the query
/// waits on) and the index to answer with (`X-Nomad-Index`; a table index may be higher).
struct Found {
    value: serde_json::Value,
    changed: u64,
    index: u64,
}

impl Found {
    fn at(value: serde_json::Value, index: u64) -> Found {
        Found {
            value,
            changed: index,
            index,
        }
    }
}

type Lookup = Result<Found, (StatusCode, String)>;

/// A blocking query: answer at once unless `index` is given and the resource's index has not
/// passed it; then wait for a change until `wait` (default and maximum 5 min,
/// `MaxBlockingRPCQueryTime`, plus up to `wait/16` of jitter as Nomad does:
/// nomad/structs/structs.go:192-214, 339-348; nomad/rpc.go:853-869).
async fn blocking(
    shared: &Arc<Shared>,
    q: &[(String, String)],
    lookup: impl Fn(&super::State) -> Lookup,
) -> Response {
    let min_index: u64 = param(q, "index").and_then(|v| v.parse().ok()).unwrap_or(0);
    let wait = param(q, "wait")
        .and_then(|w| parse_wait(&w))
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(300));
    let wait =
        wait + Duration::from_nanos(now_nanos().unsigned_abs() % (wait.as_nanos() as u64 / 16 + 1));
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = shared.changed.subscribe();
    loop {
        let result = {
            let st = shared.lock();
            lookup(&st)
        };
        let found = match result {
            Ok(v) => v,
            Err((status, msg)) => return text(status, msg),
        };
        if min_index == 0 || found.changed > min_index {
            return json(&found.value, found.index.max(1));
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            return json(&found.value, found.index.max(1));
        }
    }
}

/// `GET /v1/jobs[?prefix=…&namespace=…&meta=true]`: the stubs (`JobListStub`) of the jobs of
/// `namespace` (`*`: every namespace) whose ID starts with `prefix`, ordered by namespace and
/// ID as Nomad's state store iterates them, blocking on the jobs table
/// (command/agent/job_endpoint.go `jobListRequest`, nomad/job_endpoint.go `List`). No
/// pagination: without `per_page` Nomad answers with every match.
async fn list_jobs(shared: &Arc<Shared>, q: &[(String, String)], namespace: &str) -> Response {
    let prefix = param(q, "prefix").unwrap_or_default();
    let with_meta = match go_bool(param(q, "meta")) {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let ns = namespace.to_owned();
    blocking(shared, q, move |st| {
        let stubs: Vec<serde_json::Value> = st
            .jobs
            .iter()
            .filter(|((n, id), _)| (ns == "*" || *n == ns) && id.starts_with(&prefix))
            .map(|(_, rec)| job_stub(&rec.job, with_meta))
            .collect();
        Ok(Found::at(serde_json::Value::Array(stubs), st.jobs_index))
    })
    .await
}

/// A stored job's `JobListStub` (nomad/structs/structs.go `Job.Stub`).
fn job_stub(job: &serde_json::Value, with_meta: bool) -> serde_json::Value {
    let field = |k: &str| job.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let present = |k: &str| job.get(k).is_some_and(|v| !v.is_null());
    let mut stub = serde_json::json!({
        "ID": field("ID"),
        "ParentID": field("ParentID"),
        "Name": field("Name"),
        "Namespace": field("Namespace"),
        "Datacenters": field("Datacenters"),
        "NodePool": field("NodePool"),
        "Type": field("Type"),
        "Priority": field("Priority"),
        "Periodic": present("Periodic"),
        "ParameterizedJob": present("ParameterizedJob"),
        "Stop": field("Stop"),
        "Status": field("Status"),
        "StatusDescription": field("StatusDescription"),
        "CreateIndex": field("CreateIndex"),
        "ModifyIndex": field("ModifyIndex"),
        "JobModifyIndex": field("JobModifyIndex"),
        "SubmitTime": field("SubmitTime"),
    });
    if with_meta && present("Meta") {
        stub["Meta"] = field("Meta");
    }
    stub
}

/// `PUT /v1/jobs` (or `/v1/job/:id`): canonicalize, admit (Nomad's validation, 500 with its
/// text; warnings returned), store.
fn register(
    shared: &Arc<Shared>,
    body: &[u8],
    path_id: Option<&str>,
    query_namespace: Option<&str>,
) -> Response {
    let req: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(mut job) = req.get("Job").filter(|j| j.is_object()).cloned() else {
        return text(StatusCode::BAD_REQUEST, "Job must be specified");
    };
    let Some(id) = job.get("ID").and_then(|v| v.as_str()).map(str::to_owned) else {
        return text(StatusCode::BAD_REQUEST, "Job ID hasn't been provided");
    };
    if path_id.is_some_and(|p| p != id) {
        return text(StatusCode::BAD_REQUEST, "Job ID does not match name");
    }
    if job.get("Dispatched").and_then(|d| d.as_bool()) == Some(true) {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "job can't be submitted with 'Dispatched' set",
        );
    }
    // The request's `?namespace=` wins over the body's (command/agent/job_endpoint.go:1109-1126).
    let namespace = query_namespace
        .or_else(|| {
            job.get("Namespace")
                .and_then(|n| n.as_str())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or("default")
        .to_owned();
    job["Namespace"] = namespace.clone().into();
    admission::canonicalize(&mut job, &namespace, &shared.cfg.region);
    // Validation errors are plain errors, so HTTP 500 (command/agent/http.go:761-790).
    let warnings = match admission::validate(&job, shared.cfg.memory_oversubscription) {
        Ok(w) => admission::warnings_text(&w),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let parameterized = job.get("ParameterizedJob").is_some_and(|p| !p.is_null());
    let rng = ring::rand::SystemRandom::new();
    let (resp, eval_id) = shared.mutate(|st, index| {
        let key = (namespace.clone(), id.clone());
        let (create_index, version) = match st.jobs.get(&key) {
            Some(old) => (
                old.job["CreateIndex"].as_u64().unwrap_or(index),
                old.job["Version"].as_u64().unwrap_or(0) + 1,
            ),
            None => (index, 0),
        };
        job["CreateIndex"] = create_index.into();
        job["ModifyIndex"] = index.into();
        job["JobModifyIndex"] = index.into();
        job["Version"] = version.into();
        job["SubmitTime"] = now_nanos().into();
        job["Status"] = if parameterized { "running" } else { "pending" }.into();
        job["StatusDescription"] = "".into();
        let mut events = vec![job_event("JobRegistered", &job)];
        st.jobs.insert(key, JobRec { job: job.clone() });
        st.jobs_index = index;
        let mut eval_id = None;
        // Parameterized (and periodic) parents get no evaluation.
        if !parameterized {
            let eval = new_eval(&rng, &job, "job-register", index);
            eval_id = Some(eval.id.clone());
            events.push(eval_event(&eval));
            st.evals.insert(eval.id.clone(), eval);
            st.evals_index = index;
        }
        (
            (
                JobRegisterResponse {
                    eval_id: eval_id.clone().unwrap_or_default(),
                    eval_create_index: if eval_id.is_some() { index } else { 0 },
                    job_modify_index: index,
                    warnings: warnings.clone(),
                    index,
                    ..JobRegisterResponse::default()
                },
                eval_id,
            ),
            events,
        )
    });
    if let Some(eval_id) = eval_id {
        runner::schedule(shared.clone(), eval_id);
    }
    let index = resp.index;
    json(&resp, index)
}

fn new_eval(
    rng: &ring::rand::SystemRandom,
    job: &serde_json::Value,
    triggered_by: &str,
    index: u64,
) -> Evaluation {
    let get = |k: &str| {
        job.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let now = now_nanos();
    Evaluation {
        id: signer::uuid(rng),
        namespace: get("Namespace"),
        priority: job.get("Priority").and_then(|p| p.as_i64()).unwrap_or(50) as i32,
        eval_type: get("Type"),
        triggered_by: triggered_by.into(),
        job_id: get("ID"),
        job_modify_index: index,
        status: "pending".into(),
        create_index: index,
        modify_index: index,
        create_time: now,
        modify_time: now,
        ..Evaluation::default()
    }
}

fn dispatch(
    shared: &Arc<Shared>,
    job_id: &str,
    namespace: &str,
    q: &[(String, String)],
    body: &[u8],
) -> Response {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "PascalCase", default)]
    struct Req {
        #[serde(rename = "JobID")]
        job_id: String,
        payload: Option<String>,
        meta: BTreeMap<String, String>,
        id_prefix_template: String,
    }
    // `decodeBody` refuses an empty body (command/agent/http.go:870-878).
    if body.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Request body is empty");
    }
    let req: Req = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if !req.job_id.is_empty() && req.job_id != job_id {
        return text(StatusCode::BAD_REQUEST, "Job ID does not match");
    }
    let token = param(q, "idempotency_token").unwrap_or_default();
    let rng = ring::rand::SystemRandom::new();
    // RPC errors of Job.Dispatch surface as HTTP 500 with the message (errCodeFromHandler).
    let err = |m: String| text(StatusCode::INTERNAL_SERVER_ERROR, m);
    let result = shared.mutate(|st, index| {
        let key = (namespace.to_owned(), job_id.to_owned());
        let Some(parent) = st.jobs.get(&key).map(|j| j.job.clone()) else {
            return (Err("parameterized job not found".to_owned()), Vec::new());
        };
        let Some(pcfg) = parent.get("ParameterizedJob").filter(|p| !p.is_null()) else {
            return (
                Err(format!(
                    "Specified job {job_id:?} is not a parameterized job"
                )),
                Vec::new(),
            );
        };
        if parent["Stop"].as_bool() == Some(true) {
            return (
                Err(format!("Specified job {job_id:?} is stopped")),
                Vec::new(),
            );
        }
        let payload_len = req.payload.as_deref().map_or(0, str::len);
        match pcfg
            .get("Payload")
            .and_then(|p| p.as_str())
            .unwrap_or("optional")
        {
            "required" if payload_len == 0 => {
                return (
                    Err("Payload is not provided but required by parameterized job".into()),
                    Vec::new(),
                );
            }
            "forbidden" if payload_len > 0 => {
                return (
                    Err("Payload provided but forbidden by parameterized job".into()),
                    Vec::new(),
                );
            }
            _ => {}
        }
        let list = |k: &str| -> Vec<String> {
            pcfg.get(k)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (required, optional) = (list("MetaRequired"), list("MetaOptional"));
        let unpermitted: Vec<&String> = req
            .meta
            .keys()
            .filter(|k| !required.contains(k) && !optional.contains(k))
            .collect();
        if !unpermitted.is_empty() {
            return (
                Err(format!(
                    "Dispatch request included unpermitted metadata keys: {unpermitted:?}"
                )),
                Vec::new(),
            );
        }
        let missing: Vec<&String> = required
            .iter()
            .filter(|k| !req.meta.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            return (
                Err(format!(
                    "Dispatch did not provide required meta keys: {missing:?}"
                )),
                Vec::new(),
            );
        }
        if !token.is_empty() {
            let existing = st.jobs.values().find(|j| {
                j.job["ParentID"].as_str() == Some(job_id)
                    && j.job["Namespace"].as_str() == Some(namespace)
                    && j.job["DispatchIdempotencyToken"].as_str() == Some(token.as_str())
            });
            if let Some(existing) = existing {
                let resp = DispatchResponse {
                    index: existing.job["ModifyIndex"].as_u64().unwrap_or(0),
                    job_create_index: existing.job["CreateIndex"].as_u64().unwrap_or(0),
                    dispatched_job_id: existing.str("ID"),
                    ..DispatchResponse::default()
                };
                return (Ok((resp, None)), Vec::new());
            }
        }
        // structs.DispatchedID: <parent>/dispatch-[<prefix>-]<unix>-<8 hex>.
        let suffix: String = signer::uuid(&rng).chars().take(8).collect();
        let unix = runner::unix_now();
        let child_id = if req.id_prefix_template.is_empty() {
            format!("{job_id}/dispatch-{unix}-{suffix}")
        } else {
            format!(
                "{job_id}/dispatch-{}-{unix}-{suffix}",
                req.id_prefix_template
            )
        };
        let mut child = parent.clone();
        child["ID"] = child_id.clone().into();
        child["Name"] = child_id.clone().into();
        child["ParentID"] = job_id.into();
        child["Dispatched"] = true.into();
        child["ParameterizedJob"] = serde_json::Value::Null;
        child["DispatchIdempotencyToken"] = token.clone().into();
        child["Status"] = "pending".into();
        child["Stop"] = false.into();
        let mut meta = child
            .get("Meta")
            .and_then(|m| m.as_object())
            .cloned()
            .unwrap_or_default();
        for (k, v) in &req.meta {
            meta.insert(k.clone(), v.clone().into());
        }
        child["Meta"] = serde_json::Value::Object(meta);
        child["Payload"] = serde_json::Value::Null;
        child["CreateIndex"] = index.into();
        child["ModifyIndex"] = index.into();
        child["JobModifyIndex"] = index.into();
        child["SubmitTime"] = now_nanos().into();
        let eval = new_eval(&rng, &child, "job-register", index);
        let events = vec![job_event("JobRegistered", &child), eval_event(&eval)];
        st.jobs.insert(
            (namespace.to_owned(), child_id.clone()),
            JobRec { job: child },
        );
        st.jobs_index = index;
        let resp = DispatchResponse {
            index,
            job_create_index: index,
            eval_create_index: index,
            eval_id: eval.id.clone(),
            dispatched_job_id: child_id,
        };
        let eval_id = eval.id.clone();
        st.evals.insert(eval.id.clone(), eval);
        st.evals_index = index;
        (Ok((resp, Some(eval_id))), events)
    });
    match result {
        Ok((resp, eval_id)) => {
            if let Some(eval_id) = eval_id {
                runner::schedule(shared.clone(), eval_id);
            }
            let index = resp.index;
            json(&resp, index)
        }
        Err(m) => err(m),
    }
}

fn stop(shared: &Arc<Shared>, job_id: &str, namespace: &str, q: &[(String, String)]) -> Response {
    let purge = match go_bool(param(q, "purge")) {
        Ok(p) => p,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Failed to parse value of \"purge\": {e}"),
            );
        }
    };
    let rng = ring::rand::SystemRandom::new();
    let resp = shared.mutate(|st, index| {
        let key = (namespace.to_owned(), job_id.to_owned());
        let Some(rec) = st.jobs.get_mut(&key) else {
            // Job.Deregister: a missing job is not an error.
            return (JobDeregisterResponse::default(), Vec::new());
        };
        rec.job["Stop"] = true.into();
        rec.job["ModifyIndex"] = index.into();
        rec.job["JobModifyIndex"] = index.into();
        let job = rec.job.clone();
        let mut events = vec![job_event("JobDeregistered", &job)];
        let parameterized = job.get("ParameterizedJob").is_some_and(|p| !p.is_null());
        let mut resp = JobDeregisterResponse {
            job_modify_index: index,
            eval_create_index: index,
            index,
            ..JobDeregisterResponse::default()
        };
        if !parameterized {
            let mut eval = new_eval(&rng, &job, "job-deregister", index);
            eval.status = "complete".into();
            resp.eval_id = eval.id.clone();
            events.push(eval_event(&eval));
            st.evals.insert(eval.id.clone(), eval);
            st.evals_index = index;
        }
        let mut live = false;
        for r in st
            .allocs
            .values_mut()
            .filter(|r| r.alloc.namespace == namespace && r.alloc.job_id == job_id)
        {
            if r.alloc.status().is_terminal() {
                continue;
            }
            live = true;
            r.alloc.desired_status = "stop".into();
            r.alloc.desired_description =
                "alloc is being stopped as the job was deregistered".into();
            r.alloc.modify_index = index;
            if let Some(ctl) = &r.control {
                ctl.send_replace(AllocCommand::Stop);
            }
            events.push(super::alloc_event(
                "AllocationUpdateDesiredStatus",
                &r.alloc,
            ));
        }
        st.allocs_index = index;
        if purge {
            st.jobs.remove(&key);
            st.evals
                .retain(|_, e| !(e.namespace == namespace && e.job_id == job_id));
            // Terminal allocations of a purged job are garbage collected at once; live ones
            // go when they finish.
            st.allocs.retain(|_, r| {
                !(r.alloc.namespace == namespace
                    && r.alloc.job_id == job_id
                    && r.alloc.status().is_terminal())
            });
        } else if !live && let Some(rec) = st.jobs.get_mut(&key) {
            rec.job["Status"] = "dead".into();
        }
        st.jobs_index = index;
        (resp, events)
    });
    let index = resp.index;
    json(&resp, index.max(1))
}

fn topic_matches(filters: &[(String, String)], e: &crate::types::Event) -> bool {
    filters.is_empty()
        || filters.iter().any(|(topic, key)| {
            (topic == "*" || *topic == e.topic)
                && (key == "*"
                    || key.is_empty()
                    || *key == e.key
                    || e.filter_keys
                        .as_ref()
                        .is_some_and(|k| k.iter().any(|f| f == key)))
        })
}

fn filter_frame(
    frame: &EventFrame,
    topics: &[(String, String)],
    namespace: &str,
) -> Option<EventFrame> {
    let events: Vec<_> = frame
        .events
        .iter()
        .filter(|e| namespace == "*" || e.namespace.is_empty() || e.namespace == namespace)
        .filter(|e| topic_matches(topics, e))
        .cloned()
        .collect();
    (!events.is_empty()).then_some(EventFrame {
        index: frame.index,
        events,
    })
}

fn line(frame: &EventFrame) -> Bytes {
    let mut v = serde_json::to_vec(frame).unwrap_or_else(|_| b"{}".to_vec());
    v.push(b'\n');
    Bytes::from(v)
}

fn event_stream(shared: &Arc<Shared>, q: &[(String, String)], namespace: &str) -> Response {
    let topics: Vec<(String, String)> = q
        .iter()
        .filter(|(k, _)| k == "topic")
        .map(|(_, v)| {
            let (t, k) = v.split_once(':').unwrap_or((v.as_str(), "*"));
            (t.to_owned(), k.to_owned())
        })
        .collect();
    let start: u64 = param(q, "index").and_then(|v| v.parse().ok()).unwrap_or(0);
    let namespace = namespace.to_owned();
    // Subscribe before reading the backlog so nothing falls in between.
    let mut rx = shared.events.subscribe();
    let backlog: Vec<EventFrame> = shared
        .lock()
        .buffer
        .iter()
        .filter(|f| f.index >= start)
        .cloned()
        .collect();
    let heartbeat = shared.cfg.heartbeat_interval;
    let (tx, out) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        // Nomad sends `{}` once on connect, then every 30 s (nomad/stream/ndjson.go:38-50).
        if tx.send(Bytes::from_static(b"{}\n")).await.is_err() {
            return;
        }
        let mut sent = 0u64;
        for frame in backlog {
            if let Some(f) = filter_frame(&frame, &topics, &namespace) {
                sent = f.index;
                if tx.send(line(&f)).await.is_err() {
                    return;
                }
            }
        }
        let mut tick = tokio::time::interval(heartbeat);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if tx.send(Bytes::from_static(b"{}\n")).await.is_err() {
                        return;
                    }
                }
                frame = rx.recv() => match frame {
                    Ok(frame) => {
                        if frame.index <= sent {
                            continue;
                        }
                        if let Some(f) = filter_frame(&frame, &topics, &namespace)
                            && tx.send(line(&f)).await.is_err()
                        {
                            return;
                        }
                    }
                    // A subscriber that falls behind is closed, as Nomad does.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|b| (Ok::<_, Infallible>(b), out))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_like_go() {
        assert_eq!(parse_wait("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_wait("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_wait("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_wait("x"), None);
    }

    #[test]
    fn query_decoding() {
        let uri: Uri = "/v1/event/stream?topic=Allocation%3Ap%2Fdispatch-1&index=5"
            .parse()
            .unwrap_or_default();
        let q = query_params(&uri);
        assert_eq!(
            param(&q, "topic").as_deref(),
            Some("Allocation:p/dispatch-1")
        );
        assert_eq!(param(&q, "index").as_deref(), Some("5"));
    }
}
