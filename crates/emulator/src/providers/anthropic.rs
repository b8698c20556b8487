//! Anthropic Messages: `POST /v1/messages`.
//!
//! Streams are `event: NAME\ndata: {json}\n\n` with the JSON `type` equal to the event name:
//! `message_start` (usage with the real input count and an `output_tokens: 1` placeholder),
//! per block `content_block_start` / `content_block_delta`* / `content_block_stop` (a `ping`
//! follows the first block start), `message_delta` with the stop reason and cumulative usage,
//! and `message_stop`. Thinking comes as a first block of `thinking_delta`s closed by one
//! `signature_delta`. Errors carry `request_id` in the body and a `request-id` header.

use bytes::Bytes;
use http::{HeaderMap, Response};
use serde::Serialize;
use serde_json::Value;

use super::{
    Finish, Incoming, InjectedError, Plan, content_texts, deliver_json, extras, fixed, resolve,
    set_header,
};
use crate::body::{ResponseBody, Script, Step};
use crate::ids;
use crate::scenario::Effective;
use crate::text;

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream; charset=utf-8";

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorDetail<'a>,
    request_id: &'a str,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

fn error_response(
    status: u16,
    request_id: &str,
    kind: &str,
    message: &str,
) -> Response<ResponseBody> {
    let body = ErrorBody {
        kind: "error",
        error: ErrorDetail { kind, message },
        request_id,
    };
    let mut response = fixed(status, JSON, serde_json::to_vec(&body).unwrap_or_default());
    set_header(&mut response, "request-id", request_id);
    response
}

fn invalid(request_id: &str, message: &str) -> Response<ResponseBody> {
    error_response(400, request_id, "invalid_request_error", message)
}

/// The 404 for an unknown URL.
pub(crate) fn not_found() -> Response<ResponseBody> {
    error_response(
        404,
        &ids::anthropic_request_id(),
        "not_found_error",
        "Not Found",
    )
}

/// The 413 for a body over the emulator's bound.
pub(crate) fn too_large() -> Response<ResponseBody> {
    error_response(
        413,
        &ids::anthropic_request_id(),
        "request_too_large",
        "Request exceeds the maximum allowed number of bytes.",
    )
}

fn api_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim()).filter(|k| !k.is_empty());
    }
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether the request asked for thinking, and whether its text should be shown.
struct ThinkingRequest {
    disabled: bool,
    omitted: bool,
}

