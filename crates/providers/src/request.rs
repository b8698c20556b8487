//! The streaming HTTP request for a job, one builder per provider.
//!
//! This is where each provider's request conventions live: URL layout relative to the SDK-style
//! base URL, auth header, required headers and body fields (OpenAI `stream_options` and
//! `max_completion_tokens` for reasoning models; Anthropic's required `max_tokens` and
//! `anthropic-version`; Gemini's `alt=sse`, `contents`/`systemInstruction`/`generationConfig`).
//! The result is a plain [`http::Request`] so the transport stays provider-agnostic.
//!
//! The key travels only in a header marked sensitive (never in the URL, where it would leak
//! into proxy and server logs), and model ids are percent-encoded where they enter a URL path.

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{Method, Request, Uri};
use polydev_protocol::{ApiKey, Job, Message, Provider, ResponseFormat, Role};

use crate::body::{self, Conversation};

/// The Anthropic API version every request pins (the SDKs still send this one).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Why a request could not be built. All are configuration problems (`config`, exit 64); no
/// message contains the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("invalid model id {model:?}: {reason}")]
    InvalidModel { model: String, reason: &'static str },
    #[error("invalid base URL: {0}")]
    InvalidBaseUrl(&'static str),
    #[error("no conversation: the job has no user or assistant turn")]
    EmptyConversation,
    #[error("the API key contains characters that cannot be sent in an HTTP header")]
    InvalidKey,
    #[error("invalid {field}: {reason}")]
    InvalidParameter { field: &'static str, reason: String },
}

/// Builds the streaming request (POST, JSON body) for `job` against `model` at `base_url`.
///
/// `base_url` follows each official SDK's convention: OpenAI's includes `/v1`
/// (`https://api.openai.com/v1`), Anthropic's and Gemini's do not. A trailing slash is
/// tolerated, and for Gemini (and Anthropic) a base URL that already ends in an API version
/// segment (`/v1beta`, `/v1`) gets no second one.
pub fn build_request(job: &Job, model: &str, base_url: &str) -> Result<Request<Bytes>, BuildError> {
    let base = normalize_base(base_url)?;
    let prompt: Vec<Message> = match (&job.messages, &job.prompt) {
        (None, Some(p)) => vec![Message::text(Role::User, p.clone())],
        _ => Vec::new(),
    };
    let conv = Conversation::from_job(job, &prompt)?;
    if let Some(t) = job.temperature
        && !t.is_finite()
    {
        return Err(BuildError::InvalidParameter {
            field: "temperature",
            reason: "must be a finite number".into(),
        });
    }
    let model = check_model(model)?;
    let key = &job.credentials.api_key;
    let (url, body, auth) = match job.provider {
        Provider::OpenAi => (
            format!("{base}/chat/completions"),
            body::build(job, model, &conv)?,
            auth_header(AUTHORIZATION, "Bearer ", key)?,
        ),
        Provider::Anthropic => (
            format!("{}/messages", with_version(base, "v1")),
            body::build(job, model, &conv)?,
            auth_header(HeaderName::from_static("x-api-key"), "", key)?,
        ),
        Provider::Google => {
            let model = model.strip_prefix("models/").unwrap_or(model);
            let model = check_model(model)?;
            (
                format!(
                    "{}/models/{}:streamGenerateContent?alt=sse",
                    with_version(base, "v1beta"),
                    encode_path_segment(model)
                ),
                body::build(job, model, &conv)?,
                auth_header(HeaderName::from_static("x-goog-api-key"), "", key)?,
            )
        }
    };
    let uri = Uri::try_from(url).map_err(|_| BuildError::InvalidBaseUrl("not a valid URL"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(BuildError::InvalidBaseUrl("no host"));
    }
    let body = serde_json::to_vec(&body).map_err(|e| BuildError::InvalidParameter {
        field: "body",
        reason: e.to_string(),
    })?;
    let mut req = Request::new(Bytes::from(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    h.insert(auth.0, auth.1);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    h.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("polydev-runtime/", env!("CARGO_PKG_VERSION"))),
    );
    if job.provider == Provider::Anthropic {
        h.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
    }
    Ok(req)
}

/// Whether an Anthropic model has structured outputs (`output_config.format`). Anthropic's
/// structured-outputs page (platform.claude.com/docs/en/build-with-claude/structured-outputs,
/// read December 2026) lists them as generally available for Claude Haiku 4.5, Sonnet 4.5,
/// Opus 4.5 and the 4.6 models; Claude 3.x, 2.x, Instant, Sonnet 4 and Opus 4 / 4.1
/// (`claude-sonnet-4-0` / `-4-2025…`, `claude-opus-4-0` / `-4-1` / `-4-2025…`) are not on it
/// and answer that field with a 400 (Opus 4.1 only had the old beta `output_format`). Any id not
/// recognised as one of those old ones (a newer model, the emulator's `emu-…`) is taken to have
/// them. A routing prefix such as `anthropic/` or Bedrock's `anthropic.` is tolerated.
pub fn anthropic_structured_outputs(model: &str) -> bool {
    let m = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    let m = m.strip_prefix("anthropic.").unwrap_or(&m);
    const LEGACY: [&str; 8] = [
        "claude-2",
        "claude-3",
        "claude-instant",
        "claude-sonnet-4-0",
        "claude-sonnet-4-2025",
        "claude-opus-4-0",
        "claude-opus-4-1",
        "claude-opus-4-2025",
    ];
    !LEGACY.iter().any(|p| m.starts_with(p))
}

/// The forced tool that carries a JSON answer to an Anthropic model without structured outputs
/// (the job's JSON `response_format` on such a model): its name is the schema's `name`, or
/// [`ANTHROPIC_JSON_TOOL`] for `json_object`. `None` when the job needs no such tool.
pub fn anthropic_answer_tool<'a>(job: &'a Job, model: &str) -> Option<&'a str> {
    if job.provider != Provider::Anthropic || anthropic_structured_outputs(model) {
        return None;
    }
    match &job.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(ANTHROPIC_JSON_TOOL),
        Some(ResponseFormat::JsonSchema { name, .. }) => Some(name),
    }
}

