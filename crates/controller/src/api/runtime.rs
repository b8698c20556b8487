//! The runtime API (DESIGN.md 4.4): what pull-mode runtimes call, on the same listener as the
//! client API but outside its bearer-token check, because runtimes must never hold the client
//! token. Each request is authenticated as one *instance* by the backend's
//! [`InstanceAuthenticator`](crate::backend::pull::InstanceAuthenticator); what that instance
//! may fetch or report is decided by the [`InstanceRegistry`](crate::backend::pull::InstanceRegistry).
//! This module only translates HTTP.
//!
//! | route | answers |
//! |---|---|
//! | `GET /runtime/v1/next` | `200` the job (once) · `204` nothing yet, poll again (after ~25 s) · `410` no job will come, exit · `401` bad or expired credential |
//! | `GET /runtime/v1/executions/{id}/events` | the resume handshake: `200` `{"received": N}`, the lines the controller holds · `401` · `403` · `409` not fetched · `410` the execution takes no more report, exit |
//! | (both, while the controller detaches at shutdown) | `503`: report again, to the next controller |
//! | `POST /runtime/v1/executions/{id}/events` | a chunked NDJSON body with the runtime's output lines from line `polydev-event-offset` (absent: 0); `204` once it ended · `401` · `403` another instance's execution · `409` not fetched, or not at the controller's position (body `{"received": N}` too) · `410` the execution takes no more report · `413` line or body too large |
//!
//! The report protocol, including how a broken report is resumed, is
//! `polydev_protocol::report`. A credential stays valid for re-reporting its own execution
//! until that execution's report has ended.
//!
//! Errors use the client API's body shape, `{"error":{"kind","message"}}`, and never say more
//! than the runtime needs.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use serde_json::json;
use zeroize::Zeroizing;

use polydev_protocol::report::EVENT_OFFSET_HEADER;

use crate::backend::pull::{
    AuthError, InstanceId, MAX_CREDENTIAL_BYTES, NextOutcome, ReportEnd, ReportError,
    ReportOutcome, ReportRefused, RuntimeApi,
};

/// Execution ids are short (`ex_` + 27 hex digits); anything else is not one.
const MAX_EXECUTION_ID: usize = 64;

/// The runtime routes for `api`, ready to merge into the client router.
pub fn router(api: RuntimeApi) -> Router {
    Router::new()
        .route("/runtime/v1/next", get(next))
        .route(
            "/runtime/v1/executions/{id}/events",
            get(position).post(events),
        )
        .method_not_allowed_fallback(|| async { RuntimeError::MethodNotAllowed })
        .with_state(api)
}

/// Errors of the runtime API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RuntimeError {
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error("{0}")]
    Refused(ReportRefused),
    #[error("no job will come for this instance")]
    Gone,
    #[error("{0}")]
    TooLarge(ReportError),
    #[error("not an execution id")]
    BadId,
    #[error("the {EVENT_OFFSET_HEADER} header is not a line number")]
    BadOffset,
    #[error("a newer report for this execution took over")]
    Superseded,
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl RuntimeError {
    fn status(&self) -> StatusCode {
        match self {
            RuntimeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RuntimeError::Refused(ReportRefused::WrongExecution) => StatusCode::FORBIDDEN,
            RuntimeError::Refused(ReportRefused::NotFetched | ReportRefused::Offset(_))
            | RuntimeError::BadOffset
            | RuntimeError::Superseded => StatusCode::CONFLICT,
            RuntimeError::Refused(ReportRefused::Gone) | RuntimeError::Gone => StatusCode::GONE,
            RuntimeError::Refused(ReportRefused::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
            RuntimeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RuntimeError::BadId => StatusCode::NOT_FOUND,
            RuntimeError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            RuntimeError::Unauthorized(_) => "unauthorized",
            RuntimeError::Refused(ReportRefused::WrongExecution) => "forbidden",
            RuntimeError::Refused(ReportRefused::NotFetched | ReportRefused::Offset(_))
            | RuntimeError::BadOffset
            | RuntimeError::Superseded => "conflict",
            RuntimeError::Refused(ReportRefused::Gone) | RuntimeError::Gone => "gone",
            RuntimeError::Refused(ReportRefused::Unavailable) => "unavailable",
            RuntimeError::TooLarge(_) => "payload_too_large",
            RuntimeError::BadId => "not_found",
            RuntimeError::MethodNotAllowed => "method_not_allowed",
        }
    }
}

impl IntoResponse for RuntimeError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"kind": self.kind(), "message": self.to_string()}});
        // A position mismatch also says where the controller's copy ends (ReportPosition).
        if let RuntimeError::Refused(ReportRefused::Offset(received)) = self {
            body["received"] = json!(received);
        }
        let mut res = (self.status(), axum::Json(body)).into_response();
        if matches!(self, RuntimeError::Unauthorized(_)) {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// The bearer credential, bounded; `Missing` if there is none.
fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    if value.len() > MAX_CREDENTIAL_BYTES + 16 {
        return Err(AuthError::Invalid);
    }
    let (scheme, token) = value
        .to_str()
        .map_err(|_| AuthError::Invalid)?
        .trim()
        .split_once(' ')
        .ok_or(AuthError::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Invalid);
    }
    Ok(token.trim())
}

