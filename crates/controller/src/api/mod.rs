//! The HTTP API (DESIGN.md 5): JSON in, SSE out, bearer-token auth on everything but
//! `/healthz`. [`app`] builds the router from a [`Controller`], so tests drive it with
//! `tower::ServiceExt::oneshot` or a socket on port 0.
//!
//! | route | |
//! |---|---|
//! | `POST /v1/executions` | submit a job; SSE with `Accept: text/event-stream`, else `202` |
//! | `GET /v1/executions/{id}` | status, text, usage, outcome, timings |
//! | `GET /v1/executions/{id}/events` | SSE, resumable with `Last-Event-ID` |
//! | `DELETE /v1/executions/{id}` | cancel |
//! | `POST /v1/perspectives` | one prompt to several targets, one interleaved SSE stream |
//! | `GET`/`PUT /v1/pool` | warm pool status / target size |
//! | `GET /healthz` | liveness (no token) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/events` | SSE: the controller-wide live feed ([`crate::feed`]) |
//! | `GET /v1/stats` | the live feed's statistics timeline (JSON) |
//! | `GET /console` | the web console (no token: the page holds none) |
//! | `/runtime/v1/…` | pull-mode runtimes only, per-instance credentials ([`runtime`]) |
//! | `POST /v1/chat/completions`, `GET /v1/models[/{id}]` | OpenAI's door ([`openai_compat`]) |
//! | `POST /v1/messages` | Anthropic's door ([`anthropic_compat`]) |

mod anthropic_compat;
mod console;
pub mod doors;
mod error;
mod events_feed;
mod openai_compat;
pub mod runtime;
mod sse;

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use polydev_protocol::{
    Credentials, Job, Message, Provider, ProviderOptions, Reasoning, ResponseFormat, Timeouts,
    Tool, ToolChoice,
};
use serde::Deserialize;
use serde_json::json;

pub use error::AppError;
pub use sse::log_stream;

use crate::config::{ENV_MAX_CONCURRENCY, MAX_PERSPECTIVE_TARGETS};
use crate::controller::{Controller, Lookup};
use crate::execution::{ErrorView, ExecutionView, Status, events_url};
use crate::policy::sanitize_json_error;
use crate::store::Record;

/// How long `DELETE` waits for the execution to end before answering `202`.
const CANCEL_REPLY_WAIT: Duration = Duration::from_millis(2500);
/// Execution ids are short; anything longer is not one (and is not looked up).
const MAX_ID_LEN: usize = 64;

/// The router. Every route but `/healthz` and the console's files (which hold no secret)
/// requires the bearer token when one is configured; the runtime API of a pull-mode backend is
/// merged in after that check, since runtimes authenticate as instances instead ([`runtime`]).
pub fn app(controller: Controller) -> Router {
    let body_limit = controller.config().max_body_bytes;
    let runtime_api = controller.backend().runtime_api();
    let client = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/executions", post(create_execution))
        .route(
            "/v1/executions/{id}",
            get(get_execution).delete(cancel_execution),
        )
        .route("/v1/executions/{id}/events", get(execution_events))
        .route("/v1/perspectives", post(perspectives))
        .route("/v1/pool", get(get_pool).put(put_pool))
        .route("/v1/events", get(events_feed::events))
        .route("/v1/stats", get(events_feed::stats))
        .merge(doors::router())
        .merge(console::router())
        .fallback(|| async { AppError::NoRoute })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .route_layer(middleware::from_fn_with_state(
            controller.clone(),
            json_body,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(controller.clone(), auth))
        .with_state(controller);
    match runtime_api {
        Some(api) => client.merge(runtime::router(api)),
        None => client,
    }
}

// === auth ===

/// The client routes' guard: the bearer token when one is configured; without one (loopback
/// only), a loopback `Host`, so that a web page the operator visits cannot reach the API
/// through DNS rebinding.
async fn auth(State(c): State<Controller>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/healthz" || console::is_public(req.uri().path()) {
        return next.run(req).await;
    }
    if c.config().api_token.is_none()
        && let Err(e) = check_loopback_host(req.headers())
    {
        return e.into_response();
    }
    if let Some(token) = &c.config().api_token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let door_key = doors::Door::presented_api_key(req.uri().path(), req.headers());
        let ok = presented
            .or(door_key.as_deref())
            .is_some_and(|t| ct_eq(t.as_bytes(), token.expose().as_bytes()));
        if !ok {
            return doors::unauthorized(req.uri().path())
                .unwrap_or_else(|| AppError::Unauthorized.into_response());
        }
    }
    next.run(req).await
}