/// `POST /v1/messages`.
pub(crate) async fn messages(inc: Incoming<'_>) -> Response<ResponseBody> {
    let request_id = ids::anthropic_request_id();
    let rid = request_id.as_str();
    match api_key(inc.headers) {
        None => {
            return error_response(
                401,
                rid,
                "authentication_error",
                "x-api-key header is required",
            );
        }
        Some(key) if key.contains("invalid") => {
            return error_response(401, rid, "authentication_error", "invalid x-api-key");
        }
        Some(_) => {}
    }
    let has_version = inc
        .headers
        .get("anthropic-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().is_empty());
    if !has_version {
        return invalid(rid, "anthropic-version: header is required");
    }
    let body = match serde_json::from_slice::<Value>(&inc.body) {
        Ok(Value::Object(body)) => body,
        Ok(_) => {
            return invalid(
                rid,
                "Input should be a valid dictionary or object to extract fields from",
            );
        }
        Err(_) => {
            return invalid(
                rid,
                "There was an error parsing the body of your request as JSON",
            );
        }
    };
    let Some(model_value) = body.get("model") else {
        return invalid(rid, "model: Field required");
    };
    let Some(model) = model_value.as_str() else {
        return invalid(rid, "model: Input should be a valid string");
    };
    let messages = match body.get("messages") {
        None => return invalid(rid, "messages: Field required"),
        Some(Value::Array(m)) => m,
        Some(_) => return invalid(rid, "messages: Input should be a valid list"),
    };
    let max_tokens = match body.get("max_tokens") {
        None => return invalid(rid, "max_tokens: Field required"),
        Some(v) => match v.as_u64() {
            Some(n) => n,
            None => return invalid(rid, "max_tokens: Input should be a valid integer"),
        },
    };
    if messages.is_empty() {
        return invalid(rid, "messages: at least one message is required");
    }
    let thinking = body.get("thinking");
    let thinking_type = thinking.and_then(|t| t.get("type")).and_then(Value::as_str);
    if thinking_type == Some("enabled") {
        let budget = thinking
            .and_then(|t| t.get("budget_tokens"))
            .and_then(Value::as_u64);
        match budget {
            None => return invalid(rid, "thinking.enabled.budget_tokens: Field required"),
            Some(b) if b < 1024 => {
                return invalid(
                    rid,
                    "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
                );
            }
            Some(b) if b >= max_tokens => {
                return invalid(
                    rid,
                    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size",
                );
            }
            Some(_) => {}
        }
    }
    let thinking_request = ThinkingRequest {
        disabled: thinking_type == Some("disabled"),
        omitted: thinking
            .and_then(|t| t.get("display"))
            .and_then(Value::as_str)
            == Some("omitted"),
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);

    if let Some(resp) = check_messages(messages, thinking_type == Some("enabled"), rid) {
        return resp;
    }
    let tool_names: Vec<String> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let ends_with_tool_result = messages.last().is_some_and(|m| {
        m.get("content")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|b| block_type(b) == Some("tool_result")))
    });
    let format = body.get("output_config").and_then(|o| o.get("format"));
    if format.is_some() && !has_structured_outputs(model) {
        return invalid(
            rid,
            &format!(
                "output_config.format: structured outputs are not supported by the model '{model}'"
            ),
        );
    }
    let json_answer = format
        .filter(|f| f.get("type").and_then(Value::as_str) == Some("json_schema"))
        .map(|f| extras::json_answer(f.get("schema")));
    let forced = match forced_tool(&body) {
        Ok(forced) => forced,
        Err(message) => return invalid(rid, &message),
    };
    if forced.is_some() && thinking_type == Some("enabled") {
        return invalid(
            rid,
            "Thinking may not be enabled when tool_choice forces tool use.",
        );
    }
    let mut texts = Vec::new();
    if let Some(system) = body.get("system") {
        content_texts(system, &mut texts);
    }
    for message in messages {
        if let Some(content) = message.get("content") {
            content_texts(content, &mut texts);
        }
    }
    let input_tokens = super::input_tokens(texts);

    let mut scenario = resolve(inc.shared, model);
    if thinking_request.disabled {
        scenario.think = 0;
    }
    tokio::time::sleep(scenario.ttfb).await;
    if let Some(status) = scenario.err {
        return injected_error(status, &scenario, model, rid);
    }
    if let Some(status) = scenario.policy {
        return error_response(status, rid, "invalid_request_error", CONTENT_FILTERED);
    }
    let calls = match forced {
        // A forced tool is always called, once, with input satisfying its schema.
        Some((name, schema)) => vec![extras::PlannedCall {
            id: ids::anthropic_tool_use_id(),
            name,
            arguments: extras::json_answer(schema.as_ref()),
        }],
        None => extras::plan_calls(scenario.tools, &tool_names, ends_with_tool_result, |_| {
            ids::anthropic_tool_use_id()
        }),
    };
    let mut plan = Plan::new(model, &scenario, input_tokens, Some(max_tokens))
        .with_calls(calls, scenario.argsplit);
    if let Some(json) = &json_answer {
        plan = plan.with_json(json);
    }
    let message_id = ids::anthropic_message_id();
    let mut response = if stream {
        let script = MessageScript::new(plan, message_id, thinking_request.omitted);
        super::streaming(inc.shared, &scenario, EVENT_STREAM, Box::new(script))
    } else {
        let body = message_json(&plan, &message_id, thinking_request.omitted);
        let error_id = request_id.clone();
        deliver_json(&scenario, &plan, JSON, body, move |which| {
            Some(match which {
                InjectedError::Overload => {
                    error_response(529, &error_id, "overloaded_error", "Overloaded")
                }
                InjectedError::Policy => {
                    error_response(400, &error_id, "invalid_request_error", CONTENT_FILTERED)
                }
            })
        })
        .await
    };
    set_header(&mut response, "request-id", rid);
    response
}

/// Whether the emulated model has structured outputs: every id but `claude-3…` ones, the
/// oldest family the providers crate's table (`anthropic_structured_outputs`) lists without.
fn has_structured_outputs(model: &str) -> bool {
    !model.starts_with("claude-3")
}

