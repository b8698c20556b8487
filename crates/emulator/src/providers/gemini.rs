//! Google Gemini: `POST /{v1beta,v1,v1alpha}/models/{model}:streamGenerateContent` and
//! `:generateContent`.
//!
//! With `?alt=sse` a stream is `data: {GenerateContentResponse}\r\n\r\n` frames (CRLF, as in
//! Google's own recordings) with no terminator: the last chunk carries `finishReason` and an
//! empty-text part, every chunk carries a running `usageMetadata` snapshot, `modelVersion` and
//! `responseId`. The JSON uses Google's spacing (`"key": value` with no space after commas).
//! Without `alt=sse` the same objects form one JSON array streamed element by element, and
//! errors are wrapped in an array too. Errors are `google.rpc.Status` bodies; retry hints live
//! only in a `RetryInfo` detail, never in a header. A mid-stream error is a bare,
//! pretty-printed JSON object with no `data:` prefix, as in the real capture.

use bytes::Bytes;
use http::Response;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{Finish, Incoming, InjectedError, Plan, deliver_json, extras, fixed, resolve};
use crate::body::{ResponseBody, Script, Step};
use crate::ids;
use crate::router::percent_decode;
use crate::scenario::{BlockReason, Effective};
use crate::text;

const JSON: &str = "application/json; charset=UTF-8";
const EVENT_STREAM: &str = "text/event-stream";

/// Which Gemini method a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Stream,
    Generate,
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `alt=sse`: SSE frames.
    Sse,
    /// `streamGenerateContent` without `alt=sse`: one incrementally streamed JSON array.
    Array,
    /// `generateContent`: one JSON object.
    Single,
}

/// serde_json formatter reproducing Google's compact style: `"key": value`, `,` alone.
struct GoogleCompact;

impl serde_json::ser::Formatter for GoogleCompact {
    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

fn google_compact(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, GoogleCompact);
    // Serialising these plain structs cannot fail.
    let _ = value.serialize(&mut serializer);
    out
}

fn pretty(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(value).unwrap_or_default()
}

#[derive(Serialize)]
struct Status<'a> {
    error: StatusBody<'a>,
}

#[derive(Serialize)]
struct StatusBody<'a> {
    code: u16,
    message: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    details: Vec<Value>,
}

fn status_json(code: u16, message: &str, status: &str, details: Vec<Value>, wrap: bool) -> Vec<u8> {
    let body = Status {
        error: StatusBody {
            code,
            message,
            status,
            details,
        },
    };
    if wrap {
        let mut out = b"[".to_vec();
        out.extend_from_slice(&pretty(&body));
        out.extend_from_slice(b"\n]");
        out
    } else {
        pretty(&body)
    }
}

fn error_response(
    code: u16,
    message: &str,
    status: &str,
    details: Vec<Value>,
    wrap: bool,
) -> Response<ResponseBody> {
    fixed(
        code,
        JSON,
        status_json(code, message, status, details, wrap),
    )
}

fn invalid_argument(message: &str, wrap: bool) -> Response<ResponseBody> {
    let details = vec![json!({
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"description": message}],
    })];
    error_response(400, message, "INVALID_ARGUMENT", details, wrap)
}

/// The 404 for an unknown URL or method.
pub(crate) fn not_found(path: &str) -> Response<ResponseBody> {
    let message = format!("The requested URL {path} was not found on this server.");
    error_response(404, &message, "NOT_FOUND", Vec::new(), false)
}

/// The 413 for a body over the emulator's bound.
pub(crate) fn too_large(limit: usize) -> Response<ResponseBody> {
    let message = format!("Request payload size exceeds the limit: {limit} bytes.");
    error_response(413, &message, "INVALID_ARGUMENT", Vec::new(), false)
}

/// A protobuf JSON duration: `2s`, `1.500s`.
fn proto_duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v, true))
}

/// A field under either its proto JSON (camelCase) or its proto (snake_case) name.
fn field<'a>(object: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    object.get(camel).or_else(|| object.get(snake))
}

/// Top-level request fields the real API accepts (both spellings); anything else is a 400.
const KNOWN_FIELDS: &[&str] = &[
    "contents",
    "model",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "safetySettings",
    "safety_settings",
    "generationConfig",
    "generation_config",
    "cachedContent",
    "cached_content",
    "serviceTier",
    "service_tier",
    "labels",
    "store",
];

