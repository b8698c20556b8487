//! A thin typed client for exactly the Nomad endpoints the backend uses (orchestration.md §1.1):
//! register, dispatch, job allocations, allocation, evaluation, stop/purge, the event stream and
//! the workload-identity JWKS.
//!
//! Retries: calls that are safe to repeat (reads, register, stop/purge, and dispatch *with an
//! idempotency token*) are retried on connection errors, timeouts, 5xx and 429, a bounded
//! number of times with exponential backoff and jitter; never on a 500 that is one of Nomad's
//! validation errors ([`NomadError::is_validation`]), which would fail the same way again. Dispatch always carries an idempotency
//! token (the API takes one; there is no way to dispatch without it), so a retry after a lost
//! response returns the child Nomad already created instead of starting a second instance:
//! Nomad's `Job.Dispatch` looks for a child of the same parent with the same
//! `DispatchIdempotencyToken` first (`nomad/job_endpoint.go`). The token only dedups while that
//! child exists (until it is purged or garbage collected), and two requests that race inside
//! Nomad are not serialized, so the backend still reconciles what runs against what it asked
//! for.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;

use crate::config::NomadConfig;
use crate::error::{NomadError, error_message};
use crate::transport::{StreamingResponse, Transport};
use crate::types::{
    Allocation, DispatchBody, DispatchResponse, Evaluation, EventFrame, JobDeregisterResponse,
    JobInfo, JobListStub, JobRegisterResponse, Jwks,
};

/// Characters escaped in one path segment: everything but RFC 3986 unreserved characters, so a
/// dispatched job ID `parent/dispatch-…` becomes `parent%2Fdispatch-…`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Nomad's longest blocking-query wait, `MaxBlockingRPCQueryTime` (nomad/structs/structs.go:
/// 192-214): a longer `wait` is cut to it by the server.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Nomad's default blocking-query wait when `index` is given without `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest event-stream line accepted (a line can hold many events with full payloads).
pub const MAX_EVENT_LINE: usize = 8 << 20;
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 256 << 10;

fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Blocking-query parameters: return when the resource's index exceeds `index`, or after
/// `wait` (Nomad adds up to `wait/16` of jitter, and a return does not guarantee a change).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryOptions {
    pub index: Option<u64>,
    pub wait: Option<Duration>,
}

impl QueryOptions {
    /// A blocking query that waits for a change past `index`, for at most `wait`.
    pub fn blocking(index: u64, wait: Duration) -> QueryOptions {
        QueryOptions {
            index: Some(index),
            wait: Some(wait.min(MAX_WAIT)),
        }
    }
}

/// A read's value with Nomad's query metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResponse<T> {
    pub value: T,
    /// `X-Nomad-Index`: pass it back as [`QueryOptions::index`] to block for the next change.
    pub index: u64,
    /// `X-Nomad-KnownLeader`.
    pub known_leader: bool,
    /// `X-Nomad-LastContact`.
    pub last_contact: Duration,
}

/// A dispatch: non-secret `meta` plus the idempotency token that makes retries safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchRequest {
    pub meta: BTreeMap<String, String>,
    /// Unique per intended instance (for example the controller's instance ID).
    pub idempotency_token: String,
    /// Optional `IdPrefixTemplate` (dispatched IDs become `<parent>/dispatch-<prefix>-…`).
    pub id_prefix: Option<String>,
}

impl DispatchRequest {
    pub fn new(idempotency_token: impl Into<String>) -> DispatchRequest {
        DispatchRequest {
            meta: BTreeMap::new(),
            idempotency_token: idempotency_token.into(),
            id_prefix: None,
        }
    }

    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> DispatchRequest {
        self.meta.insert(key.into(), value.into());
        self
    }
}