/// For the routes that exist (as a route layer: an unknown route stays 404 and a wrong method
/// 405), a body-carrying request must be `application/json` (a web page cannot send that
/// cross-origin without a CORS preflight, which this API never grants, so a `text/plain`
/// "simple" POST starts nothing), and its body is read here within the body timeout.
async fn json_body(State(c): State<Controller>, req: Request, next: Next) -> Response {
    // A request with no body has no content to type (and cannot start anything): it goes on
    // to its handler, which answers it (400, or 405 for a method the route lacks).
    let empty = axum::body::HttpBody::size_hint(req.body()).exact() == Some(0);
    if empty || !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        return next.run(req).await;
    }
    if !is_json(req.headers()) {
        return AppError::UnsupportedMediaType.into_response();
    }
    match read_body(&c, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Reads a JSON request's whole body within the body timeout and size limit (security probe
/// F1: a client that sends its head and then trickles or withholds the body is cut off), and
/// hands the handler the bytes.
async fn read_body(c: &Controller, req: Request) -> Result<Request, AppError> {
    let limit = c.config().max_body_bytes;
    let (parts, body) = req.into_parts();
    let bytes = tokio::time::timeout(
        c.config().connections.body_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await
    .map_err(|_| AppError::BodyTimeout)?
    .map_err(|e| {
        // `to_bytes` fails for the limit (a length-limit error in its source chain) or a read.
        let too_large =
            std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        if too_large {
            AppError::PayloadTooLarge(limit)
        } else {
            AppError::BadRequest("cannot read the request body".into())
        }
    })?;
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

/// `Content-Type` is `application/json` (any case, any parameters) or a `+json` type.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The `Host` header names this machine's loopback: `localhost`, an IPv4 address in
/// 127.0.0.0/8 or `[::1]`, with any port.
fn check_loopback_host(headers: &HeaderMap) -> Result<(), AppError> {
    let raw = headers
        .get(header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let host = match raw.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => raw.rsplit_once(':').map_or(raw.as_str(), |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(AppError::ForeignHost(raw.chars().take(100).collect()))
    }
}

/// Compares in time independent of where the inputs differ (only of the longer length).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = a.len() ^ b.len();
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

// === helpers ===

fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(media_type))
}

fn wants_sse(headers: &HeaderMap) -> bool {
    accepts(headers, "text/event-stream")
}

fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, AppError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge(limit)
        } else {
            AppError::BadRequest("cannot read the request body".into())
        }
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, AppError> {
    serde_json::from_slice(bytes).map_err(|e| {
        AppError::BadRequest(format!(
            "invalid {what}: {}",
            sanitize_json_error(&e.to_string())
        ))
    })
}

fn with_location(mut res: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/executions/{id}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

fn valid_id(id: &str) -> bool {
    id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `Last-Event-ID` from the header (what EventSource sends on reconnect) or the
/// `last_event_id` query parameter (for a client's first request).
fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Result<u64, AppError> {
    let from_query = query.and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "last_event_id")
            .map(|(_, v)| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    });
    let raw = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| AppError::BadRequest("Last-Event-ID is not a number".into()))?
                .to_owned(),
        ),
        None => from_query,
    };
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(0),
        Some(s) => s
            .parse()
            .map_err(|_| AppError::BadRequest("Last-Event-ID is not a number".into())),
    }
}

fn record_view(r: Record) -> ExecutionView {
    let provider = r.provider.parse().unwrap_or(Provider::OpenAi);
    let finish_reason = r
        .finish_reason
        .as_deref()
        .and_then(|f| serde_json::from_value(json!(f)).ok());
    ExecutionView {
        events_url: events_url(&r.id),
        id: r.id,
        user_id: r.user_id,
        provider,
        model: r.model,
        status: Status::parse(&r.status).unwrap_or(Status::Failed),
        // The store keeps no output (DESIGN.md 5: prompts and answers are not stored).
        text: None,
        text_truncated: false,
        refusal: None,
        tool_calls: Vec::new(),
        tool_calls_truncated: false,
        usage: r.usage,
        finish_reason,
        error: r.error_kind.map(|kind| ErrorView {
            kind,
            message: None,
            retryable: None,
            status: None,
        }),
        warm: r.warm,
        created_at_ms: r.created_at_ms,
        started_at_ms: r.started_at_ms,
        ended_at_ms: r.ended_at_ms,
        queue_ms: r.started_at_ms.map(|s| s.saturating_sub(r.created_at_ms)),
        ttft_ms: r.ttft_ms,
        duration_ms: r.ended_at_ms.map(|e| e.saturating_sub(r.created_at_ms)),
        events: None,
    }
}