/// `POST /{version}/models/{model}:{method}`.
pub(crate) async fn generate(
    inc: Incoming<'_>,
    model: &str,
    method: Method,
) -> Response<ResponseBody> {
    let framing = match method {
        Method::Generate => Framing::Single,
        Method::Stream if query_param(inc.query, "alt").as_deref() == Some("sse") => Framing::Sse,
        Method::Stream => Framing::Array,
    };
    let wrap = framing == Framing::Array;
    let key = inc
        .headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query_param(inc.query, "key"))
        .filter(|k| !k.trim().is_empty());
    match key {
        None => {
            return error_response(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                "PERMISSION_DENIED",
                Vec::new(),
                wrap,
            );
        }
        Some(k) if k.contains("invalid") => {
            let message = "API key not valid. Please pass a valid API key.";
            let details = vec![
                json!({
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }),
                json!({
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": message,
                }),
            ];
            return error_response(400, message, "INVALID_ARGUMENT", details, wrap);
        }
        Some(_) => {}
    }
    let body = match serde_json::from_slice::<Value>(&inc.body) {
        Ok(Value::Object(body)) => body,
        Ok(_) => {
            return invalid_argument(
                "Invalid JSON payload received. Expected an object at the top level.",
                wrap,
            );
        }
        Err(_) => {
            return invalid_argument("Invalid JSON payload received. Unexpected token.", wrap);
        }
    };
    if let Some(unknown) = body.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        let message = format!(
            "Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."
        );
        return invalid_argument(&message, wrap);
    }
    let contents = match body.get("contents") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return error_response(
                400,
                "* GenerateContentRequest.contents: contents is not specified\n",
                "INVALID_ARGUMENT",
                Vec::new(),
                wrap,
            );
        }
        Some(_) => {
            return invalid_argument(
                "Invalid value at 'contents' (type.googleapis.com/google.ai.generativelanguage.v1beta.Content), expected a list",
                wrap,
            );
        }
    };
    let config = field(&body, "generationConfig", "generation_config").and_then(Value::as_object);
    let limit = config
        .and_then(|c| field(c, "maxOutputTokens", "max_output_tokens"))
        .and_then(Value::as_u64);
    let tool_names: Vec<String> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            field(
                t.as_object()?,
                "functionDeclarations",
                "function_declarations",
            )
        })
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|d| d.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let ends_with_tool_result = contents
        .last()
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .is_some_and(|p| p.iter().any(is_function_response));
    let json_answer = config
        .filter(|c| {
            field(c, "responseMimeType", "response_mime_type").and_then(Value::as_str)
                == Some("application/json")
        })
        .map(|c| {
            extras::json_answer(
                field(c, "responseJsonSchema", "response_json_schema")
                    .or_else(|| field(c, "responseSchema", "response_schema")),
            )
        });
    if let Some(message) = check_contents(contents, model) {
        return invalid_argument(&message, wrap);
    }
    let include_thoughts = config
        .and_then(|c| field(c, "thinkingConfig", "thinking_config"))
        .and_then(Value::as_object)
        .and_then(|t| field(t, "includeThoughts", "include_thoughts"))
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let mut texts = Vec::new();
    let system = field(&body, "systemInstruction", "system_instruction");
    for content in contents.iter().chain(system) {
        if let Some(Value::Array(parts)) = content.get("parts") {
            texts.extend(
                parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str)),
            );
        }
    }
    let input_tokens = super::input_tokens(texts);

    let scenario = resolve(inc.shared, model);
    tokio::time::sleep(scenario.ttfb).await;
    if let Some(status) = scenario.err {
        return injected_error(status, &scenario, model, wrap);
    }
    let calls = extras::plan_calls(scenario.tools, &tool_names, ends_with_tool_result, |i| {
        format!("gemini-call-{i}")
    });
    let mut plan =
        Plan::new(model, &scenario, input_tokens, limit).with_calls(calls, scenario.argsplit);
    if let Some(json) = &json_answer {
        plan = plan.with_json(json);
    }
    let signs = plan.reasoning > 0 || requires_signatures(model);
    let response_id = ids::gemini_response_id();
    match framing {
        Framing::Single => {
            let body = pretty(&single_response(&plan, &response_id, include_thoughts));
            // The Gemini API has no content-policy error: `policymid` leaves the answer whole.
            deliver_json(&scenario, &plan, JSON, body, |which| match which {
                InjectedError::Overload => Some(error_response(
                    503,
                    OVERLOADED,
                    "UNAVAILABLE",
                    Vec::new(),
                    false,
                )),
                InjectedError::Policy => None,
            })
            .await
        }
        Framing::Sse | Framing::Array => {
            let mut script =
                GeminiScript::new(plan, response_id, include_thoughts, framing == Framing::Sse);
            script.signs = signs;
            let content_type = if framing == Framing::Sse {
                EVENT_STREAM
            } else {
                JSON
            };
            super::streaming(inc.shared, &scenario, content_type, Box::new(script))
        }
    }
}

