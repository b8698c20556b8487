//! What the two front doors (DESIGN.md 5.1: OpenAI Chat Completions in [`super::openai_compat`],
//! Anthropic Messages in [`super::anthropic_compat`]) share, so that each door is only a
//! translation of request and response shapes over the controller's ordinary execution path:
//!
//! - model routing (`provider/model`, or a bare `gpt-…`/`o<digit>…`, `claude-…`, `gemini-…`
//!   name) and the list of models the doors advertise;
//! - the provider key (`X-Provider-Api-Key` or a body `credentials` object) and the user
//!   (`X-User-Id`, else the body's own user field);
//! - admission through [`Controller::submit`], then a wait for the first *decisive* event (the
//!   first output or the terminal event), because a failure before any output must become an
//!   HTTP error status that the official SDKs map to the right exception;
//! - the relay of the execution's log as the door's SSE frames ([`Translate`]), or its
//!   collection into one answer ([`Answer`]) for non-streaming requests;
//! - [`CancelOnDrop`]: a client that goes away (its response body or handler future is dropped)
//!   cancels the execution, exactly as `DELETE /v1/executions/{id}` does;
//! - unknown request fields, ignored and logged once per field name.

use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream, StreamExt};
use polydev_protocol::{
    ApiKey, Credentials, ErrorEvent, ErrorKind, Event, FinishReason, Provider, ToolCall, Usage,
};

use super::{AppError, anthropic_compat, openai_compat};
use crate::controller::{Controller, StreamGuard};
use crate::execution::Execution;

/// Header carrying the user's own provider key.
pub const PROVIDER_KEY_HEADER: &str = "x-provider-api-key";
/// Header naming the user an execution runs for.
pub const USER_HEADER: &str = "x-user-id";
/// Response header naming the execution behind a front-door response.
pub const EXECUTION_ID_HEADER: &str = "x-execution-id";
/// Distinct ignored field names remembered for "log once" (beyond it, nothing more is logged).
const MAX_NOTED_FIELDS: usize = 256;

/// The doors' routes, merged into the client router (behind the same bearer-token check).
pub fn router() -> Router<Controller> {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(openai_compat::chat_completions),
        )
        .route("/v1/models", get(openai_compat::list_models))
        .route("/v1/models/{*id}", get(openai_compat::get_model))
        .route("/v1/messages", post(anthropic_compat::messages))
}

/// Which door a request came through: it decides the error body and the auth headers accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    OpenAi,
    Anthropic,
}

impl Door {
    /// The door serving `path`, if any (`/v1/models` answers in OpenAI's shape).
    pub fn of_path(path: &str) -> Option<Door> {
        match path {
            "/v1/chat/completions" | "/v1/models" => Some(Door::OpenAi),
            "/v1/messages" => Some(Door::Anthropic),
            p if p.starts_with("/v1/models/") => Some(Door::OpenAi),
            _ => None,
        }
    }

    /// The `x-api-key` header counts as the controller token only on Anthropic's door (the
    /// Anthropic SDK sends its `api_key` there).
    pub fn presented_api_key(path: &str, headers: &HeaderMap) -> Option<String> {
        if Door::of_path(path) != Some(Door::Anthropic) {
            return None;
        }
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    }
}

// === errors ===

/// A front-door failure before any output: an HTTP status and the door's error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoorError {
    pub status: StatusCode,
    /// Our error kind (`rate_limited`, `bad_request`…), carried as OpenAI's `code`.
    pub kind: &'static str,
    pub message: String,
    /// The request field at fault, when there is one (OpenAI's `param`).
    pub param: Option<String>,
    pub retry_after_ms: Option<u64>,
    /// `x-should-retry`: whether the SDK may send the request again.
    pub should_retry: bool,
    pub execution_id: Option<String>,
}