/// The tool a `tool_choice: {"type":"tool","name":…}` forces, with its `input_schema`, or the
/// API's 400 message when that tool is not declared.
fn forced_tool(
    body: &serde_json::Map<String, Value>,
) -> Result<Option<(String, Option<Value>)>, String> {
    let choice = body.get("tool_choice");
    if choice.and_then(|c| c.get("type")).and_then(Value::as_str) != Some("tool") {
        return Ok(None);
    }
    let Some(name) = choice.and_then(|c| c.get("name")).and_then(Value::as_str) else {
        return Err("tool_choice.tool.name: Field required".to_owned());
    };
    let tool = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|t| t.get("name").and_then(Value::as_str) == Some(name));
    match tool {
        Some(t) => Ok(Some((name.to_owned(), t.get("input_schema").cloned()))),
        None => Err(format!("Tool '{name}' not found in provided tools")),
    }
}

/// Anthropic's content-filter refusal: an `invalid_request_error` with this message, as an
/// HTTP 400 (`policy{STATUS}`) or an in-stream `error` event (`policymid{N}`), verbatim from the
/// reports cited in crates/providers/README.md. There is no code or field for it.
const CONTENT_FILTERED: &str = "Output blocked by content filtering policy";
fn block_type(b: &Value) -> Option<&str> {
    b.get("type").and_then(Value::as_str)
}