/// Event stream subscription: `topic=Topic:filter` entries, a resume index and a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventStreamRequest {
    /// e.g. `("Allocation", "polydev-runtime/dispatch-…")` or `("Job", "*")`.
    pub topics: Vec<(String, String)>,
    /// Resume point: events with an index at or above it (if still buffered).
    pub index: Option<u64>,
    /// Overrides the configured namespace (`*` for all).
    pub namespace: Option<String>,
    /// The stream is declared dead when nothing (not even a heartbeat, every 30 s in Nomad)
    /// arrives for this long. Defaults to 75 s.
    pub idle_timeout: Option<Duration>,
}

/// A typed Nomad client; cheap to clone (one shared connection pool).
#[derive(Clone)]
pub struct NomadClient {
    cfg: std::sync::Arc<NomadConfig>,
    transport: Transport,
}

impl std::fmt::Debug for NomadClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NomadClient")
            .field("cfg", &self.cfg)
            .finish()
    }
}

struct Call<'a> {
    op: &'a str,
    method: http::Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Bytes>,
    retry: bool,
    timeout: Duration,
    limit: usize,
}

impl NomadClient {
    pub fn new(cfg: NomadConfig) -> Result<NomadClient, NomadError> {
        cfg.validate()?;
        let transport = Transport::new(&cfg)?;
        Ok(NomadClient {
            cfg: std::sync::Arc::new(cfg),
            transport,
        })
    }

    /// From `NOMAD_ADDR`, `NOMAD_TOKEN`, `NOMAD_CACERT`, ... (see [`NomadConfig::from_env`]).
    pub fn from_env() -> Result<NomadClient, NomadError> {
        NomadClient::new(NomadConfig::from_env()?)
    }

    pub fn config(&self) -> &NomadConfig {
        &self.cfg
    }

    fn build(&self, call: &Call<'_>) -> Result<http::Request<Full<Bytes>>, NomadError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(ns) = &self.cfg.namespace
            && !call.query.iter().any(|(k, _)| *k == "namespace")
        {
            query.push(("namespace", ns.clone()));
        }
        if let Some(region) = &self.cfg.region {
            query.push(("region", region.clone()));
        }
        query.extend(call.query.iter().map(|(k, v)| (*k, v.clone())));
        let mut uri = format!("{}{}", self.transport.base_path(), call.path);
        for (i, (k, v)) in query.iter().enumerate() {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(k);
            uri.push('=');
            uri.push_str(&encode_segment(v));
        }
        let mut builder = http::Request::builder()
            .method(call.method.clone())
            .uri(uri)
            .header(
                http::header::USER_AGENT,
                concat!("polydev-nomad/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.cfg.token {
            let mut value = http::HeaderValue::from_str(token.as_str())
                .map_err(|_| NomadError::Config("NOMAD_TOKEN is not a valid header".into()))?;
            value.set_sensitive(true);
            builder = builder.header("X-Nomad-Token", value);
        }
        if call.body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(call.body.clone().unwrap_or_default()))
            .map_err(|e| NomadError::Config(format!("cannot build request: {e}")))
    }