impl DoorError {
    pub fn bad_request(message: impl Into<String>) -> DoorError {
        DoorError {
            status: StatusCode::BAD_REQUEST,
            kind: "bad_request",
            message: message.into(),
            param: None,
            retry_after_ms: None,
            should_retry: false,
            execution_id: None,
        }
    }

    pub fn param(mut self, param: impl Into<String>) -> DoorError {
        self.param = Some(param.into());
        self
    }

    pub fn not_found(message: impl Into<String>) -> DoorError {
        DoorError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found",
            ..DoorError::bad_request(message)
        }
    }

    /// A terminal `error` event that came before any output. The status is DESIGN.md 5.1's
    /// (Anthropic's door answers an overload with its own 529).
    pub fn from_event(door: Door, e: &ErrorEvent, execution_id: &str) -> DoorError {
        let status = match e.kind {
            ErrorKind::Auth => 401,
            ErrorKind::Permission => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::BadRequest | ErrorKind::Config | ErrorKind::Blocked => 400,
            ErrorKind::RateLimited => 429,
            ErrorKind::Overloaded if door == Door::Anthropic => 529,
            ErrorKind::Overloaded | ErrorKind::Interrupted => 503,
            ErrorKind::Upstream | ErrorKind::Protocol => 502,
            ErrorKind::Timeout => 504,
            ErrorKind::Internal => 500,
            // nginx's "client closed request": not an SDK-retried status.
            ErrorKind::Cancelled => 499,
        };
        DoorError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            kind: e.kind.as_str(),
            message: e.message.clone(),
            param: None,
            retry_after_ms: e.retry_after_ms,
            // Output already sent means a retry would generate (and bill) the answer again.
            should_retry: e.retryable && !e.partial,
            execution_id: Some(execution_id.to_owned()),
        }
    }

    /// One of the controller's own refusals (auth, admission, body limits…).
    pub fn from_app(e: &AppError) -> DoorError {
        let retry = matches!(
            e.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        DoorError {
            status: e.status(),
            kind: e.kind(),
            message: e.to_string(),
            param: None,
            retry_after_ms: retry.then(|| crate::config::RETRY_AFTER.as_millis() as u64),
            should_retry: retry,
            execution_id: None,
        }
    }

    /// OpenAI's `type` for this failure.
    fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 413 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            _ => "server_error",
        }
    }

    /// Anthropic's `error.type` for this failure (its documented status table).
    fn anthropic_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            504 => "timeout_error",
            529 => "overloaded_error",
            s if s >= 500 => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// The error object as the door's in-stream error event carries it.
    pub fn body(&self, door: Door) -> serde_json::Value {
        match door {
            Door::OpenAi => serde_json::json!({"error": {
                "message": self.message,
                "type": self.openai_type(),
                "param": self.param,
                "code": self.kind,
            }}),
            Door::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": self.anthropic_type(), "message": self.message},
            }),
        }
    }

    pub fn into_response(self, door: Door) -> Response {
        let mut res = (self.status, axum::Json(self.body(door))).into_response();
        let h = res.headers_mut();
        if let Some(ms) = self.retry_after_ms {
            insert(h, "retry-after", &ms.div_ceil(1000).max(1).to_string());
            insert(h, "retry-after-ms", &ms.to_string());
        }
        insert(
            h,
            "x-should-retry",
            if self.should_retry { "true" } else { "false" },
        );
        if let Some(id) = &self.execution_id {
            insert(h, EXECUTION_ID_HEADER, id);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            insert(h, "www-authenticate", "Bearer");
        }
        res
    }
}