async fn lookup(c: &Controller, id: &str) -> Result<Lookup, AppError> {
    if !valid_id(id) {
        return Ok(Lookup::Missing);
    }
    c.lookup(id)
        .await
        .map_err(|e| AppError::Internal(format!("store lookup failed: {e}")))
}

// === handlers ===

async fn healthz(State(c): State<Controller>) -> Response {
    if c.is_shutting_down() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ok", "backend": c.backend().name()})).into_response()
    }
}

async fn metrics(State(c): State<Controller>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        c.metrics_text(),
    )
        .into_response()
}

async fn create_execution(
    State(c): State<Controller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let body = body_bytes(body, c.config().max_body_bytes)?;
    let job: Job = parse_json(&body, "job")?;
    let sse = wants_sse(&headers);
    // Take the stream slot first: an admitted execution must not lose its only stream.
    let guard = if sse {
        Some(c.stream_guard().ok_or(AppError::TooManyStreams)?)
    } else {
        None
    };
    let exec = c
        .submit(job)
        .map_err(|e| AppError::from_submit(e, c.config().max_per_user))?;
    let id = exec.id.clone();
    let res = match guard {
        Some(guard) => sse::execution_sse(exec, 0, guard, c.config().sse_keepalive).into_response(),
        None => (
            StatusCode::ACCEPTED,
            Json(json!({
                "id": exec.id,
                "status": exec.status(),
                "events_url": events_url(&exec.id),
            })),
        )
            .into_response(),
    };
    Ok(with_location(res, &id))
}

async fn get_execution(
    State(c): State<Controller>,
    Path(id): Path<String>,
) -> Result<Json<ExecutionView>, AppError> {
    match lookup(&c, &id).await? {
        Lookup::Live(e) => Ok(Json(e.view())),
        Lookup::Stored(r) => Ok(Json(record_view(*r))),
        Lookup::Missing => Err(AppError::NotFound),
    }
}

async fn execution_events(
    State(c): State<Controller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let after = last_event_id(&headers, query.as_deref())?;
    match lookup(&c, &id).await? {
        Lookup::Live(exec) => {
            // An adopted execution's log is being rebuilt: a client may be ahead of it for now.
            if after > exec.last_seq() && !exec.adopted {
                return Err(AppError::BadRequest(
                    "Last-Event-ID is beyond the last event of this execution".into(),
                ));
            }
            let guard = c.stream_guard().ok_or(AppError::TooManyStreams)?;
            Ok(sse::execution_sse(exec, after, guard, c.config().sse_keepalive).into_response())
        }
        Lookup::Stored(_) => Err(AppError::Gone),
        Lookup::Missing => Err(AppError::NotFound),
    }
}