    /// Runs `call`, retrying transient failures when `call.retry`.
    async fn execute(&self, call: Call<'_>) -> Result<crate::transport::FullResponse, NomadError> {
        let attempts = if call.retry {
            self.cfg.retry.max_attempts.max(1)
        } else {
            1
        };
        let mut backoff = self.cfg.retry.initial_backoff;
        let mut attempt = 1;
        loop {
            let req = self.build(&call)?;
            let result = self
                .transport
                .send(call.op, req, call.timeout, call.limit)
                .await
                .and_then(|resp| {
                    if resp.status.is_success() {
                        Ok(resp)
                    } else {
                        Err(NomadError::Api {
                            op: call.op.to_owned(),
                            status: resp.status.as_u16(),
                            message: error_message(&resp.body),
                        })
                    }
                });
            match result {
                Ok(resp) => return Ok(resp),
                Err(e) if attempt < attempts && e.is_transient() => {
                    tracing::debug!(op = call.op, attempt, error = %e, "retrying Nomad call");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(self.cfg.retry.max_backoff);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn decode<T: DeserializeOwned>(op: &str, body: &[u8]) -> Result<T, NomadError> {
        serde_json::from_slice(body).map_err(|e| NomadError::Decode {
            op: op.to_owned(),
            message: e.to_string(),
        })
    }

    async fn query<T: DeserializeOwned>(
        &self,
        op: &str,
        path: String,
        q: &QueryOptions,
    ) -> Result<QueryResponse<T>, NomadError> {
        self.query_with(op, path, Vec::new(), q).await
    }

    /// [`Self::query`] with extra query parameters.
    async fn query_with<T: DeserializeOwned>(
        &self,
        op: &str,
        path: String,
        mut query: Vec<(&'static str, String)>,
        q: &QueryOptions,
    ) -> Result<QueryResponse<T>, NomadError> {
        let mut timeout = self.cfg.request_timeout;
        if let Some(index) = q.index {
            query.push(("index", index.to_string()));
            let wait = q.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
            // Nomad waits up to `wait + wait/16`, then answers.
            timeout += wait + wait / 16;
        }
        if let Some(wait) = q.wait {
            query.push(("wait", format!("{}ms", wait.min(MAX_WAIT).as_millis())));
        }
        let resp = self
            .execute(Call {
                op,
                method: http::Method::GET,
                path,
                query,
                body: None,
                retry: true,
                timeout,
                limit: self.cfg.max_response_bytes,
            })
            .await?;
        let header = |name: &str| {
            resp.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let index = header("X-Nomad-Index")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| NomadError::Decode {
                op: op.to_owned(),
                message: "missing or invalid X-Nomad-Index header".into(),
            })?;
        Ok(QueryResponse {
            value: Self::decode(op, &resp.body)?,
            index,
            known_leader: header("X-Nomad-KnownLeader").as_deref() == Some("true"),
            last_contact: Duration::from_millis(
                header("X-Nomad-LastContact")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
        })
    }

    async fn write<T: DeserializeOwned>(
        &self,
        op: &str,
        method: http::Method,
        path: String,
        query: Vec<(&'static str, String)>,
        body: Option<Bytes>,
        retry: bool,
    ) -> Result<T, NomadError> {
        let resp = self
            .execute(Call {
                op,
                method,
                path,
                query,
                body,
                retry,
                timeout: self.cfg.request_timeout,
                limit: self.cfg.max_response_bytes,
            })
            .await?;
        Self::decode(op, &resp.body)
    }

    /// `PUT /v1/jobs` with `{"Job": {...}}` (as [`crate::spec::runtime_job`] builds it).
    /// Registering the same spec again is harmless, so this call is retried.
    pub async fn register_job(
        &self,
        job: &serde_json::Value,
    ) -> Result<JobRegisterResponse, NomadError> {
        if job.get("Job").is_none() {
            return Err(NomadError::Config(
                "register_job expects {\"Job\": {...}}".into(),
            ));
        }
        let body = serde_json::to_vec(job).map_err(|e| NomadError::Decode {
            op: "register job".into(),
            message: e.to_string(),
        })?;
        self.write(
            "register job",
            http::Method::PUT,
            "/v1/jobs".into(),
            Vec::new(),
            Some(Bytes::from(body)),
            true,
        )
        .await
    }

    /// `GET /v1/job/:id`.
    pub async fn read_job(
        &self,
        job_id: &str,
        q: &QueryOptions,
    ) -> Result<QueryResponse<JobInfo>, NomadError> {
        self.query("read job", format!("/v1/job/{}", encode_segment(job_id)), q)
            .await
    }

    /// `POST /v1/job/:id/dispatch?idempotency_token=…` with `{"Meta": {...}}` only.
    pub async fn dispatch_job(
        &self,
        job_id: &str,
        req: &DispatchRequest,
    ) -> Result<DispatchResponse, NomadError> {
        if req.idempotency_token.trim().is_empty() {
            return Err(NomadError::Config(
                "dispatch needs an idempotency token (retries must not start a second instance)"
                    .into(),
            ));
        }
        let body = DispatchBody {
            job_id: job_id.to_owned(),
            meta: req.meta.clone(),
            id_prefix_template: req.id_prefix.clone().unwrap_or_default(),
        };
        let body = serde_json::to_vec(&body).map_err(|e| NomadError::Decode {
            op: "dispatch".into(),
            message: e.to_string(),
        })?;
        self.write(
            "dispatch",
            http::Method::POST,
            format!("/v1/job/{}/dispatch", encode_segment(job_id)),
            vec![("idempotency_token", req.idempotency_token.clone())],
            Some(Bytes::from(body)),
            // Safe to repeat only because of the token.
            true,
        )
        .await
    }

    /// `GET /v1/jobs?prefix=…`: stubs of the jobs of the client's namespace whose ID starts
    /// with `prefix` (all of them in one answer: no `per_page`). Dispatched children of
    /// `parent` are listed with `prefix = "<parent>/dispatch-"` and carry `ParentID = parent`.
    pub async fn list_jobs(
        &self,
        prefix: &str,
        q: &QueryOptions,
    ) -> Result<QueryResponse<Vec<JobListStub>>, NomadError> {
        self.query_with(
            "list jobs",
            "/v1/jobs".into(),
            vec![("prefix", prefix.to_owned())],
            q,
        )
        .await
    }

    /// `GET /v1/job/:id/allocations` (blocking query capable). An unknown job yields `[]`.
    pub async fn job_allocations(
        &self,
        job_id: &str,
        q: &QueryOptions,
    ) -> Result<QueryResponse<Vec<Allocation>>, NomadError> {
        self.query(
            "list job allocations",
            format!("/v1/job/{}/allocations", encode_segment(job_id)),
            q,
        )
        .await
    }

    /// `GET /v1/allocation/:id` (full UUID; blocking query capable).
    pub async fn read_allocation(
        &self,
        alloc_id: &str,
        q: &QueryOptions,
    ) -> Result<QueryResponse<Allocation>, NomadError> {
        self.query(
            "read allocation",
            format!("/v1/allocation/{}", encode_segment(alloc_id)),
            q,
        )
        .await
    }

    /// `GET /v1/evaluation/:id` (blocking query capable).
    pub async fn read_evaluation(
        &self,
        eval_id: &str,
        q: &QueryOptions,
    ) -> Result<QueryResponse<Evaluation>, NomadError> {
        self.query(
            "read evaluation",
            format!("/v1/evaluation/{}", encode_segment(eval_id)),
            q,
        )
        .await
    }

    /// `DELETE /v1/job/:id[?purge=true]`: stops every allocation of the job (and with `purge`
    /// removes it at once instead of leaving it to the garbage collector). Idempotent: stopping
    /// a missing job succeeds.
    pub async fn stop_job(
        &self,
        job_id: &str,
        purge: bool,
    ) -> Result<JobDeregisterResponse, NomadError> {
        let query = if purge {
            vec![("purge", "true".to_owned())]
        } else {
            Vec::new()
        };
        self.write(
            if purge {
                "stop and purge job"
            } else {
                "stop job"
            },
            http::Method::DELETE,
            format!("/v1/job/{}", encode_segment(job_id)),
            query,
            None,
            true,
        )
        .await
    }

    /// `GET /.well-known/jwks.json`: the keys that sign workload identities.
    pub async fn jwks(&self) -> Result<Jwks, NomadError> {
        let resp = self
            .execute(Call {
                op: "read JWKS",
                method: http::Method::GET,
                path: "/.well-known/jwks.json".into(),
                query: Vec::new(),
                body: None,
                retry: true,
                timeout: self.cfg.request_timeout,
                limit: MAX_JWKS_BYTES,
            })
            .await?;
        Self::decode("read JWKS", &resp.body)
    }

    /// `GET /v1/event/stream`: opens the NDJSON stream. Not retried here: a consumer that loses
    /// the stream re-subscribes from the last index it saw (and re-reads state, since the
    /// server keeps only a bounded event buffer).
    pub async fn event_stream(&self, req: &EventStreamRequest) -> Result<EventStream, NomadError> {
        let mut query: Vec<(&'static str, String)> = Vec::new();
        for (topic, filter) in &req.topics {
            query.push(("topic", format!("{topic}:{filter}")));
        }
        if let Some(index) = req.index {
            query.push(("index", index.to_string()));
        }
        if let Some(ns) = &req.namespace {
            query.push(("namespace", ns.clone()));
        }
        let call = Call {
            op: "event stream",
            method: http::Method::GET,
            path: "/v1/event/stream".into(),
            query,
            body: None,
            retry: false,
            timeout: self.cfg.request_timeout,
            limit: 0,
        };
        let http_req = self.build(&call)?;
        let resp = self
            .transport
            .send_streaming(call.op, http_req, call.timeout)
            .await?;
        if !resp.status.is_success() {
            let status = resp.status.as_u16();
            let body = tokio::time::timeout(
                self.cfg.request_timeout,
                crate::transport::read_limited(resp.body, 64 << 10, "event stream"),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
            return Err(NomadError::Api {
                op: "event stream".into(),
                status,
                message: error_message(&body),
            });
        }
        Ok(EventStream {
            resp,
            buf: BytesMut::new(),
            idle_timeout: req.idle_timeout.unwrap_or(Duration::from_secs(75)),
            heartbeats: 0,
            last_index: req.index.unwrap_or(0).saturating_sub(1),
        })
    }
}

/// Up to ±25 % of `d`, so that many controllers retrying at once do not synchronize.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let quarter = d / 4;
    let spread = quarter.as_nanos().max(1) as u64 * 2;
    let offset = u64::from(nanos) % spread;
    (d - quarter) + Duration::from_nanos(offset)
}

/// An open event stream. [`EventStream::next_frame`] yields frames with events, skipping the
/// `{}` heartbeats (counted in [`EventStream::heartbeats`]) and any frame at or below an index
/// already delivered (Nomad may replay the frame at the resume index).
pub struct EventStream {
    resp: StreamingResponse,
    buf: BytesMut,
    idle_timeout: Duration,
    heartbeats: u64,
    last_index: u64,
}

impl EventStream {
    /// Heartbeats seen so far.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats
    }

    /// The index of the last frame delivered (resume with `index = last + 1`).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The next frame carrying events; `Ok(None)` when the server closed the stream cleanly.
    pub async fn next_frame(&mut self) -> Result<Option<EventFrame>, NomadError> {
        loop {
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let frame: EventFrame =
                    serde_json::from_slice(line).map_err(|e| NomadError::Decode {
                        op: "event stream".into(),
                        message: e.to_string(),
                    })?;
                if frame.is_heartbeat() {
                    self.heartbeats += 1;
                    continue;
                }
                if frame.index <= self.last_index && self.last_index != 0 {
                    continue;
                }
                self.last_index = frame.index;
                return Ok(Some(frame));
            }
            if self.buf.len() > MAX_EVENT_LINE {
                return Err(NomadError::TooLarge {
                    op: "event stream line".into(),
                    limit: MAX_EVENT_LINE,
                });
            }
            let next = tokio::time::timeout(self.idle_timeout, self.resp.body.frame())
                .await
                .map_err(|_| {
                    NomadError::Stream(format!(
                        "nothing received for {} s (not even a heartbeat)",
                        self.idle_timeout.as_secs()
                    ))
                })?;
            match next {
                None => {
                    return if self.buf.iter().all(u8::is_ascii_whitespace) {
                        Ok(None)
                    } else {
                        Err(NomadError::Stream("stream ended inside a line".into()))
                    };
                }
                Some(Err(e)) => return Err(NomadError::Stream(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatched_ids_are_percent_encoded() {
        assert_eq!(
            encode_segment("polydev-runtime/dispatch-1485408778-81644024"),
            "polydev-runtime%2Fdispatch-1485408778-81644024"
        );
        assert_eq!(encode_segment("a b&c"), "a%20b%26c");
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for ms in [4u64, 100, 2000] {
            let d = Duration::from_millis(ms);
            let j = jitter(d);
            assert!(j >= d - d / 4 && j <= d + d / 4, "{j:?} for {d:?}");
        }
    }
}