fn insert(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// The 401 a door answers when the controller token is missing or wrong, in its own body.
pub fn unauthorized(path: &str) -> Option<Response> {
    Door::of_path(path).map(|door| DoorError::from_app(&AppError::Unauthorized).into_response(door))
}

// === routing ===

/// The provider and the provider's model id for a door's `model`.
pub fn route_model(name: &str) -> Result<(Provider, String), DoorError> {
    let name = name.trim();
    let unknown = || {
        DoorError::not_found(format!(
            "The model `{name}` does not exist: name it provider/model (openai/…, anthropic/…, google/…) or use a gpt-…, o…, claude-… or gemini-… name"
        ))
        .param("model")
    };
    if let Some((provider, model)) = name.split_once('/') {
        let provider: Provider = provider.parse().map_err(|_| unknown())?;
        if model.trim().is_empty() {
            return Err(unknown());
        }
        return Ok((provider, model.to_owned()));
    }
    let b = name.as_bytes();
    let provider = if name.starts_with("gpt-")
        || name.starts_with("chatgpt-")
        || (b.len() > 1 && b[0] == b'o' && b[1].is_ascii_digit())
    {
        Provider::OpenAi
    } else if name.starts_with("claude-") {
        Provider::Anthropic
    } else if name.starts_with("gemini-") {
        Provider::Google
    } else {
        return Err(unknown());
    };
    Ok((provider, name.to_owned()))
}

/// Every model the doors advertise, as `provider/model`, each provider's default first.
pub fn advertised_models() -> impl Iterator<Item = (Provider, String)> {
    Provider::ALL.into_iter().flat_map(|p| {
        polydev_providers::known_models(p)
            .iter()
            .map(move |m| (p, format!("{p}/{m}")))
    })
}

// === key, user, ignored fields ===

/// The user's provider key: the header, else the body's `credentials`.
pub fn credentials(headers: &HeaderMap, body: Option<Credentials>) -> Credentials {
    match headers
        .get(PROVIDER_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some(k) if !k.trim().is_empty() => Credentials {
            api_key: ApiKey::new(k.trim()),
        },
        _ => body.unwrap_or_default(),
    }
}

/// The user: the header, else the first of the body's candidates that is set.
pub fn user_id(headers: &HeaderMap, body: &[Option<&str>]) -> Result<String, DoorError> {
    let from_header = headers
        .get(USER_HEADER)
        .map(|v| {
            v.to_str()
                .map_err(|_| DoorError::bad_request("X-User-Id must be visible ASCII"))
        })
        .transpose()?
        .filter(|u| !u.trim().is_empty());
    from_header
        .or_else(|| {
            body.iter()
                .flatten()
                .copied()
                .find(|u| !u.trim().is_empty())
        })
        .map(str::to_owned)
        .ok_or_else(|| {
            DoorError::bad_request(
                "no user: set the X-User-Id header (or the request's own user field)",
            )
        })
}

/// Logs each ignored request field once per door and name (bounded).
pub fn note_ignored<'a>(door: Door, fields: impl Iterator<Item = &'a String>) {
    static SEEN: Mutex<Option<HashSet<(bool, String)>>> = Mutex::new(None);
    let mut guard = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen = guard.get_or_insert_with(HashSet::new);
    for f in fields {
        let key = (door == Door::OpenAi, f.clone());
        if seen.len() < MAX_NOTED_FIELDS && !seen.contains(&key) {
            tracing::info!(door = ?door, field = %f, "front door: ignoring an unsupported request field (logged once)");
            seen.insert(key);
        }
    }
}

// === admission and the first decisive event ===

/// Cancels its execution when dropped before the execution ended: a client that goes away
/// stops the upstream call, as `DELETE` does.
pub struct CancelOnDrop {
    controller: Controller,
    exec: Arc<Execution>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.exec.is_ended() && self.controller.cancel(&self.exec.id).is_some() {
            tracing::info!(execution_id = %self.exec.id, "front-door client went away: execution cancelled");
        }
    }
}

type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// An admitted execution whose first decisive event has arrived.
pub struct Admitted {
    pub exec: Arc<Execution>,
    /// Events so far, ending with the decisive one.
    head: Vec<Event>,
    rest: Events,
    cancel: CancelOnDrop,
    stream_slot: Option<StreamGuard>,
}