/// What Anthropic checks in a conversation sent back (its real 400 messages): a `tool_result`
/// answers a `tool_use` of the assistant turn right before it; with thinking enabled, the last
/// assistant turn that used tools starts with its (signed) thinking block; thinking blocks
/// carry the signature this emulator issued; images are base64 of a supported format matching
/// their `media_type`, or a URL.
fn check_messages(messages: &[Value], thinking: bool, rid: &str) -> Option<Response<ResponseBody>> {
    let blocks = |m: &Value| -> Vec<Value> {
        m.get("content")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let last_tool_turn = messages.iter().rposition(|m| {
        m.get("role").and_then(Value::as_str) == Some("assistant")
            && blocks(m).iter().any(|b| block_type(b) == Some("tool_use"))
    });
    for (i, m) in messages.iter().enumerate() {
        let content = blocks(m);
        let role = m.get("role").and_then(Value::as_str);
        for (j, b) in content.iter().enumerate() {
            match block_type(b) {
                Some("tool_result") => {
                    let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or("");
                    let previous = i
                        .checked_sub(1)
                        .map(|p| blocks(&messages[p]))
                        .unwrap_or_default();
                    let known = previous.iter().any(|p| {
                        block_type(p) == Some("tool_use")
                            && p.get("id").and_then(Value::as_str) == Some(id)
                    });
                    if !known {
                        return Some(invalid(
                            rid,
                            &format!(
                                "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                            ),
                        ));
                    }
                }
                Some("thinking") => match b.get("signature").and_then(Value::as_str) {
                    None => {
                        return Some(invalid(
                            rid,
                            &format!("messages.{i}.content.{j}.thinking.signature: Field required"),
                        ));
                    }
                    Some(sig) if sig != SIGNATURE => {
                        return Some(invalid(
                            rid,
                            &format!(
                                "messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
                            ),
                        ));
                    }
                    Some(_) => {}
                },
                Some("image") if role == Some("user") => {
                    if let Some(message) = check_image(b) {
                        return Some(invalid(
                            rid,
                            &format!("messages.{i}.content.{j}.image.source.{message}"),
                        ));
                    }
                }
                _ => {}
            }
        }
        if thinking && Some(i) == last_tool_turn {
            let first = content.first().and_then(block_type).unwrap_or("text");
            if first != "thinking" && first != "redacted_thinking" {
                return Some(invalid(
                    rid,
                    &format!(
                        "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{first}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid this requirement, disable `thinking`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
                    ),
                ));
            }
        }
    }
    None
}

/// Why an image block's `source` is malformed (the tail of Anthropic's message), if it is.
fn check_image(block: &Value) -> Option<String> {
    let source = block.get("source");
    match source.and_then(|s| s.get("type")).and_then(Value::as_str) {
        Some("url") => source
            .and_then(|s| s.get("url"))
            .and_then(Value::as_str)
            .is_none()
            .then(|| "url.url: Field required".to_owned()),
        Some("base64") => {
            let media = source
                .and_then(|s| s.get("media_type"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !["image/jpeg", "image/png", "image/gif", "image/webp"].contains(&media) {
                return Some(
                    "base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                        .to_owned(),
                );
            }
            let data = source
                .and_then(|s| s.get("data"))
                .and_then(Value::as_str)
                .unwrap_or("");
            match extras::base64_head(data)
                .as_deref()
                .map(extras::sniff_image)
            {
                None => Some("base64.data: Invalid base64 data".to_owned()),
                Some(Some(real)) if real == media => None,
                Some(Some(real)) => Some(format!(
                    "base64.data: The image was specified using the {media} media type, but the image appears to be a {real} image"
                )),
                Some(None) => Some(format!(
                    "base64.data: The image was specified using the {media} media type, but does not appear to be a valid {} image",
                    media.trim_start_matches("image/")
                )),
            }
        }
        _ => Some(
            "type: Input tag does not match any of the expected tags: 'base64', 'url'".to_owned(),
        ),
    }
}

/// The `err{STATUS}` knob.
fn injected_error(
    status: u16,
    scenario: &Effective,
    model: &str,
    rid: &str,
) -> Response<ResponseBody> {
    let not_found;
    let (kind, message): (&str, &str) = match status {
        400 => (
            "invalid_request_error",
            "messages: the request was rejected",
        ),
        401 => ("authentication_error", "invalid x-api-key"),
        402 => (
            "billing_error",
            "Your credit balance is too low to access the Anthropic API.",
        ),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => {
            not_found = format!("model: {model}");
            ("not_found_error", not_found.as_str())
        }
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => (
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase.",
        ),
        500 => ("api_error", "Internal server error"),
        502 => ("api_error", "Bad gateway"),
        503 => ("api_error", "Service unavailable"),
        504 => ("timeout_error", "Request timeout"),
        529 => ("overloaded_error", "Overloaded"),
        s if s >= 500 => ("api_error", "Internal server error"),
        _ => ("invalid_request_error", "The request was rejected."),
    };
    let mut response = error_response(status, rid, kind, message);
    if matches!(status, 429 | 503 | 529) && scenario.retry_ms > 0 {
        set_header(
            &mut response,
            "retry-after",
            &scenario.retry_ms.div_ceil(1000).to_string(),
        );
    }
    if status == 429 {
        set_header(&mut response, "anthropic-ratelimit-requests-limit", "50");
        set_header(&mut response, "anthropic-ratelimit-requests-remaining", "0");
    }
    response
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: MessageObject<'a>,
}

#[derive(Serialize)]
struct MessageObject<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: [(); 0],
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    usage: StartUsage,
}

#[derive(Serialize)]
struct StartUsage {
    input_tokens: usize,
    cache_creation_input_tokens: usize,
    cache_read_input_tokens: usize,
    cache_creation: CacheCreation,
    output_tokens: usize,
    service_tier: &'static str,
}

#[derive(Serialize)]
struct CacheCreation {
    ephemeral_5m_input_tokens: usize,
    ephemeral_1h_input_tokens: usize,
}

fn start_usage(input_tokens: usize, output_tokens: usize) -> StartUsage {
    StartUsage {
        input_tokens,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
        cache_creation: CacheCreation {
            ephemeral_5m_input_tokens: 0,
            ephemeral_1h_input_tokens: 0,
        },
        output_tokens,
        service_tier: "standard",
    }
}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    usage: DeltaUsage,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_details: Option<RefusalDetails>,
}

/// `stop_details` of a refusal (wire-formats.md §4.2; shape of the SDK's `refusal_response.txt`).
#[derive(Serialize)]
struct RefusalDetails {
    #[serde(rename = "type")]
    kind: &'static str,
    category: &'static str,
    explanation: &'static str,
}

fn stop_details(finish: Finish) -> Option<RefusalDetails> {
    (finish == Finish::Blocked).then_some(RefusalDetails {
        kind: "refusal",
        category: "general_harms",
        explanation: "This request was refused due to policy.",
    })
}

#[derive(Serialize)]
struct DeltaUsage {
    input_tokens: usize,
    cache_creation_input_tokens: usize,
    cache_read_input_tokens: usize,
    output_tokens: usize,
}

fn stop_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::Blocked => "refusal",
        Finish::ToolCalls => "tool_use",
    }
}

/// A fixed, recognisable thinking signature (base64 of an ASCII sentence).
const SIGNATURE: &str = "cG9seWRldi1lbXVsYXRvciB0aGlua2luZyBzaWduYXR1cmUgKG5vdCBhIHJlYWwgb25lKQ==";