const OVERLOADED: &str = "The model is overloaded. Please try again later.";

fn is_function_response(part: &Value) -> bool {
    part.get("functionResponse").is_some() || part.get("function_response").is_some()
}

fn is_function_call(part: &Value) -> bool {
    part.get("functionCall").is_some() || part.get("function_call").is_some()
}

/// Gemini 3 models reject function calls sent back without their thought signature.
fn requires_signatures(model: &str) -> bool {
    model.starts_with("gemini-3")
}

/// What Gemini checks in the contents sent back (its real 400 messages): a function-response
/// turn follows a function-call turn with as many calls; on Gemini 3 the current turn's first
/// function call carries the thought signature this emulator issued; inline images are base64
/// with a MIME type, file images have a URI.
fn check_contents(contents: &[Value], model: &str) -> Option<String> {
    let parts = |c: &Value| -> Vec<Value> {
        c.get("parts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let last_call_turn = contents
        .iter()
        .rposition(|c| parts(c).iter().any(is_function_call));
    for (i, c) in contents.iter().enumerate() {
        let ps = parts(c);
        let responses = ps.iter().filter(|p| is_function_response(p)).count();
        if responses > 0 {
            let calls = i
                .checked_sub(1)
                .map(|p| {
                    parts(&contents[p])
                        .iter()
                        .filter(|p| is_function_call(p))
                        .count()
                })
                .unwrap_or(0);
            if calls == 0 {
                return Some("Please ensure that function response turn comes immediately after a function call turn.".to_owned());
            }
            if calls != responses {
                return Some("Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.".to_owned());
            }
        }
        if requires_signatures(model) && Some(i) == last_call_turn {
            let pos = ps.iter().position(is_function_call).unwrap_or(0);
            let first = &ps[pos];
            let name = first
                .get("functionCall")
                .or_else(|| first.get("function_call"))
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            match first
                .get("thoughtSignature")
                .or_else(|| first.get("thought_signature"))
                .and_then(Value::as_str)
            {
                None => {
                    return Some(format!(
                        "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `default_api:{name}` , position {}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
                        pos + 1
                    ));
                }
                Some(sig) if sig != THOUGHT_SIGNATURE => {
                    return Some("Corrupted thought signature.".to_owned());
                }
                Some(_) => {}
            }
        }
        for (j, p) in ps.iter().enumerate() {
            if let Some(inline) = p.get("inlineData").or_else(|| p.get("inline_data")) {
                let data = inline.get("data").and_then(Value::as_str).unwrap_or("");
                if extras::base64_head(data).is_none() {
                    let shown: String = data.chars().take(32).collect();
                    return Some(format!(
                        "Invalid value at 'contents[{i}].parts[{j}].inline_data.data' (TYPE_BYTES), Base64 decoding failed for \"{shown}\""
                    ));
                }
                if field_str(inline, "mimeType", "mime_type").is_none() {
                    return Some(format!(
                        "* GenerateContentRequest.contents[{i}].parts[{j}].inline_data.mime_type: mime_type is not specified\n"
                    ));
                }
            }
            if let Some(file) = p.get("fileData").or_else(|| p.get("file_data"))
                && field_str(file, "fileUri", "file_uri").is_none()
            {
                return Some(format!(
                    "* GenerateContentRequest.contents[{i}].parts[{j}].file_data.file_uri: file_uri is not specified\n"
                ));
            }
        }
    }
    None
}

fn field_str<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a str> {
    v.get(camel)
        .or_else(|| v.get(snake))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The `err{STATUS}` knob. Gemini has no 529: it is answered as 503 UNAVAILABLE.
fn injected_error(
    status: u16,
    scenario: &Effective,
    model: &str,
    wrap: bool,
) -> Response<ResponseBody> {
    let status = if status == 529 { 503 } else { status };
    let not_found;
    let (message, canonical): (&str, &str) = match status {
        400 => ("Request contains an invalid argument.", "INVALID_ARGUMENT"),
        401 => (
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            "UNAUTHENTICATED",
        ),
        403 => ("The caller does not have permission", "PERMISSION_DENIED"),
        404 => {
            not_found = format!(
                "models/{model} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."
            );
            (not_found.as_str(), "NOT_FOUND")
        }
        413 => (
            "Request payload size exceeds the limit: 20971520 bytes.",
            "INVALID_ARGUMENT",
        ),
        429 => (
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
            "RESOURCE_EXHAUSTED",
        ),
        500 => (
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            "INTERNAL",
        ),
        502 => ("Bad Gateway", "UNAVAILABLE"),
        503 => (OVERLOADED, "UNAVAILABLE"),
        504 => (
            "Deadline expired before operation could complete.",
            "DEADLINE_EXCEEDED",
        ),
        s if s >= 500 => ("Internal error encountered.", "INTERNAL"),
        _ => ("Request contains an invalid argument.", "INVALID_ARGUMENT"),
    };
    let mut details = Vec::new();
    if status == 429 {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": model},
                "quotaValue": "10",
            }],
        }));
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [{
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
            }],
        }));
    }
    if matches!(status, 429 | 503) && scenario.retry_ms > 0 {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": proto_duration(scenario.retry_ms),
        }));
    }
    error_response(status, message, canonical, details, wrap)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Chunk<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidates: Option<[Candidate<'a>; 1]>,
    usage_metadata: UsageMetadata,
    model_version: &'a str,
    response_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    index: u32,
}