/// Admits `job`, then waits for its first output or its terminal event. A failure before any
/// output comes back as the door's HTTP error.
pub async fn admit(
    c: &Controller,
    door: Door,
    job: polydev_protocol::Job,
    streaming: bool,
) -> Result<Admitted, DoorError> {
    let stream_slot = if streaming {
        Some(
            c.stream_guard()
                .ok_or_else(|| DoorError::from_app(&AppError::TooManyStreams))?,
        )
    } else {
        None
    };
    let exec = c
        .submit(job)
        .map_err(|e| DoorError::from_app(&AppError::from_submit(e, c.config().max_per_user)))?;
    let cancel = CancelOnDrop {
        controller: c.clone(),
        exec: Arc::clone(&exec),
    };
    let mut rest: Events = Box::pin(super::log_stream(Arc::clone(&exec), 0).filter_map(|ev| {
        let parsed = serde_json::from_str::<Event>(&ev.data);
        if let Err(e) = &parsed {
            // The controller rendered this JSON itself: this is a bug.
            tracing::error!(error = %e, "front door: unreadable logged event");
        }
        std::future::ready(parsed.ok())
    }));
    let mut head = Vec::new();
    loop {
        match rest.next().await {
            Some(ev) => {
                let decisive = ev.is_output() || ev.is_terminal();
                if let Event::Error(e) = &ev {
                    return Err(DoorError::from_event(door, e, &exec.id));
                }
                head.push(ev);
                if decisive {
                    break;
                }
            }
            None => {
                return Err(DoorError::from_app(&AppError::Internal(format!(
                    "execution {} ended without a terminal event",
                    exec.id
                ))));
            }
        }
    }
    Ok(Admitted {
        exec,
        head,
        rest,
        cancel,
        stream_slot,
    })
}

/// One door's stream shape: the SSE frames for each execution event.
pub trait Translate: Send + 'static {
    /// Appends the frames `ev` becomes (none, one or several).
    fn frames(&mut self, ev: Event, out: &mut Vec<SseEvent>);
    /// What the door sends while the execution is quiet.
    fn keep_alive() -> SseEvent;
}

impl Admitted {
    /// The streaming response: every event of the execution through `t`, ending after the
    /// terminal event's frames. Dropping the body (the client went away) cancels.
    pub fn stream<T: Translate>(self, mut t: T, keepalive: std::time::Duration) -> Response {
        let Admitted {
            exec,
            head,
            rest,
            cancel,
            stream_slot,
        } = self;
        let id = exec.id.clone();
        let frames = stream::iter(head).chain(rest).flat_map(move |ev| {
            let _held = (&cancel, &stream_slot);
            let mut out = Vec::with_capacity(2);
            t.frames(ev, &mut out);
            stream::iter(out.into_iter().map(Ok::<_, Infallible>))
        });
        let sse = super::sse::with_keep_alive(frames, keepalive, T::keep_alive());
        with_execution_id(sse.into_response(), &id)
    }

    /// The whole answer, for a non-streaming request (the client waits for the end; if it
    /// goes away first, the execution is cancelled).
    pub async fn collect(self) -> Answer {
        let Admitted {
            head, rest, cancel, ..
        } = self;
        let mut answer = Answer {
            blocks: Vec::new(),
            usage: None,
            end: Err(ErrorEvent::new(
                ErrorKind::Internal,
                "the execution ended without a terminal event",
            )),
        };
        let mut all = stream::iter(head).chain(rest);
        while let Some(ev) = all.next().await {
            match ev {
                Event::Text { text } => answer.push(Block::Text(text)),
                Event::Refusal { text } => answer.push(Block::Refusal(text)),
                Event::Reasoning {
                    text,
                    signature,
                    redacted,
                } => answer.push(Block::Reasoning {
                    text,
                    signature,
                    redacted,
                }),
                Event::ToolCall(call) => answer.blocks.push(Block::ToolCall(call)),
                Event::Usage(u) => answer.usage = Some(u),
                Event::End {
                    finish_reason,
                    raw_finish_reason,
                    ..
                } => {
                    answer.end = Ok((finish_reason, raw_finish_reason));
                    break;
                }
                Event::Error(e) => {
                    answer.end = Err(e);
                    break;
                }
                Event::Start { .. } | Event::Ready => {}
            }
        }
        drop(cancel);
        answer
    }
}