fn event(name: &str, value: &impl Serialize) -> Bytes {
    let mut out = Vec::with_capacity(64 + name.len());
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Serialising these plain structs cannot fail.
    let _ = serde_json::to_writer(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A content block, as in `content_block_start` and in a non-streaming `content` array.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum DeltaKind<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

#[derive(Serialize)]
struct BlockEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_block: Option<Block<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<DeltaKind<'a>>,
}

fn block_start(index: usize, block: Block<'_>) -> Bytes {
    let e = BlockEvent {
        kind: "content_block_start",
        index,
        content_block: Some(block),
        delta: None,
    };
    event("content_block_start", &e)
}

fn block_delta(index: usize, delta: DeltaKind<'_>) -> Bytes {
    let e = BlockEvent {
        kind: "content_block_delta",
        index,
        content_block: None,
        delta: Some(delta),
    };
    event("content_block_delta", &e)
}

fn block_stop(index: usize) -> Bytes {
    let e = BlockEvent {
        kind: "content_block_stop",
        index,
        content_block: None,
        delta: None,
    };
    event("content_block_stop", &e)
}

const PING: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    ThinkingStart,
    Thinking(usize),
    Signature,
    ThinkingStop,
    TextStart,
    Text(usize),
    TextStop,
    Calls,
    Delta,
    Stop,
    Over,
}

struct MessageScript {
    plan: Plan,
    id: String,
    omitted: bool,
    stage: Stage,
    pinged: bool,
    text_index: usize,
    /// Tool-use block frames still to send (built when the calls stage starts).
    call_frames: Option<std::collections::VecDeque<Bytes>>,
}

impl MessageScript {
    fn new(plan: Plan, id: String, omitted: bool) -> MessageScript {
        let text_index = usize::from(plan.reasoning > 0);
        MessageScript {
            plan,
            id,
            omitted,
            stage: Stage::Start,
            pinged: false,
            text_index,
            call_frames: None,
        }
    }

    fn has_text_block(&self) -> bool {
        self.plan.finish != Finish::Blocked
            && (self.plan.answer > 0 || (self.plan.reasoning == 0 && self.plan.calls.is_empty()))
    }

    /// One `tool_use` block per planned call: start with `input: {}`, an empty first
    /// `input_json_delta` (as recorded, wire-formats.md §9.3), the argument pieces, stop.
    fn build_call_frames(&self) -> std::collections::VecDeque<Bytes> {
        let first = usize::from(self.plan.reasoning > 0) + usize::from(self.has_text_block());
        let mut out = std::collections::VecDeque::new();
        for (k, call) in self.plan.calls.iter().enumerate() {
            let index = first + k;
            out.push_back(block_start(
                index,
                Block::ToolUse {
                    id: &call.id,
                    name: &call.name,
                    input: Value::Object(serde_json::Map::new()),
                },
            ));
            out.push_back(block_delta(
                index,
                DeltaKind::InputJson { partial_json: "" },
            ));
            for piece in extras::pieces(&call.arguments, self.plan.arg_split) {
                out.push_back(block_delta(
                    index,
                    DeltaKind::InputJson {
                        partial_json: piece,
                    },
                ));
            }
            out.push_back(block_stop(index));
        }
        out
    }
}