async fn cancel_execution(
    State(c): State<Controller>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    if !valid_id(&id) {
        return Err(AppError::NotFound);
    }
    if let Some(exec) = c.cancel(&id) {
        let mut rx = exec.subscribe();
        let _ = tokio::time::timeout(CANCEL_REPLY_WAIT, async {
            while !exec.is_ended() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let view = exec.view();
        let status = if view.status.is_terminal() {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        return Ok((status, Json(view)).into_response());
    }
    match lookup(&c, &id).await? {
        Lookup::Live(e) => Ok(Json(e.view()).into_response()),
        Lookup::Stored(r) => Ok(Json(record_view(*r)).into_response()),
        Lookup::Missing => Err(AppError::NotFound),
    }
}

/// `POST /v1/perspectives`: one question, several targets.
#[derive(Debug, Deserialize)]
struct PerspectivesRequest {
    user_id: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    system: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(flatten)]
    capabilities: Capabilities,
    targets: Vec<Target>,
}

/// The DESIGN.md 4.5 fields, shared by all targets and overridable per target (a target's
/// own value replaces the shared one, field by field).
#[derive(Debug, Default, Deserialize)]
struct Capabilities {
    reasoning: Option<Reasoning>,
    stop: Option<Vec<String>>,
    response_format: Option<ResponseFormat>,
    tools: Option<Vec<Tool>>,
    tool_choice: Option<ToolChoice>,
    options: Option<ProviderOptions>,
}

#[derive(Debug, Deserialize)]
struct Target {
    provider: Provider,
    model: Option<String>,
    credentials: Credentials,
    base_url: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    #[serde(flatten)]
    capabilities: Capabilities,
}

async fn perspectives(
    State(c): State<Controller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let body = body_bytes(body, c.config().max_body_bytes)?;
    let req: PerspectivesRequest = parse_json(&body, "perspectives request")?;
    if req.targets.is_empty() || req.targets.len() > MAX_PERSPECTIVE_TARGETS {
        return Err(AppError::BadRequest(format!(
            "targets must list 1 to {MAX_PERSPECTIVE_TARGETS} targets"
        )));
    }
    let shared = &req.capabilities;
    let jobs: Vec<Job> = req
        .targets
        .into_iter()
        .map(|t| Job {
            execution_id: None,
            user_id: req.user_id.clone(),
            provider: t.provider,
            model: t.model,
            prompt: req.prompt.clone(),
            messages: req.messages.clone(),
            system: req.system.clone(),
            max_tokens: t.max_tokens.or(req.max_tokens),
            temperature: t.temperature.or(req.temperature),
            credentials: t.credentials,
            base_url: t.base_url,
            timeouts: req.timeouts,
            reasoning: t.capabilities.reasoning.or(shared.reasoning),
            stop: t.capabilities.stop.or_else(|| shared.stop.clone()),
            response_format: t
                .capabilities
                .response_format
                .or_else(|| shared.response_format.clone()),
            tools: t.capabilities.tools.or_else(|| shared.tools.clone()),
            tool_choice: t
                .capabilities
                .tool_choice
                .or_else(|| shared.tool_choice.clone()),
            options: t.capabilities.options.or_else(|| shared.options.clone()),
        })
        .collect();
    // The stream is the default; a client that asks for JSON (and not SSE) gets the ids.
    let sse = wants_sse(&headers) || !accepts(&headers, "application/json");
    let guard = if sse {
        Some(c.stream_guard().ok_or(AppError::TooManyStreams)?)
    } else {
        None
    };
    let execs = c.submit_many(jobs).map_err(|e| match e {
        crate::controller::SubmitError::Invalid(m) => AppError::BadRequest(m),
        other => AppError::from_submit(other, c.config().max_per_user),
    })?;
    Ok(match guard {
        Some(guard) => {
            sse::perspectives_sse(execs, guard, c.config().sse_keepalive).into_response()
        }
        None => (
            StatusCode::ACCEPTED,
            Json(json!({
                "executions": execs.iter().enumerate().map(|(i, e)| json!({
                    "target": i,
                    "id": e.id,
                    "status": e.status(),
                    "events_url": events_url(&e.id),
                })).collect::<Vec<_>>()
            })),
        )
            .into_response(),
    })
}

async fn get_pool(State(c): State<Controller>) -> Response {
    Json(c.pool_status()).into_response()
}

#[derive(Debug, Deserialize)]
struct PoolRequest {
    size: usize,
}

async fn put_pool(
    State(c): State<Controller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let body = body_bytes(body, c.config().max_body_bytes)?;
    let req: PoolRequest = parse_json(&body, "pool request")?;
    let max = c.config().max_concurrency;
    if req.size > max {
        return Err(AppError::BadRequest(format!(
            "size must be at most {max} ({ENV_MAX_CONCURRENCY}): a warm runtime beyond the \
             executions that can run at once only holds memory and file descriptors"
        )));
    }
    c.set_pool_size(req.size).map_err(|e| match e {
        crate::backend::BackendError::ShuttingDown => AppError::ShuttingDown,
        crate::backend::BackendError::Unavailable(_) => AppError::Unavailable,
        crate::backend::BackendError::Launch(m) => AppError::BadRequest(m),
    })?;
    Ok(Json(c.pool_status()).into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            m
        };
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(&h(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
        ] {
            assert!(!is_json(&h(bad)), "{bad}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn loopback_hosts() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(v).unwrap());
            m
        };
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8080",
            "127.9.9.9",
            "[::1]",
        ] {
            assert!(check_loopback_host(&h(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "attacker.example:8080",
            "127.0.0.1.nip.io",
            "localhost.attacker.example",
            "10.0.0.1:80",
            "[::2]:1",
            "0.0.0.0:8080",
            "",
        ] {
            assert!(check_loopback_host(&h(bad)).is_err(), "{bad}");
        }
        assert!(check_loopback_host(&HeaderMap::new()).is_err());
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"", b"a"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn last_event_id_sources() {
        let mut h = HeaderMap::new();
        assert_eq!(last_event_id(&h, None), Ok(0));
        assert_eq!(last_event_id(&h, Some("last_event_id=7")), Ok(7));
        // The query value is percent-decoded (probe F12).
        assert_eq!(last_event_id(&h, Some("a=b&last_event_id=%33%34")), Ok(34));
        h.insert("last-event-id", HeaderValue::from_static("3"));
        assert_eq!(last_event_id(&h, Some("last_event_id=7")), Ok(3));
        h.insert("last-event-id", HeaderValue::from_static("x"));
        assert!(last_event_id(&h, None).is_err());
    }
}