/// One piece of a finished answer, in the order the model produced it; consecutive pieces of
/// the same kind are merged (a reasoning block closes once it has its signature).
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(String),
    Refusal(String),
    Reasoning {
        text: String,
        signature: Option<String>,
        redacted: Option<String>,
    },
    ToolCall(ToolCall),
}

/// A finished execution, for a non-streaming response.
#[derive(Debug)]
pub struct Answer {
    pub blocks: Vec<Block>,
    pub usage: Option<Usage>,
    /// The finish reason (normalized, raw), or the error.
    pub end: Result<(FinishReason, Option<String>), ErrorEvent>,
}

impl Answer {
    fn push(&mut self, b: Block) {
        match (self.blocks.last_mut(), b) {
            (Some(Block::Text(t)), Block::Text(more))
            | (Some(Block::Refusal(t)), Block::Refusal(more)) => t.push_str(&more),
            (
                Some(Block::Reasoning {
                    text,
                    signature: sig @ None,
                    redacted: None,
                }),
                Block::Reasoning {
                    text: more,
                    signature,
                    redacted: None,
                },
            ) => {
                text.push_str(&more);
                *sig = signature;
            }
            (_, b) => self.blocks.push(b),
        }
    }

    /// All answer text, concatenated.
    pub fn text(&self) -> String {
        self.join(|b| match b {
            Block::Text(t) => Some(t),
            _ => None,
        })
    }

    /// All refusal text, concatenated.
    pub fn refusal(&self) -> String {
        self.join(|b| match b {
            Block::Refusal(t) => Some(t),
            _ => None,
        })
    }

    /// All reasoning text, concatenated.
    pub fn reasoning(&self) -> String {
        self.join(|b| match b {
            Block::Reasoning { text, .. } => Some(text),
            _ => None,
        })
    }

    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.blocks.iter().filter_map(|b| match b {
            Block::ToolCall(c) => Some(c),
            _ => None,
        })
    }

    fn join<'a>(&'a self, f: impl Fn(&'a Block) -> Option<&'a String>) -> String {
        self.blocks
            .iter()
            .filter_map(f)
            .map(String::as_str)
            .collect()
    }
}