/// The forced tool's name for a `json_object` answer on an Anthropic model without structured
/// outputs.
pub const ANTHROPIC_JSON_TOOL: &str = "json_answer";

/// Whether an OpenAI model rejects `max_tokens` and wants `max_completion_tokens`: the
/// o-series (`o1`, `o3`, `o4-mini`, …) and GPT-5 onwards (`gpt-5*`, `gpt-6*`, …).
pub fn uses_max_completion_tokens(model: &str) -> bool {
    // Tolerate a routing prefix such as `openai/` (OpenAI-compatible routers).
    let m = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    let b = m.as_bytes();
    if b.len() >= 2 && b[0] == b'o' && b[1].is_ascii_digit() {
        return true;
    }
    if let Some(rest) = m.strip_prefix("gpt-") {
        let major: String = rest.chars().take_while(char::is_ascii_digit).collect();
        return major.parse::<u32>().is_ok_and(|n| n >= 5);
    }
    false
}

/// Gemini 1.x and 2.0 models have no thinking and reject `thinkingConfig`; every later model
/// (2.5, 3.x) and any model id we do not recognise as old gets thought summaries.
pub(crate) fn gemini_can_think(model: &str) -> bool {
    let m = model.trim_start_matches("models/");
    !(m.starts_with("gemini-1") || m.starts_with("gemini-2.0") || m.starts_with("gemini-pro"))
}

/// The auth header, marked sensitive (HPACK never indexes it; debug output hides it). The key
/// is trimmed: a key file's trailing newline is not part of the key.
fn auth_header(
    name: HeaderName,
    scheme: &str,
    key: &ApiKey,
) -> Result<(HeaderName, HeaderValue), BuildError> {
    let key = key.expose().trim();
    if key.is_empty() {
        return Err(BuildError::InvalidKey);
    }
    let mut raw = Vec::with_capacity(scheme.len() + key.len());
    raw.extend_from_slice(scheme.as_bytes());
    raw.extend_from_slice(key.as_bytes());
    let value = HeaderValue::from_bytes(&raw);
    // Best effort: do not leave a second copy of the key in freed memory.
    raw.fill(0);
    std::hint::black_box(&raw);
    let mut value = value.map_err(|_| BuildError::InvalidKey)?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// Checks the scheme and strips trailing slashes.
fn normalize_base(base_url: &str) -> Result<&str, BuildError> {
    let base = base_url.trim();
    let lower = base.get(..8).unwrap_or(base).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(BuildError::InvalidBaseUrl(
            "must start with http:// or https://",
        ));
    }
    if base.contains(['?', '#']) {
        return Err(BuildError::InvalidBaseUrl(
            "must not contain a query or fragment",
        ));
    }
    if base.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BuildError::InvalidBaseUrl("must not contain whitespace"));
    }
    Ok(base.trim_end_matches('/'))
}

/// `base` plus `/{version}`, unless its last path segment already is an API version
/// (`v1`, `v1beta`, `v1alpha`, `v2`, …).
fn with_version(base: &str, version: &str) -> String {
    let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
    let last = after_scheme
        .split_once('/')
        .and_then(|(_, path)| path.rsplit('/').next());
    if last.is_some_and(is_version_segment) {
        base.to_owned()
    } else {
        format!("{base}/{version}")
    }
}

fn is_version_segment(seg: &str) -> bool {
    let Some(rest) = seg.strip_prefix('v') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0
        && rest[digits..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn check_model(model: &str) -> Result<&str, BuildError> {
    let invalid = |reason| BuildError::InvalidModel {
        model: model.to_owned(),
        reason,
    };
    if model.trim().is_empty() {
        return Err(invalid("empty"));
    }
    if model != model.trim() {
        return Err(invalid("leading or trailing whitespace"));
    }
    if model.chars().any(char::is_control) {
        return Err(invalid("control characters"));
    }
    if model == "." || model == ".." {
        return Err(invalid("not a model name"));
    }
    Ok(model)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a model id can never add
/// path segments, a query or a fragment.
fn encode_path_segment(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
    out
}

#[cfg(test)]
mod tests;