async fn authenticate(api: &RuntimeApi, headers: &HeaderMap) -> Result<InstanceId, RuntimeError> {
    let credential = bearer(headers).map_err(RuntimeError::Unauthorized)?;
    match api.auth.authenticate(credential).await {
        Ok(id) => Ok(id),
        // A restarted controller may not have restored this credential yet: the runtime
        // must try again rather than give up (InstanceRegistry::begin_adoptions).
        Err(e) if e != AuthError::Missing && api.registry.adoptions_pending() => {
            tracing::debug!(error = %e, "runtime API: credential unknown while adopting; retry");
            Err(RuntimeError::Refused(ReportRefused::Unavailable))
        }
        Err(e) => {
            tracing::debug!(error = %e, "runtime API: credential refused");
            Err(RuntimeError::Unauthorized(e))
        }
    }
}

async fn next(State(api): State<RuntimeApi>, headers: HeaderMap) -> Response {
    let id = match authenticate(&api, &headers).await {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    match api.registry.next(&id).await {
        NextOutcome::Job(job) => {
            let body = match serde_json::to_string(&job) {
                Ok(s) => Zeroizing::new(s),
                Err(_) => {
                    // Cannot happen for a job that was parsed from JSON; the instance gets
                    // nothing and the backend's fetch timeout ends the execution.
                    tracing::error!(instance = %id, "runtime API: the job cannot be serialized");
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
            };
            tracing::debug!(instance = %id, execution_id = ?job.execution_id, "runtime API: job handed out");
            (
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
                Body::from(body.as_bytes().to_vec()),
            )
                .into_response()
        }
        NextOutcome::NoContent => StatusCode::NO_CONTENT.into_response(),
        NextOutcome::Gone => RuntimeError::Gone.into_response(),
    }
}

fn valid_execution_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_EXECUTION_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The report offset header: absent means 0; anything but a decimal number is refused.
fn offset(headers: &HeaderMap) -> Result<u64, RuntimeError> {
    match headers.get(EVENT_OFFSET_HEADER) {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| s.len() <= 20 && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or(RuntimeError::BadOffset),
    }
}

/// The resume handshake: how many lines of the execution's report the controller holds.
async fn position(
    State(api): State<RuntimeApi>,
    Path(execution_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let id = match authenticate(&api, &headers).await {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    if !valid_execution_id(&execution_id) {
        return RuntimeError::BadId.into_response();
    }
    match api.registry.position(&id, &execution_id).await {
        Ok(p) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            axum::Json(p),
        )
            .into_response(),
        Err(refused) => {
            tracing::debug!(instance = %id, %execution_id, %refused, "runtime API: position refused");
            RuntimeError::Refused(refused).into_response()
        }
    }
}

async fn events(
    State(api): State<RuntimeApi>,
    Path(execution_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let id = match authenticate(&api, &headers).await {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    if !valid_execution_id(&execution_id) {
        return RuntimeError::BadId.into_response();
    }
    let from = match offset(&headers) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let mut sink = match api.registry.begin_report(&id, &execution_id, from).await {
        Ok(sink) => sink,
        Err(refused) => {
            tracing::warn!(instance = %id, %execution_id, %refused, "runtime API: report refused");
            return RuntimeError::Refused(refused).into_response();
        }
    };
    tracing::debug!(instance = %id, %execution_id, from, "runtime API: receiving events");
    let mut stream = body.into_data_stream();
    let end = loop {
        match stream.next().await {
            None => break ReportEnd::Complete,
            Some(Ok(chunk)) => {
                if let Err(e) = sink.push(&chunk).await {
                    break ReportEnd::Cut(e);
                }
            }
            Some(Err(e)) => {
                tracing::debug!(instance = %id, error = %e, "runtime API: event stream broke");
                break ReportEnd::Broken;
            }
        }
    };
    let answer = match &end {
        ReportEnd::Complete => StatusCode::NO_CONTENT.into_response(),
        ReportEnd::Cut(e @ (ReportError::LineTooLong(_) | ReportError::TooLarge(_))) => {
            tracing::warn!(instance = %id, %execution_id, error = %e, "runtime API: report cut");
            RuntimeError::TooLarge(e.clone()).into_response()
        }
        // Another report took over: this one's runtime asks for the position again.
        ReportEnd::Cut(ReportError::Superseded) => RuntimeError::Superseded.into_response(),
        // Closed because the controller is detaching: the runtime reports again later.
        ReportEnd::Cut(ReportError::Closed) if api.registry.is_detached() => {
            RuntimeError::Refused(ReportRefused::Unavailable).into_response()
        }
        ReportEnd::Cut(ReportError::Closed) => RuntimeError::Gone.into_response(),
        ReportEnd::Broken => RuntimeError::Gone.into_response(),
    };
    if sink.finish(end).await == ReportOutcome::Ended {
        // The report is over: nothing else may be fetched or reported with this credential.
        api.auth.redeemed(&id);
    }
    answer
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http::Request;
    use http_body_util::BodyExt;
    use polydev_protocol::{Event, Job};
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    use super::*;
    use crate::backend::InstanceOutput;
    use crate::backend::pull::{InstanceRegistry, RegistryConfig, TokenAuthenticator};

    struct Fixture {
        app: Router,
        auth: Arc<TokenAuthenticator>,
        registry: Arc<InstanceRegistry>,
    }

    fn fixture() -> Fixture {
        let auth = Arc::new(TokenAuthenticator::new());
        let registry = Arc::new(InstanceRegistry::new(RegistryConfig {
            poll_hold: Duration::from_millis(50),
            max_line_bytes: 1024,
            max_report_bytes: 64 * 1024,
            ..RegistryConfig::default()
        }));
        let app = router(RuntimeApi {
            auth: auth.clone(),
            registry: registry.clone(),
        });
        Fixture {
            app,
            auth,
            registry,
        }
    }

    fn job(id: &str) -> Job {
        let line = serde_json::json!({
            "execution_id": id, "user_id": "u", "provider": "openai", "prompt": "hi",
            "credentials": {"api_key": "sk-test-secret"},
        })
        .to_string();
        Job::from_json(&line).unwrap()
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, String) {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        send(app, b, body).await
    }

    /// Sends the request `b` with `body`; the status and the body as text.
    async fn send(app: &Router, b: http::request::Builder, body: &str) -> (StatusCode, String) {
        let res = app
            .clone()
            .oneshot(b.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn next_and_events_follow_the_instance_rules() {
        let f = fixture();
        let id = InstanceId::random().unwrap();
        let token = f.auth.issue(&id, Duration::from_secs(60)).unwrap();
        let t = token.expose();
        let (tx, mut rx) = mpsc::channel(16);
        f.registry.register(id.clone(), tx, None).unwrap();

        // A wrong method gets a JSON body like every other refusal (probe F12).
        let (s, body) = call(&f.app, "DELETE", "/runtime/v1/next", None, "").await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{body}");
        assert!(body.contains("\"kind\":\"method_not_allowed\""), "{body}");
        // No or bad credentials.
        let (s, body) = call(&f.app, "GET", "/runtime/v1/next", None, "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body.contains("\"kind\":\"unauthorized\""), "{body}");
        let (s, _) = call(&f.app, "GET", "/runtime/v1/next", Some("pi_x.00"), "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        // Idle: 204 after the hold.
        let (s, _) = call(&f.app, "GET", "/runtime/v1/next", Some(t), "").await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        // Nothing to report before the job is fetched.
        let (s, _) = call(
            &f.app,
            "POST",
            "/runtime/v1/executions/ex_1/events",
            Some(t),
            "",
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT);
        // The job, once.
        f.registry.assign(&id, job("ex_1")).unwrap();
        let (s, body) = call(&f.app, "GET", "/runtime/v1/next", Some(t), "").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            Job::from_json(&body).unwrap().execution_id.as_deref(),
            Some("ex_1")
        );
        let (s, _) = call(&f.app, "GET", "/runtime/v1/next", Some(t), "").await;
        assert_eq!(s, StatusCode::GONE);
        // Only its own execution.
        let (s, _) = call(
            &f.app,
            "POST",
            "/runtime/v1/executions/ex_2/events",
            Some(t),
            "",
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = call(
            &f.app,
            "POST",
            "/runtime/v1/executions/a%2Fb/events",
            Some(t),
            "",
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let body = "{\"type\":\"text\",\"text\":\"hi\"}\n{\"type\":\"end\",\"finish_reason\":\"stop\",\"duration_ms\":3}\n";
        let (s, _) = call(
            &f.app,
            "POST",
            "/runtime/v1/executions/ex_1/events",
            Some(t),
            body,
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert!(matches!(
            rx.recv().await,
            Some(InstanceOutput::Event(Event::Text { .. }))
        ));
        assert!(matches!(
            rx.recv().await,
            Some(InstanceOutput::Event(Event::End { .. }))
        ));
        // The token was redeemed once the report ended: refused from now on.
        let (s, _) = call(
            &f.app,
            "POST",
            "/runtime/v1/executions/ex_1/events",
            Some(t),
            body,
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(f.auth.active(), 0);
    }

    async fn post_from(
        app: &Router,
        uri: &str,
        token: &str,
        offset: Option<&str>,
        body: &str,
    ) -> (StatusCode, String) {
        let mut b = Request::builder()
            .method("POST")
            .uri(uri)
            .header("authorization", format!("Bearer {token}"));
        if let Some(o) = offset {
            b = b.header(EVENT_OFFSET_HEADER, o);
        }
        send(app, b, body).await
    }

    #[tokio::test]
    async fn the_resume_handshake() {
        let f = fixture();
        let id = InstanceId::random().unwrap();
        let token = f.auth.issue(&id, Duration::from_secs(60)).unwrap();
        let t = token.expose();
        let (tx, mut rx) = mpsc::channel(16);
        f.registry
            .register(id.clone(), tx, Some(job("ex_9")))
            .unwrap();
        let uri = "/runtime/v1/executions/ex_9/events";
        let (s, _) = call(&f.app, "GET", uri, Some(t), "").await;
        assert_eq!(s, StatusCode::CONFLICT, "not fetched yet");
        let (s, _) = call(&f.app, "GET", "/runtime/v1/next", Some(t), "").await;
        assert_eq!(s, StatusCode::OK);
        let (s, body) = call(&f.app, "GET", uri, Some(t), "").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"received":0}"#));
        // A bad offset header, and an offset that is not the controller's position.
        let (s, body) = post_from(&f.app, uri, t, Some("x1"), "").await;
        assert_eq!(s, StatusCode::CONFLICT, "{body}");
        let (s, body) = post_from(&f.app, uri, t, Some("3"), "").await;
        assert_eq!(s, StatusCode::CONFLICT, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["received"], 0);
        // Lines 0-1 arrive through the registry (as a broken connection would leave them).
        let mut sink = f.registry.begin_report(&id, "ex_9", 0).await.unwrap();
        sink.push(b"{\"type\":\"ready\"}\n{\"type\":\"text\",\"text\":\"a\"}\n")
            .await
            .unwrap();
        assert_eq!(sink.finish(ReportEnd::Broken).await, ReportOutcome::Waiting);
        let (s, body) = call(&f.app, "GET", uri, Some(t), "").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"received":2}"#));
        // The credential still works for the resume, from line 2.
        let rest = "{\"type\":\"text\",\"text\":\"b\"}\n{\"type\":\"end\",\"finish_reason\":\"stop\",\"duration_ms\":3}\n";
        let (s, body) = post_from(&f.app, uri, t, Some("2"), rest).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
        let mut texts = Vec::new();
        while let Ok(item) = rx.try_recv() {
            match item {
                InstanceOutput::Event(Event::Text { text }) => texts.push(text),
                InstanceOutput::Event(Event::End { .. }) => texts.push("end".into()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(texts, ["a", "b", "end"]);
        // Ended: the credential is spent.
        let (s, _) = call(&f.app, "GET", uri, Some(t), "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }

    /// While a restarted controller is adopting, a credential it does not know yet is "try
    /// again" (503), not "refused" (401, on which a runtime gives up for good); once the
    /// adoptions settled it is refused again. A missing credential is always 401.
    #[tokio::test]
    async fn unknown_credentials_are_retried_while_adoptions_are_pending() {
        let f = fixture();
        f.registry.begin_adoptions(2);
        let (s, body) = call(&f.app, "GET", "/runtime/v1/next", Some("pi_x.00"), "").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (s, _) = call(
            &f.app,
            "GET",
            "/runtime/v1/executions/ex_1/events",
            Some("pi_x.00"),
            "",
        )
        .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        let (s, _) = call(&f.app, "GET", "/runtime/v1/next", None, "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        f.registry.adoption_settled();
        assert!(f.registry.adoptions_pending());
        f.registry.adoption_settled();
        f.registry.adoption_settled();
        assert!(!f.registry.adoptions_pending());
        let (s, _) = call(&f.app, "GET", "/runtime/v1/next", Some("pi_x.00"), "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn expired_tokens_and_oversized_lines_are_refused() {
        let f = fixture();
        let id = InstanceId::random().unwrap();
        let token = f.auth.issue(&id, Duration::ZERO).unwrap();
        let (tx, _rx) = mpsc::channel(16);
        f.registry
            .register(id.clone(), tx, Some(job("ex_3")))
            .unwrap();
        let (s, body) = call(&f.app, "GET", "/runtime/v1/next", Some(token.expose()), "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(body.contains("expired"), "{body}");

        let id = InstanceId::random().unwrap();
        let token = f.auth.issue(&id, Duration::from_secs(60)).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        f.registry
            .register(id.clone(), tx, Some(job("ex_4")))
            .unwrap();
        let (s, _) = call(&f.app, "GET", "/runtime/v1/next", Some(token.expose()), "").await;
        assert_eq!(s, StatusCode::OK);
        let long = format!("{{\"type\":\"text\",\"text\":\"{}\"}}\n", "x".repeat(2000));
        let (s, body) = call(
            &f.app,
            "POST",
            "/runtime/v1/executions/ex_4/events",
            Some(token.expose()),
            &long,
        )
        .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        match rx.recv().await {
            Some(InstanceOutput::Event(Event::Error(e))) => {
                assert!(
                    e.message.contains("longer than 1024 bytes"),
                    "{}",
                    e.message
                )
            }
            other => panic!("{other:?}"),
        }
        // The job (with its key) never shows up in an error body.
        assert!(!body.contains("sk-test-secret"));
    }
}