pub fn with_execution_id(mut res: Response, id: &str) -> Response {
    insert(res.headers_mut(), EXECUTION_ID_HEADER, id);
    res
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn model_routing() {
        let ok = [
            ("openai/gpt-4o", Provider::OpenAi, "gpt-4o"),
            (
                "anthropic/claude-haiku-4-5",
                Provider::Anthropic,
                "claude-haiku-4-5",
            ),
            (
                "google/gemini-2.5-flash",
                Provider::Google,
                "gemini-2.5-flash",
            ),
            (
                "gemini/gemini-2.5-flash",
                Provider::Google,
                "gemini-2.5-flash",
            ),
            ("openai/my-fine-tune", Provider::OpenAi, "my-fine-tune"),
            ("gpt-5-mini", Provider::OpenAi, "gpt-5-mini"),
            ("o3-mini", Provider::OpenAi, "o3-mini"),
            ("o4", Provider::OpenAi, "o4"),
            ("chatgpt-4o-latest", Provider::OpenAi, "chatgpt-4o-latest"),
            (
                "claude-sonnet-4-6",
                Provider::Anthropic,
                "claude-sonnet-4-6",
            ),
            ("gemini-3.5-flash", Provider::Google, "gemini-3.5-flash"),
        ];
        for (name, p, m) in ok {
            assert_eq!(route_model(name).unwrap(), (p, m.to_owned()), "{name}");
        }
        for bad in ["llama-3", "mistral/x", "openai/", "", "omni", "o"] {
            let e = route_model(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::NOT_FOUND, "{bad}");
            assert_eq!(e.param.as_deref(), Some("model"));
        }
    }

    #[test]
    fn every_advertised_model_routes_to_its_provider() {
        let all: Vec<_> = advertised_models().collect();
        for p in Provider::ALL {
            let first = all.iter().find(|(q, _)| *q == p).unwrap();
            assert_eq!(
                first.1,
                format!("{p}/{}", polydev_providers::default_model(p))
            );
        }
        for (p, id) in all {
            assert_eq!(route_model(&id).unwrap().0, p);
        }
    }

    #[test]
    fn statuses_follow_the_design_table() {
        let cases = [
            (ErrorKind::Auth, 401, 401),
            (ErrorKind::Permission, 403, 403),
            (ErrorKind::NotFound, 404, 404),
            (ErrorKind::BadRequest, 400, 400),
            (ErrorKind::Config, 400, 400),
            (ErrorKind::Blocked, 400, 400),
            (ErrorKind::RateLimited, 429, 429),
            (ErrorKind::Overloaded, 503, 529),
            (ErrorKind::Upstream, 502, 502),
            (ErrorKind::Timeout, 504, 504),
            (ErrorKind::Internal, 500, 500),
        ];
        for (kind, oai, ant) in cases {
            let e = ErrorEvent::new(kind, "m");
            assert_eq!(
                DoorError::from_event(Door::OpenAi, &e, "ex")
                    .status
                    .as_u16(),
                oai,
                "{kind}"
            );
            assert_eq!(
                DoorError::from_event(Door::Anthropic, &e, "ex")
                    .status
                    .as_u16(),
                ant,
                "{kind}"
            );
        }
        let partial = ErrorEvent {
            partial: true,
            ..ErrorEvent::new(ErrorKind::Upstream, "cut")
        };
        assert!(!DoorError::from_event(Door::OpenAi, &partial, "ex").should_retry);
        assert!(
            DoorError::from_event(
                Door::OpenAi,
                &ErrorEvent::new(ErrorKind::Upstream, "x"),
                "ex"
            )
            .should_retry
        );
    }

    #[test]
    fn error_bodies() {
        let e = DoorError::from_event(
            Door::Anthropic,
            &ErrorEvent::new(ErrorKind::Overloaded, "busy"),
            "ex",
        );
        assert_eq!(
            e.body(Door::Anthropic),
            serde_json::json!({"type":"error","error":{"type":"overloaded_error","message":"busy"}})
        );
        let e = DoorError::bad_request("n must be 1").param("n");
        assert_eq!(
            e.body(Door::OpenAi),
            serde_json::json!({"error":{"message":"n must be 1","type":"invalid_request_error","param":"n","code":"bad_request"}})
        );
    }

    #[test]
    fn user_and_key_sources() {
        let mut h = HeaderMap::new();
        assert!(user_id(&h, &[None, Some(" ")]).is_err());
        assert_eq!(user_id(&h, &[None, Some("b")]).unwrap(), "b");
        h.insert(USER_HEADER, HeaderValue::from_static("hdr"));
        assert_eq!(user_id(&h, &[Some("a")]).unwrap(), "hdr");
        let body = Credentials {
            api_key: ApiKey::new("sk-test-body"),
        };
        assert_eq!(credentials(&h, Some(body.clone())), body);
        h.insert(PROVIDER_KEY_HEADER, HeaderValue::from_static("sk-test-hdr"));
        assert_eq!(credentials(&h, Some(body)).api_key.expose(), "sk-test-hdr");
    }
}