#[derive(Serialize)]
struct Content<'a> {
    parts: Vec<Part<'a>>,
    role: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidates_token_count: Option<usize>,
    total_token_count: usize,
    prompt_tokens_details: [ModalityCount; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    thoughts_token_count: Option<usize>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModalityCount {
    modality: &'static str,
    token_count: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: &'static str,
    safety_ratings: [SafetyRating; 4],
}

#[derive(Serialize)]
struct SafetyRating {
    category: &'static str,
    probability: &'static str,
}

fn usage(prompt: usize, candidates: usize, thoughts: usize) -> UsageMetadata {
    UsageMetadata {
        prompt_token_count: prompt,
        candidates_token_count: (candidates > 0).then_some(candidates),
        total_token_count: prompt + candidates + thoughts,
        prompt_tokens_details: [ModalityCount {
            modality: "TEXT",
            token_count: prompt,
        }],
        thoughts_token_count: (thoughts > 0).then_some(thoughts),
    }
}

fn safety_block(reason: BlockReason) -> PromptFeedback {
    let rating = |category, probability| SafetyRating {
        category,
        probability,
    };
    PromptFeedback {
        block_reason: reason.as_str(),
        safety_ratings: [
            rating("HARM_CATEGORY_SEXUALLY_EXPLICIT", "NEGLIGIBLE"),
            rating("HARM_CATEGORY_HATE_SPEECH", "HIGH"),
            rating("HARM_CATEGORY_HARASSMENT", "NEGLIGIBLE"),
            rating("HARM_CATEGORY_DANGEROUS_CONTENT", "NEGLIGIBLE"),
        ],
    }
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Length => "MAX_TOKENS",
        Finish::Stop | Finish::Blocked | Finish::ToolCalls => "STOP",
    }
}

/// A recognisable, valid base64 `thoughtSignature` (Gemini sends opaque bytes).
const THOUGHT_SIGNATURE: &str = "cG9seWRldi1lbXVsYXRvciB0aG91Z2h0IHNpZ25hdHVyZQ==";

fn single_response<'a>(
    plan: &'a Plan,
    response_id: &'a str,
    include_thoughts: bool,
) -> SingleResponse<'a> {
    let thoughts = text::reasoning_text(plan.reasoning);
    let answer = text::answer_text(plan.answer);
    SingleResponse {
        plan,
        response_id,
        thoughts: (include_thoughts && plan.reasoning > 0).then_some(thoughts),
        answer,
    }
}

/// Owns the texts of a non-streaming answer so the borrowed chunk can be built at serialise
/// time.
struct SingleResponse<'a> {
    plan: &'a Plan,
    response_id: &'a str,
    thoughts: Option<String>,
    answer: String,
}