impl Script for MessageScript {
    fn next_step(&mut self) -> Option<Step> {
        loop {
            match self.stage {
                Stage::Start => {
                    self.stage = if self.plan.reasoning > 0 {
                        Stage::ThinkingStart
                    } else {
                        Stage::TextStart
                    };
                    let start = MessageStart {
                        kind: "message_start",
                        message: MessageObject {
                            id: &self.id,
                            kind: "message",
                            role: "assistant",
                            model: &self.plan.model,
                            content: [],
                            stop_reason: None,
                            stop_sequence: None,
                            usage: start_usage(self.plan.input_tokens, 1),
                        },
                    };
                    return Some(Step::Meta(event("message_start", &start)));
                }
                Stage::ThinkingStart => {
                    self.stage = Stage::Thinking(0);
                    let frame = block_start(
                        0,
                        Block::Thinking {
                            thinking: "",
                            signature: "",
                        },
                    );
                    return Some(Step::Meta(frame));
                }
                Stage::Thinking(i) if !self.pinged => {
                    self.pinged = true;
                    self.stage = Stage::Thinking(i);
                    return Some(Step::Meta(Bytes::from_static(PING)));
                }
                Stage::Thinking(i) if i < self.plan.reasoning => {
                    if self.omitted {
                        self.stage = Stage::Signature;
                        return Some(Step::Think(self.plan.reasoning));
                    }
                    self.stage = Stage::Thinking(i + 1);
                    let token = text::reasoning_token(i);
                    let frame = block_delta(0, DeltaKind::Thinking { thinking: &token });
                    return Some(Step::Content(frame));
                }
                Stage::Thinking(_) => self.stage = Stage::Signature,
                Stage::Signature => {
                    self.stage = Stage::ThinkingStop;
                    let frame = block_delta(
                        0,
                        DeltaKind::Signature {
                            signature: SIGNATURE,
                        },
                    );
                    return Some(Step::Meta(frame));
                }
                Stage::ThinkingStop => {
                    self.stage = Stage::TextStart;
                    let frame = block_stop(0);
                    return Some(Step::Meta(frame));
                }
                Stage::TextStart => {
                    if !self.has_text_block() {
                        self.stage = Stage::Calls;
                        continue;
                    }
                    self.stage = Stage::Text(0);
                    let frame = block_start(self.text_index, Block::Text { text: "" });
                    return Some(Step::Meta(frame));
                }
                Stage::Text(i) if !self.pinged => {
                    self.pinged = true;
                    self.stage = Stage::Text(i);
                    return Some(Step::Meta(Bytes::from_static(PING)));
                }
                Stage::Text(i) if i < self.plan.answer => {
                    self.stage = Stage::Text(i + 1);
                    let token = self.plan.answer_token(i);
                    let frame = block_delta(self.text_index, DeltaKind::Text { text: &token });
                    return Some(Step::Content(frame));
                }
                Stage::Text(_) => self.stage = Stage::TextStop,
                Stage::TextStop => {
                    self.stage = Stage::Calls;
                    let frame = block_stop(self.text_index);
                    return Some(Step::Meta(frame));
                }
                Stage::Calls => {
                    if self.call_frames.is_none() {
                        self.call_frames = Some(self.build_call_frames());
                    }
                    match self.call_frames.as_mut().and_then(|f| f.pop_front()) {
                        Some(frame) => return Some(Step::Content(frame)),
                        None => self.stage = Stage::Delta,
                    }
                }
                Stage::Delta => {
                    self.stage = Stage::Stop;
                    let delta = MessageDelta {
                        kind: "message_delta",
                        delta: StopDelta {
                            stop_reason: stop_reason(self.plan.finish),
                            stop_sequence: None,
                            stop_details: stop_details(self.plan.finish),
                        },
                        usage: DeltaUsage {
                            input_tokens: self.plan.input_tokens,
                            cache_creation_input_tokens: 0,
                            cache_read_input_tokens: 0,
                            output_tokens: self.plan.output_tokens(),
                        },
                    };
                    return Some(Step::End(event("message_delta", &delta)));
                }
                Stage::Stop => {
                    self.stage = Stage::Over;
                    return Some(Step::End(Bytes::from_static(
                        b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                    )));
                }
                Stage::Over => return None,
            }
        }
    }

    fn mid_error(&mut self) -> Bytes {
        Bytes::from_static(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        )
    }

    /// As captured: `details: null` and the request id ride along in the event.
    fn policy_error(&mut self) -> Option<Bytes> {
        let data = serde_json::json!({
            "type": "error",
            "error": {"details": null, "type": "invalid_request_error", "message": CONTENT_FILTERED},
            "request_id": ids::anthropic_request_id(),
        });
        Some(event("error", &data))
    }

    fn keep_alive(&self) -> Bytes {
        Bytes::from_static(PING)
    }
}

#[derive(Serialize)]
struct MessageJson<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block<'a>>,
    stop_reason: &'static str,
    stop_sequence: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_details: Option<RefusalDetails>,
    usage: StartUsage,
}

fn message_json(plan: &Plan, id: &str, omitted: bool) -> Vec<u8> {
    let thinking = if omitted {
        String::new()
    } else {
        text::reasoning_text(plan.reasoning)
    };
    let answer = plan.answer_text();
    let mut content = Vec::new();
    if plan.reasoning > 0 {
        content.push(Block::Thinking {
            thinking: &thinking,
            signature: SIGNATURE,
        });
    }
    if plan.finish != Finish::Blocked && (plan.answer > 0 || plan.reasoning == 0) {
        content.push(Block::Text { text: &answer });
    }
    let message = MessageJson {
        id,
        kind: "message",
        role: "assistant",
        model: &plan.model,
        content,
        stop_reason: stop_reason(plan.finish),
        stop_sequence: None,
        stop_details: stop_details(plan.finish),
        usage: start_usage(plan.input_tokens, plan.output_tokens()),
    };
    serde_json::to_vec(&message).unwrap_or_default()
}