impl Serialize for SingleResponse<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let plan = self.plan;
        let usage = usage(plan.input_tokens, plan.answer, plan.reasoning);
        if plan.finish == Finish::Blocked {
            let chunk = Chunk {
                prompt_feedback: Some(safety_block(plan.block_reason)),
                candidates: None,
                usage_metadata: usage,
                model_version: &plan.model,
                response_id: self.response_id,
            };
            return chunk.serialize(serializer);
        }
        let mut parts = Vec::new();
        if let Some(thoughts) = &self.thoughts {
            parts.push(Part {
                text: thoughts,
                thought: Some(true),
                thought_signature: None,
            });
        }
        parts.push(Part {
            text: &self.answer,
            thought: None,
            thought_signature: (plan.reasoning > 0).then_some(THOUGHT_SIGNATURE),
        });
        let chunk = Chunk {
            prompt_feedback: None,
            candidates: Some([Candidate {
                content: Content {
                    parts,
                    role: "model",
                },
                finish_reason: Some(finish_reason(plan.finish)),
                index: 0,
            }]),
            usage_metadata: usage,
            model_version: &plan.model,
            response_id: self.response_id,
        };
        chunk.serialize(serializer)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Thoughts(usize),
    Answer(usize),
    Calls,
    Final,
    Close,
    Over,
}

struct GeminiScript {
    plan: Plan,
    response_id: String,
    include_thoughts: bool,
    sse: bool,
    first_frame: bool,
    stage: Stage,
    /// Whether function calls carry a thought signature (thinking models).
    signs: bool,
}

impl GeminiScript {
    fn new(plan: Plan, response_id: String, include_thoughts: bool, sse: bool) -> GeminiScript {
        GeminiScript {
            plan,
            response_id,
            include_thoughts,
            sse,
            first_frame: true,
            stage: Stage::Thoughts(0),
            signs: false,
        }
    }

    fn text_chunk(
        &mut self,
        part: Part<'_>,
        finish: Option<&'static str>,
        usage: UsageMetadata,
    ) -> Bytes {
        let chunk = Chunk {
            prompt_feedback: None,
            candidates: Some([Candidate {
                content: Content {
                    parts: vec![part],
                    role: "model",
                },
                finish_reason: finish,
                index: 0,
            }]),
            usage_metadata: usage,
            model_version: &self.plan.model,
            response_id: &self.response_id,
        };
        frame(self.sse, &mut self.first_frame, &chunk)
    }
}

/// One chunk on the wire: an SSE frame, or an element of the streamed JSON array.
fn frame(sse: bool, first_frame: &mut bool, chunk: &impl Serialize) -> Bytes {
    if sse {
        let mut out = b"data: ".to_vec();
        out.extend_from_slice(&google_compact(chunk));
        out.extend_from_slice(b"\r\n\r\n");
        return Bytes::from(out);
    }
    let mut out = array_separator(first_frame);
    out.extend_from_slice(&pretty(chunk));
    Bytes::from(out)
}

/// `[` before the first element of the streamed array, `,` + CRLF before the others.
fn array_separator(first_frame: &mut bool) -> Vec<u8> {
    if std::mem::replace(first_frame, false) {
        b"[".to_vec()
    } else {
        b",\r\n".to_vec()
    }
}

impl Script for GeminiScript {
    fn next_step(&mut self) -> Option<Step> {
        let prompt = self.plan.input_tokens;
        let reasoning = self.plan.reasoning;
        loop {
            match self.stage {
                Stage::Thoughts(_) if self.plan.finish == Finish::Blocked => {
                    self.stage = Stage::Close;
                    let chunk = Chunk {
                        prompt_feedback: Some(safety_block(self.plan.block_reason)),
                        candidates: None,
                        usage_metadata: usage(prompt, 0, 0),
                        model_version: &self.plan.model,
                        response_id: &self.response_id,
                    };
                    let frame = frame(self.sse, &mut self.first_frame, &chunk);
                    return Some(Step::End(frame));
                }
                Stage::Thoughts(i) if i < reasoning => {
                    if !self.include_thoughts {
                        self.stage = Stage::Answer(0);
                        return Some(Step::Think(reasoning));
                    }
                    self.stage = Stage::Thoughts(i + 1);
                    let token = text::reasoning_token(i);
                    let part = Part {
                        text: &token,
                        thought: Some(true),
                        thought_signature: None,
                    };
                    let frame = self.text_chunk(part, None, usage(prompt, 0, i + 1));
                    return Some(Step::Content(frame));
                }
                Stage::Thoughts(_) => self.stage = Stage::Answer(0),
                Stage::Answer(i) if i < self.plan.answer => {
                    self.stage = Stage::Answer(i + 1);
                    let token = self.plan.answer_token(i);
                    let part = Part {
                        text: &token,
                        thought: None,
                        thought_signature: None,
                    };
                    let frame = self.text_chunk(part, None, usage(prompt, i + 1, reasoning));
                    return Some(Step::Content(frame));
                }
                Stage::Answer(_) => self.stage = Stage::Calls,
                Stage::Calls => {
                    self.stage = Stage::Final;
                    if self.plan.calls.is_empty() {
                        continue;
                    }
                    // Parallel calls arrive whole, as parts of one chunk; the turn's thought
                    // signature rides on the first call (wire-formats.md §5.4, §9.4).
                    let parts: Vec<Value> = self
                        .plan
                        .calls
                        .iter()
                        .enumerate()
                        .map(|(k, c)| {
                            let args: Value =
                                serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
                            let mut part = json!({"functionCall": {"name": c.name, "args": args}});
                            if k == 0
                                && self.signs
                                && let Some(p) = part.as_object_mut()
                            {
                                p.insert("thoughtSignature".into(), json!(THOUGHT_SIGNATURE));
                            }
                            part
                        })
                        .collect();
                    let chunk = json!({
                        "candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}],
                        "usageMetadata": usage(prompt, self.plan.output_tokens() - reasoning, reasoning),
                        "modelVersion": self.plan.model,
                        "responseId": self.response_id,
                    });
                    let frame = frame(self.sse, &mut self.first_frame, &chunk);
                    return Some(Step::Content(frame));
                }
                Stage::Final => {
                    self.stage = Stage::Close;
                    let part = Part {
                        text: "",
                        thought: None,
                        thought_signature: (reasoning > 0 && self.plan.calls.is_empty())
                            .then_some(THOUGHT_SIGNATURE),
                    };
                    let finish = finish_reason(self.plan.finish);
                    let candidates = self.plan.output_tokens() - reasoning;
                    let frame =
                        self.text_chunk(part, Some(finish), usage(prompt, candidates, reasoning));
                    return Some(Step::End(frame));
                }
                Stage::Close => {
                    self.stage = Stage::Over;
                    if !self.sse {
                        return Some(Step::End(Bytes::from_static(b"\n]")));
                    }
                }
                Stage::Over => return None,
            }
        }
    }

    fn mid_error(&mut self) -> Bytes {
        let error = status_json(503, OVERLOADED, "UNAVAILABLE", Vec::new(), false);
        let mut out = if self.sse {
            Vec::new()
        } else {
            array_separator(&mut self.first_frame)
        };
        out.extend_from_slice(&error);
        out.extend_from_slice(if self.sse { b"\n" } else { b"\n]" });
        Bytes::from(out)
    }

    /// The Gemini API refuses a prompt with a 200 `promptFeedback` chunk (`block{REASON}`) and
    /// blocked output with a `finishReason`; it has no in-stream content-policy error.
    fn policy_error(&mut self) -> Option<Bytes> {
        None
    }

    fn keep_alive(&self) -> Bytes {
        // Gemini sends no keep-alives. A bare line break is harmless to both SDKs (an SSE
        // comment would not be: python-genai buffers non-`data:` lines as JSON).
        if self.sse {
            Bytes::from_static(b"\r\n")
        } else {
            Bytes::from_static(b"\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_param(Some("alt=sse&key=a%2Bb+c"), "key").as_deref(),
            Some("a+b c")
        );
        assert_eq!(query_param(Some("alt=sse"), "key"), None);
        assert_eq!(query_param(Some("key"), "key").as_deref(), Some(""));
        assert_eq!(percent_decode("%", true), "%");
        assert_eq!(percent_decode("%4", true), "%4");
        assert_eq!(percent_decode("%zz", true), "%zz");
        assert_eq!(percent_decode("a+%C3%A9", false), "a+é");
    }

    #[test]
    fn durations_are_protobuf_json() {
        assert_eq!(proto_duration(2000), "2s");
        assert_eq!(proto_duration(1500), "1.500s");
        assert_eq!(proto_duration(0), "0s");
    }

    #[test]
    fn compact_style_matches_google() {
        let out = google_compact(&usage(3, 1, 0));
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"promptTokenCount": 3,"candidatesTokenCount": 1,"totalTokenCount": 4,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 3}]}"#
        );
    }
}
